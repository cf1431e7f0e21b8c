"""Pretrained AR checkpoints: import (GGUF, Hugging Face safetensors folders, hub ids, the
embedded SmolLM2-135M default), export as Hugging Face folders, and embedding growth."""

from workbench.pretrained.api import Pretrained, SourceInfo, load_pretrained
from workbench.pretrained.embeddings import append_embedding_rows
from workbench.pretrained.errors import (
    DefaultModelMissingError,
    HubUnavailableError,
    PretrainedError,
    TensorMismatchError,
    UnknownModelError,
    UnsupportedArchitectureError,
    UnsupportedConfigError,
    UnsupportedQuantizationError,
    VocabularyMismatchError,
)
from workbench.pretrained.export import TokenizerFiles, save_pretrained
from workbench.pretrained.hub import DEFAULT_MODEL
from workbench.pretrained.masking import with_mask_token

__all__ = [
    "DEFAULT_MODEL",
    "DefaultModelMissingError",
    "HubUnavailableError",
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
    "load_pretrained",
    "save_pretrained",
    "with_mask_token",
]
