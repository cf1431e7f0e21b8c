"""Block-size tuning for the portable Pallas flash-attention kernels.

    python -m workbench.benchmarks.tuning --out runs/bench

Sweeps the tiles and launch settings of `flash_attention_gpu` (`GpuBlockSizes`) on a GPU,
the tiles of `flash_attention_tpu` (`TpuBlockSizes`) on a TPU, at the kernel benchmark's
shape (`workbench.benchmarks.kernels.default_config`: B=4, T=4096, H=16, bf16, head_dim 128
and 64) on its causal and prefix_lm masks (`--masks all` for all four). The kernels are three
pallas_calls, each tuned on its own pass's timing, in steps (`space.STEPS`):

- forward: fwd_tiles (block_q, block_k), then fwd_launch (num_warps, num_stages), each
  timing the forward alone;
- dq: dq_tiles (block_q_dq, block_k_dq), then dq_launch (num_warps_dq, num_stages_dq),
  timing forward+backward;
- dk/dv: dkv_tiles, then dkv_launch (the `_dkv` fields), timing forward+backward.

Each step starts from the block sizes recommended so far, so a launch step runs on its pass's
best tiles. The launch steps are GPU only (Mosaic has no warps or stages to set).

Every candidate's outputs (and gradients, for steps timed with the backward) are checked
against the float32 reference (`xla_attention`): a candidate whose relative error exceeds
`rel_tol` is recorded as wrong and cannot win, and one that fails to lower, compile (e.g. out
of shared memory) or run is recorded with its error while the sweep goes on. Each step
recommends the candidate with the least total time over the swept masks among those correct
on every mask (`sweep`).

Bounded by counting: each step's candidate list is curated (the baseline first, then powers
of two 32..128 for GPU tiles, multiples of 128 for TPU tiles, and two launch settings besides
the default), giving 4 + 3 + 3 + 3 + 3 + 3 = 19 timed configurations per (mask, head_dim) on
a GPU, 76 for the default 2 masks x 2 head dims (`space.count_timed_configs`; at most
`MAX_DEFAULT_CONFIGS` = 80, a test checks); 40 on a TPU. Each costs one compile and warmup +
repeats runs of a few ms, plus one float32 reference per (mask, head_dim): roughly 4-7 minutes
on an H100 if a compile takes a few seconds. That is an estimate, not a measurement (the sweep
has not yet run on an H100). `--masks all` doubles it.
On CPU the GPU kernel runs in interpret mode on the benchmark's tiny CPU shape with two
candidates per step: that checks the sweep works (CI runs it) and its timings say nothing
about speed (the table says so). A TPU kernel in interpret mode uses the generic Pallas
interpreter (`simulate_tpu_memory=False`), which runs the same kernel bodies faster.

Modules: `space` (steps, candidates, `TuneConfig`), `measure` (one candidate: time and
check), `sweep` (the sweep and the recommendation), `report` (table); this one runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import jax

from workbench.benchmarks.kernels import MASKS
from workbench.benchmarks.tuning.report import format_table, progress_line
from workbench.benchmarks.tuning.space import (DEFAULT_MASKS, KERNELS, STEPS, TOLERANCE, TuneConfig,
                                               default_config)
from workbench.benchmarks.tuning.sweep import tune_head_dim
from workbench.config import save_json
from workbench.runs import git_commit


def run(out_dir: Path | str, config: Optional[TuneConfig] = None) -> dict:
    """Sweep, print the table and the recommendations, write kernel_tuning.json to out_dir."""
    platform = jax.default_backend()
    config = config or default_config(platform)
    if not config.interpret and platform != config.kernel:
        fix = f"--kernel {platform}" if platform in KERNELS else "interpret=True (the CPU default)"
        raise ValueError(f"the {config.kernel} kernel runs compiled only on a {config.kernel.upper()}, but the "
                         f"platform is {platform}; use {fix}")
    rows, recommended, notes = [], {}, []
    for head_dim in config.bench.head_dims:
        head_rows, blocks = tune_head_dim(config, head_dim, notes,
                                          on_row=lambda row: print(progress_line(row), flush=True))
        rows += head_rows
        recommended[head_dim] = blocks
    result = dict(platform=platform, device=str(jax.devices()[0].device_kind), jax_version=jax.__version__,
                  git_commit=git_commit(), interpret_mode=config.interpret, tolerance=config.tolerance,
                  timed_configs=len(rows), config=config,
                  steps={name: dict(pass_name=STEPS[name].pass_name, fields=STEPS[name].fields,
                                    timed=STEPS[name].timed) for name in config.steps},
                  rows=rows, notes=notes,
                  recommended={str(d): dict(block_sizes=dataclasses.asdict(b), literal=repr(b))
                               for d, b in recommended.items()})
    save_json(Path(out_dir) / "kernel_tuning.json", result)
    print(format_table(result))
    return result


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
    bench_changes = dict(head_dims=None if args.head_dims is None else tuple(args.head_dims),
                         warmup=args.warmup, repeats=args.repeats, seed=args.seed)
    config = config.with_bench(**{k: v for k, v in bench_changes.items() if v is not None})
    if args.rel_tol is not None:
        config = dataclasses.replace(config, rel_tol=args.rel_tol)
    return run(args.out, config)
