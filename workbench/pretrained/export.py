"""Save a decoder-only model (AR or converted to diffusion) as a Hugging Face folder:
config.json (Llama/Qwen2/Qwen3 keys + the workbench record), model.safetensors (float32),
chat_template.jinja when the source had one, and the tokenizer's files through
`TokenizerFiles`. `load_pretrained(folder)` reads it back bitwise equal.

Hugging Face readers see a causal LM; a diffusion model's attention kind is kept only in the
`workbench` record of config.json, so run it with the workbench (transformers would apply a
causal mask to it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Protocol

from workbench.models.transformer import DecoderOnly
from workbench.pretrained.api import Pretrained, SourceInfo
from workbench.pretrained.convert import tensors_from_model
from workbench.pretrained.errors import PretrainedError
from workbench.pretrained.hf_config import WORKBENCH_KEY, hf_config_from_model
from workbench.pretrained.hf_folder import INDEX_FILE, SINGLE_FILE


class TokenizerFiles(Protocol):
    """The hook for tokenizer files: anything with `save(folder)` that writes tokenizer.json
    (and tokenizer_config.json, special tokens, ...) into `folder`, as `HFTokenizer.save` does."""

    def save(self, folder: str) -> object: ...


def save_pretrained(
    model: DecoderOnly | Pretrained,
    folder: str | Path,
    *,
    source: Optional[SourceInfo] = None,
    tokenizer: Optional[TokenizerFiles] = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (or a `Pretrained`, whose source and tokenizer are then used) to `folder`."""
    if isinstance(model, Pretrained):
        source = model.source if source is None else source
        tokenizer = model.tokenizer if tokenizer is None else tokenizer
        model = model.model
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise PretrainedError(f"{folder} exists and is not empty; pass overwrite=True or choose a new folder")
    extra = {}
    if source is not None:
        extra = {f"{role}_token_id": int(i) for role, i in source.token_ids.items() if role in ("bos", "eos", "pad")}
    config_json = hf_config_from_model(model.config, extra)
    if source is not None:
        config_json[WORKBENCH_KEY].update(name=source.name, license=source.license, converted_from=source.location)
    tensors = tensors_from_model(model)
    from safetensors.numpy import save_file  # only exports need it

    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("model*.safetensors"), folder / INDEX_FILE]:  # an overwritten sharded model
        stale.unlink(missing_ok=True)
    save_file(tensors, str(folder / SINGLE_FILE), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
    if source is not None and source.chat_template:
        (folder / "chat_template.jinja").write_text(source.chat_template, encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(str(folder))
    return folder
