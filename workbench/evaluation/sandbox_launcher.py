"""The launcher of every isolated run: namespaces, a private root on a size-capped tmpfs, and no privilege.

`sandbox.py` runs this file's source as `python -I -S -B -c <source> <config json>`, with the
run's stdin (the job), stdout, stderr and verdict pipe, in the run's session (and pids cgroup).
It uses only the standard library (and ctypes for mount, pivot_root and prctl), and runs before
any candidate code exists in the process tree:

1. as root: `unshare` of new mount, IPC, UTS, network and PID namespaces (all owned by the host's
   user namespace, so nothing inside can ever regain a capability over them); as an unprivileged
   user: the same plus a new user namespace whose root is mapped to that user's own id;
2. fork: the child is PID 1 of the new PID namespace (when it exits, the kernel kills everything
   left in the namespace) and dies with the launcher (PR_SET_PDEATHSIG);
3. in the child: every mount made private; a tmpfs of `disk_mb` MiB (and a bounded number of inodes)
   mounted on the run's directory becomes the new root. Into it go read-only, nosuid bind mounts
   of the interpreter's and system libraries' directories, /dev/null, /dev/zero, /dev/urandom and
   /dev/random (nothing else of /dev), a fresh /proc of the new PID namespace, and the run's
   working directory at its usual path. `pivot_root` then detaches the host's filesystem: no host
   path exists inside, so no host Unix socket, device, /tmp or /run can be reached, and whatever the
   run writes is in the tmpfs, which vanishes with the mount namespace (nothing to clean up, nothing
   that can block the clean-up, and at most `disk_mb` MiB in all);
4. the hostname is set inside the run's own UTS namespace; then every capability is dropped: the
   bounding set emptied, and (as root) the run switches to `uid_base` + the launcher's PID (an
   unprivileged id of its own, no groups), or (in a user namespace) the `SECBIT_NOROOT` securebits are locked and the
   capability sets cleared. `no_new_privs` is set. So the judge and the candidate hold no
   capability at all: no mount, mknod, chattr +i, chown, sethostname or setns;
5. exec `python -I -S -B main.py` (the judge) in the working directory, which it owns.

Any failure before the exec is reported on the verdict pipe as status "error" (the only way the
harness learns of a sandbox fault), and the launcher exits.
"""


def _workbench_launch(config):
    import ctypes
    import json
    import os
    import signal
    import sys

    libc = ctypes.CDLL(None, use_errno=True)
    verdict_fd = config["verdict_fd"]

    def fail(what):
        try:
            os.write(verdict_fd, (json.dumps({"status": "error", "detail": f"sandbox launcher: {what}"}) + "\n").encode())
        finally:
            os._exit(1)

    def check(result, what):
        if result != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what}: {os.strerror(error)}")

    def mount(source, target, fstype, flags, data=None):
        check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                         data and data.encode()), f"mount {source} on {target}")

    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec, ms_remount, ms_bind, ms_rec, ms_private = (
        1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
    root_mode = os.geteuid() == 0
    run_uid = config["uid_base"] + os.getpid() if root_mode else 0  # unique among the runs alive now
    try:
        flags = os.CLONE_NEWNS | os.CLONE_NEWIPC | os.CLONE_NEWUTS | os.CLONE_NEWNET | os.CLONE_NEWPID
        uid, gid = os.geteuid(), os.getegid()
        if not root_mode:
            flags |= os.CLONE_NEWUSER
        os.unshare(flags)
        if not root_mode:  # the namespace's root is this unprivileged user, nothing more
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as handle:
                    handle.write(text)
    except BaseException as error:
        fail(f"could not create namespaces: {error!r}")

    child = os.fork()
    if child:
        # The launcher waits for PID 1 of the run and leaves with its status.
        os.close(0)
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except ChildProcessError:
                os._exit(1)
            except InterruptedError:
                continue
        if os.WIFSIGNALED(status):
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)

    try:
        check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
        base, workdir = config["base"], config["workdir"]
        staged = {}
        for name in ("main.py", "candidate.py"):
            with open(os.path.join(base, name), "rb") as handle:
                staged[name] = handle.read()
        mount(None, "/", None, ms_rec | ms_private)
        mount("workbench-sandbox", base, "tmpfs", ms_nosuid | ms_nodev,
              f"size={config['disk_mb']}m,nr_inodes={config['max_inodes']},mode=0755")

        def inside(path):
            return os.path.join(base, path.lstrip("/"))

        for path in config["binds"]:
            if not os.path.lexists(path) or os.path.lexists(inside(path)):
                continue
            os.makedirs(os.path.dirname(inside(path)), exist_ok=True)
            if os.path.islink(path) and os.path.dirname(path) == "/":  # /lib -> usr/lib on merged-/usr systems
                os.symlink(os.readlink(path), inside(path))
                continue
            if os.path.isdir(path):
                os.makedirs(inside(path), exist_ok=True)
            else:
                open(inside(path), "a").close()
            mount(path, inside(path), None, ms_bind | ms_rec)
            readonly = ms_remount | ms_bind | ms_rdonly | ms_nosuid | (0 if path.startswith("/dev/") else ms_nodev)
            try:
                mount(None, inside(path), None, readonly)
            except OSError:  # a user namespace may not drop the source's locked flags; keep them and add ours
                mount(None, inside(path), None, readonly | ms_nodev | ms_noexec if path.startswith("/dev/") else readonly)
        os.makedirs(inside("/proc"), exist_ok=True)
        mount("proc", inside("/proc"), "proc", ms_nosuid | ms_nodev | ms_noexec)
        os.makedirs(inside(workdir), exist_ok=True)
        os.makedirs(inside(os.path.join(workdir, "tmp")), exist_ok=True)
        for name, data in staged.items():
            with open(inside(os.path.join(workdir, name)), "wb") as handle:
                handle.write(data)
        os.chdir(base)
        check(libc.syscall(155, b".", b"."), "pivot_root")  # the old root now sits under the new one
        check(libc.umount2(b".", 2), "umount the host's root")  # MNT_DETACH
        os.chdir("/")
        socket_hostname = b"workbench-sandbox"
        check(libc.sethostname(socket_hostname, len(socket_hostname)), "sethostname")
        for path in (workdir, os.path.join(workdir, "tmp"), *(os.path.join(workdir, n) for n in staged)):
            os.chown(path, run_uid, run_uid)
        os.chmod(workdir, 0o700)
        os.chdir(workdir)
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            last_cap = int(handle.read())
        for cap in range(last_cap + 1):
            check(libc.prctl(24, cap, 0, 0, 0), f"PR_CAPBSET_DROP {cap}")
        check(libc.prctl(47, 4, 0, 0, 0), "PR_CAP_AMBIENT_CLEAR_ALL")
        if root_mode:
            os.setgroups([])
            os.setresgid(run_uid, run_uid, run_uid)
            os.setresuid(run_uid, run_uid, run_uid)  # from root to a non-zero id: every capability is cleared
        else:
            # SECBIT_NOROOT | _LOCKED | SECBIT_NO_SETUID_FIXUP | _LOCKED | SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE(_LOCKED)
            check(libc.prctl(28, 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80, 0, 0, 0), "PR_SET_SECUREBITS")

            class Header(ctypes.Structure):
                _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

            class Data(ctypes.Structure):
                _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                            ("inheritable", ctypes.c_uint32)]

            header, data = Header(0x20080522, 0), (Data * 2)()
            check(libc.syscall(126, ctypes.byref(header), ctypes.byref(data)), "capset")
        check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        with open("/proc/self/status") as handle:
            caps = {line.split(":")[0]: int(line.split(":")[1], 16) for line in handle if line.startswith("Cap")}
        if any(caps[name] for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb")):
            raise PermissionError(f"capabilities remain after the drop: {caps}")
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": os.path.join(workdir, "tmp"), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1"}
        os.execve(config["python"], [config["python"], "-I", "-S", "-B", "main.py"], env)
    except BaseException as error:
        fail(f"could not set up the run: {error!r}")


if __name__ == "__main__":
    import json as _json
    import sys as _sys

    _workbench_launch(_json.loads(_sys.argv[1]))
