"""Flash attention for TPUs: Mosaic `pl.pallas_call` kernels with scalar prefetch.

The kernels work head-major ([B, H, T, D]; the wrapper transposes) so every block's two
minor dimensions are (tile, head_dim). The grid walks (batch, head, q tile, kv tile)
with the kv axis innermost ("arbitrary"), keeping the online-softmax statistics in VMEM
scratch. Per-example prefix lengths, kv lengths and query offsets are scalar-prefetched
into SMEM: the kernel body uses them to skip hidden tiles with `pl.when`, and the
index maps clamp the kv (or q) block index into the visible tiles, so a hidden grid
step re-uses the block already in VMEM instead of fetching a new one. With segment ids,
each tile's segment span (`block_mask.segment_tile_spans`, computed before the call) is
scalar-prefetched too and narrows the visible tiles the same way.

Row statistics follow the splash-attention layouts Mosaic handles well: running max/sum
as lane-replicated [bq, 128] scratch, the saved log-sum-exp written lane-replicated and
read back as a [1, bq] row. `interpret=True` runs the kernels in TPU interpret mode
(`pltpu.InterpretParams`) on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from workbench.kernels import block_mask, tile_math
from workbench.kernels.common import (KernelMask, PlanBase, check_supported, empty_attention, kernel_mask,
                                      kv_segment_spans, pad_axis, q_segment_spans, round_up, run_flash)

if TYPE_CHECKING:  # kernels read the mask by its fields; they never import the attention layer
    from workbench.attention.mask import AttentionMask

LANES = 128
SUBLANES = 8


@dataclasses.dataclass(frozen=True)
class TpuBlockSizes:
    """Tile sizes: multiples of 128 on a TPU (lane width); interpret mode accepts multiples of 8."""

    block_q: int = 128
    block_k: int = 128
    block_q_dkv: int = 128
    block_k_dkv: int = 128
    block_q_dq: int = 128
    block_k_dq: int = 128

    def check(self, interpret: bool) -> None:
        multiple = SUBLANES if interpret else LANES
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value <= 0 or value % multiple:
                raise ValueError(
                    f"TpuBlockSizes.{field.name}={value}: expected a positive multiple of {multiple} "
                    f"({'interpret mode' if interpret else 'TPU lane width'})")


@dataclasses.dataclass(frozen=True)
class _Plan(PlanBase):
    """The shared plan plus the TPU kernels' own static facts."""

    segmented: bool
    blocks: TpuBlockSizes
    interpret: bool
    simulate_tpu_memory: bool

    def _interpret_option(self):
        if not self.interpret:
            return False
        return pltpu.InterpretParams() if self.simulate_tpu_memory else True

    def call_options(self, dimension_semantics) -> dict:
        return dict(
            compiler_params=pltpu.CompilerParams(dimension_semantics=dimension_semantics),
            interpret=self._interpret_option(),
        )


def _make_plan(q, k, mask: AttentionMask, scale, blocks: TpuBlockSizes, interpret: bool,
               simulate_tpu_memory: bool) -> _Plan:
    blocks.check(interpret)
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    unit = SUBLANES if interpret else LANES
    q_cap, kv_cap = round_up(q_len, unit), round_up(kv_len, unit)
    fitted = TpuBlockSizes(
        block_q=min(blocks.block_q, q_cap), block_k=min(blocks.block_k, kv_cap),
        block_q_dkv=min(blocks.block_q_dkv, q_cap), block_k_dkv=min(blocks.block_k_dkv, kv_cap),
        block_q_dq=min(blocks.block_q_dq, q_cap), block_k_dq=min(blocks.block_k_dq, kv_cap))
    q_multiple = math.lcm(fitted.block_q, fitted.block_q_dkv, fitted.block_q_dq)
    kv_multiple = math.lcm(fitted.block_k, fitted.block_k_dkv, fitted.block_k_dq)
    return _Plan(batch, q_len, kv_len, num_heads, num_kv_heads, head_dim,
                 round_up(q_len, q_multiple), round_up(kv_len, kv_multiple),
                 float(head_dim**-0.5 if scale is None else scale), mask.causal, mask.block_size,
                 mask.has_segments, fitted, interpret, simulate_tpu_memory)


def _head_major(x: jax.Array, length: int) -> jax.Array:
    """[B, T, H, D] -> [B, H, T_padded, D]."""
    return pad_axis(x, 1, length).transpose(0, 2, 1, 3)


def _column_ids(ids: jax.Array) -> jax.Array:
    """[B, T] -> [B, T, 128]: ids down the sublanes, replicated across the lanes."""
    return jax.lax.broadcast_in_dim(ids, (*ids.shape, LANES), (0, 1))


def _row_ids(ids: jax.Array) -> jax.Array:
    """[B, T] -> [B, 8, T]: ids along the lanes (read as a [1, tile] row)."""
    return jax.lax.broadcast_in_dim(ids, (ids.shape[0], SUBLANES, ids.shape[1]), (0, 2))


class _Scalars(NamedTuple):
    """The scalar-prefetched operands (SMEM refs inside the kernels and index maps)."""

    prefix: Any  # [B]
    kv_len: Any  # [B]
    q_offset: Any  # [B]
    span_first: Any = None  # [B * tiles], only with segment ids: first tile that may share an id
    span_end: Any = None  # [B * tiles]: one past the last such tile

    def segment_span(self, b, tile, num_tiles: int):
        if self.span_first is None:
            return None
        return self.span_first[b * num_tiles + tile], self.span_end[b * num_tiles + tile]


def _scalar_operands(kmask: KernelMask, plan: _Plan, spans) -> list[jax.Array]:
    """Prefetch operands; `spans()` gives the [B, tiles] segment spans (only called with segments)."""
    operands = [kmask.prefix, kmask.kv_len, kmask.q_offset]
    if plan.segmented:
        operands += [span.reshape(-1) for span in spans()]  # 1-D: SMEM pads 2-D arrays
    return operands


def _split_scalars(plan: _Plan, refs) -> tuple[_Scalars, tuple]:
    count = 5 if plan.segmented else 3
    return _Scalars(*refs[:count]), refs[count:]


def _kv_span(plan: _Plan, scalars: _Scalars, b, q_block, block_q: int, block_k: int):
    """(first, split, end): kv tiles [first, split) unmasked, [split, end) masked."""
    b_range = block_mask.kv_block_range(
        q_block, block_q=block_q, block_k=block_k, q_len=plan.q_len, prefix=scalars.prefix[b],
        kv_len=scalars.kv_len[b], q_offset=scalars.q_offset[b], causal=plan.causal,
        block_size=plan.block_size, segmented=plan.segmented)
    return block_mask.kv_tile_span(
        *b_range, scalars.segment_span(b, q_block, plan.q_len_padded // block_q))


def _q_span(plan: _Plan, scalars: _Scalars, b, kv_block, block_q: int, block_k: int):
    """(first, split, end): q tiles [first, split) masked, [split, end) unmasked."""
    num_q_blocks = plan.q_len_padded // block_q
    b_range = block_mask.q_block_range(
        kv_block, block_q=block_q, block_k=block_k, num_q_blocks=num_q_blocks,
        prefix=scalars.prefix[b], kv_len=scalars.kv_len[b], q_offset=scalars.q_offset[b],
        causal=plan.causal, block_size=plan.block_size, segmented=plan.segmented)
    return block_mask.q_tile_span(
        *b_range, num_q_blocks, scalars.segment_span(b, kv_block, plan.kv_len_padded // block_k))


def _in_span(index, first, end):
    """first <= index < end (a static first of 0 needs no test)."""
    below_end = index < end
    if isinstance(first, int) and first == 0:
        return below_end
    return below_end & (index >= first)


def _visible_block(index, first, end, count: int):
    """Clamp a grid index into the visible tiles [first, end) (and [0, count)), so hidden
    steps re-use a block already fetched instead of fetching their own."""
    return jnp.clip(jnp.minimum(index, end - 1), first, count - 1)


def _visibility(plan: _Plan, q_pos, k_pos, b, scalars: _Scalars, q_seg, kv_seg):
    visible = block_mask.element_mask(q_pos, k_pos, scalars.prefix[b], scalars.kv_len[b], plan.causal,
                                         plan.block_size)
    if plan.segmented:
        visible = visible & (q_seg == kv_seg)
    return visible


def _column(stat_ref) -> jax.Array:
    """[bq, 1] from lane-replicated [bq, 128] statistics (a lane reduction; exact)."""
    return jnp.max(stat_ref[...], axis=1, keepdims=True)


def _lanes_to_width(ids: jax.Array, width: int) -> jax.Array:
    """Lane-replicated [rows, 128] ids -> [rows, width], comparable elementwise with a tile.

    On a TPU tiles are multiples of 128 and this is a lane tile (as in splash attention);
    interpret-mode tests use narrower tiles.
    """
    if width % LANES == 0:
        return jnp.tile(ids, (1, width // LANES))
    return ids[:, :width]


# -- forward -------------------------------------------------------------------

def _forward_kernel(*refs, plan: _Plan):
    scalars, refs = _split_scalars(plan, refs)
    if plan.segmented:
        q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, out_ref, lse_ref, m_ref, l_ref, acc_ref = refs
    else:
        q_ref, k_ref, v_ref, out_ref, lse_ref, m_ref, l_ref, acc_ref = refs
    block_q, block_k = plan.blocks.block_q, plan.blocks.block_k
    b, q_block, kv_block = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    first, split, end = _kv_span(plan, scalars, b, q_block, block_q, block_k)

    @pl.when(kv_block == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def compute(masked: bool):
        s2 = tile_math.dot_nt(q_ref[...], k_ref[...]) * plan.qk_scale
        if masked:
            shape = (block_q, block_k)
            q_pos = scalars.q_offset[b] + q_block * block_q + lax.broadcasted_iota(jnp.int32, shape, 0)
            k_pos = kv_block * block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
            q_seg = _lanes_to_width(q_seg_ref[...], block_k) if plan.segmented else None
            kv_seg = kv_seg_ref[:1, :] if plan.segmented else None
            s2 = tile_math.apply_mask(
                s2, _visibility(plan, q_pos, k_pos, b, scalars, q_seg, kv_seg))
        m, l, acc = tile_math.softmax_step(s2, v_ref[...], _column(m_ref), _column(l_ref),
                                           acc_ref[...], may_be_empty=masked)
        m_ref[...] = jnp.broadcast_to(m, m_ref.shape)
        l_ref[...] = jnp.broadcast_to(l, l_ref.shape)
        acc_ref[...] = acc

    if not plan.segmented:  # with segment ids every visible tile is masked
        pl.when(_in_span(kv_block, first, split))(lambda: compute(masked=False))
    pl.when(_in_span(kv_block, split, end))(lambda: compute(masked=True))

    @pl.when(kv_block == pl.num_programs(3) - 1)
    def _finish():
        out, lse2 = tile_math.softmax_finish(_column(m_ref), _column(l_ref), acc_ref[...])
        out_ref[...] = out.astype(out_ref.dtype)
        lse_ref[...] = jnp.broadcast_to(lse2, lse_ref.shape)


def _forward(q, k, v, kmask: KernelMask, plan: _Plan):
    bq, bk, d = plan.blocks.block_q, plan.blocks.block_k, plan.head_dim
    group, num_kv_blocks = plan.group, plan.kv_len_padded // bk

    def q_map(b, h, i, j, *_):
        return b, h, i, 0

    def kv_map(b, h, i, j, *refs):
        first, _, end = _kv_span(plan, _Scalars(*refs), b, i, bq, bk)
        return b, h // group, _visible_block(j, first, end, num_kv_blocks), 0

    in_specs = [pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bk, d), kv_map)]
    operands = [_head_major(q, plan.q_len_padded), _head_major(k, plan.kv_len_padded),
                _head_major(v, plan.kv_len_padded)]
    if plan.segmented:
        def kv_seg_map(b, h, i, j, *scalars):
            return b, 0, kv_map(b, h, i, j, *scalars)[2]

        in_specs += [pl.BlockSpec((None, bq, LANES), lambda b, h, i, j, *_: (b, i, 0)),
                     pl.BlockSpec((None, SUBLANES, bk), kv_seg_map)]
        operands += [_column_ids(kmask.q_segment_ids), _row_ids(kmask.kv_segment_ids)]
    scalar_operands = _scalar_operands(kmask, plan, lambda: kv_segment_spans(kmask, plan.q_len, bq, bk))
    grid = (plan.batch, plan.num_heads, plan.q_len_padded // bq, num_kv_blocks)
    stats_shape = (plan.batch, plan.num_heads, plan.q_len_padded, LANES)
    out, lse2 = pl.pallas_call(
        functools.partial(_forward_kernel, plan=plan),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(scalar_operands),
            grid=grid,
            in_specs=in_specs,
            out_specs=[pl.BlockSpec((None, None, bq, d), q_map),
                       pl.BlockSpec((None, None, bq, LANES), q_map)],
            scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32),
                            pltpu.VMEM((bq, LANES), jnp.float32),
                            pltpu.VMEM((bq, d), jnp.float32)],
        ),
        out_shape=[jax.ShapeDtypeStruct(operands[0].shape, q.dtype),
                   jax.ShapeDtypeStruct(stats_shape, jnp.float32)],
        name="flash_attention_fwd",
        **plan.call_options(("parallel", "parallel", "parallel", "arbitrary")),
    )(*scalar_operands, *operands)
    out = out.transpose(0, 2, 1, 3)[:, :plan.q_len]
    return out, lse2[:, :, :plan.q_len, 0]


# -- backward: dq --------------------------------------------------------------

def _dq_kernel(*refs, plan: _Plan):
    scalars, refs = _split_scalars(plan, refs)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs = refs
    if plan.segmented:
        q_seg_ref, kv_seg_ref, dq_ref, dq_acc_ref = refs
    else:
        dq_ref, dq_acc_ref = refs
    block_q, block_k = plan.blocks.block_q_dq, plan.blocks.block_k_dq
    b, q_block, kv_block = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    first, split, end = _kv_span(plan, scalars, b, q_block, block_q, block_k)

    @pl.when(kv_block == 0)
    def _init():
        dq_acc_ref[...] = jnp.zeros(dq_acc_ref.shape, jnp.float32)

    def compute(masked: bool):
        k = k_ref[...]
        s2 = tile_math.dot_nt(q_ref[...], k) * plan.qk_scale
        if masked:
            shape = (block_q, block_k)
            q_pos = scalars.q_offset[b] + q_block * block_q + lax.broadcasted_iota(jnp.int32, shape, 0)
            k_pos = kv_block * block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
            q_seg = _lanes_to_width(q_seg_ref[...], block_k) if plan.segmented else None
            kv_seg = kv_seg_ref[:1, :] if plan.segmented else None
            s2 = tile_math.apply_mask(
                s2, _visibility(plan, q_pos, k_pos, b, scalars, q_seg, kv_seg))
        lse2 = lse_ref[0][:, None]
        delta = delta_ref[0][:, None]
        dq_acc_ref[...] += tile_math.dq_step(s2, k, v_ref[...], do_ref[...], lse2, delta)

    if not plan.segmented:  # with segment ids every visible tile is masked
        pl.when(_in_span(kv_block, first, split))(lambda: compute(masked=False))
    pl.when(_in_span(kv_block, split, end))(lambda: compute(masked=True))

    @pl.when(kv_block == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (dq_acc_ref[...] * plan.scale).astype(dq_ref.dtype)


def _backward_dq(q_t, k_t, v_t, do_t, lse_rows, delta_rows, kmask: KernelMask, plan: _Plan):
    bq, bk, d = plan.blocks.block_q_dq, plan.blocks.block_k_dq, plan.head_dim
    group, num_kv_blocks = plan.group, plan.kv_len_padded // bk

    def q_map(b, h, i, j, *_):
        return b, h, i, 0

    def kv_map(b, h, i, j, *refs):
        first, _, end = _kv_span(plan, _Scalars(*refs), b, i, bq, bk)
        return b, h // group, _visible_block(j, first, end, num_kv_blocks), 0

    def row_map(b, h, i, j, *_):
        return b, h, 0, i

    in_specs = [pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, 1, bq), row_map),
                pl.BlockSpec((None, None, 1, bq), row_map)]
    operands = [q_t, k_t, v_t, do_t, lse_rows, delta_rows]
    if plan.segmented:
        def kv_seg_map(b, h, i, j, *scalars):
            return b, 0, kv_map(b, h, i, j, *scalars)[2]

        in_specs += [pl.BlockSpec((None, bq, LANES), lambda b, h, i, j, *_: (b, i, 0)),
                     pl.BlockSpec((None, SUBLANES, bk), kv_seg_map)]
        operands += [_column_ids(kmask.q_segment_ids), _row_ids(kmask.kv_segment_ids)]
    scalar_operands = _scalar_operands(kmask, plan, lambda: kv_segment_spans(kmask, plan.q_len, bq, bk))
    return pl.pallas_call(
        functools.partial(_dq_kernel, plan=plan),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(scalar_operands),
            grid=(plan.batch, plan.num_heads, plan.q_len_padded // bq, num_kv_blocks),
            in_specs=in_specs,
            out_specs=pl.BlockSpec((None, None, bq, d), q_map),
            scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
        ),
        out_shape=jax.ShapeDtypeStruct(q_t.shape, q_t.dtype),
        name="flash_attention_bwd_dq",
        **plan.call_options(("parallel", "parallel", "parallel", "arbitrary")),
    )(*scalar_operands, *operands)


# -- backward: dk, dv ----------------------------------------------------------

def _dkv_kernel(*refs, plan: _Plan):
    scalars, refs = _split_scalars(plan, refs)
    k_ref, v_ref, q_ref, do_ref, lse_ref, delta_ref, *refs = refs
    if plan.segmented:
        q_seg_ref, kv_seg_ref, dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
    else:
        dk_ref, dv_ref, dk_acc_ref, dv_acc_ref = refs
    block_q, block_k = plan.blocks.block_q_dkv, plan.blocks.block_k_dkv
    b, kv_block, head, q_block = (pl.program_id(0), pl.program_id(2), pl.program_id(3),
                                  pl.program_id(4))
    first, split, end = _q_span(plan, scalars, b, kv_block, block_q, block_k)

    @pl.when((head == 0) & (q_block == 0))
    def _init():
        dk_acc_ref[...] = jnp.zeros(dk_acc_ref.shape, jnp.float32)
        dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

    def compute(masked: bool):
        q = q_ref[...]
        s2_t = tile_math.dot_nt(k_ref[...], q) * plan.qk_scale
        if masked:
            shape = (block_k, block_q)
            q_pos = scalars.q_offset[b] + q_block * block_q + lax.broadcasted_iota(jnp.int32, shape, 1)
            k_pos = kv_block * block_k + lax.broadcasted_iota(jnp.int32, shape, 0)
            q_seg = q_seg_ref[:1, :] if plan.segmented else None
            kv_seg = _lanes_to_width(kv_seg_ref[...], block_q) if plan.segmented else None
            s2_t = tile_math.apply_mask(
                s2_t, _visibility(plan, q_pos, k_pos, b, scalars, q_seg, kv_seg))
        dk, dv = tile_math.dkv_step(s2_t, q, do_ref[...], v_ref[...], lse_ref[...], delta_ref[...])
        dk_acc_ref[...] += dk
        dv_acc_ref[...] += dv

    pl.when(_in_span(q_block, first, split))(lambda: compute(masked=True))
    if not plan.segmented:  # with segment ids every visible tile is masked
        pl.when(_in_span(q_block, split, end))(lambda: compute(masked=False))

    @pl.when((head == pl.num_programs(3) - 1) & (q_block == pl.num_programs(4) - 1))
    def _finish():
        dk_ref[...] = (dk_acc_ref[...] * plan.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


def _backward_dkv(q_t, k_t, v_t, do_t, lse_rows, delta_rows, kmask: KernelMask, plan: _Plan):
    bq, bk, d = plan.blocks.block_q_dkv, plan.blocks.block_k_dkv, plan.head_dim
    group = plan.group
    num_q_blocks = plan.q_len_padded // bq

    def kv_map(b, h, j, g, i, *_):
        return b, h, j, 0

    def visible_q_block(b, j, i, *refs):
        first, _, end = _q_span(plan, _Scalars(*refs), b, j, bq, bk)
        return _visible_block(i, first, end, num_q_blocks)

    def q_map(b, h, j, g, i, *scalars):
        return b, h * group + g, visible_q_block(b, j, i, *scalars), 0

    def row_map(b, h, j, g, i, *scalars):
        return b, h * group + g, 0, visible_q_block(b, j, i, *scalars)

    in_specs = [pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, 1, bq), row_map),
                pl.BlockSpec((None, None, 1, bq), row_map)]
    operands = [k_t, v_t, q_t, do_t, lse_rows, delta_rows]
    if plan.segmented:
        def q_seg_map(b, h, j, g, i, *scalars):
            return b, 0, visible_q_block(b, j, i, *scalars)

        in_specs += [pl.BlockSpec((None, SUBLANES, bq), q_seg_map),
                     pl.BlockSpec((None, bk, LANES), lambda b, h, j, g, i, *_: (b, j, 0))]
        operands += [_row_ids(kmask.q_segment_ids), _column_ids(kmask.kv_segment_ids)]
    scalar_operands = _scalar_operands(kmask, plan, lambda: q_segment_spans(kmask, plan.q_len, bq, bk))
    return pl.pallas_call(
        functools.partial(_dkv_kernel, plan=plan),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(scalar_operands),
            grid=(plan.batch, plan.num_kv_heads, plan.kv_len_padded // bk, group, num_q_blocks),
            in_specs=in_specs,
            out_specs=[pl.BlockSpec((None, None, bk, d), kv_map),
                       pl.BlockSpec((None, None, bk, d), kv_map)],
            scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
        ),
        out_shape=[jax.ShapeDtypeStruct(k_t.shape, k_t.dtype),
                   jax.ShapeDtypeStruct(v_t.shape, v_t.dtype)],
        name="flash_attention_bwd_dkv",
        **plan.call_options(("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
    )(*scalar_operands, *operands)


def _backward(q, k, v, kmask: KernelMask, lse2, delta, do, plan: _Plan):
    q_t, do_t = _head_major(q, plan.q_len_padded), _head_major(do, plan.q_len_padded)
    k_t, v_t = _head_major(k, plan.kv_len_padded), _head_major(v, plan.kv_len_padded)
    extra = plan.q_len_padded - plan.q_len
    # Padding query rows get lse +inf so they contribute nothing to dk, dv.
    lse_rows = jnp.pad(lse2, ((0, 0), (0, 0), (0, extra)), constant_values=jnp.inf)[:, :, None, :]
    delta_rows = pad_axis(delta, 2, plan.q_len_padded)[:, :, None, :]
    dq = _backward_dq(q_t, k_t, v_t, do_t, lse_rows, delta_rows, kmask, plan)
    dk, dv = _backward_dkv(q_t, k_t, v_t, do_t, lse_rows, delta_rows, kmask, plan)
    return (dq.transpose(0, 2, 1, 3)[:, :plan.q_len], dk.transpose(0, 2, 1, 3)[:, :plan.kv_len],
            dv.transpose(0, 2, 1, 3)[:, :plan.kv_len])


def flash_attention_tpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    *,
    scale: Optional[float] = None,
    block_sizes: TpuBlockSizes = TpuBlockSizes(),
    interpret: bool = False,
    simulate_tpu_memory: bool = True,
) -> jax.Array:
    """Masked flash attention as Mosaic TPU kernels; differentiable (custom VJP).

    Same contract as `flash_attention_gpu`: q [B, Tq, H, D], k and v [B, Tk, Hkv, D],
    D in (64, 128), bf16 or f32, any `AttentionMask`, lengths padded internally.
    `interpret=True` runs on CPU: in TPU interpret mode (`pltpu.InterpretParams`, which
    simulates VMEM/SMEM and fills fresh scratch with NaN) by default, or with
    `simulate_tpu_memory=False` in the generic Pallas interpreter, which runs the same
    kernel bodies and index maps about 50x faster (for wide randomized tests).
    """
    check_supported(q, k, v, mask)
    empty = empty_attention(q, k)
    if empty is not None:
        return empty
    plan = _make_plan(q, k, mask, scale, block_sizes, interpret, simulate_tpu_memory)
    kmask = kernel_mask(mask, plan.batch, plan.q_len, plan.kv_len, plan.q_len_padded,
                        plan.kv_len_padded)
    return run_flash(q, k, v, kmask, forward=_forward, backward=_backward, plan=plan)
