"""Datasets (one registry, a common `inputs`/`targets` schema) and the tokenizers: SentencePiece for the
from-scratch path, Hugging Face `tokenizers` (from GGUF or tokenizer.json) for imported models, one interface."""

from workbench.data.files import (
    DATA_DIR_ENV,
    DataError,
    LoadStats,
    MalformedRecordError,
    MissingDataFileError,
    load_stats,
    resolve_data_dir,
)
from workbench.data.registry import clear_cache, data_files, dataset_splits, list_datasets, load_dataset
from workbench.data.chat import ChatTemplateError, render_chat
from workbench.data.gguf_vocab import UnsupportedTokenizerError
from workbench.data.hf_tokenizer import HFTokenizer, load_tokenizer
from workbench.data.special import MaskToken, SpecialIds
from workbench.data.text_tokenizer import TextTokenizer, check_vocab_matches
from workbench.data.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

__all__ = [
    "ChatTemplateError",
    "DATA_DIR_ENV",
    "DataError",
    "HFTokenizer",
    "LoadStats",
    "MalformedRecordError",
    "MaskToken",
    "MissingDataFileError",
    "SpecialIds",
    "TextTokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "UnsupportedTokenizerError",
    "check_vocab_matches",
    "clear_cache",
    "data_files",
    "dataset_splits",
    "list_datasets",
    "load_dataset",
    "load_stats",
    "load_tokenizer",
    "render_chat",
    "resolve_data_dir",
    "train_tokenizer",
]
