"""The pretraining-budget benchmark at a tiny size: the table, the JSON and the unigram baseline."""

import json
from pathlib import Path

import numpy as np
import pytest

from workbench import study
from workbench.benchmarks.pretrain_budget import PretrainBudgetConfig, main
from workbench.training.logging import read_metrics

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
pytestmark = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(), reason=f"no data directory at {DATA}")

ARGS = ["--preset", "tiny", "--tokenizer-preset", "tiny", "--dataset", "tiny_text", "--steps", "6",
        "--eval-every", "3", "--eval-batches", "2", "--seq-len", "32", "--batch-size", "4", "--warmup-steps", "2",
        "--max-tokens", "20000"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget")
    main([*ARGS, "--out", str(out), "--data-dir", str(DATA)])
    return out


def test_rows_follow_the_metrics_log(run):
    payload = json.loads((run / "pretrain_budget.json").read_text())
    rows = payload["rows"]
    assert [r["step"] for r in rows] == [3, 6]
    log = read_metrics(run / "pretrain_budget_run")
    held_out = {r["step"]: r["eval_loss"] for r in log if "eval_loss" in r}
    train = {r["step"]: r for r in log if "loss" in r}
    for row in rows:
        assert row["held_out_loss"] == held_out[row["step"]]
        assert row["train_loss"] == train[row["step"]]["loss"]
        assert row["train_seconds"] == train[row["step"]]["elapsed_s"] > 0
        assert row["below_unigram_nats"] == pytest.approx(row["unigram_entropy"] - row["held_out_loss"])
    assert rows[0]["train_seconds"] < rows[1]["train_seconds"] <= payload["seconds_total"]
    assert payload["config"]["steps"] == 6 and payload["model"]["params"] > 0


def test_unigram_entropy_is_that_of_the_held_out_tokens(run):
    """Recomputed here from the validation tokens the benchmark evaluates on."""
    payload = json.loads((run / "pretrain_budget.json").read_text())
    tokenizer = study.tokenizer_for(run, "tiny")
    tokens = study.token_stream(tokenizer, "tiny_text", "validation", data_dir=DATA, max_tokens=32 * 4 * 2 + 1)
    p = np.bincount(tokens) / len(tokens)
    p = p[p > 0]
    assert payload["unigram_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-9)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="steps=0"):
        PretrainBudgetConfig(steps=0)
