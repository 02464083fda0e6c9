"""The grader, tested as an instructor's worries: is it fair, is it sealed, does it explain itself.

One assignment with two tasks (gelu_backward, and ffn_backward, whose tests run through GELU)
is built once per session; each test hands a submission to the grader.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from twins_np import grader
from twins_np.assignments import build

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASKS = ["gelu_backward", "ffn_backward"]
GELU, MLP = "twins_np/functional/activation.py", "twins_np/functional/mlp.py"
TIMEOUT = 30  # per task; the hanging submission costs this much


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    base = tmp_path_factory.mktemp("course")
    config = base / "assignment.toml"
    config.write_text(f'timeout = {TIMEOUT}\n[tasks.gelu_backward]\npoints = 4\nhidden = ["float32"]\n')
    build(base / "student", root=ROOT, tasks=TASKS, manifest=base / "manifest.json", config=config)
    return base, grader.load_manifest(base / "manifest.json")


def _submission(course, tmp_path, **files: str) -> pathlib.Path:
    """The untouched student copy's solution files, with some replaced (keyword: GELU / MLP / any name)."""
    base, _ = course
    sub = tmp_path / "sub"
    for rel in (GELU, MLP):
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / "student" / rel, sub / rel)
    for rel, text in files.items():
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        (sub / rel).write_text(text)
    return sub


def _stub_replaced(course, rel: str, body: str) -> str:
    """The student's file with the stub's NotImplementedError replaced by ``body``."""
    text = (course[0] / "student" / rel).read_text()
    lines = text.splitlines(keepends=True)
    i = next(k for k, ln in enumerate(lines) if "raise NotImplementedError(" in ln)
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = "".join(indent + b + "\n" for b in body.splitlines())
    return "".join(lines)


REF_GELU_BODY = (ROOT / GELU).read_text().split("# BEGIN SOLUTION gelu_backward\n")[1].split("    # END SOLUTION")[0]
HANG = "import time\nwhile True:  # endless, but idle: the test machine's cores stay free\n    time.sleep(0.5)"
WRONG_GELU = "xp = get_xp(x)\npdf = xp.exp(-0.5 * x * x) * _INV_SQRT_2PI\nxp.multiply(dout, cdf - x * pdf, out=out)  # sign error"


def by_task(results):
    return {r.task: r for r in results}


def test_the_frozen_tests_reach_the_stripped_code(course):
    _, manifest = course
    for task in TASKS:
        spec = manifest["tasks"][task]
        assert spec["tests"], task
        # forward, dtype-of-forward and input-check tests never reach the region: not frozen
        assert not any("forward" in t and "backward" not in t and "gradcheck" not in t for t in spec["tests"]), spec["tests"]
    assert manifest["tasks"]["gelu_backward"]["points"] == 4 and manifest["tasks"]["ffn_backward"]["points"] == 10


def test_an_untouched_copy_scores_zero(course, tmp_path):
    res = grader.grade(_submission(course, tmp_path), course[1])
    assert [r.score for r in res] == [0.0, 0.0]
    assert all("NotImplementedError" in f["reason"] for r in res for f in r.failed)


def test_a_correct_task_scores_full_while_another_is_wrong(course, tmp_path):
    # ffn_backward correct (the reference mlp.py), gelu_backward with a sign error
    sub = _submission(course, tmp_path, **{GELU: _stub_replaced(course, GELU, WRONG_GELU), MLP: (ROOT / MLP).read_text()})
    res = by_task(grader.grade(sub, course[1]))
    assert res["ffn_backward"].score == res["ffn_backward"].points == 10
    assert res["gelu_backward"].score < res["gelu_backward"].points
    # the report names each failed test with a one-line reason
    assert res["gelu_backward"].failed and all(
        f["test"].startswith("tests/") and f["reason"] for f in res["gelu_backward"].failed
    )
    assert all("\n" not in f["reason"] for f in res["gelu_backward"].failed)


def test_the_students_pytest_ini_conftest_and_registry_have_no_effect(course, tmp_path):
    hostile = {
        "pytest.ini": "[pytest]\naddopts = -k nothing_matches\n",
        "conftest.py": "import pytest\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
        "    out = yield\n    out.get_result().outcome = 'passed'\n",
        "tests/conftest.py": "def pytest_collection_modifyitems(items):\n    items.clear()\n",
        "twins_np/assignments.py": "TASKS = {}\n",
    }
    res = grader.grade(_submission(course, tmp_path, **hostile), course[1])
    assert [r.score for r in res] == [0.0, 0.0]


def test_syntax_error_and_hang_are_reported_with_a_non_zero_exit(course, tmp_path):
    base, _ = course
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "twins_np", "assignment", "grade", "--manifest", str(base / "manifest.json")]
    syntax = _submission(course, tmp_path / "a", **{GELU: _stub_replaced(course, GELU, "return dout *")})
    r = subprocess.run([*cli, str(syntax), "--tasks", "gelu_backward"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SyntaxError" in r.stdout and "error" in r.stdout
    hang = _submission(course, tmp_path / "b", **{GELU: _stub_replaced(course, GELU, HANG)})
    r = subprocess.run(
        [*cli, "--timeout", "8", str(hang), "--tasks", "gelu_backward"], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "timeout: killed after 8 s" in r.stdout


def test_not_a_submission_exits_2_with_one_line(course, tmp_path):
    base, _ = course
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        cmd = [sys.executable, "-m", "twins_np", "assignment", "grade", "--manifest", str(base / "manifest.json"), str(target)]
        r = subprocess.run(cmd,
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 2 and "not a submission" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_file_system_faults_end_cleanly(course, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    (tmp_path / "a_file").write_text("x")
    cmd = [sys.executable, "-m", "twins_np", "assignment", "build"]
    r = subprocess.run([*cmd, str(tmp_path / "a_file" / "copy"), "--tasks", "gelu_backward"],
                       env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr, r.stderr
    r = subprocess.run([*cmd, str(tmp_path / "a_file"), "--tasks", "gelu_backward"],
                       env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "not an empty folder" in r.stderr, r.stderr


def _check_results_json(data):
    assert set(data) >= {"score", "execution_time", "output", "tests"}
    assert isinstance(data["score"], float) and isinstance(data["execution_time"], (int, float))
    for t in data["tests"]:
        assert set(t) >= {"name", "score", "max_score", "status", "output", "visibility"}
        assert t["status"] in ("passed", "failed") and 0 <= t["score"] <= t["max_score"]
        assert t["visibility"] in ("visible", "hidden", "after_due_date", "after_published")


def test_gradescope_autograder_end_to_end(course, tmp_path):
    """run_autograder in a folder laid out like Gradescope's /autograder, five submissions."""
    base, manifest = course
    gs = tmp_path / "autograder"
    zpath = tmp_path / "autograder.zip"
    from twins_np.autograder import write_autograder

    names = write_autograder(zpath, base / "manifest.json", timeout=300)
    assert {"setup.sh", "run_autograder", "requirements.txt", "manifest.json", "pytest.ini", GELU} <= set(names)
    assert not any("torch" in ln for ln in (zipfile.ZipFile(zpath).read("requirements.txt").decode().splitlines()))
    with zipfile.ZipFile(zpath) as z:
        z.extractall(gs / "source")
    env = dict(os.environ, TWINS_NP_AUTOGRADER_ROOT=str(gs), TWINS_NP_PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)  # the grader must run from the unpacked source alone

    def run(files: dict[str, str]) -> dict:
        shutil.rmtree(gs / "submission", ignore_errors=True)
        shutil.rmtree(gs / "results", ignore_errors=True)
        for rel, text in files.items():  # Gradescope's loose uploads: the files at the top
            (gs / "submission").mkdir(parents=True, exist_ok=True)
            (gs / "submission" / pathlib.Path(rel).name).write_text(text)
        r = subprocess.run(["bash", str(gs / "source" / "run_autograder")], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        data = json.loads((gs / "results" / "results.json").read_text())
        _check_results_json(data)
        return data

    good = run({GELU: (ROOT / GELU).read_text(), MLP: (ROOT / MLP).read_text()})
    assert good["score"] == 14.0 and all(t["status"] == "passed" for t in good["tests"])
    # gelu's float32 tests are hidden: an entry of their own, not named in any output
    hidden = [t for t in good["tests"] if t["name"].endswith("(hidden tests)")]
    assert len(hidden) == 1 and hidden[0]["visibility"] == "after_published"
    wrong = run({GELU: _stub_replaced(course, GELU, WRONG_GELU), MLP: (ROOT / MLP).read_text()})
    assert 10.0 <= wrong["score"] < 14.0
    assert any("FAILED tests/" in t["output"] for t in wrong["tests"])
    assert not any("float32" in t["output"] for t in wrong["tests"])
    skipping = run({GELU: _stub_replaced(course, GELU, "import pytest\npytest.skip('later')"), MLP: (ROOT / MLP).read_text()})
    assert skipping["score"] == 10.0 and any("a skip counts as a failure" in t["output"] for t in skipping["tests"])
    syntax = run({GELU: _stub_replaced(course, GELU, "return dout *"), MLP: (ROOT / MLP).read_text()})
    assert syntax["score"] == 10.0 and "SyntaxError" in syntax["output"]
    hang = run({GELU: _stub_replaced(course, GELU, HANG), MLP: (ROOT / MLP).read_text()})
    assert hang["score"] == 10.0 and "killed after" in hang["output"]
    empty = run({"notes.txt": "nothing"})
    assert empty["score"] == 0.0 and "not a submission" in empty["output"]


def test_student_status_and_submit(course, tmp_path):
    base, _ = course
    copy = tmp_path / "copy"
    shutil.copytree(base / "student", copy)
    (copy / GELU).write_text((ROOT / GELU).read_text())  # gelu done, ffn not
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-m", "twins_np", "assignment", "status", str(copy)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:]}
    assert r.returncode == 1 and rows["gelu_backward"][-1] == "done" and rows["ffn_backward"][-1] == "todo", r.stdout + r.stderr
    assert rows["ffn_backward"][1] == "0"
    r = subprocess.run(
        [sys.executable, "-m", "twins_np", "assignment", "submit", str(copy)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(zipfile.ZipFile(copy / "submission.zip").namelist()) == [GELU, MLP]
    # the zip grades: gelu full marks, ffn none
    res = by_task(grader.grade(copy / "submission.zip", course[1]))
    assert res["gelu_backward"].score == 4.0 and res["ffn_backward"].score == 0.0
    (copy / MLP).unlink()
    r = subprocess.run(
        [sys.executable, "-m", "twins_np", "assignment", "submit", str(copy)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "mlp.py missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_dense_head_tasks_grade_zero_untouched_and_full_with_the_reference(tmp_path):
    """group_norm_backward and bilinear_resize_backward (issue 13's layers), built and graded as
    the others: an untouched copy scores 0, the reference full marks, a GroupNorm backward
    without the variance path only part of them."""
    tasks = ["group_norm_backward", "bilinear_resize_backward"]
    norm2d, resize = "twins_np/functional/norm2d.py", "twins_np/functional/resize.py"
    build(tmp_path / "student", root=ROOT, tasks=tasks, manifest=tmp_path / "manifest.json")
    manifest = grader.load_manifest(tmp_path / "manifest.json")
    for task in tasks:  # enough tests that reach the region, gradient checks and torch-free references among them
        tests = manifest["tasks"][task]["tests"]
        assert len(tests) >= 20 and any("gradcheck" in t for t in tests), tests
        assert any("invariances" in t or "adjoint" in t for t in tests), tests
    res = by_task(grader.grade(tmp_path / "student", manifest))
    assert {t: r.score for t, r in res.items()} == {t: 0.0 for t in tasks}
    ref = tmp_path / "ref"
    (ref / "twins_np/functional").mkdir(parents=True)
    for rel in (norm2d, resize):
        shutil.copyfile(ROOT / rel, ref / rel)
    res = by_task(grader.grade(ref, manifest))
    assert all(r.score == r.points == 10.0 and r.status == "ok" for r in res.values()), res
    text = (ROOT / norm2d).read_text()
    assert text.count("    dx -= xhat * m2\n") == 1
    (ref / norm2d).write_text(text.replace("    dx -= xhat * m2\n", ""))  # the path through var forgotten
    res = by_task(grader.grade(ref, manifest))
    assert 0.0 < res["group_norm_backward"].score < 10.0 and res["bilinear_resize_backward"].score == 10.0
    assert any("invariances" in f["test"] for f in res["group_norm_backward"].failed)
