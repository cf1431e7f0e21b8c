"""Attention: the mask description, the dense reference and the one entry point.

Imports run one way: models -> attention -> kernels. Importing this package registers
the Pallas kernels' adapters (`kernel_adapters`), so every process imports Pallas once,
before its first trace.
"""

from workbench.attention.dispatch import (
    AUTO_ORDER,
    AttentionImpl,
    attention,
    available_impls,
    choose_impl,
    get_impl,
    supporting_impls,
)
from workbench.attention.mask import MASK_FEATURES, MASK_KINDS, AttentionMask, mask_for_kind
from workbench.attention.reference import xla_attention
from workbench.attention import kernel_adapters  # noqa: F401  (registers the Pallas kernels)

__all__ = [
    "AUTO_ORDER",
    "AttentionImpl",
    "AttentionMask",
    "MASK_FEATURES",
    "MASK_KINDS",
    "attention",
    "available_impls",
    "choose_impl",
    "get_impl",
    "mask_for_kind",
    "supporting_impls",
    "xla_attention",
]
