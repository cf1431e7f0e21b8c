"""What the notebooks show and record: their output folder, loss curves, example picking, metrics.json.

`metrics_entry` writes one result in the schema of `workbench.evaluation.tables` (task,
method, metric, score, model_preset, params, train_steps, num_steps, num_samples), so the
paper-tables notebook can lay every notebook's results beside the paper's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd
import plotly.graph_objects as go

# The number each task's table column reports (runner summary key; all in percent).
PRIMARY_METRIC = {"python_functions": "chrf", "mbpp": "pass@1", "humaneval": "pass@1", "squad_v1": "f1",
                  "wmt14_enfr": "bleu"}  # fmt: skip


def setup_plotly() -> str:
    """In a plain Jupyter kernel, also embed plotly.js once, so figures survive nbconvert's HTML export offline.

    Elsewhere (Colab, VS Code, ...) plotly's own choice is kept. Returns the renderer in use.
    """
    import plotly.io as pio

    if pio.renderers.default == "plotly_mimetype":
        pio.renderers.default = "plotly_mimetype+notebook"
    return pio.renderers.default


def notebook_dir(out_dir: Path | str, embed_plotly: bool = False) -> Path:
    """A notebook's output folder, created, as an absolute path. `embed_plotly`: its figures are to
    survive the HTML export (`setup_plotly`; it adds plotly.js, about 3.5 MB, to the executed notebook)."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if embed_plotly:
        setup_plotly()
    return out


def save_metrics(path: Path | str, metrics) -> None:
    """Write a notebook's metrics.json (`workbench.config.save_json`) and say where."""
    from workbench.config import save_json

    save_json(path, metrics)
    print("wrote", path)


def last_metric(run_dir: Path | str, key: str) -> float:
    """The last logged value of `key` in a training run (fresh or resumed: read from its metrics.jsonl)."""
    from workbench.training.logging import read_metrics

    records = read_metrics(run_dir, key)
    if not records:
        raise KeyError(f"{run_dir} has no logged {key!r}; did its training run log any step?")
    return float(records[-1][key])


def run_numbers(run_dir: Path | str, steps: int, *keys: str, **named: str) -> dict:
    """`{"steps": steps, key: its last logged value, ..., name: the last value of named[name], ...}` of a
    training run of `steps` steps (a run of 0 steps logged nothing: None for each)."""
    named = {**{key: key for key in keys}, **named}
    return {"steps": steps, **{name: last_metric(run_dir, key) if steps else None for name, key in named.items()}}


def loss_curves(runs: Mapping[str, Path | str], keys: tuple[str, ...] = ("loss", "eval_loss"),
                title: str = "training loss") -> go.Figure:
    """One line per (run, key) from the runs' metrics.jsonl; held-out values as markers."""
    from workbench.training.logging import read_metrics

    fig = go.Figure()
    for name, run_dir in runs.items():
        for key in keys:
            records = read_metrics(run_dir, key)
            if records:
                fig.add_trace(go.Scatter(
                    x=[r["step"] for r in records], y=[r[key] for r in records], name=f"{name} {key}",
                    mode="lines+markers" if key.startswith("eval") or len(records) < 3 else "lines",
                ))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss (nats per target token)", height=380,
                      width=900)
    return fig


def primary_score(summary: Mapping) -> tuple[str, float]:
    """(metric name, score in percent) of an `evaluate(...)` summary, as the tables report it."""
    task = summary["task"]
    if task not in PRIMARY_METRIC:
        raise ValueError(f"task {task!r} has no table metric; expected one of {sorted(PRIMARY_METRIC)}")
    metric = PRIMARY_METRIC[task]
    if metric not in summary:
        raise KeyError(f"the {task} summary has no {metric!r} (keys: {sorted(summary)}); for code tasks decode "
                       f"at least as many candidates as k")
    return metric, float(summary[metric])


def metrics_entry(summary: Mapping, *, method: str, model_preset: str, params: int, train_steps: int,
                  num_steps: Optional[int] = None, num_samples: Optional[int] = None, **fields) -> dict:
    """One result for metrics.json in the tables schema; `fields` add architecture, objective or anything else."""
    metric, score = primary_score(summary)
    return {"task": summary["task"], "method": method, "metric": metric, "score": score,
            "model_preset": model_preset, "params": int(params), "train_steps": int(train_steps),
            "num_steps": num_steps, "num_samples": num_samples, **fields}  # fmt: skip


def held_out_loss_figure(rows: Sequence[Mapping]) -> go.Figure:
    """Each pretraining grid cell's held-out loss (`study.pretrain_grid` rows), by objective and architecture."""
    import plotly.express as px

    return px.bar(pd.DataFrame(rows), x="run", y="held_out_loss", color="objective", pattern_shape="architecture",
                  title="held-out loss after pretraining", height=380, width=800)


def adaptation_figure(rows: Sequence[Mapping]) -> go.Figure:
    """Held-out diffusion loss against N, the adaptation steps of AR2Diff_N (`study.adaptation_sweep` rows)."""
    import plotly.express as px

    return px.line(pd.DataFrame(rows), x="adaptation_steps", y="held_out_diffusion_loss", markers=True, height=360,
                   width=700, title="AR2Diff_N: held-out diffusion loss after N adaptation steps",
                   labels={"adaptation_steps": "N (steps)", "held_out_diffusion_loss": "loss (L1 + L2)"})


def decoding_budget_figure(entries: Sequence[Mapping]) -> go.Figure:
    """Score against decoding time, one point per (num_steps, num_samples) entry of a decoding grid (Table 3)."""
    import plotly.express as px

    table = pd.DataFrame(list(entries), columns=["num_steps", "num_samples", "score", "decode_seconds"])
    labels = [f"{s}x{n}" for s, n in zip(table["num_steps"], table["num_samples"])]
    return px.scatter(table, x="decode_seconds", y="score", text=labels, color="num_samples", height=380, width=700,
                      title="Diffusion: score against decoding time (steps x samples)")


def fitting_examples(tokenizer, task: str, *, input_len: int, target_len: int, count: int, split: Optional[str] = None,
                     data_dir=None) -> list[tuple[str, str]]:
    """The first `count` (inputs, targets) pairs of a task split whose inputs and targets (with EOS) fit."""
    from workbench.data import load_dataset
    from workbench.evaluation.tasks import get_task

    spec = get_task(task)
    dataset = load_dataset(spec.dataset, split or spec.eval_split, data_dir=data_dir)
    found = []
    for record in dataset:
        source, target = spec.format_example(dict(record))
        if 0 < len(tokenizer.encode(source)) <= input_len and len(tokenizer.encode(target)) + 1 <= target_len:
            found.append((source, target))
            if len(found) == count:
                break
    if not found:
        raise ValueError(f"no {task} example fits input_len={input_len}, target_len={target_len}; raise them")
    return found
