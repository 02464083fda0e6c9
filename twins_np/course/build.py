"""Build an assignment: the student copy, its handout, and the grading manifest.

:func:`build` copies the project and strips each solution region
(:func:`twins_np.course.tasks.strip_source`), writes the student's handout ``STUDENT.md`` and
``assignment.json``, leaves out what only an instructor needs, and writes the grading
manifest (:mod:`twins_np.course.manifest`): the stripped library the grader's workers import,
each task's files, stubs, functions and checks. The copy depends only on the sources:
building twice gives identical trees.

Two more steps make a build trustworthy, and take most of its time:

- **the student's tests** (``freeze``): for ``assignment status`` and ``pytest -m TASK`` in the
  copy, each task's tests are those of its selectors that fail with the task's own
  ``NotImplementedError`` when only that task is stripped (so forward and input-check tests
  that never reach the student's code are not counted); each must pass in the reference.
- **the self-check** (``selfcheck``): the grader grades the reference solution (every check
  must pass) and the untouched copy (every check must fail) before the build is accepted.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from typing import Any

from . import checks
from .assignments import Course, answers_template, handout, handouts_index, load_course
from .extras import require
from .manifest import MANIFEST_VERSION, GradingError, default_manifest, instructor_root
from .tasks import ASSIGNMENT_TASKS, BEGIN, END, EXERCISES, kernel_files, solution_files, strip_source, task_functions

__all__ = ["INSTRUCTOR_ONLY", "STUDENT_MANIFEST", "build", "load_config", "project_files", "write_handout_pages"]

# never copied into a student tree
_SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
              ".hypothesis", "outputs", "_build", ".ipynb_checkpoints"}  # fmt: skip
# what only an instructor needs: left out of the copy (docs/instructors.md becomes a stub page);
# a name ending in "/" is a folder
# (the executed notebook copies of notebooks/rendered/ show the instructor's solutions)
# (tests/hidden/ steps through solutions one call at a time: recipes, not behaviour)
INSTRUCTOR_ONLY = ("tests/course/", "tests/hidden/", "assignment.toml", "notebooks/rendered/", "tests/test_rendered_notebooks.py")
_INSTRUCTORS_STUB = """# For instructors

This page is not part of a student copy. Start with `STUDENT.md` at the top of the project.
"""
STUDENT_MANIFEST = "assignment.json"  # in the copy: what `assignment status` and `submit` read
# the worker's defaults; `time_factor` x the reference's time + `time_slack` seconds per case
DEFAULTS = {"timeout": 120.0, "time_factor": 20.0, "time_slack": 0.25}


def _instructor_only(rel: str) -> bool:
    return any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in INSTRUCTOR_ONLY)


def project_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Files of the project: git's tracked + untracked-not-ignored files, else a filtered walk."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, capture_output=True, check=True,
        )  # fmt: skip
        names = [n for n in out.stdout.decode().split("\0") if n]
        return sorted(root / n for n in names if (root / n).is_file())
    except (OSError, subprocess.CalledProcessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
            files += [pathlib.Path(dirpath) / f for f in sorted(filenames)]
        return files


def load_config(path: str | os.PathLike | None, root: pathlib.Path) -> dict[str, Any]:
    """The instructor's ``assignment.toml`` (points, hidden checks, time limits), or {}."""
    p = pathlib.Path(path) if path else root / "assignment.toml"
    if not p.exists():
        if path:
            raise FileNotFoundError(f"config file {p} not found")
        return {}
    with p.open("rb") as f:
        config = tomllib.load(f)
    unknown = sorted((set(config.get("tasks", {})) | set(config.get("reveal", []))) - set(ASSIGNMENT_TASKS))
    if unknown:
        raise ValueError(f"{p}: unknown tasks {unknown}; known: {', '.join(ASSIGNMENT_TASKS)}")
    return config


def build(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    tasks: list[str] | None = None,
    manifest: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    freeze: bool = True,
    selfcheck: bool = True,
) -> dict[str, list[str]]:
    """Write the student copy of the project to ``out_dir``, and the grading manifest.

    Solution regions in the library, the jupytext notebooks and the MyST pages are stripped
    (each stripped notebook's ``.ipynb`` is regenerated); instructor-only files stay out;
    ``STUDENT.md``, ``assignment.json`` and a ``pytest.ini`` that imports the copy's own
    ``twins_np`` are written.

    Args:
        out_dir: destination; must not exist or be empty.
        root: the project (default: the one this package comes from).
        tasks: task ids to strip (default: all).
        manifest: where to write the grading manifest (default:
            :func:`~twins_np.course.manifest.default_manifest`); ``False`` writes none.
        config: the instructor's ``assignment.toml`` (default: ``root/assignment.toml`` if any).
        freeze: find each task's tests for the student's ``assignment status`` (runs them; ~30 s).
        selfcheck: grade the reference (full marks expected) and the untouched copy (0
            expected) with the new manifest (~20 s).

    Returns:
        ``{task: [files where it was stripped]}``.

    Raises:
        GradingError: the reference fails a frozen test or a check, the untouched copy passes
            a check, or a task has no test that reaches its code.
    """
    require("course", "assignment build")
    root = pathlib.Path(root).resolve() if root else instructor_root()
    out = pathlib.Path(out_dir)
    if tasks is not None:
        unknown = sorted(set(tasks) - set(ASSIGNMENT_TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {', '.join(ASSIGNMENT_TASKS)}")
    chosen = list(tasks or ASSIGNMENT_TASKS)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} is not an empty folder; choose a new one")
    conf = load_config(config, root)
    out.mkdir(parents=True, exist_ok=True)  # a file in the way, or a read-only disk, fails here, before the tests run
    frozen = _freeze_tests(root, chosen, conf) if freeze else None
    strip = set(chosen) | set(EXERCISES)
    reveal = set(conf.get("reveal", []))
    where: dict[str, list[str]] = {t: [] for t in chosen}
    notebooks, library, regions, public = [], {}, [], set()
    from .grader import shingles

    # a fused kernel of a task computes its answer: the copy leaves out those of its tasks (the
    # library then runs the student's NumPy code), the worker's library those of every task
    kernels = kernel_files(root)
    no_copy = {f for t in chosen for f in kernels.get(t, [])}
    no_worker = {f for files in kernels.values() for f in files}
    for src in project_files(root):
        rel = src.relative_to(root)
        posix = rel.as_posix()
        if _instructor_only(posix) or posix in no_copy:
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if posix == "docs/instructors.md":
            dst.write_text(_INSTRUCTORS_STUB)
        elif (src.suffix, rel.parts[0]) in ((".py", "twins_np"), (".py", "notebooks"), (".md", "docs")):
            original = src.read_text()
            # the pages' backward derivations of the tasks the instructor reveals (`reveal` in the config) stay
            text, done = strip_source(original, strip - reveal if src.suffix == ".md" else strip)
            if rel.parts[0] == "notebooks" and re.fullmatch(r"\d\d_\w+\.py", rel.name):
                text = _with_cells_guard(text)
                done = done or ["(guard)"]
            dst.write_text(text)
            regions += _region_texts(original, set(chosen))
            public |= shingles(text)
            for t in done:
                if t in where and posix not in where[t] and src.suffix == ".py" and rel.parts[0] == "twins_np":
                    where[t].append(posix)
            if rel.parts[0] == "notebooks" and done:
                notebooks.append(dst)
            if src.suffix == ".py" and rel.parts[0] == "twins_np" and not posix.startswith("twins_np/course/") \
                    and posix not in no_worker:
                # the worker's library has every task stripped, assigned or not: no solution to call
                library[posix] = strip_source(original, set(ASSIGNMENT_TASKS))[0]
        else:
            shutil.copyfile(src, dst)
            if src.suffix in (".py", ".md", ".txt", ".toml", ".cfg", ".ini"):
                try:
                    public |= shingles(src.read_text())
                except UnicodeDecodeError:
                    pass
    for nb in notebooks:  # keep each .ipynb in step with its stripped source
        sys.path.insert(0, str(out / "tools"))
        try:
            import sync_notebooks  # type: ignore[import-not-found]

            nb.with_suffix(".ipynb").write_text(sync_notebooks.render(nb))
        finally:
            sys.path.pop(0)
            sys.modules.pop("sync_notebooks", None)
    course = load_course(conf)
    spec = _manifest(root, chosen, conf, library, regions, public, course)
    for t in chosen:
        spec["tasks"][t]["kernels"] = kernels.get(t, [])
    _write_student_files(out, chosen, where, frozen, spec, course)
    if manifest is not False:
        mpath = pathlib.Path(manifest) if manifest else default_manifest(root)
        mpath.parent.mkdir(parents=True, exist_ok=True)
        mpath.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
        if selfcheck:
            _selfcheck(root, out, mpath, chosen, spec)
    return where


_GUARD_LINES = ("# %load_ext twins_np.course.cells\n",)
_GUARD_NOTE = ("# (twins_np.course.cells: a cell that needs a task you have not written yet says so in one line,\n"
               "# and the notebook goes on)\n")  # fmt: skip


def _with_cells_guard(text: str) -> str:
    """A notebook's jupytext source with the cells guard loaded in its first code cell (after
    ``%autoreload 2``, or as the first line of the first code cell)."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip() == "# %autoreload 2":
            return "".join([*lines[: i + 1], *_GUARD_LINES, _GUARD_NOTE, *lines[i + 1 :]])
    for i, line in enumerate(lines):
        if line.strip() == "# %%":
            return "".join([*lines[: i + 1], *_GUARD_LINES, _GUARD_NOTE, *lines[i + 1 :]])
    raise ValueError("a notebook without a code cell")


def _region_texts(text: str, tasks: set[str]) -> list[str]:
    """The code inside the solution regions of ``tasks`` in a source."""
    out: list[str] = []
    cur: list[str] | None = None
    for line in text.splitlines():
        m = BEGIN.match(line)
        if m:
            cur = [] if m["task"] in tasks else None
        elif END.match(line):
            if cur is not None:
                out.append("\n".join(cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    return out


def _module(rel: str) -> str:
    return rel[: -len(".py")].replace("/", ".")


def _manifest(
    root: pathlib.Path, chosen: list[str], conf: dict[str, Any], library: dict[str, str], regions: list[str], public: set[str],
    course: Course,
) -> dict[str, Any]:  # fmt: skip
    from .grader import shingles

    files = solution_files(root)
    functions = {t: [f"{_module(rel)}:{name}" for rel in rels for name in task_functions((root / rel).read_text()).get(t, [])]
                 for t, rels in files.items() if t in ASSIGNMENT_TASKS}  # fmt: skip
    secret: set[str] = set()
    for text in regions:
        secret |= shingles(text)
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        **{k: float(conf.get(k, v)) for k, v in DEFAULTS.items()},
        "hidden_visibility": conf.get("hidden_visibility", "after_published"),
        "library": library,
        "functions": functions,
        "scrub": sorted(secret - public),
        "tasks": {},
    }
    for task in chosen:
        spec = ASSIGNMENT_TASKS[task]
        tconf = conf.get("tasks", {}).get(task, {})
        hidden = [h.lower() for h in tconf.get("hidden", [])]
        own = "\n".join((root / rel).read_text() for rel in files.get(task, []))
        own_names = set(re.findall(r"\b\w+\b", own))
        foreign = sorted({f.rpartition(":")[2] for o in functions if o != task for f in functions[o]} - own_names)
        forwards = sorted(set(re.findall(r"^def (\w+_forward)\(", own, re.M)))
        if not files.get(task):
            raise GradingError(f"{task}: no solution region in twins_np/")
        names = checks.check_names(task)
        manifest["tasks"][task] = {
            "title": spec.title,
            "doc": spec.doc,
            "points": course.points[task],
            "visibility": tconf.get("visibility", "visible"),
            "files": files[task],
            "modules": [_module(rel) for rel in files[task]],
            "stubs": {rel: library[rel] for rel in files[task]},
            "checks": {n: "hidden" if any(h in n.lower() for h in hidden) else "visible" for n in names},
            "review": {"foreign": foreign, "forwards": forwards},
        }
        if "timeout" in tconf:
            manifest["tasks"][task]["timeout"] = float(tconf["timeout"])
    # the written questions of the assignments in this build: graded by hand, counted apart (Gradescope: manual questions)
    manifest["assignments"] = {
        a.key: {"title": a.title, "tasks": [t for t in a.tasks if t in chosen], "answers": a.answers_path,
                "questions": [{"id": q.id, "points": q.points, "text": q.text} for q in a.questions]}
        for a in course.assignments.values() if any(t in chosen for t in a.tasks)
    }  # fmt: skip
    return manifest


def _selfcheck(root: pathlib.Path, copy: pathlib.Path, mpath: pathlib.Path, chosen: list[str], spec: dict[str, Any]) -> None:
    """Grade the reference (every check passes) and the untouched copy (none passes): the checks
    compare values the stubs do not give, and the sandbox works on this machine."""
    from .grader import grade
    from .manifest import load_manifest

    manifest = load_manifest(mpath)
    with tempfile.TemporaryDirectory(prefix="twins-np-selfcheck-") as tmp:
        ref = pathlib.Path(tmp) / "reference"
        for t in chosen:
            for rel in spec["tasks"][t]["files"]:
                (ref / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / rel, ref / rel)
        problems = []
        try:
            results = grade(ref, manifest, root=root), grade(copy, manifest, root=root)
        except GradingError as e:
            raise GradingError(f"self-check failed: {e}") from None
        for r in results[0]:
            if r.passed != r.total or r.status != "ok":
                bad = [f"{c.name} ({c.reason})" for c in r.failed][:3]
                why = r.error or "; ".join(bad)
                problems.append(f"the reference solution of {r.task} scores {r.score:g}/{r.points:g}: {why}")
        for r in results[1]:
            if r.passed:
                passing = [c.name for c in r.checks if c.passed][:3]
                problems.append(f"the untouched stub of {r.task} passes {r.passed} checks: {passing}")
    if problems:
        raise GradingError("self-check failed: " + "; ".join(problems))


def _write_student_files(
    out: pathlib.Path, chosen: list[str], where: dict[str, list[str]], frozen: dict[str, list[str]] | None, spec: dict[str, Any],
    course: Course,
) -> None:  # fmt: skip
    """STUDENT.md, the handouts and answer files, assignment.json, a README that points to them,
    and the copy's pytest.ini."""
    docs = {t: spec["tasks"][t]["doc"] for t in chosen}
    mine = [a for a in course.assignments.values() if any(t in chosen for t in a.tasks)]
    info: dict[str, Any] = {"tasks": {}, "assignments": {}}
    for t in chosen:
        task = spec["tasks"][t]
        info["tasks"][t] = {
            "title": task["title"],
            "doc": task["doc"],
            "files": where[t],
            "points": task["points"],
            "assignment": course.assignment_of(t).key,
            "tests": frozen[t] if frozen else [],  # the copy's own tests that reach the task's code
            "checks": sorted(k for k, v in task["checks"].items() if v == "visible"),  # what the grader checks
            "hidden_checks": sum(v == "hidden" for v in task["checks"].values()),
        }
    pages = out / "docs" / "handouts"
    pages.mkdir(parents=True, exist_ok=True)
    for old in pages.glob("*.md"):  # the instructor's pages (every task, the default points) give way to this build's
        old.unlink()
    for a in mine:
        text = handout(a, course, chosen, where, docs)
        for dest in (out / a.handout_path, pages / f"{a.name}.md"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
        if a.questions:
            (out / a.answers_path).parent.mkdir(parents=True, exist_ok=True)
            (out / a.answers_path).write_text(answers_template(a))
        info["assignments"][a.key] = {"title": a.title, "handout": a.handout_path, "tasks": [t for t in a.tasks if t in chosen],
                                      "answers": a.answers_path if a.questions else None,
                                      "questions": {q.id: q.points for q in a.questions}}  # fmt: skip
    index = _HANDOUTS_PAGE.format(table=handouts_index(course, chosen), pages="\n".join(a.name for a in mine))
    (pages / "index.md").write_text(index)
    (out / STUDENT_MANIFEST).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    code = sum(v["points"] for v in info["tasks"].values())
    manual = sum(a.manual_points for a in mine)
    files = sorted({f for v in info["tasks"].values() for f in v["files"]})
    answers = [a.answers_path for a in mine if a.questions]
    notebooks = "\n".join(
        f"| `notebooks/{nb}.ipynb` | " + (", ".join(f"`{t}`" for t in needs if t in chosen) or "none") + " |"
        for nb, needs in course.notebooks.items() if (out / "notebooks" / f"{nb}.ipynb").exists()
    )  # fmt: skip
    factor = spec["time_factor"]
    table = handouts_index(course, chosen, link="handouts/{name}.md")
    (out / "STUDENT.md").write_text(f"""# Your assignments: the backward passes of Twins

This is a student copy of twins-np. Your work comes in {len(mine)} assignment(s), each with a handout
(goals, files to edit, tests and notebooks to run, points, suggested order and hours, written
questions):

{table}

Total: {code:g} points for the code, graded automatically, and {manual:g} points of written
questions, graded by hand. In the files the handouts list, each task's code has been replaced by
a `TODO(task)` comment that states the function's contract (what it takes and returns, with
shapes, and what its cache holds) and a `raise NotImplementedError`. Replace those lines by your
code; keep the function's signature and docstring (its *Math* section has the formula). The
derivation pages are in `docs/derivations/`: each keeps the forward and asks the question whose
answer is your task.

## Setting up (no PyTorch needed)

With Python 3.11 or newer, in this folder:

```bash
make student                                 # .venv with twins-np, pytest and JupyterLab (no PyTorch)
source .venv/bin/activate                    # or: pip install -e ".[student]" in an environment of yours
```

## Checking your work

```bash
python -m pytest -m gelu_backward            # one task's tests (any task id of the handouts)
twins-np assignment status                   # one line per task; --verbose names the failing tests
twins-np gradcheck                           # finite-difference check of every layer (TODO = not written yet)
```

Tests that compare with PyTorch are skipped without it; the others run with pytest alone.
`make demo` (gradient check, then training on the digits) works once every task is done.

`pytest` here always imports this folder's `twins_np` (the `pytest.ini` sets `pythonpath`,
and `tests/conftest.py` stops with a message if another copy was imported): do not
`pip install twins-np` from PyPI next to it. The published package and its documentation
contain the solutions; your copy does not. Nor does it hold the fused kernels
(`twins_np/kernels/`) of your tasks: here the library always runs the NumPy code you write.

## The notebooks

`jupyter lab notebooks/` opens them. They work at any stage: a cell that needs a task you have
not written yet prints one line saying which task and how to check it, and the notebook goes
on. What each needs:

| notebook | needs |
|---|---|
{notebooks}

## Handing in

```bash
twins-np assignment submit                   # writes submission.zip with the files to hand in
```

The zip holds exactly these files: {', '.join(f'`{f}`' for f in [*files, *answers])}. Upload it (or the
files) as your course asks.

## How you are graded

The written answers (`answers/`) are read and graded by your instructor. For the code, only the
files above are taken from your submission, and each task is graded on its own: your file of that
task with the rest of this copy's library, in a separate process without network or access to
other files. Where a task calls another task's function (the FFN calls the GELU backward), that
call is answered with the correct values, so a bug in one task cannot cost you another, and no
task can use another's solution.

The grader calls your functions on inputs it draws at random when it grades (values, and
shapes in the ranges the docstrings allow), float64 and float32, and compares every output
with the reference solution's (`assignment.json` lists the checks; some may be hidden). A
task's score is its points x (checks passed / its checks). A check fails when the output is
wrong, has the wrong shape or dtype, or your code raises. Each call may take at most
{factor:g} x the reference solution's time (plus {spec['time_slack']:g} s): a vectorised NumPy
solution is well within that; a finite-difference "gradient" is not, and scores 0 for the
task. Code that reads files, starts processes, runs strings as code, or imports an automatic
differentiation library is flagged for your instructor to look at. PyTorch is not available
when grading.
""")
    readme = out / "README.md"
    if readme.exists():
        readme.write_text("> **Student copy of twins-np: start with [STUDENT.md](STUDENT.md)** (your assignments, how to\n"
                          "> set up without PyTorch, check your work and hand it in).\n\n" + readme.read_text())  # fmt: skip
    ini = out / "pytest.ini"
    if ini.exists():
        text = ini.read_text()
        if "pythonpath" not in text:
            # this folder first on sys.path: `pytest -m TASK` tests the student's code, never an installed twins_np
            ini.write_text(text.replace("[pytest]\n", "[pytest]\npythonpath = .\n", 1))


# the docs site's index of the handout pages (docs/handouts/index.md), in the project and in a copy
_HANDOUTS_PAGE = """# Handouts

One page per assignment: its goals, the files to edit, the tests and notebooks to run, the
points, the suggested order and hours, and the written questions.

{table}

```{{toctree}}
:maxdepth: 1

{pages}
```
"""


def write_handout_pages(folder: pathlib.Path, root: pathlib.Path, config: dict[str, Any] | None = None) -> list[pathlib.Path]:
    """The docs site's handout pages for the whole course (every task), into ``folder``."""
    course = load_course(config)
    chosen = list(ASSIGNMENT_TASKS)
    files = solution_files(root)
    docs = {t: ASSIGNMENT_TASKS[t].doc for t in chosen}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for a in course.assignments.values():
        path = folder / f"{a.name}.md"
        path.write_text(handout(a, course, chosen, files, docs))
        written.append(path)
    index = folder / "index.md"
    names = "\n".join(a.name for a in course.assignments.values())
    index.write_text(_HANDOUTS_PAGE.format(table=handouts_index(course, chosen), pages=names))
    return [index, *written]


# --- the student's tests: which tests of each task reach its code ---------------------------

# a pytest plugin of our own, written next to each tree: it records every test's outcome and
# one-line reason as JSON lines, flushed at once, so a killed run keeps what it had done
REPORT_PLUGIN = """\
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
_BLOCKED = ("torch", "torchvision", "timm")  # the frozen tests must not need PyTorch: grading has none
_ENV_DROP = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")


def parse_report(report: pathlib.Path) -> dict[str, tuple[str, str]]:
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


def _tree(root: pathlib.Path, dest: pathlib.Path, overlay: dict[str, str]) -> pathlib.Path:
    """A tree from the instructor's copy with ``overlay`` {relative path: text} written over it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in ("twins_np", "tests"):
        shutil.copytree(root / name, dest / name, ignore=ignore)
    for name in ("pytest.ini", "conftest.py", "setup.cfg", "pyproject.toml"):
        if (root / name).is_file():
            shutil.copyfile(root / name, dest / name)
    for rel, text in overlay.items():
        (dest / rel).write_text(text)
    (dest / "_twins_np_grader_report.py").write_text(REPORT_PLUGIN)
    for mod in _BLOCKED:
        (dest / "_blocked" / mod).mkdir(parents=True)
        (dest / "_blocked" / mod / "__init__.py").write_text(f"raise ImportError('{mod} is not used for grading')\n")
    return dest


# Runs every tree's pytest in one Python process that has imported pytest, NumPy, SciPy and
# matplotlib once, then forks a child per tree (as many at a time as there are cores). The
# trees are the instructor's own (the reference, and each task stripped): nothing here runs
# a student's code.
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


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    # every fused kernel off (the CPU ones where numba is installed): the tests measure the NumPy twins
    env.update(PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1",
               TWINS_NP_CPU_KERNELS="0")
    return env


def _run_pytest(
    runs: list[tuple[pathlib.Path, list[str], float]], jobs: int | None = None
) -> list[tuple[dict[str, tuple[str, str]], str, bool]]:
    """Run pytest once per (tree, args, time limit), in parallel: per run ({test: (outcome,
    reason)}, the output's tail, whether the time limit killed it)."""
    width = max(1, min(len(runs), jobs or os.cpu_count() or 2))
    specs: list[dict[str, Any]] = []
    for tree, args, limit in runs:
        pytest_args = ["-c", str(tree / "pytest.ini"), "--rootdir", str(tree), "-q", "-p", "no:cacheprovider",
                       "-p", "_twins_np_grader_report", *args]  # fmt: skip
        specs.append({"tree": str(tree), "args": pytest_args, "timeout": limit,
                      "report": str(tree / "_report.jsonl"), "output": str(tree / "_output.txt")})  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="twins-np-fork-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        (tmp / "server.py").write_text(_FORK_SERVER)
        (tmp / "spec.json").write_text(json.dumps({"runs": specs, "width": width, "status": str(tmp / "status.json")}))
        subprocess.run([sys.executable, str(tmp / "server.py"), str(tmp / "spec.json")], cwd=tmp, env=_env(),
                       timeout=sum(lim for _, _, lim in runs) + 60, capture_output=True)  # fmt: skip
        status = json.loads((tmp / "status.json").read_text()) if (tmp / "status.json").exists() else {}
    results = []
    for i, spec in enumerate(specs):
        output = pathlib.Path(spec["output"])
        text = output.read_text(errors="replace")[-4000:] if output.exists() else ""
        killed = status.get(str(i), {"killed": True})["killed"]
        results.append((parse_report(pathlib.Path(spec["report"])), text, killed))
    return results


def _error_line(output: str) -> str:
    """The most telling line of a pytest output that ran no test (an import or syntax error)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("E ") and ("Error" in ln or "error" in ln):
            return ln[1:].strip()
    return next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "pytest produced no output")


def _freeze_tests(root: pathlib.Path, tasks: list[str], config: dict[str, Any], jobs: int | None = None) -> dict[str, list[str]]:
    """task -> its tests in the copy: those of its selectors that fail with the task's own
    ``NotImplementedError`` when only that task is stripped, and pass in the reference."""
    files = solution_files(root)
    pool = {t: sorted({sel.partition("::")[0] for sel in ASSIGNMENT_TASKS[t].tests}) for t in tasks}
    with tempfile.TemporaryDirectory(prefix="twins-np-freeze-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        every = sorted({f for t in tasks for f in pool[t]})
        runs = [(_tree(root, tmp / "_reference", {}), ["-m", "not parity and not gpu", *every], 600.0)]
        kernels = kernel_files(root)
        for task in tasks:
            overlay = {rel: strip_source((root / rel).read_text(), {task})[0] for rel in files.get(task, [])}
            tree = _tree(root, tmp / task, overlay)
            for rel in kernels.get(task, []):  # as in the student copy: no kernel computes the stripped task
                (tree / rel).unlink()
            runs.append((tree, ["-m", f"{task} and not parity and not gpu", *pool[task]], 600.0))
        outcomes = _run_pytest(runs, jobs)
    (ref, out, _k), stripped_runs = outcomes[0], outcomes[1:]
    if not ref:
        raise GradingError(f"the reference tests did not run: {_error_line(out)}")
    frozen = {}
    for task, (got, out, killed) in zip(tasks, stripped_runs, strict=True):
        if killed or not got:
            raise GradingError(f"{task}: the stripped copy's tests did not run: {_error_line(out)}")
        own = f"NotImplementedError: {task}:"
        tests = sorted(t for t, (o, r) in got.items() if o == "failed" and own in r)
        bad = [f"{t} ({ref.get(t, ('not run', ''))[0]})" for t in tests if ref.get(t, ("", ""))[0] != "passed"]
        if bad:
            raise GradingError(f"{task}: the reference solution does not pass {', '.join(bad[:5])}")
        if not tests:
            raise GradingError(f"{task}: no test of {', '.join(ASSIGNMENT_TASKS[task].tests)} reaches its solution region")
        frozen[task] = tests
    return frozen
