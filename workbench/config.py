"""Configs are data: frozen dataclasses with named presets, saved with every run.

`to_dict` / `from_dict` turn any (nested) config dataclass into JSON and back, so a
run directory's `config.json` rebuilds exactly the objects that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> Any:
    """A JSON-ready copy of a (nested) dataclass config."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        fields = {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
        registered = getattr(type(config), "name", None)  # a registered object (a policy, a process) says which
        return {"name": registered, **fields} if isinstance(registered, str) and registered else fields
    if isinstance(config, (list, tuple)):
        return [to_dict(x) for x in config]
    if isinstance(config, dict):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, Path):
        return str(config)
    return config


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a dataclass config (nested dataclasses and tuples included) from `to_dict` output."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} for {cls.__name__}; expected a subset of {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value)
    return cls(**kwargs)


def _coerce(hint, value):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(arg, value)
            except (TypeError, ValueError):
                continue
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value))
    return value


def save_json(path: Path | str, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_dict(data), indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def load_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())
