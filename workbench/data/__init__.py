"""Datasets (one registry, a common `inputs`/`targets` schema) and the SentencePiece tokenizer."""

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
from workbench.data.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

__all__ = [
    "DATA_DIR_ENV",
    "DataError",
    "LoadStats",
    "MalformedRecordError",
    "MissingDataFileError",
    "Tokenizer",
    "TokenizerConfig",
    "clear_cache",
    "data_files",
    "dataset_splits",
    "list_datasets",
    "load_dataset",
    "load_stats",
    "resolve_data_dir",
    "train_tokenizer",
]
