"""Finding, loading and registering the C++ kernel library (once per process, on first use)."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

SOURCE_DIR = Path(__file__).resolve().parent
REPO_ROOT = SOURCE_DIR.parent.parent
# WORKBENCH_CPU_KERNELS names another build of the library (e.g. one built outside the checkout).
LIBRARY_PATH = Path(os.environ.get("WORKBENCH_CPU_KERNELS", REPO_ROOT / "build" / "kernels" / "libworkbench_cpu.so"))
BUILD_COMMAND = "make cpu-kernels"  # also run by `make env`
DEFAULT_MIN_PARALLEL_WORK = 1 << 16  # as common.h's min_parallel_work
TARGETS = {  # FFI target name -> exported handler symbol
    "workbench_int8_matmul": "WorkbenchInt8Matmul",
    "workbench_q4_1_matmul": "WorkbenchQ4_1Matmul",
    "workbench_q8_0_matmul": "WorkbenchQ8_0Matmul",
}

_lock = threading.Lock()
_library = None


class KernelLibraryMissing(RuntimeError):
    """The compiled kernel library is absent or older than its sources."""


def _check_fresh(path: Path) -> None:
    if not path.is_file():
        raise KernelLibraryMissing(
            f"the CPU kernel library {path} does not exist, so the int8 decoding path cannot run (it never "
            f"falls back to float32); build it with `{BUILD_COMMAND}` (or `make env`) in {REPO_ROOT} "
            f"(needs g++ and the venv's jaxlib headers)")
    sources = [*SOURCE_DIR.glob("*.cc"), *SOURCE_DIR.glob("*.h")]
    stale = [src.name for src in sources if src.stat().st_mtime > path.stat().st_mtime]
    if stale and "WORKBENCH_CPU_KERNELS" not in os.environ:
        raise KernelLibraryMissing(
            f"the CPU kernel library {path} is older than its sources ({', '.join(sorted(stale))}); rebuild it "
            f"with `{BUILD_COMMAND}` in {REPO_ROOT}")


def load_library() -> ctypes.CDLL:
    """The loaded library, its FFI targets registered with XLA for the CPU platform."""
    global _library
    with _lock:
        if _library is None:
            _check_fresh(LIBRARY_PATH)
            library = ctypes.CDLL(str(LIBRARY_PATH))
            for target, symbol in TARGETS.items():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
            library.workbench_cpu_force_portable.argtypes = [ctypes.c_int]
            library.workbench_cpu_set_min_parallel_work.argtypes = [ctypes.c_int64]
            _library = library
        return _library


def has_avx512() -> bool:
    """Whether the kernels take their AVX-512 path on this CPU (else the portable loop)."""
    return bool(load_library().workbench_cpu_has_avx512())


def force_portable(on: bool) -> None:
    """Run the portable path even where AVX-512 is available (tests check both paths)."""
    load_library().workbench_cpu_force_portable(int(on))


def set_min_parallel_work(work: int) -> None:
    """Split products of at least `work` multiply-adds (M * N * K) over XLA's thread pool (0: every one)."""
    load_library().workbench_cpu_set_min_parallel_work(int(work))


def call_on_rows(target: str, x: jax.Array, k: int, n: int, *weights: jax.Array) -> jax.Array:
    """The FFI custom call `target` on x's rows ([..., K] -> [M, K] float32) and the weight operands:
    float32 [..., N]. Loads the library first; refuses other backends (these are XLA:CPU calls)."""
    platform = jax.default_backend()
    if platform != "cpu":
        raise ValueError(f"{target} runs on CPU only (an XLA:CPU custom call); the default backend is "
                         f"{platform!r}: decode the float model there")
    load_library()
    lead = x.shape[:-1]
    rows = x.reshape(-1, k).astype(jnp.float32)
    out = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                           vmap_method="sequential")(rows, *weights)
    return out.reshape(lead + (n,))
