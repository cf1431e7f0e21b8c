"""Hugging Face `config.json` <-> workbench `ModelConfig`: the keys every family shares (each
family's own keys are in `workbench.pretrained.families`).

Both the transformers 4 keys (`rope_theta`, `rope_scaling`) and the transformers 5 key
(`rope_parameters`) are read; exports write the transformers 4 keys, which both read.
A workbench export also records the whole `ModelConfig` under `WORKBENCH_KEY` (attention
kind, compute dtype, ...), which other readers ignore.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from workbench.config import from_dict
from workbench.models.config import ModelConfig, RopeScaling
from workbench.pretrained.errors import UnsupportedConfigError
from workbench.pretrained.families import family_for, family_of

WORKBENCH_KEY = "workbench"
SUPPORTED_ROPE_TYPES = ("default", "llama3")
# Defaults of the transformers config classes (the same in every family), for keys a
# config.json may leave out; max_position_embeddings differs: each family has its own.
DEFAULT_RMS_NORM_EPS = 1e-6
DEFAULT_ROPE_THETA = 10_000.0
# Shape fields a workbench record must agree on with the Hugging Face keys beside it.
_SHAPE_FIELDS = (
    "vocab_size", "d_model", "num_layers", "num_heads", "kv_heads", "d_ff", "tie_embeddings",
    "rope_theta", "norm_eps", "head_dim", "qkv_bias", "qk_norm", "rope_scaling", "scale_logits",
)


def _float32_value(x: float) -> float:
    """The shortest decimal of x as float32 (GGUF stores eps 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(x)))


def _require(hf: dict, key: str, where: str):
    if key not in hf:
        raise UnsupportedConfigError(f"{where} has no {key!r}; a Llama/Qwen config.json needs it")
    return hf[key]


def _rope(hf: dict, where: str) -> tuple[float, Optional[RopeScaling]]:
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", DEFAULT_ROPE_THETA))
    merged = {**params, **scaling}  # a transformers 4 rope_scaling wins over a default rope_parameters
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedConfigError(
            f"{where}: rope scaling type {rope_type!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)} "
            f"(Llama 3.1 'llama3'); linear/dynamic/yarn/longrope would change the model's positions"
        )
    if rope_type == "default":
        return float(theta), None
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings") if k not in merged]
    if missing:
        raise UnsupportedConfigError(f"{where}: rope_type 'llama3' needs {missing}")
    return float(theta), RopeScaling(
        factor=float(merged["factor"]),
        low_freq_factor=float(merged["low_freq_factor"]),
        high_freq_factor=float(merged["high_freq_factor"]),
        original_max_len=int(merged["original_max_position_embeddings"]),
    )


def model_config_from_hf(hf: dict[str, Any], *, where: str = "config.json") -> ModelConfig:
    """The architecture of a Hugging Face config of a supported family as a ModelConfig
    (causal attention, float32 compute; pass a workbench record through `apply_workbench_record`)."""
    family = family_of(hf, where=where)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(f"{where}: hidden_act={act!r}; only 'silu' (SwiGLU) is supported")
    if hf.get("mlp_bias", False):
        raise UnsupportedConfigError(f"{where}: mlp_bias=true is not supported; supported: MLPs without biases")
    if hf.get("use_sliding_window", False) or "sliding_attention" in (hf.get("layer_types") or []):
        raise UnsupportedConfigError(
            f"{where}: sliding-window attention is not supported; supported: full attention in every layer"
        )
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedConfigError(
            f"{where}: partial_rotary_factor={hf['partial_rotary_factor']}; only 1.0 (rotary on the whole head) is supported"
        )
    d_model = int(_require(hf, "hidden_size", where))
    num_heads = int(_require(hf, "num_attention_heads", where))
    theta, scaling = _rope(hf, where)
    return ModelConfig(
        vocab_size=int(_require(hf, "vocab_size", where)),
        d_model=d_model,
        num_layers=int(_require(hf, "num_hidden_layers", where)),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        d_ff=int(_require(hf, "intermediate_size", where)),
        max_len=int(hf.get("max_position_embeddings", family.max_position_embeddings)),
        attention="causal",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_theta=theta,
        norm_eps=_float32_value(hf.get("rms_norm_eps", DEFAULT_RMS_NORM_EPS)),
        dtype="float32",
        rope_scaling=scaling,
        scale_logits=False,
        **family.config_fields(hf, d_model, num_heads, where),
    )


def apply_workbench_record(config: ModelConfig, hf: dict[str, Any], *, where: str = "config.json") -> ModelConfig:
    """The ModelConfig a workbench export recorded (attention kind, dtype, ...), after checking
    that it describes the same architecture as the Hugging Face keys beside it."""
    record = hf.get(WORKBENCH_KEY)
    if record is None:
        return config
    recorded = from_dict(ModelConfig, record["model_config"])
    differ = [f for f in _SHAPE_FIELDS if getattr(recorded, f) != getattr(config, f)]
    if differ:
        raise UnsupportedConfigError(
            f"{where}: the {WORKBENCH_KEY!r} record disagrees with the Hugging Face keys on {differ} "
            f"(recorded {[getattr(recorded, f) for f in differ]}, config {[getattr(config, f) for f in differ]}); "
            f"the file was edited by hand: fix one of them"
        )
    return recorded


def hf_config_from_model(config: ModelConfig, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A config.json for `config` (plus `extra` keys such as token ids) with the workbench record."""
    family = family_for(config)
    if config.scale_logits:
        raise UnsupportedConfigError(
            "this model scales its logits by d_model**-0.5 (scale_logits=True, the workbench's from-scratch "
            "convention), which Hugging Face configs cannot express; only imported models (scale_logits=False) "
            "and models converted from them can be exported"
        )
    scaling = config.rope_scaling
    hf = {
        "architectures": [family.hf_class],
        "model_type": family.model_type,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None if scaling is None else {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_len,
        },
        "tie_word_embeddings": config.tie_embeddings,
        "vocab_size": config.vocab_size,
        "torch_dtype": "float32",
    }
    hf.update(family.hf_fields(config))
    hf.update(extra or {})
    hf[WORKBENCH_KEY] = {"format": 1, "model_config": dataclasses.asdict(config)}
    return hf
