"""Qwen3: Llama with an RMSNorm over each query/key head before rotary."""

from __future__ import annotations

from typing import Any

from workbench.models.config import ModelConfig
from workbench.pretrained.families.llama import Llama
from workbench.pretrained.naming import Path, TensorSpec


class Qwen3(Llama):
    model_type = "qwen3"
    hf_class = "Qwen3ForCausalLM"
    models = "Qwen3"
    max_position_embeddings = 32768
    qk_norm = True

    def hf_fields(self, config: ModelConfig) -> dict[str, Any]:
        return {"head_dim": config.head_dim, "attention_bias": False, "use_sliding_window": False}

    def block_tensors(self, config: ModelConfig, hf: str, wb: Path) -> list[TensorSpec]:
        hd = config.head_dim
        return super().block_tensors(config, hf, wb) + [
            TensorSpec(hf + "self_attn.q_norm.weight", wb + ("attn", "q_norm", "scale"), (hd,), False),
            TensorSpec(hf + "self_attn.k_norm.weight", wb + ("attn", "k_norm", "scale"), (hd,), False),
        ]
