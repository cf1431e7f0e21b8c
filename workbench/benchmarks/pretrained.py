"""Benchmark of an imported model (default: the embedded SmolLM2-135M): load time, AR decode
tokens/s (batch 1 and 8, KV cache), diffusion decode time (10 steps x 1 and x 8 samples, with
and without the prompt cache) at the same output length, AR2Diff adaptation-step training
tokens/s, peak memory, and for batch-1 AR decoding the memory-bandwidth floor.

The floor: each new token reads every weight once (the tied output head is the embedding) and
the whole KV cache (this decoder attends over the full cache under a mask), so a step cannot
take less than those bytes over the machine's copy bandwidth; `fraction_of_floor` is floor /
measured time (1.0 means bandwidth-bound at the limit). Copy bandwidth is measured here by
copying a 256 MiB array (bytes read + bytes written over the time).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from workbench.benchmarks.decode_speed import DecodeSpeedConfig, run_decode_speed
from workbench.benchmarks.timing import median_seconds
from workbench.config import save_json


@dataclasses.dataclass(frozen=True)
class PretrainedBenchConfig:
    source: str = "smollm2-135m"
    prompt_len: int = 16
    new_tokens: int = 32  # output length of every decode case
    ar_batches: tuple[int, ...] = (1, 8)
    diffusion_steps: int = 10
    diffusion_samples: tuple[int, ...] = (1, 8)
    train_batch: int = 2
    train_seq_len: int = 64
    repeats: int = 2
    seed: int = 0

    def __post_init__(self):
        if min(self.prompt_len, self.new_tokens, self.diffusion_steps, self.train_batch, self.train_seq_len,
               self.repeats) < 1:
            raise ValueError(f"every size and count of {self} must be >= 1")


def copy_bandwidth(num_bytes: int = 256 * 2**20, repeats: int = 3) -> float:
    """Bytes per second moved by a large array copy (read + write), best of `repeats`."""
    src = np.ones(num_bytes // 4, np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * src.nbytes / best


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def peak_memory_bytes() -> dict:
    """Peak resident memory of this process; on an accelerator also the device's peak."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    out = {"host_peak_rss_bytes": rss}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = stats["peak_bytes_in_use"]
    return out


def ar_floor_seconds_per_token(config, cache_len: int, bandwidth: float) -> tuple[float, int]:
    """(seconds, bytes) a batch-1 AR step must read: all weights plus the K and V caches."""
    from workbench.models import param_count

    itemsize = jnp.dtype(config.dtype).itemsize
    weights = param_count(config)["total"] * itemsize
    cache = 2 * config.num_layers * cache_len * config.kv_heads * config.head_dim * itemsize
    return (weights + cache) / bandwidth, weights + cache


def _prompts(tokenizer, batch: int, length: int, seed: int) -> np.ndarray:
    """Random ordinary (non-special) ids: decode speed does not depend on the text."""
    from workbench.data.special import never_sampled

    excluded = set(never_sampled(tokenizer))
    allowed = np.asarray([i for i in range(tokenizer.vocab_size) if i not in excluded], np.int32)
    return allowed[np.random.default_rng(seed).integers(0, len(allowed), (batch, length))]


def speed_comparison(model, tokenizer, *, length: int, num_steps: int, num_samples: Sequence[int] = (1,),
                     prompt_len: int = 16, repeats: int = 1, out_dir=None) -> pd.DataFrame:
    """AR (KV cache) vs diffusion (`num_steps` steps, with and without the prompt cache) decode
    time at the same output `length`, on the same weights (`workbench.benchmarks.decode_speed`)."""
    config = DecodeSpeedConfig(lengths=(length,), num_steps=(num_steps,), num_samples=tuple(num_samples),
                               prompt_len=prompt_len, repeats=repeats, warmup=1,
                               diffusion_attention="prefix_diffusion", dtype=model.config.dtype)
    return run_decode_speed(config, model, out_dir=out_dir, progress=False, tokenizer=tokenizer)


def run(config: PretrainedBenchConfig = PretrainedBenchConfig(), out_dir: Optional[Path | str] = None) -> dict:
    from workbench import pretrained_study
    from workbench.objectives.pretraining import lm_batch
    from workbench.pretrained import load_pretrained
    from workbench.sampling.ar import ARSamplingConfig, generate
    from workbench.study import diffusion_loss_config
    from workbench.training.optim import OptimizerConfig, make_optimizer
    from workbench.training.trainer import train_step

    max_len = config.prompt_len + config.new_tokens
    started = time.perf_counter()
    pretrained = load_pretrained(config.source, max_len=max(max_len, config.train_seq_len))
    load_seconds = time.perf_counter() - started
    model, tokenizer = pretrained.model, pretrained.tokenizer
    rows = []
    bandwidth = copy_bandwidth()
    key = jax.random.key(config.seed)

    # AR decoding with the KV cache; eos_id=-1 so every row emits exactly new_tokens tokens.
    ar = ARSamplingConfig(max_new_tokens=config.new_tokens, temperature=0.0, eos_id=-1, pad_id=tokenizer.specials.pad)
    for batch in config.ar_batches:
        prompts = _prompts(tokenizer, batch, config.prompt_len, config.seed)
        lengths = np.full((batch,), config.prompt_len, np.int32)
        seconds, _ = median_seconds(lambda: generate(model, prompts, lengths, ar, key).tokens, (), 1, config.repeats)
        row = {"case": f"AR KV cache, batch {batch}", "batch": batch, "new_tokens": config.new_tokens,
               "seconds": seconds, "tokens_per_s": batch * config.new_tokens / seconds}
        if batch == 1:
            floor, read = ar_floor_seconds_per_token(model.config, max_len, bandwidth)
            row.update(bytes_read_per_token=read, floor_seconds_per_token=floor,
                       fraction_of_floor=floor / (seconds / config.new_tokens))
        rows.append(row)

    # Diffusion decoding on the same weights, adapted form (mask row, prefix_diffusion, shifted targets).
    diffusion = pretrained_study.prepare_for_diffusion(pretrained)
    speed = speed_comparison(diffusion.model, diffusion.tokenizer, length=config.new_tokens,
                             num_steps=config.diffusion_steps, num_samples=config.diffusion_samples,
                             prompt_len=config.prompt_len, repeats=config.repeats)
    for r in speed[speed.method == "diffusion"].to_dict("records"):
        rows.append({"case": r["label"], "batch": 1, "new_tokens": config.new_tokens, "seconds": r.get("seconds"),
                     "tokens_per_s": config.new_tokens / r["seconds"] if r.get("seconds") else None,
                     "status": r["status"]})

    # One AR2Diff adaptation step (absorbing loss, AdamW) on a fixed batch.
    loss = diffusion_loss_config(diffusion.tokenizer, "absorbing", model_vocab_size=diffusion.config.vocab_size)
    train_model = nnx.clone(diffusion.model)
    tx, _ = make_optimizer(OptimizerConfig(learning_rate=1e-5, warmup_steps=0, schedule="constant"), 10)
    optimizer = nnx.Optimizer(train_model, tx, wrt=nnx.Param)
    rows_BxT = _prompts(diffusion.tokenizer, config.train_batch, config.train_seq_len, config.seed + 1)
    batch = jax.tree.map(jnp.asarray, lm_batch(rows_BxT, np.full((config.train_batch,), config.train_seq_len // 2),
                                               np.arange(config.train_batch), diffusion.tokenizer.specials.pad))
    step = lambda: train_step(train_model, optimizer, batch, key, loss, 1)["loss"]  # noqa: E731
    seconds, _ = median_seconds(step, (), 1, config.repeats)
    tokens = config.train_batch * config.train_seq_len
    rows.append({"case": f"AR2Diff adaptation step {config.train_batch}x{config.train_seq_len}",
                 "batch": config.train_batch, "seconds": seconds, "tokens_per_s": tokens / seconds})

    result = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "source": config.source,
              "model": pretrained.source.name, "dtype": model.config.dtype, "load_seconds": load_seconds,
              "copy_bandwidth_bytes_per_s": bandwidth, "config": dataclasses.asdict(config), "rows": rows,
              **peak_memory_bytes()}
    if out_dir is not None:
        save_json(Path(out_dir) / "pretrained.json", result)
    print(format_report(result))
    return result


def format_report(result: dict) -> str:
    lines = [f"{result['model']} on {result['device']} ({result['backend']}, {result['dtype']}): "
             f"load {result['load_seconds']:.1f} s, copy bandwidth {result['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
             f"peak RSS {result['host_peak_rss_bytes'] / 2**30:.2f} GiB"
             + (f", device peak {result['device_peak_bytes'] / 2**30:.2f} GiB" if "device_peak_bytes" in result else "")]
    head = f"{'case':<52}{'seconds':>10}{'tokens/s':>11}{'floor ms/tok':>14}{'of floor':>10}"
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        seconds = f"{r['seconds']:.3f}" if r.get("seconds") else r.get("status", "")
        tps = f"{r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else ""
        floor = f"{1e3 * r['floor_seconds_per_token']:.2f}" if "floor_seconds_per_token" in r else ""
        frac = f"{100 * r['fraction_of_floor']:.0f}%" if "fraction_of_floor" in r else ""
        lines.append(f"{r['case']:<52}{seconds:>10}{tps:>11}{floor:>14}{frac:>10}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description="speed and memory of an imported pretrained model (AR and diffusion)")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--source", default=PretrainedBenchConfig.source)
    parser.add_argument("--new-tokens", type=int, default=PretrainedBenchConfig.new_tokens)
    parser.add_argument("--repeats", type=int, default=PretrainedBenchConfig.repeats)
    args = parser.parse_args(argv)
    return run(PretrainedBenchConfig(source=args.source, new_tokens=args.new_tokens, repeats=args.repeats), args.out)


if __name__ == "__main__":
    main()
