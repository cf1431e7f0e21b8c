"""The converted model at work: the shipped drafter adapter on SmolLM2-135M (notebook 07, `make demo`).

`drafter_tables(pretrained, adapter_dir, prompts, ...)` loads the adapter onto the imported model
(refused by fingerprint on any other base) and answers the prompts three ways on the same
weights: the AR model (KV cache), the drafter's lossy block decoding (each block: the AR model's
next token, b - 1 tokens drafted by one-step masked diffusion, one causal pass to commit), and
self-speculation (drafts verified by the AR model: its exact greedy output, faster when drafts
are accepted). It returns the answers, one answer's drafting trajectory, the decode times on the
same prompts, and the adapter's recorded provenance and metrics.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np
import pandas as pd

from workbench.evaluation.metrics import token_sequence_scores
from workbench.pretrained_study import prompt_ids, right_padded
from workbench.sampling.speculative import SpeculativeConfig, speculative_generate

SHIPPED_ADAPTER = Path(__file__).parent / "artifacts" / "smollm2_135m_drafter"


def drafted_answers(drafter, tokenizer, prompts: Sequence[str], *, block_size: int, max_new_tokens: int,
                    verify: bool, draft_steps: int = 1):
    """One row per prompt: the answer, tokens, forward passes per token, tokens per iteration and
    the batch's wall time (first call: with compilation); and the raw `SpeculativeOutput`."""
    rows, lengths = right_padded(prompt_ids(tokenizer, prompts), tokenizer.specials.pad, multiple=64)
    config = SpeculativeConfig.for_tokenizer(tokenizer, block_size=block_size, max_new_tokens=max_new_tokens,
                                             verify=verify, draft_steps=draft_steps)
    started = time.perf_counter()
    out = jax.block_until_ready(speculative_generate(drafter, rows, lengths, config))
    seconds = time.perf_counter() - started
    iterations, made = np.asarray(out.iterations), np.asarray(out.lengths)
    table = pd.DataFrame({"prompt": list(prompts), "answer": tokenizer.decode_batch(np.asarray(out.tokens)),
                          "new_tokens": made.tolist(),
                          "passes_per_token": np.round((1 + iterations * (draft_steps + 1)) / np.maximum(made, 1),
                                                       3).tolist(),
                          "tokens_per_iteration": np.round(made / np.maximum(iterations, 1), 2).tolist(),
                          "batch_seconds": round(seconds, 2)})
    return table, out


def draft_trajectory(out, tokenizer, row: int = 0) -> pd.DataFrame:
    """One row per iteration of example `row`: the drafted block (its first token is the AR
    model's), how many of its tokens were committed, and the answer so far."""
    committed, drafts, tokens = (np.asarray(out.committed[row]), np.asarray(out.drafts[row]),
                                 np.asarray(out.tokens[row]))
    records, done = [], 0
    for i, count in enumerate(committed):
        if count == 0:
            break
        block = drafts[i].tolist()
        records.append({"iteration": i + 1, "drafted": tokenizer.decode(block, stop_at_eos=False),
                        "kept": int(count), "committed": tokenizer.decode(block[:count], stop_at_eos=False),
                        "answer_so_far": tokenizer.decode(tokens[: done + count].tolist())})
        done += int(count)
    return pd.DataFrame(records)


def load_drafter(pretrained, adapter_dir):
    """(drafter, its tokenizer with the mask token, the adapter's workbench record, {} for an adapter saved
    elsewhere): the adapter in `adapter_dir` on the imported model (refused by fingerprint on any other base)."""
    from workbench.pretrained import load_adapter, with_mask_token
    from workbench.pretrained.peft import read_adapter_config

    record = read_adapter_config(adapter_dir)[0].get("workbench", {})
    masked = with_mask_token(pretrained)
    return load_adapter(masked.model, adapter_dir), masked.tokenizer, record


@dataclasses.dataclass
class KeptDrafts:
    figure: object  # plotly Figure: iterations x block positions, coloured by the verifier's verdict
    table: pd.DataFrame  # the same as text, one row per iteration
    answer: pd.DataFrame  # the answer (the AR model's own greedy answer), passes per token, tokens per iteration


def kept_drafts(pretrained, adapter_dir, prompt: str, *, max_new_tokens: int) -> KeptDrafts:
    """Self-speculative decoding of one prompt with the adapter in `adapter_dir`: which drafted tokens
    the AR model kept, rejected or discarded, iteration by iteration (`workbench.viz.speculative`)."""
    from workbench.viz.speculative import speculative_figure, speculative_table
    from workbench.viz.trajectory import token_label

    drafter, tokenizer, record = load_drafter(pretrained, adapter_dir)
    answer, out = drafted_answers(drafter, tokenizer, [prompt], block_size=int(record["recipe"]["block_size"]),
                                  max_new_tokens=max_new_tokens, verify=True)
    label = lambda token: token_label(tokenizer, token)
    return KeptDrafts(speculative_figure(out, 0, label), speculative_table(out, 0, label), answer)


@dataclasses.dataclass
class DrafterTables:
    answers: pd.DataFrame  # prompt, AR answer, drafted (lossy) answer, its agreement with AR, speculative stats
    trajectory: pd.DataFrame  # the first prompt's drafting, iteration by iteration
    speed: pd.DataFrame  # AR vs drafted vs speculative on the same prompts, same weights
    record: dict  # the adapter's provenance and recorded metrics (adapter_config.json's workbench record)


def drafter_tables(pretrained, adapter_dir, prompts: Sequence[str], *, max_new_tokens: int,
                   repeats: int = 2, smaller_blocks: Sequence[int] = (2,)) -> DrafterTables:
    """Answers, trajectory and decode times of the drafter saved in `adapter_dir` on `pretrained`; lossy
    answers also in `smaller_blocks` (fewer tokens drafted at once: closer to AR, more passes per token;
    `python -m workbench.drafter_study frontier` measures that trade on held-out prompts)."""
    from workbench.data.special import ar_ids
    from workbench.sampling.ar import ARSamplingConfig, generate

    drafter, tokenizer, record = load_drafter(pretrained, adapter_dir)
    block = int(record["recipe"]["block_size"])
    ids = prompt_ids(pretrained.tokenizer, prompts)
    rows, lengths = right_padded(ids, pretrained.tokenizer.specials.pad, multiple=64)
    ar_config = ARSamplingConfig(max_new_tokens=max_new_tokens, **ar_ids(pretrained.tokenizer))
    config = lambda verify: SpeculativeConfig.for_tokenizer(tokenizer, block_size=block, max_new_tokens=max_new_tokens,
                                                            verify=verify)
    runs = {
        "ar (KV cache)": lambda: generate(pretrained.model, rows, lengths, ar_config),
        f"drafted, b={block} (lossy)": lambda: speculative_generate(
            drafter, rows, lengths, config(False)),
        f"self-speculative, b={block} (exact)": lambda: speculative_generate(
            drafter, rows, lengths, config(True)),
    }
    smaller = [b for b in smaller_blocks if 2 <= b < block]
    for b in smaller:
        runs[f"drafted, b={b} (lossy)"] = lambda b=b: speculative_generate(
            drafter, rows, lengths, dataclasses.replace(config(False), block_size=b))
    outputs, seconds = {}, {}
    for name, run in runs.items():
        outputs[name] = jax.block_until_ready(run())  # compiles
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - started)
        seconds[name] = float(np.median(times))
    ar_name, lossy_name, exact_name = list(runs)[:3]
    ar_tokens = np.asarray(outputs[ar_name].tokens)
    stops = {tokenizer.specials.eos, tokenizer.specials.pad}
    references = [row[: int(np.argmax(np.isin(row, list(stops))))] if np.isin(row, list(stops)).any() else row
                  for row in ar_tokens.tolist()]
    lossy, exact = outputs[lossy_name], outputs[exact_name]
    agreement = lambda out: np.round([token_sequence_scores(np.asarray(out.tokens)[i : i + 1], [references[i]], stops)[
        "token_accuracy"] for i in range(len(prompts))], 3)
    answers = pd.DataFrame({
        "prompt": list(prompts),
        "ar": tokenizer.decode_batch(ar_tokens),
        "drafted (lossy)": tokenizer.decode_batch(np.asarray(lossy.tokens)),
        "agreement_with_ar": agreement(lossy),
        **{key: value for b in smaller for key, value in (
            (f"drafted, b={b} (lossy)", tokenizer.decode_batch(np.asarray(outputs[f"drafted, b={b} (lossy)"].tokens))),
            (f"agreement, b={b}", agreement(outputs[f"drafted, b={b} (lossy)"])))},
        "speculative == ar": [bool(np.array_equal(a, b)) for a, b in zip(np.asarray(exact.tokens), ar_tokens)],
        "speculative tokens/iteration": np.round(np.asarray(exact.lengths) / np.maximum(np.asarray(exact.iterations), 1),
                                                 2),
    })
    made = {name: int(np.sum(np.asarray(out.lengths))) for name, out in outputs.items()}
    speed = pd.DataFrame({
        "method": list(runs), "seconds": [round(seconds[n], 3) for n in runs],
        "tokens": [made[n] for n in runs],
        "ms_per_token": [round(1000 * seconds[n] / max(made[n], 1), 1) for n in runs],
        "speed_vs_ar": [round((made[n] / seconds[n]) / (made[ar_name] / seconds[ar_name]), 2) for n in runs],
    })
    return DrafterTables(answers, draft_trajectory(lossy, tokenizer, 0), speed, record)


def adapter_path(name) -> Path:
    """'shipped' (the adapter in workbench/artifacts) or a folder."""
    return SHIPPED_ADAPTER if name == "shipped" else Path(name)


def provenance(record: dict) -> str:
    """How the adapter was made, in a few lines (from its saved record)."""
    recipe, metrics = record.get("recipe", {}), record.get("metrics") or {}
    data = record.get("data", {}).get("train", {})
    lines = [f"adapter: rank {record['lora_config']['rank']} on {', '.join(record['lora_config']['targets'])} "
             f"+ embedding rows {record['trainable_rows']}; base {record.get('base_model', record['base_name'])} "
             f"(fingerprint {record['base_fingerprint'][:12]})"]
    if recipe:
        lines.append(f"recipe: objective {recipe['objective']}, block {recipe['block_size']}, lr {recipe['learning_rate']}, "
                     f"batch {recipe['batch_size']}, step {record.get('step')} of {recipe['steps']}; data: "
                     f"{data.get('answer_tokens', '?')} answer tokens, the AR model's greedy answers to {data.get('kept', '?')} "
                     f"training prompts (hash {data.get('prompts_hash', '?')})")
    if metrics:
        keys = ("train_minutes", "target_tokens", "agreement@32", "agreement@64", "passes_per_token",
                "tokens_per_iteration", "squad_f1_ar", "squad_f1_drafted")
        lines.append("recorded on held-out prompts: " + ", ".join(f"{k} {metrics[k]:.3g}" if isinstance(metrics[k], float)
                                                                  else f"{k} {metrics[k]}" for k in keys if k in metrics))
    if record.get("command"):
        lines.append(f"regenerate: {record['command']}")
    return "\n".join(lines)


def metrics_record(tables: DrafterTables) -> dict:
    """The section's results for metrics.json."""
    return {"answers": tables.answers.to_dict("records"), "speed": tables.speed.to_dict("records"),
            "adapter_step": tables.record.get("step"), "adapter_metrics": tables.record.get("metrics")}
