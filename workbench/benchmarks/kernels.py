"""Attention kernel benchmark: TFLOP/s of each implementation on each mask, forward and
forward+backward, with each implementation's error against the float32 reference.

Only unmasked work counts: forward FLOPs are 4 * B * H * Tq * Tk * D * density, and
forward+backward is counted as 3.5x the forward. Timings are the median of `repeats`
runs after `warmup` runs, each ending in `block_until_ready`.

    python -m workbench.benchmarks.kernels --out runs/bench

On a GPU the default shape is B=4, T=4096, H=16, bf16 at head_dim 128 and 64. On CPU the
Pallas kernels run in interpret mode on a tiny shape: those numbers check that the
benchmark works and say nothing about speed (the table says so).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from workbench.attention import dispatch
from workbench.attention.mask import AttentionMask
from workbench.attention.reference import xla_attention
from workbench.benchmarks.timing import median_seconds
from workbench.config import save_json
from workbench.runs import write_run_info

MASKS = ("bidirectional", "causal", "prefix_lm", "padded")
PREFIX_FRACTIONS = (0.1, 0.3, 0.5, 0.7)  # per-example prefixes; density ~0.61 at B=4
PADDED_FRACTIONS = (1.0, 0.75, 0.5, 0.875)  # per-example kv lengths for the padded mask
BACKWARD_FACTOR = 3.5


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    batch: int
    seq_len: int
    heads: int
    kv_heads: int
    head_dims: tuple[int, ...]
    dtype: str
    warmup: int
    repeats: int
    masks: tuple[str, ...] = MASKS
    impls: Optional[tuple[str, ...]] = None  # None: every impl available on this platform
    seed: int = 0

    def __post_init__(self):
        unknown = [m for m in self.masks if m not in MASKS]
        if unknown or not self.masks:
            raise ValueError(f"masks={self.masks!r}: expected a non-empty subset of {MASKS}")
        if not self.head_dims:
            raise ValueError(f"head_dims={self.head_dims!r}: expected at least one head_dim")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"warmup={self.warmup}, repeats={self.repeats}: expected warmup >= 0 and "
                             f"repeats >= 1")


def default_config(platform: str) -> BenchConfig:
    if platform == "cpu":
        return BenchConfig(batch=2, seq_len=64, heads=2, kv_heads=2, head_dims=(64,),
                           dtype="float32", warmup=1, repeats=3)
    return BenchConfig(batch=4, seq_len=4096, heads=16, kv_heads=16, head_dims=(128, 64),
                       dtype="bfloat16", warmup=3, repeats=10)


@dataclasses.dataclass(frozen=True)
class BenchImpl:
    name: str
    fn: Callable  # (q, k, v, mask) -> out
    why_not: Callable  # (q, k, v, mask) -> None | reason


def _per_example(fractions: Sequence[float], batch: int, length: int) -> jax.Array:
    return jnp.array([int(fractions[i % len(fractions)] * length) for i in range(batch)], jnp.int32)


def make_mask(name: str, batch: int, length: int) -> AttentionMask:
    if name == "bidirectional":
        return AttentionMask.bidirectional()
    if name == "causal":
        return AttentionMask.causal_mask()
    if name == "prefix_lm":
        return AttentionMask.prefix_lm(_per_example(PREFIX_FRACTIONS, batch, length))
    if name == "padded":
        return AttentionMask.bidirectional(kv_lengths=_per_example(PADDED_FRACTIONS, batch, length))
    raise ValueError(f"unknown benchmark mask {name!r}; expected one of {MASKS}")


def _dense_mask(q, k, mask: AttentionMask) -> jax.Array:
    """The mask as a [B, 1, Tq, Tk] boolean, for impls that take no mask description."""
    return mask.dense(q.shape[0], q.shape[1], k.shape[1])[:, None]


def _jax_nn_dense(implementation: str):
    """jax.nn.dot_product_attention(implementation=...) with the mask as a dense boolean (input dtype)."""
    def fn(q, k, v, mask: AttentionMask):
        return jax.nn.dot_product_attention(q, k, v, mask=_dense_mask(q, k, mask), implementation=implementation)
    return fn


def _jax_triton_impl(platform: str) -> BenchImpl:
    """JAX's own Pallas Triton flash attention (jax.experimental.pallas.ops.gpu.attention.mha),
    the kernel the portable GPU kernel must not lose to: causal or bidirectional, equal head
    counts, lengths a multiple of its 128 tile. Interpret mode on CPU, like ours."""
    from jax.experimental.pallas.ops.gpu import attention as jax_gpu_attention

    def fn(q, k, v, mask: AttentionMask):
        return jax_gpu_attention.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5, causal=mask.causal,
                                     interpret=platform == "cpu")

    def why_not(q, k, v, mask: AttentionMask):
        if platform not in ("gpu", "cpu"):
            return "a GPU kernel (interpret mode on CPU)"
        if mask.features - {"causal"}:
            return f"causal or bidirectional only; this mask uses {sorted(mask.features - {'causal'})}"
        if q.shape[1] != k.shape[1] or q.shape[2] != k.shape[2]:
            return "needs Tq == Tk and as many key/value heads as query heads"
        if q.shape[1] % min(128, q.shape[1]):
            return f"length {q.shape[1]} is not a multiple of its 128 tile"
        return None

    return BenchImpl("jax_pallas_triton", fn, why_not)


def _cudnn_dense_impl(platform: str) -> BenchImpl:
    """cuDNN with the mask as a dense boolean: the only way to give cuDNN a per-example
    prefix-LM mask (kernels.md: 92 TFLOP/s forward), the path our kernels must beat."""

    def why_not(q, k, v, mask: AttentionMask):
        if platform != "gpu":
            return "cuDNN runs on NVIDIA GPUs only"
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            return f"cuDNN needs bf16 or fp16 inputs, got {q.dtype}"
        if mask.prefix_len is None and not mask.has_segments:
            return "the dense-mask path is benchmarked for prefix and segment masks (cudnn covers the rest)"
        return None

    return BenchImpl("cudnn_dense_mask", _jax_nn_dense("cudnn"), why_not)


def _tokamax_impls(platform: str) -> list[BenchImpl]:
    try:
        import tokamax
    except ImportError:
        return []

    def make(implementation: str):
        def fn(q, k, v, mask: AttentionMask):
            if mask.features - {"causal", "key_padding"}:  # no native form: a dense mask
                return tokamax.dot_product_attention(q, k, v, mask=_dense_mask(q, k, mask),
                                                     implementation=implementation)
            return tokamax.dot_product_attention(
                q, k, v, is_causal=mask.causal, key_value_seq_lengths=mask.kv_lengths,
                implementation=implementation)
        return fn

    def why_not(q, k, v, mask):
        if platform != "gpu":
            return "benchmarked on GPUs only"
        if mask.q_offset is not None:
            return "query offsets are not passed to tokamax"
        return None

    return [BenchImpl(f"tokamax_{name}", make(name), why_not) for name in ("mosaic", "triton")]


def available_impls(platform: str) -> list[BenchImpl]:
    """The workbench's registered impls for this platform, plus jax.nn XLA, JAX's Triton kernel,
    cuDNN with a dense mask and tokamax (when importable)."""
    impls = []
    for name in dispatch.available_impls():
        registered = dispatch.get_impl(name)
        if name.endswith("_interpret") and platform != "cpu":
            continue
        impls.append(BenchImpl(
            name,
            lambda q, k, v, mask, _fn=registered.fn: _fn(q, k, v, mask),
            lambda q, k, v, mask, _why=registered.reason_not: _why(q, k, v, mask, platform)))
    impls.append(BenchImpl("jax_nn_xla", _jax_nn_dense("xla"), lambda q, k, v, mask: None))
    impls += [_jax_triton_impl(platform), _cudnn_dense_impl(platform)]
    return impls + _tokamax_impls(platform)


def random_inputs(key: jax.Array, batch: int, q_len: int, kv_len: int, heads: int, kv_heads: int,
                  head_dim: int, dtype) -> tuple[jax.Array, ...]:
    """(q [B, Tq, H, D], k and v [B, Tk, Hkv, D], d_out like q): standard normal, in `dtype`."""
    keys = jax.random.split(key, 4)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, kv_len, kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, kv_len, kv_heads, head_dim), dtype)
    return q, k, v, jax.random.normal(keys[3], q.shape, dtype)


def forward_backward(fn: Callable) -> Callable:
    """(q, k, v, mask, d_out) -> [out, dq, dk, dv] of attention fn(q, k, v, mask)."""
    def step(q, k, v, mask, d_out):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
        return [out, *vjp(d_out.astype(out.dtype))]
    return step


def reference_outputs(q, k, v, mask: AttentionMask, d_out) -> list[jax.Array]:
    """[out, dq, dk, dv] of the dense float32 reference (full-precision matmuls, also on GPU)."""
    upcast = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
    with jax.default_matmul_precision("highest"):
        return jax.block_until_ready(forward_backward(xla_attention)(*upcast[:3], mask, upcast[3]))


def _forward(fn):
    return jax.jit(lambda q, k, v, mask: [fn(q, k, v, mask)])


def _max_abs_err(xs, refs) -> float:
    return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - r))) for x, r in zip(xs, refs))


def _bench_case(impl: BenchImpl, q, k, v, mask, d_out, reference, flops: float, config: BenchConfig):
    """Rows for one impl on one (mask, head_dim): forward and forward+backward."""
    reason = impl.why_not(q, k, v, mask)
    rows = []
    for pass_name, make, factor in (("fwd", _forward, 1.0),
                                    ("fwd+bwd", lambda fn: jax.jit(forward_backward(fn)), BACKWARD_FACTOR)):
        row = dict(impl=impl.name, phase=pass_name, status="ok", time_ms=None, tflops=None, max_abs_err=None)
        if reason is not None:
            row["status"] = f"unsupported: {reason}"
            rows.append(row)
            continue
        args = (q, k, v, mask) if pass_name == "fwd" else (q, k, v, mask, d_out)
        try:
            seconds, outputs = median_seconds(make(impl.fn), args, config.warmup, config.repeats)
        except Exception as err:  # a failing impl is reported in its row, the others still run
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
            continue
        row.update(time_ms=seconds * 1e3, tflops=flops * factor / seconds / 1e12,
                   max_abs_err=_max_abs_err(outputs, reference[:len(outputs)]))
        rows.append(row)
    return rows


def run(out_dir: Path | str, config: Optional[BenchConfig] = None) -> list[dict]:
    """Benchmark every available impl; print the table and write results.json to out_dir."""
    platform = jax.default_backend()
    config = config or default_config(platform)
    interpret = platform == "cpu"
    impls = [i for i in available_impls(platform) if config.impls is None or i.name in config.impls]
    dtype = jnp.dtype(config.dtype)
    b, t, h, hkv = config.batch, config.seq_len, config.heads, config.kv_heads
    rows, skipped = [], {}
    for head_dim in config.head_dims:
        q, k, v, d_out = random_inputs(jax.random.key(config.seed), b, t, t, h, hkv, head_dim, dtype)
        masks = {name: make_mask(name, b, t) for name in config.masks}
        reasons = {i.name: [i.why_not(q, k, v, m) for m in masks.values()] for i in impls}
        for name, why in reasons.items():  # impls for another platform stay out of the table
            if all(reason is not None for reason in why):
                skipped[name] = why[0]
        for mask_name, mask in masks.items():
            density = float(mask.density(b, t, t))
            flops = 4.0 * b * h * t * t * head_dim * density
            reference = reference_outputs(q, k, v, mask, d_out)
            for impl in (i for i in impls if i.name not in skipped):
                for row in _bench_case(impl, q, k, v, mask, d_out, reference, flops, config):
                    rows.append(dict(row, mask=mask_name, density=density, head_dim=head_dim))
            del reference
    result = dict(platform=platform, device=str(jax.devices()[0].device_kind),
                  interpret_mode=interpret, config=dataclasses.asdict(config), rows=rows,
                  skipped_impls=skipped)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(out_dir / "results.json", result)
    write_run_info(out_dir, config=config, seed=config.seed)
    print(format_table(result))
    return rows


def format_table(result: dict) -> str:
    config = result["config"]
    lines = [f"Attention kernels on {result['device']} ({result['platform']}): B={config['batch']} "
             f"T={config['seq_len']} H={config['heads']} Hkv={config['kv_heads']} {config['dtype']}; "
             f"TFLOP/s of unmasked work (fwd+bwd = {BACKWARD_FACTOR}x fwd)"]
    if result["interpret_mode"]:
        lines.append("CPU: Pallas kernels run in INTERPRET MODE on a tiny shape; the speeds are not meaningful.")
    header = f"{'D':>4} {'mask':<14} {'density':>7} {'impl':<22} {'fwd':>9} {'fwd+bwd':>9} {'max err':>9}  note"
    lines += [header, "-" * len(header)]
    by_case: dict[tuple, dict] = {}
    for row in result["rows"]:
        by_case.setdefault((row["head_dim"], row["mask"], row["impl"]), {})[row["phase"]] = row
    for (head_dim, mask_name, impl), passes in by_case.items():
        fwd, both = passes.get("fwd", {}), passes.get("fwd+bwd", {})
        fmt = lambda r: f"{r['tflops']:9.3g}" if r.get("tflops") is not None else f"{'-':>9}"  # noqa: E731
        errs = [r["max_abs_err"] for r in (fwd, both) if r.get("max_abs_err") is not None]
        err = f"{max(errs):9.2e}" if errs else f"{'-':>9}"
        notes = sorted({r["status"] for r in (fwd, both) if r and r["status"] != "ok"})
        density = (fwd or both)["density"]
        lines.append(f"{head_dim:>4} {mask_name:<14} {density:7.3f} {impl:<22} {fmt(fwd)} {fmt(both)} "
                     f"{err}  {'; '.join(notes)}")
    for name, reason in result["skipped_impls"].items():
        lines.append(f"not run: {name} ({reason})")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    platform = jax.default_backend()
    defaults = default_config(platform)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench", help="output folder for results.json")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--heads", type=int, default=defaults.heads)
    parser.add_argument("--kv-heads", type=int, default=defaults.kv_heads)
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(defaults.head_dims))
    parser.add_argument("--dtype", default=defaults.dtype, choices=("bfloat16", "float32"))
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    parser.add_argument("--impls", nargs="+", default=None, help="subset of impl names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = BenchConfig(
        batch=args.batch, seq_len=args.seq_len, heads=args.heads, kv_heads=args.kv_heads,
        head_dims=tuple(args.head_dims), dtype=args.dtype, warmup=args.warmup,
        repeats=args.repeats, masks=tuple(args.masks),
        impls=None if args.impls is None else tuple(args.impls), seed=args.seed)
    return run(args.out, config)


if __name__ == "__main__":
    main()
