"""Draft a block by diffusion, verify it with the AR model: one set of weights, one KV cache.

The model is an AR model with a drafter adapter (`workbench.objectives.drafting`). Each
iteration, for every example at committed length L (its next token t0 already decided by
the AR model):

1. **draft** (adapter on): the canvas [t0, mask, ..., mask] at positions L .. L + b - 1 runs
   against the cache, each position seeing the committed text and its whole block; token
   L + i is read from position L + i - 1 (shifted targets). `draft_steps` > 1 reveals the
   most confident positions first and reruns the rest.
2. **verify** (adapter off, causal): the drafted block runs as the AR model would run it. The
   AR model's logits at L + i - 1 judge draft token i: greedy keeps the longest prefix equal to
   the AR model's argmax; with temperature, speculative sampling's rule (accept with
   probability min(1, p/q), else draw from the residual max(0, p - q)), so the output
   follows the AR model's distribution exactly. The AR model's next token after the last kept
   one comes from the same pass, so every iteration commits at least one token.

The verify pass writes the AR model's keys and values for the whole block; positions after the
kept ones are overwritten by the next iteration before anything reads them, so the cache always
equals the AR model's own (`tests/test_speculative.py` checks this against recomputation).

With `verify=False` every drafted token is kept (lossy block decoding by the drafter, 2
passes per block of b tokens with one draft step); the verify pass then only commits.

Greedy output with `verify=True` (and `leniency=1`) is the AR model's greedy output token for token. Random draws
are keyed by (example id, iteration, purpose), so an example decodes the same in any batch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from workbench.attention import mask_for_kind
from workbench.models.lora import adapter_gate
from workbench.objectives.drafting import check_drafter
from workbench.sampling.ar import prepare_prompts
from workbench.sampling.jit import sampler_jit

_NEG = -1e9


@dataclasses.dataclass(frozen=True)
class SpeculativeConfig:
    block_size: int = 4  # tokens per iteration at most: the AR model's next token and block_size - 1 drafted
    draft_steps: int = 1  # drafter passes per block (1: every drafted token at once)
    verify: bool = True  # False: keep every drafted token (lossy block decoding)
    # Greedy verification keeps a drafted token when the AR model gives it at least `leniency` times the
    # probability of its own top token: 1 is exactly the AR model's greedy output; below 1 it is lossy
    # (the greedy form of Medusa's "typical acceptance"); 0 keeps every draft, as verify=False does.
    leniency: float = 1.0
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    eos_id: Optional[int] = 1  # None: never stop early
    pad_id: int = 0
    mask_id: int = 3  # the drafter's mask token (never emitted)

    @classmethod
    def for_tokenizer(cls, tokenizer, **options) -> "SpeculativeConfig":
        """The config with the tokenizer's EOS, padding and mask ids (the tokenizer has the mask token:
        `workbench.pretrained.with_mask_token`)."""
        specials = tokenizer.specials
        return cls(eos_id=specials.eos, pad_id=specials.pad, mask_id=specials.mask, **options)

    def __post_init__(self):
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 2:
            raise ValueError(f"block_size={self.block_size!r}: expected an int >= 2 (the AR model's next token "
                             f"plus at least one drafted token)")
        if not 1 <= self.draft_steps <= self.block_size - 1:
            raise ValueError(f"draft_steps={self.draft_steps}: expected 1 .. block_size - 1 = {self.block_size - 1} "
                             f"(each step reveals at least one drafted token)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be positive")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if not 0.0 <= self.leniency <= 1.0:
            raise ValueError(f"leniency={self.leniency}: expected 0 .. 1 (1: exactly the AR model's greedy output)")
        if self.leniency < 1.0 and (self.temperature > 0 or not self.verify):
            raise ValueError(f"leniency={self.leniency} applies to greedy verification only (temperature=0, "
                             f"verify=True; got temperature={self.temperature}, verify={self.verify}): with "
                             f"temperature the speculative-sampling rule decides; set leniency=1.0")
        if self.temperature > 0 and self.draft_steps > 1:
            raise ValueError(f"temperature={self.temperature} with draft_steps={self.draft_steps}: exact speculative "
                             f"sampling needs each drafted token drawn from a distribution that depends on the tokens "
                             f"before it only; multi-step drafts reveal them out of order. Use draft_steps=1")


class SpeculativeOutput(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens], pad after EOS
    lengths: jax.Array  # [B] tokens generated, EOS included
    iterations: jax.Array  # [B] draft-verify iterations each example ran until it stopped
    passes: jax.Array  # [] forward passes run (the prompt pass included)
    accepted_at: jax.Array  # [block_size - 1] per draft position: how many drafts kept it (stopped rows excluded)
    drafted_at: jax.Array  # [block_size - 1] per draft position: how many drafts offered it
    kept: jax.Array  # [B, max_new_tokens] bool: the token was a kept draft (False: the AR model's own token)
    drafts: jax.Array  # [B, max_new_tokens, block_size]: each iteration's drafted block (its trajectory)
    committed: jax.Array  # [B, max_new_tokens]: tokens each iteration committed (0 once the example stopped)


def _sample(logits_BxV, keys_B, temperature: float):
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.vmap(jax.random.categorical)(keys_B, logits_BxV / temperature).astype(jnp.int32)


def _keys(rng, example_ids, iteration, purpose: int):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, i), iteration),
                                                 purpose))(example_ids)


def _draft(model, cache, tokens_BxB, start_B, config: SpeculativeConfig, keys_B):
    """Drafted tokens [B, b] (position 0 kept), their draft logits [B, b, V] (row i: token i's)."""
    b = config.block_size
    positions = start_B[:, None] + jnp.arange(b, dtype=jnp.int32)[None, :]
    mask = mask_for_kind("bidirectional", kv_lengths=start_B + b, q_offset=start_B)
    hidden_mask = jnp.zeros(tokens_BxB.shape, bool).at[:, 1:].set(True)  # still masked
    canvas = jnp.where(hidden_mask, config.mask_id, tokens_BxB)
    draft_logits = jnp.zeros(tokens_BxB.shape + (model.config.vocab_size,), jnp.float32)
    per_step = -(-(b - 1) // config.draft_steps)
    for step in range(config.draft_steps):
        with adapter_gate(True):
            logits, _ = model.forward_cached(canvas, positions, mask, cache)
        logits = jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1).at[..., config.mask_id].set(_NEG)
        if config.temperature == 0.0:
            guess = jnp.argmax(logits, -1).astype(jnp.int32)
        else:
            guess = jax.vmap(lambda k, x: jax.random.categorical(jax.random.fold_in(k, step), x / config.temperature)
                             )(keys_B, logits).astype(jnp.int32)
        if step == config.draft_steps - 1:
            reveal = hidden_mask
        else:  # the most confident still-masked positions
            confidence = jnp.where(hidden_mask, jnp.max(jax.nn.log_softmax(logits, -1), -1), -jnp.inf)
            rank = jnp.argsort(jnp.argsort(-confidence, axis=1), axis=1)
            reveal = hidden_mask & (rank < per_step)
        canvas = jnp.where(reveal, guess, canvas)
        draft_logits = jnp.where(reveal[..., None], logits, draft_logits)
        hidden_mask = hidden_mask & ~reveal
    return canvas, draft_logits


@sampler_jit(static_argnames=("config",))
def _speculate(model, prompts, prompt_lengths, rng, example_ids, config: SpeculativeConfig) -> SpeculativeOutput:
    size, width = prompts.shape
    b, limit = config.block_size, config.max_new_tokens
    cache = model.init_cache(size, width + limit + b)
    zeros = jnp.zeros((size,), jnp.int32)
    with adapter_gate(False):
        positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (size, width))
        logits, cache = model.forward_cached(prompts, positions, mask_for_kind("causal", q_offset=zeros,
                                                                               kv_lengths=prompt_lengths), cache)
    last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0].at[:, config.mask_id].set(_NEG)
    first = _sample(last, _keys(rng, example_ids, 0, 0), config.temperature)
    offsets = jnp.arange(b, dtype=jnp.int32)

    def cond(state):
        return ~jnp.all(state["done"])

    def body(state):
        it = state["iteration"] + 1
        start = prompt_lengths + state["count"]  # committed length L
        block = jnp.zeros((size, b), jnp.int32).at[:, 0].set(state["next"])
        drafted, q_logits = _draft(model, state["cache"], block, start, config, _keys(rng, example_ids, it, 1))
        with adapter_gate(False):
            v_logits, cache = model.forward_cached(drafted, start[:, None] + offsets[None, :],
                                                   mask_for_kind("causal", q_offset=start), state["cache"])
        v_logits = v_logits.at[..., config.mask_id].set(_NEG)
        # p_i judges draft token i (i = 1 .. b-1) from the AR logits at position i - 1
        p_logits = v_logits[:, :-1]
        candidates = drafted[:, 1:]
        if not config.verify:
            accept = jnp.ones(candidates.shape, bool)
        elif config.temperature == 0.0 and config.leniency == 1.0:
            accept = jnp.argmax(p_logits, -1) == candidates
        elif config.temperature == 0.0:  # lenient: p(draft) >= leniency * p(top token); log(0) = -inf keeps all
            log_p = jax.nn.log_softmax(p_logits, -1)
            drafted_log_p = jnp.take_along_axis(log_p, candidates[..., None], -1)[..., 0]
            accept = drafted_log_p >= jnp.max(log_p, -1) + jnp.log(jnp.float32(config.leniency))
        else:
            p = jax.nn.softmax(p_logits / config.temperature, -1)
            q = jax.nn.softmax(q_logits[:, 1:] / config.temperature, -1)
            pick = lambda x: jnp.take_along_axis(x, candidates[..., None], -1)[..., 0]
            u = jax.vmap(lambda k: jax.random.uniform(k, (b - 1,)))(_keys(rng, example_ids, it, 2))
            accept = u * pick(q) <= pick(p)
        kept = jnp.cumprod(accept.astype(jnp.int32), axis=1)  # [B, b-1]: a prefix of accepted drafts
        n_kept = jnp.sum(kept, axis=1)  # a
        # The AR model's token at L + 1 + a: from its logits at L + a, or, after a rejection with
        # temperature, from the residual max(0, p - q) at the rejected position.
        at_next = jnp.take_along_axis(v_logits, n_kept[:, None, None], axis=1)[:, 0]
        next_keys = _keys(rng, example_ids, it, 3)
        if config.temperature == 0.0 or not config.verify:
            nxt = _sample(at_next, next_keys, config.temperature)
        else:
            rejected = n_kept < b - 1
            row = jnp.minimum(n_kept, b - 2)
            p_r = jnp.take_along_axis(jax.nn.softmax(p_logits / config.temperature, -1), row[:, None, None], 1)[:, 0]
            q_r = jnp.take_along_axis(jax.nn.softmax(q_logits[:, 1:] / config.temperature, -1), row[:, None, None],
                                      1)[:, 0]
            residual = jnp.maximum(p_r - q_r, 0.0)
            residual = residual / jnp.maximum(jnp.sum(residual, -1, keepdims=True), 1e-30)
            # log(0) = -inf for the tokens without residual mass (not log(max(r, 1e-38)): 1e-38 is a float32
            # subnormal, which XLA on CPU flushes to zero and whose log it computes as NaN under jit, so the
            # draw ignored the residual)
            from_residual = jax.vmap(jax.random.categorical)(
                next_keys, jnp.where(residual > 0, jnp.log(jnp.where(residual > 0, residual, 1.0)), -jnp.inf))
            from_p = _sample(at_next, next_keys, config.temperature)
            nxt = jnp.where(rejected, from_residual.astype(jnp.int32), from_p)

        # Commit t0 and the kept drafts, stopping at EOS and at max_new_tokens.
        commit = jnp.concatenate([jnp.ones((size, 1), bool), kept.astype(bool)], axis=1)  # [B, b]
        done, count, out, was_draft = state["done"], state["count"], state["out"], state["kept_mask"]
        stopped = done
        for i in range(b):
            index = count + i
            write = commit[:, i] & ~stopped & (index < limit)
            token = drafted[:, i]
            out = out.at[jnp.arange(size), jnp.minimum(index, limit - 1)].set(
                jnp.where(write, token, out[jnp.arange(size), jnp.minimum(index, limit - 1)]))
            was_draft = was_draft.at[jnp.arange(size), jnp.minimum(index, limit - 1)].set(
                jnp.where(write, i > 0, was_draft[jnp.arange(size), jnp.minimum(index, limit - 1)]))
            hit_eos = write & (token == config.eos_id) if config.eos_id is not None else jnp.zeros_like(write)
            stopped = stopped | hit_eos | (write & (index + 1 >= limit))
        new_count = jnp.where(done, count, jnp.minimum(count + 1 + n_kept, limit))
        live = ~done
        offered = jnp.sum(live)
        return {
            "iteration": it, "cache": cache, "next": jnp.where(done, state["next"], nxt), "count": new_count,
            "done": stopped, "out": out, "kept_mask": was_draft,
            "iterations": state["iterations"] + live.astype(jnp.int32),
            "accepted_at": state["accepted_at"] + jnp.sum(kept * live[:, None], axis=0),
            "drafted_at": state["drafted_at"] + offered,
            "drafts": state["drafts"].at[:, it - 1].set(jnp.where(live[:, None], drafted, config.pad_id)),
            "committed": state["committed"].at[:, it - 1].set(
                jnp.where(live, jnp.minimum(1 + n_kept, limit - count), 0)),
        }

    init = {
        "iteration": jnp.int32(0), "cache": cache, "next": first, "count": zeros,
        "done": jnp.zeros((size,), bool), "out": jnp.full((size, limit), config.pad_id, jnp.int32),
        "kept_mask": jnp.zeros((size, limit), bool), "iterations": zeros,
        "accepted_at": jnp.zeros((b - 1,), jnp.int32), "drafted_at": jnp.zeros((b - 1,), jnp.int32),
        "drafts": jnp.full((size, limit, b), config.pad_id, jnp.int32), "committed": jnp.zeros((size, limit), jnp.int32),
    }
    final = jax.lax.while_loop(cond, body, init)
    out = final["out"]
    is_eos = (out == config.eos_id) if config.eos_id is not None else jnp.zeros(out.shape, bool)
    after = jnp.cumsum(is_eos.astype(jnp.int32), axis=1) - is_eos.astype(jnp.int32) > 0
    out = jnp.where(after, config.pad_id, out)
    has_eos = jnp.any(is_eos, axis=1)
    lengths = jnp.where(has_eos, jnp.argmax(is_eos, axis=1) + 1, jnp.minimum(final["count"], limit)).astype(jnp.int32)
    passes = 1 + final["iteration"] * (config.draft_steps + 1)
    return SpeculativeOutput(out, lengths, final["iterations"], passes, final["accepted_at"], final["drafted_at"],
                             final["kept_mask"] & ~after, final["drafts"], final["committed"])


def speculative_generate(model, prompts_BxP, prompt_lengths_B, config: SpeculativeConfig,
                         rng: Optional[jax.Array] = None, example_ids_B: Optional[jax.Array] = None
                         ) -> SpeculativeOutput:
    """Continue each prompt (right-padded to a common width) by up to `max_new_tokens`,
    drafting with the model's adapter and verifying with its base (see the module docstring)."""
    check_drafter(model)
    prompts_BxP, prompt_lengths_B, rng, example_ids_B = prepare_prompts(prompts_BxP, prompt_lengths_B, rng,
                                                                          example_ids_B)
    width = prompts_BxP.shape[1]
    if bool(jnp.any(prompt_lengths_B < 1)):
        raise ValueError("every prompt needs at least one token (prompt_lengths >= 1): the AR model predicts the "
                         "first new token from the prompt's last")
    if width + config.max_new_tokens + config.block_size > model.config.max_len:
        raise ValueError(f"prompt width {width} + max_new_tokens {config.max_new_tokens} + block_size "
                         f"{config.block_size} exceeds max_len={model.config.max_len}")
    if not 0 <= config.mask_id < model.config.vocab_size:
        raise ValueError(f"mask_id={config.mask_id} is outside the model's vocabulary ({model.config.vocab_size})")
    return _speculate(model, prompts_BxP, prompt_lengths_B, rng, example_ids_B, config)
