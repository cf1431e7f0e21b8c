"""LoRA adapters (`workbench.models.lora`) and their PEFT folders (`workbench.pretrained.peft`):
a fresh or switched-off adapter is the base model bitwise, merging agrees with the unmerged
forward and exports, save/load round trips bitwise and refuses another base, and the trainer
trains (and checkpoints, and resumes) the adapter only."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from resume_job import Killed, kill_hook
from workbench.models import ModelConfig, build_model, count_params, get_preset, param_count
from workbench.models.config import LORA_TARGETS, LoRAConfig
from workbench.models.transformer import with_config
from workbench.models.lora import (
    Frozen,
    adapter_gate,
    adapter_summary,
    adapter_values,
    base_fingerprint,
    merge_lora,
    with_lora,
)
from workbench.objectives.losses import LossConfig
from workbench.pretrained import load_pretrained, save_pretrained
from workbench.pretrained.errors import (
    AdapterBaseMismatchError,
    AdapterExistsError,
    AdapterMismatchError,
    NotAnAdapterError,
)
from workbench.pretrained.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, save_adapter
from workbench.training import CheckpointStore, LMSource, OptimizerConfig, TrainConfig, load_model, train
from workbench.training.logging import read_metrics
from workbench.training.trainer import RunConfigMismatchError

GOLDEN = Path(__file__).parent / "golden"
VOCAB = 50
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, size=(2, 12)), jnp.int32)
FULL = LoRAConfig(rank=3, alpha=6.0, trainable_rows=(1, 7), train_norms=True)


def _tiny(seed=0, **changes):
    return build_model(get_preset("tiny", vocab_size=VOCAB, dtype="float32", **changes), seed)


def _logits(model, tokens=TOKENS, gate=None):
    with adapter_gate(gate):
        return np.asarray(model(tokens))


def _frozen(model):
    return {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, Frozen))}


def _trained(model):
    return {k: np.asarray(v) for k, v in adapter_values(model).items()}


def _perturb(model, seed=1, size=0.05):
    """Training-like values for every adapter tensor (B no longer zero, rows and norms moved)."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + size * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


@pytest.fixture(scope="module")
def base():
    return _tiny()


# -- forward identities ---------------------------------------------------------------------------


def test_fresh_adapter_gives_the_base_logits_bitwise_and_the_gate_switches_it_off(base):
    adapted = with_lora(base, FULL)
    reference = _logits(base)
    np.testing.assert_array_equal(_logits(adapted), reference)
    summary = adapter_summary(adapted)
    norms = (2 * 2 + 1) * 64  # two per layer and the final one: trained under train_norms
    assert summary["frozen"] == count_params(base) - norms
    assert count_params(adapted) == summary["trainable"] + summary["frozen"]  # every weight held

    _perturb(adapted)
    on = _logits(adapted)
    assert np.abs(on - reference).max() > 1e-3  # the adapter now changes the outputs
    # off: the base network, with the adapter's trained norm scales (train_norms) in place of the base's
    np.testing.assert_array_equal(_logits(adapted, gate=False), _logits(_with_norms_of(base, adapted)))
    # a per-position gate: 0 everywhere is the off switch, 1 everywhere the default
    zeros, ones = jnp.zeros(TOKENS.shape), jnp.ones(TOKENS.shape)
    np.testing.assert_array_equal(_logits(adapted, gate=zeros), _logits(adapted, gate=False))
    np.testing.assert_array_equal(_logits(adapted, gate=ones), on)
    # ...and a mixed gate is neither (positions with gate 1 feed later positions)
    mixed = jnp.asarray(np.arange(TOKENS.shape[1]) % 2 == 0, jnp.float32)[None].repeat(2, 0)
    part = _logits(adapted, gate=mixed)
    assert np.abs(part - on).max() > 1e-4 and np.abs(part - _logits(adapted, gate=False)).max() > 1e-4


def _with_norms_of(base, adapted):
    """The base with the adapter's (trained) norm scales: what gate False computes under train_norms."""
    model = nnx.clone(base)
    norms = {path: value for path, value in adapter_values(adapted).items() if path[-1] == "scale"}
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    for path, value in norms.items():
        node = pure
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model


def test_gate_off_is_the_base_bitwise_without_trained_norms(base):
    adapted = _perturb(with_lora(base, LoRAConfig(rank=2, trainable_rows=(3,))))
    reference = _logits(base)
    np.testing.assert_array_equal(_logits(adapted, gate=False), reference)
    np.testing.assert_array_equal(_logits(adapted, gate=jnp.zeros(TOKENS.shape)), reference)
    assert np.abs(_logits(adapted) - reference).max() > 1e-3


def test_jitted_forward_reads_the_gate_inside_the_trace(base):
    adapted = _perturb(with_lora(base, LoRAConfig(rank=2)))

    @nnx.jit(static_argnames="on")
    def run(model, tokens, on):
        with adapter_gate(on):
            return model(tokens)

    np.testing.assert_array_equal(np.asarray(run(adapted, TOKENS, False)), np.asarray(nnx.jit(lambda m, t: m(t))(base, TOKENS)))
    np.testing.assert_allclose(np.asarray(run(adapted, TOKENS, True)), _logits(adapted), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_merged_forward_agrees_with_the_unmerged_one(tie):
    base = _tiny(tie_embeddings=tie)
    adapted = _perturb(with_lora(base, FULL))
    merged = merge_lora(adapted)
    assert merged.config.lora is None and merged.config == base.config
    assert not nnx.state(merged, Frozen)  # a plain model: every weight an nnx.Param again
    np.testing.assert_allclose(_logits(merged), _logits(adapted), atol=1e-5, rtol=0)
    assert np.abs(_logits(merged) - _logits(base)).max() > 1e-3


def test_merged_imported_llama_exports_and_imports_bitwise(tmp_path):
    """The untied tiny Llama (rope scaling, grouped-query attention) made by transformers."""
    loaded = load_pretrained(GOLDEN / "pretrained_tiny_llama", dtype="float32")
    vocab = loaded.config.vocab_size
    adapted = _perturb(with_lora(loaded.model, LoRAConfig(rank=2, targets=("q_proj", "v_proj", "down_proj"),
                                                          trainable_rows=(vocab - 1,))))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, vocab, size=(2, 10)), jnp.int32)
    merged = merge_lora(adapted)
    np.testing.assert_allclose(_logits(merged, tokens), _logits(adapted, tokens), atol=1e-5, rtol=0)
    folder = save_pretrained(merged, tmp_path / "merged")
    again = load_pretrained(folder, tokenizer=False)
    assert again.config == merged.config
    np.testing.assert_array_equal(_logits(again.model, tokens), _logits(merged, tokens))


# -- PEFT folders ---------------------------------------------------------------------------------


def test_adapter_folder_has_peft_names_and_round_trips_bitwise(base, tmp_path):
    adapted = _perturb(with_lora(base, FULL))
    folder = save_adapter(adapted, tmp_path / "adapter", base_name="tiny-test", extra={"run": "r1", "step": 7})
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "bias",
                                   "fan_in_fan_out", "base_model_name_or_path", "inference_mode")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 3, "lora_alpha": 6.0, "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": "tiny-test", "inference_mode": True}
    assert sorted(config["target_modules"]) == sorted(LORA_TARGETS)
    record = config["workbench"]
    assert record["base_fingerprint"] == base_fingerprint(with_lora(base, FULL))
    assert record["lora_config"]["rank"] == 3 and record["trainable_rows"] == [1, 7]
    assert (record["base_name"], record["run"], record["step"]) == ("tiny-test", "r1", 7)

    from safetensors.numpy import load_file

    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    d, f = base.config.d_model, base.config.d_ff
    prefix = "base_model.model.model.layers.1."
    assert tensors[prefix + "self_attn.q_proj.lora_A.weight"].shape == (3, d)
    assert tensors[prefix + "mlp.down_proj.lora_A.weight"].shape == (3, f)
    assert tensors[prefix + "mlp.down_proj.lora_B.weight"].shape == (d, 3)
    np.testing.assert_array_equal(tensors[prefix + "mlp.up_proj.lora_B.weight"],
                                  np.asarray(adapted.blocks[1].mlp.up.lora_b[...]).T)
    workbench_only = sorted(n for n in tensors if not n.startswith("base_model.model.model.layers."))
    assert all(n.startswith("workbench.") for n in workbench_only)
    assert "workbench.embed_tokens.row_delta" in workbench_only and "workbench.model.norm.weight" in workbench_only
    assert record["workbench_tensors"] == workbench_only
    assert len(tensors) == 2 * 7 * 2 + 1 + (2 * 2 + 1)  # A and B of 7 targets x 2 layers, rows, norms

    again = load_adapter(base, folder)
    _assert_same(_trained(again), _trained(adapted))
    _assert_same(_frozen(again), _frozen(adapted))
    np.testing.assert_array_equal(_logits(again), _logits(adapted))
    assert base.config.lora is None and not nnx.state(base, Frozen)  # the base is untouched


def test_saving_again_keeps_the_same_adapter_and_refuses_a_different_one(base, tmp_path):
    adapted = _perturb(with_lora(base, LoRAConfig(rank=2)))
    folder = save_adapter(adapted, tmp_path / "a", base_name="tiny")
    before = (folder / ADAPTER_WEIGHTS).read_bytes()
    save_adapter(adapted, folder, base_name="tiny")  # the same adapter: fine, unchanged
    assert (folder / ADAPTER_WEIGHTS).read_bytes() == before
    other = _perturb(with_lora(base, LoRAConfig(rank=2)), seed=5)
    with pytest.raises(AdapterExistsError, match="different adapter.*overwrite=True"):
        save_adapter(other, folder, base_name="tiny")
    assert (folder / ADAPTER_WEIGHTS).read_bytes() == before
    save_adapter(other, folder, base_name="tiny", overwrite=True)
    _assert_same(_trained(load_adapter(base, folder)), _trained(other))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary folders left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("keep")
    with pytest.raises(AdapterExistsError, match="not an adapter folder"):
        save_adapter(other, tmp_path / "notes", base_name="tiny", overwrite=True)
    assert (tmp_path / "notes" / "x.txt").read_text() == "keep"


def test_loading_on_another_base_is_refused_naming_both_fingerprints(base, tmp_path):
    adapted = _perturb(with_lora(base, LoRAConfig(rank=2)))
    folder = save_adapter(adapted, tmp_path / "a", base_name="tiny-seed-0")
    other = _tiny(seed=1)
    expected = base_fingerprint(with_lora(base, LoRAConfig(rank=2)))
    found = base_fingerprint(with_lora(other, LoRAConfig(rank=2)))
    assert expected != found
    with pytest.raises(AdapterBaseMismatchError) as info:
        load_adapter(other, folder)
    message = str(info.value)
    assert expected in message and found in message and "tiny-seed-0" in message
    # one changed weight is another base
    nudged = nnx.clone(base)
    nudged.blocks[0].mlp.up.kernel.set_value(nudged.blocks[0].mlp.up.kernel[...].at[0, 0].add(1e-3))
    with pytest.raises(AdapterBaseMismatchError):
        load_adapter(nudged, folder)
    with pytest.raises(AdapterMismatchError, match="already has adapters"):
        load_adapter(adapted, folder)


def _resave(folder: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    change(tensors)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))


def _edit_config(folder: Path, change) -> None:
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    change(config)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config))


def test_broken_adapter_folders_are_refused_by_name(base, tmp_path):
    adapted = _perturb(with_lora(base, LoRAConfig(rank=2, trainable_rows=(4,))))
    good = save_adapter(adapted, tmp_path / "good", base_name="tiny")
    q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"

    def copy(name):
        return Path(shutil.copytree(good, tmp_path / name))

    cases = {
        "missing": (lambda t: t.pop(q_a), r"missing tensors \['base_model.model.model.layers.0.self_attn.q_proj"),
        "extra": (lambda t: t.update({"workbench.extra": np.zeros(2, np.float32)}), r"unexpected tensors \['workbench.extra'\]"),
        "shape": (lambda t: t.update({q_a: np.zeros((3, 64), np.float32)}), r"q_proj.lora_A.weight' has shape \(3, 64\).*needs \(2, 64\)"),
    }
    for name, (change, pattern) in cases.items():
        folder = copy(name)
        _resave(folder, change)
        with pytest.raises(AdapterMismatchError, match=pattern):
            load_adapter(base, folder)

    edited = copy("edited_rank")
    _edit_config(edited, lambda c: c.update(r=4))
    with pytest.raises(AdapterMismatchError, match=r"PEFT keys \['r'\]"):
        load_adapter(base, edited)
    rows = copy("rows")
    _edit_config(rows, lambda c: c["workbench"]["lora_config"].update(trainable_rows=[VOCAB + 3]))
    with pytest.raises(AdapterMismatchError, match="outside the vocabulary"):
        load_adapter(base, rows)

    foreign = copy("foreign")
    _edit_config(foreign, lambda c: c.pop("workbench"))
    with pytest.raises(NotAnAdapterError, match="no 'workbench' record"):
        load_adapter(base, foreign)
    prefix = copy("prefix")
    _edit_config(prefix, lambda c: c.update(peft_type="PREFIX_TUNING"))
    with pytest.raises(NotAnAdapterError, match="PREFIX_TUNING"):
        load_adapter(base, prefix)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAnAdapterError, match="not an adapter folder"):
        load_adapter(base, tmp_path / "empty")
    hf_model = tmp_path / "model"  # a model folder, not an adapter
    hf_model.mkdir()
    shutil.copy(good / ADAPTER_WEIGHTS, hf_model / "model.safetensors")
    (hf_model / "config.json").write_text("{}")
    with pytest.raises(NotAnAdapterError):
        load_adapter(base, hf_model)
    load_adapter(base, good)  # the original still loads


@settings(max_examples=6, derandomize=True, deadline=None)
@given(rank=st.integers(1, 4),
       targets=st.lists(st.sampled_from(LORA_TARGETS), min_size=1, max_size=7, unique=True),
       train_norms=st.booleans(),
       rows=st.lists(st.integers(0, VOCAB - 1), max_size=2, unique=True))
def test_any_lora_config_is_the_base_when_fresh_and_round_trips(rank, targets, train_norms, rows):
    import tempfile

    base = _tiny()
    config = LoRAConfig(rank=rank, alpha=2.0 * rank, targets=tuple(targets), trainable_rows=tuple(rows),
                        train_norms=train_norms)
    adapted = with_lora(base, config)
    np.testing.assert_array_equal(_logits(adapted), _logits(base))
    _perturb(adapted)
    with tempfile.TemporaryDirectory() as tmp:
        again = load_adapter(base, save_adapter(adapted, Path(tmp) / "a", base_name="tiny"))
    assert again.config.lora == config
    _assert_same(_trained(again), _trained(adapted))
    np.testing.assert_array_equal(_logits(again), _logits(adapted))
    np.testing.assert_allclose(_logits(merge_lora(adapted)), _logits(adapted), atol=1e-5, rtol=0)


# -- training -------------------------------------------------------------------------------------

RUN_MODEL = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_len=32, dtype="float32",
                        attention="bidirectional")
RUN_LORA = LoRAConfig(rank=2, trainable_rows=(63,))
STEPS = 6


def _run_source():
    stream = np.random.default_rng(0).integers(3, 60, size=4000).astype(np.int32)
    return LMSource(stream, seq_len=16, batch_size=4, objective="prefix_lm", seed=1)


def _run_config(**changes):
    fields = dict(steps=STEPS, loss=LossConfig(kind="uniform"), checkpoint_every=3, log_every=1, progress=False,
                  tensorboard=False, optimizer=OptimizerConfig(warmup_steps=2))
    fields.update(changes)
    return TrainConfig(**fields)


@pytest.fixture(scope="module")
def run_base():
    return build_model(RUN_MODEL, 3)


@pytest.fixture(scope="module")
def straight(run_base, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora_straight") / "run"
    model = with_lora(run_base, RUN_LORA)
    before = _trained(model)
    result = train(model, _run_config(), _run_source(), run_dir)
    return run_dir, before, result.model


def test_training_changes_only_the_adapter_and_checkpoints_only_it(run_base, straight):
    run_dir, before, model = straight
    _assert_same(_frozen(model), _frozen(with_lora(run_base, RUN_LORA)))  # base bitwise unchanged
    after = _trained(model)
    moved = [path for path in after if not np.array_equal(after[path], before[path])]
    assert set(moved) == set(after)  # every adapter tensor trained (B, A, the embedding row)
    import orbax.checkpoint as ocp

    saved = ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / str(STEPS) / "model")
    flat = {tuple(int(k) if str(k).isdigit() else k for k in (p.key if hasattr(p, "key") else p.idx for p in path)): v
            for path, v in jax.tree_util.tree_leaves_with_path(saved)}
    assert set(flat) == set(after)
    _assert_same({k: np.asarray(v) for k, v in flat.items()}, after)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["config"]["model"]["lora"] == {"rank": 2, "alpha": 16.0, "targets": list(LORA_TARGETS),
                                               "trainable_rows": [63], "train_norms": False}
    loaded, step = load_model(run_dir, base=run_base)
    assert step == STEPS
    _assert_same(_trained(loaded), after)
    _assert_same(_frozen(loaded), _frozen(model))
    with pytest.raises(ValueError, match="pass the base model"):
        load_model(run_dir)


def test_ar_loss_trains_the_adapter_only(run_base, tmp_path):
    model = with_lora(with_config(run_base, attention="causal"), RUN_LORA)
    frozen = _frozen(model)
    train(model, _run_config(steps=2, loss=LossConfig(kind="ar")), _run_source(), tmp_path)
    _assert_same(_frozen(model), frozen)
    assert any(np.abs(np.asarray(m.lora_b[...])).max() > 0 for b in model.blocks for m in (b.attn.q, b.mlp.down))


def test_adapter_run_stopped_and_resumed_ends_bitwise_equal(run_base, straight, tmp_path, monkeypatch):
    run_dir = tmp_path / "stopped"

    def die():
        raise Killed("save:3")

    with monkeypatch.context() as patch:
        patch.setattr(*kill_hook("save", 3, die))
        with pytest.raises(Killed):
            train(with_lora(run_base, RUN_LORA), _run_config(), _run_source(), run_dir)
    assert CheckpointStore(run_dir).latest_step() == 3
    resumed = train(with_lora(run_base, RUN_LORA), _run_config(), _run_source(), run_dir).model
    _assert_same(_trained(resumed), _trained(straight[2]))
    _assert_same(_frozen(resumed), _frozen(straight[2]))
    losses = [(r["step"], r["loss"]) for r in read_metrics(run_dir, "loss")]
    assert losses == [(r["step"], r["loss"]) for r in read_metrics(straight[0], "loss")]
    assert [step for step, _ in losses] == list(range(1, STEPS + 1))


def test_resume_with_another_rank_or_without_adapters_is_refused_by_name(run_base, straight, tmp_path):
    run_dir = Path(shutil.copytree(straight[0], tmp_path / "run"))
    with pytest.raises(RunConfigMismatchError, match=r"(?s)another model config.*model.lora.rank: recorded 2, now 4"):
        train(with_lora(run_base, LoRAConfig(rank=4, trainable_rows=(63,))), _run_config(steps=9), _run_source(), run_dir)
    with pytest.raises(RunConfigMismatchError, match=r"(?s)another model config.*model.lora: recorded \{"):
        train(nnx.clone(run_base), _run_config(steps=9), _run_source(), run_dir)
    # and the other way round: a full run resumed with adapters
    full_dir = tmp_path / "full"
    train(nnx.clone(run_base), _run_config(steps=1), _run_source(), full_dir)
    with pytest.raises(RunConfigMismatchError, match=r"(?s)another model config.*model.lora: recorded null"):
        train(with_lora(run_base, RUN_LORA), _run_config(steps=2), _run_source(), full_dir)
    assert CheckpointStore(run_dir).all_steps()[-1] == STEPS and not (run_dir / "checkpoints_damaged").exists()


def test_param_counts_of_an_adapted_model(base):
    adapted = with_lora(base, LoRAConfig(rank=2, targets=("q_proj",)))
    summary = adapter_summary(adapted)
    assert summary["frozen"] == param_count(base.config)["total"]
    assert summary["trainable"] == 2 * (2 * 64 + 2 * 64)  # A [64, 2] and B [2, 64] in two layers
