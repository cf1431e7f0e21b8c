"""Where a compiled step's time goes: XLA ops grouped by kind from a `jax.profiler` trace.

`op_times(fn, args)` runs `fn(*args)` (already compiled) a few times under the profiler and sums the
trace's op events by kind, i.e. the op name without its numeric suffix (`dot.952` and `dot.833` are both
`dot`; `ynn_fusion.486` is `ynn_fusion`, XLA:CPU's YNNPACK matmul fusions). The runtime's own frames
(thunk executors, Python) are left out, so the kinds are the ops of the compiled program.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import jax

_RUNTIME = re.compile(r"^\$|Thunk|PjitFunction|ParseArguments|SlinkyThreadPool")
_SUFFIX = re.compile(r"[.\d]+$")


def op_kinds(trace_file: Path, calls: int) -> dict[str, dict]:
    """{kind: {"ms": milliseconds per call, "count": ops per call}} from a `*.trace.json.gz` file of
    `calls` calls, largest first."""
    events = json.loads(gzip.open(trace_file).read())["traceEvents"]
    micros, counts = Counter(), Counter()
    for event in events:
        if event.get("ph") != "X" or _RUNTIME.search(event["name"]):
            continue
        kind = _SUFFIX.sub("", event["name"])
        micros[kind] += event["dur"]
        counts[kind] += 1
    return {kind: {"ms": us / 1000 / calls, "count": counts[kind] / calls} for kind, us in micros.most_common()}


def op_times(fn: Callable, args: tuple, calls: int = 2, trace_dir: Optional[Path] = None) -> dict[str, dict]:
    """Profile `calls` calls of `fn(*args)` (compile it first) and return `op_kinds` of the trace."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(trace_dir or scratch)
        jax.profiler.start_trace(str(folder))
        try:
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        finally:
            jax.profiler.stop_trace()
        traces = sorted(folder.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
        if not traces:
            raise FileNotFoundError(f"jax.profiler wrote no *.trace.json.gz under {folder}")
        return op_kinds(traces[-1], calls)
