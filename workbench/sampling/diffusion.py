"""Diffusion decoding: a generic loop over a diffusion process (`workbench.processes`).

Each example starts from `num_samples` canvases (the process's `initial_canvas`: random
tokens for `uniform`, all-mask for `absorbing`), runs `num_steps` steps of the process's
`step` at `temperature`, and keeps the sample with the best model score. Returned with
the whole trajectory: per step the tokens, the model probability of each position's token
and which positions changed. The loop knows nothing of the process beyond those methods.

Score (the paper's reranking): mean negative log-probability of the final tokens under
the model's last step, computed at temperature 1; lower is better (`score_excludes_padding`
averages over text positions only). The decoding policy (`policy`; None: the process's
default, which is the paper's sampler) decides what each step commits.

The model's `canvas_denoiser` computes what it can once (for decoder-only models under
`prefix_diffusion` attention, the prompt's keys and values: `prefix_cache`; for
encoder-decoder models, the encoder and cross-attention keys/values). Every random draw
is keyed by (example id, sample, step), so an example decodes the same alone or in any batch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from workbench.distributed import constrain_batch, mesh_context, shard_batch
from workbench.models import DecoderOnly, EncoderDecoder
from workbench.objectives.batch import Batch
from workbench.sampling.config import SamplerConfig
from workbench.sampling.jit import sampler_jit


@dataclasses.dataclass(frozen=True)
class DiffusionSamplingConfig(SamplerConfig):
    """The shared sampler fields (`SamplerConfig`, with the paper's defaults here) and the
    full-canvas sampler's own."""

    num_samples: int = 8  # paper default
    num_steps: int = 10  # paper default
    temperature: float = 0.2  # paper default
    early_exit: bool = False  # stop when no sample changes in a step
    prefix_cache: bool = True  # used when the model's attention is prefix_diffusion
    score_excludes_padding: bool = False  # rerank on text positions only (tokens != pad_id)


class DiffusionOutput(NamedTuple):
    tokens: jax.Array  # [B, Tt] the chosen sample's final tokens
    chosen: jax.Array  # [B] index of the chosen sample
    scores: jax.Array  # [B, S] reranking scores (lower is better)
    trajectory: jax.Array  # [B, S, num_steps + 1, Tt] tokens; entry 0 is the initial canvas
    probs: jax.Array  # [B, S, num_steps, Tt] probability of each chosen token
    changed: jax.Array  # [B, S, num_steps, Tt] positions rewritten at each step
    steps_run: jax.Array  # [] steps actually run (< num_steps only with early_exit)


def _repeat(batch: Batch, n: int) -> Batch:
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), batch)


@sampler_jit(static_argnames=("config", "target_len", "mesh"))
def _sample(model, batch: Batch, rng, config: DiffusionSamplingConfig, target_len: int,
            mesh: Optional[Mesh] = None) -> DiffusionOutput:
    num_b, num_s, steps = batch.tokens.shape[0], config.num_samples, config.num_steps
    process = config.make_process(model.config.vocab_size)
    flat = _repeat(batch, num_s)  # [B*S, ...], sample-major within each example
    if mesh is not None:  # each device denoises the samples of its own examples
        flat = constrain_batch(flat, mesh)
    sample_idx = jnp.tile(jnp.arange(num_s, dtype=jnp.int32), num_b)
    keys = jax.vmap(lambda e, s: jax.random.fold_in(jax.random.fold_in(rng, e), s))(flat.example_ids, sample_idx)
    denoise = model.canvas_denoiser(flat, target_len, prompt_cache=config.prefix_cache)

    size = num_b * num_s
    policy = config.decoding_policy(process)
    canvas = process.initial_canvas(keys, target_len)
    traj = jnp.zeros((steps + 1, size, target_len), jnp.int32).at[0].set(canvas)
    probs = jnp.zeros((steps, size, target_len), jnp.float32)
    changed = jnp.zeros((steps, size, target_len), bool)

    def body(state):
        t, canvas, committed, traj, probs, changed, _ = state
        logits = denoise(canvas).astype(jnp.float32)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
        new, committed, p = process.step(t, steps, canvas, committed, logits, step_keys, config.temperature, policy)
        diff = new != canvas
        return (t + 1, new, committed, traj.at[t + 1].set(new), probs.at[t].set(p), changed.at[t].set(diff),
                jnp.any(diff))

    def cond(state):
        t, *_, any_changed = state
        keep_going = t < steps
        return keep_going & (any_changed | (t == 0)) if config.early_exit else keep_going

    committed = jnp.zeros((size, target_len), bool)
    t, canvas, _, traj, probs, changed, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), canvas, committed, traj, probs, changed, jnp.array(True))
    )
    last = jnp.maximum(t - 1, 0)
    final_probs = probs[last]  # [B*S, Tt]
    scores = rerank_scores(final_probs, canvas, config).reshape(num_b, num_s)
    chosen = jnp.argmin(scores, axis=-1)
    by_sample = canvas.reshape(num_b, num_s, target_len)
    tokens = jnp.take_along_axis(by_sample, chosen[:, None, None], axis=1)[:, 0]

    def per_example(x):  # [steps, B*S, Tt] -> [B, S, steps, Tt]
        return jnp.moveaxis(x, 0, 1).reshape(num_b, num_s, x.shape[0], target_len)

    return DiffusionOutput(tokens, chosen, scores, per_example(traj), per_example(probs), per_example(changed), t)


def rerank_scores(probs_BxN: jax.Array, tokens_BxN: jax.Array, config: DiffusionSamplingConfig) -> jax.Array:
    """Mean -log p of each row's tokens (lower is better). With `score_excludes_padding`,
    over its text positions only (tokens != pad_id); a row with none scores +inf, so an
    all-padding sample never wins over one with text."""
    return mean_nll(probs_BxN, tokens_BxN != config.pad_id if config.score_excludes_padding else None)


def mean_nll(probs_BxN: jax.Array, where_BxN: Optional[jax.Array] = None) -> jax.Array:
    """Each row's mean -log p over the positions `where` (all when None); +inf for a row with
    none, so it never wins a reranking."""
    nll = -jnp.log(jnp.maximum(probs_BxN, 1e-30))
    if where_BxN is None:
        return jnp.mean(nll, axis=-1)
    count = jnp.sum(where_BxN, axis=-1)
    return jnp.where(count > 0, jnp.sum(nll * where_BxN, axis=-1) / jnp.maximum(count, 1), jnp.inf)


def length_report(tokens_BxN, eos_id: int = 1, pad_id: int = 0) -> dict:
    """Per sample: `eos_position` (first EOS, -1 if none), `text_length` (tokens before the
    first EOS, or up to the first padding when there is no EOS) and `padding_fraction`
    (share of positions holding pad_id). numpy arrays [B]."""
    tokens = np.asarray(tokens_BxN)
    is_eos, is_pad = tokens == eos_id, tokens == pad_id
    width = tokens.shape[-1]
    eos_position = np.where(is_eos.any(-1), is_eos.argmax(-1), -1)
    first_pad = np.where(is_pad.any(-1), is_pad.argmax(-1), width)
    text_length = np.where(eos_position >= 0, eos_position, first_pad)
    return {"eos_position": eos_position, "text_length": text_length,
            "padding_fraction": is_pad.mean(-1) if width else np.zeros(tokens.shape[:-1])}


def diffusion_sample(
    model: DecoderOnly | EncoderDecoder,
    batch: Batch,
    config: DiffusionSamplingConfig,
    rng: Optional[jax.Array] = None,
    target_len: Optional[int] = None,
    mesh: Optional[Mesh] = None,
) -> DiffusionOutput:
    """Decode the targets of `batch` (built with `seq2seq_batch(..., pad_targets=True)`;
    target tokens present in it are ignored).

    With a `mesh`, the batch is split over its batch axes (its size must divide by
    data*fsdp) and the model should already be placed on it (`workbench.distributed.shard_module`)."""
    if model.config.attention in ("causal", "prefix_lm"):
        raise ValueError(
            f"diffusion decoding needs a bidirectional denoiser; this model has attention="
            f"{model.config.attention!r}. Switch it with with_attention(model, 'bidirectional') (AR2Diff)."
        )
    target_len = int(batch.targets.shape[1]) if target_len is None else target_len
    rng = jax.random.key(0) if rng is None else rng
    batch = jax.tree.map(jnp.asarray, batch) if mesh is None else shard_batch(batch, mesh)
    with mesh_context(mesh):
        return _sample(model, batch, rng, config, target_len, mesh=mesh)
