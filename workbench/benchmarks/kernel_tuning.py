"""Block-size tuning for the portable Pallas flash-attention kernels.

    python -m workbench.benchmarks.kernel_tuning --out runs/bench

Sweeps the tiles of `flash_attention_gpu` (`GpuBlockSizes`) on a GPU, of
`flash_attention_tpu` (`TpuBlockSizes`) on a TPU, at the kernel benchmark's shape
(`workbench.benchmarks.kernels.default_config`: B=4, T=4096, H=16, bf16, head_dim 128 and
64) on its causal and prefix_lm masks (`--masks all` for all four). The kernels are three
pallas_calls, each tuned on its own, the others held at their defaults:

- fwd: (block_q, block_k), timing the forward alone;
- dq: (block_q_dq, block_k_dq), timing forward+backward;
- dkv: (block_q_dkv, block_k_dkv), timing forward+backward;
- launch (GPU only): (num_warps, num_stages), timing forward+backward with the tiles
  recommended by the three passes. `GpuBlockSizes` has one num_warps and one num_stages for
  all three kernels, so they are tuned jointly, after the tiles.

Every candidate's outputs (and gradients, for passes timed with the backward) are checked
against the float32 reference (`xla_attention`): a candidate whose relative error
exceeds `rel_tol` is recorded as wrong and cannot win, and one that fails to lower, compile
(e.g. out of shared memory) or run is recorded with its error while the sweep goes on.
The recommendation per head_dim takes, for each pass, the candidate with the least total
time over the swept masks among those correct on every mask.

Bounded by counting: each pass's candidate list is curated (the kernel's default first,
then powers of two 32..128 for GPU tiles, multiples of 128 for TPU tiles), giving
4 + 3 + 3 + 4 = 14 timed configurations per (mask, head_dim) on a GPU, 56 for the default
2 masks x 2 head dims (`count_timed_configs`; at most `MAX_DEFAULT_CONFIGS` = 60, a test
checks). Each costs one compile (a few seconds on an H100) and warmup + repeats runs of a
few ms, plus one float32 reference per (mask, head_dim): about 4-5 minutes by that count
(an estimate; not yet run on an H100). `--masks all` doubles it.
On CPU the GPU kernel runs in interpret mode on the benchmark's tiny CPU shape with two
candidates per pass: that checks the sweep works (CI runs it) and its timings say nothing
about speed (the table says so). A TPU kernel in interpret mode uses the generic Pallas
interpreter (`simulate_tpu_memory=False`), which runs the same kernel bodies faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from workbench.attention.reference import xla_attention
from workbench.benchmarks import kernels as bench_kernels
from workbench.benchmarks.kernels import MASKS, make_mask
from workbench.benchmarks.timing import median_seconds
from workbench.config import save_json
from workbench.kernels.common import SUPPORTED_HEAD_DIMS
from workbench.kernels.flash_gpu import GpuBlockSizes, flash_attention_gpu
from workbench.kernels.flash_tpu import TpuBlockSizes, flash_attention_tpu
from workbench.runs import git_commit

KERNELS = ("gpu", "tpu")
PASSES = ("fwd", "dq", "dkv", "launch")
PASS_FIELDS = {
    "fwd": ("block_q", "block_k"),
    "dq": ("block_q_dq", "block_k_dq"),
    "dkv": ("block_q_dkv", "block_k_dkv"),
    "launch": ("num_warps", "num_stages"),
}
FORWARD_ONLY_PASSES = ("fwd",)  # the others are timed forward+backward
DEFAULT_MASKS = ("causal", "prefix_lm")
MAX_DEFAULT_CONFIGS = 60  # timed configurations in the default hardware sweep (~5 min on an H100)
TOLERANCE = {"bfloat16": 2e-2, "float32": 1e-4}  # relative error vs the float32 reference

# Candidate values per pass, (kernel, interpret) -> pass -> value tuples in PASS_FIELDS order.
# The kernel's default values are prepended when missing; they are each pass's baseline.
CANDIDATES: dict[tuple[str, bool], dict[str, tuple[tuple, ...]]] = {
    ("gpu", False): {
        "fwd": ((128, 128), (64, 64), (64, 128)),
        "dq": ((128, 64), (64, 64)),
        "dkv": ((64, 128), (64, 64)),
        "launch": ((4, 2), (4, 3), (8, 2), (8, 3)),
    },
    ("tpu", False): {
        "fwd": ((256, 256), (512, 512), (256, 512)),
        "dq": ((256, 256), (512, 512)),
        "dkv": ((256, 256), (512, 512)),
    },
    # Interpret mode on the tiny CPU shape (T=64): two candidates per pass, for CI.
    ("gpu", True): {"fwd": ((32, 32),), "dq": ((32, 64),), "dkv": ((64, 32),), "launch": ((8, 3),)},
    ("tpu", True): {"fwd": ((32, 32),), "dq": ((32, 64),), "dkv": ((64, 32),)},
}

# XLA CPU builds of interpreted kernels: LLVM optimizations off builds ~3x faster.
_FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    kernel: str  # "gpu" (flash_attention_gpu) or "tpu" (flash_attention_tpu)
    interpret: bool
    batch: int
    seq_len: int
    heads: int
    kv_heads: int
    head_dims: tuple[int, ...]
    dtype: str
    warmup: int
    repeats: int
    candidates: dict[str, tuple[tuple, ...]]  # pass -> value tuples (see CANDIDATES)
    masks: tuple[str, ...] = DEFAULT_MASKS
    rel_tol: Optional[float] = None  # None: TOLERANCE[dtype]
    seed: int = 0

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel={self.kernel!r}: expected one of {KERNELS}")
        unknown = [m for m in self.masks if m not in MASKS]
        if unknown or not self.masks:
            raise ValueError(f"masks={self.masks!r}: expected a non-empty subset of {MASKS}")
        bad_dims = [d for d in self.head_dims if d not in SUPPORTED_HEAD_DIMS]
        if bad_dims or not self.head_dims:
            raise ValueError(f"head_dims={self.head_dims!r}: the kernels support {SUPPORTED_HEAD_DIMS}")
        if self.dtype not in TOLERANCE:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {tuple(TOLERANCE)}")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"warmup={self.warmup}, repeats={self.repeats}: expected warmup >= 0 and "
                             f"repeats >= 1")
        if self.rel_tol is not None and not self.rel_tol > 0:
            raise ValueError(f"rel_tol={self.rel_tol}: expected a positive relative error bound")
        passes = tuple(p for p in PASSES if self.kernel == "gpu" or p != "launch")
        for pass_name, values in self.candidates.items():
            if pass_name not in passes:
                raise ValueError(f"candidates for pass {pass_name!r}: the {self.kernel} kernel's passes "
                                 f"are {passes}")
            for value in values:
                if len(value) != len(PASS_FIELDS[pass_name]):
                    raise ValueError(f"candidate {value!r} for pass {pass_name!r}: expected values for "
                                     f"{PASS_FIELDS[pass_name]}")
                block_sizes(self, SUPPORTED_HEAD_DIMS[0], pass_name, value)  # raises on bad tiles

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype] if self.rel_tol is None else self.rel_tol


def default_config(platform: str, kernel: Optional[str] = None,
                   masks: Sequence[str] = DEFAULT_MASKS) -> TuneConfig:
    """The kernel benchmark's shape for `platform`; interpret mode on CPU."""
    kernel = kernel or ("tpu" if platform == "tpu" else "gpu")
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {KERNELS}")
    interpret = platform == "cpu"
    shape = bench_kernels.default_config(platform)
    return TuneConfig(kernel=kernel, interpret=interpret, batch=shape.batch, seq_len=shape.seq_len,
                      heads=shape.heads, kv_heads=shape.kv_heads, head_dims=shape.head_dims,
                      dtype=shape.dtype, warmup=shape.warmup, repeats=shape.repeats,
                      candidates=CANDIDATES[(kernel, interpret)], masks=tuple(masks))


def base_block_sizes(kernel: str, head_dim: int):
    """The kernel's defaults, with GPU warps spelled out (GpuBlockSizes.num_warps=None means
    4 at head_dim 64, 8 at 128) so the launch pass's baseline is an explicit candidate."""
    if kernel == "gpu":
        return GpuBlockSizes(num_warps=4 if head_dim <= 64 else 8)
    return TpuBlockSizes()


def block_sizes(config: TuneConfig, head_dim: int, pass_name: str, value: tuple, base=None):
    """`base` (default: the kernel's defaults) with `pass_name`'s fields set to `value`."""
    base = base_block_sizes(config.kernel, head_dim) if base is None else base
    blocks = dataclasses.replace(base, **dict(zip(PASS_FIELDS[pass_name], value)))
    if isinstance(blocks, TpuBlockSizes):
        blocks.check(config.interpret)
    return blocks


def pass_values(blocks, pass_name: str) -> tuple:
    return tuple(getattr(blocks, field) for field in PASS_FIELDS[pass_name])


def pass_candidates(config: TuneConfig, head_dim: int, pass_name: str, base=None) -> list[tuple]:
    """The baseline (base's values) first, then the configured candidates, without repeats."""
    if pass_name not in config.candidates:
        return []
    base = base_block_sizes(config.kernel, head_dim) if base is None else base
    values = [pass_values(base, pass_name)]
    values += [tuple(v) for v in config.candidates[pass_name] if tuple(v) not in values]
    return values


def count_timed_configs(config: TuneConfig) -> int:
    per_case = sum(len(pass_candidates(config, d, p)) for d in config.head_dims for p in config.candidates)
    return per_case * len(config.masks)


def candidate_block_sizes(config: TuneConfig, head_dim: int) -> list:
    """Block sizes that between them hold every kernel configuration the sweep can time or
    recommend at `head_dim`: each pallas_call depends only on its own pass's tiles and the
    launch values, so the tile passes' candidates are zipped (the i-th of each, the default
    where a pass has fewer), under every launch candidate. Lowering these checks them all."""
    tile_passes = [p for p in PASSES if p in config.candidates and p != "launch"]
    tiles = {p: pass_candidates(config, head_dim, p) for p in tile_passes}
    launches = pass_candidates(config, head_dim, "launch") or [None]
    out = []
    for launch in launches:
        base = base_block_sizes(config.kernel, head_dim)
        if launch is not None:
            base = block_sizes(config, head_dim, "launch", launch, base)
        for i in range(max((len(v) for v in tiles.values()), default=1)):
            blocks = base
            for pass_name, values in tiles.items():
                value = values[i] if i < len(values) else values[0]
                blocks = block_sizes(config, head_dim, pass_name, value, blocks)
            if blocks not in out:
                out.append(blocks)
    return out


# -- measuring -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Case:
    """Inputs and the float32 reference [out, dq, dk, dv] for one (mask, head_dim)."""

    mask_name: str
    head_dim: int
    args: tuple  # (q, k, v, mask, d_out)
    reference: tuple


def _make_case(config: TuneConfig, mask_name: str, head_dim: int) -> _Case:
    b, t, dtype = config.batch, config.seq_len, jnp.dtype(config.dtype)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), head_dim), 4)
    q = jax.random.normal(keys[0], (b, t, config.heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (b, t, config.kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (b, t, config.kv_heads, head_dim), dtype)
    d_out = jax.random.normal(keys[3], q.shape, jnp.float32)
    mask = make_mask(mask_name, b, t)
    with jax.default_matmul_precision("highest"):
        upcast = [x.astype(jnp.float32) for x in (q, k, v)]
        out, vjp = jax.vjp(lambda q, k, v: xla_attention(q, k, v, mask), *upcast)
        reference = jax.block_until_ready((out, *vjp(d_out)))
    return _Case(mask_name, head_dim, (q, k, v, mask, d_out), reference)


def _attention_fn(config: TuneConfig, blocks) -> Callable:
    if config.kernel == "gpu":
        return functools.partial(flash_attention_gpu, block_sizes=blocks, interpret=config.interpret)
    return functools.partial(flash_attention_tpu, block_sizes=blocks, interpret=config.interpret,
                             simulate_tpu_memory=False)


def _timed_fn(attention: Callable, forward_only: bool) -> tuple[Callable, int]:
    """(fn of (q, k, v, mask, d_out) returning [out] or [out, dq, dk, dv], argument count)."""
    if forward_only:
        return (lambda q, k, v, mask: [attention(q, k, v, mask)]), 4

    def step(q, k, v, mask, d_out):
        out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, mask), q, k, v)
        return [out, *vjp(d_out.astype(out.dtype))]
    return step, 5


def relative_error(x: jax.Array, ref: jax.Array) -> float:
    """||x - ref|| / ||ref||, the norm floored at an all-0.1 array's (analytically zero grads)."""
    diff = jnp.linalg.norm((x.astype(jnp.float32) - ref).ravel())
    floor = 0.1 * jnp.sqrt(jnp.float32(ref.size))
    return float(diff / jnp.maximum(jnp.linalg.norm(ref.ravel()), floor))


def _error_status(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()] or [""]
    return f"error: {type(err).__name__}: {lines[0][:300]}"


def measure(config: TuneConfig, case: _Case, pass_name: str, blocks) -> dict:
    """One timed configuration: a row with its status ("ok", "wrong: ..." or "error: ..."),
    compile seconds, median milliseconds and relative error against the reference."""
    row = dict(head_dim=case.head_dim, mask=case.mask_name, pass_name=pass_name,
               timed="fwd" if pass_name in FORWARD_ONLY_PASSES else "fwd+bwd",
               values=dict(zip(PASS_FIELDS[pass_name], pass_values(blocks, pass_name))),
               block_sizes=dataclasses.asdict(blocks), status="ok", compile_s=None, time_ms=None,
               rel_err=None)
    try:
        fn, arg_count = _timed_fn(_attention_fn(config, blocks), pass_name in FORWARD_ONLY_PASSES)
        args = case.args[:arg_count]
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile(_FAST_CPU_COMPILE if config.interpret else None)
        row["compile_s"] = time.perf_counter() - start
        seconds, outputs = median_seconds(compiled, args, config.warmup, config.repeats)
    except Exception as err:  # a failing configuration is recorded and the sweep goes on
        row["status"] = _error_status(err)
        return row
    row["time_ms"] = seconds * 1e3
    row["rel_err"] = max(relative_error(x, r) for x, r in zip(outputs, case.reference))
    if not row["rel_err"] <= config.tolerance:
        row["status"] = f"wrong: relative error {row['rel_err']:.2e} > {config.tolerance:.0e}"
    return row


# -- choosing --------------------------------------------------------------------------------

def row_values(row: dict) -> tuple:
    """A row's candidate values in PASS_FIELDS order (saved JSON sorts the keys)."""
    return tuple(row["values"][field] for field in PASS_FIELDS[row["pass_name"]])


def best_row(rows: Sequence[dict]) -> Optional[dict]:
    """The fastest row that ran and passed the correctness check (None if there is none)."""
    ok = [row for row in rows if row["status"] == "ok"]
    return min(ok, key=lambda row: row["time_ms"]) if ok else None


def recommend_values(rows: Sequence[dict], pass_name: str, head_dim: int,
                     masks: Sequence[str]) -> Optional[tuple]:
    """The candidate of `pass_name` at `head_dim` with the least total time over `masks`,
    among those correct on every mask; None when no candidate is."""
    by_value: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row["pass_name"] == pass_name and row["head_dim"] == head_dim:
            by_value.setdefault(row_values(row), {})[row["mask"]] = row
    totals = {value: sum(per_mask[m]["time_ms"] for m in masks)
              for value, per_mask in by_value.items()
              if all(m in per_mask and per_mask[m]["status"] == "ok" for m in masks)}
    return min(totals, key=totals.get) if totals else None


def _recommend_pass(config: TuneConfig, rows: list[dict], pass_name: str, head_dim: int, base,
                    notes: list[str]):
    value = recommend_values(rows, pass_name, head_dim, config.masks)
    if value is None:
        notes.append(f"head_dim={head_dim} {pass_name}: no candidate was correct on every mask; "
                     f"kept {pass_values(base, pass_name)}")
        return base
    return block_sizes(config, head_dim, pass_name, value, base)


def tune_head_dim(config: TuneConfig, head_dim: int, notes: list[str]) -> tuple[list[dict], Any]:
    """Rows for every candidate of every pass at one head_dim, and the recommended block sizes."""
    cases = [_make_case(config, mask_name, head_dim) for mask_name in config.masks]
    default = base_block_sizes(config.kernel, head_dim)
    rows, recommended = [], default
    for pass_name in (p for p in PASSES if p in config.candidates):
        base = recommended if pass_name == "launch" else default  # warps and stages: on the tuned tiles
        for case in cases:
            for i, value in enumerate(pass_candidates(config, head_dim, pass_name, base)):
                row = measure(config, case, pass_name, block_sizes(config, head_dim, pass_name, value, base))
                rows.append(dict(row, baseline=i == 0))
                print(_progress(row), flush=True)
        recommended = _recommend_pass(config, rows, pass_name, head_dim, recommended, notes)
    return rows, recommended


def run(out_dir: Path | str, config: Optional[TuneConfig] = None) -> dict:
    """Sweep, print the table and the recommendations, write kernel_tuning.json to out_dir."""
    platform = jax.default_backend()
    config = config or default_config(platform)
    if not config.interpret and platform != config.kernel:
        fix = f"--kernel {platform}" if platform in KERNELS else "interpret=True (the CPU default)"
        raise ValueError(f"the {config.kernel} kernel runs compiled only on a {config.kernel.upper()}, but the "
                         f"platform is {platform}; use {fix}")
    rows, recommended, notes = [], {}, []
    for head_dim in config.head_dims:
        head_rows, blocks = tune_head_dim(config, head_dim, notes)
        rows += head_rows
        recommended[head_dim] = blocks
    result = dict(platform=platform, device=str(jax.devices()[0].device_kind), jax_version=jax.__version__,
                  git_commit=git_commit(), interpret_mode=config.interpret, tolerance=config.tolerance,
                  timed_configs=len(rows), config=config, rows=rows, notes=notes,
                  recommended={str(d): dict(block_sizes=dataclasses.asdict(b), literal=repr(b))
                               for d, b in recommended.items()})
    out_dir = Path(out_dir)
    save_json(out_dir / "kernel_tuning.json", result)
    print(format_table(result))
    return result


def _values_text(row: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(PASS_FIELDS[row["pass_name"]], row_values(row)))


def _progress(row: dict) -> str:
    time_text = f"{row['time_ms']:.3f} ms" if row["time_ms"] is not None else "-"
    return (f"  D={row['head_dim']} {row['mask']} {row['pass_name']} {_values_text(row)}: "
            f"{time_text} {row['status']}")


def format_table(result: dict) -> str:
    config = result["config"]
    config = config if isinstance(config, dict) else dataclasses.asdict(config)
    kernel = f"flash_attention_{config['kernel']}"
    lines = [f"Block-size tuning of {kernel} on {result['device']} ({result['platform']}): B={config['batch']} "
             f"T={config['seq_len']} H={config['heads']} Hkv={config['kv_heads']} {config['dtype']}; "
             f"median ms; a candidate counts only if its relative error vs float32 <= {result['tolerance']:.0e}"]
    if result["interpret_mode"]:
        lines.append("CPU: the kernels run in INTERPRET MODE on a tiny shape; the timings are not meaningful "
                     "for speed.")
    header = (f"{'D':>4} {'mask':<14} {'pass':<7} {'timed':<8} {'default':>9} {'best':>9} {'speed-up':>8} "
              f"{'rel err':>8} {'ok':>5}  best")
    lines += [header, "-" * len(header)]
    groups: dict[tuple, list[dict]] = {}
    for row in result["rows"]:
        groups.setdefault((row["head_dim"], row["mask"], row["pass_name"]), []).append(row)
    for (head_dim, mask_name, pass_name), rows in groups.items():
        baseline = next(row for row in rows if row["baseline"])
        best = best_row(rows)
        default_ms = baseline["time_ms"] if baseline["status"] == "ok" else None
        fmt = lambda ms: f"{ms:9.3f}" if ms is not None else f"{'-':>9}"  # noqa: E731
        speedup = f"{default_ms / best['time_ms']:7.2f}x" if best and default_ms else f"{'-':>8}"
        err = f"{best['rel_err']:8.1e}" if best else f"{'-':>8}"
        ok = f"{sum(row['status'] == 'ok' for row in rows)}/{len(rows)}"
        lines.append(f"{head_dim:>4} {mask_name:<14} {pass_name:<7} {rows[0]['timed']:<8} {fmt(default_ms)} "
                     f"{fmt(best and best['time_ms'])} {speedup} {err} {ok:>5}  "
                     f"{_values_text(best) if best else 'none correct'}")
    for row in result["rows"]:
        if row["status"] != "ok":
            lines.append(f"not counted: D={row['head_dim']} {row['mask']} {row['pass_name']} "
                         f"{_values_text(row)}: {row['status']}")
    lines.append(f"Recommended (per pass, least total time over {', '.join(config['masks'])} among candidates "
                 f"correct on every mask):")
    for head_dim, rec in result["recommended"].items():
        lines.append(f"  head_dim={head_dim}: {rec['literal']}")
    lines += result["notes"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    platform = jax.default_backend()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench", help="output folder for kernel_tuning.json")
    parser.add_argument("--kernel", choices=KERNELS, default=None,
                        help="default: tpu on a TPU, else gpu (interpret mode on CPU)")
    parser.add_argument("--masks", nargs="+", default=list(DEFAULT_MASKS), choices=MASKS + ("all",))
    parser.add_argument("--head-dims", type=int, nargs="+", default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rel-tol", type=float, default=None, help=f"default: {TOLERANCE} by dtype")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    masks = MASKS if "all" in args.masks else tuple(args.masks)
    config = default_config(platform, args.kernel, masks)
    overrides = dict(head_dims=None if args.head_dims is None else tuple(args.head_dims),
                     warmup=args.warmup, repeats=args.repeats, rel_tol=args.rel_tol, seed=args.seed)
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return run(args.out, config)


if __name__ == "__main__":
    main()
