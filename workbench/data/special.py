"""The special ids a tokenizer hands to losses, samplers, the evaluation runner and notebooks.

`SpecialIds` is the one object they receive (as `tokenizer.specials`), instead of pad/eos/mask
defaults repeated in configs. A vocabulary that lacks a role says so with `None` (an imported
vocabulary has no mask token until `MaskToken` gives it one; only T5-style vocabularies have
sentinels).

`MaskToken` is the config field that chooses how masked diffusion gets its absorbing token in an
imported vocabulary, none of which has one:

- `strategy="new_row"` (the default): a new token `<|mask|>` at id `vocab_size`, so the vocabulary
  grows by one and the model's embedding (and tied output head) gains one row, appended by the
  model importer. Why the default: SmolLM2 (and Llama-family vocabularies generally) have no
  unused id; every id, including all 17 control tokens of SmolLM2 (`<|endoftext|>` separates
  pretraining documents, `<|im_start|>`/`<|im_end|>` frame chat turns, `<filename>`, `<jupyter_code>`,
  ... mark code), is a token the pretrained network reads with a learned meaning. Reusing one would
  make every masked position look like that token to the pretrained model at the start of the
  adaptation and make the token ambiguous wherever it appears in real text. A fresh row has no
  prior meaning; its cost is one embedding row (576 floats for SmolLM2) and a vocabulary of 49153.
- `strategy="reserved"`: reuse an existing id named by `token` (a piece) or `token_id`, so the
  vocabulary and the embedding keep their shapes (the exported model stays loadable by tools that
  check the original vocabulary size). Right for vocabularies that do have genuinely unused ids,
  such as Llama 3's `<|reserved_special_token_k|>`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

MASK_STRATEGIES = ("new_row", "reserved")
DEFAULT_MASK_PIECE = "<|mask|>"


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids with a role. `pad` and `eos` always exist; the others are `None` / `()` where absent.

    `control` lists the vocabulary's other special tokens (chat markers, document separators),
    which ordinary text never produces and a corruption must never sample.
    """

    pad: int
    eos: int
    bos: Optional[int] = None
    unk: Optional[int] = None
    mask: Optional[int] = None
    sentinels: tuple[int, ...] = ()
    control: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("pad", "eos", "bos", "unk", "mask"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"special id {name}={value!r} must be a non-negative int or None")
        for name in ("sentinels", "control"):
            ids = tuple(getattr(self, name))
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
                raise ValueError(f"special ids {name}={ids!r} must be non-negative ints")
            object.__setattr__(self, name, ids)

    @property
    def reserved(self) -> tuple[int, ...]:
        """Every id with a role, without repeats: the ids a diffusion corruption must never sample.

        Order: pad, eos, unk, mask, sentinels, then bos and the control tokens (the SentencePiece
        tokenizer's historical `special_ids` order).
        """
        ordered = (self.pad, self.eos, self.unk, self.mask, *self.sentinels, self.bos, *self.control)
        return tuple(dict.fromkeys(i for i in ordered if i is not None))

    def require_mask(self) -> int:
        """The mask id, or a named error for a vocabulary that has none yet."""
        if self.mask is None:
            raise ValueError(
                "this vocabulary has no mask token (special ids: "
                f"{self.describe()}); give it one with tokenizer.with_mask_token(MaskToken(...))"
            )
        return self.mask

    def describe(self) -> str:
        fields = dataclasses.asdict(self)
        return ", ".join(f"{name}={value}" for name, value in fields.items() if value not in (None, ()))


@dataclasses.dataclass(frozen=True)
class MaskToken:
    """How masked diffusion gets a mask token in a vocabulary that has none (see module docstring).

    `new_row`: the piece `token` (default `<|mask|>`) is added at id `vocab_size`.
    `reserved`: an existing id, named by exactly one of `token` (a piece) or `token_id`.
    """

    strategy: str = "new_row"
    token: Optional[str] = None
    token_id: Optional[int] = None

    def __post_init__(self):
        if self.strategy not in MASK_STRATEGIES:
            raise ValueError(f"mask strategy={self.strategy!r}; expected one of {MASK_STRATEGIES}")
        if self.strategy == "new_row":
            if self.token_id is not None:
                raise ValueError(
                    f"mask strategy 'new_row' takes a piece, not token_id={self.token_id}: the new id is the "
                    "vocabulary size; use strategy='reserved' to reuse an existing id"
                )
            if self.token == "":
                raise ValueError("mask strategy 'new_row' needs a non-empty piece, e.g. '<|mask|>'")
        elif (self.token is None) == (self.token_id is None):
            raise ValueError(
                f"mask strategy 'reserved' needs exactly one of token (a piece) or token_id, got "
                f"token={self.token!r}, token_id={self.token_id!r}"
            )

    @property
    def piece(self) -> Optional[str]:
        return DEFAULT_MASK_PIECE if self.strategy == "new_row" and self.token is None else self.token


# -- the ids each consumer receives, from one tokenizer ------------------------------------------
# Callers spread these into their frozen configs (`dataclasses.replace(config, **ar_ids(tok))`),
# so the numbers come from the tokenizer once instead of from each config's defaults.


def never_sampled(tokenizer, model_vocab_size: Optional[int] = None) -> tuple[int, ...]:
    """Ids a corruption or a random canvas must never draw: every id with a role (pad, eos, bos,
    unk, mask, sentinels, control tokens), and the rows of a padded embedding past the
    tokenizer's vocabulary (Qwen2.5: 151,665 ids, 151,936 rows), which no text contains."""
    size = tokenizer.vocab_size
    if model_vocab_size is not None and model_vocab_size < size:
        raise ValueError(f"model_vocab_size={model_vocab_size} is smaller than the tokenizer's {size} ids; "
                         "use the tokenizer saved with this model")
    padding = range(size, size if model_vocab_size is None else model_vocab_size)
    return tuple(dict.fromkeys((*tokenizer.specials.reserved, *padding)))


def mask_ids(tokenizer, uses_mask: bool) -> dict:
    """{'mask_id': ...} when the vocabulary has a mask token; a named error when a process that
    needs one (`uses_mask`) gets a vocabulary without; {} otherwise (the config keeps its value,
    which such a process never reads)."""
    mask = tokenizer.specials.mask
    if mask is None:
        if uses_mask:
            tokenizer.specials.require_mask()
        return {}
    return {"mask_id": mask}


def ar_ids(tokenizer) -> dict:
    """The ids of `ARSamplingConfig`: where generation stops and what fills the rest."""
    return {"eos_id": tokenizer.specials.eos, "pad_id": tokenizer.specials.pad}


def diffusion_ids(tokenizer, process: str, model_vocab_size: Optional[int] = None) -> dict:
    """The ids of a diffusion sampler's config (`workbench.sampling.SamplerConfig.for_tokenizer`)
    for diffusion process `process`: never drawn, mask, EOS and padding."""
    return {**_noise_ids(tokenizer, process, model_vocab_size), **ar_ids(tokenizer)}


def loss_ids(tokenizer, kind: str, model_vocab_size: Optional[int] = None) -> dict:
    """The ids of `LossConfig` for loss `kind` ('ar' or a diffusion process)."""
    if kind == "ar":
        return {"pad_id": tokenizer.specials.pad}
    return {**_noise_ids(tokenizer, kind, model_vocab_size), "pad_id": tokenizer.specials.pad}


def _noise_ids(tokenizer, process: str, model_vocab_size: Optional[int]) -> dict:
    """The ids a diffusion process is built from: never drawn as noise, and its mask token."""
    from workbench.processes import get_process_class

    return {"special_ids": never_sampled(tokenizer, model_vocab_size),
            **mask_ids(tokenizer, get_process_class(process).uses_mask)}
