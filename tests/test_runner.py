"""Evaluation runner end to end on every task's real test split (subsampled), and batch invariance."""

import json
import os
from pathlib import Path

import dataclasses
import pytest

from workbench import study
from workbench.evaluation.runner import EvalConfig, evaluate
from workbench.sampling.ar import ARSamplingConfig
from workbench.sampling.diffusion import DiffusionSamplingConfig
from workbench.training import OptimizerConfig, TrainConfig

DATA = Path(os.environ.get("WORKBENCH_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").exists(), reason=f"no shared datasets at {DATA}")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    tokenizer = study.tokenizer_for(root, "tiny", data_dir=DATA if DATA.exists() else None)
    config = study.model_config("tiny", tokenizer, max_len=1024)
    source, _ = study.task_source(tokenizer, "python_functions", input_len=96, target_len=48, batch_size=4,
                                  diffusion=False, limit=200)
    from workbench.models import build_model

    model = build_model(config, 0)
    train_config = TrainConfig(steps=3, progress=False, tensorboard=False, optimizer=OptimizerConfig(warmup_steps=1))
    study.finetune(root / "ft", model, source, train_config)
    return model, tokenizer, root


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("task,candidates", [("wmt14_enfr", 1), ("squad_v1", 1), ("mbpp", 2), ("humaneval", 2)])
def test_runner_end_to_end_on_real_test_split(finetuned, task, candidates):
    model, tokenizer, root = finetuned
    config = EvalConfig(task=task, limit=2, input_len=900, target_len=16, batch_size=4, num_candidates=candidates,
                        ar=ARSamplingConfig(temperature=0.8 if candidates > 1 else 0.0))
    summary = evaluate(model, tokenizer, config, root / task, data_dir=DATA, progress=False)
    on_disk = json.loads((root / task / "metrics.json").read_text())
    assert on_disk["task"] == task and on_disk["split"] in ("test", "validation")
    metric_key = {"wmt14_enfr": "bleu", "squad_v1": "f1", "mbpp": "pass@1", "humaneval": "pass@1"}[task]
    assert 0.0 <= on_disk[metric_key] <= 100.0
    lines = (root / task / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2
    skipped = summary["lengths"]["inputs_too_long_skipped"]
    assert skipped == 0, f"{skipped} inputs longer than input_len: the test should decode every example"
    assert [len(json.loads(line)["outputs"]) for line in lines] == [candidates, candidates]
    info = json.loads((root / task / "run_info.json").read_text())
    assert info["data"] and info["seed"] == 0
    if task in ("mbpp", "humaneval"):  # code evaluations state the isolation they ran with
        assert on_disk["isolation"]["level"] in ("kernel", "full") and on_disk["isolation"]["description"]
    else:
        assert "isolation" not in on_disk


@pytest.mark.parametrize(
    "fields,pattern",
    [
        ({"task": "mbpp_plus"}, r"task='mbpp_plus'.*expected one of \('wmt14_enfr'"),
        ({"task": "mbpp", "split": "dev"}, r"split='dev'.*task 'mbpp'.*expected one of .*'sanitized_test'.*or None"),
        ({"task": "squad_v1", "limit": 0}, r"limit=0; expected None \(the whole split\) or an integer >= 1"),
        ({"task": "squad_v1", "limit": -3}, r"limit=-3; expected None"),
        ({"task": "wmt14_enfr", "target_len": 0}, r"target_len=0; expected an integer >= 1.*set target_len >= 1"),
        ({"task": "wmt14_enfr", "input_len": -1}, r"input_len=-1; expected an integer >= 1.*set input_len >= 1"),
        ({"task": "mbpp", "num_candidates": 0}, r"num_candidates=0; expected an integer >= 1.*set num_candidates >= 1"),
        ({"task": "mbpp", "batch_size": 0}, r"batch_size=0; expected an integer >= 1.*set batch_size >= 1"),
        ({"task": "mbpp", "code_isolation": "none"}, r"code_isolation='none'; expected one of \('fallback', 'kernel', 'full'\)"),
        ({"task": "mbpp", "method": "beam"}, r"method='beam'; expected 'ar' or 'diffusion'"),
    ],
    ids=["task", "split", "limit-0", "limit-negative", "target_len", "input_len", "num_candidates", "batch_size",
         "code_isolation", "method"],
)
def test_eval_config_checks_its_fields_when_built(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        EvalConfig(**fields)


def test_eval_config_defaults_refuse_the_unsafe_fallback():
    assert EvalConfig(task="humaneval").code_isolation == "kernel"
    assert EvalConfig(task="mbpp", split="sanitized_test", limit=1).split == "sanitized_test"


@needs_data
@pytest.mark.parametrize("method", ["ar", "diffusion"])
def test_metrics_do_not_depend_on_batch_size(finetuned, method, tmp_path):
    model, tokenizer, _ = finetuned
    if method == "diffusion":
        from workbench.models import with_attention

        model = with_attention(model, "bidirectional")
    results = []
    for batch_size in (1, 3):
        config = EvalConfig(task="squad_v1", method=method, limit=3, input_len=900, target_len=12,
                            batch_size=batch_size, diffusion=DiffusionSamplingConfig(num_samples=2, num_steps=3))
        summary = evaluate(model, tokenizer, config, tmp_path / f"b{batch_size}", data_dir=DATA, progress=False)
        preds = (tmp_path / f"b{batch_size}" / "predictions.jsonl").read_text()
        results.append((summary["f1"], summary["exact_match"], preds))
    assert results[0] == results[1]


def test_predictions_load_as_a_table(tmp_path):
    from workbench.evaluation.runner import load_predictions

    rows = [{"id": "007", "outputs": ["a"], "reference": "b"}, {"id": "8", "outputs": ["c", "d"], "reference": "e"}]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = load_predictions(tmp_path)
    assert list(table["id"]) == ["007", "8"] and list(table["outputs"]) == [["a"], ["c", "d"]]
