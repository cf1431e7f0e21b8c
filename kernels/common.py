"""What both Pallas kernels share outside the kernel body: support checks, the mask in the
form the kernels take (per-example scalars, never a dense T x T mask), padding, and the
`jax.custom_vjp` wrapper whose backward recomputes from the saved log-sum-exp.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from workbench.kernels import block_mask
from workbench.kernels.tile_math import LOG2E  # scores use exp2 with log2(e) folded into the scale

if TYPE_CHECKING:  # kernels read the mask by its fields; they never import the attention layer
    from workbench.attention.mask import AttentionMask

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))
# The mask features (names from `AttentionMask.features`) the portable kernels compute; a
# mask using any other feature is declined, never computed as a different mask.
SUPPORTED_FEATURES = frozenset({"causal", "prefix", "key_padding", "segments", "q_offset", "block_causal"})


class KernelMask(NamedTuple):
    """The mask as the kernels read it. Scalars are [B] int32; segment ids are padded."""

    prefix: jax.Array  # [B] keys before it are visible to every query
    kv_len: jax.Array  # [B] keys at or after it are padding (already capped at Tk)
    q_offset: jax.Array  # [B] absolute position of query 0
    q_segment_ids: Optional[jax.Array]  # [B, Tq_pad] or None
    kv_segment_ids: Optional[jax.Array]  # [B, Tk_pad] or None


def unsupported_features(mask: AttentionMask, supported: frozenset) -> Optional[str]:
    """None when every feature the mask uses is in `supported`, else the reason."""
    unknown = sorted(mask.features - supported)
    if unknown:
        return f"mask feature(s) {unknown} are not computed by this kernel (it computes {sorted(supported)})"
    return None


def why_not_supported(q, k, v, mask: AttentionMask, *, features: frozenset = SUPPORTED_FEATURES,
                      head_dims: tuple = SUPPORTED_HEAD_DIMS, dtypes: tuple = SUPPORTED_DTYPES) -> Optional[str]:
    """None when a kernel computing these mask `features`, `head_dims` and `dtypes` handles
    this case, else the reason (defaults: the portable kernels, shared by every adapter)."""
    reason = unsupported_features(mask, features)
    if reason is not None:
        return reason
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        return f"q, k, v must be rank 4 [B, T, H, D]; got shapes {q.shape}, {k.shape}, {v.shape}"
    if k.shape != v.shape or q.shape[0] != k.shape[0]:
        return f"k and v must have one shape and share q's batch; got {q.shape}, {k.shape}, {v.shape}"
    head_dim = q.shape[-1]
    if head_dim not in head_dims or k.shape[-1] != head_dim or v.shape[-1] != head_dim:
        return (f"head_dim must be one of {head_dims} for q, k and v; got "
                f"{q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}")
    used = {jnp.dtype(x.dtype) for x in (q, k, v)}
    if len(used) != 1 or used.pop() not in dtypes:
        return (f"q, k, v must share one dtype out of {'/'.join(d.name for d in dtypes)}; "
                f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[2] % k.shape[2]:
        return f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})"
    return None


def check_supported(q, k, v, mask: AttentionMask, why_not=None, kernel: str = "Pallas flash attention") -> None:
    """Raise a ValueError saying what is supported when a kernel cannot run this case.

    `why_not(q, k, v, mask)` is the kernel's own support check (default: the portable kernels')."""
    reason = (why_not or why_not_supported)(q, k, v, mask)
    if reason is not None:
        raise ValueError(f"{kernel} cannot run this case: {reason}. "
                         f"Use workbench.attention.attention(..., impl='auto') to fall back.")
    mask.validate(q.shape[0], q.shape[1], k.shape[1])


def empty_attention(q: jax.Array, k: jax.Array) -> Optional[jax.Array]:
    """The result when there are no queries (Tq = 0: an empty output) or no keys (Tk = 0:
    every row sees nothing, so zeros, with zero gradients), else None. The kernels' grids
    need at least one tile of each, so this case never reaches them."""
    if q.shape[1] == 0 or k.shape[1] == 0:
        return jnp.zeros(q.shape, q.dtype)
    return None


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, length: int) -> jax.Array:
    """Zero-pad `axis` of x up to `length` (no copy when it already has that length)."""
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def kernel_mask(mask: AttentionMask, batch: int, q_len: int, kv_len: int,
                q_len_padded: int, kv_len_padded: int) -> KernelMask:
    zeros = jnp.zeros((batch,), jnp.int32)
    prefix = zeros if mask.prefix_len is None else mask.prefix_len.astype(jnp.int32)
    lengths = jnp.full((batch,), kv_len, jnp.int32)
    if mask.kv_lengths is not None:
        lengths = jnp.clip(mask.kv_lengths.astype(jnp.int32), 0, kv_len)
    offset = zeros if mask.q_offset is None else mask.q_offset.astype(jnp.int32)
    q_seg = kv_seg = None
    if mask.has_segments:
        q_seg = pad_axis(mask.q_segment_ids.astype(jnp.int32), 1, q_len_padded)
        kv_seg = pad_axis(mask.kv_segment_ids.astype(jnp.int32), 1, kv_len_padded)
    return KernelMask(prefix, lengths, offset, q_seg, kv_seg)


def kv_segment_spans(kmask: KernelMask, q_len: int, block_q: int, block_k: int):
    """Per (example, q tile): the kv tiles [first, end) that may share a segment id with it."""
    return block_mask.segment_tile_spans(
        kmask.q_segment_ids, kmask.kv_segment_ids, block_rows=block_q, block_cols=block_k,
        row_len=q_len, col_len=kmask.kv_len)


def q_segment_spans(kmask: KernelMask, q_len: int, block_q: int, block_k: int):
    """Per (example, kv tile): the q tiles [first, end) that may share a segment id with it."""
    return block_mask.segment_tile_spans(
        kmask.kv_segment_ids, kmask.q_segment_ids, block_rows=block_k, block_cols=block_q,
        row_len=kmask.kv_len, col_len=q_len)


# forward(q, k, v, kmask) -> (out [B,Tq,H,D], lse2 [B,H,Tq] float32, base 2)
ForwardFn = Callable[..., tuple[jax.Array, jax.Array]]
# backward(q, k, v, kmask, lse2, delta, do) -> (dq, dk, dv)
BackwardFn = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


def flash_with_vjp(forward: ForwardFn, backward: BackwardFn):
    """Differentiable attention(q, k, v, kmask) from a forward and a backward kernel.

    Saves q, k, v, the output and the log-sum-exp; the backward recomputes the scores
    tile by tile. delta = rowsum(out * d_out) is a cheap elementwise pass left to XLA.
    """

    @jax.custom_vjp
    def flash(q, k, v, kmask):
        return forward(q, k, v, kmask)[0]

    def flash_fwd(q, k, v, kmask):
        out, lse2 = forward(q, k, v, kmask)
        return out, (q, k, v, kmask, out, lse2)

    def flash_bwd(residuals, d_out):
        q, k, v, kmask, out, lse2 = residuals
        delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), d_out.astype(jnp.float32))
        dq, dk, dv = backward(q, k, v, kmask, lse2, delta, d_out.astype(q.dtype))
        return dq, dk, dv, None

    flash.defvjp(flash_fwd, flash_bwd)
    return flash


@dataclasses.dataclass(frozen=True)
class PlanBase:
    """Static facts every kernel's plan holds: shapes, padded lengths, scale, mask rule."""

    batch: int
    q_len: int
    kv_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    q_len_padded: int
    kv_len_padded: int
    scale: float
    causal: bool
    block_size: Optional[int]  # block-causal blocks (static: it shapes the tile schedule)

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def qk_scale(self) -> float:
        return self.scale * LOG2E


@functools.partial(jax.jit, static_argnames=("forward", "backward", "plan"))
def run_flash(q, k, v, kmask: KernelMask, *, forward: ForwardFn, backward: BackwardFn, plan):
    """Differentiable kernel call, jitted per static plan so eager calls re-use compiled kernels."""
    flash = flash_with_vjp(functools.partial(forward, plan=plan), functools.partial(backward, plan=plan))
    return flash(q, k, v, kmask)

