"""Save and load LoRA adapters (`workbench.models.lora`) in the folder layout Hugging Face PEFT reads.

A folder holds two files:

* `adapter_config.json`: PEFT's keys (peft_type "LORA", task_type "CAUSAL_LM", r, lora_alpha,
  target_modules, lora_dropout 0.0, bias "none", fan_in_fan_out false,
  base_model_name_or_path, inference_mode true) and a "workbench" record: format, the full
  `LoRAConfig` (`lora_config`), the base model's fingerprint (`base_fingerprint`: sha256 of the
  frozen base weights, see `workbench.models.lora.base_fingerprint`), `base_name`,
  `trainable_rows`, the names of the workbench-only tensors, and whatever `save_adapter(extra=)` added.
* `adapter_model.safetensors` (float32), PEFT's tensor names for the projections:
  `base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A.weight` [r, in] (our
  `lora_a` transposed) and `.lora_B.weight` [out, r] (our `lora_b` transposed), and
  `...layers.{i}.mlp.{gate,up,down}_proj.lora_{A,B}.weight` likewise. The effective update
  is W_hf + (lora_alpha / r) * B @ A, as in PEFT.

  Workbench-only tensors, which PEFT does not know (it reports them as unexpected keys and
  skips them; only the workbench applies them), are named with the prefix `workbench.`:

  - `workbench.embed_tokens.row_delta` [len(trainable_rows), d_model]: added to the frozen
    embedding rows `trainable_rows` (in that order); with tied embeddings also to those rows'
    output logits (the row is both).
  - `workbench.<hf name of an RMSNorm scale>`, e.g. `workbench.model.layers.0.input_layernorm.weight`
    and `workbench.model.norm.weight`: the trained norm scales of a `train_norms` adapter, which
    replace the base's.

`load_adapter(base, folder)` applies an adapter to a base model after checking that the
base is the one it was trained on (fingerprint), that the recorded `LoRAConfig` fits the base
and the PEFT keys, and that the file holds exactly the tensors, of the shapes, that config
implies. `merge_lora` (workbench.models.lora) + `save_pretrained` export the adapted model
as a plain Hugging Face folder instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from workbench.config import from_dict, to_dict
from workbench.models.config import LoRAConfig
from workbench.models.lora import HF_NAMES, LoRALinear, _set_pure, adapter_values, base_fingerprint, with_lora
from workbench.pretrained.errors import (
    AdapterBaseMismatchError,
    AdapterExistsError,
    AdapterMismatchError,
    NotAnAdapterError,
)
from workbench.pretrained.families import tensor_specs

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
WORKBENCH_PREFIX = "workbench."
ROW_DELTA = WORKBENCH_PREFIX + "embed_tokens.row_delta"
RECORD_KEY = "workbench"
FORMAT = 1
_RESERVED = ("format", "lora_config", "base_fingerprint", "base_name", "trainable_rows", "workbench_tensors")
_ATTENTION = ("q", "k", "v", "o")


@dataclasses.dataclass(frozen=True)
class _Slot:
    name: str  # tensor name in adapter_model.safetensors
    path: tuple  # where it lives in the adapted model's state
    transpose: bool


def _slots(model) -> list[_Slot]:
    """Every trainable tensor of an adapted model, named; refuses a trainable tensor without a name."""
    config = model.config
    slots = []
    for i, block in enumerate(model.blocks):
        for attr, hf in HF_NAMES.items():
            owner, part = (block.attn, "self_attn") if attr in _ATTENTION else (block.mlp, "mlp")
            if isinstance(getattr(owner, attr), LoRALinear):
                prefix = f"{PEFT_PREFIX}model.layers.{i}.{part}.{hf}"
                where = ("blocks", i, "attn" if attr in _ATTENTION else "mlp", attr)
                slots.append(_Slot(prefix + ".lora_A.weight", where + ("lora_a",), True))
                slots.append(_Slot(prefix + ".lora_B.weight", where + ("lora_b",), True))
    if config.lora.trainable_rows:
        slots.append(_Slot(ROW_DELTA, ("embedder", "row_delta"), False))
    trainable = set(adapter_values(model))
    norms = [spec for spec in tensor_specs(config) if spec.path[-1] == "scale" and spec.path in trainable]
    slots += [_Slot(WORKBENCH_PREFIX + spec.hf_name, spec.path, False) for spec in norms]
    unnamed = trainable - {slot.path for slot in slots}
    if unnamed:
        raise AdapterMismatchError(f"trainable tensors without an adapter file name: {sorted(map(str, unnamed))[:4]}")
    return slots


def adapter_tensors(model) -> dict[str, np.ndarray]:
    """The adapter of an adapted model as {tensor name: float32 array} in the file's layout."""
    if model.config.lora is None:
        raise AdapterMismatchError("this model has no adapters (ModelConfig.lora is None): nothing to save")
    values = adapter_values(model)
    out = {}
    for slot in _slots(model):
        value = np.asarray(jax.device_get(values[slot.path]), np.float32)
        out[slot.name] = np.ascontiguousarray(value.T if slot.transpose else value)
    return out


def adapter_config_json(model, *, base_name: str, extra: Optional[dict] = None) -> dict[str, Any]:
    lora = model.config.lora
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_adapter: extra keys {clash} are reserved for the adapter record {_RESERVED}")
    names = sorted(adapter_tensors_names(model))
    record = {"format": FORMAT, "lora_config": to_dict(lora), "base_fingerprint": base_fingerprint(model),
              "base_name": base_name, "trainable_rows": list(lora.trainable_rows),
              "workbench_tensors": [n for n in names if n.startswith(WORKBENCH_PREFIX)], **extra}
    json.dumps(record)  # refuse what JSON cannot hold before anything is written
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": sorted(lora.targets),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "base_model_name_or_path": base_name,
        "inference_mode": True,
        RECORD_KEY: record,
    }


def adapter_tensors_names(model) -> list[str]:
    return [slot.name for slot in _slots(model)]


def _is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file()


def _same_files(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))


def save_adapter(model, folder: str | Path, *, base_name: str, extra: Optional[dict] = None,
                 overwrite: bool = False) -> Path:
    """Write the adapter of `model` (an adapted model: `with_lora`) to `folder`, atomically
    (a temporary folder beside it, then a rename). An existing folder holding the same
    adapter is left as it is; a different adapter is replaced only with `overwrite=True`;
    a non-empty folder that is no adapter is never replaced."""
    from safetensors.numpy import save_file  # only adapter files need it

    folder = Path(folder)
    tensors = adapter_tensors(model)
    config_json = adapter_config_json(model, base_name=base_name, extra=extra)
    exists = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    if exists and not (folder.is_dir() and _is_adapter_folder(folder)):
        raise AdapterExistsError(f"{folder} exists and is not an adapter folder ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}); "
                                 f"choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
        if exists:
            if _same_files(tmp, folder):
                shutil.rmtree(tmp)
                return folder
            if not overwrite:
                raise AdapterExistsError(f"{folder} holds a different adapter; pass overwrite=True to replace it "
                                         f"or choose a new folder")
            old = folder.parent / f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old)
        else:
            if folder.is_dir():
                folder.rmdir()  # empty
            os.rename(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def read_adapter_config(folder: str | Path) -> tuple[dict, LoRAConfig]:
    """The adapter_config.json of a workbench adapter folder and its LoRAConfig (checked against the PEFT keys)."""
    folder = Path(folder)
    if not folder.is_dir() or not _is_adapter_folder(folder):
        raise NotAnAdapterError(f"{folder} is not an adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    where = folder / ADAPTER_CONFIG
    try:
        config_json = json.loads(where.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotAnAdapterError(f"{where} is not JSON: {error}") from None
    if not isinstance(config_json, dict) or config_json.get("peft_type") != "LORA":
        found = config_json.get("peft_type") if isinstance(config_json, dict) else type(config_json).__name__
        raise NotAnAdapterError(f"{where}: peft_type is {found!r}; only LoRA adapters (peft_type 'LORA') load")
    record = config_json.get(RECORD_KEY)
    if not isinstance(record, dict) or "lora_config" not in record or "base_fingerprint" not in record:
        raise NotAnAdapterError(f"{where} has no {RECORD_KEY!r} record (a PEFT adapter not saved by the workbench): "
                                f"without its base fingerprint the base it belongs to cannot be checked")
    if record.get("format") != FORMAT:
        raise NotAnAdapterError(f"{where}: adapter record format {record.get('format')!r}; this workbench reads {FORMAT}")
    try:
        lora = from_dict(LoRAConfig, record["lora_config"])
    except (TypeError, ValueError) as error:
        raise AdapterMismatchError(f"{where}: the recorded LoRAConfig is invalid: {error}") from None
    peft = {"r": lora.rank, "lora_alpha": lora.alpha, "target_modules": sorted(lora.targets),
            "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False}
    found = {k: config_json.get(k) for k in peft}
    if isinstance(found["target_modules"], list):
        found["target_modules"] = sorted(found["target_modules"])
    differ = [k for k in peft if found[k] != peft[k]]
    if differ:
        raise AdapterMismatchError(f"{where}: the PEFT keys {differ} ({[found[k] for k in differ]}) disagree with the "
                                   f"recorded LoRAConfig ({[peft[k] for k in differ]}); the file was edited by hand")
    return config_json, lora


def load_adapter(base_model, folder: str | Path):
    """`base_model` (no adapters) under the adapter saved in `folder`: a new adapted model; the
    base model is untouched. Refuses (named errors, `workbench.pretrained.errors`) a folder that
    is no adapter, a base whose fingerprint differs from the recorded one, a LoRAConfig that does
    not fit the base, and a file with missing, extra or misshapen tensors."""
    from safetensors import safe_open

    folder = Path(folder)
    config_json, lora = read_adapter_config(folder)
    record = config_json[RECORD_KEY]
    if base_model.config.lora is not None:
        raise AdapterMismatchError(f"load_adapter takes the base model; this one already has adapters "
                                   f"({base_model.config.lora}); merge them (merge_lora) or pass the base")
    try:
        adapted = with_lora(base_model, lora)
    except ValueError as error:
        raise AdapterMismatchError(f"{folder}: the adapter's LoRAConfig does not fit this base model: {error}") from None
    fingerprint = base_fingerprint(adapted)
    if fingerprint != record["base_fingerprint"]:
        raise AdapterBaseMismatchError(
            f"{folder} was trained on base {record.get('base_name')!r} with fingerprint {record['base_fingerprint']}; "
            f"this base model's fingerprint is {fingerprint} (other weights): load it on that base")
    slots = {slot.name: slot for slot in _slots(adapted)}
    values = adapter_values(adapted)
    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="numpy") as f:
        names = set(f.keys())
        missing, extra = sorted(set(slots) - names), sorted(names - set(slots))
        if missing or extra:
            raise AdapterMismatchError(
                f"{folder / ADAPTER_WEIGHTS}: " + "; ".join(
                    part for part in (f"missing tensors {missing[:6]}" if missing else "",
                                      f"unexpected tensors {extra[:6]}" if extra else "") if part)
                + f" for the recorded LoRAConfig {lora}")
        loaded = {}
        for name, slot in slots.items():
            data = f.get_tensor(name)
            data = data.T if slot.transpose else data
            want = tuple(values[slot.path].shape)
            if tuple(data.shape) != want:
                shown = tuple(reversed(want)) if slot.transpose else want
                raise AdapterMismatchError(f"{folder / ADAPTER_WEIGHTS}: tensor {name!r} has shape "
                                           f"{tuple(f.get_tensor(name).shape)}; the base under {lora} needs {shown}")
            loaded[slot.path] = np.asarray(data, np.float32)
    _set_pure(adapted, loaded)
    return adapted
