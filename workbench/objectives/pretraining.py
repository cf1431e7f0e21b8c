"""Pretraining objectives on token streams: causal LM, prefix LM, T5 span corruption.

All host-side numpy, deterministic in an explicit `np.random.Generator` (the trainer
seeds one per step from (seed, step), so data order survives a resume).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np

from workbench.objectives.batch import Batch, seq2seq_batch

Objective = Literal["causal_lm", "prefix_lm", "span_corruption"]


@dataclasses.dataclass(frozen=True)
class SpanCorruptionConfig:
    noise_density: float = 0.15  # T5 default
    mean_span_length: float = 3.0  # T5 default

    def __post_init__(self):
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"noise_density={self.noise_density} must be in (0, 1)")
        if self.mean_span_length < 1.0:
            raise ValueError(f"mean_span_length={self.mean_span_length} must be >= 1")


def lm_batch(rows: np.ndarray, prefix_len: np.ndarray, example_ids: np.ndarray, pad_id: int) -> Batch:
    """Full-length rows [B, L] split at `prefix_len`: inputs before, targets from there on."""
    rows = np.asarray(rows, np.int32)
    batch, width = rows.shape
    prefix_len = np.asarray(prefix_len, np.int32)
    positions = np.arange(width)[None, :]
    inputs = np.where(positions < prefix_len[:, None], rows, pad_id).astype(np.int32)
    targets = np.full_like(rows, pad_id)
    for b in range(batch):
        targets[b, : width - prefix_len[b]] = rows[b, prefix_len[b] :]
    return Batch(
        tokens=rows,
        prefix_len=prefix_len,
        lengths=np.full(batch, width, np.int32),
        target_mask=positions >= prefix_len[:, None],
        inputs=inputs,
        input_lengths=prefix_len.copy(),
        targets=targets,
        target_lengths=(width - prefix_len).astype(np.int32),
        example_ids=np.asarray(example_ids, np.int32),
    )


def random_prefix_lengths(rng: np.random.Generator, batch: int, width: int) -> np.ndarray:
    """One split point per example, uniform in [1, width - 1] (both sides non-empty)."""
    return rng.integers(1, width, size=batch, dtype=np.int32)


def random_spans_noise_mask(length: int, cfg: SpanCorruptionConfig, rng: np.random.Generator) -> np.ndarray:
    """T5's noise mask: about noise_density * length noise tokens in spans of mean length
    mean_span_length, interleaved with non-noise spans, starting with non-noise."""
    num_noise = int(np.round(length * cfg.noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(np.round(num_noise / cfg.mean_span_length)), 1)
    num_nonnoise = length - num_noise

    def segment_lengths(total: int, parts: int) -> np.ndarray:
        # random partition of `total` items into `parts` non-empty segments
        cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else []
        return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)

    noise_spans = segment_lengths(num_noise, num_spans)
    nonnoise_spans = segment_lengths(num_nonnoise, num_spans)
    mask = np.zeros(length, bool)
    pos = 0
    for keep, drop in zip(nonnoise_spans, noise_spans):
        pos += keep
        mask[pos : pos + drop] = True
        pos += drop
    return mask


def span_corrupt(tokens: Sequence[int], noise_mask: np.ndarray, sentinel_ids: Sequence[int]):
    """(inputs, targets) T5-style: each noise span becomes one sentinel in the inputs; the
    targets list each sentinel followed by the span it replaced."""
    inputs, targets = [], []
    span = -1
    prev = False
    for tok, noisy in zip(tokens, noise_mask):
        if noisy and not prev:
            span += 1
            if span >= len(sentinel_ids):
                raise ValueError(f"{span + 1} noise spans but only {len(sentinel_ids)} sentinel ids")
            inputs.append(sentinel_ids[span])
            targets.append(sentinel_ids[span])
        (targets if noisy else inputs).append(int(tok))
        prev = noisy
    return inputs, targets


def span_corruption_batch(
    rows: np.ndarray,
    cfg: SpanCorruptionConfig,
    sentinel_ids: Sequence[int],
    rng: np.random.Generator,
    example_ids: np.ndarray,
    pad_id: int,
    eos_id: int,
) -> Batch:
    """Span-corrupt full rows. Widths depend on the row width only (never on the batch):
    every row of width L has the same number of noise tokens and spans."""
    rows = np.asarray(rows)
    width = rows.shape[1]
    masks = [random_spans_noise_mask(width, cfg, rng) for _ in rows]
    pairs = [span_corrupt(row, mask, sentinel_ids) for row, mask in zip(rows, masks)]
    num_noise = int(masks[0].sum()) if masks else 0
    num_spans = max(int(np.round(num_noise / cfg.mean_span_length)), 1)
    target_len = num_noise + num_spans + 1  # spans, their sentinels, EOS
    return seq2seq_batch(
        [i for i, _ in pairs],
        [t + [eos_id] for _, t in pairs],
        input_len=width,
        target_len=target_len,
        pad_id=pad_id,
        example_ids=example_ids,
        pad_targets=False,
    )

