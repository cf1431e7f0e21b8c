"""Where the data lives, how files are read, and how loaders report what they skipped.

A data directory is the folder laid out like `shared/datasets` (see its MANIFEST.md).
It comes from the `data_dir` argument or the `WORKBENCH_DATA_DIR` environment variable;
without either, loaders that support it fall back to the Hugging Face hub.

Every dataset carries a `LoadStats` (source, files, records skipped per reason, notes)
serialised as JSON in `dataset.info.description`; read it back with `load_stats(ds)`.
Nothing is dropped without a reason counted there.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

from workbench.runs import sha256_file

DATA_DIR_ENV = "WORKBENCH_DATA_DIR"

log = logging.getLogger("workbench.data")


class DataError(ValueError):
    """Bad dataset name, split, file or record."""


class MissingDataFileError(DataError, FileNotFoundError):
    """A file the loader needs is not in the data directory."""


class MalformedRecordError(DataError):
    """A record does not have the expected shape; the message names the file and line/record."""


def resolve_data_dir(data_dir: Optional[str | Path] = None) -> Optional[Path]:
    """The data directory: `data_dir` if given, else $WORKBENCH_DATA_DIR, else None (use the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        origin = "data_dir argument" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise MissingDataFileError(
            f"data directory {path} (from the {origin}) does not exist; point {DATA_DIR_ENV} "
            f"or data_dir= at the folder holding code_eval/, pretrain_text/, squad/, wmt14_enfr/"
        )
    return path


def require_file(data_dir: Path, relative: str, dataset: str) -> Path:
    """`data_dir / relative`, or a clear error saying which file is missing and how to fix it."""
    path = data_dir / relative
    if not path.is_file():
        raise MissingDataFileError(
            f"dataset {dataset!r} needs {path}, which does not exist; set {DATA_DIR_ENV} "
            f"(or pass data_dir=) to a data directory that contains {relative}"
        )
    return path


def read_text(path: Path) -> str:
    """UTF-8 text of a plain or .gz file, newlines normalised to \\n."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (gzip.BadGzipFile, EOFError, OSError) as err:
            raise MalformedRecordError(
                f"{path} is not a complete gzip file ({err}); expected gzip-compressed text (a .gz name means gzip); "
                f"re-download it or drop the .gz suffix if it is plain text"
            ) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedRecordError(f"{path} is not UTF-8 ({err}); expected a UTF-8 text file") from err
    return text.replace("\r\n", "\n")


def read_lines(path: Path) -> list[str]:
    """Lines of a one-sentence-per-line file (split on \\n only: some sentences hold U+2028 etc.)."""
    text = read_text(path)
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a JSON-lines file."""
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        yield number, parse_json_line(line, path, number)


def parse_json_line(line: str, path: Path, number: int) -> dict:
    """One JSON-lines record, or an error naming the file, line, column and what was expected."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise MalformedRecordError(
            f"{path} line {number} column {err.colno}: not valid JSON ({err.msg}); expected one JSON object per line; "
            f"fix or remove that line"
        ) from err
    if not isinstance(record, dict):
        raise MalformedRecordError(
            f"{path} line {number}: expected a JSON object ({{...}}), got a JSON {type(record).__name__}; "
            f"fix or remove that line"
        )
    return record


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise MalformedRecordError(
            f"{path} line {err.lineno} column {err.colno}: not valid JSON ({err.msg}); expected one JSON document; "
            f"fix the file or fetch it again"
        ) from err


def require_keys(record: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise MalformedRecordError(
            f"{where}: missing field(s) {missing}; expected fields {list(keys)}, got {sorted(map(str, record))}; "
            f"fix that record or fetch the file again"
        )


@functools.lru_cache(maxsize=4096)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached on (path, mtime, size) so run records stay cheap."""
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_mtime_ns, stat.st_size)


def hash_files(root: Path, relatives: list[str]) -> dict[str, str]:
    return {relative: file_sha256(root / relative) for relative in relatives}


def bucket(key: str, buckets: int) -> int:
    """A stable bucket in [0, buckets) for `key` (Python's hash() is salted per process)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) % buckets


@dataclasses.dataclass
class LoadStats:
    """What a loader read and what it left out (and why)."""

    source: str
    skipped: Counter = dataclasses.field(default_factory=Counter)
    notes: dict = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] += count

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source, "skipped": dict(sorted(self.skipped.items())), "notes": self.notes},
            sort_keys=True,
        )

    def log(self, name: str, split: str) -> None:
        if self.skipped:
            log.info("%s/%s: skipped %s", name, split, dict(sorted(self.skipped.items())))


def load_stats(dataset) -> dict:
    """The LoadStats of a registry dataset: {"source", "skipped": {reason: count}, "notes"}."""
    description = dataset.info.description
    try:
        return json.loads(description)
    except (TypeError, json.JSONDecodeError) as err:
        raise DataError(f"dataset has no workbench load stats in info.description ({description!r}); was it made by workbench.data.load_dataset?") from err
