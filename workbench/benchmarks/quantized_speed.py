"""Packed 8- and 4-bit weights against float32 for KV-cached decoding of SmolLM2-135M on the CPU (issue 22:
batch-1 AR itself faster, against the best AR this workbench can do, with llama.cpp's figure beside it).

Rows, per batch size and new-token budget, on the chat-templated held-out prompts of
`workbench.benchmarks.speculative_speed`, timed in the same run with the repeats interleaved
(one repeat of every row, then the next) so load changes hit every row alike; median of
`repeats` after one compiling call per row:

- **float32 AR**: `workbench.sampling.ar.generate`, greedy, on the imported model: the reference;
- **int8 AR**: the same sampler on `quantize_for_decoding(model)` (`workbench.models.quantized`:
  int8 per output channel, a quarter of float32's bytes; the weights change);
- **Q4_1/Q8_0 AR**: the same sampler on `pack_gguf_blocks(model, gguf)`: the GGUF's own Q4_1
  projections and Q8_0 table (96 MB instead of 538), i.e. the float32 model's exact weights;
- **self-speculation** on each packed copy of the drafter (`speculative_generate`, verified, greedy,
  the shipped adapter on top of the packed base), with `equals_packed_ar`: the fraction of outputs
  identical to AR on the same packed base (1.0 by construction), and tokens per iteration.

Every packed row has its greedy token agreement with float32 AR (positional,
`token_sequence_scores`) and the fraction of outputs identical to it. Rows may generate different
numbers of tokens (EOS), so speed is compared per token: `ms_per_token` is a repeat's time over the
tokens each row generated (prompt processing included; at batch 1 the prompts run one at a time),
and `speedup_vs_f32` is the ratio of tokens/s to float32 AR's in the same run. The **step table** times
one cached decoding pass of n positions (n = 1, and the verify pass's block size) against `context`
cached tokens for each weight format, and the prompt pass of `context` positions itself. llama.cpp's
figure (Q4_1 GGUF, 2 threads, the same machine idle, measured for issue 22; not rerun here) is printed beside it.

    python -m workbench.benchmarks.quantized_speed --out runs/bench   # ~10 min on the loaded 2-core CPU
    python -m workbench.benchmarks.quantized_speed --out runs/bench --batch 1 --lengths 64 --methods gguf_ar
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from workbench.benchmarks.speculative_speed import (Ids, _cut, _pass_fn, chat_prompt_ids, decode_arguments,
                                                    decode_cases, load_load, smollm2_models)
from workbench.config import save_json
from workbench.evaluation.metrics import token_sequence_scores
from workbench.models.quantized import pack_gguf_blocks, packed_bytes, quantize_for_decoding
from workbench.sampling.ar import generate
from workbench.sampling.speculative import SpeculativeConfig, speculative_generate

FORMATS = ("f32", "int8", "gguf")  # float32; int8 per channel; the GGUF's Q4_1 / Q8_0 blocks
METHODS = ("f32_ar", "int8_ar", "gguf_ar", "int8_speculative", "gguf_speculative")
LABELS = {"f32_ar": "float32 AR (KV cache)", "int8_ar": "int8 AR (KV cache)", "gguf_ar": "Q4_1/Q8_0 AR (KV cache)",
          "int8_speculative": "int8 self-speculation", "gguf_speculative": "Q4_1/Q8_0 self-speculation"}
LLAMA_CPP = {"ms_per_token": 10.5, "what": "llama.cpp, SmolLM2-135M-Instruct Q4_1 GGUF, 2 threads, batch 1, "
                                          "this machine idle (issue 22; not rerun here)"}


@dataclasses.dataclass(frozen=True)
class QuantizedSpeedConfig:
    batch_sizes: tuple[int, ...] = (1, 8)
    lengths: tuple[int, ...] = (32, 64)  # max new tokens (generation stops at EOS)
    block_size: int = 4  # self-speculation's block (the shipped drafter was trained at 4)
    repeats: int = 3
    batch1_prompts: int = 4  # prompts decoded one at a time at batch 1 (batch b > 1: b prompts, one batch)
    max_prompt_tokens: int = 96
    step_positions: tuple[int, ...] = (1, 4)  # the step table: one decoding step, one verify pass
    context: int = 100  # cached tokens the timed steps attend to
    step_repeats: int = 15
    methods: tuple[str, ...] = METHODS  # f32_ar always runs (the reference)
    stop_at_eos: bool = True
    seed: int = 0

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"batch_sizes={self.batch_sizes} and lengths={self.lengths} must be positive")
        SpeculativeConfig(block_size=self.block_size)
        if min(self.repeats, self.batch1_prompts, self.step_repeats, self.context) < 1:
            raise ValueError("repeats, batch1_prompts, step_repeats and context must be >= 1")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"methods {sorted(unknown)} are not rows of this benchmark; expected some of {METHODS}")


def interleaved(runs: dict[str, Callable], groups, repeats: int) -> dict[str, tuple[list[float], list]]:
    """{name: (seconds of each repeat, the last repeat's outputs)}: one compiling call each, then
    `repeats` rounds, each timing every run once over all groups (so a load change hits them all)."""
    for run in runs.values():
        jax.block_until_ready(run(*groups[0]))
    result = {name: ([], None) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started, outputs = time.perf_counter(), []
            for group in groups:
                outputs.append(jax.block_until_ready(run(*group)))
            result[name][0].append(time.perf_counter() - started)
            result[name] = (result[name][0], outputs)
    return result


def decode_rows(config: QuantizedSpeedConfig, models: dict, prompts: list[list[int]], ids: Ids,
                progress: bool = True) -> pd.DataFrame:
    """The rows of `config.methods` (float32 AR always; see the module docstring). `models`: {"f32", "int8",
    "gguf": the AR model and its packed copies; "int8_drafter", "gguf_drafter": the drafter's packed copies}."""
    eos = ids.eos if config.stop_at_eos else None
    methods = ["f32_ar"] + [m for m in METHODS if m in config.methods and m != "f32_ar"]
    rows = []
    for batch, count, length, groups, ar, stops in decode_cases(config, prompts, ids):
        spec = SpeculativeConfig(block_size=config.block_size, max_new_tokens=length, eos_id=eos,
                                 pad_id=ids.pad, mask_id=ids.mask)

        def run_of(method):
            fmt, kind = method.split("_", 1)
            if kind == "ar":
                return lambda p, n: generate(models[fmt], p, n, ar)
            return lambda p, n: speculative_generate(models[f"{fmt}_drafter"], p, n, spec)

        timed = interleaved({m: run_of(m) for m in methods}, groups, config.repeats)
        tokens = {m: np.concatenate([np.asarray(o.tokens) for o in timed[m][1]]) for m in methods}
        refs = {m: [_cut(r, stops) for r in tokens[m]] for m in methods if m.endswith("_ar")}
        for method in methods:
            times, outputs = timed[method]
            lengths = np.concatenate([np.asarray(o.lengths) for o in outputs])
            median = statistics.median(times)
            row = {"method": method, "label": LABELS[method], "batch_size": batch, "prompts": count,
                   "length": length, "seconds": median, "seconds_min": min(times), "seconds_max": max(times),
                   "new_tokens": float(lengths.mean()), "tokens_per_s": float(lengths.sum()) / median,
                   "ms_per_token": 1e3 * median * batch / max(float(lengths.sum()), 1.0)}
            if method != "f32_ar":
                scores = token_sequence_scores(tokens[method], refs["f32_ar"], stops)
                row["agreement_with_f32"] = scores["token_accuracy"]
                row["exact_with_f32"] = scores["exact_match"]
            if method.endswith("_speculative"):
                iterations = np.concatenate([np.asarray(o.iterations) for o in outputs])
                row["tokens_per_iteration"] = float(lengths.sum() / max(iterations.sum(), 1))
                same_base = refs.get(method.replace("_speculative", "_ar"))
                if same_base is not None:
                    row["equals_packed_ar"] = token_sequence_scores(tokens[method], same_base, stops)["exact_match"]
            rows.append(row)
            if progress:
                print(f"batch {batch} length {length:>4} {LABELS[method]:<27} {median * 1e3:9.1f} ms "
                      f"(load {load_load()[0]})", file=sys.stderr, flush=True)
    return with_ratios(pd.DataFrame(rows))


def with_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Each row's time per token as a ratio to float32 AR's of the same batch size and length (same run)."""
    f32 = table[table["method"] == "f32_ar"].set_index(["batch_size", "length"])["ms_per_token"]
    reference = table.join(f32.rename("f32_ms_per_token"), on=["batch_size", "length"])["f32_ms_per_token"]
    table = table.assign(time_vs_f32=table["ms_per_token"] / reference)
    return table.assign(speedup_vs_f32=1.0 / table["time_vs_f32"])


def step_costs(config: QuantizedSpeedConfig, models: dict) -> pd.DataFrame:
    """Median ms of one cached forward pass (logits included) of n positions against `context` cached
    tokens for each weight format (the formats alternating call by call), per batch size; each packed
    format's speed-up over float32."""
    rng = np.random.default_rng(config.seed)
    vocab = models["f32"].config.vocab_size
    passes = {name: _pass_fn(models[name]) for name in FORMATS if name in models}
    rows = []
    for batch in config.batch_sizes:
        prompt = jnp.asarray(rng.integers(4, vocab, size=(batch, config.context)), jnp.int32)
        start = jnp.full((batch,), config.context, jnp.int32)
        for n in sorted(config.step_positions):
            tokens = jnp.asarray(rng.integers(4, vocab, size=(batch, n)), jnp.int32)
            calls = {}
            for name, (cached_pass, state) in passes.items():
                cache = models[name].init_cache(batch, config.context + max(config.step_positions))
                _, cache = cached_pass(state, prompt, jnp.zeros((batch,), jnp.int32), cache)
                calls[name] = (lambda f, s, c: lambda: jax.block_until_ready(f(s, tokens, start, c)[0]))(
                    cached_pass, state, cache)
                calls[name]()
            times = {name: [] for name in calls}
            for _ in range(config.step_repeats):
                for name, call in calls.items():
                    started = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - started)
            rows.append(_step_row(batch, n, times))
        # the prompt pass itself: `context` positions into an empty cache
        zeros = jnp.zeros((batch,), jnp.int32)
        calls = {name: (lambda f, s, c: lambda: jax.block_until_ready(f(s, prompt, zeros, c)[0]))(
            cached_pass, state, models[name].init_cache(batch, config.context))
            for name, (cached_pass, state) in passes.items()}
        times = {name: [] for name in calls}
        for _ in range(max(3, config.step_repeats // 3)):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
        rows.append(_step_row(batch, config.context, times, prompt=True))
    return pd.DataFrame(rows)


def _step_row(batch: int, positions: int, times: dict, prompt: bool = False) -> dict:
    row = {"batch_size": batch, "positions": positions, "pass": "prompt" if prompt else "decode"}
    for name in times:
        row[f"{name}_ms"] = 1e3 * statistics.median(times[name])
    for name in times:
        if name != "f32":
            row[f"{name}_speedup"] = row["f32_ms"] / row[f"{name}_ms"]
    return {**row, "load": load_load()[0]}


def run(config: QuantizedSpeedConfig, *, adapter=None, out_dir=None, progress: bool = True) -> dict:
    """Load SmolLM2-135M and the drafter (`speculative_speed.smollm2_models`), quantize both, time the rows and
    the step table; writes quantized_speed.json to `out_dir`. Returns {"rows", "steps": DataFrames, "payload"}."""
    from workbench.kernels.cpu import has_avx512

    from workbench.pretrained.hub import embedded_path

    ar_model, drafter, tokenizer, ids, source = smollm2_models(adapter)
    gguf = embedded_path("smollm2-135m")
    models = {"f32": ar_model, "int8": quantize_for_decoding(ar_model), "gguf": pack_gguf_blocks(ar_model, gguf)}
    if "int8_speculative" in config.methods:
        models["int8_drafter"] = quantize_for_decoding(drafter)
    if "gguf_speculative" in config.methods:
        models["gguf_drafter"] = pack_gguf_blocks(drafter, gguf)
    count = max(config.batch1_prompts if b == 1 else b for b in config.batch_sizes)
    prompts = chat_prompt_ids(tokenizer, count, config.max_prompt_tokens, config.seed)
    load_before = load_load()
    rows = decode_rows(config, models, prompts, ids, progress)
    steps = step_costs(config, models)
    device = jax.devices()[0]
    payload = {"config": dataclasses.asdict(config), "model": "smollm2-135m", "drafter": source,
               "device": {"platform": device.platform, "kind": device.device_kind}, "avx512": has_avx512(),
               "load_average": {"before": load_before, "after": load_load()}, "jax": jax.__version__,
               "gguf": str(gguf),
               "weight_bytes": {"f32": int(sum(x.nbytes for x in jax.tree.leaves(_params(ar_model)))),
                                "int8": packed_bytes(models["int8"]), "gguf": packed_bytes(models["gguf"])},
               "prompt_tokens": [len(p) for p in prompts], "llama_cpp": LLAMA_CPP,
               "rows": rows.to_dict(orient="records"), "steps": steps.to_dict(orient="records")}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_json(out_dir / "quantized_speed.json", payload)
    return {"rows": rows, "steps": steps, "payload": payload}


def _params(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


ROW_COLUMNS = ["label", "batch_size", "length", "new_tokens", "seconds", "ms_per_token", "tokens_per_s", "time_vs_f32",
               "speedup_vs_f32", "agreement_with_f32", "exact_with_f32", "tokens_per_iteration", "equals_packed_ar"]


def format_tables(result: dict) -> str:
    payload = result["payload"]
    rows = result["rows"]
    fmt = lambda v: f"{v:.4g}"
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        return "\n".join([
            f"model {payload['model']}, drafter: {payload['drafter']}; device {payload['device']['kind']} "
            f"(AVX-512 kernel path: {payload['avx512']}); load average before {payload['load_average']['before']}, "
            f"after {payload['load_average']['after']}",
            rows[[c for c in ROW_COLUMNS if c in rows.columns]].to_string(index=False, float_format=fmt),
            f"\none cached decoding pass of n positions against {payload['config']['context']} cached tokens, and the "
            f"prompt pass of {payload['config']['context']} positions (ms, medians, the formats alternating)",
            result["steps"].to_string(index=False, float_format=fmt),
            f"\nllama.cpp: {payload['llama_cpp']['ms_per_token']} ms per token ({payload['llama_cpp']['what']})"])


def main(argv: Optional[Sequence[str]] = None) -> dict:
    defaults = QuantizedSpeedConfig()
    parser = decode_arguments(__doc__, defaults)
    parser.add_argument("--step-repeats", type=int, default=defaults.step_repeats)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(defaults.methods),
                        help="rows besides float32 AR (which always runs)")
    args = parser.parse_args(argv)
    config = QuantizedSpeedConfig(batch_sizes=tuple(args.batch), lengths=tuple(args.lengths), repeats=args.repeats,
                                  batch1_prompts=args.batch1_prompts, step_repeats=args.step_repeats,
                                  methods=tuple(args.methods), stop_at_eos=not args.no_eos)
    result = run(config, adapter=args.adapter, out_dir=args.out)
    print(format_tables(result))
    print(f"wrote {Path(args.out) / 'quantized_speed.json'}")
    return result


if __name__ == "__main__":
    main()
