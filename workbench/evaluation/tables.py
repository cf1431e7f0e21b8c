"""The paper's Tables 1-3 as data, and this project's results laid beside them.

Paper numbers are copied from Han et al. 2024 (docs/paper.md). Table 1: Base diffusion
models, architecture x objective. Table 2: AR, Diffusion and AR2Diff_N at three sizes.
Table 3: Base diffusion, decoding steps x samples. Tasks and metrics: WMT14 En-Fr
BLEU, SQuAD v1.1 F1, MBPP pass@80 (percent).

Each run directory holds `metrics.json`: one JSON object, or a list of them, with

| key | type | meaning |
|---|---|---|
| task | str | "wmt14_enfr", "squad_v1", "mbpp", "humaneval" or "python_functions" |
| method | str | "AR", "Diffusion" or "AR2Diff_N" (N adaptation steps: "AR2Diff_0", "AR2Diff_10000", "AR2Diff_10K") |
| metric | str | "bleu", "f1", "exact_match", "chrf" or "pass@k" (e.g. "pass@80") |
| score | number | the score in percent, 0-100 |
| model_preset | str | the model preset name, e.g. "tiny" |
| params | int | parameter count |
| train_steps | int | fine-tuning steps on the task |
| num_steps | int or null | diffusion denoising steps at decoding (null for AR) |
| num_samples | int or null | diffusion samples per example, reranked (null for AR) |
| architecture | str, optional | "decoder" (default) or "encoder_decoder" (ModelConfig.arch) |
| objective | str, optional | "prefix_lm" (default) or "span_corruption" |

Instead of `metric` and `score`, an entry may carry one key per score, as the evaluation
runner's summary does (`{"f1": 71.2, "exact_match": 60.1, ...}` or `{"pass@1": ..., "pass@80": ...}`);
it then counts as one entry per score key. `method` is case-insensitive ("ar" = "AR").
Other keys are allowed and ignored. Runs that share a table row and column are averaged
(the long table from `load_runs` keeps each one).
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

TASKS = ("wmt14_enfr", "squad_v1", "mbpp", "humaneval", "python_functions")
TASK_LABELS = {"wmt14_enfr": "WMT14 En-Fr", "squad_v1": "SQuAD", "mbpp": "MBPP", "humaneval": "HumanEval",
               "python_functions": "Python functions"}  # fmt: skip
TABLE_ARCHITECTURES = ("decoder", "encoder_decoder")
OBJECTIVES = ("prefix_lm", "span_corruption")
_METHOD = re.compile(r"^(AR|Diffusion|AR2Diff_(\d+)([KM]?))$")
_METHOD_CASE = {"ar": "AR", "diffusion": "Diffusion", "ar2diff": "AR2Diff"}
_METRIC = re.compile(r"^(bleu|f1|exact_match|chrf|pass@[1-9]\d*)$")

# Paper setting (docs/paper.md): sizes, pretraining and per-task fine-tuning steps.
PAPER_SCALE = {"Base": "~280M params", "Large": "~570M params; printed 270M", "XL": "~1.7B params"}
PAPER_PRETRAIN_STEPS = 1_000_000
PAPER_FINETUNE_STEPS = {"wmt14_enfr": 500_000, "squad_v1": 250_000, "mbpp": 5_000}
PAPER_DECODING = {"num_steps": 10, "num_samples": 8}
_PAPER_METRIC = {"wmt14_enfr": "bleu", "squad_v1": "f1", "mbpp": "pass@80"}

# Table 2: method -> size -> (WMT BLEU, SQuAD F1, MBPP pass@80).
PAPER_TABLE_2 = {
    "AR": {"Base": (33.27, 68.11, 5.5), "Large": (34.92, 78.43, 15.5), "XL": (35.48, 84.08, 15.5)},
    "Diffusion": {"Base": (29.83, 77.41, 12.2), "Large": (29.36, 80.56, 12.2), "XL": (29.30, 82.78, 18.8)},
    "AR2Diff_0": {"Base": (29.62, 64.77, 1.1), "Large": (31.14, 77.82, 3.3), "XL": (32.36, 80.95, 6.6)},
    "AR2Diff_10K": {"Base": (29.41, 68.12, 4.4), "Large": (31.97, 79.62, 8.8), "XL": (32.39, 80.71, 11.1)},
    "AR2Diff_100K": {"Base": (29.92, 71.87, 7.7), "Large": (32.20, 80.71, 10.0), "XL": (32.55, 83.54, 15.5)},
}
# Table 1 (Base diffusion): (architecture, objective) -> (WMT BLEU, SQuAD F1, MBPP pass@80).
PAPER_TABLE_1 = {
    ("encoder_decoder", "prefix_lm"): (27.6, 75.8, 0.0),
    ("decoder", "prefix_lm"): (29.8, 77.4, 12.2),
    ("encoder_decoder", "span_corruption"): (28.7, 78.2, 0.0),
    ("decoder", "span_corruption"): (29.1, 80.6, 11.1),
}
# Table 3 (Base diffusion): (num_steps, num_samples) -> (SQuAD F1, MBPP pass@80).
PAPER_TABLE_3 = {
    (5, 8): (77.41, 5.5),
    (10, 8): (77.41, 12.2),
    (20, 8): (77.72, 16.7),
    (10, 4): (77.51, 11.1),
    (10, 16): (77.13, 13.3),
}

LONG_COLUMNS = [
    "source", "table", "task", "metric", "method", "architecture", "objective", "num_steps", "num_samples",
    "scale", "train_steps", "score", "run_dir",
]  # fmt: skip


class MetricsSchemaError(ValueError):
    """A metrics.json that does not follow the schema in the module docstring."""


def canonical_method(method: str) -> str:
    """The paper's spelling: 'AR2Diff_10000', 'ar2diff_10k' and 'AR2Diff_10K' all become 'AR2Diff_10K'; 'ar' -> 'AR'."""
    head, separator, tail = method.partition("_")
    spelled = _METHOD_CASE.get(head.lower(), head) + separator + tail.upper()
    match = _METHOD.match(spelled)
    if match is None:
        raise MetricsSchemaError(f"method={method!r}; expected 'AR', 'Diffusion' or 'AR2Diff_<N>' such as 'AR2Diff_10K'")
    if match.group(2) is None:
        return spelled
    steps = int(match.group(2)) * {"": 1, "K": 1_000, "M": 1_000_000}[match.group(3)]
    for unit, size in (("M", 1_000_000), ("K", 1_000)):
        if steps and steps % size == 0:
            return f"AR2Diff_{steps // size}{unit}"
    return f"AR2Diff_{steps}"


def _paper_row(table: int, task: str, method: str, size: str, score: float, **fields: Any) -> dict:
    diffusion = method != "AR"
    row = {
        "source": "paper",
        "table": table,
        "task": task,
        "metric": _PAPER_METRIC[task],
        "method": method,
        "architecture": "decoder",
        "objective": "prefix_lm",
        "num_steps": PAPER_DECODING["num_steps"] if diffusion else None,
        "num_samples": PAPER_DECODING["num_samples"] if diffusion else None,
        "scale": f"paper {size} ({PAPER_SCALE[size]})",
        "train_steps": PAPER_FINETUNE_STEPS[task],
        "score": score,
        "run_dir": None,
    }
    row.update(fields)
    return row


def paper_results() -> pd.DataFrame:
    """Every number of the paper's Tables 1-3, one row per cell (columns: LONG_COLUMNS)."""
    rows = []
    three_tasks = ("wmt14_enfr", "squad_v1", "mbpp")
    for (architecture, objective), scores in PAPER_TABLE_1.items():
        for task, score in zip(three_tasks, scores):
            rows.append(_paper_row(1, task, "Diffusion", "Base", score, architecture=architecture, objective=objective))
    for method, by_size in PAPER_TABLE_2.items():
        for size, scores in by_size.items():
            for task, score in zip(three_tasks, scores):
                rows.append(_paper_row(2, task, method, size, score))
    for (num_steps, num_samples), scores in PAPER_TABLE_3.items():
        for task, score in zip(("squad_v1", "mbpp"), scores):
            rows.append(_paper_row(3, task, "Diffusion", "Base", score, num_steps=num_steps, num_samples=num_samples))
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


# --- project runs ---


def _human_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _require(entry: dict, key: str, kinds: tuple, where: str, nullable: bool = False) -> Any:
    if key not in entry:
        if nullable:
            return None
        raise MetricsSchemaError(f"{where}: missing key {key!r}; see workbench.evaluation.tables for the schema")
    value = entry[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
        raise MetricsSchemaError(f"{where}: {key}={value!r} should be {names}")
    return value


def validate_entry(entry: Any, where: str) -> dict:
    """One metrics.json entry checked against the schema; returns it normalised (canonical method name)."""
    if not isinstance(entry, dict):
        raise MetricsSchemaError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    task = _require(entry, "task", (str,), where)
    if task not in TASKS:
        raise MetricsSchemaError(f"{where}: task={task!r}; expected one of {TASKS}")
    method = canonical_method(_require(entry, "method", (str,), where))
    metric = _require(entry, "metric", (str,), where)
    if not _METRIC.match(metric):
        raise MetricsSchemaError(f"{where}: metric={metric!r}; expected bleu, f1, exact_match, chrf or pass@<k>")
    score = float(_require(entry, "score", (int, float), where))
    if not (math.isfinite(score) and 0.0 <= score <= 100.0):
        raise MetricsSchemaError(f"{where}: score={score!r} must be a percentage in [0, 100]")
    preset = _require(entry, "model_preset", (str,), where)
    params = _require(entry, "params", (int,), where)
    train_steps = _require(entry, "train_steps", (int,), where)
    if params <= 0 or train_steps < 0:
        raise MetricsSchemaError(f"{where}: params={params} must be > 0 and train_steps={train_steps} >= 0")
    decoding = {}
    for key in ("num_steps", "num_samples"):
        if key not in entry:
            raise MetricsSchemaError(f"{where}: missing key {key!r} (use null for AR runs)")
        value = _require(entry, key, (int,), where, nullable=True)
        if value is not None and value < 1:
            raise MetricsSchemaError(f"{where}: {key}={value} must be >= 1 or null")
        decoding[key] = value
    architecture = entry.get("architecture", "decoder")
    objective = entry.get("objective", "prefix_lm")
    if architecture not in TABLE_ARCHITECTURES or objective not in OBJECTIVES:
        raise MetricsSchemaError(
            f"{where}: architecture={architecture!r}, objective={objective!r}; expected one of "
            f"{TABLE_ARCHITECTURES} and {OBJECTIVES}"
        )
    return {
        "task": task, "method": method, "metric": metric, "score": score, "model_preset": preset,
        "params": params, "train_steps": train_steps, **decoding,
        "architecture": architecture, "objective": objective,
    }  # fmt: skip


def load_run(run_dir: str | Path) -> list[dict]:
    """The validated entries of one run directory's metrics.json."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; every run directory needs a metrics.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MetricsSchemaError(f"{path}: not valid JSON ({error})") from error
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise MetricsSchemaError(f"{path}: an empty list; write at least one result")
    validated = []
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        for one in _expand_summary(entry, where) if isinstance(entry, dict) and "score" not in entry else [entry]:
            validated.append(validate_entry(one, where))
    return validated


def _expand_summary(summary: dict, where: str) -> list[dict]:
    """A summary with one key per score ({"f1": 71.2, "exact_match": 60.1, ...}, as the evaluation
    runner writes) becomes one entry per score key."""
    keys = [k for k in summary if _METRIC.match(k) and isinstance(summary[k], (int, float))]
    if not keys:
        raise MetricsSchemaError(
            f"{where}: no 'score' key and no score keys (bleu, f1, exact_match, chrf, pass@<k>); "
            "see workbench.evaluation.tables for the schema"
        )
    return [{**summary, "metric": key, "score": summary[key]} for key in keys]


def load_runs(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """All project results, one row per metrics.json entry (columns: LONG_COLUMNS)."""
    rows = []
    for run_dir in run_dirs:
        for entry in load_run(run_dir):
            rows.append({
                "source": "project",
                "table": None,
                **{k: entry[k] for k in ("task", "metric", "method", "architecture", "objective", "num_steps",
                                         "num_samples", "train_steps", "score")},
                "scale": f"project {entry['model_preset']} ({_human_count(entry['params'])} params)",
                "run_dir": str(run_dir),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def discover_runs(root: str | Path, exclude: Iterable[str | Path] = ()) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every run folder under `root` (searched recursively) whose metrics.json holds table
    results, loaded (columns: LONG_COLUMNS), and the other metrics.json files found with
    why each was skipped (a folder's path -> the first part of the schema error).
    Folders in `exclude` (e.g. the tables notebook's own output) are not read."""
    root, excluded = Path(root), {Path(p).resolve() for p in exclude}
    found, skipped = [], {}
    for path in sorted(root.rglob("metrics.json")) if root.is_dir() else []:
        if path.parent.resolve() in excluded:
            continue
        try:
            load_run(path.parent)
            found.append(path.parent)
        except (MetricsSchemaError, ValueError) as error:
            skipped[str(path.parent)] = str(error).split(";")[0][-160:]
    return (load_runs(found) if found else pd.DataFrame(columns=LONG_COLUMNS)), skipped


# --- side-by-side tables ---


def _row_key(table: int, row: pd.Series, decoding: tuple[int, int]) -> Optional[str]:
    plain = row["architecture"] == "decoder" and row["objective"] == "prefix_lm"
    has_decoding = pd.notna(row["num_steps"]) and pd.notna(row["num_samples"])
    default_decoding = not has_decoding or (int(row["num_steps"]), int(row["num_samples"])) == decoding
    if table == 1:
        usable = row["method"] == "Diffusion" and default_decoding
        return f"{row['architecture']} + {row['objective']}" if usable else None
    if table == 2:
        return row["method"] if plain and default_decoding else None
    if row["method"] == "Diffusion" and plain and has_decoding:
        return f"{int(row['num_steps'])} steps x {int(row['num_samples'])} samples"
    return None


def _column_label(row: pd.Series) -> str:
    if row["source"] == "paper":
        return row["scale"]
    return f"{row['scale']}, {int(row['train_steps']):,} steps"


def compare(
    table: int,
    project: pd.DataFrame | Iterable[str | Path] = (),
    *,
    decoding: tuple[int, int] = (PAPER_DECODING["num_steps"], PAPER_DECODING["num_samples"]),
) -> pd.DataFrame:
    """Paper Table `table` (1, 2 or 3) with the project's matching runs beside it.

    Rows: Table 1 architecture + objective (diffusion runs), Table 2 method, Table 3
    "S steps x N samples" (decoder-only prefix-LM diffusion runs). Tables 1 and 2 take
    project diffusion runs decoded with `decoding` = (num_steps, num_samples), the paper's
    10 x 8 unless given, and AR runs. Columns: a MultiIndex (task metric, source), paper
    columns first within each task metric, then project columns (labels start with
    "project" and name preset, parameters and fine-tuning steps). Missing cells are NaN.
    """
    if table not in (1, 2, 3):
        raise ValueError(f"table={table}; the paper has Tables 1, 2 and 3")
    runs = project if isinstance(project, pd.DataFrame) else load_runs(project)
    paper = paper_results()
    paper = paper[paper["table"] == table]
    combined = pd.concat([paper, runs], ignore_index=True) if len(runs) else paper.copy()
    combined["row"] = [_row_key(table, r, tuple(decoding)) for _, r in combined.iterrows()]
    combined = combined[combined["row"].notna()]
    combined["column"] = [_column_label(r) for _, r in combined.iterrows()]
    combined["group"] = [f"{TASK_LABELS[t]} {m}" for t, m in zip(combined["task"], combined["metric"])]
    wide = combined.pivot_table(index="row", columns=["group", "column"], values="score", aggfunc="mean", sort=False)
    group_order = {g: i for i, g in enumerate(dict.fromkeys(combined["group"]))}
    column_order = {c: i for i, c in enumerate(dict.fromkeys(combined["column"]))}  # paper rows come first
    wide = wide[sorted(wide.columns, key=lambda gc: (group_order[gc[0]], column_order[gc[1]]))]
    wide = wide.reindex(list(dict.fromkeys(combined["row"])))
    wide.index.name = {1: "architecture + objective", 2: "method", 3: "decoding"}[table]
    wide.columns.names = ["task metric", "source"]
    return wide


def caption(table: int) -> str:
    what = {
        1: "Table 1: Base diffusion models by architecture and objective (Base: ~280M params decoder-only, "
        "~590M encoder-decoder).",
        2: "Table 2: AR, Diffusion and AR2Diff_N (N adaptation steps) by model size.",
        3: "Table 3: Base diffusion models by decoding steps x samples.",
    }[table]
    steps = ", ".join(f"{TASK_LABELS[t]} {_human_count(s)}" for t, s in PAPER_FINETUNE_STEPS.items())
    return (
        f"{what} Paper: {_human_count(PAPER_PRETRAIN_STEPS)} pretraining steps (mC4 + The Stack), fine-tuning "
        f"steps {steps}; diffusion decodes with {PAPER_DECODING['num_steps']} steps x "
        f"{PAPER_DECODING['num_samples']} samples unless the row says otherwise. Project columns (highlighted) "
        "name their preset, parameter count and fine-tuning steps; data and scale differ from the paper, so "
        "compare methods within a column, not numbers across columns."
    )


def to_html(wide: pd.DataFrame, title: str = "", precision: int = 2) -> str:
    """An HTML table of `compare(...)` output with project columns highlighted (no Jinja needed)."""
    project_style = ' style="background:#fff3cd"'
    groups = list(dict.fromkeys(wide.columns.get_level_values(0)))
    head_top = "".join(
        f'<th colspan="{sum(1 for g in wide.columns.get_level_values(0) if g == group)}">{html.escape(group)}</th>'
        for group in groups
    )
    head_bottom = "".join(
        f"<th{project_style if column.startswith('project') else ''}>{html.escape(column)}</th>"
        for _, column in wide.columns
    )
    body = []
    for index, values in wide.iterrows():
        cells = []
        for (_, column), value in zip(wide.columns, values):
            text = "–" if pd.isna(value) else f"{value:.{precision}f}"
            style = ' class="project"' + project_style if column.startswith("project") else ' class="paper"'
            cells.append(f"<td{style}>{text}</td>")
        body.append(f"<tr><th>{html.escape(str(index))}</th>{''.join(cells)}</tr>")
    caption_html = f"<caption>{html.escape(title)}</caption>" if title else ""
    name = html.escape(str(wide.index.name or ""))
    return (
        f'<table class="workbench-comparison" border="1">{caption_html}<thead>'
        f'<tr><th rowspan="2">{name}</th>{head_top}</tr><tr>{head_bottom}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def render_tables(tables: Iterable[int], project: pd.DataFrame, decoding: tuple[int, int] = (10, 8),
                  html: Optional[str | Path] = None) -> tuple[list[str], dict]:
    """Each paper table beside the project's results as HTML, and a summary per table (its
    rows, the project's columns and how many project cells are filled); all of them also written to
    `html` as one page when given."""
    rendered, summary = [], {}
    for table in tables:
        wide = compare(table, project, decoding=tuple(decoding))
        rendered.append(to_html(wide, caption(table)))
        project_columns = [c for c in wide.columns if c[1].startswith("project")]
        summary[str(table)] = {"rows": list(map(str, wide.index)), "project_columns": ["/".join(c) for c in project_columns],
                               "project_cells": int(wide[project_columns].notna().sum().sum()) if project_columns else 0}
    if html is not None:
        Path(html).write_text("<html><head><meta charset='utf-8'></head><body>" + "\n".join(rendered) + "</body></html>",
                              encoding="utf-8")
    return rendered, summary
