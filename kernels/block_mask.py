"""Which tiles of the score matrix a mask leaves visible, shared by the GPU and TPU kernels.

The mask rule (see `workbench.attention.mask`) ignoring segment ids is

    visible(i, j) = j < kv_len  and  (j < prefix  or  (i >= prefix and (not causal or j <= i)))

with i, j absolute positions. It is monotone: widening i (later query) or narrowing j
(earlier key) never hides a visible pair. Two consequences the kernels rely on:

* the keys a query sees form a prefix ``[0, visible_key_count(i))`` of the sequence, and
* the queries that see a key form a suffix ``[first_query_seeing(j), inf)``.

So for a q tile the visible kv tiles are ``[0, num_visible)`` and, of those, the fully
visible ones (no per-element mask needed) are ``[0, num_full)``; for a kv tile the visible
q tiles are ``[first_visible, num_q_blocks)`` with the fully visible ones from
``first_full``. Loops run over exactly these ranges, so hidden tiles cost nothing.

Every function works on Python ints and on traced int32 scalars alike (inside Triton and
Mosaic kernels and in TPU index maps); divisions use `lax.div` on non-negative values.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _cdiv(x, d: int):
    return lax.div(x + (d - 1), d)


def visible_key_count(q_pos, prefix, kv_len, causal: bool):
    """Number of keys the query at absolute position `q_pos` sees: keys [0, count)."""
    reach = (q_pos + 1) if causal else kv_len
    reach = jnp.where(q_pos >= prefix, reach, 0)
    return jnp.minimum(kv_len, jnp.maximum(prefix, reach))


def first_query_seeing(k_pos, prefix, kv_len, causal: bool, never):
    """Smallest absolute query position that sees key `k_pos`; `never` when none does."""
    after_prefix = jnp.maximum(k_pos, prefix) if causal else prefix
    first = jnp.where(k_pos < prefix, 0, after_prefix)
    return jnp.where(k_pos >= kv_len, never, first)


def kv_block_range(q_block, *, block_q: int, block_k: int, q_len: int, prefix, kv_len, q_offset,
                   causal: bool, segmented: bool):
    """(num_full, num_visible) kv tiles for q tile `q_block`.

    kv tiles [0, num_full) need no element mask; [num_full, num_visible) need one; the rest
    are hidden. With segment ids every tile is masked (segments are not tile-aligned).
    `q_len` is the unpadded query length, so padding rows do not widen the range.
    """
    first_row = q_block * block_q
    last_row = jnp.minimum(first_row + block_q, q_len) - 1
    num_visible = _cdiv(visible_key_count(q_offset + last_row, prefix, kv_len, causal), block_k)
    if segmented:
        return jnp.zeros_like(num_visible), num_visible
    num_full = lax.div(visible_key_count(q_offset + first_row, prefix, kv_len, causal), block_k)
    return jnp.minimum(num_full, num_visible), num_visible


def q_block_range(kv_block, *, block_q: int, block_k: int, num_q_blocks: int, prefix, kv_len,
                  q_offset, causal: bool, segmented: bool):
    """(first_visible, first_full) q tiles for kv tile `kv_block`.

    q tiles [first_visible, num_q_blocks) see the kv tile; of those, [first_full,
    num_q_blocks) see all of it and need no element mask.
    """
    rows = num_q_blocks * block_q
    never = q_offset + rows
    first_key = kv_block * block_k
    first_row = first_query_seeing(first_key, prefix, kv_len, causal, never) - q_offset
    first_visible = lax.div(jnp.clip(first_row, 0, rows), block_q)
    if segmented:
        return first_visible, jnp.full_like(first_visible, num_q_blocks)
    full_row = first_query_seeing(first_key + block_k - 1, prefix, kv_len, causal, never) - q_offset
    first_full = _cdiv(jnp.clip(full_row, 0, rows), block_q)
    return first_visible, jnp.maximum(first_full, first_visible)


def element_mask(q_pos, k_pos, prefix, kv_len, causal: bool):
    """Boolean visibility of (q_pos, k_pos) pairs; the arguments broadcast against each other."""
    after_prefix = q_pos >= prefix
    if causal:
        after_prefix = after_prefix & (k_pos <= q_pos)
    return ((k_pos < prefix) | after_prefix) & (k_pos < kv_len)
