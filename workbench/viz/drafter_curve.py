"""The drafter's curve: quality against adaptation tokens and training minutes (`drafter_study.curve`)."""

from __future__ import annotations

from typing import Mapping, Sequence

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

METRICS = (("agreement@32", "token agreement with AR, 32 tokens (lossy drafts)"),
           ("tokens_per_iteration", "tokens per iteration (self-speculation)"))


def curve_figure(curves: Mapping[str, Sequence[dict]]) -> go.Figure:
    """One line per run: each metric of `METRICS` against trained target tokens (top x axis: the
    run's training minutes are in the hover text)."""
    figure = make_subplots(rows=1, cols=len(METRICS), subplot_titles=[title for _, title in METRICS])
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Dark24  # 34 runs before a colour repeats
    for index, (name, points) in enumerate(curves.items()):
        colour = palette[index % len(palette)]  # one colour per run in every panel
        for col, (key, _) in enumerate(METRICS, start=1):
            figure.add_trace(go.Scatter(
                x=[p["target_tokens"] for p in points], y=[p[key] for p in points], mode="lines+markers",
                line={"color": colour}, marker={"color": colour}, name=name, legendgroup=name, showlegend=col == 1,
                text=[f"step {p['step']}, {p['train_minutes']} training minutes" for p in points]), row=1, col=col)
            figure.update_xaxes(title_text="adaptation target tokens", row=1, col=col)
    figure.update_layout(height=480, width=1080, margin=dict(t=50, b=40))
    return figure
