"""SentencePiece tokenizer (a `TextTokenizer`) trained offline on a mixture of English text, Python code and French.

Fixed ids: pad=0, eos=1, unk=2, mask=3, then `num_sentinels` T5-style `<extra_id_k>` sentinels
(4, 5, ...), then the 256 byte-fallback pieces, then the learned pieces. Text round-trips
exactly: identity normalisation, no dummy prefix, no whitespace collapsing, whitespace-only
pieces allowed (Python indentation), newlines kept inside training sentences, bytes for the rest.

`train_tokenizer(config, out_dir, data_dir)` samples at most `*_chars` characters per source
(deterministically from `config.seed`), trains, saves and returns the `Tokenizer`. Without a
data directory only the Python standard library is available: it trains on code alone and
says so (log warning and `tokenizer.info["missing_sources"]`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import sentencepiece as spm

from workbench.config import load_json, save_json, to_dict
from workbench.data.files import DataError, resolve_data_dir
from workbench.data.special import SpecialIds
from workbench.data.text_tokenizer import TextTokenizer
from workbench.data.text import chunk_lines

log = logging.getLogger("workbench.data")

PAD, EOS, UNK, MASK = "<pad>", "</s>", "<unk>", "<mask>"
MODEL_FILE, INFO_FILE = "tokenizer.model", "tokenizer.json"
NUM_BYTE_PIECES = 256
# Chunks taken from one document at most, so one long document cannot fill a source's budget.
MAX_CHUNKS_PER_DOCUMENT = 2


def sentinel_piece(k: int) -> str:
    return f"<extra_id_{k}>"


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """What the tokenizer is trained on and how. `*_chars` cap each source of the mixture."""

    vocab_size: int = 8000
    model_type: str = "unigram"
    english_chars: int = 3_000_000
    code_chars: int = 2_000_000
    french_chars: int = 1_000_000
    max_sentence_chars: int = 2000
    num_sentinels: int = 32
    split_digits: bool = True
    character_coverage: float = 0.9995
    # Single pieces for French letters and punctuation too rare to pass character_coverage.
    required_chars: str = "«»’“”…œŒæÆàâçéèêëîïôùûüÿÀÂÇÉÈÊËÎÏÔÙÛÜ€"
    max_piece_length: int = 16
    seed: int = 0
    num_threads: int = 2

    def __post_init__(self):
        if self.model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type={self.model_type!r}; expected 'unigram' or 'bpe'")
        reserved = 4 + self.num_sentinels + NUM_BYTE_PIECES
        if self.vocab_size <= reserved + 64:
            raise ValueError(
                f"vocab_size={self.vocab_size} leaves too few learned pieces: {reserved} ids are reserved "
                f"(pad, eos, unk, mask, {self.num_sentinels} sentinels, 256 bytes); use vocab_size > {reserved + 64}"
            )
        for name in ("english_chars", "code_chars", "french_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.english_chars + self.code_chars + self.french_chars == 0:
            raise ValueError("english_chars, code_chars and french_chars are all 0; the tokenizer needs some text")
        if self.max_sentence_chars < 64:
            raise ValueError(f"max_sentence_chars={self.max_sentence_chars} must be >= 64")

    @classmethod
    def preset(cls, name: str) -> "TokenizerConfig":
        presets = {
            "default": cls(),
            # For tests and smoke runs: trains in seconds.
            "tiny": cls(vocab_size=1000, english_chars=150_000, code_chars=150_000, french_chars=60_000),
        }
        if name not in presets:
            raise ValueError(f"unknown tokenizer preset {name!r}; expected one of {list(presets)}")
        return presets[name]


class Tokenizer(TextTokenizer):
    """A trained SentencePiece model with the workbench's special ids (no bos)."""

    def __init__(self, model_proto: bytes, info: Optional[dict] = None):
        self._proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError as err:
            raise DataError(f"not a SentencePiece model ({len(self._proto)} bytes; {err}); expected a tokenizer.model written by train_tokenizer") from err
        self.info = dict(info or {})
        expected = {0: PAD, 1: EOS, 2: UNK, 3: MASK}
        found = {i: self._sp.id_to_piece(i) for i in expected if i < self._sp.get_piece_size()}
        if found != expected:
            raise DataError(f"tokenizer model has special pieces {found}; expected {expected} (was it trained by train_tokenizer?)")
        sentinels = []
        while 4 + len(sentinels) < self._sp.get_piece_size() and self._sp.id_to_piece(4 + len(sentinels)) == sentinel_piece(len(sentinels)):
            sentinels.append(4 + len(sentinels))
        self._specials = SpecialIds(pad=0, eos=1, unk=2, mask=3, sentinels=tuple(sentinels))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """From a directory written by `save` (or a .model file, with its tokenizer.json if present)."""
        path = Path(path)
        model = path / MODEL_FILE if path.is_dir() else path
        if not model.is_file():
            raise FileNotFoundError(f"{model} not found; expected a tokenizer directory written by Tokenizer.save or a .model file")
        info_path = model.parent / INFO_FILE
        info = load_json(info_path) if info_path.is_file() else {}
        return cls(model.read_bytes(), info)

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.model and tokenizer.json (config, sources, data files) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = directory / MODEL_FILE
        tmp = model.with_suffix(".model.tmp")
        tmp.write_bytes(self._proto)
        tmp.replace(model)
        save_json(directory / INFO_FILE, {**self.info, "model_sha256": self.sha256})
        return directory

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._proto).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def specials(self) -> SpecialIds:
        return self._specials

    @property
    def byte_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.vocab_size) if self._sp.is_byte(i))

    def _piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def _piece_id(self, piece: str) -> Optional[int]:
        token_id = self._sp.piece_to_id(piece)  # the unk id for an unknown piece
        return token_id if self._sp.id_to_piece(token_id) == piece else None

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=1)

    def _decode_ids(self, ids: list[int]) -> str:
        return self._sp.decode(ids)


def _sentences(document: str, max_chars: int) -> list[str]:
    """A document cut into training sentences of at most `max_chars` characters, newlines kept."""
    pieces = []
    for chunk in chunk_lines(document, max_chars):
        pieces.extend(chunk[start : start + max_chars] for start in range(0, len(chunk), max_chars))
    return [piece for piece in pieces if piece.strip()]


def _sample(documents: Sequence[str], budget: int, max_chars: int, rng: np.random.Generator) -> tuple[list[str], int]:
    """Up to `budget` characters of sentences from documents visited in random order."""
    sentences, used, visited = [], 0, 0
    for index in rng.permutation(len(documents)):
        if used >= budget:
            break
        visited += 1
        chunks = _sentences(documents[index], max_chars)
        if len(chunks) > MAX_CHUNKS_PER_DOCUMENT:
            chosen = np.sort(rng.choice(len(chunks), MAX_CHUNKS_PER_DOCUMENT, replace=False))
            chunks = [chunks[i] for i in chosen]
        for chunk in chunks:
            if used >= budget:
                break
            sentences.append(chunk)
            used += len(chunk)
    return sentences, visited


def _mixture(config: TokenizerConfig, data_dir: Optional[Path]) -> tuple[list[str], dict, dict, list[str]]:
    """Training sentences, per-source stats, data files and the sources that were unavailable."""
    from workbench.data.registry import data_files, load_dataset

    sources = (
        ("english", "text", config.english_chars, True),
        ("code", "python_code", config.code_chars, False),
        ("french", "wmt14_enfr", config.french_chars, True),
    )
    sentences, stats, files, missing = [], {}, {}, []
    for offset, (source, dataset, budget, needs_data_dir) in enumerate(sources):
        if budget == 0:
            continue
        if needs_data_dir and data_dir is None:
            missing.append(source)
            continue
        split = load_dataset(dataset, "train", data_dir)
        rng = np.random.default_rng([config.seed, offset])
        picked, visited = _sample(split["targets"], budget, config.max_sentence_chars, rng)
        sentences.extend(picked)
        stats[source] = {"dataset": f"{dataset}/train", "documents": visited, "sentences": len(picked), "chars": sum(map(len, picked))}
        files.update(data_files(dataset, "train", data_dir))
    return sentences, stats, files, missing


def train_tokenizer(config: TokenizerConfig, out_dir: str | Path, data_dir: Optional[str | Path] = None) -> Tokenizer:
    """Train on the configured mixture, save into `out_dir`, and return the tokenizer."""
    started = time.perf_counter()
    resolved = resolve_data_dir(data_dir)
    sentences, stats, files, missing = _mixture(config, resolved)
    if missing:
        log.warning(
            "no data directory: tokenizer trained without %s (only Python code is available); "
            "set WORKBENCH_DATA_DIR for the full English/code/French mixture", missing
        )
    if not sentences:
        raise DataError(f"no training text: sources {missing} need a data directory and the others have budget 0")
    sampled = time.perf_counter()

    rng = np.random.default_rng([config.seed, 99])
    order = rng.permutation(len(sentences))
    model = io.BytesIO()
    spm.set_random_generator_seed(config.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([sentences[i] for i in order]),
            model_writer=model,
            vocab_size=config.vocab_size,
            model_type=config.model_type,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            pad_piece=PAD, eos_piece=EOS, unk_piece=UNK,
            user_defined_symbols=[MASK] + [sentinel_piece(k) for k in range(config.num_sentinels)],
            byte_fallback=True,
            split_digits=config.split_digits,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_by_whitespace=True,
            max_sentencepiece_length=config.max_piece_length,
            max_sentence_length=4 * config.max_sentence_chars + 4,
            character_coverage=config.character_coverage,
            required_chars=config.required_chars,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=config.num_threads,
            minloglevel=2,
        )
    except RuntimeError as err:
        chars = sum(map(len, sentences))
        raise DataError(
            f"SentencePiece training failed for vocab_size={config.vocab_size} on {chars:,} characters ({err}); "
            f"lower vocab_size or raise the *_chars budgets"
        ) from err
    info = {
        "config": to_dict(config),
        "sources": stats,
        "missing_sources": missing,
        "data_files": files,
        "sentencepiece": spm.__version__,
        "sample_seconds": round(sampled - started, 2),
        "train_seconds": round(time.perf_counter() - sampled, 2),
    }
    tokenizer = Tokenizer(model.getvalue(), info)
    tokenizer.save(out_dir)
    return tokenizer
