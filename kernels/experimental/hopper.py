"""Flash attention for Hopper GPUs (H100/H200), written with Pallas Mosaic GPU.

FlashAttention-3 structure, after JAX's `ops/gpu/attention_mgpu.py` demo: each CUDA
block runs three warpgroups, two that compute and one that only issues TMA copies
into a ring of shared-memory stages (warp specialisation); matmuls are `wgmma` with
operands in shared memory (the softmax probabilities and dS go in registers); the
two compute warpgroups take turns on the tensor cores (a "schedule barrier"), so one
does its softmax while the other multiplies.

What this adds to the demo: bf16 (and fp16), the workbench's `AttentionMask` given as
per-example scalars (prefix length, key length, query offset) read from device memory
inside the kernel, and loops that run only over the tiles the mask leaves visible
(`block_mask`): for a query tile the visible key tiles are [0, num_visible), the first
num_full of them without an element mask. The copy warpgroup fetches only the tiles
some compute warpgroup of its block needs; a compute warpgroup that needs fewer
"drains" the rest (waits for and releases the buffers without computing).

Kernels (grid axes named heads, q_seq or kv_seq, batch):
* forward: 2 x block_q query rows per block, streams K/V; writes out and lse2.
* dk/dv: 2 x block_kv_bwd keys per block (one kv head: loops over its query heads),
  streams Q, dO, lse2, delta; with `dq_mode="atomic"` it also adds dS K into a float32
  dq accumulator with TMA reduce-add (FlashAttention-3), else
* dq: a separate kernel, 2 x block_q_dq query rows per block, streams K/V.

Segment ids (packed sequences): each tile's segment span (`block_mask.segment_tile_spans`,
computed before the call) bounds its loop, so tiles pairing only different segments are
neither fetched nor computed; the ids of a masked tile's rows and columns are read from
device memory into the WGMMA layout and compared element by element. The backward recomputes
the scores from the saved base-2 log-sum-exp; fully masked rows give zeros and zero
gradients. Interpret mode cannot run these kernels (see NOTES.md);
`hopper_emulate.py` runs the same tile schedule and tile math in plain JAX for CPU tests.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from workbench.kernels import block_mask
from workbench.kernels.common import (KernelMask, PlanBase, check_supported, empty_attention, kernel_mask,
                                      kv_segment_spans, pad_axis, q_segment_spans, round_up,
                                      run_flash)
from workbench.kernels.common import why_not_supported as common_why_not_supported
from workbench.kernels.experimental import hopper_tile

if TYPE_CHECKING:  # kernels read the mask by its fields; they never import the attention layer
    from workbench.attention.mask import AttentionMask

HEAD_DIMS = (64, 128)
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
DQ_MODES = ("separate", "atomic")
# Mask features (`AttentionMask.features`) these kernels compute: no block-causal masks.
SUPPORTED_FEATURES = frozenset({"causal", "prefix", "key_padding", "segments", "q_offset"})
COMPUTE_WGS = 2  # compute warpgroups per block; one more issues the copies
_COMPUTE_REGISTERS = 232  # FA3's split of the 64K registers between the warpgroups
_MEMORY_REGISTERS = 40


@dataclasses.dataclass(frozen=True)
class HopperConfig:
    """Tile sizes (multiples of 64: the wgmma M granularity of one warpgroup).

    Forward: each compute warpgroup owns `block_q` query rows and walks `block_kv` key
    tiles through `stages` shared-memory buffers (the demo's fastest shape on H100:
    64 x 128, 2 stages). dk/dv: each compute warpgroup owns `block_kv_bwd` keys and
    walks `block_q_bwd` query tiles. dq (separate mode): `block_q_dq` rows per
    warpgroup, `block_kv_dq` key tiles.
    """

    block_q: int = 64
    block_kv: int = 128
    stages: int = 2
    block_q_bwd: int = 64
    block_kv_bwd: int = 64
    block_q_dq: int = 64
    block_kv_dq: int = 64
    dq_mode: str = "separate"
    schedule_barrier: bool = True

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("block_") and (value < 64 or value % 64):
                raise ValueError(f"HopperConfig.{field.name}={value}: expected a multiple of 64 "
                                 f"(one warpgroup's wgmma tile)")
        if self.stages < 2:
            raise ValueError(f"HopperConfig.stages={self.stages}: expected at least 2 buffers")
        if self.dq_mode not in DQ_MODES:
            raise ValueError(f"HopperConfig.dq_mode={self.dq_mode!r}: expected one of {DQ_MODES}")


@dataclasses.dataclass(frozen=True)
class Plan(PlanBase):
    """The shared plan plus the input dtype, the Hopper tile configuration and whether
    segment ids take part (they add operands and a compare in every visible tile)."""

    dtype: jnp.dtype
    config: HopperConfig
    segmented: bool = False

    @property
    def num_q_ctas(self) -> int:
        return self.q_len_padded // (COMPUTE_WGS * self.config.block_q)

    @property
    def num_kv_ctas(self) -> int:
        return self.kv_len_padded // (COMPUTE_WGS * self.config.block_kv_bwd)

    @property
    def num_q_ctas_dq(self) -> int:
        return self.q_len_padded // (COMPUTE_WGS * self.config.block_q_dq)

    @property
    def num_q_blocks_bwd(self) -> int:
        return self.q_len_padded // self.config.block_q_bwd


def make_plan(q, k, mask: AttentionMask, scale: Optional[float], config: HopperConfig) -> Plan:
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    c = config
    q_multiple = max(COMPUTE_WGS * c.block_q, c.block_q_bwd, COMPUTE_WGS * c.block_q_dq)
    kv_multiple = max(c.block_kv, COMPUTE_WGS * c.block_kv_bwd, c.block_kv_dq)
    # All tiles are powers of two times 64 in practice; lcm keeps any multiple of 64 exact.
    q_multiple = math.lcm(q_multiple, COMPUTE_WGS * c.block_q, c.block_q_bwd, COMPUTE_WGS * c.block_q_dq)
    kv_multiple = math.lcm(kv_multiple, c.block_kv, COMPUTE_WGS * c.block_kv_bwd, c.block_kv_dq)
    return Plan(batch, q_len, kv_len, num_heads, num_kv_heads, head_dim,
                round_up(q_len, q_multiple), round_up(kv_len, kv_multiple),
                float(head_dim**-0.5 if scale is None else scale), mask.causal, mask.block_size,
                jnp.dtype(q.dtype), config,
                mask.has_segments)


def why_not_supported(q, k, v, mask: AttentionMask) -> Optional[str]:
    """None when these kernels compute this case exactly, else the reason."""
    return common_why_not_supported(q, k, v, mask, features=SUPPORTED_FEATURES, head_dims=HEAD_DIMS, dtypes=DTYPES)


def is_hopper(device) -> bool:
    """True for sm_90 GPUs (H100, H200, H800, GH200)."""
    if getattr(device, "platform", None) != "gpu":
        return False
    capability = getattr(device, "compute_capability", None)
    if capability is not None:
        return str(capability).startswith("9.")
    kind = getattr(device, "device_kind", "")
    return any(name in kind for name in ("H100", "H200", "H800", "GH200"))


def local_gpu_is_hopper() -> tuple[bool, str]:
    """(whether the first local GPU is sm_90, its device kind or why there is none)."""
    try:
        device = jax.devices("gpu")[0]
    except RuntimeError as err:
        return False, f"no GPU backend ({err})"
    return is_hopper(device), device.device_kind


def scalars_operand(kmask: KernelMask) -> jax.Array:
    """[3, B] int32: prefix length, key length, query offset (read inside the kernels)."""
    return jnp.stack([kmask.prefix, kmask.kv_len, kmask.q_offset]).astype(jnp.int32)


# -- tile schedules (shared with hopper_emulate.py) ----------------------------------
#
# A compute warpgroup's tiles are a range (first, split, end): for the forward and dq
# passes (a query tile walking key tiles) [first, split) need no element mask and
# [split, end) need one; for the dk/dv pass (a key tile walking query tiles) [first,
# split) need one and [split, end) do not. Without segment ids first is 0 (forward, dq)
# and end is the last query tile (dk/dv). With them, `span` is the tile's segment span
# (`block_mask.segment_tile_spans`: tiles outside it share no segment id) and every
# visible tile is masked. The copy warpgroup fetches the union of its block's ranges,
# [cta_first, cta_end) (`cta_range`); a compute warpgroup drains the tiles of that union
# outside its own range (`warpgroup_range`), so every warpgroup walks every step once.

def forward_ranges(plan: Plan, q_block, prefix, kv_len, q_offset, span=None):
    """(first, split, end) key tiles of width block_kv for a block_q query tile."""
    c = plan.config
    num_full, num_visible = block_mask.kv_block_range(
        q_block, block_q=c.block_q, block_k=c.block_kv, q_len=plan.q_len, prefix=prefix,
        kv_len=kv_len, q_offset=q_offset, causal=plan.causal, segmented=span is not None)
    return block_mask.kv_tile_span(num_full, num_visible, span)


def dkv_ranges(plan: Plan, kv_block, prefix, kv_len, q_offset, span=None):
    """(first, split, end) query tiles of width block_q_bwd for a block_kv_bwd key tile."""
    c = plan.config
    first_visible, first_full = block_mask.q_block_range(
        kv_block, block_q=c.block_q_bwd, block_k=c.block_kv_bwd,
        num_q_blocks=plan.num_q_blocks_bwd, prefix=prefix, kv_len=kv_len, q_offset=q_offset,
        causal=plan.causal, segmented=span is not None)
    return block_mask.q_tile_span(first_visible, first_full, plan.num_q_blocks_bwd, span)


def dq_ranges(plan: Plan, q_block, prefix, kv_len, q_offset, span=None):
    """(first, split, end) key tiles of width block_kv_dq for a block_q_dq query tile."""
    c = plan.config
    num_full, num_visible = block_mask.kv_block_range(
        q_block, block_q=c.block_q_dq, block_k=c.block_kv_dq, q_len=plan.q_len, prefix=prefix,
        kv_len=kv_len, q_offset=q_offset, causal=plan.causal, segmented=span is not None)
    return block_mask.kv_tile_span(num_full, num_visible, span)


def cta_range(range_fn, plan: Plan, cta, prefix, kv_len, q_offset, spans=None):
    """[cta_first, cta_end): the union of the ranges of block `cta`'s compute warpgroups
    (`range_fn` is one of the three above; `spans(tile)` gives a tile's segment span, or
    None without segment ids). Empty ranges add nothing; (0, 0) when all are empty."""
    ranges = [range_fn(plan, tile, prefix, kv_len, q_offset, None if spans is None else spans(tile))
              for tile in (COMPUTE_WGS * cta + wg for wg in range(COMPUTE_WGS))]
    never = jnp.int32(jnp.iinfo(jnp.int32).max)
    first = functools.reduce(jnp.minimum, [jnp.where(e > f, f, never) for f, _, e in ranges])
    end = functools.reduce(jnp.maximum, [jnp.where(e > f, e, 0) for f, _, e in ranges])
    return jnp.minimum(first, end), end


def warpgroup_range(range_fn, plan: Plan, tile, prefix, kv_len, q_offset, spans, block_range):
    """A compute warpgroup's (first, split, end) for `tile`, clipped into its block's range
    [cta_first, cta_end]: draining [cta_first, first) and [end, cta_end) then walks each of
    the block's steps exactly once, as the barrier protocol needs. (Non-empty ranges lie
    inside by construction; an empty one can sit anywhere, e.g. at tile 0 while the block
    starts at 5, or past the block when every range is empty.)"""
    first, split, end = range_fn(plan, tile, prefix, kv_len, q_offset, None if spans is None else spans(tile))
    cta_first, cta_end = block_range
    first = jnp.clip(first, cta_first, cta_end)
    end = jnp.clip(end, first, cta_end)
    return first, jnp.clip(split, first, end), end


def segment_spans(kmask: KernelMask, plan: Plan, kernel: str) -> Optional[jax.Array]:
    """[2, B, tiles] int32 (first, end) segment spans of one kernel's tiles, or None.

    forward and dq: per query tile, its key tiles; dkv: per key tile, its query tiles."""
    if kmask.q_segment_ids is None:
        return None
    c = plan.config
    if kernel == "forward":
        first, end = kv_segment_spans(kmask, plan.q_len, c.block_q, c.block_kv)
    elif kernel == "dq":
        first, end = kv_segment_spans(kmask, plan.q_len, c.block_q_dq, c.block_kv_dq)
    elif kernel == "dkv":
        first, end = q_segment_spans(kmask, plan.q_len, c.block_q_bwd, c.block_kv_bwd)
    else:
        raise ValueError(f"kernel={kernel!r}: expected 'forward', 'dq' or 'dkv'")
    return jnp.stack([first, end]).astype(jnp.int32)


def _segment_operands(kmask: KernelMask, plan: Plan, kernel: str) -> list:
    """Extra operands with segment ids: padded q and kv ids and the kernel's tile spans."""
    if not plan.segmented:
        return []
    return [kmask.q_segment_ids, kmask.kv_segment_ids, segment_spans(kmask, plan, kernel)]


# -- shared kernel pieces ------------------------------------------------------------

def _smem_tiles(shape, dtype):
    """Shared memory laid out for TMA and wgmma: (8, 64) tiles, 128-byte swizzle (16-bit)."""
    return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, 64)),
                                                plgpu.SwizzleTransform(128)))


def _read_scalars(scalars_ref, batch):
    return scalars_ref[0, batch], scalars_ref[1, batch], scalars_ref[2, batch]


def _positions(rows: int, cols: int, dim: int, start):
    """Absolute positions along `dim` of a [rows, cols] WGMMA tile starting at `start`."""
    iota = plgpu.broadcasted_iota(jnp.int32, (rows, cols), dim, layout=plgpu.Layout.WGMMA)
    return iota + start


def _segment_ids(ids_ref, batch, start, size: int, dim: int):
    """[size] segment ids of positions [start, start + size), laid out along `dim` of a
    WGMMA tile (0: one per row, 1: one per column); read from device memory."""
    # A plain (not "optimized") per-thread load: optimized transfers only exist for SMEM.
    return plgpu.load(ids_ref.at[batch, pl.ds(start, size)], layout=plgpu.Layout.WGMMA.reduce(1 - dim),
                      optimized=False)


def _tile_visible(plan: Plan, shape, q_dim: int, q_start, k_start, prefix, kv_len, q_ids=None, kv_ids=None):
    """Boolean WGMMA tile of visible pairs; queries run along `q_dim` (0: rows), keys along
    the other; q_ids / kv_ids are the tile's segment ids along those dims (or None)."""
    rows, cols = shape
    q_pos = _positions(rows, cols, q_dim, q_start)
    k_pos = _positions(rows, cols, 1 - q_dim, k_start)
    segments = ()
    if q_ids is not None:
        along = lambda ids, dim: lax.broadcast_in_dim(ids, shape, [dim])
        segments = (along(q_ids, q_dim), along(kv_ids, 1 - q_dim))
    return hopper_tile.visible(q_pos, k_pos, prefix, kv_len, plan.causal, *segments)


def _segment_refs(refs, plan: Plan):
    """Split a kernel's trailing refs into (q ids, kv ids, spans) or Nones, and the rest."""
    if not plan.segmented:
        return (None, None, None), refs
    return tuple(refs[:3]), refs[3:]


def _span_reader(spans_ref, batch):
    """tile -> its (first, end) segment span, read as scalars; None without segment ids."""
    if spans_ref is None:
        return None
    return lambda tile: (spans_ref[0, batch, tile], spans_ref[1, batch, tile])


def _zeros(shape, layout):
    return plgpu.layout_cast(jnp.zeros(shape, jnp.float32), layout)


def _slot(step, stages: int):
    return lax.rem(step, jnp.int32(stages))


def _matmul(a, b, shape):
    """a @ b into a fresh float32 accumulator (waits for the wgmma)."""
    def body(acc_ref):
        plgpu.wgmma(acc_ref, a, b)
        return acc_ref[...]
    return pl.run_scoped(body, plgpu.ACC(shape, jnp.float32))


def _matmul_add(acc, a, b):
    """acc + a @ b, accumulating in the wgmma registers."""
    def body(acc_ref):
        plgpu.wgmma(acc_ref, a, b)
    return pl.run_state(body)(plgpu.ACC.init(acc))


_COMPILER_PARAMS = plgpu.CompilerParams(approx_math=True)


# -- shared memory -------------------------------------------------------------------

SMEM_LIMIT_BYTES = 227 * 1024  # per block on sm_90 (the CPU lowering does not check it)


def _forward_scratch(plan: Plan):
    c, d, stages = plan.config, plan.head_dim, plan.config.stages
    return [
        _smem_tiles((COMPUTE_WGS, c.block_q, d), plan.dtype),  # q, then the output
        _smem_tiles((stages, c.block_kv, d), plan.dtype),
        _smem_tiles((stages, c.block_kv, d), plan.dtype),
        plgpu.SMEM((COMPUTE_WGS, c.block_q), jnp.float32),
        plgpu.Barrier(num_barriers=stages),  # key tile ready
        plgpu.Barrier(num_barriers=stages),  # value tile ready
        plgpu.Barrier(num_barriers=COMPUTE_WGS),  # q ready
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),  # key buffer free
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),  # value buffer free
        plgpu.Barrier(num_arrivals=COMPUTE_WGS),  # schedule (tensor-core turns)
    ]


def _dkv_scratch(plan: Plan):
    c, d, stages = plan.config, plan.head_dim, plan.config.stages
    bq, bk = c.block_q_bwd, c.block_kv_bwd
    scratch = [
        _smem_tiles((COMPUTE_WGS, bk, d), plan.dtype),  # k, then dk
        _smem_tiles((COMPUTE_WGS, bk, d), plan.dtype),  # v, then dv
        _smem_tiles((stages, bq, d), plan.dtype),
        _smem_tiles((stages, bq, d), plan.dtype),
        plgpu.SMEM((stages, bq), jnp.float32),
        plgpu.SMEM((stages, bq), jnp.float32),
    ]
    if c.dq_mode == "atomic":
        scratch += [_smem_tiles((COMPUTE_WGS, bk, bq), plan.dtype),  # dS^T
                    plgpu.SMEM((COMPUTE_WGS, bq, d), jnp.float32)]  # dq partial
    return scratch + [
        plgpu.Barrier(num_barriers=(2, COMPUTE_WGS)),  # k, v ready
        *[plgpu.Barrier(num_barriers=stages) for _ in range(4)],  # q, lse2, dO, delta ready
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),  # slot free
    ]


def _dq_scratch(plan: Plan):
    c, d, stages = plan.config, plan.head_dim, plan.config.stages
    bq, bk = c.block_q_dq, c.block_kv_dq
    return [
        _smem_tiles((COMPUTE_WGS, bq, d), plan.dtype),  # q, then dq
        _smem_tiles((COMPUTE_WGS, bq, d), plan.dtype),
        plgpu.SMEM((COMPUTE_WGS, bq), jnp.float32),
        plgpu.SMEM((COMPUTE_WGS, bq), jnp.float32),
        _smem_tiles((stages, bk, d), plan.dtype),
        _smem_tiles((stages, bk, d), plan.dtype),
        plgpu.Barrier(num_barriers=(4, COMPUTE_WGS)),  # q, dO, lse2, delta ready
        plgpu.Barrier(num_barriers=stages),
        plgpu.Barrier(num_barriers=stages),
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),
    ]


def _scratch_bytes(scratch) -> int:
    total = 0
    for item in scratch:
        if isinstance(item, plgpu.Barrier):
            total += 8 * math.prod(item.num_barriers)  # one mbarrier is 8 bytes
        else:
            total += math.prod(item.shape) * jnp.dtype(item.dtype).itemsize
    return total


def smem_bytes(plan: Plan) -> dict[str, int]:
    """Shared memory each kernel of this plan allocates, before alignment padding (the
    lowering adds ~1% and raises past SMEM_LIMIT_BYTES)."""
    sizes = {"forward": _scratch_bytes(_forward_scratch(plan)),
             "dkv": _scratch_bytes(_dkv_scratch(plan))}
    if plan.config.dq_mode == "separate":
        sizes["dq"] = _scratch_bytes(_dq_scratch(plan))
    return sizes


# -- forward -------------------------------------------------------------------------

def _forward_kernel(q_ref, k_ref, v_ref, scalars_ref, *refs, plan: Plan):
    (q_seg_ref, kv_seg_ref, spans_ref), refs = _segment_refs(refs, plan)
    (out_ref, lse_ref, qo_smem2, k_smem, v_smem, lse_smem2, k_ready, v_ready, q_ready,
     k_free, v_free, schedule) = refs
    c = plan.config
    bq, bk, stages, d = c.block_q, c.block_kv, c.stages, plan.head_dim
    batch, head, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    # The heaviest query tiles (most visible keys under causal masks) start first.
    q_cta = plan.num_q_ctas - 1 - lax.axis_index("q_seq")
    prefix, kv_len, q_offset = _read_scalars(scalars_ref, batch)
    spans = _span_reader(spans_ref, batch)
    cta_first, cta_end = cta_range(forward_ranges, plan, q_cta, prefix, kv_len, q_offset, spans)

    def slot_of(kv_step):
        return _slot(kv_step - cta_first, stages)

    def sync_schedule():
        if c.schedule_barrier:
            plgpu.barrier_arrive(schedule)
            plgpu.barrier_wait(schedule)

    def wait_next_key_tile(step):
        @pl.when(step + 1 < cta_end)
        def _():
            plgpu.barrier_wait(k_ready.at[slot_of(step + 1)])

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(_COMPUTE_REGISTERS, action="increase")
        qo_smem, lse_smem = qo_smem2.at[wg], lse_smem2.at[wg]
        q_block = COMPUTE_WGS * q_cta + wg
        first_row = q_block * bq
        first, split, end = warpgroup_range(forward_ranges, plan, q_block, prefix, kv_len, q_offset, spans,
                                            (cta_first, cta_end))
        rows = (batch, pl.ds(first_row, bq), head)
        plgpu.copy_gmem_to_smem(q_ref.at[rows], qo_smem, q_ready.at[wg])
        q_ids = None if q_seg_ref is None else _segment_ids(q_seg_ref, batch, first_row, bq, 0)
        plgpu.barrier_wait(q_ready.at[wg])

        def step(kv_step, carry, *, masked: bool):
            acc, m, l = carry
            slot = slot_of(kv_step)

            def scores(acc_ref):
                plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
                sync_schedule()  # let the other warpgroup's multiply go next
                return acc_ref[...]

            s2 = pl.run_scoped(scores, plgpu.ACC((bq, bk), jnp.float32)) * plan.qk_scale
            plgpu.barrier_arrive(k_free.at[slot])
            if masked:  # positions made here, so they hold no registers in unmasked loops
                kv_ids = None if kv_seg_ref is None else _segment_ids(kv_seg_ref, batch, kv_step * bk, bk, 1)
                s2 = hopper_tile.mask_scores(s2, _tile_visible(
                    plan, (bq, bk), 0, q_offset + first_row, kv_step * bk, prefix, kv_len, q_ids, kv_ids))
            m, alpha, p, l = hopper_tile.softmax_update(s2, m, l, may_be_empty=masked)
            acc = acc * hopper_tile.rows_to_tile(alpha, acc.shape)
            p16 = p.astype(plan.dtype)
            # Order from the demo: finishing the statistics before the barrier schedules best.
            acc, l, m, p16 = lax.optimization_barrier((acc, l, m, p16))
            if c.schedule_barrier:
                plgpu.barrier_arrive(schedule)
            plgpu.barrier_wait(v_ready.at[slot])
            if c.schedule_barrier:
                plgpu.barrier_wait(schedule)  # the tensor cores are ours

            def weighted_values(acc_ref):
                plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
                wait_next_key_tile(kv_step)  # overlaps the wgmma

            acc = pl.run_state(weighted_values)(plgpu.ACC.init(acc))
            plgpu.barrier_arrive(v_free.at[slot])
            return acc, m, l

        def drain(kv_step, _):
            # A tile only the other warpgroup needs: release the buffers, keep in step.
            slot = slot_of(kv_step)
            plgpu.barrier_arrive(k_free.at[slot])
            sync_schedule()
            plgpu.barrier_wait(v_ready.at[slot])
            plgpu.barrier_arrive(v_free.at[slot])
            sync_schedule()
            wait_next_key_tile(kv_step)
            return ()

        carry = (_zeros((bq, d), plgpu.Layout.WGMMA),
                 plgpu.layout_cast(jnp.full((bq,), -jnp.inf, jnp.float32),
                                   plgpu.Layout.WGMMA.reduce(1)),
                 _zeros((bq,), plgpu.Layout.WGMMA.reduce(1)))

        @pl.when(cta_end > cta_first)
        def _():
            plgpu.barrier_wait(k_ready.at[0])

        if c.schedule_barrier:
            pl.when(wg == 1)(sync_schedule)
        lax.fori_loop(cta_first, first, drain, ())
        carry = lax.fori_loop(first, split, functools.partial(step, masked=False), carry)
        carry = lax.fori_loop(split, end, functools.partial(step, masked=True), carry)
        lax.fori_loop(end, cta_end, drain, ())
        if c.schedule_barrier:
            pl.when(wg == 0)(sync_schedule)

        out, lse2 = hopper_tile.softmax_finish(*carry)
        qo_smem[...] = out.astype(plan.dtype)
        lse_smem[...] = lse2
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[rows], commit_group=False)
        plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[batch, head, pl.ds(first_row, bq)],
                                commit_group=False)
        plgpu.commit_smem_to_gmem_group()
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WGS)
    def _copies():
        plgpu.set_max_registers(_MEMORY_REGISTERS, action="decrease")
        kv_head = lax.div(head, jnp.int32(plan.group))

        @pl.loop(0, cta_end - cta_first)
        def _(i):
            slot = _slot(i, stages)
            tile = (batch, pl.ds((cta_first + i) * bk, bk), kv_head)

            @pl.when(i >= stages)
            def _():
                plgpu.barrier_wait(k_free.at[slot])
            plgpu.copy_gmem_to_smem(k_ref.at[tile], k_smem.at[slot], k_ready.at[slot])

            @pl.when(i >= stages)
            def _():
                plgpu.barrier_wait(v_free.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[tile], v_smem.at[slot], v_ready.at[slot])


def forward(q, k, v, kmask: KernelMask, plan: Plan):
    """(out [B, Tq, H, D], lse2 [B, H, Tq] float32) for unpadded q, k, v."""
    q_p = pad_axis(q, 1, plan.q_len_padded)
    k_p = pad_axis(k, 1, plan.kv_len_padded)
    v_p = pad_axis(v, 1, plan.kv_len_padded)
    out, lse2 = plgpu.kernel(
        functools.partial(_forward_kernel, plan=plan),
        out_type=[jax.ShapeDtypeStruct(q_p.shape, plan.dtype),
                  jax.ShapeDtypeStruct((plan.batch, plan.num_heads, plan.q_len_padded), jnp.float32)],
        scratch_types=_forward_scratch(plan),
        grid=(plan.num_heads, plan.num_q_ctas, plan.batch),
        grid_names=("heads", "q_seq", "batch"),
        num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        compiler_params=_COMPILER_PARAMS,
    )(q_p, k_p, v_p, scalars_operand(kmask), *_segment_operands(kmask, plan, "forward"))
    return out[:, :plan.q_len], lse2[:, :, :plan.q_len]


# -- backward: dk, dv (and dq with TMA reduce-add) -------------------------------------

def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, scalars_ref, *refs, plan: Plan):
    (q_seg_ref, kv_seg_ref, spans_ref), refs = _segment_refs(refs, plan)
    atomic = plan.config.dq_mode == "atomic"
    if atomic:
        (dq_acc_ref, dk_ref, dv_ref, k_smem2, v_smem2, q_smem, do_smem, lse_smem, delta_smem,
         ds_smem2, dq_smem2, kv_ready, q_ready, do_ready, lse_ready, delta_ready, free) = refs
    else:
        (dk_ref, dv_ref, k_smem2, v_smem2, q_smem, do_smem, lse_smem, delta_smem,
         kv_ready, q_ready, do_ready, lse_ready, delta_ready, free) = refs
    c = plan.config
    bq, bk, stages, d, group = c.block_q_bwd, c.block_kv_bwd, c.stages, plan.head_dim, plan.group
    batch, kv_head, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    kv_cta = lax.axis_index("kv_seq")  # early keys are seen by the most queries: first
    prefix, kv_len, q_offset = _read_scalars(scalars_ref, batch)
    spans = _span_reader(spans_ref, batch)
    cta_first, cta_end = cta_range(dkv_ranges, plan, kv_cta, prefix, kv_len, q_offset, spans)
    steps_per_head = cta_end - cta_first

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(_COMPUTE_REGISTERS, action="increase")
        k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]
        kv_block = COMPUTE_WGS * kv_cta + wg
        first_key = kv_block * bk
        keys = (batch, pl.ds(first_key, bk), kv_head)
        plgpu.copy_gmem_to_smem(k_ref.at[keys], k_smem, kv_ready.at[0, wg])
        plgpu.copy_gmem_to_smem(v_ref.at[keys], v_smem, kv_ready.at[1, wg])
        plgpu.barrier_wait(kv_ready.at[0, wg])
        plgpu.barrier_wait(kv_ready.at[1, wg])
        first, split, end = warpgroup_range(dkv_ranges, plan, kv_block, prefix, kv_len, q_offset, spans,
                                            (cta_first, cta_end))
        kv_ids = None if kv_seg_ref is None else _segment_ids(kv_seg_ref, batch, first_key, bk, 0)

        def step(q_block, carry, *, g, masked: bool):
            dk, dv = carry
            slot = _slot(g * steps_per_head + q_block - cta_first, stages)
            first_row = q_block * bq
            plgpu.barrier_wait(q_ready.at[slot])
            s2_t = _matmul(k_smem, q_smem.at[slot].transpose((1, 0)), (bk, bq)) * plan.qk_scale
            if masked:
                q_ids = None if q_seg_ref is None else _segment_ids(q_seg_ref, batch, first_row, bq, 1)
                s2_t = hopper_tile.mask_scores(s2_t, _tile_visible(
                    plan, (bk, bq), 1, q_offset + first_row, first_key, prefix, kv_len, q_ids, kv_ids))
            plgpu.barrier_wait(lse_ready.at[slot])
            lse2 = plgpu.load(lse_smem.at[slot], layout=plgpu.Layout.WGMMA.reduce(0))
            p_t = hopper_tile.probs_t(s2_t, lse2)
            plgpu.barrier_wait(do_ready.at[slot])

            def dv_and_dp(refs):
                dv_ref, dp_ref = refs
                plgpu.wgmma(dv_ref, p_t.astype(plan.dtype), do_smem.at[slot])
                plgpu.wgmma(dp_ref, v_smem, do_smem.at[slot].transpose((1, 0)))

            dv, dp_t = pl.run_state(dv_and_dp)(
                (plgpu.ACC.init(dv), plgpu.ACC.init(_zeros((bk, bq), plgpu.Layout.WGMMA))))
            plgpu.barrier_wait(delta_ready.at[slot])
            delta = plgpu.load(delta_smem.at[slot], layout=plgpu.Layout.WGMMA.reduce(0))
            ds_t = hopper_tile.dscores_t(p_t, dp_t, delta).astype(plan.dtype)
            dk = _matmul_add(dk, ds_t, q_smem.at[slot])
            if atomic:
                ds_smem, dq_smem = ds_smem2.at[wg], dq_smem2.at[wg]
                ds_smem[...] = ds_t
                plgpu.commit_smem()
                dq = _matmul(ds_smem.transpose((1, 0)), k_smem, (bq, d))
                plgpu.barrier_arrive(free.at[slot])
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # dq_smem is ours again
                dq_smem[...] = dq
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(
                    dq_smem, dq_acc_ref.at[batch, pl.ds(first_row, bq), kv_head * group + g],
                    reduction_op="add")
            else:
                plgpu.barrier_arrive(free.at[slot])
            return dk, dv

        def drain(q_block, _, *, g):
            slot = _slot(g * steps_per_head + q_block - cta_first, stages)
            for ready in (q_ready, lse_ready, do_ready, delta_ready):
                plgpu.barrier_wait(ready.at[slot])
            plgpu.barrier_arrive(free.at[slot])
            return ()

        def head_loop(g, carry):
            lax.fori_loop(cta_first, first, functools.partial(drain, g=g), ())
            carry = lax.fori_loop(first, split, functools.partial(step, g=g, masked=True), carry)
            carry = lax.fori_loop(split, end, functools.partial(step, g=g, masked=False), carry)
            lax.fori_loop(end, cta_end, functools.partial(drain, g=g), ())
            return carry

        dk, dv = lax.fori_loop(0, group, head_loop, (_zeros((bk, d), plgpu.Layout.WGMMA),
                                                     _zeros((bk, d), plgpu.Layout.WGMMA)))
        if atomic:
            plgpu.wait_smem_to_gmem(0)
        k_smem[...] = (dk * plan.scale).astype(plan.dtype)
        v_smem[...] = dv.astype(plan.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[keys], commit_group=False)
        plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[keys], commit_group=False)
        plgpu.commit_smem_to_gmem_group()
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WGS)
    def _copies():
        plgpu.set_max_registers(_MEMORY_REGISTERS, action="decrease")

        @pl.loop(0, group * steps_per_head)
        def _(i):
            slot = _slot(i, stages)
            head = kv_head * group + lax.div(i, steps_per_head)
            first_row = (cta_first + lax.rem(i, steps_per_head)) * bq
            rows = (batch, pl.ds(first_row, bq), head)
            stats = (batch, head, pl.ds(first_row, bq))

            @pl.when(i >= stages)
            def _():
                plgpu.barrier_wait(free.at[slot])
            plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem.at[slot], q_ready.at[slot])
            plgpu.copy_gmem_to_smem(lse_ref.at[stats], lse_smem.at[slot], lse_ready.at[slot])
            plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem.at[slot], do_ready.at[slot])
            plgpu.copy_gmem_to_smem(delta_ref.at[stats], delta_smem.at[slot], delta_ready.at[slot])


def _backward_dkv(q_p, k_p, v_p, do_p, lse2_p, delta_p, scalars, segments, plan: Plan):
    """(dk, dv, dq_accumulator or None); dq_accumulator is float32 and lacks the scale."""
    atomic = plan.config.dq_mode == "atomic"
    operands = [q_p, k_p, v_p, do_p, lse2_p, delta_p, scalars, *segments]
    dq_acc = None
    if atomic:
        dq_acc = jax.new_ref(
            jnp.zeros((plan.batch, plan.q_len_padded, plan.num_heads, plan.head_dim), jnp.float32))
        operands.append(dq_acc)
    dk, dv = plgpu.kernel(
        functools.partial(_dkv_kernel, plan=plan),
        out_type=[jax.ShapeDtypeStruct(k_p.shape, plan.dtype),
                  jax.ShapeDtypeStruct(v_p.shape, plan.dtype)],
        scratch_types=_dkv_scratch(plan),
        grid=(plan.num_kv_heads, plan.num_kv_ctas, plan.batch),
        grid_names=("heads", "kv_seq", "batch"),
        num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        compiler_params=_COMPILER_PARAMS,
    )(*operands)
    return dk, dv, (None if dq_acc is None else dq_acc[...])


# -- backward: dq (separate kernel) --------------------------------------------------

def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, scalars_ref, *refs, plan: Plan):
    (q_seg_ref, kv_seg_ref, spans_ref), refs = _segment_refs(refs, plan)
    (dq_ref, q_smem2, do_smem2, lse_smem2, delta_smem2, k_smem, v_smem, row_ready,
     k_ready, v_ready, free) = refs
    c = plan.config
    bq, bk, stages, d = c.block_q_dq, c.block_kv_dq, c.stages, plan.head_dim
    batch, head, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    q_cta = plan.num_q_ctas_dq - 1 - lax.axis_index("q_seq")
    prefix, kv_len, q_offset = _read_scalars(scalars_ref, batch)
    spans = _span_reader(spans_ref, batch)
    cta_first, cta_end = cta_range(dq_ranges, plan, q_cta, prefix, kv_len, q_offset, spans)

    def slot_of(kv_step):
        return _slot(kv_step - cta_first, stages)

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(_COMPUTE_REGISTERS, action="increase")
        q_smem, do_smem = q_smem2.at[wg], do_smem2.at[wg]
        lse_smem, delta_smem = lse_smem2.at[wg], delta_smem2.at[wg]
        q_block = COMPUTE_WGS * q_cta + wg
        first_row = q_block * bq
        rows = (batch, pl.ds(first_row, bq), head)
        stats = (batch, head, pl.ds(first_row, bq))
        plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem, row_ready.at[0, wg])
        plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem, row_ready.at[1, wg])
        plgpu.copy_gmem_to_smem(lse_ref.at[stats], lse_smem, row_ready.at[2, wg])
        plgpu.copy_gmem_to_smem(delta_ref.at[stats], delta_smem, row_ready.at[3, wg])
        for i in range(4):
            plgpu.barrier_wait(row_ready.at[i, wg])
        lse2 = plgpu.load(lse_smem, layout=plgpu.Layout.WGMMA.reduce(1))
        delta = plgpu.load(delta_smem, layout=plgpu.Layout.WGMMA.reduce(1))
        first, split, end = warpgroup_range(dq_ranges, plan, q_block, prefix, kv_len, q_offset, spans,
                                            (cta_first, cta_end))
        q_ids = None if q_seg_ref is None else _segment_ids(q_seg_ref, batch, first_row, bq, 0)

        def step(kv_step, dq, *, masked: bool):
            slot = slot_of(kv_step)
            plgpu.barrier_wait(k_ready.at[slot])
            s2 = _matmul(q_smem, k_smem.at[slot].transpose((1, 0)), (bq, bk)) * plan.qk_scale
            if masked:
                kv_ids = None if kv_seg_ref is None else _segment_ids(kv_seg_ref, batch, kv_step * bk, bk, 1)
                s2 = hopper_tile.mask_scores(s2, _tile_visible(
                    plan, (bq, bk), 0, q_offset + first_row, kv_step * bk, prefix, kv_len, q_ids, kv_ids))
            p = hopper_tile.probs(s2, lse2)
            plgpu.barrier_wait(v_ready.at[slot])
            dp = _matmul(do_smem, v_smem.at[slot].transpose((1, 0)), (bq, bk))
            ds = hopper_tile.dscores(p, dp, delta).astype(plan.dtype)
            dq = _matmul_add(dq, ds, k_smem.at[slot])
            plgpu.barrier_arrive(free.at[slot])
            return dq

        def drain(kv_step, _):
            slot = slot_of(kv_step)
            plgpu.barrier_wait(k_ready.at[slot])
            plgpu.barrier_wait(v_ready.at[slot])
            plgpu.barrier_arrive(free.at[slot])
            return ()

        dq = _zeros((bq, d), plgpu.Layout.WGMMA)
        lax.fori_loop(cta_first, first, drain, ())
        dq = lax.fori_loop(first, split, functools.partial(step, masked=False), dq)
        dq = lax.fori_loop(split, end, functools.partial(step, masked=True), dq)
        lax.fori_loop(end, cta_end, drain, ())
        q_smem[...] = (dq * plan.scale).astype(plan.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[rows])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WGS)
    def _copies():
        plgpu.set_max_registers(_MEMORY_REGISTERS, action="decrease")
        kv_head = lax.div(head, jnp.int32(plan.group))

        @pl.loop(0, cta_end - cta_first)
        def _(i):
            slot = _slot(i, stages)
            tile = (batch, pl.ds((cta_first + i) * bk, bk), kv_head)

            @pl.when(i >= stages)
            def _():
                plgpu.barrier_wait(free.at[slot])
            plgpu.copy_gmem_to_smem(k_ref.at[tile], k_smem.at[slot], k_ready.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[tile], v_smem.at[slot], v_ready.at[slot])


def _backward_dq(q_p, k_p, v_p, do_p, lse2_p, delta_p, scalars, segments, plan: Plan):
    return plgpu.kernel(
        functools.partial(_dq_kernel, plan=plan),
        out_type=jax.ShapeDtypeStruct(q_p.shape, plan.dtype),
        scratch_types=_dq_scratch(plan),
        grid=(plan.num_heads, plan.num_q_ctas_dq, plan.batch),
        grid_names=("heads", "q_seq", "batch"),
        num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        compiler_params=_COMPILER_PARAMS,
    )(q_p, k_p, v_p, do_p, lse2_p, delta_p, scalars, *segments)


def backward(q, k, v, kmask: KernelMask, lse2, delta, do, plan: Plan):
    """(dq, dk, dv) from the saved lse2 and delta = rowsum(out * d_out)."""
    q_p, do_p = pad_axis(q, 1, plan.q_len_padded), pad_axis(do, 1, plan.q_len_padded)
    k_p, v_p = pad_axis(k, 1, plan.kv_len_padded), pad_axis(v, 1, plan.kv_len_padded)
    # Padding query rows get lse +inf: p = 0, so they add nothing to any gradient.
    lse2_p = jnp.pad(lse2, ((0, 0), (0, 0), (0, plan.q_len_padded - plan.q_len)),
                     constant_values=jnp.inf)
    delta_p = pad_axis(delta, 2, plan.q_len_padded)
    scalars = scalars_operand(kmask)
    dk, dv, dq_acc = _backward_dkv(q_p, k_p, v_p, do_p, lse2_p, delta_p, scalars,
                                   _segment_operands(kmask, plan, "dkv"), plan)
    if dq_acc is None:
        dq = _backward_dq(q_p, k_p, v_p, do_p, lse2_p, delta_p, scalars,
                          _segment_operands(kmask, plan, "dq"), plan)
    else:
        dq = (dq_acc * plan.scale).astype(plan.dtype)
    return dq[:, :plan.q_len], dk[:, :plan.kv_len], dv[:, :plan.kv_len]


def flash_attention_hopper(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    *,
    scale: Optional[float] = None,
    config: HopperConfig = HopperConfig(),
) -> jax.Array:
    """Masked flash attention on Hopper GPUs (Pallas Mosaic GPU); differentiable.

    q [B, Tq, H, D], k and v [B, Tk, Hkv, D]; D in (64, 128); bf16 or fp16 (float32
    accumulation); H a multiple of Hkv. Any `AttentionMask` but block-causal ones
    (segment ids included); lengths need not be multiples of the tiles, and Tq = 0 or
    Tk = 0 gives an empty or zero output. Needs an sm_90 GPU to run; lowering can be
    checked anywhere (see tests/test_kernels_hopper.py).
    """
    check_supported(q, k, v, mask, why_not_supported, "Hopper flash attention")
    empty = empty_attention(q, k)
    if empty is not None:
        return empty
    plan = make_plan(q, k, mask, scale, config)
    kmask = kernel_mask(mask, plan.batch, plan.q_len, plan.kv_len, plan.q_len_padded,
                        plan.kv_len_padded)
    return run_flash(q, k, v, kmask, forward=forward, backward=backward, plan=plan)
