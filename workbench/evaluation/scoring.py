"""One call from model outputs to a task's scores: postprocess, then the task's metric."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from workbench.evaluation import metrics, sandbox
from workbench.evaluation.tasks import TaskSpec, get_task


def score(
    task: TaskSpec | str,
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str] | Sequence[Sequence[str]],
    **code_options: Any,
) -> dict:
    """Scores (percent) of raw model outputs for `records`.

    predictions: one string per record, or for code tasks (mbpp, humaneval) a list of n
    samples per record. Returns {"bleu", "signature"} (wmt14_enfr), {"exact_match", "f1",
    "num_examples"} (squad_v1), {"exact_match", "chrf", "signature"} (python_functions), or
    `sandbox.evaluate_code(...)`'s pass@k summary; `code_options` go to evaluate_code.
    """
    spec = get_task(task) if isinstance(task, str) else task
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions; give one entry per record")
    if spec.metric == "pass_at_k":
        return sandbox.evaluate_code(spec, records, predictions, **code_options)
    if code_options:
        raise TypeError(f"options {sorted(code_options)} apply only to code tasks, not {spec.name!r}")
    if any(not isinstance(p, str) for p in predictions):
        raise TypeError(f"{spec.name}: expected one string per record (the decoded output)")
    outputs = [spec.postprocess(p, r) for p, r in zip(predictions, records)]
    references = [spec.format_example(r)[1] for r in records]
    if spec.metric == "bleu":
        result = metrics.bleu(outputs, references)
        return {"bleu": result.score, "signature": result.signature}
    if spec.metric == "squad":
        for index, record in enumerate(records):
            answers = record.get("answers")
            if isinstance(answers, str) or not answers:
                raise ValueError(
                    f"squad_v1 record {record.get('id', index)!r} (index {index}) has answers={answers!r}; expected a "
                    f"non-empty list of gold answer strings (EM/F1 take the best over them); fix the record or drop it"
                )
        return metrics.squad(outputs, [r["answers"] for r in records])
    result = metrics.chrf(outputs, references)
    return {"exact_match": metrics.code_exact_match(outputs, references), "chrf": result.score,
            "signature": result.signature}  # fmt: skip
