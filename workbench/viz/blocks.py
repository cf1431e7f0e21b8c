"""What block decoding did, per position: which block, which step of it committed the token,
and the decoding policy's confidence (the token's probability when it was committed).

`block_commit_table` lays one example out as blocks (rows) x positions in the block (columns);
`block_commit_figure` draws the same as a heatmap coloured by confidence, each cell labelled
with its token and the step that committed it. Positions after the example stopped (EOS) are
padding: blank and uncoloured.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go


def _grids(output, example: int, block_size: int):
    tokens = np.asarray(output.tokens)[example]
    if tokens.shape[0] % block_size:
        raise ValueError(f"{tokens.shape[0]} target positions are not whole blocks of block_size={block_size}; "
                         f"pass the model's config.block_size")
    shape = (tokens.shape[0] // block_size, block_size)
    step = np.asarray(output.commit_step)[example].reshape(shape)
    probs = np.asarray(output.probs)[example].reshape(shape).astype(float)
    return tokens.reshape(shape), step, np.where(step >= 0, probs, np.nan)


def block_commit_table(output, example: int, block_size: int,
                       label: Optional[Callable[[int], str]] = None) -> pd.DataFrame:
    """One row per block, one column per position in it: 'token @ step (p=confidence)',
    '' on padding. `label` turns a token id into text (default: the id)."""
    tokens, step, probs = _grids(output, example, block_size)
    label = label or str
    cells = [[f"{label(int(t))} @{s} (p={p:.2f})" if s >= 0 else "" for t, s, p in zip(*row)]
             for row in zip(tokens, step, probs)]
    return pd.DataFrame(cells, index=pd.Index(range(len(cells)), name="block"),
                        columns=[f"+{i}" for i in range(block_size)])


def block_commit_figure(output, example: int, block_size: int, label: Optional[Callable[[int], str]] = None,
                        title: str = "Block decoding: confidence at commit (cell: token, step)") -> go.Figure:
    tokens, step, probs = _grids(output, example, block_size)
    label = label or str
    text = [[f"{label(int(t))}<br>s{s}" if s >= 0 else "" for t, s in zip(tr, sr)] for tr, sr in zip(tokens, step)]
    fig = go.Figure(go.Heatmap(z=probs, text=text, texttemplate="%{text}", zmin=0.0, zmax=1.0,
                               colorscale="Viridis", colorbar={"title": "p at commit"},
                               hovertemplate="block %{y}, position +%{x}<br>%{text}<br>p=%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="position in block", yaxis_title="block",
                      yaxis={"autorange": "reversed", "dtick": 1}, xaxis={"dtick": 1},
                      height=160 + 40 * tokens.shape[0])
    return fig
