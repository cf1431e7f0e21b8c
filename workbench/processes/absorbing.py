"""Absorbing-state (masked) diffusion.

Forward: per example a rate t ~ U(min_mask_rate, 1) (the linear schedule); each target
token becomes the mask token with probability t. Loss: cross-entropy on masked positions
weighted by 1/t (the linear schedule's ELBO weight), averaged over target tokens.
Sampling: start from an all-mask canvas; each step draws a token for every masked
position and reveals those the decoding policy picks (default `low_confidence`: the most
confident, so that by the end of step s of S the schedule's (s+1)/S of the canvas is
revealed); revealed tokens stay.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from workbench.processes.loss_metrics import LossMetrics
from workbench.processes.base import (Corruption, DiffusionProcess, cross_entropy, draw_tokens, token_probs,
    weighted_mean)
from workbench.processes.policies import LowConfidence, Policy, commit_policy_names


@dataclasses.dataclass(frozen=True)
class AbsorbingProcess(DiffusionProcess):
    name: ClassVar[str] = "absorbing"
    uses_mask: ClassVar[bool] = True
    default_policy: ClassVar[Policy] = LowConfidence()

    def corrupt(self, rng, clean_BxN, weights_BxN, min_rate: float = 0.0) -> Corruption:
        rate_key, where_key = jax.random.split(rng)
        rates = self.schedule.sample_rates(rate_key, clean_BxN.shape[0], min_rate)
        hit = (jax.random.uniform(where_key, clean_BxN.shape) < rates[:, None]) & (weights_BxN > 0)
        return Corruption(jnp.where(hit, self.mask_id, clean_BxN), hit, rates)

    def loss(self, denoise, clean_BxN, weights_BxN, rng, config):
        noisy, hit, rates = self.corrupt(rng, clean_BxN, weights_BxN, config.min_mask_rate)
        logits = denoise(noisy)
        ce = cross_entropy(logits, clean_BxN)
        hit_f = hit.astype(jnp.float32)
        loss = jnp.sum(ce * hit_f / rates[:, None]) / jnp.maximum(jnp.sum(weights_BxN), 1.0)
        correct = (jnp.argmax(logits, -1) == clean_BxN).astype(jnp.float32)
        return loss, LossMetrics.of(loss, weights_BxN, accuracy=(correct, hit_f))

    def initial_canvas(self, keys_B, length):
        return jnp.full((keys_B.shape[0], length), self.mask_id, jnp.int32)

    def step(self, step, num_steps, canvas_BxN, committed_BxN, logits_BxNxV, keys_B, temperature, policy):
        if not policy.freezes:
            raise ValueError(f"decoding policy {policy.name!r} re-noises positions, which absorbing diffusion cannot "
                             f"(a revealed token stays); use one of {list(commit_policy_names())}")
        del committed_BxN  # the canvas says it: every non-mask position is committed
        logits = logits_BxNxV.at[..., self.mask_id].set(-jnp.inf)  # never "reveal" the mask token itself
        draw = draw_tokens(keys_B, logits, temperature)
        p = token_probs(logits, draw)
        masked = canvas_BxN == self.mask_id
        reveal = masked & policy.select(step, num_steps, logits, draw, p, masked, keys_B, self.schedule)
        new = jnp.where(reveal, draw, canvas_BxN)
        return new, new != self.mask_id, jnp.where(masked, p, 1.0)
