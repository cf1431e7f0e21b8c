"""First cell of a notebook in Colab (or any fresh runtime): install the workbench if missing.

    import urllib.request; exec(urllib.request.urlopen(BOOTSTRAP_URL).read())   # or copy this file's body

Installs from a local checkout when the notebook runs inside one, else from the git URL
(WORKBENCH_GIT_URL), with the accelerator extra matching the runtime: `tpu` when a TPU is
attached (Colab TPU / TPU VM), `cuda` when an NVIDIA GPU is, else CPU.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path


def accelerator_extra() -> str:
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") or Path("/dev/accel0").exists():
        return "tpu"
    if Path("/dev/nvidia0").exists():
        return "cuda"
    return ""


def install(git_url: str = os.environ.get("WORKBENCH_GIT_URL", "")) -> None:
    if importlib.util.find_spec("workbench") is not None:
        return
    here = Path.cwd()
    checkout = next((p for p in (here, *here.parents) if (p / "pyproject.toml").exists() and (p / "workbench").is_dir()), None)
    extras = ",".join(x for x in ("notebooks", accelerator_extra()) if x)
    if checkout is not None:
        target = f"{checkout}[{extras}]"
        args = ["-e", target]
    elif git_url:
        args = [f"workbench[{extras}] @ git+{git_url}"]
    else:
        raise RuntimeError("workbench is not installed and no checkout was found; set WORKBENCH_GIT_URL to the repository URL")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])


if __name__ == "__main__":
    install()
