"""Uniform noise (the paper's simplified SUNDAE).

Forward: per example a rate r ~ U(0, 1); each target token is replaced with probability r
by a uniformly random non-special token. Loss: L1 + L2, where L2 feeds the argmax (or a
sample at `unroll_temperature`) of the first pass back in at target positions, keeps the
other positions clean, and passes no gradient through that choice. Target padding is
predicted like any token (the model learns length). `accuracy_non_pad` is the first
pass's accuracy on the other target tokens: most of a padded canvas is padding, so the
plain `accuracy` can be high while the text itself is not learned yet.
Sampling: start from uniformly random tokens; by default (`resample_all`, the paper's)
every step redraws every position; any decoding policy (`workbench.processes.policies`)
can replace that rule.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from workbench.processes.loss_metrics import LossMetrics
from workbench.processes.base import (Corruption, DiffusionProcess, cross_entropy, draw_tokens, non_special_ids,
    token_probs, weighted_mean)
from workbench.processes.policies import Policy, ResampleAll


@dataclasses.dataclass(frozen=True)
class UniformProcess(DiffusionProcess):
    name: ClassVar[str] = "uniform"
    default_policy: ClassVar[Policy] = ResampleAll()

    def corrupt(self, rng, clean_BxN, weights_BxN) -> Corruption:
        rate_key, where_key, token_key = jax.random.split(rng, 3)
        batch, length = clean_BxN.shape
        rates = self.schedule.sample_rates(rate_key, batch)
        hit = (jax.random.uniform(where_key, (batch, length)) < rates[:, None]) & (weights_BxN > 0)
        allowed = non_special_ids(self.vocab_size, self.special_ids)
        noise = allowed[jax.random.randint(token_key, (batch, length), 0, allowed.shape[0])]
        return Corruption(jnp.where(hit, noise, clean_BxN), hit, rates)

    def loss(self, denoise, clean_BxN, weights_BxN, rng, config):
        corrupt_key, unroll_key = jax.random.split(rng)
        noisy = self.corrupt(corrupt_key, clean_BxN, weights_BxN).noisy
        logits1 = denoise(noisy)
        ce1 = cross_entropy(logits1, clean_BxN)
        loss1 = weighted_mean(ce1, weights_BxN)
        correct = (jnp.argmax(logits1, -1) == clean_BxN).astype(jnp.float32)
        text_weights = weights_BxN * (clean_BxN != config.pad_id)
        means = {"loss_l1": (ce1, weights_BxN), "accuracy": (correct, weights_BxN),
                 "accuracy_non_pad": (correct, text_weights)}
        loss = loss1
        if config.unroll:
            first_pass = jax.lax.stop_gradient(logits1)
            if config.unroll_temperature == 0.0:
                guess = jnp.argmax(first_pass, axis=-1).astype(clean_BxN.dtype)
            else:
                guess = jax.random.categorical(unroll_key, first_pass / config.unroll_temperature).astype(clean_BxN.dtype)
            unrolled = jnp.where(weights_BxN > 0, guess, clean_BxN)  # inputs stay clean ("frozen")
            ce2 = cross_entropy(denoise(unrolled), clean_BxN)
            means["loss_l2"] = (ce2, weights_BxN)
            loss = loss1 + weighted_mean(ce2, weights_BxN)
        return loss, LossMetrics.of(loss, weights_BxN, **means)

    def initial_canvas(self, keys_B, length):
        allowed = non_special_ids(self.vocab_size, self.special_ids)
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 10**6))(keys_B)
        return allowed[jax.vmap(lambda k: jax.random.randint(k, (length,), 0, allowed.shape[0]))(init_keys)]

    def step(self, step, num_steps, canvas_BxN, committed_BxN, logits_BxNxV, keys_B, temperature, policy):
        draw = draw_tokens(keys_B, logits_BxNxV, temperature)
        if policy.freezes:  # committed positions stay; the open ones take the new draw
            p = token_probs(logits_BxNxV, draw)
            commit = ~committed_BxN & policy.select(step, num_steps, logits_BxNxV, draw, p, ~committed_BxN, keys_B,
                                                       self.schedule)
            new = jnp.where(committed_BxN, canvas_BxN, draw)
            return new, committed_BxN | commit, token_probs(logits_BxNxV, new)
        keep = policy.select(step, num_steps, logits_BxNxV, draw, None, jnp.ones_like(committed_BxN), keys_B,
                             self.schedule)
        new = jnp.where(keep, draw, self._noise(keys_B, canvas_BxN.shape[-1]))
        return new, jnp.zeros_like(committed_BxN), token_probs(logits_BxNxV, new)

    def _noise(self, keys_B, length):
        allowed = non_special_ids(self.vocab_size, self.special_ids)
        noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 11))(keys_B)
        return allowed[jax.vmap(lambda k: jax.random.randint(k, (length,), 0, allowed.shape[0]))(noise_keys)]
