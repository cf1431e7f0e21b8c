"""The pretrained-model benchmark on a tiny exported model: every case present and finite,
the bandwidth floor computed from the bytes actually read."""

import json
import math
from pathlib import Path

import pytest

from workbench.benchmarks import pretrained as bench
from workbench.data.hf_tokenizer import HFTokenizer
from workbench.models import build_model, get_preset, param_count
from workbench.pretrained import save_pretrained

GOLDEN = Path(__file__).parent / "golden"


def test_floor_counts_weights_and_both_caches():
    config = get_preset("tiny", vocab_size=100, num_kv_heads=2, dtype="float32")
    seconds, read = bench.ar_floor_seconds_per_token(config, cache_len=10, bandwidth=1e9)
    weights = param_count(config)["total"] * 4
    cache = 2 * config.num_layers * 10 * 2 * config.head_dim * 4
    assert read == weights + cache and math.isclose(seconds, read / 1e9)


@pytest.mark.slow
def test_benchmark_runs_every_case_on_a_tiny_model(tmp_path, capsys):
    tokenizer = HFTokenizer.from_gguf(GOLDEN / "tokenizer_tiny_llama-bpe.gguf")
    config = get_preset("tiny", vocab_size=tokenizer.vocab_size, num_kv_heads=2, scale_logits=False, dtype="float32")
    folder = save_pretrained(build_model(config, 0), tmp_path / "m", tokenizer=tokenizer)
    result = bench.run(bench.PretrainedBenchConfig(source=str(folder), prompt_len=4, new_tokens=4, diffusion_steps=2,
                                                   train_batch=2, train_seq_len=16, repeats=1), tmp_path / "out")
    cases = [r["case"] for r in result["rows"]]
    assert cases[:2] == ["AR KV cache, batch 1", "AR KV cache, batch 8"]
    assert sum("diffusion 2 steps" in c for c in cases) == 4  # x1 and x8 samples, prompt cache on and off
    assert cases[-1].startswith("AR2Diff adaptation step")
    assert all(r["seconds"] > 0 and math.isfinite(r["tokens_per_s"]) for r in result["rows"])
    assert 0 < result["rows"][0]["fraction_of_floor"] and result["host_peak_rss_bytes"] > 0
    assert json.loads((tmp_path / "out" / "pretrained.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert "of floor" in capsys.readouterr().out
