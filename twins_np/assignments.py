"""Course assignments generated from the library itself.

The solution code lives in the library between two marker comments, each alone on its
line: ``# BEGIN SOLUTION <task-id>`` before the body a student writes and
``# END SOLUTION`` after it (``% BEGIN SOLUTION <task-id>`` / ``% END SOLUTION`` in the
MyST pages of ``docs/``, around code that would give the answer away).

:func:`build` copies the project and replaces each region by a ``TODO`` line saying what to
compute, return or write, and ``raise NotImplementedError("<task>: ...")``, at the same
indentation, so signatures, docstrings with shapes and the comments around the region stay.
It also freezes, for the grader, the tests that grade each task (:mod:`twins_np.grader`),
writes the student's handout ``STUDENT.md`` and leaves out what only an instructor needs.
Each task has a pytest marker (added by ``tests/conftest.py`` from :data:`TASKS`), so
``pytest -m lsa_backward`` runs one task's tests.

There is no second copy of the code to keep in sync: change the library, rebuild.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from typing import Any

import tomllib

__all__ = ["EXERCISES", "TASKS", "Task", "build", "regions_in", "status", "strip_source", "submit", "task_of_test"]


@dataclass(frozen=True)
class Task:
    """One assignment task: what to implement and which tests grade it."""

    title: str
    doc: str  # the derivation page a student should read
    tests: tuple[str, ...]  # test selectors: "file" or "file::substring" (matched on the test id)
    points: float = 10.0  # an instructor can override them in assignment.toml


TASKS: dict[str, Task] = {
    "layernorm_backward": Task(
        "LayerNorm backward (three-term dx, dgamma, dbeta)", "docs/derivations/layernorm.md",
        ("tests/functional/test_f_layernorm.py", "tests/test_gradcheck_suite.py::layernorm"),
    ),
    "gelu_backward": Task(
        "exact GELU backward", "docs/derivations/gelu.md",
        ("tests/functional/test_f_activation.py", "tests/test_gradcheck_suite.py::gelu"),
    ),
    "attention_backward": Task(
        "softmax Jacobian-vector product and the attention core's dq, dk, dv", "docs/derivations/attention.md",
        ("tests/functional/test_f_softmax.py", "tests/functional/test_f_attention.py",
         "tests/test_gradcheck_suite.py::softmax", "tests/test_gradcheck_suite.py::attention core"),
    ),
    "windows": Task(
        "window partition / reverse with right-bottom zero padding and crop", "docs/derivations/windows.md",
        ("tests/functional/test_f_windows.py", "tests/test_gradcheck_suite.py::window"),
    ),
    "lsa_backward": Task(
        "locally-grouped self-attention backward", "docs/derivations/lsa.md",
        ("tests/functional/test_f_lsa.py", "tests/test_gradcheck_suite.py::LSA",
         "tests/test_gradcheck_suite.py::LocallyGroupedAttn"),
    ),
    "gsa_backward": Task(
        "global sub-sampled attention backward (two paths into dx)", "docs/derivations/gsa.md",
        ("tests/functional/test_f_gsa.py", "tests/test_gradcheck_suite.py::GSA",
         "tests/test_gradcheck_suite.py::GlobalSubSampleAttn"),
    ),
    "peg_backward": Task(
        "depthwise 3x3 conv backward and the PEG residual", "docs/derivations/conv.md",
        ("tests/functional/test_f_peg.py", "tests/functional/test_f_depthwise_conv.py",
         "tests/test_gradcheck_suite.py::depthwise conv 3x3", "tests/test_gradcheck_suite.py::PEG",
         "tests/test_gradcheck_suite.py::PosConv"),
    ),
    "ffn_backward": Task(
        "FFN (fc1 -> GELU -> fc2) backward", "docs/derivations/mlp.md",
        ("tests/functional/test_f_mlp.py", "tests/test_gradcheck_suite.py::FFN"),
    ),
    "adamw_step": Task(
        "one AdamW update with decoupled weight decay", "twins_np/optim.py",
        ("tests/test_optim.py::adamw",),
    ),
    # the dense head's layers; BatchNorm's backward shares GroupNorm's two helpers, so its tests grade them too
    "group_norm_backward": Task(
        "GroupNorm backward (three-term dx per image and group, dgamma, dbeta)", "docs/derivations/norm2d.md",
        ("tests/functional/test_f_norm2d.py", "tests/nn/test_nn_dense.py::norm",
         "tests/test_gradcheck_suite.py::GroupNorm", "tests/test_gradcheck_suite.py::BatchNorm"),
    ),
    # resize_backward is shared by bilinear and nearest resizing: only the matrices differ
    "bilinear_resize_backward": Task(
        "bilinear (and nearest) resize backward: the transposed interpolation matrices", "docs/derivations/resize.md",
        ("tests/functional/test_f_resize.py", "tests/nn/test_nn_resize.py",
         "tests/test_gradcheck_suite.py::resize"),
    ),
}  # fmt: skip

# Notebook exercises: solutions in the instructor's jupytext sources, stripped in the copy;
# not graded by the autograder (each notebook checks its exercise when run)
EXERCISES: dict[str, str] = {
    "nb01_wrong_softmax": "notebook 01, exercise 1: a softmax backward that forgets the factor y",
    "nb02_rmsnorm": "notebook 02, exercise 2: RMSNorm forward and backward",
    "nb03_attention": "notebook 03, exercise 1: the attention core's backward from the formulas",
    "nb04_masked_lsa": "notebook 04, exercise 1: LSA with padded keys masked out",
    "nb05_avgpool": "notebook 05, exercise 1: average pooling as GSA's sub-sampler",
}

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)(?P<c>#|%) BEGIN SOLUTION (?P<task>[\w-]+)\s*$")
_END = re.compile(r"^[ \t]*(#|%) END SOLUTION\s*$")
# never copied into a student tree
_SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
              ".hypothesis", "outputs", "_build", ".ipynb_checkpoints"}  # fmt: skip
# what only an instructor needs: left out of the copy (docs/instructors.md becomes a stub page)
INSTRUCTOR_ONLY = ("tests/test_assignments.py", "tests/test_grader.py", "assignment.toml", "tests/test_rendered_notebooks.py")
# folders left out whole: the executed copies of the notebooks show the instructor's solutions
INSTRUCTOR_ONLY_DIRS = ("notebooks/rendered/",)
_INSTRUCTORS_STUB = """# For instructors

This page is not part of a student copy. Start with `STUDENT.md` at the top of the project.
"""
STUDENT_MANIFEST = "assignment.json"  # in the copy: what `assignment status` and `submit` read


def task_of_test(nodeid: str) -> list[str]:
    """The tasks whose selectors match a pytest node id (used by tests/conftest.py)."""
    path, _, rest = nodeid.partition("::")
    found = []
    for name, task in TASKS.items():
        for sel in task.tests:
            f, _, sub = sel.partition("::")
            if path.endswith(f) and (not sub or sub.lower() in rest.lower()):
                found.append(name)
                break
    return found


def regions_in(text: str) -> list[str]:
    """The task ids of the solution regions in a source, in order."""
    return [m["task"] for m in map(_BEGIN.match, text.splitlines()) if m]


def _hint(region: list[str], after: list[str]) -> str:
    """What the stub's TODO line asks for: what to return, write in place or compute.

    Read from the region's code (its last ``return``, the arrays it updates in place, the
    names the lines after it use), so every region says it without a hand-written hint.
    """
    try:
        body = ast.parse(textwrap.dedent("".join(region)))
    except SyntaxError:
        return "your code here"
    if body.body and isinstance(body.body[-1], ast.Return) and body.body[-1].value is not None:
        value = body.body[-1].value
        items = value.elts if isinstance(value, ast.Tuple) else [value]
        if all(isinstance(e, ast.Name) for e in items):
            return "compute and return " + ", ".join(e.id for e in items if isinstance(e, ast.Name))
        return "compute and return the result (see the docstring's Returns)"
    augmented = {id(n.target) for n in ast.walk(body) if isinstance(n, ast.AugAssign)}
    assigned = {
        n.id for n in ast.walk(body) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and id(n) not in augmented
    }
    in_place = []
    for node in sorted(ast.walk(body), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        target: ast.expr | None = node.target if isinstance(node, ast.AugAssign) else None
        if isinstance(node, ast.keyword) and node.arg == "out":
            target = node.value
        if target is not None:
            text = ast.unparse(target)
            if text.split(".")[0].split("[")[0] not in assigned and text not in in_place:
                in_place.append(text)
    if "out" in {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}:
        return "write the result into `out` in place (nothing to return)"
    if in_place:
        return f"update {', '.join(in_place)} in place (nothing to return)"
    later = " ".join(after)
    used = [n for n in sorted(assigned) if re.search(rf"\b{re.escape(n)}\b", later)]
    if used:
        return f"compute {', '.join(used)} (used after this block)"
    return "your code here"


def strip_source(text: str, tasks: set[str] | None = None) -> tuple[str, list[str]]:
    """Replace solution regions by a TODO line and ``raise NotImplementedError``.

    In Markdown (``%`` markers) a region becomes a note naming the task instead.

    Args:
        text: a Python source file, jupytext notebook or MyST page.
        tasks: the tasks to strip; None strips every marked region. Regions of other
            tasks keep their code (their markers are removed).

    Returns:
        (new text, the tasks stripped in this file).

    Raises:
        ValueError: on an unknown task id or unbalanced markers (with the line number).
    """
    out: list[str] = []
    stripped: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        m = _BEGIN.match(lines[i])
        if not m:
            if _END.match(lines[i]):
                raise ValueError(f"line {i + 1}: 'END SOLUTION' without a BEGIN")
            out.append(lines[i])
            i += 1
            continue
        task, indent = m["task"], m["indent"]
        if task not in TASKS and task not in EXERCISES:
            raise ValueError(f"line {i + 1}: unknown task {task!r}; known: {', '.join([*TASKS, *EXERCISES])}")
        j = i + 1
        while j < len(lines) and not _END.match(lines[j]):
            if _BEGIN.match(lines[j]):
                raise ValueError(f"line {j + 1}: nested BEGIN SOLUTION inside {task!r}")
            j += 1
        if j == len(lines):
            raise ValueError(f"line {i + 1}: BEGIN SOLUTION {task} has no END SOLUTION")
        if tasks is None or task in tasks:
            title, doc = (TASKS[task].title, TASKS[task].doc) if task in TASKS else (EXERCISES[task], "")
            if m["c"] == "%":  # a MyST page: the code is the exercise
                note = f"The code of this step is left out: it is the assignment task `{task}` ({title})."
                out.append(f"```{{note}}\n{note}\n```\n")
            else:
                after = []
                for line in lines[j + 1 :]:
                    if line.strip() and not line.startswith(indent):
                        break
                    after.append(line)
                msg = f"{task}: implement {title}" + (f" (see {doc})" if doc else "")
                out.append(f"{indent}# TODO({task}): {_hint(lines[i + 1 : j], after)}\n")
                out.append(f"{indent}raise NotImplementedError({msg!r})\n")
            stripped.append(task)
        else:
            out.extend(lines[i + 1 : j])
        i = j + 1
    return "".join(out), stripped


def _project_files(root: pathlib.Path) -> list[pathlib.Path]:
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


def default_manifest(root: pathlib.Path | None = None) -> pathlib.Path:
    """Where ``build`` keeps the grading manifest by default: in the instructor's project."""
    from .grader import instructor_root

    return (root or instructor_root()) / "build" / "assignment" / "manifest.json"


def load_config(path: str | os.PathLike | None, root: pathlib.Path) -> dict[str, Any]:
    """The instructor's ``assignment.toml`` (points, hidden tests, time limits), or {}."""
    p = pathlib.Path(path) if path else root / "assignment.toml"
    if not p.exists():
        if path:
            raise FileNotFoundError(f"config file {p} not found")
        return {}
    with p.open("rb") as f:
        config = tomllib.load(f)
    unknown = sorted(set(config.get("tasks", {})) - set(TASKS))
    if unknown:
        raise ValueError(f"{p}: unknown tasks {unknown}; known: {', '.join(TASKS)}")
    return config


def build(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    tasks: list[str] | None = None,
    manifest: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    freeze: bool = True,
) -> dict[str, list[str]]:
    """Write the student copy of the project to ``out_dir`` and the grading manifest.

    Solution regions in the library, the jupytext notebooks and the MyST pages are stripped
    (each stripped notebook's ``.ipynb`` is regenerated); instructor-only files stay out;
    ``STUDENT.md``, ``assignment.json`` and a ``pytest.ini`` that imports the copy's own
    ``twins_np`` are written. The copy depends only on the sources: building twice gives
    identical trees.

    Args:
        out_dir: destination; must not exist or be empty.
        root: the project (default: the folder above this package).
        tasks: task ids to strip (default: all).
        manifest: where to write the grading manifest (default: :func:`default_manifest`).
        config: the instructor's ``assignment.toml`` (default: ``root/assignment.toml`` if any).
        freeze: compute the tests of each task (runs them; ~30 s). Without it the copy's
            ``assignment.json`` lists no tests and no manifest is written.

    Returns:
        ``{task: [files where it was stripped]}``.
    """
    from . import grader

    root = pathlib.Path(root).resolve() if root else grader.instructor_root()
    out = pathlib.Path(out_dir)
    if tasks is not None:
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
    chosen = list(tasks or TASKS)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} is not an empty folder; choose a new one")
    conf = load_config(config, root)
    out.mkdir(parents=True, exist_ok=True)  # a file in the way, or a read-only disk, fails here, before the tests run
    frozen = grader.freeze(root, chosen, conf) if freeze else None
    strip = set(chosen) | set(EXERCISES)
    where: dict[str, list[str]] = {t: [] for t in chosen}
    notebooks = []
    for src in _project_files(root):
        rel = src.relative_to(root)
        if rel.as_posix() in INSTRUCTOR_ONLY or rel.as_posix().startswith(INSTRUCTOR_ONLY_DIRS):
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() == "docs/instructors.md":
            dst.write_text(_INSTRUCTORS_STUB)
        elif (src.suffix, rel.parts[0]) in ((".py", "twins_np"), (".py", "notebooks"), (".md", "docs")):
            text, done = strip_source(src.read_text(), strip)
            dst.write_text(text)
            for t in done:
                if t in where and str(rel) not in where[t] and src.suffix == ".py" and rel.parts[0] == "twins_np":
                    where[t].append(str(rel))
            if rel.parts[0] == "notebooks" and done:
                notebooks.append(dst)
        else:
            shutil.copyfile(src, dst)
    for nb in notebooks:  # keep each .ipynb in step with its stripped source
        sys.path.insert(0, str(out / "tools"))
        try:
            import sync_notebooks  # type: ignore[import-not-found]

            nb.with_suffix(".ipynb").write_text(sync_notebooks.render(nb))
        finally:
            sys.path.pop(0)
            sys.modules.pop("sync_notebooks", None)
    _write_student_files(out, root, chosen, where, frozen, conf)
    if frozen is not None:
        mpath = pathlib.Path(manifest) if manifest else default_manifest(root)
        mpath.parent.mkdir(parents=True, exist_ok=True)
        mpath.write_text(json.dumps(frozen, indent=1, sort_keys=True) + "\n")
    return where


def _write_student_files(
    out: pathlib.Path, root: pathlib.Path, chosen: list[str], where: dict[str, list[str]],
    frozen: dict[str, Any] | None, conf: dict[str, Any],
) -> None:  # fmt: skip
    """STUDENT.md, assignment.json, a README that points to them, and the copy's pytest.ini."""
    info: dict[str, Any] = {"tasks": {}}
    for t in chosen:
        spec = frozen["tasks"][t] if frozen else None
        info["tasks"][t] = {
            "title": TASKS[t].title,
            "doc": TASKS[t].doc,
            "files": where[t],
            "points": spec["points"] if spec else float(conf.get("tasks", {}).get(t, {}).get("points", TASKS[t].points)),
            # the visible tests only: a hidden test's name stays with the instructor
            "tests": sorted(k for k, v in spec["tests"].items() if v == "visible") if spec else [],
            "hidden_tests": sum(v == "hidden" for v in spec["tests"].values()) if spec else 0,
        }
    (out / STUDENT_MANIFEST).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    total = sum(v["points"] for v in info["tasks"].values())
    rows = "\n".join(
        f"| `{t}` | {v['title']} | {', '.join(f'`{f}`' for f in v['files'])} | `{v['doc']}` | {v['points']:g} |"
        for t, v in info["tasks"].items()
    )
    files = sorted({f for v in info["tasks"].values() for f in v["files"]})
    (out / "STUDENT.md").write_text(f"""# Your assignment: the backward passes of Twins

This is a student copy of twins-np. In the files below, each task's code has been replaced by a
`TODO(task)` line saying what to compute, return or write, and a `raise NotImplementedError`.
Replace those two lines by your code; keep the function's signature and docstring (the
docstring gives the shapes and, under *Math*, the formula).

| task | what to implement | where | read first | points |
|---|---|---|---|---|
{rows}

Total: {total:g} points. The derivation pages are in `docs/derivations/` (`make docs` builds
them as a website under `docs/_build/html`).

## Checking your work

```bash
pip install -e ".[dev]"                      # once: numpy, scipy, pytest, ...
python -m pytest -m layernorm_backward       # one task's tests (any task id above)
twins-np assignment status                   # which tasks pass, in one table
twins-np gradcheck                           # finite-difference check of every layer (TODO = not written yet)
```

`make demo` (gradient check, then training on the digits) works once every task is done;
before that its gradient check lists the layers still to do and training stops at the first
`NotImplementedError`.

`pytest` here always imports this folder's `twins_np` (the `pytest.ini` sets `pythonpath`,
and `tests/conftest.py` stops with a message if another copy was imported): do not
`pip install twins-np` from PyPI next to it. The published package and its documentation
contain the solutions; your copy does not.

## Handing in

```bash
twins-np assignment submit                   # writes submission.zip with the files to hand in
```

The zip holds exactly these files: {', '.join(f'`{f}`' for f in files)}. Upload it (or the files) as
your course asks.

## How you are graded

Only the files above are taken from your submission; the instructor's tests, configuration
and library are used for everything else. Each task is graded on its own, with the reference
solution of every other task in place, so a bug in one task cannot cost you another. A task's
score is its points x (tests passed / its tests): its tests are the ones that reach your code
(the list is in `assignment.json`; some instructors add hidden tests). A failing, erroring or
skipped test counts as not passed, and each task has a time limit. PyTorch is not used when
grading.
""")
    readme = out / "README.md"
    if readme.exists():
        readme.write_text("> **Student copy of twins-np: start with [STUDENT.md](STUDENT.md)** (your tasks, how to check\n"
                          "> them and how you are graded).\n\n" + readme.read_text())  # fmt: skip
    ini = out / "pytest.ini"
    if ini.exists():
        text = ini.read_text()
        if "pythonpath" not in text:
            # this folder first on sys.path: `pytest -m TASK` tests the student's code, never an installed twins_np
            ini.write_text(text.replace("[pytest]\n", "[pytest]\npythonpath = .\n", 1))


def _student_root(path: str | os.PathLike) -> tuple[pathlib.Path, dict[str, Any]]:
    root = pathlib.Path(path).resolve()
    try:
        return root, json.loads((root / STUDENT_MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{root} is not a student copy (no {STUDENT_MANIFEST}); run this in your copy's folder") from None


def status(path: str | os.PathLike = ".", timeout: float = 600) -> dict[str, dict[str, Any]]:
    """Run each task's tests in a student copy, in one pytest run of the copy's own tests.

    Returns ``{task: {"passed", "total", "failed": [test ids]}}`` (visible tests only).
    """
    import tempfile

    from .grader import _REPORT_PLUGIN

    root, info = _student_root(path)
    tests = sorted({t for v in info["tasks"].values() for t in v["tests"]})
    got: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp_name:  # the report plugin stays out of the student's tree
        tmp = pathlib.Path(tmp_name)
        (tmp / "_twins_np_grader_report.py").write_text(_REPORT_PLUGIN)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH")}
        env.update(PYTHONPATH=f"{root}{os.pathsep}{tmp}", TWINS_NP_GRADER_REPORT=str(tmp / "r.jsonl"), TQDM_DISABLE="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_twins_np_grader_report", *tests]
        subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        if (tmp / "r.jsonl").exists():
            for line in (tmp / "r.jsonl").read_text().splitlines():
                r = json.loads(line)
                if r["outcome"] != "passed" or r["test"] not in got:
                    got[r["test"]] = r["outcome"]
    res = {}
    for task, v in info["tasks"].items():
        failed = [t for t in v["tests"] if got.get(t) != "passed"]
        res[task] = {"passed": len(v["tests"]) - len(failed), "total": len(v["tests"]), "failed": failed}
    return res


def submit(path: str | os.PathLike = ".", out: str | os.PathLike | None = None) -> tuple[pathlib.Path, list[str]]:
    """Zip the files a student hands in (those holding the tasks) into ``submission.zip``.

    Returns (the zip's path, the files). Raises FileNotFoundError when one is missing.
    """
    root, info = _student_root(path)
    files = sorted({f for v in info["tasks"].values() for f in v["files"]})
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot hand in: {', '.join(missing)} missing from {root}")
    dest = pathlib.Path(out) if out else root / "submission.zip"
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(root / f, f)
    return dest, files
