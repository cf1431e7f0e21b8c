"""Diffusion processes: one object per process owns schedule, corruption, loss, initial
canvas and per-step update (`base.DiffusionProcess`). Importing this package registers
the built-in ones: `uniform` (the paper's SUNDAE-style noise) and `absorbing` (masked)."""

from workbench.processes.absorbing import AbsorbingProcess
from workbench.processes.base import (
    Corruption,
    DiffusionProcess,
    LinearSchedule,
    cross_entropy,
    draw_tokens,
    get_process,
    get_process_class,
    non_special_ids,
    process_names,
    token_probs,
    weighted_mean,
)
from workbench.processes.loss_metrics import LossMetrics
from workbench.processes.uniform import UniformProcess

__all__ = ["AbsorbingProcess", "Corruption", "DiffusionProcess", "LinearSchedule", "LossMetrics", "UniformProcess",
           "cross_entropy", "draw_tokens", "get_process", "get_process_class", "non_special_ids", "process_names",
           "token_probs", "weighted_mean"]
