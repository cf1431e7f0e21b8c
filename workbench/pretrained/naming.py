"""Where a Hugging Face tensor lives in a workbench `DecoderOnly` (the layout of each family is
in `workbench.pretrained.families`).

Hugging Face stores linear weights as [out, in]; `nnx.Linear` kernels are [in, out].
"""

from __future__ import annotations

import dataclasses
from typing import Union

Path = tuple[Union[str, int], ...]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    hf_name: str
    path: Path  # attributes (and block index) from the DecoderOnly to the nnx.Param
    hf_shape: tuple[int, ...]
    transpose: bool  # a linear kernel: HF [out, in] <-> workbench [in, out]


# Tensors some checkpoints carry that the model recomputes or ties (safe to skip).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
