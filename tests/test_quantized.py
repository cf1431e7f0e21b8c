"""Weight-only int8 decoding: the C++ kernel (`workbench.kernels.cpu.int8_matmul`) against a float64
reference within the float32 accumulation bound, on both its AVX-512 and portable paths and split over
threads; int8 quantization; and `quantize_for_decoding` models inside the unchanged samplers (AR greedy
equals AR greedy on the dequantized float32 weights where the argmax margins allow no other answer;
self-speculation on the int8 drafter equals int8 AR)."""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from workbench.kernels.cpu import KernelLibraryMissing, int8_matmul, library
from workbench.models.config import LoRAConfig, get_preset
from workbench.models.lora import adapter_gate, with_lora
from workbench.models.quantized import (Int8Embedder, Int8Linear, Int8LoRALinear, dequantize_int8, fake_quantize,
                                        quantize_for_decoding, quantize_int8)
from workbench.models.transformer import build_model
from workbench.sampling.ar import ARSamplingConfig, generate
from workbench.sampling.speculative import SpeculativeConfig, speculative_generate

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53


def gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


MODES = [(path, split) for path in ("avx512", "portable") for split in (False, True)]


@contextlib.contextmanager
def kernel_mode(path: str, split: bool):
    """The kernel's AVX-512 or portable path; every product split over the thread pool, or none."""
    if path == "avx512" and not library.has_avx512():
        pytest.skip("this CPU has no AVX-512: only the portable path runs here")
    library.force_portable(path == "portable")
    library.set_min_parallel_work(0 if split else 1 << 62)
    try:
        yield
    finally:
        library.force_portable(False)
        library.set_min_parallel_work(library.DEFAULT_MIN_PARALLEL_WORK)


def _problem(m, k, n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * rng.choice([1e-3, 1.0, 30.0], size=(m, 1))).astype(np.float32)
    x[rng.random((m, k)) < 0.05] = 0.0
    q = rng.integers(-127, 128, size=(n, k)).astype(np.int8)
    scale = (rng.random(n) * 0.05 + 1e-4).astype(np.float32)
    return x, q, scale


def _check_bound(y, x, q, scale):
    """|y - exact| <= gamma_(K+1)(float32) * |s_n| * sum_k |x_mk q_nk|: each product of an accumulator
    (fused or not) and each addition rounds once, in any summation order at most K times per term,
    then the scale multiply once. The float64 reference's own error (gamma_K(float64)) is added."""
    k = x.shape[1]
    x64, q64, s64 = x.astype(np.float64), q.astype(np.float64), scale.astype(np.float64)
    exact = (x64 @ q64.T) * s64
    magnitude = (np.abs(x64) @ np.abs(q64).T) * np.abs(s64)
    bound = (gamma(k + 1, U32) + gamma(k + 1, U64)) * magnitude
    err = np.abs(np.asarray(y, np.float64) - exact)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"row {worst[0]} channel {worst[1]}: error {err[worst]:.3g} exceeds the float32 "
                                  f"accumulation bound {bound[worst]:.3g} (K={k})")


@pytest.mark.parametrize("path,split", MODES)
@given(m=st.integers(1, 16), k=st.integers(1, 300), n=st.integers(1, 200), seed=st.integers(0, 2**31 - 1))
def test_kernel_matches_float64_within_the_accumulation_bound(path, split, m, k, n, seed):
    x, q, scale = _problem(m, k, n, seed)
    with kernel_mode(path, split):
        y = jax.jit(int8_matmul)(x, q, scale).block_until_ready()
    assert y.shape == (m, n) and y.dtype == jnp.float32
    _check_bound(y, x, q, scale)


@pytest.mark.parametrize("path,split", MODES)
@pytest.mark.parametrize("m,k,n", [(1, 576, 1536), (4, 1536, 576), (16, 576, 3000), (40, 33, 129), (3, 16, 64)])
def test_kernel_at_model_shapes_and_many_rows(path, split, m, k, n):
    x, q, scale = _problem(m, k, n, m * k + n)
    with kernel_mode(path, split):
        y = int8_matmul(jnp.asarray(x), q, scale).block_until_ready()
    _check_bound(y, x, q, scale)


@pytest.mark.parametrize("path,split", MODES)
def test_each_row_is_computed_alone_whatever_the_batch(path, split):
    """A row's result does not depend on the rows beside it (bitwise): a verify pass over b positions
    gives each position what a one-token decoding step would."""
    x, q, scale = _problem(21, 200, 150, 7)
    with kernel_mode(path, split):
        together = np.asarray(int8_matmul(jnp.asarray(x), q, scale))
        alone = [np.asarray(int8_matmul(jnp.asarray(x[r:r + 1]), q, scale))[0] for r in range(21)]
    np.testing.assert_array_equal(np.stack(alone), together)


def test_kernel_leading_dimensions_and_empty_inputs():
    x, q, scale = _problem(6, 40, 9, 1)
    y = int8_matmul(jnp.asarray(x).reshape(2, 3, 40), q, scale)
    np.testing.assert_array_equal(np.asarray(y).reshape(6, 9), np.asarray(int8_matmul(jnp.asarray(x), q, scale)))
    assert int8_matmul(jnp.zeros((0, 40), jnp.float32), q, scale).shape == (0, 9)


def test_kernel_refuses_bad_operands_by_name():
    x, q, scale = _problem(2, 8, 4, 0)
    with pytest.raises(ValueError, match=r"weights have shape \(4, 8\) and dtype float32; expected a \[N, K\] int8"):
        int8_matmul(x, q.astype(np.float32), scale)
    with pytest.raises(ValueError, match=r"scale has shape \(3,\); expected \(4,\)"):
        int8_matmul(x, q, scale[:3])
    with pytest.raises(ValueError, match="last dimension must be the weights' K=8"):
        int8_matmul(x[:, :5], q, scale)


def test_missing_library_names_the_file_and_the_build_command(monkeypatch, tmp_path):
    missing = tmp_path / "libworkbench_cpu.so"
    monkeypatch.setattr(library, "LIBRARY_PATH", missing)
    monkeypatch.setattr(library, "_library", None)
    with pytest.raises(KernelLibraryMissing, match=rf"{missing}.*never falls back to float32.*make cpu-kernels"):
        int8_matmul(np.ones((1, 4), np.float32), np.ones((2, 4), np.int8), np.ones(2, np.float32))


def test_stale_library_is_refused(monkeypatch, tmp_path):
    old = tmp_path / "libworkbench_cpu.so"
    old.write_bytes(b"")
    os.utime(old, (0, 0))
    monkeypatch.delenv("WORKBENCH_CPU_KERNELS", raising=False)
    monkeypatch.setattr(library, "LIBRARY_PATH", old)
    monkeypatch.setattr(library, "_library", None)
    with pytest.raises(KernelLibraryMissing, match=r"older than its sources \(int8_matmul.cc\).*make cpu-kernels"):
        library.load_library()


# -- quantization ---------------------------------------------------------------------------------------------

@given(n=st.integers(1, 40), k=st.integers(1, 70), seed=st.integers(0, 2**31 - 1))
def test_quantize_dequantize_round_trip(n, k, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * rng.choice([1e-6, 1.0, 100.0], size=(n, 1))).astype(np.float32)
    w[0] = 0.0  # an all-zero channel
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (n,)
    assert np.all(np.abs(q.astype(int)) <= 127)
    back = np.asarray(dequantize_int8(q, scale), np.float64)
    # half a step, plus the float32 roundings of w / scale and of q * scale
    tol = scale[:, None].astype(np.float64) * (0.5 + 256 * U32)
    assert np.all(np.abs(back - w) <= tol)
    nonzero = np.abs(w).max(1) > 0
    assert np.all(np.abs(q[nonzero]).max(1) == 127)  # each channel's largest weight uses the whole range
    np.testing.assert_array_equal(back[0], 0.0)
    q2, scale2 = quantize_int8(np.asarray(dequantize_int8(q, scale)))
    np.testing.assert_array_equal(q2, q)  # quantizing the dequantized weights changes nothing


def test_quantize_refuses_bad_weights():
    with pytest.raises(ValueError, match=r"shape \(3,\); expected \[N, K\]"):
        quantize_int8(np.ones(3))
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize_int8(np.array([[1.0, np.nan]]))


# -- models ---------------------------------------------------------------------------------------------------

V = 17
MASK = 16
NO_EOS = 10_000


def _tiny(tie: bool, seed: int = 0):
    return build_model(get_preset("tiny", vocab_size=V, dtype="float32", max_len=64, tie_embeddings=tie), seed)


def _perturb(model, seed, scale):
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                                for x, k in zip(leaves, keys)]))


def _prompts(n, width, seed):
    rng = np.random.default_rng(seed)
    lengths = np.asarray([1 + i % width for i in range(n)], np.int32)
    prompts = np.zeros((n, width), np.int32)
    for i, length in enumerate(lengths):
        prompts[i, :length] = rng.integers(4, 16, size=length)
    return prompts, lengths


@pytest.mark.parametrize("tie", [True, False])
def test_every_projection_and_the_head_are_int8(tie):
    model = _tiny(tie)
    q = quantize_for_decoding(model)
    kinds = {type(node) for _, node in nnx.iter_graph(q)}
    assert Int8Linear in kinds and Int8Embedder in kinds and nnx.Linear not in kinds
    assert isinstance(model.blocks[0].attn.q, nnx.Linear)  # the original is untouched
    np.testing.assert_array_equal(np.asarray(q.blocks[0].mlp.down.dequantized_kernel()),
                                  np.asarray(fake_quantize(model).blocks[0].mlp.down.kernel[...]))
    with pytest.raises(ValueError, match=r"bits=4; expected one of \(8,\)"):
        quantize_for_decoding(model, bits=4)


@pytest.mark.parametrize("tie", [True, False])
def test_logits_close_to_the_float_model(tie):
    """Against the dequantized float32 weights (the same network): float32 rounding only. Against the
    original weights: the quantization error, a few percent of the logits' spread."""
    model = _tiny(tie)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (3, 20)), jnp.int32)
    got = np.asarray(quantize_for_decoding(model)(tokens), np.float64)
    same_net = np.asarray(fake_quantize(model)(tokens), np.float64)
    original = np.asarray(model(tokens), np.float64)
    spread = original.std()
    assert np.abs(got - same_net).max() <= 1e-5 * np.abs(same_net).max()
    assert np.abs(got - original).max() <= 0.05 * spread


@pytest.mark.parametrize("tie", [True, False])
def test_greedy_ar_equals_greedy_ar_on_the_dequantized_weights(tie):
    """The int8 model and the float32 model with the dequantized weights differ by rounding only. Along
    the float model's greedy continuation, every step's top-1 margin is checked to exceed twice the
    largest logit difference between the two models on those same rows, so no other argmax is possible;
    then the int8 model's greedy AR output must equal it token for token."""
    model = _tiny(tie, seed=3)
    _perturb(model, 4, 0.3)  # a random tiny model otherwise repeats its last token
    q, f = quantize_for_decoding(model), fake_quantize(model)
    prompts, lengths = _prompts(12, 6, 0)
    config = ARSamplingConfig(max_new_tokens=10, eos_id=NO_EOS)
    want = np.asarray(generate(f, prompts, lengths, config).tokens)
    got = np.asarray(generate(q, prompts, lengths, config).tokens)
    rows = np.zeros((12, 16), np.int32)
    rows[:, :6] = prompts
    for i, length in enumerate(lengths):
        rows[i, length:length + 10] = want[i]
    lf, lq = np.asarray(f(jnp.asarray(rows)), np.float64), np.asarray(q(jnp.asarray(rows)), np.float64)
    steps = lengths[:, None] - 1 + np.arange(10)[None, :]
    at_f = np.take_along_axis(lf, steps[:, :, None], axis=1)
    top2 = np.sort(at_f, axis=-1)[..., -2:]
    margin = (top2[..., 1] - top2[..., 0]).min()
    diff = np.abs(lf - lq).max()
    assert margin > 2 * diff, f"smallest greedy margin {margin:.3g} vs logit difference {diff:.3g}: pick another seed"
    assert len(set(want.ravel().tolist())) > 3  # not a constant continuation
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def drafter():
    base = _tiny(False, seed=5)
    _perturb(base, 6, 0.3)
    drafter = with_lora(base, LoRAConfig(rank=4, trainable_rows=(MASK,)))
    _perturb(drafter, 7, 0.05)  # adapter factors and the mask row, small: drafts that are sometimes right
    return base, drafter


def test_the_adapter_runs_on_the_int8_base_and_switches_off(drafter):
    base, model = drafter
    q = quantize_for_decoding(model)
    assert isinstance(q.blocks[0].attn.q, Int8LoRALinear)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, V, (2, 9)), jnp.int32)
    with adapter_gate(False):
        off = np.asarray(q(tokens))
    np.testing.assert_array_equal(off, np.asarray(quantize_for_decoding(base)(tokens)))
    on = np.asarray(q(tokens))
    assert np.abs(on - off).max() > 1e-3  # the adapter does something
    with adapter_gate(True):
        np.testing.assert_allclose(on, np.asarray(fake_quantize(model)(tokens)), atol=1e-5 * np.abs(on).max())


def test_speculative_greedy_on_the_int8_drafter_equals_int8_ar(drafter):
    """Greedy verification with the int8 base is the int8 AR model's greedy output, rows where AR never
    prefers the mask row (the speculative decoder never emits it)."""
    base, model = drafter
    q_base, q_drafter = quantize_for_decoding(base), quantize_for_decoding(model)
    prompts, lengths = _prompts(24, 8, 2)
    ar = generate(q_base, prompts, lengths, ARSamplingConfig(max_new_tokens=14, eos_id=NO_EOS))
    plain = ~np.any(np.asarray(ar.tokens) == MASK, axis=1)
    assert plain.sum() >= 16
    out = speculative_generate(q_drafter, prompts, lengths,
                               SpeculativeConfig(block_size=4, max_new_tokens=14, eos_id=None, mask_id=MASK))
    np.testing.assert_array_equal(np.asarray(out.tokens)[plain], np.asarray(ar.tokens)[plain])
    assert 0 < int(out.accepted_at.sum()) < int(out.drafted_at.sum())  # drafts both kept and rejected
