"""The AR2Diff study as a few calls: tokenizer, pretraining, adaptation, fine-tuning.

Notebooks call these; each writes a run directory (config, seed, data hashes, commit,
checkpoints, metrics) and can be re-run to resume. `mesh` (workbench.distributed.make_mesh)
runs a stage sharded over several devices; None is one device.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from workbench.data import Tokenizer, TokenizerConfig, data_files, load_dataset, train_tokenizer
from workbench.evaluation.tasks import get_task
from workbench.models import ModelConfig, build_model, default_compute_dtype, get_preset
from workbench.training import LMSource, Seq2SeqSource, TrainConfig, fit_pairs, held_out_loss, train, validation_batches
from workbench.training.trainer import TrainResult
from workbench.training.ar2diff import adaptation_config, ar2diff


def tokenizer_for(run_dir: Path | str, preset: str = "tiny", data_dir=None) -> Tokenizer:
    """Load `<run_dir>/tokenizer` if present, else train one there (`preset` of TokenizerConfig)."""
    directory = Path(run_dir) / "tokenizer"
    if (directory / "tokenizer.model").exists() or any(directory.glob("*.model")):
        return Tokenizer.load(directory)
    return train_tokenizer(TokenizerConfig.preset(preset), directory, data_dir=data_dir)


def tokenizer_home(run_dir: Optional[Path | str], tokenizer_dir: Optional[Path | str], default: Path | str) -> Path:
    """The folder whose tokenizer/ a run was trained with: `tokenizer_dir` when given, else the
    folder above `run_dir` (which must hold one), else `default` (a fresh run trains one there)."""
    if tokenizer_dir:
        return Path(tokenizer_dir)
    if not run_dir:
        return Path(default)
    home = Path(run_dir).resolve().parent
    if not (home / "tokenizer").is_dir():
        raise FileNotFoundError(f"no tokenizer/ in {home}; pass tokenizer_dir= (the folder holding the tokenizer "
                                f"the run {run_dir} was trained with)")
    return home


def train_diffusion_model(run_dir: Path | str, tokenizer: Tokenizer, task: str, preset: str, train_config: TrainConfig,
                          *, input_len: int, target_len: int, batch_size: int, kind: str = "uniform",
                          dtype: Optional[str] = None, data_dir=None):
    """A bidirectional `preset` model trained from scratch on `task` with process `kind`'s loss
    (resumes when run_dir holds checkpoints); returns the model."""
    source, _ = task_source(tokenizer, task, input_len=input_len, target_len=target_len, batch_size=batch_size,
                            diffusion=True, seed=train_config.seed, data_dir=data_dir)
    untrained = build_model(model_config(preset, tokenizer, attention="bidirectional", dtype=dtype), train_config.seed)
    return finetune(run_dir, untrained, source, with_loss(train_config, diffusion_loss_config(tokenizer, kind))).model


def token_stream(tokenizer: Tokenizer, dataset: str, split: str, *, data_dir=None, max_tokens: Optional[int] = None) -> np.ndarray:
    """Documents of `dataset` encoded and joined with EOS into one int32 stream."""
    ds = load_dataset(dataset, split, data_dir=data_dir)
    pieces, total = [], 0
    for text in ds["targets"]:
        ids = tokenizer.encode(text, add_eos=True)
        pieces.append(np.asarray(ids, np.int32))
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return stream if max_tokens is None else stream[:max_tokens]


def unigram_entropy(stream: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the empirical unigram distribution: the loss of a model that ignores context."""
    counts = np.bincount(stream, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def model_config(preset: str, tokenizer: Tokenizer, **overrides) -> ModelConfig:
    """A preset sized to the tokenizer. On CPU the compute dtype defaults to float32: XLA's
    CPU backend has no fast bf16 matmuls (bf16 ran several times slower here); dtype=None
    also means that default."""
    if overrides.get("dtype") is None:
        overrides["dtype"] = default_compute_dtype()
    return get_preset(preset, vocab_size=tokenizer.vocab_size, **overrides)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """What `pretrain` returns: the training result, the batch source it drew from (AR2Diff
    adapts on the same corpus) and the held-out tokens' unigram entropy (the loss of a
    model that ignores context, the bar a pretrained model must clear)."""

    result: TrainResult
    source: LMSource
    unigram_entropy: float

    @property
    def model(self):
        return self.result.model


def lm_source(tokenizer: Tokenizer, dataset: str, split: str, *, seq_len: int, batch_size: int, objective: str,
              seed: int, data_dir=None, max_tokens: Optional[int] = None) -> LMSource:
    """An LM-objective batch source over `dataset`'s `split` (the tokenizer's pad/eos/sentinel ids)."""
    stream = token_stream(tokenizer, dataset, split, data_dir=data_dir, max_tokens=max_tokens)
    return LMSource(stream, seq_len=seq_len, batch_size=batch_size, objective=objective, seed=seed,
                    pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, sentinel_ids=tokenizer.sentinel_ids)


def held_out_source(tokenizer: Tokenizer, dataset: str, *, seq_len: int, batch_size: int, objective: str,
                    eval_batches: int, data_dir=None) -> LMSource:
    """The validation split, just long enough for `eval_batches` batches (fixed seed 1)."""
    return lm_source(tokenizer, dataset, "validation", seq_len=seq_len, batch_size=batch_size, objective=objective,
                     seed=1, data_dir=data_dir, max_tokens=seq_len * batch_size * eval_batches + 1)


def pretrain(
    run_dir: Path | str,
    tokenizer: Tokenizer,
    config: ModelConfig,
    train_config: TrainConfig,
    *,
    dataset: str = "python_code",
    data_dir=None,
    seq_len: int = 128,
    batch_size: int = 16,
    objective: str = "prefix_lm",
    max_tokens: Optional[int] = None,
    eval_batches: int = 4,
    mesh=None,
    allow_config_change: bool = False,
):
    """Pretrain on a text/code corpus with an LM objective; held-out loss from the validation split.
    `allow_config_change`: continue an existing run with a changed config (see `train`)."""
    kw = dict(seq_len=seq_len, batch_size=batch_size, objective=objective, data_dir=data_dir)
    source = lm_source(tokenizer, dataset, "train", seed=train_config.seed, max_tokens=max_tokens, **kw)
    eval_source = held_out_source(tokenizer, dataset, eval_batches=eval_batches, **kw)
    model = build_model(config, train_config.seed)
    data = {**data_files(dataset, "train", data_dir), "tokenizer": tokenizer.sha256}
    batches = validation_batches(eval_source, eval_batches, start_step=0)
    result = train(model, train_config, source, run_dir, eval_fn=held_out_loss(batches, train_config.loss, mesh=mesh),
                   data_info=data, extra_info={"objective": objective, "dataset": dataset}, mesh=mesh,
                   allow_config_change=allow_config_change)
    return Pretrained(result, source, unigram_entropy(eval_source.stream, tokenizer.vocab_size))


def task_source(tokenizer: Tokenizer, task: str, *, input_len: int, target_len: int, batch_size: int,
                diffusion: bool, seed: int = 0, data_dir=None, limit: Optional[int] = None):
    """A fine-tuning source for a registered task; returns (source, length report)."""
    spec = get_task(task)
    if spec.train_split is None:
        raise ValueError(f"task {task!r} has no training split; fine-tune on another task")
    ds = load_dataset(spec.dataset, spec.train_split, data_dir=data_dir)
    n = len(ds) if limit is None else min(limit, len(ds))
    pairs = [spec.format_example(dict(ds[i])) for i in range(n)]
    inputs = tokenizer.encode_batch([p[0] for p in pairs])
    targets = tokenizer.encode_batch([p[1] for p in pairs], add_eos=True)
    inputs, targets, report = fit_pairs(inputs, targets, input_len, target_len)
    source = Seq2SeqSource(inputs, targets, input_len, target_len, batch_size, pad_targets=diffusion, seed=seed,
                           pad_id=tokenizer.pad_id)
    return source, report


def finetune(run_dir: Path | str, model, source, train_config: TrainConfig, *, data_info: Optional[dict] = None,
             mesh=None, allow_config_change: bool = False):
    """Fine-tune a model (AR or diffusion, as `train_config.loss.kind` says) on a task source."""
    return train(model, train_config, source, run_dir, data_info=data_info, mesh=mesh,
                 allow_config_change=allow_config_change)


def adapt(ar, out_dir: Path | str, source, base: TrainConfig, steps: int,
          attention: str = "bidirectional", mesh=None, allow_config_change: bool = False,
          block_size: Optional[int] = None):
    """AR2Diff_N stage: the AR model, switched to `attention`, trained `steps` diffusion steps.

    `ar` is an AR run directory (its latest checkpoint) or a model in memory, such as an
    imported one (`workbench.pretrained_study.prepare_for_diffusion(...).model`).
    `block_size` goes with attention='block_causal' (default: a model in memory keeps its own)."""
    if isinstance(ar, (str, Path)):
        return ar2diff(ar, out_dir, source, adaptation_config(base, steps), attention=attention, mesh=mesh,
                       allow_config_change=allow_config_change, block_size=block_size)
    if block_size is None and attention == ar.config.attention:
        block_size = ar.config.block_size
    from workbench.models.transformer import with_attention
    from workbench.training.ar2diff import DIFFUSION_ATTENTION

    if attention not in DIFFUSION_ATTENTION:
        raise ValueError(f"attention={attention!r}; AR2Diff switches to one of {DIFFUSION_ATTENTION}")
    config = adaptation_config(base, steps)
    if config.loss.kind == "ar":
        raise ValueError("AR2Diff's adaptation stage trains a diffusion loss; set the loss kind to a diffusion process")
    return train(with_attention(ar, attention, block_size), config, source, out_dir, mesh=mesh,
                 allow_config_change=allow_config_change,
                 extra_info={"ar2diff": {"ar": "model in memory", "attention": attention, "block_size": block_size,
                                         "adaptation_steps": steps}})


def adaptation_sweep(ar_run_dir: Path | str, out_dir: Path | str, source, held_out: LMSource, steps, base: TrainConfig,
                     *, eval_batches: int, attention: str = "bidirectional") -> list[dict]:
    """AR2Diff_N for every N in `steps` (into out_dir/ar2diff_<N>), each scored by its
    diffusion loss (`base.loss`) on `eval_batches` held-out batches; one row per N."""
    import time

    from workbench.viz.report import last_metric

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


def diffusion_loss_config(tokenizer: Tokenizer, kind: str = "uniform", *, model_vocab_size=None, **kw):
    """The loss of diffusion process `kind` with the tokenizer's special, mask and pad ids."""
    from workbench.objectives.losses import LossConfig

    return LossConfig.for_tokenizer(tokenizer, kind, model_vocab_size=model_vocab_size, **kw)


def diffusion_sampling_config(tokenizer: Tokenizer, *, process: str = "uniform", model_vocab_size=None, **options):
    """A `DiffusionSamplingConfig` of `process` with the tokenizer's never-drawn and mask ids
    (and the rows of a padded embedding past the tokenizer, given `model_vocab_size`)."""
    from workbench.data.special import diffusion_ids
    from workbench.sampling.diffusion import DiffusionSamplingConfig

    return DiffusionSamplingConfig(process=process, **diffusion_ids(tokenizer, process, model_vocab_size), **options)


def with_loss(config: TrainConfig, loss) -> TrainConfig:
    return dataclasses.replace(config, loss=loss)


# -- the paper's grids as calls (what notebooks 01 and 03 run) ---------------------------

TABLE_ARCHITECTURE = {"decoder": "decoder_only", "encoder_decoder": "encoder_decoder"}  # the tables' spelling


def pretraining_attention(arch: str, loss_kind: str) -> str:
    """The decoder self-attention a loss trains: AR under prefix-LM attention (decoder-only)
    or causal (an encoder-decoder's decoder); every diffusion process bidirectionally."""
    if loss_kind != "ar":
        return "bidirectional"
    return "prefix_lm" if arch == "decoder" else "causal"


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
    import typing

    from workbench.objectives.losses import LossConfig
    from workbench.objectives.pretraining import Objective

    for objective in objectives:
        if objective not in typing.get_args(Objective):
            raise ValueError(f"objective {objective!r}; expected one of {list(typing.get_args(Objective))}")
    for loss in losses:
        LossConfig(kind=loss)  # names a known loss
    return [GridCell(arch, objective, loss,
                     model_config(preset, tokenizer, arch=arch, attention=pretraining_attention(arch, loss), dtype=dtype))
            for arch in architectures for objective in objectives for loss in losses]


def loss_config(tokenizer: Tokenizer, kind: str, **kw):
    """The LossConfig of `kind` ("ar" or a diffusion process) with the tokenizer's ids."""
    from workbench.objectives.losses import LossConfig

    return LossConfig(kind="ar") if kind == "ar" else diffusion_loss_config(tokenizer, kind, **kw)


def pretrain_grid(out_dir: Path | str, tokenizer: Tokenizer, cells: list[GridCell], train_config: TrainConfig,
                  **pretrain_kw) -> list[dict]:
    """Pretrain every cell into out_dir/<cell name>; one row of numbers per cell."""
    import time

    from workbench.models import param_count
    from workbench.viz.report import last_metric

    rows = []
    for cell in cells:
        run_dir = Path(out_dir) / cell.name
        started = time.perf_counter()
        pretrained = pretrain(run_dir, tokenizer, cell.config, with_loss(train_config, loss_config(tokenizer, cell.loss)),
                              objective=cell.objective, **pretrain_kw)
        rows.append({"run": cell.name, "architecture": TABLE_ARCHITECTURE[cell.arch], "objective": cell.objective,
                     "loss": cell.loss, "params": param_count(cell.config)["total"],
                     "final_loss": last_metric(run_dir, "loss"), "held_out_loss": last_metric(run_dir, "eval_loss"),
                     "unigram_entropy": pretrained.unigram_entropy, "seconds": time.perf_counter() - started})
    return rows


def evaluate_model(model, tokenizer: Tokenizer, eval_config, out_dir: Path | str, *, data_dir=None) -> dict:
    """`evaluation.runner.evaluate` without a progress bar (the notebooks' setting)."""
    from workbench.evaluation.runner import evaluate

    return evaluate(model, tokenizer, eval_config, out_dir, data_dir=data_dir, progress=False)


def finetune_grid(out_dir: Path | str, tokenizer: Tokenizer, cells: list[GridCell], rows: list[dict], *, task: str,
                  finetune_config: TrainConfig, sampling, model_preset: str, input_len: int, target_len: int,
                  batch_size: int, eval_limit: Optional[int] = None, seed: int = 0, data_dir=None) -> list[dict]:
    """Table 1's downstream score: every diffusion cell fine-tuned on `task` and evaluated on
    its first `eval_limit` examples with diffusion decoding (`sampling`); one metrics.json
    entry per cell (its pretraining row inside)."""
    from workbench.evaluation.runner import EvalConfig
    from workbench.training import load_model

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
                              architecture=TABLE_ARCHITECTURE[cell.arch], objective=cell.objective,
                              pretraining=by_name[cell.name]))
    return entries


METHODS = ("AR", "Diffusion", "AR2Diff")  # the paper's Table 2 rows (AR2Diff once per adaptation N)


def compare_methods(out_dir: Path | str, tokenizer: Tokenizer, methods, *, preset: str, task: str,
                    adaptation_steps=(), pretrain_config: TrainConfig, finetune_config: TrainConfig, eval_config,
                    input_len: int, target_len: int, batch_size: int, seq_len: int = 128,
                    diffusion_kind: str = "uniform", dtype: Optional[str] = None, seed: int = 0, data_dir=None,
                    max_tokens: Optional[int] = 400_000) -> tuple[list[dict], dict, dict]:
    """Table 2: pretrain (AR and/or diffusion), adapt (AR2Diff_N), fine-tune on `task` and
    evaluate each method (AR decoding for AR, diffusion decoding with `eval_config.diffusion`
    otherwise). Returns (metrics.json entries, the fine-tuned models by method, run folders)."""
    from workbench.training import load_model

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
    from workbench.viz.report import metrics_entry

    diffusion = evaluation.method == "diffusion"
    return metrics_entry(summary, method=method, model_preset=preset, params=summary["params"], train_steps=train_steps,
                         num_steps=evaluation.diffusion.num_steps if diffusion else None,
                         num_samples=evaluation.diffusion.num_samples if diffusion else None,
                         decode_seconds=summary["decode_seconds"], **fields)
