"""Models: mask semantics, impl agreement, KV-cache exactness, parameter counts, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.attention import available_impls, supporting_impls
from workbench.models import (
    PRESETS,
    ModelConfig,
    build_model,
    count_params,
    get_preset,
    param_count,
    with_attention,
)
from workbench.models.architectures import ARCHITECTURES
from workbench.models.transformer import MODEL_CLASSES
from workbench.sampling.ar import ARSamplingConfig, generate

VOCAB = 97


def small_config(**kw) -> ModelConfig:
    # head_dim 64 so the Pallas kernels (head dims 64/128) can run the same model
    base = dict(vocab_size=VOCAB, d_model=128, num_layers=2, num_heads=2, d_ff=256, max_len=64,
                dtype="float32", tie_embeddings=False)
    base.update(kw)
    return ModelConfig(**base)


def random_tokens(seed, shape):
    return jax.random.randint(jax.random.key(seed), shape, 3, VOCAB, dtype=jnp.int32)


# -- mask semantics through the whole model ----------------------------------------

def test_causal_outputs_ignore_the_future_and_bidirectional_do_not():
    model = build_model(small_config(attention="causal"), 0)
    tokens = random_tokens(1, (2, 16))
    changed = tokens.at[:, 10:].set(random_tokens(2, (2, 6)))
    a, b = model(tokens), model(changed)
    np.testing.assert_array_equal(np.asarray(a[:, :10]), np.asarray(b[:, :10]))
    assert float(jnp.abs(a[:, 10:] - b[:, 10:]).max()) > 1e-3

    bidir = with_attention(model, "bidirectional")
    a, b = bidir(tokens), bidir(changed)
    assert float(jnp.abs(a[:, :10] - b[:, :10]).max()) > 1e-3


def test_prefix_lm_prefix_sees_whole_prefix_and_nothing_after():
    model = build_model(small_config(attention="prefix_lm"), 0)
    tokens = random_tokens(3, (2, 16))
    prefix = jnp.array([6, 9])
    base = model(tokens, prefix_len=prefix)
    for b, p in enumerate([6, 9]):
        # changing a token after the prefix leaves every prefix position unchanged
        after = tokens.at[b, p].set((tokens[b, p] + 1) % VOCAB)
        out = model(after, prefix_len=prefix)
        np.testing.assert_array_equal(np.asarray(base[b, :p]), np.asarray(out[b, :p]))
        # changing the last prefix token changes the first prefix position (it sees the whole prefix)
        last = tokens.at[b, p - 1].set((tokens[b, p - 1] + 1) % VOCAB)
        out = model(last, prefix_len=prefix)
        assert float(jnp.abs(out[b, 0] - base[b, 0]).max()) > 1e-4
        # positions after the prefix stay causal
        later = tokens.at[b, p + 3].set((tokens[b, p + 3] + 1) % VOCAB)
        out = model(later, prefix_len=prefix)
        np.testing.assert_array_equal(np.asarray(base[b, : p + 3]), np.asarray(out[b, : p + 3]))


def test_prefix_diffusion_inputs_see_only_inputs_targets_see_all():
    model = build_model(small_config(attention="prefix_diffusion"), 0)
    tokens = random_tokens(4, (1, 12))
    prefix = jnp.array([5])
    base = model(tokens, prefix_len=prefix)
    out = model(tokens.at[0, 11].set(7), prefix_len=prefix)
    np.testing.assert_array_equal(np.asarray(base[0, :5]), np.asarray(out[0, :5]))
    assert float(jnp.abs(out[0, 5] - base[0, 5]).max()) > 1e-4


def test_key_padding_hides_padded_tokens():
    model = build_model(small_config(attention="bidirectional"), 0)
    tokens = random_tokens(5, (1, 12))
    lengths = jnp.array([8])
    base = model(tokens, lengths=lengths)
    out = model(tokens.at[0, 9:].set(3), lengths=lengths)
    np.testing.assert_allclose(np.asarray(base[0, :8]), np.asarray(out[0, :8]), rtol=1e-6, atol=1e-6)


# -- every impl available here gives the same outputs and gradients -----------------

def _impls_for(config):
    model = build_model(config, 0)
    q = jnp.zeros((1, 8, config.num_heads, config.head_dim), jnp.float32)
    from workbench.attention import AttentionMask

    mask = model.make_mask(1, 8, prefix_len=jnp.array([3]))
    return [name for name in supporting_impls(q, q, q, mask) if name != "xla"]


@pytest.mark.parametrize("kind", ["causal", "prefix_lm", "bidirectional", "prefix_diffusion"])
@settings(max_examples=1)  # each example runs the model through the Pallas interpreters: slow on CPU
@given(seed=st.integers(0, 2**16), seq=st.integers(3, 24), data=st.data())
def test_every_impl_matches_xla_outputs_and_gradients(kind, seed, seq, data):
    config = small_config(attention=kind, num_layers=1)
    impls = _impls_for(config)
    assert impls, f"no impl besides xla supports {kind} on {jax.default_backend()}: {available_impls()}"
    prefix = jnp.array([data.draw(st.integers(0, seq)), data.draw(st.integers(0, seq))])
    lengths = jnp.array([seq, data.draw(st.integers(1, seq))])
    tokens = random_tokens(seed, (2, seq))
    weights = jax.random.normal(jax.random.key(seed + 1), (2, seq, VOCAB))

    def loss_and_grads(impl):
        model = build_model(config.replace(attention_impl=impl), 0)

        def loss(m):
            logits = m(tokens, prefix_len=prefix, lengths=lengths)
            return jnp.sum(logits * weights) / logits.size, logits

        (value, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
        return logits, grads

    ref_logits, ref_grads = loss_and_grads("xla")
    for impl in impls:
        logits, grads = loss_and_grads(impl)
        err = float(jnp.linalg.norm(logits - ref_logits) / jnp.linalg.norm(ref_logits))
        assert err < 1e-5, (impl, kind, err)
        for (path, g), (_, r) in zip(jax.tree_util.tree_leaves_with_path(nnx.state(grads)),
                                     jax.tree_util.tree_leaves_with_path(nnx.state(ref_grads))):
            gerr = float(jnp.linalg.norm(g - r) / (jnp.linalg.norm(r) + 1e-12))
            assert gerr < 1e-4, (impl, kind, path, gerr)


# -- KV cache exactness --------------------------------------------------------------

def _greedy_by_recomputation(model, prompts, lengths, steps, encdec=False):
    outputs = []
    for b in range(prompts.shape[0]):
        prompt = prompts[b : b + 1, : int(lengths[b])]
        seq = [] if encdec else list(np.asarray(prompt[0]))
        dec = [0]
        for _ in range(steps):
            if encdec:
                logits = model(prompt, jnp.array([dec], jnp.int32))
                dec.append(int(jnp.argmax(logits[0, -1])))
            else:
                logits = model(jnp.array([seq], jnp.int32), prefix_len=jnp.array([int(lengths[b])]))
                seq.append(int(jnp.argmax(logits[0, -1])))
        outputs.append(dec[1:] if encdec else seq[int(lengths[b]):])
    return np.array(outputs)


@pytest.mark.parametrize("arch,attention", [("decoder", "causal"), ("decoder", "prefix_lm"), ("encoder_decoder", "causal")])
def test_kv_cached_greedy_equals_full_recomputation(arch, attention):
    config = small_config(arch=arch, attention=attention, d_model=64, num_heads=4)
    model = build_model(config, 1)
    prompts = random_tokens(7, (3, 7))
    lengths = jnp.array([7, 2, 5])
    steps = 10
    out = generate(model, prompts, lengths, ARSamplingConfig(max_new_tokens=steps, eos_id=-1))
    ref = _greedy_by_recomputation(model, prompts, lengths, steps, encdec=arch == "encoder_decoder")
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert len(np.unique(ref)) > 3, "degenerate reference: the test would not notice a wrong cache"


def test_generation_stops_at_eos_and_pads_after():
    config = small_config(d_model=64, num_heads=4)
    model = build_model(config, 1)
    prompts = random_tokens(8, (2, 5))
    free = generate(model, prompts, jnp.array([5, 3]), ARSamplingConfig(max_new_tokens=8, eos_id=-1))
    eos = int(free.tokens[0, 2])  # make the third generated token of example 0 the EOS
    out = generate(model, prompts, jnp.array([5, 3]), ARSamplingConfig(max_new_tokens=8, eos_id=eos, pad_id=0))
    first = int(np.argmax(np.asarray(out.tokens[0]) == eos))
    assert int(out.lengths[0]) == first + 1
    assert np.all(np.asarray(out.tokens[0, first + 1 :]) == 0)


def test_sampling_is_batch_invariant_and_seeded():
    config = small_config(d_model=64, num_heads=4)
    model = build_model(config, 1)
    prompts = random_tokens(9, (4, 6))
    lengths = jnp.array([6, 3, 4, 5])
    cfg = ARSamplingConfig(max_new_tokens=6, temperature=1.0, top_k=20, top_p=0.9, eos_id=-1)
    key = jax.random.key(3)
    full = generate(model, prompts, lengths, cfg, key, example_ids_B=jnp.arange(4))
    alone = generate(model, prompts[2:3], lengths[2:3], cfg, key, example_ids_B=jnp.array([2]))
    np.testing.assert_array_equal(np.asarray(full.tokens[2]), np.asarray(alone.tokens[0]))
    other = generate(model, prompts, lengths, cfg, jax.random.key(4), example_ids_B=jnp.arange(4))
    assert not np.array_equal(np.asarray(full.tokens), np.asarray(other.tokens))


def test_top_k_one_is_greedy():
    from workbench.sampling.ar import sample_logits

    logits = jax.random.normal(jax.random.key(0), (5, 30))
    keys = jax.random.split(jax.random.key(1), 5)
    greedy = sample_logits(logits, keys, ARSamplingConfig(temperature=0.0))
    top1 = sample_logits(logits, keys, ARSamplingConfig(temperature=2.0, top_k=1))
    tiny_p = sample_logits(logits, keys, ARSamplingConfig(temperature=2.0, top_p=1e-6))
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(top1))
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(tiny_p))


# -- parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_param_count_matches_closed_form(name, arch):
    config = get_preset(name, vocab_size=None if name.startswith("paper") else 8000, arch=arch)
    abstract = nnx.eval_shape(lambda: build_model(config, 0))  # no memory for paper_xl
    assert count_params(abstract) == param_count(config)["total"]


def test_preset_sizes_match_the_paper():
    millions = {n: param_count(get_preset(n))["total"] / 1e6 for n in ("paper_base", "paper_large", "paper_xl")}
    assert 270 < millions["paper_base"] < 290
    assert 560 < millions["paper_large"] < 580
    assert 1650 < millions["paper_xl"] < 1750
    assert param_count(get_preset("tiny", vocab_size=8000))["total"] < 1_000_000
    assert 18e6 < param_count(get_preset("small", vocab_size=8000))["total"] < 25e6
    assert 100e6 < param_count(get_preset("base", vocab_size=32000))["total"] < 120e6


def test_with_attention_keeps_parameters_bitwise():
    model = build_model(small_config(), 0)
    switched = with_attention(model, "bidirectional")
    assert switched.config.attention == "bidirectional"
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(switched, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- bad input -------------------------------------------------------------------------

def test_bad_input_errors_name_value_limit_and_fix():
    model = build_model(small_config(max_len=16, attention="prefix_lm"), 0)
    with pytest.raises(ValueError, match=r"sequence length 20 exceeds max_len=16.*raise max_len"):
        model(random_tokens(0, (1, 20)), prefix_len=jnp.array([2]))
    with pytest.raises(ValueError, match=r"prefix_len=13 for example 1 is outside \[0, 10\]"):
        model(random_tokens(0, (2, 10)), prefix_len=jnp.array([3, 13]))
    with pytest.raises(ValueError, match=r"needs prefix_len"):
        model(random_tokens(0, (2, 10)))
    with pytest.raises(ValueError, match=r"num_heads=5 does not divide d_model=128"):
        small_config(num_heads=5)
    with pytest.raises(ValueError, match=r"unknown model preset 'huge'.*expected one of"):
        get_preset("huge", vocab_size=10)
    from workbench.attention import AttentionMask, attention

    q = jnp.zeros((2, 4, 2, 8))
    with pytest.raises(ValueError, match=r"prefix_len has shape \(3,\); expected \(2,\)"):
        attention(q, q, q, AttentionMask.prefix_lm(jnp.array([1, 2, 3])))
    with pytest.raises(ValueError, match=r"q_segment_ids has shape \(2, 5\); expected \(2, 4\)"):
        seg = jnp.zeros((2, 5), jnp.int32)
        attention(q, q, q, AttentionMask(q_segment_ids=seg, kv_segment_ids=jnp.zeros((2, 4), jnp.int32)))
    with pytest.raises(ValueError, match=r"'cudnn' cannot handle.*Impls that can"):
        attention(q, q, q, AttentionMask.prefix_lm(jnp.array([1, 2])), impl="cudnn")


def test_every_architecture_has_a_model_class_and_an_unknown_one_is_refused():
    assert set(MODEL_CLASSES) == set(ARCHITECTURES)
    with pytest.raises(ValueError, match=r"arch='gpt'; expected one of \['decoder', 'encoder_decoder'\]"):
        ModelConfig(vocab_size=10, arch="gpt")


@pytest.mark.parametrize("attention", ["prefix_lm", "prefix_diffusion"])
def test_encoder_decoder_with_a_prefix_mask_is_refused_at_config_time(attention):
    with pytest.raises(ValueError, match=f"arch='encoder_decoder' with attention='{attention}'.*arch='decoder'"):
        ModelConfig(vocab_size=10, d_model=32, num_heads=2, arch="encoder_decoder", attention=attention)


@pytest.mark.parametrize("arch,attention", [("decoder", "bidirectional"), ("decoder", "prefix_diffusion"),
                                            ("encoder_decoder", "bidirectional")])
def test_canvas_denoiser_gives_the_training_layout_s_logits_at_the_targets(arch, attention):
    """The sampler's view (targets only, what can be computed once cached) equals the losses'
    view (`denoise` over the whole layout) at the target positions, on both architectures."""
    from workbench.objectives.batch import seq2seq_batch

    model = build_model(small_config(arch=arch, attention=attention, dtype="float32"), 0)
    rng = np.random.default_rng(0)
    inputs = [list(rng.integers(4, VOCAB, size=n)) for n in (3, 7, 1)]
    batch = jax.tree.map(jnp.asarray, seq2seq_batch(inputs, [[]] * 3, input_len=7, target_len=5, pad_id=0))
    canvas = jnp.asarray(rng.integers(4, VOCAB, size=(3, 5)), jnp.int32)
    got = model.canvas_denoiser(batch, 5)(canvas)
    clean, weights = model.target_view(batch)
    at = (batch.prefix_len[:, None] + jnp.arange(5)[None]) if arch == "decoder" else jnp.broadcast_to(jnp.arange(5), (3, 5))
    tokens = jax.vmap(lambda row, pos, vals: row.at[pos].set(vals))(clean, at, canvas)
    assert bool(jnp.all(jnp.take_along_axis(weights, at, axis=1) == 1))  # the canvas sits on the target weights
    want = jnp.take_along_axis(model.denoise(batch, tokens), at[:, :, None], axis=1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_both_architectures_implement_the_denoiser_protocol_and_only_decoder_only_the_cached_row():
    from workbench.models.denoiser import CachedRowDenoiser, Denoiser, missing

    decoder = build_model(small_config(attention="bidirectional"), 0)
    encdec = build_model(small_config(arch="encoder_decoder", attention="bidirectional"), 0)
    assert isinstance(decoder, Denoiser) and isinstance(encdec, Denoiser)
    assert isinstance(decoder, CachedRowDenoiser) and not isinstance(encdec, CachedRowDenoiser)
    assert missing(decoder, CachedRowDenoiser) == [] and missing(encdec, CachedRowDenoiser) == ["make_mask"]
    assert "canvas_denoiser" in missing(object(), Denoiser)
