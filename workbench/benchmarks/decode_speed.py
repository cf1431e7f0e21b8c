"""Decode speed at equal output length: KV-cached AR decoding against diffusion decoding.

The paper's Figure 3 compares wall-clock time to produce L tokens. Here both methods use
the same parameters and batch: AR runs the compiled, KV-cached `generate` loop for exactly
L tokens (no early EOS); diffusion runs `diffusion_sample` on an L-token canvas for
`num_steps` steps with `num_samples` samples per example (full recomputation each step
under bidirectional attention, as in the paper; `prefix_diffusion` caches the prompt, and
is then also timed without the cache so that the cache's own speed-up is measured:
`speedup_vs_full` = full-recomputation seconds / cached seconds, same model and case).
Block diffusion rows (`block_sizes`, `block_policies`) decode the same L tokens block by
block with the exact KV cache (`workbench.sampling.block`, absorbing process, no EOS stop).
Each shape is compiled and run `warmup` times before timing, then timed `repeats` times
with `block_until_ready`; the median is reported, with tokens/s (batch x L / seconds) and
forward passes per token (model calls per batch / L; AR: L + 1 with the prompt).

Speed does not depend on the weights, so by default the timed model has random weights and
there is no quality column. Given trained models (one per method: `{"ar": ..., "diffusion":
..., "block": ...}`) and an `EvalSet` of prompts with reference continuations, the prompts are
the evaluation prompts, and every row's timed output is also scored against the references
(`exact_match`, `token_accuracy`: `workbench.evaluation.metrics.token_sequence_scores`, each
output cut at its first EOS or padding), so no speed is shown without what it costs;
`workbench.benchmarks.decode_quality` trains such models and runs this.

    python -m workbench.benchmarks.decode_speed --out runs/bench
    python -m workbench.benchmarks.decode_speed --preset small --lengths 64 128 256 512 1024 2048 4096
    python -m workbench.benchmarks.decode_speed --diffusion-attention prefix_diffusion --prompt-len 384 --lengths 32
    python -m workbench.benchmarks.decode_speed --preset small --lengths 64 256 --block-sizes 4 16 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from workbench.data.special import diffusion_ids
from workbench.evaluation.metrics import token_sequence_scores
from workbench.config import save_json
from workbench.models import build_model, get_preset, param_count
from workbench.models.transformer import with_attention, with_config
from workbench.sampling.ar import ARSamplingConfig, generate
from workbench.objectives.batch import seq2seq_batch
from workbench.processes import get_policy
from workbench.sampling.block import BlockSamplingConfig, block_sample
from workbench.sampling.diffusion import DiffusionSamplingConfig, diffusion_sample

COLUMNS = ["method", "label", "length", "num_steps", "num_samples", "batch_size", "seconds", "seconds_min",
           "seconds_max", "ms_per_token", "ms_per_step", "tokens_per_s", "forward_passes", "nfe_per_token",
           "block_size", "policy", "prefix_cache", "speedup_vs_ar", "speedup_vs_full", "exact_match",
           "token_accuracy", "status"]  # fmt: skip
METHODS = ("ar", "diffusion", "block")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Prompts and their reference continuations (token ids; references without EOS) that a
    trained model's rows are scored on; all prompts are decoded in one timed batch."""

    prompts: tuple[tuple[int, ...], ...]
    references: tuple[tuple[int, ...], ...]
    eos_id: int = 1

    def __post_init__(self):
        if not self.prompts or len(self.prompts) != len(self.references):
            raise ValueError(f"an EvalSet needs as many references as prompts, at least one; got "
                             f"{len(self.prompts)} prompts and {len(self.references)} references")
        if min(len(p) for p in self.prompts) < 1:
            raise ValueError("every prompt needs at least one token")


@dataclasses.dataclass(frozen=True)
class DecodeSpeedConfig:
    preset: str = "tiny"
    vocab_size: int = 1024  # used when no model is given (random weights: speed does not depend on them)
    lengths: tuple[int, ...] = (16, 32, 64)  # the paper: up to 4,000 tokens
    num_steps: tuple[int, ...] = (10, 20, 50)  # Figure 3's curves
    num_samples: tuple[int, ...] = (1, 8)
    batch_size: int = 1
    prompt_len: int = 16
    repeats: int = 3
    warmup: int = 2  # the first calls compile (a model's first call may compile twice)
    diffusion_attention: str = "bidirectional"  # or "prefix_diffusion" (prompt keys/values computed once)
    block_sizes: tuple[int, ...] = ()  # block diffusion rows (exact KV cache), one per size and policy
    block_policies: tuple[str, ...] = ("low_confidence", "threshold")  # absorbing-process decoding policies
    block_steps: Optional[int] = None  # steps per block (a budget); None: the block size (one token per step)
    threshold: float = 0.9  # the 'threshold' policy's bar
    process: Optional[str] = None  # None: uniform (the paper's) for full canvases, absorbing for blocks
    temperature: Optional[float] = None  # None: each sampler's default (canvas 0.2 as the paper, blocks argmax)
    max_case_seconds: float = 120.0  # a method's longer lengths are skipped once one case takes longer
    dtype: Optional[str] = None  # compute dtype; None: float32 on CPU (bfloat16 is emulated there), else the model's
    seed: int = 0

    def __post_init__(self):
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths={self.lengths} must be positive output lengths")
        if min(self.num_steps, default=0) < 1 or min(self.num_samples, default=0) < 1:
            raise ValueError(f"num_steps={self.num_steps} and num_samples={self.num_samples} must be >= 1")
        if self.repeats < 1 or self.warmup < 1 or self.batch_size < 1 or self.prompt_len < 1:
            raise ValueError("repeats, warmup, batch_size and prompt_len must be >= 1")
        if min(self.block_sizes, default=1) < 1 or (self.block_steps is not None and self.block_steps < 1):
            raise ValueError(f"block_sizes={self.block_sizes} and block_steps={self.block_steps} must be >= 1")
        if self.block_sizes:
            for policy in self.block_policies:
                BlockSamplingConfig(policy=get_policy(policy, threshold=self.threshold))
        if self.diffusion_attention not in ("bidirectional", "prefix_diffusion"):
            raise ValueError(f"diffusion_attention={self.diffusion_attention!r}; expected 'bidirectional' or "
                             f"'prefix_diffusion'")


def _time(fn, warmup: int, repeats: int) -> tuple[list[float], object]:
    """Seconds of each timed call, and the last call's output."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times, output


def _is_oom(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def benchmark_model(config: DecodeSpeedConfig, model=None):
    """The model the benchmark times: `model` (its weights) or a random one of `config.preset`."""
    needed = config.prompt_len + max(config.lengths)
    if isinstance(model, Mapping):
        return {method: benchmark_model(config, m) for method, m in model.items()}
    dtype = config.dtype or ("float32" if jax.default_backend() == "cpu" else None)
    if model is None:
        model = build_model(get_preset(config.preset, vocab_size=config.vocab_size, max_len=needed,
                                       attention="prefix_lm"), config.seed)
    if not model.config.arch_spec.decoder_only:
        raise ValueError("the decode-speed benchmark times decoder-only models; got arch="
                         f"{model.config.arch!r}")
    return with_config(model, max_len=max(model.config.max_len, needed), dtype=dtype or model.config.dtype)


def block_decode_example(config: DecodeSpeedConfig, block_size: int, policy: str, length: int, model=None):
    """One block-diffusion decode of the benchmark's first prompt (same model and prompts as
    `run_decode_speed`): a `BlockOutput` to look at (`workbench.viz.blocks`), not a timing."""
    model = with_attention(benchmark_model(config, model), "block_causal", block_size)
    prompts = np.random.default_rng(config.seed).integers(4, model.config.vocab_size, size=(1, config.prompt_len))
    batch = jax.tree.map(jnp.asarray, seq2seq_batch(prompts.astype(np.int32).tolist(), [[]], input_len=config.prompt_len,
                                                    target_len=length, pad_id=0, pad_targets=True))
    sampling = BlockSamplingConfig(num_steps=config.block_steps or block_size,
                                   policy=get_policy(policy, threshold=config.threshold), eos_id=None)
    return block_sample(model, batch, sampling, jax.random.key(config.seed))


def method_models(config: DecodeSpeedConfig, model=None) -> dict:
    """{method: model} for the methods the config runs: one model for all (random weights when
    None), or a mapping of trained models, one per method."""
    needed = ("ar", "diffusion", "block") if config.block_sizes else ("ar", "diffusion")
    if not isinstance(model, Mapping):
        one = benchmark_model(config, model)
        return {method: one for method in needed}
    unknown, missing = set(model) - set(METHODS), [m for m in needed if m not in model]
    if unknown or missing:
        raise ValueError(f"models for methods {sorted(model)}: expected one for each of {list(needed)} (unknown: "
                         f"{sorted(unknown)}, missing: {missing}); the AR row is every ratio's baseline")
    return benchmark_model(config, {method: model[method] for method in needed})


def _eval_prompts(config: DecodeSpeedConfig, eval_set: EvalSet, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    if len(eval_set.prompts) != config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} but the EvalSet has {len(eval_set.prompts)} prompts; set "
                         f"batch_size={len(eval_set.prompts)} (the prompts are decoded as one timed batch)")
    longest = max(len(p) for p in eval_set.prompts)
    if longest > config.prompt_len:
        raise ValueError(f"an EvalSet prompt has {longest} tokens, more than prompt_len={config.prompt_len}; "
                         f"raise prompt_len")
    prompts = np.full((config.batch_size, config.prompt_len), pad_id, np.int32)
    for row, prompt in zip(prompts, eval_set.prompts):
        row[: len(prompt)] = prompt
    return prompts, np.array([len(p) for p in eval_set.prompts], np.int32)


def _sampler_ids(tokenizer, process: str, vocab: int, pad_id: int) -> dict:
    """The never-drawn, mask and pad ids a sampler of `process` takes (from the tokenizer, else defaults);
    no EOS, so every case decodes the whole length (equal output lengths)."""
    return {"pad_id": pad_id, **({} if tokenizer is None else diffusion_ids(tokenizer, process, vocab)), "eos_id": None}


def run_decode_speed(config: DecodeSpeedConfig = DecodeSpeedConfig(), model=None,
                     out_dir: Optional[Path | str] = None, progress: bool = True, tokenizer=None,
                     eval_set: Optional[EvalSet] = None) -> pd.DataFrame:
    """Median decode seconds per (method, length, num_steps, num_samples); writes decode_speed.json to out_dir.
    `model`: one model for every method (default: random weights of `config.preset`), or
    trained models `{"ar": ..., "diffusion": ..., "block": ...}`. `tokenizer` (the models')
    gives the pad, EOS and never-drawn ids; without one, the from-scratch defaults. With
    `eval_set` the prompts are its prompts and every row is scored against its references."""
    models = method_models(config, model)
    pad_id = 0 if tokenizer is None else tokenizer.specials.pad
    vocab = models["ar"].config.vocab_size
    canvas_process, block_process = config.process or "uniform", config.process or "absorbing"
    canvas_ids = _sampler_ids(tokenizer, canvas_process, vocab, pad_id)
    block_ids = _sampler_ids(tokenizer, block_process, vocab, pad_id) if config.block_sizes else {}
    canvas_temperature = {} if config.temperature is None else {"temperature": config.temperature}
    ar_model = with_attention(models["ar"], "prefix_lm")
    diffusion_model = with_attention(models["diffusion"], config.diffusion_attention)
    if eval_set is None:
        rng = np.random.default_rng(config.seed)
        prompts = rng.integers(4, vocab, size=(config.batch_size, config.prompt_len)).astype(np.int32)
        prompt_lengths = np.full(config.batch_size, config.prompt_len, np.int32)
    else:
        prompts, prompt_lengths = _eval_prompts(config, eval_set, pad_id)
    key = jax.random.key(config.seed)
    rows: list[dict] = []
    stopped: set[str] = set()

    def record(method, label, length, steps, samples, times=None, status="ok", prefix_cache=None, passes=None,
               block_size=None, policy=None, output=None):
        row = {"method": method, "label": label, "length": length, "num_steps": steps, "num_samples": samples,
               "batch_size": config.batch_size, "prefix_cache": prefix_cache, "status": status,
               "block_size": block_size, "policy": policy}
        if times and eval_set is not None:
            row.update(token_sequence_scores(np.asarray(output), eval_set.references,
                                             stop_ids=(eval_set.eos_id, pad_id)))
        if times:
            median = statistics.median(times)
            passes = passes() if callable(passes) else passes
            row.update(seconds=median, seconds_min=min(times), seconds_max=max(times),
                       ms_per_token=1e3 * median / length, ms_per_step=1e3 * median / (steps or length),
                       tokens_per_s=config.batch_size * length / median, forward_passes=passes,
                       nfe_per_token=None if passes is None else passes / length)
        rows.append(row)
        if progress:
            shown = f"{row['seconds'] * 1e3:9.1f} ms" if times else status
            print(f"{label:<34} length {length:>5}: {shown}", file=sys.stderr, flush=True)
        if times and statistics.median(times) > config.max_case_seconds:
            stopped.add(label)

    def run_case(method, label, length, steps, samples, fn, prefix_cache=None, passes=None, **extra):
        case = dict(prefix_cache=prefix_cache, **extra)
        if label in stopped:
            return record(method, label, length, steps, samples, status="skipped (slower than max_case_seconds)",
                          **case)
        try:
            times, output = _time(fn, config.warmup, config.repeats)
            record(method, label, length, steps, samples, times, passes=passes, output=output, **case)
        except Exception as error:  # noqa: BLE001 - out-of-memory is a result here, anything else is re-raised
            if not _is_oom(error):
                raise
            stopped.add(label)
            record(method, label, length, steps, samples, status="out of memory", **case)

    # Under prefix_diffusion the prompt cache is timed on and off; bidirectional has no cache.
    cache_modes = (True, False) if config.diffusion_attention == "prefix_diffusion" else (None,)
    block_models: dict[int, object] = {}

    for length in sorted(config.lengths):
        # eos_id=-1: no token stops generation, so every case emits `length` tokens (equal output lengths).
        ar = ARSamplingConfig(max_new_tokens=length, temperature=0.0, eos_id=-1, pad_id=pad_id)
        # model calls per batch: AR one per token plus the prompt; diffusion one per step (plus the prompt's
        # cache pass); block diffusion counts its own (prompt pass, steps actually run; commits ride along)
        run_case("ar", "AR (KV cache)", length, None, 1,
                 lambda: generate(ar_model, prompts, prompt_lengths, ar, key).tokens, passes=length + 1)
        batch = seq2seq_batch([p[:n] for p, n in zip(prompts.tolist(), prompt_lengths)],
                              [[] for _ in range(config.batch_size)], input_len=config.prompt_len,
                              target_len=length, pad_id=pad_id, pad_targets=True)
        batch = jax.tree.map(jnp.asarray, batch)
        for steps in config.num_steps:
            for samples in config.num_samples:
                for cache in cache_modes:
                    sampling = DiffusionSamplingConfig(num_samples=samples, num_steps=steps, early_exit=False,
                                                       prefix_cache=cache is not False, process=canvas_process,
                                                       **canvas_temperature, **canvas_ids)
                    label = f"diffusion {steps} steps x {samples} sample{'s' if samples > 1 else ''}"
                    label += {None: "", True: " (prefix cache)", False: " (full recomputation)"}[cache]
                    run_case("diffusion", label, length, steps, samples,
                             lambda s=sampling: diffusion_sample(diffusion_model, batch, s, key).tokens, cache,
                             passes=steps + (1 if cache else 0))
        for size in config.block_sizes:
            for policy in config.block_policies:
                steps = config.block_steps or size
                label = f"block diffusion b={size} {policy} ({steps} steps/block)"
                if length % size:
                    record("block", label, length, steps, 1, status=f"skipped (length not a multiple of {size})",
                           block_size=size, policy=policy)
                    continue
                sampling = BlockSamplingConfig(num_steps=steps, policy=get_policy(policy, threshold=config.threshold),
                                               process=block_process, temperature=config.temperature or 0.0,
                                               **block_ids)
                block_model = block_models.setdefault(size, with_attention(models["block"], "block_causal", size))
                run = lambda m=block_model, s=sampling: block_sample(m, batch, s, key)
                run_case("block", label, length, steps, 1, lambda r=run: r().tokens, True,
                         passes=lambda r=run: int(r().forward_passes), block_size=size, policy=policy)
    table = pd.DataFrame(rows, columns=COLUMNS)
    ar_times = table[table["method"] == "ar"].set_index("length")["seconds"]
    table["speedup_vs_ar"] = [ar_times.get(length, np.nan) / s if method != "ar" else np.nan
                              for method, length, s in zip(table["method"], table["length"], table["seconds"])]
    full = table[table["prefix_cache"] == False].set_index(["length", "num_steps", "num_samples"])["seconds"]  # noqa: E712
    table["speedup_vs_full"] = [
        full.get((row.length, row.num_steps, row.num_samples), np.nan) / row.seconds
        if row.prefix_cache is True and row.method == "diffusion" else np.nan for row in table.itertuples()]
    if out_dir is not None:
        write_results(table, config, models, out_dir)
    return table


def write_results(table: pd.DataFrame, config: DecodeSpeedConfig, models: dict, out_dir: Path | str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0]
    payload = {
        "config": dataclasses.asdict(config),
        "model": {**dataclasses.asdict(models["ar"].config), "params": param_count(models["ar"].config)["total"]},
        "models": {method: {"attention": m.config.attention, "block_size": m.config.block_size}
                   for method, m in models.items()},
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
        "jax": jax.__version__,
        "rows": json.loads(table.to_json(orient="records")),
    }
    path = out_dir / "decode_speed.json"
    save_json(path, payload)
    return path


def speed_figure(table: pd.DataFrame, title: str = "Decode time at equal output length",
                 html: Optional[Path | str] = None):
    """Figure 3 of the paper: seconds vs output length (log-log), and diffusion's speed-up over AR;
    also written to `html` as a self-contained page when given."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("wall-clock decode time", "speed-up over AR (KV cache)"),
                        horizontal_spacing=0.12)
    import plotly.colors

    done = table[table["status"] == "ok"]
    palette = plotly.colors.qualitative.Plotly
    for i, (label, part) in enumerate(done.groupby("label", sort=False)):
        is_ar = part["method"].iloc[0] == "ar"
        dash = "solid" if part["num_samples"].iloc[0] == 1 else "dot"
        style = {"color": "black", "width": 3} if is_ar else {"color": palette[i % len(palette)], "dash": dash}
        fig.add_trace(go.Scatter(x=part["length"], y=part["seconds"], mode="lines+markers", name=label, line=style,
                                 legendgroup=label, hovertemplate="%{x} tokens: %{y:.4f} s<extra>" + label + "</extra>"),
                      row=1, col=1)
        if not is_ar:
            fig.add_trace(go.Scatter(x=part["length"], y=part["speedup_vs_ar"], mode="lines+markers", name=label,
                                     line=style, legendgroup=label, showlegend=False,
                                     hovertemplate="%{x} tokens: %{y:.2f}x<extra>" + label + "</extra>"),
                          row=1, col=2)
    fig.add_hline(y=1.0, line={"color": "grey", "dash": "dash"}, row=1, col=2)
    fig.update_xaxes(type="log", title_text="output length (tokens)")
    fig.update_yaxes(type="log", title_text="seconds (median)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="AR seconds / diffusion seconds", row=1, col=2)
    fig.update_layout(title=title, height=480, width=1100, legend={"font": {"size": 11}})
    if html is not None:
        fig.write_html(html, include_plotlyjs=True)
    return fig


def speed_summary(table: pd.DataFrame) -> dict:
    """What a metrics.json records of a decode-speed table: the device, every row, and the largest
    speed-up over AR among the rows that ran."""
    done = table[table["status"] == "ok"]
    return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "rows": table.to_dict(orient="records"), "max_speedup_vs_ar": float(done["speedup_vs_ar"].max())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    defaults = DecodeSpeedConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench", help="folder for decode_speed.json and decode_speed.html")
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(defaults.lengths))
    parser.add_argument("--num-steps", type=int, nargs="+", default=list(defaults.num_steps))
    parser.add_argument("--num-samples", type=int, nargs="+", default=list(defaults.num_samples))
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--prompt-len", type=int, default=defaults.prompt_len)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--diffusion-attention", default=defaults.diffusion_attention,
                        choices=("bidirectional", "prefix_diffusion"))
    parser.add_argument("--max-case-seconds", type=float, default=defaults.max_case_seconds)
    parser.add_argument("--block-sizes", type=int, nargs="*", default=list(defaults.block_sizes),
                        help="block diffusion rows (e.g. 4 16 64); none by default")
    parser.add_argument("--block-policies", nargs="+", default=list(defaults.block_policies))
    parser.add_argument("--block-steps", type=int, help="steps per block (default: the block size)")
    parser.add_argument("--threshold", type=float, default=defaults.threshold)
    parser.add_argument("--process", choices=("uniform", "absorbing"),
                        help="diffusion process of every diffusion row (default: uniform canvases, absorbing blocks)")
    parser.add_argument("--temperature", type=float, help="diffusion temperature (default: each sampler's own)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="compute dtype (default: float32 on CPU, the preset's elsewhere)")
    args = parser.parse_args(argv)
    config = DecodeSpeedConfig(preset=args.preset, lengths=tuple(args.lengths), num_steps=tuple(args.num_steps),
                               num_samples=tuple(args.num_samples), batch_size=args.batch_size,
                               prompt_len=args.prompt_len, repeats=args.repeats,
                               diffusion_attention=args.diffusion_attention, max_case_seconds=args.max_case_seconds,
                               dtype=args.dtype, block_sizes=tuple(args.block_sizes),
                               block_policies=tuple(args.block_policies), block_steps=args.block_steps,
                               threshold=args.threshold, process=args.process, temperature=args.temperature)
    table = run_decode_speed(config, out_dir=args.out)
    out = Path(args.out)
    speed_figure(table, html=out / "decode_speed.html")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["label", "length", "seconds", "ms_per_token", "tokens_per_s", "nfe_per_token", "speedup_vs_ar",
                     "speedup_vs_full", "exact_match", "token_accuracy", "status"]].dropna(axis=1, how="all")
              .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out / 'decode_speed.json'} and {out / 'decode_speed.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
