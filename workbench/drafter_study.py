"""AR2Diff on a real model within a CPU budget: a block drafter adapter on SmolLM2, and its curve.

`DrafterRecipe` is the whole run as data (base model, adapter, block size, objective,
optimiser, data sizes, evaluation cadence); `run_recipe(recipe, run_dir)` builds the adapted
model, the AR model's own answers to training prompts (`workbench.data.drafting`), trains with
the resumable trainer (`kind="draft"` loss, `workbench.objectives.drafting`) and evaluates the
adapter at each evaluation step on held-out prompts (`drafter_metrics`): agreement of its
lossy block decoding with the AR model's greedy text at 32 and 64 tokens, forward passes per
token, tokens per iteration and acceptance by draft position when it drafts for the AR model
(exact output), masked-token agreement by position in the block, and SQuAD F1 of the AR and the
drafted answers. Everything lands in the run directory (metrics.jsonl, run_info.json).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from workbench.data.drafting import ChatPrompt, answer_pairs, chat_prompts
from workbench.evaluation.metrics import squad_f1, token_sequence_scores
from workbench.models.config import LoRAConfig
from workbench.models.lora import adapter_summary, with_lora
from workbench.models.transformer import with_config
from workbench.objectives.batch import seq2seq_batch
from workbench.objectives.drafting import DraftConfig
from workbench.objectives.losses import LossConfig
from workbench.pretrained_study import prompt_ids, right_padded
from workbench.sampling.speculative import SpeculativeConfig, speculative_generate
from workbench.training.optim import OptimizerConfig
from workbench.training.sources import Seq2SeqSource
from workbench.training.trainer import TrainConfig, eval_step, train


@dataclasses.dataclass(frozen=True)
class DrafterRecipe:
    base: str = "smollm2-135m"
    block_size: int = 4
    objective: str = "distill"  # workbench.objectives.drafting.DRAFT_OBJECTIVES
    rank: int = 8  # rank 8 on all seven projections of SmolLM2: a 9.8 MB adapter (float32)
    alpha: float = 16.0
    train_norms: bool = False
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    steps: int = 200
    batch_size: int = 8
    all_masked: float = 0.5
    train_prompts: int = 2000
    held_out_prompts: int = 120
    answer_len: int = 64  # the AR model's answers: at most this many new tokens
    max_prompt_tokens: int = 160  # prompts kept (held-out evaluation)
    train_prompt_tokens: int = 96  # training rows: prompts up to this long (the clean pass runs the whole width)
    compute_dtype: str = "float32"  # training compute; decoding always runs float32
    eval_every: int = 50
    eval_prompts: int = 40  # held-out prompts scored at intermediate evaluations
    final_eval_prompts: Optional[int] = None  # at the last step (None: every held-out prompt)
    seed: int = 0


@dataclasses.dataclass
class DrafterSetup:
    recipe: DrafterRecipe
    ar_model: object  # the imported AR model, untouched
    model: object  # AR model + mask row + adapter (the drafter)
    tokenizer: object  # with the mask token
    mask_id: int
    train_pairs: tuple[list, list]
    held_out: list[ChatPrompt]
    held_out_pairs: tuple[list, list]
    data_report: dict


def _model_id(pretrained) -> str:
    from workbench.data.files import file_sha256

    path = Path(pretrained.source.path)
    return f"{pretrained.source.location}:{file_sha256(path)[:16] if path.is_file() else path}"


def setup(recipe: DrafterRecipe, cache_dir, *, progress: bool = True) -> DrafterSetup:
    """Load the base, add the mask token's row and the adapter, and the AR model's answers to
    the training and held-out prompts (generated once, cached under `cache_dir`)."""
    from workbench.pretrained import load_pretrained, with_mask_token

    pretrained = load_pretrained(recipe.base, dtype="float32")
    masked = with_mask_token(pretrained)
    mask_id = masked.tokenizer.specials.mask
    lora = LoRAConfig(rank=recipe.rank, alpha=recipe.alpha, trainable_rows=(mask_id,), train_norms=recipe.train_norms)
    model = with_lora(masked.model, lora, seed=recipe.seed)
    if recipe.compute_dtype != model.config.dtype:
        model = with_config(model, dtype=recipe.compute_dtype)
    model_id = _model_id(pretrained)
    train_prompts = chat_prompts("train", recipe.train_prompts, seed=recipe.seed)
    held_out = chat_prompts("held_out", recipe.held_out_prompts, seed=recipe.seed)
    common = dict(max_new_tokens=recipe.answer_len, cache_dir=cache_dir, model_id=model_id,
                  max_prompt_tokens=recipe.max_prompt_tokens, progress=progress)
    train_in, train_out, train_report = answer_pairs(pretrained.model, pretrained.tokenizer, train_prompts, **common)
    held_in, held_out_answers, held_report = answer_pairs(pretrained.model, pretrained.tokenizer, held_out, **common)
    kept = set(map(tuple, held_in))
    held_kept = [p for p, ids in zip(held_out, prompt_ids(pretrained.tokenizer, [p.text for p in held_out]))
                 if tuple(ids) in kept]
    return DrafterSetup(recipe, pretrained.model, model, masked.tokenizer, mask_id, (train_in, train_out), held_kept,
                        (held_in, held_out_answers), {"train": train_report, "held_out": held_report,
                                                      "model_id": model_id})


def _decode(model, tokenizer, inputs, config: SpeculativeConfig, batch_size: int):
    outs, lengths, iterations, passes, accepted, offered = [], [], [], [], 0, 0
    width = -(-max(len(row) for row in inputs) // 64) * 64  # one width (and one compile) for every batch
    for start in range(0, len(inputs), batch_size):
        rows, lens = right_padded(inputs[start : start + batch_size], tokenizer.specials.pad, multiple=width)
        out = speculative_generate(model, rows, lens, config)
        outs.append(np.asarray(out.tokens))
        lengths.append(np.asarray(out.lengths))
        iterations.append(np.asarray(out.iterations))
        passes.append(1 + np.asarray(out.iterations) * (config.draft_steps + 1))
        accepted = accepted + np.asarray(out.accepted_at)
        offered = offered + np.asarray(out.drafted_at)
    return (np.concatenate(outs), np.concatenate(lengths), np.concatenate(iterations), np.concatenate(passes),
            accepted, offered)


def drafter_metrics(setup_: DrafterSetup, model, *, count: Optional[int] = None, batch_size: int = 20,
                    draft_steps: int = 1, block_size: Optional[int] = None, masked: bool = True,
                    leniency: float = 1.0) -> dict:
    """The curve's measurements on the first `count` held-out prompts (all by default), decoding in
    blocks of `block_size` (default: the recipe's) with `draft_steps` drafter passes per block;
    `masked=False` leaves out the masked-token agreement (it scores the recipe's block size); `leniency` < 1
    verifies leniently (`SpeculativeConfig.leniency`), whose answers are then scored against AR's too."""
    recipe, tok = setup_.recipe, setup_.tokenizer
    inputs, references = setup_.held_out_pairs
    prompts = setup_.held_out
    count = len(inputs) if count is None else min(count, len(inputs))
    inputs, references, prompts = inputs[:count], references[:count], prompts[:count]
    model = with_config(model, dtype="float32") if model.config.dtype != "float32" else model
    base = dict(block_size=block_size or recipe.block_size, draft_steps=draft_steps, max_new_tokens=recipe.answer_len)
    stops = {tok.specials.eos, tok.specials.pad}
    # the AR answers end with their EOS; decoded rows are scored cut at it, so compare without it
    references = [list(r[: r.index(tok.specials.eos)]) if tok.specials.eos in r else list(r) for r in references]
    result = {"prompts": count}
    started = time.perf_counter()
    lossy_config = SpeculativeConfig.for_tokenizer(tok, verify=False, **base)
    lossy, lengths, iterations, passes, _, _ = _decode(model, tok, inputs, lossy_config, batch_size)
    for n in (32, 64):
        scores = token_sequence_scores(lossy[:, :n], [r[:n] for r in references], stops)
        result[f"agreement@{n}"] = scores["token_accuracy"]
        result[f"exact@{n}"] = scores["exact_match"]
    result["passes_per_token"] = float(np.mean(passes / np.maximum(lengths, 1)))
    exact_config = SpeculativeConfig.for_tokenizer(tok, verify=True, leniency=leniency, **base)
    exact, lengths_v, iterations_v, passes_v, accepted, offered = _decode(model, tok, inputs, exact_config, batch_size)
    result["verified_equals_ar"] = token_sequence_scores(exact, references, stops)["exact_match"]
    for n in (32, 64):
        result[f"verified_agreement@{n}"] = token_sequence_scores(exact[:, :n], [r[:n] for r in references],
                                                                  stops)["token_accuracy"]
    result["tokens_per_iteration"] = float(np.sum(lengths_v) / max(np.sum(iterations_v), 1))
    result["verified_passes_per_token"] = float(np.mean(passes_v / np.maximum(lengths_v, 1)))
    for i, (a, o) in enumerate(zip(accepted, offered), start=1):
        result[f"accept_at_{i}"] = float(a / max(o, 1))
    squad_rows = [i for i, p in enumerate(prompts) if p.task == "squad"]
    if squad_rows:
        text = lambda rows: tok.decode_batch(rows)
        drafted_text = text(lossy[squad_rows])
        ar_text = text(np.asarray([references[i] + [tok.specials.pad] * (recipe.answer_len - len(references[i]))
                                   for i in squad_rows]))
        golds = [prompts[i].references for i in squad_rows]
        result["squad_f1_ar"] = float(np.mean([squad_f1(t, g) for t, g in zip(ar_text, golds)]))
        result["squad_f1_drafted"] = float(np.mean([squad_f1(t, g) for t, g in zip(drafted_text, golds)]))
        result["squad_questions"] = len(squad_rows)
    if masked:
        result["masked_agreement"] = masked_agreement(setup_, model, count)
    result["eval_seconds"] = round(time.perf_counter() - started, 1)
    return result


FRONTIER_SETTINGS = ((2, 1), (4, 1), (4, 2), (4, 3), (8, 1), (8, 3), (8, 7))  # (block size, draft steps)


def frontier(setup_: DrafterSetup, model, settings=FRONTIER_SETTINGS, *, count: int = 40,
             batch_size: int = 20, leniencies: Sequence[float] = (1.0,), progress: bool = False) -> list[dict]:
    """One drafter's quality against its cost at other block sizes and draft steps than it was trained
    with: per (b, draft steps) and verification leniency, the lossy answers' agreement with the AR
    model's and their forward passes per token, and the verified decoder's tokens per iteration, passes
    per token and agreement with AR (1.0 at leniency 1)."""
    rows = []
    for leniency in leniencies:
        for block_size, draft_steps in settings:
            metrics = drafter_metrics(setup_, model, count=count, batch_size=batch_size, draft_steps=draft_steps,
                                      block_size=block_size, masked=False, leniency=leniency)
            rows.append({"block_size": block_size, "draft_steps": draft_steps, "leniency": leniency, **metrics})
            if progress:
                row = rows[-1]
                print(f"b={block_size} draft steps={draft_steps}: agreement@32 {row['agreement@32']:.3f} "
                      f"@64 {row['agreement@64']:.3f}, {row['passes_per_token']:.2f} passes/token (lossy); "
                      f"verified (leniency {leniency}): {row['tokens_per_iteration']:.2f} tokens/iteration, "
                      f"{row['verified_passes_per_token']:.2f} passes/token, agreement@32 "
                      f"{row['verified_agreement@32']:.3f} @64 {row['verified_agreement@64']:.3f}", flush=True)
    return rows


def masked_agreement(setup_: DrafterSetup, model, count: int) -> dict:
    """Held-out agreement of the drafter's argmax with the AR model's at each draft position
    (1 .. b-1) when the whole block is masked (one-step drafting), on the AR answers."""
    recipe = setup_.recipe
    inputs, answers = setup_.held_out_pairs
    loss = LossConfig(kind="draft", draft=DraftConfig(block_size=recipe.block_size, objective=recipe.objective,
                                                      all_masked=1.0), mask_id=setup_.mask_id,
                      pad_id=setup_.tokenizer.specials.pad)
    sums, weights = {}, {}
    count = max(8, count - count % 8)  # whole batches of 8 only: one compiled shape
    for start in range(0, count, 8):
        batch = seq2seq_batch(inputs[start : start + 8], answers[start : start + 8],
                              input_len=recipe.max_prompt_tokens, target_len=recipe.answer_len,
                              pad_id=setup_.tokenizer.specials.pad, pad_targets=False,
                              example_ids=list(range(start, start + len(inputs[start : start + 8]))))
        metrics = jax.device_get(eval_step(model, jax.tree.map(jnp.asarray, batch), jax.random.key(0), loss))
        for name in metrics.sums:
            sums[name] = sums.get(name, 0.0) + float(metrics.sums[name])
            weights[name] = weights.get(name, 0.0) + float(metrics.weights[name])
    return {name: sums[name] / max(weights[name], 1.0) for name in sums if name.startswith("agree")}


def train_config(recipe: DrafterRecipe, setup_: DrafterSetup) -> TrainConfig:
    loss = LossConfig(kind="draft", draft=DraftConfig(block_size=recipe.block_size, objective=recipe.objective,
                                                      all_masked=recipe.all_masked),
                      mask_id=setup_.mask_id, pad_id=setup_.tokenizer.specials.pad, special_ids=())
    optimizer = OptimizerConfig(learning_rate=recipe.learning_rate, schedule="constant",
                                warmup_steps=recipe.warmup_steps, weight_decay=0.0)
    return TrainConfig(steps=recipe.steps, loss=loss, optimizer=optimizer, seed=recipe.seed, log_every=5,
                       eval_every=recipe.eval_every, checkpoint_every=recipe.eval_every, keep_checkpoints=2,
                       progress=False, tensorboard=False)


def run_recipe(recipe: DrafterRecipe, run_dir, *, cache_dir=None, allow_config_change: bool = False,
               progress: bool = True):
    """Train the drafter of `recipe` into `run_dir` (resuming what is there) with held-out
    evaluations; returns (TrainResult, setup)."""
    run_dir = Path(run_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else run_dir.parent / "drafter_data"
    setup_ = setup(recipe, cache_dir, progress=progress)
    pairs = [(i, a) for i, a in zip(*setup_.train_pairs) if len(i) <= recipe.train_prompt_tokens]
    inputs, answers = [i for i, _ in pairs], [a for _, a in pairs]
    setup_.data_report["train"]["training_rows"] = len(pairs)
    setup_.data_report["train"]["training_answer_tokens"] = int(sum(len(a) for a in answers))
    source = Seq2SeqSource(inputs, answers, input_len=recipe.train_prompt_tokens, target_len=recipe.answer_len,
                           batch_size=recipe.batch_size, pad_targets=False, seed=recipe.seed,
                           pad_id=setup_.tokenizer.specials.pad)

    def evaluate(model, step: int) -> dict:
        final = step == recipe.steps
        metrics = drafter_metrics(setup_, model, count=recipe.final_eval_prompts if final else recipe.eval_prompts)
        if progress:
            print(f"step {step}: {json.dumps(metrics)}", flush=True)
        return metrics

    result = train(setup_.model, train_config(recipe, setup_), source, run_dir, eval_fn=evaluate,
                   data_info={"drafter": setup_.data_report},
                   extra_info={"recipe": dataclasses.asdict(recipe), "adapter": adapter_summary(setup_.model)},
                   allow_config_change=allow_config_change)
    return result, setup_


def curve(run_dir) -> list[dict]:
    """The run's evaluations as curve points: step, trained target tokens, training CPU-minutes
    (the log windows' step time, evaluations excluded) and the metrics."""
    from workbench.training.logging import read_metrics

    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run_info.json").read_text())
    recipe = info["recipe"]
    records = read_metrics(run_dir)
    eval_steps = {r["step"] for r in records if any(k.startswith("eval_") for k in r)}
    seconds, last, points = 0.0, 0, []
    row_tokens = recipe["batch_size"] * (recipe["train_prompt_tokens"] + recipe["answer_len"])
    report = info["data"]["drafter"]["train"]
    mean_answer = report["training_answer_tokens"] / max(report["training_rows"], 1)
    for record in records:
        if "tokens_per_s" in record:
            steps = record["step"] - last
            if last not in eval_steps or last == 0:
                seconds += steps * row_tokens / max(record["tokens_per_s"], 1e-9)
            else:  # the window after an evaluation includes it: use the previous window's rate
                seconds += steps * row_tokens / max(previous_rate, 1e-9)
            previous_rate, last = record["tokens_per_s"], record["step"]
        evals = {k[len("eval_"):]: v for k, v in record.items() if k.startswith("eval_")}
        if evals:
            points.append({"step": record["step"], "train_minutes": round(seconds / 60, 2),
                           "target_tokens": int(record["step"] * recipe["batch_size"] * mean_answer), **evals})
    return points


def restore(run_dir, step: Optional[int] = None) -> tuple[DrafterSetup, int]:
    """The run's setup (its recipe, data and held-out prompts) with its drafter at checkpoint `step`
    (default: the last), and that step."""
    from workbench.config import from_dict
    from workbench.training.checkpoint import CheckpointStore

    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run_info.json").read_text())
    recipe = from_dict(DrafterRecipe, info["recipe"])
    setup_ = setup(recipe, run_dir.parent.parent / "drafter_data", progress=False)
    store = CheckpointStore(run_dir)
    try:
        step = store.restore(setup_.model, step=step)
    finally:
        store.close()
    return setup_, step


def restore_adapter(adapter_dir, cache_dir) -> tuple[DrafterSetup, int]:
    """The setup of the recipe recorded in an exported adapter (its data and held-out prompts, from
    `cache_dir`) with that adapter as the drafter, and the step it was exported at."""
    from workbench.config import from_dict
    from workbench.pretrained import load_adapter, load_pretrained, with_mask_token
    from workbench.pretrained.peft import read_adapter_config

    record = read_adapter_config(adapter_dir)[0].get("workbench", {})
    if "recipe" not in record:
        raise ValueError(f"{adapter_dir}: its adapter_config.json records no drafter recipe; pass an adapter written "
                         f"by `python -m workbench.drafter_study export`")
    recipe = from_dict(DrafterRecipe, record["recipe"])
    setup_ = setup(recipe, cache_dir, progress=False)
    model = load_adapter(with_mask_token(load_pretrained(recipe.base, dtype="float32")).model, adapter_dir)
    return dataclasses.replace(setup_, model=model), int(record.get("step", -1))


def export_adapter(run_dir, to, *, step: Optional[int] = None, command: str = "") -> Path:
    """Save the drafter of `run_dir` at `step` (default: its last checkpoint) as a PEFT-layout
    adapter folder `to`, with its recipe, seed, data hashes, base fingerprint, the metrics of
    that step, the run's curve and the command that regenerates it."""
    from workbench.data.files import file_sha256
    from workbench.pretrained import save_adapter

    run_dir = Path(run_dir)
    setup_, step = restore(run_dir, step)
    points = curve(run_dir)
    at = [p for p in points if p["step"] == step]
    data = {split: {k: v for k, v in report.items() if k != "answers_file"} | {
        "answers_sha256": file_sha256(Path(report["answers_file"]))} for split, report in
        setup_.data_report.items() if isinstance(report, dict)}
    extra = {"recipe": dataclasses.asdict(recipe), "step": step, "seed": recipe.seed, "data": data,
             "base_model": setup_.data_report["model_id"], "metrics": at[0] if at else None, "curve": points,
             "command": command}
    return save_adapter(setup_.model, to, base_name=recipe.base, extra=extra, overwrite=True)


PILOT_OBJECTIVES = ("distill", "ce", "distill+ce")
PILOT_BLOCKS = (4, 8)


def pilot_recipes(steps: int, **changes) -> dict[str, DrafterRecipe]:
    """The comparison grid: every objective at every block size, the same budget each."""
    return {f"pilot_{objective.replace('+', '_')}_b{b}": DrafterRecipe(objective=objective, block_size=b,
                                                                         steps=steps, eval_every=steps,
                                                                         final_eval_prompts=40, **changes)
            for b in PILOT_BLOCKS for objective in PILOT_OBJECTIVES}


def summary(root) -> list[dict]:
    """One row per run under `root`: its recipe's objective and block size and its last evaluation."""
    rows = []
    for run_dir in sorted(Path(root).iterdir()):
        if not (run_dir / "run_info.json").exists():
            continue
        points = curve(run_dir)
        if not points:
            continue
        recipe = json.loads((run_dir / "run_info.json").read_text())["recipe"]
        last = points[-1]
        rows.append({"run": run_dir.name, "objective": recipe["objective"], "block_size": recipe["block_size"],
                     **{k: v for k, v in last.items() if not isinstance(v, dict)},
                     **{f"masked_{k}": v for k, v in last.get("masked_agreement", {}).items()}})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train and evaluate block drafters on SmolLM2-135M (CPU budget).")
    parser.add_argument("command", choices=("pilots", "run", "summary", "export", "figure", "frontier"))
    parser.add_argument("--to", default=None, help="export: the adapter folder (default: the shipped one); "
                                                   "figure: the HTML file (default: docs/drafter_curve.html)")
    parser.add_argument("--step", type=int, default=None, help="export, frontier: the checkpoint step (default: the last)")
    parser.add_argument("--prompts", type=int, default=40, help="frontier: held-out prompts scored per setting")
    parser.add_argument("--leniency", type=float, nargs="+", default=None,
                        help="frontier: verify leniently at these values instead (the recipe's block size, one draft "
                             "step; SpeculativeConfig.leniency)")
    parser.add_argument("--adapter", default=None, help="frontier: an exported adapter folder (its recorded recipe "
                                                        "and data) instead of a run's checkpoint")
    parser.add_argument("--root", default="runs/drafter")
    parser.add_argument("--name", default="best")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--objective", default="distill")
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--train-prompts", type=int, default=DrafterRecipe.train_prompts,
                        help="training prompts the AR model answers (the answers are the training data)")
    parser.add_argument("--allow-config-change", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.command == "pilots":
        for name, recipe in pilot_recipes(args.steps).items():
            print(f"== {name}", flush=True)
            run_recipe(recipe, root / name, cache_dir=root.parent / "drafter_data")
    elif args.command == "run":
        recipe = DrafterRecipe(objective=args.objective, block_size=args.block_size, steps=args.steps,
                               eval_every=args.eval_every, train_prompts=args.train_prompts)
        run_recipe(recipe, root / args.name, cache_dir=root.parent / "drafter_data",
                   allow_config_change=args.allow_config_change)
    elif args.command == "export":
        from workbench.drafter_demo import SHIPPED_ADAPTER

        command = (f"python -m workbench.drafter_study run --name {args.name} --objective {args.objective} "
                   f"--block-size {args.block_size} --steps {args.steps} --eval-every {args.eval_every} "
                   f"--train-prompts {args.train_prompts} && "
                   f"python -m workbench.drafter_study export --name {args.name} --step {args.step}")
        folder = export_adapter(root / args.name, args.to or SHIPPED_ADAPTER, step=args.step, command=command)
        print(f"adapter written to {folder}")
        return
    elif args.command == "frontier":
        if args.adapter:
            setup_, step = restore_adapter(args.adapter, root.parent / "drafter_data")
            out = root / f"frontier_{Path(args.adapter).name}_step{step}{'_lenient' if args.leniency else ''}.json"
        else:
            setup_, step = restore(root / args.name, args.step)
            out = root / args.name / f"frontier_step{step}{'_lenient' if args.leniency else ''}.json"
        if args.leniency is None:
            rows = frontier(setup_, setup_.model, count=args.prompts, progress=True)
        else:  # the recipe's block size in one draft step, verified at each leniency
            rows = frontier(setup_, setup_.model, ((setup_.recipe.block_size, 1),), count=args.prompts,
                            leniencies=args.leniency, progress=True)
        out.write_text(json.dumps({"run": args.adapter or args.name, "step": step, "prompts": args.prompts, "rows": rows}, indent=1))
        print(f"written to {out}")
        return
    elif args.command == "figure":
        from workbench.viz.drafter_curve import curve_figure

        runs = [d for d in sorted(root.iterdir()) if (d / "run_info.json").exists() and curve(d)]
        if not runs:
            raise SystemExit(f"no evaluated drafter runs under {root}")
        to = Path(args.to or "docs/drafter_curve.html")
        curve_figure({d.name: curve(d) for d in runs}).write_html(to, include_plotlyjs="cdn")
        print(f"{len(runs)} runs drawn in {to}")
        return
    rows = summary(root)
    print(json.dumps(rows, indent=1))
    (root / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
