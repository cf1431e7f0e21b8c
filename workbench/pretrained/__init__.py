"""Pretrained AR checkpoints: import (GGUF, Hugging Face safetensors folders, hub ids, the
embedded SmolLM2-135M default), export as Hugging Face folders, LoRA adapters as PEFT folders
(`save_adapter` / `load_adapter`), and embedding growth."""

from workbench.pretrained.api import Pretrained, SourceInfo, load_pretrained
from workbench.pretrained.embeddings import append_embedding_rows
from workbench.pretrained.errors import (
    AdapterBaseMismatchError,
    AdapterError,
    AdapterExistsError,
    AdapterMismatchError,
    DefaultModelMissingError,
    HubUnavailableError,
    PretrainedError,
    TensorMismatchError,
    UnknownModelError,
    UnsupportedArchitectureError,
    UnsupportedConfigError,
    UnsupportedQuantizationError,
    VocabularyMismatchError,
    NotAnAdapterError,
)
from workbench.pretrained.export import TokenizerFiles, save_pretrained
from workbench.pretrained.hub import DEFAULT_MODEL
from workbench.pretrained.masking import with_mask_token
from workbench.pretrained.peft import load_adapter, save_adapter

__all__ = [
    "AdapterBaseMismatchError",
    "AdapterError",
    "AdapterExistsError",
    "AdapterMismatchError",
    "DEFAULT_MODEL",
    "DefaultModelMissingError",
    "HubUnavailableError",
    "NotAnAdapterError",
    "Pretrained",
    "PretrainedError",
    "SourceInfo",
    "TensorMismatchError",
    "TokenizerFiles",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "UnsupportedConfigError",
    "UnsupportedQuantizationError",
    "VocabularyMismatchError",
    "append_embedding_rows",
    "load_adapter",
    "load_pretrained",
    "save_adapter",
    "save_pretrained",
    "with_mask_token",
]
