"""`gguf_matmul`: x @ W^T with W kept in GGUF's Q4_1 or Q8_0 blocks (the C++ kernel in gguf_matmul.cc)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.kernels.cpu.library import call_on_rows

BLOCK = 32  # weights per block, both formats
BLOCK_BYTES = {"q4_1": 20, "q8_0": 34}  # fp16 d (+ fp16 m) + the packed weights
TARGETS = {"q4_1": "workbench_q4_1_matmul", "q8_0": "workbench_q8_0_matmul"}


def gguf_matmul(x_MxK: jax.Array, blocks_NxB: jax.Array, kind: str) -> jax.Array:
    """y[..., N] = x[..., K] @ W.T in float32, W[N, K] stored as GGUF `kind` blocks: uint8 [N, K / 32 * bytes],
    each output channel's blocks in a row as the GGUF file holds them. The weights the kernel uses are
    the GGUF reader's float32 dequantization, exactly. CPU only."""
    if kind not in BLOCK_BYTES:
        raise ValueError(f"gguf_matmul: kind={kind!r}; expected one of {sorted(BLOCK_BYTES)}")
    size = BLOCK_BYTES[kind]
    if blocks_NxB.ndim != 2 or blocks_NxB.dtype != jnp.uint8 or blocks_NxB.shape[1] % size:
        raise ValueError(f"gguf_matmul: blocks have shape {blocks_NxB.shape} and dtype {blocks_NxB.dtype}; expected "
                         f"uint8 [N, K / {BLOCK} * {size}] ({kind} blocks of {size} bytes per {BLOCK} weights)")
    n, k = blocks_NxB.shape[0], blocks_NxB.shape[1] // size * BLOCK
    if x_MxK.shape[-1] != k:
        raise ValueError(f"gguf_matmul: x has shape {x_MxK.shape}; its last dimension must be the weights' K={k}")
    return call_on_rows(TARGETS[kind], x_MxK, k, n, blocks_NxB)


def dequantize_blocks(blocks_NxB: jax.Array, kind: str) -> jax.Array:
    """The float32 weights [..., K] of GGUF blocks [..., K / 32 * bytes] (any leading dimensions: a
    table's rows looked up by token), computed as the GGUF reader does (d * q (+ m) in float32)."""
    size = BLOCK_BYTES[kind]
    lead, width = blocks_NxB.shape[:-1], blocks_NxB.shape[-1]
    b = blocks_NxB.reshape(lead + (width // size, size))
    d = jax.lax.bitcast_convert_type(b[..., 0:2].reshape(b.shape[:-1] + (1, 2)), jnp.float16).astype(jnp.float32)
    if kind == "q8_0":
        q = jax.lax.bitcast_convert_type(b[..., 2:], jnp.int8).astype(jnp.float32)
        w = q * d
    else:
        m = jax.lax.bitcast_convert_type(b[..., 2:4].reshape(b.shape[:-1] + (1, 2)), jnp.float16).astype(jnp.float32)
        qs = b[..., 4:]
        q = jnp.concatenate([qs & 15, qs >> 4], axis=-1).astype(jnp.float32)
        w = q * d + m
    return w.reshape(lead + (width // size * BLOCK,))
