"""The interface losses and samplers see of a model, as typed protocols.

`Denoiser` is what every architecture implements (`DecoderOnly` and `EncoderDecoder`), so
losses and samplers never ask which one they hold. `CachedRowDenoiser` is a capability on
top: one stack over one ``[prompt | targets]`` row that can run any stretch of the row
against a KV cache. Block decoding (`workbench.sampling.block_cache`) builds its cache and
state machine on it and refuses models without it, naming what they lack (`missing`).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import jax

from workbench.attention import AttentionMask
from workbench.models.config import ModelConfig

CanvasDenoiser = Callable[[jax.Array], jax.Array]  # target canvas [B, Tt] -> target logits [B, Tt, V]
KVCaches = list[dict[str, jax.Array]]  # per layer {"k", "v"}: [B, cache_len, kv_heads, head_dim]


@runtime_checkable
class Denoiser(Protocol):
    """Training layout (`target_view`, `denoise`, `teacher_forced`), full-canvas diffusion
    sampling (`canvas_denoiser`, with what it can compute once) and KV-cached AR decoding
    (`check_ar_decoding`, `start_decoding`)."""

    config: ModelConfig

    def target_view(self, batch) -> tuple[jax.Array, jax.Array]:
        """(clean tokens [B, N], target weights [B, N]) in the layout `denoise` takes."""
        ...

    def denoise(self, batch, tokens_BxN: jax.Array) -> jax.Array:
        """Logits [B, N, V] for every position of `tokens` (the `target_view` layout)."""
        ...

    def teacher_forced(self, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(logits, labels, weights) of the AR loss."""
        ...

    def canvas_denoiser(self, batch, target_len: int, *, prompt_cache: bool = True) -> CanvasDenoiser:
        """Target logits [B, Tt, V] for a target canvas [B, Tt]."""
        ...

    def check_ar_decoding(self, prompt_width: int, prompt_lengths_B, max_new_tokens: int) -> None:
        """Raise when this model cannot continue these prompts by `max_new_tokens`."""
        ...

    def start_decoding(self, prompts_BxP, prompt_lengths_B, max_new_tokens: int, start_id: int) -> tuple[Any, ...]:
        """(first logits [B, V], cache, step) of KV-cached AR decoding."""
        ...


@runtime_checkable
class CachedRowDenoiser(Denoiser, Protocol):
    """A `Denoiser` over one ``[prompt | targets]`` row whose stretches run against a KV cache
    of the whole row: the one cached forward block decoding is built on."""

    def make_mask(self, batch: int, seq_len: int, *, prefix_len=None, lengths=None, segment_ids=None,
                  q_offset=None, q_segment_ids=None) -> AttentionMask:
        """The self-attention mask of `config.attention`; `q_offset` places the queries in the row."""
        ...

    def init_cache(self, batch: int, cache_len: int) -> KVCaches:
        ...

    def forward_cached(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, mask: AttentionMask,
                       cache: KVCaches) -> tuple[jax.Array, KVCaches]:
        """(logits [B, T, V], cache with the tokens' keys and values written at `positions`)."""
        ...


def missing(model: Any, protocol: type) -> list[str]:
    """The members of `protocol` (a protocol above) that `model` lacks; [] when it has them all."""
    members = {name for base in protocol.__mro__ if Protocol in base.__bases__
               for name in (*vars(base), *base.__annotations__) if not name.startswith("_")}
    return sorted(name for name in members if not hasattr(model, name))
