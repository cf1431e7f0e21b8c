"""The block-size tuning sweep: runs end to end on CPU (interpret mode), recommends the fastest
correct candidate, stays within its GPU budget, and every default GPU candidate lowers for an
abstract H100."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

from workbench.attention.reference import xla_attention
from workbench.benchmarks import kernel_tuning as kt
from workbench.benchmarks.kernels import make_mask
from workbench.kernels.flash_gpu import GpuBlockSizes, flash_attention_gpu
from workbench.kernels.flash_tpu import TpuBlockSizes, flash_attention_tpu

H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=132)


def test_cpu_sweep_writes_a_row_per_candidate_and_pass(tmp_path, capsys):
    config = dataclasses.replace(kt.default_config("cpu"), warmup=0, repeats=1)
    kt.run(tmp_path, config)
    saved = json.loads((tmp_path / "kernel_tuning.json").read_text())
    assert saved["interpret_mode"] and saved["jax_version"] == jax.__version__ and saved["device"]
    assert saved["config"]["kernel"] == "gpu"
    rows = saved["rows"]
    assert len(rows) == kt.count_timed_configs(config) == saved["timed_configs"]
    head_dim = config.head_dims[0]
    # The launch pass runs on the tuned tiles; its baseline is still the default warps and stages.
    expected = {(mask, p, v) for mask in config.masks for p in config.candidates
                for v in kt.pass_candidates(config, head_dim, p)}
    assert {(r["mask"], r["pass_name"], kt.row_values(r)) for r in rows} == expected
    for row in rows:
        assert row["status"] == "ok", row
        assert row["time_ms"] > 0 and row["rel_err"] <= config.tolerance
        assert row["timed"] == ("fwd" if row["pass_name"] == "fwd" else "fwd+bwd")
    assert sum(r["baseline"] for r in rows) == len(config.masks) * len(config.candidates)
    # The recommendation takes each pass's candidate with the least total time over the masks.
    recommended = eval(saved["recommended"][str(head_dim)]["literal"], {"GpuBlockSizes": GpuBlockSizes})
    for pass_name in config.candidates:
        want = kt.recommend_values(rows, pass_name, head_dim, config.masks)
        assert kt.pass_values(recommended, pass_name) == want
    tuned_tiles = {field: getattr(recommended, field) for p in ("fwd", "dq", "dkv") for field in kt.PASS_FIELDS[p]}
    for row in rows:
        if row["pass_name"] == "launch":
            assert {f: row["block_sizes"][f] for f in tuned_tiles} == tuned_tiles
    out = capsys.readouterr().out
    assert "INTERPRET MODE" in out and "not meaningful for speed" in out
    assert f"head_dim={head_dim}: GpuBlockSizes(" in out


def _row(mask, pass_name, value, time_ms, status="ok", head_dim=64):
    fields = kt.PASS_FIELDS[pass_name]
    return dict(head_dim=head_dim, mask=mask, pass_name=pass_name, values=dict(zip(fields, value)),
                status=status, time_ms=time_ms, baseline=False)


def test_selection_skips_wrong_and_failing_candidates():
    rows = [
        _row("causal", "fwd", (128, 64), 2.0),
        _row("causal", "fwd", (64, 64), 0.5, status="wrong: relative error 3.1e-01 > 2e-02"),
        _row("causal", "fwd", (128, 128), None, status="error: XlaRuntimeError: out of shared memory"),
        _row("causal", "fwd", (64, 128), 1.5),
    ]
    assert kt.best_row(rows)["values"] == {"block_q": 64, "block_k": 128}
    assert kt.recommend_values(rows, "fwd", 64, ["causal"]) == (64, 128)
    assert kt.best_row(rows[1:3]) is None
    assert kt.recommend_values(rows[1:3], "fwd", 64, ["causal"]) is None


def test_recommendation_needs_correct_on_every_mask_and_least_total_time():
    rows = [
        _row("causal", "dq", (128, 32), 3.0), _row("prefix_lm", "dq", (128, 32), 3.0),
        _row("causal", "dq", (64, 64), 1.0),  # fastest on causal but wrong on prefix_lm
        _row("prefix_lm", "dq", (64, 64), 1.0, status="wrong: relative error 5.0e-01 > 2e-02"),
        _row("causal", "dq", (128, 64), 2.0), _row("prefix_lm", "dq", (128, 64), 3.5),  # total 5.5
        _row("causal", "dq", (32, 64), 3.2), _row("prefix_lm", "dq", (32, 64), 2.5),  # total 5.7
        _row("causal", "dq", (32, 32), 0.1, head_dim=128),  # another head_dim
        _row("causal", "dkv", (32, 32), 0.1),  # another pass
    ]
    assert kt.recommend_values(rows, "dq", 64, ["causal", "prefix_lm"]) == (128, 64)
    assert kt.recommend_values(rows, "dq", 64, ["causal"]) == (64, 64)
    assert kt.recommend_values(rows, "dq", 64, ["causal", "padded"]) is None  # padded never measured


def test_sweep_records_wrong_and_failing_candidates_and_goes_on(monkeypatch):
    """Fabricated timings: the fast-but-wrong candidate and the failing one never win."""
    times = {(128, 64): 3.0, (64, 64): 0.5, (32, 32): 0.2, (64, 128): 2.0}

    def fake_attention_fn(config, blocks):
        tiles = (blocks.block_q, blocks.block_k)
        scale = 1.5 if tiles == (64, 64) else 1.0  # fast but wrong
        fake_attention_fn.tiles = tiles

        def attention(q, k, v, mask):
            if tiles == (32, 32):
                raise ValueError("out of shared memory: 300000 bytes > 232448")
            return xla_attention(q, k, v, mask).astype(q.dtype) * scale
        return attention

    def fake_median_seconds(fn, args, warmup, repeats):
        return times[fake_attention_fn.tiles] / 1e3, fn(*args)

    monkeypatch.setattr(kt, "_attention_fn", fake_attention_fn)
    monkeypatch.setattr(kt, "median_seconds", fake_median_seconds)
    config = dataclasses.replace(kt.default_config("cpu"), masks=("prefix_lm",),
                                 candidates={"fwd": ((64, 64), (32, 32), (64, 128))})
    notes = []
    rows, recommended = kt.tune_head_dim(config, 64, notes)
    status = {kt.row_values(r): r["status"] for r in rows}
    assert status[(128, 64)] == status[(64, 128)] == "ok"
    assert status[(64, 64)].startswith("wrong: relative error")
    assert status[(32, 32)].startswith("error: ValueError: out of shared memory")
    assert (recommended.block_q, recommended.block_k) == (64, 128) and not notes


def test_no_correct_candidate_keeps_the_default_with_a_note(monkeypatch):
    monkeypatch.setattr(kt, "_attention_fn", lambda config, blocks: lambda q, k, v, mask: q * 0 + 1)
    config = dataclasses.replace(kt.default_config("cpu"), masks=("causal",), warmup=0, repeats=1,
                                 candidates={"fwd": ((32, 32),)})
    notes = []
    rows, recommended = kt.tune_head_dim(config, 64, notes)
    assert all(r["status"].startswith("wrong") for r in rows)
    assert recommended == kt.base_block_sizes("gpu", 64)
    assert notes and "no candidate was correct" in notes[0]


def test_default_sweeps_fit_their_budget():
    gpu = kt.default_config("gpu")
    assert (gpu.batch, gpu.seq_len, gpu.heads, gpu.dtype, gpu.head_dims) == (4, 4096, 16, "bfloat16", (128, 64))
    assert gpu.masks == ("causal", "prefix_lm") and not gpu.interpret
    assert kt.count_timed_configs(gpu) <= kt.MAX_DEFAULT_CONFIGS
    assert kt.count_timed_configs(kt.default_config("tpu")) <= kt.MAX_DEFAULT_CONFIGS
    for tiles in ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv"):
        for blocks in kt.candidate_block_sizes(gpu, 128):
            assert getattr(blocks, tiles) in (32, 64, 128)
        for blocks in kt.candidate_block_sizes(kt.default_config("tpu"), 128):
            assert getattr(blocks, tiles) % 128 == 0
    for kernel in kt.KERNELS:
        cpu = kt.default_config("cpu", kernel)
        assert cpu.interpret
        assert all(2 <= len(kt.pass_candidates(cpu, 64, p)) <= 3 for p in cpu.candidates)


@pytest.mark.parametrize("change,match", [
    (dict(kernel="cuda"), "kernel='cuda'"),
    (dict(masks=("diagonal",)), "masks=\\('diagonal',\\)"),
    (dict(head_dims=(96,)), "head_dims=\\(96,\\)"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(repeats=0), "repeats=0"),
    (dict(rel_tol=0.0), "rel_tol=0.0"),
    (dict(candidates={"launch": ((4, 2),)}, kernel="tpu"), "pass 'launch'"),
    (dict(candidates={"fwd": ((64,),)}), "expected values for \\('block_q', 'block_k'\\)"),
    (dict(candidates={"fwd": ((48, 64),)}), "GpuBlockSizes.block_q=48"),
])
def test_bad_configs_raise_clear_errors(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(kt.default_config("cpu"), **change)


def test_tpu_tiles_must_be_lane_multiples_on_hardware():
    with pytest.raises(ValueError, match="TpuBlockSizes.block_q=192: expected a positive multiple of 128"):
        dataclasses.replace(kt.default_config("tpu"), candidates={"fwd": ((192, 128),)})
    assert isinstance(kt.base_block_sizes("tpu", 64), TpuBlockSizes)


def test_compiled_kernel_on_the_wrong_platform_is_refused(tmp_path):
    with pytest.raises(ValueError, match="only on a GPU, but the platform is cpu; use interpret=True"):
        kt.run(tmp_path, kt.default_config("gpu"))
    with pytest.raises(SystemExit):
        kt.main(["--out", str(tmp_path), "--masks", "diagonal"])


TPU_V5E = AbstractDevice(device_kind="TPU v5 lite", platform="tpu", num_cores=1)


def _lower_fwd_bwd(config, head_dim: int, blocks, device, platform: str) -> str:
    mask = make_mask("prefix_lm", config.batch, config.seq_len)
    q = jax.ShapeDtypeStruct((config.batch, config.seq_len, config.heads, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((config.batch, config.seq_len, config.kv_heads, head_dim), jnp.bfloat16)
    attention = (flash_attention_gpu if config.kernel == "gpu" else flash_attention_tpu)

    def loss(q, k, v):
        return attention(q, k, v, mask, block_sizes=blocks).astype(jnp.float32).sum()

    with jax.sharding.use_abstract_mesh(AbstractMesh((), (), abstract_device=device)):
        traced = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).trace(q, kv, kv)
        return traced.lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("head_dim", [64, 128])
def test_default_gpu_candidates_lower_for_h100(head_dim):
    """Forward + backward of every (kernel, tiles, warps, stages) the default GPU sweep can time
    or recommend, at the target shape, through Pallas -> Triton IR (not PTX, which needs a GPU)."""
    config = kt.default_config("gpu")
    candidates = kt.candidate_block_sizes(config, head_dim)
    assert len(candidates) == 4 * 4  # zipped tile candidates (4 fwd, 3 dq, 3 dkv) x 4 launch
    for blocks in candidates:
        text = _lower_fwd_bwd(config, head_dim, blocks, H100, "cuda")
        assert text.count("__gpu$xla.gpu.triton") == 3, blocks  # forward, dq, dk/dv
        assert text.count(f"num_warps = {blocks.num_warps} : i32") == 3, blocks
        assert text.count(f"num_stages = {blocks.num_stages} : i32") == 3, blocks


@pytest.mark.parametrize("head_dim", [64, 128])
def test_default_tpu_candidates_lower_to_mosaic(head_dim):
    """The same for the TPU sweep's tiles through Pallas -> Mosaic (the (8, 128) block rule)."""
    config = kt.default_config("tpu")
    candidates = kt.candidate_block_sizes(config, head_dim)
    assert len(candidates) == 4  # zipped: 4 fwd, 3 dq, 3 dkv
    for blocks in candidates:
        assert _lower_fwd_bwd(config, head_dim, blocks, TPU_V5E, "tpu").count("tpu_custom_call") == 3, blocks
