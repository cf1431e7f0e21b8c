"""Where each Hugging Face Llama/Qwen tensor lives in a workbench `DecoderOnly`.

Hugging Face stores linear weights as [out, in]; `nnx.Linear` kernels are [in, out].
"""

from __future__ import annotations

import dataclasses
from typing import Union

from workbench.models.config import ModelConfig

Path = tuple[Union[str, int], ...]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    hf_name: str
    path: Path  # attributes (and block index) from the DecoderOnly to the nnx.Param
    hf_shape: tuple[int, ...]
    transpose: bool  # a linear kernel: HF [out, in] <-> workbench [in, out]


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """Every parameter of a decoder-only model of `config`, in Hugging Face naming."""
    if config.arch != "decoder":
        raise ValueError(f"only decoder-only models map to Hugging Face causal LMs, got arch={config.arch!r}")
    d, f, hd, v = config.d_model, config.d_ff, config.head_dim, config.vocab_size
    q_out, kv_out = config.num_heads * hd, config.kv_heads * hd
    specs = [TensorSpec("model.embed_tokens.weight", ("embedder", "embedding"), (v, d), False)]
    if not config.tie_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("embedder", "lm_head"), (v, d), False))
    specs.append(TensorSpec("model.norm.weight", ("final_norm", "scale"), (d,), False))
    for i in range(config.num_layers):
        hf, wb = f"model.layers.{i}.", ("blocks", i)
        specs += [
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
        if config.qkv_bias:
            specs += [
                TensorSpec(hf + "self_attn.q_proj.bias", wb + ("attn", "q", "bias"), (q_out,), False),
                TensorSpec(hf + "self_attn.k_proj.bias", wb + ("attn", "k", "bias"), (kv_out,), False),
                TensorSpec(hf + "self_attn.v_proj.bias", wb + ("attn", "v", "bias"), (kv_out,), False),
            ]
        if config.qk_norm:
            specs += [
                TensorSpec(hf + "self_attn.q_norm.weight", wb + ("attn", "q_norm", "scale"), (hd,), False),
                TensorSpec(hf + "self_attn.k_norm.weight", wb + ("attn", "k_norm", "scale"), (hd,), False),
            ]
    return specs


# Tensors some checkpoints carry that the model recomputes or ties (safe to skip).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
