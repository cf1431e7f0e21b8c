"""Trainer: exact resume after SIGKILL, NaN stop, gradient accumulation, AR2Diff identity."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench.models import ModelConfig, build_model
from workbench.objectives.losses import LossConfig
from workbench.training import (
    CheckpointStore,
    LMSource,
    NonFiniteLossError,
    OptimizerConfig,
    TrainConfig,
    load_model,
    train,
)
from workbench.training.ar2diff import adaptation_config, ar2diff
from workbench.training.logging import read_metrics

JOB = Path(__file__).with_name("resume_job.py")
CONFIG = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_len=32, dtype="float32")


def source(seed=1, batch_size=4):
    stream = np.random.default_rng(0).integers(3, 60, size=4000).astype(np.int32)
    return LMSource(stream, seq_len=16, batch_size=batch_size, objective="prefix_lm", seed=seed)


def params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _run_job(run_dir, steps, sleep=0.0):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, str(JOB), str(run_dir), str(steps), str(sleep)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_then_rerun_ends_bitwise_equal_to_uninterrupted(tmp_path):
    steps = 12
    straight = _run_job(tmp_path / "straight", steps)
    assert straight.wait(timeout=300) == 0, straight.stderr.read().decode()[-2000:]

    killed = tmp_path / "killed"
    proc = _run_job(killed, steps, sleep=0.4)
    deadline = time.time() + 240
    # kill once a checkpoint past step 0 exists, in the middle of later steps
    while time.time() < deadline:
        ckpts = [p for p in (killed / "checkpoints").iterdir() if p.name.isdigit() and int(p.name) > 0] if (killed / "checkpoints").exists() else []
        if ckpts:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = CheckpointStore(killed).latest_step()
    assert interrupted_at is not None and 0 < interrupted_at < steps

    rerun = _run_job(killed, steps)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()[-2000:]

    a, _ = load_model(tmp_path / "straight")
    b, _ = load_model(killed)
    for x, y in zip(params(a), params(b)):
        np.testing.assert_array_equal(x, y)
    # the metrics log has each step once, with the same values as the uninterrupted run
    ma = read_metrics(tmp_path / "straight", "loss")
    mb = read_metrics(killed, "loss")
    assert [r["step"] for r in mb] == list(range(1, steps + 1))
    assert [r["loss"] for r in ma] == [r["loss"] for r in mb]


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    model = build_model(CONFIG, 0)
    store = CheckpointStore(tmp_path)
    store.save(5, model)
    # what a crash mid-save leaves behind: an unfinished temporary directory for a later step
    (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-123").mkdir()
    store.close()
    assert CheckpointStore(tmp_path).latest_step() == 5


def test_restoring_a_missing_step_names_the_steps_there(tmp_path):
    model = build_model(CONFIG, 0)
    store = CheckpointStore(tmp_path)
    store.save(5, model)
    store.save(8, model)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 300 .* holds steps \[5, 8\]"):
        store.restore(model, step=300)
    assert store.restore(model, step=5) == 5
    store.close()


@pytest.mark.parametrize("checkpoint_every", [1, 100])
def test_nan_loss_stops_with_step_batch_and_no_good_checkpoint(tmp_path, checkpoint_every):
    """The loss is checked one step late (no host stall) but always before a checkpoint:
    with a checkpoint due after the first step, the NaN parameters are never saved. Steps are
    numbered as in metrics.jsonl; the initial parameters already give NaN, so no checkpoint is good."""
    model = build_model(CONFIG, 0)
    state = nnx.state(model, nnx.Param)
    state = jax.tree.map(lambda x: x * jnp.nan, state)
    nnx.update(model, state)
    config = TrainConfig(steps=3, progress=False, tensorboard=False, checkpoint_every=checkpoint_every, log_every=100)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan and gradient norm is nan at step 1 \(.*batch_at\(0\), example_ids \[.*"
                                                 r"No kept checkpoint has finite parameters with a finite loss"):
        train(model, config, source(), tmp_path)
    assert CheckpointStore(tmp_path).latest_step() == 0


def adam_moments(run_dir, config):
    """Adam's mu = (1 - b1) g and nu = (1 - b2) g^2 after the run's one step: its gradient, read from the checkpoint."""
    from workbench.training.optim import make_optimizer

    model = build_model(CONFIG, 0)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optimizer, config.steps)[0], wrt=nnx.Param)
    CheckpointStore(run_dir).restore(model, optimizer, step=config.steps)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(optimizer)))
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves if "'mu'" in jax.tree_util.keystr(p)
            or "'nu'" in jax.tree_util.keystr(p)}


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    # Compared by the loss and the gradient (Adam's moments), not the parameters after the step:
    # Adam's lr * g / (|g| + eps) turns the summation-order noise of a near-zero gradient into ~lr.
    runs = []
    for accum in (1, 2):
        model = build_model(CONFIG, 0)
        cfg = TrainConfig(steps=1, grad_accum=accum, progress=False, tensorboard=False,
                          optimizer=OptimizerConfig(schedule="constant"))
        train(model, cfg, source(batch_size=8), tmp_path / f"a{accum}")
        losses = [r["loss"] for r in read_metrics(tmp_path / f"a{accum}", "loss")]
        runs.append((losses, adam_moments(tmp_path / f"a{accum}", cfg)))
    (loss_one, moments_one), (loss_two, moments_two) = runs
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
    assert moments_one.keys() == moments_two.keys() and moments_one
    for key, reference in moments_one.items():
        scale = float(np.max(np.abs(reference)))
        assert scale > 0, f"{key} is all zeros, so the comparison could not fail"
        np.testing.assert_allclose(moments_two[key], reference, rtol=0, atol=2e-4 * scale, err_msg=key)


def test_ar2diff_starts_from_the_ar_parameters_exactly(tmp_path):
    ar_model = build_model(CONFIG, 0)
    train(ar_model, TrainConfig(steps=3, progress=False, tensorboard=False), source(), tmp_path / "ar")
    stage = adaptation_config(TrainConfig(steps=0, progress=False, tensorboard=False), steps=0)
    result = ar2diff(tmp_path / "ar", tmp_path / "ar2diff_0", source(), stage)
    assert result.model.config.attention == "bidirectional"
    for x, y in zip(params(ar_model), params(result.model)):
        np.testing.assert_array_equal(x, y)
    # N > 0 trains with the diffusion loss and changes the parameters
    stage = adaptation_config(TrainConfig(steps=2, progress=False, tensorboard=False), steps=2)
    result = ar2diff(tmp_path / "ar", tmp_path / "ar2diff_2", source(), stage)
    assert "loss_l2" in read_metrics(tmp_path / "ar2diff_2", "loss")[-1]
    assert any(not np.array_equal(x, y) for x, y in zip(params(ar_model), params(result.model)))
