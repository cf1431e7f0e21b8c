"""Batch sources: deterministic functions of the step, so a resumed run sees the same data.

Example `g = step * batch_size + i` of the run comes from epoch `g // num_rows` at
position `g % num_rows` of that epoch's permutation (seeded by (seed, epoch)); any
per-example randomness (split points, noise spans) is seeded by (seed, g).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Sequence

import numpy as np

from workbench.objectives.batch import Batch, seq2seq_batch
from workbench.objectives.pretraining import (
    SpanCorruptionConfig,
    lm_batch,
    random_prefix_lengths,
    span_corruption_batch,
)


def _example_indices(step: int, batch_size: int, num_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(global example ids, row indices) of `step`'s batch."""
    global_ids = step * batch_size + np.arange(batch_size, dtype=np.int64)
    rows = np.empty(batch_size, np.int64)
    for epoch in np.unique(global_ids // num_rows):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(num_rows)
        sel = global_ids // num_rows == epoch
        rows[sel] = perm[global_ids[sel] % num_rows]
    return global_ids, rows


@dataclasses.dataclass
class LMSource:
    """Fixed-length windows of a token stream under a pretraining objective. Every row is real
    tokens (documents run on across rows, separated by EOS), so there is no padding to pack away."""

    stream: np.ndarray  # 1-D int32 token ids (documents joined with EOS)
    seq_len: int
    batch_size: int
    objective: Literal["causal_lm", "prefix_lm", "span_corruption"] = "prefix_lm"
    seed: int = 0
    pad_id: int = 0
    eos_id: int = 1
    sentinel_ids: Sequence[int] = ()
    span: SpanCorruptionConfig = dataclasses.field(default_factory=SpanCorruptionConfig)

    def __post_init__(self):
        self.stream = np.asarray(self.stream, np.int32)
        self.num_rows = (len(self.stream) - 1) // self.seq_len
        if self.num_rows < 1:
            raise ValueError(f"token stream of {len(self.stream)} tokens is shorter than one row of {self.seq_len}")
        if self.objective == "span_corruption" and not self.sentinel_ids:
            raise ValueError("span_corruption needs sentinel_ids (tokenizer.sentinel_ids)")

    def rows(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([self.stream[i * self.seq_len : (i + 1) * self.seq_len] for i in indices])

    def batch_at(self, step: int) -> Batch:
        ids, rows = _example_indices(step, self.batch_size, self.num_rows, self.seed)
        tokens = self.rows(rows)
        example_ids = (ids % np.iinfo(np.int32).max).astype(np.int32)
        if self.objective == "causal_lm":
            return lm_batch(tokens, np.zeros(len(tokens), np.int32), example_ids, self.pad_id)
        if self.objective == "prefix_lm":
            prefix = np.concatenate([random_prefix_lengths(np.random.default_rng([self.seed, int(g), 1]), 1, self.seq_len) for g in ids])
            return lm_batch(tokens, prefix, example_ids, self.pad_id)
        rng = np.random.default_rng([self.seed, step, 2])
        return span_corruption_batch(tokens, self.span, self.sentinel_ids, rng, example_ids, self.pad_id, self.eos_id)


@dataclasses.dataclass
class Seq2SeqSource:
    """Tokenized (inputs, targets) pairs at fixed widths. `pad_targets` for diffusion."""

    inputs: Sequence[Sequence[int]]
    targets: Sequence[Sequence[int]]
    input_len: int
    target_len: int
    batch_size: int
    pad_targets: bool
    seed: int = 0
    pad_id: int = 0

    def __post_init__(self):
        if len(self.inputs) != len(self.targets) or not self.inputs:
            raise ValueError(f"need equally many inputs and targets, at least one; got {len(self.inputs)} and {len(self.targets)}")
        self.num_rows = len(self.inputs)

    def batch_at(self, step: int) -> Batch:
        ids, rows = _example_indices(step, self.batch_size, self.num_rows, self.seed)
        return seq2seq_batch(
            [self.inputs[r] for r in rows],
            [self.targets[r] for r in rows],
            input_len=self.input_len,
            target_len=self.target_len,
            pad_id=self.pad_id,
            example_ids=rows.astype(np.int32),
            pad_targets=self.pad_targets,
        )


def fit_pairs(
    inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], input_len: int, target_len: int
) -> tuple[list, list, dict]:
    """Keep the pairs that fit the widths and report how many did not (never cut silently)."""
    keep_in, keep_out, too_long_inputs, too_long_targets = [], [], 0, 0
    for src, tgt in zip(inputs, targets):
        if len(src) > input_len:
            too_long_inputs += 1
        elif len(tgt) > target_len:
            too_long_targets += 1
        else:
            keep_in.append(list(src))
            keep_out.append(list(tgt))
    report = {"kept": len(keep_in), "inputs_too_long": too_long_inputs, "targets_too_long": too_long_targets,
              "input_len": input_len, "target_len": target_len}
    return keep_in, keep_out, report


def validation_batches(source, num_batches: int, start_step: Optional[int] = None) -> list[Batch]:
    """A fixed list of batches for evaluation (same every call)."""
    start = 10**6 if start_step is None else start_step
    return [source.batch_at(start + i) for i in range(num_batches)]
