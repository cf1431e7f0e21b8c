"""Sharded training, decoding, evaluation and checkpoints on 8 simulated CPU devices; bad-input errors.

JAX fixes its device count when its backend starts, and other test modules start it in
this pytest process with one CPU device. So the 8-device runs happen in subprocesses that
run this file as a script (`python test_distributed.py WORKER OUT ...`): one process with
8 devices trains, decodes and checkpoints on several meshes, and two processes with 4
devices each (joined by jax.distributed over localhost) do the same as one 8-device job.
The tests here compare what the workers wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]
REFERENCE = (1, 1, 1)
# Meshes change only the order of float32 sums. What the sharding determines is the loss and the
# gradient; a step's parameters go through Adam, lr * g / (|g| + eps), which turns the ~1e-7
# relative noise of a near-zero gradient into a parameter difference of up to ~lr. So runs are
# compared by their loss and by Adam's moments saved in the checkpoint, mu = (1 - b1) g and
# nu = (1 - b2) g^2 after one step (g clipped): linear in the gradient, so a tolerance relative
# to each tensor's largest entry holds, while a wrong split (half a batch, mixed heads) is off by O(1).
MOMENT_RTOL = {"mu": 1e-4, "nu": 2e-4}


def _name(shape) -> str:
    return "x".join(map(str, shape))


# --------------------------------------------------------------------------- workers (subprocess side)

def _setup(num_devices: int, cache_dir: Path):
    import jax

    jax.config.update("jax_num_cpu_devices", num_devices)
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))  # train() calls with equal steps share compiles
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _study():
    """The tiny diffusion model, data and settings every worker uses."""
    from workbench.models import ModelConfig
    from workbench.objectives.losses import LossConfig
    from workbench.sampling import DiffusionSamplingConfig
    from workbench.training import LMSource, OptimizerConfig, TrainConfig

    config = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, d_ff=64, max_len=64, dtype="float32",
                         attention="bidirectional")
    stream = np.random.default_rng(0).integers(3, 60, size=4000).astype(np.int32)
    source = LMSource(stream, seq_len=16, batch_size=8, objective="prefix_lm", seed=1)

    def train_config(steps):
        return TrainConfig(steps=steps, loss=LossConfig(kind="uniform", unroll=False), checkpoint_every=1,
                           log_every=1, progress=False, tensorboard=False,
                           optimizer=OptimizerConfig(schedule="constant", learning_rate=1e-3))

    sampling = DiffusionSamplingConfig(num_samples=2, num_steps=3, temperature=0.2, special_ids=(0, 1, 2, 3), mask_id=3)
    return config, source, train_config, sampling


RECORDS = [{"id": str(i), "inputs": "ab" * (i % 3 + 1), "targets": "x"} for i in range(6)]


def _eval_config(sampling):
    from workbench.evaluation.runner import EvalConfig

    return EvalConfig(task="wmt14_enfr", method="diffusion", input_len=40, target_len=5, batch_size=8,
                      diffusion=sampling)


def _decode_batch():
    """The batch the evaluation runner decodes for RECORDS on an 8-way batch split: six
    examples and two repeats of the last (so the runner reuses the sampler compiled for it)."""
    from workbench.evaluation.tasks import get_task
    from workbench.objectives.batch import seq2seq_batch

    encoded = [_ByteTokenizer().encode(get_task("wmt14_enfr").format_example(r)[0]) for r in RECORDS]
    ids = list(range(len(RECORDS))) + [len(RECORDS) - 1] * 2
    inputs = [encoded[i] for i in ids]
    return seq2seq_batch(inputs, [[] for _ in inputs], input_len=40, target_len=5, pad_id=0, example_ids=ids,
                         pad_targets=True)


def _host_params(model) -> dict:
    import jax
    from flax import nnx

    from workbench.distributed import to_host
    from workbench.distributed.sharding import path_str

    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {f"param:{path_str(p)}": to_host(x) for p, x in jax.tree_util.tree_leaves_with_path(pure)}


def _moments(run_dir: Path, config, optimizer_config, step: int, mesh=None) -> dict:
    """Adam's first and second moments saved with `step` in `run_dir`, as host arrays "mu:<path>", "nu:<path>"."""
    import jax
    from flax import nnx

    from workbench.distributed import shard_module, to_host
    from workbench.distributed.sharding import path_str
    from workbench.models import build_model
    from workbench.training.checkpoint import CheckpointStore
    from workbench.training.optim import make_optimizer

    model = build_model(config, 0)
    optimizer = nnx.Optimizer(model, make_optimizer(optimizer_config, step)[0], wrt=nnx.Param)
    if mesh is not None:
        shard_module(model, mesh)
        shard_module(optimizer, mesh, strict=False)
    CheckpointStore(run_dir).restore(model, optimizer, step=step)
    moments = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(optimizer))):
        name = path_str(path)
        for moment in ("mu", "nu"):
            if f"/{moment}/" in f"/{name}":
                moments[f"{moment}:{name.split(f'/{moment}/', 1)[1]}"] = to_host(leaf)
    return moments


class _ByteTokenizer:
    """Just enough tokenizer for the evaluation runner: bytes shifted past the 4 special ids."""

    pad_id, eos_id, mask_id, special_ids, sha256, vocab_size = 0, 1, 3, (0, 1, 2, 3), "none", 64

    @property
    def specials(self):
        from workbench.data.special import SpecialIds

        return SpecialIds(pad=0, eos=1, unk=2, mask=3)

    def encode(self, text):
        return [4 + (b % 60) for b in text.encode()]

    def decode_batch(self, tokens):
        return [" ".join(str(int(t)) for t in row) for row in tokens]


def worker_meshes(out: Path) -> None:
    """One process, 8 devices: train + decode on every mesh, restore and resume across meshes, evaluate."""
    _setup(8, out / "cache")
    import dataclasses
    import shutil

    import jax

    from workbench.distributed import MeshConfig, build_sharded, describe_shardings, make_mesh, shard_batch
    from workbench.evaluation.runner import predict
    from workbench.models import build_model, with_attention
    from workbench.sampling import diffusion_sample
    from workbench.training import load_model, train

    config, source, train_config, sampling = _study()
    meshes = {shape: make_mesh(MeshConfig(*shape), jax.devices()[: int(np.prod(shape))]) for shape in MESHES}
    np.savez(out / "initial.npz", **_host_params(build_model(config, 0)))
    built = build_sharded(lambda: build_model(config, 0), meshes[(2, 2, 2)])
    np.savez(out / "built_sharded.npz", **_host_params(built))
    (out / "built_specs.json").write_text(json.dumps(describe_shardings(built)))
    timings = {}
    for shape, mesh in meshes.items():
        started = time.perf_counter()
        model = build_model(config, 0)
        result = train(model, train_config(1), source, out / f"run_{_name(shape)}", mesh=mesh)
        # Every mesh decodes the same parameters (the one-device run's step 1, bitwise), so only the
        # decode's own sharding could change its tokens, not the trained models' float noise.
        decoder, _ = load_model(out / f"run_{_name(REFERENCE)}", step=1, mesh=mesh)
        decoded = diffusion_sample(decoder, _decode_batch(), sampling, jax.random.key(0), mesh=mesh)
        if shape != (1, 1, 1):  # the runner fills its 6 examples to 8 rows: the batch decoded above
            texts = predict(decoder, _ByteTokenizer(), RECORDS, _eval_config(sampling), progress=False, mesh=mesh)[0]
            (out / f"evaluated_{_name(shape)}.json").write_text(json.dumps(texts))
        if shape in ((1, 1, 1), (2, 2, 2)):  # AR decoding of the same parameters under a causal mask
            ar_config = dataclasses.replace(_eval_config(sampling), method="ar")
            texts = predict(with_attention(decoder, "causal"), _ByteTokenizer(), RECORDS, ar_config, progress=False,
                            mesh=mesh)[0]
            (out / f"evaluated_ar_{_name(shape)}.json").write_text(json.dumps(texts))
        np.savez(out / f"mesh_{_name(shape)}.npz", **_host_params(model), tokens=np.asarray(decoded.tokens),
                 scores=np.asarray(decoded.scores), probs=np.asarray(decoded.probs),
                 loss=result.history[-1]["loss"], grad_norm=result.history[-1]["grad_norm"],
                 **_moments(out / f"run_{_name(shape)}", config, train_config(1).optimizer, 1))
        specs = {"params": describe_shardings(model),
                 "batch": str(shard_batch(source.batch_at(0), mesh).tokens.sharding.spec),
                 "decoded": str(decoded.tokens.sharding.spec)}
        (out / f"specs_{_name(shape)}.json").write_text(json.dumps(specs))
        timings[_name(shape)] = time.perf_counter() - started

    # The Pallas kernel (interpret mode: the same kernel code, run by XLA on CPU) runs per
    # shard under the (2,2,2) mesh (workbench.attention.partitioning), against the same kernel
    # on one device (no shard_map). It needs head dim 64: a wider model, grouped-query attention.
    started = time.perf_counter()
    wide = dataclasses.replace(config, d_model=256, num_heads=4, num_kv_heads=2)
    for name, impl, shape in (("kernel_reference", "pallas_tpu_interpret", (1, 1, 1)), ("kernel_2x2x2", "pallas_tpu_interpret", (2, 2, 2))):
        kernel_config = dataclasses.replace(wide, attention_impl=impl)
        kernel_model = build_model(kernel_config, 0)
        result = train(kernel_model, train_config(1), source, out / f"run_{name}", mesh=meshes[shape])
        decoder, _ = load_model(out / "run_kernel_reference", step=1, mesh=meshes[shape])  # the same parameters
        decoded = diffusion_sample(decoder, _decode_batch(), sampling, jax.random.key(0), mesh=meshes[shape])
        np.savez(out / f"{name}.npz", **_host_params(kernel_model), tokens=np.asarray(decoded.tokens),
                 loss=result.history[-1]["loss"], grad_norm=result.history[-1]["grad_norm"],
                 **_moments(out / f"run_{name}", kernel_config, train_config(1).optimizer, 1))
    timings["kernel_2x2x2"] = time.perf_counter() - started

    # A checkpoint written on (2,2,2) loads onto (8,1,1), and onto a plain single device.
    onto = meshes[(8, 1, 1)]
    moved, step = load_model(out / "run_2x2x2", mesh=onto)
    np.savez(out / "restored_2x2x2_on_8x1x1.npz", **_host_params(moved), step=step)
    (out / "restored_specs.json").write_text(json.dumps(describe_shardings(moved)))
    plain, _ = load_model(out / "run_2x2x2")
    np.savez(out / "restored_2x2x2_plain.npz", **_host_params(plain))

    # Resume: copies of the (2,2,2) run's step-1 checkpoint continue to step 2 on (2,2,2) and on
    # (2,4,1), restoring parameters and optimizer state across meshes; both start from the same state.
    started = time.perf_counter()
    for name, shape in (("stay", (2, 2, 2)), ("moved", (2, 4, 1))):
        shutil.copytree(out / "run_2x2x2", out / f"run_{name}")
        resumed = build_model(config, 0)
        result = train(resumed, train_config(2), source, out / f"run_{name}", mesh=meshes[shape],
                       allow_config_change=True)  # 1 -> 2 steps: a config change, allowed
        np.savez(out / f"resumed_{name}.npz", **_host_params(resumed), last_step=result.history[-1]["step"],
                 loss=result.history[-1]["loss"], grad_norm=result.history[-1]["grad_norm"],
                 **_moments(out / f"run_{name}", config, train_config(2).optimizer, 2))
    timings["resume"] = time.perf_counter() - started

    (out / "timings.json").write_text(json.dumps(timings))


def worker_multihost(out: Path, port: int, process_id: int, reference_run: Path) -> None:
    """One of two processes with 4 devices each: the same 8-device job as one process."""
    _setup(4, out / f"cache_{process_id}")
    import dataclasses

    import jax

    from workbench.distributed import (DistributedConfig, HostShardedSource, MeshConfig, initialize, make_mesh,
                                       to_host)
    from workbench.evaluation.runner import predict
    from workbench.models import build_model, with_attention
    from workbench.sampling import diffusion_sample
    from workbench.training import load_model, train

    info = initialize(DistributedConfig(coordinator_address=f"localhost:{port}", num_processes=2,
                                        process_id=process_id, initialization_timeout_s=120))
    config, source, train_config, sampling = _study()
    mesh = make_mesh(MeshConfig(data=-1, fsdp=2, tensor=2))
    sharded = HostShardedSource(source, mesh)
    batch = sharded.batch_at(0)
    local_ids = np.concatenate([np.asarray(s.data) for s in batch.example_ids.addressable_shards])
    model = build_model(config, 0)
    result = train(model, train_config(1), source, out / "run_multihost", mesh=mesh)
    restored, _ = load_model(reference_run, step=1, mesh=mesh)  # decoded: the parameters every mesh decodes
    decoded = diffusion_sample(restored, _decode_batch(), sampling, jax.random.key(0), mesh=mesh)
    ar_config = dataclasses.replace(_eval_config(sampling), method="ar")
    ar_texts = predict(with_attention(restored, "causal"), _ByteTokenizer(), RECORDS, ar_config, progress=False,
                       mesh=mesh)[0]
    arrays = dict(**_host_params(model), tokens=to_host(decoded.tokens), scores=to_host(decoded.scores),
                  loss=result.history[-1]["loss"],
                  **_moments(out / "run_multihost", config, train_config(1).optimizer, 1, mesh=mesh))
    restored_arrays = _host_params(restored)
    if process_id == 0:
        np.savez(out / "multihost.npz", **arrays)
        (out / "multihost_ar.json").write_text(json.dumps(ar_texts))
        np.savez(out / "multihost_restored.npz", **restored_arrays)
    facts = {"info": info._asdict(), "local_rows": sharded.local_rows(source.batch_size).tolist(),
             "local_example_ids": sorted(set(local_ids.tolist())),
             "global_example_ids": to_host(batch.example_ids).tolist()}
    (out / f"process_{process_id}.json").write_text(json.dumps(facts))
    jax.distributed.shutdown()


# --------------------------------------------------------------------------- helpers (pytest side)

def _worker(*args: str) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[1]
    # LLVM optimisation off: these tiny programs compile twice as fast and compute the same
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env, cwd=str(root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float) -> None:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"worker ran past {timeout}s:\n{output[-4000:]}")
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{output[-6000:]}"


def _params(arrays) -> dict:
    return {k: arrays[k] for k in arrays.files if k.startswith("param:")}


def _assert_params_close(a, b, atol, what=""):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and pa, f"{what}: parameter names differ"
    for key in pa:
        np.testing.assert_allclose(pa[key], pb[key], atol=atol, rtol=0, err_msg=f"{what}: {key}")


def _assert_same_step(run, reference, what):
    """The same loss, and the same gradient (as Adam's moments), up to float32 summation order."""
    np.testing.assert_allclose(run["loss"], reference["loss"], rtol=1e-5, err_msg=f"{what}: loss")
    if "grad_norm" in reference.files and "grad_norm" in run.files:
        np.testing.assert_allclose(run["grad_norm"], reference["grad_norm"], rtol=1e-5, err_msg=f"{what}: grad_norm")
    keys = [k for k in reference.files if k.split(":")[0] in MOMENT_RTOL]
    assert keys and sorted(keys) == sorted(k for k in run.files if k.split(":")[0] in MOMENT_RTOL), what
    for key in keys:
        scale = float(np.max(np.abs(reference[key])))
        assert scale > 0, f"{what}: {key} is all zeros, so the comparison could not fail"
        np.testing.assert_allclose(run[key], reference[key], rtol=0, atol=MOMENT_RTOL[key.split(":")[0]] * scale,
                                   err_msg=f"{what}: {key} (largest entry {scale:.3g})")


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meshes")
    _finish(_worker("meshes", str(out)), timeout=420)
    return out


def _load(out: Path, name: str):
    return np.load(out / name)


# --------------------------------------------------------------------------- 8 devices, one process

def test_one_training_step_is_the_same_on_every_mesh(mesh_runs):
    reference = _load(mesh_runs, f"mesh_{_name(REFERENCE)}.npz")
    for shape in MESHES[1:]:
        _assert_same_step(_load(mesh_runs, f"mesh_{_name(shape)}.npz"), reference, _name(shape))
    # the moments are the step's (clipped) gradient: mu = (1 - b1) g, so |mu| / (1 - b1) is the logged grad norm
    mu_norm = np.sqrt(sum(np.sum(reference[k].astype(np.float64) ** 2) for k in reference.files if k.startswith("mu:")))
    np.testing.assert_allclose(mu_norm / 0.1, min(float(reference["grad_norm"]), 1.0), rtol=1e-5)


def test_one_diffusion_decode_is_the_same_on_every_mesh(mesh_runs):
    reference = _load(mesh_runs, f"mesh_{_name(REFERENCE)}.npz")
    for shape in MESHES[1:]:
        run = _load(mesh_runs, f"mesh_{_name(shape)}.npz")
        # every mesh decodes the same parameters; the sharded decode must give the same tokens
        np.testing.assert_array_equal(run["tokens"], reference["tokens"], err_msg=_name(shape))
        np.testing.assert_allclose(run["scores"], reference["scores"], atol=1e-4, err_msg=_name(shape))
        np.testing.assert_allclose(run["probs"], reference["probs"], atol=1e-4, err_msg=_name(shape))


def test_pallas_kernel_runs_per_shard_and_matches_one_device(mesh_runs):
    reference = _load(mesh_runs, "kernel_reference.npz")
    run = _load(mesh_runs, "kernel_2x2x2.npz")
    # Not the parameters after the step: Adam maps a ~1e-8 gradient's summation-order noise to ~lr.
    _assert_same_step(run, reference, "pallas_tpu_interpret on 2x2x2")
    np.testing.assert_array_equal(run["tokens"], reference["tokens"])


def _spec(*axes) -> str:
    from jax.sharding import PartitionSpec

    return str(PartitionSpec(*axes))


def test_parameters_batches_and_outputs_are_sharded_as_the_table_says(mesh_runs):
    specs = json.loads((mesh_runs / "specs_2x2x2.json").read_text())
    params = specs["params"]
    assert params["blocks/0/mlp/gate/kernel"] == _spec("fsdp", "tensor")
    assert params["blocks/0/mlp/down/kernel"] == _spec("tensor", "fsdp")
    assert params["blocks/0/attn/q/kernel"] == _spec("fsdp", "tensor")
    assert params["blocks/0/attn/o/kernel"] == _spec("tensor", "fsdp")
    assert params["embedder/embedding"] == _spec("tensor", "fsdp")
    assert params["final_norm/scale"] == _spec()
    assert specs["batch"] == specs["decoded"] == _spec(("data", "fsdp"))
    data_only = json.loads((mesh_runs / "specs_8x1x1.json").read_text())
    assert data_only["batch"] == _spec("data")
    assert set(data_only["params"].values()) == {_spec()}  # pure data parallel: replicated
    one = json.loads((mesh_runs / "specs_1x1x1.json").read_text())
    assert one["batch"] == _spec()


def test_model_built_sharded_equals_the_eager_build(mesh_runs):
    _assert_params_close(_load(mesh_runs, "built_sharded.npz"), _load(mesh_runs, "initial.npz"), atol=1e-7,
                         what="built under jit on (2,2,2)")
    built = json.loads((mesh_runs / "built_specs.json").read_text())
    assert built == json.loads((mesh_runs / "specs_2x2x2.json").read_text())["params"]


def test_checkpoint_saved_on_one_mesh_restores_on_another(mesh_runs):
    saved = _load(mesh_runs, "mesh_2x2x2.npz")
    restored = _load(mesh_runs, "restored_2x2x2_on_8x1x1.npz")
    assert int(restored["step"]) == 1
    _assert_params_close(restored, saved, atol=0, what="restored onto (8,1,1)")
    _assert_params_close(_load(mesh_runs, "restored_2x2x2_plain.npz"), saved, atol=0, what="restored unsharded")
    assert set(json.loads((mesh_runs / "restored_specs.json").read_text()).values()) == {_spec()}


def test_training_resumed_on_another_mesh_continues_the_run(mesh_runs):
    moved, stay = _load(mesh_runs, "resumed_moved.npz"), _load(mesh_runs, "resumed_stay.npz")
    assert int(moved["last_step"]) == int(stay["last_step"]) == 2
    # Step 2 from the same restored state: its loss, gradient and Adam moments (mu = b1 mu_1 + (1 - b1) g_2,
    # so a lost or reset optimizer state is off by ~b1 mu_1, far outside the tolerance) agree.
    _assert_same_step(moved, stay, "resumed on (2,4,1)")


def test_evaluation_runner_on_sharded_meshes_matches_one_device(mesh_runs):
    expected = [[" ".join(map(str, row))] for row in _load(mesh_runs, f"mesh_{_name(REFERENCE)}.npz")["tokens"][:6]]
    for shape in MESHES[1:]:
        evaluated = json.loads((mesh_runs / f"evaluated_{_name(shape)}.json").read_text())
        assert evaluated == expected, _name(shape)
    ar = [json.loads((mesh_runs / f"evaluated_ar_{name}.json").read_text()) for name in ("1x1x1", "2x2x2")]
    assert ar[0] == ar[1] and len(ar[0]) == len(expected)


# --------------------------------------------------------------------------- two processes

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_run_the_same_job_as_one(mesh_runs, tmp_path):
    port = str(_free_port())
    procs = [_worker("multihost", str(tmp_path), port, str(i), str(mesh_runs / "run_1x1x1")) for i in range(2)]
    for proc in procs:
        _finish(proc, timeout=300)
    facts = [json.loads((tmp_path / f"process_{i}.json").read_text()) for i in range(2)]
    assert [f["info"]["process_index"] for f in facts] == [0, 1]
    assert all(f["info"]["device_count"] == 8 and f["info"]["local_device_count"] == 4 for f in facts)
    # each process loads its own half of every global batch
    rows = [set(f["local_rows"]) for f in facts]
    assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(8))
    global_ids = facts[0]["global_example_ids"]
    for f, own in zip(facts, rows):
        assert f["local_example_ids"] == sorted(global_ids[r] for r in own)

    reference = _load(mesh_runs, "mesh_2x2x2.npz")
    joined = _load(tmp_path, "multihost.npz")
    _assert_same_step(joined, reference, "two processes")
    np.testing.assert_array_equal(joined["tokens"], reference["tokens"])
    # KV-cached AR decoding over both processes' devices gives the one-process texts
    ar_texts = json.loads((tmp_path / "multihost_ar.json").read_text())
    assert ar_texts == json.loads((mesh_runs / "evaluated_ar_2x2x2.json").read_text())
    # a checkpoint written by one process with one device restores across the two processes' mesh
    _assert_params_close(_load(tmp_path, "multihost_restored.npz"), _load(mesh_runs, "mesh_1x1x1.npz"), atol=0,
                         what="restored across processes")


# --------------------------------------------------------------------------- bad input (in process)

def test_mesh_shape_must_match_the_device_count():
    from workbench.distributed import MeshConfig

    assert MeshConfig().shape(8) == (8, 1, 1)
    assert MeshConfig(data=-1, fsdp=2, tensor=2).shape(8) == (2, 2, 2)
    assert MeshConfig(data=2, fsdp=-1, tensor=1).shape(8) == (2, 4, 1)
    with pytest.raises(ValueError, match=r"data\*fsdp\*tensor = 4 devices, but 8 are present"):
        MeshConfig(data=2, fsdp=2, tensor=1).shape(8)
    with pytest.raises(ValueError, match=r"multiple of 3 devices, but 8 are present"):
        MeshConfig(data=-1, fsdp=3).shape(8)
    with pytest.raises(ValueError, match="more than one axis of size -1"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="axis size outside"):
        MeshConfig(data=0)


def _abstract_mesh(shape):
    from jax.sharding import AbstractMesh

    from workbench.distributed import MESH_AXES

    return AbstractMesh(tuple(shape), MESH_AXES)


def test_batch_must_divide_by_the_batch_axes():
    from workbench.distributed import check_batch_size

    check_batch_size(8, _abstract_mesh((2, 2, 2)))
    with pytest.raises(ValueError, match=r"batch size 6 is not divisible by .*data=2\*fsdp=2 = 4"):
        check_batch_size(6, _abstract_mesh((2, 2, 2)))


def test_dimension_must_divide_by_its_mesh_axes():
    from jax.sharding import PartitionSpec

    from workbench.distributed import logical_spec

    mesh = _abstract_mesh((1, 4, 2))
    assert logical_spec(("embed", "mlp"), (32, 64), mesh) == PartitionSpec("fsdp", "tensor")
    assert logical_spec(("mlp", "embed"), (64, 32), _abstract_mesh((8, 1, 1))) == PartitionSpec()
    with pytest.raises(ValueError, match=r"dimension 0 \(logical 'embed'\) has size 30, .* fsdp=4 = 4 devices"):
        logical_spec(("embed", "mlp"), (30, 64), mesh, what="w")
    with pytest.raises(ValueError, match="unknown logical axis 'nope'"):
        logical_spec(("nope",), (4,), mesh)


def test_every_parameter_of_both_architectures_has_a_rule():
    import jax
    from flax import nnx

    from workbench.distributed.sharding import DEFAULT_RULES, path_str, state_spec
    from workbench.models import ModelConfig, build_model

    mesh = _abstract_mesh((1, 2, 2))
    for arch in ("decoder", "encoder_decoder"):
        config = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, d_ff=64, arch=arch,
                             tie_embeddings=arch == "decoder")
        model = nnx.eval_shape(lambda: build_model(config, 0))
        pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        specs = {path_str(p): state_spec(path_str(p), x.shape, mesh, DEFAULT_RULES, strict=True)
                 for p, x in jax.tree_util.tree_leaves_with_path(pure)}
        sharded = [p for p, s in specs.items() if len(s)]
        assert len(sharded) == sum(1 for p in specs if not p.endswith("scale")), arch
    with pytest.raises(ValueError, match="cannot shard parameter 'blocks/0/extra/kernel' of shape \\(4, 4\\)"):
        state_spec("blocks/0/extra/kernel", (4, 4), mesh, DEFAULT_RULES, strict=True)
    assert len(state_spec("opt_state/0/v_row/blocks/0/mlp/up/kernel", (32,), mesh, DEFAULT_RULES, strict=False)) == 0


def test_distributed_config_reads_the_environment_and_checks_ids():
    from workbench.distributed import DistributedConfig

    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    config = DistributedConfig().with_environment(env)
    assert (config.coordinator_address, config.num_processes, config.process_id) == ("10.0.0.2:1234", 4, 3)
    assert DistributedConfig(process_id=0).with_environment(env).process_id == 0  # explicit fields win
    with pytest.raises(ValueError, match="process_id=4 is out of range for num_processes=4"):
        DistributedConfig(num_processes=4).with_environment({"JAX_PROCESS_ID": "4"})
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be an integer"):
        DistributedConfig().with_environment({"JAX_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match="needs a port"):
        DistributedConfig(coordinator_address="10.0.0.2")


def test_one_device_mesh_places_a_host_batch_in_process():
    import jax

    from workbench.distributed import MeshConfig, make_mesh, process_rows, shard_batch
    from workbench.distributed.sharding import batch_sharding

    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    tree = shard_batch({"tokens": np.arange(12).reshape(6, 2), "lengths": np.arange(6)}, mesh)
    np.testing.assert_array_equal(np.asarray(tree["tokens"]), np.arange(12).reshape(6, 2))
    assert process_rows(batch_sharding(mesh), (6, 2)).tolist() == list(range(6))
    with pytest.raises(ValueError, match="scalar"):
        shard_batch({"x": np.float32(1.0)}, mesh)


if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    if kind == "meshes":
        worker_meshes(out)
    elif kind == "multihost":
        worker_multihost(out, int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    else:
        raise SystemExit(f"unknown worker {kind!r}; expected 'meshes' or 'multihost'")
