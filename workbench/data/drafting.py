"""Chat prompts from the shared data and the AR model's own greedy answers to them.

A drafter should propose what the AR model would write, so it trains on the AR model's own
greedy continuations of chat prompts (sequence-level self-distillation) and is judged on
held-out prompts the training never sees. Prompts come from four tasks, split by the
datasets' own protocols (MANIFEST.md):

* `squad`: a SQuAD passage and question (train: dev paragraphs outside XQuAD-en; held out: XQuAD-en),
* `question`: the SQuAD question alone (a plain question; same split),
* `translate`: "Translate to French: ..." (train: the WMT training pairs; held out: newstest2014),
* `code`: an MBPP task text (train: ids 601-974; held out: the test ids 11-510).

`answer_pairs` generates the answers once per (prompts, model fingerprint, length) and keeps them
in a cache file, written atomically, so runs and evaluations reuse them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from workbench.data import code_eval, squad, translation
from workbench.data.files import resolve_data_dir

TASKS = ("squad", "question", "translate", "code")
MAX_CONTEXT_CHARS = 600  # SQuAD passages longer than this are skipped (prompt length bounds the step's cost)


@dataclasses.dataclass(frozen=True)
class ChatPrompt:
    task: str
    id: str
    text: str  # the user turn
    references: tuple[str, ...] = ()  # gold answers where the task has them (SQuAD)


def _squad_prompts(split: str, data_dir: Path, with_context: bool) -> list[ChatPrompt]:
    columns, _ = squad.build("train" if split == "train" else "test", data_dir)
    out = []
    for qid, question, context, answers in zip(columns["id"], columns["question"], columns["context"],
                                               columns["answers"]):
        if with_context:
            if len(context) > MAX_CONTEXT_CHARS:
                continue
            text = f"{context}\n\nQuestion: {question}\nAnswer with a short phrase from the passage."
            out.append(ChatPrompt("squad", qid, text, tuple(answers)))
        else:
            out.append(ChatPrompt("question", qid, question, tuple(answers)))
    return out


def _translate_prompts(split: str, data_dir: Path) -> list[ChatPrompt]:
    columns, _ = translation.build("train" if split == "train" else "test", data_dir)
    return [ChatPrompt("translate", i, f"Translate to French: {en}", (fr,))
            for i, en, fr in zip(columns["id"], columns["inputs"], columns["targets"]) if len(en) <= 300]


def _code_prompts(split: str, data_dir: Path) -> list[ChatPrompt]:
    columns, _ = code_eval.build_mbpp("train" if split == "train" else "test", data_dir)
    return [ChatPrompt("code", f"mbpp/{t}", text) for t, text in zip(columns["task_id"], columns["inputs"])]


def chat_prompts(split: str, count: int, *, seed: int = 0, data_dir=None,
                 tasks: Sequence[str] = TASKS) -> list[ChatPrompt]:
    """`count` prompts of `split` ('train' or 'held_out'), as equal a share of each task as the
    data allows, each task's rows in a seeded order (SQuAD: one question per passage first)."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split={split!r}: expected 'train' or 'held_out'")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks={tuple(tasks)!r}: expected a non-empty subset of {TASKS}")
    folder = resolve_data_dir(data_dir)
    if folder is None:
        raise ValueError("chat_prompts needs the shared datasets: set WORKBENCH_DATA_DIR (or pass data_dir) to the "
                         "folder with MANIFEST.md")
    pools = {
        "squad": lambda: _squad_prompts(split, folder, True),
        "question": lambda: _squad_prompts(split, folder, False),
        "translate": lambda: _translate_prompts(split, folder),
        "code": lambda: _code_prompts(split, folder),
    }
    rng = np.random.default_rng(seed)
    ordered = {}
    for task in tasks:
        rows = pools[task]()
        order = rng.permutation(len(rows))
        if task in ("squad", "question"):  # spread over passages: first question of each first
            seen, first, rest = set(), [], []
            for i in order:
                key = rows[i].text.split("\n\nQuestion:")[0] if task == "squad" else rows[i].id[:-4]
                (rest if key in seen else first).append(i)
                seen.add(key)
            order = np.asarray(first + rest)
        ordered[task] = [rows[i] for i in order]
    picked, i = [], 0
    while len(picked) < count and any(i < len(rows) for rows in ordered.values()):
        for task in tasks:
            if i < len(ordered[task]) and len(picked) < count:
                picked.append(ordered[task][i])
        i += 1
    return picked


def prompts_hash(prompts: Sequence[ChatPrompt]) -> str:
    digest = hashlib.sha256()
    for p in prompts:
        digest.update(json.dumps(dataclasses.asdict(p), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _write_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def answer_pairs(model, tokenizer, prompts: Sequence[ChatPrompt], *, max_new_tokens: int, cache_dir,
                 model_id: str, batch_size: int = 16, max_prompt_tokens: int = 256,
                 progress: bool = True) -> tuple[list[list[int]], list[list[int]], dict]:
    """(prompt ids, the AR model's greedy answer ids up to and including EOS) per prompt that fits
    `max_prompt_tokens`, and a report (kept, dropped, hashes, cache file). `model_id` names the
    model (e.g. its source and fingerprint) in the cache key. Generation resumes from the cache
    file's finished chunks."""
    from workbench.data.special import ar_ids
    from workbench.pretrained_study import prompt_ids, right_padded
    from workbench.sampling.ar import ARSamplingConfig, generate

    ids = prompt_ids(tokenizer, [p.text for p in prompts])
    keep = [i for i, row in enumerate(ids) if len(row) <= max_prompt_tokens]
    key = hashlib.sha256(f"{prompts_hash(prompts)}|{model_id}|{max_new_tokens}|{max_prompt_tokens}".encode()
                         ).hexdigest()[:16]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"answers_{key}.npz"
    done = {}
    if path.exists():
        with np.load(path) as saved:
            done = {int(i): saved[f"a{i}"].tolist() for i in saved["index"]}
    config = ARSamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, **ar_ids(tokenizer))
    todo = [i for i in keep if i not in done]
    # longest first within chunks keeps padding low
    todo.sort(key=lambda i: -len(ids[i]))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        rows, lengths = right_padded([ids[i] for i in chunk], tokenizer.specials.pad, multiple=64)
        out = generate(model, rows, lengths, config)
        tokens, counts = np.asarray(out.tokens), np.asarray(out.lengths)
        for j, i in enumerate(chunk):
            done[i] = tokens[j, : counts[j]].tolist()
        index = np.asarray(sorted(done), np.int64)
        _write_npz(path, index=index, **{f"a{i}": np.asarray(done[i], np.int32) for i in index})
        if progress:
            print(f"answers: {len(done)}/{len(keep)}", flush=True)
    inputs = [ids[i] for i in keep]
    answers = [done[i] for i in keep]
    report = {"prompts": len(prompts), "kept": len(keep), "dropped_long_prompts": len(prompts) - len(keep),
              "prompts_hash": prompts_hash(prompts), "answers_file": str(path), "max_new_tokens": max_new_tokens,
              "answer_tokens": int(sum(len(a) for a in answers))}
    return inputs, answers, report
