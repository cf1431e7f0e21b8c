"""`workbench.pretrained_study`: an imported model made ready for AR2Diff keeps its parameters
(bar the mask token's new row), and `study.adapt` takes it like an AR run directory."""

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from workbench import pretrained_study, study
from workbench.data.hf_tokenizer import HFTokenizer
from workbench.models import build_model, get_preset
from workbench.pretrained import load_pretrained, save_pretrained
from workbench.training import TrainConfig

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tokenizer = HFTokenizer.from_gguf(GOLDEN / "tokenizer_tiny_llama-bpe.gguf")
    config = get_preset("tiny", vocab_size=tokenizer.vocab_size, num_kv_heads=2, scale_logits=False, dtype="float32")
    folder = save_pretrained(build_model(config, 2), tmp_path_factory.mktemp("m") / "m", tokenizer=tokenizer)
    return load_pretrained(folder, max_len=64)


def _params(model):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


def test_prepare_keeps_parameters_and_adds_one_mask_row(imported):
    ready = pretrained_study.prepare_for_diffusion(imported, process="absorbing", attention="bidirectional",
                                                   shift_targets=True)
    assert (ready.config.attention, ready.config.shift_targets, ready.config.vocab_size) == ("bidirectional", True, 401)
    assert ready.tokenizer.mask_id == 400 and imported.tokenizer.specials.mask is None
    before, after = _params(imported.model), _params(ready.model)
    assert before.keys() == after.keys()
    for name, value in before.items():
        kept = after[name][:400] if after[name].shape != value.shape else after[name]
        assert kept.tobytes() == value.tobytes(), name
    uniform = pretrained_study.prepare_for_diffusion(imported, process="uniform", shift_targets=False)
    assert uniform.tokenizer.specials.mask is None and uniform.config.vocab_size == 400


def test_adapt_takes_a_model_in_memory(imported, tmp_path):
    ready = pretrained_study.prepare_for_diffusion(imported)
    source = study.lm_source(ready.tokenizer, "python_code", "train", seq_len=16, batch_size=2, objective="prefix_lm",
                             seed=0, max_tokens=2000)
    loss = study.diffusion_loss_config(ready.tokenizer, "absorbing", model_vocab_size=ready.config.vocab_size)
    config = TrainConfig(steps=1, loss=loss, progress=False, tensorboard=False)
    result = study.adapt(ready.model, tmp_path / "a", source, config, steps=1, attention="prefix_diffusion")
    assert result.model.config.attention == "prefix_diffusion" and result.model.config.shift_targets
    with pytest.raises(ValueError, match="AR2Diff switches to one of"):
        study.adapt(ready.model, tmp_path / "b", source, config, steps=1, attention="causal")


def test_an_imported_model_becomes_a_block_diffusion_model_with_its_next_token_head(imported, tmp_path):
    """prepare_for_diffusion(attention='block_causal') keeps shift_targets; one adaptation step
    trains it; its block decoding of a chat prompt equals full recomputation."""
    from workbench.objectives.batch import seq2seq_batch
    from workbench.sampling.block import BlockSamplingConfig, block_sample

    ready = pretrained_study.prepare_for_diffusion(imported, attention="block_causal", block_size=4)
    assert (ready.config.attention, ready.config.block_size, ready.config.shift_targets) == ("block_causal", 4, True)
    source = study.lm_source(ready.tokenizer, "python_code", "train", seq_len=16, batch_size=2, objective="prefix_lm",
                             seed=0, max_tokens=2000)
    loss = study.diffusion_loss_config(ready.tokenizer, "absorbing", model_vocab_size=ready.config.vocab_size)
    result = study.adapt(ready.model, tmp_path / "b", source, TrainConfig(steps=1, loss=loss, progress=False,
                                                                          tensorboard=False), steps=1,
                         attention="block_causal")
    assert result.model.config.block_size == 4 and result.model.config.shift_targets
    ids = pretrained_study.prompt_ids(ready.tokenizer, ["hi"])
    batch = seq2seq_batch(ids, [[]], input_len=len(ids[0]), target_len=8, pad_id=ready.tokenizer.specials.pad)
    sampling = BlockSamplingConfig.for_tokenizer(ready.tokenizer, model_vocab_size=ready.config.vocab_size, num_steps=2,
                                                 eos_id=None)
    cached = block_sample(result.model, batch, sampling, jax.random.key(0))
    full = block_sample(result.model, batch, BlockSamplingConfig(**{**sampling.__dict__, "cache": False}),
                        jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(full.tokens))


def test_prepare_needs_a_tokenizer(imported):
    import dataclasses

    with pytest.raises(ValueError, match="loaded without a tokenizer"):
        pretrained_study.prepare_for_diffusion(dataclasses.replace(imported, tokenizer=None))


def test_describe_names_the_model_its_shape_and_special_ids(imported):
    name, specials = pretrained_study.describe(imported).split("\n")
    assert f"{imported.config.num_layers} layers, d_model {imported.config.d_model}, vocabulary 400" in name
    assert specials == f"special ids: {imported.tokenizer.specials.describe()}"
