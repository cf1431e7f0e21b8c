"""The paper's grids as calls (what notebooks 01 to 03 run): Table 1's architecture x
objective x loss cells, the AR2Diff_N adaptation sweep, Table 2's methods compared and
Table 3's decoding grid. Each cell is a run of `workbench.study.stages`; each returns rows
or metrics.json entries for `workbench.evaluation.tables`."""

from __future__ import annotations

import dataclasses
import time
import typing
from pathlib import Path
from typing import Optional

from workbench.data import Tokenizer
from workbench.evaluation.runner import EvalConfig
from workbench.models import ModelConfig, param_count
from workbench.models.architectures import get_architecture
from workbench.objectives.losses import LossConfig
from workbench.objectives.pretraining import Objective
from workbench.study.stages import (adapt, diffusion_loss_config, evaluate_model, finetune, loss_config, model_config,
                                    pretrain, task_source, with_loss)
from workbench.training import LMSource, TrainConfig, held_out_loss, load_model, validation_batches
from workbench.viz.report import last_metric, metrics_entry


def pretraining_attention(arch: str, loss_kind: str) -> str:
    """The decoder self-attention a loss trains: AR under prefix-LM attention (decoder-only)
    or causal (an encoder-decoder's decoder); every diffusion process bidirectionally."""
    if loss_kind != "ar":
        return "bidirectional"
    return get_architecture(arch).ar_attention


@dataclasses.dataclass(frozen=True)
class GridCell:
    """One Table 1 cell: architecture x pretraining objective x loss, with its model config."""

    arch: str
    objective: str
    loss: str  # "ar" or a diffusion process name
    config: ModelConfig

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.objective}-{self.loss}"


def pretraining_grid(tokenizer: Tokenizer, preset: str, architectures, objectives, losses, *,
                     dtype: Optional[str] = None) -> list[GridCell]:
    """Table 1's cells, each model config built (and so validated) before any data is read."""
    for objective in objectives:
        if objective not in typing.get_args(Objective):
            raise ValueError(f"objective {objective!r}; expected one of {list(typing.get_args(Objective))}")
    for loss in losses:
        LossConfig(kind=loss)  # names a known loss
    return [GridCell(arch, objective, loss,
                     model_config(preset, tokenizer, arch=arch, attention=pretraining_attention(arch, loss), dtype=dtype))
            for arch in architectures for objective in objectives for loss in losses]


def pretrain_grid(out_dir: Path | str, tokenizer: Tokenizer, cells: list[GridCell], train_config: TrainConfig,
                  **pretrain_kw) -> list[dict]:
    """Pretrain every cell into out_dir/<cell name>; one row of numbers per cell."""
    rows = []
    for cell in cells:
        run_dir = Path(out_dir) / cell.name
        started = time.perf_counter()
        pretrained = pretrain(run_dir, tokenizer, cell.config, with_loss(train_config, loss_config(tokenizer, cell.loss)),
                              objective=cell.objective, **pretrain_kw)
        rows.append({"run": cell.name, "architecture": cell.arch, "objective": cell.objective,
                     "loss": cell.loss, "params": param_count(cell.config)["total"],
                     "final_loss": last_metric(run_dir, "loss"), "held_out_loss": last_metric(run_dir, "eval_loss"),
                     "unigram_entropy": pretrained.unigram_entropy, "seconds": time.perf_counter() - started})
    return rows


def finetune_grid(out_dir: Path | str, tokenizer: Tokenizer, cells: list[GridCell], rows: list[dict], *, task: str,
                  finetune_config: TrainConfig, sampling, model_preset: str, input_len: int, target_len: int,
                  batch_size: int, eval_limit: Optional[int] = None, seed: int = 0, data_dir=None) -> list[dict]:
    """Table 1's downstream score: every diffusion cell fine-tuned on `task` and evaluated on
    its first `eval_limit` examples with diffusion decoding (`sampling`); one metrics.json
    entry per cell (its pretraining row inside)."""
    eval_config = EvalConfig(task=task, method="diffusion", limit=eval_limit, input_len=input_len,
                             target_len=target_len, batch_size=eval_limit or batch_size, seed=seed, diffusion=sampling)

    source, _ = task_source(tokenizer, task, input_len=input_len, target_len=target_len, batch_size=batch_size,
                            diffusion=True, seed=seed, data_dir=data_dir)
    by_name = {row["run"]: row for row in rows}
    entries = []
    for cell in cells:
        if cell.loss == "ar":
            continue
        model, _ = load_model(Path(out_dir) / cell.name)
        config = with_loss(finetune_config, loss_config(tokenizer, cell.loss))
        tuned = finetune(Path(out_dir) / f"{cell.name}-finetune", model, source, config)
        summary = evaluate_model(tuned.model, tokenizer, eval_config, Path(out_dir) / f"{cell.name}-eval",
                                 data_dir=data_dir)
        entries.append(_entry(summary, "Diffusion", model_preset, config.steps, eval_config,
                              architecture=cell.arch, objective=cell.objective,
                              pretraining=by_name[cell.name]))
    return entries


def adaptation_sweep(ar_run_dir: Path | str, out_dir: Path | str, source, held_out: LMSource, steps, base: TrainConfig,
                     *, eval_batches: int, attention: str = "bidirectional") -> list[dict]:
    """AR2Diff_N for every N in `steps` (into out_dir/ar2diff_<N>), each scored by its
    diffusion loss (`base.loss`) on `eval_batches` held-out batches; one row per N."""
    diffusion_eval = held_out_loss(validation_batches(held_out, eval_batches, start_step=0), base.loss)
    rows = []
    for n in steps:
        started = time.perf_counter()
        run_dir = Path(out_dir) / f"ar2diff_{n}"
        result = adapt(ar_run_dir, run_dir, source, base, steps=n, attention=attention)
        held = diffusion_eval(result.model, n)
        rows.append({"method": f"AR2Diff_{n}", "adaptation_steps": n,
                     "final_train_loss": last_metric(run_dir, "loss") if n else None,
                     "held_out_diffusion_loss": held["loss"], "held_out_accuracy": held["accuracy"],
                     "seconds": time.perf_counter() - started})
    return rows


METHODS = ("AR", "Diffusion", "AR2Diff")  # the paper's Table 2 rows (AR2Diff once per adaptation N)


def compare_methods(out_dir: Path | str, tokenizer: Tokenizer, methods, *, preset: str, task: str,
                    adaptation_steps=(), pretrain_config: TrainConfig, finetune_config: TrainConfig, eval_config,
                    input_len: int, target_len: int, batch_size: int, seq_len: int = 128,
                    diffusion_kind: str = "uniform", dtype: Optional[str] = None, seed: int = 0, data_dir=None,
                    max_tokens: Optional[int] = 400_000) -> tuple[list[dict], dict, dict]:
    """Table 2: pretrain (AR and/or diffusion), adapt (AR2Diff_N), fine-tune on `task` and
    evaluate each method (AR decoding for AR, diffusion decoding with `eval_config.diffusion`
    otherwise). Returns (metrics.json entries, the fine-tuned models by method, run folders)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"methods={list(methods)} has {unknown}; choose among {list(METHODS)}")
    out_dir = Path(out_dir)
    diffusion_loss = diffusion_loss_config(tokenizer, diffusion_kind)
    pretrain_kw = dict(seq_len=seq_len, batch_size=batch_size, objective="prefix_lm", data_dir=data_dir,
                       max_tokens=max_tokens)
    models, runs = {}, {}
    if {"AR", "AR2Diff"} & set(methods):
        ar = pretrain(out_dir / "pretrain_ar", tokenizer, model_config(preset, tokenizer, dtype=dtype), pretrain_config,
                      **pretrain_kw)
        runs["pretrain AR"] = out_dir / "pretrain_ar"
        if "AR" in methods:
            models["AR"] = load_model(out_dir / "pretrain_ar")[0]  # as saved (also when resumed)
        for n in adaptation_steps if "AR2Diff" in methods else ():
            models[f"AR2Diff_{n}"] = adapt(out_dir / "pretrain_ar", out_dir / f"ar2diff_{n}", ar.source,
                                           with_loss(pretrain_config, diffusion_loss), steps=n).model
            runs[f"AR2Diff_{n} adaptation"] = out_dir / f"ar2diff_{n}"
    if "Diffusion" in methods:
        config = model_config(preset, tokenizer, attention="bidirectional", dtype=dtype)
        models["Diffusion"] = pretrain(out_dir / "pretrain_diffusion", tokenizer, config,
                                       with_loss(pretrain_config, diffusion_loss), **pretrain_kw).model
        runs["pretrain Diffusion"] = out_dir / "pretrain_diffusion"
    sources = {d: task_source(tokenizer, task, input_len=input_len, target_len=target_len, batch_size=batch_size,
                              diffusion=d, seed=seed, data_dir=data_dir)[0] for d in (False, True)}
    entries, tuned = [], {}
    for method, model in models.items():
        is_ar = method == "AR"
        config = with_loss(finetune_config, loss_config(tokenizer, "ar") if is_ar else diffusion_loss)
        evaluation = dataclasses.replace(eval_config, method="ar" if is_ar else "diffusion")
        tuned_run = finetune(out_dir / f"finetune_{method}", model, sources[not is_ar], config)
        tuned[method] = tuned_run.model
        runs[f"fine-tune {method}"] = out_dir / f"finetune_{method}"
        summary = evaluate_model(tuned_run.model, tokenizer, evaluation, out_dir / f"eval_{method}", data_dir=data_dir)
        entries.append(_entry(summary, method, preset, config.steps, evaluation, pretrain_steps=pretrain_config.steps))
    return entries, tuned, runs


def decoding_grid(out_dir: Path | str, tokenizer: Tokenizer, model, grid, *, eval_config, preset: str,
                  train_steps: int, data_dir=None, **entry_fields) -> list[dict]:
    """Table 3: one diffusion model evaluated at every (num_steps, num_samples) of `grid`."""
    entries = []
    for steps, samples in grid:
        sampling = dataclasses.replace(eval_config.diffusion, num_steps=steps, num_samples=samples)
        evaluation = dataclasses.replace(eval_config, method="diffusion", diffusion=sampling)
        summary = evaluate_model(model, tokenizer, evaluation, Path(out_dir) / f"eval_Diffusion_{steps}x{samples}",
                                 data_dir=data_dir)
        entries.append(_entry(summary, "Diffusion", preset, train_steps, evaluation, **entry_fields))
    return entries


def _entry(summary: dict, method: str, preset: str, train_steps: int, evaluation, **fields) -> dict:
    diffusion = evaluation.method == "diffusion"
    return metrics_entry(summary, method=method, model_preset=preset, params=summary["params"], train_steps=train_steps,
                         num_steps=evaluation.diffusion.num_steps if diffusion else None,
                         num_samples=evaluation.diffusion.num_samples if diffusion else None,
                         decode_seconds=summary["decode_seconds"], **fields)
