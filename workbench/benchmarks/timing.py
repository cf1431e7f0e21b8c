"""Timing device work: warm up (compile), then the median of repeated runs, each synchronised; and the
wall-clock seconds of a notebook's stages (`Stopwatch`)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def median_seconds(fn: Callable, args, warmup: int = 2, repeats: int = 5):
    """(median seconds per call, last result). Each call ends in `block_until_ready`."""
    result = None
    for _ in range(warmup):
        result = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


class Stopwatch:
    """Wall-clock seconds of named stages, run once each (compilation included): `seconds` is what a
    notebook's metrics.json records."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable, /, *args, **kwargs):
        """`fn(*args, **kwargs)`, its seconds recorded under `name`; returns its result."""
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        return result
