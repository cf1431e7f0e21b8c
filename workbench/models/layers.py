"""Transformer building blocks in Flax NNX: RMSNorm, rotary embeddings, gated MLP, attention.

Parameters are float32; activations run in the config's compute dtype. Attention layers
return their keys/values so decoders can keep a KV cache as plain arrays (see
`workbench.sampling.ar`).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from workbench.attention import AttentionMask, attention  # also registers the Pallas kernels
from workbench.models.config import ModelConfig, RopeScaling
from workbench.models.lora import HF_NAMES, LoRALinear

KVCache = dict[str, jax.Array]  # {"k": [B,S,Hkv,D], "v": [B,S,Hkv,D]}


def compute_dtype(config: ModelConfig):
    return jnp.dtype(config.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        x32 = x_BxTxD.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...]).astype(self.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None) -> jax.Array:
    """Inverse frequencies [head_dim/2] of the rotary pairs, with Llama 3.1 scaling if given."""
    freqs = theta ** (-jnp.arange(0, head_dim // 2, dtype=jnp.float32) * 2.0 / head_dim)
    if scaling is None:
        return freqs
    wavelen = 2 * jnp.pi / freqs
    low_freq_wavelen = scaling.original_max_len / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_len / scaling.high_freq_factor
    smooth = (scaling.original_max_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    between = (1 - smooth) * freqs / scaling.factor + smooth * freqs
    scaled = jnp.where(wavelen > low_freq_wavelen, freqs / scaling.factor, freqs)
    return jnp.where((wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen), between, scaled)


def rotary(
    x_BxTxHxD: jax.Array, positions_BxT: jax.Array, theta: float, scaling: Optional[RopeScaling] = None
) -> jax.Array:
    """Rotary position embedding (half-split convention, as Hugging Face Llama), in float32."""
    head_dim = x_BxTxHxD.shape[-1]
    freqs = rope_frequencies(head_dim, theta, scaling)
    angles = positions_BxT.astype(jnp.float32)[:, :, None, None] * freqs  # [B,T,1,D/2]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x_BxTxHxD.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxD.dtype)


def _dense(d_in: int, d_out: int, config: ModelConfig, rngs: nnx.Rngs, std: float, bias: bool = False,
           name: str = "") -> nnx.Module:
    """A projection; a `LoRALinear` when the config's adapters target `name` (`lora.HF_NAMES`)."""
    if config.lora is not None and HF_NAMES.get(name) in config.lora.targets:
        return LoRALinear(d_in, d_out, rank=config.lora.rank, scale=config.lora.scale, dtype=compute_dtype(config),
                          bias=bias, std=std, rngs=rngs)
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=bias,
        dtype=compute_dtype(config),
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(std),
        rngs=rngs,
    )


class GatedMLP(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        d, f = config.d_model, config.d_ff
        self.gate = _dense(d, f, config, rngs, d**-0.5, name="gate")
        self.up = _dense(d, f, config, rngs, d**-0.5, name="up")
        self.down = _dense(f, d, config, rngs, (f * 2 * config.num_layers) ** -0.5, name="down")

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        return self.down(jax.nn.silu(self.gate(x_BxTxD)) * self.up(x_BxTxD))


class Attention(nnx.Module):
    """Multi-head / grouped-query attention; self-attention uses rotary positions."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, *, cross: bool = False):
        d, hd = config.d_model, config.head_dim
        self.config = config
        self.cross = cross
        bias = config.qkv_bias
        self.q = _dense(d, config.num_heads * hd, config, rngs, d**-0.5, bias, name="q")
        self.k = _dense(d, config.kv_heads * hd, config, rngs, d**-0.5, bias, name="k")
        self.v = _dense(d, config.kv_heads * hd, config, rngs, d**-0.5, bias, name="v")
        self.o = _dense(config.num_heads * hd, d, config, rngs, (config.num_heads * hd * 2 * config.num_layers) ** -0.5, name="o")
        # Qwen3: per-head RMSNorm of queries and keys (before rotary), one scale shared by all heads
        self.q_norm = RMSNorm(hd, config.norm_eps, compute_dtype(config)) if config.qk_norm else None
        self.k_norm = RMSNorm(hd, config.norm_eps, compute_dtype(config)) if config.qk_norm else None

    def project_kv(self, x_BxSxD: jax.Array, positions_BxS: Optional[jax.Array]) -> KVCache:
        batch, length, _ = x_BxSxD.shape
        cfg = self.config
        k = self.k(x_BxSxD).reshape(batch, length, cfg.kv_heads, cfg.head_dim)
        v = self.v(x_BxSxD).reshape(batch, length, cfg.kv_heads, cfg.head_dim)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if not self.cross:
            k = rotary(k, positions_BxS, cfg.rope_theta, cfg.rope_scaling)
        return {"k": k, "v": v}

    def __call__(
        self,
        x_BxTxD: jax.Array,
        mask: AttentionMask,
        positions_BxT: jax.Array,
        *,
        cache: Optional[KVCache] = None,
        cross_kv: Optional[KVCache] = None,
        context: Optional[KVCache] = None,
    ) -> tuple[jax.Array, KVCache]:
        """Self-attention over x (or, with `cache`, over a KV cache into which x's keys and
        values are first written at `positions_BxT[:, 0]`; or, with `context`, over
        [context | x's own keys and values], as a draft-stream mask lays them out), or
        cross-attention to `cross_kv`.

        Returns (output, the keys/values attended to)."""
        batch, length, _ = x_BxTxD.shape
        cfg = self.config
        q = self.q(x_BxTxD).reshape(batch, length, cfg.num_heads, cfg.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.cross:
            if cross_kv is None:
                raise ValueError("cross-attention needs cross_kv (see EncoderDecoder.cross_kv)")
            kv = cross_kv
        else:
            q = rotary(q, positions_BxT, cfg.rope_theta, cfg.rope_scaling)
            kv = self.project_kv(x_BxTxD, positions_BxT)
            if cache is not None:
                kv = {name: write_at(cache[name], kv[name], positions_BxT[:, 0]) for name in ("k", "v")}
            elif context is not None:
                kv = {name: jnp.concatenate([context[name].astype(kv[name].dtype), kv[name]], axis=1)
                      for name in ("k", "v")}
        out = attention(q, kv["k"].astype(q.dtype), kv["v"].astype(q.dtype), mask, impl=cfg.attention_impl)
        return self.o(out.reshape(batch, length, cfg.num_heads * cfg.head_dim)), kv


def write_at(buffer_BxSxHxD: jax.Array, new_BxTxHxD: jax.Array, offset_B: jax.Array) -> jax.Array:
    """Write each example's new rows into its cache buffer at its own offset."""
    new = new_BxTxHxD.astype(buffer_BxSxHxD.dtype)
    return jax.vmap(lambda buf, rows, at: jax.lax.dynamic_update_slice(buf, rows, (at, 0, 0)))(
        buffer_BxSxHxD, new, offset_B
    )
