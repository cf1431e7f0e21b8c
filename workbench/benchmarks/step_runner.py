"""A budgeted run of subprocess steps: each step a command with its own time limit, run in
order while the budget lasts, its output in OUT/<name>.log and its files under OUT/<name>/.
OUT/<summary name>.json (each step's argv, status, seconds and a failed step's last log
line, and the device) is rewritten before and after every step, so a killed run still
leaves a summary; `archive` also keeps OUT as one tar.gz, rewritten with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Optional, Sequence

OUT_PLACEHOLDER = "{out}"  # replaced in a step's argv by its own folder, OUT/<name>


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]  # the command; OUT_PLACEHOLDER stands for OUT/<name>
    limit_s: float  # killed (status "timed out") after this many seconds

    def __post_init__(self):
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"step name {self.name!r} must be letters, digits and '_' (it names files)")
        if not self.argv or self.limit_s <= 0:
            raise ValueError(f"step {self.name!r}: argv={self.argv!r} must be non-empty and "
                             f"limit_s={self.limit_s} positive")


def select_steps(plan: Sequence[Step], names: Optional[Sequence[str]]) -> tuple[Step, ...]:
    """The plan's steps named in `names` (in the plan's order); all of them for None."""
    if names is None:
        return tuple(plan)
    known = [step.name for step in plan]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; expected names from {known}")
    return tuple(step for step in plan if step.name in names)


def _argv(step: Step, out: Path) -> list[str]:
    return [arg.replace(OUT_PLACEHOLDER, str(out / step.name)) for arg in step.argv]


def format_plan(steps: Sequence[Step], out: Path, budget_s: float) -> str:
    lines = [f"device suite: {len(steps)} steps, limits {sum(s.limit_s for s in steps):g} s of a {budget_s:g} s "
             f"budget, out {out}"]
    for step in steps:
        lines.append(f"  {step.name:<16} limit {step.limit_s:>5g} s  {shlex.join(_argv(step, out))}")
    return "\n".join(lines)


# Versions worth knowing when a step fails (the installed packages, whatever their source).
VERSIONS_OF = ("jax", "jaxlib", "flax", "optax", "numpy", "pandas", "pyarrow", "datasets", "plotly", "tokenizers")


def describe_device(timeout_s: float = 60.0) -> dict:
    """jax.devices() and the backend, read in a subprocess so that this process never takes
    the accelerator (JAX would pre-allocate its memory away from the steps)."""
    code = f"""
import importlib.metadata, json, jax
def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
d = jax.devices()
print(json.dumps(dict(backend=jax.default_backend(), devices=[str(x) for x in d], device_kind=d[0].device_kind,
                      versions={{name: version(name) for name in {VERSIONS_OF!r}}})))
"""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"jax.devices() took over {timeout_s:g} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"rc {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_step(step: Step, out: Path) -> dict:
    """Run one step to completion or its limit; its output goes to OUT/<name>.log."""
    argv = _argv(step, out)
    (out / step.name).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    with open(out / f"{step.name}.log", "w") as log:
        # A session of its own, so that a timeout kills the step's children too.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=step.limit_s)
            status = "ok" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            status = "timed out"
    result = dict(status=status, rc=rc, seconds=round(time.monotonic() - started, 2))
    if status != "ok":  # the reason, readable in the summary without opening the log
        lines = (out / f"{step.name}.log").read_text(errors="replace").strip().splitlines()
        result["last_line"] = lines[-1][:300] if lines else ""
    return result


def write_summary(out: Path, summary: dict, archive: Optional[Path]) -> None:
    """OUT/device_suite.json (replaced whole, never half-written) and the archive of OUT."""
    tmp = out / "device_suite.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out / "device_suite.json")
    if archive is not None:
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".tmp")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(out, arcname=out.name)
        os.replace(partial, archive)


def run_suite(steps: Sequence[Step], out: Path | str, budget_s: float, *, archive: Optional[Path] = None,
              device: Optional[dict] = None) -> dict:
    """Run `steps` in order within `budget_s` seconds; returns the summary (also written after each step)."""
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(budget_s=budget_s, device=device if device is not None else describe_device(),
                   steps=[dict(name=s.name, argv=_argv(s, out), limit_s=s.limit_s, status="pending") for s in steps])
    write_summary(out, summary, archive)
    for step, row in zip(steps, summary["steps"]):
        left = budget_s - (time.monotonic() - started)
        if left < step.limit_s:
            row.update(status="skipped (budget)", seconds=0.0, budget_left_s=round(left, 1))
        else:
            print(f"[device_suite] {step.name}: running (limit {step.limit_s:g} s, {left:.0f} s of budget left)",
                  flush=True)
            row["status"] = "running"  # what a kill of the whole suite leaves on disk
            write_summary(out, summary, archive)
            row.update(run_step(step, out))
        print(f"[device_suite] {step.name}: {row['status']} ({row['seconds']:.1f} s)", flush=True)
        summary["seconds"] = round(time.monotonic() - started, 2)
        write_summary(out, summary, archive)
    return summary


def format_summary(summary: dict) -> str:
    device = summary["device"]
    where = device.get("device_kind", device.get("error", "?"))
    lines = [f"device suite on {where} ({device.get('backend', '?')}): {summary.get('seconds', 0):.0f} s "
             f"of a {summary['budget_s']:g} s budget"]
    for row in summary["steps"]:
        lines.append(f"  {row['name']:<16} {row['status']:<18} {row.get('seconds', 0):7.1f} s  {row.get('last_line', '')}".rstrip())
    return "\n".join(lines)
