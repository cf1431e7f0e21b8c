"""Block (semi-autoregressive) diffusion decoding with an exact KV cache.

The target canvas is cut into blocks of the model's `block_size`, decoded left to right:
each block starts from the process's initial canvas and runs up to `num_steps`
steps of the process's `step` under a decoding policy (`workbench.processes.policies`),
attending to itself, the prompt and the committed blocks before it (`block_causal`
attention). A committed block's keys and values are written into the cache once
(`block_cache.block_denoiser`, on the model's one cached forward), in the same forward pass
as the next block's first step (`advance`: 2b positions), so every other step runs b
positions only and the forward passes are the prompt pass plus the denoising steps. With a commit policy
(absorbing's default, `threshold`, ...) a block stops as soon as every row has committed
all of it, so `threshold` spends fewer forward passes on easy blocks.

An example stops at the first block holding EOS: later positions are padding (so are the
positions after EOS in that block). The loop ends when every example has stopped or the
canvas is full. Random draws are keyed by (example id, sample, block, step): an example
decodes the same alone or in any batch.

With `num_samples` > 1 each example is decoded that many times (independent random draws;
with the uniform process each starts from its own random canvas) and the sample with the
lowest mean -log p of its text (the probability each token had when committed, up to and
including EOS) is kept, as the full-canvas sampler reranks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from workbench.models.denoiser import CachedRowDenoiser
from workbench.objectives.batch import Batch
from workbench.sampling.block_cache import block_denoiser, check_block_decoding
from workbench.sampling.config import SamplerConfig
from workbench.sampling.diffusion import mean_nll
from workbench.sampling.jit import sampler_jit


@dataclasses.dataclass(frozen=True)
class BlockSamplingConfig(SamplerConfig):
    """The shared sampler fields (`SamplerConfig`; `num_steps` is per block, a budget: commit
    policies stop a block once it is fully committed) and the block sampler's own."""

    process: str = "absorbing"
    num_steps: int = 8
    cache: bool = True  # exact KV cache of the prompt and committed blocks; False: rerun the whole row


class BlockOutput(NamedTuple):
    tokens: jax.Array  # [B, Tt] padding after each example's first EOS
    lengths: jax.Array  # [B] tokens up to and including the first EOS (Tt without one)
    probs: jax.Array  # [B, Tt] each final token's probability when it was committed (0 on padding)
    commit_step: jax.Array  # [B, Tt] the step of its block that committed each position (-1 on padding)
    blocks_run: jax.Array  # [] blocks decoded (fewer than Tt / b when every example stopped)
    forward_passes: jax.Array  # [] model calls: the prompt pass and the denoising steps (commits ride along)
    scores: Any = None  # [B, S] each sample's mean -log p over its text (lower is better)
    chosen: Any = None  # [B] the sample kept


@sampler_jit(static_argnames=("config", "target_len"))
def _block_sample(model, batch: Batch, rng, config: BlockSamplingConfig, target_len: int) -> BlockOutput:
    num_b, num_s = batch.tokens.shape[0], config.num_samples
    batch = jax.tree.map(lambda x: jnp.repeat(x, num_s, axis=0), batch)  # [B*S], sample-major per example
    size = num_b * num_s
    b, steps = model.config.block_size, config.num_steps
    num_blocks = target_len // b
    process = config.make_process(model.config.vocab_size)
    policy = config.decoding_policy(process)
    denoiser = block_denoiser(model, batch, target_len, cache=config.cache)
    sample_idx = jnp.tile(jnp.arange(num_s, dtype=jnp.int32), num_b)
    keys = jax.vmap(lambda e, s: jax.random.fold_in(jax.random.fold_in(rng, e), s))(batch.example_ids, sample_idx)
    stop_at_eos = config.eos_id is not None

    def block_keys(k):
        return jax.vmap(lambda key: jax.random.fold_in(key, k))(keys)

    def first_canvas(k):
        return process.initial_canvas(block_keys(k), b)

    def decode_block(k, state, first_logits):
        keys_k = block_keys(k)

        def body(carry):
            s, canvas, committed, when, conf = carry
            # step 0's logits came with the block (the previous block's fused commit pass)
            logits = jax.lax.cond(s == 0, lambda: first_logits,
                                  lambda: denoiser.logits(state, k, canvas).astype(jnp.float32))
            step_keys = jax.vmap(lambda key: jax.random.fold_in(key, s))(keys_k)
            new, now_committed, p = process.step(s, steps, canvas, committed, logits, step_keys, config.temperature,
                                                 policy)
            # keep policies re-decide every position each step, so their last step is what counts
            fresh = (now_committed & ~committed) if policy.freezes else jnp.ones_like(committed)
            return s + 1, new, now_committed, jnp.where(fresh, s, when), jnp.where(fresh, p, conf)

        def cond(carry):
            s, _, committed, _, _ = carry
            return (s < steps) & ~jnp.all(committed) if policy.freezes else s < steps

        init = (jnp.int32(0), first_canvas(k), jnp.zeros((size, b), bool),
                jnp.full((size, b), -1, jnp.int32), jnp.zeros((size, b), jnp.float32))
        s, canvas, _, when, conf = jax.lax.while_loop(cond, body, init)
        return s, canvas, when, conf

    def outer(carry):
        k, state, first_logits, tokens, probs, commit_step, done, passes = carry
        s, canvas, when, conf = decode_block(k, state, first_logits)
        live = ~done[:, None]
        start = (jnp.int32(0), k * b)
        tokens = jax.lax.dynamic_update_slice(tokens, jnp.where(live, canvas, config.pad_id), start)
        probs = jax.lax.dynamic_update_slice(probs, jnp.where(live, conf, 0.0), start)
        commit_step = jax.lax.dynamic_update_slice(commit_step, jnp.where(live, when, -1), start)
        if stop_at_eos:
            done = done | jnp.any(canvas == config.eos_id, axis=-1)

        # Commit block k and take block k + 1's first logits in one pass; after the last block
        # (or once every example stopped) nothing reads the commit, so none is run.
        def advance():
            new_state, logits = denoiser.advance(state, k, canvas, first_canvas(k + 1))
            return new_state, logits.astype(jnp.float32)

        state, first_logits = jax.lax.cond((k + 1 < num_blocks) & ~jnp.all(done), advance,
                                           lambda: (state, first_logits))
        return k + 1, state, first_logits, tokens, probs, commit_step, done, passes + s

    def more(carry):
        k, *_, done, _ = carry
        return (k < num_blocks) & ~jnp.all(done)

    first_logits = denoiser.logits(denoiser.state, jnp.int32(0), first_canvas(jnp.int32(0))).astype(jnp.float32)
    init = (jnp.int32(0), denoiser.state, first_logits, jnp.full((size, target_len), config.pad_id, jnp.int32),
            jnp.zeros((size, target_len), jnp.float32), jnp.full((size, target_len), -1, jnp.int32),
            jnp.zeros((size,), bool), jnp.int32(denoiser.prompt_passes))
    k, _, _, tokens, probs, commit_step, _, passes = jax.lax.while_loop(more, outer, init)

    position = jnp.arange(target_len)[None, :]
    if stop_at_eos:
        is_eos = tokens == config.eos_id
        lengths = jnp.where(jnp.any(is_eos, -1), jnp.argmax(is_eos, -1) + 1, target_len).astype(jnp.int32)
    else:
        lengths = jnp.full((size,), target_len, jnp.int32)
    text = position < lengths[:, None]
    probs = jnp.where(text, probs, 0.0)
    scores = mean_nll(probs, text).reshape(num_b, num_s)
    chosen = jnp.argmin(scores, axis=-1)

    def keep(x):  # [B*S, ...] -> the chosen sample's [B, ...]
        by_sample = x.reshape(num_b, num_s, *x.shape[1:])
        return jnp.take_along_axis(by_sample, chosen.reshape(num_b, 1, *([1] * (x.ndim - 1))), axis=1)[:, 0]

    return BlockOutput(keep(jnp.where(text, tokens, config.pad_id)), keep(lengths), keep(probs),
                       keep(jnp.where(text, commit_step, -1)), k, passes, scores, chosen)


def block_sample(model: CachedRowDenoiser, batch: Batch, config: BlockSamplingConfig, rng: Optional[jax.Array] = None,
                 target_len: Optional[int] = None) -> BlockOutput:
    """Decode the targets of `batch` (built with `seq2seq_batch(..., pad_targets=True)`)
    block by block; the model needs attention='block_causal' (its `block_size` sets b)
    and `target_len` (default: the batch's target width) a multiple of b."""
    target_len = int(batch.targets.shape[1]) if target_len is None else target_len
    check_block_decoding(model, batch, target_len)
    rng = jax.random.key(0) if rng is None else rng
    return _block_sample(model, jax.tree.map(jnp.asarray, batch), rng, config, target_len)
