"""Run directories: every run records its config, seed, data files with hashes, and git commit.

A training run directory also holds a lock (one writer at a time) and its full resolved
config, which a re-run compares with its own before it continues the run.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from workbench.config import load_json, save_json, to_dict

RUN_INFO = "run_info.json"
LOCK_FILE = ".lock"


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(repo: Optional[Path] = None) -> str:
    """The current commit (with '+dirty' if the tree has changes), or 'unknown' outside git."""
    cwd = repo or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_run_info(
    run_dir: Path | str,
    *,
    config: Any,
    seed: int,
    data: Optional[dict[str, str]] = None,
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Write run_info.json: config, seed, data hashes (name -> sha256), commit, versions."""
    import jax

    run_dir = Path(run_dir)
    info = {
        "config": to_dict(config),
        "config_type": type(config).__qualname__,
        "seed": int(seed),
        "data": dict(data or {}),
        "git_commit": git_commit(),
        "created": _now(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "host": platform.node(),
        **(extra or {}),
    }
    path = run_dir / RUN_INFO
    save_json(path, info)
    return path


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def recorded_config(run_dir: Path | str) -> Optional[dict]:
    """The config `write_run_info` recorded in `run_dir` (None when there is none)."""
    path = Path(run_dir) / RUN_INFO
    return load_json(path).get("config") if path.exists() else None


def record_config_change(run_dir: Path | str, step: int, config: Any, changes: dict[str, tuple]) -> None:
    """Make `config` the run's recorded config from `step` on, keeping the history of changes
    (none: only fields the record lacked are added)."""
    path = Path(run_dir) / RUN_INFO
    info = load_json(path)
    info["config"] = to_dict(config)
    if changes:
        info.setdefault("config_changes", []).append({"step": int(step), "changes": to_dict(changes)})
    save_json(path, info)


# -- the resolved config of a training run and how a re-run compares with it ---

def describe_source(source: Any) -> dict:
    """A batch source as data: its type, its settings and a sha256 of the data it serves.

    A dataclass source (LMSource, Seq2SeqSource) has its scalar fields recorded and its
    arrays and token lists hashed; any other source is recorded by type only.
    """
    description: dict[str, Any] = {"type": type(source).__qualname__}
    if not dataclasses.is_dataclass(source):
        return description
    digest, hashed = hashlib.sha256(), []
    for field in dataclasses.fields(source):
        value = getattr(source, field.name)
        if _is_data(value):
            digest.update(field.name.encode() + b"\0")
            _hash_data(digest, value)
            hashed.append(field.name)
        else:
            description[field.name] = to_dict(value)
    if hashed:
        description["sha256"] = digest.hexdigest()
        description["hashed_fields"] = hashed
    return description


def _is_data(value) -> bool:
    if isinstance(value, np.ndarray):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], (list, tuple, np.ndarray))


def _hash_data(digest, value) -> None:
    if isinstance(value, np.ndarray):
        digest.update(str((value.dtype.str, value.shape)).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
        return
    for row in value:  # token lists: each row's length, then its ids
        row = np.asarray(row, np.int64)
        digest.update(np.int64(len(row)).tobytes() + row.tobytes())


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"steps": 3}}` -> `{"train.steps": 3}` (lists stay whole values)."""
    config = to_dict(config)
    if not isinstance(config, dict):
        return {prefix: config}
    flat = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def config_differences(recorded: Any, current: Any, ignore: tuple[str, ...] = (),
                       complete: tuple[str, ...] = ("data", "source")) -> dict[str, tuple]:
    """`{field: (recorded, current)}` for each dotted field whose values differ.

    A field only one side has counts as a difference (None on the other side) under the
    `complete` sections (data files, the source's settings) when both sides have the section;
    elsewhere it is not compared (a field added to a config class since the run started).
    Fields under `ignore` are skipped."""
    old, new = flatten(recorded), flatten(current)
    both = set(to_dict(recorded)) & set(to_dict(current))  # sections a record from an older trainer may lack
    keys = (old.keys() & new.keys()) | {k for k in old.keys() ^ new.keys() if k.split(".")[0] in both & set(complete)}
    return {key: (old.get(key), new.get(key)) for key in sorted(keys)
            if old.get(key) != new.get(key) and not key.startswith(ignore)}


def format_differences(differences: dict[str, tuple]) -> str:
    return "\n".join(f"  {key}: recorded {_show(a)}, now {_show(b)}" for key, (a, b) in differences.items())


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


# -- one writer per run directory ----------------------------------------------

class RunDirectoryLocked(RuntimeError):
    pass


class RunLock:
    """An exclusive lock on a run directory, held while a process trains into it.

    `flock` on `<run_dir>/.lock`: the kernel grants it to one open file at a time and drops
    it when its holder dies, so a lock left by a killed process is free for the next taker
    (no pid check, hence no pid-reuse mistake, and two takers cannot both win). The holder
    writes its pid, host and start time into the file, so a refused writer can name it; the
    file is never deleted (deleting a lock file lets two processes lock two different files).
    """

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: Optional[int] = None
        self.taken_over: Optional[str] = None  # the holder that died without releasing it, if any

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirectoryLocked(
                f"{self.path.parent} is being trained into by {_describe_holder(holder)} (lock {self.path}); "
                f"two writers would mix their checkpoints and metrics. Wait for that run to end or stop it, "
                f"or train into another directory."
            ) from None
        except OSError as error:  # a file system without locks (some network mounts): run, but say so
            os.close(fd)
            warnings.warn(f"cannot lock {self.path} ({error}); a second process training into "
                          f"{self.path.parent} would not be refused", stacklevel=2)
            return self
        previous = _read_holder(fd)
        self.taken_over = _describe_holder(previous) if previous else None
        me = {"pid": os.getpid(), "host": platform.node(), "since": _now(), "argv": sys.argv[:4]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # an empty file: released in order, not left by a killed holder
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> Optional[dict]:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"unreadable": text[:200]}


def _describe_holder(holder: Optional[dict]) -> str:
    if not holder:
        return "a process that has not yet written its pid (it is starting)"
    if "unreadable" in holder:
        return f"a process whose lock record is unreadable ({holder['unreadable']!r})"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
