"""The sealed grader: what comes from the student, what from the instructor, how a score is made.

**From the student**, and only this: the files that hold solution regions in the instructor's
copy (``twins_np/functional/activation.py``, ...), read from the submission folder (or a zip
of it). Nothing else of the submission is read or run: not its tests, not its
``pytest.ini`` or ``conftest.py``, not its ``twins_np/assignments.py``.

**From the instructor**: everything else. The library with its reference solutions, the
tests, the pytest configuration and conftest, and the *manifest* written by
:func:`twins_np.assignments.build`, which froze, for each task, the tests that grade it:
exactly the tests of the task's selectors that fail with the task's own
``NotImplementedError`` when only that task is stripped (so forward, dtype and input-check
tests that never reach the student's code give no free points), minus the tests needing
PyTorch or a GPU (they would grade differently on a machine without them).

**How a task is graded**: a fresh tree is made from the instructor's copy with the student's
files *of that task only*, so every other task's reference solution is in place and one
task's bug cannot cost another. pytest runs the task's frozen test ids in that tree, with
``torch`` blocked, under a time limit. A test counts when it passes; a failure, an error and
a skip all count against (the reference does not skip any frozen test: a skip means the
submission skipped it). Score = points x passed / frozen tests.

**One process per task, forked from one pytest-loaded process, in parallel** (as many as
there are cores): a student's file replaces the instructor's whole file, so two tasks'
variants of one module cannot share an interpreter; separate processes also keep a hang or a
crash inside one task (killed at its time limit) from taking the others with it. The parent
imports pytest, NumPy, SciPy and matplotlib once and never twins_np, so each child pays only
for its own tree's import and tests: a full submission of eleven tasks (202 frozen tests)
took 25 s of CPU and 21 s on the clock on a busy two-core machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GradingError", "TaskResult", "grade", "gradescope_results", "instructor_root", "run_tests", "solution_files"]

MANIFEST_VERSION = 1
# a pytest plugin of our own, written into each grading tree: it records every test's outcome
# and one-line reason as JSON lines, flushed at once, so a killed run keeps what it had done
_REPORT_PLUGIN = """\
import json, os

_OUT = open(os.environ["TWINS_NP_GRADER_REPORT"], "a", buffering=1)


def _reason(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        return str(report.longrepr[2])
    text = str(report.longrepr or "").strip().splitlines()
    errors = [ln[1:].strip() for ln in text if ln.startswith("E ")]
    return (errors or text or [""])[-1]


def pytest_runtest_logreport(report):
    if report.outcome != "passed" or report.when == "call":
        _OUT.write(json.dumps({"test": report.nodeid, "when": report.when, "outcome": report.outcome,
                               "reason": "" if report.passed else _reason(report)}) + "\\n")


def pytest_collectreport(report):
    if report.failed:
        _OUT.write(json.dumps({"test": report.nodeid, "when": "collect", "outcome": "error",
                               "reason": _reason(report)}) + "\\n")
"""
# PyTorch is blocked in every grading run: Gradescope's image has none, and a test must grade
# the same on the instructor's machine and there
_BLOCKED = ("torch", "torchvision", "timm")
_ENV_DROP = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")


class GradingError(Exception):
    """The submission cannot be graded at all (not a submission, unreadable manifest)."""


@dataclass
class TaskResult:
    """One task's grade."""

    task: str
    title: str
    points: float
    score: float = 0.0
    passed: int = 0
    total: int = 0
    status: str = "ok"  # "ok", "error" (syntax / import / collection error) or "timeout"
    error: str = ""
    failed: list[dict[str, str]] = field(default_factory=list)  # {"test", "reason", "visibility"}
    visibility: dict[str, str] = field(default_factory=dict)  # test -> "visible" / "hidden"
    seconds: float = 0.0


def instructor_root() -> pathlib.Path:
    """The instructor's copy: the project this very package was imported from."""
    return pathlib.Path(__file__).resolve().parents[1]


def solution_files(root: pathlib.Path) -> dict[str, list[str]]:
    """task -> the library files (relative paths) holding its solution regions."""
    from .assignments import regions_in

    out: dict[str, list[str]] = {}
    for path in sorted((root / "twins_np").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for task in dict.fromkeys(regions_in(path.read_text())):
            out.setdefault(task, []).append(rel)
    return out


def _tree(root: pathlib.Path, dest: pathlib.Path, overlay: dict[str, str]) -> pathlib.Path:
    """A pristine tree from the instructor's copy, with ``overlay`` {relative path: text} written over it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in ("twins_np", "tests"):
        shutil.copytree(root / name, dest / name, ignore=ignore)
    for name in ("pytest.ini", "conftest.py", "setup.cfg", "pyproject.toml"):
        if (root / name).is_file():
            shutil.copyfile(root / name, dest / name)
    for rel, text in overlay.items():
        (dest / rel).write_text(text)
    (dest / "_twins_np_grader_report.py").write_text(_REPORT_PLUGIN)
    for mod in _BLOCKED:
        (dest / "_blocked" / mod).mkdir(parents=True)
        (dest / "_blocked" / mod / "__init__.py").write_text(f"raise ImportError('{mod} is not used for grading')\n")
    return dest


# Runs every task's pytest in one Python process that has imported pytest, NumPy, SciPy and
# matplotlib once, then forks a child per task (as many at a time as there are cores): each
# child enters its task's tree, imports twins_np and the tests from there, and runs pytest.main.
# The parent never imports twins_np, so no child sees another tree's modules; a child that runs
# past its time limit is killed with its process group. Written into a temporary folder and
# run as a script, so nothing of the instructor's or the student's package is imported first.
_FORK_SERVER = """\
import json, os, signal, sys, time

import numpy, scipy.special, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot, pytest
try:
    import hypothesis
except ImportError:
    pass

spec = json.load(open(sys.argv[1]))
pending, running, status = list(enumerate(spec["runs"])), {}, {}
while pending or running:
    while pending and len(running) < spec["width"]:
        i, job = pending.pop(0)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.setsid()
                os.chdir(job["tree"])
                fd = os.open(job["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.path[:0] = [job["tree"], os.path.join(job["tree"], "_blocked")]
                os.environ["TWINS_NP_GRADER_REPORT"] = job["report"]
                code = int(pytest.main(job["args"]))
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        running[pid] = (i, time.monotonic() + job["timeout"])
    pid, st = os.waitpid(-1, os.WNOHANG)
    if pid:
        i, _ = running.pop(pid)
        status.setdefault(i, {"killed": False, "rc": os.waitstatus_to_exitcode(st)})
        continue
    for pid, (i, deadline) in list(running.items()):
        if time.monotonic() > deadline:
            status[i] = {"killed": True, "rc": -9}
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.02)
json.dump({str(i): v for i, v in status.items()}, open(spec["status"], "w"))
"""


def _parse_report(report: pathlib.Path) -> dict[str, tuple[str, str]]:
    """{test: (outcome, reason)}: "failed" if any phase failed or errored, "skipped" if it was
    skipped, else "passed"; collection errors appear under the collected file's id."""
    results: dict[str, tuple[str, str]] = {}
    if not report.exists():
        return results
    for line in report.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut
            continue
        old = results.get(r["test"])
        if r["outcome"] == "passed" and old is None:
            results[r["test"]] = ("passed", "")
        elif r["outcome"] == "skipped" and (old is None or old[0] == "passed"):
            results[r["test"]] = ("skipped", r["reason"])
        elif r["outcome"] in ("failed", "error") and (old is None or old[0] != "failed"):
            results[r["test"]] = ("failed", r["reason"])
    return results


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env.update(PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    # the solution regions live in the NumPy twins: a fused CPU kernel would compute the
    # answer without ever calling the student's code (or the reference's)
    env["TWINS_NP_CPU_KERNELS"] = "0"
    return env


def run_tests(
    runs: list[tuple[pathlib.Path, list[str], float]], jobs: int | None = None
) -> list[tuple[dict[str, tuple[str, str]], str, bool]]:
    """Run pytest once per (tree, args, time limit), in parallel.

    Returns per run: ({test: (outcome, reason)}, the output's tail, whether the time limit
    killed it). Uses the fork server where the system can fork, else one process per run.
    """
    width = max(1, min(len(runs), jobs or os.cpu_count() or 2))
    specs: list[dict[str, Any]] = []
    for tree, args, limit in runs:
        pytest_args = ["-c", str(tree / "pytest.ini"), "--rootdir", str(tree), "-q", "-p", "no:cacheprovider",
                       "-p", "_twins_np_grader_report", *args]  # fmt: skip
        (tree / "_report.jsonl").unlink(missing_ok=True)
        specs.append({"tree": str(tree), "args": pytest_args, "timeout": limit,
                      "report": str(tree / "_report.jsonl"), "output": str(tree / "_output.txt")})  # fmt: skip
    if hasattr(os, "fork"):
        with tempfile.TemporaryDirectory(prefix="twins-np-fork-") as tmp_name:
            tmp = pathlib.Path(tmp_name)
            (tmp / "server.py").write_text(_FORK_SERVER)
            (tmp / "spec.json").write_text(json.dumps({"runs": specs, "width": width, "status": str(tmp / "status.json")}))
            # the server's own time limit: every run's, one after the other, and a minute to start
            limit = sum(lim for _, _, lim in runs) + 60
            subprocess.run([sys.executable, str(tmp / "server.py"), str(tmp / "spec.json")], cwd=tmp, env=_env(),
                           timeout=limit, capture_output=True)  # fmt: skip
            status = json.loads((tmp / "status.json").read_text()) if (tmp / "status.json").exists() else {}
        killed = [status.get(str(i), {"killed": True})["killed"] for i in range(len(specs))]
    else:
        killed = []
        for spec in specs:
            env = dict(_env(), PYTHONPATH=str(pathlib.Path(spec["tree"]) / "_blocked"), TWINS_NP_GRADER_REPORT=spec["report"])
            with open(spec["output"], "w") as out:
                try:
                    subprocess.run([sys.executable, "-m", "pytest", *spec["args"]], cwd=spec["tree"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, timeout=spec["timeout"])  # fmt: skip
                    killed.append(False)
                except subprocess.TimeoutExpired:
                    killed.append(True)
    results = []
    for spec, k in zip(specs, killed, strict=True):
        output = pathlib.Path(spec["output"])
        text = output.read_text(errors="replace")[-4000:] if output.exists() else ""
        results.append((_parse_report(pathlib.Path(spec["report"])), text, k))
    return results


def _error_line(output: str) -> str:
    """The most telling line of a pytest output that ran no test (an import or syntax error)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("E ") and ("Error" in ln or "error" in ln):
            return ln[1:].strip()
    for ln in reversed(lines):
        if "Error" in ln:
            return ln
    return lines[-1] if lines else "pytest produced no output"


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
        if cand.is_file():
            return cand
    name = pathlib.PurePosixPath(rel).name
    hits = [p for p in sub.rglob(name) if p.is_file() and "__pycache__" not in p.parts]
    return hits[0] if len(hits) == 1 else None


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    try:
        manifest = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GradingError(f"cannot read the grading manifest {path}: {e}; run `twins-np assignment build` first") from e
    if manifest.get("version") != MANIFEST_VERSION:
        raise GradingError(f"{path} is not a twins-np grading manifest of version {MANIFEST_VERSION}; rebuild the assignment")
    return manifest


def grade(
    submission: str | os.PathLike,
    manifest: dict[str, Any],
    tasks: list[str] | None = None,
    root: pathlib.Path | None = None,
    timeout: float | None = None,
    jobs: int | None = None,
) -> list[TaskResult]:
    """Grade a submission (folder or zip) against the instructor's copy ``root``.

    Args:
        submission: the student's project folder, a folder holding it, or a zip.
        manifest: from :func:`load_manifest` (the instructor's, never the student's).
        tasks: grade only these (default: every task of the manifest).
        root: the instructor's copy (default: :func:`instructor_root`).
        timeout: seconds per task (default: the manifest's).
        jobs: parallel pytest processes (default: the number of cores).

    Raises:
        GradingError: when the submission holds none of the files to hand in.
    """
    root = root or instructor_root()
    chosen = tasks or list(manifest["tasks"])
    unknown = [t for t in chosen if t not in manifest["tasks"]]
    if unknown:
        raise GradingError(f"unknown tasks {unknown}; this assignment has: {', '.join(manifest['tasks'])}")
    with tempfile.TemporaryDirectory(prefix="twins-np-grade-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        sub = _submission_root(pathlib.Path(submission), tmp)
        found = {rel: _find(sub, rel) for t in chosen for rel in manifest["tasks"][t]["files"]}
        if not any(found.values()):
            raise GradingError(
                f"not a submission: {submission} holds none of the files to hand in ({', '.join(found)}); "
                "give the project folder, or the zip made by `twins-np assignment submit`"
            )

        results, runs = [], []
        for task in chosen:
            spec = manifest["tasks"][task]
            res = TaskResult(task, spec["title"], float(spec["points"]), total=len(spec["tests"]),
                             visibility=dict(spec["tests"]))  # fmt: skip
            overlay, missing = {}, []
            for rel in spec["files"]:
                src = found[rel]
                try:
                    overlay[rel] = src.read_text(encoding="utf-8") if src else spec["stubs"][rel]
                except (OSError, UnicodeDecodeError) as e:
                    overlay[rel], res.error = spec["stubs"][rel], f"cannot read {rel}: {e}"
                if src is None:  # not handed in: graded as the untouched stub
                    missing.append(rel)
            if missing:
                res.error = f"not handed in: {', '.join(missing)}"
            limit = float(timeout or spec.get("timeout") or manifest.get("timeout", 120))
            runs.append((_tree(root, tmp / task, overlay), ["-m", "not parity and not gpu", *spec["tests"]], limit))
            results.append(res)
        t0 = time.perf_counter()
        outcomes = run_tests(runs, jobs)
        for res, (got, output, killed), (_, _, limit) in zip(results, outcomes, runs, strict=True):
            spec = manifest["tasks"][res.task]
            res.seconds = time.perf_counter() - t0
            for test in spec["tests"]:
                outcome, reason = got.get(test, ("failed", ""))
                if outcome == "passed":
                    res.passed += 1
                    continue
                if outcome == "skipped":
                    reason = f"skipped ({reason}); a skip counts as a failure"
                elif not reason:
                    reason = f"did not run: the task's time limit ({limit:g} s) was used up" if killed else "did not run"
                res.failed.append({"test": test, "reason": _one_line(reason), "visibility": spec["tests"][test]})
            res.score = res.points * res.passed / res.total if res.total else 0.0
            note = res.error
            if killed:
                res.status, res.error = "timeout", f"killed after {limit:g} s (an endless loop?)"
            elif not got or any(t not in spec["tests"] for t in got):  # collection or import error
                errs = [r for t, (o, r) in got.items() if t not in spec["tests"] and o == "failed"]
                res.status, res.error = "error", _one_line(errs[0] if errs else _error_line(output))
            if note and note != res.error:
                res.error = f"{res.error}; {note}" if res.status != "ok" else note
        return results


def _one_line(text: str, width: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 3] + "..."


def summary(results: list[TaskResult]) -> dict[str, Any]:
    """The grade as plain data (what ``--json`` writes)."""
    score = sum(r.score for r in results)
    points = sum(r.points for r in results)
    return {
        "score": round(score, 4),
        "max_score": points,
        "percent": round(100 * score / points, 2) if points else 0.0,
        "errors": [f"{r.task}: {r.error}" for r in results if r.status != "ok"],
        "tasks": {r.task: {k: v for k, v in asdict(r).items() if k not in ("task", "visibility")} for r in results},
    }


def gradescope_results(results: list[TaskResult], manifest: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Gradescope's ``results.json``: one test entry per task and visibility.

    A task's hidden tests (the instructor's config) form an entry of their own whose
    output does not name them; its visibility is the manifest's ``hidden_visibility``.
    """
    tests = []
    hidden_visibility = manifest.get("hidden_visibility", "after_published")
    for r in results:
        spec = manifest["tasks"][r.task]
        for vis in ("visible", "hidden"):
            ids = [t for t, v in spec["tests"].items() if v == vis]
            if not ids:
                continue
            failed = [f for f in r.failed if f["visibility"] == vis]
            passed = len(ids) - len(failed)
            share = r.points * len(ids) / r.total
            if vis == "visible":
                lines = [f"{passed} of {len(ids)} tests passed."] + [f"FAILED {f['test']}: {f['reason']}" for f in failed]
            else:
                lines = [f"{passed} of {len(ids)} hidden tests passed."]
            if r.error:
                lines.insert(0, f"{r.status.upper() if r.status != 'ok' else 'NOTE'}: {r.error}")
            tests.append({
                "name": f"{r.task}: {r.title}" + (" (hidden tests)" if vis == "hidden" else ""),
                "score": round(r.points * passed / r.total, 4),
                "max_score": round(share, 4),
                "status": "passed" if not failed and r.status == "ok" else "failed",
                "output": "\n".join(lines),
                "visibility": spec.get("visibility", "visible") if vis == "visible" else hidden_visibility,
            })  # fmt: skip
    errors = [f"{r.task}: {r.error}" for r in results if r.status != "ok"]
    total = sum(r.score for r in results)
    output = f"Score {total:.2f} / {sum(r.points for r in results):g}." + ("\n" + "\n".join(errors) if errors else "")
    return {
        "score": round(total, 4),
        "execution_time": round(seconds, 2),
        "output": output,
        "visibility": "visible",
        "tests": tests,
    }


# --- freezing the tests of each task (called by assignments.build) ---------------------------


def freeze(root: pathlib.Path, tasks: list[str], config: dict[str, Any], jobs: int | None = None) -> dict[str, Any]:
    """The manifest: per task its files, stub texts, points and the frozen test ids.

    Runs, in parallel, the reference tree on every task's selected tests and one tree per
    task with only that task stripped. A task's tests are those of its selectors that fail
    there with the task's own ``NotImplementedError``; each must pass in the reference.

    Raises:
        GradingError: when the reference fails a frozen test, or a task has no test.
    """
    from .assignments import TASKS, strip_source

    files = solution_files(root)
    pool_files = {t: sorted({sel.partition("::")[0] for sel in TASKS[t].tests}) for t in tasks}
    limit = float(config.get("timeout", 120))
    with tempfile.TemporaryDirectory(prefix="twins-np-freeze-") as tmp_name:
        tmp = pathlib.Path(tmp_name)

        every = sorted({f for t in tasks for f in pool_files[t]})
        runs = [(_tree(root, tmp / "_reference", {}), ["-m", "not parity and not gpu", *every], 600.0)]
        for task in tasks:
            overlay = {rel: strip_source((root / rel).read_text(), {task})[0] for rel in files.get(task, [])}
            runs.append(
                (_tree(root, tmp / task, overlay), ["-m", f"{task} and not parity and not gpu", *pool_files[task]], 600.0)
            )
        outcomes = run_tests(runs, jobs)
    (ref, out, _k), stripped_runs = outcomes[0], outcomes[1:]
    if not ref:
        raise GradingError(f"the reference tests did not run: {_error_line(out)}")
    by_task = {}
    for task, (got, out, killed) in zip(tasks, stripped_runs, strict=True):
        if killed or not got:
            raise GradingError(f"{task}: the stripped copy's tests did not run: {_error_line(out)}")
        by_task[task] = got
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "timeout": limit,
        "hidden_visibility": config.get("hidden_visibility", "after_published"),
        "tasks": {},
    }
    for task in tasks:
        spec = TASKS[task]
        conf = config.get("tasks", {}).get(task, {})
        hidden = [h.lower() for h in conf.get("hidden", [])]
        own = f"NotImplementedError: {task}:"
        tests = sorted(t for t, (o, r) in by_task[task].items() if o == "failed" and own in r)
        bad = [f"{t} ({ref.get(t, ('not run', ''))[0]})" for t in tests if ref.get(t, ("", ""))[0] != "passed"]
        if bad:
            raise GradingError(f"{task}: the reference solution does not pass {', '.join(bad[:5])}")
        if not tests:
            raise GradingError(f"{task}: no test of {', '.join(spec.tests)} reaches its solution region")
        manifest["tasks"][task] = {
            "title": spec.title,
            "doc": spec.doc,
            "points": float(conf.get("points", spec.points)),
            "visibility": conf.get("visibility", "visible"),
            "files": files.get(task, []),
            "stubs": {rel: strip_source((root / rel).read_text())[0] for rel in files.get(task, [])},
            "tests": {t: "hidden" if any(h in t.lower() for h in hidden) else "visible" for t in tests},
        }
        if "timeout" in conf:
            manifest["tasks"][task]["timeout"] = float(conf["timeout"])
    return manifest
