"""Both Pallas flash-attention kernels against the dense float32 reference, on CPU.

The kernels run in Pallas interpret mode with small, unequal tiles so that short
sequences span several tiles in every pass. Forward output and all three gradients are
compared with a norm-relative error. Compilation dominates the cost, so every static
configuration (kernel, shapes, dtype, causal, segmented) is jitted once and hypothesis
varies the data: inputs, prefix lengths, kv lengths, query offsets, segment layouts
(packed sequences with sorted ids, and runs with arbitrary, non-monotone ids).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.attention.dispatch import attention, supporting_impls
from workbench.attention.mask import AttentionMask
from workbench.attention.reference import xla_attention
from workbench.attention.kernel_adapters import IMPLS
from workbench.kernels.flash_gpu import GpuBlockSizes, flash_attention_gpu
from workbench.kernels.flash_tpu import TpuBlockSizes, flash_attention_tpu

KERNELS = {
    "gpu": functools.partial(
        flash_attention_gpu, interpret=True,
        block_sizes=GpuBlockSizes(block_q=32, block_k=16, block_q_dkv=16, block_k_dkv=32,
                                  block_q_dq=32, block_k_dq=16)),
    # The generic interpreter runs the same kernel bodies and index maps ~50x faster than
    # TPU interpret mode; test_dispatch_runs_interpret_impls covers the latter.
    "tpu": functools.partial(
        flash_attention_tpu, interpret=True, simulate_tpu_memory=False,
        block_sizes=TpuBlockSizes(block_q=32, block_k=16, block_q_dkv=16, block_k_dkv=32,
                                  block_q_dq=32, block_k_dq=16)),
}
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    head_dim: int


SHAPES = (
    Shape(2, 40, 40, 2, 2, 64),  # lengths not a multiple of any tile
    Shape(1, 64, 64, 4, 2, 64),  # grouped-query attention, tile-aligned
    Shape(2, 24, 56, 2, 1, 64),  # multi-query, Tq != Tk
    Shape(1, 48, 33, 2, 2, 128),  # head_dim 128
)


def _rel_err(x, ref) -> float:
    """||x - ref|| / ||ref||, with ||ref|| floored at the norm of an all-0.1 array.

    Inputs are unit normal, so outputs and gradients are ~0.1-1 per element; the floor keeps
    gradients that are zero analytically (a query that sees a single key has dq = 0) from
    dividing rounding noise by ~0.
    """
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 0.1 * np.sqrt(ref.size)))


# LLVM optimizations off: the interpreted kernels build ~3x faster and run as fast at
# these sizes; the numerics are XLA's either way.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile(_FAST_COMPILE)


_EXECUTABLES: dict[tuple, object] = {}


def _kernel_and_reference(kernel: str, shape: Shape, dtype, causal: bool, segmented: bool, *args):
    """Kernel and reference (output and the three gradients), compiled once per static config."""

    def run(q, k, v, d_out, prefix, kv_lengths, q_offset, q_seg, kv_seg):
        mask = AttentionMask(causal=causal, prefix_len=prefix, kv_lengths=kv_lengths,
                             q_offset=q_offset, q_segment_ids=q_seg if segmented else None,
                             kv_segment_ids=kv_seg if segmented else None)
        outs = []
        for fn in (KERNELS[kernel], xla_attention):
            out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
            outs.append((out, *vjp(d_out.astype(out.dtype))))
        return outs

    key = (kernel, shape, jnp.dtype(dtype).name, causal, segmented)
    if key not in _EXECUTABLES:
        _EXECUTABLES[key] = _compile(run, *args)
    return _EXECUTABLES[key](*args)


def _inputs(shape: Shape, dtype, seed: int):
    keys = jax.random.split(jax.random.key(seed), 4)
    b, tq, tk = shape.batch, shape.q_len, shape.kv_len
    q = jax.random.normal(keys[0], (b, tq, shape.heads, shape.head_dim), dtype)
    k = jax.random.normal(keys[1], (b, tk, shape.kv_heads, shape.head_dim), dtype)
    v = jax.random.normal(keys[2], (b, tk, shape.kv_heads, shape.head_dim), dtype)
    d_out = jax.random.normal(keys[3], q.shape, jnp.float32)
    return q, k, v, d_out


def _segments(boundaries, length: int) -> np.ndarray:
    """Packed-sequence ids: 0 up to the first boundary, 1 up to the next, ..."""
    return np.searchsorted(np.sort(np.asarray(boundaries, np.int32)), np.arange(length),
                           side="right").astype(np.int32)


def _check(kernel, shape, dtype, causal, segmented, seed, prefix, kv_lengths, q_offset,
           q_seg, kv_seg):
    q, k, v, d_out = _inputs(shape, dtype, seed)
    got, want = _kernel_and_reference(
        kernel, shape, dtype, causal, segmented, q, k, v, d_out, jnp.asarray(prefix, jnp.int32),
        jnp.asarray(kv_lengths, jnp.int32), jnp.asarray(q_offset, jnp.int32),
        jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32))
    for name, x, ref in zip(("out", "dq", "dk", "dv"), got, want):
        assert x.dtype == ref.dtype and x.shape == ref.shape, name
        assert bool(jnp.isfinite(x).all()), f"{kernel}: non-finite {name}"
        err = _rel_err(x, ref)
        assert err <= TOLERANCE[dtype], f"{kernel}: {name} relative error {err:.2e}"
    return got


@st.composite
def _segment_ids(draw, length: int) -> np.ndarray:
    """Packed sequences (ids 0, 1, 2, ... in order) or runs with arbitrary repeating ids."""
    packed = _segments(draw(st.lists(st.integers(1, length - 1), max_size=3)), length)
    if draw(st.booleans()):
        return packed
    run_ids = draw(st.lists(st.integers(0, 3), min_size=4, max_size=4))
    return np.asarray(run_ids, np.int32)[packed]


@st.composite
def _cases(draw, dtype, shapes=SHAPES, causal=st.booleans(), segmented=st.booleans()):
    shape = draw(st.sampled_from(shapes))
    b, tq, tk = shape.batch, shape.q_len, shape.kv_len
    per_example = lambda strategy: draw(st.lists(strategy, min_size=b, max_size=b))  # noqa: E731
    return dict(
        kernel=draw(st.sampled_from(sorted(KERNELS))),
        shape=shape,
        dtype=dtype,
        causal=draw(causal),
        segmented=draw(segmented),
        seed=draw(st.integers(0, 2**31 - 1)),
        prefix=per_example(st.sampled_from([0, tq, tk]) | st.integers(0, max(tq, tk))),
        kv_lengths=per_example(st.sampled_from([0, tk]) | st.integers(0, tk)),
        q_offset=per_example(st.just(0) | st.integers(-16, 16)),
        q_seg=np.stack([draw(_segment_ids(tq)) for _ in range(b)]),
        kv_seg=np.stack([draw(_segment_ids(tk)) for _ in range(b)]),
    )


@given(_cases(jnp.float32))
def test_matches_reference_float32(case):
    _check(**case)


@given(_cases(jnp.bfloat16, shapes=(Shape(2, 48, 40, 4, 2, 128),), causal=st.just(True),
              segmented=st.just(True)))
def test_matches_reference_bfloat16(case):
    """One static config per kernel (GQA, D=128, Tq != Tk, segments): only the data vary."""
    _check(**case)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("causal", [True, False])
def test_edge_cases(kernel, causal):
    """Prefix 0, prefix == length, a fully padded example, a ragged kv length."""
    shape = Shape(4, 40, 40, 2, 2, 64)
    no_segments = np.zeros((4, 40), np.int32)
    out, dq, dk, dv = _check(kernel, shape, jnp.float32, causal, False, seed=0,
                             prefix=[0, 40, 40, 7], kv_lengths=[40, 40, 0, 27],
                             q_offset=[0, 0, 0, 0], q_seg=no_segments, kv_seg=no_segments)
    # Example 2 has no visible key at all: zeros, and zero gradients, never NaN.
    for x in (out, dq, dk, dv):
        assert not bool(jnp.any(x[2])), "a row that sees no key must give exact zeros"
    assert not bool(jnp.any(dk[3, 27:])) and not bool(jnp.any(dv[3, 27:]))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("causal", [True, False])
def test_negative_query_offset_with_a_prefix(kernel, causal):
    """Queries at negative positions (a valid `q_offset`) see the prefix, as every query
    does: the dk/dv pass must visit their tiles for the prefix keys. Its query-tile range
    started at position 0 before, which gave wrong dk/dv (forward and dq were right)."""
    shape = Shape(4, 40, 40, 2, 2, 64)  # test_edge_cases' static config: no new compile
    no_segments = np.zeros((4, 40), np.int32)
    _check(kernel, shape, jnp.float32, causal, False, seed=6, prefix=[10, 30, 0, 40],
           kv_lengths=[40, 33, 40, 40], q_offset=[-25, -7, -5, -40], q_seg=no_segments, kv_seg=no_segments)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_packed_segments_with_grouped_query_attention(kernel):
    shape = Shape(2, 64, 64, 4, 2, 64)
    seg = np.stack([_segments([10, 37], 64), _segments([50], 64)])
    _check(kernel, shape, jnp.float32, True, True, seed=1, prefix=[12, 0], kv_lengths=[64, 55],
           q_offset=[0, 0], q_seg=seg, kv_seg=seg)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_hidden_tiles_are_never_read(kernel):
    """NaN keys/values in tiles past kv_length cannot leak: those tiles are skipped.

    A kernel that computed hidden tiles and masked them afterwards would produce
    0 * NaN = NaN in the output or the gradients.
    """
    shape = Shape(1, 40, 64, 2, 2, 64)
    q, k, v, d_out = _inputs(shape, jnp.float32, seed=2)
    k_nan = k.at[:, 32:].set(jnp.nan)  # kv tiles (16 and 32 wide) from 32 on are hidden
    v_nan = v.at[:, 32:].set(jnp.nan)
    mask = AttentionMask.prefix_lm(jnp.array([5]), kv_lengths=jnp.array([32]))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, mask, scale=0.3) * d_out)  # a non-default scale, too

    grads = lambda fn, *args: _compile(  # noqa: E731
        jax.value_and_grad(functools.partial(loss, fn), (0, 1, 2)), *args)(*args)
    got = grads(KERNELS[kernel], q, k_nan, v_nan)
    want = grads(xla_attention, q, k, v)
    assert bool(jnp.isfinite(got[0]))
    assert _rel_err(got[0], want[0]) <= 1e-5
    for g, ref in zip(got[1], want[1]):
        assert bool(jnp.isfinite(g).all())
        assert _rel_err(g, ref) <= 1e-5


@pytest.mark.parametrize("kernel", [*sorted(KERNELS), "tpu_simulated_memory"])
def test_tiles_pairing_other_segments_are_never_read(kernel):
    """NaN keys/values in a segment no query belongs to cannot leak: with segment ids, the
    kernels skip tiles whose queries and keys share no segment, forward and backward.

    Keys 32..63 (segment 1) fill whole kv tiles in every pass (16 and 32 wide) and lie
    inside the causal range of every query tile, so only the segment spans skip them; a
    kernel that computed those tiles and masked them would leak 0 * NaN = NaN. The TPU
    kernel also runs in TPU interpret mode here (scalar-prefetched spans in simulated SMEM).
    """
    shape = Shape(1, 64, 96, 2, 1, 64)  # grouped-query: the dk/dv pass walks both heads
    q, k, v, d_out = _inputs(shape, jnp.float32, seed=5)
    k_nan = k.at[:, 32:64].set(jnp.nan)
    v_nan = v.at[:, 32:64].set(jnp.nan)
    q_seg = jnp.asarray(np.repeat([0, 2], 32)[None], jnp.int32)  # query tiles: one segment each
    kv_seg = jnp.asarray(np.repeat([0, 1, 2], 32)[None], jnp.int32)
    # Queries at positions 32..95: the causal range of each q tile covers keys 32..63.
    mask = AttentionMask.causal_mask(q_offset=jnp.array([32]), kv_lengths=jnp.array([90]),
                                     q_segment_ids=q_seg, kv_segment_ids=kv_seg)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, mask) * d_out)

    grads = lambda fn, *args: _compile(  # noqa: E731
        jax.value_and_grad(functools.partial(loss, fn), (0, 1, 2)), *args)(*args)
    fn = (functools.partial(KERNELS["tpu"], simulate_tpu_memory=True)
          if kernel == "tpu_simulated_memory" else KERNELS[kernel])
    got = grads(fn, q, k_nan, v_nan)
    want = grads(xla_attention, q, k, v)
    assert bool(jnp.isfinite(got[0]))
    assert _rel_err(got[0], want[0]) <= 1e-5
    for name, g, ref in zip(("dq", "dk", "dv"), got[1], want[1]):
        assert bool(jnp.isfinite(g).all()), f"{kernel}: NaN leaked into {name}"
        assert _rel_err(g, ref) <= 1e-5, name
    # The hidden keys get exactly zero gradient (their tiles were never visited).
    assert not bool(jnp.any(got[1][1][:, 32:64])) and not bool(jnp.any(got[1][2][:, 32:64]))


@pytest.mark.parametrize("impl", ["pallas_gpu_interpret", "pallas_tpu_interpret"])
def test_dispatch_runs_interpret_impls(impl):
    """The registered adapters, called through `attention` (TPU interpret mode for tpu)."""
    shape = Shape(1, 40, 40, 2, 1, 64)
    q, k, v, d_out = _inputs(shape, jnp.float32, seed=3)
    mask = AttentionMask.prefix_diffusion(jnp.array([9]))
    assert impl in supporting_impls(q, k, v, mask, "cpu")

    def loss(impl, q, k, v):
        return jnp.sum(attention(q, k, v, mask, impl=impl) * d_out)

    grads = lambda name: _compile(  # noqa: E731
        jax.value_and_grad(functools.partial(loss, name), (0, 1, 2)), q, k, v)(q, k, v)
    got, want = grads(impl), grads("xla")
    for x, ref in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert _rel_err(x, ref) <= 1e-5


def test_adapters_say_why_not():
    by_name = {impl.name: impl for impl in IMPLS}
    assert set(by_name) == {"pallas_gpu", "pallas_tpu", "pallas_gpu_interpret", "pallas_tpu_interpret",
                            "pallas_mosaic_gpu"}
    mask = AttentionMask.causal_mask()
    q = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
    assert by_name["pallas_gpu"].why_not(q, q, q, mask, "gpu") is None
    assert by_name["pallas_tpu"].why_not(q, q, q, mask, "tpu") is None
    assert "gpu" in by_name["pallas_gpu"].why_not(q, q, q, mask, "cpu")
    assert "cpu" in by_name["pallas_tpu_interpret"].why_not(q, q, q, mask, "tpu")
    odd_head_dim = jnp.zeros((1, 8, 2, 96), jnp.bfloat16)
    assert "head_dim" in by_name["pallas_gpu"].why_not(odd_head_dim, odd_head_dim, odd_head_dim, mask, "gpu")
    half = q.astype(jnp.float16)
    assert "dtype" in by_name["pallas_tpu"].why_not(half, half, half, mask, "tpu")
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention_gpu(odd_head_dim, odd_head_dim, odd_head_dim, mask, interpret=True)


def test_block_sizes_are_validated():
    with pytest.raises(ValueError, match="power of two"):
        GpuBlockSizes(block_q=48)
    q = jnp.zeros((1, 8, 2, 64), jnp.float32)
    with pytest.raises(ValueError, match="multiple of 128"):
        flash_attention_tpu(q, q, q, AttentionMask.causal_mask(), block_sizes=TpuBlockSizes(block_q=64))


def test_tpu_kernel_with_lane_width_tiles():
    """Real-TPU tiles (128) take the lane-tiled segment-id path; check it numerically too."""
    shape = Shape(1, 200, 200, 2, 1, 64)
    q, k, v, d_out = _inputs(shape, jnp.float32, seed=4)
    seg = jnp.asarray(_segments([70, 150], 200))[None]
    mask = AttentionMask.prefix_lm(jnp.array([30]), kv_lengths=jnp.array([190]),
                                   q_segment_ids=seg, kv_segment_ids=seg)
    kernel = functools.partial(flash_attention_tpu, interpret=True, simulate_tpu_memory=False)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, mask) * d_out)

    grads = lambda fn: _compile(  # noqa: E731
        jax.value_and_grad(functools.partial(loss, fn), (0, 1, 2)), q, k, v)(q, k, v)
    for x, ref in zip(jax.tree.leaves(grads(kernel)), jax.tree.leaves(grads(xla_attention))):
        assert _rel_err(x, ref) <= 1e-5
