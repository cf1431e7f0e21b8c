"""`attention(q, k, v, mask, impl="auto")`: the one attention entry point.

Each implementation is an adapter that declares the mask features it computes
(`AttentionImpl.supports`, names from `workbench.attention.mask.MASK_FEATURES`) and says
whether it handles a case (and why not when it does not). Dispatch is fail-closed: a mask
using a feature an adapter does not declare never reaches that adapter's support check
or kernel, so a new mask feature is declined everywhere until an adapter opts in.
``impl="auto"`` walks a fixed per-platform order and takes the first adapter that
handles the case exactly; the dense XLA reference ends every order and handles
everything. No adapter ever substitutes a different mask. An impl named explicitly that
cannot handle the case raises, naming the reason and listing those that can.

Only the reference and cuDNN are defined here; the Pallas kernels' adapters are in
`workbench.attention.kernel_adapters`, which the package imports (and so registers) at
its own import. Imports run one way: models -> attention -> kernels.
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
    # The mask features (`AttentionMask.features`) this impl computes; any other feature in
    # a mask makes dispatch decline it before `why_not` or `fn` see the mask. None only for
    # the dense reference, which reads every mask through `AttentionMask.dense`.
    supports: Optional[frozenset[str]]
    description: str = ""
    # A Pallas kernel: XLA cannot partition it, so under a multi-device mesh it runs per shard.
    per_shard: bool = False

    def __post_init__(self):
        if self.supports is not None and not isinstance(self.supports, frozenset):
            raise TypeError(f"AttentionImpl {self.name!r}: supports must be a frozenset of mask feature "
                            f"names (see MASK_FEATURES), got {type(self.supports).__name__}")

    def reason_not(self, q, k, v, mask: AttentionMask, platform: str) -> Optional[str]:
        """None when this impl handles the case, else why not (unsupported mask features first)."""
        unknown = [] if self.supports is None else sorted(mask.features - self.supports)
        if unknown:
            return (f"impl {self.name!r} does not support mask feature(s) {unknown} "
                    f"(it supports {sorted(self.supports)})")
        return self.why_not(q, k, v, mask, platform)


_REGISTRY: dict[str, AttentionImpl] = {}

# Fallthrough order for impl="auto", per platform. Names not registered are skipped.
# The experimental Hopper kernel (pallas_mosaic_gpu, kernels/experimental/) is selectable by
# name but stays out of "auto" until its device check has passed on an H100 (it has only
# been lowered and replayed on CPU so far; see kernels/NOTES.md). Then it goes first on GPU.
AUTO_ORDER = {
    "gpu": ("cudnn", "pallas_gpu", "xla"),
    "tpu": ("pallas_tpu", "xla"),
    "cpu": ("xla",),
}


def register(impl: AttentionImpl) -> None:
    _REGISTRY[impl.name] = impl


def get_impl(name: str) -> AttentionImpl:
    """The registered adapter called `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention impl {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_impls() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def current_platform() -> str:
    return jax.default_backend()  # "cpu" | "gpu" | "tpu" (cuda/rocm report "gpu")


def supporting_impls(q, k, v, mask: AttentionMask, platform: Optional[str] = None) -> list[str]:
    """Names of the registered impls that handle this exact case on `platform`."""
    platform = platform or current_platform()
    return [name for name, impl in _REGISTRY.items() if impl.reason_not(q, k, v, mask, platform) is None]


def choose_impl(q, k, v, mask: AttentionMask, platform: Optional[str] = None) -> str:
    """The impl that impl="auto" runs for this case."""
    platform = platform or current_platform()
    for name in AUTO_ORDER.get(platform, ("xla",)):
        impl = _REGISTRY.get(name)
        if impl is not None and impl.reason_not(q, k, v, mask, platform) is None:
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
    """Masked multi-head / grouped-query attention. q [B,Tq,H,D]; k, v [B,Tk,Hkv,D].

    ``softmax(q k^T * scale + mask) v`` per head, where every implementation computes the
    same numbers as the dense float32 reference (`xla_attention`):

    * ``scale`` defaults to ``head_dim ** -0.5``.
    * Grouped-query attention: query head ``h`` reads key/value head ``h // (H // Hkv)``
      (each group of ``H // Hkv`` consecutive query heads shares one kv head).
    * Positions are absolute: queries sit at ``mask.q_offset + arange(Tq)`` (offset 0 when
      None) and keys at ``arange(Tk)``, so when Tq != Tk a causal mask is aligned top-left
      (query 0 sees key 0 only, unless ``q_offset`` moves it), not bottom-right.
    * A query row that sees no key (fully masked by padding, segments or offsets) gives
      output 0; its dq is 0 and it adds nothing to dk and dv (never NaN). Tq = 0 or
      Tk = 0 is allowed: an empty output, or zeros.

    ``impl`` names a registered implementation or "auto" (see `AUTO_ORDER`); a mask feature
    or case an implementation does not declare is never passed to it.
    """
    check_shapes(q, k, v)
    mask.validate(q.shape[0], q.shape[1], k.shape[1])
    platform = current_platform()
    if impl == "auto":
        impl = choose_impl(q, k, v, mask, platform)
    if impl not in _REGISTRY:
        raise ValueError(f"unknown attention impl {impl!r}; registered: {sorted(_REGISTRY)} or 'auto'")
    reason = _REGISTRY[impl].reason_not(q, k, v, mask, platform)
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


# cuDNN has no native prefix-LM or block mask (a dense bias would be a different, slow path);
# segment ids and query offsets are not wired through this adapter.
_CUDNN_FEATURES = frozenset({"causal", "key_padding"})


def _cudnn_why_not(q, k, v, mask: AttentionMask, platform):
    if platform != "gpu":
        return "cuDNN runs on NVIDIA GPUs only"
    if q.shape[1] == 0 or k.shape[1] == 0:
        return f"cuDNN needs at least one query and one key; got Tq={q.shape[1]}, Tk={k.shape[1]}"
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
                       _xla_why_not, None, "dense float32 XLA reference; handles every mask"))
register(AttentionImpl("cudnn", _cudnn, _cudnn_why_not, _CUDNN_FEATURES,
                       "jax.nn.dot_product_attention(implementation='cudnn'): causal/bidirectional + key padding"))
