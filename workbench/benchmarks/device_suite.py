"""Every pending device check in one call: correctness first, then speed, within a time budget.

Here, once: `bash environments/device_wheels.sh` (the packages the device image lacks, into
.whl/). Then one device call (`carry` [".whl"], timeout_s 600):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit; python3 -m workbench.benchmarks.device_suite --out /tmp/suite --archive "$OUT/device_suite.tar.gz" --budget-s 540; cp /tmp/suite/device_suite.json "$OUT/"

Steps (`DEVICE_PLAN`, in this order): hopper_check (the experimental Mosaic GPU kernel
against float32), kernels (attention benchmark, D=128), decode_speed (AR vs diffusion vs
block decoding), models (tokens/s and MFU per preset), kernel_tuning (Pallas Triton tile
sweep, prefix-LM, D=128), pretrained_arch (the imported-model benchmark on SmolLM2-135M's
architecture with random weights: its 98 MB wheel cannot travel). Each runs as a
subprocess with its own time limit; a step whose limit exceeds the budget left is
"skipped (budget)". Each step writes OUT/<name>.log (stdout and stderr) and its JSON under
OUT/<name>/; OUT/device_suite.json (steps, argv, status, seconds, a failed step's last log
line, the device and package versions) is rewritten before and after every step, so a
killed run still leaves a summary. The device tool returns at most 8 files from $OUT,
hence `--out /tmp/suite` and `--archive`: a tar.gz of OUT, rewritten with the summary.
The exit status is 0 only if every step passed.

    python -m workbench.benchmarks.device_suite --dry-run          # the plan, nothing run
    python -m workbench.benchmarks.device_suite --smoke --out runs/suite   # CPU: tiny sizes

`--smoke` runs the same steps with their smallest arguments (`SMOKE_PLAN`) to check the
plumbing on CPU; hopper_check then fails there (no Hopper GPU) and is reported as failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
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


def _bench(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", f"workbench.benchmarks.{module}", "--out", OUT_PLACEHOLDER, *args)


def _pretrained_arch(*args: str) -> tuple[str, ...]:
    entry = "from workbench.benchmarks.device_suite import pretrained_arch_main; pretrained_arch_main()"
    return (sys.executable, "-c", entry, "--out", OUT_PLACEHOLDER, *args)


# Limits are estimates for an H200 (no step has run on one yet): correctness gets the most
# (18 checks, each compiling three Mosaic kernels); the tuning sweep times 19 configurations.
# They sum to 520 s, leaving 20 s of a 540 s budget for the device description and archive.
DEVICE_PLAN: tuple[Step, ...] = (
    Step("hopper_check", _bench("hopper_check", "--skip-bench", "--ptxas"), 160),
    Step("kernels", _bench("kernels", "--head-dims", "128"), 100),
    Step("decode_speed", _bench("decode_speed", "--preset", "small", "--lengths", "128", "512", "--num-steps", "10",
                                "50", "--num-samples", "1", "--block-sizes", "16", "--max-case-seconds", "15"), 60),
    Step("models", _bench("models"), 70),
    Step("kernel_tuning", _bench("kernel_tuning", "--masks", "prefix_lm", "--head-dims", "128"), 75),
    Step("pretrained_arch", _pretrained_arch("--arch", "smollm2-135m"), 55),
)

# The same steps with their smallest arguments, for the CPU (interpret-mode kernels).
SMOKE_PLAN: tuple[Step, ...] = (
    Step("hopper_check", _bench("hopper_check", "--skip-bench", "--variants", "separate", "--seed", "0"), 120),
    Step("kernels", _bench("kernels", "--masks", "prefix_lm", "--head-dims", "64", "--impls", "pallas_gpu_interpret",
                           "jax_nn_xla", "--warmup", "0", "--repeats", "1"), 120),
    Step("decode_speed", _bench("decode_speed", "--lengths", "8", "--num-steps", "2", "--num-samples", "1",
                                "--repeats", "1", "--block-sizes", "4", "--block-policies", "low_confidence"), 120),
    Step("models", _bench("models", "--presets", "tiny", "--batch", "1", "--seq-len", "16"), 120),
    Step("kernel_tuning", _bench("kernel_tuning", "--masks", "prefix_lm", "--head-dims", "64", "--warmup", "0",
                                 "--repeats", "1"), 180),
    Step("pretrained_arch", _pretrained_arch("--arch", "tiny", "--new-tokens", "4", "--repeats", "1"), 180),
)


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


# Versions worth knowing when a step fails on an image we do not control (the carried wheels too).
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


# --- the pretrained-architecture step ------------------------------------------------------

# SmolLM2-135M's config.json (the embedded default, `workbench.pretrained.DEFAULT_MODEL`):
# the same architecture without its wheel (tests/test_device_suite.py compares it with the
# file's own config where the wheel is installed).
SMOLLM2_135M = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=576, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                    max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    hidden_act="silu")
ARCHITECTURES = {
    "smollm2-135m": SMOLLM2_135M,
    "tiny": dict(SMOLLM2_135M, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1024, max_position_embeddings=256),
}
# A stand-in tokenizer (its ids fit inside any of these vocabularies: the model's extra rows
# are padding, as in Hugging Face checkpoints); decode speed does not depend on the text.
STAND_IN_TOKENIZER = Path(__file__).resolve().parents[2] / "tests" / "golden" / "tokenizer_small_bpe"  # 600 ids


def write_random_pretrained(arch: str, folder: Path, seed: int = 0) -> Path:
    """A Hugging Face folder with `arch`'s architecture, random weights and the stand-in tokenizer."""
    from workbench.data.hf_tokenizer import HFTokenizer
    from workbench.models import build_model, default_compute_dtype
    from workbench.pretrained import save_pretrained
    from workbench.pretrained.hf_config import model_config_from_hf

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r}; expected one of {sorted(ARCHITECTURES)}")
    if not STAND_IN_TOKENIZER.is_dir():
        raise FileNotFoundError(f"{STAND_IN_TOKENIZER} is missing; run from a checkout (tests/golden travels with it)")
    # The compute dtype an import of the real checkpoint gets (the export records it).
    config = model_config_from_hf(ARCHITECTURES[arch], where=f"architecture {arch!r}").replace(
        dtype=default_compute_dtype())
    return save_pretrained(build_model(config, seed), folder, tokenizer=HFTokenizer.from_folder(STAND_IN_TOKENIZER))


def pretrained_arch_main(argv: Optional[Sequence[str]] = None) -> dict:
    """`workbench.benchmarks.pretrained` on an architecture with random weights."""
    from workbench.benchmarks import pretrained

    parser = argparse.ArgumentParser(description=pretrained_arch_main.__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default="smollm2-135m", choices=sorted(ARCHITECTURES))
    parser.add_argument("--new-tokens", type=int, default=pretrained.PretrainedBenchConfig.new_tokens)
    parser.add_argument("--repeats", type=int, default=pretrained.PretrainedBenchConfig.repeats)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:  # ~0.5 GB at 135M float32: kept out of OUT
        folder = write_random_pretrained(args.arch, Path(tmp) / f"{args.arch}-random-weights")
        config = pretrained.PretrainedBenchConfig(source=str(folder), new_tokens=args.new_tokens,
                                                  repeats=args.repeats)
        return pretrained.run(config, args.out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/device_suite", help="folder for the logs, results and summary")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for the whole suite")
    parser.add_argument("--steps", nargs="+", default=None, help=f"subset, in plan order: "
                        f"{[s.name for s in DEVICE_PLAN]}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE_PLAN), for the CPU")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    parser.add_argument("--archive", default=None, help="also write OUT as this tar.gz after every step")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s {args.budget_s:g} must be positive")
    try:
        steps = select_steps(SMOKE_PLAN if args.smoke else DEVICE_PLAN, args.steps)
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out)
    print(format_plan(steps, out, args.budget_s), flush=True)
    if args.dry_run:
        return 0
    summary = run_suite(steps, out, args.budget_s, archive=Path(args.archive) if args.archive else None)
    print(format_summary(summary))
    return 0 if all(row["status"] == "ok" for row in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
