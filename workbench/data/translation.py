"""WMT14 English -> French: inputs = English, targets = French, raw text (prompts are added elsewhere).

Data-directory protocol (MANIFEST.md): train = news-test2008, newstest2009-2012, newssyscomb2009,
newsdiscusstest2015, Tatoeba test v2021-08-07 and Multi30k train/val (57,768 pairs);
validation = newstest2013 (3,000); test = newstest2014 (3,003).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from workbench.data.files import LoadStats, MalformedRecordError, hash_files, read_lines, require_file

NAME = "wmt14_enfr"
SPLITS = ("train", "validation", "test")

# (source name, English file, French file), relative to the data directory.
_PAIRS = {
    "train": (
        ("news-test2008", "wmt14_enfr/news-test2008.en", "wmt14_enfr/news-test2008.fr"),
        ("newstest2009", "wmt14_enfr/newstest2009.en", "wmt14_enfr/newstest2009.fr"),
        ("newstest2010", "wmt14_enfr/newstest2010.en", "wmt14_enfr/newstest2010.fr"),
        ("newstest2011", "wmt14_enfr/newstest2011.en", "wmt14_enfr/newstest2011.fr"),
        ("newstest2012", "wmt14_enfr/newstest2012.en", "wmt14_enfr/newstest2012.fr"),
        ("newssyscomb2009", "wmt14_enfr/newssyscomb2009.en", "wmt14_enfr/newssyscomb2009.fr"),
        ("newsdiscusstest2015", "wmt14_enfr/newsdiscusstest2015.en", "wmt14_enfr/newsdiscusstest2015.fr"),
        ("tatoeba-v2021-08-07", "wmt14_enfr/tatoeba-test-v2021-08-07.eng", "wmt14_enfr/tatoeba-test-v2021-08-07.fra"),
        ("multi30k-train", "wmt14_enfr/multi30k/train.en.gz", "wmt14_enfr/multi30k/train.fr.gz"),
        ("multi30k-val", "wmt14_enfr/multi30k/val.en.gz", "wmt14_enfr/multi30k/val.fr.gz"),
    ),
    "validation": (("newstest2013", "wmt14_enfr/newstest2013.en", "wmt14_enfr/newstest2013.fr"),),
    "test": (("newstest2014", "wmt14_enfr/newstest2014.en", "wmt14_enfr/newstest2014.fr"),),
}

HUB_PATH, HUB_CONFIG = "wmt/wmt14", "fr-en"


def files(split: str, data_dir: Path) -> dict[str, str]:
    relatives = [path for _, en, fr in _PAIRS[split] for path in (en, fr)]
    for relative in relatives:
        require_file(data_dir, relative, NAME)
    return hash_files(data_dir, relatives)


@functools.lru_cache(maxsize=8)
def build(split: str, data_dir: Path) -> tuple[dict, LoadStats]:
    """Rows of one split from the data directory: id 'source:line', inputs (en), targets (fr), source."""
    stats = LoadStats(source=f"data_dir:{data_dir}")
    columns = {"id": [], "inputs": [], "targets": [], "source": []}
    for source, en_relative, fr_relative in _PAIRS[split]:
        en_path = require_file(data_dir, en_relative, NAME)
        fr_path = require_file(data_dir, fr_relative, NAME)
        english, french = read_lines(en_path), read_lines(fr_path)
        if len(english) != len(french):
            raise MalformedRecordError(
                f"{en_path} has {len(english)} lines but {fr_path} has {len(french)}; "
                f"expected parallel files with one sentence per line"
            )
        for number, (en, fr) in enumerate(zip(english, french), start=1):
            en, fr = en.strip(), fr.strip()
            if not en or not fr:
                stats.skip(f"empty_pair:{source}")
                continue
            columns["id"].append(f"{source}:{number}")
            columns["inputs"].append(en)
            columns["targets"].append(fr)
            columns["source"].append(source)
        stats.notes[source] = len(english)
    return columns, stats


def build_from_hub(split: str, limit: Optional[int]) -> tuple[dict, LoadStats]:
    """UNTESTED HERE (no hub access): the full WMT14 fr-en from the Hugging Face hub.

    Hub splits: train (~40.8M pairs, the real WMT14 train), validation = newstest2013,
    test = newstest2014. `limit` slices the split before download/parse where possible.
    """
    import datasets

    hub_split = split if limit is None else f"{split}[:{limit}]"
    hub = datasets.load_dataset(HUB_PATH, HUB_CONFIG, split=hub_split)
    columns = {"id": [], "inputs": [], "targets": [], "source": []}
    stats = LoadStats(source=f"hf-hub:{HUB_PATH}/{HUB_CONFIG}/{hub_split}")
    for number, row in enumerate(hub):
        en, fr = row["translation"]["en"].strip(), row["translation"]["fr"].strip()
        if not en or not fr:
            stats.skip("empty_pair")
            continue
        columns["id"].append(f"{HUB_PATH}:{split}:{number}")
        columns["inputs"].append(en)
        columns["targets"].append(fr)
        columns["source"].append(HUB_PATH)
    return columns, stats
