"""Per-tile flash-attention math shared by the GPU (Triton) and TPU (Mosaic) kernels.

Scores are kept in base 2: ``s2 = (q . k) * scale * log2(e)``, so the kernels use
`exp2` and the saved log-sum-exp is ``lse2 = log2(sum_j exp2(s2_j))``. Masked scores are
-inf. A row that has seen no key yet keeps running max -inf; its exponentials are taken
against 0 instead, which makes every masked entry exactly 0 (never NaN). A row that sees
no key at all ends with l == 0: its output is 0 and its lse is +inf, so the backward pass
recomputes p = exp2(-inf - inf) = 0 for it and its gradients are 0.

Row statistics are column vectors [rows, 1]; inputs stay in their dtype (bf16 or f32)
for the matmuls, which accumulate in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

LOG2E = math.log2(math.e)

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b


def matmul_precision(dtype) -> lax.Precision:
    """f32 inputs get full-precision matmuls (Triton would otherwise use TF32)."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    return lax.dot_general(a, b, _NT, precision=matmul_precision(a.dtype),
                           preferred_element_type=jnp.float32)


def dot_nn(a: jax.Array, b: jax.Array) -> jax.Array:
    return lax.dot_general(a, b, _NN, precision=matmul_precision(a.dtype),
                           preferred_element_type=jnp.float32)


def apply_mask(s: jax.Array, visible) -> jax.Array:
    return s if visible is None else jnp.where(visible, s, -jnp.inf)


def softmax_step(s2, v, m_prev, l_prev, acc_prev, *, may_be_empty: bool):
    """One online-softmax update with a [bq, bk] tile of base-2 scores.

    `may_be_empty`: some row of the tile may be fully masked (only in masked tiles).
    Returns the new (m, l, acc).
    """
    m_new = jnp.maximum(m_prev, jnp.max(s2, axis=1, keepdims=True))
    m_ref = jnp.where(m_new == -jnp.inf, 0.0, m_new) if may_be_empty else m_new
    alpha = jnp.exp2(m_prev - m_ref)
    p = jnp.exp2(s2 - m_ref)
    l_new = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
    acc_new = alpha * acc_prev + dot_nn(p.astype(v.dtype), v)
    return m_new, l_new, acc_new


def softmax_finish(m, l, acc):
    """(out, lse2) from the running statistics; rows that saw no key give 0 and +inf."""
    empty = l == 0.0
    out = acc * (1.0 / jnp.where(empty, 1.0, l))
    lse2 = jnp.where(empty, jnp.inf, m + jnp.log2(jnp.where(empty, 1.0, l)))
    return out, lse2


def dq_step(s2, k, v, do, lse2_col, delta_col):
    """dq contribution (before the final `scale`) of one [bq, bk] tile; lse/delta are [bq, 1]."""
    p = jnp.exp2(s2 - lse2_col)
    ds = p * (dot_nt(do, v) - delta_col)
    return dot_nn(ds.astype(k.dtype), k)


def dkv_step(s2_t, q, do, v, lse2_row, delta_row):
    """(dk before `scale`, dv) contributions of one transposed [bk, bq] tile.

    Working on s^T = k q^T keeps every matmul transpose-free and lets the per-query
    statistics broadcast as rows [1, bq].
    """
    p_t = jnp.exp2(s2_t - lse2_row)
    dv = dot_nn(p_t.astype(do.dtype), do)
    ds_t = p_t * (dot_nt(v, do) - delta_row)
    dk = dot_nn(ds_t.astype(q.dtype), q)
    return dk, dv
