"""Per-tile math of the Hopper (Mosaic GPU) attention kernels, as plain JAX functions.

The Mosaic GPU kernels in `hopper.py` call these on register tiles (Mosaic
`FragmentedArray`s behind jax.Array tracers); the CPU tests call them on ordinary
arrays and compare against the float32 reference. Only operations that the Mosaic GPU
lowering supports for WGMMA-layout tiles appear here: elementwise ops, `where`,
row/column max and sum, `lax.broadcast_in_dim`, `exp2`, `log2`.

Conventions (as in `tile_math.py`): scores in base 2, ``s2 = (q . k) * scale * log2(e)``;
masked scores are -inf; a row that saw no key ends with l == 0, output 0 and
lse2 = +inf, so the backward pass recomputes p = 0 for it. Unlike `tile_math.py`, row
statistics are 1-D vectors ([rows]), the form a WGMMA accumulator reduces to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from workbench.kernels import block_mask


def rows_to_tile(x_rows: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """[rows] -> [rows, cols], each row constant."""
    return lax.broadcast_in_dim(x_rows, shape, [0])


def cols_to_tile(x_cols: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """[cols] -> [rows, cols], each column constant."""
    return lax.broadcast_in_dim(x_cols, shape, [1])


def visible(q_pos, k_pos, prefix, kv_len, causal: bool, q_seg=None, kv_seg=None):
    """Boolean tile of visible (query, key) pairs; positions are absolute, same shape."""
    mask = block_mask.element_mask(q_pos, k_pos, prefix, kv_len, causal)
    if q_seg is not None:
        mask = mask & (q_seg == kv_seg)
    return mask


def mask_scores(s2: jax.Array, mask) -> jax.Array:
    return jnp.where(mask, s2, -jnp.inf)


def softmax_update(s2: jax.Array, m_prev: jax.Array, l_prev: jax.Array, *, may_be_empty: bool):
    """One online-softmax step on a [rows, keys] tile of base-2 scores.

    Returns (m_new, alpha, p, l_new): the caller rescales its accumulator by alpha and
    adds p @ v. `may_be_empty`: some row may have seen only masked keys so far (masked
    tiles only); its exponentials are then taken against 0, so they are 0, never NaN.
    """
    m_new = jnp.maximum(m_prev, s2.max(axis=1))
    m_ref = jnp.where(m_new == -jnp.inf, 0.0, m_new) if may_be_empty else m_new
    alpha = jnp.exp2(m_prev - m_ref)
    p = jnp.exp2(s2 - rows_to_tile(m_ref, s2.shape))
    l_new = l_prev * alpha + p.sum(axis=1)
    return m_new, alpha, p, l_new


def softmax_finish(acc: jax.Array, m: jax.Array, l: jax.Array):
    """(out, lse2) from the running statistics; rows that saw no key give 0 and +inf."""
    empty = l == 0.0
    safe_l = jnp.where(empty, 1.0, l)
    out = acc * rows_to_tile(1.0 / safe_l, acc.shape)
    lse2 = jnp.where(empty, jnp.inf, m + jnp.log2(safe_l))
    return out, lse2


def probs_t(s2_t: jax.Array, lse2_cols: jax.Array) -> jax.Array:
    """Transposed probabilities p^T [keys, queries] from s^T and the saved lse2 [queries]."""
    return jnp.exp2(s2_t - cols_to_tile(lse2_cols, s2_t.shape))


def dscores_t(p_t: jax.Array, dp_t: jax.Array, delta_cols: jax.Array) -> jax.Array:
    """dS^T = P^T * (dP^T - delta) for a [keys, queries] tile."""
    return p_t * (dp_t - cols_to_tile(delta_cols, p_t.shape))


def probs(s2: jax.Array, lse2_rows: jax.Array) -> jax.Array:
    """Probabilities p [queries, keys] from s and the saved lse2 [queries]."""
    return jnp.exp2(s2 - rows_to_tile(lse2_rows, s2.shape))


def dscores(p: jax.Array, dp: jax.Array, delta_rows: jax.Array) -> jax.Array:
    """dS = P * (dP - delta) for a [queries, keys] tile."""
    return p * (dp - rows_to_tile(delta_rows, p.shape))
