"""Diffusion processes: the registry, and a third process added by one class in this file
(no edit anywhere else) that the generic trainer trains and the generic sampler samples."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.models import ModelConfig, build_model
from workbench.objectives.batch import seq2seq_batch
from workbench.objectives.losses import LossConfig
from workbench.processes import (
    DiffusionProcess,
    LowConfidence,
    LossMetrics,
    cross_entropy,
    draw_tokens,
    get_process,
    process_names,
    token_probs,
    weighted_mean,
)
from workbench.sampling import DiffusionSamplingConfig, diffusion_sample
from workbench.training import OptimizerConfig, Seq2SeqSource, TrainConfig, train

V, FIXED = 40, 7


@dataclasses.dataclass(frozen=True)
class FixedTokenProcess(DiffusionProcess):
    """Toy process: noise replaces tokens with one fixed ordinary token; sampling commits
    positions left to right, the schedule's share per step."""

    name: ClassVar[str] = "test_fixed_token"
    default_policy: ClassVar = LowConfidence()  # unused: `step` commits left to right

    def corrupt(self, rng, clean_BxN, weights_BxN):
        rate_key, where_key = jax.random.split(rng)
        rates = self.schedule.sample_rates(rate_key, clean_BxN.shape[0], 0.05)
        hit = (jax.random.uniform(where_key, clean_BxN.shape) < rates[:, None]) & (weights_BxN > 0)
        return jnp.where(hit, FIXED, clean_BxN), hit, rates

    def loss(self, denoise, clean_BxN, weights_BxN, rng, config):
        noisy, hit, _ = self.corrupt(rng, clean_BxN, weights_BxN)
        logits = denoise(noisy)
        loss = weighted_mean(cross_entropy(logits, clean_BxN), weights_BxN)
        correct = (jnp.argmax(logits, -1) == clean_BxN).astype(jnp.float32)
        return loss, LossMetrics.of(loss, weights_BxN, accuracy=(correct, weights_BxN))

    def initial_canvas(self, keys_B, length):
        return jnp.full((keys_B.shape[0], length), FIXED, jnp.int32)

    def step(self, step, num_steps, canvas_BxN, committed_BxN, logits_BxNxV, keys_B, temperature, policy):
        logits = logits_BxNxV.at[..., FIXED].set(-jnp.inf)
        draw = draw_tokens(keys_B, logits, temperature)
        commit = jnp.arange(canvas_BxN.shape[1])[None, :] < self.schedule.clean_count(step, num_steps, canvas_BxN.shape[1])
        new = jnp.where(commit & (canvas_BxN == FIXED), draw, canvas_BxN)
        return new, new != FIXED, jnp.where(canvas_BxN == FIXED, token_probs(logits, draw), 1.0)


def test_a_new_process_trains_and_samples_through_the_generic_trainer_and_sampler(tmp_path):
    assert "test_fixed_token" in process_names()
    config = ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_len=32, dtype="float32",
                         attention="bidirectional")
    model = build_model(config, 0)
    before = np.asarray(model.embedder.embedding[...]).copy()
    rng = np.random.default_rng(0)
    inputs = [list(rng.integers(8, V, size=4)) for _ in range(16)]
    targets = [list(rng.integers(8, V, size=3)) + [1] for _ in range(16)]
    source = Seq2SeqSource(inputs, targets, input_len=6, target_len=5, batch_size=8, pad_targets=True)
    loss = LossConfig(kind="test_fixed_token")
    result = train(model, TrainConfig(steps=3, loss=loss, optimizer=OptimizerConfig(warmup_steps=1), log_every=1,
                                      progress=False, tensorboard=False), source, tmp_path / "run")
    assert [r["step"] for r in result.history] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in result.history)
    assert not np.array_equal(np.asarray(result.model.embedder.embedding[...]), before)

    batch = seq2seq_batch(inputs[:3], [[] for _ in range(3)], input_len=6, target_len=5, pad_id=0, pad_targets=True)
    out = diffusion_sample(result.model, batch, DiffusionSamplingConfig(process="test_fixed_token", num_samples=2,
                                                                        num_steps=2, temperature=1.0),
                           jax.random.key(1))
    traj = np.asarray(out.trajectory)  # [B, S, steps + 1, Tt]
    assert (traj[:, :, 0] == FIXED).all()
    assert (traj[:, :, 1, :3] != FIXED).all() and (traj[:, :, 1, 3:] == FIXED).all()  # ceil(5 * 1/2) = 3 committed
    assert (traj[:, :, 2] != FIXED).all()
    chosen = np.asarray(out.chosen)
    np.testing.assert_array_equal(np.asarray(out.tokens), traj[np.arange(3), chosen, -1])


def test_unknown_process_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="'nope'.*absorbing.*uniform"):
        get_process("nope", V)
    with pytest.raises(ValueError, match="loss kind 'nope'"):
        LossConfig(kind="nope")
    with pytest.raises(ValueError, match="process='nope'"):
        DiffusionSamplingConfig(process="nope")


def test_a_second_class_cannot_take_a_registered_name():
    with pytest.raises(ValueError, match="'uniform' is already taken"):
        @dataclasses.dataclass(frozen=True)
        class Impostor(DiffusionProcess):
            name: ClassVar[str] = "uniform"


def test_built_in_processes_start_from_their_canvas():
    keys = jax.random.split(jax.random.key(0), 4)
    absorbing = get_process("absorbing", V, mask_id=3)
    assert (np.asarray(absorbing.initial_canvas(keys, 6)) == 3).all()
    canvas = np.asarray(get_process("uniform", V, special_ids=(0, 1, 2, 3)).initial_canvas(keys, 50))
    assert canvas.min() >= 4 and canvas.max() < V and len(np.unique(canvas)) > 20
