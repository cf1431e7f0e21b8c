"""GGUF files (llama.cpp) of the llama architecture: metadata -> Hugging Face config keys,
tensors -> Hugging Face names, dequantised to float32 with the `gguf` package.

llama.cpp's converter permutes the rows of each query/key head so that its rotary pairs
are adjacent (x[2i], x[2i+1]); Hugging Face Llama and the workbench rotate the two halves
of the head (x[i], x[i + D/2]). `unpermute_rows` undoes the converter's `permute`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from workbench.pretrained.errors import (
    TensorMismatchError,
    UnsupportedArchitectureError,
    UnsupportedConfigError,
    UnsupportedQuantizationError,
)

SUPPORTED_ARCHITECTURES = ("llama",)
SUPPORTED_QUANTIZATIONS = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def unpermute_rows(weight_OxI: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows of each head from llama.cpp's interleaved order (pair i at rows 2i, 2i+1) back to
    the half-split order (pair i at rows i, i + D/2)."""
    rows = weight_OxI.shape[0]
    head_dim = rows // num_heads
    return (
        weight_OxI.reshape(num_heads, head_dim // 2, 2, *weight_OxI.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight_OxI.shape)
    )


def permute_rows(weight_OxI: np.ndarray, num_heads: int) -> np.ndarray:
    """The inverse of `unpermute_rows` (what llama.cpp's converter does; for writing GGUF)."""
    rows = weight_OxI.shape[0]
    head_dim = rows // num_heads
    return (
        weight_OxI.reshape(num_heads, 2, head_dim // 2, *weight_OxI.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight_OxI.shape)
    )


def hf_name(gguf_name: str, path: Path) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}"
    raise UnsupportedConfigError(
        f"{path.name}: tensor {gguf_name!r} is not part of a supported llama model "
        f"(expected token_embd, output_norm, output and blk.N.{{{', '.join(sorted(_BLOCK_NAMES))}}}); "
        f"rope_freqs (Llama 3.1 rope scaling in GGUF) is not supported: load the Hugging Face folder instead"
    )


class GGUFSource:
    """A llama-architecture GGUF file as a tensor source with Hugging Face names and layout."""

    def __init__(self, path: str | Path):
        import gguf  # imported here: only GGUF sources need it

        self.path = Path(path)
        self._gguf = gguf
        self.reader = gguf.GGUFReader(str(self.path))
        self.metadata = {name: self._field(name) for name in self.reader.fields}
        arch = self.metadata.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"{self.path.name}: GGUF architecture {arch!r} is not supported; supported: "
                f"{list(SUPPORTED_ARCHITECTURES)} (for Qwen models load their Hugging Face folder)"
            )
        self.hf_config = self._hf_config()
        self._tensors = {}
        self._shapes = {}
        for tensor in self.reader.tensors:
            qtype = tensor.tensor_type.name
            if qtype not in SUPPORTED_QUANTIZATIONS:
                raise UnsupportedQuantizationError(
                    f"{self.path.name}: tensor {tensor.name!r} is quantised as {qtype}, which is not supported; "
                    f"supported: {list(SUPPORTED_QUANTIZATIONS)} (re-quantise the model, e.g. to Q8_0)"
                )
            name = hf_name(tensor.name, self.path)
            self._tensors[name] = tensor
            # GGUF lists dimensions innermost first; numpy/Hugging Face order is the reverse.
            self._shapes[name] = tuple(int(n) for n in reversed(tensor.shape))

    def _field(self, name: str) -> Any:
        field = self.reader.fields[name]
        if name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            return None  # large arrays: the tokenizer reads them itself
        return field.contents()

    def _hf_config(self) -> dict[str, Any]:
        m = self.metadata
        arch = m["general.architecture"]

        def key(name, default=None):
            value = m.get(f"{arch}.{name}", default)
            if value is None:
                raise UnsupportedConfigError(f"{self.path.name}: GGUF metadata has no {arch}.{name}")
            return value

        scaling = m.get(f"{arch}.rope.scaling.type")
        if scaling not in (None, "none"):
            raise UnsupportedConfigError(
                f"{self.path.name}: {arch}.rope.scaling.type={scaling!r} is not supported; supported: none"
            )
        heads = int(key("attention.head_count"))
        d_model = int(key("embedding_length"))
        head_dim = int(m.get(f"{arch}.attention.key_length", d_model // heads))
        rope_dim = int(m.get(f"{arch}.rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise UnsupportedConfigError(
                f"{self.path.name}: rotary over {rope_dim} of {head_dim} head dimensions is not supported; "
                f"supported: rotary over the whole head"
            )
        embed = [int(t.shape[-1]) for t in self.reader.tensors if t.name == "token_embd.weight"]
        vocab = m.get(f"{arch}.vocab_size", embed[0] if embed else None)
        if vocab is None:
            raise TensorMismatchError(f"{self.path.name}: no {arch}.vocab_size and no token_embd.weight tensor")
        return {
            "model_type": arch,  # a GGUF architecture is named as its Hugging Face model_type
            "hidden_size": d_model,
            "intermediate_size": int(key("feed_forward_length")),
            "num_hidden_layers": int(key("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(m.get(f"{arch}.attention.head_count_kv", heads)),
            "head_dim": head_dim,
            "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
            "rope_theta": float(m.get(f"{arch}.rope.freq_base", 10_000.0)),
            "max_position_embeddings": int(key("context_length")),
            "vocab_size": int(vocab),
            "tie_word_embeddings": not any(t.name == "output.weight" for t in self.reader.tensors),
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def load(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        shape = self._shapes[name]
        data = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        data = data.reshape(shape)
        if name.endswith("self_attn.q_proj.weight"):
            data = unpermute_rows(data, self.hf_config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            data = unpermute_rows(data, self.hf_config["num_key_value_heads"])
        return data
