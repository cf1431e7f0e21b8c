"""The device suite's two plans: every pending device check (`DEVICE_PLAN`) and the same
steps with their smallest arguments, to check the plumbing on CPU (`SMOKE_PLAN`)."""

from __future__ import annotations

import sys

from workbench.benchmarks.step_runner import OUT_PLACEHOLDER, Step


def _bench(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", f"workbench.benchmarks.{module}", "--out", OUT_PLACEHOLDER, *args)


# Limits are estimates for an H200 (no step has run on one yet): correctness gets the most
# (18 checks, each compiling three Mosaic kernels); the tuning sweep times 19 configurations.
# They sum to 520 s, leaving 20 s of a 540 s budget for the device description and archive.
DEVICE_PLAN: tuple[Step, ...] = (
    Step("hopper_check", _bench("hopper_check", "--skip-bench", "--ptxas"), 160),
    Step("kernels", _bench("kernels", "--head-dims", "128"), 100),
    Step("decode_speed", _bench("decode_speed", "--preset", "small", "--lengths", "128", "512", "--num-steps", "10",
                                "50", "--num-samples", "1", "--block-sizes", "16", "--max-case-seconds", "15"), 60),
    Step("models", _bench("models"), 70),
    Step("kernel_tuning", _bench("tuning", "--masks", "prefix_lm", "--head-dims", "128"), 75),
    Step("pretrained_arch", _bench("stand_in", "--arch", "smollm2-135m"), 55),
    # Issue 22's table on SmolLM2-135M's architecture with random weights and a zero adapter (the wheel and
    # the datasets are not on the device): AR / lossy blocks / self-speculation timings and the pass cost are
    # real, acceptance is not (a trained drafter's acceptance comes from the CPU table).
    Step("speculative_speed", _bench("speculative_speed", "--stand-in", "smollm2-135m", "--lengths", "64", "128",
                                     "--repeats", "3"), 240),
    # workbench.drafter_study's training at batch 64 in bfloat16 (~6 min of steps, estimated), or
    # "skipped" with the reason in its JSON where SmolLM2 or the datasets are missing.
    Step("drafter_conversion", _bench("drafter_device", "--steps", "1500", "--batch-size", "64", "--dtype",
                                      "bfloat16"), 500),
)

# One device call runs at most 540 s (the default --budget-s; the tool's limit is 600 s a command),
# so the plan runs as separate calls, each fitting that budget: `device_suite` with no --steps runs the
# first; `--call N` (or --steps with the names) the others.
CALLS: tuple[tuple[str, ...], ...] = (
    ("hopper_check", "kernels", "decode_speed", "models", "kernel_tuning", "pretrained_arch"),
    ("speculative_speed",),
    ("drafter_conversion",),
)

# The same steps with their smallest arguments, for the CPU (interpret-mode kernels).
SMOKE_PLAN: tuple[Step, ...] = (
    Step("hopper_check", _bench("hopper_check", "--skip-bench", "--variants", "separate", "--seed", "0"), 120),
    Step("kernels", _bench("kernels", "--masks", "prefix_lm", "--head-dims", "64", "--impls", "pallas_gpu_interpret",
                           "jax_nn_xla", "--warmup", "0", "--repeats", "1"), 120),
    Step("decode_speed", _bench("decode_speed", "--lengths", "8", "--num-steps", "2", "--num-samples", "1",
                                "--repeats", "1", "--block-sizes", "4", "--block-policies", "low_confidence"), 120),
    Step("models", _bench("models", "--presets", "tiny", "--batch", "1", "--seq-len", "16"), 120),
    Step("kernel_tuning", _bench("tuning", "--masks", "prefix_lm", "--head-dims", "64", "--warmup", "0",
                                 "--repeats", "1"), 180),
    Step("pretrained_arch", _bench("stand_in", "--arch", "tiny", "--new-tokens", "4", "--repeats", "1"), 180),
    Step("speculative_speed", _bench("speculative_speed", "--stand-in", "tiny", "--batch", "1", "--lengths", "8",
                                     "--repeats", "1", "--batch1-prompts", "1", "--pass-positions", "1", "2",
                                     "--pass-repeats", "1"), 180),
    Step("drafter_conversion", _bench("drafter_device", "--steps", "2", "--batch-size", "2", "--dtype", "float32",
                                      "--eval-every", "2", "--train-prompts", "8", "--held-out-prompts", "4"), 300),
)
