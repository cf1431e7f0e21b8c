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
        # 48: a block size that divides neither the tiles nor the length
        "block_causal_prefix_padded": AttentionMask.block_causal(
            48, prefix_len=jnp.array([3, 500]), kv_lengths=jnp.array([1000, 700])),
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


# -- under a multi-device mesh -------------------------------------------------------------

MESH_SHAPE, MESH_AXES = (2, 2, 2), ("data", "fsdp", "tensor")


def _lower_on_mesh(impl: str, device, platform: str, monkeypatch) -> str:
    """Forward + backward of `attention(..., impl)` in a jit over an abstract 8-device mesh,
    inputs split over (data, fsdp) for the batch and tensor for the heads."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from workbench.attention import attention, dispatch

    monkeypatch.setattr(dispatch, "current_platform", lambda: "tpu" if platform == "tpu" else "gpu")
    mesh = AbstractMesh(MESH_SHAPE, MESH_AXES, axis_types=(AxisType.Auto,) * 3, abstract_device=device)
    spec = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor"))
    batch = 8
    q = jax.ShapeDtypeStruct((batch, 256, HEADS, 128), jnp.bfloat16, sharding=spec)
    kv = jax.ShapeDtypeStruct((batch, 256, KV_HEADS, 128), jnp.bfloat16, sharding=spec)
    mask = AttentionMask.prefix_lm(jnp.arange(batch, dtype=jnp.int32) * 30, kv_lengths=jnp.full((batch,), 200))

    def loss(q, k, v):
        return attention(q, k, v, mask, impl=impl).astype(jnp.float32).sum()

    with jax.sharding.use_abstract_mesh(mesh):
        traced = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).trace(q, kv, kv)
        return traced.lower(lowering_platforms=(platform,)).as_text()


def _kernel_operand_shapes(text: str, marker: str) -> list[str]:
    """The first operand type of each function that holds a `marker` kernel call."""
    shapes, current = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("func.func"):
            current = line.split("(%arg0: ", 1)[1].split(" ", 1)[0].rstrip(",") if "(%arg0: " in line else None
        elif marker in line:
            shapes.append(current)
    return shapes


@pytest.mark.parametrize("impl,device,platform,marker", [
    ("pallas_tpu", TPU_V5E, "tpu", "tpu_custom_call"),
    ("pallas_gpu", H100, "cuda", "__gpu$xla.gpu.triton"),
])
def test_kernels_run_per_shard_under_a_mesh(impl, device, platform, marker, monkeypatch):
    """XLA cannot partition a Pallas call ("Mosaic kernels cannot be automatically
    partitioned"), so under a mesh each kernel must see only its device's block: a batch
    of 8 over data*fsdp = 4 devices and 4 heads over tensor = 2 give [2, 256, 2, 128]."""
    text = _lower_on_mesh(impl, device, platform, monkeypatch)
    assert text.count("sdy.manual_computation") == 2  # forward; backward
    shapes = _kernel_operand_shapes(text, marker)
    assert len(shapes) == 3
    assert set(shapes) == {"tensor<2x256x2x128xbf16>"}, shapes


def test_inside_a_callers_shard_map_the_kernel_is_called_directly(monkeypatch):
    """A caller that already split the data (its own shard_map) gets no second split."""
    from jax.sharding import AxisType, PartitionSpec

    from workbench.attention import attention, dispatch

    monkeypatch.setattr(dispatch, "current_platform", lambda: "tpu")
    mesh = AbstractMesh(MESH_SHAPE, MESH_AXES, axis_types=(AxisType.Auto,) * 3, abstract_device=TPU_V5E)
    spec = PartitionSpec(("data", "fsdp"), None, "tensor")
    mask = AttentionMask.causal_mask()

    def per_device(q, k, v):
        return attention(q, k, v, mask, impl="pallas_tpu")

    q = jax.ShapeDtypeStruct((32, 256, HEADS * 2, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((32, 256, KV_HEADS * 2, 128), jnp.bfloat16)
    with jax.sharding.use_abstract_mesh(mesh):
        mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
        text = jax.jit(mapped).trace(q, kv, kv).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("sdy.manual_computation") == 1  # the caller's only
    assert set(_kernel_operand_shapes(text, "tpu_custom_call")) == {"tensor<8x256x4x128xbf16>"}  # [32/4, 256, 8/2, 128]
