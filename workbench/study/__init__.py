"""The AR2Diff study as a few calls: tokenizer, pretraining, adaptation, fine-tuning
(`stages`), and the paper's grids built from them (`grids`). Notebooks call these; each
writes a run directory and can be re-run to resume."""

from workbench.study.grids import (METHODS, GridCell, adaptation_sweep, compare_methods, decoding_grid,
                                   finetune_grid, pretrain_grid, pretraining_attention, pretraining_grid)
from workbench.study.stages import (PretrainResult, adapt, diffusion_loss_config, evaluate_model,
                                    finetune, held_out_source, lm_source, loss_config, model_config,
                                    pretrain, short_run, task_source, token_stream, tokenizer_for, tokenizer_home,
                                    train_diffusion_model, unigram_entropy, with_loss)

__all__ = [
    "METHODS", "GridCell", "PretrainResult", "adapt", "adaptation_sweep", "compare_methods", "decoding_grid",
    "diffusion_loss_config", "evaluate_model", "finetune", "finetune_grid",
    "held_out_source", "lm_source", "loss_config", "model_config", "pretrain", "pretrain_grid",
    "pretraining_attention", "pretraining_grid", "short_run", "task_source", "token_stream", "tokenizer_for",
    "tokenizer_home", "train_diffusion_model", "unigram_entropy", "with_loss",
]  # fmt: skip
