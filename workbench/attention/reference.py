"""Dense masked softmax attention in XLA: the reference every other impl is checked against.

Layout everywhere: q [B, Tq, H, D], k and v [B, Tk, Hkv, D] with H a multiple of Hkv
(grouped-query attention). A query row that sees no key returns zeros, and its
gradients are zero, never NaN.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from workbench.attention.mask import AttentionMask

_NEG = -1e30  # finite, so a fully masked row gives a uniform (then zeroed) softmax, not NaN


def check_shapes(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    """Raise a ValueError naming the shapes when q, k, v do not fit together."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention takes q, k, v of rank 4 [batch, seq, heads, head_dim]; got shapes "
            f"{q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {k.shape} and {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {q.shape} and k {k.shape} must agree on batch (dim 0) and head_dim (dim 3)"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(
            f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]}) "
            f"for grouped-query attention"
        )


def _masked_scores(q, k, mask: AttentionMask, scale: Optional[float], precision):
    """Scaled scores [B, Hkv, G, Tq, Tk] in float32, masked entries set to _NEG, and the mask."""
    check_shapes(q, k, k)
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    q32 = q.astype(jnp.float32).reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q32, k.astype(jnp.float32), precision=precision) * scale
    allowed = mask.dense(batch, q_len, kv_len)[:, None, None, :, :]  # [B,1,1,Tq,Tk]
    return jnp.where(allowed, scores, _NEG), allowed


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    *,
    scale: Optional[float] = None,
    precision=jax.lax.Precision.HIGHEST,
) -> jax.Array:
    """softmax(q k^T * scale + mask) v, computed in float32, returned in q's dtype."""
    check_shapes(q, k, v)
    scores, allowed = _masked_scores(q, k, mask, scale, precision)
    probs = jnp.where(allowed, jax.nn.softmax(scores, axis=-1), 0.0)  # fully masked rows -> all-zero weights
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v.astype(jnp.float32), precision=precision)
    return out.reshape(q.shape).astype(q.dtype)
