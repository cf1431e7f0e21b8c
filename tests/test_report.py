"""What the notebooks call to record and show their runs: the output folder, metrics.json, the last
logged numbers of a run, the study's figures, and the seconds of each stage."""

import json

import pytest

from workbench.benchmarks.timing import Stopwatch
from workbench.viz import report


def test_notebook_dir_is_created_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = report.notebook_dir("runs/x")
    assert out == tmp_path / "runs" / "x" and out.is_dir() and out.is_absolute()
    assert report.notebook_dir("runs/x") == out  # again: the same folder, kept


def test_save_metrics_writes_json_and_says_where(tmp_path, capsys):
    report.save_metrics(tmp_path / "metrics.json", {"b": 1, "a": [1.5, None]})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": [1.5, None], "b": 1}
    assert capsys.readouterr().out == f"wrote {tmp_path / 'metrics.json'}\n"


def test_run_numbers_are_the_last_logged_values(tmp_path):
    lines = [{"step": 1, "loss": 3.0, "accuracy": 0.1}, {"step": 2, "eval_loss": 2.5}, {"step": 2, "loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert report.run_numbers(tmp_path, 2, "accuracy", final_loss="loss", held_out_loss="eval_loss") == {
        "steps": 2, "accuracy": 0.1, "final_loss": 2.0, "held_out_loss": 2.5}
    assert report.run_numbers(tmp_path / "never_trained", 0, final_loss="loss") == {"steps": 0, "final_loss": None}
    with pytest.raises(KeyError, match="no logged 'accuracy_non_pad'"):
        report.run_numbers(tmp_path, 2, "accuracy_non_pad")


def test_study_figures_plot_their_rows():
    cells = [{"run": "decoder_prefix_lm", "held_out_loss": 4.0, "objective": "prefix_lm", "architecture": "decoder"}]
    assert list(report.held_out_loss_figure(cells).data[0].y) == [4.0]
    sweep = [{"adaptation_steps": n, "held_out_diffusion_loss": loss} for n, loss in ((0, 9.0), (10, 7.5))]
    assert list(report.adaptation_figure(sweep).data[0].x) == [0, 10]
    grid = [{"num_steps": 5, "num_samples": 8, "metric": "chrf", "score": 3.0, "decode_seconds": 0.5}]
    assert list(report.decoding_budget_figure(grid).data[0].text) == ["5x8"]
    assert len(report.decoding_budget_figure([]).data) == 0  # no Diffusion model: an empty figure, no error


def test_stopwatch_records_each_stage_and_returns_its_result():
    clock = Stopwatch()
    assert clock.run("add", lambda a, b=0: a + b, 2, b=3) == 5
    assert clock.run("name", lambda name: name, name="x") == "x"  # a stage's own `name` argument passes through
    assert list(clock.seconds) == ["add", "name"] and all(s >= 0 for s in clock.seconds.values())
