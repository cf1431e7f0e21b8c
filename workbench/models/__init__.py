"""Transformer models of the AR2Diff study (Flax NNX)."""

from workbench.models.config import (
    PRESETS,
    ModelConfig,
    RopeScaling,
    default_compute_dtype,
    flops_per_token,
    get_preset,
    param_count,
)
from workbench.models.transformer import (
    DecoderOnly,
    EncoderDecoder,
    build_model,
    count_params,
    with_attention,
    with_config,
)

__all__ = [
    "PRESETS",
    "DecoderOnly",
    "EncoderDecoder",
    "ModelConfig",
    "RopeScaling",
    "build_model",
    "count_params",
    "default_compute_dtype",
    "flops_per_token",
    "get_preset",
    "param_count",
    "with_attention",
    "with_config",
]
