"""Packed weights for CPU decoding: a copy of a model whose projections and output head keep their
weights in 8 or 4 bits and run the C++ kernels of `workbench.kernels.cpu`.

Why: batch-1 KV-cached decoding reads every weight once per token, so on a CPU its speed is the
weights' bytes over memory bandwidth. XLA:CPU has no fast int8, bf16 or 4-bit matrix-vector
product, hence the custom calls. Two ways to pack:

- `quantize_for_decoding(model, bits=8)`: symmetric int8 per output channel (scale = max|w[n]| /
  127, q = round(w / scale)), from any float model. A quarter of float32's bytes; the weights
  change (a greedy continuation drifts from float32's after some tokens).
- `pack_gguf_blocks(model, gguf_path)`: the GGUF file's own blocks as llama.cpp ships them (Q4_1
  projections: 0.625 bytes per weight; the Q8_0 embedding table), checked bitwise against the
  model's float32 weights, which the workbench's GGUF import dequantized from those same blocks.
  The kernels rebuild exactly those float32 weights, so only the summation order differs from the
  float32 model.

What changes: every `nnx.Linear` and the frozen base of every `LoRALinear` (its adapter stays
float32 and still obeys `adapter_gate`, so a drafter adapter runs on top), and the output head
(the tied embedding table [V, D] is already output-major); a tied table's input lookup reads the
same packed rows. Norms, rotary positions, attention and the KV cache are unchanged. A projection
over `GEMM_ROWS` rows or more (a long or batched prompt pass) unpacks its weights and runs XLA's float32 GEMM.
`fake_quantize` is the float32 model with the int8 copy's weights (its reference). The copies are
for decoding (any sampler that calls the model's forward); they have no gradients.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.kernels.cpu import BLOCK_BYTES, dequantize_blocks, gguf_matmul, int8_matmul
from workbench.models.lora import LoRALinear, LoRAParam, add_adapter, current_gate
from workbench.models.transformer import Embedder

BITS = (8,)
# From this many rows a projection unpacks its weights (the same float32 values) and runs XLA's float32 GEMM.
# SmolLM2-135M's prompt pass, idle 2-core CPU: 100 rows took 154 ms with the kernels, 216 ms unpacking
# (float32 weights: 103 ms); 800 rows (batch 8) 1068 ms with the kernels, 838 ms unpacking (float32: 646).
# The output head always runs the kernel (unpacking its 28M weights costs more).
GEMM_ROWS = 256
FORMATS = ("int8", "q4_1", "q8_0")  # per-channel int8; GGUF blocks


class Quantized(nnx.Variable):
    """Packed weights (int8 or GGUF block bytes) or their scales: model state, never trained."""


def quantize_int8(w_NxK) -> tuple[np.ndarray, np.ndarray]:
    """(q [N, K] int8, scale [N] float32), symmetric per output channel (row): scale = max|w[n]| / 127
    (1 for an all-zero row) and q = round(w / scale), so |w - q * scale| <= scale / 2 elementwise."""
    w = np.asarray(w_NxK, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int8: weights have shape {w.shape}; expected [N, K] (output channels first)")
    if not np.all(np.isfinite(w)):
        raise ValueError("quantize_int8: the weights hold NaN or infinity; they cannot be given an int8 scale")
    peak = np.max(np.abs(w), axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q_NxK, scale_N) -> jax.Array:
    """The float32 weights [N, K] that int8 (q, scale) stand for: q * scale, rounded to float32."""
    return jnp.asarray(q_NxK).astype(jnp.float32) * jnp.asarray(scale_N, jnp.float32)[:, None]


def packed_matmul(x: jax.Array, fmt: str, weight: jax.Array, scale: Optional[jax.Array]) -> jax.Array:
    """x[..., K] @ W.T for packed W[N, K] of format `fmt` (float32 out)."""
    return int8_matmul(x, weight, scale) if fmt == "int8" else gguf_matmul(x, weight, fmt)


def packed_rows(fmt: str, weight: jax.Array, scale: Optional[jax.Array], ids: jax.Array) -> jax.Array:
    """Rows `ids` of packed W[N, K] as float32 [..., K] (a tied table's input lookup)."""
    rows = jnp.take(weight, ids, axis=0)
    if fmt == "int8":
        return rows.astype(jnp.float32) * jnp.take(scale, ids, axis=0)[..., None]
    return dequantize_blocks(rows, fmt)


class PackedLinear(nnx.Module):
    """y = x @ W.T (+ bias), W[N, K] kept packed (`fmt`: int8 per channel, or GGUF q4_1 / q8_0 blocks)."""

    def __init__(self, fmt: str, weight, scale=None, bias=None, dtype=None):
        if fmt not in FORMATS:
            raise ValueError(f"PackedLinear: fmt={fmt!r}; expected one of {FORMATS}")
        self.fmt = fmt
        self.weight = Quantized(jnp.asarray(weight))
        self.scale = None if scale is None else Quantized(jnp.asarray(scale, jnp.float32))
        self.bias = None if bias is None else Quantized(jnp.asarray(bias, jnp.float32))
        self.dtype = dtype

    @classmethod
    def int8(cls, kernel_KxN, bias=None, dtype=None) -> "PackedLinear":
        q, scale = quantize_int8(np.asarray(kernel_KxN, np.float32).T)
        return cls("int8", q, scale, bias, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        if math.prod(x.shape[:-1]) >= GEMM_ROWS:  # a prompt pass: compute-bound, where XLA's GEMM is faster
            y = jnp.dot(x.astype(jnp.float32), self.dequantized_kernel())
        else:
            y = packed_matmul(x, self.fmt, self.weight[...], None if self.scale is None else self.scale[...])
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(dtype)

    def dequantized_kernel(self) -> jax.Array:
        """The float32 kernel [K, N] (nnx.Linear's layout) this layer computes with."""
        if self.fmt == "int8":
            return dequantize_int8(self.weight[...], self.scale[...]).T
        return dequantize_blocks(self.weight[...], self.fmt).T


class PackedLoRALinear(PackedLinear):
    """`LoRALinear` on a packed base: y = x @ base (+ bias) + gate * scale * (x @ A) @ B, A and B float32."""

    def __init__(self, layer: LoRALinear, fmt: str, weight, scale=None):
        super().__init__(fmt, weight, scale, None if layer.bias is None else layer.bias[...], layer.dtype)
        self.lora_a = LoRAParam(layer.lora_a[...])
        self.lora_b = LoRAParam(layer.lora_b[...])
        self.lora_scale = layer.scale

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        return add_adapter(super().__call__(x), x, self.lora_a[...], self.lora_b[...], self.lora_scale, self.dtype)


class PackedEmbedder(Embedder):
    """The embedder with a packed output head (the tied table, or the untied `lm_head`). A tied table's
    input lookup unpacks the rows it reads; an untied model keeps its float32 input table."""

    def __init__(self, embedder: Embedder, fmt: str, weight, scale=None):
        self.config = embedder.config
        self.tied = embedder.lm_head is None
        self.fmt = fmt
        self.head = Quantized(jnp.asarray(weight))
        self.head_scale = None if scale is None else Quantized(jnp.asarray(scale, jnp.float32))
        self.embedding = None if self.tied else embedder.embedding
        self.lm_head = None
        self.row_delta = embedder.row_delta

    def _scale(self):
        return None if self.head_scale is None else self.head_scale[...]

    def embed(self, tokens_BxT):
        if self.tied:
            x = packed_rows(self.fmt, self.head[...], self._scale(), tokens_BxT)
        else:
            x = jnp.take(self.embedding[...], tokens_BxT, axis=0)
        if self.row_delta is not None and current_gate() is not False:
            x = x + jnp.einsum("btr,rd->btd", self._row_weights(tokens_BxT), self.row_delta[...])
        return x.astype(self.config.dtype)

    def logits(self, x_BxTxD):
        return self.finish_logits(x_BxTxD, packed_matmul(x_BxTxD, self.fmt, self.head[...], self._scale()),
                                  tied=self.tied)


def _weight_NxK(layer) -> np.ndarray:
    """A layer's float32 weights, output channels first ([N, K]; a table [V, D] as it is)."""
    if isinstance(layer, Embedder):
        return np.asarray((layer.embedding if layer.lm_head is None else layer.lm_head)[...], np.float32)
    return np.asarray(layer.kernel[...], np.float32).T


def _packed(layer, fmt: str, weight, scale=None):
    if isinstance(layer, LoRALinear):
        return PackedLoRALinear(layer, fmt, weight, scale)
    if isinstance(layer, nnx.Linear):
        return PackedLinear(fmt, weight, scale, None if layer.bias is None else layer.bias[...], layer.dtype)
    return PackedEmbedder(layer, fmt, weight, scale)


def _layers(model) -> list[tuple[nnx.Module, str, nnx.Module]]:
    """(parent, attribute, layer) of every projection and the embedder."""
    found = []
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            for name, value in vars(node).items():
                if isinstance(value, (nnx.Linear, LoRALinear, Embedder)):
                    found.append((node, name, value))
    if not found:
        raise ValueError(f"{type(model).__name__} has no nnx.Linear, LoRALinear or embedder to pack")
    return found


def _replace(model, packer, label: str) -> nnx.Module:
    new = nnx.clone(model)
    changes = [(parent, name, packer(parent, name, layer)) for parent, name, layer in _layers(new)]
    for parent, name, packed in changes:
        setattr(parent, name, packed)
    new.quantization = label
    return new


def quantize_for_decoding(model: nnx.Module, bits: int = 8) -> nnx.Module:
    """A copy of `model` (decoder-only or encoder-decoder, adapters included) whose projections and output
    head hold int8 weights per output channel (see the module docstring); `model` is untouched. The
    kernel takes and returns float32 (other compute dtypes are cast around it). CPU only: the layers call
    an XLA:CPU custom call, built by `make cpu-kernels` (`make env` builds it)."""
    if bits not in BITS:
        raise ValueError(f"bits={bits}; expected one of {BITS} (int8 per output channel; for 4 bits, pack the "
                         f"GGUF's own Q4_1 blocks with pack_gguf_blocks(model, gguf_path))")
    return _replace(model, lambda parent, name, layer: _packed(layer, "int8", *quantize_int8(_weight_NxK(layer))),
                    f"int{bits}")


def fake_quantize(model: nnx.Module, bits: int = 8) -> nnx.Module:
    """A float32 copy of `model` whose weights are those of `quantize_for_decoding(model, bits)` (dequantized):
    the same network, computed by XLA's float32 dots."""
    if bits not in BITS:
        raise ValueError(f"bits={bits}; expected one of {BITS}")
    new = nnx.clone(model)
    for _, _, layer in _layers(new):
        w = dequantize_int8(*quantize_int8(_weight_NxK(layer)))
        if isinstance(layer, Embedder):
            (layer.embedding if layer.lm_head is None else layer.lm_head).set_value(w)
        else:
            layer.kernel.set_value(w.T)
    return new


# -- GGUF blocks --------------------------------------------------------------------------------------------

# Our projection attributes -> the llama GGUF tensor of block i; q and k rows are stored permuted.
GGUF_NAMES = {("attn", "q"): "attn_q", ("attn", "k"): "attn_k", ("attn", "v"): "attn_v", ("attn", "o"): "attn_output",
              ("mlp", "gate"): "ffn_gate", ("mlp", "up"): "ffn_up", ("mlp", "down"): "ffn_down"}


class GGUFBlocks:
    """The raw blocks of a llama GGUF file's projection and embedding tensors, rows in the workbench's
    order (q and k un-permuted as the importer does)."""

    def __init__(self, path: str | Path):
        from workbench.pretrained.gguf_reader import GGUFSource

        self.source = GGUFSource(path)
        self.tensors = {t.name: t for t in self.source.reader.tensors}

    def blocks(self, gguf_name: str) -> tuple[str, np.ndarray]:
        """(format, uint8 [N, K / 32 * bytes]) of a Q4_1 or Q8_0 tensor."""
        from workbench.pretrained.gguf_reader import unpermute_rows

        if gguf_name not in self.tensors:
            raise ValueError(f"{self.source.path.name} has no tensor {gguf_name!r}; is this the model's GGUF file?")
        tensor = self.tensors[gguf_name]
        fmt = tensor.tensor_type.name.lower()
        if fmt not in BLOCK_BYTES:
            raise ValueError(f"{self.source.path.name}: {gguf_name} is {tensor.tensor_type.name}; packed decoding "
                             f"reads {sorted(BLOCK_BYTES)} blocks (use quantize_for_decoding(model, bits=8) instead)")
        data = np.asarray(tensor.data, np.uint8)
        heads = {"attn_q": self.source.hf_config["num_attention_heads"],
                 "attn_k": self.source.hf_config["num_key_value_heads"]}.get(gguf_name.split(".")[-2])
        return fmt, unpermute_rows(data, heads) if heads else data


def _gguf_name(model, parent, name: str, layer) -> str:
    if isinstance(layer, Embedder):
        return "token_embd.weight" if layer.lm_head is None else "output.weight"
    for i, block in enumerate(model.blocks):
        for (owner, attr), gguf in GGUF_NAMES.items():
            if getattr(block, owner) is parent and attr == name:
                return f"blk.{i}.{gguf}.weight"
    raise ValueError(f"no GGUF tensor for the projection {name!r} of {type(parent).__name__}")


def _blocks_of(rows_NxK: np.ndarray, fmt: str) -> np.ndarray:
    import gguf

    return np.asarray(gguf.quants.quantize(rows_NxK, gguf.GGMLQuantizationType[fmt.upper()]), np.uint8)


def pack_gguf_blocks(model: nnx.Module, gguf_path: str | Path) -> nnx.Module:
    """A copy of `model` (a decoder-only model imported from `gguf_path`, or an adapted one on top of it)
    whose projections and output head keep the GGUF's own Q4_1 / Q8_0 blocks. Every packed tensor is
    checked: its dequantized blocks must equal the model's float32 weights bitwise (else ValueError names
    the tensor). Rows the model has beyond the file's (an appended mask token's embedding) are quantized to
    the table's format here."""
    if not model.config.arch_spec.decoder_only:
        raise ValueError(f"pack_gguf_blocks takes a decoder-only model imported from a GGUF; got "
                         f"arch={model.config.arch!r}")
    source = GGUFBlocks(gguf_path)

    def pack(parent, name, layer):
        gguf_name = _gguf_name(new_model, parent, name, layer)
        fmt, blocks = source.blocks(gguf_name)
        want = _weight_NxK(layer)
        extra = want.shape[0] - blocks.shape[0]
        if isinstance(layer, Embedder) and extra > 0:
            blocks = np.concatenate([blocks, _blocks_of(want[blocks.shape[0]:], fmt)])
        got = np.asarray(dequantize_blocks(jnp.asarray(blocks), fmt))
        in_file = want.shape[0] - max(extra, 0)  # rows the file holds (the rest were quantized just above)
        if got.shape != want.shape or not np.array_equal(got[:in_file], want[:in_file]):
            detail = (f"shape {got.shape} vs {want.shape}" if got.shape != want.shape
                      else f"max difference {np.abs(got[:in_file] - want[:in_file]).max():.3g}")
            raise ValueError(f"{gguf_name} in {Path(gguf_path).name} is not this model's "
                             f"{type(parent).__name__}.{name} ({detail}); pack the model that was loaded from this "
                             f"GGUF file")
        return _packed(layer, fmt, blocks)

    new_model = nnx.clone(model)
    changes = [(parent, name, pack(parent, name, layer)) for parent, name, layer in _layers(new_model)]
    for parent, name, packed in changes:
        setattr(parent, name, packed)
    new_model.quantization = "gguf"
    return new_model


def packed_bytes(model: nnx.Module) -> dict[str, int]:
    """Bytes of the packed weights and scales, and of the float state left (norms, adapters, untied input table)."""
    packed = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, Quantized)))
    rest = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Not(Quantized))) if hasattr(x, "nbytes"))
    return {"packed": int(packed), "float": int(rest)}
