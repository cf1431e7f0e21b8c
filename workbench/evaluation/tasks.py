"""Fine-tuning and evaluation tasks: how a record becomes (inputs, targets) and how output is cleaned.

Every task maps a record (a plain dict, as `workbench.data.load_dataset(name, split)`
yields) to an `(inputs, targets)` pair of strings, used the same way by both
architectures:

- decoder-only (prefix LM, diffusion): one sequence `[inputs; targets]`; the model
  sees all of `inputs` (the prefix, never corrupted) and is trained on, and generates,
  `targets` only;
- encoder-decoder: the encoder reads `inputs`, the decoder is trained on / generates `targets`.

Formats (one per task):

| task | inputs | targets | metric |
|---|---|---|---|
| wmt14_enfr | `translate English to French: {en}` | `{fr}` | sacreBLEU (detokenized) |
| squad_v1 | `question: {question} context: {context}` | first gold answer | SQuAD v1.1 F1 / EM over all golds |
| mbpp | `{problem text} Your code should pass these tests:\\n{test 1}\\n{test 2}...` | reference code | pass@k in the sandbox |
| humaneval | `{prompt}` (signature + docstring) | `{completion}` (function body) | pass@k in the sandbox |
| python_functions | signature + docstring of a stdlib function | its body | exact match + chrF |

Record fields read here (from the data module's schema): `inputs`, `targets`, `id`
for all tasks, and per task: wmt14_enfr `inputs` = English source, `targets` = French;
squad_v1 `question` and `context` when present (else `inputs` already in the
`question: ... context: ...` form), `answers` (list[str]) and `targets` (else
`answers[0]`); mbpp `inputs` (or `text`) = problem statement, `targets` (or `code`),
`test_list`, `test_setup_code`; humaneval `prompt`, `targets` (or
`canonical_solution`), `test`, `entry_point`; python_functions `inputs`, `targets`.
Formatting is idempotent: a record whose `inputs` already carry the task's wording
is not wrapped twice.

python_functions is scored by exact match (after `metrics.normalize_code`) and
sacreBLEU chrF, a character n-gram F-score that gives partial credit to
near-miss code where BLEU's word n-grams would mostly score zero on short bodies.

`count_too_long` reports how many examples exceed a token budget; nothing here ever
truncates text silently.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Optional

Record = Mapping[str, Any]

METRICS = ("bleu", "squad", "pass_at_k", "exact_match_chrf")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task: where its data lives, how a record is formatted and scored.

    format_example(record) -> (inputs, targets); postprocess(prediction, record) -> the
    string the metric sees. metric is one of METRICS.
    """

    name: str
    dataset: str
    eval_split: str
    train_split: Optional[str]
    metric: str
    format_example: Callable[[Record], tuple[str, str]]
    postprocess: Callable[[str, Record], str]

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: metric={self.metric!r} is not one of {METRICS}")


def _field(record: Record, task: str, *names: str) -> Any:
    for name in names:
        if name in record and record[name] is not None:
            return record[name]
    raise KeyError(
        f"{task} record {record.get('id', '?')!r} has none of the fields {names}; "
        f"it has {sorted(record)}. Load it with workbench.data.load_dataset({task!r}, split)"
    )


# --- wmt14_enfr ---

WMT_PREFIX = "translate English to French: "


def format_wmt(record: Record) -> tuple[str, str]:
    english = _field(record, "wmt14_enfr", "inputs")
    inputs = english if english.startswith(WMT_PREFIX) else WMT_PREFIX + english
    return inputs, _field(record, "wmt14_enfr", "targets")


def postprocess_text(prediction: str, record: Record) -> str:
    return prediction.strip()


# --- squad_v1 ---


def format_squad(record: Record) -> tuple[str, str]:
    if "question" in record and "context" in record:
        inputs = f"question: {record['question']} context: {record['context']}"
    else:
        inputs = _field(record, "squad_v1", "inputs")
        if not inputs.startswith("question: ") or " context: " not in inputs:
            raise ValueError(
                f"squad_v1 record {record.get('id', '?')!r}: without `question`/`context` fields, `inputs` must "
                f"read 'question: ... context: ...', got {inputs[:60]!r}"
            )
    answers = record.get("answers")
    targets = record.get("targets") or (answers[0] if answers else None)
    if targets is None and answers is not None:
        raise ValueError(
            f"squad_v1 record {record.get('id', '?')!r} has answers={answers!r} and no `targets`; expected a "
            f"non-empty list of gold answer strings; fix the record or drop it"
        )
    if targets is None:
        raise KeyError(f"squad_v1 record {record.get('id', '?')!r} has neither `targets` nor `answers`")
    return inputs, targets


# --- mbpp ---

MBPP_TESTS_HEADER = " Your code should pass these tests:\n"
_FENCE = re.compile(r"^\s*```(?:python|py)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


def format_mbpp(record: Record) -> tuple[str, str]:
    text = _field(record, "mbpp", "text", "inputs")
    tests = _field(record, "mbpp", "test_list")
    inputs = text if MBPP_TESTS_HEADER in text else text + MBPP_TESTS_HEADER + "\n".join(tests)
    return inputs, _field(record, "mbpp", "code", "targets")


def postprocess_mbpp(prediction: str, record: Record) -> str:
    """The program text: a surrounding ``` fence dropped, blank edges stripped, indentation kept."""
    fenced = _FENCE.match(prediction)
    code = fenced.group(1) if fenced else prediction
    return code.strip("\n").rstrip()


# --- humaneval ---

# Codex's stop sequences (Chen et al. 2021), at the start of an unindented line:
# anything after the function body is dropped.
HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")


def format_humaneval(record: Record) -> tuple[str, str]:
    return _field(record, "humaneval", "prompt"), _field(record, "humaneval", "targets", "canonical_solution")


def postprocess_humaneval(prediction: str, record: Record) -> str:
    """The completion up to the first Codex stop sequence (the function body only)."""
    cut = min((i for i in (prediction.find(stop) for stop in HUMANEVAL_STOPS) if i >= 0), default=len(prediction))
    return prediction[:cut].rstrip()


# --- python_functions ---


def format_python_function(record: Record) -> tuple[str, str]:
    return _field(record, "python_functions", "inputs"), _field(record, "python_functions", "targets")


def postprocess_code(prediction: str, record: Record) -> str:
    return prediction.strip("\n").rstrip()


_TASKS = {
    spec.name: spec
    for spec in (
        TaskSpec("wmt14_enfr", "wmt14_enfr", "test", "train", "bleu", format_wmt, postprocess_text),
        TaskSpec("squad_v1", "squad_v1", "test", "train", "squad", format_squad, postprocess_text),
        TaskSpec("mbpp", "mbpp", "test", "train", "pass_at_k", format_mbpp, postprocess_mbpp),
        TaskSpec("humaneval", "humaneval", "test", None, "pass_at_k", format_humaneval, postprocess_humaneval),
        TaskSpec(
            "python_functions",
            "python_functions",
            "test",
            "train",
            "exact_match_chrf",
            format_python_function,
            postprocess_code,
        ),
    )
}

TASK_NAMES = tuple(_TASKS)


def get_task(name: str) -> TaskSpec:
    """The TaskSpec registered under `name` (one of TASK_NAMES)."""
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; expected one of {TASK_NAMES}")
    return _TASKS[name]


# --- length budget ---


@dataclasses.dataclass(frozen=True)
class LengthReport:
    """How many examples exceed a token budget. Nothing is cut; the caller decides."""

    task: str
    field: str
    max_len: int
    num_examples: int
    num_too_long: int
    longest: int
    too_long_ids: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"{self.task}: {self.num_too_long} of {self.num_examples} {self.field} exceed {self.max_len} tokens "
            f"(longest {self.longest}); they are kept, not cut: raise max_len or drop them explicitly"
        )


def count_too_long(
    records: Iterable[Record],
    task: TaskSpec | str,
    tokenizer: Any,
    max_len: int,
    *,
    field: str = "targets",
) -> LengthReport:
    """Count examples whose `field` ("inputs", "targets" or "sequence" = both, as a
    decoder-only model sees them) is longer than `max_len` tokens under `tokenizer.encode`."""
    spec = get_task(task) if isinstance(task, str) else task
    if field not in ("inputs", "targets", "sequence"):
        raise ValueError(f"field={field!r}; expected 'inputs', 'targets' or 'sequence'")
    if not hasattr(tokenizer, "encode"):
        raise TypeError(f"tokenizer {type(tokenizer).__name__} has no .encode(text) method")
    lengths, ids = [], []
    for index, record in enumerate(records):
        inputs, targets = spec.format_example(record)
        n_inputs = len(tokenizer.encode(inputs)) if field != "targets" else 0
        n_targets = len(tokenizer.encode(targets)) if field != "inputs" else 0
        lengths.append(n_inputs + n_targets)
        ids.append(str(record.get("id", index)))
    too_long = tuple(i for i, n in zip(ids, lengths) if n > max_len)
    return LengthReport(
        task=spec.name,
        field=field,
        max_len=max_len,
        num_examples=len(lengths),
        num_too_long=len(too_long),
        longest=max(lengths, default=0),
        too_long_ids=too_long,
    )
