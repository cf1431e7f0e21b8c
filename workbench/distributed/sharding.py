"""Logical axis names -> mesh axes, and placing parameters, optimizer state and batches.

Model code stays sharding-free: each parameter's logical axes come from its path (a table
of patterns below), the logical -> mesh table turns them into a PartitionSpec, and
jit/GSPMD propagates shardings through the computation from the placed inputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Optional, Sequence, Union

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = Union[None, str, tuple[str, ...]]

# Logical axis -> mesh axes (None: replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("norm", None),
)

# Parameter path pattern (searched in "a/b/0/c") -> logical axes of its dimensions.
PARAM_LOGICAL_AXES: tuple[tuple[str, tuple[Optional[str], ...]], ...] = (
    (r"(^|/)(embedding|lm_head)$", ("vocab", "embed")),
    (r"(^|/)q/kernel$", ("embed", "heads")),
    (r"(^|/)(k|v)/kernel$", ("embed", "kv_heads")),
    (r"(^|/)o/kernel$", ("heads", "embed")),
    (r"(^|/)(gate|up)/kernel$", ("embed", "mlp")),
    (r"(^|/)down/kernel$", ("mlp", "embed")),
    (r"norm/scale$", ("norm",)),
)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Both tables together (hashable, so it can be a static jit argument)."""

    logical: tuple[tuple[str, MeshAxes], ...] = LOGICAL_AXIS_RULES
    params: tuple[tuple[str, tuple[Optional[str], ...]], ...] = PARAM_LOGICAL_AXES

    def mesh_axes(self, logical: Optional[str]) -> tuple[str, ...]:
        if logical is None:
            return ()
        table = dict(self.logical)
        if logical not in table:
            raise ValueError(f"unknown logical axis {logical!r}; the rules name {sorted(table)}")
        axes = table[logical]
        return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)

    def param_axes(self, path: str) -> Optional[tuple[Optional[str], ...]]:
        for pattern, axes in self.params:
            if re.search(pattern, path):
                return axes
        return None


DEFAULT_RULES = ShardingRules()


def logical_spec(
    logical_axes: Sequence[Optional[str]],
    shape: Sequence[int],
    mesh: Mesh,
    rules: ShardingRules = DEFAULT_RULES,
    what: str = "array",
) -> PartitionSpec:
    """PartitionSpec of an array whose dimensions carry `logical_axes`.

    A mesh axis already used by an earlier dimension is not used again (e.g. an activation
    [batch, embed] keeps fsdp for the batch). Axes of size 1 are left out, so specs come out
    in the normal form jit returns and a step's outputs match its inputs (no recompilation).
    Raises when a dimension does not divide by the product of its mesh axes."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"{what}: {len(logical_axes)} logical axes {tuple(logical_axes)} for shape {tuple(shape)}")
    used: set[str] = set()
    entries = []
    for dim, (logical, size) in enumerate(zip(logical_axes, shape)):
        axes = tuple(a for a in rules.mesh_axes(logical) if a not in used and mesh.shape[a] > 1)
        ways = math.prod(mesh.shape[a] for a in axes)
        if size % ways:
            raise ValueError(
                f"{what}: dimension {dim} (logical {logical!r}) has size {size}, which is not divisible by "
                f"{'*'.join(f'{a}={mesh.shape[a]}' for a in axes)} = {ways} devices; change that size or the "
                f"mesh shape ({', '.join(f'{k}={v}' for k, v in mesh.shape.items())})"
            )
        used.update(axes)
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def path_str(path) -> str:
    """'blocks/0/attn/q/kernel' from a pytree key path."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def state_spec(path: str, shape: Sequence[int], mesh: Mesh, rules: ShardingRules, strict: bool) -> PartitionSpec:
    """Spec of one state leaf. `strict` (parameters): every non-scalar leaf needs a rule of
    its rank. Otherwise (optimizer state) leaves without one, or whose rank differs from
    the rule's (factored statistics), are replicated."""
    axes = rules.param_axes(path)
    if axes is not None and len(axes) == len(shape):
        return logical_spec(axes, shape, mesh, rules, what=f"parameter {path!r} of shape {tuple(shape)}")
    if strict and len(shape) > 0:
        found = "no rule matches it" if axes is None else f"its rule gives {len(axes)} axes {axes}"
        raise ValueError(
            f"cannot shard parameter {path!r} of shape {tuple(shape)}: {found}; add a (path pattern, logical "
            f"axes) entry to workbench.distributed.sharding.PARAM_LOGICAL_AXES (or ShardingRules(params=...))"
        )
    return PartitionSpec()


def _map_module(module: nnx.Module, fn, mesh: Mesh, rules: ShardingRules, strict: bool) -> None:
    """Replace every state leaf x of `module` by fn(x, NamedSharding), in place."""
    state = nnx.state(module)
    pure = nnx.to_pure_dict(state)

    def place(path, x):
        return fn(x, NamedSharding(mesh, state_spec(path_str(path), np.shape(x), mesh, rules, strict)))

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(place, pure))
    nnx.update(module, state)


def _put(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if not sharding.is_fully_addressable and not (isinstance(x, jax.Array) and not x.is_fully_addressable):
        # Multi-host, from a local copy that every process holds alike (same seed): each
        # process hands its own devices their slices, with no cross-host traffic.
        local = np.asarray(x)
        return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])
    return jax.device_put(x, sharding)


def shard_module(module: nnx.Module, mesh: Mesh, *, strict: bool = True, rules: ShardingRules = DEFAULT_RULES) -> None:
    """Move a model's parameters (strict) or an optimizer's state (strict=False) onto the mesh, in place."""
    _map_module(module, _put, mesh, rules, strict)


def build_sharded(build: Callable[[], nnx.Module], mesh: Mesh, *, rules: ShardingRules = DEFAULT_RULES) -> nnx.Module:
    """`build()` (e.g. `lambda: build_model(config, 0)`) run under jit with every parameter
    created on its mesh sharding, so no device ever holds the whole model. The values equal
    an eager `build()` to float32 rounding (jit fuses the initializers' scaling)."""

    @nnx.jit
    def create():
        module = build()
        constrain_module(module, mesh, rules=rules)
        return module

    return create()


def place_zeros(module: nnx.Module, mesh: Mesh, *, strict: bool = True, rules: ShardingRules = DEFAULT_RULES) -> None:
    """Fill an abstract module (from `nnx.eval_shape`) with zeros created on their mesh
    shardings, e.g. as the target of a checkpoint restore."""
    _map_module(module, lambda x, sharding: jax.numpy.zeros(np.shape(x), x.dtype, device=sharding), mesh, rules, strict)


def constrain_module(module: nnx.Module, mesh: Mesh, *, strict: bool = True, rules: ShardingRules = DEFAULT_RULES) -> None:
    """Inside jit: pin the module's state to its mesh shardings, so updated parameters stay
    where `shard_module` put them instead of wherever propagation would leave them."""
    _map_module(module, jax.lax.with_sharding_constraint, mesh, rules, strict)


def batch_sharding(mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> NamedSharding:
    """Leading (batch) dimension split over the batch axes, the rest replicated."""
    axes = tuple(a for a in rules.mesh_axes("batch") if mesh.shape[a] > 1)
    return NamedSharding(mesh, PartitionSpec(axes[0] if len(axes) == 1 else axes) if axes else PartitionSpec())


def check_batch_size(size: int, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> None:
    axes = rules.mesh_axes("batch")
    ways = math.prod(mesh.shape[a] for a in axes)
    if size % ways:
        raise ValueError(
            f"batch size {size} is not divisible by the batch axes {'*'.join(f'{a}={mesh.shape[a]}' for a in axes)} "
            f"= {ways}; use a batch size that is a multiple of {ways} or a mesh with fewer data/fsdp devices"
        )


def constrain_batch(tree, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES):
    """Inside jit: split every leaf of `tree` (a Batch, arrays) along its leading dimension."""
    sharding = batch_sharding(mesh, rules)

    def pin(x):
        check_batch_size(x.shape[0], mesh, rules)
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(pin, tree)


def describe_shardings(module: nnx.Module) -> dict[str, str]:
    """path -> the PartitionSpec each state leaf is actually placed with (for logs and tests)."""
    pure = nnx.to_pure_dict(nnx.state(module))
    flat = jax.tree_util.tree_leaves_with_path(pure)
    return {path_str(p): str(getattr(x.sharding, "spec", x.sharding)) for p, x in flat}

