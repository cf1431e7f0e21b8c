"""Regenerate the golden files of tests/test_pretrained*.py from Hugging Face transformers,
an implementation this project did not write.

Run with a Python that has torch, transformers (>= 5), accelerate, gguf and tokenizers (not the
workbench's venv, which has no torch), e.g.:

    /work/refenv/bin/python tests/golden/make_pretrained_golden.py [--gguf PATH]

Writes, next to this script:
- pretrained_smollm2.json: for three prompts (English, Python, a chat-templated request) run
  through the embedded SmolLM2-135M-Instruct GGUF, dequantised by transformers to float32:
  token ids, the top-k ids and logits at every position, and the greedy continuation.
- pretrained_tiny_{qwen2,qwen3,llama}/: tiny random models saved by transformers as Hugging
  Face folders, and pretrained_tiny_*.npz: their float32 logits on fixed token ids.
  qwen2: q/k/v biases, tied; qwen3: QK-norm, head_dim != hidden/heads, tied; llama: untied,
  Llama 3.1 rope scaling, bfloat16 weights in three safetensors shards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
TOP_K = 10
NEW_TOKENS = 24
PROMPTS = {
    "english": "The printing press was invented in the fifteenth century by Johannes Gutenberg, who",
    "python": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "chat": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
}


def find_gguf() -> Path:
    """The embedded default's file, located by the workbench itself (in the checkout's .venv)."""
    python = HERE.parents[1] / ".venv" / "bin" / "python"
    code = "from workbench.pretrained.hub import embedded_path, DEFAULT_MODEL; print(embedded_path(DEFAULT_MODEL))"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=HERE.parents[1])
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"could not locate the SmolLM2 GGUF with {python} ({e}); pass --gguf PATH") from e
    return Path(out.stdout.strip())


def smollm2(gguf: Path) -> None:
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    prompts = []
    for name, prompt in PROMPTS.items():
        if isinstance(prompt, list):
            text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        else:
            text = prompt
        ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
            top = torch.topk(logits, TOP_K, dim=-1)
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                return_dict_in_generate=True, output_logits=True, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.eos_token_id,
            )
        greedy = out.sequences[0, len(ids):].tolist()
        step_top2 = [torch.topk(step[0].float(), 2).values for step in out.logits]
        prompts.append({
            "name": name,
            "text": text,
            "ids": ids,
            "topk_ids": top.indices.tolist(),
            "topk_logits": [[float(x) for x in row] for row in top.values],
            "greedy": greedy,
            "greedy_margins": [float(v[0] - v[1]) for v in step_top2],
            "greedy_text": tok.decode(greedy),
        })
        print(f"{name}: {len(ids)} tokens -> {tok.decode(greedy)!r}; "
              f"smallest greedy margin {min(prompts[-1]['greedy_margins']):.4f}")
    golden = {
        "model": gguf.name,
        "reference": {"transformers": transformers.__version__, "torch": torch.__version__},
        "eos_id": tok.eos_token_id,
        "top_k": TOP_K,
        "prompts": prompts,
    }
    (HERE / "pretrained_smollm2.json").write_text(json.dumps(golden) + "\n")


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (transformers initialises norms to 1 and biases to 0, which
    would leave QK-norm and biases untested)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def tiny(name: str, config, *, dtype=torch.float32, max_shard_size=None, seed=0) -> None:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomise(model, seed)
    folder = HERE / f"pretrained_tiny_{name}"
    shutil.rmtree(folder, ignore_errors=True)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.to(dtype).save_pretrained(folder, **kwargs)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, config.vocab_size, (2, 20), generator=gen)
    with torch.no_grad():
        logits = reloaded(ids).logits.float()
    np.savez(HERE / f"pretrained_tiny_{name}.npz", ids=ids.numpy().astype(np.int32), logits=logits.numpy())
    print(f"tiny {name}: {sorted(p.name for p in folder.iterdir())}")


def tiny_models() -> None:
    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)
    tiny("qwen2", transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=10000.0), seed=1)
    tiny("qwen3", transformers.Qwen3Config(**common, head_dim=16, tie_word_embeddings=True, rope_theta=10000.0), seed=2)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    tiny("llama", transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope),
         dtype=torch.bfloat16, max_shard_size="10KB", seed=3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None, help="the SmolLM2-135M-Instruct GGUF file")
    parser.add_argument("--only", choices=["smollm2", "tiny"], default=None)
    args = parser.parse_args()
    if args.only != "tiny":
        smollm2(args.gguf or find_gguf())
    if args.only != "smollm2":
        tiny_models()
