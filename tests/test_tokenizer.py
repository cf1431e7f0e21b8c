"""The SentencePiece tokenizer: exact round trips (English, French, Python), special ids, save/load, determinism."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st

from workbench.data import (
    ChatTemplateError,
    DataError,
    SpecialIds,
    TextTokenizer,
    Tokenizer,
    TokenizerConfig,
    check_vocab_matches,
    load_tokenizer,
    train_tokenizer,
)


def _data_dir() -> Path | None:
    path = Path(os.environ.get("WORKBENCH_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
    return path if (path / "MANIFEST.md").is_file() else None


DATA_DIR = _data_dir()
# Small enough to train in seconds, large enough for whitespace, digits and French pieces.
SMALL = TokenizerConfig(vocab_size=600, english_chars=40_000, code_chars=40_000, french_chars=20_000, num_sentinels=8)

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "  Two leading spaces, trailing spaces   \nand a second line.",
    "Numbers: 3.14159, 1,000,000 and 2024-01-31!",
    "",
]
FRENCH = [
    "« Bonjour », dit-il à l’été, « ça va ? »",
    "Où est la bibliothèque ? Dès qu'il a vu l'œuvre, il s'est écrié : Noël !",
    "Ÿ, Œ, Ç, É, È, Ê, À, Â, Î, Ô, Û — et les guillemets “anglais” aussi…",
]
PYTHON = [
    "def f(x):\n    if x:\n        return x  # trailing\n\n\n    return None\n",
    "class A:\n\tdef m(self):\n\t\treturn '\\t'\n\n\t\n",
    "    indented_start = 1\n        \n\n",
    "def ünïcode(π=3.14):\n    \"\"\"Δ docstring 😀\"\"\"\n    return π * 2\r\n",
    "x = [1,\n     2,\n     3]\n\n\n\n# end without newline",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Tokenizer, Path]:
    out = tmp_path_factory.mktemp("tokenizer")
    return train_tokenizer(TokenizerConfig.preset("tiny"), out, DATA_DIR), out


@pytest.mark.parametrize("text", ENGLISH + FRENCH + PYTHON)
def test_round_trip_is_exact(trained, text):
    tokenizer, _ = trained
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_id not in ids


@given(st.text(max_size=200))
def test_round_trip_any_text(trained, text):
    tokenizer, _ = trained
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_ids(trained):
    tokenizer, _ = trained
    assert tokenizer.vocab_size == 1000
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.mask_id) == (0, 1, 2, 3)
    assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<unk>", "<mask>"]
    assert tokenizer.sentinel_ids == tuple(range(4, 36))
    assert [tokenizer.id_to_piece(i) for i in tokenizer.sentinel_ids] == [f"<extra_id_{k}>" for k in range(32)]
    assert tokenizer.sentinel_id(31) == 35 and tokenizer.piece_to_id("<extra_id_5>") == 9
    with pytest.raises(IndexError, match="sentinel 32 out of range"):
        tokenizer.sentinel_id(32)
    assert tokenizer.special_ids == (0, 1, 2, 3, *range(4, 36))
    assert len(tokenizer.byte_ids) == 256 and not set(tokenizer.byte_ids) & set(tokenizer.special_ids)
    # Ordinary text never produces a special id.
    ids = {i for text in ENGLISH + FRENCH + PYTHON for i in tokenizer.encode(text)}
    assert not ids & set(tokenizer.special_ids)


def test_implements_the_tokenizer_interface(trained):
    tokenizer, out = trained
    assert isinstance(tokenizer, TextTokenizer)
    assert tokenizer.specials == SpecialIds(pad=0, eos=1, unk=2, mask=3, sentinels=tuple(range(4, 36)))
    assert tokenizer.specials.bos is None and tokenizer.specials.reserved == tokenizer.special_ids
    loaded = load_tokenizer(out)
    assert isinstance(loaded, Tokenizer) and loaded.sha256 == tokenizer.sha256
    check_vocab_matches(tokenizer, 1000)
    with pytest.raises(ValueError, match="tokenizer has 1000 ids but the model's vocab_size is 8000"):
        check_vocab_matches(tokenizer, 8000)
    assert tokenizer.encode_batch([]) == []
    assert tokenizer.chat_template is None
    with pytest.raises(KeyError, match="piece 'no-such-piece' is not in the vocabulary"):
        tokenizer.piece_to_id("no-such-piece")
    with pytest.raises(ValueError, match="token id 1000 is outside the vocabulary"):
        tokenizer.id_to_piece(1000)
    with pytest.raises(TypeError, match="vocab_size='1000' must be an int"):
        check_vocab_matches(tokenizer, "1000")
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        tokenizer.render_chat([{"role": "user", "content": "hi"}])


def test_digits_and_french_characters_are_single_pieces(trained):
    tokenizer, _ = trained
    assert [tokenizer.id_to_piece(i) for i in tokenizer.encode("2024")] == ["2", "0", "2", "4"]
    for char in "«»’œé":
        assert tokenizer.encode(char) == [tokenizer.piece_to_id(char)], char


def test_whitespace_runs_are_pieces(trained):
    tokenizer, _ = trained
    # Indentation costs one token per level of four spaces, not one per space.
    ids = tokenizer.encode("        return x\n")
    assert tokenizer.id_to_piece(ids[0]).count("▁") >= 4


def test_decode_stops_at_eos_and_pad(trained):
    tokenizer, _ = trained
    ids = tokenizer.encode("hello world")
    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    assert tokenizer.encode("hello world", add_eos=True) == ids + [eos]
    assert tokenizer.decode(ids + [eos] + ids) == "hello world"
    assert tokenizer.decode(ids + [pad, pad] + ids) == "hello world"
    assert tokenizer.decode(ids + [pad] + ids, stop_at_pad=False) == "hello worldhello world"
    assert tokenizer.decode(ids + [eos] + ids, stop_at_eos=False) == "hello worldhello world"
    assert tokenizer.decode(np.array(ids + [pad] * 5, dtype=np.int32)) == "hello world"
    sentinel = tokenizer.sentinel_id(0)
    assert tokenizer.decode([sentinel] + ids) == "<extra_id_0>hello world"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])


def test_batch_variants(trained):
    tokenizer, _ = trained
    texts = ENGLISH + FRENCH + PYTHON
    batch = tokenizer.encode_batch(texts, add_eos=True)
    assert batch == [tokenizer.encode(text, add_eos=True) for text in texts]
    assert tokenizer.decode_batch(batch) == texts
    with pytest.raises(TypeError, match="item 1 is int"):
        tokenizer.encode_batch(["ok", 3])
    with pytest.raises(TypeError, match="encode expects a str"):
        tokenizer.encode(["a list"])


def test_save_and_load(trained, tmp_path):
    tokenizer, out = trained
    texts = ENGLISH + FRENCH + PYTHON
    for path in (out, out / "tokenizer.model"):
        loaded = Tokenizer.load(path)
        assert loaded.encode_batch(texts) == tokenizer.encode_batch(texts)
        assert loaded.sha256 == tokenizer.sha256 and loaded.special_ids == tokenizer.special_ids
    copy = Tokenizer.load(tokenizer.save(tmp_path / "copy"))
    assert copy.info["model_sha256"] == tokenizer.sha256
    assert copy.info["config"]["vocab_size"] == 1000
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty/tokenizer.model not found"):
        Tokenizer.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.model not found"):
        Tokenizer.load(tmp_path / "missing.model")


def test_training_record(trained):
    tokenizer, _ = trained
    info = tokenizer.info
    config = TokenizerConfig.preset("tiny")
    assert info["sentencepiece"] == spm.__version__
    code = info["sources"]["code"]
    assert code["dataset"] == "python_code/train" and config.code_chars <= code["chars"] < config.code_chars + config.max_sentence_chars
    assert any(key.startswith("stdlib/") for key in info["data_files"])
    if DATA_DIR is None:
        assert info["missing_sources"] == ["english", "french"]
    else:
        assert info["missing_sources"] == []
        assert set(info["sources"]) == {"english", "code", "french"}
        assert "wmt14_enfr/news-test2008.fr" in info["data_files"]


def test_training_is_deterministic_and_seeded(tmp_path):
    first = train_tokenizer(SMALL, tmp_path / "a", DATA_DIR)
    second = train_tokenizer(SMALL, tmp_path / "b", DATA_DIR)
    assert first.sha256 == second.sha256
    other_seed = train_tokenizer(dataclasses.replace(SMALL, seed=1), tmp_path / "c", DATA_DIR)
    assert other_seed.sha256 != first.sha256
    assert first.sentinel_ids == tuple(range(4, 12))


def test_bpe_round_trips(tmp_path):
    tokenizer = train_tokenizer(dataclasses.replace(SMALL, model_type="bpe"), tmp_path, DATA_DIR)
    for text in ENGLISH + FRENCH + PYTHON:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_without_a_data_dir_trains_on_code_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WORKBENCH_DATA_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="workbench.data"):
        tokenizer = train_tokenizer(SMALL, tmp_path)
    assert tokenizer.info["missing_sources"] == ["english", "french"]
    assert set(tokenizer.info["sources"]) == {"code"}
    assert "only Python code" in caplog.text
    assert tokenizer.decode(tokenizer.encode(FRENCH[0])) == FRENCH[0]
    with pytest.raises(DataError, match="no training text"):
        train_tokenizer(dataclasses.replace(SMALL, code_chars=0), tmp_path / "none")


def test_config_validation():
    with pytest.raises(ValueError, match="model_type='wordpiece'"):
        TokenizerConfig(model_type="wordpiece")
    with pytest.raises(ValueError, match="vocab_size=300 leaves too few"):
        TokenizerConfig(vocab_size=300)
    with pytest.raises(ValueError, match="all 0"):
        TokenizerConfig(english_chars=0, code_chars=0, french_chars=0)
    with pytest.raises(ValueError, match="unknown tokenizer preset 'huge'"):
        TokenizerConfig.preset("huge")


def test_too_large_vocab_gives_a_clear_error(tmp_path):
    config = dataclasses.replace(SMALL, vocab_size=20_000, english_chars=2_000, code_chars=2_000, french_chars=2_000)
    with pytest.raises(DataError, match="vocab_size=20000.*lower vocab_size"):
        train_tokenizer(config, tmp_path, DATA_DIR)


def test_foreign_model_is_rejected():
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a b c d e f g"] * 50), model_writer=model, vocab_size=12, minloglevel=2
    )
    with pytest.raises(DataError, match="expected .*<pad>"):
        Tokenizer(model.getvalue())
