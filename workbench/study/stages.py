"""The study's stages as calls: tokenizer, data sources, pretraining, adaptation, fine-tuning.

Each writes a run directory (config, seed, data hashes, commit, checkpoints, metrics) and
can be re-run to resume. `mesh` (workbench.distributed.make_mesh) runs a stage sharded over
several devices; None is one device.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from workbench.data import Tokenizer, TokenizerConfig, data_files, load_dataset, train_tokenizer
from workbench.evaluation.runner import evaluate
from workbench.evaluation.tasks import get_task
from workbench.models import ModelConfig, build_model, default_compute_dtype, get_preset
from workbench.objectives.losses import LossConfig
from workbench.training import (LMSource, OptimizerConfig, Seq2SeqSource, TrainConfig, fit_pairs, held_out_loss, train,
                                validation_batches)
from workbench.training.ar2diff import adaptation_config, ar2diff
from workbench.training.trainer import TrainResult
from workbench.viz.report import run_numbers


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
class PretrainResult:
    """What `pretrain` returns: the training result, the batch source it drew from (AR2Diff
    adapts on the same corpus) and the held-out tokens' unigram entropy (the loss of a
    model that ignores context, the bar a pretrained model must clear)."""

    result: TrainResult
    source: LMSource
    unigram_entropy: float

    @property
    def model(self):
        return self.result.model

    def numbers(self) -> dict:
        """What a notebook records of it: steps, last training and held-out loss, the unigram entropy and
        the vocabulary size (the held-out loss of a uniform guess is its log)."""
        logged = run_numbers(self.result.run_dir, self.result.step, final_loss="loss", held_out_loss="eval_loss")
        return {**logged, "unigram_entropy": self.unigram_entropy, "vocab_size": self.model.config.vocab_size}


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
    return PretrainResult(result, source, unigram_entropy(eval_source.stream, tokenizer.vocab_size))


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
    """AR2Diff_N stage: the AR model, switched to `attention`, trained `steps` diffusion steps
    (`workbench.training.ar2diff`, with `base`'s optimizer and its diffusion loss).

    `ar` is an AR run directory (its latest checkpoint) or a model in memory, such as an
    imported one (`workbench.pretrained_study.prepare_for_diffusion(...).model`).
    `block_size` goes with attention='block_causal' (default: a model in memory keeps its own)."""
    return ar2diff(ar, out_dir, source, adaptation_config(base, steps), attention=attention, mesh=mesh,
                   allow_config_change=allow_config_change, block_size=block_size)


def diffusion_loss_config(tokenizer: Tokenizer, kind: str = "uniform", *, model_vocab_size=None, **kw):
    """The loss of diffusion process `kind` with the tokenizer's special, mask and pad ids."""
    return LossConfig.for_tokenizer(tokenizer, kind, model_vocab_size=model_vocab_size, **kw)


def with_loss(config: TrainConfig, loss) -> TrainConfig:
    return dataclasses.replace(config, loss=loss)


def short_run(steps: int, learning_rate: float, *, seed: int = 0, loss: LossConfig = LossConfig(), log_every: int = 10,
              **optimizer) -> TrainConfig:
    """The notebooks' training preset: a constant learning rate (the runs are short, and equal optimizer
    settings let every stage reuse compiled steps from JAX's persistent cache), one checkpoint at the end,
    no progress bar or TensorBoard. `optimizer` sets other OptimizerConfig fields."""
    return TrainConfig(steps=steps, loss=loss, seed=seed, log_every=log_every, checkpoint_every=max(steps, 1),
                       progress=False, tensorboard=False,
                       optimizer=OptimizerConfig(learning_rate=learning_rate, schedule="constant", **optimizer))


def loss_config(tokenizer: Tokenizer, kind: str, **kw) -> LossConfig:
    """The LossConfig of `kind` ("ar" or a diffusion process) with the tokenizer's ids."""
    return LossConfig(kind="ar") if kind == "ar" else diffusion_loss_config(tokenizer, kind, **kw)


def evaluate_model(model, tokenizer: Tokenizer, eval_config, out_dir: Path | str, *, data_dir=None) -> dict:
    """`evaluation.runner.evaluate` without a progress bar (the notebooks' setting)."""
    return evaluate(model, tokenizer, eval_config, out_dir, data_dir=data_dir, progress=False)
