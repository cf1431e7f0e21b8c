"""The trainer: one compiled step, exact resume, metrics, checkpoints, evaluation hook.

Step s trains on `source.batch_at(s)` with randomness `fold_in(key(seed), s)`, so a run
killed at any moment and started again with the same command resumes from its last
checkpoint and ends bitwise equal (on CPU) to a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import time
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
from workbench.models import flops_per_token, param_count
from workbench.objectives.batch import Batch
from workbench.objectives.losses import LossConfig, loss_fn
from workbench.runs import write_run_info
from workbench.training.checkpoint import CheckpointStore
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


class NonFiniteLossError(RuntimeError):
    pass


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


@partial(nnx.jit, static_argnames=("loss_config", "grad_accum", "mesh"))
def train_step(model, optimizer, batch: Batch, rng, loss_config: LossConfig, grad_accum: int,
               mesh: Optional[Mesh] = None):
    """One update. Microbatch gradients are weighted by their target tokens, so the update
    equals the one for the whole batch. With a `mesh`, the updated parameters and optimizer
    state keep the shardings `workbench.distributed.shard_module` gave them."""
    grad_fn = nnx.value_and_grad(lambda m, b, r: loss_fn(m, b, r, loss_config), has_aux=True)
    grads, metrics, total = None, None, 0.0
    for i, micro in enumerate(_microbatches(batch, grad_accum)):
        (_, m), g = grad_fn(model, micro, jax.random.fold_in(rng, i))
        n = m["target_tokens"]
        g = jax.tree.map(lambda x: x * n, g)
        m = {k: v * n for k, v in m.items()}
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        metrics = m if metrics is None else {k: metrics[k] + m[k] for k in m}
        total = total + n
    total = jnp.maximum(total, 1.0)
    grads = jax.tree.map(lambda x: x / total, grads)
    metrics = {k: (v if k == "target_tokens" else v / total) for k, v in metrics.items()}
    metrics["target_tokens"] = total
    metrics["grad_norm"] = optax.tree.norm(grads)
    optimizer.update(model, grads)
    if mesh is not None:
        constrain_module(model, mesh)
        constrain_module(optimizer, mesh, strict=False)
    return metrics


@partial(nnx.jit, static_argnames=("loss_config",))
def eval_step(model, batch: Batch, rng, loss_config: LossConfig):
    return loss_fn(model, batch, rng, loss_config)[1]


def held_out_loss(batches: list[Batch], loss_config: LossConfig, seed: int = 12345,
                  mesh: Optional[Mesh] = None) -> Callable:
    """An evaluation hook: token-weighted mean metrics over fixed batches (fixed noise)."""

    def evaluate(model, step: int) -> dict:
        sums, total = {}, 0.0
        for i, batch in enumerate(batches):
            batch = batch if mesh is None else shard_batch(batch, mesh)
            with mesh_context(mesh):
                m = eval_step(model, batch, jax.random.fold_in(jax.random.key(seed), i), loss_config)
            m = jax.device_get(m)
            n = float(m["target_tokens"])
            for k, v in m.items():
                if k != "target_tokens":
                    sums[k] = sums.get(k, 0.0) + float(v) * n
            total += n
        return {k: v / max(total, 1.0) for k, v in sums.items()}

    return evaluate


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
) -> TrainResult:
    """Train `model` in place for `config.steps` steps on `source.batch_at(step)`.

    If `run_dir` holds checkpoints, training resumes from the latest complete one (also when
    it was written on another mesh). With a `mesh` (workbench.distributed.make_mesh), the
    parameters, optimizer state and every batch are sharded over it; with several processes
    each one runs this same call and the run files are written by process 0.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tx, schedule = make_optimizer(config.optimizer, config.steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    if mesh is not None:  # before any restore, so a checkpoint is read straight onto this mesh
        shard_module(model, mesh)
        shard_module(optimizer, mesh, strict=False)
    store = CheckpointStore(run_dir, keep=config.keep_checkpoints)
    primary = is_primary()
    log = MetricsLog(run_dir if primary else run_dir / f"process_{jax.process_index()}",
                     tensorboard=config.tensorboard and primary)
    start = 0
    if store.latest_step() is not None:
        start = store.restore(model, optimizer)
        log.truncate_after(start)
    else:
        if primary:
            write_run_info(run_dir, config={"train": config, "model": model.config}, seed=config.seed,
                           data=data_info, extra=extra_info)
        store.save(0, model, optimizer)
    last_good = store.latest_step()

    first = source.batch_at(start) if start < config.steps else None
    seq_len = int(first.tokens.shape[1]) if first is not None else 0
    flops_tok = flops_per_token(model.config, seq_len) if first is not None else 0.0
    peak = _peak_flops()
    history, eval_history = [], []
    base_key = jax.random.key(config.seed)
    bar = tqdm(total=config.steps, initial=start, desc=f"train {run_dir.name}", disable=not config.progress,
               mininterval=1.0, dynamic_ncols=True)
    window_start, window_tokens = time.perf_counter(), 0
    train_started = window_start

    def check_finite(step: int, metrics: dict, host_batch: Batch) -> None:
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at step {step} (batch example_ids {to_host(host_batch.example_ids)[:16].tolist()}"
                f"...); last good checkpoint: step {last_good} in {store.directory}. Lower the learning "
                f"rate or inspect that batch with source.batch_at({step})."
            )

    # The loss of each step is checked after the next step is dispatched, so the host never
    # stalls the device between steps; a step is always checked before a checkpoint, a log
    # line or an evaluation that follows it.
    unchecked = None
    try:
        with mesh_context(mesh):
            for step in range(start, config.steps):
                host_batch = first if step == start else source.batch_at(step)
                batch = host_batch if mesh is None else shard_batch(host_batch, mesh)
                metrics = train_step(model, optimizer, batch, jax.random.fold_in(base_key, step), config.loss,
                                     config.grad_accum, mesh=mesh)
                if unchecked is not None:
                    check_finite(*unchecked)
                unchecked = (step, metrics, host_batch)
                done = step + 1
                window_tokens += int(np.prod(batch.tokens.shape))
                bar.update(1)
                log_now = done % config.log_every == 0 or done == config.steps
                save_now = done % config.checkpoint_every == 0 or done == config.steps
                eval_now = eval_fn is not None and (
                    (config.eval_every and done % config.eval_every == 0) or done == config.steps)
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
                if save_now:
                    store.save(done, model, optimizer)
                    last_good = done
                if eval_now:
                    result = eval_fn(model, done)
                    log.write(done, result, prefix="eval_")
                    eval_history.append({"step": done, **result})
    finally:
        bar.close()
        log.close()
        store.close()
    return TrainResult(model, max(start, config.steps), history, eval_history, run_dir)


def describe(model: nnx.Module) -> str:
    counts = param_count(model.config)
    return f"{model.config.arch} model, {counts['total'] / 1e6:.2f}M parameters, attention={model.config.attention}"
