"""Tensors in Hugging Face naming <-> the parameters of a workbench `DecoderOnly`."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.models.config import ModelConfig
from workbench.models.transformer import DecoderOnly, build_model
from workbench.pretrained.errors import TensorMismatchError
from workbench.pretrained.families import FAMILIES, tensor_specs
from workbench.pretrained.naming import IGNORED_SUFFIXES, TensorSpec
from workbench.pretrained.tensors import TensorSource


def _param(model: nnx.Module, path) -> nnx.Param:
    obj = model
    for step in path:
        obj = obj[step] if isinstance(step, int) else getattr(obj, step)
    return obj


def check_tensors(config: ModelConfig, shapes: dict[str, tuple[int, ...]], where: str) -> list[TensorSpec]:
    """The specs of `config`, after checking that `shapes` holds exactly those tensors."""
    specs = tensor_specs(config)
    for spec in specs:
        if spec.hf_name not in shapes:
            raise TensorMismatchError(
                f"{where}: tensor {spec.hf_name!r} (shape {spec.hf_shape}) is missing; the config "
                f"(tie_embeddings={config.tie_embeddings}, qkv_bias={config.qkv_bias}, qk_norm={config.qk_norm}) "
                f"needs it: the weights do not belong to this config"
            )
        if tuple(shapes[spec.hf_name]) != spec.hf_shape:
            raise TensorMismatchError(
                f"{where}: tensor {spec.hf_name!r} has shape {tuple(shapes[spec.hf_name])} but the config "
                f"implies {spec.hf_shape}; the weights do not belong to this config"
            )
    expected = {spec.hf_name for spec in specs}
    # A tied checkpoint may still store lm_head.weight (a copy of the embedding): ignored, as transformers does.
    ignored = {"lm_head.weight"} if config.tie_embeddings else set()
    extra = sorted(n for n in shapes if n not in expected and n not in ignored and not n.endswith(IGNORED_SUFFIXES))
    if extra:
        raise TensorMismatchError(
            f"{where}: unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''} ({len(extra)} in all); "
            f"the supported families ({', '.join(f.models for f in FAMILIES.values())}) have no such tensors"
        )
    return specs


def model_from_tensors(config: ModelConfig, source: TensorSource, where: str = "weights") -> DecoderOnly:
    """A DecoderOnly of `config` holding the source's tensors (float32), read one at a time."""
    specs = check_tensors(config, source.shapes(), where)
    model = nnx.eval_shape(lambda: build_model(config, 0))  # no random initialisation
    for spec in specs:
        data = source.load(spec.hf_name)
        _param(model, spec.path).set_value(jnp.asarray(data.T if spec.transpose else data, jnp.float32))
    return model


def tensors_from_model(model: DecoderOnly, config: Optional[ModelConfig] = None) -> dict[str, np.ndarray]:
    """The model's parameters in Hugging Face naming and layout (float32 numpy arrays)."""
    config = model.config if config is None else config
    out = {}
    for spec in tensor_specs(config):
        value = np.asarray(jax.device_get(_param(model, spec.path)[...]), np.float32)
        out[spec.hf_name] = np.ascontiguousarray(value.T if spec.transpose else value)
    return out
