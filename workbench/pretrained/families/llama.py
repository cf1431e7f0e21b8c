"""Llama (Llama 2/3, SmolLM/SmolLM2, TinyLlama): the layout Qwen2 and Qwen3 extend."""

from __future__ import annotations

from typing import Any

from workbench.models.config import ModelConfig
from workbench.pretrained.errors import UnsupportedConfigError
from workbench.pretrained.naming import Path, TensorSpec


class Llama:
    model_type = "llama"  # config.json "model_type"
    hf_class = "LlamaForCausalLM"
    models = "Llama 2/3, SmolLM/SmolLM2, TinyLlama"
    max_position_embeddings = 2048  # transformers' default, for a config.json without the key
    # The ModelConfig flags that mark this family's models (exactly one family has each pair).
    qkv_bias = False
    qk_norm = False

    def matches(self, config: ModelConfig) -> bool:
        return (config.qkv_bias, config.qk_norm) == (self.qkv_bias, self.qk_norm)

    def config_fields(self, hf: dict[str, Any], d_model: int, num_heads: int, where: str) -> dict[str, Any]:
        """The ModelConfig fields of this family's own, read from its config.json."""
        if hf.get("attention_bias", False):
            raise UnsupportedConfigError(
                f"{where}: attention_bias=true (biases on q/k/v/o) is not supported for {self.model_type}; "
                f"supported: no biases, or Qwen2's q/k/v biases"
            )
        head_dim = hf.get("head_dim")
        return dict(qkv_bias=self.qkv_bias, qk_norm=self.qk_norm,
                    head_dim_override=None if head_dim in (None, d_model // num_heads) else int(head_dim))

    def hf_fields(self, config: ModelConfig) -> dict[str, Any]:
        """The config.json keys of this family's own, written after the shared ones."""
        return {"head_dim": config.head_dim, "attention_bias": False, "mlp_bias": False}

    def block_tensors(self, config: ModelConfig, hf: str, wb: Path) -> list[TensorSpec]:
        """The tensors of one block: `hf` is its name prefix, `wb` its path in the model."""
        d, f, hd = config.d_model, config.d_ff, config.head_dim
        q_out, kv_out = config.num_heads * hd, config.kv_heads * hd
        return [
            TensorSpec(hf + "input_layernorm.weight", wb + ("attn_norm", "scale"), (d,), False),
            TensorSpec(hf + "post_attention_layernorm.weight", wb + ("mlp_norm", "scale"), (d,), False),
            TensorSpec(hf + "self_attn.q_proj.weight", wb + ("attn", "q", "kernel"), (q_out, d), True),
            TensorSpec(hf + "self_attn.k_proj.weight", wb + ("attn", "k", "kernel"), (kv_out, d), True),
            TensorSpec(hf + "self_attn.v_proj.weight", wb + ("attn", "v", "kernel"), (kv_out, d), True),
            TensorSpec(hf + "self_attn.o_proj.weight", wb + ("attn", "o", "kernel"), (d, q_out), True),
            TensorSpec(hf + "mlp.gate_proj.weight", wb + ("mlp", "gate", "kernel"), (f, d), True),
            TensorSpec(hf + "mlp.up_proj.weight", wb + ("mlp", "up", "kernel"), (f, d), True),
            TensorSpec(hf + "mlp.down_proj.weight", wb + ("mlp", "down", "kernel"), (d, f), True),
        ]

    def tensor_specs(self, config: ModelConfig) -> list[TensorSpec]:
        """Every parameter of a model of `config`, in Hugging Face naming."""
        d, v = config.d_model, config.vocab_size
        specs = [TensorSpec("model.embed_tokens.weight", ("embedder", "embedding"), (v, d), False)]
        if not config.tie_embeddings:
            specs.append(TensorSpec("lm_head.weight", ("embedder", "lm_head"), (v, d), False))
        specs.append(TensorSpec("model.norm.weight", ("final_norm", "scale"), (d,), False))
        for i in range(config.num_layers):
            specs += self.block_tensors(config, f"model.layers.{i}.", ("blocks", i))
        return specs
