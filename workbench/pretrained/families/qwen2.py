"""Qwen2 / Qwen2.5: Llama with biases on the query/key/value projections; its config.json has
no head_dim (always hidden_size / num_attention_heads) and no attention_bias key."""

from __future__ import annotations

from typing import Any

from workbench.models.config import ModelConfig
from workbench.pretrained.errors import UnsupportedConfigError
from workbench.pretrained.families.llama import Llama
from workbench.pretrained.naming import Path, TensorSpec


class Qwen2(Llama):
    model_type = "qwen2"
    hf_class = "Qwen2ForCausalLM"
    models = "Qwen2/2.5"
    max_position_embeddings = 32768
    qkv_bias = True

    def config_fields(self, hf: dict[str, Any], d_model: int, num_heads: int, where: str) -> dict[str, Any]:
        head_dim = hf.get("head_dim")
        if head_dim not in (None, d_model // num_heads):
            raise UnsupportedConfigError(
                f"{where}: qwen2 with head_dim={head_dim} != hidden_size/num_attention_heads "
                f"({d_model}/{num_heads}); Qwen2 has no head_dim of its own: drop the key or use model_type 'qwen3'"
            )
        return dict(qkv_bias=True, qk_norm=False, head_dim_override=None)

    def hf_fields(self, config: ModelConfig) -> dict[str, Any]:
        if config.head_dim_override is not None:
            raise UnsupportedConfigError(
                f"Qwen2 (qkv_bias) has no head_dim field: head_dim_override must be None, got "
                f"{config.head_dim_override}; export with head_dim = d_model / num_heads"
            )
        return {"use_sliding_window": False}

    def block_tensors(self, config: ModelConfig, hf: str, wb: Path) -> list[TensorSpec]:
        q_out, kv_out = config.num_heads * config.head_dim, config.kv_heads * config.head_dim
        return super().block_tensors(config, hf, wb) + [
            TensorSpec(hf + "self_attn.q_proj.bias", wb + ("attn", "q", "bias"), (q_out,), False),
            TensorSpec(hf + "self_attn.k_proj.bias", wb + ("attn", "k", "bias"), (kv_out,), False),
            TensorSpec(hf + "self_attn.v_proj.bias", wb + ("attn", "v", "bias"), (kv_out,), False),
        ]
