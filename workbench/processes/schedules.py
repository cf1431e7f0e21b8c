"""Noise schedules: how much of a canvas is corrupted in training and clean during sampling.

A schedule is an object the process owns (`DiffusionProcess.schedule`); the decoding
policies read it through the process, so a new schedule is one subclass here and a process
that takes it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class: per-example corruption rates for training, clean counts for sampling."""

    def sample_rates(self, rng: jax.Array, batch: int, min_rate: float = 0.0) -> jax.Array:
        """Corruption rates [batch] in [min_rate, 1)."""
        raise NotImplementedError

    def clean_count(self, step: jax.Array, num_steps: int, length: int) -> jax.Array:
        """Clean positions a canvas of `length` holds after sampling step `step` (0-based) of `num_steps`."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LinearSchedule(Schedule):
    """Corruption rate t ~ U(min_rate, 1); by the end of sampling step s of S, (s+1)/S of
    the canvas is clean. The loss weight 1/t is this schedule's ELBO weight (md4)."""

    def sample_rates(self, rng, batch, min_rate=0.0):
        return jax.random.uniform(rng, (batch,), minval=min_rate, maxval=1.0)

    def clean_count(self, step, num_steps, length):
        return jnp.ceil(length * (step + 1) / num_steps).astype(jnp.int32)
