"""Block diffusion decoding: exact cache == full recomputation, batch invariance, EOS stopping."""

import jax
import numpy as np
import pytest

from workbench.models import ModelConfig, build_model
from workbench.models.transformer import with_attention
from workbench.objectives.batch import seq2seq_batch
from workbench.processes import RandomOrder, get_policy
from workbench.sampling.block import BlockSamplingConfig, block_sample
from workbench.sampling.block_cache import block_denoiser

V, B = 50, 4


def block_model(block_size=B, seed=0, shift_targets=False):
    config = ModelConfig(vocab_size=V, d_model=64, num_layers=2, num_heads=4, d_ff=128, max_len=64, dtype="float32",
                         tie_embeddings=False, attention="block_causal", block_size=block_size,
                         shift_targets=shift_targets)
    return build_model(config, seed)


def batch_of(n, seed=0, input_len=7, target_len=12):
    rng = np.random.default_rng(seed)
    inputs = [list(rng.integers(4, V, size=int(rng.integers(1, input_len + 1)))) for _ in range(n)]
    return seq2seq_batch(inputs, [[] for _ in inputs], input_len=input_len, target_len=target_len, pad_id=0,
                         example_ids=list(range(40, 40 + n)), pad_targets=True)


CASES = [("absorbing", None, 0.0, False), ("absorbing", "threshold", 0.0, False), ("absorbing", "random", 0.8, False),
         ("uniform", None, 0.7, False), ("uniform", "entropy", 0.0, False), ("uniform", "renoise_entropy", 0.5, False),
         ("absorbing", None, 0.0, True), ("uniform", "renoise_entropy", 0.5, True)]  # True: shift_targets


@pytest.mark.parametrize("process, policy, temperature, shift_targets", CASES)
def test_cached_block_decoding_equals_full_recomputation(process, policy, temperature, shift_targets):
    model, batch = block_model(shift_targets=shift_targets), batch_of(5)
    cfg = BlockSamplingConfig(num_steps=3, temperature=temperature, process=process,
                              policy=None if policy is None else get_policy(policy, threshold=0.05), eos_id=None)
    cached = block_sample(model, batch, cfg, jax.random.key(3))
    full = block_sample(model, batch, BlockSamplingConfig(**{**cfg.__dict__, "cache": False}), jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(full.tokens))
    np.testing.assert_array_equal(np.asarray(cached.commit_step), np.asarray(full.commit_step))
    np.testing.assert_allclose(np.asarray(cached.probs), np.asarray(full.probs), rtol=1e-5, atol=1e-6)
    assert int(cached.blocks_run) == 3 and np.all(np.asarray(cached.commit_step) >= 0)
    # one pass per step either way (the cache's commits ride on the next block's first step), plus the prompt's
    assert int(cached.forward_passes) == int(full.forward_passes) + 1


def test_a_block_sees_the_blocks_before_it_and_not_after():
    """Changing block 1's committed tokens changes block 2's logits, not block 0's."""
    model, batch = block_model(), batch_of(2, seed=4)
    den = block_denoiser(model, jax.tree.map(np.asarray, batch), 12, cache=False)
    canvas = np.full((2, B), 3, np.int32)
    rows = np.asarray(den.state).copy()
    state_a = den.commit(den.commit(rows, 0, canvas + 5), 1, canvas + 6)
    state_b = den.commit(den.commit(rows, 0, canvas + 5), 1, canvas + 7)
    np.testing.assert_array_equal(np.asarray(den.logits(state_a, 0, canvas)), np.asarray(den.logits(state_b, 0, canvas)))
    assert not np.allclose(np.asarray(den.logits(state_a, 2, canvas)), np.asarray(den.logits(state_b, 2, canvas)))


def test_example_decodes_the_same_alone_or_in_a_batch():
    model, batch = block_model(), batch_of(6, seed=1)
    cfg = BlockSamplingConfig(num_steps=2, temperature=0.9, process="absorbing", policy=RandomOrder(), num_samples=2)
    full = block_sample(model, batch, cfg, jax.random.key(1))
    for i in (0, 4):
        alone = block_sample(model, jax.tree.map(lambda x: x[i : i + 1], batch), cfg, jax.random.key(1))
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(full.tokens[i]))
        np.testing.assert_allclose(np.asarray(alone.probs[0]), np.asarray(full.probs[i]), rtol=1e-6)


def test_several_samples_keep_the_one_with_the_lowest_mean_nll_of_its_text():
    """Sample 0 of several is the single-sample decode (same key); the scores are each sample's
    mean -log p over its text (checked by hand on the single decode and on the kept one); the
    kept sample is the argmin."""
    model, batch = block_model(), batch_of(4, seed=3)
    one = BlockSamplingConfig(num_steps=2, temperature=1.0, process="uniform", eos_id=7)
    single = block_sample(model, batch, one, jax.random.key(5))
    several = block_sample(model, batch, BlockSamplingConfig(**{**one.__dict__, "num_samples": 3}), jax.random.key(5))

    def by_hand(out):
        probs, lengths = np.asarray(out.probs, np.float64), np.asarray(out.lengths)
        return np.array([-np.log(np.maximum(p[:n], 1e-30)).mean() for p, n in zip(probs, lengths)])

    scores = np.asarray(several.scores)
    assert scores.shape == (4, 3) and np.asarray(single.scores).shape == (4, 1)
    np.testing.assert_allclose(np.asarray(single.scores)[:, 0], by_hand(single), rtol=1e-5)
    np.testing.assert_allclose(scores[:, 0], by_hand(single), rtol=1e-5)  # sample 0 == the single decode
    np.testing.assert_array_equal(np.asarray(several.chosen), scores.argmin(-1))
    np.testing.assert_allclose(scores.min(-1), by_hand(several), rtol=1e-5)  # what was kept is the best
    kept_first = np.asarray(several.chosen) == 0
    np.testing.assert_array_equal(np.asarray(several.tokens)[kept_first], np.asarray(single.tokens)[kept_first])
    assert not np.allclose(scores[:, 0], scores[:, 1])  # the samples are different draws


def test_an_example_stops_at_the_block_holding_eos():
    model, batch = block_model(), batch_of(3, seed=2)
    base = BlockSamplingConfig(num_steps=4, temperature=0.0, eos_id=None)
    free = np.asarray(block_sample(model, batch, base).tokens)
    # Pretend the token example 0 wrote at position 5 (block 1) is EOS.
    eos = int(free[0, 5])
    first = int(np.argmax(free[0] == eos))
    out = block_sample(model, batch, BlockSamplingConfig(**{**base.__dict__, "eos_id": eos}))
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert lengths[0] == first + 1
    np.testing.assert_array_equal(tokens[0, : first + 1], free[0, : first + 1])
    assert np.all(tokens[0, first + 1 :] == 0) and np.all(np.asarray(out.commit_step)[0, first + 1 :] == -1)
    for i in (1, 2):  # the others stop at their own first EOS (or run to the end)
        hits = np.nonzero(free[i] == eos)[0]
        end = hits[0] + 1 if hits.size else 12
        assert lengths[i] == end
        np.testing.assert_array_equal(tokens[i, :end], free[i, :end])
    stops = [(np.nonzero(free[i] == eos)[0][:1] // B).tolist() or [2] for i in range(3)]
    assert int(out.blocks_run) == max(s[0] for s in stops) + 1


def test_bad_setups_are_refused():
    batch = batch_of(2)
    with pytest.raises(ValueError, match="block_causal"):
        block_sample(build_model(ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                             attention="bidirectional", dtype="float32"), 0),
                     batch, BlockSamplingConfig())
    with pytest.raises(ValueError, match="target_len=10 is not a multiple of block_size=4"):
        block_sample(block_model(), batch, BlockSamplingConfig(), target_len=10)
    with pytest.raises(ValueError, match="prefix_len=.* for example .* every block must fit"):
        block_sample(block_model(), batch, BlockSamplingConfig(), target_len=16)  # wider than the row's targets
    encdec = build_model(ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, d_ff=64, dtype="float32",
                                     arch="encoder_decoder", attention="bidirectional"), 0)
    with pytest.raises(ValueError, match=r"EncoderDecoder \(arch='encoder_decoder'\) lacks \['make_mask'\].*"
                                         r"arch='decoder'.*diffusion_sample"):
        block_sample(encdec, batch, BlockSamplingConfig())
    with pytest.raises(ValueError, match="block_size"):
        ModelConfig(vocab_size=V, attention="block_causal")
    with pytest.raises(ValueError, match="block_size=4"):
        ModelConfig(vocab_size=V, attention="bidirectional", block_size=4)
    switched = with_attention(block_model(), "bidirectional")
    assert switched.config.block_size is None
