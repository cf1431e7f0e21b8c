"""Losses, gradients and samples equal, bit for bit, what was recorded before the diffusion
processes and the denoiser interface were refactored (tests/golden/record_processes.py).

Exact equality holds because the refactor keeps every random draw and every XLA op in
the same order; a change that alters numbers on purpose must re-record and say why.

Bitwise equality is a property of one machine: XLA's CPU code for another instruction set
(another vector width) sums in another order, so float32 gradients move by an ulp or two
(seen: 3.6e-7 on a value of 0.61 between two EPYC machines, at the same commit). The recording
carries its machine's signature (`processes.machine.json`): on that machine every array must be
equal bit for bit; on another, integer arrays (tokens, lengths) still must, and float arrays
agree to `FLOAT_REL` of each array's largest magnitude (gradients are sums with cancellation, so
an element's own size is the wrong scale; measured between two EPYC machines at the same commit: 6.1e-8 at most),
far below any change a refactor could make by mistake. Re-record before a refactor on the machine
that checks it."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))

import cases  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"
RECORDED = np.load(GOLDEN / "processes.npz")
RECORDED_ON = json.loads((GOLDEN / "processes.machine.json").read_text())
SAME_MACHINE = RECORDED_ON == cases.machine_signature()
FLOAT_REL = 1e-5


def _check(case: str, values: dict) -> None:
    recorded = {k.split("::", 1)[1]: RECORDED[k] for k in RECORDED.files if k.split("::", 1)[0] == case}
    assert recorded, f"nothing recorded for {case}; run tests/golden/record_processes.py"
    assert sorted(values) == sorted(recorded), f"{case}: outputs {sorted(values)} != recorded {sorted(recorded)}"
    for key, value in values.items():
        value, expected = np.asarray(value), recorded[key]
        if SAME_MACHINE or not np.issubdtype(expected.dtype, np.floating):
            np.testing.assert_array_equal(value, expected, err_msg=f"{case}::{key} (recorded on {RECORDED_ON})")
        else:
            assert value.dtype == expected.dtype and value.shape == expected.shape, f"{case}::{key}"
            scale = max(float(np.max(np.abs(expected), initial=0.0)), float(np.finfo(expected.dtype).tiny))
            error = float(np.max(np.abs(value.astype(np.float64) - expected), initial=0.0)) / scale
            assert error <= FLOAT_REL, (f"{case}::{key}: off the recording by {error:.2e} of its largest magnitude "
                                        f"(another machine: {RECORDED_ON}; allowed {FLOAT_REL})")


def test_the_recording_names_its_machine():
    assert set(RECORDED_ON) == set(cases.machine_signature()), "re-record: tests/golden/record_processes.py"


@pytest.mark.parametrize("name", sorted(cases.LOSS_CASES))
def test_loss_metrics_and_gradients_match_the_recording(name):
    _check(f"loss/{name}", cases.loss_case(*cases.LOSS_CASES[name]))


@pytest.mark.parametrize("name", sorted(cases.SAMPLE_CASES))
def test_diffusion_samples_match_the_recording(name):
    _check(f"sample/{name}", cases.sample_case(*cases.SAMPLE_CASES[name]))


@pytest.mark.parametrize("name", sorted(cases.GENERATE_CASES))
def test_ar_generation_matches_the_recording(name):
    _check(f"generate/{name}", cases.generate_case(*cases.GENERATE_CASES[name]))
