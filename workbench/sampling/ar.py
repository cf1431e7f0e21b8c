"""KV-cached autoregressive decoding: greedy, temperature, top-k and top-p, compiled end to end.

One `lax.while_loop` per batch (no Python loop per token); it stops when every example
has emitted EOS or `max_new_tokens` is reached. Prompts may have different lengths:
each example writes its keys and values at its own positions. Each example's random
stream is derived from its id, so its output does not depend on the batch it is in.
The model's `start_decoding` runs what is computed once (the prompt's KV cache, or the
encoder and the cross-attention keys/values) and returns the per-token step.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from workbench.models.transformer import DecoderOnly, EncoderDecoder, check_lengths
from workbench.sampling.jit import sampler_jit


@dataclasses.dataclass(frozen=True)
class ARSamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    eos_id: int = 1
    pad_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be positive")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables top-k)")


class Generation(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens], pad after EOS
    lengths: jax.Array  # [B] tokens generated, EOS included
    num_steps: jax.Array  # [] decoder steps actually run


def sample_logits(logits_BxV: jax.Array, keys_B: jax.Array, config: ARSamplingConfig) -> jax.Array:
    """Draw one token per row; greedy when temperature is 0."""
    if config.temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits = logits_BxV.astype(jnp.float32) / config.temperature
    if config.top_k:
        kth = jax.lax.top_k(logits, config.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if config.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest set whose mass reaches top_p (always at least the top token)
        cutoff_index = jnp.sum(cumulative < config.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.vmap(jax.random.categorical)(keys_B, logits).astype(jnp.int32)


def _step_keys(rng: jax.Array, example_ids_B: jax.Array, step) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(rng, i), step))(example_ids_B)


def _loop(first_logits, step_fn, cache, rng, example_ids, config: ARSamplingConfig):
    batch = first_logits.shape[0]

    def cond(state):
        t, _, _, _, done, _ = state
        return (t < config.max_new_tokens) & ~jnp.all(done)

    def body(state):
        t, cache, logits, out, done, lengths = state
        token = sample_logits(logits, _step_keys(rng, example_ids, t), config)
        token = jnp.where(done, config.pad_id, token)
        out = out.at[:, t].set(token)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (token == config.eos_id)
        logits, cache = step_fn(t, token, cache)
        return t + 1, cache, logits, out, done, lengths

    init = (
        jnp.int32(0),
        cache,
        first_logits,
        jnp.full((batch, config.max_new_tokens), config.pad_id, jnp.int32),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch,), jnp.int32),
    )
    t, _, _, out, _, lengths = jax.lax.while_loop(cond, body, init)
    return Generation(out, lengths, t)


@sampler_jit(static_argnames=("config",))
def _generate(model, prompts, prompt_lengths, rng, example_ids, config: ARSamplingConfig) -> Generation:
    first, cache, step = model.start_decoding(prompts, prompt_lengths, config.max_new_tokens, config.pad_id)
    return _loop(first, step, cache, rng, example_ids, config)


def prepare_prompts(prompts_BxP, prompt_lengths_B, rng=None, example_ids_B=None):
    """Right-padded prompts and their lengths as int32 arrays, checked against each other, with the
    default key and example ids (row index): what every prompt-continuing sampler takes."""
    prompts_BxP = jnp.asarray(prompts_BxP, jnp.int32)
    prompt_lengths_B = jnp.asarray(prompt_lengths_B, jnp.int32)
    batch, width = prompts_BxP.shape
    if prompt_lengths_B.shape != (batch,):
        raise ValueError(f"prompt_lengths has shape {prompt_lengths_B.shape}; expected ({batch},)")
    check_lengths("prompt_lengths", prompt_lengths_B, width, f"prompt width {width}")
    rng = jax.random.key(0) if rng is None else rng
    example_ids_B = jnp.arange(batch, dtype=jnp.int32) if example_ids_B is None else jnp.asarray(example_ids_B, jnp.int32)
    return prompts_BxP, prompt_lengths_B, rng, example_ids_B


def generate(
    model: DecoderOnly | EncoderDecoder,
    prompts_BxP: jax.Array,
    prompt_lengths_B: jax.Array,
    config: ARSamplingConfig,
    rng: Optional[jax.Array] = None,
    example_ids_B: Optional[jax.Array] = None,
) -> Generation:
    """Continue each prompt (right-padded to a common width) by up to `max_new_tokens`.

    Decoder-only models continue right after each prompt's last real token; encoder-decoder
    models encode the prompt and decode from the start token. `example_ids` seed each
    example's random stream (default: row index); pass stable ids for batch invariance.
    """
    prompts_BxP, prompt_lengths_B, rng, example_ids_B = prepare_prompts(prompts_BxP, prompt_lengths_B, rng,
                                                                          example_ids_B)
    model.check_ar_decoding(prompts_BxP.shape[1], prompt_lengths_B, config.max_new_tokens)
    return _generate(model, prompts_BxP, prompt_lengths_B, rng, example_ids_B, config)
