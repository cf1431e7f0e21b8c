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
from workbench.training.ar2diff import adaptation_config, ar2diff


def tokenizer_for(run_dir: Path | str, preset: str = "tiny", data_dir=None) -> Tokenizer:
    """Load `<run_dir>/tokenizer` if present, else train one there (`preset` of TokenizerConfig)."""
    directory = Path(run_dir) / "tokenizer"
    if (directory / "tokenizer.model").exists() or any(directory.glob("*.model")):
        return Tokenizer.load(directory)
    return train_tokenizer(TokenizerConfig.preset(preset), directory, data_dir=data_dir)


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
    CPU backend has no fast bf16 matmuls (bf16 ran several times slower here)."""
    overrides.setdefault("dtype", default_compute_dtype())
    return get_preset(preset, vocab_size=tokenizer.vocab_size, **overrides)


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
    train_stream = token_stream(tokenizer, dataset, "train", data_dir=data_dir, max_tokens=max_tokens)
    held_out = token_stream(tokenizer, dataset, "validation", data_dir=data_dir,
                            max_tokens=seq_len * batch_size * eval_batches + 1)
    kw = dict(seq_len=seq_len, batch_size=batch_size, objective=objective, seed=train_config.seed,
              pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, sentinel_ids=tokenizer.sentinel_ids)
    source = LMSource(train_stream, **kw)
    eval_source = LMSource(held_out, **{**kw, "seed": 1})
    model = build_model(config, train_config.seed)
    data = {**data_files(dataset, "train", data_dir), "tokenizer": tokenizer.sha256}
    batches = validation_batches(eval_source, eval_batches, start_step=0)
    result = train(model, train_config, source, run_dir, eval_fn=held_out_loss(batches, train_config.loss, mesh=mesh),
                   data_info=data, extra_info={"objective": objective, "dataset": dataset}, mesh=mesh,
                   allow_config_change=allow_config_change)
    result.unigram_entropy = unigram_entropy(held_out, tokenizer.vocab_size)
    return result, source


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


def adapt(ar_run_dir: Path | str, out_dir: Path | str, source, base: TrainConfig, steps: int,
          attention: str = "bidirectional", mesh=None, allow_config_change: bool = False):
    """AR2Diff_N stage: the AR checkpoint, switched to `attention`, trained `steps` diffusion steps."""
    return ar2diff(ar_run_dir, out_dir, source, adaptation_config(base, steps), attention=attention, mesh=mesh,
                   allow_config_change=allow_config_change)


def diffusion_loss_config(tokenizer: Tokenizer, kind: str = "diffusion", **kw):
    from workbench.objectives.losses import LossConfig

    return LossConfig(kind=kind, special_ids=tuple(tokenizer.special_ids), mask_id=tokenizer.mask_id,
                      pad_id=tokenizer.pad_id, **kw)


def with_loss(config: TrainConfig, loss) -> TrainConfig:
    return dataclasses.replace(config, loss=loss)
