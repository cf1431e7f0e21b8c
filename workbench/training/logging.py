"""Run metrics: JSONL in the run directory and TensorBoard event files, one call per record.

A process killed while appending leaves half a line at the end of metrics.jsonl: readers
skip it, and a resumed run drops it (with a report) before writing that record again.
"""

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

    def truncate_after(self, step: int) -> tuple[list[dict], list[str]]:
        """Drop records past `step` (a resumed run rewrites them identically) and lines that are
        not whole records. Returns the records kept and a report per line dropped as unreadable."""
        if not self.path.exists():
            return [], []
        text = self.path.read_text()
        lines = text.split("\n")
        kept, reports = [], []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                where = "a partial record at its end" if number == len(lines) else f"an unreadable line {number}"
                reports.append(f"{self.path} held {where} ({line[:80]!r}), left by a process killed while "
                               f"writing; dropped (the checkpoint says which steps are done, they are re-run)")
            elif record["step"] <= step:
                kept.append((line, record))
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line, _ in kept))
        tmp.replace(self.path)
        return [record for _, record in kept], reports

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
    """The records of a run's metrics.jsonl (those holding `key`), skipping a partial last line
    (a writer is appending, or was killed while appending)."""
    path = Path(run_dir) / METRICS_FILE
    lines = path.read_text().split("\n") if path.exists() else []
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            if number == len(lines):
                continue
            raise ValueError(f"{path} line {number} is not a JSON record ({line[:80]!r}); resuming the run "
                             f"repairs the file (train into this directory again)")
        records.append(record)
    return [r for r in records if key is None or key in r]


def _parse(line: str) -> Optional[dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def _scalar(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
