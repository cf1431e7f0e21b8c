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

from workbench.kernels.cpu import KernelLibraryMissing, dequantize_blocks, gguf_matmul, int8_matmul, library
from workbench.models.config import LoRAConfig, get_preset
from workbench.models.lora import adapter_gate, with_lora
from workbench.models.quantized import (GEMM_ROWS, PackedEmbedder, PackedLinear, PackedLoRALinear, dequantize_int8,
                                        fake_quantize, pack_gguf_blocks, quantize_for_decoding, quantize_int8)
from workbench.models.transformer import build_model
from workbench.sampling.ar import ARSamplingConfig, generate
from workbench.sampling.speculative import SpeculativeConfig, speculative_generate

from test_speculative import MASK, NO_EOS, V, _perturb, _prompts  # the tiny models' vocabulary and helpers

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


def _check_bound(y, x, q, scale=None):
    """|y - exact| <= gamma_(K+1)(float32) * |s_n| * sum_k |x_mk q_nk|: each product of an accumulator
    (fused or not) and each addition rounds once, in any summation order at most K times per term,
    then the scale multiply once (no scale: q holds the float32 weights themselves). The float64
    reference's own error (gamma_(K+1)(float64)) is added."""
    k = x.shape[1]
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    s64 = np.ones(q.shape[0]) if scale is None else scale.astype(np.float64)
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
    with pytest.raises(KernelLibraryMissing, match=r"older than its sources \(.*int8_matmul.cc.*\).*make cpu-kernels"):
        library.load_library()


def _gguf_problem(m, blocks_per_row, n, kind, seed):
    import gguf

    rng = np.random.default_rng(seed)
    k = 32 * blocks_per_row
    x = (rng.standard_normal((m, k)) * rng.choice([1e-3, 1.0, 30.0], size=(m, 1))).astype(np.float32)
    w = (rng.standard_normal((n, k)) * rng.choice([1e-4, 0.05, 2.0], size=(n, 1))).astype(np.float32)
    w[:, :32] *= rng.random() < 0.3  # sometimes an all-zero block
    qtype = gguf.GGMLQuantizationType[kind.upper()]
    blocks = np.asarray(gguf.quants.quantize(w, qtype), np.uint8)
    return x, blocks, gguf.quants.dequantize(blocks, qtype).astype(np.float32).reshape(n, k)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("path,split", MODES)
@given(m=st.integers(1, 16), blocks_per_row=st.integers(1, 12), n=st.integers(1, 150), seed=st.integers(0, 2**31 - 1))
def test_gguf_kernel_matches_float64_within_the_accumulation_bound(kind, path, split, m, blocks_per_row, n, seed):
    """The kernel's weights are the GGUF reader's dequantized float32 weights exactly, so the float32
    accumulation bound applies to x @ W.T with those weights."""
    x, blocks, w = _gguf_problem(m, blocks_per_row, n, kind, seed)
    with kernel_mode(path, split):
        y = gguf_matmul(jnp.asarray(x), jnp.asarray(blocks), kind).block_until_ready()
    assert y.shape == (m, n)
    _check_bound(y, x, w)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_gguf_blocks_dequantize_as_the_gguf_reader_does(kind):
    x, blocks, w = _gguf_problem(3, 18, 40, kind, 0)
    np.testing.assert_array_equal(np.asarray(dequantize_blocks(jnp.asarray(blocks), kind)), w)
    rows = jnp.asarray([[3, 0], [39, 3]])
    np.testing.assert_array_equal(np.asarray(dequantize_blocks(jnp.take(jnp.asarray(blocks), rows, axis=0), kind)),
                                  w[np.asarray(rows)])


@pytest.mark.parametrize("path,split", MODES)
def test_gguf_rows_are_computed_alone_whatever_the_batch(path, split):
    x, blocks, _ = _gguf_problem(19, 18, 130, "q4_1", 3)
    with kernel_mode(path, split):
        together = np.asarray(gguf_matmul(jnp.asarray(x), jnp.asarray(blocks), "q4_1"))
        alone = [np.asarray(gguf_matmul(jnp.asarray(x[r:r + 1]), jnp.asarray(blocks), "q4_1"))[0] for r in range(19)]
    np.testing.assert_array_equal(np.stack(alone), together)


def test_gguf_kernel_refuses_bad_operands_by_name():
    x, blocks, _ = _gguf_problem(2, 2, 4, "q4_1", 0)
    with pytest.raises(ValueError, match=r"kind='q5_0'; expected one of \['q4_1', 'q8_0'\]"):
        gguf_matmul(x, blocks, "q5_0")
    with pytest.raises(ValueError, match=r"blocks have shape \(4, 39\).*q4_1 blocks of 20 bytes"):
        gguf_matmul(x, blocks[:, :39], "q4_1")
    with pytest.raises(ValueError, match="last dimension must be the weights' K=64"):
        gguf_matmul(x[:, :32], blocks, "q4_1")


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

def _tiny(tie: bool, seed: int = 0):
    return build_model(get_preset("tiny", vocab_size=V, dtype="float32", max_len=64, tie_embeddings=tie), seed)


@pytest.mark.parametrize("tie", [True, False])
def test_every_projection_and_the_head_are_int8(tie):
    model = _tiny(tie)
    q = quantize_for_decoding(model)
    kinds = {type(node) for _, node in nnx.iter_graph(q)}
    assert PackedLinear in kinds and PackedEmbedder in kinds and nnx.Linear not in kinds
    assert isinstance(model.blocks[0].attn.q, nnx.Linear)  # the original is untouched
    np.testing.assert_array_equal(np.asarray(q.blocks[0].mlp.down.dequantized_kernel()),
                                  np.asarray(fake_quantize(model).blocks[0].mlp.down.kernel[...]))
    with pytest.raises(ValueError, match=r"bits=4; expected one of \(8,\)"):
        quantize_for_decoding(model, bits=4)


@pytest.mark.parametrize("rows", [1, 7, GEMM_ROWS + 3])
def test_a_packed_layer_computes_with_its_dequantized_weights(rows):
    """Few rows run the kernel, many (a prompt pass) XLA's GEMM on the unpacked weights: both within the
    float32 accumulation bound of x @ (q * scale).T."""
    rng = np.random.default_rng(rows)
    layer = PackedLinear.int8(rng.standard_normal((96, 40)).astype(np.float32), bias=None, dtype=jnp.float32)
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    _check_bound(layer(jnp.asarray(x)), x, np.asarray(layer.weight[...]), np.asarray(layer.scale[...]))


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
    assert isinstance(q.blocks[0].attn.q, PackedLoRALinear)
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


# -- SmolLM2-135M in the GGUF's own blocks --------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    from workbench.pretrained import DEFAULT_MODEL, load_pretrained

    pretrained = load_pretrained(DEFAULT_MODEL, dtype="float32")
    return pretrained, pack_gguf_blocks(pretrained.model, pretrained.source.path)


def test_gguf_blocks_are_the_imported_weights_and_greedy_equals_the_golden_continuation(smollm2):
    """The packed model is the float32 model's exact weights (checked bitwise when packing), so its logits
    differ by summation order only, and its KV-cached greedy continuations equal the golden (transformers)
    ones wherever the golden margins exceed 10x the tolerance that tests/test_pretrained.py uses."""
    import json
    from pathlib import Path

    golden = json.loads((Path(__file__).parent / "golden" / "pretrained_smollm2.json").read_text())
    pretrained, packed = smollm2
    kinds = {(type(node).__name__, getattr(node, "fmt", None)) for _, node in nnx.iter_graph(packed)}
    assert ("PackedLinear", "q4_1") in kinds and ("PackedEmbedder", "q8_0") in kinds
    assert ("Linear", None) not in kinds
    prompts = golden["prompts"]
    width = max(len(p["ids"]) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        ids[row, :len(p["ids"])] = p["ids"]
    lengths = np.asarray([len(p["ids"]) for p in prompts], np.int32)
    forward = nnx.jit(lambda model, tokens: model(tokens))
    want, got = np.asarray(forward(pretrained.model, ids)), np.asarray(forward(packed, ids))
    real = np.arange(width)[None, :] < lengths[:, None]
    # tests/test_pretrained.py accepts 1e-3 between this float32 model and transformers' (another
    # summation order of the same float32 weights); the packed model is one more such order.
    assert np.abs(got - want)[real].max() <= 2e-3
    steps = max(len(p["greedy"]) for p in prompts)
    out = np.asarray(generate(packed, ids, lengths, ARSamplingConfig(max_new_tokens=steps,
                                                                      eos_id=golden["eos_id"])).tokens)
    for row, p in enumerate(prompts):
        assert min(p["greedy_margins"]) > 1e-2
        assert out[row, :len(p["greedy"])].tolist() == p["greedy"], p["name"]


def test_packing_refuses_weights_that_are_not_the_files(smollm2):
    pretrained, _ = smollm2
    other = nnx.clone(pretrained.model)
    kernel = other.blocks[2].mlp.up.kernel
    kernel.set_value(kernel[...].at[0, 0].add(1e-3))
    with pytest.raises(ValueError, match=r"blk\.2\.ffn_up\.weight in .*\.gguf is not this model's GatedMLP\.up "
                                         r"\(max difference .*\); pack the model that was loaded from this GGUF file"):
        pack_gguf_blocks(other, pretrained.source.path)


def test_speculative_greedy_on_the_packed_drafter_equals_packed_ar(smollm2):
    """The shipped drafter adapter (with its appended mask row, quantized here) on the packed base:
    greedy self-speculation equals greedy AR on the packed model."""
    from workbench.drafter_demo import SHIPPED_ADAPTER
    from workbench.pretrained import load_adapter, with_mask_token

    pretrained, packed = smollm2
    if not SHIPPED_ADAPTER.is_dir():
        pytest.skip(f"no shipped drafter adapter at {SHIPPED_ADAPTER}")
    masked = with_mask_token(pretrained)
    drafter = pack_gguf_blocks(load_adapter(masked.model, SHIPPED_ADAPTER), pretrained.source.path)
    specials = masked.tokenizer.specials
    prompts = [masked.tokenizer.encode(text) for text in ("The capital of France is", "def fibonacci(n):",
                                                           "Water boils at")]
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), specials.pad, np.int32)
    for row, p in enumerate(prompts):
        ids[row, :len(p)] = p
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    ar = generate(packed, ids, lengths, ARSamplingConfig(max_new_tokens=24, eos_id=NO_EOS, pad_id=specials.pad))
    out = speculative_generate(drafter, ids, lengths, SpeculativeConfig(
        block_size=4, max_new_tokens=24, eos_id=None, pad_id=specials.pad, mask_id=specials.mask))
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ar.tokens))
    assert int(out.accepted_at.sum()) > 0


def test_speed_benchmark_rows_on_a_tiny_model(drafter):
    """The benchmark's table logic without SmolLM2: per-token ratios to float32 AR of the same run, the
    equality column of self-speculation against AR on the same packed base, the step table."""
    from workbench.benchmarks import quantized_speed as qs

    base, model = drafter
    models = {"f32": base, "int8": quantize_for_decoding(base), "int8_drafter": quantize_for_decoding(model)}
    config = qs.QuantizedSpeedConfig(batch_sizes=(2,), lengths=(6,), repeats=1, step_repeats=1, step_positions=(1, 2),
                                     context=8, methods=("int8_ar", "int8_speculative"))
    prompts, lengths = _prompts(2, 5, 4)
    ids_list = [list(map(int, p[:n])) for p, n in zip(prompts, lengths)]
    rows = qs.decode_rows(config, models, ids_list, qs.Ids(eos=None, pad=0, mask=MASK), progress=False)
    assert rows["method"].tolist() == ["f32_ar", "int8_ar", "int8_speculative"]
    for _, row in rows.iterrows():
        same = rows[(rows["method"] == "f32_ar") & (rows["batch_size"] == row["batch_size"])].iloc[0]
        assert row["time_vs_f32"] == pytest.approx(row["ms_per_token"] / same["ms_per_token"])
        assert row["ms_per_token"] == pytest.approx(1e3 * row["seconds"] * row["batch_size"]
                                                    / (row["prompts"] * row["new_tokens"]))
    spec = rows[rows["method"] == "int8_speculative"]
    assert (spec["equals_packed_ar"] == 1.0).all() and spec["tokens_per_iteration"].between(1, 4).all()
    assert rows[rows["method"] != "f32_ar"]["agreement_with_f32"].between(0, 1).all()
    steps = qs.step_costs(config, models)
    assert steps[["batch_size", "positions", "pass"]].values.tolist() == [[2, 1, "decode"], [2, 2, "decode"],
                                                                          [2, 8, "prompt"]]
    assert (steps["int8_speedup"] == steps["f32_ms"] / steps["int8_ms"]).all()
    with pytest.raises(ValueError, match=r"methods \['int4_ar'\] are not rows of this benchmark"):
        qs.QuantizedSpeedConfig(methods=("int4_ar",))
