"""Fixtures of the course tests: one assignment built once per session, and the sandbox modes.

See ``course_helpers.py`` for what the assignment holds and what each mode protects.
"""

from __future__ import annotations

import os
import shutil

import pytest
from course_helpers import ROOT, TASKS, TIMEOUT, Course, Mode

from twins_np.course import runner
from twins_np.course.build import build
from twins_np.course.manifest import load_manifest


@pytest.fixture(scope="session")
def course(tmp_path_factory) -> Course:
    base = tmp_path_factory.mktemp("course")
    config = base / "assignment.toml"
    # 10 points each but GELU's 4 (course.toml's defaults overridden: the tests read scores as fractions of 10)
    config.write_text(
        f'timeout = {TIMEOUT}\n[tasks.gelu_backward]\npoints = 4\nhidden = ["float32"]\n'
        + "".join(f"[tasks.{t}]\npoints = 10\n" for t in TASKS if t != "gelu_backward")
    )
    build(base / "student", root=ROOT, tasks=TASKS, manifest=base / "manifest.json", config=config, freeze=False, selfcheck=False)
    # the instructor's copy as Gradescope keeps it: in a folder only its owner can enter
    private = tmp_path_factory.mktemp("instructor")
    private.chmod(0o700)
    shutil.copytree(ROOT / "twins_np", private / "twins_np", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", private / "tests", ignore=shutil.ignore_patterns("__pycache__", "data*"))
    return Course(base, load_manifest(base / "manifest.json"), private)


@pytest.fixture(params=["namespaces", "plain"])
def mode(request) -> Mode:
    root = os.geteuid() == 0
    if request.param == "namespaces":
        box = runner.sandbox(True)
        if not box.namespaces:
            pytest.skip(f"namespaces are not available here: {box.why}")
        return Mode("namespaces", root, True)
    return Mode("plain", root, False)
