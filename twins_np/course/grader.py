"""The grader: what is taken from a submission, how it is run, how a score is made.

**From the student**, and only this: the files that hold the task's solution regions
(``twins_np/functional/activation.py``, ...), read from the submission folder or zip. Nothing
else of a submission is read.

**Run only in a worker** (:mod:`twins_np.course.runner`): one process per task, sandboxed,
that imports the student copy's library (every task stripped: no solution is in it) with the
student's files of that task, and answers calls. A function of another task that this task
needs (FFN needs GELU) is a proxy: the grader answers it with the values the reference
solution gave for exactly the call the reference makes, so a task's score never depends on
the student's other tasks and no task can call another task's solution.

**Compared in this process**, against the reference process's outputs
(:mod:`twins_np.course.reference`): the inputs are drawn from a secret seed chosen for each
grading run (values and shapes), so no answer can be looked up. This module imports the
runner and the manifest reader, never the task table, the markers or a solution.

**Scoring**: a task's checks are outputs of its cases ("float64: dx"); each compares values
(relative error, by the output's dtype; exact for data movement) and counts once; a task's
score is points x passed / checks. A failure, an exception (the untouched stub raises
``NotImplementedError``), a skip or a wrong dtype all count against. Every case is timed: a
task whose code takes more than ``time_factor`` x the reference's time (+ a slack) on a case
scores 0 ("time limit"; finite differences are hundreds of times slower). A static review
flags, for the instructor, code that runs strings, touches files or processes, imports
autodiff or the gradient checker, or names another task's functions; a flag does not change
the score.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pathlib
import re
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import runner
from .manifest import GradingError, instructor_root

__all__ = ["CheckResult", "GradingError", "TaskResult", "grade", "manual_questions", "review", "scrub", "summary"]

LIMITS = {"memory_mb": 3072, "processes": 16, "file_mb": 16, "open_files": 64}
STARTUP_S = 60.0  # importing the library and the student's files
MAX_DEP_CALLS = 200  # proxy calls per case
DEP_TOL = {"float64": 1e-7, "float32": 1e-3}  # a proxy call matches the reference's within this relative error
MESSAGE_WIDTH = 200


@dataclass
class CheckResult:
    """One check: one output of one case."""

    name: str
    passed: bool
    reason: str = ""
    visibility: str = "visible"
    rel_error: float | None = None


@dataclass
class TaskResult:
    """One task's grade; :attr:`line` is what the student reads first."""

    task: str
    title: str
    points: float
    score: float = 0.0
    passed: int = 0
    total: int = 0
    status: str = "ok"  # "ok", "error" (does not import, crashed, unreadable output), "timeout", "sandbox"
    error: str = ""  # the reason for a non-"ok" status, one line
    line: str = ""  # points and why, one line
    checks: list[CheckResult] = field(default_factory=list)
    review: list[str] = field(default_factory=list)  # static flags for the instructor (no effect on the score)
    notes: list[str] = field(default_factory=list)  # proxy calls that did not match, stragglers, ...
    seconds: float = 0.0
    ratio: float = 0.0  # the slowest case's time / the reference's
    seed: int = 0  # the grading run's seed of the inputs (`grade --seed` repeats the run)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]


# --- messages -------------------------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?|\S")
SHINGLE = 8  # tokens per hashed run


def shingles(text: str) -> set[str]:
    """Hashes of every run of :data:`SHINGLE` tokens of ``text`` (used by the builder and :func:`scrub`)."""
    tokens = _TOKEN.findall(text)
    return {hashlib.sha256(" ".join(tokens[i : i + SHINGLE]).encode()).hexdigest()[:16]
            for i in range(max(0, len(tokens) - SHINGLE + 1))}  # fmt: skip


def scrub(text: str, hashes: frozenset[str] | set[str] = frozenset(), width: int = MESSAGE_WIDTH) -> str:
    """A message fit for feedback: one line, at most ``width`` characters, and withheld when it
    quotes a solution (any run of tokens whose hash is in ``hashes``)."""
    if hashes and shingles(text.replace("\\n", "\n")) & hashes:
        return "(message withheld: it quotes the reference solution)"
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _what(output: str) -> str:
    """"gradient for x" for dx, "exp_avg" for exp_avg."""
    return f"gradient for {output[1:]}" if re.fullmatch(r"d[a-z]\w*", output) else output


# --- static review -------------------------------------------------------------------------

_CALLS = {"exec": "runs code from a string (exec)", "eval": "runs code from a string (eval)",
          "compile": "compiles code (compile)", "__import__": "imports by name (__import__)",
          "open": "opens files (open)", "globals": "reads globals()", "vars": "reads vars()",
          "breakpoint": "calls breakpoint()", "input": "reads input()"}  # fmt: skip
_MODULES = {
    "os": "files or processes", "sys": "the interpreter", "subprocess": "processes", "importlib": "imports by name",
    "io": "files", "pathlib": "files", "shutil": "files", "glob": "files", "tempfile": "files", "socket": "the network",
    "urllib": "the network", "http": "the network", "ctypes": "native code", "multiprocessing": "processes",
    "threading": "threads", "signal": "signals", "pickle": "pickle", "marshal": "code objects", "builtins": "builtins",
    "inspect": "introspection", "gc": "introspection", "runpy": "running modules", "code": "running code",
    "resource": "limits", "mmap": "memory maps", "fcntl": "files", "pty": "terminals",
    "torch": "automatic differentiation", "torchvision": "automatic differentiation",
    "functorch": "automatic differentiation", "jax": "automatic differentiation", "jaxlib": "automatic differentiation",
    "autograd": "automatic differentiation", "tensorflow": "automatic differentiation", "numdifftools": "numerical derivatives",
    "twins_np.gradcheck": "the gradient checker", "twins_np.gradcheck_suite": "the gradient checker",
    "twins_np.course": "the grader",
}  # fmt: skip
_ATTRS = {"__builtins__", "__dict__", "__globals__", "__code__", "__subclasses__", "__loader__", "__spec__",
          "__import__", "_getframe", "f_globals", "f_locals", "f_back", "gi_frame", "modules", "gradcheck"}  # fmt: skip


def _flags(text: str, foreign: list[str], forwards: list[str]) -> dict[str, int]:
    """What the static review notices in a source: flag -> its first line."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    out: dict[str, int] = {}

    def add(flag: str, node: ast.AST) -> None:
        out.setdefault(flag, getattr(node, "lineno", 0))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom):
                names += [f"{node.module}.{a.name}" for a in node.names if node.module]
            for name in names:
                for mod, why in _MODULES.items():
                    if name == mod or name.startswith(mod + "."):
                        add(f"imports {mod} ({why})", node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
            add(_CALLS[node.func.id], node)
        elif isinstance(node, ast.Attribute) and node.attr in _ATTRS:
            add(f"uses .{node.attr}", node)
        elif isinstance(node, ast.Name) and node.id in ("__builtins__", "__import__"):
            add(f"uses {node.id}", node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for word in ("torch", "jax", "gradcheck", "/proc", "solution"):
                if word in node.value:
                    add(f"a string names {word}", node)
        used = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        for name in {used} & set(foreign):
            add(f"uses {name} (another task's function)", node)
    for fn in ast.walk(tree):  # finite differences: a backward that runs its own forward
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and ("backward" in fn.name or fn.name == "_update"):
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    f = node.func
                    called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                    if called in forwards:
                        add(f"{fn.name} calls {called} (the forward: finite differences?)", node)
    return out


def review(files: dict[str, str], stubs: dict[str, str], spec: dict[str, Any]) -> list[str]:
    """The static review of a task's submitted files: what the stub does not already do.

    Returns "file, line N: flag" lines, for the instructor to look at; grading does not use them.
    """
    foreign, forwards = spec.get("review", {}).get("foreign", []), spec.get("review", {}).get("forwards", [])
    out = []
    for rel, text in files.items():
        before = _flags(stubs.get(rel, ""), foreign, forwards)
        for flag, line in _flags(text, foreign, forwards).items():
            if flag not in before:
                out.append(f"{pathlib.PurePosixPath(rel).name}, line {line}: {flag}")
    return out


# --- comparing ------------------------------------------------------------------------------


def _follow(value: Any, path: list[int]) -> tuple[Any, str]:
    """The output at ``path`` of a returned value, or why it is not there."""
    for depth, i in enumerate(path):
        if not isinstance(value, (tuple, list)):
            what = "None" if value is None else f"a {type(value).__name__}" if not isinstance(value, np.ndarray) else "an array"
            return None, f"returned {what} where a tuple was expected" if depth == 0 else f"item {path[depth - 1]} is {what}"
        if i >= len(value):
            return None, f"returned {len(value)} values, expected more than {i}"
        value = value[i]
    return value, ""


def _rel_error(got: np.ndarray, expected: np.ndarray) -> float:
    diff = np.linalg.norm((got.astype(np.float64) - expected.astype(np.float64)).ravel())
    scale = np.linalg.norm(expected.astype(np.float64).ravel())
    return float(diff / scale) if scale > 0 else float(diff)


def _compare(got: Any, expected: np.ndarray, tol: float, output: str) -> tuple[bool, str, float | None]:
    if isinstance(got, (float, int, np.generic)) and not isinstance(got, bool):
        got = np.asarray(got)
    if not isinstance(got, np.ndarray):
        return False, f"{output} is {'None' if got is None else 'a ' + type(got).__name__}, not an array", None
    if got.shape != expected.shape:
        return False, f"{output} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}", None
    if got.dtype != expected.dtype:
        return False, f"{output} is {got.dtype}, expected {expected.dtype} (the inputs' dtype)", None
    if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
        return False, f"{output} has NaN or infinite values", None
    err = _rel_error(got, expected)
    if tol == 0.0:
        if not np.array_equal(got, expected):
            return False, f"{output} wrong ({int(np.sum(got != expected))} of {got.size} values differ)", err
        return True, "", 0.0
    if not err <= tol:
        return False, f"{_what(output)} wrong (rel. error {err:.2g})", err
    return True, "", err


def _close(a: Any, b: Any) -> tuple[bool, float]:
    """Whether a proxy call's arguments ``a`` match the reference's ``b``; the worst relative error."""
    if isinstance(b, np.ndarray) or isinstance(a, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape or a.dtype != b.dtype:
            return False, float("inf")
        if b.dtype.kind != "f":
            return bool(np.array_equal(a, b)), 0.0
        if not np.all(np.isfinite(a)):
            return False, float("inf")
        err = _rel_error(a, b)
        return err <= DEP_TOL.get(b.dtype.name, 1e-3), err
    if isinstance(b, (tuple, list)):
        if not isinstance(a, (tuple, list)) or len(a) != len(b) or getattr(a, "kind", None) != getattr(b, "kind", None):
            return False, float("inf")
        worst = 0.0
        for x, y in zip(a, b, strict=True):
            ok, err = _close(x, y)
            if not ok:
                return False, err
            worst = max(worst, err)
        return True, worst
    if isinstance(b, dict):
        if not isinstance(a, dict) or set(a) != set(b):
            return False, float("inf")
        return _close([a[k] for k in sorted(b)], [b[k] for k in sorted(b)])
    if isinstance(b, float) and isinstance(a, (float, int)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-12 * max(1.0, abs(b)), 0.0
    return a == b and type(a) is type(b), 0.0


def _nan_like(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.full_like(value, np.nan) if value.dtype.kind == "f" else np.zeros_like(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_nan_like(v) for v in value) if not hasattr(value, "kind") else value
    return value


# --- grading --------------------------------------------------------------------------------


def _submission_root(path: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
    """The folder to read files from: the folder itself, or a zip's contents."""
    if path.is_file() and zipfile.is_zipfile(path):
        dest = tmp / "unzipped"
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():  # no absolute paths or `..` out of the folder
                target = (dest / info.filename).resolve()
                if dest.resolve() not in target.parents and target != dest.resolve():
                    raise GradingError(f"not a submission: {path} holds a file outside its folder ({info.filename})")
            z.extractall(dest)
        return dest
    if not path.is_dir():
        raise GradingError(f"not a submission: {path} is neither a folder nor a zip file")
    return path


def _find(sub: pathlib.Path, rel: str) -> pathlib.Path | None:
    """``rel`` in the submission: at its place, under one top folder, or (Gradescope's loose
    uploads) as the only file of that name."""
    for cand in (sub / rel, *(d / rel for d in sorted(sub.iterdir()) if d.is_dir())):
        if cand.is_file() and not cand.is_symlink():
            return cand
    name = pathlib.PurePosixPath(rel).name
    hits = [p for p in sub.rglob(name) if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts]
    return hits[0] if len(hits) == 1 else None


class _Packets:
    """The reference process's messages, handed to the task threads as they come."""

    def __init__(self, ref: runner.Reference, tasks: list[str]) -> None:
        self.got: dict[str, Any] = {}
        self.error = ""
        self.ready = {t: threading.Event() for t in tasks}
        self.thread = threading.Thread(target=self._read, args=(ref, tasks), daemon=True)
        self.thread.start()

    def _read(self, ref: runner.Reference, tasks: list[str]) -> None:
        try:
            for _ in tasks:
                header, arrays = ref.next()
                self.got[header["task"]] = (header, arrays)
                self.ready[header["task"]].set()
        except Exception as e:  # noqa: BLE001 - every waiting task gets the error
            self.error = str(e)
        for event in self.ready.values():
            event.set()

    def wait(self, task: str) -> tuple[dict[str, Any], list[np.ndarray]]:
        self.ready[task].wait()
        if task not in self.got:
            raise GradingError(self.error or f"the reference process sent nothing for {task}")
        header, arrays = self.got[task]
        if "error" in header:
            raise GradingError(f"the reference solution of {task} failed: {header['error']}")
        return header, arrays


@dataclass
class _Run:
    """What every task of one grading run shares."""

    manifest: dict[str, Any]
    box: runner.Sandbox
    pub: pathlib.Path
    private: pathlib.Path
    hide: list[str]
    packets: _Packets
    found: dict[str, pathlib.Path | None]
    timeout: float | None
    hashes: frozenset[str]
    seed: int


def grade(
    submission: str | os.PathLike,
    manifest: dict[str, Any],
    tasks: list[str] | None = None,
    root: pathlib.Path | None = None,
    timeout: float | None = None,
    jobs: int | None = None,
    seed: int | None = None,
    namespaces: bool = True,
) -> list[TaskResult]:
    """Grade a submission (folder or zip) with the instructor's copy ``root``.

    Args:
        submission: the student's project folder, a folder holding it, or a zip.
        manifest: from :func:`twins_np.course.manifest.load_manifest` (the instructor's).
        tasks: grade only these (default: every task of the manifest).
        root: the instructor's copy, whose solutions the reference process runs (default:
            the project this package comes from).
        timeout: seconds per task, at most (default: the manifest's).
        jobs: tasks graded at once (default: the number of cores).
        seed: the secret seed of the inputs (default: a new random one; give one to repeat a run).
        namespaces: let the sandbox use namespaces where the system allows them (unless the
            environment sets ``TWINS_NP_NAMESPACES=0``).

    Raises:
        GradingError: when the submission holds none of the files to hand in, or the
            reference process fails.
    """
    root = (root or instructor_root()).resolve()
    chosen = tasks or list(manifest["tasks"])
    unknown = [t for t in chosen if t not in manifest["tasks"]]
    if unknown:
        raise GradingError(f"unknown tasks {unknown}; this assignment has: {', '.join(manifest['tasks'])}")
    seed = secrets.randbits(63) if seed is None else int(seed)
    box = runner.sandbox(None if namespaces else False)
    with tempfile.TemporaryDirectory(prefix="twins-np-grade-") as private_name:
        private = pathlib.Path(private_name)  # the grader's own (0700): the unzipped submission
        sub = _submission_root(pathlib.Path(submission), private)
        found = {rel: _find(sub, rel) for t in chosen for rel in manifest["tasks"][t]["files"]}
        if not any(found.values()):
            raise GradingError(
                f"not a submission: {submission} holds none of the files to hand in ({', '.join(found)}); "
                "give the project folder, or the zip made by `twins-np assignment submit`"
            )
        pub = pathlib.Path(tempfile.mkdtemp(prefix="twins-np-work-"))  # what the workers may read
        try:
            pub.chmod(0o755)
            runner.write_library(manifest["library"], pub / "lib")
            secret = [root, private]
            if manifest.get("_path"):
                secret.append(pathlib.Path(manifest["_path"]))
            inside = runner.binds(box.python, pub)
            keep = [pub, pathlib.Path(box.python), *map(pathlib.Path, runner.site_dirs())]
            hide = runner.hidden_paths(secret, inside, keep) if box.namespaces else []
            others = {t: _foreign_functions(t, manifest) for t in chosen}
            ref = runner.Reference(root, chosen, seed, others)
            try:
                run = _Run(manifest, box, pub, private, hide, _Packets(ref, chosen), found, timeout,
                           frozenset(manifest.get("scrub", ())), seed)  # fmt: skip
                width = max(1, min(len(chosen), jobs or os.cpu_count() or 2))
                with ThreadPoolExecutor(width) as pool:
                    results = list(pool.map(lambda t: _grade_task(t, run), chosen))
            finally:
                ref.close()
        finally:
            _rmtree(pub)
    return results


def _rmtree(path: pathlib.Path) -> None:
    for d in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
        try:
            d.chmod(0o755)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def _grade_task(task: str, run: _Run) -> TaskResult:
    spec = run.manifest["tasks"][task]
    res = TaskResult(task, spec["title"], float(spec["points"]), total=len(spec["checks"]), seed=run.seed)
    t_start = time.monotonic()
    limit = float(run.timeout or spec.get("timeout") or run.manifest.get("timeout", 120))
    deadline = t_start + limit
    texts, overlay, missing = {}, {}, []
    for rel, module in zip(spec["files"], spec["modules"], strict=True):
        src = run.found[rel]
        try:
            texts[rel] = src.read_text(encoding="utf-8") if src else spec["stubs"][rel]
        except (OSError, UnicodeDecodeError) as e:
            texts[rel] = spec["stubs"][rel]
            res.notes.append(f"cannot read {rel} ({type(e).__name__}): graded as the untouched stub")
        if src is None:
            missing.append(rel)
        path = run.private / "files" / task / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[rel])
        overlay[module] = str(path)
    if missing:
        res.notes.append(f"not handed in: {', '.join(missing)} (graded as the untouched stub)")
    res.review = review({r: t for r, t in texts.items() if run.found[r]}, spec["stubs"], spec)
    outcome: dict[str, CheckResult] = {}
    killed = False
    worker = runner.Worker(run.pub, task, run.pub / "lib", overlay, list(spec["modules"]), _foreign_functions(task, run.manifest),
                           {**LIMITS, **run.manifest.get("limits", {}), "cpu_s": limit + 5}, run.hide, run.box)  # fmt: skip
    try:
        header, _ = worker.recv(min(deadline, t_start + STARTUP_S))
        if header.get("op") != "ready":
            _fail_all(res, spec, outcome, _error_reason(task, header, run.hashes, importing=True))
            res.status, res.error = "error", outcome[next(iter(spec["checks"]))].reason if spec["checks"] else ""
        else:
            killed = _run_cases(task, run, worker, res, spec, outcome, deadline, limit)
    except runner.WorkerError as e:
        killed = True
        reason = _worker_error_reason(e, limit, time.monotonic() - t_start)
        _fail_all(res, spec, outcome, reason)
        if res.status == "ok":
            res.status, res.error = ("timeout" if e.kind == "timeout" else "error"), reason
    except GradingError:
        killed = True
        raise
    finally:
        info = worker.close(kill=killed)
    if info.failed_to_start:  # the machine's fault, not the submission's: no grade rather than a wrong one
        raise GradingError(f"the sandbox could not start a worker: {info.failed_to_start} "
                           "(TWINS_NP_NAMESPACES=0 grades without namespaces; docs/instructors.md)")  # fmt: skip
    if info.stragglers:
        res.notes.append(f"{info.stragglers} process(es) it started were still running and were killed")
    if info.tampered:
        res.status, res.error = "sandbox", f"grading was interfered with ({info.tampered}): no points"
    res.seconds = time.monotonic() - t_start
    order = [c.name for c in res.checks] or list(spec["checks"])
    res.checks = [outcome.get(name) or CheckResult(name, False, "not run") for name in order]
    for c in res.checks:
        c.visibility = spec["checks"][c.name]
    res.passed = sum(c.passed for c in res.checks)
    res.score = 0.0 if res.status in ("timeout", "sandbox") or not res.total else res.points * res.passed / res.total
    res.line = _line(res)
    return res


def _foreign_functions(task: str, manifest: dict[str, Any]) -> list[str]:
    """Every other task's functions (assigned or not): proxies in the worker, recorded in the reference."""
    return [f for other, fns in manifest["functions"].items() if other != task for f in fns]


def _fail_all(res: TaskResult, spec: dict[str, Any], outcome: dict[str, CheckResult], reason: str) -> None:
    for name in spec["checks"]:
        if name not in outcome:
            outcome[name] = CheckResult(name, False, reason)


def _error_reason(task: str, header: dict[str, Any], hashes: frozenset[str], importing: bool = False) -> str:
    kind, message, where = str(header.get("type", "")), str(header.get("message", "")), str(header.get("where", ""))
    if header.get("op") not in ("error",):
        return "the worker sent something other than a result"
    if kind == "NotImplementedError" and message.startswith(f"{task}:"):
        return "stub not implemented"
    text = scrub(f"{kind}: {message}" if message else kind, hashes, MESSAGE_WIDTH - 40)
    where = scrub(where, hashes, 60)
    return ("does not import: " if importing else "") + text + (f" ({where})" if where else "")


def _worker_error_reason(e: runner.WorkerError, limit: float, elapsed: float) -> str:
    if e.kind == "timeout":
        return f"killed after {elapsed:.0f} s (the task's limit is {limit:g} s; an endless loop?)"
    if e.kind == "protocol":
        return f"the worker sent data the grader cannot read ({e})"
    return "the worker process ended without answering (os._exit, a crash, or the memory limit)"


WARMUP_S = 10.0  # the untimed first call: lazy imports, first-touch of memory


def _run_cases(
    task: str, run: _Run, worker: runner.Worker, res: TaskResult, spec: dict[str, Any], outcome: dict[str, CheckResult],
    deadline: float, limit: float,
) -> bool:  # fmt: skip
    """Send each case, answer its proxy calls, compare its outputs. Returns True when the worker
    had to be killed (time limit).

    The first case is sent twice: once untimed (its result is not used), so what a first call
    costs once (an import inside the function, memory touched for the first time) does not
    count against the time limit; then every case is timed. A time limit missed on any case
    costs the task all its points, so a warm-up spent on precomputing the first answer gains
    nothing.
    """
    wire = runner.wire  # the message format: the grader reads data, never code
    packet, arrays = run.packets.wait(task)
    names = [c["name"] for case in packet["cases"] for c in case["checks"]]
    res.checks = [CheckResult(n, False, "not run") for n in names]  # the cases' order, for the report
    if sorted(names) != sorted(spec["checks"]):
        raise GradingError(f"{task}: the checks of the reference process differ from the manifest's; rebuild the assignment")
    factor = float(run.manifest.get("time_factor", 20))
    slack = float(run.manifest.get("time_slack", 0.25))
    cases = packet["cases"]
    for i, case in enumerate([cases[0], *cases] if cases else []):
        warmup = i == 0
        allowed = factor * float(case["seconds"]) + (WARMUP_S if warmup else slack)
        try:
            header, got, elapsed = _call(worker, case, arrays, deadline, allowed, res)
        except runner.WorkerError as e:
            if e.kind != "timeout":
                raise
            if time.monotonic() >= deadline:
                reason = _worker_error_reason(e, limit, limit)
            else:
                reason = (f"time limit: {case['name']} ran over {allowed:.2f} s, more than {factor:g}x the "
                          f"reference's {case['seconds'] * 1e3:.1f} ms + {WARMUP_S if warmup else slack:g} s "
                          "(vectorise; no finite differences)")  # fmt: skip
            _fail_all(res, spec, outcome, reason)
            res.status, res.error = "timeout", reason
            return True
        if warmup:
            continue
        res.ratio = max(res.ratio, elapsed / max(float(case["seconds"]), 1e-9))
        if elapsed > allowed:
            reason = (f"time limit: {case['name']} took {elapsed:.2f} s, {elapsed / float(case['seconds']):.0f}x the "
                      f"reference's {case['seconds'] * 1e3:.1f} ms (limit {factor:g}x + {slack:g} s)")  # fmt: skip
            _fail_all(res, spec, outcome, reason)
            res.status, res.error = "timeout", reason
            return False
        if header.get("op") == "result":
            try:
                value = wire.decode(header.get("value"), got)
            except wire.ProtocolError as e:
                value, bad = None, f"the result cannot be read ({e})"
            else:
                bad = ""
            for check in case["checks"]:
                if bad:
                    outcome[check["name"]] = CheckResult(check["name"], False, bad)
                    continue
                item, missing = _follow(value, check["path"])
                expected = wire.decode(check["expected"], arrays)
                if missing:
                    ok, reason, err = False, missing, None
                else:
                    ok, reason, err = _compare(item, expected, float(check["tol"]), check["output"])
                if reason and case.get("describe"):
                    reason += f"; inputs {case['describe']}"
                outcome[check["name"]] = CheckResult(check["name"], ok, reason, rel_error=err)
        else:
            reason = _error_reason(task, header, run.hashes)
            for check in case["checks"]:
                outcome[check["name"]] = CheckResult(check["name"], False, reason)
    return False


def _call(
    worker: runner.Worker, case: dict[str, Any], arrays: list[np.ndarray], deadline: float, allowed: float, res: TaskResult
) -> tuple[dict[str, Any], list[np.ndarray], float]:
    """Send one case and answer its proxy calls until the worker's reply; returns (reply, its
    arrays, the seconds the worker spent, the grader's answers to its proxy calls not counted).

    Raises:
        runner.WorkerError: the worker exited, sent something unreadable, or missed the time
            (``allowed`` seconds of its own, by ``deadline`` at the latest).
    """
    wire = runner.wire
    call = case["call"]
    out: list[np.ndarray] = []
    message = {"op": "call", "fn": call["fn"], "form": call["form"], "args": wire.encode(wire.decode(call["args"], arrays), out),
               "kwargs": wire.encode(wire.decode(call["kwargs"], arrays), out)}  # fmt: skip
    deps = [{"fn": d["fn"], "args": wire.decode(d["args"], arrays), "value": wire.decode(d["value"], arrays)}
            for d in case["deps"]]  # fmt: skip
    worker.send(message, out, deadline)
    t0 = time.monotonic()
    in_deps, calls, matched = 0.0, 0, 0
    while True:
        header, got = worker.recv(min(deadline, t0 + in_deps + allowed))
        if header.get("op") != "dep":
            return header, got, time.monotonic() - t0 - in_deps
        t1 = time.monotonic()
        calls += 1
        reply, reply_arrays = _answer(header, got, deps, calls, res)
        worker.send(reply, reply_arrays, deadline)
        if reply["op"] == "dep_result" and not reply.get("miss") and matched < len(deps):
            # the grader's time answering the calls the reference makes is not the worker's; any
            # other call's is (a thread could compute while the grader answers a stream of them)
            matched += 1
            in_deps += time.monotonic() - t1


def _answer(
    header: dict[str, Any], arrays: list[np.ndarray], deps: list[dict[str, Any]], calls: int, res: TaskResult
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The grader's answer to a worker's call of another task's function."""
    wire = runner.wire
    fn = str(header.get("fn", ""))
    short = fn.rpartition(":")[2][:80]
    if calls > MAX_DEP_CALLS:
        return {"op": "dep_error", "message": f"{short}: more than {MAX_DEP_CALLS} calls in one case"}, []
    same = [d for d in deps if d["fn"] == fn]
    if not same:
        return {"op": "dep_error", "message": f"{short} belongs to another task: this task's code cannot call it here"}, []
    try:
        args = wire.decode(header.get("args"), arrays)
    except wire.ProtocolError as e:
        return {"op": "dep_error", "message": f"{short}: arguments not readable ({e})"}, []
    worst = float("inf")
    for d in same:
        ok, err = _close(args, d["args"])
        if ok:
            out: list[np.ndarray] = []
            return {"op": "dep_result", "value": wire.encode(d["value"], out)}, out
        worst = min(worst, err)
    note = (f"{short} was called with inputs that differ from the reference solution's "
            + (f"(rel. error {worst:.2g})" if np.isfinite(worst) else "(shapes or dtypes)") + ": it returned NaN")  # fmt: skip
    if note not in res.notes:
        res.notes.append(note)
    out = []
    return {"op": "dep_result", "miss": True, "value": wire.encode(_nan_like(same[0]["value"]), out)}, out


def _line(res: TaskResult) -> str:
    """Points, and why, in one line: never "ok" beside 0 points."""
    head = f"{res.score:.2f} / {res.points:g}"
    if res.status != "ok":
        return f"{head}  {res.error}"
    if res.total and res.passed == res.total:
        return f"{head}  all {res.total} checks passed"
    failed = res.failed
    visible = [c for c in failed if c.visibility == "visible"]
    first = visible[0] if visible else None
    if first is not None and all(c.reason == first.reason for c in failed):
        reason = first.reason.split("; inputs ")[0]
        return f"{head}  {reason}" + ("" if len(failed) == res.total else f" ({len(failed)} of {res.total} checks)")
    why = f"{first.name}: {first.reason.split('; inputs ')[0]}" if first else "hidden checks failed"
    return f"{head}  {why}; {len(failed)} of {res.total} checks failed"


def manual_questions(manifest: dict[str, Any], tasks: list[str] | None = None) -> dict[str, Any]:
    """The written questions of the assignments graded (those with a task in ``tasks``): graded by
    hand, so counted apart from the score (Gradescope: questions of the assignment's outline)."""
    chosen = [a for a in manifest.get("assignments", {}).values() if tasks is None or set(a["tasks"]) & set(tasks)]
    questions = [q for a in chosen for q in a["questions"]]
    return {"points": sum(float(q["points"]) for q in questions), "questions": questions,
            "assignments": [{"answers": a["answers"], "title": a["title"]} for a in chosen if a["questions"]]}  # fmt: skip


def summary(results: list[TaskResult], manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The grade as plain data (what ``--json`` writes); ``manual``: the written questions, graded by hand."""
    score = sum(r.score for r in results)
    points = sum(r.points for r in results)
    return {
        "score": round(score, 4),
        "max_score": points,
        "percent": round(100 * score / points, 2) if points else 0.0,
        "errors": [f"{r.task}: {r.error}" for r in results if r.status != "ok"],
        "review": {r.task: r.review for r in results if r.review},
        "tasks": {r.task: {k: v for k, v in asdict(r).items() if k != "task"} for r in results},
        "manual": manual_questions(manifest or {}, [r.task for r in results]),
    }
