"""The first cell of every notebook runs this file: install the workbench if missing, show the devices.

The cell finds this file in the checkout the notebook runs in (the current folder or one
above it); in a runtime without a checkout (Colab) it downloads it from
WORKBENCH_BOOTSTRAP_URL (e.g. the raw URL of this file in the repository or a fork).

Installs from a local checkout when the notebook runs inside one, else from the pip spec in
WORKBENCH_PIP_SPEC (e.g. git+https://github.com/<owner>/workbench.git, the same variable the
notebooks' first cell reads), with the accelerator extra matching the runtime: `tpu` when a
TPU is attached (Colab TPU / TPU VM), `cuda` when an NVIDIA GPU is, else CPU.
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


def install(pip_spec: str = os.environ.get("WORKBENCH_PIP_SPEC", "")) -> None:
    if importlib.util.find_spec("workbench") is not None:
        return
    here = Path.cwd()
    checkout = next((p for p in (here, *here.parents) if (p / "pyproject.toml").exists() and (p / "workbench").is_dir()), None)
    extras = ",".join(x for x in ("notebooks", accelerator_extra()) if x)
    if checkout is not None:
        target = f"{checkout}[{extras}]"
        args = ["-e", target]
    elif pip_spec:
        url = pip_spec if pip_spec.startswith("git+") else f"git+{pip_spec}"
        args = [f"workbench[{extras}] @ {url}"]
    else:
        raise RuntimeError("workbench is not installed and no checkout was found; set WORKBENCH_PIP_SPEC to "
                           "git+https://github.com/<owner>/workbench.git (or a fork / commit)")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])


def show_devices() -> None:
    import jax

    print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()}")


if __name__ == "__main__":
    install()
    show_devices()
