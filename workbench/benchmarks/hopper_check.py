"""One-call device check of the Hopper kernels: correctness first, then speed.

    python -m workbench.benchmarks.hopper_check --out "$OUT/hopper"

1. Correctness: forward and the three gradients of `flash_attention_hopper` against the
   float32 reference on fresh random inputs (seed printed): prefix 0, prefix = length,
   per-example prefixes, keys padded to length 0 (rows that see nothing -> exact
   zeros), GQA, Tq != Tk with query offsets, lengths that are not tile multiples,
   packed segments (sorted and unsorted ids), head_dim 64 and 128, bf16 (and fp16 for
   two cases), for every `--variants` configuration. The forward runs twice and must
   match bitwise (a moving result is a race).
2. Each `--variants` configuration (default: the two dq modes) timed side by side at the
   target shape on prefix-LM, causal, bidirectional and packed causal masks.
3. `workbench.benchmarks.kernels` at the target shape (B=4, T=4096, H=16, bf16).

`--ptxas` makes Mosaic GPU print ptxas's register and spill report for every kernel it
compiles (MOSAIC_GPU_DUMP_PTXAS), and `--dump-to DIR` also writes PTX/SASS there.
Each case reports its own failure and the rest still run; a short table ends the output
and everything goes to OUT/hopper_check.json. The exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from workbench.attention.mask import AttentionMask
from workbench.benchmarks import kernels as kernels_bench
from workbench.benchmarks.timing import median_seconds
from workbench.config import save_json
from workbench.kernels.experimental import hopper

TOLERANCE = 1e-2  # norm-relative error, bf16/fp16 operands with float32 accumulation
TARGET = dict(batch=4, seq_len=4096, heads=16)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    head_dim: int
    mask: AttentionMask
    empty_examples: tuple[int, ...] = ()  # examples whose rows see no key


def packed_segment_ids(lengths_per_example, total: int) -> jax.Array:
    """[B, total] segment ids of sequences packed back to back (ids 1, 2, ...; the rest one more id)."""
    rows = [np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)]
                           + [np.full(total - sum(lengths), len(lengths) + 1)]) for lengths in lengths_per_example]
    return jnp.asarray(np.stack(rows), jnp.int32)


def _random_ids(batch: int, total: int) -> jax.Array:
    """Ids in {0, 1, 2} in no order: every tile pair is visited and masked element by element."""
    return jnp.asarray(np.random.default_rng(0).integers(0, 3, (batch, total)), jnp.int32)


def cases() -> list[Case]:
    return [
        Case("prefix_lm_edges", 4, 1000, 1000, 4, 4, 128,
             AttentionMask.prefix_lm(jnp.array([0, 1000, 37, 513]))),
        Case("prefix_lm_padded_gqa", 3, 1000, 1000, 8, 2, 64,
             AttentionMask.prefix_lm(jnp.array([100, 0, 999]), kv_lengths=jnp.array([1000, 0, 640])),
             empty_examples=(1,)),
        Case("causal", 2, 2048, 2048, 4, 4, 128, AttentionMask.causal_mask()),
        Case("bidirectional_padded", 2, 777, 777, 4, 4, 64,
             AttentionMask.bidirectional(kv_lengths=jnp.array([777, 300]))),
        Case("prefix_diffusion_offset", 2, 256, 1024, 4, 1, 128,
             AttentionMask.prefix_diffusion(jnp.array([200, 50]), q_offset=jnp.array([768, 100]))),
        Case("packed_causal_gqa", 2, 2000, 2000, 8, 2, 128, AttentionMask.causal_mask(
            q_segment_ids=packed_segment_ids([(500, 700, 800), (1000, 1000)], 2000),
            kv_segment_ids=packed_segment_ids([(500, 700, 800), (1000, 1000)], 2000))),
        Case("unsorted_segments_prefix_lm", 2, 640, 640, 4, 4, 64, AttentionMask.prefix_lm(
            jnp.array([100, 640]), q_segment_ids=_random_ids(2, 640), kv_segment_ids=_random_ids(2, 640))),
        Case("target_prefix_lm", TARGET["batch"], TARGET["seq_len"], TARGET["seq_len"],
             TARGET["heads"], TARGET["heads"], 128,
             kernels_bench.make_mask("prefix_lm", TARGET["batch"], TARGET["seq_len"])),
    ]


def _rel_err(x, ref) -> float:
    x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
    if not np.isfinite(x).all():
        return float("nan")
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-6))


def _attention(config: hopper.HopperConfig):
    """(q, k, v, mask) -> out of the Hopper kernel with this configuration."""
    return lambda q, k, v, mask: hopper.flash_attention_hopper(q, k, v, mask, config=config)


def check_case(case: Case, dtype, config: hopper.HopperConfig, seed: int) -> dict:
    q, k, v, do = kernels_bench.random_inputs(jax.random.key(seed), case.batch, case.q_len, case.kv_len,
                                              case.heads, case.kv_heads, case.head_dim, dtype)
    attention = _attention(config)
    out, dq, dk, dv = jax.block_until_ready(jax.jit(kernels_bench.forward_backward(attention))(
        q, k, v, case.mask, do))
    again = jax.block_until_ready(jax.jit(attention)(q, k, v, case.mask))
    reference = kernels_bench.reference_outputs(q, k, v, case.mask, do)
    errors = {name: _rel_err(x, ref) for name, x, ref in
              zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), reference)}
    problems = [f"{name} err {err:.2e}" for name, err in errors.items() if not err < TOLERANCE]
    if not np.array_equal(np.asarray(out), np.asarray(again)):
        problems.append("forward differs between two runs")
    for b in case.empty_examples:
        if np.asarray(out[b]).any() or np.asarray(dq[b]).any() or np.asarray(dk[b]).any() \
                or np.asarray(dv[b]).any():
            problems.append(f"example {b} sees no key but has nonzero output or gradients")
    return dict(errors=errors, problems=problems)


# Configurations to check and time side by side (one device call measures several). All
# fit in shared memory at head_dim 128 (3 stages do not: 232,568 bytes in the forward).
VARIANTS: dict[str, hopper.HopperConfig] = {
    "separate": hopper.HopperConfig(),
    "atomic": hopper.HopperConfig(dq_mode="atomic"),
    "bwd_kv128": hopper.HopperConfig(block_kv_bwd=128),
    "no_schedule_barrier": hopper.HopperConfig(schedule_barrier=False),
}
DEFAULT_VARIANTS = ("separate", "atomic")


def run_checks(seed: int, variants: Sequence[str]) -> list[dict]:
    rows = []
    plan = [(case, jnp.bfloat16, name) for case in cases() for name in variants]
    plan += [(case, jnp.float16, variants[0]) for case in cases()[:2]]
    for i, (case, dtype, name) in enumerate(plan):
        row = dict(case=case.name, dtype=jnp.dtype(dtype).name, variant=name)
        start = time.perf_counter()
        try:
            row.update(check_case(case, dtype, VARIANTS[name], seed + i))
        except Exception as err:  # report and go on: one broken config must not hide the rest
            row.update(errors={}, problems=[f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"])
            traceback.print_exc()
        row["seconds"] = time.perf_counter() - start
        print(_check_line(row), flush=True)
        rows.append(row)
    return rows


def _check_line(row: dict) -> str:
    errs = " ".join(f"{name}={row['errors'].get(name, float('nan')):.1e}" for name in ("out", "dq", "dk", "dv"))
    status = "ok" if not row["problems"] else "FAIL: " + "; ".join(row["problems"])
    return f"{row['case']:<28} {row['dtype']:<9} {row['variant']:<19} {errs}  {row['seconds']:5.1f}s  {status}"


def _timing_masks(batch: int, length: int) -> dict[str, AttentionMask]:
    """The benchmark's masks plus packed causal sequences (4 per example) for the segment path."""
    masks = {name: kernels_bench.make_mask(name, batch, length) for name in ("prefix_lm", "causal", "bidirectional")}
    ids = packed_segment_ids([(length // 4,) * 4] * batch, length)
    masks["packed_causal"] = AttentionMask.causal_mask(q_segment_ids=ids, kv_segment_ids=ids)
    return masks


def time_variants(variants: Sequence[str], seed: int) -> list[dict]:
    """fwd and fwd+bwd TFLOP/s (unmasked work) of each variant at the target shape, D=128.

    A variant whose shared memory does not fit is reported and skipped."""
    b, t, h = TARGET["batch"], TARGET["seq_len"], TARGET["heads"]
    q, k, v, do = kernels_bench.random_inputs(jax.random.key(seed), b, t, t, h, h, 128, jnp.bfloat16)
    rows = []
    for mask_name, mask in _timing_masks(b, t).items():
        flops = 4.0 * b * h * t * t * 128 * float(mask.density(b, t, t))
        for name in variants:
            config = VARIANTS[name]
            row = dict(mask=mask_name, variant=name)
            smem = hopper.smem_bytes(hopper.make_plan(q, k, mask, None, config))
            attention = _attention(config)
            try:
                if max(smem.values()) > hopper.SMEM_LIMIT_BYTES:
                    raise ValueError(f"shared memory {smem} over {hopper.SMEM_LIMIT_BYTES} bytes")
                fwd_s, _ = median_seconds(jax.jit(attention), (q, k, v, mask), 3, 10)
                both_s, _ = median_seconds(jax.jit(kernels_bench.forward_backward(attention)),
                                           (q, k, v, mask, do), 3, 10)
                row.update(fwd_tflops=flops / fwd_s / 1e12, fwd_bwd_tflops=3.5 * flops / both_s / 1e12,
                           fwd_ms=fwd_s * 1e3, fwd_bwd_ms=both_s * 1e3)
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
            print(_timing_line(row), flush=True)
    return rows


def _timing_line(row: dict) -> str:
    head = f"{row['mask']:<14} {row['variant']:<19}"
    if "error" in row:
        return f"{head} {row['error']}"
    return (f"{head} fwd {row['fwd_tflops']:6.1f} fwd+bwd {row['fwd_bwd_tflops']:6.1f} TFLOP/s "
            f"({row['fwd_ms']:.3f} / {row['fwd_bwd_ms']:.3f} ms)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/hopper_check", help="folder for the benchmark results")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                        help="HopperConfig variants to check and time side by side (see VARIANTS)")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--bench-head-dims", type=int, nargs="+", default=[128], choices=hopper.HEAD_DIMS)
    parser.add_argument("--ptxas", action="store_true", help="print ptxas register/spill reports")
    parser.add_argument("--dump-to", default=None, help="folder for Mosaic GPU PTX/SASS dumps")
    args = parser.parse_args(argv)
    if args.ptxas:
        os.environ["MOSAIC_GPU_DUMP_PTXAS"] = "1"  # read by Mosaic GPU when it compiles
    if args.dump_to:
        os.environ.update(MOSAIC_GPU_DUMP_PTX="1", MOSAIC_GPU_DUMP_SASS="1", MOSAIC_GPU_DUMP_TO=args.dump_to)
    seed = int(time.time()) % 2**31 if args.seed is None else args.seed
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, seed {seed}, "
          f"hopper: {hopper.is_hopper(device)}", flush=True)

    check_rows = [] if args.skip_checks else run_checks(seed, args.variants)
    timing_rows = [] if args.skip_bench else time_variants(args.variants, seed)
    if not args.skip_bench:
        config = dataclasses.replace(kernels_bench.default_config(jax.default_backend()),
                                     head_dims=tuple(args.bench_head_dims),
                                     impls=("pallas_mosaic_gpu", "cudnn", "pallas_gpu", "jax_nn_xla",
                                            "tokamax_mosaic", "tokamax_triton"))
        kernels_bench.run(Path(args.out) / "bench", config)

    print("\n== hopper_check summary ==")
    for row in check_rows:
        print(_check_line(row))
    failed = sum(bool(row["problems"]) for row in check_rows)
    print(f"checks: {len(check_rows) - failed} ok, {failed} failed (tolerance {TOLERANCE:g})")
    for row in timing_rows:
        print(_timing_line(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "hopper_check.json", dict(device=device.device_kind, jax=jax.__version__, seed=seed,
                                              checks=check_rows, timings=timing_rows,
                                              variants={name: dataclasses.asdict(VARIANTS[name])
                                                        for name in args.variants}))
    print("wrote", out / "hopper_check.json")
    if failed:  # a check script's exit status must say so (the device suite reads it)
        raise SystemExit(f"hopper_check: {failed} of {len(check_rows)} checks failed")


if __name__ == "__main__":
    main()
