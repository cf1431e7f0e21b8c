"""Pretraining quality within a wall-clock budget: held-out loss against the unigram entropy.

A model that ignores context cannot beat the unigram entropy of the held-out tokens; how
far below it a run gets in a fixed time says whether the trainer, data pipeline and model
learn at all on this machine. Defaults: the `small` decoder (22M parameters with the
8K-token default tokenizer) on the English text mixture, causal LM, on whatever device is
present (float32 on CPU). The table gives, at each evaluation, the seconds of training so
far (compilation included; tokenizing and earlier evaluations too, in `seconds_total`),
the train loss and the held-out loss; JSON goes to --out.

    python -m workbench.benchmarks.pretrain_budget --out runs/bench      # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import pandas as pd

from workbench import study
from workbench.config import save_json
from workbench.models import param_count
from workbench.training import OptimizerConfig, TrainConfig
from workbench.training.logging import read_metrics


@dataclasses.dataclass(frozen=True)
class PretrainBudgetConfig:
    preset: str = "small"
    tokenizer_preset: str = "default"
    dataset: str = "text"
    objective: str = "causal_lm"  # loss on every token; prefix_lm trains on about half of them
    steps: int = 375  # ~10 minutes on 2 CPU cores, tokenizing and compiling included
    seq_len: int = 128
    batch_size: int = 8
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    eval_every: int = 25
    eval_batches: int = 8
    max_tokens: int = 1_000_000  # of the training split (more than `steps` x batch x seq_len reads)
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.eval_every < 1 or self.eval_batches < 1:
            raise ValueError(f"steps={self.steps}, eval_every={self.eval_every} and eval_batches="
                             f"{self.eval_batches} must be >= 1")


def run_pretrain_budget(config: PretrainBudgetConfig, out_dir: Path | str, data_dir=None) -> dict:
    """Pretrain into out_dir/pretrain_budget_run (resumes if present); the payload written to
    out_dir/pretrain_budget.json, with the held-out loss per evaluation as a table under "table"."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    run_dir = out_dir / "pretrain_budget_run"
    tokenizer = study.tokenizer_for(out_dir, config.tokenizer_preset, data_dir=data_dir)
    model_config = study.model_config(config.preset, tokenizer, max_len=config.seq_len)
    train_config = TrainConfig(
        steps=config.steps, seed=config.seed, log_every=config.eval_every, eval_every=config.eval_every,
        checkpoint_every=config.steps, progress=False,
        optimizer=OptimizerConfig(learning_rate=config.learning_rate, warmup_steps=config.warmup_steps))
    pretrained = study.pretrain(run_dir, tokenizer, model_config, train_config, dataset=config.dataset,
                                data_dir=data_dir, seq_len=config.seq_len, batch_size=config.batch_size,
                                objective=config.objective, max_tokens=config.max_tokens,
                                eval_batches=config.eval_batches)
    total = time.perf_counter() - started
    table = _table(run_dir, pretrained.unigram_entropy)
    device = jax.devices()[0]
    payload = {
        "config": dataclasses.asdict(config),
        "model": {**dataclasses.asdict(model_config), "params": param_count(model_config)["total"]},
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
        "jax": jax.__version__,
        "seconds_total": total,
        "unigram_entropy": pretrained.unigram_entropy,
        "rows": table.to_dict(orient="records"),
    }
    save_json(out_dir / "pretrain_budget.json", payload)
    return {**payload, "table": table}


def _table(run_dir: Path, unigram_entropy: float) -> pd.DataFrame:
    """One row per evaluation: training seconds so far (from the metrics log), losses and the gap."""
    records = read_metrics(run_dir)
    train = {r["step"]: r for r in records if "loss" in r}
    rows = []
    for record in records:
        if "eval_loss" not in record:
            continue
        step = record["step"]
        logged = train.get(step, {})
        rows.append({"step": step, "train_seconds": logged.get("elapsed_s"), "train_loss": logged.get("loss"),
                     "held_out_loss": record["eval_loss"], "unigram_entropy": unigram_entropy,
                     "below_unigram_nats": unigram_entropy - record["eval_loss"]})
    return pd.DataFrame(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    defaults = PretrainBudgetConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--data-dir", default=None, help="default: $WORKBENCH_DATA_DIR")
    for field in dataclasses.fields(PretrainBudgetConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    args = vars(parser.parse_args(argv))
    out, data_dir = args.pop("out"), args.pop("data_dir")
    payload = run_pretrain_budget(PretrainBudgetConfig(**args), out, data_dir=data_dir)
    print(payload["table"].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{payload['seconds_total']:.0f} s in all (tokenizing, compiling and evaluations included) on "
          f"{payload['device']['kind']}")
    print(f"wrote {Path(out) / 'pretrain_budget.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
