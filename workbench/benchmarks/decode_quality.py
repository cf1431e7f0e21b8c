"""Block vs full-canvas diffusion converted from one AR checkpoint: quality at equal budgets, with speed.

Issue 17's question: does a block-diffusion model converted from an AR checkpoint decode as
well as a full-canvas diffusion model of the same decoding budget? One run answers it on a
synthetic sequence task (`reverse` or `sort` a random symbol string), at a CPU scale:

1. an AR model (prefix-LM, decoder-only) is trained on the task;
2. AR2Diff stage 2 converts it twice with the absorbing (masked) loss and the same number of
   steps: full canvas (`prefix_diffusion` attention) and block diffusion (`block_causal`, block
   size b);
3. `workbench.benchmarks.decode_speed` decodes the held-out prompts (as one batch) with greedy
   KV-cached AR, the full canvas (low-confidence commits) and blocks (low-confidence and
   threshold commits), at budgets of `steps_per_token` forward passes per canvas token: a
   full canvas of L tokens gets round(f x L) steps, each block round(f x b), so both spend the
   same denoising passes (each block's commit rides on the next block's first step).

Every row carries exact match and token accuracy next to its time and its ratio to AR.
Writes decode_quality.json (config, data hash, training losses, rows) to --out, and the three
training runs to --out/decode_quality_runs/{ar,diffusion,block} (rerun: finished runs are reused).

    python -m workbench.benchmarks.decode_quality --out runs/bench
    python -m workbench.benchmarks.decode_quality --task sort --block-size 8
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from workbench.benchmarks.decode_speed import DecodeSpeedConfig, EvalSet, run_decode_speed
from workbench.config import save_json
from workbench.models import ModelConfig, build_model
from workbench.objectives.losses import LossConfig
from workbench.training import OptimizerConfig, TrainConfig, load_model, train
from workbench.training.ar2diff import ar2diff
from workbench.training.logging import read_metrics
from workbench.training.sources import Seq2SeqSource

PAD, EOS, MASK, FIRST_SYMBOL = 0, 1, 3, 4  # the from-scratch special ids (0 pad, 1 eos, 2 unk, 3 mask)
TASKS = {"reverse": lambda s: s[::-1], "sort": sorted}
CONVERSIONS = {"diffusion": dict(attention="prefix_diffusion"), "block": dict(attention="block_causal")}


@dataclasses.dataclass(frozen=True)
class DecodeQualityConfig:
    task: str = "reverse"
    symbols: int = 24  # alphabet size
    min_len: int = 6
    max_len: int = 16  # the longest prompt; the canvas holds max_len + EOS, rounded up to whole blocks
    train_pairs: int = 8192
    test_pairs: int = 128
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    d_ff: int = 512
    ar_steps: int = 1500
    adapt_steps: int = 1000  # each conversion
    batch_size: int = 32
    learning_rate: float = 3e-3
    block_size: int = 4
    steps_per_token: tuple[float, ...] = (0.25, 0.5, 1.0)  # decoding budgets
    threshold: float = 0.9
    repeats: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; expected one of {sorted(TASKS)}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"min_len={self.min_len}, max_len={self.max_len}: need 1 <= min_len <= max_len")
        if self.symbols < 2 or self.block_size < 1 or self.test_pairs < 1 or self.train_pairs < 1:
            raise ValueError("symbols must be >= 2 and block_size, test_pairs, train_pairs >= 1")
        if not self.steps_per_token or min(self.steps_per_token) <= 0:
            raise ValueError(f"steps_per_token={self.steps_per_token}: give positive budgets (forward passes per "
                             f"canvas token), e.g. (0.25, 0.5, 1.0)")
        unmatched = [f for f in self.steps_per_token if f * self.block_size < 1]
        if unmatched:  # a block needs at least one step: blocks would spend more than the budget
            raise ValueError(f"steps_per_token {unmatched} give blocks of {self.block_size} tokens less than one step; "
                             f"use budgets >= 1/block_size = {1 / self.block_size:g}")

    @property
    def canvas_len(self) -> int:
        return -(-(self.max_len + 1) // self.block_size) * self.block_size

    def budget_steps(self, fraction: float) -> tuple[int, int]:
        """(full-canvas steps, steps per block) for `fraction` forward passes per canvas token."""
        return max(1, round(fraction * self.canvas_len)), max(1, round(fraction * self.block_size))


def task_pairs(config: DecodeQualityConfig) -> tuple[list, list, list, list]:
    """(train inputs, train targets, test inputs, test references): random symbol strings and their
    task outputs; test prompts never occur in training. Targets end with EOS, references do not."""
    rng = np.random.default_rng([config.seed, 17])
    task = TASKS[config.task]

    def draw() -> tuple[int, ...]:
        n = int(rng.integers(config.min_len, config.max_len + 1))
        return tuple(int(t) for t in rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + config.symbols, size=n))

    train_inputs = [draw() for _ in range(config.train_pairs)]
    seen, test_inputs = set(train_inputs), []
    for _ in range(100 * config.test_pairs):
        if len(test_inputs) == config.test_pairs:
            break
        prompt = draw()
        if prompt not in seen:
            seen.add(prompt)
            test_inputs.append(prompt)
    if len(test_inputs) < config.test_pairs:
        raise ValueError(f"only {len(test_inputs)} of test_pairs={config.test_pairs} unseen prompts exist; raise "
                         f"symbols or max_len, or lower train_pairs")
    train_targets = [list(task(list(p))) + [EOS] for p in train_inputs]
    return train_inputs, train_targets, test_inputs, [tuple(task(list(p))) for p in test_inputs]


def _train_config(config: DecodeQualityConfig, steps: int, kind: str) -> TrainConfig:
    return TrainConfig(steps=steps, loss=LossConfig(kind=kind, special_ids=(PAD, EOS, 2), mask_id=MASK),
                       optimizer=OptimizerConfig(learning_rate=config.learning_rate,
                                                 warmup_steps=min(100, max(steps // 10, 1))),
                       seed=config.seed, log_every=max(steps // 10, 1), checkpoint_every=max(steps, 1),
                       progress=False, tensorboard=False)


def _final_loss(run_dir: Path) -> Optional[float]:
    losses = [row["loss"] for row in read_metrics(run_dir) if "loss" in row]
    return losses[-1] if losses else None


def train_models(config: DecodeQualityConfig, runs: Path, pairs: tuple) -> tuple[dict, dict]:
    """The AR model and its two conversions ({method: model}, run folders under `runs`) and their
    final training losses. Finished runs of the same config are reused (the trainer resumes them)."""
    inputs, targets, _, _ = pairs
    canvas = config.canvas_len
    model_config = ModelConfig(vocab_size=FIRST_SYMBOL + config.symbols, d_model=config.d_model,
                               num_layers=config.num_layers, num_heads=config.num_heads, d_ff=config.d_ff,
                               max_len=config.max_len + canvas, attention="prefix_lm", dtype="float32")

    def source(pad_targets: bool) -> Seq2SeqSource:
        return Seq2SeqSource(inputs, targets, input_len=config.max_len, target_len=canvas,
                             batch_size=config.batch_size, pad_targets=pad_targets, seed=config.seed, pad_id=PAD)

    data_info = {"task": config.task, "pairs_sha256": pairs_hash(pairs)}
    train(build_model(model_config, config.seed), _train_config(config, config.ar_steps, "ar"), source(False),
          runs / "ar", data_info=data_info)
    losses = {"ar": _final_loss(runs / "ar")}
    for method, switch in CONVERSIONS.items():
        block_size = config.block_size if switch["attention"] == "block_causal" else None
        ar2diff(runs / "ar", runs / method, source(True), _train_config(config, config.adapt_steps, "absorbing"),
                block_size=block_size, data_info=data_info, **switch)
        losses[method] = _final_loss(runs / method)
    return {method: load_model(runs / method)[0] for method in ("ar", *CONVERSIONS)}, losses


def pairs_hash(pairs: tuple) -> str:
    """sha256 of `task_pairs`' output (recorded with every training run and the results)."""
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def run_decode_quality(config: DecodeQualityConfig = DecodeQualityConfig(), out_dir: Path | str = "runs/bench",
                       progress: bool = True) -> pd.DataFrame:
    """Train, convert, decode at every budget; the rows of `decode_speed` with a `budget` column
    (forward passes per canvas token). Writes decode_quality.json to `out_dir`."""
    out_dir = Path(out_dir)
    pairs = task_pairs(config)
    models, losses = train_models(config, out_dir / "decode_quality_runs", pairs)
    _, _, test_inputs, references = pairs
    eval_set = EvalSet(prompts=tuple(test_inputs), references=tuple(references), eos_id=EOS)
    tables = []
    for fraction in config.steps_per_token:
        canvas_steps, block_steps = config.budget_steps(fraction)
        speed = DecodeSpeedConfig(lengths=(config.canvas_len,), num_steps=(canvas_steps,), num_samples=(1,),
                                  batch_size=config.test_pairs, prompt_len=config.max_len, repeats=config.repeats,
                                  warmup=1, diffusion_attention="prefix_diffusion", block_sizes=(config.block_size,),
                                  block_policies=("low_confidence", "threshold"), block_steps=block_steps,
                                  threshold=config.threshold, process="absorbing", temperature=0.0,
                                  max_case_seconds=float("inf"), seed=config.seed)
        table = run_decode_speed(speed, models, progress=progress, eval_set=eval_set)
        table.insert(0, "budget", [np.nan if m == "ar" else fraction for m in table["method"]])
        tables.append(table if not tables else table[table["method"] != "ar"])
    table = pd.concat(tables, ignore_index=True)
    save_json(out_dir / "decode_quality.json", {
        "config": dataclasses.asdict(config), "canvas_len": config.canvas_len, "data": {"pairs_sha256": pairs_hash(pairs)},
        "final_train_loss": losses, "rows": json.loads(table.to_json(orient="records"))})
    return table


SHOWN = ["label", "budget", "forward_passes", "seconds", "speedup_vs_ar", "exact_match", "token_accuracy"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    defaults = DecodeQualityConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--task", default=defaults.task, choices=sorted(TASKS))
    for name in ("symbols", "min_len", "max_len", "train_pairs", "test_pairs", "d_model", "num_layers", "num_heads",
                 "d_ff", "ar_steps", "adapt_steps", "batch_size", "block_size", "repeats", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--threshold", type=float, default=defaults.threshold)
    parser.add_argument("--steps-per-token", type=float, nargs="+", default=list(defaults.steps_per_token))
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    args["steps_per_token"] = tuple(args["steps_per_token"])
    table = run_decode_quality(DecodeQualityConfig(**args), out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[SHOWN].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {Path(out) / 'decode_quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
