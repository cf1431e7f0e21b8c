"""Run directories never lose or mix work: kills at controlled points, damaged checkpoints,
a torn metrics line, changed configs, two writers, a NaN stop whose advice is followed.

The reference for every resumed run is the same job run without interruption: its
metrics.jsonl (timing fields aside) must come back record for record, evaluations included.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from resume_job import Killed, job_config, job_eval, job_model, job_source, kill_hook
from workbench.objectives.losses import LossConfig
from workbench.training import CheckpointStore, NonFiniteLossError, OptimizerConfig, load_model, train
from workbench.training.trainer import eval_step
from workbench.training.logging import read_metrics

JOB = Path(__file__).with_name("resume_job.py")
STEPS = 6  # checkpoints at 0, 3, 6; evaluations at 3 and 6
TIMING = ("tokens_per_s", "elapsed_s", "mfu")


def _records(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _train(run_dir, steps=STEPS, model=None, source=None, **kw):
    config = job_config(steps, evaluate=True, **kw.pop("config", {}))
    return train(model or job_model(), config, source or job_source(), run_dir, eval_fn=job_eval(config), **kw)


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """A compilation cache the subprocess jobs share (the second one skips compiling)."""
    return tmp_path_factory.mktemp("jax_cache")


def _job(run_dir, jax_cache, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(jax_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    return subprocess.Popen([sys.executable, str(JOB), str(run_dir), str(STEPS), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every other run is compared with."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    _train(run_dir)
    records = _records(run_dir)
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    return run_dir


def _copy(run_dir, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.mark.parametrize("kill_after", ["save:6", "torn:5"])
def test_sigkilled_run_rerun_gives_the_uninterrupted_metrics_log(straight, jax_cache, tmp_path, kill_after):
    """SIGKILL right after the final checkpoint (its evaluation must not be lost) and half-way
    through writing a log line."""
    run_dir = tmp_path / "killed"
    proc = _job(run_dir, jax_cache, "0", "--eval", "--kill-after", kill_after)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    _train(run_dir)
    assert _records(run_dir) == _records(straight)


@pytest.mark.parametrize("kill_after", ["save:6", "eval:3", "save:3", "eval:6", "log:5", "log:6", "torn:6"])
def test_run_stopped_anywhere_rerun_gives_the_uninterrupted_metrics_log(straight, tmp_path, monkeypatch, kill_after):
    """The same in-process, at every kind of point around a checkpoint that is also an
    evaluation step (the job stops by an exception that nothing catches)."""
    run_dir = tmp_path / "stopped"
    what, at = kill_after.split(":")

    def die():
        raise Killed(kill_after)

    with monkeypatch.context() as patch:
        patch.setattr(*kill_hook(what, int(at), die))
        with pytest.raises(Killed):
            _train(run_dir)
    _train(run_dir)
    assert _records(run_dir) == _records(straight)


def _damage(checkpoint: Path, how: str) -> None:
    if how == "truncated_file":
        data_files = [p for p in (checkpoint / "model").rglob("*") if p.is_file() and p.parent.name == "d"]
        biggest = max(data_files, key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    elif how == "deleted_metadata":
        (checkpoint / "model" / "_METADATA").unlink()
    elif how == "deleted_model":
        shutil.rmtree(checkpoint / "model")
    elif how == "empty_folder":
        shutil.rmtree(checkpoint)
        checkpoint.mkdir()


@pytest.mark.parametrize("how", ["truncated_file", "deleted_metadata", "deleted_model", "empty_folder"])
def test_damaged_last_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous_one(straight, tmp_path, how):
    run_dir = _copy(straight, tmp_path)
    _damage(run_dir / "checkpoints" / "6", how)
    with pytest.warns(UserWarning, match=r"checkpoint of step 6 .*damaged.*moved to .*checkpoints_damaged") as caught:
        _train(run_dir)
    message = " ".join(str(w.message) for w in caught)
    assert "resuming from step 3" in message
    assert (run_dir / "checkpoints_damaged" / "6").is_dir()  # kept for inspection, never deleted
    assert CheckpointStore(run_dir).all_steps() == [0, 3, 6]
    assert _records(run_dir) == _records(straight)
    a, b = load_model(straight)[0], load_model(run_dir)[0]
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(x, y)


def test_no_intact_checkpoint_refuses_with_step_path_and_fix(straight, tmp_path):
    run_dir = _copy(straight, tmp_path)
    for step in (0, 3, 6):
        _damage(run_dir / "checkpoints" / str(step), "deleted_model")
    with pytest.raises(RuntimeError) as info:
        _train(run_dir)
    message = str(info.value)
    for step in (0, 3, 6):
        assert f"step {step}" in message and str(run_dir.resolve() / "checkpoints" / str(step)) in message
    assert "new directory" in message
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["0", "3", "6"]


def test_torn_last_metrics_line_is_dropped_and_reported(straight, tmp_path):
    """A kill mid-write leaves half a record after the last checkpoint; the re-run drops it
    (reporting it) and writes it again."""
    run_dir = _copy(straight, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "6")  # the kill came before the final checkpoint
    path = run_dir / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    assert read_metrics(run_dir, "loss")  # a reader is not stopped by the torn line
    with pytest.warns(UserWarning, match=r"metrics.jsonl.*partial record.*dropped"):
        _train(run_dir)
    assert _records(run_dir) == _records(straight)


CHANGES = {
    "batch size": (dict(source=dict(batch_size=8)), ["batch.batch_size", "4", "8"]),
    "sequence length": (dict(source=dict(seq_len=8)), ["batch.seq_len", "16", "8"]),
    "learning rate": (dict(config=dict(optimizer=OptimizerConfig(warmup_steps=2, learning_rate=3e-4))),
                      ["train.optimizer.learning_rate", "0.001", "0.0003"]),
    "step count": (dict(steps=4), ["train.steps", "6", "4"]),
    "data": (dict(source=dict(stream_seed=7)), ["source.sha256"]),
}


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_rerun_with_another_config_is_refused_naming_each_field(straight, tmp_path, case):
    run_dir = _copy(straight, tmp_path)
    change, expected = CHANGES[case]
    with pytest.raises(ValueError) as info:
        _train(run_dir, steps=change.get("steps", STEPS), source=job_source(**change.get("source", {})),
               config=change.get("config", {}))
    message = str(info.value)
    for text in expected:
        assert text in message
    assert "new directory" in message and "allow_config_change=True" in message


def test_rerun_with_another_model_config_says_so(straight, tmp_path):
    run_dir = _copy(straight, tmp_path)
    with pytest.raises(ValueError) as info:
        _train(run_dir, model=job_model(d_model=64, d_ff=128))
    message = str(info.value)
    assert "this run was started with another model config" in message
    assert "model.d_model" in message and "32" in message and "64" in message and "model.d_ff" in message
    assert len(message) < 2000 and "pytree" not in message


def test_allowed_config_change_is_recorded_at_its_step(straight, tmp_path):
    run_dir = _copy(straight, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "6")  # the run stopped after step 3
    _train(run_dir, config=dict(eval_every=2), allow_config_change=True)
    changes = read_metrics(run_dir, "config_change")
    assert [r["step"] for r in changes] == [3]
    assert changes[0]["config_change"] == {"train.eval_every": [3, 2]}
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["config"]["train"]["eval_every"] == 2
    assert info["config_changes"] == [{"step": 3, "changes": {"train.eval_every": [3, 2]}}]
    assert [r["step"] for r in read_metrics(run_dir, "eval_loss")] == [3, 4, 6]
    _train(run_dir, config=dict(eval_every=2))  # the recorded config is now the new one: a plain re-run resumes
    assert [r["step"] for r in read_metrics(run_dir, "loss")] == list(range(1, STEPS + 1))
    with pytest.raises(ValueError, match="train.eval_every: recorded 2, now 3"):
        _train(run_dir)


def test_second_writer_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, jax_cache):
    run_dir = tmp_path / "run"
    holder = _job(run_dir, jax_cache, "600")  # holds the directory, then sleeps in its first batch
    try:
        lock = run_dir / ".lock"
        deadline = time.time() + 240
        while not (lock.exists() and str(holder.pid) in lock.read_text()):
            if holder.poll() is not None:
                pytest.fail(f"the holder ended: {holder.stderr.read().decode()[-2000:]}")
            assert time.time() < deadline, f"no lock naming pid {holder.pid} in {lock}"
            time.sleep(0.1)
        with pytest.raises(RuntimeError, match=rf"pid {holder.pid} on {re.escape(socket.gethostname())} since "):
            _train(run_dir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with pytest.warns(UserWarning, match=rf"took over the lock of pid {holder.pid}"):
        _train(run_dir, config=dict(eval_every=0))
    assert [r["step"] for r in read_metrics(run_dir, "loss")] == list(range(1, STEPS + 1))


def test_nan_stop_numbers_steps_like_the_log_and_its_advice_works(tmp_path):
    """A learning rate of 1e30 leaves finite but exploded parameters after one step, whose loss
    is not finite: the last good checkpoint is the one before."""
    run_dir = tmp_path / "run"
    explode = OptimizerConfig(name="adamw", learning_rate=1e30, schedule="constant", clip_norm=0.0)
    config = dict(optimizer=explode, checkpoint_every=1, eval_every=0)
    with pytest.raises(NonFiniteLossError) as info:
        _train(run_dir, config=config)
    message = str(info.value)
    logged = read_metrics(run_dir, "loss")
    assert all(np.isfinite(r["loss"]) for r in logged)
    bad_step = logged[-1]["step"] + 1 if logged else 1
    assert re.search(rf"(loss|gradient norm) is (nan|inf|-inf) at step {bad_step} ", message), message
    good = int(re.search(r"last checkpoint with finite parameters and a finite loss .*?: step (\d+)", message).group(1))
    assert good < bad_step - 1
    model, _ = load_model(run_dir, step=good)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert "allow_config_change=True" in message
    # follow the advice: same directory, a lower learning rate, the override flag
    sane = dataclasses.replace(explode, learning_rate=1e-3)
    result = _train(run_dir, config=dict(optimizer=sane, checkpoint_every=1, eval_every=0), allow_config_change=True)
    assert result.step == STEPS
    losses = read_metrics(run_dir, "loss")
    assert [r["step"] for r in losses] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) for r in losses)
    assert [r["step"] for r in read_metrics(run_dir, "config_change")] == [good]


def test_model_trained_with_a_gpu_kernel_loads_on_cpu(tmp_path):
    """Backend-specific fields saved with a checkpoint do not make it unusable elsewhere."""
    trained = job_model(attention_impl="pallas_gpu", dtype="bfloat16")
    store = CheckpointStore(tmp_path)
    store.save(0, trained)
    store.close()
    assert json.loads((tmp_path / "model_config.json").read_text())["attention_impl"] == "pallas_gpu"
    model, step = load_model(tmp_path)
    assert step == 0 and model.config.attention_impl == "auto" and model.config.dtype == "bfloat16"
    metrics = eval_step(model, job_source().batch_at(0), jax.random.key(0), LossConfig(kind="uniform"))
    assert np.isfinite(float(metrics.loss))
    for x, y in zip(jax.tree.leaves(nnx.state(trained, nnx.Param)), jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(x, y)
