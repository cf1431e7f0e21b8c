"""`ModelConfig.shift_targets`: the logit at position i predicts token i+1 (DiffuLLaMA, Dream).
Losses are checked against cross-entropies computed by hand from the network's raw outputs,
and the sampler's canvas denoiser against a full forward read at the shifted positions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.models import ModelConfig, build_model, get_preset
from workbench.objectives.batch import seq2seq_batch
from workbench.objectives.losses import LossConfig, loss_fn
from workbench.processes import get_process

VOCAB = 40


def _model(shift, attention="prefix_diffusion"):
    config = get_preset("tiny", vocab_size=VOCAB, dtype="float32", attention=attention, shift_targets=shift,
                        scale_logits=False)
    return build_model(config, 0)


def _batch():
    return seq2seq_batch([[5, 6, 7], [8, 9]], [[10, 11, 12, 13], [14, 15]], input_len=4, target_len=5, pad_id=0)


def _raw(model, batch, tokens):
    """The network's outputs at every position, no shift (the plain forward)."""
    return np.asarray(model(tokens, prefix_len=batch.prefix_len, lengths=batch.lengths), np.float64)


def _hand_ce(logits_BxNxV, labels_BxN):
    top = logits_BxNxV.max(-1, keepdims=True)
    lse = np.log(np.exp(logits_BxNxV - top).sum(-1)) + top[..., 0]
    return lse - np.take_along_axis(logits_BxNxV, labels_BxN[..., None], -1)[..., 0]


@pytest.mark.parametrize("shift", [False, True])
def test_absorbing_loss_equals_hand_computed(shift):
    model, batch = _model(shift), _batch()
    config = LossConfig(kind="absorbing", mask_id=3)
    clean, weights = np.asarray(batch.tokens), np.asarray(batch.target_mask, np.float64)
    process = get_process("absorbing", VOCAB, config.special_ids, config.mask_id)
    for seed in range(100):  # the first key (deterministically) that masks several targets
        rng = jax.random.key(seed)
        noisy, hit, rates = process.corrupt(rng, batch.tokens, batch.target_mask.astype(jnp.float32), config.min_mask_rate)
        if int(hit.sum()) >= 3:
            break
    loss, _ = loss_fn(model, batch, rng, config)
    raw = _raw(model, batch, noisy)
    read = np.concatenate([raw[:, :1], raw[:, :-1]], axis=1) if shift else raw  # token i from position i-1
    ce = _hand_ce(read, clean)
    expected = (ce * np.asarray(hit) / np.asarray(rates)[:, None]).sum() / weights.sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    unshifted_ce = _hand_ce(raw, clean)
    other = (unshifted_ce * np.asarray(hit) / np.asarray(rates)[:, None]).sum() / weights.sum()
    if shift:  # the two forms really differ (by far more than float error)
        assert abs(float(loss) - other) > 1e-3 * abs(other)  # 100x the tolerance above


@pytest.mark.parametrize("shift", [False, True])
def test_uniform_first_pass_loss_equals_hand_computed(shift):
    model, batch, rng = _model(shift), _batch(), jax.random.key(4)
    config = LossConfig(kind="uniform", unroll=False)
    loss, _ = loss_fn(model, batch, rng, config)
    corrupt_key, _ = jax.random.split(rng)
    process = get_process("uniform", VOCAB, config.special_ids, config.mask_id)
    noisy = process.corrupt(corrupt_key, batch.tokens, batch.target_mask.astype(jnp.float32)).noisy
    raw = _raw(model, batch, noisy)
    read = np.concatenate([raw[:, :1], raw[:, :-1]], axis=1) if shift else raw
    weights = np.asarray(batch.target_mask, np.float64)
    expected = (_hand_ce(read, np.asarray(batch.tokens)) * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_shifted_denoiser_under_causal_attention_is_the_ar_model():
    """With the shift, a clean causal pass gives exactly the AR head's next-token logits."""
    model, batch = _model(True, attention="causal"), _batch()
    logits, labels, _ = model.teacher_forced(batch)
    shifted = model.denoise(batch, batch.tokens)
    np.testing.assert_array_equal(np.asarray(shifted[:, 1:]), np.asarray(logits))
    np.testing.assert_array_equal(np.asarray(batch.tokens[:, 1:]), np.asarray(labels))


@pytest.mark.parametrize("prompt_cache", [False, True])
@pytest.mark.parametrize("shift", [False, True])
def test_canvas_denoiser_reads_the_right_positions(shift, prompt_cache):
    model, batch = _model(shift), _batch()
    target_len = 5
    canvas = jnp.asarray([[20, 21, 22, 23, 24], [25, 26, 27, 28, 29]], jnp.int32)
    got = np.asarray(model.canvas_denoiser(batch, target_len, prompt_cache=prompt_cache)(canvas))
    positions = np.asarray(batch.prefix_len)[:, None] + np.arange(target_len)[None, :]
    tokens = np.asarray(batch.tokens).copy()
    for b in range(2):
        tokens[b, positions[b]] = np.asarray(canvas[b])
    raw = _raw(model, batch, jnp.asarray(tokens))
    read = positions - 1 if shift else positions
    expected = np.take_along_axis(raw, read[:, :, None], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    wrong = np.take_along_axis(raw, (positions if shift else positions - 1)[:, :, None], axis=1)
    assert np.abs(got - wrong).max() > 1e-2


def test_shift_drops_targets_with_nothing_before_them():
    model = _model(True, attention="bidirectional")
    batch = dataclasses.replace(
        _batch(),
        prefix_len=jnp.zeros((2,), jnp.int32),
        target_mask=jnp.ones((2, 9), bool),
        segment_ids=jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 3, 3]] * 2, jnp.int32),
    )
    _, weights = model.target_view(batch)
    np.testing.assert_array_equal(np.asarray(weights[0]), [0, 1, 1, 0, 1, 1, 1, 0, 1])


def test_shift_errors_are_named():
    with pytest.raises(ValueError, match="shift_targets=True is for decoder-only models"):
        get_preset("tiny", vocab_size=VOCAB, arch="encoder_decoder", attention="bidirectional", shift_targets=True)
    batch = dataclasses.replace(_batch(), prefix_len=jnp.asarray([0, 2], jnp.int32))
    with pytest.raises(ValueError, match=r"prefix_len >= 1"):
        _model(True).canvas_denoiser(batch, 5)


def test_export_records_the_shift(tmp_path):
    from workbench.pretrained import load_pretrained, save_pretrained

    model = _model(True)
    again = load_pretrained(save_pretrained(model, tmp_path / "m"))
    assert again.config.shift_targets and again.config == model.config


def test_block_decoding_with_shift_needs_a_prompt_token_before_the_first_block():
    from workbench.objectives.batch import seq2seq_batch
    from workbench.sampling.block import BlockSamplingConfig, block_sample

    config = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, d_ff=64, attention="block_causal",
                         block_size=4, shift_targets=True, dtype="float32")
    batch = seq2seq_batch([[5, 6], []], [[], []], input_len=3, target_len=4, pad_id=0, pad_targets=True)
    with pytest.raises(ValueError, match="prefix_len >= 1"):
        block_sample(build_model(config, 0), batch, BlockSamplingConfig(num_steps=2, eos_id=None))
