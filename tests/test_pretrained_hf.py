"""Hugging Face folders (tiny random Qwen2 / Qwen3 / untied sharded bf16 Llama saved by
transformers, see tests/golden/make_pretrained_golden.py), export -> import round trips,
tiny GGUF files, attention kinds and vocabulary growth."""

import dataclasses
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from workbench.models import build_model, count_params, get_preset, param_count
from workbench.models.config import RopeScaling
from workbench.pretrained import append_embedding_rows, load_pretrained, save_pretrained
from workbench.pretrained.convert import tensors_from_model
from workbench.pretrained.errors import UnsupportedConfigError
from workbench.pretrained.families import FAMILIES, family_for, tensor_specs
from workbench.pretrained.hf_config import hf_config_from_model, model_config_from_hf
from workbench.pretrained.gguf_reader import unpermute_rows
from workbench.models.layers import rotary

GOLDEN = Path(__file__).parent / "golden"
TINY = ["qwen2", "qwen3", "llama"]
KINDS = ["causal", "prefix_lm", "bidirectional", "prefix_diffusion"]


def _params(model):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("name", TINY)
def test_tiny_hf_folders_match_transformers_logits(name):
    golden = np.load(GOLDEN / f"pretrained_tiny_{name}.npz")
    loaded = load_pretrained(GOLDEN / f"pretrained_tiny_{name}", dtype="float32")
    logits = np.asarray(loaded.model(jnp.asarray(golden["ids"])))
    np.testing.assert_allclose(logits, golden["logits"], atol=1e-4, rtol=0)
    assert np.abs(golden["logits"]).max() > 1.0  # not a near-zero model that any loader would match
    config = loaded.config
    expected = {
        "qwen2": dict(qkv_bias=True, qk_norm=False, tie_embeddings=True, head_dim_override=None, rope_scaling=None),
        "qwen3": dict(qkv_bias=False, qk_norm=True, tie_embeddings=True, head_dim_override=16, rope_scaling=None),
        "llama": dict(qkv_bias=False, qk_norm=False, tie_embeddings=False, head_dim_override=None,
                      rope_scaling=RopeScaling(4.0, 1.0, 4.0, 16)),
    }[name]
    assert {k: getattr(config, k) for k in expected} == expected


@pytest.mark.parametrize("name", TINY)
def test_each_architecture_feature_changes_the_logits(name):
    """Switching off the feature a tiny model exists to test makes it miss the reference,
    so the match above is evidence that the feature is implemented, not skipped."""
    golden = np.load(GOLDEN / f"pretrained_tiny_{name}.npz")
    loaded = load_pretrained(GOLDEN / f"pretrained_tiny_{name}", dtype="float32")
    model = nnx.clone(loaded.model)
    if name == "qwen2":
        for block in model.blocks:
            block.attn.k.bias.set_value(jnp.zeros_like(block.attn.k.bias[...]))
            block.attn.q.bias.set_value(jnp.zeros_like(block.attn.q.bias[...]))
    elif name == "qwen3":
        for block in model.blocks:
            block.attn.q_norm.scale.set_value(jnp.ones_like(block.attn.q_norm.scale[...]))
    else:
        graphdef, state = nnx.split(model)
        config = loaded.config.replace(rope_scaling=None)
        model = nnx.eval_shape(lambda: build_model(config, 0))
        nnx.update(model, state)
    logits = np.asarray(model(jnp.asarray(golden["ids"])))
    assert np.abs(logits - golden["logits"]).max() > 1e-2


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("attention", ["causal", "prefix_diffusion"])
def test_export_then_import_is_bitwise(name, attention, tmp_path):
    loaded = load_pretrained(GOLDEN / f"pretrained_tiny_{name}", dtype="float32", attention=attention)
    folder = save_pretrained(loaded, tmp_path / "export")
    again = load_pretrained(folder, tokenizer=False)  # the hook wrote a placeholder tokenizer.json
    assert again.config == loaded.config  # attention kind and dtype come back from the workbench record
    ours, theirs = _params(loaded.model), _params(again.model)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype == np.float32
        assert ours[key].tobytes() == theirs[key].tobytes(), key
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_overwriting_a_sharded_folder_leaves_no_stale_shards(tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(GOLDEN / "pretrained_tiny_llama", folder)  # sharded, with an index
    qwen = load_pretrained(GOLDEN / "pretrained_tiny_qwen2", dtype="float32")
    save_pretrained(qwen, folder, overwrite=True)
    assert not list(folder.glob("model-*.safetensors")) and not (folder / "model.safetensors.index.json").exists()
    assert load_pretrained(folder).config == qwen.config


def test_export_keeps_chat_template_and_calls_the_tokenizer_hook(tmp_path):
    loaded = load_pretrained(GOLDEN / "pretrained_tiny_qwen2", dtype="float32")
    source = dataclasses.replace(loaded.source, chat_template="{{ messages }}", token_ids={"eos": 5, "bos": 4})

    class Files:
        def save(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{}")

    folder = save_pretrained(dataclasses.replace(loaded, source=source, tokenizer=Files()), tmp_path / "out")
    again = load_pretrained(folder, tokenizer=False)  # the hook wrote a placeholder tokenizer.json
    assert again.source.license is None
    (folder / "README.md").write_text("---\nlibrary_name: transformers\nlicense: apache-2.0\n---\n# card\n")
    again = load_pretrained(folder, tokenizer=False)  # the hook wrote a placeholder tokenizer.json
    assert again.source.license == "apache-2.0"
    assert again.source.chat_template == "{{ messages }}"
    assert again.source.token_ids == {"bos": 4, "eos": 5}
    assert again.source.tokenizer_file == str(folder / "tokenizer.json")


@pytest.mark.parametrize("attention", KINDS)
def test_imported_parameters_run_every_attention_kind(attention):
    causal = load_pretrained(GOLDEN / "pretrained_tiny_qwen3", dtype="float32")
    other = load_pretrained(GOLDEN / "pretrained_tiny_qwen3", dtype="float32", attention=attention)
    assert other.config == causal.config.replace(attention=attention)
    assert all(_params(causal.model)[k].tobytes() == v.tobytes() for k, v in _params(other.model).items())
    ids = jnp.asarray(np.load(GOLDEN / "pretrained_tiny_qwen3.npz")["ids"])
    prefix = jnp.asarray([8, 8], jnp.int32)
    a, b = np.asarray(causal.model(ids)), np.asarray(other.model(ids, prefix_len=prefix))
    # position 0 sees later tokens under every kind but causal (prefix kinds: the rest of the prefix)
    assert np.allclose(a[:, :1], b[:, :1], atol=1e-5) == (attention == "causal")


def test_param_count_counts_biases_qk_norm_and_head_dim():
    for changes in (dict(qkv_bias=True), dict(qk_norm=True, head_dim_override=24), dict(tie_embeddings=False)):
        config = get_preset("tiny", vocab_size=300, **changes)
        assert count_params(nnx.eval_shape(lambda: build_model(config, 0))) == param_count(config)["total"]
        ed = config.replace(arch="encoder_decoder")
        assert count_params(nnx.eval_shape(lambda: build_model(ed, 0))) == param_count(ed)["total"]


@pytest.mark.parametrize("tied", [True, False])
def test_append_embedding_rows_adds_mean_rows_and_keeps_the_rest(tied):
    config = get_preset("tiny", vocab_size=40, tie_embeddings=tied)
    model = build_model(config, 3)
    grown = append_embedding_rows(model, 2)
    assert grown.config == config.replace(vocab_size=42)
    for table in ("embedding", "lm_head"):
        old = getattr(model.embedder, table)
        if old is None:
            assert grown.embedder.lm_head is None
            continue
        old, new = np.asarray(old[...], np.float64), np.asarray(getattr(grown.embedder, table)[...])
        assert new.shape == (42, config.d_model)
        assert new[:40].tobytes() == np.asarray(getattr(model.embedder, table)[...]).tobytes()
        np.testing.assert_allclose(new[40:], np.repeat(old.mean(0, keepdims=True), 2, 0), atol=1e-6)
    rest = {k: v for k, v in _params(model).items() if "embedder" not in k}
    assert all(_params(grown)[k].tobytes() == v.tobytes() for k, v in rest.items())
    ids = jnp.asarray([[1, 5, 39, 7]])
    np.testing.assert_allclose(np.asarray(grown(ids))[..., :40], np.asarray(model(ids)), atol=1e-5)
    with pytest.raises(ValueError, match="num_rows=0"):
        append_embedding_rows(model, 0)


# -- GGUF written here from a workbench model, with llama.cpp's own Q/K permutation ---------

def llama_cpp_permute(weights, n_head, n_head_kv=None):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (copied, not the workbench's)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
              "post_attention_layernorm.weight": "ffn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
              "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
              "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
              "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def write_gguf(path, model, *, arch="llama", tensor_dtype=np.float32):
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_layers)
    writer.add_context_length(cfg.max_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_vocab_size(cfg.vocab_size)
    for name, data in tensors_from_model(model).items():
        if name.startswith("model.layers."):
            layer, rest = name[len("model.layers."):].split(".", 1)
            gguf_name = f"blk.{layer}.{GGUF_NAMES[rest]}"
        else:
            gguf_name = GGUF_NAMES[name]
        if name.endswith("q_proj.weight"):
            data = llama_cpp_permute(data, cfg.num_heads, cfg.num_heads)
        elif name.endswith("k_proj.weight"):
            data = llama_cpp_permute(data, cfg.num_heads, cfg.kv_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(data.astype(tensor_dtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_llama(tied=True):
    config = get_preset("tiny", vocab_size=96, num_kv_heads=2, tie_embeddings=tied, scale_logits=False,
                        rope_theta=1000.0, norm_eps=1e-5, dtype="float32")
    return build_model(config, 7)


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_round_trip_through_llama_cpp_layout(tied, tmp_path):
    model = tiny_llama(tied)
    loaded = load_pretrained(write_gguf(tmp_path / "tiny.gguf", model), dtype="float32")
    assert loaded.config == model.config.replace(max_len=model.config.max_len)
    assert all(_params(model)[k].tobytes() == v.tobytes() for k, v in _params(loaded.model).items())
    assert loaded.source.kind == "gguf" and loaded.source.tokenizer_file == str(tmp_path / "tiny.gguf")


def test_gguf_without_unpermute_is_wrong(tmp_path, monkeypatch):
    """The un-permute is what makes the GGUF path right (with it removed the model differs)."""
    model = tiny_llama()
    path = write_gguf(tmp_path / "tiny.gguf", model)
    monkeypatch.setattr("workbench.pretrained.gguf_reader.unpermute_rows", lambda w, heads: w)
    wrong = load_pretrained(path, dtype="float32").model
    ids = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert np.abs(np.asarray(wrong(ids)) - np.asarray(model(ids))).max() > 1e-3


def test_unpermute_turns_interleaved_rotary_into_half_split_rotary():
    """GGML's rotary rotates adjacent pairs (x[2i], x[2i+1]) of llama.cpp-permuted rows; the
    workbench rotates halves (x[i], x[i+D/2]) of un-permuted rows: same queries."""
    rng = np.random.default_rng(0)
    heads, head_dim, d, theta = 3, 8, 12, 500.0
    w = rng.standard_normal((heads * head_dim, d)).astype(np.float32)
    x = rng.standard_normal((1, 5, d)).astype(np.float32)
    positions = jnp.arange(5)[None]
    permuted = llama_cpp_permute(w, heads)
    q_ggml = (x @ permuted.T).reshape(1, 5, heads, head_dim)
    freqs = theta ** (-np.arange(0, head_dim // 2) * 2.0 / head_dim)
    angles = np.arange(5)[:, None, None] * freqs  # [T,1,D/2]
    even, odd = q_ggml[..., 0::2], q_ggml[..., 1::2]
    rotated = np.stack([even * np.cos(angles) - odd * np.sin(angles), even * np.sin(angles) + odd * np.cos(angles)], -1)
    ggml = rotated.reshape(1, 5, heads, head_dim)
    # the same per-head vectors, reordered to the half-split layout
    ggml_half = np.concatenate([ggml[..., 0::2], ggml[..., 1::2]], -1)
    q_wb = (x @ unpermute_rows(permuted, heads).T).reshape(1, 5, heads, head_dim)
    ours = np.asarray(rotary(jnp.asarray(q_wb), positions, theta))
    np.testing.assert_allclose(ours, ggml_half, atol=1e-5)
    assert np.abs(ours - ggml).max() > 1e-2  # the layouts differ, only dot products agree
    scores_ggml = np.einsum("bthd,bshd->bhts", ggml, ggml)
    np.testing.assert_allclose(np.einsum("bthd,bshd->bhts", ours, ours), scores_ggml, atol=1e-4)


def test_export_round_trip_of_a_workbench_built_model(tmp_path):
    """A model built here (num_kv_heads=None, bfloat16 compute) comes back with the same config."""
    config = get_preset("tiny", vocab_size=70, scale_logits=False, attention="bidirectional", dtype="bfloat16")
    model = build_model(config, 5)
    again = load_pretrained(save_pretrained(model, tmp_path / "m"))
    assert again.config == config
    assert all(_params(model)[k].tobytes() == v.tobytes() for k, v in _params(again.model).items())
    assert load_pretrained(tmp_path / "m", dtype="float32", attention="causal").config == config.replace(
        dtype="float32", attention="causal"
    )


# config.json of public checkpoints (as on the hub; unused keys trimmed) and their parameter counts
REAL_CONFIGS = {
    "Llama-3.2-1B": (dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64, hidden_act="silu",
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        attention_bias=False, mlp_bias=False, vocab_size=128256, bos_token_id=128000, eos_token_id=128001,
    ), 1_235_814_400),
    "Qwen2.5-0.5B-Instruct": (dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_act="silu",
        max_position_embeddings=32768, max_window_layers=21, rms_norm_eps=1e-6, rope_theta=1000000.0,
        sliding_window=32768, use_sliding_window=False, tie_word_embeddings=True, vocab_size=151936,
    ), 494_032_768),
    "Qwen3-0.6B": (dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None,
        attention_bias=False, use_sliding_window=False, tie_word_embeddings=True, vocab_size=151936,
    ), 596_049_920),
    "TinyLlama-1.1B-Chat-v1.0": (dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, intermediate_size=5632,
        num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
        tie_word_embeddings=False, vocab_size=32000,
    ), 1_100_048_384),
}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_public_configs_give_their_published_parameter_counts(name):
    hf, total = REAL_CONFIGS[name]
    config = model_config_from_hf(hf)
    assert param_count(config)["total"] == total
    assert count_params(nnx.eval_shape(lambda: build_model(config, 0))) == total
    assert model_config_from_hf(hf_config_from_model(config)) == config  # the export's keys say the same


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_each_family_round_trips_its_config_and_names_every_parameter(model_type):
    """What a new family in workbench.pretrained.families must do: claim its own configs, write
    a config.json that reads back the same, and name every parameter of the model once."""
    family = FAMILIES[model_type]
    config = get_preset("tiny", vocab_size=50, num_kv_heads=2, scale_logits=False, dtype="float32",
                        tie_embeddings=False, qkv_bias=family.qkv_bias, qk_norm=family.qk_norm)
    assert family_for(config) is family
    hf = hf_config_from_model(config)
    assert (hf["model_type"], hf["architectures"]) == (model_type, [family.hf_class])
    assert model_config_from_hf(hf) == config
    model = nnx.eval_shape(lambda: build_model(config, 0))
    params = [tuple(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    specs = [spec.path for spec in tensor_specs(config)]
    assert sorted(map(str, specs)) == sorted(map(str, params))


def test_a_config_no_family_has_is_refused_with_each_familys_flags():
    config = get_preset("tiny", vocab_size=50, scale_logits=False, qkv_bias=True, qk_norm=True)
    with pytest.raises(UnsupportedConfigError, match=r"qkv_bias=True with qk_norm=True matches no Hugging Face "
                                                     r"family \(llama: qkv_bias=False, qk_norm=False, qwen2"):
        hf_config_from_model(config)


@given(heads=st.integers(1, 6), half=st.integers(1, 8), kv_divisor=st.sampled_from([1, 2, 3]), cols=st.integers(1, 5))
def test_unpermute_inverts_llama_cpp_permute_for_queries_and_grouped_keys(heads, half, kv_divisor, cols):
    from workbench.pretrained.gguf_reader import permute_rows

    kv_heads = max(1, heads // kv_divisor)
    for n_rows_heads, permuted_with in ((heads, (heads, heads)), (kv_heads, (heads, kv_heads))):
        w = np.arange(n_rows_heads * 2 * half * cols, dtype=np.float32).reshape(n_rows_heads * 2 * half, cols)
        permuted = llama_cpp_permute(w, *permuted_with)
        assert unpermute_rows(permuted, n_rows_heads).tobytes() == w.tobytes()
        assert permute_rows(w, n_rows_heads).tobytes() == permuted.tobytes()
