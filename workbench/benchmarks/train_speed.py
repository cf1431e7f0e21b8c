"""Adaptation-step speed on this machine against a matmul peak measured in the same run.

    python -m workbench.benchmarks.train_speed --out runs/bench [--steps 3]

Rows: one optimizer step of the AR2Diff adaptation stage on SmolLM2-135M (the offline default;
the same shapes with its real weights) for full fine-tuning (absorbing loss under prefix-diffusion
attention, and block diffusion with b = 4) and for the drafter adapter (`kind="draft"`, LoRA,
`workbench.objectives.drafting`), in float32 and bfloat16 compute. Each row gives the step's
median seconds, tokens/s (rows x width per second, and trained target tokens per second), the
step's FLOPs as XLA counts them for the compiled program (`cost_analysis`), the achieved FLOP/s,
and that as a share of the peak of the same compute dtype, measured first on matmuls of training
shapes. A table is printed; JSON goes to --out/train_speed.json. `--profile` adds each step's time by
XLA op kind (`workbench.benchmarks.profile`), which is how the README's bfloat16 analysis was made.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from workbench.benchmarks.timing import median_seconds
from workbench.config import save_json
from workbench.objectives.batch import seq2seq_batch
from workbench.objectives.losses import LossConfig, loss_fn


def matmul_peak(dtype: str, shapes=((2048, 2048, 2048), (512, 576, 1536), (512, 1536, 576)), repeats: int = 5) -> dict:
    """Best FLOP/s of XLA matmuls (m x k @ k x n) in `dtype` over a few training shapes."""
    best, rows = 0.0, {}
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32).astype(dtype)
        f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
        seconds, _ = median_seconds(f, (a, b), warmup=2, repeats=repeats)
        rate = 2.0 * m * k * n / seconds
        rows[f"{m}x{k}x{n}"] = rate
        best = max(best, rate)
    return {"peak_flops": best, "by_shape": rows}


def _compiled_flops(fn, *args) -> Optional[float]:
    try:
        analysis = fn.lower(*args).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        return float(analysis.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best effort (not every backend reports it)
        return None


def step_row(name: str, model, loss: LossConfig, batch, steps: int, learning_rate: float = 1e-4,
             profile: bool = False) -> dict:
    """Median seconds of one AdamW step of `model` on `batch` (trainable = nnx.Param), and its FLOPs;
    with `profile`, also the step's time by XLA op kind (`workbench.benchmarks.profile`, the 12 largest)."""
    optimizer = nnx.Optimizer(model, optax.adamw(learning_rate), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def step(state, batch, rng):
        model, optimizer = nnx.merge(graphdef, state)
        grad_fn = nnx.value_and_grad(lambda m: loss_fn(m, batch, rng, loss)[0], argnums=nnx.DiffState(0, nnx.Param))
        value, grads = grad_fn(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), value

    jitted = jax.jit(step)  # no donation: the base arrays are shared with the caller's model
    flops = _compiled_flops(jax.jit(step), state, batch, jax.random.key(0))
    state = jax.block_until_ready(jitted(state, batch, jax.random.key(0))[0])  # compile + first step
    times = []
    for i in range(steps):
        start = time.perf_counter()
        state, value = jitted(state, batch, jax.random.key(i + 1))
        jax.block_until_ready(value)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    ops = None
    if profile:
        from workbench.benchmarks.profile import op_times

        kinds = op_times(lambda: jitted(state, batch, jax.random.key(0))[1], (), calls=2)
        ops = dict(list(kinds.items())[:12])
    rows, width = batch.tokens.shape
    targets = int(np.sum(np.asarray(batch.target_mask)))
    return {"step": name, "dtype": model.config.dtype, "batch": f"{rows}x{width}", "seconds": seconds,
            "tokens_per_s": rows * width / seconds, "target_tokens_per_s": targets / seconds,
            "step_gflop": None if flops is None else flops / 1e9,
            "gflop_per_s": None if flops is None else flops / seconds / 1e9, "loss": float(value), "ops": ops}


def run(out: Optional[Path], steps: int = 3, batch_size: int = 4, prompt_len: int = 64, target_len: int = 64,
        which: Sequence[str] = ("prefix_full", "block4_full", "draft4_lora"), profile: bool = False) -> list[dict]:
    from workbench.models.config import LoRAConfig
    from workbench.models.lora import with_lora
    from workbench.models.transformer import with_attention, with_config
    from workbench.objectives.drafting import DraftConfig
    from workbench.pretrained import load_pretrained, with_mask_token

    pretrained = with_mask_token(load_pretrained("smollm2-135m", dtype="float32"))
    base = with_config(pretrained.model, shift_targets=True)  # the imported models' diffusion convention
    tok = pretrained.tokenizer
    mask_id, pad = tok.specials.mask, tok.specials.pad
    rng = np.random.default_rng(0)
    inputs = [rng.integers(10, 40000, prompt_len).tolist() for _ in range(batch_size)]
    targets = [rng.integers(10, 40000, target_len).tolist() for _ in range(batch_size)]
    batch = jax.tree.map(jnp.asarray, seq2seq_batch(inputs, targets, input_len=prompt_len, target_len=target_len,
                                                    pad_id=pad, pad_targets=True))
    absorbing = LossConfig.for_tokenizer(tok, "absorbing", model_vocab_size=base.config.vocab_size)
    draft_batch = jax.tree.map(jnp.asarray, seq2seq_batch(inputs, targets, input_len=prompt_len,
                                                          target_len=target_len, pad_id=pad, pad_targets=False))
    peaks = {dtype: matmul_peak(dtype) for dtype in ("float32", "bfloat16")}
    table = []
    for name in which:
        dtype = "bfloat16" if name.endswith("_bf16") else "float32"
        kind = name.removesuffix("_bf16")
        if kind == "prefix_full":
            model, loss, use = with_attention(base, "prefix_diffusion"), absorbing, batch
        elif kind == "block4_full":
            model, loss, use = with_attention(base, "block_causal", 4), absorbing, batch
        elif kind.startswith("draft") and kind.endswith("_lora"):
            b = int(kind[len("draft"):-len("_lora")])
            model = with_lora(pretrained.model, LoRAConfig(rank=16, alpha=32.0, trainable_rows=(mask_id,)))
            loss = LossConfig(kind="draft", draft=DraftConfig(block_size=b), mask_id=mask_id, pad_id=pad,
                              special_ids=())
            use = draft_batch
        else:
            raise ValueError(f"unknown step {name!r}; expected prefix_full, block4_full or draft<b>_lora, "
                             f"optionally with _bf16")
        if model.config.dtype != dtype:
            model = with_config(model, dtype=dtype)
        row = step_row(name, model, loss, use, steps, profile=profile)
        peak = peaks[dtype]["peak_flops"]
        row["peak_gflop_per_s"] = peak / 1e9
        row["share_of_peak"] = None if row["gflop_per_s"] is None else row["gflop_per_s"] * 1e9 / peak
        table.append(row)
        print(_line(row), flush=True)
        for kind, cost in (row["ops"] or {}).items():
            print(f"    {kind:<28} {cost['ms']:9.1f} ms  {cost['count']:6.0f} ops per step", flush=True)
    record = {"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "peaks": peaks, "rows": table}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "train_speed.json", record)
    return table


def _line(row: dict) -> str:
    share = "-" if row["share_of_peak"] is None else f"{100 * row['share_of_peak']:.0f}%"
    flops = "-" if row["gflop_per_s"] is None else f"{row['gflop_per_s']:.0f}"
    return (f"{row['step']:<18} {row['dtype']:<9} {row['batch']:<7} {row['seconds']:7.2f} s  "
            f"{row['tokens_per_s']:7.0f} tok/s  {row['target_tokens_per_s']:6.0f} target tok/s  "
            f"{flops:>5} GFLOP/s  {share:>4} of {row['peak_gflop_per_s']:.0f}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--profile", action="store_true",
                        help="also trace two steps per row and print their time by XLA op kind (in the JSON too)")
    parser.add_argument("--which", nargs="+", default=["prefix_full", "block4_full", "draft4_lora", "draft4_lora_bf16"])
    args = parser.parse_args(argv)
    print(f"{'step':<18} {'dtype':<9} {'batch':<7} {'median':>9}", flush=True)
    run(Path(args.out), steps=args.steps, batch_size=args.batch_size, which=args.which, profile=args.profile)


if __name__ == "__main__":
    main()
