"""A small training job for the SIGKILL-resume test: `python resume_job.py RUN_DIR STEPS [SLEEP]`."""

import sys
import time

import numpy as np

from workbench.models import ModelConfig, build_model
from workbench.objectives.losses import LossConfig
from workbench.training import LMSource, OptimizerConfig, TrainConfig, train


class SlowSource(LMSource):
    """Sleeps per batch so the test can kill the job mid-run."""

    sleep: float = 0.0

    def batch_at(self, step):
        time.sleep(self.sleep)
        return super().batch_at(step)


def main(run_dir: str, steps: int, sleep: float) -> None:
    stream = np.random.default_rng(0).integers(3, 60, size=4000).astype(np.int32)
    source = SlowSource(stream, seq_len=16, batch_size=4, objective="prefix_lm", seed=1)
    source.sleep = sleep
    config = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_len=32, dtype="float32",
                         attention="bidirectional")
    train_config = TrainConfig(steps=steps, loss=LossConfig(kind="uniform"), checkpoint_every=3, log_every=1,
                               progress=False, tensorboard=False, optimizer=OptimizerConfig(warmup_steps=2))
    train(build_model(config, 0), train_config, source, run_dir)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
