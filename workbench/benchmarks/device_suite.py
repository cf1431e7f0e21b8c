"""Every pending device check in one call: correctness first, then speed, within a time budget.

Steps (`workbench.benchmarks.device_plans.DEVICE_PLAN`, in this order): hopper_check (the
experimental Mosaic GPU kernel against float32), kernels (attention benchmark, D=128),
decode_speed (AR vs diffusion vs block decoding), models (tokens/s and MFU per preset),
kernel_tuning (Pallas Triton tile sweep, prefix-LM, D=128), pretrained_arch (the
imported-model benchmark on SmolLM2-135M's architecture with random weights,
`workbench.benchmarks.stand_in`), then, in calls of their own (`CALLS`: each call fits the
default budget), speculative_speed (issue 22's self-speculation table on the same stand-in,
`--call 2`) and drafter_conversion (the drafter training in bfloat16, or skipped with its
reason where SmolLM2 or the datasets are missing, `--call 3`). Each runs as a subprocess with its own time limit
(`workbench.benchmarks.step_runner`); a step whose limit exceeds the budget left is
"skipped (budget)". Each step writes OUT/<name>.log (stdout and stderr) and its JSON under
OUT/<name>/; OUT/device_suite.json (steps, argv, status, seconds, a failed step's last log
line, the device and package versions) is rewritten before and after every step, so a
killed run still leaves a summary; `--archive` also keeps OUT as one tar.gz, rewritten with
it. The exit status is 0 only if every step passed. The command for a GPU machine that
lacks some of the packages is in kernels/NOTES.md.

    python -m workbench.benchmarks.device_suite --dry-run          # the plan, nothing run
    python -m workbench.benchmarks.device_suite --smoke --out runs/suite   # CPU: tiny sizes
    python -m workbench.benchmarks.device_suite --call 2 --out runs/device_suite_2  # the next call

`--smoke` runs the same steps with their smallest arguments (`SMOKE_PLAN`) to check the
plumbing on CPU; hopper_check then fails there (no Hopper GPU) and is reported as failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from workbench.benchmarks.device_plans import CALLS, DEVICE_PLAN, SMOKE_PLAN
from workbench.benchmarks.step_runner import format_plan, format_summary, run_suite, select_steps


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/device_suite", help="folder for the logs, results and summary")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for the whole suite")
    parser.add_argument("--steps", nargs="+", default=None, help=f"subset, in plan order: "
                        f"{[s.name for s in DEVICE_PLAN]}")
    parser.add_argument("--call", type=int, default=1, choices=range(1, len(CALLS) + 1),
                        help=f"which call of the plan runs when --steps is not given: {list(CALLS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE_PLAN), for the CPU")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    parser.add_argument("--archive", default=None, help="also write OUT as this tar.gz after every step")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s {args.budget_s:g} must be positive")
    try:
        steps = select_steps(SMOKE_PLAN if args.smoke else DEVICE_PLAN,
                             args.steps if args.steps is not None else CALLS[args.call - 1])
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
