"""The Hugging Face model families the workbench imports and exports, one module each: how a
family's config.json maps to a `ModelConfig` and back, and where its tensors go.

Adding a family: a module with a class like `Llama` (or one that extends it: see qwen2.py,
qwen3.py) and one entry in `FAMILIES`; nothing else branches on `model_type`.
"""

from __future__ import annotations

from typing import Any

from workbench.models.config import ModelConfig
from workbench.pretrained.errors import UnsupportedArchitectureError, UnsupportedConfigError
from workbench.pretrained.families.llama import Llama
from workbench.pretrained.families.qwen2 import Qwen2
from workbench.pretrained.families.qwen3 import Qwen3
from workbench.pretrained.naming import TensorSpec

Family = Llama  # every family is a Llama or extends it
FAMILIES: dict[str, Family] = {f.model_type: f for f in (Llama(), Qwen2(), Qwen3())}


def family_of(hf: dict[str, Any], *, where: str = "config.json") -> Family:
    """The family of a config.json, by its `model_type`."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        covered = ", ".join(f.models for f in FAMILIES.values())
        raise UnsupportedArchitectureError(
            f"{where}: model_type={model_type!r} (architectures={hf.get('architectures')}) is not supported; "
            f"supported: {sorted(FAMILIES)} ({covered})"
        )
    return FAMILIES[model_type]


def family_for(config: ModelConfig) -> Family:
    """The family whose models have exactly `config`'s architecture flags."""
    if not config.arch_spec.decoder_only:
        raise UnsupportedConfigError(
            f"only decoder-only models map to Hugging Face causal LMs; got arch={config.arch!r}"
        )
    found = [f for f in FAMILIES.values() if f.matches(config)]
    if not found:
        flags = ", ".join(f"{f.model_type}: qkv_bias={f.qkv_bias}, qk_norm={f.qk_norm}" for f in FAMILIES.values())
        raise UnsupportedConfigError(
            f"qkv_bias={config.qkv_bias} with qk_norm={config.qk_norm} matches no Hugging Face family "
            f"({flags}); change one of the two"
        )
    return found[0]


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """Every parameter of a decoder-only model of `config`, in Hugging Face naming."""
    return family_for(config).tensor_specs(config)
