"""Training losses behind one interface: `loss_fn(model, batch, rng, config) -> (loss, LossMetrics)`.

* `kind="ar"` (teacher forcing): next-token cross-entropy on target tokens.
* `kind=<a diffusion process>` (`workbench.processes`: `uniform`, the paper's SUNDAE-style
  noise with L1 + unrolled L2, or `absorbing`, masked diffusion weighted by 1/t): the
  process corrupts the targets and computes its own loss through the model's denoiser.
  Under `block_causal` attention the denoiser is block diffusion's (`block_denoise`: each
  noisy block sees the clean blocks before it), for every process.
* `ar_weight > 0` with a diffusion process: the joint loss, diffusion + ar_weight x the AR
  loss on the clean sequence under the architecture's AR attention (`arch_spec.ar_attention`),
  on the same parameters, so a converted model stays a good AR model (Nemotron-Labs
  Diffusion uses 0.3). The AR term is logged as `ar_loss`.

Losses never ask which architecture they hold: the model's `target_view`, `denoise` and
`teacher_forced` give the layout (see `workbench.models`). Losses are means over target
tokens, so they do not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from workbench.models.transformer import with_attention
from workbench.objectives.batch import Batch
from workbench.objectives.drafting import DraftConfig, draft_loss
from workbench.processes.loss_metrics import LossMetrics
from workbench.processes import cross_entropy, get_process, process_names, weighted_mean


@dataclasses.dataclass(frozen=True)
class LossConfig:
    kind: str = "ar"  # "ar" or a diffusion process name (workbench.processes: "uniform", "absorbing", ...)
    unroll: bool = True  # uniform: add the L2 (unrolled) term
    unroll_temperature: float = 0.0  # 0: argmax of the first pass (the paper's best on WMT)
    min_mask_rate: float = 1e-3  # absorbing: t ~ U(min_mask_rate, 1) keeps 1/t finite
    special_ids: tuple[int, ...] = (0, 1, 2)  # never sampled as corruption (pad, eos, unk, ...)
    mask_id: int = 3  # the absorbing token
    pad_id: int = 0  # target padding (the tokenizer's fixed pad id); only splits the accuracy metric
    draft: Optional[DraftConfig] = None  # kind="draft": a block drafter on a frozen AR model (objectives.drafting)
    ar_weight: float = 0.0  # diffusion kinds: add ar_weight x the AR loss under AR attention (the joint loss)

    @classmethod
    def for_tokenizer(cls, tokenizer, kind: str = "ar", *, model_vocab_size=None, **options) -> "LossConfig":
        """The loss `kind` with the tokenizer's ids (`workbench.data.special.loss_ids`): its
        specials, the padded rows past `model_vocab_size`'s share never drawn as noise."""
        from workbench.data.special import loss_ids

        return cls(kind=kind, **loss_ids(tokenizer, kind, model_vocab_size), **options)

    def __post_init__(self):
        if self.kind not in ("ar", "draft") and self.kind not in process_names():
            raise ValueError(f"loss kind {self.kind!r}; expected 'ar', 'draft' or a diffusion process "
                             f"{list(process_names())}")
        if (self.kind == "draft") != (self.draft is not None):
            raise ValueError(f"loss kind {self.kind!r} with draft={self.draft!r}: kind='draft' takes a DraftConfig "
                             f"(draft=DraftConfig(block_size=4, ...)) and the other kinds none")
        if self.unroll_temperature < 0:
            raise ValueError(f"unroll_temperature={self.unroll_temperature} must be >= 0")
        if not self.ar_weight >= 0:
            raise ValueError(f"ar_weight={self.ar_weight} must be >= 0 (0: the diffusion loss alone)")
        if self.ar_weight and self.kind in ("ar", "draft"):
            raise ValueError(f"ar_weight={self.ar_weight} adds the AR loss to a diffusion loss; loss kind "
                             f"{self.kind!r} is not one (use a diffusion process kind, or ar_weight=0)")


def ar_loss(model, batch: Batch, rng: jax.Array, config: LossConfig):
    """Teacher-forced next-token loss on target tokens."""
    del rng, config
    logits, labels, weights = model.teacher_forced(batch)
    ce = cross_entropy(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    loss = weighted_mean(ce, weights)
    return loss, LossMetrics.of(loss, weights, accuracy=(correct, weights))


def diffusion_loss(model, batch: Batch, rng: jax.Array, config: LossConfig):
    """The loss of the diffusion process `config.kind`, on the model's target layout."""
    process = get_process(config.kind, model.config.vocab_size, config.special_ids, config.mask_id)
    clean, weights = model.target_view(batch)
    if model.config.attention == "block_causal":  # block diffusion: noisy blocks see clean earlier blocks
        return process.loss(lambda tokens: model.block_denoise(batch, tokens), clean, weights, rng, config)
    return process.loss(lambda tokens: model.denoise(batch, tokens), clean, weights, rng, config)


def joint_loss(model, batch: Batch, rng: jax.Array, config: LossConfig):
    """The diffusion loss plus `ar_weight` x the AR loss of the same parameters under the
    architecture's AR attention; metrics are the diffusion loss's, with `ar_loss` added."""
    loss, metrics = diffusion_loss(model, batch, rng, config)
    logits, labels, weights = with_attention(model, model.config.arch_spec.ar_attention).teacher_forced(batch)
    ar = weighted_mean(cross_entropy(logits, labels), weights)
    return loss + config.ar_weight * ar, metrics.replace(
        loss=loss + config.ar_weight * ar, sums={**metrics.sums, "ar_loss": ar * jnp.sum(weights)},
        weights={**metrics.weights, "ar_loss": jnp.sum(weights)})


def loss_fn(model, batch: Batch, rng: jax.Array, config: LossConfig):
    if config.kind == "draft":
        return draft_loss(model, batch, rng, config)
    if config.kind == "ar":
        return ar_loss(model, batch, rng, config)
    return (joint_loss if config.ar_weight else diffusion_loss)(model, batch, rng, config)
