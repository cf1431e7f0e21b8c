"""Diffusion sampler: batch invariance, exact prefix cache, trajectory bookkeeping, masked decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.models import ModelConfig, build_model
from workbench.objectives.batch import seq2seq_batch
from workbench.sampling.diffusion import DiffusionSamplingConfig, diffusion_sample

V = 60


def model_for(attention="bidirectional", arch="decoder"):
    config = ModelConfig(vocab_size=V, d_model=64, num_layers=2, num_heads=4, d_ff=128, max_len=64, dtype="float32",
                         tie_embeddings=False, attention=attention, arch=arch)
    return build_model(config, 0)


def batch_of(n, seed=0, input_len=8, target_len=6):
    rng = np.random.default_rng(seed)
    inputs = [list(rng.integers(4, V, size=int(rng.integers(1, input_len + 1)))) for _ in range(n)]
    return seq2seq_batch(inputs, [[] for _ in inputs], input_len=input_len, target_len=target_len, pad_id=0,
                         example_ids=list(range(100, 100 + n)), pad_targets=True)


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_example_decodes_the_same_alone_or_in_a_batch_of_16(arch):
    model = model_for(arch=arch)
    batch = batch_of(16)
    cfg = DiffusionSamplingConfig(num_samples=3, num_steps=4, temperature=0.7)
    full = diffusion_sample(model, batch, cfg, jax.random.key(5))
    for i in (0, 9):
        alone = diffusion_sample(model, jax.tree.map(lambda x: x[i : i + 1], batch), cfg, jax.random.key(5))
        np.testing.assert_array_equal(np.asarray(alone.trajectory[0]), np.asarray(full.trajectory[i]))
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(full.tokens[i]))
    other_seed = diffusion_sample(model, batch, cfg, jax.random.key(6))
    assert not np.array_equal(np.asarray(other_seed.trajectory), np.asarray(full.trajectory))


def test_prefix_cache_equals_full_recomputation():
    model = model_for("prefix_diffusion")
    batch = batch_of(5, seed=1)
    cached = diffusion_sample(model, batch, DiffusionSamplingConfig(num_samples=2, num_steps=5, temperature=0.5),
                              jax.random.key(0))
    full = diffusion_sample(model, batch, DiffusionSamplingConfig(num_samples=2, num_steps=5, temperature=0.5,
                                                                   prefix_cache=False), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(cached.trajectory), np.asarray(full.trajectory))
    np.testing.assert_allclose(np.asarray(cached.probs), np.asarray(full.probs), rtol=1e-5, atol=1e-6)


def test_trajectory_bookkeeping_and_reranking():
    model = model_for()
    out = diffusion_sample(model, batch_of(3), DiffusionSamplingConfig(num_samples=4, num_steps=5, temperature=1.0),
                           jax.random.key(2))
    traj, changed, probs = map(np.asarray, (out.trajectory, out.changed, out.probs))
    assert traj.shape == (3, 4, 6, 6) and probs.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(changed, traj[:, :, 1:] != traj[:, :, :-1])
    assert np.all((probs > 0) & (probs <= 1))
    assert not np.any(np.isin(traj[:, :, 0], [0, 1, 2]))  # initial canvas avoids special tokens
    scores = np.asarray(out.scores)
    np.testing.assert_allclose(scores, -np.mean(np.log(probs[:, :, -1]), axis=-1), rtol=1e-5)
    chosen = np.asarray(out.chosen)
    np.testing.assert_array_equal(chosen, np.argmin(scores, axis=1))
    np.testing.assert_array_equal(np.asarray(out.tokens), traj[np.arange(3), chosen, -1])


def test_masked_decoding_unmasks_progressively_and_completely():
    model = model_for()
    cfg = DiffusionSamplingConfig(num_samples=2, num_steps=3, process="absorbing", temperature=0.0, mask_id=3)
    out = diffusion_sample(model, batch_of(2), cfg, jax.random.key(0))
    traj = np.asarray(out.trajectory)
    masked = (traj == 3).sum(-1)  # [B, S, steps+1]
    np.testing.assert_array_equal(masked[:, :, 0], 6)
    np.testing.assert_array_equal(masked[:, :, 1], 4)  # ceil(6 * 1/3) = 2 revealed by step 1
    assert np.all(masked[:, :, -1] == 0)
    revealed = traj[:, :, :-1] != 3
    assert np.all(traj[:, :, 1:][revealed] == traj[:, :, :-1][revealed])  # revealed tokens stay


def test_early_exit_stops_at_the_first_step_that_changes_nothing():
    # tied embeddings make an untrained model nearly copy its input, so a fixed point comes early
    config = ModelConfig(vocab_size=V, d_model=64, num_layers=1, num_heads=4, d_ff=128, max_len=64, dtype="float32",
                         attention="bidirectional")
    model = build_model(config, 0)
    batch = batch_of(2)
    full = diffusion_sample(model, batch, DiffusionSamplingConfig(num_samples=2, num_steps=12, temperature=0.0),
                            jax.random.key(0))
    quiet = np.nonzero(~np.asarray(full.changed).any(axis=(0, 1, 3)))[0]
    assert quiet.size, "no fixed point reached: the test would not exercise early exit"
    expected = int(quiet[0]) + 1
    early = diffusion_sample(model, batch, DiffusionSamplingConfig(num_samples=2, num_steps=12, temperature=0.0,
                                                                    early_exit=True), jax.random.key(0))
    assert int(early.steps_run) == expected < 12
    np.testing.assert_array_equal(np.asarray(early.trajectory)[:, :, : expected + 1],
                                  np.asarray(full.trajectory)[:, :, : expected + 1])


def test_causal_model_is_refused():
    with pytest.raises(ValueError, match="needs a bidirectional denoiser.*with_attention"):
        diffusion_sample(model_for("causal"), batch_of(1), DiffusionSamplingConfig())
