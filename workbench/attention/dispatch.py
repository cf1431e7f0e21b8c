"""`attention(q, k, v, mask, impl="auto")`: the one attention entry point.

Each implementation is an adapter that says whether it handles a case (and why not
when it does not). ``impl="auto"`` walks a fixed per-platform order and takes the
first adapter that handles the case exactly; the dense XLA reference ends every
order and handles everything. No adapter ever substitutes a different mask.
An impl named explicitly that cannot handle the case raises, listing those that can.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from workbench.attention.mask import AttentionMask
from workbench.attention.partitioning import run_per_shard
from workbench.attention.reference import check_shapes, xla_attention

# (q, k, v, mask, scale) -> out
AttentionFn = Callable[..., jax.Array]
# (q, k, v, mask, platform) -> None when supported, else the reason
SupportFn = Callable[..., Optional[str]]


@dataclasses.dataclass(frozen=True)
class AttentionImpl:
    name: str
    fn: AttentionFn
    why_not: SupportFn
    description: str = ""
    # A Pallas kernel: XLA cannot partition it, so under a multi-device mesh it runs per shard.
    per_shard: bool = False


_REGISTRY: dict[str, AttentionImpl] = {}

# Fallthrough order for impl="auto", per platform. Names not registered are skipped.
# The Hopper kernel (pallas_mosaic_gpu) is selectable by name but stays out of "auto"
# until kernels/hopper_check.py has passed on an H100 (it has only been lowered and
# replayed on CPU so far; see kernels/NOTES.md). Then it goes first on GPU.
AUTO_ORDER = {
    "gpu": ("cudnn", "pallas_gpu", "xla"),
    "tpu": ("pallas_tpu", "xla"),
    "cpu": ("xla",),
}


def register(impl: AttentionImpl) -> None:
    _REGISTRY[impl.name] = impl


def get_impl(name: str) -> AttentionImpl:
    """The registered adapter called `name`."""
    _load_kernel_adapters()
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention impl {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_impls() -> tuple[str, ...]:
    _load_kernel_adapters()
    return tuple(_REGISTRY)


def current_platform() -> str:
    return jax.default_backend()  # "cpu" | "gpu" | "tpu" (cuda/rocm report "gpu")


def supporting_impls(q, k, v, mask: AttentionMask, platform: Optional[str] = None) -> list[str]:
    """Names of the registered impls that handle this exact case on `platform`."""
    _load_kernel_adapters()
    platform = platform or current_platform()
    return [name for name, impl in _REGISTRY.items() if impl.why_not(q, k, v, mask, platform) is None]


def choose_impl(q, k, v, mask: AttentionMask, platform: Optional[str] = None) -> str:
    """The impl that impl="auto" runs for this case."""
    _load_kernel_adapters()
    platform = platform or current_platform()
    for name in AUTO_ORDER.get(platform, ("xla",)):
        impl = _REGISTRY.get(name)
        if impl is not None and impl.why_not(q, k, v, mask, platform) is None:
            return name
    return "xla"


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    impl: str = "auto",
    *,
    scale: Optional[float] = None,
) -> jax.Array:
    """Masked multi-head / grouped-query attention. q [B,Tq,H,D]; k, v [B,Tk,Hkv,D]."""
    check_shapes(q, k, v)
    mask.validate(q.shape[0], q.shape[1], k.shape[1])
    _load_kernel_adapters()
    platform = current_platform()
    if impl == "auto":
        impl = choose_impl(q, k, v, mask, platform)
    if impl not in _REGISTRY:
        raise ValueError(f"unknown attention impl {impl!r}; registered: {sorted(_REGISTRY)} or 'auto'")
    reason = _REGISTRY[impl].why_not(q, k, v, mask, platform)
    if reason is not None:
        can = supporting_impls(q, k, v, mask, platform)
        raise ValueError(
            f"attention impl {impl!r} cannot handle this case ({mask.kind} mask, q {q.shape} "
            f"{q.dtype}, k {k.shape}) on {platform}: {reason}. Impls that can: {can}; or use impl='auto'."
        )
    chosen = _REGISTRY[impl]
    if chosen.per_shard:
        return run_per_shard(chosen.fn, q, k, v, mask, scale)
    return chosen.fn(q, k, v, mask, scale=scale)


# -- built-in adapters ---------------------------------------------------------

def _xla_why_not(q, k, v, mask, platform):
    return None


def _cudnn_why_not(q, k, v, mask: AttentionMask, platform):
    if platform != "gpu":
        return "cuDNN runs on NVIDIA GPUs only"
    if mask.prefix_len is not None:
        return "cuDNN has no native prefix-LM mask (a dense bias would be a different, slow path)"
    if mask.has_segments:
        return "segment ids are not supported by the cuDNN adapter"
    if mask.q_offset is not None:
        return "query offsets (cached decoding) are not supported by the cuDNN adapter"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"cuDNN flash attention needs bf16 or fp16 inputs, got {q.dtype}"
    if q.shape[-1] % 8 or q.shape[-1] > 128:
        return f"head_dim {q.shape[-1]} must be a multiple of 8 and at most 128"
    if mask.causal and q.shape[1] != k.shape[1]:
        return "causal cuDNN attention needs Tq == Tk"
    return None


def _cudnn(q, k, v, mask: AttentionMask, *, scale=None):
    batch, q_len = q.shape[:2]
    kv_lengths = mask.kv_lengths
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=mask.causal,
        key_value_seq_lengths=kv_lengths,
        implementation="cudnn",
    )
    if kv_lengths is not None:  # rows that see no key are defined as zeros
        out = jnp.where((kv_lengths > 0)[:, None, None, None], out, jnp.zeros_like(out))
    return out


register(AttentionImpl("xla", lambda q, k, v, mask, scale=None: xla_attention(q, k, v, mask, scale=scale),
                       _xla_why_not, "dense float32 XLA reference; handles every mask"))
register(AttentionImpl("cudnn", _cudnn, _cudnn_why_not,
                       "jax.nn.dot_product_attention(implementation='cudnn'): causal/bidirectional + key padding"))

_kernels_loaded = False


def _load_kernel_adapters() -> None:
    """Register the Pallas kernels' adapters on first use (importing them here at module level
    would be circular: the kernels import this package)."""
    global _kernels_loaded
    if _kernels_loaded:
        return
    _kernels_loaded = True
    try:
        from workbench.kernels import adapters
    except ImportError as err:  # pragma: no cover - only when the kernels package is broken
        raise ImportError(f"workbench.kernels failed to import: {err}") from err
    for impl in adapters.IMPLS:
        register(impl)
