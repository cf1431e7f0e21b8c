"""Metrics on hand-made cases; each expected value is derived by hand in the comments."""

import math
from fractions import Fraction

import pytest

from workbench.evaluation import metrics


# --- BLEU ---


def test_bleu_identical_corpus_is_100():
    corpus = ["Le chat est assis sur le tapis.", "Il pleut."]
    result = metrics.bleu(corpus, corpus)
    assert result.score == pytest.approx(100.0)
    assert "nrefs:1" in result.signature and "tok:13a" in result.signature


def test_bleu_disjoint_corpus_is_0():
    assert metrics.bleu(["a b c d e"], ["v w x y z"]).score == 0.0


def test_bleu_hand_checked_case():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (6 tokens each, brevity penalty 1):
    # 1-grams: the(clipped to 1), cat, sat, on, mat match -> 5/6
    # 2-grams: "the cat", "cat sat", "sat on" match of 5 -> 3/5
    # 3-grams: "the cat sat", "cat sat on" match of 4 -> 2/4
    # 4-grams: "the cat sat on" matches of 3 -> 1/3
    # BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** 0.25
    result = metrics.bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert result.score == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)


def test_bleu_rejects_bad_input():
    with pytest.raises(ValueError, match="parallel"):
        metrics.bleu(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="bare string"):
        metrics.bleu("a b", "a b")


def test_chrf_and_code_exact_match():
    assert metrics.chrf(["def f():\n    return 1"], ["def f():\n    return 1"]).score == pytest.approx(100.0)
    assert metrics.chrf(["abc"], ["xyz"]).score == 0.0
    # trailing spaces and blank edge lines are ignored; indentation is not
    predictions = ["\n    return x  \n", "    return y", "return x"]
    references = ["    return x", "    return x", "    return x"]
    assert metrics.code_exact_match(predictions, references) == pytest.approx(100 / 3)


# --- SQuAD v1.1 ---


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("The Eiffel Tower!", "eiffel tower"),  # lowercase, punctuation, leading article
        ("U.S.", "us"),  # punctuation inside a token just disappears
        ("an anthem  for   theatre", "anthem for theatre"),  # articles only as whole words
        ("A, an; THE.", ""),
    ],
)
def test_squad_normalize(text, normalized):
    assert metrics.squad_normalize(text) == normalized


def test_squad_exact_match_and_f1_by_hand():
    # "Denver Broncos" vs "Broncos": 1 common token; P = 1/2, R = 1 -> F1 = 2 * 1/2 / (3/2) = 2/3
    assert metrics.squad_f1("Denver Broncos", ["Broncos"]) == pytest.approx(2 / 3)
    assert metrics.squad_exact_match("Denver Broncos", ["Broncos"]) == 0.0
    # "a red car" -> [red, car]; vs "the blue car" -> [blue, car]: P = R = 1/2 -> 1/2;
    # vs "red automobile": also 1/2. Max over golds = 1/2.
    assert metrics.squad_f1("a red car", ["the blue car", "red automobile"]) == pytest.approx(0.5)
    # Max over golds picks the exact one.
    assert metrics.squad_exact_match("the Broncos.", ["Panthers", "Broncos"]) == 1.0
    # "the the cat cat cat" -> [cat, cat, cat] vs [cat]: common = min(3, 1) = 1; P = 1/3, R = 1 -> F1 = 1/2
    assert metrics.squad_f1("the the cat cat cat", ["cat"]) == pytest.approx(0.5)
    assert metrics.squad_f1("", ["cat"]) == 0.0


def test_squad_corpus_percentages():
    # per example (EM, F1): (1, 1), (0, 2/3), (0, 0) -> EM 100/3 %, F1 (5/3)/3 * 100 = 500/9 %
    scores = metrics.squad(["Eiffel Tower", "Denver Broncos", "Paris"], [["the eiffel tower"], ["Broncos"], ["Rome"]])
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(500 / 9)
    assert scores["num_examples"] == 3


def test_squad_rejects_bad_golds():
    with pytest.raises(ValueError, match="non-empty list"):
        metrics.squad_f1("x", "x")
    with pytest.raises(ValueError, match="non-empty list"):
        metrics.squad_exact_match("x", [])


# --- pass@k ---


def _exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_small_cases_by_hand():
    # n=5, c=2: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@3 = 1 - C(3,3)/C(5,3) = 1 - 1/10;
    # pass@4: only 3 failures, so any 4 samples include a pass -> 1.
    assert metrics.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert metrics.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert metrics.pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert metrics.pass_at_k(5, 2, 4) == 1.0
    assert metrics.pass_at_k(5, 0, 5) == 0.0


def test_pass_at_k_matches_combinatorial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert metrics.pass_at_k(n, c, k) == pytest.approx(float(_exact_pass_at_k(n, c, k)), abs=1e-12)
    # numerically stable where the binomials are astronomically large
    assert metrics.pass_at_k(1000, 3, 80) == pytest.approx(float(_exact_pass_at_k(1000, 3, 80)), rel=1e-9)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k=6"):
        metrics.pass_at_k(5, 1, 6)
    with pytest.raises(ValueError, match="num_correct=6"):
        metrics.pass_at_k(5, 6, 1)


def test_pass_at_k_summary():
    # two problems with n=3: c=0 -> every pass@k is 0; c=3 -> every pass@k is 1. Means: 50 %.
    summary = metrics.pass_at_k_summary(3, [0, 3], ks=(1, 2, 5))
    assert summary["pass@1"] == pytest.approx(50.0)
    assert summary["pass_at_k"] == {1: pytest.approx(50.0), 2: pytest.approx(50.0)}
    assert summary["skipped_ks"] == [5]
    assert "pass@80" not in summary
    # n=80: c=1 -> pass@1 = 1/80, pass@80 = 1; c=0 -> 0. Means: pass@1 = 1/160 = 0.625 %, pass@80 = 50 %.
    summary = metrics.pass_at_k_summary([80, 80], [1, 0], ks=(1,))
    assert summary["pass@1"] == pytest.approx(0.625)
    assert summary["pass@80"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="one per problem"):
        metrics.pass_at_k_summary([3, 3, 3], [1, 2])


@pytest.mark.parametrize(
    "samples,correct,pattern",
    [
        ([3, 0], [1, 0], r"problem 1 has num_samples=0; expected at least one sample per problem; generate samples"),
        (0, [0], r"problem 0 has num_samples=0; expected at least one sample"),
        ([2, 2], [1, 3], r"problem 1 has num_correct=3; expected 0 <= num_correct <= num_samples=2"),
        ([], [], r"no problems to score; pass one sample count"),
    ],
    ids=["one-problem-without-samples", "zero-samples-everywhere", "more-correct-than-samples", "no-problems"],
)
def test_pass_at_k_summary_names_the_bad_count(samples, correct, pattern):
    with pytest.raises(ValueError, match=pattern):
        metrics.pass_at_k_summary(samples, correct, ks=(1,))


def test_token_sequence_scores_by_hand():
    # eos 1, pad 0. Row 0: exact. Row 1: stops one early (2 of 3 match). Row 2: one extra token
    # before EOS (3 of 4). Row 3: no stop id at all, wrong first token (2 of 4 positions).
    outputs = [[5, 6, 7, 1, 9], [5, 6, 1, 0, 0], [5, 6, 7, 8, 1], [9, 6, 7, 5, 5]]
    references = [[5, 6, 7], [5, 6, 7], [5, 6, 7], [5, 6, 7]]
    got = metrics.token_sequence_scores(outputs, references, stop_ids=(0, 1))
    assert got["exact_match"] == pytest.approx(1 / 4)
    assert got["token_accuracy"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 2 / 5) / 4)
    assert metrics.token_sequence_scores([[1, 4]], [[]], stop_ids=(1,)) == {"exact_match": 1.0, "token_accuracy": 1.0}
    with pytest.raises(ValueError, match="one row per reference"):
        metrics.token_sequence_scores([[1, 2]], [[1], [2]], stop_ids=(1,))
