"""Decoder-only and encoder-decoder Transformers (pre-norm RMSNorm, rotary, gated MLP, no biases).

Decoder-only sequences are laid out as ``[inputs | targets | padding]``: example b's
inputs fill positions [0, prefix_len[b]) and its targets follow, so prefix-LM masks
take one scalar per example and key padding is a length. The self-attention mask kind
comes from ``config.attention``; it is data, so AR2Diff switches a trained causal model
to bidirectional by changing the config and nothing else.

Both models implement one denoiser interface (`workbench.models.denoiser.Denoiser`), so
losses and samplers never ask which architecture they hold: `target_view(batch)` and
`denoise(batch, tokens)` (training layout), `teacher_forced(batch)` (the AR loss),
`canvas_denoiser(batch, target_len)` (diffusion sampling, with what can be computed once:
the prompt's KV cache or the cross-attention keys/values) and `check_ar_decoding` /
`start_decoding` (KV-cached AR). `DecoderOnly` is also a `CachedRowDenoiser`
(`make_mask`, `init_cache`, `forward_cached`), the one cached forward block decoding
(`workbench.sampling.block_cache`) is built on.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.attention import AttentionMask, mask_for_kind
from workbench.models.config import ModelConfig
from workbench.models.denoiser import CanvasDenoiser
from workbench.models.layers import Attention, GatedMLP, KVCache, RMSNorm, compute_dtype
from workbench.models.lora import Frozen, LoRAParam, current_gate, freeze_base

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

    def __call__(self, x, mask, positions, cache=None, cross_kv=None, cross_mask=None, context=None):
        y, kv = self.attn(self.attn_norm(x), mask, positions, cache=cache, context=context)
        x = x + y
        if self.cross_attn is not None:
            y, _ = self.cross_attn(self.cross_norm(x), cross_mask, positions, cross_kv=cross_kv)
            x = x + y
        return x + self.mlp(self.mlp_norm(x)), kv


def _run_blocks(blocks, x, mask, positions, caches, remat, cross_kvs=None, cross_mask=None, contexts=None):
    new_caches = []
    for i, block in enumerate(blocks):
        cache = None if caches is None else caches[i]
        cross_kv = None if cross_kvs is None else cross_kvs[i]
        context = None if contexts is None else contexts[i]
        if remat:
            x, kv = nnx.remat(lambda b, *a: b(*a))(block, x, mask, positions, cache, cross_kv, cross_mask, context)
        else:
            x, kv = block(x, mask, positions, cache, cross_kv, cross_mask, context)
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


class Embedder(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        self.embedding = nnx.Param(jax.random.normal(rngs.params(), (config.vocab_size, config.d_model), jnp.float32))
        self.lm_head = (
            None
            if config.tie_embeddings
            else nnx.Param(jax.random.normal(rngs.params(), (config.vocab_size, config.d_model), jnp.float32))
        )
        # Adapters: trainable deltas on the (frozen) rows of `lora.trainable_rows`, e.g. a new mask token's.
        rows = () if config.lora is None else config.lora.trainable_rows
        self.row_delta = LoRAParam(jnp.zeros((len(rows), config.d_model), jnp.float32)) if rows else None

    def _row_weights(self, tokens_BxT):
        """[B, T, rows]: 1 where a token is a trained row, times the adapter gate (`adapter_gate`)."""
        ids = jnp.asarray(self.config.lora.trainable_rows, jnp.int32)
        match = (tokens_BxT[..., None] == ids).astype(jnp.float32)
        gate = current_gate()
        return match if gate is None or gate is True else match * jnp.asarray(gate, jnp.float32)[..., None]

    def embed(self, tokens_BxT):
        x = jnp.take(self.embedding[...], tokens_BxT, axis=0)
        if self.row_delta is not None and current_gate() is not False:
            x = x + jnp.einsum("btr,rd->btd", self._row_weights(tokens_BxT), self.row_delta[...])
        return x.astype(compute_dtype(self.config))

    def logits(self, x_BxTxD):
        table = self.embedding if self.lm_head is None else self.lm_head
        w = table[...].astype(x_BxTxD.dtype)
        product = jnp.einsum("btd,vd->btv", x_BxTxD, w, preferred_element_type=jnp.float32)
        return self.finish_logits(x_BxTxD, product, tied=self.lm_head is None)

    def finish_logits(self, x_BxTxD, product_BxTxV, *, tied: bool):
        """The head's product x W^T plus what every head adds: when tied, the trained rows'
        deltas' own logits (under the adapter gate); the 1/sqrt(d) scale for models trained
        with it (not imported ones); float32 for the softmax."""
        logits = product_BxTxV
        gate = current_gate()
        if self.row_delta is not None and tied and gate is not False:
            ids = jnp.asarray(self.config.lora.trainable_rows, jnp.int32)
            extra = jnp.einsum("btd,rd->btr", x_BxTxD, self.row_delta[...].astype(x_BxTxD.dtype),
                               preferred_element_type=jnp.float32)
            if gate is not None and gate is not True:
                extra = extra * jnp.asarray(gate, jnp.float32)[..., None]
            logits = logits.at[..., ids].add(extra)
        return logits * self.config.d_model**-0.5 if self.config.scale_logits else logits


def check_shift_prompt(prefix_len) -> None:
    """shift_targets reads each target from the position before it: refuse an empty prompt
    (checked on concrete values only; callers under jit check before tracing)."""
    if not isinstance(prefix_len, jax.core.Tracer) and bool(np.any(np.asarray(prefix_len) < 1)):
        raise ValueError("shift_targets=True reads each target from the position before it; every example needs "
                         "a prompt of at least one token (prefix_len >= 1), e.g. a bos")


def _shift_right(logits_BxNxV: jax.Array) -> jax.Array:
    """Position i gets the logits of position i - 1 (position 0 keeps its own; `target_view` gives it weight 0)."""
    return jnp.concatenate([logits_BxNxV[:, :1], logits_BxNxV[:, :-1]], axis=1)


def _has_predecessor(shape, segment_ids) -> jax.Array:
    """[B, N] 1.0 where position i - 1 exists and belongs to the same packed sequence."""
    has = jnp.ones(shape, jnp.float32).at[:, 0].set(0.0)
    if segment_ids is not None:
        has = has.at[:, 1:].multiply((segment_ids[:, 1:] == segment_ids[:, :-1]).astype(jnp.float32))
    return has


class DecoderOnly(nnx.Module):
    """The paper's main architecture: one stack over [inputs | targets]."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        if config.arch != "decoder":
            raise ValueError(f"DecoderOnly needs arch='decoder', got {config.arch!r}")
        self.config = config
        self.embedder = Embedder(config, rngs)
        self.blocks = nnx.List([Block(config, rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, compute_dtype(config))
        if config.lora is not None:
            freeze_base(self, config.lora)

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
            block_size=self.config.block_size,
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

    # -- the denoiser interface (the same methods on EncoderDecoder) --------
    def target_view(self, batch) -> tuple[jax.Array, jax.Array]:
        """(clean tokens [B, N], target weights [B, N]) in the layout `denoise` takes: the
        whole ``[inputs | targets | padding]`` row, targets weighted 1. With `shift_targets` a
        target with no position before it in its sequence has weight 0 (nothing predicts it)."""
        weights = batch.target_mask.astype(jnp.float32)
        if self.config.shift_targets:
            weights = weights * _has_predecessor(batch.tokens.shape, batch.segment_ids)
        return batch.tokens, weights

    def denoise(self, batch, tokens_BxN: jax.Array) -> jax.Array:
        """Logits [B, N, V] for every position of `tokens` (the `target_view` layout); with
        `shift_targets` those for token i are the network's output at position i - 1."""
        logits = self(tokens_BxN, prefix_len=batch.prefix_len, lengths=batch.lengths, segment_ids=batch.segment_ids,
                      positions=batch.positions)
        return _shift_right(logits) if self.config.shift_targets else logits

    def teacher_forced(self, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(logits, next-token labels, weights) for the AR loss: each position predicts the next."""
        logits = self(batch.tokens, prefix_len=batch.prefix_len, lengths=batch.lengths, segment_ids=batch.segment_ids,
                      positions=batch.positions)[:, :-1]
        labels = batch.tokens[:, 1:]
        weights = batch.target_mask[:, 1:].astype(jnp.float32)
        if batch.segment_ids is not None:  # never predict across packed-sequence boundaries
            weights = weights * (batch.segment_ids[:, 1:] == batch.segment_ids[:, :-1])
        return logits, labels, weights

    def canvas_denoiser(self, batch, target_len: int, *, prompt_cache: bool = True) -> "CanvasDenoiser":
        """Target logits [B, Tt, V] for a target canvas [B, Tt]; the targets sit at positions
        [prefix_len[b], prefix_len[b] + Tt). Under `prefix_diffusion` attention (and with
        `prompt_cache`) the inputs never see the targets, so their keys and values are
        computed here once and each call runs the Tt target positions only."""
        positions = batch.prefix_len[:, None] + jnp.arange(target_len, dtype=jnp.int32)[None, :]
        shift = self.config.shift_targets
        if shift:
            check_shift_prompt(batch.prefix_len)
        if not (prompt_cache and self.config.attention == "prefix_diffusion"):
            def full(canvas_BxT):
                tokens = jax.vmap(lambda row, pos, vals: row.at[pos].set(vals))(batch.tokens, positions, canvas_BxT)
                return jnp.take_along_axis(self.denoise(batch, tokens), positions[:, :, None], axis=1)

            return full
        size, width = batch.tokens.shape
        full_pos = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (size, width))
        mask = self.make_mask(size, width, prefix_len=batch.prefix_len, lengths=batch.lengths,
                              q_offset=jnp.zeros((size,), jnp.int32))
        prompt_logits, cache = self.forward_cached(batch.tokens, full_pos, mask, self.init_cache(size, width))
        # The targets' queries under prefix_diffusion, offset to the targets' start.
        step_mask = mask_for_kind("prefix_diffusion", prefix_len=batch.prefix_len, kv_lengths=batch.lengths,
                                  q_offset=batch.prefix_len)

        if shift:  # the first target is read from the prompt's last position, which never sees the canvas
            last_BxV = jnp.take_along_axis(prompt_logits, (batch.prefix_len - 1)[:, None, None], axis=1)[:, 0]

        def cached(canvas_BxT):
            logits = self.forward_cached(canvas_BxT, positions, step_mask, cache)[0]
            return jnp.concatenate([last_BxV[:, None], logits[:, :-1]], axis=1) if shift else logits

        return cached

    def block_denoise(self, batch, noisy_BxN: jax.Array) -> jax.Array:
        """Block-diffusion training logits [B, N, V] (the `target_view` layout): each noisy
        target block k sees the prompt, the clean blocks before it and its own noisy block,
        exactly what block decoding (`workbench.sampling.block_cache`) gives block k after clean blocks
        0..k-1 (BD3-LM's objective). Two passes over the row, whatever the number of blocks: the
        clean row under block_causal attention gives every layer's keys and values (gradients
        flow through them), then the whole noisy row attends to [those keys | its own] under a
        draft-stream mask (`AttentionMask.draft_stream`: block k sees the clean keys before it and
        its own noisy block). Prompt positions get the clean pass's logits. With `shift_targets`
        token i is read from position i - 1: inside a block from the noisy stream, at a block's
        first token from the clean pass (as in decoding)."""
        cfg = self.config
        if cfg.attention != "block_causal":
            raise ValueError(f"block_denoise needs attention='block_causal'; this model has {cfg.attention!r}")
        if batch.segment_ids is not None:
            raise ValueError("block-diffusion training takes unpacked [inputs | targets] rows (segment_ids=None); "
                             "build the batch with seq2seq_batch")
        size, width = noisy_BxN.shape
        zeros = jnp.zeros((size,), jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (size, width))
        mask = self.make_mask(size, width, prefix_len=batch.prefix_len, lengths=batch.lengths, q_offset=zeros)
        hidden, contexts = self.hidden_cached(batch.tokens, positions, mask, self.init_cache(size, width))
        clean = self.embedder.logits(hidden)
        stream = AttentionMask.draft_stream(cfg.block_size, prefix_len=batch.prefix_len, q_offset=zeros,
                                            kv_lengths=batch.lengths)
        noisy = self.embedder.logits(self.draft_hidden(noisy_BxN, positions, stream, contexts))
        rel = jnp.arange(width)[None, :] - batch.prefix_len[:, None]  # position within the targets
        logits = jnp.where((rel >= 0)[..., None], noisy, clean)
        if not cfg.shift_targets:
            return logits
        block_start = (rel >= 0) & (jnp.mod(rel, cfg.block_size) == 0)
        return jnp.where(block_start[..., None], _shift_right(clean), _shift_right(logits))

    def check_ar_decoding(self, prompt_width: int, prompt_lengths_B, max_new_tokens: int) -> None:
        """Raise when this model cannot continue these prompts by `max_new_tokens`."""
        cfg = self.config
        if cfg.attention not in ("causal", "prefix_lm"):
            raise ValueError(
                f"AR decoding needs causal or prefix_lm attention; this model has attention={cfg.attention!r} "
                f"(use the diffusion sampler for bidirectional models)"
            )
        if bool(jnp.any(prompt_lengths_B < 1)):
            raise ValueError("every prompt needs at least one token (prompt_lengths >= 1)")
        if prompt_width + max_new_tokens > cfg.max_len:
            raise ValueError(
                f"prompt width {prompt_width} + max_new_tokens {max_new_tokens} exceeds max_len={cfg.max_len}; "
                f"shorten prompts, generate fewer tokens or raise max_len"
            )

    def start_decoding(self, prompts_BxP, prompt_lengths_B, max_new_tokens: int, start_id: int):
        """Run the prompts once into a KV cache. Returns (logits of the first new token [B, V],
        cache, step) where `step(t, token_B, cache) -> (next logits, cache)` feeds new token t."""
        batch, prompt_width = prompts_BxP.shape
        cache = self.init_cache(batch, prompt_width + max_new_tokens)
        zeros = jnp.zeros((batch,), jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(prompt_width, dtype=jnp.int32), (batch, prompt_width))
        mask = self.make_mask(batch, prompt_width, prefix_len=prompt_lengths_B, q_offset=zeros)
        logits, cache = self.forward_cached(prompts_BxP, positions, mask, cache)
        first = jnp.take_along_axis(logits, (prompt_lengths_B - 1)[:, None, None], axis=1)[:, 0]

        def step(t, token, cache):
            pos = prompt_lengths_B + t
            step_mask = self.make_mask(batch, 1, prefix_len=prompt_lengths_B, q_offset=pos)
            logits, cache = self.forward_cached(token[:, None], pos[:, None], step_mask, cache)
            return logits[:, 0], cache

        return first, cache, step

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
        hidden, cache = self.hidden_cached(tokens_BxT, positions_BxT, mask, cache)
        return self.embedder.logits(hidden), cache

    def hidden_cached(self, tokens_BxT, positions_BxT, mask: AttentionMask, cache: list[KVCache]):
        """`forward_cached` before the head: (final-normed hidden states [B, T, D], cache); take
        `embedder.logits` of the rows you need only (the head is a fifth of SmolLM2's FLOPs)."""
        x = self.embedder.embed(tokens_BxT)
        x, cache = _run_blocks(self.blocks, x, mask, positions_BxT, cache, False)
        return self.final_norm(x), cache

    def draft_hidden(self, noisy_BxN, positions_BxN, mask: AttentionMask, contexts: list[KVCache]) -> jax.Array:
        """Final-normed hidden states [B, N, D] of a noisy stream whose queries attend to
        [context | their own stream] under a draft-stream mask (`AttentionMask.draft_stream`):
        `contexts` are the clean row's keys and values per layer (`hidden_cached` of the clean row)."""
        x = self.embedder.embed(noisy_BxN)
        x, _ = _run_blocks(self.blocks, x, mask, positions_BxN, None, self.config.remat, contexts=contexts)
        return self.final_norm(x)


class EncoderDecoder(nnx.Module):
    """Bidirectional encoder over inputs; decoder over targets with cross-attention.

    The decoder's self-attention is `config.attention` ('causal' for AR, 'bidirectional'
    for diffusion); the prefix kinds have no meaning here (ModelConfig rejects them).
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        if config.arch != "encoder_decoder":
            raise ValueError(f"EncoderDecoder needs arch='encoder_decoder', got {config.arch!r}")
        self.config = config
        self.embedder = Embedder(config, rngs)
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
        mask = mask_for_kind("bidirectional", kv_lengths=input_lengths)
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

    # -- the denoiser interface (the same methods on DecoderOnly) -----------
    def target_view(self, batch) -> tuple[jax.Array, jax.Array]:
        """(clean tokens [B, N], target weights [B, N]): the decoder's targets alone."""
        positions = jnp.arange(batch.targets.shape[1])[None, :]
        return batch.targets, (positions < batch.target_lengths[:, None]).astype(jnp.float32)

    def denoise(self, batch, tokens_BxN: jax.Array) -> jax.Array:
        """Decoder logits [B, N, V] for target tokens (the `target_view` layout)."""
        return self(batch.inputs, tokens_BxN, input_lengths=batch.input_lengths, target_lengths=batch.target_lengths)

    def teacher_forced(self, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(logits, labels, weights) for the AR loss: the decoder sees the targets shifted right."""
        start = jnp.zeros_like(batch.targets[:, :1])  # pad id 0 starts the decoder (T5)
        decoder_in = jnp.concatenate([start, batch.targets[:, :-1]], axis=1)
        logits = self(batch.inputs, decoder_in, input_lengths=batch.input_lengths)
        labels, weights = self.target_view(batch)
        return logits, labels, weights

    def canvas_denoiser(self, batch, target_len: int, *, prompt_cache: bool = True) -> "CanvasDenoiser":
        """Target logits [B, Tt, V] for a target canvas [B, Tt]; the encoder and the
        cross-attention keys/values run here once (`prompt_cache` changes nothing)."""
        del target_len, prompt_cache
        cross = self.cross_kv(self.encode(batch.inputs, batch.input_lengths))
        return lambda canvas_BxT: self.decode(canvas_BxT, cross, batch.input_lengths, batch.target_lengths)

    def check_ar_decoding(self, prompt_width: int, prompt_lengths_B, max_new_tokens: int) -> None:
        """Raise when this model cannot decode `max_new_tokens` for these inputs."""
        del prompt_width, prompt_lengths_B
        cfg = self.config
        if cfg.attention != "causal":
            raise ValueError(f"AR decoding needs a causal decoder; this model has attention={cfg.attention!r}")
        if max_new_tokens + 1 > cfg.max_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} exceeds max_len={cfg.max_len} - 1")

    def start_decoding(self, inputs_BxS, input_lengths_B, max_new_tokens: int, start_id: int):
        """Encode once and feed the start token. Returns (logits of the first new token [B, V],
        cache, step) where `step(t, token_B, cache) -> (next logits, cache)` feeds new token t."""
        batch = inputs_BxS.shape[0]
        cross_kvs = self.cross_kv(self.encode(inputs_BxS, input_lengths_B))  # once per input
        cache = self.init_cache(batch, max_new_tokens + 1)

        def run(t, token, cache):
            pos = jnp.full((batch,), t, jnp.int32)
            mask = mask_for_kind("causal", q_offset=pos)  # one causal decoder query
            logits, cache = self.forward_cached(token[:, None], pos[:, None], mask, cache, cross_kvs, input_lengths_B)
            return logits[:, 0], cache

        start = jnp.full((batch,), start_id, jnp.int32)  # decoder start token (T5 convention: pad)
        first, cache = run(0, start, cache)
        return first, cache, lambda t, token, cache: run(t + 1, token, cache)

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


# The model class of each entry of workbench.models.architectures.ARCHITECTURES.
MODEL_CLASSES = {"decoder": DecoderOnly, "encoder_decoder": EncoderDecoder}


def build_model(config: ModelConfig, rngs: nnx.Rngs | int = 0) -> DecoderOnly | EncoderDecoder:
    rngs = nnx.Rngs(rngs) if isinstance(rngs, int) else rngs
    return MODEL_CLASSES[config.arch](config, rngs)


def count_params(model: nnx.Module) -> int:
    """Parameters actually held by a model (compare with `param_count(config)`), frozen base
    weights of an adapted model included (`lora.adapter_summary` splits trainable / frozen)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, (nnx.Param, Frozen))))


def with_config(model: DecoderOnly | EncoderDecoder, **changes) -> DecoderOnly | EncoderDecoder:
    """The same parameters under a config change that keeps every parameter shape (attention,
    max_len, dtype, shift_targets, ...). Returns a new model object sharing no mutable state
    with `model`; its parameters are bitwise equal to `model`'s."""
    config = model.config.replace(**changes)
    _, state = nnx.split(model)
    new = nnx.eval_shape(lambda: build_model(config, 0))
    nnx.update(new, jax.tree.map(lambda x: x, state))
    return new


def with_attention(model: DecoderOnly | EncoderDecoder, attention: str,
                   block_size: Optional[int] = None) -> DecoderOnly | EncoderDecoder:
    """The same parameters under another self-attention mask kind (AR2Diff's switch);
    `block_size` goes with attention='block_causal' only."""
    return with_config(model, attention=attention, block_size=block_size)
