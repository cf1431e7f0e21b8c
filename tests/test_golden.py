"""Losses, gradients and samples equal, bit for bit, what was recorded before the diffusion
processes and the denoiser interface were refactored (tests/golden/record_processes.py).

Exact equality holds because the refactor keeps every random draw and every XLA op in
the same order; a change that alters numbers on purpose must re-record and say why."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))

import cases  # noqa: E402

RECORDED = np.load(Path(__file__).resolve().parent / "golden" / "processes.npz")


def _check(case: str, values: dict) -> None:
    recorded = {k.split("::", 1)[1]: RECORDED[k] for k in RECORDED.files if k.split("::", 1)[0] == case}
    assert recorded, f"nothing recorded for {case}; run tests/golden/record_processes.py"
    assert sorted(values) == sorted(recorded), f"{case}: outputs {sorted(values)} != recorded {sorted(recorded)}"
    for key, value in values.items():
        np.testing.assert_array_equal(value, recorded[key], err_msg=f"{case}::{key}")


@pytest.mark.parametrize("name", sorted(cases.LOSS_CASES))
def test_loss_metrics_and_gradients_match_the_recording(name):
    _check(f"loss/{name}", cases.loss_case(*cases.LOSS_CASES[name]))


@pytest.mark.parametrize("name", sorted(cases.SAMPLE_CASES))
def test_diffusion_samples_match_the_recording(name):
    _check(f"sample/{name}", cases.sample_case(*cases.SAMPLE_CASES[name]))


@pytest.mark.parametrize("name", sorted(cases.GENERATE_CASES))
def test_ar_generation_matches_the_recording(name):
    _check(f"generate/{name}", cases.generate_case(*cases.GENERATE_CASES[name]))
