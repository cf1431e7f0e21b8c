"""The kernel benchmark runs on CPU (interpret mode) and counts only unmasked FLOPs."""

from __future__ import annotations

import json

import pytest

from workbench.benchmarks.kernels import BACKWARD_FACTOR, BenchConfig, format_table, run


def test_benchmark_writes_rows_with_unmasked_flop_counts(tmp_path, capsys):
    config = BenchConfig(batch=2, seq_len=32, heads=2, kv_heads=1, head_dims=(64,), dtype="float32",
                         warmup=0, repeats=1, masks=("prefix_lm",), impls=("xla", "pallas_gpu_interpret"))
    rows = run(tmp_path, config)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows and saved["interpret_mode"]
    assert "INTERPRET MODE" in capsys.readouterr().out
    assert {(r["impl"], r["phase"]) for r in rows} == {
        (impl, phase) for impl in config.impls for phase in ("fwd", "fwd+bwd")}
    # prefix-LM with prefixes 3 and 9 of 32 keys: visible keys per query row, averaged.
    prefixes = (3, 9)
    visible = sum(p * p + sum(i + 1 for i in range(p, 32)) for p in prefixes)
    density = visible / (2 * 32 * 32)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["density"] == pytest.approx(density)
        flops = 4 * 2 * 2 * 32 * 32 * 64 * density * (BACKWARD_FACTOR if row["phase"] == "fwd+bwd" else 1)
        assert row["tflops"] * 1e12 * row["time_ms"] / 1e3 == pytest.approx(flops, rel=1e-6)
        assert row["max_abs_err"] < 1e-4
    assert "pallas_gpu_interpret" in format_table(saved)
