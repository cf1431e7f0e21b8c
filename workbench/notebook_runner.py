"""Run the notebooks in batch with papermill: parameters in; executed notebook, HTML and metrics.json out.

    python -m workbench.notebook_runner 07_convert_pretrained --out runs/demo  # make demo
    python -m workbench.notebook_runner 00_quickstart --out runs/quickstart     # make demo DEMO=00_quickstart
    python -m workbench.notebook_runner all                                     # make notebooks
    python -m workbench.notebook_runner 03_finetune_eval -p finetune_steps 200 -f params.yaml

`all` writes each notebook to runs/<notebook>/<run name>/ (run name: --name, "default"
unless given). Every notebook takes its output folder as the parameter `out_dir` and must
write `metrics.json` there; the runner checks that it did. Parameter values are read as
YAML (`-p steps 200` is an int, `-p lengths "[16, 32]"` a list, `-p data_dir null` None).

Running a notebook again into the same folder resumes its training runs from their
checkpoints. The kernel is `workbench` when this environment registered it (`make env`
does), else this interpreter's `python3`. JAX's persistent compilation cache
(--jax-cache, default runs/.jax_cache) lets later notebooks reuse compiled steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
KERNEL_NAME = "workbench"  # registered by the Makefile: ipykernel install --sys-prefix --name workbench


@dataclasses.dataclass(frozen=True)
class NotebookRun:
    notebook: str
    out_dir: Path
    executed: Path
    html: Optional[Path]
    metrics: Any
    seconds: float


def list_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    return sorted(p for p in Path(directory).glob("*.ipynb") if not p.name.startswith("."))


def resolve_notebook(name: str, directory: Path = NOTEBOOK_DIR) -> Path:
    """A notebook by path, file name, stem ("00_quickstart") or number prefix ("00")."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path.resolve()
    available = list_notebooks(directory)
    stem = path.name.removesuffix(".ipynb")
    matches = [p for p in available if p.stem == stem] or [p for p in available if p.stem.split("_")[0] == stem]
    if len(matches) != 1:
        names = ", ".join(p.stem for p in available) or "(none)"
        raise SystemExit(f"notebook {name!r} {'is ambiguous' if matches else 'not found'}; "
                         f"expected one of: {names}, or 'all'")
    return matches[0]


def choose_kernel(preferred: str = KERNEL_NAME) -> str:
    """`preferred` if its kernel runs this interpreter's environment, else `python3` (this interpreter)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(preferred)
    except NoSuchKernel:
        return "python3"
    executable = Path(spec.argv[0])
    same_env = executable.name.startswith("python") and (
        not executable.is_absolute() or executable.resolve().parent == Path(sys.executable).resolve().parent
    )
    if not same_env:
        print(f"kernel {preferred!r} runs {executable}, not this environment ({sys.executable}); using python3",
              file=sys.stderr)
        return "python3"
    return preferred


def parse_value(text: str) -> Any:
    """YAML, except that numbers YAML 1.1 leaves as strings ("3e-3") become floats."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_parameters(files: Sequence[str] = (), pairs: Sequence[Sequence[str]] = ()) -> dict:
    """Parameters from YAML files (later ones win), then `-p key value` pairs."""
    parameters: dict = {}
    for file in files:
        loaded = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"{file}: expected a YAML mapping of parameter names to values, got "
                             f"{type(loaded).__name__}")
        parameters.update(loaded)
    for key, value in pairs:
        parameters[key] = parse_value(value)
    return parameters


def use_jax_cache(directory: Optional[str]) -> None:
    """Point JAX's persistent compilation cache (inherited by the kernels) at `directory` unless set already."""
    if not directory or directory.lower() == "none" or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(directory).resolve())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def export_html(executed: Path, out: Path) -> Path:
    import nbconvert

    body, _ = nbconvert.HTMLExporter().from_filename(str(executed))
    out.write_text(body, encoding="utf-8")
    return out


def run_notebook(
    notebook: str | Path,
    out_dir: str | Path,
    parameters: Optional[dict] = None,
    *,
    kernel: Optional[str] = None,
    html: bool = True,
    cwd: Optional[Path] = None,
    timeout: Optional[int] = None,
    log_output: bool = False,
    progress: bool = False,
) -> NotebookRun:
    """Execute one notebook with `out_dir` (absolute) and `parameters`; check its metrics.json.
    `progress` shows a bar on stderr that advances cell by cell."""
    import papermill

    source = resolve_notebook(str(notebook))
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / source.name
    params = {**(parameters or {}), "out_dir": str(out_dir)}
    started = time.perf_counter()
    papermill.execute_notebook(
        str(source), str(executed), parameters=params, kernel_name=kernel or choose_kernel(),
        cwd=str(cwd or REPO), progress_bar=progress, log_output=log_output, store_widget_state=False,
        execution_timeout=timeout,
    )
    seconds = time.perf_counter() - started
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.is_file():
        raise RuntimeError(f"{source.name} ran but wrote no {metrics_path}; every notebook must write metrics.json "
                           f"into its out_dir (see {executed})")
    metrics = json.loads(metrics_path.read_text())
    page = export_html(executed, out_dir / (source.stem + ".html")) if html else None
    return NotebookRun(source.stem, out_dir, executed, page, metrics, seconds)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Execute workbench notebooks with papermill.")
    parser.add_argument("notebook", help="a notebook (00_quickstart, 00, a path) or 'all'")
    parser.add_argument("--out", help="output folder (one notebook only; default runs/<notebook>/<name>)")
    parser.add_argument("--name", default="default", help="run name under runs/<notebook>/ (default: default)")
    parser.add_argument("--runs", default=str(REPO / "runs"), help="root of the run folders (default: runs/)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a notebook parameter; VALUE is YAML")
    parser.add_argument("-f", "--parameters-file", action="append", default=[], help="YAML file of parameters")
    parser.add_argument("--kernel", help=f"kernel name (default: {KERNEL_NAME} if registered, else python3)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML export")
    parser.add_argument("--timeout", type=int, help="seconds allowed per cell")
    parser.add_argument("--jax-cache", default=str(REPO / "runs" / ".jax_cache"),
                        help="JAX persistent compilation cache folder ('none' to disable)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebook's output to the log")
    parser.add_argument("--no-progress", action="store_true", help="no cell-by-cell progress bar on stderr")
    args = parser.parse_args(argv)

    notebooks = list_notebooks() if args.notebook == "all" else [resolve_notebook(args.notebook)]
    if args.out and len(notebooks) > 1:
        raise SystemExit("--out names one folder; with 'all' use --runs and --name instead")
    parameters = load_parameters(args.parameters_file, args.parameter)
    use_jax_cache(args.jax_cache)
    kernel = args.kernel or choose_kernel()
    results = []
    for path in notebooks:
        out = Path(args.out) if args.out else Path(args.runs) / path.stem / args.name
        print(f"running {path.name} -> {out} (kernel {kernel})", flush=True)
        run = run_notebook(path, out, parameters, kernel=kernel, html=not args.no_html, timeout=args.timeout,
                           log_output=args.log_output, progress=not args.no_progress)
        results.append(run)
        print(f"  done in {run.seconds:.0f} s: {run.executed}" + (f", {run.html}" if run.html else ""), flush=True)
    if len(results) > 1:
        print("\n".join(f"{r.notebook:<24} {r.seconds:7.0f} s  {r.out_dir}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
