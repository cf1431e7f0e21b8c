"""AR2Diff: turn an AR checkpoint into a diffusion model.

1. pretrain a decoder-only AR model (causal attention, prefix-LM objective);
2. load it, switch attention to bidirectional (or prefix_diffusion, or block_causal with a
   `block_size`: block diffusion), and continue pretraining on the same corpus with the
   diffusion loss for N steps (N = 0 allowed);
3. fine-tune as a diffusion model (any `train` call on a task source).

At the start of stage 2 the parameters equal the AR checkpoint bitwise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from workbench.models import with_attention
from workbench.training.checkpoint import load_model
from workbench.training.trainer import TrainConfig, TrainResult, train

DIFFUSION_ATTENTION = ("bidirectional", "prefix_diffusion", "block_causal")


def ar2diff(
    ar,
    out_dir: Path | str,
    source,
    config: TrainConfig,
    *,
    attention: str = "bidirectional",
    block_size: Optional[int] = None,
    ar_step: Optional[int] = None,
    eval_fn=None,
    data_info: Optional[dict] = None,
    mesh=None,
    allow_config_change: bool = False,
) -> TrainResult:
    """Stage 2: the AR model under `attention`, trained `config.steps` diffusion steps into
    `out_dir` (checkpoint step 0 is the unchanged AR model).

    `ar` is an AR run directory (its latest checkpoint, or `ar_step`) or a model in memory,
    such as an imported one; a model in memory keeps its own `block_size` when `attention`
    is already its attention and `block_size` is None."""
    if attention not in DIFFUSION_ATTENTION:
        raise ValueError(f"attention={attention!r}; AR2Diff switches to one of {DIFFUSION_ATTENTION}")
    if config.loss.kind == "ar":
        raise ValueError("AR2Diff's adaptation stage trains a diffusion loss; set config.loss.kind to "
                         "a diffusion process: 'uniform' (the paper) or 'absorbing'")
    if isinstance(ar, (str, Path)):
        model, loaded_step = load_model(ar, step=ar_step, mesh=mesh, attention=attention, block_size=block_size)
        origin = {"ar_run_dir": str(Path(ar).resolve()), "ar_step": loaded_step}
    else:
        if ar_step is not None:
            raise ValueError(f"ar_step={ar_step} picks a checkpoint of a run directory; `ar` is a model in memory")
        if block_size is None and attention == ar.config.attention:
            block_size = ar.config.block_size
        model, origin = with_attention(ar, attention, block_size), {"ar": "model in memory"}
    extra = {"ar2diff": {**origin, "attention": attention, "block_size": block_size, "adaptation_steps": config.steps}}
    return train(model, config, source, out_dir, eval_fn=eval_fn, data_info=data_info, extra_info=extra, mesh=mesh,
                 allow_config_change=allow_config_change)


def adaptation_config(base: TrainConfig, steps: int) -> TrainConfig:
    """The stage-2 config for AR2Diff_N: the diffusion loss for `steps` steps."""
    loss = base.loss if base.loss.kind != "ar" else dataclasses.replace(base.loss, kind="uniform")
    return dataclasses.replace(base, steps=steps, loss=loss)
