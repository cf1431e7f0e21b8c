"""Denoising trajectories as figures: which tokens each step wrote, and how sure the model was.

`Trajectory` is one example's `DiffusionOutput` on the host, with token pieces and the
decoded text at every step, so a figure needs nothing else. The figure (one sample):

- left: target positions (rows) x steps (columns); each cell shows the token at that step,
  coloured by the model probability of that token; boxed cells were rewritten in that step;
- top right: the reranking score of every sample (lower is better; the chosen one in red);
- bottom right: per-step quality of every sample: token accuracy against the reference
  canvas where one is given, else the fraction of positions rewritten at each step.

`figure_at(traj, sample, step)` is the figure for one step (steps after it are blank);
`animation(traj)` adds one frame per step and a slider (a static, self-contained HTML page
with `write_html`); `workbench.viz.explorer` drives the same traces from widgets.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

HEATMAP, REWRITTEN, SCORES = 0, 1, 2  # trace indices; quality lines follow, the step marker is last
_CELL_PX = 18


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One example's denoising: S samples, K steps run, T target positions."""

    tokens: np.ndarray  # [S, K+1, T] int; entry 0 is the initial canvas
    probs: np.ndarray  # [S, K, T] probability of each chosen token
    changed: np.ndarray  # [S, K, T] bool, position rewritten at that step
    scores: np.ndarray  # [S] reranking scores, lower is better
    chosen: int
    pieces: tuple[tuple[tuple[str, ...], ...], ...]  # [S][K+1][T] display pieces
    texts: tuple[tuple[str, ...], ...]  # [S][K+1] decoded text at each step
    prompt: str = ""
    reference: Optional[str] = None
    quality: Optional[np.ndarray] = None  # [S, K+1] token accuracy vs the reference canvas
    # the same accuracy on the reference's text positions (its ids and EOS) and on its padding
    # apart: an all-padding sample scores high on `quality` against a short reference, 0 here
    quality_text: Optional[np.ndarray] = None  # [S, K+1]
    quality_padding: Optional[np.ndarray] = None  # [S, K+1] (NaN when the reference fills the canvas)

    @property
    def num_samples(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.probs.shape[1])

    @property
    def target_len(self) -> int:
        return int(self.tokens.shape[2])


def display_piece(piece: str) -> str:
    """A SentencePiece piece as a short cell label: spaces, newlines and padding made visible."""
    special = {"<pad>": "·", "</s>": "⏎eos", "<0x0A>": "↵", "<0x09>": "⇥", "<mask>": "▒"}
    if piece in special:
        return special[piece]
    return piece.replace("▁", "␣")


def token_label(tokenizer, token_id: int) -> str:
    """A cell label for one id of any tokenizer. SentencePiece pieces are shown as spelled
    (`display_piece`); other vocabularies (byte-level BPE spells a space 'Ġ' and a newline 'Ċ')
    are decoded one id at a time, with whitespace made visible and the role tokens as symbols.
    An id holding part of a multi-byte character keeps its raw spelling."""
    from workbench.data.tokenizer import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return display_piece(tokenizer.id_to_piece(token_id))
    specials = tokenizer.specials
    roles = {specials.pad: "·", specials.eos: "⏎eos", specials.mask: "▒"}
    if token_id in roles:
        return roles[token_id]
    text = tokenizer.decode([token_id], stop_at_eos=False, stop_at_pad=False)
    if "\ufffd" in text or not text:
        return tokenizer.id_to_piece(token_id)
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def trajectory_from_output(
    output,
    tokenizer,
    example: int = 0,
    *,
    prompt: str = "",
    reference: Optional[str] = None,
) -> Trajectory:
    """Example `example` of a `DiffusionOutput`, cut to the steps actually run.

    With `reference` (the target text), quality[s, k] is the fraction of the T target
    positions equal to the reference canvas (reference ids, EOS, then padding), the
    canvas the diffusion loss trains towards; quality_text and quality_padding split it
    into the reference's text positions (ids and EOS) and its padding positions.
    """
    batch = int(np.asarray(output.tokens).shape[0])
    if not 0 <= example < batch:
        raise IndexError(f"example={example} is outside the batch of {batch}; pick 0..{batch - 1}")
    steps = int(np.asarray(output.steps_run))
    tokens = np.asarray(output.trajectory)[example, :, : steps + 1]
    probs = np.asarray(output.probs, np.float32)[example, :, :steps]
    changed = np.asarray(output.changed, bool)[example, :, :steps]
    scores = np.asarray(output.scores, np.float32)[example]
    lookup: dict[int, str] = {}

    def piece(i: int) -> str:
        if i not in lookup:
            lookup[i] = token_label(tokenizer, i)
        return lookup[i]

    pieces = tuple(tuple(tuple(piece(int(i)) for i in row) for row in sample) for sample in tokens)
    texts = tuple(tuple(tokenizer.decode(row) for row in sample) for sample in tokens)
    quality = quality_text = quality_padding = None
    if reference is not None:
        target_len = tokens.shape[-1]
        ids = tokenizer.encode(reference, add_eos=True)[:target_len]
        canvas = np.full(target_len, tokenizer.pad_id, np.int64)
        canvas[: len(ids)] = ids
        hit = tokens == canvas[None, None, :]
        quality = hit.mean(axis=-1)
        text = np.arange(target_len) < len(ids)
        quality_text = hit[..., text].mean(axis=-1)
        quality_padding = hit[..., ~text].mean(axis=-1) if (~text).any() else np.full(quality.shape, np.nan)
    return Trajectory(tokens=tokens, probs=probs, changed=changed, scores=scores,
                      chosen=int(np.asarray(output.chosen)[example]), pieces=pieces, texts=texts, prompt=prompt,
                      reference=reference, quality=quality, quality_text=quality_text,
                      quality_padding=quality_padding)


def final_accuracy(traj: Trajectory) -> dict:
    """The chosen sample's final accuracy against the reference, overall and on text and
    padding positions apart (the fields a metrics.json records); None without a reference."""
    if traj.quality is None:
        return {"final_accuracy": None, "final_accuracy_text": None, "final_accuracy_padding": None}
    last = lambda q: None if np.isnan(q[traj.chosen, -1]) else float(q[traj.chosen, -1])
    return {"final_accuracy": last(traj.quality), "final_accuracy_text": last(traj.quality_text),
            "final_accuracy_padding": last(traj.quality_padding)}


def record(traj: Trajectory) -> dict:
    """What a metrics.json records of one trajectory: the prompt (its first 200 characters), the chosen
    sample, its score and final text, its accuracy (`final_accuracy`) and the fraction of positions each
    step rewrote."""
    return {"prompt": traj.prompt[:200], "chosen_sample": traj.chosen, "chosen_score": float(traj.scores[traj.chosen]),
            "steps": traj.num_steps, "final_text": traj.texts[traj.chosen][-1], **final_accuracy(traj),
            "rewritten_per_step": traj.changed[traj.chosen].mean(axis=-1).round(3).tolist()}


def page_record(trajectories: Sequence[Trajectory], html: str) -> dict:
    """What a metrics.json records of a page of trajectories (`write_trajectories_html`): its file name,
    how many it shows, and each one's final accuracy overall."""
    return {"html": html, "examples": len(trajectories),
            "final_accuracy": [final_accuracy(traj)["final_accuracy"] for traj in trajectories]}


def _check(traj: Trajectory, sample: int, step: int) -> None:
    if not 0 <= sample < traj.num_samples:
        raise IndexError(f"sample={sample}; this trajectory has samples 0..{traj.num_samples - 1}")
    if not 0 <= step <= traj.num_steps:
        raise IndexError(f"step={step}; this trajectory has steps 0..{traj.num_steps} (0 is the initial canvas)")


def _shorten(text: str, limit: int = 110) -> str:
    text = text.replace("\n", "↵")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def heatmap_values(traj: Trajectory, sample: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """z [T, K+1] (probability; NaN for the initial canvas and for steps after `step`) and cell labels."""
    _check(traj, sample, step)
    z_TxK = np.full((traj.target_len, traj.num_steps + 1), np.nan, np.float32)
    z_TxK[:, 1 : step + 1] = traj.probs[sample, :step].T
    labels = np.full(z_TxK.shape, "", object)
    for k in range(step + 1):
        labels[:, k] = traj.pieces[sample][k]
    return z_TxK, labels


def rewritten_cells(traj: Trajectory, sample: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, positions) of the cells rewritten in steps 1..`step`."""
    _check(traj, sample, step)
    k_idx, t_idx = np.nonzero(traj.changed[sample, :step])
    return k_idx + 1, t_idx


def step_title(traj: Trajectory, sample: int, step: int) -> str:
    _check(traj, sample, step)
    chosen = ", chosen" if sample == traj.chosen else ""
    lines = [
        f"prompt: {_shorten(traj.prompt)}" if traj.prompt else "",
        f"sample {sample} (score {traj.scores[sample]:.3f}{chosen}), step {step}/{traj.num_steps}: "
        f"{_shorten(traj.texts[sample][step]) or '(empty)'}",
    ]
    return "<br>".join(line for line in lines if line)


def per_step_quality(traj: Trajectory) -> tuple[np.ndarray, str]:
    """[S, K+1] values for the quality panel and their label."""
    if traj.quality is not None:
        return traj.quality, "token accuracy vs reference"
    frac = np.concatenate([np.zeros((traj.num_samples, 1)), traj.changed.mean(axis=-1)], axis=1)
    return frac, "fraction of positions rewritten"


def figure_at(traj: Trajectory, sample: Optional[int] = None, step: Optional[int] = None) -> go.Figure:
    """The figure for one sample (default: the chosen one) at one step (default: the last)."""
    sample = traj.chosen if sample is None else sample
    step = traj.num_steps if step is None else step
    z, labels = heatmap_values(traj, sample, step)
    fig = make_subplots(
        rows=2, cols=2, column_widths=[0.72, 0.28], horizontal_spacing=0.1, vertical_spacing=0.18,
        specs=[[{"rowspan": 2}, {}], [None, {}]],
        subplot_titles=("tokens x steps (colour: p(token); box: rewritten)", "reranking score (lower is better)",
                        per_step_quality(traj)[1]),
    )
    steps_axis = list(range(traj.num_steps + 1))
    fig.add_trace(go.Heatmap(
        z=z, text=labels, x=steps_axis, y=list(range(traj.target_len)), texttemplate="%{text}",
        textfont={"size": 10}, colorscale="Viridis", zmin=0.0, zmax=1.0, xgap=1, ygap=1,
        colorbar={"title": {"text": "p"}, "x": 0.66, "len": 0.8},
        hovertemplate="position %{y}, step %{x}<br>token %{text}<br>p = %{z:.3f}<extra></extra>",
    ), row=1, col=1)
    k_idx, t_idx = rewritten_cells(traj, sample, step)
    fig.add_trace(go.Scatter(
        x=k_idx, y=t_idx, mode="markers", name="rewritten", hoverinfo="skip", showlegend=False,
        marker={"symbol": "square-open", "size": _CELL_PX - 3, "color": "#e4572e", "line": {"width": 1.5}},
    ), row=1, col=1)
    colors = ["#e4572e" if s == traj.chosen else "#7f7f7f" for s in range(traj.num_samples)]
    fig.add_trace(go.Bar(x=list(range(traj.num_samples)), y=traj.scores.tolist(), marker_color=colors,
                         showlegend=False, hovertemplate="sample %{x}: score %{y:.3f}<extra></extra>"), row=1, col=2)
    quality, label = per_step_quality(traj)
    for s in range(traj.num_samples):
        fig.add_trace(go.Scatter(
            x=steps_axis, y=quality[s].tolist(), mode="lines+markers", name=f"sample {s}", showlegend=False,
            line={"width": 3 if s == traj.chosen else 1, "color": colors[s]}, marker={"size": 4},
            hovertemplate=f"sample {s}, step %{{x}}: %{{y:.3f}}<extra></extra>",
        ), row=2, col=2)
    fig.add_trace(_step_marker(step), row=2, col=2)
    height = max(420, _CELL_PX * traj.target_len + 160)
    fig.update_layout(title={"text": step_title(traj, sample, step), "font": {"size": 13}, "x": 0.01},
                      height=height, width=1100, margin={"t": 110, "l": 50, "r": 20, "b": 40},
                      plot_bgcolor="#f4f4f4")
    # the starting canvas has no model probability: a grey column instead of a colour
    fig.add_vrect(x0=-0.5, x1=0.5, fillcolor="#d0d0d0", line_width=0, layer="below", row=1, col=1)
    fig.update_yaxes(autorange="reversed", title_text="target position", row=1, col=1)
    fig.update_xaxes(title_text="step", tickvals=steps_axis, ticktext=["start", *map(str, steps_axis[1:])],
                     row=1, col=1)
    fig.update_xaxes(title_text="sample", dtick=1, row=1, col=2)
    fig.update_xaxes(title_text="step", row=2, col=2)
    fig.update_yaxes(range=[-0.02, 1.02], row=2, col=2)
    return fig


def _step_marker(step: int) -> go.Scatter:
    return go.Scatter(x=[step, step], y=[0, 1], mode="lines", line={"color": "black", "dash": "dot"},
                      showlegend=False, hoverinfo="skip", name="current step")


def step_marker_index(traj: Trajectory) -> int:
    return SCORES + traj.num_samples + 1


def animation(traj: Trajectory, sample: Optional[int] = None) -> go.Figure:
    """`figure_at` with one frame per step and a step slider (starts at the last step)."""
    sample = traj.chosen if sample is None else sample
    fig = figure_at(traj, sample, traj.num_steps)
    marker = step_marker_index(traj)
    frames = []
    for step in range(traj.num_steps + 1):
        z, labels = heatmap_values(traj, sample, step)
        k_idx, t_idx = rewritten_cells(traj, sample, step)
        frames.append(go.Frame(
            name=str(step), traces=[HEATMAP, REWRITTEN, marker],
            data=[go.Heatmap(z=z, text=labels), go.Scatter(x=k_idx, y=t_idx), _step_marker(step)],
            layout={"title": {"text": step_title(traj, sample, step)}},
        ))
    fig.frames = frames
    fig.update_layout(sliders=[{
        "active": traj.num_steps, "currentvalue": {"prefix": "step "}, "pad": {"t": 30}, "x": 0.0, "len": 0.7,
        "steps": [{"label": str(k), "method": "animate",
                   "args": [[str(k)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
                                        "transition": {"duration": 0}}]}
                  for k in range(traj.num_steps + 1)],
    }])
    fig.update_layout(height=fig.layout.height + 80, margin={"b": 120})
    return fig


def write_html(fig: go.Figure, path: Path | str) -> Path:
    """A self-contained page (plotly.js inlined: works offline and from file://), not auto-playing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, auto_play=False, full_html=True)
    return path


def write_trajectories_html(trajectories: Sequence[Trajectory], path: Path | str) -> Path:
    """Several examples' animations on one self-contained page (plotly.js included once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [animation(t).to_html(include_plotlyjs=(i == 0), full_html=False, auto_play=False)
             for i, t in enumerate(trajectories)]
    path.write_text("<html><head><meta charset='utf-8'></head><body>" + "\n".join(parts) + "</body></html>")
    return path
