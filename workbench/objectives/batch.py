"""Batches: what every objective, loss and sampler exchanges.

A `Batch` holds the decoder-only layout ``[inputs | targets | padding]`` and, for
encoder-decoder models, the same example split into `inputs` and `targets`. Host-side
builders (numpy) make batches from token lists; the losses run on device.

Fields (B examples, L = Ti + Tt positions):
  tokens        [B, L]   int32  inputs then targets then pad
  prefix_len    [B]      int32  number of input tokens (0 for plain language modelling)
  lengths       [B]      int32  real positions (keys at j >= lengths are padding)
  target_mask   [B, L]   bool   positions whose tokens are targets (predicted, corrupted)
  segment_ids   [B, L]   int32  packed-sequence ids (0 = padding), or None
  positions     [B, L]   int32  rotary positions (restart per packed segment), or None
  inputs        [B, Ti]  int32  encoder-decoder view: the inputs alone, right-padded
  targets       [B, Tt]  int32  encoder-decoder view: the targets alone, right-padded
  example_ids   [B]      int32  stable ids: per-example randomness derives from them
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from flax import struct


@struct.dataclass
class Batch:
    tokens: jax.Array
    prefix_len: jax.Array
    lengths: jax.Array
    target_mask: jax.Array
    inputs: jax.Array
    input_lengths: jax.Array
    targets: jax.Array
    target_lengths: jax.Array
    example_ids: jax.Array
    segment_ids: Optional[jax.Array] = None
    positions: Optional[jax.Array] = None

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])


def seq2seq_batch(
    inputs: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    *,
    input_len: int,
    target_len: int,
    pad_id: int,
    example_ids: Optional[Sequence[int]] = None,
    pad_targets: bool = True,
) -> Batch:
    """Lay out (inputs, targets) pairs; widths are fixed by config, never by the batch,
    so an example's computation does not depend on which batch it is in.

    Inputs longer than `input_len` or targets longer than `target_len` raise: count and
    filter them beforehand (see `workbench.evaluation.tasks`), nothing is cut silently.
    With `pad_targets` the target region is padded to `target_len` with `pad_id` and
    every target position is a real position (diffusion learns to emit padding); without
    it, only the real target tokens are (AR training).
    """
    batch = len(inputs)
    if len(targets) != batch:
        raise ValueError(f"got {batch} inputs but {len(targets)} targets")
    width = input_len + target_len
    tokens = np.full((batch, width), pad_id, np.int32)
    enc_inputs = np.full((batch, input_len), pad_id, np.int32)
    dec_targets = np.full((batch, target_len), pad_id, np.int32)
    prefix = np.zeros(batch, np.int32)
    lengths = np.zeros(batch, np.int32)
    tgt_lengths = np.zeros(batch, np.int32)
    target_mask = np.zeros((batch, width), bool)
    for b, (src, tgt) in enumerate(zip(inputs, targets)):
        if len(src) > input_len:
            raise ValueError(f"example {b}: {len(src)} input tokens exceed input_len={input_len}")
        if len(tgt) > target_len:
            raise ValueError(f"example {b}: {len(tgt)} target tokens exceed target_len={target_len}")
        n_src, n_tgt = len(src), len(tgt)
        tokens[b, :n_src] = src
        tokens[b, n_src : n_src + n_tgt] = tgt
        enc_inputs[b, :n_src] = src
        dec_targets[b, :n_tgt] = tgt
        prefix[b] = n_src
        tgt_lengths[b] = n_tgt
        span = target_len if pad_targets else n_tgt
        lengths[b] = n_src + span
        target_mask[b, n_src : n_src + span] = True
    ids = np.arange(batch, dtype=np.int32) if example_ids is None else np.asarray(example_ids, np.int32)
    return Batch(
        tokens=tokens,
        prefix_len=prefix,
        lengths=lengths,
        target_mask=target_mask,
        inputs=enc_inputs,
        input_lengths=prefix.copy(),
        targets=dec_targets,
        target_lengths=np.where(pad_targets, target_len, tgt_lengths).astype(np.int32),
        example_ids=ids,
    )
