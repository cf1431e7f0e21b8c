"""Several processes (hosts) as one JAX program: joining them, and per-host data.

Every process runs the same script. `initialize` joins them through JAX's distributed
runtime; afterwards `jax.devices()` lists the devices of all processes and one mesh spans
them. Each process then holds only its own rows of every global batch: `shard_batch`
keeps the rows that this process's devices own and assembles the global array with
`jax.make_array_from_process_local_data`. With one process the same code places a host
batch onto the local devices.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, NamedTuple, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from workbench.distributed.sharding import DEFAULT_RULES, ShardingRules, batch_sharding, check_batch_size

ENV_VARS = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How to find the other processes. Unset fields come from the environment
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), then from JAX's cluster
    detection (Cloud TPU VMs, SLURM, Open MPI, Kubernetes)."""

    coordinator_address: Optional[str] = None  # "host:port" of process 0
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[tuple[int, ...]] = None  # devices this process drives (default: all visible)
    initialization_timeout_s: int = 300

    def __post_init__(self):
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes={self.num_processes} must be >= 1")
        if self.process_id is not None and self.process_id < 0:
            raise ValueError(f"process_id={self.process_id} must be >= 0")
        if self.num_processes is not None and self.process_id is not None and self.process_id >= self.num_processes:
            raise ValueError(
                f"process_id={self.process_id} is out of range for num_processes={self.num_processes}; "
                f"ids run from 0 to {self.num_processes - 1}"
            )
        if self.coordinator_address is not None and ":" not in self.coordinator_address:
            raise ValueError(
                f"coordinator_address={self.coordinator_address!r} needs a port, e.g. '10.0.0.2:1234' "
                f"(process 0's address and a free port)"
            )

    def with_environment(self, environ: Mapping[str, str] = os.environ) -> "DistributedConfig":
        """This config with unset fields filled from `environ`."""
        changes: dict[str, Any] = {}
        for field, var in ENV_VARS.items():
            if getattr(self, field) is None and environ.get(var):
                value = environ[var]
                if field != "coordinator_address":
                    try:
                        value = int(value)
                    except ValueError:
                        raise ValueError(f"{var}={value!r} must be an integer") from None
                changes[field] = value
        return dataclasses.replace(self, **changes)


class ProcessInfo(NamedTuple):
    process_index: int
    process_count: int
    local_device_count: int
    device_count: int


def process_info() -> ProcessInfo:
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def initialize(config: DistributedConfig = DistributedConfig()) -> ProcessInfo:
    """Join this process to the job (idempotent). Call it first, before any JAX computation.

    A single process on one machine (one or several local accelerators) needs no call."""
    if jax.distributed.is_initialized():
        return process_info()
    config = config.with_environment()
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            local_device_ids=None if config.local_device_ids is None else list(config.local_device_ids),
            initialization_timeout=config.initialization_timeout_s,
        )
    except ValueError as error:  # nothing given and no cluster detected
        raise ValueError(
            f"could not find the job's processes ({error}); pass DistributedConfig(coordinator_address='host:port', "
            f"num_processes=N, process_id=i), set {', '.join(ENV_VARS.values())} on every process, or launch "
            f"under Cloud TPU, SLURM, Open MPI or Kubernetes where JAX detects them"
        ) from error
    return process_info()


def is_primary() -> bool:
    """Process 0: the one that writes run files (logs, configs) the others would duplicate."""
    return jax.process_index() == 0


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> np.ndarray:
    """Rows of the global batch (leading dimension) held by this process's devices, ascending.

    This is the order in which `make_array_from_process_local_data` maps local rows to devices."""
    rows = set()
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        start, stop, _ = index[0].indices(global_shape[0])
        rows.update(range(start, stop))
    return np.array(sorted(rows), np.int64)


def _place_rows(x, sharding: NamedSharding, mesh: Mesh, rules: ShardingRules):
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: reshard on device
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"a batch leaf is a scalar ({x!r}); every batch field needs a leading batch dimension")
    check_batch_size(x.shape[0], mesh, rules)
    return jax.make_array_from_process_local_data(sharding, x[process_rows(sharding, x.shape)], x.shape)


def shard_batch(batch, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES):
    """A host batch (a Batch or any pytree of arrays with a leading batch dimension, the
    same global batch on every process) as global arrays split along the batch axes; each
    process transfers only the rows its own devices hold."""
    sharding = batch_sharding(mesh, rules)
    return jax.tree.map(lambda x: _place_rows(x, sharding, mesh, rules), batch)


@dataclasses.dataclass
class HostShardedSource:
    """A batch source whose `batch_at(step)` is a global, sharded batch.

    Wraps any source with a deterministic `batch_at(step)` (workbench.training.sources):
    every process asks for the same step, keeps its own rows and hands them to its devices."""

    source: Any
    mesh: Mesh
    rules: ShardingRules = DEFAULT_RULES

    def batch_at(self, step: int):
        return shard_batch(self.source.batch_at(step), self.mesh, self.rules)

    def local_rows(self, global_batch_size: int) -> np.ndarray:
        """Rows of each global batch that this process loads."""
        return process_rows(batch_sharding(self.mesh, self.rules), (global_batch_size,))


def to_host(x) -> np.ndarray:
    """The full value of an array as numpy on every process (gathers across hosts when needed)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
