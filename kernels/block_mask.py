"""Which tiles of the score matrix a mask leaves visible, shared by the GPU and TPU kernels.

The mask rule (see `workbench.attention.mask`) ignoring segment ids is

    visible(i, j) = j < kv_len  and  (j < prefix  or  (i >= prefix and rule(i, j)))

with i, j absolute positions (i may be negative: `q_offset` can be) and rule(i, j) one of
True (bidirectional), j <= i (causal) or, with a static `block_size` b, j < block_end(i)
where block_end(i) = prefix + ((i - prefix) // b + 1) * b (block-causal: a query sees its
own block and every earlier one). It is monotone: widening i (later query) or narrowing j
(earlier key) never hides a visible pair. Two consequences the kernels rely on:

* the keys a query sees form a prefix ``[0, visible_key_count(i))`` of the sequence, and
* the queries that see a key form a suffix ``[first_query_seeing(j), inf)``.

So for a q tile the visible kv tiles are ``[0, num_visible)`` and, of those, the fully
visible ones (no per-element mask needed) are ``[0, num_full)``; for a kv tile the visible
q tiles are ``[first_visible, num_q_blocks)`` with the fully visible ones from
``first_full``. Loops run over exactly these ranges, so hidden tiles cost nothing: for a
block-causal mask every tile above the block diagonal is skipped, as for a causal one.

Every function works on Python ints and on traced int32 scalars alike (inside Triton and
Mosaic kernels and in TPU index maps); divisions use `lax.div` on non-negative values.

Segment ids are not monotone in general, so they get their own per-tile bounds, computed
outside the kernels with `segment_tile_spans`: a q tile and a kv tile whose id ranges
[min, max] do not overlap share no id and are hidden entirely. `kv_tile_span` and
`q_tile_span` intersect those bounds with the ranges above into the (first, split, end)
spans the kernels iterate over.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from jax import lax


def _cdiv(x, d: int):
    return lax.div(x + (d - 1), d)


def _block_start(pos, prefix, block_size: int):
    """First position of the block holding `pos` (pos >= prefix; smaller pos give `prefix`)."""
    return prefix + lax.div(jnp.maximum(pos - prefix, 0), block_size) * block_size


def visible_key_count(q_pos, prefix, kv_len, causal: bool, block_size: Optional[int] = None):
    """Number of keys the query at absolute position `q_pos` sees: keys [0, count)."""
    if causal:
        reach = q_pos + 1
    elif block_size is not None:
        reach = _block_start(q_pos, prefix, block_size) + block_size
    else:
        reach = kv_len
    reach = jnp.where(q_pos >= prefix, reach, 0)
    return jnp.minimum(kv_len, jnp.maximum(prefix, reach))


def first_query_seeing(k_pos, prefix, kv_len, causal: bool, never, lowest,
                       block_size: Optional[int] = None):
    """Smallest absolute query position that sees key `k_pos`: `lowest` (the first query's
    position, which may be negative) for a prefix key that every query sees, `never` when
    no query does."""
    if causal:
        after_prefix = jnp.maximum(k_pos, prefix)
    elif block_size is not None:
        after_prefix = _block_start(k_pos, prefix, block_size)
    else:
        after_prefix = prefix
    first = jnp.where(k_pos < prefix, lowest, after_prefix)
    return jnp.where(k_pos >= kv_len, never, first)


def kv_block_range(q_block, *, block_q: int, block_k: int, q_len: int, prefix, kv_len, q_offset,
                   causal: bool, segmented: bool, block_size: Optional[int] = None):
    """(num_full, num_visible) kv tiles for q tile `q_block`.

    kv tiles [0, num_full) need no element mask; [num_full, num_visible) need one; the rest
    are hidden. With segment ids every tile is masked (segments are not tile-aligned).
    `q_len` is the unpadded query length, so padding rows do not widen the range.
    """
    first_row = q_block * block_q
    last_row = jnp.minimum(first_row + block_q, q_len) - 1
    num_visible = _cdiv(visible_key_count(q_offset + last_row, prefix, kv_len, causal, block_size), block_k)
    if segmented:
        return jnp.zeros_like(num_visible), num_visible
    num_full = lax.div(visible_key_count(q_offset + first_row, prefix, kv_len, causal, block_size), block_k)
    return jnp.minimum(num_full, num_visible), num_visible


def q_block_range(kv_block, *, block_q: int, block_k: int, num_q_blocks: int, prefix, kv_len,
                  q_offset, causal: bool, segmented: bool, block_size: Optional[int] = None):
    """(first_visible, first_full) q tiles for kv tile `kv_block`.

    q tiles [first_visible, num_q_blocks) see the kv tile; of those, [first_full,
    num_q_blocks) see all of it and need no element mask. Rows are counted from the first
    query (at absolute position `q_offset`, possibly negative).
    """
    rows = num_q_blocks * block_q
    never = q_offset + rows
    first_key = kv_block * block_k
    first_row = first_query_seeing(first_key, prefix, kv_len, causal, never, q_offset, block_size) - q_offset
    first_visible = lax.div(jnp.clip(first_row, 0, rows), block_q)
    if segmented:
        return first_visible, jnp.full_like(first_visible, num_q_blocks)
    full_row = first_query_seeing(first_key + block_k - 1, prefix, kv_len, causal, never, q_offset,
                                  block_size) - q_offset
    first_full = _cdiv(jnp.clip(full_row, 0, rows), block_q)
    return first_visible, jnp.maximum(first_full, first_visible)


def element_mask(q_pos, k_pos, prefix, kv_len, causal: bool, block_size: Optional[int] = None):
    """Boolean visibility of (q_pos, k_pos) pairs; the arguments broadcast against each other."""
    after_prefix = q_pos >= prefix
    if causal:
        after_prefix = after_prefix & (k_pos <= q_pos)
    elif block_size is not None:
        after_prefix = after_prefix & (k_pos < _block_start(q_pos, prefix, block_size) + block_size)
    return ((k_pos < prefix) | after_prefix) & (k_pos < kv_len)


def _tile_id_bounds(ids_BxT, block: int, length):
    """Per-tile (min, max, non_empty) of the ids at positions < `length` ([B] or a scalar)."""
    batch, padded = ids_BxT.shape
    if padded % block:
        raise ValueError(f"segment ids of padded length {padded} do not split into tiles of {block}; "
                         f"pad them to a multiple of the tile")
    length_Bx1 = jnp.reshape(jnp.asarray(length, jnp.int32), (-1, 1))
    valid = jnp.arange(padded, dtype=jnp.int32)[None, :] < length_Bx1
    tiles = (batch, padded // block, block)
    info = jnp.iinfo(jnp.int32)
    ids = ids_BxT.astype(jnp.int32)
    low = jnp.where(valid, ids, info.max).reshape(tiles).min(axis=2)
    high = jnp.where(valid, ids, info.min).reshape(tiles).max(axis=2)
    return low, high, jnp.broadcast_to(valid, ids.shape).reshape(tiles).any(axis=2)


def segment_tile_spans(row_ids, col_ids, *, block_rows: int, block_cols: int, row_len, col_len):
    """Per row tile, the column tiles [first, end) that may share a segment id with it.

    row_ids [B, R] and col_ids [B, C] are padded segment ids (R, C multiples of the blocks);
    positions at or beyond `row_len` / `col_len` (ints or [B] arrays) are padding and do not
    widen a tile's id range. Two tiles whose id ranges [min, max] do not overlap share no id,
    so every column tile outside [first, end) is hidden from the row tile: a conservative
    bound for any ids, exact for packed sequences (non-decreasing ids, the same packing on
    both sides). A row tile that overlaps nothing gets the empty span [0, 0).

    Plain jnp outside the kernels, O(B * R/block_rows * C/block_cols). Used with rows = q
    tiles for the forward and dq passes, rows = kv tiles for the dk/dv pass.
    Returns (first, end), both [B, R // block_rows] int32.
    """
    row_low, row_high, row_any = _tile_id_bounds(row_ids, block_rows, row_len)
    col_low, col_high, col_any = _tile_id_bounds(col_ids, block_cols, col_len)
    overlap = ((row_low[:, :, None] <= col_high[:, None, :]) & (col_low[:, None, :] <= row_high[:, :, None])
               & row_any[:, :, None] & col_any[:, None, :])
    num_cols = overlap.shape[2]
    some = overlap.any(axis=2)
    first = jnp.argmax(overlap, axis=2).astype(jnp.int32)
    end = num_cols - jnp.argmax(overlap[:, :, ::-1], axis=2).astype(jnp.int32)
    return jnp.where(some, first, 0), jnp.where(some, end, 0)


def kv_tile_span(num_full, num_visible, segment_span=None):
    """(first, split, end) for a q tile from `kv_block_range`'s output and its segment span.

    kv tiles [first, split) need no element mask, [split, end) need one, the rest are hidden.
    With a segment span (first, end) from `segment_tile_spans` (and `kv_block_range` called
    with segmented=True, so num_full == 0) every visible tile is masked.
    """
    if segment_span is None:
        return 0, num_full, num_visible
    seg_first, seg_end = segment_span
    return seg_first, seg_first, jnp.minimum(num_visible, seg_end)


def q_tile_span(first_visible, first_full, num_q_blocks: int, segment_span=None):
    """(first, split, end) for a kv tile from `q_block_range`'s output and its segment span.

    q tiles [first, split) need the element mask, [split, end) need none, the rest are hidden.
    With a segment span (`q_block_range` called with segmented=True) every visible tile is masked.
    """
    if segment_span is None:
        return first_visible, first_full, num_q_blocks
    seg_first, seg_end = segment_span
    return jnp.maximum(first_visible, seg_first), seg_end, seg_end
