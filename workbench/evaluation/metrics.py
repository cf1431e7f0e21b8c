"""Task metrics: sacreBLEU, SQuAD v1.1 exact match / F1, unbiased pass@k, exact match and chrF for code.

Aggregated scores are percentages (0-100), as the paper prints them. Per-example
helpers (`squad_exact_match`, `squad_f1`, `pass_at_k`) return fractions in [0, 1].
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string
from typing import Iterable, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF


@dataclasses.dataclass(frozen=True)
class CorpusScore:
    """A sacreBLEU corpus score with the signature that makes it reproducible."""

    score: float
    signature: str
    text: str  # sacreBLEU's one-line summary, e.g. "BLEU = 53.73 83.3/60.0/50.0/33.3 (BP = 1.000 ...)"


def _check_parallel(hypotheses: Sequence[str], references: Sequence[str], what: str) -> None:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError(f"{what}: pass lists of strings, got a bare string; wrap single examples in a list")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{what}: {len(hypotheses)} hypotheses but {len(references)} references; they must be parallel"
        )
    if not hypotheses:
        raise ValueError(f"{what}: no examples to score; pass at least one hypothesis")


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str = "13a") -> CorpusScore:
    """sacreBLEU corpus BLEU of detokenized hypotheses against one reference each.

    Pass plain detokenized text (what a reader would see); sacreBLEU applies its own
    tokenizer (`13a`, the WMT default), so scores are comparable across tokenizers.
    """
    _check_parallel(hypotheses, references, "bleu")
    metric = BLEU(tokenize=tokenize)
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusScore(score=float(result.score), signature=str(metric.get_signature()), text=str(result))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusScore:
    """sacreBLEU corpus chrF (character n-gram F-score, 0-100): partial credit for near-miss code."""
    _check_parallel(hypotheses, references, "chrf")
    metric = CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusScore(score=float(result.score), signature=str(metric.get_signature()), text=str(result))


def normalize_code(code: str) -> str:
    """Code compared for exact match: trailing spaces on each line and blank lines at either end removed."""
    return "\n".join(line.rstrip() for line in code.splitlines()).strip("\n")


def code_exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Percentage of predictions equal to their reference after `normalize_code`."""
    _check_parallel(predictions, references, "code_exact_match")
    hits = sum(normalize_code(p) == normalize_code(r) for p, r in zip(predictions, references))
    return 100.0 * hits / len(predictions)


# --- SQuAD v1.1 (the official evaluate-v1.1.py, restated) ---

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def squad_normalize(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (official v1.1 order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _single_f1(prediction: str, gold: str) -> float:
    prediction_tokens = squad_normalize(prediction).split()
    gold_tokens = squad_normalize(gold).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str) or not golds:
        raise ValueError(f"SQuAD gold answers must be a non-empty list of strings, got {golds!r}")


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized gold answer, else 0.0."""
    _check_golds(golds)
    return max(float(squad_normalize(prediction) == squad_normalize(g)) for g in golds)


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Bag-of-tokens F1 against each gold answer; the best one counts."""
    _check_golds(golds)
    return max(_single_f1(prediction, g) for g in golds)


def squad(predictions: Sequence[str], golds_per_example: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus SQuAD v1.1 scores as percentages: {"exact_match": ..., "f1": ..., "num_examples": ...}."""
    _check_parallel(predictions, golds_per_example, "squad")
    em = sum(squad_exact_match(p, g) for p, g in zip(predictions, golds_per_example))
    f1 = sum(squad_f1(p, g) for p, g in zip(predictions, golds_per_example))
    n = len(predictions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n, "num_examples": n}


# --- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code") ---


def _check_counts(num_samples: int, num_correct: int) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}; need at least one sample per problem")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct={num_correct} must lie in [0, num_samples={num_samples}]")


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased P(at least one of k samples drawn without replacement from n passes).

    1 - C(n-c, k) / C(n, k), computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i),
    which never forms the huge binomials.
    """
    _check_counts(num_samples, num_correct)
    if not 1 <= k <= num_samples:
        raise ValueError(f"k={k} must lie in [1, num_samples={num_samples}]; draw more samples or lower k")
    if num_samples - num_correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)))


def pass_at_k_summary(
    num_samples: Sequence[int] | int,
    num_correct: Sequence[int],
    ks: Iterable[int] = (1, 10, 80),
) -> dict:
    """Mean pass@k over problems, in percent.

    Returns {"pass@1": ..., "pass@80": ... (only when every problem has n >= 80),
    "pass_at_k": {k: ...} for each requested k that every problem's n allows,
    "skipped_ks": requested ks larger than the smallest n, "num_problems": ...}.
    """
    correct = [int(c) for c in num_correct]
    samples = [int(num_samples)] * len(correct) if isinstance(num_samples, (int, np.integer)) else list(num_samples)
    if len(samples) != len(correct):
        raise ValueError(f"{len(samples)} sample counts but {len(correct)} correct counts; give one per problem")
    if not correct:
        raise ValueError("pass_at_k_summary: no problems to score; pass one sample count and one correct count per problem")
    for index, (n, c) in enumerate(zip(samples, correct)):
        if n < 1:
            raise ValueError(
                f"pass_at_k_summary: problem {index} has num_samples={n}; expected at least one sample per problem; "
                f"generate samples for it or leave it out of both lists"
            )
        if not 0 <= c <= n:
            raise ValueError(
                f"pass_at_k_summary: problem {index} has num_correct={c}; expected 0 <= num_correct <= num_samples={n}"
            )
    smallest_n = min(samples)
    requested = sorted({int(k) for k in ks})
    if requested and requested[0] < 1:
        raise ValueError(f"ks={requested} must all be >= 1")
    extra = {1} | ({80} if smallest_n >= 80 else set())
    table = {
        k: 100.0 * float(np.mean([pass_at_k(n, c, k) for n, c in zip(samples, correct)]))
        for k in sorted(set(requested) | extra)
        if k <= smallest_n
    }
    summary = {
        "pass@1": table[1],
        "pass_at_k": {k: table[k] for k in requested if k in table},
        "skipped_ks": [k for k in requested if k > smallest_n],
        "num_problems": len(correct),
    }
    if 80 in table:
        summary["pass@80"] = table[80]
    return summary


def token_sequence_scores(outputs, references: Sequence[Sequence[int]], stop_ids: Iterable[int]) -> dict[str, float]:
    """Exact match and token accuracy (fractions) of decoded id rows against reference id lists.

    Each output row is cut at its first id in `stop_ids` (EOS, padding); token accuracy is an
    example's positional matches over the longer of the two sequences (so missing and extra
    tokens both cost), averaged over examples.
    """
    outputs = np.asarray(outputs)
    if outputs.ndim != 2 or len(outputs) != len(references):
        raise ValueError(f"outputs of shape {outputs.shape} must be [examples, length] with one row per reference "
                         f"({len(references)} references)")
    if not len(references):
        raise ValueError("no examples to score; pass at least one reference")
    stops = np.isin(outputs, list(stop_ids))
    exact, accuracy = [], []
    for row, stop, reference in zip(outputs, stops, references):
        text = row[: int(np.argmax(stop)) if stop.any() else len(row)].tolist()
        reference = list(reference)
        matches = sum(a == b for a, b in zip(text, reference))
        exact.append(text == reference)
        accuracy.append(matches / max(len(text), len(reference)) if text or reference else 1.0)
    return {"exact_match": float(np.mean(exact)), "token_accuracy": float(np.mean(accuracy))}
