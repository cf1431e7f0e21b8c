"""Diffusion processes: one object per process owns schedule, corruption, loss, initial
canvas and per-step update (`base.DiffusionProcess`). Importing this package registers
the built-in ones: `uniform` (the paper's SUNDAE-style noise) and `absorbing` (masked);
the decoding policies their `step` takes live in `policies`, the schedules they own in
`schedules`."""

from workbench.processes.absorbing import AbsorbingProcess
from workbench.processes.base import (
    Corruption,
    DiffusionProcess,
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
from workbench.processes.policies import (Entropy, LowConfidence, Margin, Policy, RandomOrder, RenoiseEntropy,
                                         ResampleAll, Threshold, commit_policy_names, get_policy, policy_names)
from workbench.processes.schedules import LinearSchedule, Schedule
from workbench.processes.uniform import UniformProcess

__all__ = ["AbsorbingProcess", "Corruption", "DiffusionProcess", "Entropy", "LinearSchedule", "LossMetrics",
           "LowConfidence", "Margin", "Policy", "RandomOrder", "RenoiseEntropy", "ResampleAll", "Schedule", "Threshold",
           "UniformProcess", "commit_policy_names", "cross_entropy", "draw_tokens", "get_policy", "get_process",
           "get_process_class", "non_special_ids", "policy_names", "process_names", "token_probs", "weighted_mean"]
