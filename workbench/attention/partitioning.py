"""Running a Pallas kernel inside a sharded (multi-device) computation.

XLA cannot partition a Pallas custom call (Mosaic TPU says "Mosaic kernels cannot be
automatically partitioned"; Triton and Mosaic GPU calls would be gathered onto every
device). Attention is independent per example and per head, so a kernel runs unchanged
on each device's block of examples and heads under `jax.shard_map`: the batch is split
over the mesh's batch axes and the heads over its head axis, as the logical-axis rules
place the activations (workbench.distributed.sharding), so no data moves.

The mesh comes from JAX's mesh context: the workbench's trainer, samplers and evaluation
enter `jax.set_mesh(mesh)` (`workbench.distributed.mesh_context`) when given a mesh.
Without a mesh in context, with one device, or inside the caller's own `shard_map`
(manual axes: the data is already per device), the kernel is called directly.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
from jax.sharding import AbstractMesh, PartitionSpec

from workbench.attention.mask import AttentionMask
from workbench.distributed.sharding import DEFAULT_RULES, ShardingRules


def _axes_dividing(size: int, names: tuple[str, ...], mesh: AbstractMesh) -> tuple[str, ...]:
    """`names` (those of size > 1 in `mesh`) if their product divides `size`, else none:
    a dimension that cannot be split evenly is replicated (computed whole on each device)."""
    axes = tuple(a for a in names if a in mesh.axis_names and mesh.shape[a] > 1)
    return axes if size % math.prod(mesh.shape[a] for a in axes) == 0 else ()


def _entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def per_shard_specs(q, k, mask: AttentionMask, mesh: AbstractMesh,
                    batch_axes: tuple[str, ...], head_axes: tuple[str, ...]):
    """PartitionSpecs for running attention per shard: (one spec for q, k, v and the
    output; a pytree of specs for the mask's per-example arrays).

    Query heads and key/value heads are split by the same axes only when both divide:
    then device i holds query heads [i*H/t, (i+1)*H/t) and exactly the key/value heads
    they read under grouped-query attention (head h reads kv head h // (H/Hkv))."""
    batch = _entry(_axes_dividing(q.shape[0], batch_axes, mesh))
    heads = _axes_dividing(q.shape[2], head_axes, mesh)
    if heads != _axes_dividing(k.shape[2], head_axes, mesh):
        heads = ()
    heads = _entry(heads)
    qkv = PartitionSpec(batch, None, heads, None)
    mask_specs = jax.tree.map(lambda leaf: PartitionSpec(batch, *([None] * (leaf.ndim - 1))), mask)
    return qkv, mask_specs


def run_per_shard(fn: Callable, q, k, v, mask: AttentionMask, scale: Optional[float],
                  rules: ShardingRules = DEFAULT_RULES):
    """fn(q, k, v, mask, scale=scale), on each device's block when a multi-device mesh is in context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or mesh.manual_axes:  # manual axes: already inside a shard_map
        return fn(q, k, v, mask, scale=scale)
    qkv, mask_specs = per_shard_specs(q, k, mask, mesh, rules.mesh_axes("batch"), rules.mesh_axes("heads"))

    def body(q, k, v, mask):
        return fn(q, k, v, mask, scale=scale)

    return jax.shard_map(body, mesh=mesh, in_specs=(qkv, qkv, qkv, mask_specs), out_specs=qkv,
                         check_vma=False)(q, k, v, mask)
