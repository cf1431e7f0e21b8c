"""The Hopper (Pallas Mosaic GPU) attention kernels, checked without a GPU.

Three kinds of check, because Mosaic GPU interpret mode cannot run these kernels:
* lowering: forward + backward lowered for an abstract H100 (the whole Pallas -> Mosaic
  GPU lowering: wgmma shapes, layouts, TMA slices, barriers); not the PTX compile,
  the shared-memory limit (checked here by arithmetic) or a run;
* numerics: `hopper_emulate` replays each block's tile schedule with the kernels' own
  range functions and tile math, against the float32 reference (output, dq, dk, dv);
* tile skipping: the emulated passes compute exactly the tiles that hold a visible pair
  (with packed segments too: tiles pairing only different segments are skipped).
"""

from __future__ import annotations

import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AbstractDevice, AbstractMesh

from workbench.attention.mask import AttentionMask
from workbench.attention.reference import xla_attention
from workbench.attention import kernel_adapters
from workbench.benchmarks import hopper_check
from workbench.benchmarks.hopper_check import packed_segment_ids
from workbench.kernels.experimental import hopper, hopper_emulate
from workbench.kernels.common import kernel_mask

H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=132)


def _random_qkv(key, batch, q_len, kv_len, heads, kv_heads, head_dim, dtype=jnp.bfloat16):
    kq, kk, kv, kd = jax.random.split(key, 4)
    q = jax.random.normal(kq, (batch, q_len, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (batch, kv_len, kv_heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (batch, kv_len, kv_heads, head_dim), jnp.float32).astype(dtype)
    do = jax.random.normal(kd, q.shape, jnp.float32).astype(dtype)
    return q, k, v, do


def _emulated(q, k, v, do, mask, config):
    plan = hopper.make_plan(q, k, mask, None, config)
    kmask = kernel_mask(mask, plan.batch, plan.q_len, plan.kv_len, plan.q_len_padded,
                        plan.kv_len_padded)
    counts = hopper_emulate.TileCounts()
    out, lse2 = hopper_emulate.forward(q, k, v, kmask, plan, counts)
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
    grads = hopper_emulate.backward(q, k, v, kmask, lse2, delta, do, plan, counts)
    return out, grads, counts, plan


def _reference(q, k, v, do, mask):
    upcast = [x.astype(jnp.float32) for x in (q, k, v)]
    out, vjp = jax.vjp(lambda q, k, v: xla_attention(q, k, v, mask), *upcast)
    return out, vjp(do.astype(jnp.float32))


def _rel_err(x, ref):
    x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
    assert np.isfinite(x).all(), "NaN or inf in the kernel result"
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-6)


PACKED_384 = packed_segment_ids([(100, 150, 134), (40, 200, 60)], 384)
SHUFFLED_IDS = jnp.asarray(np.random.default_rng(5).integers(0, 3, (2, 192)), jnp.int32)

# (name, batch, q_len, kv_len, heads, kv_heads, head_dim, mask)
CASES = [
    ("prefix_lm_edges", 4, 200, 200, 2, 2, 64,
     AttentionMask.prefix_lm(jnp.array([0, 200, 37, 128]))),
    ("prefix_diffusion_gqa_padded", 3, 256, 256, 4, 2, 64,
     AttentionMask.prefix_diffusion(jnp.array([64, 0, 256]), kv_lengths=jnp.array([256, 0, 100]))),
    ("causal_offset_tq_lt_tk", 2, 130, 300, 2, 1, 128,
     AttentionMask.causal_mask(q_offset=jnp.array([170, 0]), kv_lengths=jnp.array([300, 250]))),
    ("bidirectional_d128", 2, 192, 192, 2, 2, 128, AttentionMask.bidirectional()),
    ("packed_causal_gqa", 2, 384, 384, 4, 2, 64,
     AttentionMask.causal_mask(q_segment_ids=PACKED_384, kv_segment_ids=PACKED_384)),
    ("packed_prefix_diffusion_padded", 2, 384, 384, 2, 2, 64,
     AttentionMask.prefix_diffusion(jnp.array([130, 0]), kv_lengths=jnp.array([384, 250]),
                                    q_segment_ids=PACKED_384, kv_segment_ids=PACKED_384)),
    ("unsorted_segments_bidirectional_d128", 2, 192, 192, 2, 1, 128,
     AttentionMask.bidirectional(q_segment_ids=SHUFFLED_IDS, kv_segment_ids=SHUFFLED_IDS)),
]


# Both dq modes share the dk/dv schedule; the atomic one is checked on half the cases.
EMULATED = [(case, "separate") for case in CASES] + [(case, "atomic") for case in CASES[1::2]]


@pytest.mark.parametrize("case,dq_mode", EMULATED, ids=[f"{c[0]}-{m}" for c, m in EMULATED])
def test_emulated_kernels_match_reference(case, dq_mode):
    name, batch, q_len, kv_len, heads, kv_heads, head_dim, mask = case
    seed = zlib.crc32(f"{name}-{dq_mode}".encode())
    q, k, v, do = _random_qkv(jax.random.key(seed), batch, q_len, kv_len, heads, kv_heads, head_dim)
    out, grads, _, _ = _emulated(q, k, v, do, mask, hopper.HopperConfig(dq_mode=dq_mode))
    ref_out, ref_grads = _reference(q, k, v, do, mask)
    assert _rel_err(out, ref_out) < 1e-2
    for label, grad, ref in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert _rel_err(grad, ref) < 1e-2, label


def test_rows_that_see_nothing_give_exact_zeros():
    # Example 1 has no keys at all (kv length 0); example 0 is an ordinary prefix-LM row.
    mask = AttentionMask.prefix_lm(jnp.array([5, 0]), kv_lengths=jnp.array([128, 0]))
    q, k, v, do = _random_qkv(jax.random.key(1), 2, 128, 128, 2, 2, 64)
    out, (dq, dk, dv), _, _ = _emulated(q, k, v, do, mask, hopper.HopperConfig())
    assert not np.asarray(out[1]).any()
    assert not np.asarray(dq[1]).any() and not np.asarray(dk[1]).any() and not np.asarray(dv[1]).any()
    assert np.isfinite(np.asarray(out, np.float32)).all()


def _visible_tiles(dense, row_tile, col_tile):
    rows, cols = dense.shape
    tiles = dense.reshape(rows // row_tile, row_tile, cols // col_tile, col_tile)
    return int(tiles.any(axis=(1, 3)).sum())


PACKED_512 = packed_segment_ids([(100, 150, 262), (300, 90), (512,)], 512)
SKIP_MASKS = {
    "prefix_lm_padded": AttentionMask.prefix_lm(jnp.array([100, 0, 300]), kv_lengths=jnp.array([512, 512, 400])),
    # Packed causal sequences: tiles pairing only different sequences hold no visible pair.
    "packed_causal": AttentionMask.causal_mask(q_segment_ids=PACKED_512, kv_segment_ids=PACKED_512),
}


@pytest.mark.parametrize("mask_name", SKIP_MASKS)
def test_hidden_tiles_are_skipped(mask_name):
    """Each pass computes exactly the tiles holding a visible pair (T a multiple of the tiles)."""
    batch, length, heads = 3, 512, 1
    mask = SKIP_MASKS[mask_name]
    q, k, v, do = _random_qkv(jax.random.key(2), batch, length, length, heads, heads, 64)
    config = hopper.HopperConfig(dq_mode="separate")
    _, _, counts, plan = _emulated(q, k, v, do, mask, config)
    dense = np.asarray(mask.dense(batch, length, length))
    expected = lambda rt, ct: sum(_visible_tiles(dense[b], rt, ct) for b in range(batch)) * heads
    assert counts.forward_computed == expected(config.block_q, config.block_kv)
    assert counts.dkv_computed == expected(config.block_q_bwd, config.block_kv_bwd)
    assert counts.dq_computed == expected(config.block_q_dq, config.block_kv_dq)
    all_tiles = batch * heads * (length // config.block_q) * (length // config.block_kv)
    assert counts.forward_computed < 0.75 * all_tiles
    # The copy warpgroups fetch at most one warpgroup's worth more than is computed.
    assert counts.forward_computed <= hopper.COMPUTE_WGS * counts.forward_fetched


@pytest.mark.parametrize("dq_mode", hopper.DQ_MODES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_default_tiles_fit_in_shared_memory(head_dim, dq_mode):
    q = jax.ShapeDtypeStruct((4, 4096, 16, head_dim), jnp.bfloat16)
    plan = hopper.make_plan(q, q, AttentionMask.causal_mask(), None, hopper.HopperConfig(dq_mode=dq_mode))
    sizes = hopper.smem_bytes(plan)
    assert sizes and max(sizes.values()) <= hopper.SMEM_LIMIT_BYTES, sizes


def _lower(fn, q_shape, kv_shape, dtype, grad: bool) -> str:
    q = jax.ShapeDtypeStruct(q_shape, dtype)
    kv = jax.ShapeDtypeStruct(kv_shape, dtype)
    loss = lambda q, k, v: fn(q, k, v).astype(jnp.float32).sum()
    f = jax.value_and_grad(loss, (0, 1, 2)) if grad else fn
    with jax.sharding.use_abstract_mesh(AbstractMesh((), (), abstract_device=H100)):
        return jax.jit(f).trace(q, kv, kv).lower(lowering_platforms=("cuda",)).as_text()


PACKED_1000 = packed_segment_ids([(300, 700), (1000,)], 1000)
LOWERING_CASES = [
    # (head_dim, dtype, dq_mode, mask)
    (64, jnp.bfloat16, "separate",
     AttentionMask.prefix_lm(jnp.array([3, 500]), kv_lengths=jnp.array([1000, 700]))),
    (128, jnp.bfloat16, "atomic",
     AttentionMask.prefix_diffusion(jnp.array([0, 1000]), q_offset=jnp.array([0, 24]))),
    (128, jnp.float16, "separate", AttentionMask.causal_mask()),
    (64, jnp.bfloat16, "separate", AttentionMask.causal_mask(q_segment_ids=PACKED_1000, kv_segment_ids=PACKED_1000)),
    (128, jnp.bfloat16, "atomic", AttentionMask.prefix_lm(
        jnp.array([3, 500]), kv_lengths=jnp.array([1000, 800]), q_segment_ids=PACKED_1000,
        kv_segment_ids=PACKED_1000)),
]


@pytest.mark.parametrize("case", LOWERING_CASES,
                         ids=[f"d{c[0]}-{jnp.dtype(c[1]).name}-{c[2]}-{c[3].kind}{'-segments' * c[3].has_segments}"
                              for c in LOWERING_CASES])
def test_kernels_lower_for_h100(case):
    head_dim, dtype, dq_mode, mask = case
    config = hopper.HopperConfig(dq_mode=dq_mode)
    fn = lambda q, k, v: hopper.flash_attention_hopper(q, k, v, mask, config=config)
    text = _lower(fn, (2, 1000, 4, head_dim), (2, 1000, 2, head_dim), dtype, grad=True)
    kernels = 3 if dq_mode == "separate" else 2  # forward, dk/dv (+ dq)
    assert text.count("stablehlo.custom_call @mosaic_gpu_v2(") == kernels


def test_adapter_declines_what_it_cannot_do(monkeypatch):
    q = jnp.zeros((1, 128, 2, 64), jnp.bfloat16)
    impl = {i.name: i for i in kernel_adapters.IMPLS}["pallas_mosaic_gpu"]
    mask = AttentionMask.prefix_lm(jnp.array([3]))
    assert "platform" in impl.why_not(q, q, q, mask, "cpu")
    monkeypatch.setattr(hopper, "local_gpu_is_hopper", lambda: (False, "NVIDIA A100-SXM4-80GB"))
    assert "A100" in impl.why_not(q, q, q, mask, "gpu")
    monkeypatch.setattr(hopper, "local_gpu_is_hopper", lambda: (True, "NVIDIA H100 80GB HBM3"))
    assert impl.why_not(q, q, q, mask, "gpu") is None
    assert impl.why_not(q, q, q, mask.replace(kv_lengths=jnp.array([100])), "gpu") is None
    ids = jnp.zeros((1, 128), jnp.int32)
    assert impl.why_not(q, q, q, mask.replace(q_segment_ids=ids, kv_segment_ids=ids), "gpu") is None
    f32 = q.astype(jnp.float32)
    assert "dtype" in impl.why_not(f32, f32, f32, mask, "gpu")
    q96 = jnp.zeros((1, 128, 2, 96), jnp.bfloat16)
    assert "head_dim" in impl.why_not(q96, q96, q96, mask, "gpu")


def test_direct_call_raises_clear_error():
    q = jnp.zeros((1, 64, 2, 64), jnp.float32)
    with pytest.raises(ValueError, match="bfloat16/float16"):
        hopper.flash_attention_hopper(q, q, q, AttentionMask.causal_mask())


def test_config_rejects_bad_tiles():
    with pytest.raises(ValueError, match="multiple of 64"):
        hopper.HopperConfig(block_kv=96)
    with pytest.raises(ValueError, match="dq_mode"):
        hopper.HopperConfig(dq_mode="fast")


def test_is_hopper_by_capability_or_name():
    class Dev:
        platform = "gpu"
        def __init__(self, kind, capability=None):
            self.device_kind, self.compute_capability = kind, capability
    assert hopper.is_hopper(Dev("NVIDIA H100 80GB HBM3", "9.0"))
    assert hopper.is_hopper(Dev("NVIDIA H200"))
    assert not hopper.is_hopper(Dev("NVIDIA A100-SXM4-80GB", "8.0"))
    assert not hopper.is_hopper(Dev("NVIDIA B200", "10.0"))


def test_device_check_cases_lower_for_h100():
    """Every case `hopper_check` runs on the H100 lowers here first, so device time is not
    spent on a lowering error."""
    for case in hopper_check.cases():
        fn = lambda q, k, v, mask=case.mask: hopper.flash_attention_hopper(q, k, v, mask)
        text = _lower(fn, (case.batch, case.q_len, case.heads, case.head_dim),
                      (case.batch, case.kv_len, case.kv_heads, case.head_dim), jnp.bfloat16, grad=True)
        assert text.count("stablehlo.custom_call @mosaic_gpu_v2(") == 3, case.name


@pytest.mark.parametrize("variant", ["bwd_kv128", "no_schedule_barrier"])
def test_device_check_variants_lower_for_h100(variant):
    """The configurations `hopper_check --variants` can time lower (packed prefix-LM, GQA)."""
    config = hopper_check.VARIANTS[variant]
    mask = LOWERING_CASES[-1][3]
    fn = lambda q, k, v: hopper.flash_attention_hopper(q, k, v, mask, config=config)
    text = _lower(fn, (2, 1000, 4, 128), (2, 1000, 2, 128), jnp.bfloat16, grad=True)
    assert text.count("stablehlo.custom_call @mosaic_gpu_v2(") == (3 if config.dq_mode == "separate" else 2)


def _schedule_ids(draw, length: int):
    """Packed sequences (sorted ids) or arbitrary ids in runs."""
    cuts = sorted(draw(st.lists(st.integers(1, length - 1), max_size=3, unique=True)))
    packed = np.searchsorted(np.asarray(cuts), np.arange(length), side="right")
    if draw(st.booleans()):
        return packed
    return np.asarray(draw(st.lists(st.integers(0, 2), min_size=4, max_size=4)))[packed]


@st.composite
def _schedule_masks(draw):
    batch = 2
    q_len = draw(st.sampled_from([64, 200, 256, 384]))
    kv_len = q_len + draw(st.sampled_from([0, 0, 70, 136]))  # longer keys: queries at an offset
    per_example = lambda strategy: jnp.asarray(draw(st.lists(strategy, min_size=batch, max_size=batch)))  # noqa: E731
    fields = dict(causal=draw(st.booleans()),
                  prefix_len=per_example(st.sampled_from([0, q_len]) | st.integers(0, kv_len)),
                  kv_lengths=per_example(st.sampled_from([0, kv_len]) | st.integers(0, kv_len)),
                  q_offset=per_example(st.just(0) | st.integers(0, kv_len - q_len)) if kv_len > q_len else None)
    if draw(st.sampled_from(["segments", "segments", "none"])) == "segments":
        ids = np.stack([_schedule_ids(draw, q_len) for _ in range(batch)])
        fields.update(q_segment_ids=jnp.asarray(ids, jnp.int32),
                      kv_segment_ids=jnp.asarray(np.pad(ids, ((0, 0), (0, kv_len - q_len)), mode="edge"), jnp.int32))
    return q_len, kv_len, AttentionMask(**fields)


@settings(max_examples=30)
@given(_schedule_masks())
def test_schedules_cover_every_visible_tile(case):
    """For random masks (prefix, key padding, offsets, sorted or unsorted segments), every
    pass's schedule: walks each block step once per warpgroup, computes every tile that holds
    a visible pair, and leaves the element mask out only where every pair is visible."""
    q_len, kv_len, mask = case
    q = jax.ShapeDtypeStruct((2, q_len, 1, 64), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, kv_len, 1, 64), jnp.bfloat16)
    plan = hopper.make_plan(q, k, mask, None, hopper.HopperConfig())
    kmask = kernel_mask(mask, plan.batch, q_len, kv_len, plan.q_len_padded, plan.kv_len_padded)
    dense = np.zeros((2, plan.q_len_padded, plan.kv_len_padded), bool)
    dense[:, :q_len, :kv_len] = np.asarray(mask.dense(2, q_len, kv_len))
    c = plan.config
    passes = [  # (kernel, range_fn, blocks, block_rows, block_cols, walks query tiles?)
        ("forward", hopper.forward_ranges, plan.num_q_ctas, c.block_q, c.block_kv, False),
        ("dq", hopper.dq_ranges, plan.num_q_ctas_dq, c.block_q_dq, c.block_kv_dq, False),
        ("dkv", hopper.dkv_ranges, plan.num_kv_ctas, c.block_kv_bwd, c.block_q_bwd, True),
    ]
    for kernel, range_fn, num_ctas, block_rows, block_cols, walks_queries in passes:
        spans = hopper.segment_spans(kmask, plan, kernel)
        for b in range(2):
            scalars = [int(x[b]) for x in (kmask.prefix, kmask.kv_len, kmask.q_offset)]
            tile_spans = None if spans is None else (lambda t: (int(spans[0, b, t]), int(spans[1, b, t])))
            pairs = dense[b].T if walks_queries else dense[b]  # [tile rows, walked cols]
            # Padding query rows need no mask: the forward discards them, the backward gives
            # them lse2 = +inf (p = 0). Padding keys always need one (kv_len bounds them).
            real_queries = np.arange(plan.q_len_padded) < q_len
            for cta in range(num_ctas):
                block = tuple(map(int, hopper.cta_range(range_fn, plan, cta, *scalars, tile_spans)))
                for wg in range(hopper.COMPUTE_WGS):
                    tile = hopper.COMPUTE_WGS * cta + wg
                    wg_range = tuple(map(int, hopper.warpgroup_range(range_fn, plan, tile, *scalars, tile_spans, block)))
                    computed = dict(hopper_emulate.walk_steps(*block, wg_range, first_masked=walks_queries))
                    rows = slice(tile * block_rows, (tile + 1) * block_rows)
                    for step in range(pairs.shape[1] // block_cols):
                        cols = slice(step * block_cols, (step + 1) * block_cols)
                        pair_tile = pairs[rows, cols]
                        pair_tile = pair_tile[:, real_queries[cols]] if walks_queries else pair_tile[real_queries[rows]]
                        where = f"{kernel} example {b} tile {tile} step {step}"
                        if pair_tile.any():
                            assert step in computed, f"{where}: a visible tile is skipped"
                        if step in computed and not computed[step]:
                            assert pair_tile.all(), f"{where}: computed without the element mask"


def test_device_check_script_runs_end_to_end_on_cpu(monkeypatch, tmp_path):
    """hopper_check's plumbing (inputs, reference, error table, timing rows, JSON) with the
    kernel swapped for the dense reference, so that a mistake there costs no device time;
    a wrong kernel must be reported, not pass."""
    ids = PACKED_384[:, :128]
    small = [hopper_check.Case("packed_gqa", 2, 128, 128, 4, 2, 64,
                               AttentionMask.causal_mask(q_segment_ids=ids, kv_segment_ids=ids)),
             hopper_check.Case("empty", 2, 64, 64, 2, 2, 64, AttentionMask.prefix_lm(
                 jnp.array([5, 0]), kv_lengths=jnp.array([64, 0])), empty_examples=(1,))]
    monkeypatch.setattr(hopper_check, "cases", lambda: small)
    monkeypatch.setattr(hopper_check, "TARGET", dict(batch=2, seq_len=128, heads=2))
    exact = lambda q, k, v, mask, config=None: xla_attention(q, k, v, mask).astype(q.dtype)  # noqa: E731
    monkeypatch.setattr(hopper, "flash_attention_hopper", exact)
    hopper_check.main(["--out", str(tmp_path), "--seed", "3"])
    saved = json.loads((tmp_path / "hopper_check.json").read_text())
    assert [row["problems"] for row in saved["checks"]] == [[]] * 6  # 2 cases x 2 variants + 2 in fp16
    assert {row["mask"] for row in saved["timings"]} == {"prefix_lm", "causal", "bidirectional", "packed_causal"}
    assert all(row["fwd_tflops"] > 0 for row in saved["timings"])
    assert (tmp_path / "bench" / "results.json").is_file()

    monkeypatch.setattr(hopper, "flash_attention_hopper", lambda q, k, v, mask, config=None: 0.5 * exact(q, k, v, mask))
    rows = hopper_check.run_checks(3, ["separate"])
    assert all(any("err" in problem for problem in row["problems"]) for row in rows)
