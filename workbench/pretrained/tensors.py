"""Tensor sources: names and shapes known up front, float32 data read one tensor at a time
(so shapes are checked before anything is dequantised, and peak memory stays near one copy)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class TensorSource(Protocol):
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Hugging Face name -> shape, for every tensor the source holds."""
        ...

    def load(self, name: str) -> np.ndarray:
        """The tensor as float32, in Hugging Face layout."""
        ...
