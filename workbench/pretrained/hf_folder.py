"""Hugging Face model folders: `config.json` + `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Tensors in float32/bfloat16/float16 are read as float32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from workbench.pretrained.errors import TensorMismatchError, UnknownModelError, UnsupportedQuantizationError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SUPPORTED_DTYPES = ("F32", "BF16", "F16")


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class SafetensorsSource:
    """The weights of a Hugging Face folder as a tensor source (shards opened lazily)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if (self.folder / INDEX_FILE).is_file():
            weight_map = read_json(self.folder / INDEX_FILE)["weight_map"]
        elif (self.folder / SINGLE_FILE).is_file():
            weight_map = None
        else:
            found = sorted(p.name for p in self.folder.iterdir())
            raise UnknownModelError(
                f"{self.folder}: no {SINGLE_FILE} or {INDEX_FILE} (found {found}); a Hugging Face folder needs "
                f"safetensors weights (convert .bin/.pth checkpoints with transformers' save_pretrained)"
            )
        from safetensors import safe_open  # only folders need it

        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        self._files = {}
        self._shapes = {}
        self._where = {}
        for name in files:
            path = self.folder / name
            if not path.is_file():
                raise TensorMismatchError(f"{self.folder}: shard {name!r} listed in {INDEX_FILE} is missing")
            handle = safe_open(str(path), framework="numpy")
            self._files[name] = handle
            for key in handle.keys():
                dtype = handle.get_slice(key).get_dtype()
                if dtype not in SUPPORTED_DTYPES:
                    raise UnsupportedQuantizationError(
                        f"{path.name}: tensor {key!r} has dtype {dtype}; supported: {list(SUPPORTED_DTYPES)} "
                        f"(quantised safetensors such as GPTQ/AWQ/bitsandbytes are not supported)"
                    )
                self._shapes[key] = tuple(int(n) for n in handle.get_slice(key).get_shape())
                self._where[key] = name

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def load(self, name: str) -> np.ndarray:
        return np.asarray(self._files[self._where[name]].get_tensor(name), dtype=np.float32)


def chat_template(folder: Path) -> Optional[str]:
    """The chat template shipped with a folder (chat_template.jinja, or tokenizer_config.json)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = read_json(config).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def license_from_readme(folder: Path) -> Optional[str]:
    """The `license:` of a hub model card's front matter (README.md), if there is one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        if line.startswith("license:"):
            return line.split(":", 1)[1].strip().strip("'\"") or None
    return None
