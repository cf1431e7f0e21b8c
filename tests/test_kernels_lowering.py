"""The kernels lower for real accelerators, checked on CPU with abstract devices.

Lowering an abstract H100 (`lowering_platforms=("cuda",)`) runs the whole Pallas ->
Triton IR lowering (block shapes, power-of-two tensors, every primitive in the kernel
bodies); lowering an abstract TPU runs Pallas -> Mosaic MLIR. What neither checks is
the final compile inside XLA (Triton -> PTX) or libtpu (Mosaic layouts), which needs
the hardware.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

from workbench.attention.mask import AttentionMask
from workbench.kernels.flash_gpu import flash_attention_gpu
from workbench.kernels.flash_tpu import flash_attention_tpu

H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=132)
TPU_V5E = AbstractDevice(device_kind="TPU v5 lite", platform="tpu", num_cores=1)

BATCH, LENGTH, HEADS, KV_HEADS = 2, 1000, 4, 2  # 1000: not a multiple of any tile


def _masks():
    ids = jnp.zeros((BATCH, LENGTH), jnp.int32)
    return {
        "prefix_lm_padded": AttentionMask.prefix_lm(jnp.array([3, 500]), kv_lengths=jnp.array([1000, 700])),
        "prefix_diffusion_segments": AttentionMask.prefix_diffusion(
            jnp.array([0, 1000]), q_segment_ids=ids, kv_segment_ids=ids),
    }


def _lower_fwd_bwd(attention_fn, device, platform: str, head_dim: int, mask) -> str:
    def loss(q, k, v):
        return attention_fn(q, k, v, mask).astype(jnp.float32).sum()

    q = jax.ShapeDtypeStruct((BATCH, LENGTH, HEADS, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((BATCH, LENGTH, KV_HEADS, head_dim), jnp.bfloat16)
    with jax.sharding.use_abstract_mesh(AbstractMesh((), (), abstract_device=device)):
        traced = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).trace(q, kv, kv)
        return traced.lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("mask_name", sorted(_masks()))
def test_gpu_kernels_lower_for_h100(head_dim, mask_name):
    text = _lower_fwd_bwd(flash_attention_gpu, H100, "cuda", head_dim, _masks()[mask_name])
    assert text.count("__gpu$xla.gpu.triton") == 3  # forward, dq, dk/dv


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("mask_name", sorted(_masks()))
def test_tpu_kernels_lower_to_mosaic(head_dim, mask_name):
    text = _lower_fwd_bwd(flash_attention_tpu, TPU_V5E, "tpu", head_dim, _masks()[mask_name])
    assert text.count("tpu_custom_call") == 3  # forward, dq, dk/dv
