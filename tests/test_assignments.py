"""The assignment round trip: build a student copy, check it, grade it.

For each task, a student copy that strips only that task must make the task's own tests
fail with that task's NotImplementedError (so the tests really exercise the region),
while the same tests pass in the solution tree (the rest of the suite runs them).
"""

from __future__ import annotations

import filecmp
import os
import pathlib
import re
import subprocess
import sys

import pytest

from twins_np import assignments
from twins_np.assignments import TASKS, build, strip_source

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _regions(text: str) -> dict[str, list[str]]:
    """task -> the source lines inside its solution regions."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"# BEGIN SOLUTION (\S+)\n(.*?)# END SOLUTION", text, re.S):
        out.setdefault(m[1], []).extend(m[2].splitlines())
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "copy"
    where = build(out, root=ROOT)
    return out, where


def test_every_task_has_a_region_and_tests(student):
    _, where = student
    for task, files in where.items():
        assert files, f"no solution region for {task}"
        for sel in TASKS[task].tests:
            assert (ROOT / sel.partition("::")[0]).exists(), f"{task}: test file {sel} missing"


def test_student_copy_imports(student):
    out, _ = student
    code = "import twins_np, twins_np.functional, twins_np.nn, twins_np.models, twins_np.optim; print('ok')"
    env = dict(os.environ, PYTHONPATH=str(out))
    r = subprocess.run([sys.executable, "-c", code], cwd=out, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_no_solution_line_survives(student):
    out, where = student
    for task, files in where.items():
        for rel in files:
            sol = (ROOT / rel).read_text()
            stu = (out / rel).read_text()
            assert "BEGIN SOLUTION" not in stu and "END SOLUTION" not in stu
            assert re.search(rf"raise NotImplementedError\([\'\"]{task}: implement", stu), f"{rel}: no stub for {task}"
            outside = re.sub(r"# BEGIN SOLUTION \S+\n.*?# END SOLUTION", "", sol, flags=re.S)
            for line in _regions(sol)[task]:
                code = line.strip()
                # short lines such as `return dx` occur everywhere; a long line may also be used
                # outside the regions (shape checks), so compare with its count there
                if len(code) >= 25 and not code.startswith("#"):
                    assert stu.count(code) <= outside.count(code), f"{rel}: solution line survived: {code}"


def test_build_is_deterministic(student, tmp_path):
    out, _ = student
    again = tmp_path / "again"
    build(again, root=ROOT)
    cmp = filecmp.dircmp(out, again)

    def same(c: filecmp.dircmp) -> bool:
        return not (c.left_only or c.right_only or c.diff_files) and all(same(s) for s in c.subdirs.values())

    assert same(cmp)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(filecmp.cmp(p, again / p.relative_to(out), shallow=False) for p in files)


def test_docstrings_and_signatures_kept(student):
    out, _ = student
    stu = (out / "twins_np/functional/layernorm.py").read_text()
    assert "def layernorm_backward(dout: Any, cache: LayerNormCache) -> tuple[Any, Any, Any]:" in stu
    assert "dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))" in stu  # the Math section stays


def test_strip_source_errors():
    with pytest.raises(ValueError, match="unknown task"):
        strip_source("    # BEGIN SOLUTION nope\n    x = 1\n    # END SOLUTION\n")
    with pytest.raises(ValueError, match="no END SOLUTION"):
        strip_source("    # BEGIN SOLUTION gelu_backward\n    x = 1\n")
    with pytest.raises(ValueError, match="without a BEGIN"):
        strip_source("x = 1\n# END SOLUTION\n")
    text, done = strip_source(
        "def f():\n    # BEGIN SOLUTION gelu_backward\n    return 1\n    # END SOLUTION\n", {"lsa_backward"}
    )
    assert done == [] and "return 1" in text and "SOLUTION" not in text


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_task_tests_fail_with_its_own_not_implemented(task, tmp_path):
    out = tmp_path / "copy"
    build(out, root=ROOT, tasks=[task])
    files = sorted({sel.partition("::")[0] for sel in TASKS[task].tests})
    env = dict(os.environ, PYTHONPATH=str(out))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-m", task, "-x", "-q", "-p", "no:cacheprovider"],
        cwd=out, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout[-3000:]
    assert f"NotImplementedError: {task}: implement" in r.stdout, r.stdout[-3000:]


def test_grade_scores_a_task(tmp_path, monkeypatch):
    res = assignments.grade(ROOT, ["gelu_backward"], json_path=str(tmp_path / "grades.json"))
    r = res["gelu_backward"]
    assert r["total"] > 0 and r["failed"] == 0 and r["score"] == 1.0
    assert (tmp_path / "grades.json").read_text().startswith("{")
