"""Attention: the mask description, the dense reference and the one entry point."""

from workbench.attention.dispatch import (
    AUTO_ORDER,
    AttentionImpl,
    attention,
    available_impls,
    choose_impl,
    get_impl,
    supporting_impls,
)
from workbench.attention.mask import MASK_KINDS, AttentionMask
from workbench.attention.reference import xla_attention, xla_attention_lse

__all__ = [
    "AUTO_ORDER",
    "AttentionImpl",
    "AttentionMask",
    "MASK_KINDS",
    "attention",
    "available_impls",
    "choose_impl",
    "get_impl",
    "supporting_impls",
    "xla_attention",
    "xla_attention_lse",
]
