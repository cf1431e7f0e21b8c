"""AR2Diff from a real pretrained model, as the calls notebook 07 makes.

load (`workbench.pretrained.load_pretrained`; `describe`) -> AR answers to chat prompts (`ar_answers`) ->
a mask token, the diffusion attention and the target shift (`prepare_for_diffusion`) -> the
adaptation stage through `study.adapt`, the same call as for a workbench-trained model ->
diffusion answers with their denoising trajectory (`diffusion_answers`). AR vs diffusion
decode time on the same weights: `workbench.benchmarks.pretrained.speed_comparison`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import jax
import numpy as np
import pandas as pd

from workbench.data.special import MaskToken, ar_ids
from workbench.models.transformer import with_attention, with_config
from workbench.objectives.batch import seq2seq_batch
from workbench.pretrained import Pretrained, with_mask_token
from workbench.sampling.ar import ARSamplingConfig, generate
from workbench.sampling.diffusion import DiffusionSamplingConfig, diffusion_sample
from workbench.viz.trajectory import Trajectory, trajectory_from_output


def describe(pretrained: Pretrained) -> str:
    """An imported model in two lines: its name, kind, license and shape; its tokenizer's special ids."""
    source, config, tokenizer = pretrained.source, pretrained.config, pretrained.tokenizer
    return (f"{source.name} ({source.kind}, {source.license}): {config.num_layers} layers, d_model {config.d_model}, "
            f"vocabulary {tokenizer.vocab_size}\nspecial ids: {tokenizer.specials.describe()}")


def prompt_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt as one user turn of the model's chat template (an instruct model answers
    it), or as plain text where the model has no template."""
    if tokenizer.chat_template:
        return [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    return [tokenizer.encode(p) for p in prompts]


def right_padded(ids: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rows right-padded to the longest, rounded up to `multiple` (fewer distinct shapes to compile)."""
    width = max(len(row) for row in ids)
    width = -(-width // multiple) * multiple
    out = np.full((len(ids), width), pad_id, np.int32)
    for i, row in enumerate(ids):
        out[i, : len(row)] = row
    return out, np.asarray([len(row) for row in ids], np.int32)


def ar_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
               seed: int = 0) -> pd.DataFrame:
    """The AR model's answers (KV-cached, greedy at temperature 0), one row per prompt, with the
    wall time of the whole batch (compilation included on the first call)."""
    ids = prompt_ids(tokenizer, prompts)
    prompts_BxP, lengths = right_padded(ids, tokenizer.specials.pad)
    config = ARSamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, **ar_ids(tokenizer))
    started = time.perf_counter()
    out = generate(model, prompts_BxP, lengths, config, jax.random.key(seed))
    tokens = np.asarray(out.tokens)
    seconds = time.perf_counter() - started
    return pd.DataFrame({"prompt": list(prompts), "answer": tokenizer.decode_batch(tokens),
                         "new_tokens": np.asarray(out.lengths).tolist(), "batch_seconds": round(seconds, 2)})


def prepare_for_diffusion(pretrained: Pretrained, *, process: str = "absorbing", mask: MaskToken = MaskToken(),
                          attention: str = "prefix_diffusion", shift_targets: bool = True,
                          block_size: Optional[int] = None) -> Pretrained:
    """The imported model ready for AR2Diff's adaptation stage: a mask token when `process`
    needs one (`with_mask_token`), `attention` (the prompt stays causal under prefix_diffusion;
    'block_causal' with `block_size` for block diffusion) and `shift_targets` (True keeps the
    pretrained head's next-token meaning; False is the paper's form). Parameters are unchanged
    apart from the mask token's new row."""
    from workbench.processes import get_process_class

    if pretrained.tokenizer is None:
        raise ValueError(f"{pretrained.source.location!r} was loaded without a tokenizer; diffusion needs its special "
                         "ids: load it with tokenizer=True (a GGUF file, or a folder with tokenizer.json)")
    if get_process_class(process).uses_mask and pretrained.tokenizer.specials.mask is None:
        pretrained = with_mask_token(pretrained, mask)
    model = with_attention(pretrained.model, attention, block_size)
    if shift_targets != model.config.shift_targets:
        model = with_config(model, shift_targets=shift_targets)
    return dataclasses.replace(pretrained, model=model, config=model.config)


def diffusion_answers(model, tokenizer, prompts: Sequence[str], *, target_len: int,
                      sampling: DiffusionSamplingConfig, seed: int = 0) -> tuple[pd.DataFrame, list[Trajectory]]:
    """Diffusion decoding of a `target_len` canvas after each (chat-templated) prompt: the answers
    and each prompt's denoising trajectory (every step's canvas, for `workbench.viz`)."""
    ids = prompt_ids(tokenizer, prompts)
    input_len = max(len(row) for row in ids)
    batch = seq2seq_batch(ids, [[] for _ in ids], input_len=input_len, target_len=target_len,
                          pad_id=tokenizer.specials.pad, pad_targets=True)
    started = time.perf_counter()
    out = diffusion_sample(model, batch, sampling, jax.random.key(seed))
    tokens = np.asarray(out.tokens)
    seconds = time.perf_counter() - started
    trajectories = [trajectory_from_output(out, tokenizer, i, prompt=p) for i, p in enumerate(prompts)]
    table = pd.DataFrame({"prompt": list(prompts), "answer": tokenizer.decode_batch(tokens),
                          "batch_seconds": round(seconds, 2)})
    return table, trajectories


def trajectory_table(trajectory: Trajectory, sample: Optional[int] = None) -> pd.DataFrame:
    """One row per denoising step of `sample` (default: the chosen one): the canvas as text."""
    sample = trajectory.chosen if sample is None else sample
    texts = trajectory.texts[sample]
    return pd.DataFrame({"step": range(len(texts)), "canvas": ["".join(p) for p in trajectory.pieces[sample]],
                         "text": texts})
