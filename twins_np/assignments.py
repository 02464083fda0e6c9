"""Course assignments generated from the library itself.

The solution code lives in the library between two marker comments, each alone on its
line: ``# BEGIN SOLUTION <task-id>`` before the body a student writes and
``# END SOLUTION`` after it.

:func:`build` copies the project and replaces each selected region by
``raise NotImplementedError("<task>: ...")`` at the same indentation, so signatures,
docstrings with shapes and the comments around the region stay. The tests are not
touched: they are the autograder. Each task has a pytest marker (added to the matching
tests by ``tests/conftest.py`` from :data:`TASKS`), so ``pytest -m lsa_backward`` runs one
task's tests, and :func:`grade` runs them all and scores them.

There is no second copy of the code to keep in sync: change the library, rebuild.
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
import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["TASKS", "Task", "build", "grade", "strip_source", "task_of_test"]


@dataclass(frozen=True)
class Task:
    """One assignment task: what to implement and which tests grade it."""

    title: str
    doc: str  # the derivation page a student should read
    tests: tuple[str, ...]  # test selectors: "file" or "file::substring" (matched on the test id)


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
        ("tests/functional/test_f_peg.py", "tests/functional/test_f_conv.py::depthwise",
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
}  # fmt: skip

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION (?P<task>[\w-]+)\s*$")
_END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
# never copied into a student tree
_SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
              ".hypothesis", "outputs", "_build", ".ipynb_checkpoints"}  # fmt: skip


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


def strip_source(text: str, tasks: set[str] | None = None) -> tuple[str, list[str]]:
    """Replace solution regions by ``raise NotImplementedError``.

    Args:
        text: a Python source file.
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
                raise ValueError(f"line {i + 1}: '# END SOLUTION' without a BEGIN")
            out.append(lines[i])
            i += 1
            continue
        task, indent = m["task"], m["indent"]
        if task not in TASKS:
            raise ValueError(f"line {i + 1}: unknown task {task!r}; known: {', '.join(TASKS)}")
        j = i + 1
        while j < len(lines) and not _END.match(lines[j]):
            if _BEGIN.match(lines[j]):
                raise ValueError(f"line {j + 1}: nested BEGIN SOLUTION inside {task!r}")
            j += 1
        if j == len(lines):
            raise ValueError(f"line {i + 1}: BEGIN SOLUTION {task} has no END SOLUTION")
        if tasks is None or task in tasks:
            msg = f"{task}: implement {TASKS[task].title} (see {TASKS[task].doc})"
            out.append(f"{indent}# TODO({task}): your code here\n")
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


def build(
    out_dir: str | os.PathLike, root: str | os.PathLike | None = None, tasks: list[str] | None = None
) -> dict[str, list[str]]:
    """Write the student copy of the project to ``out_dir``.

    Library solution regions (and notebook solution regions in the jupytext sources,
    whose ``.ipynb`` is then regenerated) become ``raise NotImplementedError``. The
    output depends only on the sources: building twice gives identical trees.

    Args:
        out_dir: destination; must not exist or be empty.
        root: the project (default: the folder above this package).
        tasks: task ids to strip (default: all).

    Returns:
        ``{task: [files where it was stripped]}``.
    """
    root = pathlib.Path(root) if root else pathlib.Path(__file__).resolve().parents[1]
    out = pathlib.Path(out_dir)
    if tasks is not None:
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder")
    where: dict[str, list[str]] = {t: [] for t in (tasks or TASKS)}
    notebooks = []
    for src in _project_files(root):
        rel = src.relative_to(root)
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".py" and rel.parts[0] in ("twins_np", "notebooks"):
            text, done = strip_source(src.read_text(), set(tasks) if tasks else None)
            dst.write_text(text)
            for t in done:
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
    return where


def grade(project: str | os.PathLike = ".", tasks: list[str] | None = None, json_path: str | None = None) -> dict[str, dict]:
    """Run each task's tests in ``project`` and score them.

    Returns ``{task: {"passed", "failed", "skipped", "total", "score"}}`` with score =
    passed / (total - skipped); also written to ``json_path`` when given (for a
    learning-management system).
    """
    project = pathlib.Path(project).resolve()
    results: dict[str, dict] = {}
    env = dict(os.environ, PYTHONPATH=str(project) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for task in tasks or list(TASKS):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        with tempfile.TemporaryDirectory() as tmp:
            xml = pathlib.Path(tmp) / "report.xml"
            subprocess.run(
                [sys.executable, "-m", "pytest", "tests", "-m", task, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"],
                cwd=project, env=env, capture_output=True, text=True,
            )  # fmt: skip
            counts = {"passed": 0, "failed": 0, "skipped": 0, "total": 0}
            if xml.exists():
                for case in ET.parse(xml).getroot().iter("testcase"):
                    counts["total"] += 1
                    if case.find("skipped") is not None:
                        counts["skipped"] += 1
                    elif case.find("failure") is not None or case.find("error") is not None:
                        counts["failed"] += 1
                    else:
                        counts["passed"] += 1
        graded = counts["total"] - counts["skipped"]
        results[task] = {**counts, "score": counts["passed"] / graded if graded else 0.0}
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results
