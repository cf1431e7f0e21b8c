"""`int8_matmul`: x @ (w * scale)^T with int8 weights kept packed (the C++ kernel in int8_matmul.cc)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.kernels.cpu.library import call_on_rows

TARGET = "workbench_int8_matmul"


def int8_matmul(x_MxK: jax.Array, w_NxK: jax.Array, scale_N: jax.Array) -> jax.Array:
    """y[..., N] = x[..., K] @ (w[N, K] * scale[N, None]).T in float32.

    w: int8, output-major (a tied embedding table [V, D] as it is); scale: float32, one per output
    channel. x may have any leading dimensions (rows); the kernel streams the weights once per 16
    rows, so decoding steps and few-position verify passes read each weight once. CPU only."""
    if w_NxK.ndim != 2 or w_NxK.dtype != jnp.int8:
        raise ValueError(f"int8_matmul: weights have shape {w_NxK.shape} and dtype {w_NxK.dtype}; expected a "
                         f"[N, K] int8 array (quantize with workbench.models.quantized.quantize_int8)")
    n, k = w_NxK.shape
    if scale_N.shape != (n,):
        raise ValueError(f"int8_matmul: scale has shape {scale_N.shape}; expected ({n},), one per output channel")
    if x_MxK.shape[-1] != k:
        raise ValueError(f"int8_matmul: x has shape {x_MxK.shape}; its last dimension must be the weights' K={k}")
    return call_on_rows(TARGET, x_MxK, k, n, w_NxK, scale_N.astype(jnp.float32))
