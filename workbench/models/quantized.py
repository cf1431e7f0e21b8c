"""Weight-only int8 decoding on CPU: `quantize_for_decoding(model)` returns a copy of a model
whose projections and output head keep int8 weights and run the C++ kernel
(`workbench.kernels.cpu.int8_matmul`).

Why: batch-1 KV-cached decoding reads every weight once per token, so on a CPU its speed is the
weights' bytes over memory bandwidth, and int8 weights are a quarter of float32's. XLA:CPU has
no fast int8 (or bf16) matrix-vector product, hence the custom call.

What changes: every `nnx.Linear` and the frozen base of every `LoRALinear` (its adapter stays
float32 and still obeys `adapter_gate`, so a drafter adapter runs on top), and the output head
(the tied embedding table [V, D] is already output-major). Each output channel n gets one
float32 scale, max |w[n]| / 127, and q = round(w / scale) in [-127, 127]. A tied table's
input lookup reads the same int8 rows times their scales, so `fake_quantize` (float32
weights equal to the dequantized ones) is the float reference of the same network. Norms,
rotary positions, attention and the KV cache are unchanged (float32). The copy is for
decoding (any sampler that calls the model's forward); it has no gradients.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.kernels.cpu import int8_matmul
from workbench.models.lora import LoRALinear, LoRAParam, add_adapter, current_gate
from workbench.models.transformer import _Embedder

BITS = (8,)


class Quantized(nnx.Variable):
    """Packed int8 weights or their float32 scales: model state, never trained or checkpointed."""


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


class Int8Linear(nnx.Module):
    """y = x @ (q * scale).T (+ bias), q [N, K] int8 kept packed; the float32 kernel is not kept."""

    def __init__(self, kernel_KxN, bias=None, dtype=None):
        q, scale = quantize_int8(np.asarray(kernel_KxN, np.float32).T)
        self.weight = Quantized(jnp.asarray(q))
        self.scale = Quantized(jnp.asarray(scale))
        self.bias = None if bias is None else Quantized(jnp.asarray(bias, jnp.float32))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = int8_matmul(x, self.weight[...], self.scale[...])
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(dtype)

    def dequantized_kernel(self) -> jax.Array:
        """The float32 kernel [K, N] (nnx.Linear's layout) this layer computes with."""
        return dequantize_int8(self.weight[...], self.scale[...]).T


class Int8LoRALinear(Int8Linear):
    """`LoRALinear` on an int8 base: y = x @ base (+ bias) + gate * scale * (x @ A) @ B, A and B float32."""

    def __init__(self, layer: LoRALinear):
        super().__init__(layer.kernel[...], None if layer.bias is None else layer.bias[...], layer.dtype)
        self.lora_a = LoRAParam(layer.lora_a[...])
        self.lora_b = LoRAParam(layer.lora_b[...])
        self.lora_scale = layer.scale

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        return add_adapter(super().__call__(x), x, self.lora_a[...], self.lora_b[...], self.lora_scale, self.dtype)


class Int8Embedder(_Embedder):
    """The embedder with an int8 output head (the tied table, or the untied `lm_head`). A tied table's
    input lookup dequantizes the rows it reads; an untied model keeps its float32 input table."""

    def __init__(self, embedder: _Embedder):
        self.config = embedder.config
        self.tied = embedder.lm_head is None
        table = embedder.embedding[...] if self.tied else embedder.lm_head[...]
        q, scale = quantize_int8(table)
        self.head = Quantized(jnp.asarray(q))
        self.head_scale = Quantized(jnp.asarray(scale))
        self.embedding = None if self.tied else embedder.embedding
        self.lm_head = None
        self.row_delta = embedder.row_delta

    def embed(self, tokens_BxT):
        if self.tied:
            x = jnp.take(self.head[...], tokens_BxT, axis=0).astype(jnp.float32)
            x = x * jnp.take(self.head_scale[...], tokens_BxT, axis=0)[..., None]
        else:
            x = jnp.take(self.embedding[...], tokens_BxT, axis=0)
        if self.row_delta is not None and current_gate() is not False:
            x = x + jnp.einsum("btr,rd->btd", self._row_weights(tokens_BxT), self.row_delta[...])
        return x.astype(self.config.dtype)

    def logits(self, x_BxTxD):
        logits = int8_matmul(x_BxTxD, self.head[...], self.head_scale[...])
        gate = current_gate()
        if self.row_delta is not None and self.tied and gate is not False:  # as `_Embedder.logits`
            ids = jnp.asarray(self.config.lora.trainable_rows, jnp.int32)
            extra = jnp.einsum("btd,rd->btr", x_BxTxD, self.row_delta[...].astype(x_BxTxD.dtype),
                               preferred_element_type=jnp.float32)
            if gate is not None and gate is not True:
                extra = extra * jnp.asarray(gate, jnp.float32)[..., None]
            logits = logits.at[..., ids].add(extra)
        return logits * self.config.d_model**-0.5 if self.config.scale_logits else logits


def _int8_layer(layer):
    if isinstance(layer, LoRALinear):
        return Int8LoRALinear(layer)
    if isinstance(layer, nnx.Linear):
        return Int8Linear(layer.kernel[...], None if layer.bias is None else layer.bias[...], layer.dtype)
    if isinstance(layer, _Embedder):
        return Int8Embedder(layer)
    return None


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits={bits}; expected one of {BITS} (weight-only int8 per output channel)")


def quantize_for_decoding(model: nnx.Module, bits: int = 8) -> nnx.Module:
    """A copy of `model` (decoder-only or encoder-decoder, adapters included) whose projections and output
    head hold int8 weights (see the module docstring); `model` is untouched. The kernel takes and returns
    float32 (other compute dtypes are cast around it). CPU only: the layers call an
    XLA:CPU custom call, built by `make cpu-kernels` (`make env` builds it)."""
    _check_bits(bits)
    new = nnx.clone(model)
    changes = []
    for _, node in nnx.iter_graph(new):
        if isinstance(node, nnx.Module):
            for name, value in vars(node).items():
                replacement = _int8_layer(value) if isinstance(value, nnx.Module) else None
                if replacement is not None:
                    changes.append((node, name, replacement))
    if not changes:
        raise ValueError(f"quantize_for_decoding: {type(model).__name__} has no nnx.Linear, LoRALinear or embedder "
                         "to quantize")
    for node, name, replacement in changes:
        setattr(node, name, replacement)
    new.quantization = f"int{bits}"
    return new


def fake_quantize(model: nnx.Module, bits: int = 8) -> nnx.Module:
    """A float32 copy of `model` whose quantized weights (those `quantize_for_decoding` packs) are replaced
    by their dequantized values: the same network as the int8 copy, computed by XLA's float32 dots."""
    _check_bits(bits)
    new = nnx.clone(model)
    for _, node in nnx.iter_graph(new):
        if isinstance(node, (nnx.Linear, LoRALinear)):
            node.kernel.set_value(dequantize_int8(*quantize_int8(np.asarray(node.kernel[...]).T)).T)
        elif isinstance(node, _Embedder):
            table = node.embedding if node.lm_head is None else node.lm_head
            table.set_value(dequantize_int8(*quantize_int8(table[...])))
    return new


def quantized_bytes(model: nnx.Module) -> dict[str, int]:
    """Bytes of the packed weights and scales, and of the float state left (norms, adapters, untied input table)."""
    packed = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, Quantized)))
    rest = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Not(Quantized))) if hasattr(x, "nbytes"))
    return {"packed": int(packed), "float": int(rest)}


def is_quantized(model: nnx.Module) -> Optional[str]:
    """'int8' for a `quantize_for_decoding` copy, else None."""
    return getattr(model, "quantization", None)
