"""Block-causal masks and the edges of the mask domain through both Pallas kernels.

Interpret mode on CPU against the dense float32 reference, forward and all three
gradients, with the harness of tests/test_kernels.py (small unequal tiles, so a short
sequence spans several tiles in every pass). Block sizes are static (they shape the tile
schedule), so each (kernel, block size) compiles once and hypothesis varies the data:
prefix lengths, query offsets of either sign and key padding, which move the block
boundaries across the tiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import KERNELS, Shape, _compile, _inputs, _rel_err, _segments

from workbench.attention.mask import AttentionMask
from workbench.attention.reference import xla_attention

SHAPE = Shape(2, 40, 56, 2, 1, 64)  # Tq != Tk, multi-query, lengths not multiples of the tiles (16, 32)
# Divides neither the tiles nor the lengths. Other block sizes (1, tile-sized, longer than
# the sequence) are checked tile by tile in tests/test_kernels_block_mask.py, where they
# cost no compile; each one here costs a kernel compile (~10 s on a shared CPU).
BLOCK_SIZE = 12
_EXECUTABLES: dict[tuple, object] = {}


def _grads(kernel: str, block_size, shape: Shape, segmented: bool, *args):
    """(out, dq, dk, dv) of the kernel and of the reference, compiled once per static config."""

    def run(q, k, v, d_out, prefix, kv_lengths, q_offset, seg):
        mask = AttentionMask(causal=block_size is None, block_size=block_size, prefix_len=prefix,
                             kv_lengths=kv_lengths, q_offset=q_offset,
                             q_segment_ids=seg[:, :shape.q_len] if segmented else None,
                             kv_segment_ids=seg if segmented else None)
        outs = []
        for fn in (KERNELS[kernel], xla_attention):
            out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
            outs.append((out, *vjp(d_out)))
        return outs

    key = (kernel, block_size, shape, segmented)
    if key not in _EXECUTABLES:
        _EXECUTABLES[key] = _compile(run, *args)
    return _EXECUTABLES[key](*args)


def _check(kernel, block_size, prefix, kv_lengths, q_offset, *, shape=SHAPE, seed=0, seg=None):
    q, k, v, d_out = _inputs(shape, jnp.float32, seed)
    ids = np.zeros((shape.batch, shape.kv_len), np.int32) if seg is None else seg
    as_int = functools.partial(jnp.asarray, dtype=jnp.int32)
    got, want = _grads(kernel, block_size, shape, seg is not None, q, k, v, d_out, as_int(prefix),
                       as_int(kv_lengths), as_int(q_offset), as_int(ids))
    for name, x, ref in zip(("out", "dq", "dk", "dv"), got, want):
        assert bool(jnp.isfinite(x).all()), f"{kernel}: non-finite {name}"
        err = _rel_err(x, ref)
        assert err <= 1e-5, f"{kernel} block_size={block_size}: {name} relative error {err:.2e}"
    return got


@settings(max_examples=10)
@given(kernel=st.sampled_from(sorted(KERNELS)), data=st.data())
def test_block_causal_matches_reference(kernel, data):
    per_example = lambda strategy: data.draw(st.lists(strategy, min_size=2, max_size=2))  # noqa: E731
    _check(kernel, BLOCK_SIZE,
           prefix=per_example(st.sampled_from([0, SHAPE.kv_len]) | st.integers(0, 60)),
           kv_lengths=per_example(st.sampled_from([SHAPE.kv_len]) | st.integers(0, SHAPE.kv_len)),
           q_offset=per_example(st.sampled_from([0, SHAPE.kv_len - SHAPE.q_len]) | st.integers(-20, 30)),
           seed=data.draw(st.integers(0, 2**31 - 1)))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_block_causal_with_packed_segments(kernel):
    seg = np.stack([_segments([17, 40], SHAPE.kv_len), _segments([5], SHAPE.kv_len)])
    _check(kernel, BLOCK_SIZE, prefix=[9, 0], kv_lengths=[56, 50], q_offset=[0, 16], seg=seg)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_negative_query_offset_with_a_prefix_block_causal(kernel):
    """Queries at negative positions see the prefix (every query does); see also
    tests/test_kernels.py::test_negative_query_offset_with_a_prefix."""
    _check(kernel, BLOCK_SIZE, prefix=[10, 30], kv_lengths=[56, 44], q_offset=[-25, -7])


@pytest.mark.parametrize("q_len,kv_len", [(0, 40), (40, 0)])
def test_no_queries_or_no_keys(q_len, kv_len):
    """Tq = 0 gives an empty output, Tk = 0 zeros; gradients are zero, as in the reference.
    (The kernels' grids need a tile of each, so this case is answered before them.)"""
    shape = Shape(2, q_len, kv_len, 2, 1, 64)
    q, k, v, d_out = _inputs(shape, jnp.float32, seed=4)
    mask = AttentionMask.block_causal(BLOCK_SIZE, prefix_len=jnp.array([3, 0]), kv_lengths=jnp.array([kv_len, 0]))

    def out_and_grads(fn):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v, mask) * d_out)  # noqa: E731
        return jax.jit(lambda q, k, v: (fn(q, k, v, mask), jax.grad(loss, (0, 1, 2))(q, k, v)))(q, k, v)

    want_out, want_grads = out_and_grads(xla_attention)
    for kernel in sorted(KERNELS):
        out, grads = out_and_grads(KERNELS[kernel])
        assert out.shape == q.shape and out.dtype == q.dtype
        np.testing.assert_array_equal(out, want_out)
        assert not bool(jnp.any(out))
        for g, ref in zip(grads, want_grads):
            np.testing.assert_array_equal(g, ref)
            assert not bool(jnp.any(g))


def test_block_size_one_is_causal_after_the_prefix():
    """Blocks of one token: query i sees keys j <= i after the prefix, as prefix-LM does
    except that prefix queries see only the prefix (a check on the rule, not a kernel)."""
    prefix = jnp.array([3])
    block = AttentionMask.block_causal(1, prefix_len=prefix).dense(1, 8, 8)[0]
    prefix_lm = AttentionMask.prefix_lm(prefix).dense(1, 8, 8)[0]
    prefix_diffusion = AttentionMask.prefix_diffusion(prefix).dense(1, 8, 8)[0]
    np.testing.assert_array_equal(block[3:], prefix_lm[3:])
    np.testing.assert_array_equal(block[:3], prefix_diffusion[:3])
