"""Block-diffusion training: what each noisy target position sees in training equals what it
sees when decoded block by block; both processes train through it, from an AR checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench.models import ModelConfig, build_model
from workbench.objectives.batch import seq2seq_batch
from workbench.objectives.losses import LossConfig, loss_fn
from workbench.sampling.block_cache import block_denoiser
from workbench.training import TrainConfig, train
from workbench.training.ar2diff import adaptation_config, ar2diff
from workbench.training.logging import read_metrics

V, B, T = 40, 3, 9  # T is not a multiple of B: the last block is cut by the row's end


def block_model(shift_targets=False):
    config = ModelConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=2, d_ff=64, max_len=64, dtype="float32",
                         tie_embeddings=False, attention="block_causal", block_size=B, shift_targets=shift_targets)
    return build_model(config, 1)


def batch_and_noise(seed=0):
    rng = np.random.default_rng(seed)
    inputs = [list(rng.integers(4, V, size=n)) for n in (1, 4, 6)]
    targets = [list(rng.integers(4, V, size=n)) + [1] for n in (8, 3, 5)]
    batch = seq2seq_batch(inputs, targets, input_len=6, target_len=T, pad_id=0, example_ids=[0, 1, 2])
    noisy = np.where(np.asarray(batch.target_mask) & (rng.random(batch.tokens.shape) < 0.6),
                     rng.integers(4, V, size=batch.tokens.shape), np.asarray(batch.tokens))
    return jax.tree.map(jnp.asarray, batch), jnp.asarray(noisy, jnp.int32)


@pytest.mark.parametrize("shift_targets", [False, True])
@pytest.mark.parametrize("cache", [True, False])
def test_training_logits_of_block_k_equal_decoding_block_k_after_clean_blocks(cache, shift_targets):
    model, (batch, noisy) = block_model(shift_targets), batch_and_noise()
    train_logits = np.asarray(model.block_denoise(batch, noisy))
    target_len = 12  # the decoder's canvas: whole blocks (the row is padded, which block k never sees)
    wide = jax.tree.map(lambda x: x, batch)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, target_len - T)))
    wide = wide.replace(tokens=pad(batch.tokens), targets=pad(batch.targets))
    den = block_denoiser(model, wide, target_len, cache=cache)
    state = den.state
    prefix = np.asarray(batch.prefix_len)
    clean = np.asarray(batch.tokens)
    for k in range(target_len // B):
        where = prefix[:, None] + k * B + np.arange(B)[None, :]
        inside = where < clean.shape[1]
        take = lambda x: np.where(inside, np.take_along_axis(x, np.minimum(where, x.shape[1] - 1), 1), 0)
        decoded = np.asarray(den.logits(state, k, jnp.asarray(take(np.asarray(noisy)))))
        for b in range(3):
            cols = where[b][inside[b]]
            np.testing.assert_allclose(decoded[b][inside[b]], train_logits[b, cols], rtol=2e-5, atol=2e-5)
        state = den.commit(state, k, jnp.asarray(take(clean)))


def test_a_noisy_block_sees_clean_earlier_blocks_its_own_noise_and_nothing_else():
    model, (batch, noisy) = block_model(), batch_and_noise(1)
    base = np.asarray(model.block_denoise(batch, noisy))
    p = int(batch.prefix_len[0])  # example 0: block 1 is positions p+3 .. p+5
    block1 = slice(p + 3, p + 6)
    # other blocks' noise is invisible
    other_noise = noisy.at[0, p].set(5).at[0, p + 7].set(6)
    np.testing.assert_array_equal(np.asarray(model.block_denoise(batch, other_noise))[0, block1], base[0, block1])
    # later clean blocks are invisible; earlier clean blocks and its own noise are seen
    later_clean = batch.replace(tokens=batch.tokens.at[0, p + 7].set(9))
    np.testing.assert_array_equal(np.asarray(model.block_denoise(later_clean, noisy))[0, block1], base[0, block1])
    earlier_clean = batch.replace(tokens=batch.tokens.at[0, p + 1].set(9 if int(batch.tokens[0, p + 1]) != 9 else 8))
    assert not np.allclose(np.asarray(model.block_denoise(earlier_clean, noisy))[0, block1], base[0, block1])
    own = noisy.at[0, p + 4].set(7 if int(noisy[0, p + 4]) != 7 else 8)
    assert not np.allclose(np.asarray(model.block_denoise(batch, own))[0, p + 3], base[0, p + 3])


def test_with_shifted_targets_a_blocks_first_token_is_read_from_the_clean_position_before_it():
    model, (batch, noisy) = block_model(shift_targets=True), batch_and_noise(1)
    base = np.asarray(model.block_denoise(batch, noisy))
    clean = np.asarray(model(batch.tokens, prefix_len=batch.prefix_len, lengths=batch.lengths))  # unshifted outputs
    p = int(batch.prefix_len[0])  # example 0: block 0 starts at p, block 1 at p + 3
    np.testing.assert_allclose(base[0, p], clean[0, p - 1], rtol=1e-5, atol=1e-5)  # from the prompt's last token
    np.testing.assert_allclose(base[0, p + 3], clean[0, p + 2], rtol=1e-5, atol=1e-5)  # from block 0's clean last
    own = noisy.at[0, p + 3].set(7 if int(noisy[0, p + 3]) != 7 else 8)
    changed = np.asarray(model.block_denoise(batch, own))
    np.testing.assert_array_equal(changed[0, p + 3], base[0, p + 3])  # a token never sees its own noise
    assert not np.allclose(changed[0, p + 4], base[0, p + 4])  # the next token is read from its position


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_both_processes_train_under_block_causal(kind):
    model, (batch, _) = block_model(), batch_and_noise(2)
    cfg = LossConfig(kind=kind, special_ids=(0, 1, 2, 3), mask_id=3)
    (loss, metrics), grads = nnx.value_and_grad(lambda m: loss_fn(m, batch, jax.random.key(0), cfg), has_aux=True)(model)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0


def test_ar2diff_converts_an_ar_checkpoint_to_block_diffusion(tmp_path):
    from tests.test_training import CONFIG, params, source
    ar_model = build_model(CONFIG, 0)
    train(ar_model, TrainConfig(steps=2, progress=False, tensorboard=False), source(), tmp_path / "ar")
    stage = adaptation_config(TrainConfig(steps=2, progress=False, tensorboard=False), steps=2)
    result = ar2diff(tmp_path / "ar", tmp_path / "bd", source(), stage, attention="block_causal", block_size=4)
    assert result.model.config.attention == "block_causal" and result.model.config.block_size == 4
    assert "loss_l2" in read_metrics(tmp_path / "bd", "loss")[-1]
    assert any(not np.array_equal(x, y) for x, y in zip(params(ar_model), params(result.model)))
    with pytest.raises(ValueError, match="block_size"):
        ar2diff(tmp_path / "ar", tmp_path / "bad", source(), stage, attention="block_causal")


def test_ar2diff_with_the_joint_loss_logs_its_ar_term(tmp_path):
    """The joint loss is an option of the same stage: block diffusion + 0.3 x the AR loss under the
    decoder's AR attention; the log holds both terms and the loss is their sum."""
    from tests.test_training import CONFIG, source
    ar_model = build_model(CONFIG, 0)
    train(ar_model, TrainConfig(steps=2, progress=False, tensorboard=False), source(), tmp_path / "ar")
    stage = TrainConfig(steps=2, progress=False, tensorboard=False, log_every=1,
                        loss=LossConfig(kind="absorbing", special_ids=(0, 1, 2, 3), mask_id=3, ar_weight=0.3))
    ar2diff(tmp_path / "ar", tmp_path / "joint", source(), stage, attention="block_causal", block_size=4)
    record = read_metrics(tmp_path / "joint", "loss")[-1]
    assert np.isfinite(record["ar_loss"]) and record["ar_loss"] > 0
    assert record["loss"] > 0.3 * record["ar_loss"]
