"""Training a block drafter on a frozen AR model: the AR2Diff stage with adapters.

The converted model is the AR model plus an adapter (`workbench.models.lora`). The adapter
is on only where the model drafts: a block of b target tokens whose first token the AR model
itself predicts (the shifted-target convention: token j is read from position j - 1) and whose
other b - 1 tokens are masked or partly revealed. Everything before the block is committed text
whose keys and values are the AR model's own (adapter off, causal attention): at decoding time
the same cache serves the AR verifier and the drafter, and the verifier is exactly the AR model.

One training step runs two passes (`draft_loss`):
1. the clean row with the adapter off under causal attention, without gradients: the teacher's
   next-token distributions (for distillation) and every layer's keys and values;
2. the noisy copy of the target region with the adapter on, under a draft-stream mask
   (`AttentionMask.draft_stream`): a noisy block sees the clean keys strictly before it and its
   own block, exactly what it sees when it is drafted after the blocks before it were committed.

Objectives (`DraftConfig.objective`): `distill` matches the student's distribution at each
masked position to the frozen AR model's next-token distribution at the same target, computed
on the clean sequence (KL(teacher || student)); `ce` is the masked-diffusion cross-entropy on the
data's tokens; `distill+ce` adds both. On the AR model's own greedy text (`workbench.data.drafting`)
`ce` is sequence-level distillation. The mask token's logit never counts: the teacher's and the
student's distributions are over the AR vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from workbench.attention import AttentionMask, mask_for_kind
from workbench.models.lora import adapter_gate
from workbench.objectives.batch import Batch
from workbench.processes import cross_entropy
from workbench.processes.loss_metrics import LossMetrics

DRAFT_OBJECTIVES = ("distill", "ce", "distill+ce")


@dataclasses.dataclass(frozen=True)
class DraftConfig:
    block_size: int = 4  # tokens per drafted block; the first is the AR model's own prediction
    objective: str = "distill"  # one of DRAFT_OBJECTIVES
    all_masked: float = 0.5  # share of blocks with every draftable token masked (a one-step draft)

    def __post_init__(self):
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 2:
            raise ValueError(f"DraftConfig.block_size={self.block_size!r}: expected an int >= 2 (a block's first "
                             f"token is the AR model's; the drafter predicts the other block_size - 1)")
        if self.objective not in DRAFT_OBJECTIVES:
            raise ValueError(f"DraftConfig.objective={self.objective!r}: expected one of {DRAFT_OBJECTIVES}")
        if not 0.0 <= self.all_masked <= 1.0:
            raise ValueError(f"DraftConfig.all_masked={self.all_masked!r}: expected a share in [0, 1]")


def check_drafter(model) -> None:
    """A drafter is a decoder-only causal model with adapters (so switching them off is the AR model)."""
    cfg = model.config
    if not cfg.arch_spec.decoder_only:
        raise ValueError(f"a block drafter is a decoder-only model; got arch={cfg.arch!r}")
    if cfg.lora is None:
        raise ValueError("a block drafter needs adapters (workbench.models.lora.with_lora(model, LoRAConfig(...))): "
                         "the adapter drafts and the frozen base is the AR teacher and verifier")
    if cfg.attention not in ("causal", "prefix_lm"):
        raise ValueError(f"a block drafter keeps the AR model's causal attention; this model has "
                         f"attention={cfg.attention!r} (load the AR model as it was trained)")


def draft_noise(rng: jax.Array, example_ids_B: jax.Array, num_targets: int, config: DraftConfig) -> jax.Array:
    """[B, Tt] bool: which target tokens are masked. Per example and block: with probability
    `all_masked` every draftable token, else each with probability t ~ U(0, 1). A block's first
    token is never masked (the AR model gives it). Keys depend on the example id only."""
    b = config.block_size
    blocks = -(-num_targets // b)

    def one(example_id):
        key_full, key_rate, key_tokens = jax.random.split(jax.random.fold_in(rng, example_id), 3)
        full = jax.random.uniform(key_full, (blocks, 1)) < config.all_masked
        rate = jax.random.uniform(key_rate, (blocks, 1))
        masked = full | (jax.random.uniform(key_tokens, (blocks, b)) < rate)
        return masked.at[:, 0].set(False).reshape(-1)[:num_targets]

    return jax.vmap(one)(example_ids_B)


def _gather_rows(x_BxWxD: jax.Array, positions_BxN: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_BxWxD, positions_BxN[:, :, None], axis=1)


def draft_forward(model, batch: Batch, noisy_BxT: jax.Array, block_size: int):
    """(teacher logits, student logits) [B, Tt, V] for the targets at prefix_len + [0, Tt):
    position i's logits predict target token i. The teacher's come from the clean row with the
    adapter off (stopped gradients); the student's from the noisy target stream with it on.
    A block's first token is predicted by the teacher in both (the AR model drafts it)."""
    size, width = batch.tokens.shape
    num_targets = noisy_BxT.shape[1]
    zeros = jnp.zeros((size,), jnp.int32)
    row_pos = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (size, width))
    with adapter_gate(False):
        clean_mask = mask_for_kind("causal", kv_lengths=batch.lengths, q_offset=zeros)
        hidden, contexts = model.hidden_cached(batch.tokens, row_pos, clean_mask, model.init_cache(size, width))
        hidden, contexts = jax.lax.stop_gradient((hidden, contexts))
        # target i is read from position prefix_len + i - 1
        before = batch.prefix_len[:, None] - 1 + jnp.arange(num_targets, dtype=jnp.int32)[None, :]
        teacher = jax.lax.stop_gradient(model.embedder.logits(_gather_rows(hidden, jnp.maximum(before, 0))))
    positions = batch.prefix_len[:, None] + jnp.arange(num_targets, dtype=jnp.int32)[None, :]
    mask = AttentionMask.draft_stream(block_size, prefix_len=batch.prefix_len, q_offset=batch.prefix_len,
                                      kv_lengths=batch.lengths)
    noisy_hidden = model.draft_hidden(noisy_BxT, positions, mask, contexts)
    student = model.embedder.logits(noisy_hidden)
    # shift: target i (not first in its block) is read from noisy position i - 1
    student = jnp.concatenate([teacher[:, :1], student[:, :-1]], axis=1)
    first = (jnp.arange(num_targets) % block_size == 0)[None, :, None]
    return teacher, jnp.where(first, teacher, student)


def _without(logits, mask_id: int):
    """The mask token's logit out of the distribution (a large finite negative, so 0 * log stays 0)."""
    return logits.at[..., mask_id].set(-1e9) if 0 <= mask_id < logits.shape[-1] else logits


def draft_loss(model, batch: Batch, rng: jax.Array, config) -> tuple[jax.Array, LossMetrics]:
    """The drafter's loss (`LossConfig(kind="draft", draft=DraftConfig(...))`), a mean over the
    masked target tokens; metrics: agreement of the student's argmax with the teacher's and with
    the data's token, by position in the block too (`agree_at_<i>`)."""
    draft: DraftConfig = config.draft
    check_drafter(model)
    if batch.segment_ids is not None:
        raise ValueError("drafter training takes unpacked [inputs | targets] rows (segment_ids=None); build the "
                         "batch with seq2seq_batch")
    targets = batch.targets
    num_targets = targets.shape[1]
    masked = draft_noise(rng, batch.example_ids, num_targets, draft)
    noisy = jnp.where(masked, config.mask_id, targets)
    teacher, student = draft_forward(model, batch, noisy, draft.block_size)
    teacher, student = _without(teacher, config.mask_id), _without(student, config.mask_id)
    real = jnp.arange(num_targets)[None, :] < batch.target_lengths[:, None]
    weights = (masked & real).astype(jnp.float32)
    log_s = jax.nn.log_softmax(student, axis=-1)
    log_t = jax.nn.log_softmax(teacher, axis=-1)
    kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
    ce = cross_entropy(student, targets)
    per_token = {"distill": kl, "ce": ce, "distill+ce": kl + ce}[draft.objective]
    loss = jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    guess = jnp.argmax(student, axis=-1)
    agree = (guess == jnp.argmax(teacher, axis=-1)).astype(jnp.float32)
    offset = jnp.arange(num_targets) % draft.block_size
    by_offset = {f"agree_at_{i}": (agree, weights * (offset == i)[None, :]) for i in range(1, draft.block_size)}
    return loss, LossMetrics.of(loss, weights, agreement=(agree, weights), kl=(kl, weights), ce=(ce, weights),
                                accuracy=((guess == targets).astype(jnp.float32), weights), **by_offset)
