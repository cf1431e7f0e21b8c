"""The diffusion-process protocol and its registry.

A process owns everything that makes one kind of text diffusion what it is: its noise
schedule, the forward corruption, its training loss, the sampler's initial canvas and
its per-step update. Losses (`workbench.objectives.losses`) and the sampler
(`workbench.sampling.diffusion`) only call these methods, so a new process is one
subclass with a `name`: defining it registers it, and `LossConfig(kind=name)` and
`DiffusionSamplingConfig(process=name)` then train and sample it.

Shapes: B rows (examples, or examples x samples in the sampler), N canvas positions,
V vocabulary entries. `denoise(tokens_BxN) -> logits_BxNxV` is the model's denoiser
over the same layout (see `workbench.models` for what it computes once).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, ClassVar, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from workbench.processes.schedules import LinearSchedule, Schedule

if TYPE_CHECKING:
    from workbench.processes.policies import Policy

Denoise = Callable[[jax.Array], jax.Array]


class Corruption(NamedTuple):
    noisy: jax.Array  # [B, N] corrupted tokens
    hit: jax.Array  # [B, N] bool: positions that were corrupted
    rates: jax.Array  # [B] the per-example corruption rate drawn


def cross_entropy(logits_BxNxV: jax.Array, labels_BxN: jax.Array) -> jax.Array:
    logits = logits_BxNxV.astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels_BxN[..., None], axis=-1)[..., 0]


def weighted_mean(values, weights):
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def non_special_ids(vocab_size: int, special_ids: Sequence[int]) -> jax.Array:
    keep = jnp.ones((vocab_size,), bool).at[jnp.asarray(list(special_ids), jnp.int32)].set(False)
    return jnp.nonzero(keep, size=vocab_size - len(set(special_ids)))[0].astype(jnp.int32)


def draw_tokens(keys_B: jax.Array, logits_BxNxV: jax.Array, temperature: float) -> jax.Array:
    """One token per position, from each row's own key; argmax at temperature 0."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxNxV, axis=-1).astype(jnp.int32)
    return jax.vmap(lambda k, l: jax.random.categorical(k, l / temperature))(keys_B, logits_BxNxV).astype(jnp.int32)


def token_probs(logits_BxNxV: jax.Array, tokens_BxN: jax.Array) -> jax.Array:
    """Model probability (temperature 1) of each chosen token."""
    return jnp.take_along_axis(jax.nn.softmax(logits_BxNxV, axis=-1), tokens_BxN[..., None], axis=-1)[..., 0]


_REGISTRY: dict[str, type["DiffusionProcess"]] = {}


@dataclasses.dataclass(frozen=True)
class DiffusionProcess:
    """Base class: subclasses set `name` and `default_policy` (a `Policy` object) and
    implement the five methods below.

    `special_ids` are never drawn as noise; `mask_id` is the absorbing token for the
    processes that use one; `schedule` is the process's own (`workbench.processes.schedules`). Loss options (unroll, min_mask_rate, ...) come from the
    `LossConfig` passed to `loss`.
    """

    name: ClassVar[str] = ""
    default_policy: ClassVar["Policy"]  # the decoding policy samplers use when their config names none
    uses_mask: ClassVar[bool] = False  # whether `mask_id` means anything to this process
    vocab_size: int
    special_ids: tuple[int, ...] = (0, 1, 2)
    mask_id: int = 3
    schedule: Schedule = LinearSchedule()  # corruption rates in training, clean counts for the policies

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name", "")
        if not name:
            return
        known = _REGISTRY.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"diffusion process name {name!r} is already taken by {known.__module__}."
                             f"{known.__qualname__}; pick another name for {cls.__qualname__}")
        _REGISTRY[name] = cls

    # -- training -------------------------------------------------------------
    def corrupt(self, rng: jax.Array, clean_BxN: jax.Array, weights_BxN: jax.Array) -> Corruption:
        """Forward process: noise the positions with weight > 0."""
        raise NotImplementedError

    def loss(self, denoise: Denoise, clean_BxN, weights_BxN, rng: jax.Array, config) -> tuple[jax.Array, dict]:
        """(loss, metrics) for one batch; `config` is the `LossConfig`. Metrics hold at least
        loss, accuracy and target_tokens (what the trainer logs)."""
        raise NotImplementedError

    # -- sampling -------------------------------------------------------------
    def initial_canvas(self, keys_B: jax.Array, length: int) -> jax.Array:
        """The canvas [B, length] sampling starts from; each row from its own key."""
        raise NotImplementedError

    def step(self, step: jax.Array, num_steps: int, canvas_BxN: jax.Array, committed_BxN: jax.Array,
             logits_BxNxV: jax.Array, keys_B: jax.Array, temperature: float,
             policy: "Policy") -> tuple[jax.Array, jax.Array, jax.Array]:
        """One reverse step under a decoding policy (`workbench.processes.policies`; samplers
        pass the process's `default_policy` when their config names none): (new canvas,
        committed positions [B, N] bool, probability of each position's token [B, N]).
        Committed positions are never rewritten; sampling starts with none. The probabilities
        at the last step rank the samples (lower mean -log p wins). Policies that follow a
        schedule get this process's (`policy.select(..., self.schedule)`)."""
        raise NotImplementedError


def process_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_process_class(name: str) -> type["DiffusionProcess"]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown diffusion process {name!r}; expected one of {list(process_names())} "
                         f"(define a DiffusionProcess subclass with that name to add one)")
    return _REGISTRY[name]


def get_process(name: str, vocab_size: int, special_ids: Sequence[int] = (0, 1, 2), mask_id: int = 3) -> DiffusionProcess:
    """The registered process `name` over a vocabulary of `vocab_size`."""
    return get_process_class(name)(vocab_size=vocab_size, special_ids=tuple(special_ids), mask_id=mask_id)
