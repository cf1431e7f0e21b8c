"""Adapters that plug the Pallas kernels into `workbench.attention.attention`.

`pallas_gpu` (Triton lowering) and `pallas_tpu` (Mosaic) run on their accelerators; the
`*_interpret` variants run the same kernels in Pallas interpret mode on CPU, with small
tiles so that short test sequences still span several tiles. They exist for tests and
are far too slow for anything else. `pallas_mosaic_gpu` (the experimental Mosaic GPU
kernel, Hopper only, kernels/experimental/) runs when named; it stays out of impl="auto"
until `python -m workbench.benchmarks.hopper_check` has passed on an H100 (see
`AUTO_ORDER` in workbench/attention/dispatch.py), and declines every case it does not
compute exactly.

Each adapter declares the mask features its kernel computes (the kernel module's own
`SUPPORTED_FEATURES`), so dispatch declines any other feature before the kernel sees it.
The attention package imports this module (and so the kernels) once, at its own import:
Pallas registers JAX config flags when first imported, and importing it inside the first
trace made each process compile its first step twice.
"""

from __future__ import annotations

import functools
from typing import Optional

from workbench.attention.dispatch import AttentionImpl, register
from workbench.attention.mask import AttentionMask
from workbench.kernels.common import SUPPORTED_FEATURES, why_not_supported
from workbench.kernels.experimental import hopper
from workbench.kernels.flash_gpu import GpuBlockSizes, flash_attention_gpu
from workbench.kernels.flash_tpu import TpuBlockSizes, flash_attention_tpu

_INTERPRET_GPU_BLOCKS = GpuBlockSizes(block_q=32, block_k=16, block_q_dkv=16, block_k_dkv=32,
                                      block_q_dq=32, block_k_dq=16)
_INTERPRET_TPU_BLOCKS = TpuBlockSizes(block_q=32, block_k=16, block_q_dkv=16, block_k_dkv=32,
                                      block_q_dq=32, block_k_dq=16)


def _why_not_on(required_platform: str):
    def why_not(q, k, v, mask: AttentionMask, platform: str) -> Optional[str]:
        if platform != required_platform:
            return f"runs on platform {required_platform!r}, not {platform!r}"
        return why_not_supported(q, k, v, mask)

    return why_not


def _why_not_hopper(q, k, v, mask: AttentionMask, platform: str) -> Optional[str]:
    if platform != "gpu":
        return f"runs on platform 'gpu' (an sm_90 GPU), not {platform!r}"
    hopper_gpu, kind = hopper.local_gpu_is_hopper()
    if not hopper_gpu:
        return f"needs a Hopper (sm_90) GPU such as the H100/H200; found {kind}"
    return hopper.why_not_supported(q, k, v, mask)


def _flash_attention_hopper(q, k, v, mask: AttentionMask, *, scale=None):
    return hopper.flash_attention_hopper(q, k, v, mask, scale=scale)


IMPLS: list[AttentionImpl] = [
    AttentionImpl(
        "pallas_mosaic_gpu",
        _flash_attention_hopper,
        _why_not_hopper,
        hopper.SUPPORTED_FEATURES,
        "experimental (never run on hardware) Pallas Mosaic GPU flash attention for Hopper (TMA, wgmma, "
        "warp specialisation): bf16/fp16, head_dim 64/128, GQA, prefix/kv-length/offset masks and segment ids",
        per_shard=True,
    ),
    AttentionImpl(
        "pallas_gpu",
        flash_attention_gpu,
        _why_not_on("gpu"),
        SUPPORTED_FEATURES,
        "Pallas flash attention lowered through Triton (any CUDA GPU): every mask kind, GQA, head_dim 64/128",
        per_shard=True,
    ),
    AttentionImpl(
        "pallas_tpu",
        flash_attention_tpu,
        _why_not_on("tpu"),
        SUPPORTED_FEATURES,
        "Pallas Mosaic TPU flash attention with scalar-prefetched mask lengths: every mask, GQA, head_dim 64/128",
        per_shard=True,
    ),
    AttentionImpl(
        "pallas_gpu_interpret",
        functools.partial(flash_attention_gpu, block_sizes=_INTERPRET_GPU_BLOCKS, interpret=True),
        _why_not_on("cpu"),
        SUPPORTED_FEATURES,
        "the pallas_gpu kernels in Pallas interpret mode on CPU (tests only; slow)",
        per_shard=True,
    ),
    AttentionImpl(
        "pallas_tpu_interpret",
        functools.partial(flash_attention_tpu, block_sizes=_INTERPRET_TPU_BLOCKS, interpret=True),
        _why_not_on("cpu"),
        SUPPORTED_FEATURES,
        "the pallas_tpu kernels in TPU interpret mode on CPU (tests only; slow)",
        per_shard=True,
    ),
]

for _impl in IMPLS:
    register(_impl)
