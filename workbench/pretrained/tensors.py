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


class DictSource:
    """Tensors already in memory (tests, conversions)."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self.tensors.items()}

    def load(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name], np.float32)
