"""Running and checking one candidate of the block-size sweep: compile it, time it, and
compare its outputs (and gradients, when timed with the backward) with the float32 reference.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp

from workbench.benchmarks.kernels import forward_backward, make_mask, random_inputs, reference_outputs
from workbench.benchmarks.timing import median_seconds
from workbench.benchmarks.tuning.space import STEPS, TuneConfig, step_values
from workbench.kernels.flash_gpu import flash_attention_gpu
from workbench.kernels.flash_tpu import flash_attention_tpu

# XLA CPU builds of interpreted kernels: LLVM optimizations off builds ~3x faster.
_FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass(frozen=True)
class TuneCase:
    """Inputs and the float32 reference [out, dq, dk, dv] for one (mask, head_dim)."""

    mask_name: str
    head_dim: int
    args: tuple  # (q, k, v, mask, d_out)
    reference: tuple


def make_case(config: TuneConfig, mask_name: str, head_dim: int) -> TuneCase:
    bench = config.bench
    b, t = bench.batch, bench.seq_len
    q, k, v, d_out = random_inputs(jax.random.fold_in(jax.random.key(bench.seed), head_dim), b, t, t,
                                   bench.heads, bench.kv_heads, head_dim, jnp.dtype(bench.dtype))
    mask = make_mask(mask_name, b, t)
    return TuneCase(mask_name, head_dim, (q, k, v, mask, d_out), tuple(reference_outputs(q, k, v, mask, d_out)))


def attention_fn(config: TuneConfig, blocks) -> Callable:
    if config.kernel == "gpu":
        return functools.partial(flash_attention_gpu, block_sizes=blocks, interpret=config.interpret)
    return functools.partial(flash_attention_tpu, block_sizes=blocks, interpret=config.interpret,
                             simulate_tpu_memory=False)


def _timed_fn(attention: Callable, forward_only: bool) -> tuple[Callable, int]:
    """(fn of (q, k, v, mask, d_out) returning [out] or [out, dq, dk, dv], argument count)."""
    if forward_only:
        return (lambda q, k, v, mask: [attention(q, k, v, mask)]), 4
    return forward_backward(attention), 5


def relative_error(x: jax.Array, ref: jax.Array) -> float:
    """||x - ref|| / ||ref||, the norm floored at an all-0.1 array's (analytically zero grads)."""
    diff = jnp.linalg.norm((x.astype(jnp.float32) - ref).ravel())
    floor = 0.1 * jnp.sqrt(jnp.float32(ref.size))
    return float(diff / jnp.maximum(jnp.linalg.norm(ref.ravel()), floor))


def _error_status(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()] or [""]
    return f"error: {type(err).__name__}: {lines[0][:300]}"


def measure(config: TuneConfig, case: TuneCase, step_name: str, blocks) -> dict:
    """One timed configuration: a row with its status ("ok", "wrong: ..." or "error: ..."),
    compile seconds, median milliseconds and relative error against the reference."""
    step = STEPS[step_name]
    row = dict(head_dim=case.head_dim, mask=case.mask_name, step=step_name, pass_name=step.pass_name,
               timed=step.timed, values=dict(zip(step.fields, step_values(blocks, step_name))),
               block_sizes=dataclasses.asdict(blocks), status="ok", compile_s=None, time_ms=None,
               rel_err=None)
    try:
        fn, arg_count = _timed_fn(attention_fn(config, blocks), step.timed == "fwd")
        args = case.args[:arg_count]
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile(_FAST_CPU_COMPILE if config.interpret else None)
        row["compile_s"] = time.perf_counter() - start
        seconds, outputs = median_seconds(compiled, args, config.bench.warmup, config.bench.repeats)
    except Exception as err:  # a failing configuration is recorded and the sweep goes on
        row["status"] = _error_status(err)
        return row
    row["time_ms"] = seconds * 1e3
    row["rel_err"] = max(relative_error(x, r) for x, r in zip(outputs, case.reference))
    if not row["rel_err"] <= config.tolerance:
        row["status"] = f"wrong: relative error {row['rel_err']:.2e} > {config.tolerance:.0e}"
    return row
