"""Block diffusion's KV cache and its state machine, on one cached forward of the model.

Target block k of example b sits at positions prefix_len[b] + [k * b, (k + 1) * b) of its
``[prompt | targets]`` row and, under `block_causal` attention, sees the prompt, the
committed blocks before it and itself. `block_denoiser` gives the sampler (`sampling.block`)
a `BlockDenoiser`: a state threaded through the loop and three transitions on it. The model
only has to be a `CachedRowDenoiser` (`workbench.models.denoiser`: `make_mask`,
`init_cache`, `forward_cached`); any other model is refused by name.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from workbench.models.denoiser import CachedRowDenoiser, missing
from workbench.models.transformer import check_lengths, check_shift_prompt


class BlockDenoiser(NamedTuple):
    """Block diffusion's view of a model: a state threaded through the sampler (a KV cache, or
    the token rows when recomputing), the logits of block k's canvas, `commit`, which fixes
    block k's final tokens into the state, and `advance`, which commits block k and returns
    block k + 1's logits for its first canvas in one forward pass (the cache's commit pass and
    the next block's first step fused)."""

    state: Any
    logits: Callable[[Any, jax.Array, jax.Array], jax.Array]  # (state, k, canvas [B, b]) -> [B, b, V]
    commit: Callable[[Any, jax.Array, jax.Array], Any]  # (state, k, tokens [B, b]) -> state
    advance: Callable[[Any, jax.Array, jax.Array, jax.Array], tuple]  # (state, k, tokens, next canvas) -> (state, logits)
    prompt_passes: int  # forward passes spent before the first block (the prompt's cache)


def check_block_decoding(model, batch, target_len: int) -> None:
    """Raise, naming the model and the fix, when `model` cannot block-decode `target_len`
    target positions of `batch` (per-example lengths are checked when concrete)."""
    lacking = missing(model, CachedRowDenoiser)
    if lacking:
        raise ValueError(
            f"block decoding needs a model over one [prompt | targets] row with a KV cache of it (the "
            f"CachedRowDenoiser protocol); {type(model).__name__} (arch={model.config.arch!r}) lacks {lacking}. "
            f"Use a decoder-only model (arch='decoder') under attention='block_causal', or decode the whole "
            f"canvas with workbench.sampling.diffusion_sample")
    cfg = model.config
    if cfg.attention != "block_causal":
        raise ValueError(f"block decoding needs attention='block_causal'; this model has attention="
                         f"{cfg.attention!r} (switch it with with_attention(model, 'block_causal', block_size=b))")
    if target_len % cfg.block_size:
        raise ValueError(f"target_len={target_len} is not a multiple of block_size={cfg.block_size}; "
                         f"pad the target canvas to a whole number of blocks")
    width = int(batch.tokens.shape[1])
    check_lengths("prefix_len", batch.prefix_len, width - target_len,
                  f"row width {width} - target_len {target_len}: every block must fit in the row")
    if cfg.shift_targets:
        check_shift_prompt(batch.prefix_len)


def block_denoiser(model: CachedRowDenoiser, batch, target_len: int, *, cache: bool = True) -> BlockDenoiser:
    """The block sampler's state machine over `model`. With `cache`, the prompt runs once into
    a KV cache and each committed block's keys and values are written once (`commit`);
    without it, every call reruns the whole row under the full block_causal mask (the
    reference the cache must equal).

    With `shift_targets` a block's first token is read from the position before it (the
    prompt's last token or the previous block's last), which never sees the block: its
    logits come from the prompt pass or the previous block's commit pass, and the other
    positions from the noisy block's outputs one position earlier."""
    check_block_decoding(model, batch, target_len)
    cfg = model.config
    size, width = batch.tokens.shape
    shift = cfg.shift_targets
    offsets = jnp.arange(cfg.block_size, dtype=jnp.int32)[None, :]

    def place(k):  # absolute positions [B, b] and the block's first position [B]
        start = batch.prefix_len + k * cfg.block_size
        return start[:, None] + offsets, start

    if not cache:
        def full_logits(row_BxW, k, canvas_BxB):
            positions, _ = place(k)
            row = jax.vmap(lambda r, pos, vals: r.at[pos].set(vals))(row_BxW, positions, canvas_BxB)
            return jnp.take_along_axis(model.denoise(batch, row), positions[:, :, None], axis=1)

        def full_commit(row_BxW, k, tokens_BxB):
            positions, _ = place(k)
            return jax.vmap(lambda r, pos, vals: r.at[pos].set(vals))(row_BxW, positions, tokens_BxB)

        def full_advance(row_BxW, k, tokens_BxB, next_BxB):
            row = full_commit(row_BxW, k, tokens_BxB)
            return row, full_logits(row, k + 1, next_BxB)

        return BlockDenoiser(batch.tokens, full_logits, full_commit, full_advance, prompt_passes=0)

    prompt = batch.inputs
    prompt_pos = jnp.broadcast_to(jnp.arange(prompt.shape[1], dtype=jnp.int32), prompt.shape)
    mask = model.make_mask(size, width, prefix_len=batch.prefix_len, lengths=batch.lengths,
                           q_offset=jnp.zeros((size,), jnp.int32))
    prompt_logits, kv = model.forward_cached(prompt, prompt_pos, mask, model.init_cache(size, width))

    def run(kv, k, tokens_BxN):  # N = b tokens (block k), or 2b (blocks k and k + 1)
        _, start = place(k)
        positions = start[:, None] + jnp.arange(tokens_BxN.shape[1], dtype=jnp.int32)[None, :]
        step_mask = model.make_mask(size, width, prefix_len=batch.prefix_len, lengths=batch.lengths, q_offset=start)
        return model.forward_cached(tokens_BxN, positions, step_mask, kv)

    # A denoising step's keys and values (of a noisy block) are dropped; the committed
    # block's are kept, so later blocks see exactly its final tokens. `advance` runs block
    # k's final tokens and block k + 1's first canvas together: under block_causal block k
    # does not see block k + 1, and the noisy keys it leaves at block k + 1's positions are
    # rewritten by every later pass over that block.
    b = cfg.block_size

    def advance(kv, k, tokens, next_canvas):
        logits, kv = run(kv, k, jnp.concatenate([tokens, next_canvas], axis=1))
        return kv, logits[:, b:]

    if not shift:
        return BlockDenoiser(kv, lambda kv, k, canvas: run(kv, k, canvas)[0],
                             lambda kv, k, tokens: run(kv, k, tokens)[1], advance, prompt_passes=1)

    # The state also carries the logits that predict the next block's first token: the
    # prompt's last position, then each committed block's last position.
    def shifted_logits(state, k, canvas):
        kv, first_BxV = state
        logits = run(kv, k, canvas)[0]
        return jnp.concatenate([first_BxV[:, None].astype(logits.dtype), logits[:, :-1]], axis=1)

    def shifted_commit(state, k, tokens):
        logits, kv = run(state[0], k, tokens)
        return kv, logits[:, -1].astype(jnp.float32)

    def shifted_advance(state, k, tokens, next_canvas):
        logits, kv = run(state[0], k, jnp.concatenate([tokens, next_canvas], axis=1))
        return (kv, logits[:, b - 1].astype(jnp.float32)), logits[:, b - 1 : 2 * b - 1]

    first = jnp.take_along_axis(prompt_logits, (batch.prefix_len - 1)[:, None, None], axis=1)[:, 0]
    return BlockDenoiser((kv, first.astype(jnp.float32)), shifted_logits, shifted_commit, shifted_advance,
                         prompt_passes=1)
