"""The device mesh: three named axes (data, fsdp, tensor) from a frozen config.

`data` replicates parameters and splits the batch; `fsdp` splits the batch too and also
shards parameters (fully sharded data parallel); `tensor` splits weight matrices along
heads / MLP width / vocabulary (model parallel). A mesh of one device is the same code
path as a pod slice: every axis has size 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # mesh axes the batch dimension is split over


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; at most one may be -1, meaning "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.sizes()
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"{self} has an axis size outside {{-1, 1, 2, ...}}; use positive sizes and at most one -1")
        if sizes.count(-1) > 1:
            raise ValueError(f"{self} has more than one axis of size -1; at most one axis can take the rest")

    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete (data, fsdp, tensor) sizes for `num_devices` devices."""
        sizes = self.sizes()
        fixed = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % fixed:
                raise ValueError(
                    f"{self}: the fixed axes need a multiple of {fixed} devices, but {num_devices} are present; "
                    f"choose axis sizes whose product divides {num_devices}"
                )
            return tuple(num_devices // fixed if s == -1 else s for s in sizes)
        if fixed != num_devices:
            raise ValueError(
                f"{self} needs data*fsdp*tensor = {fixed} devices, but {num_devices} are present; make the "
                f"product equal {num_devices} or set one axis to -1"
            )
        return sizes


def make_mesh(config: MeshConfig = MeshConfig(), devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A mesh over `devices` (default: every device of every process).

    Axes are `Auto`, so jit/GSPMD propagates shardings from the placed parameters and batch."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.shape(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_divisor(mesh: Mesh) -> int:
    """How many ways the batch dimension is split: data * fsdp."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def mesh_context(mesh: Optional[Mesh]):
    """`with mesh_context(mesh):` puts `mesh` in JAX's context (jax.set_mesh) for the calls
    traced inside, so the Pallas attention kernels run per shard on it
    (workbench.attention.partitioning). None changes nothing. Use it outside jit."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)
