"""The block-size sweep's printed output: a progress line per measured candidate, and the
table of each step's default against its best correct candidate, with the recommendation."""

from __future__ import annotations

from workbench.benchmarks.tuning.space import STEPS, row_values
from workbench.benchmarks.tuning.sweep import best_row
from workbench.config import to_dict


def values_text(row: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(STEPS[row["step"]].fields, row_values(row)))


def progress_line(row: dict) -> str:
    time_text = f"{row['time_ms']:.3f} ms" if row["time_ms"] is not None else "-"
    return f"  D={row['head_dim']} {row['mask']} {row['step']} {values_text(row)}: {time_text} {row['status']}"


def format_table(result: dict) -> str:
    """`result` as `workbench.benchmarks.tuning.run` returns it (config a TuneConfig) or saves it (a dict)."""
    config = to_dict(result["config"])
    bench = config["bench"]
    kernel = f"flash_attention_{config['kernel']}"
    lines = [f"Block-size tuning of {kernel} on {result['device']} ({result['platform']}): B={bench['batch']} "
             f"T={bench['seq_len']} H={bench['heads']} Hkv={bench['kv_heads']} {bench['dtype']}; "
             f"median ms; a candidate counts only if its relative error vs float32 <= {result['tolerance']:.0e}"]
    if result["interpret_mode"]:
        lines.append("CPU: the kernels run in INTERPRET MODE on a tiny shape; the timings are not meaningful "
                     "for speed.")
    header = (f"{'D':>4} {'mask':<14} {'step':<10} {'timed':<8} {'default':>9} {'best':>9} {'speed-up':>8} "
              f"{'rel err':>8} {'ok':>5}  best")
    lines += [header, "-" * len(header)]
    groups: dict[tuple, list[dict]] = {}
    for row in result["rows"]:
        groups.setdefault((row["head_dim"], row["mask"], row["step"]), []).append(row)
    for (head_dim, mask_name, step_name), rows in groups.items():
        baseline = next(row for row in rows if row["baseline"])
        best = best_row(rows)
        default_ms = baseline["time_ms"] if baseline["status"] == "ok" else None
        fmt = lambda ms: f"{ms:9.3f}" if ms is not None else f"{'-':>9}"  # noqa: E731
        speedup = f"{default_ms / best['time_ms']:7.2f}x" if best and default_ms else f"{'-':>8}"
        err = f"{best['rel_err']:8.1e}" if best else f"{'-':>8}"
        ok = f"{sum(row['status'] == 'ok' for row in rows)}/{len(rows)}"
        lines.append(f"{head_dim:>4} {mask_name:<14} {step_name:<10} {rows[0]['timed']:<8} {fmt(default_ms)} "
                     f"{fmt(best and best['time_ms'])} {speedup} {err} {ok:>5}  "
                     f"{values_text(best) if best else 'none correct'}")
    for row in result["rows"]:
        if row["status"] != "ok":
            lines.append(f"not counted: D={row['head_dim']} {row['mask']} {row['step']} "
                         f"{values_text(row)}: {row['status']}")
    lines.append(f"Recommended (per step, least total time over {', '.join(bench['masks'])} among candidates "
                 f"correct on every mask):")
    for head_dim, rec in result["recommended"].items():
        lines.append(f"  head_dim={head_dim}: {rec['literal']}")
    lines += result["notes"]
    return "\n".join(lines)
