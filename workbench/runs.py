"""Run directories: every run records its config, seed, data files with hashes, and git commit."""

from __future__ import annotations

import datetime
import hashlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from workbench.config import load_json, save_json, to_dict

RUN_INFO = "run_info.json"


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(texts: Iterable[str]) -> str:
    """Hash of a sequence of strings (for data built at run time, e.g. the stdlib corpus)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
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
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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


def read_run_info(run_dir: Path | str) -> dict:
    path = Path(run_dir) / RUN_INFO
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a workbench run directory?")
    return load_json(path)
