"""The one mask description every attention implementation takes.

A query at absolute position i may attend to a key at position j when all of these hold:

* prefix/causal rule:  j < prefix_len  or  (i >= prefix_len and rule(i, j))
* key padding:         j < kv_lengths[b]
* packing:             q_segment_ids[b, i] == kv_segment_ids[b, j]

where rule(i, j) is ``True`` (bidirectional), ``j <= i`` (causal) or, with a
``block_size``, ``j >= prefix_len and block(j) <= block(i)`` with
``block(p) = (p - prefix_len) // block_size`` (block-causal: bidirectional within a
block, causal across blocks). The familiar masks are settings of these fields:

=====================  ========  ==============  ==========  =============================
mask kind              causal    prefix_len      block_size  who sees what
=====================  ========  ==============  ==========  =============================
causal                 True      None (0)        None        key j <= query i
prefix_lm (AR)         True      per example     None        prefix for all; causal after
bidirectional          False     None (0)        None        every key
prefix_diffusion       False     per example     None        inputs see inputs; targets all
block_causal           False     optional        b           prefix for all; queries in the
                                                             prefix see only it; a query
                                                             after it sees its own block
                                                             and every earlier block
=====================  ========  ==============  ==========  =============================

Positions are absolute: queries sit at ``q_offset + arange(Tq)`` (``q_offset`` is
nonzero only when decoding against a KV cache, and may be negative), keys at
``arange(Tk)``; block numbers are counted from ``prefix_len`` in these absolute
positions. ``block_size`` must be a positive int and is static (it picks the kernels'
tile schedule); ``causal=True`` together with a ``block_size`` is refused. Key padding and
segment ids combine with every kind. Because the mask is data, the same parameters serve
an AR model and, after AR2Diff, a diffusion model.

A *draft-stream* mask (``draft_block=b``, `AttentionMask.draft_stream`) trains a block drafter on
top of a causal model in one pass: the queries are a noisy copy of the target region, the keys
are ``[context (Tk - Tq keys at positions 0..) | the queries' own stream]``. A noisy query in
block k (blocks of b counted from ``prefix_len``) sees the context (the clean row's causal keys)
strictly before its block and its own block's noisy keys, which is exactly what a drafter
decoding block k after blocks 0..k-1 were committed by the causal model sees (queries inside
the prefix see the context causally). Only the dense reference computes it.

`AttentionMask.features` names the parts of this description a mask uses; every
attention implementation declares the features it computes, and dispatch never hands a
mask to one that does not declare all of its features (see `workbench.attention.dispatch`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

MASK_KINDS = ("causal", "prefix_lm", "bidirectional", "prefix_diffusion", "block_causal")

# The features a mask can use (`AttentionMask.features`); implementations declare a subset.
CAUSAL = "causal"
PREFIX = "prefix"
KEY_PADDING = "key_padding"
SEGMENTS = "segments"
Q_OFFSET = "q_offset"
BLOCK_CAUSAL = "block_causal"
DRAFT_STREAM = "draft_stream"
MASK_FEATURES = frozenset({CAUSAL, PREFIX, KEY_PADDING, SEGMENTS, Q_OFFSET, BLOCK_CAUSAL, DRAFT_STREAM})

_PREFIX_KINDS = ("prefix_lm", "prefix_diffusion")


def _as_int32(value) -> Optional[jax.Array]:
    return None if value is None else jnp.asarray(value, jnp.int32)


@struct.dataclass
class AttentionMask:
    """Mask description; a pytree whose ``causal`` flag and ``block_size`` are static."""

    causal: bool = struct.field(pytree_node=False, default=True)
    prefix_len: Optional[jax.Array] = None  # [B] int32
    kv_lengths: Optional[jax.Array] = None  # [B] int32: keys at j >= length are padding
    q_segment_ids: Optional[jax.Array] = None  # [B, Tq] int32
    kv_segment_ids: Optional[jax.Array] = None  # [B, Tk] int32
    q_offset: Optional[jax.Array] = None  # [B] int32 absolute position of query 0
    block_size: Optional[int] = struct.field(pytree_node=False, default=None)  # block-causal blocks
    draft_block: Optional[int] = struct.field(pytree_node=False, default=None)  # draft-stream blocks

    def __post_init__(self):
        draft = self.draft_block
        if draft is not None:
            if isinstance(draft, bool) or not isinstance(draft, int) or draft < 1:
                raise ValueError(f"AttentionMask.draft_block={draft!r}: expected a positive int (tokens per "
                                 f"drafted block), or None")
            if self.causal or self.block_size is not None or self.q_segment_ids is not None:
                raise ValueError("a draft-stream mask (draft_block) is its own rule: build it with "
                                 "AttentionMask.draft_stream(...) (causal=False, no block_size, no segment ids)")
        size = self.block_size
        if size is None:
            return
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"AttentionMask.block_size={size!r}: expected a positive int (tokens per "
                             f"block of a block-causal mask), or None for no blocks")
        if self.causal:
            raise ValueError(f"AttentionMask(causal=True, block_size={size}): a block-causal mask is its own "
                             f"rule (bidirectional within a block, causal across blocks); pass causal=False, "
                             f"or build it with mask_for_kind('block_causal', block_size={size})")

    # -- constructors -----------------------------------------------------
    @classmethod
    def causal_mask(cls, **kw) -> "AttentionMask":
        return cls(causal=True, **kw)

    @classmethod
    def bidirectional(cls, **kw) -> "AttentionMask":
        return cls(causal=False, **kw)

    @classmethod
    def prefix_lm(cls, prefix_len, **kw) -> "AttentionMask":
        return cls(causal=True, prefix_len=jnp.asarray(prefix_len, jnp.int32), **kw)

    @classmethod
    def prefix_diffusion(cls, prefix_len, **kw) -> "AttentionMask":
        return cls(causal=False, prefix_len=jnp.asarray(prefix_len, jnp.int32), **kw)

    @classmethod
    def block_causal(cls, block_size: int, prefix_len=None, **kw) -> "AttentionMask":
        return cls(causal=False, block_size=block_size, prefix_len=_as_int32(prefix_len), **kw)

    @classmethod
    def draft_stream(cls, draft_block: int, prefix_len, q_offset, kv_lengths=None) -> "AttentionMask":
        """Noisy target queries at `q_offset + arange(Tq)` over [clean context | own stream] keys."""
        return cls(causal=False, draft_block=draft_block, prefix_len=_as_int32(prefix_len),
                   q_offset=_as_int32(q_offset), kv_lengths=_as_int32(kv_lengths))

    # -- description ------------------------------------------------------
    @property
    def kind(self) -> str:
        if self.draft_block is not None:
            return "draft_stream"
        if self.block_size is not None:
            return "block_causal"
        if self.prefix_len is None:
            return "causal" if self.causal else "bidirectional"
        return "prefix_lm" if self.causal else "prefix_diffusion"

    @property
    def features(self) -> frozenset[str]:
        """The parts of the mask description this mask uses (a subset of `MASK_FEATURES`)."""
        used = {
            CAUSAL: self.causal,
            BLOCK_CAUSAL: self.block_size is not None,
            PREFIX: self.prefix_len is not None,
            KEY_PADDING: self.kv_lengths is not None,
            SEGMENTS: self.has_segments,
            Q_OFFSET: self.q_offset is not None,
            DRAFT_STREAM: self.draft_block is not None,
        }
        return frozenset(name for name, on in used.items() if on)

    @property
    def has_segments(self) -> bool:
        return self.q_segment_ids is not None

    def replace(self, **kw) -> "AttentionMask":
        return dataclasses.replace(self, **kw)

    def validate(self, batch: int, q_len: int, kv_len: int) -> None:
        """Raise a ValueError naming the offending field if shapes do not fit."""
        for name in ("prefix_len", "kv_lengths", "q_offset"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (batch,):
                raise ValueError(
                    f"mask.{name} has shape {tuple(value.shape)}; expected ({batch},), one entry per "
                    f"example. Pass one int per example in the batch."
                )
        if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
            raise ValueError("mask needs both q_segment_ids and kv_segment_ids, or neither")
        for name, length in (("q_segment_ids", q_len), ("kv_segment_ids", kv_len)):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (batch, length):
                raise ValueError(
                    f"mask.{name} has shape {tuple(value.shape)}; expected ({batch}, {length}) "
                    f"to match the {'query' if name[0] == 'q' else 'key'} sequence"
                )

    # -- dense form (reference, tests, small shapes only) -------------------
    def dense(self, batch: int, q_len: int, kv_len: int) -> jax.Array:
        """Boolean [B, Tq, Tk] mask; True where attention is allowed."""
        self.validate(batch, q_len, kv_len)
        if self.draft_block is not None:
            return self._draft_dense(batch, q_len, kv_len)
        offset = jnp.zeros((batch,), jnp.int32) if self.q_offset is None else self.q_offset
        q_pos = offset[:, None] + jnp.arange(q_len, dtype=jnp.int32)[None, :]  # [B, Tq]
        k_pos = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :]  # [1, 1, Tk]
        q_pos = q_pos[:, :, None]
        prefix = (
            jnp.zeros((batch,), jnp.int32) if self.prefix_len is None else self.prefix_len
        )[:, None, None]
        after_prefix = q_pos >= prefix
        if self.causal:
            after_prefix = after_prefix & (k_pos <= q_pos)
        if self.block_size is not None:  # floor division; keys before the prefix pass anyway
            after_prefix = after_prefix & ((k_pos - prefix) // self.block_size <= (q_pos - prefix) // self.block_size)
        allowed = (k_pos < prefix) | after_prefix
        if self.kv_lengths is not None:
            allowed = allowed & (k_pos < self.kv_lengths[:, None, None])
        if self.q_segment_ids is not None:
            allowed = allowed & (self.q_segment_ids[:, :, None] == self.kv_segment_ids[:, None, :])
        return allowed

    def _draft_dense(self, batch: int, q_len: int, kv_len: int) -> jax.Array:
        context = kv_len - q_len
        if context < 0:
            raise ValueError(f"a draft-stream mask needs the context's keys before the queries' own: {kv_len} keys "
                             f"for {q_len} queries")
        offset = jnp.zeros((batch,), jnp.int32) if self.q_offset is None else self.q_offset
        prefix = (jnp.zeros((batch,), jnp.int32) if self.prefix_len is None else self.prefix_len)[:, None, None]
        q_pos = (offset[:, None] + jnp.arange(q_len, dtype=jnp.int32)[None, :])[:, :, None]  # [B, Tq, 1]
        block = lambda p: (p - prefix) // self.draft_block
        c_pos = jnp.arange(context, dtype=jnp.int32)[None, None, :]
        sees_context = (c_pos <= q_pos) & ((q_pos < prefix) | (block(c_pos) < block(q_pos)))
        o_pos = q_pos[:, :, 0][:, None, :]  # [B, 1, Tq]: the own stream's keys sit at the queries' positions
        sees_own = (q_pos >= prefix) & (o_pos >= prefix) & (block(o_pos) == block(q_pos))
        if self.kv_lengths is not None:
            length = self.kv_lengths[:, None, None]
            sees_context, sees_own = sees_context & (c_pos < length), sees_own & (o_pos < length)
        return jnp.concatenate([jnp.broadcast_to(sees_context, (batch, q_len, context)),
                                jnp.broadcast_to(sees_own, (batch, q_len, q_len))], axis=-1)

    def density(self, batch: int, q_len: int, kv_len: int) -> jax.Array:
        """Fraction of the Tq x Tk score matrix that is unmasked (for FLOP counts)."""
        return jnp.mean(self.dense(batch, q_len, kv_len).astype(jnp.float32))


def mask_for_kind(
    kind: str,
    *,
    prefix_len=None,
    block_size: Optional[int] = None,
    kv_lengths=None,
    q_segment_ids=None,
    kv_segment_ids=None,
    q_offset=None,
) -> AttentionMask:
    """The `AttentionMask` of a mask kind named in `MASK_KINDS` (the one place that maps names).

    `prefix_len` ([B] ints) is required by prefix_lm and prefix_diffusion, optional for
    block_causal (None: no prefix) and ignored by causal and bidirectional, so one batch
    format serves every kind. `block_size` (a positive int) is required by block_causal and
    refused by the others. The [B] arrays are cast to int32; segment ids are passed as given.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    if kind == "block_causal":
        if block_size is None:
            raise ValueError("mask kind 'block_causal' needs block_size (a positive int, tokens per block); got None")
    elif block_size is not None:
        raise ValueError(f"block_size={block_size!r} is only used by mask kind 'block_causal', not {kind!r}; "
                         f"drop it or use kind='block_causal'")
    if kind in _PREFIX_KINDS and prefix_len is None:
        raise ValueError(f"mask kind {kind!r} needs prefix_len (one int per example); got None")
    uses_prefix = kind in _PREFIX_KINDS or kind == "block_causal"
    return AttentionMask(
        causal=kind in ("causal", "prefix_lm"),
        prefix_len=_as_int32(prefix_len) if uses_prefix else None,
        kv_lengths=_as_int32(kv_lengths),
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        q_offset=_as_int32(q_offset),
        block_size=block_size,
    )
