"""SQuAD v1.1 extractive QA, with the paragraph-level split of MANIFEST.md.

train = dev-v1.1 paragraphs whose context is not in XQuAD-en (1,827 paragraphs, 9,380 questions);
test = the 1,190 XQuAD-en questions (240 paragraphs, all inside dev). `validation` is an alias of
`test` (there is no third held-out set); do not tune hyper-parameters on it and report test too.

Rows: id, question, context, title, answers (all gold answers, for EM/F1 with the official
normalisation), inputs = question, targets = the first gold answer. For test rows the gold
answers are dev-v1.1's (usually three annotators), and targets is XQuAD's chosen answer,
which is always one of them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from workbench.data.files import LoadStats, MalformedRecordError, hash_files, read_json, require_file, require_keys

NAME = "squad_v1"
SPLITS = ("train", "validation", "test")
DEV, XQUAD = "squad/dev-v1.1.json", "squad/xquad.en.json"

HUB_TRAIN, HUB_XQUAD, HUB_XQUAD_CONFIG = "rajpurkar/squad", "google/xquad", "xquad.en"


def files(split: str, data_dir: Path) -> dict[str, str]:
    for relative in (DEV, XQUAD):
        require_file(data_dir, relative, NAME)
    return hash_files(data_dir, [DEV, XQUAD])


def _paragraphs(path: Path):
    """(title, context, question records) per paragraph, checking the SQuAD JSON shape."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise MalformedRecordError(f"{path}: expected a SQuAD JSON object with a 'data' list of articles")
    for a, article in enumerate(data["data"]):
        require_keys(article, ("title", "paragraphs"), f"{path} article {a}")
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"{path} article {a} ({article['title']!r}) paragraph {p}"
            require_keys(paragraph, ("context", "qas"), where)
            for qa in paragraph["qas"]:
                require_keys(qa, ("id", "question", "answers"), f"{where} question {qa.get('id', '?')}")
                if not qa["answers"] or any("text" not in answer for answer in qa["answers"]):
                    raise MalformedRecordError(f"{where} question {qa['id']}: expected a non-empty 'answers' list of {{'text', 'answer_start'}}")
            yield article["title"], paragraph["context"], paragraph["qas"]


def _empty_columns() -> dict:
    return {key: [] for key in ("id", "inputs", "targets", "question", "context", "title", "answers")}


def _append(columns: dict, qid: str, question: str, context: str, title: str, answers: list[str], target: str) -> None:
    columns["id"].append(qid)
    columns["inputs"].append(question)
    columns["targets"].append(target)
    columns["question"].append(question)
    columns["context"].append(context)
    columns["title"].append(title)
    columns["answers"].append(answers)


@functools.lru_cache(maxsize=4)
def _build_all(data_dir: Path) -> tuple[dict, dict, LoadStats]:
    dev_path, xquad_path = require_file(data_dir, DEV, NAME), require_file(data_dir, XQUAD, NAME)
    xquad = {}
    xquad_contexts = set()
    for _, context, qas in _paragraphs(xquad_path):
        xquad_contexts.add(context)
        for qa in qas:
            xquad[qa["id"]] = (qa["question"], context, qa["answers"][0]["text"])

    train, test = _empty_columns(), _empty_columns()
    train_paragraphs = 0
    found = set()
    for title, context, qas in _paragraphs(dev_path):
        held_out = context in xquad_contexts
        train_paragraphs += not held_out
        for qa in qas:
            answers = [answer["text"] for answer in qa["answers"]]
            if not held_out:
                _append(train, qa["id"], qa["question"], context, title, answers, answers[0])
                continue
            if qa["id"] not in xquad:
                raise MalformedRecordError(
                    f"{dev_path}: question {qa['id']} belongs to an XQuAD-en paragraph but is missing from {xquad_path}; "
                    f"expected XQuAD-en to hold every question of its paragraphs"
                )
            x_question, x_context, x_answer = xquad[qa["id"]]
            if x_question != qa["question"] or x_answer not in answers:
                raise MalformedRecordError(f"{xquad_path} question {qa['id']}: question or answer differs from {dev_path}")
            found.add(qa["id"])
            _append(test, qa["id"], qa["question"], context, title, answers, x_answer)
    missing = sorted(set(xquad) - found)
    if missing:
        raise MalformedRecordError(f"{xquad_path}: {len(missing)} questions (e.g. {missing[:3]}) are not in {dev_path}; expected XQuAD-en to be a subset of SQuAD v1.1 dev")
    stats = LoadStats(
        source=f"data_dir:{data_dir}",
        notes={"train_paragraphs": train_paragraphs, "test_paragraphs": len(xquad_contexts)},
    )
    return train, test, stats


def build(split: str, data_dir: Path) -> tuple[dict, LoadStats]:
    train, test, stats = _build_all(data_dir)
    return (train if split == "train" else test), stats


def build_from_hub(split: str, limit: Optional[int]) -> tuple[dict, LoadStats]:
    """UNTESTED HERE (no hub access): train = the real SQuAD v1.1 train (87,599 questions,
    `rajpurkar/squad`), test/validation = XQuAD-en (`google/xquad`, config `xquad.en`, 1,190).
    """
    import datasets

    path, config, hub_split = (HUB_TRAIN, None, "train") if split == "train" else (HUB_XQUAD, HUB_XQUAD_CONFIG, "validation")
    if limit is not None:
        hub_split = f"{hub_split}[:{limit}]"
    hub = datasets.load_dataset(path, config, split=hub_split)
    columns = _empty_columns()
    for row in hub:
        answers = list(row["answers"]["text"])
        if not answers:
            raise MalformedRecordError(f"hub dataset {path} question {row['id']}: no gold answers")
        # XQuAD on the hub has no titles and one answer per question (dev-v1.1 has ~3).
        _append(columns, row["id"], row["question"], row["context"], row.get("title", ""), answers, answers[0])
    return columns, LoadStats(source=f"hf-hub:{path}/{config or 'default'}/{hub_split}")
