"""Diffusion decoding: SUNDAE-style iterative resampling and masked (absorbing) decoding.

Each example starts from `num_samples` random target canvases (SUNDAE) or all-mask
canvases (masked), runs `num_steps` denoising steps at `temperature`, and keeps the
sample with the best model score. Returned with the whole trajectory: per step the
tokens, the model probability of each chosen token and which positions changed.

Score (the paper's reranking): mean negative log-probability of the final tokens under
the model's last step, computed at temperature 1; lower is better.

Targets sit at positions [prefix_len[b], prefix_len[b] + Tt) of the decoder-only layout
(see `workbench.objectives.batch`). When the model's attention is `prefix_diffusion`, the
inputs never see the targets, so their keys and values are computed once per example and
each step runs the denoiser over the Tt target positions only (`prefix_cache`), which
equals full recomputation. Every random draw is keyed by (example id, sample, step),
so an example decodes the same alone or in any batch.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from workbench.attention import AttentionMask
from workbench.distributed import constrain_batch, mesh_context, shard_batch
from workbench.models import DecoderOnly, EncoderDecoder
from workbench.objectives.batch import Batch
from workbench.objectives.losses import denoiser_logits, non_special_ids


@dataclasses.dataclass(frozen=True)
class DiffusionSamplingConfig:
    num_samples: int = 8  # paper default
    num_steps: int = 10  # paper default
    temperature: float = 0.2  # paper default
    method: Literal["sundae", "masked"] = "sundae"
    early_exit: bool = False  # stop when no sample changes in a step
    prefix_cache: bool = True  # used when the model's attention is prefix_diffusion
    special_ids: tuple[int, ...] = (0, 1, 2)  # never drawn for the random initial canvas
    mask_id: int = 3  # masked method's absorbing token

    def __post_init__(self):
        if self.num_samples < 1 or self.num_steps < 1:
            raise ValueError(f"num_samples={self.num_samples} and num_steps={self.num_steps} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0: argmax)")
        if self.method not in ("sundae", "masked"):
            raise ValueError(f"method={self.method!r}; expected 'sundae' or 'masked'")


class DiffusionOutput(NamedTuple):
    tokens: jax.Array  # [B, Tt] the chosen sample's final tokens
    chosen: jax.Array  # [B] index of the chosen sample
    scores: jax.Array  # [B, S] reranking scores (lower is better)
    trajectory: jax.Array  # [B, S, num_steps + 1, Tt] tokens; entry 0 is the initial canvas
    probs: jax.Array  # [B, S, num_steps, Tt] probability of each chosen token
    changed: jax.Array  # [B, S, num_steps, Tt] positions rewritten at each step
    steps_run: jax.Array  # [] steps actually run (< num_steps only with early_exit)


def target_positions(batch: Batch, target_len: int) -> jax.Array:
    return batch.prefix_len[:, None] + jnp.arange(target_len, dtype=jnp.int32)[None, :]


def _repeat(batch: Batch, n: int) -> Batch:
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), batch)


def _draw(keys, logits, temperature):
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.vmap(lambda k, l: jax.random.categorical(k, l / temperature))(keys, logits).astype(jnp.int32)


class _Denoiser:
    """Logits at the target positions of a canvas, with whatever can be computed once."""

    def __init__(self, model, batch: Batch, target_len: int, use_cache: bool):
        self.model, self.batch, self.target_len = model, batch, target_len
        self.encdec = isinstance(model, EncoderDecoder)
        self.positions = None if self.encdec else target_positions(batch, target_len)
        self.cache = None
        if self.encdec:
            self.cross = model.cross_kv(model.encode(batch.inputs, batch.input_lengths))
        elif use_cache:
            size, width = batch.tokens.shape
            full_pos = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (size, width))
            mask = model.make_mask(size, width, prefix_len=batch.prefix_len, lengths=batch.lengths,
                                   q_offset=jnp.zeros((size,), jnp.int32))
            _, self.cache = model.forward_cached(batch.tokens, full_pos, mask, model.init_cache(size, width))

    def __call__(self, canvas_BxT: jax.Array) -> jax.Array:
        batch = self.batch
        if self.encdec:
            return self.model.decode(canvas_BxT, self.cross, batch.input_lengths, batch.target_lengths)
        if self.cache is not None:
            mask = AttentionMask(causal=False, prefix_len=batch.prefix_len, kv_lengths=batch.lengths,
                                 q_offset=batch.prefix_len)
            logits, _ = self.model.forward_cached(canvas_BxT, self.positions, mask, self.cache)
            return logits
        tokens = jax.vmap(lambda row, pos, vals: row.at[pos].set(vals))(batch.tokens, self.positions, canvas_BxT)
        logits = denoiser_logits(self.model, batch, tokens)
        return jnp.take_along_axis(logits, self.positions[:, :, None], axis=1)


@partial(nnx.jit, static_argnames=("config", "target_len", "mesh"))
def _sample(model, batch: Batch, rng, config: DiffusionSamplingConfig, target_len: int,
            mesh: Optional[Mesh] = None) -> DiffusionOutput:
    num_b, num_s, steps = batch.tokens.shape[0], config.num_samples, config.num_steps
    flat = _repeat(batch, num_s)  # [B*S, ...], sample-major within each example
    if mesh is not None:  # each device denoises the samples of its own examples
        flat = constrain_batch(flat, mesh)
    sample_idx = jnp.tile(jnp.arange(num_s, dtype=jnp.int32), num_b)
    keys = jax.vmap(lambda e, s: jax.random.fold_in(jax.random.fold_in(rng, e), s))(flat.example_ids, sample_idx)
    use_cache = config.prefix_cache and not isinstance(model, EncoderDecoder) and model.config.attention == "prefix_diffusion"
    denoise = _Denoiser(model, flat, target_len, use_cache)

    size = num_b * num_s
    if config.method == "sundae":
        allowed = non_special_ids(model.config.vocab_size, config.special_ids)
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 10**6))(keys)
        canvas = allowed[jax.vmap(lambda k: jax.random.randint(k, (target_len,), 0, allowed.shape[0]))(init_keys)]
    else:
        canvas = jnp.full((size, target_len), config.mask_id, jnp.int32)

    traj = jnp.zeros((steps + 1, size, target_len), jnp.int32).at[0].set(canvas)
    probs = jnp.zeros((steps, size, target_len), jnp.float32)
    changed = jnp.zeros((steps, size, target_len), bool)

    def body(state):
        t, canvas, traj, probs, changed, _ = state
        logits = denoise(canvas).astype(jnp.float32)
        if config.method == "masked":  # never "reveal" the mask token itself
            logits = logits.at[..., config.mask_id].set(-jnp.inf)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
        draw = _draw(step_keys, logits, config.temperature)
        p = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), draw[..., None], axis=-1)[..., 0]
        if config.method == "sundae":
            new = draw
        else:
            # low-confidence remasking: by the end of step t, (t+1)/steps of the canvas is unmasked
            masked = canvas == config.mask_id
            keep_n = jnp.ceil(target_len * (t + 1) / steps).astype(jnp.int32)
            confidence = jnp.where(masked, p, jnp.inf)  # already-unmasked tokens stay
            rank = jnp.argsort(jnp.argsort(-confidence, axis=-1), axis=-1)
            reveal = masked & (rank < keep_n)
            new = jnp.where(reveal, draw, canvas)
            p = jnp.where(masked, p, 1.0)
        diff = new != canvas
        return (t + 1, new, traj.at[t + 1].set(new), probs.at[t].set(p), changed.at[t].set(diff), jnp.any(diff))

    def cond(state):
        t, *_, any_changed = state
        keep_going = t < steps
        return keep_going & (any_changed | (t == 0)) if config.early_exit else keep_going

    t, canvas, traj, probs, changed, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), canvas, traj, probs, changed, jnp.array(True))
    )
    last = jnp.maximum(t - 1, 0)
    final_probs = probs[last]  # [B*S, Tt]
    scores = -jnp.mean(jnp.log(jnp.maximum(final_probs, 1e-30)), axis=-1).reshape(num_b, num_s)
    chosen = jnp.argmin(scores, axis=-1)
    by_sample = canvas.reshape(num_b, num_s, target_len)
    tokens = jnp.take_along_axis(by_sample, chosen[:, None, None], axis=1)[:, 0]

    def per_example(x):  # [steps, B*S, Tt] -> [B, S, steps, Tt]
        return jnp.moveaxis(x, 0, 1).reshape(num_b, num_s, x.shape[0], target_len)

    return DiffusionOutput(tokens, chosen, scores, per_example(traj), per_example(probs), per_example(changed), t)


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
