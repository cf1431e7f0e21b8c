"""The judge inside every sandboxed run: it forks the candidate, runs the tests itself, and alone reports.

`sandbox.py` prepends this file's source (after `sandbox_guard.py`'s) to each run's `main.py`
and calls `_workbench_judge(...)` once, after the kernel limits and the first Landlock layer.

Two processes, one verdict:
- the judge forks the candidate process *before* it reads the tests (they arrive on its stdin,
  which the candidate closes first thing), so the tests are nowhere in the candidate's memory,
  files or /proc; the candidate process adds its own Landlock layer (reads limited to the
  sandbox and the interpreter's files), the Python seat belt, then runs the candidate's code
  as `__main__` and serves requests on a pair of pipes;
- the judge builds the test namespace itself, from its own objects: builtins, the task's trusted
  prelude (HumanEval's prompt, so its helper functions are the dataset's), the trusted `imports`
  (MBPP's reference imports) it runs itself, and stdlib modules it imports by the name the tests
  use; the candidate contributes only its entry points (as data or proxies; never resolved through
  `__module__`/`__qualname__` or any attribute it sets) and whether such a module name is bound.
  Then it executes the tests, in order, in its own interpreter: the `assert`s, `==`, `abs`, `set`,
  `math.isclose`, `sys.getsizeof` and exceptions are the judge's, never the candidate's;
- the candidate process confirms its guard ("guard-ok") before any candidate code runs; no
  confirmation means a sandbox fault (status "error"), and after it every exit, whatever its
  status, is the candidate's failure;
- values cross the pipes as data only (None, bool, int, float, complex, str, bytes, bytearray,
  tuple, list, dict, set, frozenset, range; subclasses travel as their base type), decoded
  into fresh judge-side objects: a candidate object cannot claim to equal anything. Anything
  else stays in the candidate process behind a proxy (calls, attributes, items, iteration,
  len, bool, str); a proxy equals only itself. The judge never sends the candidate anything but
  data and the candidate's own proxies, so the candidate cannot reach the judge's objects;
- the verdict goes to the harness on fd `verdict_fd`, which the candidate process closes at
  once and, being in a nested Landlock domain, cannot reopen through /proc (nor ptrace or
  signal the judge). A candidate that exits, crashes, hangs, floods or garbles the protocol at
  any point only makes the verdict "failed", "killed" or (from the harness) "timeout".
"""


def _workbench_judge(sandbox_dir, landlock_abi, read_roots, network_isolated, verdict_fd):
    import builtins
    import json
    import os
    import sys

    max_message = 64 << 20
    to_candidate, to_judge = os.pipe(), os.pipe()  # (read, write) each; pipes, not sockets: faster to set up
    pid = os.fork()
    if pid == 0:
        read_fd, write_fd = to_candidate[0], to_judge[1]
        os.close(to_candidate[1])
        os.close(to_judge[0])
        try:
            os.close(verdict_fd)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            _workbench_landlock(sandbox_dir, landlock_abi, read_roots)  # noqa: F821 (from sandbox_guard.py)
            _workbench_seat_belt(sandbox_dir, network_isolated)  # noqa: F821
        except BaseException as error:
            print(f"workbench sandbox guard failed: {error!r}", file=sys.stderr, flush=True)
            os._exit(1)  # the judge never got "guard-ok", so it reports the fault on its own channel
    else:
        read_fd, write_fd = to_judge[0], to_candidate[1]
        os.close(to_candidate[0])
        os.close(to_judge[1])

    # --- the wire: 4-byte length + JSON, both ways; requests nest (a side serves while it waits) ---

    def send(message):
        data = json.dumps(message, allow_nan=True).encode()
        data = memoryview(len(data).to_bytes(4, "big") + data)
        while data:
            data = data[os.write(write_fd, data):]

    def receive_exactly(size):
        chunks, left = [], size
        while left:
            chunk = os.read(read_fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError("the other process closed the channel")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def receive():
        size = int.from_bytes(receive_exactly(4), "big")
        if size > max_message:
            raise ValueError(f"message of {size} bytes exceeds {max_message}")
        return json.loads(receive_exactly(size))

    owned = {}  # id -> object this side exported as a proxy
    proxies = {}  # id -> Proxy of an object the other side owns

    class Proxy:
        """An object that lives in the other process; equal only to itself."""

        __slots__ = ("_workbench_id", "__weakref__")

        def __init__(self, ident):
            object.__setattr__(self, "_workbench_id", ident)

        def __call__(self, *args, **kwargs):
            return request("call", self, None, args, kwargs)

        def __getattr__(self, name):
            if name.startswith("__") and name.endswith("__"):
                raise AttributeError(name)
            return request("getattr", self, name)

        def __setattr__(self, name, value):
            request("setattr", self, name, (value,))

        def __getitem__(self, key):
            return request("getitem", self, None, (key,))

        def __setitem__(self, key, value):
            request("setitem", self, None, (key, value))

        def __iter__(self):
            return request("iter", self)

        def __next__(self):
            return request("next", self)

        def __len__(self):
            return request("len", self)

        def __bool__(self):
            return request("bool", self)

        def __contains__(self, item):
            return request("contains", self, None, (item,))

        def __str__(self):
            return request("str", self)

        def __repr__(self):
            return request("repr", self)

        __eq__ = object.__eq__
        __hash__ = object.__hash__

    exact = {int, float, str, bool, type(None)}

    def encode(value, export):
        kind = type(value)
        if kind in exact:
            if kind is int and not -(1 << 62) < value < 1 << 62:
                return ["i", format(value, "x")]
            return value
        if kind is Proxy:
            return ["y", object.__getattribute__(value, "_workbench_id")]
        if isinstance(value, (list, tuple, set, frozenset)):
            tag = "l" if isinstance(value, list) else "t" if isinstance(value, tuple) else "s" if isinstance(value, set) else "f"
            iterate = {"l": list.__iter__, "t": tuple.__iter__, "s": set.__iter__, "f": frozenset.__iter__}[tag]
            return [tag, [encode(item, export) for item in iterate(value)]]
        if isinstance(value, dict):
            return ["d", [[encode(k, export), encode(v, export)] for k, v in dict.items(value)]]
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return encode(int.__int__(value), export)
        if isinstance(value, float):
            return float.__float__(value)
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, complex):
            return ["c", complex.__complex__(value).real, complex.__complex__(value).imag]
        if isinstance(value, (bytes, bytearray)):
            tag = "b" if isinstance(value, bytes) else "B"
            return [tag, bytes(value).decode("latin-1")]
        if kind is range:
            return ["r", value.start, value.stop, value.step]
        if not export and isinstance(getattr(value, "__qualname__", None), str):
            # A class or function the tests name (e.g. `int` in `remove_datatype(t, int)`): sent by name.
            module, qualname = getattr(value, "__module__", None), value.__qualname__
            target = sys.modules.get(module) if isinstance(module, str) else None
            for part in qualname.split("."):
                target = getattr(target, part, None)
            if target is value:
                return ["g", module, qualname]
        if not export:
            raise TypeError(
                f"a test passed a {kind.__name__} to the candidate; only data and the candidate's own objects "
                f"cross the sandbox boundary"
            )
        ident = id(value)
        owned[ident] = value
        return ["o", ident]

    def decode(value):
        if not isinstance(value, list):
            return value
        tag = value[0]
        if tag == "l":
            return [decode(item) for item in value[1]]
        if tag == "t":
            return tuple(decode(item) for item in value[1])
        if tag == "s":
            return {decode(item) for item in value[1]}
        if tag == "f":
            return frozenset(decode(item) for item in value[1])
        if tag == "d":
            return {decode(k): decode(v) for k, v in value[1]}
        if tag == "i":
            return int(value[1], 16)
        if tag == "c":
            return complex(value[1], value[2])
        if tag == "b":
            return value[1].encode("latin-1")
        if tag == "B":
            return bytearray(value[1].encode("latin-1"))
        if tag == "r":
            return range(value[1], value[2], value[3])
        if tag == "o":
            ident = int(value[1])
            if ident not in proxies:
                proxies[ident] = Proxy(ident)
            return proxies[ident]
        if tag == "y":
            return owned[int(value[1])]
        if tag == "g" and exporting:  # only the candidate process takes names; the judge never resolves them here
            import importlib

            target = importlib.import_module(value[1])
            for part in value[2].split("."):
                target = getattr(target, part)
            return target
        raise ValueError(f"unknown value tag {tag!r}")

    failure = []  # set when the candidate ends or breaks the protocol; the judge then fails whatever the tests catch

    class CandidateError(Exception):
        """An exception raised in the candidate process that is not a builtin Exception."""

    def raise_remote(name, message, op):
        kind = getattr(builtins, name, None)
        if isinstance(kind, type) and issubclass(kind, (StopIteration, StopAsyncIteration)) and op != "next":
            kind = None  # a call that raises StopIteration must not end the test's map() or loop early as if done
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                error = kind(message)
            except Exception:
                error = CandidateError(f"{name}: {message}")
            raise error
        if isinstance(kind, type) and issubclass(kind, BaseException):  # SystemExit, KeyboardInterrupt, ...
            failure.append(f"the candidate raised {name} ({message}) during the tests")
        raise CandidateError(f"{name}: {message}")

    def broken(reason):
        failure.append(reason)
        return CandidateError(reason)

    def request(op, target, name=None, args=(), kwargs=None):
        if failure:
            raise CandidateError(failure[0])
        message = ["q", op, object.__getattribute__(target, "_workbench_id"), name,
                   [encode(a, exporting) for a in args], {k: encode(v, exporting) for k, v in (kwargs or {}).items()}]
        try:
            send(message)
            message = receive()
            while message[0] == "q":
                serve(message)
                message = receive()
        except (OSError, EOFError, ValueError, TypeError, IndexError, RecursionError, MemoryError) as error:
            raise broken(f"the candidate process stopped answering ({type(error).__name__}: {error})") from None
        if message[0] == "r":
            try:
                return decode(message[1])
            except (ValueError, TypeError, KeyError, IndexError, RecursionError) as error:
                raise broken(f"the candidate sent a malformed value ({type(error).__name__}: {error})") from None
        if message[0] == "e" and len(message) == 3:
            raise_remote(str(message[1]), str(message[2]), op)
        raise broken(f"the candidate sent an unexpected message {str(message)[:80]!r}")

    operations = {
        "call": lambda obj, name, args, kwargs: obj(*args, **kwargs),
        "getattr": lambda obj, name, args, kwargs: getattr(obj, name),
        "setattr": lambda obj, name, args, kwargs: setattr(obj, name, args[0]),
        "getitem": lambda obj, name, args, kwargs: obj[args[0]],
        "setitem": lambda obj, name, args, kwargs: obj.__setitem__(args[0], args[1]),
        "iter": lambda obj, name, args, kwargs: iter(obj),
        "next": lambda obj, name, args, kwargs: next(obj),
        "len": lambda obj, name, args, kwargs: len(obj),
        "bool": lambda obj, name, args, kwargs: bool(obj),
        "contains": lambda obj, name, args, kwargs: args[0] in obj,
        "str": lambda obj, name, args, kwargs: str(obj),
        "repr": lambda obj, name, args, kwargs: repr(obj),
    }

    def serve(message):
        """Answer one request on an object this side owns (only the candidate process owns objects)."""
        _, op, ident, name, args, kwargs = message
        try:
            result = operations[op](owned[ident], name, [decode(a) for a in args],
                                    {k: decode(v) for k, v in kwargs.items()})
            try:
                reply = ["r", encode(result, True)]
            except RecursionError:
                reply = ["r", ["o", id(result)]]
                owned[id(result)] = result
        except BaseException as error:
            reply = ["e", type(error).__name__, str(error)[:2000]]
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        send(reply)

    # --- the candidate process ---
    if pid == 0:
        exporting = True
        send(["guard-ok"])  # before any candidate code runs: from here on, an exit is the candidate's own
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        try:
            with open("candidate.py", encoding="utf-8") as handle:
                code = compile(handle.read(), "candidate.py", "exec")
            exec(code, namespace)
        except SystemExit as exit_request:
            status = exit_request.code
            os._exit(status if isinstance(status, int) else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        names = {}
        for key, value in list(namespace.items()):
            if not isinstance(key, str) or key.startswith("__"):
                continue
            kind = "m" if isinstance(value, type(sys)) else "v"  # a hint only: the judge imports its own module
            try:
                names[key] = [kind, encode(value, True)]
            except RecursionError:
                owned[id(value)] = value
                names[key] = [kind, ["o", id(value)]]
        try:
            send(["ready", names])
            while True:
                serve(receive())
        except BaseException:
            os._exit(0)

    # --- the judge ---
    exporting = False
    import importlib
    import time

    def report(status, detail):
        if status != "passed":
            print(f"workbench judge: {status}: {detail}", file=sys.stderr, flush=True)
        message = json.dumps({"status": status, "detail": detail[-2000:]}) + "\n"
        try:
            os.write(verdict_fd, message.encode())
        finally:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
            os._exit(0)

    def candidate_ended(reason):
        """Why the candidate process stopped answering: its exit status, or `reason` if it lingers."""
        for _ in range(200):
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
            time.sleep(0.01)
        else:
            return "failed", reason
        if os.WIFSIGNALED(status):
            return "killed", f"the candidate process was killed by signal {os.WTERMSIG(status)}"
        return "failed", f"the candidate process exited with status {os.WEXITSTATUS(status)} before its tests ran"

    try:
        job = json.loads(sys.stdin.buffer.read())
    except BaseException as error:
        report("error", f"the judge could not read its job: {error!r}")
    try:
        # Sent by the candidate process after its guard and before the candidate's code: without it the
        # fault is the sandbox's; with it, any later exit (whatever its status) is the candidate's.
        if receive() != ["guard-ok"]:
            raise ValueError("expected the guard's confirmation first")
    except EOFError:
        report("error", "the sandbox guard failed in the candidate process")
    except BaseException as error:
        report("failed", f"the candidate's first message was unusable: {error!r}")
    try:
        ready = receive()
        if ready[0] != "ready" or not isinstance(ready[1], dict):
            raise ValueError("expected the candidate's names first")
    except EOFError as error:
        report(*candidate_ended(str(error)))
    except BaseException as error:
        report("failed", f"the candidate's first message was unusable: {error!r}")

    # The tests' namespace is the judge's own: builtins, the trusted prelude (HumanEval's prompt), the
    # reference's import statements (MBPP/596 uses `sys` that only the reference imports), run here,
    # and stdlib modules imported here by the name the tests use. From the candidate come only the
    # entry points, as data or proxies: nothing it sets (`__module__`, `__qualname__`, `__class__`,
    # a patched or fake module) makes the judge look up, import or call anything of its own.
    # Whether a module name is bound at all follows the candidate (as one shared interpreter would).
    tests_namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        import ast
        import warnings

        try:
            prelude = compile(job["prelude"], "<prompt>", "exec")
        except SyntaxError:  # a prompt that ends at a bare signature: give it a body
            prelude = compile(job["prelude"] + "\n    pass\n", "<prompt>", "exec")
        exec(prelude, tests_namespace)
        trusted = set(tests_namespace) - {"__name__", "__builtins__"}
        imported = {"__builtins__": builtins}
        exec(compile(job["imports"], "<reference imports>", "exec"), imported)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            named = {node.id for node in ast.walk(ast.parse(job["tests"])) if isinstance(node, ast.Name)}
        under_test = set(job["entry_points"])
        for key, entry in ready[1].items():
            if key.startswith("__") or not isinstance(entry, list) or len(entry) != 2:
                continue
            if key in under_test:
                tests_namespace[key] = decode(entry[1])  # the candidate's object itself, never found by its name
            elif key in trusted or key not in named or hasattr(builtins, key):
                continue  # a candidate's `abs`, `set` or prompt helper never replaces the judge's
            elif key in imported and key != "__builtins__":
                tests_namespace[key] = imported[key]
            elif entry[0] == "m" and key in sys.stdlib_module_names:
                tests_namespace[key] = importlib.import_module(key)
        exec(compile(job["tests"], "<tests>", "exec"), tests_namespace)
    except BaseException:
        import traceback

        report("failed", failure[0] if failure else traceback.format_exc())
    if failure:
        report("failed", failure[0])
    report("passed", "every test ran and held")
