"""The tokenizer a GGUF file describes, read from its metadata with the `gguf` package.

A GGUF has no `tokenizer.json`: it stores the vocabulary, the merges, each token's type and the
special ids under llama.cpp's keys (`tokenizer.ggml.*`), and names the pre-tokenizer (the regex
that cuts text into words before BPE) by a short name, `tokenizer.ggml.pre`. `read_gguf_vocab`
returns them as a `GGUFVocab`; `pre_tokenizer_for` turns the name into the `tokenizers`
pre-tokenizer the vocabulary was trained with (the same regexes as llama.cpp's `llama-vocab.cpp`
and the models' own `tokenizer.json`). Anything else is refused by name, with what is supported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from tokenizers import Regex, pre_tokenizers

SUPPORTED_MODELS = ("gpt2",)  # byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2, StarCoder, ...)

# llama.cpp token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    # Each digit alone first (llama.cpp: "\p{N}" before the GPT-2 regex), as in SmolLM2's tokenizer.json.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _split_then_bytes(pattern: str):
    def build() -> pre_tokenizers.PreTokenizer:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    return build


# `tokenizer.ggml.pre` name -> pre-tokenizer. Names sharing an entry share llama.cpp's regexes.
PRE_TOKENIZERS = {
    "gpt-2": _gpt2,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "refact": _digits_then_gpt2,
    "llama-bpe": _split_then_bytes(_LLAMA3_SPLIT),
    "qwen2": _split_then_bytes(_QWEN2_SPLIT),
}


class UnsupportedTokenizerError(ValueError):
    """A tokenizer model or pre-tokenizer this module cannot build faithfully."""


@dataclasses.dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer fields of a GGUF file (ids as the file gives them; `None` where absent)."""

    model: str
    pre: Optional[str]
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    bos: Optional[int]
    eos: Optional[int]
    unk: Optional[int]
    pad: Optional[int]
    add_bos: bool
    add_eos: bool
    chat_template: Optional[str]
    source: str


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` for `path` (parsing the header takes seconds: share one reader)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} not found; pass the path of a .gguf model file")
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as err:  # the reader raises ValueError/struct errors on foreign files
        raise UnsupportedTokenizerError(f"{path} is not a readable GGUF file ({err})") from err


def read_gguf_vocab(source) -> GGUFVocab:
    """The tokenizer metadata of a GGUF file: a path, or a `gguf.GGUFReader` already open on it."""
    reader = open_gguf(source) if isinstance(source, (str, Path)) else source
    path = Path(getattr(reader.data, "filename", None) or "<GGUF reader>")
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        raise UnsupportedTokenizerError(f"{path} has no tokenizer.ggml.model: it carries no tokenizer")
    tokens = _field(reader, "tokenizer.ggml.tokens", [])
    types = _field(reader, "tokenizer.ggml.token_type", [NORMAL] * len(tokens))
    return GGUFVocab(
        model=model,
        pre=_field(reader, "tokenizer.ggml.pre"),
        tokens=tuple(tokens),
        token_types=tuple(int(t) for t in types),
        merges=tuple(_field(reader, "tokenizer.ggml.merges", [])),
        bos=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos=_field(reader, "tokenizer.ggml.eos_token_id"),
        unk=_field(reader, "tokenizer.ggml.unknown_token_id"),
        pad=_field(reader, "tokenizer.ggml.padding_token_id"),
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
        chat_template=_field(reader, "tokenizer.chat_template"),
        source=str(path),
    )


def check_supported(vocab: GGUFVocab) -> None:
    """Refuse, by name, a tokenizer model or pre-tokenizer that `pre_tokenizer_for` cannot build."""
    where = f"GGUF tokenizer in {vocab.source}"
    if vocab.model not in SUPPORTED_MODELS:
        raise UnsupportedTokenizerError(
            f"{where}: tokenizer.ggml.model={vocab.model!r} is not supported; supported: {list(SUPPORTED_MODELS)} "
            "(byte-level BPE). For a SentencePiece ('llama') vocabulary, load the model's Hugging Face folder "
            "(tokenizer.json) instead"
        )
    if vocab.pre not in PRE_TOKENIZERS:
        raise UnsupportedTokenizerError(
            f"{where}: tokenizer.ggml.pre={vocab.pre!r} is not supported; supported: {sorted(PRE_TOKENIZERS)}. "
            "Load the model's Hugging Face folder (tokenizer.json) instead, or add its regex to "
            "workbench.data.gguf_vocab.PRE_TOKENIZERS"
        )
    if not vocab.tokens or not vocab.merges:
        raise UnsupportedTokenizerError(
            f"{where}: {len(vocab.tokens)} tokens and {len(vocab.merges)} merges; a byte-level BPE needs both"
        )
    if len(vocab.token_types) != len(vocab.tokens):
        raise UnsupportedTokenizerError(
            f"{where}: {len(vocab.token_types)} token types for {len(vocab.tokens)} tokens; the file is inconsistent"
        )
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(vocab, name)
        if token_id is not None and not 0 <= token_id < len(vocab.tokens):
            raise UnsupportedTokenizerError(
                f"{where}: {name} id {token_id} is outside the vocabulary [0, {len(vocab.tokens)})"
            )
    if vocab.eos is None:
        raise UnsupportedTokenizerError(f"{where}: no tokenizer.ggml.eos_token_id; generation needs an eos token")


def pre_tokenizer_for(vocab: GGUFVocab) -> pre_tokenizers.PreTokenizer:
    check_supported(vocab)
    return PRE_TOKENIZERS[vocab.pre]()
