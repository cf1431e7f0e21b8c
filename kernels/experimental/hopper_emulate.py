"""The Hopper kernels' tile schedule and tile math in plain JAX, for CPU tests.

Mosaic GPU interpret mode cannot run the kernels in `hopper.py` (see NOTES.md), so
this module replays what each compute warpgroup of each block does: the same tile
ranges (`hopper.forward_ranges`, `dkv_ranges`, `dq_ranges` and the per-block copy
counts), the same order of unmasked, masked and drained tiles, the same per-tile math
(`hopper_tile`), with the same casts (bf16 probabilities and dS into float32
matmuls). What it cannot check is the Mosaic code itself: barriers, TMA slicing,
layouts. It also counts the tiles each pass computes, so tests can check that hidden
tiles are skipped. Eager and slow: small shapes only.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from workbench.kernels.experimental import hopper, hopper_tile
from workbench.kernels.common import KernelMask, pad_axis


@dataclasses.dataclass
class TileCounts:
    """Tiles each pass computed, and tiles the copy warpgroups fetched."""

    forward_computed: int = 0
    forward_fetched: int = 0
    dkv_computed: int = 0
    dkv_fetched: int = 0
    dq_computed: int = 0
    dq_fetched: int = 0


def _dot(a, b):
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _scalars(kmask: KernelMask, b: int):
    return int(kmask.prefix[b]), int(kmask.kv_len[b]), int(kmask.q_offset[b])


def _spans(kmask: KernelMask, plan: hopper.Plan, kernel: str, b: int):
    """tile -> (first, end) segment span of example b as ints, or None without segment ids."""
    spans = hopper.segment_spans(kmask, plan, kernel)
    if spans is None:
        return None
    spans = np.asarray(spans)
    return lambda tile: (int(spans[0, b, tile]), int(spans[1, b, tile]))


def _ints(values):
    return tuple(int(v) for v in values)


# One tile of each pass, jitted so that the eager replay stays quick. `mask` is the
# tile's element mask ([queries, keys]) on masked steps, None on unmasked ones.

@functools.partial(jax.jit, static_argnames=("plan",))
def _forward_step(q_tile, k_tile, v_tile, acc, m, l, mask, *, plan: hopper.Plan):
    s2 = _dot(q_tile, k_tile.T) * plan.qk_scale
    if mask is not None:
        s2 = hopper_tile.mask_scores(s2, mask)
    m, alpha, p, l = hopper_tile.softmax_update(s2, m, l, may_be_empty=mask is not None)
    acc = acc * hopper_tile.rows_to_tile(alpha, acc.shape) + _dot(p.astype(plan.dtype), v_tile)
    return acc, m, l


@functools.partial(jax.jit, static_argnames=("plan",))
def _dkv_step(k_tile, v_tile, q_tile, do_tile, lse2, delta, dk, dv, mask, *, plan: hopper.Plan):
    s2_t = _dot(k_tile, q_tile.T) * plan.qk_scale
    if mask is not None:
        s2_t = hopper_tile.mask_scores(s2_t, mask.T)
    p_t = hopper_tile.probs_t(s2_t, lse2)
    dv = dv + _dot(p_t.astype(plan.dtype), do_tile)
    ds_t = hopper_tile.dscores_t(p_t, _dot(v_tile, do_tile.T), delta).astype(plan.dtype)
    return dk + _dot(ds_t, q_tile), dv, _dot(ds_t.T, k_tile)


@functools.partial(jax.jit, static_argnames=("plan",))
def _dq_step(q_tile, do_tile, k_tile, v_tile, lse2, delta, dq, mask, *, plan: hopper.Plan):
    s2 = _dot(q_tile, k_tile.T) * plan.qk_scale
    if mask is not None:
        s2 = hopper_tile.mask_scores(s2, mask)
    p = hopper_tile.probs(s2, lse2)
    ds = hopper_tile.dscores(p, _dot(do_tile, v_tile.T), delta).astype(plan.dtype)
    return dq + _dot(ds, k_tile)


class _TileMasks:
    """Element masks of one example's tiles, as the kernels build them in masked steps."""

    def __init__(self, kmask: KernelMask, plan: hopper.Plan, b: int):
        self.prefix, self.kv_len, self.q_offset = _scalars(kmask, b)
        self.causal = plan.causal
        self.q_ids = None if kmask.q_segment_ids is None else np.asarray(kmask.q_segment_ids[b])
        self.kv_ids = None if kmask.kv_segment_ids is None else np.asarray(kmask.kv_segment_ids[b])

    def __call__(self, first_row: int, rows: int, first_key: int, keys: int):
        """[rows, keys] mask of query rows [first_row, +rows) against keys [first_key, +keys)."""
        q_pos = self.q_offset + first_row + np.arange(rows)[:, None]
        k_pos = first_key + np.arange(keys)[None, :]
        segments = ()
        if self.q_ids is not None:
            segments = (self.q_ids[first_row:first_row + rows, None], self.kv_ids[None, first_key:first_key + keys])
        return jnp.asarray(hopper_tile.visible(q_pos, k_pos, self.prefix, self.kv_len, self.causal, *segments))


def walk_steps(cta_first: int, cta_end: int, wg_range, first_masked: bool):
    """(step, masked) for the steps a compute warpgroup computes, as the kernels loop:
    drain [cta_first, first), compute [first, split) and [split, end), drain [end, cta_end).
    Checks the barrier protocol's invariant: every warpgroup of a block walks each of the
    block's steps exactly once (a drained or computed step more or less would deadlock)."""
    first, split, end = wg_range
    walked = [*range(cta_first, first), *range(first, split), *range(split, end), *range(end, cta_end)]
    if walked != list(range(cta_first, cta_end)):  # raised even under python -O
        raise AssertionError(f"warpgroup range {wg_range} does not walk block steps "
                             f"[{cta_first}, {cta_end}) exactly once")
    for step in range(first, end):
        yield step, (step < split) == first_masked


def forward(q, k, v, kmask: KernelMask, plan: hopper.Plan, counts: TileCounts):
    c = plan.config
    bq, bk = c.block_q, c.block_kv
    q_p = pad_axis(q, 1, plan.q_len_padded)
    k_p = pad_axis(k, 1, plan.kv_len_padded)
    v_p = pad_axis(v, 1, plan.kv_len_padded)
    out = np.zeros(q_p.shape, np.float32)
    lse2 = np.zeros((plan.batch, plan.num_heads, plan.q_len_padded), np.float32)
    for b in range(plan.batch):
        scalars, spans, masks = _scalars(kmask, b), _spans(kmask, plan, "forward", b), _TileMasks(kmask, plan, b)
        for h in range(plan.num_heads):
            kv_head = h // plan.group
            for q_cta in range(plan.num_q_ctas):
                cta_first, cta_end = _ints(hopper.cta_range(hopper.forward_ranges, plan, q_cta, *scalars, spans))
                counts.forward_fetched += cta_end - cta_first
                for wg in range(hopper.COMPUTE_WGS):
                    q_block = hopper.COMPUTE_WGS * q_cta + wg
                    wg_range = _ints(hopper.warpgroup_range(hopper.forward_ranges, plan, q_block, *scalars, spans,
                                                               (cta_first, cta_end)))
                    rows = slice(q_block * bq, (q_block + 1) * bq)
                    acc = jnp.zeros((bq, plan.head_dim), jnp.float32)
                    m = jnp.full((bq,), -jnp.inf, jnp.float32)
                    l = jnp.zeros((bq,), jnp.float32)
                    for step, masked in walk_steps(cta_first, cta_end, wg_range, first_masked=False):
                        keys = slice(step * bk, (step + 1) * bk)
                        mask = masks(q_block * bq, bq, step * bk, bk) if masked else None
                        acc, m, l = _forward_step(q_p[b, rows, h], k_p[b, keys, kv_head], v_p[b, keys, kv_head],
                                                  acc, m, l, mask, plan=plan)
                        counts.forward_computed += 1
                    o, lse = hopper_tile.softmax_finish(acc, m, l)
                    out[b, rows, h] = np.asarray(o.astype(plan.dtype), np.float32)
                    lse2[b, h, rows] = np.asarray(lse)
    return (jnp.asarray(out[:, :plan.q_len], plan.dtype), jnp.asarray(lse2[:, :, :plan.q_len]))


def _padded_backward_inputs(q, k, v, do, lse2, delta, plan):
    q_p, do_p = pad_axis(q, 1, plan.q_len_padded), pad_axis(do, 1, plan.q_len_padded)
    k_p, v_p = pad_axis(k, 1, plan.kv_len_padded), pad_axis(v, 1, plan.kv_len_padded)
    lse2_p = jnp.pad(lse2, ((0, 0), (0, 0), (0, plan.q_len_padded - plan.q_len)),
                     constant_values=jnp.inf)
    delta_p = pad_axis(delta, 2, plan.q_len_padded)
    return q_p, k_p, v_p, do_p, lse2_p, delta_p


def _backward_dkv(inputs, kmask, plan, counts):
    """dk, dv, and the unscaled float32 dq that atomic mode adds up with TMA reduce-add."""
    q_p, k_p, v_p, do_p, lse2_p, delta_p = inputs
    c = plan.config
    bq, bk = c.block_q_bwd, c.block_kv_bwd
    dk = np.zeros(k_p.shape, np.float32)
    dv = np.zeros(v_p.shape, np.float32)
    dq_acc = np.zeros(q_p.shape, np.float32)
    for b in range(plan.batch):
        scalars, spans, masks = _scalars(kmask, b), _spans(kmask, plan, "dkv", b), _TileMasks(kmask, plan, b)
        for kv_head in range(plan.num_kv_heads):
            for kv_cta in range(plan.num_kv_ctas):
                cta_first, cta_end = _ints(hopper.cta_range(hopper.dkv_ranges, plan, kv_cta, *scalars, spans))
                counts.dkv_fetched += plan.group * (cta_end - cta_first)
                for wg in range(hopper.COMPUTE_WGS):
                    kv_block = hopper.COMPUTE_WGS * kv_cta + wg
                    wg_range = _ints(hopper.warpgroup_range(hopper.dkv_ranges, plan, kv_block, *scalars, spans,
                                                               (cta_first, cta_end)))
                    keys = slice(kv_block * bk, (kv_block + 1) * bk)
                    k_tile, v_tile = k_p[b, keys, kv_head], v_p[b, keys, kv_head]
                    dk_acc = jnp.zeros((bk, plan.head_dim), jnp.float32)
                    dv_acc = jnp.zeros((bk, plan.head_dim), jnp.float32)
                    for g in range(plan.group):
                        head = kv_head * plan.group + g
                        for q_block, masked in walk_steps(cta_first, cta_end, wg_range, first_masked=True):
                            rows = slice(q_block * bq, (q_block + 1) * bq)
                            mask = masks(q_block * bq, bq, kv_block * bk, bk) if masked else None
                            dk_acc, dv_acc, dq_part = _dkv_step(
                                k_tile, v_tile, q_p[b, rows, head], do_p[b, rows, head],
                                lse2_p[b, head, rows], delta_p[b, head, rows], dk_acc, dv_acc, mask, plan=plan)
                            dq_acc[b, rows, head] += np.asarray(dq_part)
                            counts.dkv_computed += 1
                    dk[b, keys, kv_head] = np.asarray((dk_acc * plan.scale).astype(plan.dtype), np.float32)
                    dv[b, keys, kv_head] = np.asarray(dv_acc.astype(plan.dtype), np.float32)
    return jnp.asarray(dk, plan.dtype), jnp.asarray(dv, plan.dtype), jnp.asarray(dq_acc)


def _backward_dq(inputs, kmask, plan, counts):
    q_p, k_p, v_p, do_p, lse2_p, delta_p = inputs
    c = plan.config
    bq, bk = c.block_q_dq, c.block_kv_dq
    dq = np.zeros(q_p.shape, np.float32)
    for b in range(plan.batch):
        scalars, spans, masks = _scalars(kmask, b), _spans(kmask, plan, "dq", b), _TileMasks(kmask, plan, b)
        for h in range(plan.num_heads):
            kv_head = h // plan.group
            for q_cta in range(plan.num_q_ctas_dq):
                cta_first, cta_end = _ints(hopper.cta_range(hopper.dq_ranges, plan, q_cta, *scalars, spans))
                counts.dq_fetched += cta_end - cta_first
                for wg in range(hopper.COMPUTE_WGS):
                    q_block = hopper.COMPUTE_WGS * q_cta + wg
                    wg_range = _ints(hopper.warpgroup_range(hopper.dq_ranges, plan, q_block, *scalars, spans,
                                                               (cta_first, cta_end)))
                    rows = slice(q_block * bq, (q_block + 1) * bq)
                    acc = jnp.zeros((bq, plan.head_dim), jnp.float32)
                    for step, masked in walk_steps(cta_first, cta_end, wg_range, first_masked=False):
                        keys = slice(step * bk, (step + 1) * bk)
                        mask = masks(q_block * bq, bq, step * bk, bk) if masked else None
                        acc = _dq_step(q_p[b, rows, h], do_p[b, rows, h], k_p[b, keys, kv_head],
                                       v_p[b, keys, kv_head], lse2_p[b, h, rows], delta_p[b, h, rows], acc,
                                       mask, plan=plan)
                        counts.dq_computed += 1
                    dq[b, rows, h] = np.asarray((acc * plan.scale).astype(plan.dtype), np.float32)
    return jnp.asarray(dq, plan.dtype)


def backward(q, k, v, kmask: KernelMask, lse2, delta, do, plan: hopper.Plan, counts: TileCounts):
    """(dq, dk, dv) as the kernels compute them, in the plan's dq_mode."""
    inputs = _padded_backward_inputs(q, k, v, do, lse2, delta, plan)
    dk, dv, dq_acc = _backward_dkv(inputs, kmask, plan, counts)
    if plan.config.dq_mode == "atomic":
        dq = (dq_acc * plan.scale).astype(plan.dtype)
    else:
        dq = _backward_dq(inputs, kmask, plan, counts)
    return dq[:, :plan.q_len], dk[:, :plan.kv_len], dv[:, :plan.kv_len]
