"""What every loss returns beside its value: the contract between losses and the trainer.

`loss` is the scalar the gradient is taken of, a mean over `target_tokens`; the trainer
weights it (and its gradient) by `target_tokens` when it combines microbatches. Every other
metric is a weighted mean kept as (weighted sum, weight), each with its own weight (the
accuracy of masked diffusion counts masked positions, `accuracy_non_pad` text positions),
so combining microbatches or evaluation batches gives exactly the mean over all of them.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class LossMetrics:
    loss: jax.Array  # scalar: the optimised value, a mean over target_tokens
    target_tokens: jax.Array  # scalar: the weight of `loss`
    sums: dict[str, jax.Array]  # name -> sum of values x weights
    weights: dict[str, jax.Array]  # name -> sum of weights

    @classmethod
    def of(cls, loss: jax.Array, target_weights: jax.Array, /, **means: tuple[jax.Array, jax.Array]) -> "LossMetrics":
        """`loss` over `target_weights` (its token weights), and each named mean given as
        (values, weights) of the same shape."""
        for name in ("loss", "target_tokens"):
            if name in means:
                raise ValueError(f"metric name {name!r} is reserved; name the mean something else")
        return cls(
            loss=loss,
            target_tokens=jnp.sum(target_weights),
            sums={k: jnp.sum(v * w) for k, (v, w) in means.items()},
            weights={k: jnp.sum(w) for k, (_, w) in means.items()},
        )

    def record(self) -> dict[str, jax.Array]:
        """Flat name -> value: `loss`, each mean, and `target_tokens`."""
        means = {k: self.sums[k] / jnp.maximum(self.weights[k], 1.0) for k in self.sums}
        return {"loss": self.loss, **means, "target_tokens": self.target_tokens}

    @staticmethod
    def combine(parts: Sequence["LossMetrics"]) -> "LossMetrics":
        """Metrics over the union of the parts' tokens (losses weighted by target_tokens)."""
        if not parts:
            raise ValueError("combine needs at least one LossMetrics")
        for part in parts:
            if not isinstance(part, LossMetrics):
                raise TypeError(f"a loss must return (loss, LossMetrics); got metrics of type {type(part).__name__}. "
                                f"Build them with LossMetrics.of(loss, target_weights, name=(values, weights), ...)")
        names = set(parts[0].sums)
        for part in parts[1:]:
            if set(part.sums) != names:
                raise ValueError(f"cannot combine metrics named {sorted(names)} with {sorted(part.sums)}")
        total = sum(p.target_tokens for p in parts)
        loss = sum(p.loss * p.target_tokens for p in parts) / jnp.maximum(total, 1.0)
        return LossMetrics(
            loss=loss,
            target_tokens=total,
            sums={k: sum(p.sums[k] for p in parts) for k in names},
            weights={k: sum(p.weights[k] for p in parts) for k in names},
        )
