"""Paper tables as data (checked against docs/paper.md) and the paper-vs-project builder."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from workbench.evaluation import tables

PAPER_MD = Path(__file__).resolve().parents[2] / "shared" / "docs" / "paper.md"


def _run(tmp_path, name, entries):
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps(entries))
    return run_dir


def _entry(**overrides):
    entry = {
        "task": "squad_v1", "method": "Diffusion", "metric": "f1", "score": 40.0, "model_preset": "tiny",
        "params": 12_300_000, "train_steps": 2000, "num_steps": 10, "num_samples": 8,
    }  # fmt: skip
    entry.update(overrides)
    return entry


@pytest.mark.skipif(not PAPER_MD.exists(), reason="docs/paper.md not present")
def test_paper_numbers_match_the_paper_text():
    text = PAPER_MD.read_text()
    table_2 = {}
    for method, cells in re.findall(r"^\| (AR|Diffusion|AR2Diff_\w+) \|(.*)\|$", text, re.MULTILINE):
        table_2[method] = [tuple(float(x) for x in cell.split("/")) for cell in cells.split("|")]
    assert table_2 == {m: [by_size[s] for s in ("Base", "Large", "XL")] for m, by_size in tables.PAPER_TABLE_2.items()}

    line_1 = next(line for line in text.splitlines() if line.startswith("Table 1 "))
    found_1 = re.findall(r"(enc-dec|dec-only) (prefix LM|span corruption) (\d+\.\d+) / (\d+\.\d+) / (\d+\.\d+)", line_1)
    names = {"enc-dec": "encoder_decoder", "dec-only": "decoder", "prefix LM": "prefix_lm",
             "span corruption": "span_corruption"}  # fmt: skip
    assert {(names[a], names[o]): (float(x), float(y), float(z)) for a, o, x, y, z in found_1} == tables.PAPER_TABLE_1

    line_3 = next(line for line in text.splitlines() if line.startswith("Table 3 "))
    found_3 = re.findall(r"(\d+)x(\d+) (\d+\.\d+)/(\d+\.\d+)", line_3)
    assert {(int(s), int(n)): (float(f1), float(p)) for s, n, f1, p in found_3} == tables.PAPER_TABLE_3


def test_paper_results_long_table():
    paper = tables.paper_results()
    assert len(paper) == 4 * 3 + 5 * 3 * 3 + 5 * 2
    assert set(paper["source"]) == {"paper"}
    xl_ar_squad = paper[(paper.table == 2) & (paper.method == "AR") & (paper.task == "squad_v1")
                        & paper.scale.str.startswith("paper XL")]  # fmt: skip
    assert xl_ar_squad["score"].tolist() == [84.08]
    assert paper[(paper.table == 2) & (paper.method == "AR")]["num_steps"].isna().all()


@pytest.mark.parametrize(
    "raw, canonical",
    [("AR", "AR"), ("ar", "AR"), ("diffusion", "Diffusion"), ("ar2diff_10k", "AR2Diff_10K"), ("AR2Diff_0", "AR2Diff_0"), ("AR2Diff_10000", "AR2Diff_10K"), ("AR2Diff_100K", "AR2Diff_100K"),
     ("AR2Diff_1500", "AR2Diff_1500"), ("AR2Diff_2000000", "AR2Diff_2M")],
)  # fmt: skip
def test_canonical_method(raw, canonical):
    assert tables.canonical_method(raw) == canonical


@pytest.mark.parametrize(
    "change, message",
    [
        ({"task": "wmt16"}, "task='wmt16'"),
        ({"method": "ar2diff"}, "method='ar2diff'"),
        ({"metric": "rouge"}, "metric='rouge'"),
        ({"score": 0.4 * 1000}, "percentage"),
        ({"score": "87%"}, "score='87%'"),
        ({"params": True}, "params=True"),
        ({"num_steps": 0}, "num_steps=0"),
        ({"architecture": "rnn"}, "architecture='rnn'"),
    ],
)
def test_metrics_json_validation(tmp_path, change, message):
    run_dir = _run(tmp_path, "bad", _entry(**change))
    with pytest.raises(tables.MetricsSchemaError, match=re.escape(message)):
        tables.load_run(run_dir)


def test_metrics_json_missing_pieces(tmp_path):
    entry = _entry()
    del entry["train_steps"]
    with pytest.raises(tables.MetricsSchemaError, match="missing key 'train_steps'"):
        tables.load_run(_run(tmp_path, "a", entry))
    entry = _entry()
    del entry["num_samples"]
    with pytest.raises(tables.MetricsSchemaError, match="use null for AR"):
        tables.load_run(_run(tmp_path, "b", entry))
    with pytest.raises(FileNotFoundError, match="needs a metrics.json"):
        tables.load_run(tmp_path)
    broken = tmp_path / "c"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(tables.MetricsSchemaError, match="not valid JSON"):
        tables.load_run(broken)


def test_compare_lays_project_beside_paper(tmp_path):
    runs = [
        _run(tmp_path, "ar", [_entry(method="AR", num_steps=None, num_samples=None, score=50.0),
                              _entry(method="AR", task="mbpp", metric="pass@8", score=2.0, num_steps=None,
                                     num_samples=None)]),
        _run(tmp_path, "ar2diff_seed0", _entry(method="AR2Diff_10000", score=30.0)),
        _run(tmp_path, "ar2diff_seed1", _entry(method="AR2Diff_10K", score=34.0)),
        _run(tmp_path, "diffusion_20x8", _entry(num_steps=20, score=45.0)),
        _run(tmp_path, "encdec", _entry(architecture="encoder_decoder", score=20.0)),
    ]  # fmt: skip
    project = tables.load_runs(runs)
    assert len(project) == 6 and set(project["source"]) == {"project"}

    table_2 = tables.compare(2, project)
    project_column = ("SQuAD f1", "project tiny (12.3M params), 2,000 steps")
    assert table_2.loc["AR", project_column] == 50.0
    assert table_2.loc["AR2Diff_10K", project_column] == 32.0  # two seeds averaged
    assert pd.isna(table_2.loc["Diffusion", project_column])  # only decoded with 20 steps, not 10 x 8
    assert table_2.loc["AR2Diff_100K", ("SQuAD f1", "paper Base (~280M params)")] == 71.87
    # pass@8 gets its own column group: it is not the paper's pass@80
    assert table_2.loc["AR", ("MBPP pass@8", "project tiny (12.3M params), 2,000 steps")] == 2.0
    groups = list(dict.fromkeys(table_2.columns.get_level_values(0)))
    assert groups == ["WMT14 En-Fr bleu", "SQuAD f1", "MBPP pass@80", "MBPP pass@8"]
    squad_columns = [c for g, c in table_2.columns if g == "SQuAD f1"]
    assert squad_columns[:3] == [tables.paper_results().query("table == 2").scale.unique()[i] for i in range(3)]

    table_3 = tables.compare(3, project)
    assert table_3.loc["20 steps x 8 samples", project_column] == 45.0
    assert table_3.loc["10 steps x 16 samples", ("MBPP pass@80", "paper Base (~280M params)")] == 13.3

    table_1 = tables.compare(1, project)
    assert table_1.loc["encoder_decoder + prefix_lm", project_column] == 20.0
    assert table_1.loc["decoder + span_corruption", ("SQuAD f1", "paper Base (~280M params)")] == 80.6

    with pytest.raises(ValueError, match="table=4"):
        tables.compare(4, project)


def test_html_marks_project_cells(tmp_path):
    run = _run(tmp_path, "r", _entry(method="AR", num_steps=None, num_samples=None, score=50.0))
    page = "\n".join(tables.render_tables((2,), tables.load_runs([run]))[0])
    assert page.count('class="project"') == 5  # one SQuAD column, five method rows
    assert "<td class=\"project\" style=\"background:#fff3cd\">50.00</td>" in page
    assert "project tiny (12.3M params), 2,000 steps" in page and "33.27" in page
    assert "1M pretraining steps" in page
    paper_only = tables.to_html(tables.compare(3), "Table 3")
    assert 'class="project"' not in paper_only and "<caption>Table 3</caption>" in paper_only


def test_runner_summary_form_becomes_one_entry_per_score(tmp_path):
    summary = {
        "task": "squad_v1", "split": "test", "method": "diffusion", "metric": "squad", "exact_match": 25.0,
        "f1": 40.5, "num_examples": 1190, "details": {}, "model_preset": "tiny", "params": 12_300_000,
        "train_steps": 2000, "num_steps": 10, "num_samples": 8,
    }  # fmt: skip
    entries = tables.load_run(_run(tmp_path, "runner", summary))
    assert [(e["method"], e["metric"], e["score"]) for e in entries] == [
        ("Diffusion", "exact_match", 25.0), ("Diffusion", "f1", 40.5),
    ]  # fmt: skip
    no_scores = {k: v for k, v in summary.items() if k not in ("exact_match", "f1")}
    with pytest.raises(tables.MetricsSchemaError, match="no 'score' key and no score keys"):
        tables.load_run(_run(tmp_path, "empty", no_scores))
    missing = {k: v for k, v in summary.items() if k != "params"}
    with pytest.raises(tables.MetricsSchemaError, match="missing key 'params'"):
        tables.load_run(_run(tmp_path, "missing", missing))


def test_discover_runs_finds_table_results_and_says_why_others_were_skipped(tmp_path):
    (tmp_path / "nested").mkdir()
    good = _run(tmp_path / "nested", "good", [_entry(), _entry(task="wmt14_enfr", metric="bleu", score=12.0)])
    _run(tmp_path, "speed", {"rows": []})  # a notebook's own numbers, not a table result
    own = _run(tmp_path, "tables_out", _entry(score=99.0))
    project, skipped = tables.discover_runs(tmp_path, exclude=[own])
    assert project["run_dir"].tolist() == [str(good), str(good)]
    assert sorted(project["score"]) == [12.0, 40.0]
    assert list(skipped) == [str(tmp_path / "speed")] and "no 'score' key" in skipped[str(tmp_path / "speed")]
    empty, nothing = tables.discover_runs(tmp_path / "missing")
    assert empty.empty and list(empty.columns) == tables.LONG_COLUMNS and nothing == {}


def test_render_tables_counts_the_project_cells_per_table(tmp_path):
    run = _run(tmp_path, "r", [_entry(method="AR", num_steps=None, num_samples=None, score=50.0)])
    rendered, summary = tables.render_tables([2], tables.load_runs([run]))
    assert len(rendered) == 1 and "<table" in rendered[0]
    assert summary["2"]["project_cells"] == 1


def test_render_tables_writes_one_page_when_asked(tmp_path):
    run = _run(tmp_path, "r", [_entry(method="AR", num_steps=None, num_samples=None, score=50.0)])
    rendered, _ = tables.render_tables([1, 2], tables.load_runs([run]), html=tmp_path / "tables.html")
    page = (tmp_path / "tables.html").read_text(encoding="utf-8")
    assert page.startswith("<html>") and all(table in page for table in rendered)
