"""Objectives: batch layout, pretraining objectives (host side) and training losses (device side)."""

from workbench.objectives.batch import Batch, seq2seq_batch
from workbench.objectives.losses import LossConfig, LossMetrics, loss_fn
from workbench.objectives.pretraining import SpanCorruptionConfig, lm_batch

__all__ = ["Batch", "LossConfig", "LossMetrics", "SpanCorruptionConfig", "lm_batch", "loss_fn", "seq2seq_batch"]
