"""A small training job for the resume tests, run in a subprocess so it can be SIGKILLed.

`python resume_job.py RUN_DIR STEPS [SLEEP] [--kill-after WHAT:STEP] [--eval]`

`--kill-after WHAT:STEP` makes the job SIGKILL itself at a controlled point (no timing
races; see `kill_hook`). The tests import `job_model`, `job_source`, `job_config`,
`job_eval` and `kill_hook` to run the same job in-process.
"""

import argparse
import os
import signal
import time

import numpy as np

from workbench.models import ModelConfig, build_model
from workbench.objectives.losses import LossConfig
from workbench.training import LMSource, OptimizerConfig, TrainConfig, held_out_loss, train, validation_batches
from workbench.training import checkpoint as checkpoint_module
from workbench.training import logging as logging_module

MODEL = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_len=32, dtype="float32",
                    attention="bidirectional")


class SlowSource(LMSource):
    """Sleeps per batch so a test can hold the job mid-run."""

    sleep: float = 0.0

    def batch_at(self, step):
        time.sleep(self.sleep)
        return super().batch_at(step)


def job_source(sleep: float = 0.0, batch_size: int = 4, seq_len: int = 16, stream_seed: int = 0) -> SlowSource:
    stream = np.random.default_rng(stream_seed).integers(3, 60, size=4000).astype(np.int32)
    source = SlowSource(stream, seq_len=seq_len, batch_size=batch_size, objective="prefix_lm", seed=1)
    source.sleep = sleep
    return source


def job_model(**changes):
    return build_model(MODEL.replace(**changes), 0)


def job_config(steps: int, evaluate: bool = False, **changes) -> TrainConfig:
    fields = dict(steps=steps, loss=LossConfig(kind="uniform"), checkpoint_every=3, log_every=1,
                  eval_every=3 if evaluate else 0, progress=False, tensorboard=False,
                  optimizer=OptimizerConfig(warmup_steps=2))
    fields.update(changes)
    return TrainConfig(**fields)


def job_eval(config: TrainConfig):
    batches = validation_batches(job_source(), 2)
    return held_out_loss(batches, config.loss)


class Killed(BaseException):
    """What an in-process test raises instead of SIGKILL (no `except Exception` catches it)."""


def sigkill():
    os.kill(os.getpid(), signal.SIGKILL)


def kill_hook(what: str, at: int, die=sigkill) -> tuple[object, str, object]:
    """(owner, attribute, replacement) that make the job call `die()` at `what:at`: `save:S`
    right after checkpoint S is written, `log:S` / `eval:S` right after the training /
    evaluation record of step S is appended, `torn:S` half-way through writing that record."""
    if what == "save":
        save = checkpoint_module.CheckpointStore.save

        def save_then_die(self, step, *args, **kwargs):
            save(self, step, *args, **kwargs)
            if step == at:
                die()

        return checkpoint_module.CheckpointStore, "save", save_then_die
    write = logging_module.MetricsLog.write

    def write_then_die(self, step, record, prefix=""):
        is_eval = prefix == "eval_"
        if what == "torn" and step == at and not is_eval:
            line = logging_module.json.dumps({"step": int(step), **{k: float(v) for k, v in record.items()}})
            with open(self.path, "a") as handle:
                handle.write(line[: len(line) // 2])
            die()
        write(self, step, record, prefix)
        if step == at and ((what == "log" and not is_eval) or (what == "eval" and is_eval)):
            die()

    return logging_module.MetricsLog, "write", write_then_die


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("steps", type=int)
    parser.add_argument("sleep", type=float, nargs="?", default=0.0)
    parser.add_argument("--kill-after", default=None, help="save:S, log:S, eval:S or torn:S")
    parser.add_argument("--eval", action="store_true", help="evaluate every 3 steps and at the end")
    args = parser.parse_args()
    if args.kill_after:
        what, at = args.kill_after.split(":")
        setattr(*kill_hook(what, int(at)))
    config = job_config(args.steps, evaluate=args.eval)
    train(job_model(), config, job_source(args.sleep), args.run_dir, eval_fn=job_eval(config) if args.eval else None)


if __name__ == "__main__":
    main()
