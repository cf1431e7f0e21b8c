"""scoring.score: postprocess + the task's metric, per task."""

import pytest

from workbench.evaluation import sandbox, scoring


def test_translation_and_squad_scores():
    records = [{"id": "0", "inputs": "the cat sits on the mat", "targets": "le chat est assis sur le tapis"}]
    result = scoring.score("wmt14_enfr", records, ["  le chat est assis sur le tapis \n"])  # spaces stripped
    assert result["bleu"] == pytest.approx(100.0) and "tok:13a" in result["signature"]
    squad = [{"id": "q", "question": "Who?", "context": "Broncos won.", "answers": ["Broncos", "the Broncos"]}]
    assert scoring.score("squad_v1", squad, ["Denver Broncos"]) == {
        "exact_match": 0.0, "f1": pytest.approx(100 * 2 / 3), "num_examples": 1,
    }  # fmt: skip


def test_python_functions_scores():
    records = [{"id": "a", "inputs": "def f():\n", "targets": "    return 1\n"},
               {"id": "b", "inputs": "def g():\n", "targets": "    return 2\n"}]  # fmt: skip
    result = scoring.score("python_functions", records, ["    return 1   \n\n", "    return 3"])
    assert result["exact_match"] == 50.0 and 0 < result["chrf"] < 100


def test_code_task_runs_in_the_sandbox():
    record = {"id": "m", "test_list": ["assert f(2) == 4"], "test_setup_code": ""}
    result = scoring.score("mbpp", [record], [["def f(x):\n    return 2 * x", "def f(x):\n    return x"]], ks=(1, 2))
    assert result["pass@1"] == 50.0 and result["pass_at_k"][2] == 100.0


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="one entry per record"):
        scoring.score("wmt14_enfr", [{"inputs": "a", "targets": "b"}], [])
    with pytest.raises(TypeError, match="only to code tasks"):
        scoring.score("wmt14_enfr", [{"inputs": "a", "targets": "b"}], ["b"], timeout_s=1)


@pytest.mark.parametrize("with_targets", [False, True], ids=["answers-only", "targets-and-answers"])
def test_squad_record_with_no_gold_answers_is_named(with_targets):
    record = {"id": "q7", "question": "Who?", "context": "Broncos won.", "answers": []}
    if with_targets:
        record["targets"] = "Broncos"
    with pytest.raises(ValueError, match=r"record 'q7'.*answers=\[\].*expected a non-empty list of gold answer strings.*drop it"):
        scoring.score("squad_v1", [record], ["Broncos"])
    with pytest.raises(KeyError, match="neither `targets` nor `answers`"):
        scoring.score("squad_v1", [{"id": "q8", "question": "Who?", "context": "c"}], ["x"])


@pytest.mark.skipif(sandbox.detect_isolation().level == "fallback", reason="no namespaces or Landlock here")
def test_code_scores_record_their_isolation():
    record = {"id": "m", "test_list": ["assert f(2) == 4"], "test_setup_code": ""}
    result = scoring.score("mbpp", [record], [["def f(x):\n    return 2 * x"]], ks=(1,))
    assert result["isolation"]["level"] in ("kernel", "full") and result["isolation"]["description"]
