"""Model benchmark: forward and forward+backward tokens/s and an MFU estimate per preset.

    python -m workbench.benchmarks.models --out runs/bench

Presets are chosen to fit the backend (CPU: tiny and small at short sequences; GPU/TPU:
small, base and paper_base). MFU = tokens/s x FLOPs per token / peak FLOP/s, reported only
where the device's peak is known (workbench.training.trainer.PEAK_FLOPS).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from workbench.benchmarks.timing import median_seconds
from workbench.config import save_json
from workbench.models import build_model, default_compute_dtype, flops_per_token, get_preset, param_count
from workbench.runs import write_run_info
from workbench.training.trainer import _peak_flops

DEFAULTS = {
    "cpu": dict(presets=("tiny", "small"), batch=4, seq_len=128, vocab=8000),
    "gpu": dict(presets=("small", "base", "paper_base"), batch=8, seq_len=1024, vocab=32000),
    "tpu": dict(presets=("small", "base", "paper_base"), batch=8, seq_len=1024, vocab=32000),
}


def bench_preset(preset: str, batch: int, seq_len: int, vocab: int, warmup: int, repeats: int) -> dict:
    dtype = default_compute_dtype()
    config = get_preset(preset, vocab_size=None if preset.startswith("paper") else vocab, max_len=max(seq_len, 128),
                        attention="prefix_lm", remat=preset.startswith("paper"), dtype=dtype)
    model = build_model(config, 0)
    tokens = jax.random.randint(jax.random.key(0), (batch, seq_len), 3, config.vocab_size, dtype=jnp.int32)
    prefix = jnp.full((batch,), seq_len // 2, jnp.int32)

    @nnx.jit
    def forward(m, t):
        return m(t, prefix_len=prefix)

    @nnx.jit
    def forward_backward(m, t):
        return nnx.grad(lambda m: jnp.mean(m(t, prefix_len=prefix)))(m)

    tokens_per_call = batch * seq_len
    fwd_s, _ = median_seconds(forward, (model, tokens), warmup, repeats)
    bwd_s, _ = median_seconds(forward_backward, (model, tokens), warmup, repeats)
    peak = _peak_flops()
    flops_tok = flops_per_token(config, seq_len)
    row = {"preset": preset, "params_M": param_count(config)["total"] / 1e6, "batch": batch, "seq_len": seq_len,
           "forward_tokens_per_s": tokens_per_call / fwd_s, "train_tokens_per_s": tokens_per_call / bwd_s,
           "device": jax.devices()[0].device_kind, "dtype": config.dtype}
    row["train_mfu"] = row["train_tokens_per_s"] * flops_tok / peak if peak else None
    row["forward_mfu"] = row["forward_tokens_per_s"] * flops_tok / 3 / peak if peak else None
    return row


def format_table(rows: list[dict]) -> str:
    head = f"{'preset':<11}{'params(M)':>10}{'B x T':>12}{'fwd tok/s':>13}{'fwd+bwd tok/s':>15}{'MFU':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        mfu = "n/a" if r["train_mfu"] is None else f"{100 * r['train_mfu']:.1f}%"
        lines.append(f"{r['preset']:<11}{r['params_M']:>10.1f}{r['batch']:>6} x{r['seq_len']:>5}"
                     f"{r['forward_tokens_per_s']:>13.0f}{r['train_tokens_per_s']:>15.0f}{mfu:>8}")
    return "\n".join(lines)


def run(out_dir: Path | str, presets: Optional[Sequence[str]] = None, batch: Optional[int] = None,
        seq_len: Optional[int] = None, warmup: int = 1, repeats: int = 3) -> list[dict]:
    defaults = DEFAULTS.get(jax.default_backend(), DEFAULTS["cpu"])
    rows = [bench_preset(p, batch or defaults["batch"], seq_len or defaults["seq_len"], defaults["vocab"], warmup, repeats)
            for p in (presets or defaults["presets"])]
    out_dir = Path(out_dir)
    save_json(out_dir / "models.json", {"backend": jax.default_backend(), "rows": rows})
    write_run_info(out_dir, config={"presets": [r["preset"] for r in rows]}, seed=0)
    print(f"model benchmark on {jax.devices()[0].device_kind} ({jax.default_backend()})")
    print(format_table(rows))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description="forward / forward+backward tokens/s per model preset")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    args = parser.parse_args(argv)
    return run(args.out, args.presets, args.batch, args.seq_len)


if __name__ == "__main__":
    main()
