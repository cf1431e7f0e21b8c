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

from workbench.kernels import hopper, hopper_tile
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


def _tile_positions(rows: int, cols: int, first_row, first_col):
    return (first_row + jnp.arange(rows)[:, None], first_col + jnp.arange(cols)[None, :])


# One tile of each pass, jitted so that the eager replay stays quick.

@functools.partial(jax.jit, static_argnames=("plan", "masked"))
def _forward_step(q_tile, k_tile, v_tile, acc, m, l, first_q, first_k, prefix, kv_len, *,
                  plan: hopper.Plan, masked: bool):
    s2 = _dot(q_tile, k_tile.T) * plan.qk_scale
    if masked:
        q_pos, k_pos = _tile_positions(q_tile.shape[0], k_tile.shape[0], first_q, first_k)
        s2 = hopper_tile.mask_scores(s2, hopper_tile.visible(q_pos, k_pos, prefix, kv_len, plan.causal))
    m, alpha, p, l = hopper_tile.softmax_update(s2, m, l, may_be_empty=masked)
    acc = acc * hopper_tile.rows_to_tile(alpha, acc.shape) + _dot(p.astype(plan.dtype), v_tile)
    return acc, m, l


@functools.partial(jax.jit, static_argnames=("plan", "masked"))
def _dkv_step(k_tile, v_tile, q_tile, do_tile, lse2, delta, dk, dv, first_q, first_k, prefix,
              kv_len, *, plan: hopper.Plan, masked: bool):
    s2_t = _dot(k_tile, q_tile.T) * plan.qk_scale
    if masked:
        k_pos, q_pos = _tile_positions(k_tile.shape[0], q_tile.shape[0], first_k, first_q)
        s2_t = hopper_tile.mask_scores(s2_t, hopper_tile.visible(q_pos, k_pos, prefix, kv_len, plan.causal))
    p_t = hopper_tile.probs_t(s2_t, lse2)
    dv = dv + _dot(p_t.astype(plan.dtype), do_tile)
    ds_t = hopper_tile.dscores_t(p_t, _dot(v_tile, do_tile.T), delta).astype(plan.dtype)
    return dk + _dot(ds_t, q_tile), dv, _dot(ds_t.T, k_tile)


@functools.partial(jax.jit, static_argnames=("plan", "masked"))
def _dq_step(q_tile, do_tile, k_tile, v_tile, lse2, delta, dq, first_q, first_k, prefix, kv_len,
             *, plan: hopper.Plan, masked: bool):
    s2 = _dot(q_tile, k_tile.T) * plan.qk_scale
    if masked:
        q_pos, k_pos = _tile_positions(q_tile.shape[0], k_tile.shape[0], first_q, first_k)
        s2 = hopper_tile.mask_scores(s2, hopper_tile.visible(q_pos, k_pos, prefix, kv_len, plan.causal))
    p = hopper_tile.probs(s2, lse2)
    ds = hopper_tile.dscores(p, _dot(do_tile, v_tile.T), delta).astype(plan.dtype)
    return dq + _dot(ds, k_tile)


def forward(q, k, v, kmask: KernelMask, plan: hopper.Plan, counts: TileCounts):
    c = plan.config
    bq, bk = c.block_q, c.block_kv
    q_p = pad_axis(q, 1, plan.q_len_padded)
    k_p = pad_axis(k, 1, plan.kv_len_padded)
    v_p = pad_axis(v, 1, plan.kv_len_padded)
    out = np.zeros(q_p.shape, np.float32)
    lse2 = np.zeros((plan.batch, plan.num_heads, plan.q_len_padded), np.float32)
    for b in range(plan.batch):
        prefix, kv_len, q_offset = _scalars(kmask, b)
        for h in range(plan.num_heads):
            kv_head = h // plan.group
            for q_cta in range(plan.num_q_ctas):
                cta_steps = int(hopper.forward_cta_steps(plan, q_cta, prefix, kv_len, q_offset))
                counts.forward_fetched += cta_steps
                for wg in range(hopper.COMPUTE_WGS):
                    q_block = hopper.COMPUTE_WGS * q_cta + wg
                    num_full, num_visible = map(int, hopper.forward_ranges(
                        plan, q_block, prefix, kv_len, q_offset))
                    assert num_visible <= cta_steps
                    rows = slice(q_block * bq, (q_block + 1) * bq)
                    q_tile = q_p[b, rows, h]
                    q_pos = q_offset + q_block * bq
                    acc = jnp.zeros((bq, plan.head_dim), jnp.float32)
                    m = jnp.full((bq,), -jnp.inf, jnp.float32)
                    l = jnp.zeros((bq,), jnp.float32)
                    for step in range(num_visible):
                        keys = slice(step * bk, (step + 1) * bk)
                        acc, m, l = _forward_step(
                            q_tile, k_p[b, keys, kv_head], v_p[b, keys, kv_head], acc, m, l,
                            q_pos, step * bk, prefix, kv_len, plan=plan, masked=step >= num_full)
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
        prefix, kv_len, q_offset = _scalars(kmask, b)
        for kv_head in range(plan.num_kv_heads):
            for kv_cta in range(plan.num_kv_ctas):
                cta_first = int(hopper.dkv_cta_first(plan, kv_cta, prefix, kv_len, q_offset))
                counts.dkv_fetched += plan.group * (plan.num_q_blocks_bwd - cta_first)
                for wg in range(hopper.COMPUTE_WGS):
                    kv_block = hopper.COMPUTE_WGS * kv_cta + wg
                    first_visible, first_full = map(int, hopper.dkv_ranges(
                        plan, kv_block, prefix, kv_len, q_offset))
                    assert first_visible >= cta_first
                    keys = slice(kv_block * bk, (kv_block + 1) * bk)
                    k_tile, v_tile = k_p[b, keys, kv_head], v_p[b, keys, kv_head]
                    k_pos = kv_block * bk
                    dk_acc = jnp.zeros((bk, plan.head_dim), jnp.float32)
                    dv_acc = jnp.zeros((bk, plan.head_dim), jnp.float32)
                    for g in range(plan.group):
                        head = kv_head * plan.group + g
                        for q_block in range(first_visible, plan.num_q_blocks_bwd):
                            rows = slice(q_block * bq, (q_block + 1) * bq)
                            dk_acc, dv_acc, dq_part = _dkv_step(
                                k_tile, v_tile, q_p[b, rows, head], do_p[b, rows, head],
                                lse2_p[b, head, rows], delta_p[b, head, rows], dk_acc, dv_acc,
                                q_offset + q_block * bq, k_pos, prefix, kv_len, plan=plan,
                                masked=q_block < first_full)
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
        prefix, kv_len, q_offset = _scalars(kmask, b)
        for h in range(plan.num_heads):
            kv_head = h // plan.group
            for q_cta in range(plan.num_q_ctas_dq):
                cta_steps = int(hopper.dq_cta_steps(plan, q_cta, prefix, kv_len, q_offset))
                counts.dq_fetched += cta_steps
                for wg in range(hopper.COMPUTE_WGS):
                    q_block = hopper.COMPUTE_WGS * q_cta + wg
                    num_full, num_visible = map(int, hopper.dq_ranges(
                        plan, q_block, prefix, kv_len, q_offset))
                    assert num_visible <= cta_steps
                    rows = slice(q_block * bq, (q_block + 1) * bq)
                    q_tile, do_tile = q_p[b, rows, h], do_p[b, rows, h]
                    q_pos = q_offset + q_block * bq
                    acc = jnp.zeros((bq, plan.head_dim), jnp.float32)
                    for step in range(num_visible):
                        keys = slice(step * bk, (step + 1) * bk)
                        acc = _dq_step(q_tile, do_tile, k_p[b, keys, kv_head], v_p[b, keys, kv_head],
                                       lse2_p[b, h, rows], delta_p[b, h, rows], acc, q_pos,
                                       step * bk, prefix, kv_len, plan=plan,
                                       masked=step >= num_full)
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
