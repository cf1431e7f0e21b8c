"""Objectives on hand-computed cases: layouts, corruption, sentinels, loss values, unroll gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench.models import ModelConfig, build_model
from workbench.objectives.batch import seq2seq_batch
from workbench.models.transformer import with_attention
from workbench.objectives.losses import LossConfig, ar_loss, diffusion_loss, loss_fn
from workbench.processes import UniformProcess, cross_entropy
from workbench.objectives.pretraining import (
    SpanCorruptionConfig,
    lm_batch,
    random_spans_noise_mask,
    span_corrupt,
)

V = 40


def tiny(**kw):
    base = dict(vocab_size=V, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_len=64, dtype="float32",
                tie_embeddings=False)
    base.update(kw)
    return ModelConfig(**base)


def test_seq2seq_layout_places_targets_right_after_inputs():
    b = seq2seq_batch([[5, 6, 7], [8]], [[9, 1], [10, 11, 1]], input_len=4, target_len=3, pad_id=0, pad_targets=True)
    np.testing.assert_array_equal(b.tokens, [[5, 6, 7, 9, 1, 0, 0], [8, 10, 11, 1, 0, 0, 0]])
    np.testing.assert_array_equal(b.prefix_len, [3, 1])
    np.testing.assert_array_equal(b.lengths, [6, 4])  # padded targets are real positions
    np.testing.assert_array_equal(b.target_mask[0], [0, 0, 0, 1, 1, 1, 0])
    ar = seq2seq_batch([[5, 6, 7]], [[9, 1]], input_len=4, target_len=3, pad_id=0, pad_targets=False)
    np.testing.assert_array_equal(ar.target_mask[0], [0, 0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="4 target tokens exceed target_len=3"):
        seq2seq_batch([[1]], [[1, 2, 3, 4]], input_len=2, target_len=3, pad_id=0)


def test_span_corruption_layout_matches_t5():
    tokens = [10, 11, 12, 13, 14, 15, 16, 17]
    noise = np.array([0, 0, 1, 1, 0, 0, 0, 1], bool)
    inputs, targets = span_corrupt(tokens, noise, sentinel_ids=[100, 101, 102])
    assert inputs == [10, 11, 100, 14, 15, 16, 101]
    assert targets == [100, 12, 13, 101, 17]


def test_noise_mask_density_and_spans():
    rng = np.random.default_rng(0)
    cfg = SpanCorruptionConfig()
    mask = random_spans_noise_mask(200, cfg, rng)
    assert mask.sum() == 30  # round(200 * 0.15)
    spans = np.sum(np.diff(np.concatenate([[0], mask.astype(int)])) == 1)
    assert spans == 10  # round(30 / 3)
    assert not mask[0]  # T5 starts with a non-noise span


def test_ar_loss_equals_hand_computed_cross_entropy():
    model = build_model(tiny(), 0)
    batch = lm_batch(np.array([[3, 4, 5, 6, 7, 8]]), np.array([2]), np.array([0]), pad_id=0)
    loss, metrics = ar_loss(model, batch, None, LossConfig())
    logits = model(jnp.asarray(batch.tokens))
    logp = jax.nn.log_softmax(logits[0])
    # targets are positions 2..5, predicted from positions 1..4
    expected = -np.mean([float(logp[p - 1, batch.tokens[0, p]]) for p in range(2, 6)])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(metrics.target_tokens) == 4


def test_packed_ar_loss_never_predicts_across_segments():
    model = build_model(tiny(), 0)
    segs = np.array([[1, 1, 1, 2, 2]])  # two sequences in one row: [3, 4, 5] and [6, 7]
    batch = lm_batch(np.array([[3, 4, 5, 6, 7]]), np.array([0]), np.array([0]), pad_id=0).replace(
        segment_ids=segs, positions=np.array([[0, 1, 2, 0, 1]]))
    _, metrics = ar_loss(model, jax.tree.map(jnp.asarray, batch), None, LossConfig())
    assert float(metrics.target_tokens) == 3  # 4<-3, 5<-4, 7<-6; never 6<-5


def test_uniform_logits_give_log_vocab():
    logits = jnp.zeros((2, 3, V))
    np.testing.assert_allclose(np.asarray(cross_entropy(logits, jnp.ones((2, 3), jnp.int32))), np.log(V), rtol=1e-6)


def test_corruption_touches_only_targets_and_never_draws_special_tokens():
    tokens = jnp.tile(jnp.arange(20, dtype=jnp.int32)[None] % V + 5, (64, 1))
    weights = jnp.zeros((64, 20)).at[:, 8:].set(1.0)
    noisy, hit, rates = UniformProcess(V, special_ids=(0, 1, 2, 3)).corrupt(jax.random.key(0), tokens, weights)
    assert not bool(jnp.any(hit[:, :8]))
    np.testing.assert_array_equal(np.asarray(noisy[:, :8]), np.asarray(tokens[:, :8]))
    assert not bool(jnp.any(jnp.isin(noisy[hit], jnp.array([0, 1, 2, 3]))))
    # the corrupted fraction tracks each example's rate
    frac = jnp.sum(hit, axis=1) / 12
    assert float(jnp.corrcoef(frac, rates)[0, 1]) > 0.8


def _diffusion_batch():
    return jax.tree.map(jnp.asarray, seq2seq_batch([[5, 6, 7], [8, 9]], [[10, 11, 1], [12, 1]], input_len=4,
                                                   target_len=4, pad_id=0, pad_targets=True))


def test_unrolled_loss_passes_gradient_only_through_the_second_forward():
    model = build_model(tiny(attention="bidirectional"), 0)
    batch = _diffusion_batch()
    rng = jax.random.key(3)
    cfg = LossConfig(kind="uniform")
    grads = nnx.grad(lambda m: diffusion_loss(m, batch, rng, cfg)[0])(model)

    # independent recomputation: L1 on the corrupted input, L2 on the (fixed) argmax input
    clean = batch.tokens
    weights = batch.target_mask.astype(jnp.float32)
    corrupt_key, _ = jax.random.split(rng)
    noisy, _, _ = UniformProcess(V, cfg.special_ids).corrupt(corrupt_key, clean, weights)
    guess = jnp.argmax(model.denoise(batch, noisy), -1)
    unrolled = jnp.where(weights > 0, guess, clean)
    assert bool(jnp.all(unrolled[:, :2] == clean[:, :2]))  # inputs kept clean

    def manual(m):
        def ce(x):
            return jnp.sum(cross_entropy(m.denoise(batch, x), clean) * weights) / jnp.sum(weights)
        return ce(noisy) + ce(unrolled)

    expected = nnx.grad(manual)(model)
    for a, b in zip(jax.tree.leaves(nnx.state(grads)), jax.tree.leaves(nnx.state(expected))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_absorbing_loss_weights_by_inverse_rate():
    model = build_model(tiny(attention="bidirectional"), 0)
    batch = _diffusion_batch()
    cfg = LossConfig(kind="absorbing", mask_id=3)
    loss, _ = diffusion_loss(model, batch, jax.random.key(0), cfg)
    rate_key, where_key = jax.random.split(jax.random.key(0))
    rates = jax.random.uniform(rate_key, (2,), minval=cfg.min_mask_rate, maxval=1.0)
    weights = batch.target_mask
    hit = (jax.random.uniform(where_key, batch.tokens.shape) < rates[:, None]) & weights
    ce = cross_entropy(model.denoise(batch, jnp.where(hit, 3, batch.tokens)), batch.tokens)
    expected = sum(float(ce[b, p] / rates[b]) for b in range(2) for p in range(8) if hit[b, p]) / float(weights.sum())
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_diffusion_accuracy_is_split_into_all_targets_and_non_padding():
    model = build_model(tiny(attention="bidirectional"), 0)
    batch = _diffusion_batch()  # 5 text targets (EOS included), 3 padding targets
    rng = jax.random.key(5)
    _, metrics = diffusion_loss(model, batch, rng, LossConfig(kind="uniform", unroll=False))
    clean, targets = batch.tokens, batch.target_mask
    noisy, _, _ = UniformProcess(V, (0, 1, 2)).corrupt(jax.random.split(rng)[0], clean, targets.astype(jnp.float32))
    right = np.asarray(jnp.argmax(model.denoise(batch, noisy), -1) == clean)
    targets, text = np.asarray(targets), np.asarray(targets & (clean != 0))
    assert text.sum() == 5 and targets.sum() == 8
    np.testing.assert_allclose(float(metrics.record()["accuracy"]), right[targets].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics.record()["accuracy_non_pad"]), right[text].mean(), rtol=1e-6)


def test_loss_metrics_combine_is_the_mean_over_all_tokens():
    """Each mean keeps its own weight, so two halves combine to the whole batch's values
    (masked accuracy counts masked positions, not target tokens)."""
    from workbench.objectives import LossMetrics

    values = jnp.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    weights = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # 3 and 1 target tokens
    masked = jnp.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    losses = jnp.array([2.0, 6.0])

    def part(i):
        return LossMetrics.of(losses[i], weights[i], accuracy=(values[i], masked[i]), hit=(values[i], weights[i]))

    combined = LossMetrics.combine([part(0), part(1)]).record()
    assert float(combined["target_tokens"]) == 4
    assert float(combined["loss"]) == (2.0 * 3 + 6.0 * 1) / 4  # token-weighted
    assert float(combined["accuracy"]) == 0.5  # positions (0,0) right and (1,0) wrong: 1 of 2
    assert float(combined["hit"]) == 0.5  # 2 of the 4 target tokens right
    with pytest.raises(ValueError, match="reserved"):
        LossMetrics.of(losses[0], weights[0], loss=(values[0], weights[0]))
    with pytest.raises(TypeError, match="must return \\(loss, LossMetrics\\)"):
        LossMetrics.combine([{"loss": 1.0, "target_tokens": 1.0}])


@pytest.mark.parametrize("attention", ["prefix_diffusion", "bidirectional"])
def test_joint_loss_adds_the_ar_loss_of_the_same_weights_under_ar_attention(attention):
    """Joint loss = diffusion loss (same key) + ar_weight x the AR loss of the same parameters under
    prefix-LM attention, computed here by hand from the model's plain forward; its gradient is the
    same combination of the two gradients, so the AR term trains the shared weights."""
    model = build_model(tiny(attention=attention), 0)
    batch = _diffusion_batch()
    key = jax.random.key(3)
    joint = LossConfig(kind="absorbing", mask_id=3, ar_weight=0.3)
    loss, metrics = loss_fn(model, batch, key, joint)
    diffusion, _ = diffusion_loss(model, batch, key, LossConfig(kind="absorbing", mask_id=3))
    # the AR loss by hand: the same parameters under prefix-LM attention, next-token cross-entropy on targets
    logits = with_attention(model, "prefix_lm")(batch.tokens, prefix_len=batch.prefix_len, lengths=batch.lengths)
    logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
    mask = np.asarray(batch.target_mask)
    picked = [-logp[b, p - 1, int(batch.tokens[b, p])] for b in range(mask.shape[0]) for p in range(1, mask.shape[1])
              if mask[b, p]]
    ar = float(np.mean(picked))
    np.testing.assert_allclose(float(metrics.record()["ar_loss"]), ar, rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(diffusion) + 0.3 * ar, rtol=1e-5)
    assert float(metrics.loss) == float(loss)

    grads = lambda config: nnx.state(nnx.grad(lambda m: loss_fn(m, batch, key, config)[0])(model), nnx.Param)
    g_joint = jax.tree.leaves(grads(joint))
    g_diff = jax.tree.leaves(grads(LossConfig(kind="absorbing", mask_id=3)))
    ar_model = with_attention(model, "prefix_lm")
    g_ar = jax.tree.leaves(nnx.state(nnx.grad(lambda m: ar_loss(m, batch, None, LossConfig())[0])(ar_model),
                                     nnx.Param))
    for j, d, a in zip(g_joint, g_diff, g_ar, strict=True):
        np.testing.assert_allclose(np.asarray(j), np.asarray(d) + 0.3 * np.asarray(a), rtol=1e-4, atol=1e-6)


def test_joint_loss_is_refused_where_there_is_no_diffusion_loss():
    with pytest.raises(ValueError, match="ar_weight=0.3 adds the AR loss to a diffusion loss; loss kind 'ar'"):
        LossConfig(kind="ar", ar_weight=0.3)
    with pytest.raises(ValueError, match="ar_weight=-1.0 must be >= 0"):
        LossConfig(kind="absorbing", ar_weight=-1.0)
    model = build_model(tiny(attention="bidirectional"), 0)
    batch = _diffusion_batch()
    # ar_weight=0 is the diffusion loss itself, bit for bit
    a, _ = loss_fn(model, batch, jax.random.key(0), LossConfig(kind="absorbing", mask_id=3))
    b, _ = diffusion_loss(model, batch, jax.random.key(0), LossConfig(kind="absorbing", mask_id=3))
    assert float(a) == float(b)
