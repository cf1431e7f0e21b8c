"""The trainer: one compiled step, exact resume, metrics, checkpoints, evaluation hook.

Step s trains on `source.batch_at(s)` with randomness `fold_in(key(seed), s)`, so a run
killed at any moment and started again with the same command resumes from its last
checkpoint and ends bitwise equal (on CPU) to a run that was never interrupted, with the
same metrics log: a step's log record and evaluation are written before the checkpoint
that marks it done. The run directory is locked while a process trains into it, and a
re-run compares its config with the recorded one before it continues (see `train`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from workbench.distributed import constrain_module, is_primary, mesh_context, shard_batch, shard_module, to_host
from workbench.config import from_dict, load_json, to_dict
from workbench.models import ModelConfig, build_model, flops_per_token
from workbench.objectives.batch import Batch
from workbench.objectives.losses import LossConfig, LossMetrics, loss_fn
from workbench.runs import (
    RUN_INFO,
    RunLock,
    config_differences,
    describe_source,
    flatten,
    format_differences,
    record_config_change,
    recorded_config,
    write_run_info,
)
from workbench.training.checkpoint import (
    BACKEND_FIELDS,
    MODEL_CONFIG,
    CheckpointStore,
    DamagedCheckpointsError,
    all_finite,
)
from workbench.training.logging import MetricsLog
from workbench.training.optim import OptimizerConfig, make_optimizer

# Peak dense bf16 FLOP/s per chip, for MFU estimates (None: unknown, MFU not reported).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6 lite": 918e12, "L4": 121e12, "T4": 65e12}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    grad_accum: int = 1  # microbatches per step (the batch size must divide by it)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum={self.grad_accum} must be >= 1")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 1")


# Recorded but not compared on resume: they change neither the parameters nor metrics.jsonl.
NOT_COMPARED = ("train.progress", "train.tensorboard", "train.keep_checkpoints", "train.checkpoint_every",
                *(f"model.{name}" for name in BACKEND_FIELDS))
FINITE = ("loss", "grad_norm")  # step metrics that must be finite for training to go on
DIVERGED = "checkpoints_diverged"  # where a NaN stop moves checkpoints past the last good one


class NonFiniteLossError(RuntimeError):
    pass


class RunConfigMismatchError(ValueError):
    pass


class RunDirectoryWarning(UserWarning):
    """Something in a run directory was repaired or taken over; the message says what."""


@dataclasses.dataclass
class TrainResult:
    model: nnx.Module
    step: int
    history: list[dict]
    eval_history: list[dict]
    run_dir: Path


def _microbatches(batch: Batch, n: int) -> list[Batch]:
    size = batch.tokens.shape[0]
    if size % n:
        raise ValueError(f"batch size {size} is not divisible by grad_accum={n}")
    step = size // n
    return [jax.tree.map(lambda x: x[i * step : (i + 1) * step], batch) for i in range(n)]


def _gradients(model, batch: Batch, rng, loss_config: LossConfig, grad_accum: int):
    """The gradients of one step and its metrics (with the gradient norm). Microbatch
    gradients are weighted by their target tokens, so they equal the whole batch's."""
    grad_fn = nnx.value_and_grad(lambda m, b, r: loss_fn(m, b, r, loss_config), has_aux=True)
    grads, parts, total = None, [], 0.0
    for i, micro in enumerate(_microbatches(batch, grad_accum)):
        (_, m), g = grad_fn(model, micro, jax.random.fold_in(rng, i))
        n = m.target_tokens
        g = jax.tree.map(lambda x: x * n, g)
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        parts.append(m)
        total = total + n
    grads = jax.tree.map(lambda x: x / jnp.maximum(total, 1.0), grads)
    metrics = LossMetrics.combine(parts).record()
    metrics["grad_norm"] = optax.tree.norm(grads)
    return grads, metrics


@partial(nnx.jit, static_argnames=("loss_config", "grad_accum", "mesh"))
def train_step(model, optimizer, batch: Batch, rng, loss_config: LossConfig, grad_accum: int,
               mesh: Optional[Mesh] = None):
    """One update (on the whole batch's gradients, however many microbatches). With a `mesh`,
    the updated parameters and optimizer state keep the shardings `shard_module` gave them."""
    grads, metrics = _gradients(model, batch, rng, loss_config, grad_accum)
    optimizer.update(model, grads)
    if mesh is not None:
        constrain_module(model, mesh)
        constrain_module(optimizer, mesh, strict=False)
    return metrics


@partial(nnx.jit, static_argnames=("loss_config", "grad_accum"))
def probe_step(model, batch: Batch, rng, loss_config: LossConfig, grad_accum: int):
    """train_step's metrics (gradient norm included) without the update."""
    return _gradients(model, batch, rng, loss_config, grad_accum)[1]


@partial(nnx.jit, static_argnames=("loss_config",))
def eval_step(model, batch: Batch, rng, loss_config: LossConfig):
    return loss_fn(model, batch, rng, loss_config)[1]  # LossMetrics


def held_out_loss(batches: list[Batch], loss_config: LossConfig, seed: int = 12345,
                  mesh: Optional[Mesh] = None) -> Callable:
    """An evaluation hook: token-weighted mean metrics over fixed batches (fixed noise)."""

    def evaluate(model, step: int) -> dict:
        parts = []
        for i, batch in enumerate(batches):
            batch = batch if mesh is None else shard_batch(batch, mesh)
            with mesh_context(mesh):
                parts.append(jax.device_get(eval_step(model, batch, jax.random.fold_in(jax.random.key(seed), i),
                                                      loss_config)))
        record = LossMetrics.combine(parts).record()
        return {k: float(v) for k, v in record.items() if k != "target_tokens"}

    return evaluate


def resolved_config(model: nnx.Module, config: TrainConfig, source, batch: Batch,
                    data_info: Optional[dict] = None) -> dict:
    """Everything that decides a run's numbers: model, training config (optimizer, schedule,
    loss, steps, seed), batch shape, the source's settings and data hash, and data files."""
    return {"model": model.config, "train": config,
            "batch": {"batch_size": int(batch.tokens.shape[0]), "seq_len": int(batch.tokens.shape[1])},
            "source": describe_source(source), "data": dict(data_info or {})}


def _check_config(record: Path, recorded: dict, current: dict, model: nnx.Module, allow_change: bool) -> dict:
    """The differences between a run's recorded config and this call's, when this call may go on
    with them; otherwise RunConfigMismatchError naming each field and the ways out."""
    differences = config_differences(recorded, current, ignore=NOT_COMPARED)
    # Adapters on one side only: the nested fields exist on one side, so config_differences
    # (which compares the fields both sides have) would miss it.
    old_lora, new_lora = (recorded.get("model") or {}).get("lora"), to_dict(current["model"]).get("lora")
    if (old_lora is None) != (new_lora is None) and "model" in recorded:
        differences["model.lora"] = (old_lora, new_lora)
    if not differences:
        return differences
    model_fields = {k: v for k, v in differences.items() if k.startswith("model.")}
    others = {k: v for k, v in differences.items() if k not in model_fields}
    listing = format_differences(differences)
    if model_fields and not _same_parameter_shapes(recorded.get("model", {}), model):
        raise RunConfigMismatchError(
            f"this run was started with another model config ({record}):\n"
            f"{format_differences(model_fields)}\nIts checkpoints hold parameters of other shapes, so this model "
            f"cannot continue it: train into a new directory, or build the model with the recorded config."
            + (f"\nOther differences:\n{format_differences(others)}" if others else "")
        )
    if allow_change:
        return differences
    started = f"this run was started with another {'model ' if model_fields else ''}config"
    raise RunConfigMismatchError(
        f"{started} ({record}); this call differs in:\n{listing}\n"
        f"Either train into a new directory, or pass allow_config_change=True (to `train`, or to the `study` "
        f"function that calls it) to continue this run with the new values from its last checkpoint (the change "
        f"is recorded at that step in metrics.jsonl and run_info.json)."
    )


def _same_parameter_shapes(recorded_model: dict, model: nnx.Module) -> bool:
    try:
        config = from_dict(ModelConfig, recorded_model)
    except (TypeError, ValueError):
        return False
    shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), nnx.to_pure_dict(nnx.state(m, nnx.Param)))
    try:
        return shapes(nnx.eval_shape(lambda: build_model(config, 0))) == shapes(model)
    except ValueError:
        return False


def _warn(message: str) -> None:
    warnings.warn(message, RunDirectoryWarning, stacklevel=3)


def _peak_flops() -> Optional[float]:
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak * jax.device_count()
    return None


def train(
    model: nnx.Module,
    config: TrainConfig,
    source,
    run_dir: Path | str,
    *,
    eval_fn: Optional[Callable[[nnx.Module, int], dict]] = None,
    data_info: Optional[dict] = None,
    extra_info: Optional[dict] = None,
    mesh: Optional[Mesh] = None,
    allow_config_change: bool = False,
) -> TrainResult:
    """Train `model` in place for `config.steps` steps on `source.batch_at(step)`.

    A new `run_dir` records the run's full config (`resolved_config`) in run_info.json. If it
    holds checkpoints, the call compares its config with the recorded one: equal, training
    resumes from the latest checkpoint that restores (damaged later ones are moved aside and
    reported), also when it was written on another mesh; different, it refuses naming each
    field, unless `allow_config_change`, which continues with the new values and records the
    change at the resumed step. One process at a time trains into a directory (a lock; one
    left by a killed process is taken over). With a `mesh` (workbench.distributed.make_mesh),
    the parameters, optimizer state and every batch are sharded over it; with several
    processes each one runs this same call and the run files are written by process 0.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    if is_primary():
        lock.acquire()
        if lock.taken_over:
            _warn(f"took over the lock of {lock.taken_over}, which ended without releasing it (killed?); "
                  f"resuming its run in {run_dir}")
    try:
        return _train(model, config, source, run_dir, eval_fn, data_info, extra_info, mesh, allow_config_change)
    finally:
        lock.release()


def _train(model, config: TrainConfig, source, run_dir: Path, eval_fn, data_info, extra_info, mesh,
           allow_config_change: bool) -> TrainResult:
    tx, schedule = make_optimizer(config.optimizer, config.steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    if mesh is not None:  # before any restore, so a checkpoint is read straight onto this mesh
        shard_module(model, mesh)
        shard_module(optimizer, mesh, strict=False)
    store = CheckpointStore(run_dir, keep=config.keep_checkpoints)
    primary = is_primary()
    log = MetricsLog(run_dir if primary else run_dir / f"process_{jax.process_index()}",
                     tensorboard=config.tensorboard and primary)
    history, eval_history = [], []

    def eval_due(done: int) -> bool:
        return eval_fn is not None and ((config.eval_every and done % config.eval_every == 0) or done == config.steps)

    def evaluate(done: int) -> None:
        result = eval_fn(model, done)
        log.write(done, result, prefix="eval_")
        eval_history.append({"step": done, **result})

    try:
        probe = source.batch_at(0)
        current = resolved_config(model, config, source, probe, data_info)
        start = 0
        if store.all_steps():
            start, kept = _resume(run_dir, store, log, model, optimizer, current, allow_config_change, primary)
            at_start = [r for r in kept if r["step"] == start]
            if start > 0 and eval_due(start) and not any(k.startswith("eval_") for r in at_start for k in r):
                evaluate(start)  # due at the checkpoint step but never logged (written by an older trainer)
        else:
            for report in log.truncate_after(0)[1]:
                _warn(report)
            if primary:
                write_run_info(run_dir, config=current, seed=config.seed, data=data_info, extra=extra_info)
            store.save(0, model, optimizer)
        history, eval_history = _loop(model, optimizer, schedule, config, source, run_dir, store, log, mesh,
                                      start, probe if start == 0 else None, current, eval_due, evaluate,
                                      history, eval_history)
    finally:
        log.close()
        store.close()
    return TrainResult(model, max(start, config.steps), history, eval_history, run_dir)


def _resume(run_dir: Path, store: CheckpointStore, log: MetricsLog, model, optimizer, current: dict,
            allow_config_change: bool, primary: bool) -> tuple[int, list[dict]]:
    """Restore the latest intact checkpoint after checking the config; repair the metrics log.
    Returns the step resumed from and the log records kept."""
    recorded = recorded_config(run_dir)
    saved_model = run_dir / MODEL_CONFIG  # beside the checkpoints: compared when run_info.json is gone
    compared = recorded or ({"model": load_json(saved_model)} if saved_model.exists() else None)
    record = run_dir / RUN_INFO if recorded else saved_model
    changes = _check_config(record, compared, current, model, allow_config_change) if compared else {}
    try:
        start, reports = store.restore_intact(model, optimizer)
    except DamagedCheckpointsError as error:
        if changes:
            raise RunConfigMismatchError(
                f"the checkpoints of {run_dir} do not restore with the changed config:\n{format_differences(changes)}\n"
                f"(the optimizer state or parameters have another structure): train into a new directory.\n{error}"
            ) from None
        raise
    for report in reports:
        _warn(report)
    kept, reports = log.truncate_after(start)
    for report in reports:
        _warn(report)
    if primary and recorded is None:  # a run directory from before configs were recorded in full
        write_run_info(run_dir, config=current, seed=current["train"].seed, data=current["data"])
    elif primary and (changes or flatten(current).keys() - flatten(recorded).keys()):
        record_config_change(run_dir, start, current, changes)
    if changes:
        log.write(start, {"config_change": {key: list(values) for key, values in changes.items()}})
    return start, kept


def _loop(model, optimizer, schedule, config: TrainConfig, source, run_dir: Path, store: CheckpointStore,
          log: MetricsLog, mesh, start: int, first: Optional[Batch], current: dict, eval_due, evaluate,
          history: list, eval_history: list) -> tuple[list, list]:
    flops_tok = flops_per_token(model.config, current["batch"]["seq_len"])
    peak = _peak_flops()
    base_key = jax.random.key(config.seed)
    bar = tqdm(total=config.steps, initial=start, desc=f"train {run_dir.name}", disable=not config.progress,
               mininterval=1.0, dynamic_ncols=True)
    window_start, window_tokens = time.perf_counter(), 0
    train_started = window_start

    def check_finite(step: int, metrics: dict, host_batch: Batch, batch: Batch) -> None:
        # a finite loss with a non-finite gradient still makes the update (and the checkpoint) non-finite
        values = jax.device_get({k: metrics[k] for k in FINITE})
        if not all(np.isfinite(v) for v in values.values()):
            rng = jax.random.fold_in(base_key, step)
            raise NonFiniteLossError(_non_finite_report(step, values, host_batch, batch, rng, config, store, model))

    # The loss of each step is checked after the next step is dispatched, so the host never
    # stalls the device between steps; a step is always checked before a log line, an
    # evaluation or a checkpoint that follows it. Those come in that order: a step's
    # checkpoint marks it done only once its records are written.
    unchecked = None
    try:
        with mesh_context(mesh):
            for step in range(start, config.steps):
                host_batch = first if step == start and first is not None else source.batch_at(step)
                batch = host_batch if mesh is None else shard_batch(host_batch, mesh)
                metrics = train_step(model, optimizer, batch, jax.random.fold_in(base_key, step), config.loss,
                                     config.grad_accum, mesh=mesh)
                if unchecked is not None:
                    check_finite(*unchecked)
                unchecked = (step, metrics, host_batch, batch)
                done = step + 1
                window_tokens += int(np.prod(batch.tokens.shape))
                bar.update(1)
                log_now = done % config.log_every == 0 or done == config.steps
                save_now = done % config.checkpoint_every == 0 or done == config.steps
                eval_now = eval_due(done)
                if log_now or save_now or eval_now:
                    check_finite(*unchecked)
                    unchecked = None
                if log_now:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    record = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    record["learning_rate"] = float(schedule(step))
                    record["tokens_per_s"] = window_tokens / elapsed
                    record["elapsed_s"] = time.perf_counter() - train_started  # of this call (restarts on resume)
                    if peak:
                        record["mfu"] = record["tokens_per_s"] * flops_tok / peak
                    log.write(done, record)
                    history.append({"step": done, **record})
                    bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
                    window_start, window_tokens = time.perf_counter(), 0
                if eval_now:
                    evaluate(done)
                if save_now:
                    store.save(done, model, optimizer)
    finally:
        bar.close()
    return history, eval_history


def _non_finite_report(step: int, values: dict, host_batch: Batch, batch: Batch, rng, config: TrainConfig,
                       store: CheckpointStore, model: nnx.Module) -> str:
    """The NaN/inf stop message, numbering steps as metrics.jsonl does (the update on
    `batch_at(step)` is logged as step + 1).

    Checkpoint c's parameters gave the loss and gradient logged at c + 1, checked finite for
    every c < step. Parameters can be finite yet exploded (finite on one batch, NaN on the
    next), so a good checkpoint must also give a finite loss and gradient on the batch that
    failed; the model is left holding the good one's parameters (or the last tried). Later
    checkpoints are moved aside, so that a re-run with a changed config resumes from it.
    """
    ids = to_host(host_batch.example_ids)[:16].tolist()
    name = {"loss": "loss", "grad_norm": "gradient norm"}
    bad = " and ".join(f"{name[k]} is {float(values[k])}" for k in FINITE if not np.isfinite(values[k]))
    finite = "".join(f"; {name[k]} {float(values[k]):.6g}" for k in FINITE if np.isfinite(values[k]))
    head = (f"{bad} at step {step + 1} (numbered as in metrics.jsonl: the update on source.batch_at({step}), "
            f"example_ids {ids}...{finite}).")
    good = None
    for c in sorted(store.all_steps(), reverse=True):
        if c >= step:
            continue
        store.restore(model, step=c)
        if all_finite(nnx.state(model, nnx.Param)) and all_finite(
                {k: v for k, v in probe_step(model, batch, rng, config.loss, config.grad_accum).items()
                 if k in FINITE}):
            good = c
            break
    if good is None:
        return (f"{head} No kept checkpoint has finite parameters with a finite loss and gradient (checkpoint c's "
                f"are logged at step c + 1; also on that batch), so this run cannot go on: check the model's "
                f"initialisation and that batch, then train into a new directory with another config (e.g. a lower "
                f"learning rate), keeping more checkpoints (keep_checkpoints) if earlier good ones were dropped.")
    later = [c for c in store.all_steps() if c > good]
    for c in later:
        store.set_aside(c, DIVERGED)
    moved = (f" The later checkpoints (steps {later}) were moved to {store.directory.parent / DIVERGED}."
             if later else "")
    return (f"{head} The last checkpoint with finite parameters and a finite loss (and gradient, at its next step "
            f"and on that batch): step {good} ({store.step_directory(good)}).{moved} To go on from step {good} with a "
            f"lower learning rate (or another change), re-run this call with the new TrainConfig and "
            f"allow_config_change=True (an argument of `train` and the `study` functions): it resumes from step "
            f"{good} and records the change at that step in metrics.jsonl and run_info.json. Or train into a new "
            f"directory.")
