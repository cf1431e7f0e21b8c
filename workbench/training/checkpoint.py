"""Orbax checkpoints of model parameters, optimizer state and step.

Orbax writes each step into a temporary directory and renames it only when complete, so a
checkpoint half-written when the process dies is never listed, let alone loaded. The model
config travels beside the weights (`model_config.json`), so `load_model(dir)` needs nothing else.
Sharded arrays are saved shard by shard (every process calls `save`); `restore` reads each
array onto the sharding of the model it restores into, so a checkpoint moves across meshes.
A checkpoint damaged after it was written (truncated file, missing metadata or item) is
found when it fails to restore; `restore_intact` then falls back to the one before and
moves the damaged one aside, never deleting it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from workbench.config import from_dict, load_json, save_json
from workbench.distributed import place_zeros, shard_module
from workbench.models import ModelConfig, build_model

MODEL_CONFIG = "model_config.json"
DAMAGED = "checkpoints_damaged"  # where restore_intact moves checkpoints that do not restore
# ModelConfig fields that choose how the machine at hand runs the model, not what it computes:
# not taken from a checkpoint (a model trained with a GPU kernel loads on a CPU).
BACKEND_FIELDS = ("attention_impl",)


class DamagedCheckpointsError(RuntimeError):
    pass


def all_finite(tree) -> bool:
    """Whether every array of `tree` is free of NaN and inf (reduced on device)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return bool(jnp.all(jnp.stack(leaves))) if leaves else True


class CheckpointStore:
    """Checkpoints under `<run_dir>/checkpoints/<step>/`, keeping the newest `keep`."""

    def __init__(self, run_dir: Path | str, keep: int = 3):
        self.directory = Path(run_dir).resolve() / "checkpoints"
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, model: nnx.Module, optimizer: Optional[nnx.Optimizer] = None) -> None:
        if jax.process_index() == 0:
            save_json(self.directory.parent / MODEL_CONFIG, model.config)
        items = {"model": ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(optimizer)))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def restore(self, model: nnx.Module, optimizer: Optional[nnx.Optimizer] = None, step: Optional[int] = None) -> int:
        """Load `step` (default: the latest complete one) into model (and optimizer) in place,
        each array onto the sharding it has now (place the model on a mesh first to restore onto it)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint under {self.directory}")
        held = sorted(self.all_steps())
        if step not in held:
            raise FileNotFoundError(f"no checkpoint of step {step} under {self.directory}; it holds steps {held} "
                                    f"(older ones are pruned as the run goes on: pass one of these, or none for the "
                                    f"latest)")
        model_state = nnx.state(model, nnx.Param)
        target = {"model": nnx.to_pure_dict(model_state)}
        if optimizer is not None:
            target["optimizer"] = nnx.to_pure_dict(nnx.state(optimizer))
        items = {name: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))
                 for name, tree in target.items()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        nnx.replace_by_pure_dict(model_state, restored["model"])
        nnx.update(model, model_state)
        if optimizer is not None:
            opt_state = nnx.state(optimizer)
            nnx.replace_by_pure_dict(opt_state, restored["optimizer"])
            nnx.update(optimizer, opt_state)
        return step

    def step_directory(self, step: int) -> Path:
        return self.directory / str(step)

    def restore_intact(self, model: nnx.Module, optimizer: Optional[nnx.Optimizer] = None) -> tuple[int, list[str]]:
        """Restore the latest checkpoint that restores completely with finite values; move later
        ones that do not to `<run_dir>/checkpoints_damaged/` (call on every process; the primary
        moves). Returns the step and one report per checkpoint moved aside. Raises
        DamagedCheckpointsError naming every step and path, moving nothing, if none restores."""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self.restore(model, optimizer, step)
            except Exception as error:  # any failure to read is damage; a later intact one decides
                failures.append((step, _first_line(error)))
                continue
            if not all_finite(nnx.state(model, nnx.Param)):
                failures.append((step, "its parameters hold NaN or inf"))
                continue
            reports = []
            for bad, why in failures:
                moved = self.set_aside(bad, DAMAGED)
                reports.append(f"the checkpoint of step {bad} in {self.step_directory(bad)} is damaged ({why}); "
                               f"moved to {moved}; resuming from step {step}")
            return step, reports
        listing = "\n".join(f"  step {step}: {self.step_directory(step)}: {why}" for step, why in failures)
        raise DamagedCheckpointsError(
            f"no checkpoint under {self.directory} restores:\n{listing}\nNothing was moved. If these come from "
            f"another model or optimizer, train with that config; otherwise the run cannot continue: train into "
            f"a new directory (or move {self.directory.parent} aside and start it again)."
        )

    def set_aside(self, step: int, folder: str) -> Path:
        """Move checkpoint `step` to `<run_dir>/<folder>/<step>` (a free name) and forget it."""
        target = self.directory.parent / folder / str(step)
        if jax.process_index() == 0:
            suffix = 1
            while target.exists():
                target = self.directory.parent / folder / f"{step}.{suffix}"
                suffix += 1
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.step_directory(step)), str(target))
        self.manager.reload()
        return target

    def close(self) -> None:
        self.manager.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def load_model(run_dir: Path | str, step: Optional[int] = None, mesh: Optional[Mesh] = None, *,
               base: Optional[nnx.Module] = None, **config_changes):
    """Rebuild a run's model from its saved config and load its weights (latest step by default).

    A run of an adapted model (`ModelConfig.lora`) checkpoints the adapter only: pass the
    frozen `base` model it was trained on (the adapter is applied with `with_lora`; check the
    base with `workbench.models.lora.base_fingerprint` if in doubt).

    `config_changes` (e.g. attention="bidirectional") apply to the config before the weights
    are loaded; they cannot change any parameter shape. The saved `attention_impl` is not
    reused (it may name a kernel this machine lacks): "auto" unless given here. With a
    `mesh`, the weights are read straight onto it (whatever mesh wrote them).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / MODEL_CONFIG
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: {run_dir} holds no workbench checkpoint")
    saved = {k: v for k, v in load_json(config_path).items() if k not in BACKEND_FIELDS}
    config = from_dict(ModelConfig, saved).replace(**config_changes)
    if config.lora is not None:
        model = _adapted_base(run_dir, config, base)
        if mesh is not None:
            shard_module(model, mesh)
    elif base is not None:
        raise ValueError(f"{run_dir} trained every weight (model.lora is None): load_model takes no base")
    else:
        model = nnx.eval_shape(lambda: build_model(config, 0))
        # eval_shape gives abstract arrays; materialise zeros of the right shapes, then restore.
        if mesh is None:
            nnx.update(model, jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), nnx.state(model)))
        else:  # zeros made already sharded: no single device ever holds the whole model
            place_zeros(model, mesh)
    store = CheckpointStore(run_dir)
    try:
        loaded = store.restore(model, step=step)
    finally:
        store.close()
    return model, loaded


def _adapted_base(run_dir: Path, config: ModelConfig, base: Optional[nnx.Module]) -> nnx.Module:
    """`base` under fresh adapters of `config.lora`, with the run's config (attention kind, ...)."""
    from workbench.models.lora import with_lora
    from workbench.models.transformer import with_config

    if base is None:
        raise ValueError(f"{run_dir} trained adapters on a frozen base (model.lora={config.lora}); its checkpoints "
                         f"hold the adapter only: pass the base model it was trained on, load_model(run_dir, base=...)")
    shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), nnx.to_pure_dict(nnx.state(m)))
    adapted = with_lora(base, config.lora)
    expected = nnx.eval_shape(lambda: build_model(config, 0))
    if shapes(adapted) != shapes(expected):
        raise ValueError(f"the base model ({base.config}) does not have the shapes of the run in {run_dir} "
                         f"({config}): pass the base it was trained on")
    return with_config(adapted, **{name: getattr(config, name) for name in config.__dataclass_fields__})
