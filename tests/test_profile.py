"""`workbench.benchmarks.profile`: op kinds summed from a hand-written trace, and a real trace of a jitted
function on this machine."""

from __future__ import annotations

import gzip
import json

import jax
import jax.numpy as jnp

from workbench.benchmarks.profile import op_kinds, op_times


def test_op_kinds_sum_by_kind_per_call_and_leave_the_runtime_out(tmp_path):
    events = [
        {"ph": "X", "name": "dot.952", "dur": 6000},
        {"ph": "X", "name": "dot.833", "dur": 2000},
        {"ph": "X", "name": "ynn_fusion.486", "dur": 3000},
        {"ph": "X", "name": "ynn_fusion", "dur": 1000},
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99000},
        {"ph": "X", "name": "$api.py:2757 block_until_ready", "dur": 99000},
        {"ph": "i", "name": "dot.1", "dur": 5000},  # not a complete event
    ]
    path = tmp_path / "t.trace.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    kinds = op_kinds(path, calls=2)
    assert list(kinds) == ["dot", "ynn_fusion"]
    assert kinds["dot"] == {"ms": 4.0, "count": 1.0}
    assert kinds["ynn_fusion"] == {"ms": 2.0, "count": 1.0}


def test_op_times_traces_a_compiled_function(tmp_path):
    f = jax.jit(lambda a, b: jnp.tanh(a @ b) + 1.0)
    a = jnp.ones((256, 256))
    jax.block_until_ready(f(a, a))
    kinds = op_times(f, (a, a), calls=3, trace_dir=tmp_path)
    assert kinds and all(v["ms"] >= 0 and v["count"] > 0 for v in kinds.values())
    assert list(tmp_path.glob("**/*.trace.json.gz"))
