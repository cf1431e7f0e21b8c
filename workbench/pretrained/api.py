"""`load_pretrained(source)`: a real pretrained AR checkpoint as a workbench `DecoderOnly`.

Sources: the embedded default by short name (`"smollm2-135m"`), a llama GGUF file, a Hugging
Face folder (Llama family, Qwen2/2.5, Qwen3; sharded too), or a hub id (downloaded; untested
here). Parameters are float32; `dtype` is the compute dtype and `attention` the mask kind, so
the same weights load as an AR model or as the start of an AR2Diff conversion.

The tokenizer is one field of the result, built from `source.tokenizer_file` (the GGUF file,
through the reader the weights opened, or the folder's tokenizer.json) and checked against the
model's vocabulary; `with_mask_token` (workbench.pretrained.masking) readies both for masked
diffusion.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from workbench.models.config import AttentionKind, ModelConfig, default_compute_dtype
from workbench.models.transformer import DecoderOnly
from workbench.pretrained import hub
from workbench.pretrained.convert import model_from_tensors
from workbench.pretrained.errors import UnknownModelError, VocabularyMismatchError
from workbench.pretrained.gguf_reader import GGUFSource
from workbench.pretrained.hf_config import WORKBENCH_KEY, apply_workbench_record, model_config_from_hf
from workbench.pretrained.hf_folder import SafetensorsSource, chat_template, license_from_readme, read_json


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """Where a model came from and what ships with it besides the weights."""

    kind: str  # "embedded" | "gguf" | "hf_folder" | "hub"
    location: str  # the short name, file, folder or hub id as given
    path: str  # the local file or folder read
    name: Optional[str] = None  # the model's own name, if its files give one
    license: Optional[str] = None
    architecture: Optional[str] = None  # Hugging Face model_type
    chat_template: Optional[str] = None  # Jinja template string of instruct models
    token_ids: dict[str, int] = dataclasses.field(default_factory=dict)  # bos/eos/pad/unk as the files say
    tokenizer_file: Optional[str] = None  # what the tokenizer is built from (GGUF file or tokenizer.json)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """An imported model, its config, source and tokenizer (`load_pretrained` builds it from
    `source.tokenizer_file`; None only for a folder without tokenizer.json or `tokenizer=False`)."""

    model: DecoderOnly
    config: ModelConfig
    source: SourceInfo
    tokenizer: Any = None


def _gguf(path: Path, kind: str, location: str) -> tuple[SourceInfo, dict, GGUFSource]:
    src = GGUFSource(path)
    m = src.metadata
    ids = {
        role: int(m[f"tokenizer.ggml.{key}_token_id"])
        for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))
        if f"tokenizer.ggml.{key}_token_id" in m
    }
    info = SourceInfo(
        kind=kind,
        location=location,
        path=str(path),
        name=m.get("general.name"),
        license=m.get("general.license"),
        architecture=src.hf_config["model_type"],
        chat_template=m.get("tokenizer.chat_template"),
        token_ids=ids,
        tokenizer_file=str(path),
    )
    return info, src.hf_config, src


def _folder(folder: Path, kind: str, location: str) -> tuple[SourceInfo, dict, SafetensorsSource]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UnknownModelError(f"{folder} has no config.json; a Hugging Face model folder needs one")
    hf = read_json(config_path)
    ids = {role: hf[f"{role}_token_id"] for role in ("bos", "eos", "pad") if isinstance(hf.get(f"{role}_token_id"), int)}
    tokenizer_json = folder / "tokenizer.json"
    record = hf.get(WORKBENCH_KEY, {})
    info = SourceInfo(
        kind=kind,
        location=location,
        path=str(folder),
        name=record.get("name") or hf.get("_name_or_path") or folder.name,
        license=record.get("license") or license_from_readme(folder),
        architecture=hf.get("model_type"),
        chat_template=chat_template(folder),
        token_ids=ids,
        tokenizer_file=str(tokenizer_json) if tokenizer_json.is_file() else None,
    )
    return info, hf, SafetensorsSource(folder)


def _resolve(source: str | Path, revision: Optional[str], cache_dir: Optional[str]):
    text = str(source)
    path = Path(source).expanduser()
    if text in hub.EMBEDDED:
        return _gguf(hub.embedded_path(text), "embedded", text)
    if path.is_file():
        if path.suffix != ".gguf":
            raise UnknownModelError(
                f"{path} is a file but not a .gguf; pass a GGUF file, a Hugging Face model folder "
                f"(config.json + *.safetensors), a hub id or one of {sorted(hub.EMBEDDED)}"
            )
        return _gguf(path, "gguf", text)
    if path.is_dir():
        return _folder(path, "hf_folder", text)
    if isinstance(source, str) and hub.is_hub_id(text):
        return _folder(hub.download(text, revision=revision, cache_dir=cache_dir), "hub", text)
    raise UnknownModelError(
        f"unknown model source {text!r}: not a short name {sorted(hub.EMBEDDED)}, an existing .gguf file or "
        f"model folder, or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'"
    )


def load_pretrained(
    source: str | Path = hub.DEFAULT_MODEL,
    *,
    dtype: Optional[str] = None,
    attention: Optional[AttentionKind] = None,
    max_len: Optional[int] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    tokenizer: bool = True,
) -> Pretrained:
    """Load a pretrained decoder-only model (float32 parameters).

    dtype: compute dtype (default: a workbench export's own, else `default_compute_dtype()`).
    attention: mask kind (default: a workbench export's own, else 'causal').
    max_len: cap the model's context (default: the checkpoint's, e.g. 8192).
    revision / cache_dir: for hub ids only.
    tokenizer: build the tokenizer from the source (a GGUF's metadata, or the folder's
        tokenizer.json) and check that it fits the model's vocabulary.
    """
    info, hf, tensors = _resolve(source, revision, cache_dir)
    where = f"{info.kind} {info.location!r}"
    exported = WORKBENCH_KEY in hf
    config = apply_workbench_record(model_config_from_hf(hf, where=where), hf, where=where)
    if not exported:
        config = config.replace(dtype=default_compute_dtype())
    changes = {k: v for k, v in (("dtype", dtype), ("attention", attention), ("max_len", max_len)) if v is not None}
    config = config.replace(**changes)
    text_tokenizer = _tokenizer(info, tensors, config.vocab_size, where) if tokenizer else None
    model = model_from_tensors(config, tensors, where)
    return Pretrained(model=model, config=config, source=info, tokenizer=text_tokenizer)


def _tokenizer(info: SourceInfo, tensors, vocab_size: int, where: str):
    """The source's tokenizer, checked against the model's embedding rows. A GGUF's is read
    through the reader the weights already opened (opening the file again takes seconds)."""
    from workbench.data.hf_tokenizer import HFTokenizer
    from workbench.data.text_tokenizer import check_vocab_matches

    if isinstance(tensors, GGUFSource):
        if "tokenizer.ggml.model" not in tensors.reader.fields:
            return None  # a weights-only GGUF carries no tokenizer
        built = HFTokenizer.from_gguf(tensors.reader)
    elif info.tokenizer_file is not None:
        built = HFTokenizer.from_folder(info.tokenizer_file)
    else:
        return None
    try:
        # Hugging Face checkpoints may pad the embedding past the vocabulary (Qwen2.5); GGUF files do not.
        check_vocab_matches(built, vocab_size, allow_padding=not isinstance(tensors, GGUFSource))
    except ValueError as err:
        raise VocabularyMismatchError(f"{where}: {err}") from err
    return built
