"""Low-rank adapters (LoRA) on a frozen base, switchable per position.

`with_lora(model, LoRAConfig(...))` returns the same network with every targeted projection a
`LoRALinear` (W + scale * A @ B, B zero at the start) and every base weight a `Frozen`
variable, which is not an `nnx.Param`: the trainer's optimizer (`wrt=nnx.Param`) and its
checkpoints then hold the adapter and the few trainable extras only (`ModelConfig.lora`).

The adapter's contribution is gated by `adapter_gate(...)` around a forward: off (exactly the
base network, so one copy of the weights serves as the frozen AR teacher and verifier), on
(the default), or a [B, T] array that switches it on for some positions of a pass only (a
pass that verifies with the base model and drafts with the adapter at once). The gate is
read when the forward is traced, so it is set inside the jitted function.

`merge_lora` folds the adapter into plain weights (for export); `base_fingerprint` names the
base an adapter belongs to (`workbench.pretrained.peft` refuses another).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.models.config import LoRAConfig, ModelConfig


class Frozen(nnx.Variable):
    """A base weight under an adapter: part of the model's state, never trained or checkpointed."""


class LoRAParam(nnx.Param):
    """An adapter weight (trained)."""


Gate = Union[None, bool, jax.Array]
_GATE: contextvars.ContextVar[Gate] = contextvars.ContextVar("adapter_gate", default=None)

# Our projection attribute -> its Hugging Face / PEFT module name.
HF_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
            "down": "down_proj"}


@contextlib.contextmanager
def adapter_gate(gate: Gate):
    """Within the block, adapters are on (True or None), off (False: the base network
    exactly), or scaled per position by `gate` [B, T] (1.0 on, 0.0 off) of the sequence being run."""
    if gate is not None and not isinstance(gate, bool):
        gate = jnp.asarray(gate)
        if gate.ndim != 2:
            raise ValueError(f"adapter_gate: expected a [batch, positions] array, got shape {gate.shape}")
    token = _GATE.set(gate)
    try:
        yield
    finally:
        _GATE.reset(token)


def current_gate() -> Gate:
    return _GATE.get()


class LoRALinear(nnx.Module):
    """y = x @ kernel (+ bias) + gate * scale * (x @ lora_a) @ lora_b; kernel and bias frozen."""

    def __init__(self, d_in: int, d_out: int, *, rank: int, scale: float, dtype, bias: bool, std: float,
                 rngs: nnx.Rngs):
        self.kernel = Frozen(jax.random.normal(rngs.params(), (d_in, d_out), jnp.float32) * std)
        self.bias = Frozen(jnp.zeros((d_out,), jnp.float32)) if bias else None
        bound = d_in**-0.5  # PEFT's default: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0
        self.lora_a = LoRAParam(jax.random.uniform(rngs.params(), (d_in, rank), jnp.float32, -bound, bound))
        self.lora_b = LoRAParam(jnp.zeros((rank, d_out), jnp.float32))
        self.scale = scale
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = jnp.dot(x, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return add_adapter(y, x, self.lora_a[...], self.lora_b[...], self.scale, self.dtype)


def add_adapter(y: jax.Array, x: jax.Array, lora_a, lora_b, scale: float, dtype) -> jax.Array:
    """y + gate * scale * (x @ A) @ B under the current `adapter_gate` (y itself when it is off): the
    adapter term of `LoRALinear`, shared with the int8 base of `workbench.models.quantized`."""
    gate = current_gate()
    if gate is False:
        return y
    delta = jnp.dot(jnp.dot(x, lora_a.astype(dtype)), lora_b.astype(dtype))
    delta = delta * jnp.asarray(scale, dtype)
    if gate is not None and gate is not True:
        delta = delta * gate.astype(dtype)[..., None]
    return y + delta


def freeze_base(model: nnx.Module, config: LoRAConfig) -> None:
    """Make every `nnx.Param` that is not an adapter weight `Frozen` (RMSNorm scales stay
    trainable with `train_norms`). Called once by the models when `ModelConfig.lora` is set."""
    from workbench.models.layers import RMSNorm

    changes = []
    for _, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        for name, value in vars(node).items():
            if isinstance(value, nnx.Param) and not isinstance(value, LoRAParam):
                if config.train_norms and isinstance(node, RMSNorm):
                    continue
                changes.append((node, name, value))
    for node, name, value in changes:
        setattr(node, name, Frozen(value[...]))


def _pure(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model))


def _flat(tree: dict, prefix=()) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _set_pure(model, values: dict) -> None:
    """Write {path tuple: array} into `model`'s state (any variable type)."""
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    for path, value in values.items():
        node = pure
        for key in path[:-1]:
            node = node[key]
        if path[-1] not in node:
            raise KeyError(f"no parameter at {'/'.join(map(str, path))}")
        if tuple(node[path[-1]].shape) != tuple(np.shape(value)):
            raise ValueError(f"{'/'.join(map(str, path))}: shape {np.shape(value)} where the model has "
                             f"{tuple(node[path[-1]].shape)}")
        node[path[-1]] = jnp.asarray(value, node[path[-1]].dtype)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def with_lora(model, config: LoRAConfig, seed: int = 0):
    """The same base weights (bitwise) under fresh adapters of `config`; `model` is untouched.
    The result's outputs equal `model`'s bitwise until the adapter trains (B starts at zero)."""
    from workbench.models.transformer import build_model

    if model.config.lora is not None:
        raise ValueError(f"this model already has adapters ({model.config.lora}); merge them first "
                         "(merge_lora) or start from the base model")
    new = build_model(model.config.replace(lora=config), seed)
    base = _flat(_pure(model))
    _set_pure(new, base)
    return new


def adapter_values(model) -> dict:
    """{path tuple: array} of everything an adapter run trains (the `nnx.Param` state)."""
    return _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def merge_lora(model):
    """A model without adapters whose weights are the base plus each adapter (W + scale * A @ B,
    embedding rows + their deltas); trained norm scales are kept. For `save_pretrained`."""
    from workbench.models.transformer import build_model

    lora = model.config.lora
    if lora is None:
        raise ValueError("merge_lora: this model has no adapters (ModelConfig.lora is None)")
    values = _flat(_pure(model))
    merged = {}
    for path, value in values.items():
        if path[-1] in ("lora_a", "lora_b", "row_delta"):
            continue
        if path[-1] == "kernel" and path[:-1] + ("lora_a",) in values:
            a, b = values[path[:-1] + ("lora_a",)], values[path[:-1] + ("lora_b",)]
            value = np.asarray(value, np.float32) + lora.scale * (np.asarray(a, np.float64) @ np.asarray(b, np.float64)
                                                                  ).astype(np.float32)
        merged[path] = value
    rows = values.get(("embedder", "row_delta"))
    if rows is not None:
        table = np.array(merged[("embedder", "embedding")], np.float32)
        table[list(lora.trainable_rows)] += np.asarray(rows, np.float32)
        merged[("embedder", "embedding")] = table
    new = nnx.eval_shape(lambda: build_model(model.config.replace(lora=None), 0))
    new_state = nnx.state(new)
    pure = nnx.to_pure_dict(new_state)
    flat_new = _flat(pure)
    missing = set(flat_new) - set(merged)
    if missing:
        raise ValueError(f"merge_lora: no values for {sorted(missing)[:3]}")
    for path in flat_new:
        node = pure
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = jnp.asarray(merged[path], jnp.float32)
    nnx.replace_by_pure_dict(new_state, pure)
    nnx.update(new, new_state)
    return new


def base_fingerprint(model) -> str:
    """sha256 over the frozen base weights (`Frozen` state, path order, float32 bytes) of an
    adapted model: the identity an adapter is saved against. Apply the same `LoRAConfig` to a
    candidate base (`with_lora`) and compare fingerprints to check it is the right base."""
    if model.config.lora is None:
        raise ValueError("base_fingerprint takes an adapted model (with_lora(base, config)): which weights are "
                         "the frozen base depends on the LoRAConfig")
    values = _flat(nnx.to_pure_dict(nnx.state(model, Frozen)))
    digest = hashlib.sha256()
    for path in sorted(values, key=lambda p: tuple(map(str, p))):
        digest.update("/".join(map(str, path)).encode())
        digest.update(np.ascontiguousarray(np.asarray(values[path], np.float32)).tobytes())
    return digest.hexdigest()


def adapter_summary(model) -> Optional[dict]:
    """Counts for reports: trainable and frozen parameters."""
    if model.config.lora is None:
        return None
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    return {"trainable": count(nnx.state(model, nnx.Param)), "frozen": count(nnx.state(model, Frozen))}
