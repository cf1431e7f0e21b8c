"""The one tokenizer interface: the SentencePiece tokenizer of the from-scratch path
(`workbench.data.tokenizer.Tokenizer`) and the Hugging Face `tokenizers` one of imported models
(`workbench.data.hf_tokenizer.HFTokenizer`) both implement `TextTokenizer`.

A subclass supplies the vocabulary (`vocab_size`, `id_to_piece`, `piece_to_id`), its
`specials` (one `SpecialIds`), and `_encode_texts` / `_decode_ids`; the shared methods here give
both the same input checks and the same decode rule: cut at the first eos / pad when asked, drop
the remaining pads and eos, refuse ids outside the vocabulary.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from workbench.data import chat
from workbench.data.special import SpecialIds


class TextTokenizer(abc.ABC):
    """Text <-> ids, the vocabulary, the special ids as one object (`specials`), and the chat
    template of instruct models (`chat_template`, None where the model has none)."""

    chat_template: Optional[str] = None

    @property
    @abc.abstractmethod
    def specials(self) -> SpecialIds: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def sha256(self) -> str:
        """Hash of the tokenizer's defining file(s), recorded with every run."""

    @abc.abstractmethod
    def _piece(self, token_id: int) -> str:
        """The vocabulary's spelling of an id known to be in range."""

    @abc.abstractmethod
    def _piece_id(self, piece: str) -> Optional[int]:
        """The id of `piece`, None if the vocabulary has no such piece."""

    @abc.abstractmethod
    def save(self, directory: str | Path) -> Path: ...

    @abc.abstractmethod
    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, with whatever the vocabulary adds itself (e.g. a bos), without eos."""

    @abc.abstractmethod
    def _decode_ids(self, ids: list[int]) -> str: ...

    # Shorthands kept for the modules written against the SentencePiece tokenizer.
    @property
    def pad_id(self) -> int:
        return self.specials.pad

    @property
    def eos_id(self) -> int:
        return self.specials.eos

    @property
    def unk_id(self):
        return self.specials.unk

    @property
    def mask_id(self) -> int:
        return self.specials.require_mask()

    @property
    def sentinel_ids(self) -> tuple[int, ...]:
        return self.specials.sentinels

    def sentinel_id(self, k: int) -> int:
        sentinels = self.specials.sentinels
        if not 0 <= k < len(sentinels):
            raise IndexError(f"sentinel {k} out of range; this tokenizer has {len(sentinels)} sentinels")
        return sentinels[k]

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids a diffusion corruption must never sample (`specials.reserved`)."""
        return self.specials.reserved

    def id_to_piece(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return self._piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        token_id = self._piece_id(piece)
        if token_id is None:
            raise KeyError(f"piece {piece!r} is not in the vocabulary")
        return token_id

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}; use encode_batch for lists")
        ids = self._encode_texts([text])[0]
        return ids + [self.eos_id] if add_eos else ids

    def encode_batch(self, texts: Sequence[str], *, add_eos: bool = False) -> list[list[int]]:
        texts = list(texts)
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise TypeError(f"encode_batch expects strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        batch = self._encode_texts(texts) if texts else []
        return [ids + [self.eos_id] for ids in batch] if add_eos else batch

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True, stop_at_pad: bool = True) -> str:
        """Text of `ids`, cut at the first eos / pad (when asked); remaining pads and eos are dropped."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        stops = ({self.eos_id} if stop_at_eos else set()) | ({self.pad_id} if stop_at_pad else set())
        for position, token in enumerate(ids):
            if token in stops:
                ids = ids[:position]
                break
        out_of_range = [i for i in ids if not 0 <= i < self.vocab_size]
        if out_of_range:
            raise ValueError(f"token id {out_of_range[0]} is outside the vocabulary [0, {self.vocab_size})")
        dropped = (self.pad_id, self.eos_id)
        return self._decode_ids([i for i in ids if i not in dropped])

    def decode_batch(self, batch: Iterable[Iterable[int]], *, stop_at_eos: bool = True, stop_at_pad: bool = True) -> list[str]:
        return [self.decode(ids, stop_at_eos=stop_at_eos, stop_at_pad=stop_at_pad) for ids in batch]

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **variables) -> str:
        """The conversation as text, by the model's own chat template (a named error where it has none)."""
        roles = ("bos", "eos", "unk", "pad", "mask")
        special_tokens = {f"{role}_token": self.id_to_piece(getattr(self.specials, role))
                          for role in roles if getattr(self.specials, role) is not None}
        return chat.render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                special_tokens=special_tokens, **variables)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **variables) -> list[int]:
        """Ids of the rendered conversation; the template writes its own bos, so none is added."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt, **variables)
        return self._encode_rendered(text)

    def _encode_rendered(self, text: str) -> list[int]:
        """Ids of text that already carries its special tokens (a rendered chat)."""
        return self._encode_texts([text])[0]


def check_vocab_matches(tokenizer: TextTokenizer, vocab_size: int, *, allow_padding: bool = False) -> None:
    """Raise unless a model with `vocab_size` embedding rows fits `tokenizer`.

    Equal sizes are required, except that with `allow_padding` the model may have more rows than
    the tokenizer has ids (Hugging Face checkpoints often pad the embedding to a multiple of 64 or
    128, e.g. Qwen2.5: 151,665 ids, 151,936 rows). A model with fewer rows than the tokenizer has
    ids can never be right: some ids would index past the embedding.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size={vocab_size!r} must be an int (the model's embedding rows)")
    ids = tokenizer.vocab_size
    if ids == vocab_size or (allow_padding and ids < vocab_size):
        return
    mask = tokenizer.specials.mask
    grown = mask is not None and mask == ids - 1 == vocab_size
    if grown:
        fix = (
            f"the tokenizer's mask token (id {mask}) is a new row: append one embedding row to the model "
            "(strategy 'new_row'), or pick strategy 'reserved' to reuse an existing id"
        )
    elif ids > vocab_size:
        fix = "use the tokenizer that was saved with this model (its vocabulary is larger than the model's embedding)"
    else:
        fix = (
            "use the tokenizer that was saved with this model, or pass allow_padding=True if the checkpoint "
            "pads its embedding past the vocabulary"
        )
    raise ValueError(f"tokenizer has {ids} ids but the model's vocab_size is {vocab_size}; {fix}")
