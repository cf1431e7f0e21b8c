"""Training losses behind one interface: `loss_fn(model, batch, rng) -> (loss, metrics)`.

* AR (teacher forcing): next-token cross-entropy on target tokens.
* Diffusion (the paper's simplified SUNDAE): per-example rate r ~ U(0, 1); each target
  token is replaced with probability r by a uniformly random non-special token; loss
  L1 + L2, where L2 feeds the argmax (or a sample at `unroll_temperature`) of the first
  pass back in at target positions, keeps input positions clean, and passes no gradient
  through that choice. Target padding is predicted like any token, with the same weight
  (the model learns length; the paper has no length model). `accuracy_non_pad` reports the
  first pass's accuracy on the other target tokens: most of a padded canvas is padding,
  so the plain `accuracy` can be high while the text itself is not learned yet.
* Masked diffusion (absorbing state): each target token becomes the mask token with
  probability t ~ U(0, 1); cross-entropy on masked positions weighted by 1/t.

Losses are means over target tokens, so they do not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp

from workbench.models import DecoderOnly, EncoderDecoder
from workbench.objectives.batch import Batch

TrainingKind = Literal["ar", "diffusion", "masked_diffusion"]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    kind: TrainingKind = "ar"
    unroll: bool = True  # diffusion: add the L2 (unrolled) term
    unroll_temperature: float = 0.0  # 0: argmax of the first pass (the paper's best on WMT)
    min_mask_rate: float = 1e-3  # masked diffusion: t ~ U(min_mask_rate, 1) keeps 1/t finite
    special_ids: tuple[int, ...] = (0, 1, 2)  # never sampled as corruption (pad, eos, unk, ...)
    mask_id: int = 3  # masked diffusion's absorbing token
    pad_id: int = 0  # target padding (the tokenizer's fixed pad id); only splits the accuracy metric

    def __post_init__(self):
        if self.kind not in ("ar", "diffusion", "masked_diffusion"):
            raise ValueError(f"loss kind {self.kind!r}; expected 'ar', 'diffusion' or 'masked_diffusion'")
        if self.unroll_temperature < 0:
            raise ValueError(f"unroll_temperature={self.unroll_temperature} must be >= 0")


def target_view(model, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(clean tokens [B, N], target weights [B, N]) in the layout the model's denoiser sees."""
    if isinstance(model, EncoderDecoder):
        positions = jnp.arange(batch.targets.shape[1])[None, :]
        return batch.targets, (positions < batch.target_lengths[:, None]).astype(jnp.float32)
    return batch.tokens, batch.target_mask.astype(jnp.float32)


def denoiser_logits(model, batch: Batch, tokens_BxN: jax.Array) -> jax.Array:
    """Logits at every position of `tokens` (same layout as `target_view`)."""
    if isinstance(model, EncoderDecoder):
        return model(batch.inputs, tokens_BxN, input_lengths=batch.input_lengths, target_lengths=batch.target_lengths)
    return model(
        tokens_BxN,
        prefix_len=batch.prefix_len,
        lengths=batch.lengths,
        segment_ids=batch.segment_ids,
        positions=batch.positions,
    )


def cross_entropy(logits_BxNxV: jax.Array, labels_BxN: jax.Array) -> jax.Array:
    logits = logits_BxNxV.astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels_BxN[..., None], axis=-1)[..., 0]


def _weighted_mean(values, weights):
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def ar_loss(model, batch: Batch, rng: jax.Array, config: LossConfig):
    """Teacher-forced next-token loss on target tokens."""
    del rng
    if isinstance(model, EncoderDecoder):
        start = jnp.zeros_like(batch.targets[:, :1])  # pad id 0 starts the decoder (T5)
        decoder_in = jnp.concatenate([start, batch.targets[:, :-1]], axis=1)
        logits = model(batch.inputs, decoder_in, input_lengths=batch.input_lengths)
        labels, weights = target_view(model, batch)
    else:
        logits = denoiser_logits(model, batch, batch.tokens)[:, :-1]
        labels = batch.tokens[:, 1:]
        weights = batch.target_mask[:, 1:].astype(jnp.float32)
        if batch.segment_ids is not None:  # never predict across packed-sequence boundaries
            weights = weights * (batch.segment_ids[:, 1:] == batch.segment_ids[:, :-1])
    ce = cross_entropy(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    loss = _weighted_mean(ce, weights)
    return loss, {"loss": loss, "accuracy": _weighted_mean(correct, weights), "target_tokens": jnp.sum(weights)}


def non_special_ids(vocab_size: int, special_ids: Sequence[int]) -> jax.Array:
    keep = jnp.ones((vocab_size,), bool).at[jnp.asarray(list(special_ids), jnp.int32)].set(False)
    return jnp.nonzero(keep, size=vocab_size - len(set(special_ids)))[0].astype(jnp.int32)


def uniform_corrupt(rng, tokens_BxN, weights_BxN, vocab_size: int, special_ids) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SUNDAE corruption. Returns (corrupted tokens, corrupted-position mask, rates [B])."""
    rate_key, where_key, token_key = jax.random.split(rng, 3)
    batch, length = tokens_BxN.shape
    rates = jax.random.uniform(rate_key, (batch,))
    hit = (jax.random.uniform(where_key, (batch, length)) < rates[:, None]) & (weights_BxN > 0)
    allowed = non_special_ids(vocab_size, special_ids)
    noise = allowed[jax.random.randint(token_key, (batch, length), 0, allowed.shape[0])]
    return jnp.where(hit, noise, tokens_BxN), hit, rates


def diffusion_loss(model, batch: Batch, rng: jax.Array, config: LossConfig):
    """L1 + L2 of the paper (SUNDAE with argmax unroll, temperature 0 by default)."""
    clean, weights = target_view(model, batch)
    corrupt_key, unroll_key = jax.random.split(rng)
    noisy, _, _ = uniform_corrupt(corrupt_key, clean, weights, model.config.vocab_size, config.special_ids)
    logits1 = denoiser_logits(model, batch, noisy)
    loss1 = _weighted_mean(cross_entropy(logits1, clean), weights)
    correct = (jnp.argmax(logits1, -1) == clean).astype(jnp.float32)
    text_weights = weights * (clean != config.pad_id)
    metrics = {"loss_l1": loss1, "accuracy": _weighted_mean(correct, weights),
               "accuracy_non_pad": _weighted_mean(correct, text_weights), "target_tokens": jnp.sum(weights)}
    loss = loss1
    if config.unroll:
        first_pass = jax.lax.stop_gradient(logits1)
        if config.unroll_temperature == 0.0:
            guess = jnp.argmax(first_pass, axis=-1).astype(clean.dtype)
        else:
            guess = jax.random.categorical(unroll_key, first_pass / config.unroll_temperature).astype(clean.dtype)
        unrolled = jnp.where(weights > 0, guess, clean)  # inputs stay clean ("frozen")
        logits2 = denoiser_logits(model, batch, unrolled)
        loss2 = _weighted_mean(cross_entropy(logits2, clean), weights)
        metrics["loss_l2"] = loss2
        loss = loss1 + loss2
    metrics["loss"] = loss
    return loss, metrics


def masked_diffusion_loss(model, batch: Batch, rng: jax.Array, config: LossConfig):
    """Absorbing-state diffusion: mask at rate t, cross-entropy on masked tokens / t."""
    clean, weights = target_view(model, batch)
    rate_key, where_key = jax.random.split(rng)
    rates = jax.random.uniform(rate_key, (clean.shape[0],), minval=config.min_mask_rate, maxval=1.0)
    hit = (jax.random.uniform(where_key, clean.shape) < rates[:, None]) & (weights > 0)
    noisy = jnp.where(hit, config.mask_id, clean)
    logits = denoiser_logits(model, batch, noisy)
    ce = cross_entropy(logits, clean)
    hit_f = hit.astype(jnp.float32)
    loss = jnp.sum(ce * hit_f / rates[:, None]) / jnp.maximum(jnp.sum(weights), 1.0)
    correct = (jnp.argmax(logits, -1) == clean).astype(jnp.float32)
    return loss, {"loss": loss, "accuracy": _weighted_mean(correct, hit_f), "target_tokens": jnp.sum(weights)}


LOSSES: dict[str, Callable] = {"ar": ar_loss, "diffusion": diffusion_loss, "masked_diffusion": masked_diffusion_loss}


def loss_fn(model: DecoderOnly | EncoderDecoder, batch: Batch, rng: jax.Array, config: LossConfig):
    return LOSSES[config.kind](model, batch, rng, config)
