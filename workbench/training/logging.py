"""Run metrics: JSONL in the run directory and TensorBoard event files, one call per record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, run_dir: Path | str, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run rewrites them identically)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def write(self, step: int, record: dict, prefix: str = "") -> None:
        record = {"step": int(step), **{prefix + k: _scalar(v) for k, v in record.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path | str, key: Optional[str] = None) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
    return [r for r in records if key is None or key in r]


def _scalar(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
