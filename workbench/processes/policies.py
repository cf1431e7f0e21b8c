"""Decoding policies: which positions a diffusion step commits (or keeps), one class each.

A policy is an object carrying its own parameters (`Threshold(threshold=0.9)`). It sees one
step's logits [B, N, V], the tokens drawn from them, their probability, which positions are
still open and the process's schedule, and returns a bool [B, N]. Processes call it from
`step` (`workbench.processes`), so full-canvas and block decoding share it, and adding a
policy is one subclass with a `name` (defining it registers it for `get_policy`).

Two families:

* commit policies (`freezes = True`): a committed position is never rewritten again.
  `random`, `low_confidence` (the absorbing default), `margin` and `entropy` rank open
  positions by a score and commit the process schedule's count (the linear schedule: by the
  end of step s of S, ceil(N (s+1)/S) positions are committed; committed ones count towards it).
  `threshold` commits every open position whose drawn token has probability above
  `threshold`, at least the most confident one per step, and all that are left at the
  last step of the budget (Fast-dLLM's parallel decoding).
* keep policies (`freezes = False`, uniform noise only): every step re-predicts every
  position and the policy says which predictions to keep; the others are re-noised.
  `resample_all` keeps all (the paper's SUNDAE sampler, the uniform default);
  `renoise_entropy` keeps the schedule's count of lowest-entropy positions and re-noises
  the rest (the DiffusionGemma-style rule).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from workbench.processes.schedules import Schedule

_POLICIES: dict[str, type["Policy"]] = {}


def _rank_commit(score_BxN, open_BxN, step, num_steps, schedule: Schedule):
    """Open positions with the highest score, up to the schedule's count (closed positions
    rank first, so they count towards it)."""
    keep_n = schedule.clean_count(step, num_steps, score_BxN.shape[-1])
    confidence = jnp.where(open_BxN, score_BxN, jnp.inf)
    rank = jnp.argsort(jnp.argsort(-confidence, axis=-1), axis=-1)
    return open_BxN & (rank < keep_n)


def _entropy(logits_BxNxV):
    logp = jax.nn.log_softmax(logits_BxNxV.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Base class. `select` returns the positions to commit (commit policies, a subset of
    `open_BxN`) or to keep (keep policies, any position)."""

    name: ClassVar[str] = ""
    freezes: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name", "")
        if name:
            known = _POLICIES.get(name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ValueError(f"decoding policy name {name!r} is already taken by {known.__qualname__}")
            _POLICIES[name] = cls

    def select(self, step, num_steps: int, logits_BxNxV, draw_BxN, p_BxN, open_BxN, keys_B,
               schedule: Schedule) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LowConfidence(Policy):
    """Commit the most probable draws first (remask the low-confidence ones: LLaDA, MaskGIT)."""

    name: ClassVar[str] = "low_confidence"

    def select(self, step, num_steps, logits_BxNxV, draw_BxN, p_BxN, open_BxN, keys_B, schedule):
        return _rank_commit(p_BxN, open_BxN, step, num_steps, schedule)


@dataclasses.dataclass(frozen=True)
class RandomOrder(Policy):
    """Commit open positions in a random order (the plain masked-diffusion reverse process)."""

    name: ClassVar[str] = "random"

    def select(self, step, num_steps, logits_BxNxV, draw_BxN, p_BxN, open_BxN, keys_B, schedule):
        score = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 7), p_BxN.shape[-1:]))(keys_B)
        return _rank_commit(score, open_BxN, step, num_steps, schedule)


@dataclasses.dataclass(frozen=True)
class Margin(Policy):
    """Commit where the top-1 probability beats the top-2 by the widest margin."""

    name: ClassVar[str] = "margin"

    def select(self, step, num_steps, logits_BxNxV, draw_BxN, p_BxN, open_BxN, keys_B, schedule):
        top2 = jax.lax.top_k(jax.nn.softmax(logits_BxNxV.astype(jnp.float32), axis=-1), 2)[0]
        return _rank_commit(top2[..., 0] - top2[..., 1], open_BxN, step, num_steps, schedule)


@dataclasses.dataclass(frozen=True)
class Entropy(Policy):
    """Commit where the predictive distribution has the lowest entropy."""

    name: ClassVar[str] = "entropy"

    def select(self, step, num_steps, logits_BxNxV, draw_BxN, p_BxN, open_BxN, keys_B, schedule):
        return _rank_commit(-_entropy(logits_BxNxV), open_BxN, step, num_steps, schedule)


@dataclasses.dataclass(frozen=True)
class Threshold(Policy):
    """Commit every open draw with probability > `threshold`; at least the most confident
    open one per step, and every open one at the budget's last step (Fast-dLLM)."""

    name: ClassVar[str] = "threshold"
    threshold: float = 0.9

    def __post_init__(self):
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold} must be in [0, 1) (a probability a draw must exceed)")

    def select(self, step, num_steps, logits_BxNxV, draw_BxN, p_BxN, open_BxN, keys_B, schedule):
        confidence = jnp.where(open_BxN, p_BxN, -jnp.inf)
        best = jnp.arange(p_BxN.shape[-1])[None, :] == jnp.argmax(confidence, axis=-1)[:, None]
        last = step >= num_steps - 1
        return open_BxN & ((p_BxN > self.threshold) | best | last)


@dataclasses.dataclass(frozen=True)
class ResampleAll(Policy):
    """Keep every new prediction (the paper's sampler for uniform noise)."""

    name: ClassVar[str] = "resample_all"
    freezes: ClassVar[bool] = False

    def select(self, step, num_steps, logits_BxNxV, draw_BxN, p_BxN, open_BxN, keys_B, schedule):
        return jnp.ones(draw_BxN.shape, bool)


@dataclasses.dataclass(frozen=True)
class RenoiseEntropy(Policy):
    """Keep the schedule's count of lowest-entropy predictions; re-noise the rest
    (DiffusionGemma-style; every position is re-predicted at every step)."""

    name: ClassVar[str] = "renoise_entropy"
    freezes: ClassVar[bool] = False

    def select(self, step, num_steps, logits_BxNxV, draw_BxN, p_BxN, open_BxN, keys_B, schedule):
        everywhere = jnp.ones(draw_BxN.shape, bool)
        return _rank_commit(-_entropy(logits_BxNxV), everywhere, step, num_steps, schedule)


def policy_names() -> tuple[str, ...]:
    return tuple(sorted(_POLICIES))


def get_policy(name: str, **params) -> Policy:
    """The registered policy `name` with its parameters (`get_policy("threshold", threshold=0.8)`).
    Parameters the policy does not have are left out, so one set of options serves a list of
    names (a benchmark's `--threshold`); a parameter no registered policy has is refused."""
    if name not in _POLICIES:
        raise ValueError(f"unknown decoding policy {name!r}; expected one of {list(policy_names())}")
    known = {f.name for cls in _POLICIES.values() for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"decoding policy parameters {unknown} belong to no policy; expected a subset of "
                         f"{sorted(known)} (the fields of {list(policy_names())})")
    cls = _POLICIES[name]
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in params.items() if key in own})


def commit_policy_names() -> tuple[str, ...]:
    """The policies that never rewrite a committed position (usable by every process)."""
    return tuple(name for name in policy_names() if _POLICIES[name].freezes)
