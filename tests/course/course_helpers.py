"""Helpers of the course tests: the assignment they share, the sandbox modes, submissions.

The assignment has four tasks: ``gelu_backward``, ``ffn_backward`` (whose backward calls the
GELU's), ``layernorm_backward`` and ``group_norm_backward`` (LayerNorm's backward is a
GroupNorm with one group: a submission could try to call it). Submissions start from the
untouched student copy and replace some files.

Modes: ``namespaces`` (new mount, PID and network namespaces; as root the worker is
``nobody``, as a user it is that user in a user namespace) and ``plain`` (no namespaces:
as root the worker is ``nobody`` with limits and a reaper; as a user, only limits and the
reaper). A test of an attack the mode cannot stop is skipped with the reason, and
``docs/instructors.md`` has the same table.
"""

from __future__ import annotations

import os
import pathlib
import stat
from dataclasses import dataclass
from typing import Any

import pytest

from twins_np.course import grader

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASKS = ["gelu_backward", "ffn_backward", "layernorm_backward", "group_norm_backward"]
GELU, MLP = "twins_np/functional/activation.py", "twins_np/functional/mlp.py"
LN, NORM2D = "twins_np/functional/layernorm.py", "twins_np/functional/norm2d.py"
FILES = {"gelu_backward": GELU, "ffn_backward": MLP, "layernorm_backward": LN, "group_norm_backward": NORM2D}
TIMEOUT = 30  # seconds per task in the built assignment


@dataclass
class Course:
    base: pathlib.Path  # student/ (the untouched copy) and manifest.json
    manifest: dict[str, Any]
    root: pathlib.Path  # the instructor's copy used for grading: readable by its owner only

    def student_file(self, rel: str) -> str:
        return (self.base / "student" / rel).read_text()


@dataclass
class Mode:
    name: str  # "namespaces" or "plain"
    root: bool  # the grader runs as root: the worker runs as nobody
    namespaces: bool

    def grade(self, course: Course, sub: pathlib.Path, **kw: Any) -> dict[str, grader.TaskResult]:
        kw.setdefault("root", course.root)
        res = grader.grade(sub, course.manifest, namespaces=self.namespaces, **kw)
        return {r.task: r for r in res}

    def protects(self, what: str) -> str:
        """"" when this mode stops the attack class ``what``, else why not (the skip's reason)."""
        user = "as an unprivileged user without namespaces the worker"
        reasons = {
            # reading the instructor's files: another user (root), or not in the worker's view (namespaces)
            "files": "" if self.root or self.namespaces else f"{user} reads every file of that user",
            # any copy of the solutions on the machine (an editable install, another checkout)
            "machine": "" if self.namespaces else
            "without namespaces the worker reads every file its user can; this machine has world-readable checkouts",
            # writing the instructor's files and results
            "writes": "" if self.root or self.namespaces else f"{user} writes every file of that user",
            # signalling the grader's processes
            "signals": "" if self.root or self.namespaces else f"{user} can signal every process of that user",
            # an autodiff package installed where the grader's Python is
            "torch": "" if self.namespaces or not _importable("torch") else
            "torch is installed here and, without namespaces, only an import hook (which the submission can remove) blocks it",
        }
        return reasons[what]

    def need(self, what: str) -> None:
        why = self.protects(what)
        if why:
            pytest.skip(f"{self.name} mode ({'root' if self.root else 'user'}): {why} (docs/instructors.md, threat model)")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def submission(course: Course, where: pathlib.Path, **files: str) -> pathlib.Path:
    """The untouched copy's solution files, some replaced (keyword: a task id, text of its file)."""
    sub = where / "sub"
    for task, rel in FILES.items():
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        text = files.get(task)
        (sub / rel).write_text(text if text is not None else course.student_file(rel))
    for d in [sub, *(p for p in sub.rglob("*") if p.is_dir())]:  # the worker's user may read it (it does not need to)
        d.chmod(d.stat().st_mode | stat.S_IRWXU | stat.S_IROTH | stat.S_IXOTH)
    return sub


def reference_file(task: str) -> str:
    return (ROOT / FILES[task]).read_text()


def processes_with(token: str) -> list[int]:
    """The processes (of any user, in any namespace) whose command line holds ``token``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                continue
    return found
