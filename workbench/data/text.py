"""English pretraining text: one document per row in `targets` (inputs empty).

`text` follows MANIFEST.md: every archive under pretrain_text/ except tinyshakespeare;
Project Gutenberg headers/footers stripped from Shakespeare (the shipped files turn out to have
none; the stripper is still applied and its count recorded), `/TAG` suffixes removed from
Brown (and its Penn-style tokenisation undone), the Linux + Python documentation capped at
`DOCS_MAX_FRACTION` of all English words (whitespace-separated, a stand-in for tokens).
Documents are files, except ABC (one document per news item) and webtext (chunks of about
`CHUNK_CHARS` at paragraph/line boundaries; its files are single long logs).
Files that are not UTF-8 are decoded as cp1252 (their names are in the load stats).

`tiny_text` is tinyshakespeare only, one paragraph (speech) per row, for quick tests.

Both hold out a validation split by a stable hash of the document id.
"""

from __future__ import annotations

import functools
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator, Optional

from workbench.data.files import LoadStats, bucket, hash_files, read_text, require_file

TEXT, TINY_TEXT = "text", "tiny_text"
SPLITS = ("train", "validation")

# Fraction (per mille) of documents held out for validation.
TEXT_VALIDATION_PER_MILLE = 15
TINY_VALIDATION_PER_MILLE = 50
DOCS_MAX_FRACTION = 0.5
CHUNK_CHARS = 4000
HUB_TEXT_DOCS = 100_000

PROSE = {
    "shakespeare": "pretrain_text/shakespeare_gutenberg_txt.tar.gz",
    "sotu": "pretrain_text/sotu_1790-2021_txt.tar.gz",
    "brown": "pretrain_text/nltk_brown.zip",
    "abc": "pretrain_text/nltk_abc.zip",
    "movie_reviews": "pretrain_text/nltk_movie_reviews.zip",
    "webtext": "pretrain_text/nltk_webtext.zip",
    "inaugural": "pretrain_text/nltk_inaugural.zip",
}
DOCS = {
    "linux_doc": "pretrain_text/linux-doc-6.1_rst_en.tar.gz",
    "python_doc": "pretrain_text/python3.11-doc_rst.tar.gz",
}
TINY = "pretrain_text/tinyshakespeare_input.txt"

# Corpus metadata shipped inside the NLTK zips, not text.
_METADATA_NAMES = {"README", "CONTENTS", "cats.txt"}

_GUTENBERG_START = re.compile(r"^\*{3} ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\*{3} ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Text between the Project Gutenberg START/END markers (the whole text if there are none)."""
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if not start and not end:
        return text, False
    begin = start.end() if start else 0
    finish = end.start() if end and end.start() > begin else len(text)
    return text[begin:finish].strip("\n") + "\n", True


def untag_brown(text: str) -> str:
    """Brown's `word/tag` tokens back to plain text, one sentence per line."""
    sentences = []
    for line in text.split("\n"):
        tokens = [token.rsplit("/", 1)[0] for token in line.split()]
        if tokens:
            sentences.append(_detokenize(" ".join(tokens)))
    return "\n".join(sentences) + "\n"


def _detokenize(sentence: str) -> str:
    sentence = re.sub(r"``\s*", '"', sentence)
    sentence = re.sub(r"\s*''", '"', sentence)
    sentence = re.sub(r"\s+([.,;:!?)\]])", r"\1", sentence)
    sentence = re.sub(r"([(\[])\s+", r"\1", sentence)
    return sentence


def _decode(raw: bytes, name: str, stats: LoadStats) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The NLTK corpora mix in a few Windows-1252 files; every byte decodes there.
        text = raw.decode("cp1252")
        stats.notes.setdefault("decoded_cp1252", []).append(name)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every regular file in a .zip or .tar.gz, in archive order."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, archive.read(info)
    else:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.isfile():
                    yield member.name.removeprefix("./"), archive.extractfile(member).read()


def chunk_lines(text: str, max_chars: int) -> list[str]:
    """Consecutive lines grouped into chunks of at most ~max_chars, cut at blank lines when possible."""
    chunks, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if current and size + len(line) > max_chars:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
        if size > max_chars // 2 and not line.strip():
            chunks.append("".join(current))
            current, size = [], 0
    if current:
        chunks.append("".join(current))
    return chunks


def _documents(source: str, path: Path, stats: LoadStats) -> Iterator[tuple[str, str]]:
    """(document id, text) for one archive, applying that source's cleaning."""
    for name, raw in _members(path):
        base = name.rsplit("/", 1)[-1]
        if base in _METADATA_NAMES:
            stats.skip(f"metadata_file:{source}")
            continue
        text = _decode(raw, f"{source}/{name}", stats)
        doc_id = f"{source}/{name}"
        if source == "shakespeare":
            text, stripped = strip_gutenberg(text)
            stats.notes["gutenberg_headers_stripped"] = stats.notes.get("gutenberg_headers_stripped", 0) + stripped
            yield doc_id, text
        elif source == "brown":
            yield doc_id, untag_brown(text)
        elif source == "abc":
            for index, item in enumerate(re.split(r"\n\s*\n", text)):
                yield f"{doc_id}#{index}", item.strip("\n") + "\n"
        elif source == "webtext":
            for index, chunk in enumerate(chunk_lines(text, CHUNK_CHARS)):
                yield f"{doc_id}#{index}", chunk
        else:
            yield doc_id, text


def _words(text: str) -> int:
    return len(text.split())


def _split_columns(documents: list[tuple[str, str, str]], per_mille: int) -> tuple[dict, dict]:
    train = {"id": [], "inputs": [], "targets": [], "source": []}
    validation = {"id": [], "inputs": [], "targets": [], "source": []}
    for doc_id, source, text in documents:
        columns = validation if bucket(doc_id, 1000) < per_mille else train
        columns["id"].append(doc_id)
        columns["inputs"].append("")
        columns["targets"].append(text)
        columns["source"].append(source)
    return train, validation


def text_files(split: str, data_dir: Path) -> dict[str, str]:
    relatives = [*PROSE.values(), *DOCS.values()]
    for relative in relatives:
        require_file(data_dir, relative, TEXT)
    return hash_files(data_dir, relatives)


@functools.lru_cache(maxsize=2)
def _build_text(data_dir: Path) -> tuple[dict, dict, LoadStats]:
    stats = LoadStats(source=f"data_dir:{data_dir}")
    paths = {source: require_file(data_dir, relative, TEXT) for source, relative in {**PROSE, **DOCS}.items()}
    prose, docs = [], []
    for source, path in paths.items():
        target = docs if source in DOCS else prose
        for doc_id, text in _documents(source, path, stats):
            if not text.strip():
                stats.skip(f"empty_document:{source}")
                continue
            target.append((doc_id, source, text))

    # Cap the documentation at DOCS_MAX_FRACTION of all words, dropping whole documents in a
    # fixed pseudo-random order (by id hash) so the cap never depends on archive order.
    prose_words = sum(_words(text) for _, _, text in prose)
    budget = DOCS_MAX_FRACTION / (1 - DOCS_MAX_FRACTION) * prose_words
    kept, used = [], 0
    for document in sorted(docs, key=lambda d: bucket(d[0], 1 << 40)):
        words = _words(document[2])
        if used + words > budget:
            stats.skip(f"docs_over_cap:{document[1]}")
            continue
        kept.append(document)
        used += words
    kept_ids = {doc_id for doc_id, _, _ in kept}
    documents = prose + [document for document in docs if document[0] in kept_ids]
    stats.notes.update(prose_words=prose_words, docs_words=used, docs_fraction=round(used / (used + prose_words), 4))
    train, validation = _split_columns(documents, TEXT_VALIDATION_PER_MILLE)
    return train, validation, stats


def build_text(split: str, data_dir: Path) -> tuple[dict, LoadStats]:
    train, validation, stats = _build_text(data_dir)
    return (train if split == "train" else validation), stats


def tiny_files(split: str, data_dir: Path) -> dict[str, str]:
    require_file(data_dir, TINY, TINY_TEXT)
    return hash_files(data_dir, [TINY])


@functools.lru_cache(maxsize=2)
def _build_tiny(data_dir: Path) -> tuple[dict, dict, LoadStats]:
    text = read_text(require_file(data_dir, TINY, TINY_TEXT))
    paragraphs = [p.strip("\n") + "\n" for p in re.split(r"\n\s*\n", text) if p.strip()]
    documents = [(f"tinyshakespeare#{index}", "tinyshakespeare", p) for index, p in enumerate(paragraphs)]
    train, validation = _split_columns(documents, TINY_VALIDATION_PER_MILLE)
    return train, validation, LoadStats(source=f"data_dir:{data_dir}")


def build_tiny(split: str, data_dir: Path) -> tuple[dict, LoadStats]:
    train, validation, stats = _build_tiny(data_dir)
    return (train if split == "train" else validation), stats


def build_text_from_hub(split: str, limit: Optional[int]) -> tuple[dict, LoadStats]:
    """UNTESTED HERE (no hub access): English C4 (`allenai/c4`, config `en`), streamed.

    Takes the first `limit` (default HUB_TEXT_DOCS) documents of the hub's train/validation split.
    """
    import datasets

    count = HUB_TEXT_DOCS if limit is None else limit
    stream = datasets.load_dataset("allenai/c4", "en", split=split, streaming=True)
    columns = {"id": [], "inputs": [], "targets": [], "source": []}
    for index, row in enumerate(stream.take(count)):
        columns["id"].append(f"c4/{split}/{index}")
        columns["inputs"].append("")
        columns["targets"].append(row["text"])
        columns["source"].append("c4")
    return columns, LoadStats(source=f"hf-hub:allenai/c4/en/{split}[:{count}] (streamed)")

