"""Optimizers and learning-rate schedules (optax), configured as data."""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adamw", "adafactor"] = "adamw"
    learning_rate: float = 1e-3
    schedule: Literal["constant", "warmup_cosine", "inverse_sqrt"] = "warmup_cosine"
    warmup_steps: int = 100
    decay_steps: int = 0  # warmup_cosine: steps to decay over (0: the run's total steps)
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0  # global-norm clipping; 0 disables

    def __post_init__(self):
        if self.name not in ("adamw", "adafactor"):
            raise ValueError(f"optimizer {self.name!r}; expected 'adamw' or 'adafactor'")
        if self.schedule not in ("constant", "warmup_cosine", "inverse_sqrt"):
            raise ValueError(f"schedule {self.schedule!r}; expected 'constant', 'warmup_cosine' or 'inverse_sqrt'")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive")


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    lr, warmup = config.learning_rate, max(config.warmup_steps, 0)
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "inverse_sqrt":
        # linear warmup, then lr * sqrt(warmup / step) (T5's rsqrt decay)
        w = max(warmup, 1)
        return lambda step: lr * _inverse_sqrt(step, w)
    decay = config.decay_steps or total_steps
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(decay, warmup + 1),
        end_value=lr * config.final_lr_fraction,
    )


def _inverse_sqrt(step, warmup):
    import jax.numpy as jnp

    step = jnp.asarray(step, jnp.float32) + 1.0
    return jnp.minimum(step / warmup, jnp.sqrt(warmup / step))


@functools.lru_cache(maxsize=32)
def make_optimizer(config: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The transformation and its schedule. Cached: equal configs get the same (stateless)
    objects, so a second `train` call with them reuses the compiled step instead of recompiling."""
    schedule = make_schedule(config, total_steps)
    if config.name == "adamw":
        tx = optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay)
    else:
        tx = optax.adafactor(schedule, weight_decay_rate=config.weight_decay or None)
    if config.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
    return tx, schedule
