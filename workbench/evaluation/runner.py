"""Evaluation runner: model + task + decoding settings -> metrics.json and predictions.jsonl.

AR decoding (greedy, or temperature sampling for code) and diffusion decoding (paper
defaults: 10 steps, 8 samples, temperature 0.2, reranking) go through the same runner.
Each example's randomness is keyed by its index in the evaluation split and every width
is fixed by the config, so metrics do not change with the batch size.
Inputs longer than `input_len` are counted and skipped (reported, never cut); targets
longer than `target_len` are counted and still scored against the full reference.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Literal, Optional

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from workbench.config import save_json
from workbench.data import data_files, dataset_splits, load_dataset
from workbench.data.special import ar_ids, diffusion_ids
from workbench.distributed import batch_divisor, mesh_context, shard_batch, to_host
from workbench.evaluation.sandbox import ISOLATION_LEVELS, require_isolation
from workbench.evaluation.scoring import score
from workbench.evaluation.tasks import TASK_NAMES, TaskSpec, get_task
from workbench.models import param_count
from workbench.sampling.ar import ARSamplingConfig, generate
from workbench.objectives.batch import seq2seq_batch
from workbench.runs import write_run_info
from workbench.sampling.diffusion import DiffusionSamplingConfig, diffusion_sample


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    task: str
    method: Literal["ar", "diffusion"] = "ar"
    split: Optional[str] = None  # None: the task's evaluation split
    limit: Optional[int] = None  # evaluate the first `limit` examples (subsample the split)
    input_len: int = 128
    target_len: int = 64
    batch_size: int = 8
    num_candidates: int = 1  # code tasks: samples per problem (pass@k for k <= this)
    seed: int = 0
    ar: ARSamplingConfig = ARSamplingConfig()
    diffusion: DiffusionSamplingConfig = DiffusionSamplingConfig()
    # Code tasks: the least sandbox isolation to run with ("full", "kernel" or "fallback", which allows
    # the Python-level guard alone); the evaluation refuses to start below it.
    code_isolation: str = "kernel"
    chat_template: bool = False  # imported instruct models: each input is one user turn of the model's template

    def __post_init__(self):
        if self.task not in TASK_NAMES:
            raise ValueError(f"EvalConfig task={self.task!r} is not a task; expected one of {TASK_NAMES}")
        if self.method not in ("ar", "diffusion"):
            raise ValueError(f"method={self.method!r}; expected 'ar' or 'diffusion'")
        splits = dataset_splits(self.spec.dataset)
        if self.split is not None and self.split not in splits:
            raise ValueError(
                f"EvalConfig split={self.split!r} is not a split of task {self.task!r}; expected one of {splits}, "
                f"or None for its evaluation split {self.spec.eval_split!r}"
            )
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(
                f"EvalConfig limit={self.limit!r}; expected None (the whole split) or an integer >= 1 "
                f"(the number of examples to evaluate)"
            )
        for field in ("input_len", "target_len", "batch_size", "num_candidates"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                what = {"input_len": "prompt tokens per example", "target_len": "tokens decoded per output",
                        "batch_size": "outputs decoded at once",
                        "num_candidates": "samples per problem"}[field]
                raise ValueError(f"EvalConfig {field}={value!r}; expected an integer >= 1 ({what}); set {field} >= 1")
        if self.code_isolation not in ISOLATION_LEVELS:
            raise ValueError(
                f"EvalConfig code_isolation={self.code_isolation!r}; expected one of {ISOLATION_LEVELS} "
                f"('fallback' allows the Python-level guard alone)"
            )

    @functools.cached_property
    def spec(self) -> TaskSpec:
        """The task's TaskSpec, resolved once (not a field: it is not saved with the config)."""
        return get_task(self.task)


def encode_input(tokenizer, text: str, chat_template: bool) -> list[int]:
    """A task input as ids: plain, or as one user turn of the model's chat template (a named
    error from the tokenizer where the model has none)."""
    if chat_template:
        return tokenizer.encode_chat([{"role": "user", "content": text}])
    return tokenizer.encode(text)


def _decode_batch(model, tokenizer, inputs: list[list[int]], ids: list[int], config: EvalConfig, rng,
                  mesh: Optional[Mesh] = None) -> list[str]:
    if config.method == "ar":
        prompts = np.full((len(inputs), config.input_len), tokenizer.pad_id, np.int32)
        for i, seq in enumerate(inputs):
            prompts[i, : len(seq)] = seq
        lengths = np.array([max(len(s), 1) for s in inputs], np.int32)
        ar = dataclasses.replace(config.ar, max_new_tokens=config.target_len, **ar_ids(tokenizer))
        example_ids = np.asarray(ids, np.int32)
        if mesh is not None:
            prompts, lengths, example_ids = shard_batch((prompts, lengths, example_ids), mesh)
        with mesh_context(mesh):
            out = generate(model, prompts, lengths, ar, rng, example_ids)
        return tokenizer.decode_batch(to_host(out.tokens))
    batch = seq2seq_batch(inputs, [[] for _ in inputs], input_len=config.input_len, target_len=config.target_len,
                          pad_id=tokenizer.pad_id, example_ids=ids, pad_targets=True)
    diffusion = dataclasses.replace(config.diffusion, **diffusion_ids(tokenizer, config.diffusion.process,
                                                                      model.config.vocab_size))
    out = diffusion_sample(model, batch, diffusion, rng, mesh=mesh)
    return tokenizer.decode_batch(to_host(out.tokens))


def predict(model, tokenizer, records: list[dict], config: EvalConfig, progress: bool = True,
            mesh: Optional[Mesh] = None) -> tuple[list[list[str]], dict]:
    """Decode `num_candidates` outputs per record. Returns (outputs per record, length report).

    With a `mesh` (model already placed on it), each decode batch is split over the mesh's
    batch axes; a short last batch is filled with repeats of its last example, whose
    outputs are dropped (examples decode the same in any batch)."""
    pairs = [config.spec.format_example(r) for r in records]
    encoded = [encode_input(tokenizer, src, config.chat_template) for src, _ in pairs]
    too_long_inputs = [i for i, e in enumerate(encoded) if len(e) > config.input_len or not e]
    too_long_targets = sum(len(tokenizer.encode(tgt)) + 1 > config.target_len for _, tgt in pairs)
    jobs = [(i, c) for i in range(len(records)) if i not in set(too_long_inputs) for c in range(config.num_candidates)]
    outputs: list[list[str]] = [[] for _ in records]
    rng = jax.random.key(config.seed)
    bar = tqdm(total=len(jobs), desc=f"decode {config.task} ({config.method})", disable=not progress)
    for start in range(0, len(jobs), config.batch_size):
        chunk = jobs[start : start + config.batch_size]
        ids = [i * config.num_candidates + c for i, c in chunk]
        filled = chunk if mesh is None else chunk + [chunk[-1]] * (-len(chunk) % batch_divisor(mesh))
        ids += ids[-1:] * (len(filled) - len(chunk))
        texts = _decode_batch(model, tokenizer, [encoded[i] for i, _ in filled], ids, config, rng, mesh)
        for (i, _), text in zip(chunk, texts):
            outputs[i].append(text)
        bar.update(len(chunk))
    bar.close()
    report = {"num_examples": len(records), "inputs_too_long_skipped": len(too_long_inputs),
              "targets_longer_than_target_len": int(too_long_targets), "input_len": config.input_len,
              "target_len": config.target_len}
    return outputs, report


def score_outputs(task: TaskSpec | str, records: list[dict], outputs: list[list[str]], **code_options) -> dict:
    """The task metric over the records that were decoded (those with outputs); `code_options` go to evaluate_code."""
    spec = get_task(task) if isinstance(task, str) else task
    kept = [(r, o) for r, o in zip(records, outputs) if o]
    if not kept:
        raise ValueError(f"no example of {spec.name} was decoded: every input is longer than input_len; "
                         "raise input_len")
    records = [r for r, _ in kept]
    predictions = [o if spec.metric == "pass_at_k" else o[0] for _, o in kept]
    result = score(spec, records, predictions, **code_options)
    result.pop("per_problem", None)
    result.setdefault("num_examples", len(records))
    return result


def load_predictions(out_dir: Path | str):
    """The predictions.jsonl `evaluate` wrote to `out_dir` as a table: id, outputs, reference."""
    import pandas as pd

    return pd.read_json(Path(out_dir) / "predictions.jsonl", lines=True, dtype={"id": str})


def evaluate(model, tokenizer, config: EvalConfig, out_dir: Path | str, *, data_dir=None, extra: Optional[dict] = None,
             progress: bool = True, mesh: Optional[Mesh] = None) -> dict:
    """Decode and score one task; write metrics.json, predictions.jsonl and run_info.json.

    `extra` adds fields to metrics.json, e.g. {"method": "AR2Diff_10K", "model_preset": "small",
    "train_steps": 5000} for the paper-table builder (workbench.evaluation.tables)."""
    spec = config.spec
    split = config.split or spec.eval_split
    dataset = load_dataset(spec.dataset, split, data_dir=data_dir)
    n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    records = [dict(dataset[i]) for i in range(n)]
    code_options = {}
    if spec.metric == "pass_at_k":  # refuse before decoding, not after
        isolation = require_isolation(config.code_isolation)
        code_options = {"isolation_required": config.code_isolation, "isolation": isolation}
        print(f"{config.task}: sandbox isolation {isolation.describe()}")
    started = time.perf_counter()
    outputs, report = predict(model, tokenizer, records, config, progress=progress, mesh=mesh)
    decode_s = time.perf_counter() - started
    result = score_outputs(spec, records, outputs, **code_options)
    isolation_record = result.pop("isolation", None)
    out_dir = Path(out_dir)
    diffusion = config.method == "diffusion"
    summary = {"task": config.task, "split": split, "metric": spec.metric, "decoding": config.method,
               "method": "Diffusion" if diffusion else "AR",  # callers label AR2Diff_N runs via `extra`
               "params": param_count(model.config)["total"],
               "num_steps": config.diffusion.num_steps if diffusion else None,
               "num_samples": config.diffusion.num_samples if diffusion else None,
               **{k: v for k, v in result.items() if not isinstance(v, (dict, list))},
               "details": {k: v for k, v in result.items() if isinstance(v, (dict, list))},
               "lengths": report, "decode_seconds": decode_s, "model_attention": model.config.attention,
               **({"isolation": isolation_record} if isolation_record is not None else {}),
               **{k: v for k, v in (extra or {}).items() if k not in ("task", "split", "metric", "decoding")}}
    save_json(out_dir / "metrics.json", summary)
    with open(out_dir / "predictions.jsonl", "w") as handle:
        for record, outs in zip(records, outputs):
            handle.write(json.dumps({"id": str(record.get("id")), "outputs": outs,
                                     "reference": spec.format_example(record)[1]}) + "\n")
    write_run_info(out_dir, config=config, seed=config.seed, data=data_files(spec.dataset, split, data_dir),
                   extra={"tokenizer_sha256": tokenizer.sha256})
    return summary
