"""Flash attention for GPUs: `pl.pallas_call` kernels that lower through Triton.

Layout stays [B, T, H, D] (no transposes): each program handles one (q tile, batch,
head) for the forward and dq passes, or one (kv tile, batch, kv head) for the dk/dv
pass, and loops over the other sequence in tiles. The loops run only over the tiles the
mask leaves visible (`block_mask`), split into fully visible tiles (no element mask)
and boundary tiles (masked). Per-example prefix lengths, kv lengths and query offsets
are [B] int32 operands read as scalars; segment ids are [B, T] operands, and with them
each program reads its tile's segment span (`block_mask.segment_tile_spans`, [B, tiles]
int32, computed before the call) so tiles that only pair different segments are skipped.

Runs on any CUDA GPU Triton supports (Ampere and Hopper alike); `interpret=True` runs the
same kernels on CPU for tests.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from workbench.kernels import block_mask, tile_math
from workbench.kernels.common import (KernelMask, PlanBase, check_supported, empty_attention, kernel_mask,
                                      kv_segment_spans, next_power_of_2, pad_axis, q_segment_spans, round_up, run_flash)

if TYPE_CHECKING:  # kernels read the mask by its fields; they never import the attention layer
    from workbench.attention.mask import AttentionMask

_MIN_BLOCK = 16  # Triton's smallest matmul tile
_MAX_WARPS = 32  # 1024 threads, CUDA's most per program
_PASS_SUFFIX = {"fwd": "", "dq": "_dq", "dkv": "_dkv"}  # GpuBlockSizes field suffix of each pallas_call


def default_num_warps(head_dim: int) -> int:
    """Warps per program where a pass's num_warps is None (as JAX's own Triton kernel)."""
    return 4 if head_dim <= 64 else 8


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_power_of_two(value) -> bool:
    return _is_whole(value) and value > 0 and not value & (value - 1)


@dataclasses.dataclass(frozen=True)
class GpuBlockSizes:
    """Tiles and Triton launch settings for each of the three pallas_calls: the forward (no
    suffix), dk/dv (`_dkv`) and dq (`_dq`).

    Tiles are powers of two, at least 16, clipped to the (padded) sequence length. Launch
    settings: warps per program (None: `default_num_warps`, 4 at head_dim 64, 8 at 128) and
    software-pipeline stages. The defaults follow the Triton fused-attention tutorial: a
    wide q tile for the forward and dq passes, a wide kv tile for the dk/dv pass.
    """

    block_q: int = 128
    block_k: int = 64
    num_warps: Optional[int] = None
    num_stages: int = 2
    block_q_dkv: int = 32
    block_k_dkv: int = 128
    num_warps_dkv: Optional[int] = None
    num_stages_dkv: int = 2
    block_q_dq: int = 128
    block_k_dq: int = 32
    num_warps_dq: Optional[int] = None
    num_stages_dq: int = 2

    def __post_init__(self):
        for field in dataclasses.fields(self):
            name, value = field.name, getattr(self, field.name)
            if name.startswith("block_") and not (_is_power_of_two(value) and value >= _MIN_BLOCK):
                raise ValueError(f"GpuBlockSizes.{name}={value!r}: expected a power of two >= "
                                 f"{_MIN_BLOCK} (Triton tiles)")
            if name.startswith("num_warps") and value is not None and not (
                    _is_power_of_two(value) and value <= _MAX_WARPS):
                raise ValueError(f"GpuBlockSizes.{name}={value!r}: expected a power of two from 1 to "
                                 f"{_MAX_WARPS} (Triton warps per program), or None for the head_dim "
                                 f"default (4 at 64, 8 at 128); e.g. {name}=4")
            if name.startswith("num_stages") and not (_is_whole(value) and value >= 1):
                raise ValueError(f"GpuBlockSizes.{name}={value!r}: expected a whole number >= 1 (Triton "
                                 f"software-pipeline stages; 1 turns pipelining off); e.g. {name}=2")

    def launch(self, pass_name: str, head_dim: int) -> tuple[int, int]:
        """(num_warps, num_stages) of the "fwd", "dq" or "dkv" pallas_call at `head_dim`."""
        if pass_name not in _PASS_SUFFIX:
            raise ValueError(f"pass_name={pass_name!r}: expected one of {tuple(_PASS_SUFFIX)}")
        suffix = _PASS_SUFFIX[pass_name]
        warps = getattr(self, "num_warps" + suffix)
        return (default_num_warps(head_dim) if warps is None else warps), getattr(self, "num_stages" + suffix)


@dataclasses.dataclass(frozen=True)
class _Plan(PlanBase):
    """The shared plan plus the GPU kernels' own static facts."""

    segmented: bool
    blocks: GpuBlockSizes
    interpret: bool

    def compiler_params(self, pass_name: str):
        num_warps, num_stages = self.blocks.launch(pass_name, self.head_dim)
        return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _fit(block: int, length: int) -> int:
    return min(block, max(_MIN_BLOCK, next_power_of_2(length)))


def _make_plan(q, k, mask: AttentionMask, scale, blocks: GpuBlockSizes, interpret: bool) -> _Plan:
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    fitted = dataclasses.replace(
        blocks,
        block_q=_fit(blocks.block_q, q_len), block_k=_fit(blocks.block_k, kv_len),
        block_q_dkv=_fit(blocks.block_q_dkv, q_len), block_k_dkv=_fit(blocks.block_k_dkv, kv_len),
        block_q_dq=_fit(blocks.block_q_dq, q_len), block_k_dq=_fit(blocks.block_k_dq, kv_len))
    q_multiple = max(fitted.block_q, fitted.block_q_dkv, fitted.block_q_dq)
    kv_multiple = max(fitted.block_k, fitted.block_k_dkv, fitted.block_k_dq)
    return _Plan(batch, q_len, kv_len, num_heads, num_kv_heads, head_dim,
                 round_up(q_len, q_multiple), round_up(kv_len, kv_multiple),
                 float(head_dim**-0.5 if scale is None else scale), mask.causal, mask.block_size,
                 mask.has_segments, fitted, interpret)


def _scalar_specs(index_of_batch):
    spec = pl.BlockSpec((None,), lambda *grid: (index_of_batch(*grid),))
    return [spec, spec, spec]


def _read_scalars(prefix_ref, kv_len_ref, q_offset_ref):
    return prefix_ref[()], kv_len_ref[()], q_offset_ref[()]


def _segment_span_specs(index_of_tile):
    """Specs reading one program's (first, end) segment span as scalars from [B, tiles] arrays."""
    spec = pl.BlockSpec((None, None), index_of_tile)
    return [spec, spec]


def _read_segment_span(first_ref, end_ref):
    return first_ref[()], end_ref[()]


def _tile_visibility(plan: _Plan, q_pos, k_pos, prefix, kv_len, q_seg, kv_seg):
    visible = block_mask.element_mask(q_pos, k_pos, prefix, kv_len, plan.causal, plan.block_size)
    if plan.segmented:
        visible = visible & (q_seg == kv_seg)
    return visible


# -- forward -------------------------------------------------------------------

def _forward_kernel(q_ref, k_ref, v_ref, prefix_ref, kv_len_ref, q_offset_ref, *refs, plan: _Plan):
    segment_span = None
    if plan.segmented:
        q_seg_ref, kv_seg_ref, span_first_ref, span_end_ref, out_ref, lse_ref = refs
        segment_span = _read_segment_span(span_first_ref, span_end_ref)
    else:
        out_ref, lse_ref = refs
    block_q, block_k = plan.blocks.block_q, plan.blocks.block_k
    q_block = pl.program_id(0)
    prefix, kv_len, q_offset = _read_scalars(prefix_ref, kv_len_ref, q_offset_ref)
    first, split, end = block_mask.kv_tile_span(*block_mask.kv_block_range(
        q_block, block_q=block_q, block_k=block_k, q_len=plan.q_len, prefix=prefix,
        kv_len=kv_len, q_offset=q_offset, causal=plan.causal, block_size=plan.block_size,
        segmented=plan.segmented),
        segment_span)

    q = q_ref[...]
    q_pos = q_offset + q_block * block_q + jnp.arange(block_q, dtype=jnp.int32)[:, None]
    q_seg = q_seg_ref[...][:, None] if plan.segmented else None

    def body(kv_block, carry, masked: bool):
        start = pl.multiple_of(kv_block * block_k, block_k)
        keys = pl.ds(start, block_k)
        s2 = tile_math.dot_nt(q, k_ref[keys, :]) * plan.qk_scale
        if masked:
            k_pos = start + jnp.arange(block_k, dtype=jnp.int32)[None, :]
            kv_seg = kv_seg_ref[keys][None, :] if plan.segmented else None
            s2 = tile_math.apply_mask(
                s2, _tile_visibility(plan, q_pos, k_pos, prefix, kv_len, q_seg, kv_seg))
        return tile_math.softmax_step(s2, v_ref[keys, :], *carry, may_be_empty=masked)

    carry = (jnp.full((block_q, 1), -jnp.inf, jnp.float32),
             jnp.zeros((block_q, 1), jnp.float32),
             jnp.zeros((block_q, plan.head_dim), jnp.float32))
    if not plan.segmented:  # with segment ids every visible tile is masked
        carry = lax.fori_loop(first, split, functools.partial(body, masked=False), carry)
    carry = lax.fori_loop(split, end, functools.partial(body, masked=True), carry)
    out, lse2 = tile_math.softmax_finish(*carry)
    out_ref[...] = out.astype(out_ref.dtype)
    lse_ref[...] = lse2[:, 0]


def _forward(q, k, v, kmask: KernelMask, plan: _Plan):
    blocks = plan.blocks
    q_p = pad_axis(q, 1, plan.q_len_padded)
    k_p = pad_axis(k, 1, plan.kv_len_padded)
    v_p = pad_axis(v, 1, plan.kv_len_padded)
    group, d, tk = plan.group, plan.head_dim, plan.kv_len_padded
    grid = (plan.q_len_padded // blocks.block_q, plan.batch, plan.num_heads)
    in_specs = [
        pl.BlockSpec((None, blocks.block_q, None, d), lambda i, b, h: (b, i, h, 0)),
        pl.BlockSpec((None, tk, None, d), lambda i, b, h: (b, 0, h // group, 0)),
        pl.BlockSpec((None, tk, None, d), lambda i, b, h: (b, 0, h // group, 0)),
        *_scalar_specs(lambda i, b, h: b),
    ]
    operands = [q_p, k_p, v_p, kmask.prefix, kmask.kv_len, kmask.q_offset]
    if plan.segmented:
        in_specs += [pl.BlockSpec((None, blocks.block_q), lambda i, b, h: (b, i)),
                     pl.BlockSpec((None, tk), lambda i, b, h: (b, 0)),
                     *_segment_span_specs(lambda i, b, h: (b, i))]
        operands += [kmask.q_segment_ids, kmask.kv_segment_ids,
                     *kv_segment_spans(kmask, plan.q_len, blocks.block_q, blocks.block_k)]
    out, lse2 = pl.pallas_call(
        functools.partial(_forward_kernel, plan=plan),
        grid=grid,
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, blocks.block_q, None, d), lambda i, b, h: (b, i, h, 0)),
                   pl.BlockSpec((None, None, blocks.block_q), lambda i, b, h: (b, h, i))],
        out_shape=[jax.ShapeDtypeStruct(q_p.shape, q.dtype),
                   jax.ShapeDtypeStruct((plan.batch, plan.num_heads, plan.q_len_padded), jnp.float32)],
        compiler_params=plan.compiler_params("fwd"),
        interpret=plan.interpret,
        name="flash_attention_fwd",
    )(*operands)
    return out[:, :plan.q_len], lse2[:, :, :plan.q_len]


# -- backward: dq --------------------------------------------------------------

def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, prefix_ref, kv_len_ref,
               q_offset_ref, *refs, plan: _Plan):
    segment_span = None
    if plan.segmented:
        q_seg_ref, kv_seg_ref, span_first_ref, span_end_ref, dq_ref = refs
        segment_span = _read_segment_span(span_first_ref, span_end_ref)
    else:
        (dq_ref,) = refs
    block_q, block_k = plan.blocks.block_q_dq, plan.blocks.block_k_dq
    q_block = pl.program_id(0)
    prefix, kv_len, q_offset = _read_scalars(prefix_ref, kv_len_ref, q_offset_ref)
    first, split, end = block_mask.kv_tile_span(*block_mask.kv_block_range(
        q_block, block_q=block_q, block_k=block_k, q_len=plan.q_len, prefix=prefix,
        kv_len=kv_len, q_offset=q_offset, causal=plan.causal, block_size=plan.block_size,
        segmented=plan.segmented),
        segment_span)

    q, do = q_ref[...], do_ref[...]
    lse2, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_pos = q_offset + q_block * block_q + jnp.arange(block_q, dtype=jnp.int32)[:, None]
    q_seg = q_seg_ref[...][:, None] if plan.segmented else None

    def body(kv_block, dq, masked: bool):
        start = pl.multiple_of(kv_block * block_k, block_k)
        keys = pl.ds(start, block_k)
        k = k_ref[keys, :]
        s2 = tile_math.dot_nt(q, k) * plan.qk_scale
        if masked:
            k_pos = start + jnp.arange(block_k, dtype=jnp.int32)[None, :]
            kv_seg = kv_seg_ref[keys][None, :] if plan.segmented else None
            s2 = tile_math.apply_mask(
                s2, _tile_visibility(plan, q_pos, k_pos, prefix, kv_len, q_seg, kv_seg))
        return dq + tile_math.dq_step(s2, k, v_ref[keys, :], do, lse2, delta)

    dq = jnp.zeros((block_q, plan.head_dim), jnp.float32)
    if not plan.segmented:  # with segment ids every visible tile is masked
        dq = lax.fori_loop(first, split, functools.partial(body, masked=False), dq)
    dq = lax.fori_loop(split, end, functools.partial(body, masked=True), dq)
    dq_ref[...] = (dq * plan.scale).astype(dq_ref.dtype)


def _backward_dq(q_p, k_p, v_p, do_p, lse2_p, delta_p, kmask: KernelMask, plan: _Plan):
    blocks = plan.blocks
    group, d, tk = plan.group, plan.head_dim, plan.kv_len_padded
    bq = blocks.block_q_dq
    row = pl.BlockSpec((None, bq, None, d), lambda i, b, h: (b, i, h, 0))
    whole_kv = pl.BlockSpec((None, tk, None, d), lambda i, b, h: (b, 0, h // group, 0))
    stat = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
    in_specs = [row, whole_kv, whole_kv, row, stat, stat, *_scalar_specs(lambda i, b, h: b)]
    operands = [q_p, k_p, v_p, do_p, lse2_p, delta_p, kmask.prefix, kmask.kv_len, kmask.q_offset]
    if plan.segmented:
        in_specs += [pl.BlockSpec((None, bq), lambda i, b, h: (b, i)),
                     pl.BlockSpec((None, tk), lambda i, b, h: (b, 0)),
                     *_segment_span_specs(lambda i, b, h: (b, i))]
        operands += [kmask.q_segment_ids, kmask.kv_segment_ids,
                     *kv_segment_spans(kmask, plan.q_len, bq, blocks.block_k_dq)]
    return pl.pallas_call(
        functools.partial(_dq_kernel, plan=plan),
        grid=(plan.q_len_padded // bq, plan.batch, plan.num_heads),
        in_specs=in_specs,
        out_specs=row,
        out_shape=jax.ShapeDtypeStruct(q_p.shape, q_p.dtype),
        compiler_params=plan.compiler_params("dq"),
        interpret=plan.interpret,
        name="flash_attention_bwd_dq",
    )(*operands)


# -- backward: dk, dv ----------------------------------------------------------

def _dkv_kernel(q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, prefix_ref, kv_len_ref,
                q_offset_ref, *refs, plan: _Plan):
    segment_span = None
    if plan.segmented:
        q_seg_ref, kv_seg_ref, span_first_ref, span_end_ref, dk_ref, dv_ref = refs
        segment_span = _read_segment_span(span_first_ref, span_end_ref)
    else:
        dk_ref, dv_ref = refs
    block_q, block_k = plan.blocks.block_q_dkv, plan.blocks.block_k_dkv
    num_q_blocks = plan.q_len_padded // block_q
    kv_block = pl.program_id(0)
    prefix, kv_len, q_offset = _read_scalars(prefix_ref, kv_len_ref, q_offset_ref)
    first, split, end = block_mask.q_tile_span(*block_mask.q_block_range(
        kv_block, block_q=block_q, block_k=block_k, num_q_blocks=num_q_blocks, prefix=prefix,
        kv_len=kv_len, q_offset=q_offset, causal=plan.causal, block_size=plan.block_size,
        segmented=plan.segmented),
        num_q_blocks, segment_span)

    k, v = k_ref[...], v_ref[...]
    k_pos = kv_block * block_k + jnp.arange(block_k, dtype=jnp.int32)[:, None]
    kv_seg = kv_seg_ref[...][:, None] if plan.segmented else None

    def body(q_block, carry, head: int, masked: bool):
        dk, dv = carry
        start = pl.multiple_of(q_block * block_q, block_q)
        rows = pl.ds(start, block_q)
        q = q_ref[rows, head, :]
        s2_t = tile_math.dot_nt(k, q) * plan.qk_scale
        if masked:
            q_pos = q_offset + start + jnp.arange(block_q, dtype=jnp.int32)[None, :]
            q_seg = q_seg_ref[rows][None, :] if plan.segmented else None
            s2_t = tile_math.apply_mask(
                s2_t, _tile_visibility(plan, q_pos, k_pos, prefix, kv_len, q_seg, kv_seg))
        dk_step, dv_step = tile_math.dkv_step(
            s2_t, q, do_ref[rows, head, :], v, lse_ref[head, rows][None, :],
            delta_ref[head, rows][None, :])
        return dk + dk_step, dv + dv_step

    carry = (jnp.zeros((block_k, plan.head_dim), jnp.float32),
             jnp.zeros((block_k, plan.head_dim), jnp.float32))
    for head in range(plan.group):  # query heads sharing this kv head (GQA)
        carry = lax.fori_loop(first, split, functools.partial(body, head=head, masked=True), carry)
        if not plan.segmented:  # with segment ids every visible tile is masked
            carry = lax.fori_loop(split, end, functools.partial(body, head=head, masked=False), carry)
    dk, dv = carry
    dk_ref[...] = (dk * plan.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward_dkv(q_p, k_p, v_p, do_p, lse2_p, delta_p, kmask: KernelMask, plan: _Plan):
    blocks = plan.blocks
    group, d, tq = plan.group, plan.head_dim, plan.q_len_padded
    bk = blocks.block_k_dkv
    whole_q = pl.BlockSpec((None, tq, group, d), lambda j, b, h: (b, 0, h, 0))
    whole_stat = pl.BlockSpec((None, group, tq), lambda j, b, h: (b, h, 0))
    kv_tile = pl.BlockSpec((None, bk, None, d), lambda j, b, h: (b, j, h, 0))
    in_specs = [whole_q, whole_q, whole_stat, whole_stat, kv_tile, kv_tile,
                *_scalar_specs(lambda j, b, h: b)]
    operands = [q_p, do_p, lse2_p, delta_p, k_p, v_p, kmask.prefix, kmask.kv_len, kmask.q_offset]
    if plan.segmented:
        in_specs += [pl.BlockSpec((None, tq), lambda j, b, h: (b, 0)),
                     pl.BlockSpec((None, bk), lambda j, b, h: (b, j)),
                     *_segment_span_specs(lambda j, b, h: (b, j))]
        operands += [kmask.q_segment_ids, kmask.kv_segment_ids,
                     *q_segment_spans(kmask, plan.q_len, blocks.block_q_dkv, bk)]
    return pl.pallas_call(
        functools.partial(_dkv_kernel, plan=plan),
        grid=(plan.kv_len_padded // bk, plan.batch, plan.num_kv_heads),
        in_specs=in_specs,
        out_specs=[kv_tile, kv_tile],
        out_shape=[jax.ShapeDtypeStruct(k_p.shape, k_p.dtype),
                   jax.ShapeDtypeStruct(v_p.shape, v_p.dtype)],
        compiler_params=plan.compiler_params("dkv"),
        interpret=plan.interpret,
        name="flash_attention_bwd_dkv",
    )(*operands)


def _backward(q, k, v, kmask: KernelMask, lse2, delta, do, plan: _Plan):
    q_p, do_p = pad_axis(q, 1, plan.q_len_padded), pad_axis(do, 1, plan.q_len_padded)
    k_p, v_p = pad_axis(k, 1, plan.kv_len_padded), pad_axis(v, 1, plan.kv_len_padded)
    # Padding query rows get lse +inf so they contribute nothing to dk, dv.
    lse2_p = jnp.pad(lse2, ((0, 0), (0, 0), (0, plan.q_len_padded - plan.q_len)),
                     constant_values=jnp.inf)
    delta_p = pad_axis(delta, 2, plan.q_len_padded)
    dq = _backward_dq(q_p, k_p, v_p, do_p, lse2_p, delta_p, kmask, plan)
    dk, dv = _backward_dkv(q_p, k_p, v_p, do_p, lse2_p, delta_p, kmask, plan)
    return dq[:, :plan.q_len], dk[:, :plan.kv_len], dv[:, :plan.kv_len]


def flash_attention_gpu(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    *,
    scale: Optional[float] = None,
    block_sizes: GpuBlockSizes = GpuBlockSizes(),
    interpret: bool = False,
) -> jax.Array:
    """Masked flash attention through Pallas-Triton; differentiable (custom VJP).

    q [B, Tq, H, D], k and v [B, Tk, Hkv, D] with D in (64, 128), H a multiple of Hkv,
    bf16 or f32 (f32 accumulation). Any `AttentionMask` (causal, prefix, block-causal, key
    padding, segment ids, query offsets of either sign); lengths need not be multiples of
    the tiles, and Tq = 0 or Tk = 0 gives an empty or zero output. `interpret=True` runs on CPU.
    """
    check_supported(q, k, v, mask)
    empty = empty_attention(q, k)
    if empty is not None:
        return empty
    plan = _make_plan(q, k, mask, scale, block_sizes, interpret)
    kmask = kernel_mask(mask, plan.batch, plan.q_len, plan.kv_len, plan.q_len_padded,
                        plan.kv_len_padded)
    return run_flash(q, k, v, kmask, forward=_forward, backward=_backward, plan=plan)
