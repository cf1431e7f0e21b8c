"""The block-size sweep: each step's candidates timed on every mask, in step order, each step
starting from the block sizes recommended so far; and the recommendation itself.

A step recommends the candidate with the least total time over the swept masks among those
correct on every mask, so a fast but wrong (or failing) candidate never wins.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from workbench.benchmarks.tuning import measure
from workbench.benchmarks.tuning.space import (TuneConfig, base_block_sizes, block_sizes, row_values,
                                               step_candidates, step_values)


def best_row(rows: Sequence[dict]) -> Optional[dict]:
    """The fastest row that ran and passed the correctness check (None if there is none)."""
    ok = [row for row in rows if row["status"] == "ok"]
    return min(ok, key=lambda row: row["time_ms"]) if ok else None


def recommend_values(rows: Sequence[dict], step_name: str, head_dim: int,
                     masks: Sequence[str]) -> Optional[tuple]:
    """The candidate of `step_name` at `head_dim` with the least total time over `masks`,
    among those correct on every mask; None when no candidate is."""
    by_value: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row["step"] == step_name and row["head_dim"] == head_dim:
            by_value.setdefault(row_values(row), {})[row["mask"]] = row
    totals = {value: sum(per_mask[m]["time_ms"] for m in masks)
              for value, per_mask in by_value.items()
              if all(m in per_mask and per_mask[m]["status"] == "ok" for m in masks)}
    return min(totals, key=totals.get) if totals else None


def _recommend_step(config: TuneConfig, rows: list[dict], step_name: str, head_dim: int, base,
                    notes: list[str]):
    value = recommend_values(rows, step_name, head_dim, config.bench.masks)
    if value is None:
        notes.append(f"head_dim={head_dim} {step_name}: no candidate was correct on every mask; "
                     f"kept {step_values(base, step_name)}")
        return base
    return block_sizes(config, head_dim, step_name, value, base)


def tune_head_dim(config: TuneConfig, head_dim: int, notes: list[str],
                  on_row: Optional[Callable[[dict], None]] = None) -> tuple[list[dict], Any]:
    """Rows for every candidate of every step at one head_dim, and the recommended block sizes.
    `on_row` sees each row as it is measured (progress)."""
    cases = [measure.make_case(config, mask_name, head_dim) for mask_name in config.bench.masks]
    rows, recommended = [], base_block_sizes(config.kernel, head_dim)
    for step_name in config.steps:
        for case in cases:
            for i, value in enumerate(step_candidates(config, head_dim, step_name, recommended)):
                blocks = block_sizes(config, head_dim, step_name, value, recommended)
                row = dict(measure.measure(config, case, step_name, blocks), baseline=i == 0)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
        recommended = _recommend_step(config, rows, step_name, head_dim, recommended, notes)
    return rows, recommended
