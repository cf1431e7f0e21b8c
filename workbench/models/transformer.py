"""Decoder-only and encoder-decoder Transformers (pre-norm RMSNorm, rotary, gated MLP, no biases).

Decoder-only sequences are laid out as ``[inputs | targets | padding]``: example b's
inputs fill positions [0, prefix_len[b]) and its targets follow, so prefix-LM masks
take one scalar per example and key padding is a length. The self-attention mask kind
comes from ``config.attention``; it is data, so AR2Diff switches a trained causal model
to bidirectional by changing the config and nothing else.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.attention import AttentionMask, mask_for_kind
from workbench.models.config import ModelConfig
from workbench.models.layers import Attention, GatedMLP, KVCache, RMSNorm, compute_dtype


class Block(nnx.Module):
    """Pre-norm block: self-attention, optional cross-attention, gated MLP."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs, *, cross: bool = False):
        dtype = compute_dtype(config)
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps, dtype)
        self.attn = Attention(config, rngs)
        self.cross_norm = RMSNorm(config.d_model, config.norm_eps, dtype) if cross else None
        self.cross_attn = Attention(config, rngs, cross=True) if cross else None
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps, dtype)
        self.mlp = GatedMLP(config, rngs)

    def __call__(self, x, mask, positions, cache=None, cross_kv=None, cross_mask=None):
        y, kv = self.attn(self.attn_norm(x), mask, positions, cache=cache)
        x = x + y
        if self.cross_attn is not None:
            y, _ = self.cross_attn(self.cross_norm(x), cross_mask, positions, cross_kv=cross_kv)
            x = x + y
        return x + self.mlp(self.mlp_norm(x)), kv


def _run_blocks(blocks, x, mask, positions, caches, remat, cross_kvs=None, cross_mask=None):
    new_caches = []
    for i, block in enumerate(blocks):
        cache = None if caches is None else caches[i]
        cross_kv = None if cross_kvs is None else cross_kvs[i]
        if remat:
            x, kv = nnx.remat(lambda b, *a: b(*a))(block, x, mask, positions, cache, cross_kv, cross_mask)
        else:
            x, kv = block(x, mask, positions, cache, cross_kv, cross_mask)
        new_caches.append(kv)
    return x, new_caches


def _is_concrete(x) -> bool:
    """A value whose contents this process can read (not traced, not spread over hosts)."""
    return x is not None and not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


def check_lengths(name: str, values, limit: int, what: str) -> None:
    """Raise when concrete per-example lengths exceed `limit` (skipped under tracing)."""
    if not _is_concrete(values):
        return
    values = np.asarray(values)
    bad = np.nonzero((values > limit) | (values < 0))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}={int(values[i])} for example {i} is outside [0, {limit}] ({what}); "
            f"shorten the inputs or raise the limit"
        )


class _Embedder(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        self.embedding = nnx.Param(jax.random.normal(rngs.params(), (config.vocab_size, config.d_model), jnp.float32))
        self.lm_head = (
            None
            if config.tie_embeddings
            else nnx.Param(jax.random.normal(rngs.params(), (config.vocab_size, config.d_model), jnp.float32))
        )

    def embed(self, tokens_BxT):
        return jnp.take(self.embedding[...], tokens_BxT, axis=0).astype(compute_dtype(self.config))

    def logits(self, x_BxTxD):
        table = self.embedding if self.lm_head is None else self.lm_head
        # Scaled by 1/sqrt(d) so unit-variance embeddings give O(1) logits (not for imported
        # models, trained without it); float32 for the softmax.
        w = table[...].astype(x_BxTxD.dtype)
        logits = jnp.einsum("btd,vd->btv", x_BxTxD, w, preferred_element_type=jnp.float32)
        return logits * self.config.d_model**-0.5 if self.config.scale_logits else logits


class DecoderOnly(nnx.Module):
    """The paper's main architecture: one stack over [inputs | targets]."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        if config.arch != "decoder":
            raise ValueError(f"DecoderOnly needs arch='decoder', got {config.arch!r}")
        self.config = config
        self.embedder = _Embedder(config, rngs)
        self.blocks = nnx.List([Block(config, rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, compute_dtype(config))

    def make_mask(
        self,
        batch: int,
        seq_len: int,
        *,
        prefix_len=None,
        lengths=None,
        segment_ids=None,
        q_offset=None,
        q_segment_ids=None,
    ) -> AttentionMask:
        """The self-attention mask of `config.attention` (prefix_len is ignored by the
        non-prefix kinds, so one batch format serves every mask)."""
        check_lengths("prefix_len", prefix_len, seq_len, f"sequence length {seq_len}")
        check_lengths("lengths", lengths, seq_len, f"sequence length {seq_len}")
        return mask_for_kind(
            self.config.attention,
            prefix_len=prefix_len,
            kv_lengths=lengths,
            q_segment_ids=segment_ids if q_segment_ids is None else q_segment_ids,
            kv_segment_ids=segment_ids,
            q_offset=q_offset,
        )

    def __call__(
        self,
        tokens_BxT: jax.Array,
        *,
        prefix_len: Optional[jax.Array] = None,
        lengths: Optional[jax.Array] = None,
        segment_ids: Optional[jax.Array] = None,
        positions: Optional[jax.Array] = None,
    ) -> jax.Array:
        """Logits [B, T, V] in float32."""
        batch, seq_len = tokens_BxT.shape
        if seq_len > self.config.max_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_len={self.config.max_len}; raise max_len in "
                f"the ModelConfig or truncate the inputs"
            )
        mask = self.make_mask(batch, seq_len, prefix_len=prefix_len, lengths=lengths, segment_ids=segment_ids)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
        x = self.embedder.embed(tokens_BxT)
        x, _ = _run_blocks(self.blocks, x, mask, positions, None, self.config.remat)
        return self.embedder.logits(self.final_norm(x))

    # -- cached forward (AR decoding, prefix-cached diffusion) --------------
    def init_cache(self, batch: int, cache_len: int) -> list[KVCache]:
        cfg = self.config
        shape = (batch, cache_len, cfg.kv_heads, cfg.head_dim)
        dtype = compute_dtype(cfg)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)]

    def forward_cached(
        self, tokens_BxT: jax.Array, positions_BxT: jax.Array, mask: AttentionMask, cache: list[KVCache]
    ) -> tuple[jax.Array, list[KVCache]]:
        """Run `tokens` at absolute `positions` (contiguous per example), writing their keys
        and values into `cache` at those positions and attending to the whole cache under `mask`
        (whose q_offset must be positions[:, 0]). Returns (logits, updated cache)."""
        x = self.embedder.embed(tokens_BxT)
        x, cache = _run_blocks(self.blocks, x, mask, positions_BxT, cache, False)
        return self.embedder.logits(self.final_norm(x)), cache


class EncoderDecoder(nnx.Module):
    """Bidirectional encoder over inputs; decoder over targets with cross-attention.

    The decoder's self-attention is `config.attention` ('causal' for AR, 'bidirectional'
    for diffusion); the prefix kinds have no meaning here and are rejected.
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        if config.arch != "encoder_decoder":
            raise ValueError(f"EncoderDecoder needs arch='encoder_decoder', got {config.arch!r}")
        if config.attention not in ("causal", "bidirectional"):
            raise ValueError(
                f"encoder-decoder decoders take attention 'causal' or 'bidirectional', got "
                f"{config.attention!r} (the encoder already sees the inputs bidirectionally)"
            )
        self.config = config
        self.embedder = _Embedder(config, rngs)
        self.encoder = nnx.List([Block(config, rngs) for _ in range(config.encoder_layers)])
        self.encoder_norm = RMSNorm(config.d_model, config.norm_eps, compute_dtype(config))
        self.decoder = nnx.List([Block(config, rngs, cross=True) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, compute_dtype(config))

    def _check_len(self, name: str, length: int) -> None:
        if length > self.config.max_len:
            raise ValueError(
                f"{name} length {length} exceeds max_len={self.config.max_len}; raise max_len in the "
                f"ModelConfig or truncate"
            )

    def encode(self, inputs_BxS: jax.Array, input_lengths: Optional[jax.Array] = None) -> jax.Array:
        batch, src_len = inputs_BxS.shape
        self._check_len("input", src_len)
        check_lengths("input_lengths", input_lengths, src_len, f"input length {src_len}")
        mask = AttentionMask(causal=False, kv_lengths=None if input_lengths is None else jnp.asarray(input_lengths, jnp.int32))
        positions = jnp.broadcast_to(jnp.arange(src_len, dtype=jnp.int32), (batch, src_len))
        x, _ = _run_blocks(self.encoder, self.embedder.embed(inputs_BxS), mask, positions, None, self.config.remat)
        return self.encoder_norm(x)

    def cross_kv(self, encoded_BxSxD: jax.Array) -> list[KVCache]:
        """Cross-attention keys/values of every decoder layer, computed once per input."""
        return [block.cross_attn.project_kv(encoded_BxSxD, None) for block in self.decoder]

    def _self_mask(self, target_lengths=None, q_offset=None) -> AttentionMask:
        kind = "causal" if self.config.attention == "causal" else "bidirectional"
        return mask_for_kind(kind, kv_lengths=target_lengths, q_offset=q_offset)

    @staticmethod
    def _cross_mask(input_lengths) -> AttentionMask:
        return mask_for_kind("bidirectional", kv_lengths=input_lengths)

    def decode(
        self,
        targets_BxT: jax.Array,
        cross_kvs: list[KVCache],
        input_lengths: Optional[jax.Array] = None,
        target_lengths: Optional[jax.Array] = None,
    ) -> jax.Array:
        batch, tgt_len = targets_BxT.shape
        self._check_len("target", tgt_len)
        positions = jnp.broadcast_to(jnp.arange(tgt_len, dtype=jnp.int32), (batch, tgt_len))
        x, _ = _run_blocks(
            self.decoder, self.embedder.embed(targets_BxT), self._self_mask(target_lengths), positions, None,
            self.config.remat, cross_kvs, self._cross_mask(input_lengths),
        )
        return self.embedder.logits(self.final_norm(x))

    def __call__(
        self,
        inputs_BxS: jax.Array,
        targets_BxT: jax.Array,
        *,
        input_lengths: Optional[jax.Array] = None,
        target_lengths: Optional[jax.Array] = None,
    ) -> jax.Array:
        """Decoder logits [B, T, V] (float32). Targets are fed as given: shift them for AR."""
        encoded = self.encode(inputs_BxS, input_lengths)
        return self.decode(targets_BxT, self.cross_kv(encoded), input_lengths, target_lengths)

    def init_cache(self, batch: int, cache_len: int) -> list[KVCache]:
        cfg = self.config
        shape = (batch, cache_len, cfg.kv_heads, cfg.head_dim)
        dtype = compute_dtype(cfg)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)]

    def forward_cached(self, tokens_BxT, positions_BxT, mask, cache, cross_kvs, input_lengths):
        x = self.embedder.embed(tokens_BxT)
        x, cache = _run_blocks(
            self.decoder, x, mask, positions_BxT, cache, False, cross_kvs, self._cross_mask(input_lengths)
        )
        return self.embedder.logits(self.final_norm(x)), cache


def build_model(config: ModelConfig, rngs: nnx.Rngs | int = 0) -> DecoderOnly | EncoderDecoder:
    rngs = nnx.Rngs(rngs) if isinstance(rngs, int) else rngs
    return DecoderOnly(config, rngs) if config.arch == "decoder" else EncoderDecoder(config, rngs)


def count_params(model: nnx.Module) -> int:
    """Parameters actually held by a model (compare with `param_count(config)`)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def with_attention(model: DecoderOnly | EncoderDecoder, attention: str) -> DecoderOnly | EncoderDecoder:
    """The same parameters under another self-attention mask kind (AR2Diff's switch).

    Returns a new model object sharing no mutable state with `model`; its parameters are
    bitwise equal to `model`'s.
    """
    config = model.config.replace(attention=attention)
    graphdef, state = nnx.split(model)
    new = nnx.eval_shape(lambda: build_model(config, 0))
    nnx.update(new, jax.tree.map(lambda x: x, state))
    return new
