"""Self-speculative decoding, iteration by iteration: which drafted tokens the AR model kept.

One example of a `SpeculativeOutput` laid out as iterations (rows) x positions in the block
(columns). Position 0 of every block is the AR model's own token (the verifier's choice after the
previous block); positions 1..b-1 were drafted by the adapter under masks. The verifier keeps the
longest prefix of drafts it agrees with: cells are coloured as the AR model's token, a kept draft,
the first rejected draft (the verifier's own token replaces it and opens the next block), or a
draft discarded after that rejection. A last block cut short by `max_new_tokens` shows only
what it committed.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go

AR_TOKEN, KEPT, REJECTED, DISCARDED = 0, 1, 2, 3
STATUS_NAMES = ("AR model's token", "draft kept", "draft rejected", "draft discarded")
_COLOURS = ("#9ecae1", "#74c476", "#fb6a4a", "#d9d9d9")


def speculative_grid(output, example: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [I, b], status [I, b]) for the iterations example `example` ran; status is one of
    AR_TOKEN, KEPT, REJECTED, DISCARDED, or -1 past the end of a block cut short by a stop."""
    committed = np.asarray(output.committed)
    if not 0 <= example < committed.shape[0]:
        raise IndexError(f"example={example} is outside the batch of {committed.shape[0]}; pick 0..{committed.shape[0] - 1}")
    iterations = int(np.asarray(output.iterations)[example])
    counts = committed[example, :iterations]
    tokens = np.asarray(output.drafts)[example, :iterations]
    block = tokens.shape[1]
    position = np.arange(block)[None, :]
    kept = counts[:, None]
    status = np.where(position < kept, KEPT, np.where(position == kept, REJECTED, DISCARDED))
    status[:, 0] = AR_TOKEN
    # A last block cut by the token budget committed fewer tokens than were agreed: whether its
    # next draft was rejected is unknown, so only what it committed is shown.
    if counts.sum() >= np.asarray(output.tokens).shape[1]:
        status[-1] = np.where(position[0] >= counts[-1], -1, status[-1])
    return tokens, status


def speculative_table(output, example: int = 0, label: Optional[Callable[[int], str]] = None) -> pd.DataFrame:
    """One row per iteration: the block's tokens marked by status ('+' kept, 'x' rejected,
    '-' discarded; position 0 unmarked: the AR model's), and how many tokens it committed."""
    tokens, status = speculative_grid(output, example)
    label = label or str
    marks = {AR_TOKEN: "", KEPT: "+", REJECTED: "x", DISCARDED: "-"}
    cells = [[f"{marks[s]}{label(int(t))}" if s >= 0 else "" for t, s in zip(tr, sr)] for tr, sr in zip(tokens, status)]
    table = pd.DataFrame(cells, index=pd.Index(range(1, len(cells) + 1), name="iteration"),
                         columns=[f"+{i}" for i in range(tokens.shape[1])])
    table["committed"] = np.asarray(output.committed)[example, : len(cells)]
    return table


def speculative_figure(output, example: int = 0, label: Optional[Callable[[int], str]] = None,
                       title: str = "Self-speculative decoding: which drafts the AR model kept") -> go.Figure:
    """The grid as a heatmap (one colour per status), each cell labelled with its token."""
    tokens, status = speculative_grid(output, example)
    label = label or str
    text = [[label(int(t)) if s >= 0 else "" for t, s in zip(tr, sr)] for tr, sr in zip(tokens, status)]
    names = [[STATUS_NAMES[s] if s >= 0 else "" for s in sr] for sr in status]
    z = np.where(status >= 0, status, np.nan).astype(float)
    # a discrete colour scale: each status value owns one quarter of [0, 3]
    scale = [[edge, colour] for i, colour in enumerate(_COLOURS) for edge in (i / 4, (i + 1) / 4)]
    fig = go.Figure(go.Heatmap(z=z, text=text, customdata=names, texttemplate="%{text}", zmin=-0.5, zmax=3.5,
                               colorscale=scale, showscale=False, xgap=2, ygap=2,
                               hovertemplate="iteration %{y}, position +%{x}<br>%{text}: %{customdata}<extra></extra>"))
    for colour, name in zip(_COLOURS, STATUS_NAMES):  # a legend for the four colours
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker={"size": 12, "color": colour, "symbol": "square"}))
    kept = np.asarray(output.committed)[example, : tokens.shape[0]]
    fig.update_layout(title=f"{title}<br><sub>{int(kept.sum())} tokens in {tokens.shape[0]} iterations "
                            f"({kept.sum() / max(tokens.shape[0], 1):.2f} per iteration)</sub>",
                      xaxis={"title": "position in block", "dtick": 1},
                      yaxis={"title": "iteration", "autorange": "reversed", "dtick": 1},
                      height=220 + 26 * tokens.shape[0], legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
                      margin={"t": 110},
                      plot_bgcolor="white")
    fig.update_yaxes(tickvals=list(range(tokens.shape[0])), ticktext=[str(i + 1) for i in range(tokens.shape[0])])
    return fig
