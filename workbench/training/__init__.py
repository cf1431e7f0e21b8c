"""Training: optimizers, batch sources, checkpoints, metrics and the trainer."""

from workbench.training.checkpoint import CheckpointStore, load_model
from workbench.training.optim import OptimizerConfig
from workbench.training.sources import LMSource, Seq2SeqSource, fit_pairs, validation_batches
from workbench.training.trainer import (
    NonFiniteLossError,
    RunConfigMismatchError,
    RunDirectoryWarning,
    TrainConfig,
    TrainResult,
    held_out_loss,
    train,
)

__all__ = ["CheckpointStore", "LMSource", "NonFiniteLossError", "OptimizerConfig", "RunConfigMismatchError",
           "RunDirectoryWarning", "Seq2SeqSource", "TrainConfig", "TrainResult", "fit_pairs", "held_out_loss",
           "load_model", "train", "validation_batches"]
