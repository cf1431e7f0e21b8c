"""The block-size tuning sweep: runs end to end on CPU (interpret mode), recommends the fastest
correct candidate per step, stays within its GPU budget, and every default GPU candidate
(tiles and per-pass launch settings) lowers for an abstract H100."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

from workbench.attention.reference import xla_attention
from workbench.benchmarks import tuning
from workbench.benchmarks.kernels import MASKS, make_mask
from workbench.benchmarks.tuning import measure as tuning_measure
from workbench.benchmarks.tuning import space
from workbench.benchmarks.tuning.sweep import best_row, recommend_values, tune_head_dim
from workbench.kernels.flash_gpu import GpuBlockSizes, flash_attention_gpu
from workbench.kernels.flash_tpu import TpuBlockSizes, flash_attention_tpu

H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=132)


def candidate_block_sizes(config: space.TuneConfig, head_dim: int) -> list:
    """Block sizes that between them hold every kernel configuration the sweep can time or
    recommend at `head_dim`. At the sweep's lengths (multiples of every tile) each pallas_call
    depends only on its own pass's fields, and a launch step may run on any of its pass's tile
    candidates: so per pass every (tiles, launch) pair, zipped across passes (the i-th of
    each, the first where a pass has fewer). Lowering these checks them all."""
    per_pass: dict[str, list[dict]] = {}
    for step_name in config.steps:
        step = space.STEPS[step_name]
        settings = [dict(zip(step.fields, v)) for v in space.step_candidates(config, head_dim, step_name)]
        per_pass[step.pass_name] = [dict(done, **new) for done in per_pass.get(step.pass_name, [{}])
                                    for new in settings]
    out = []
    for i in range(max((len(v) for v in per_pass.values()), default=1)):
        fields = {}
        for settings in per_pass.values():
            fields.update(settings[i] if i < len(settings) else settings[0])
        blocks = dataclasses.replace(space.base_block_sizes(config.kernel, head_dim), **fields)
        if blocks not in out:
            out.append(blocks)
    return out


def test_cpu_sweep_writes_a_row_per_candidate_and_step(tmp_path, capsys):
    # One mask halves the compiles (they dominate); the choice over several masks is tested below.
    config = space.default_config("cpu").with_bench(warmup=0, repeats=1, masks=("prefix_lm",))
    tuning.run(tmp_path, config)
    saved = json.loads((tmp_path / "kernel_tuning.json").read_text())
    assert saved["interpret_mode"] and saved["jax_version"] == jax.__version__ and saved["device"]
    assert saved["config"]["kernel"] == "gpu"
    assert saved["config"]["bench"]["seq_len"] == config.bench.seq_len
    assert set(saved["config"]["candidates"]) == set(saved["steps"]) == set(space.STEPS)
    assert saved["steps"]["dkv_launch"] == dict(pass_name="dkv", fields=["num_warps_dkv", "num_stages_dkv"],
                                                timed="fwd+bwd")
    rows = saved["rows"]
    assert len(rows) == space.count_timed_configs(config) == saved["timed_configs"]
    head_dim = config.bench.head_dims[0]
    # Each launch step starts from the default warps and stages, so its candidates are the same
    # values whatever tiles won before it.
    expected = {(mask, s, v) for mask in config.bench.masks for s in config.steps
                for v in space.step_candidates(config, head_dim, s)}
    assert {(r["mask"], r["step"], space.row_values(r)) for r in rows} == expected
    for row in rows:
        assert row["status"] == "ok", row
        assert row["time_ms"] > 0 and row["rel_err"] <= config.tolerance
        assert row["pass_name"] == space.STEPS[row["step"]].pass_name
        assert row["timed"] == ("fwd" if row["pass_name"] == "fwd" else "fwd+bwd")
    assert sum(r["baseline"] for r in rows) == len(config.bench.masks) * len(config.steps)
    # Each step takes its candidate with the least total time over the masks.
    recommended = eval(saved["recommended"][str(head_dim)]["literal"], {"GpuBlockSizes": GpuBlockSizes})
    for step_name in config.steps:
        want = recommend_values(rows, step_name, head_dim, config.bench.masks)
        assert space.step_values(recommended, step_name) == want
    # Each step ran on the recommendations of the steps before it (launch on its pass's best tiles).
    for i, step_name in enumerate(config.steps):
        earlier = [f for s in config.steps[:i] for f in space.STEPS[s].fields]
        for row in (r for r in rows if r["step"] == step_name):
            assert {f: row["block_sizes"][f] for f in earlier} == {f: getattr(recommended, f) for f in earlier}
    out = capsys.readouterr().out
    assert "INTERPRET MODE" in out and "not meaningful for speed" in out
    assert f"head_dim={head_dim}: GpuBlockSizes(" in out
    assert "dq_launch" in out and "num_warps_dq=" in out


def _row(mask, step_name, value, time_ms, status="ok", head_dim=64):
    fields = space.STEPS[step_name].fields
    return dict(head_dim=head_dim, mask=mask, step=step_name, values=dict(zip(fields, value)),
                status=status, time_ms=time_ms, baseline=False)


def test_selection_skips_wrong_and_failing_candidates():
    rows = [
        _row("causal", "fwd_tiles", (128, 64), 2.0),
        _row("causal", "fwd_tiles", (64, 64), 0.5, status="wrong: relative error 3.1e-01 > 2e-02"),
        _row("causal", "fwd_tiles", (128, 128), None, status="error: XlaRuntimeError: out of shared memory"),
        _row("causal", "fwd_tiles", (64, 128), 1.5),
    ]
    assert best_row(rows)["values"] == {"block_q": 64, "block_k": 128}
    assert recommend_values(rows, "fwd_tiles", 64, ["causal"]) == (64, 128)
    assert best_row(rows[1:3]) is None
    assert recommend_values(rows[1:3], "fwd_tiles", 64, ["causal"]) is None


def test_recommendation_needs_correct_on_every_mask_and_least_total_time():
    rows = [
        _row("causal", "dq_launch", (8, 2), 3.0), _row("prefix_lm", "dq_launch", (8, 2), 3.0),
        _row("causal", "dq_launch", (4, 3), 1.0),  # fastest on causal but wrong on prefix_lm
        _row("prefix_lm", "dq_launch", (4, 3), 1.0, status="wrong: relative error 5.0e-01 > 2e-02"),
        _row("causal", "dq_launch", (4, 5), 2.0), _row("prefix_lm", "dq_launch", (4, 5), 3.5),  # total 5.5
        _row("causal", "dq_launch", (8, 3), 3.2), _row("prefix_lm", "dq_launch", (8, 3), 2.5),  # total 5.7
        _row("causal", "dq_launch", (2, 2), 0.1, head_dim=128),  # another head_dim
        _row("causal", "dkv_launch", (2, 2), 0.1),  # another step
    ]
    assert recommend_values(rows, "dq_launch", 64, ["causal", "prefix_lm"]) == (4, 5)
    assert recommend_values(rows, "dq_launch", 64, ["causal"]) == (4, 3)
    assert recommend_values(rows, "dq_launch", 64, ["causal", "padded"]) is None  # padded never measured


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

    monkeypatch.setattr(tuning_measure, "attention_fn", fake_attention_fn)
    monkeypatch.setattr(tuning_measure, "median_seconds", fake_median_seconds)
    config = dataclasses.replace(space.default_config("cpu").with_bench(masks=("prefix_lm",)),
                                 candidates={"fwd_tiles": ((64, 64), (32, 32), (64, 128))})
    notes = []
    rows, recommended = tune_head_dim(config, 64, notes)
    status = {space.row_values(r): r["status"] for r in rows}
    assert status[(128, 64)] == status[(64, 128)] == "ok"
    assert status[(64, 64)].startswith("wrong: relative error")
    assert status[(32, 32)].startswith("error: ValueError: out of shared memory")
    assert (recommended.block_q, recommended.block_k) == (64, 128) and not notes


def test_no_correct_candidate_keeps_the_default_with_a_note(monkeypatch):
    monkeypatch.setattr(tuning_measure, "attention_fn", lambda config, blocks: lambda q, k, v, mask: q * 0 + 1)
    config = dataclasses.replace(space.default_config("cpu").with_bench(masks=("causal",), warmup=0, repeats=1),
                                 candidates={"fwd_launch": ((8, 3),)})
    notes = []
    rows, recommended = tune_head_dim(config, 64, notes)
    assert all(r["status"].startswith("wrong") for r in rows)
    assert recommended == space.base_block_sizes("gpu", 64)
    assert notes and "fwd_launch: no candidate was correct" in notes[0]


def test_default_sweeps_fit_their_budget():
    gpu = space.default_config("gpu")
    bench = gpu.bench
    assert (bench.batch, bench.seq_len, bench.heads, bench.dtype, bench.head_dims) == (
        4, 4096, 16, "bfloat16", (128, 64))
    assert bench.masks == ("causal", "prefix_lm") and not gpu.interpret
    assert gpu.steps == tuple(space.STEPS)  # every pass's tiles and launch settings
    count = space.count_timed_configs(gpu)
    assert count <= space.MAX_DEFAULT_CONFIGS
    assert f"{count} for the default 2 masks x 2 head dims" in " ".join(tuning.__doc__.split())
    assert space.count_timed_configs(space.default_config("tpu")) <= space.MAX_DEFAULT_CONFIGS
    for tiles in ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv"):
        for blocks in candidate_block_sizes(gpu, 128):
            assert getattr(blocks, tiles) in (32, 64, 128)
        for blocks in candidate_block_sizes(space.default_config("tpu"), 128):
            assert getattr(blocks, tiles) % 128 == 0
    for kernel in space.KERNELS:
        cpu = space.default_config("cpu", kernel)
        assert cpu.interpret
        assert all(2 <= len(space.step_candidates(cpu, 64, s)) <= 3 for s in cpu.steps)


def test_gpu_launch_settings_are_per_pass():
    assert [GpuBlockSizes().launch(p, 64) for p in ("fwd", "dq", "dkv")] == [(4, 2)] * 3
    assert [GpuBlockSizes().launch(p, 128) for p in ("fwd", "dq", "dkv")] == [(8, 2)] * 3
    blocks = GpuBlockSizes(num_warps_dq=2, num_stages_dkv=5)
    assert [blocks.launch(p, 128) for p in ("fwd", "dq", "dkv")] == [(8, 2), (2, 2), (8, 5)]
    with pytest.raises(ValueError, match="pass_name='bwd'"):
        blocks.launch("bwd", 64)


@pytest.mark.parametrize("change,match", [
    (dict(num_warps_dq=3), "GpuBlockSizes.num_warps_dq=3: expected a power of two from 1 to 32 .*num_warps_dq=4"),
    (dict(num_warps=64), "GpuBlockSizes.num_warps=64"),
    (dict(num_warps_dkv=4.0), "GpuBlockSizes.num_warps_dkv=4.0"),
    (dict(num_stages_dkv=0), "GpuBlockSizes.num_stages_dkv=0: expected a whole number >= 1 .*num_stages_dkv=2"),
    (dict(num_stages=True), "GpuBlockSizes.num_stages=True"),
    (dict(block_k_dq=24), "GpuBlockSizes.block_k_dq=24: expected a power of two >= 16"),
])
def test_bad_gpu_block_sizes_raise_clear_errors(change, match):
    with pytest.raises(ValueError, match=match):
        GpuBlockSizes(**change)


@pytest.mark.parametrize("change,bench_change,match", [
    (dict(kernel="cuda"), {}, "kernel='cuda'"),
    ({}, dict(masks=("diagonal",)), "masks=\\('diagonal',\\)"),
    ({}, dict(head_dims=(96,)), "head_dims=\\(96,\\)"),
    ({}, dict(dtype="float16"), "dtype='float16'"),
    ({}, dict(repeats=0), "repeats=0"),
    ({}, dict(impls=("xla",)), "bench.impls=\\('xla',\\)"),
    (dict(rel_tol=0.0), {}, "rel_tol=0.0"),
    (dict(candidates={"fwd_launch": ((4, 2),)}, kernel="tpu"), {}, "step 'fwd_launch'"),
    (dict(candidates={"launch": ((4, 2),)}), {}, "step 'launch'"),
    (dict(candidates={"fwd_tiles": ((64,),)}), {}, "expected values for \\('block_q', 'block_k'\\)"),
    (dict(candidates={"fwd_tiles": ((48, 64),)}), {}, "GpuBlockSizes.block_q=48"),
    (dict(candidates={"dkv_launch": ((4, 0),)}), {}, "GpuBlockSizes.num_stages_dkv=0"),
])
def test_bad_configs_raise_clear_errors(change, bench_change, match):
    config = space.default_config("cpu")
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(config, bench=dataclasses.replace(config.bench, **bench_change), **change)


def test_tpu_tiles_must_be_lane_multiples_on_hardware():
    with pytest.raises(ValueError, match="TpuBlockSizes.block_q=192: expected a positive multiple of 128"):
        dataclasses.replace(space.default_config("tpu"), candidates={"fwd_tiles": ((192, 128),)})
    assert isinstance(space.base_block_sizes("tpu", 64), TpuBlockSizes)


def test_cli_builds_the_config_from_its_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "run", lambda out_dir, config: (out_dir, config))
    out_dir, config = tuning.main(["--out", str(tmp_path), "--masks", "all", "--warmup", "0",
                                          "--repeats", "2", "--rel-tol", "1e-3", "--seed", "7"])
    assert out_dir == str(tmp_path) and config.kernel == "gpu" and config.interpret
    assert (config.bench.masks, config.bench.warmup, config.bench.repeats, config.bench.seed) == (MASKS, 0, 2, 7)
    assert config.tolerance == 1e-3 and config.bench.head_dims == space.default_config("cpu").bench.head_dims
    _, config = tuning.main(["--kernel", "tpu", "--head-dims", "128"])
    assert config.kernel == "tpu" and config.bench.head_dims == (128,) and config.bench.masks == space.DEFAULT_MASKS


def test_compiled_kernel_on_the_wrong_platform_is_refused(tmp_path):
    with pytest.raises(ValueError, match="only on a GPU, but the platform is cpu; use interpret=True"):
        tuning.run(tmp_path, space.default_config("gpu"))
    with pytest.raises(SystemExit):
        tuning.main(["--out", str(tmp_path), "--masks", "diagonal"])


TPU_V5E = AbstractDevice(device_kind="TPU v5 lite", platform="tpu", num_cores=1)


def _lower_fwd_bwd(config, head_dim: int, blocks, device, platform: str) -> str:
    bench = config.bench
    mask = make_mask("prefix_lm", bench.batch, bench.seq_len)
    q = jax.ShapeDtypeStruct((bench.batch, bench.seq_len, bench.heads, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((bench.batch, bench.seq_len, bench.kv_heads, head_dim), jnp.bfloat16)
    attention = (flash_attention_gpu if config.kernel == "gpu" else flash_attention_tpu)

    def loss(q, k, v):
        return attention(q, k, v, mask, block_sizes=blocks).astype(jnp.float32).sum()

    with jax.sharding.use_abstract_mesh(AbstractMesh((), (), abstract_device=device)):
        traced = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).trace(q, kv, kv)
        return traced.lower(lowering_platforms=(platform,)).as_text()


_TRITON_CALL_NAMES = {"flash_attention_fwd": "fwd", "flash_attention_bwd_dq": "dq", "flash_attention_bwd_dkv": "dkv"}


def _triton_launches(text: str) -> dict[str, tuple[int, int]]:
    """pass -> (num_warps, num_stages) of each Triton custom call in lowered StableHLO."""
    launches = {}
    for line in text.splitlines():
        if "__gpu$xla.gpu.triton" in line:
            name = re.search(r'name = "(\w+)"', line).group(1)
            warps = int(re.search(r"num_warps = (\d+) : i32", line).group(1))
            stages = int(re.search(r"num_stages = (\d+) : i32", line).group(1))
            launches[_TRITON_CALL_NAMES[name]] = (warps, stages)
    return launches


def _pass_settings(blocks, pass_name: str) -> tuple:
    return tuple(getattr(blocks, f) for s in space.STEPS.values() if s.pass_name == pass_name for f in s.fields)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_default_gpu_candidates_lower_for_h100(head_dim):
    """Forward + backward of every (pass, tiles, warps, stages) the default GPU sweep can time
    or recommend, at the target shape, through Pallas -> Triton IR (not PTX, which needs a GPU);
    each pallas_call gets its own pass's launch settings."""
    config = space.default_config("gpu")
    candidates = candidate_block_sizes(config, head_dim)
    assert len(candidates) == 4 * 3  # per pass tiles x launch (fwd 4 x 3, dq 3 x 3, dkv 3 x 3), zipped
    for pass_name in ("fwd", "dq", "dkv"):  # every pair a step can time is lowered
        tiles, launch = (space.step_candidates(config, head_dim, f"{pass_name}_{kind}") for kind in ("tiles", "launch"))
        assert {_pass_settings(b, pass_name) for b in candidates} == {t + w for t in tiles for w in launch}
    for blocks in candidates:
        launches = _triton_launches(_lower_fwd_bwd(config, head_dim, blocks, H100, "cuda"))
        assert launches == {p: blocks.launch(p, head_dim) for p in ("fwd", "dq", "dkv")}, blocks


@pytest.mark.parametrize("head_dim", [64, 128])
def test_default_tpu_candidates_lower_to_mosaic(head_dim):
    """The same for the TPU sweep's tiles through Pallas -> Mosaic (the (8, 128) block rule)."""
    config = space.default_config("tpu")
    candidates = candidate_block_sizes(config, head_dim)
    assert len(candidates) == 4  # zipped: 4 fwd, 3 dq, 3 dkv
    for blocks in candidates:
        assert _lower_fwd_bwd(config, head_dim, blocks, TPU_V5E, "tpu").count("tpu_custom_call") == 3, blocks
