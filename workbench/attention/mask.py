"""The one mask description every attention implementation takes.

A query at position i may attend to a key at position j when all of these hold:

* prefix/causal rule:  j < prefix_len  or  (i >= prefix_len and (not causal or j <= i))
* key padding:         j < kv_lengths[b]
* packing:             q_segment_ids[b, i] == kv_segment_ids[b, j]

The familiar masks are settings of the same two fields:

=====================  ========  ==============
mask                   causal    prefix_len
=====================  ========  ==============
causal                 True      None (0)
prefix-LM (AR)         True      per example
bidirectional          False     None (0)
prefix-diffusion       False     per example    (inputs see inputs only; targets see all)
=====================  ========  ==============

Positions are absolute: queries sit at ``q_offset + arange(Tq)`` (``q_offset`` is
nonzero only when decoding against a KV cache). Because the mask is data, the same
parameters serve an AR model and, after AR2Diff, a diffusion model.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

MASK_KINDS = ("causal", "prefix_lm", "bidirectional", "prefix_diffusion")


@struct.dataclass
class AttentionMask:
    """Mask description; a pytree whose ``causal`` flag is static."""

    causal: bool = struct.field(pytree_node=False, default=True)
    prefix_len: Optional[jax.Array] = None  # [B] int32
    kv_lengths: Optional[jax.Array] = None  # [B] int32: keys at j >= length are padding
    q_segment_ids: Optional[jax.Array] = None  # [B, Tq] int32
    kv_segment_ids: Optional[jax.Array] = None  # [B, Tk] int32
    q_offset: Optional[jax.Array] = None  # [B] int32 absolute position of query 0

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
    def from_kind(cls, kind: str, prefix_len=None, **kw) -> "AttentionMask":
        """Build a mask by name: one of ``MASK_KINDS``."""
        if kind == "causal":
            return cls.causal_mask(**kw)
        if kind == "bidirectional":
            return cls.bidirectional(**kw)
        if kind in ("prefix_lm", "prefix_diffusion"):
            if prefix_len is None:
                raise ValueError(f"mask kind {kind!r} needs prefix_len (one int per example); got None")
            return getattr(cls, kind)(prefix_len, **kw)
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")

    # -- description ------------------------------------------------------
    @property
    def kind(self) -> str:
        if self.prefix_len is None:
            return "causal" if self.causal else "bidirectional"
        return "prefix_lm" if self.causal else "prefix_diffusion"

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
        allowed = (k_pos < prefix) | after_prefix
        if self.kv_lengths is not None:
            allowed = allowed & (k_pos < self.kv_lengths[:, None, None])
        if self.q_segment_ids is not None:
            allowed = allowed & (self.q_segment_ids[:, :, None] == self.kv_segment_ids[:, None, :])
        return allowed

    def density(self, batch: int, q_len: int, kv_len: int) -> jax.Array:
        """Fraction of the Tq x Tk score matrix that is unmasked (for FLOP counts)."""
        return jnp.mean(self.dense(batch, q_len, kv_len).astype(jnp.float32))
