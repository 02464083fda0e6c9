"""A class that tries to beat the grader: every attack gets the fair score.

Each test hands the grader a submission from ``course_attacks.py`` and checks the score it
deserves (0, or the honest part), in each sandbox mode that protects against it; where a
mode cannot (an unprivileged grader without namespaces cannot hide its own files from a
worker of the same user), the test is skipped with the reason, which the threat model of
``docs/instructors.md`` states too. The attacks know the real paths of the instructor's copy
and of the grade files, the worst case.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import tempfile
import time

import course_attacks as A
import pytest
from course_helpers import FILES, GELU, LN, MLP, ROOT, processes_with, reference_file, submission


def _zero(results, task):
    r = results[task]
    assert r.score == 0.0 and r.passed == 0, (task, r.line, [c.reason for c in r.checks][:3])
    assert "checks passed" not in r.line and " ok" not in r.line  # never "ok" beside 0 points
    return r


# --- delegating to a solution on disk -----------------------------------------------------------


@pytest.mark.parametrize("task", ["gelu_backward", "ffn_backward", "layernorm_backward"])
def test_a_solution_on_disk_cannot_be_found(course, mode, tmp_path, task):
    """The instructor's copy (its real path given), the grader's /proc entries, the autograder
    layout, /tmp (other tasks' folders) and the folders an installed twins_np names."""
    mode.need("files")
    if mode.protects("machine"):  # without namespaces: another copy on this machine would do
        pytest.skip(f"{mode.name} mode: {mode.protects('machine')}")
    known = [str(course.root), str(course.root / "twins_np"), str(ROOT)]
    sub = submission(course, tmp_path, **{task: A.reference_on_disk(course.student_file(FILES[task]), task, known)})
    r = _zero(mode.grade(course, sub, tasks=[task]), task)
    assert any("no solution found" in c.reason for c in r.checks), r.checks[0].reason
    assert any("opens files" in f for f in r.review) and any("exec" in f for f in r.review)


def test_a_solution_on_disk_only_the_instructors_copy(course, mode, tmp_path):
    """Without namespaces but as root, the instructor's copy (readable by its owner only, as
    on Gradescope) and the grader's /proc entries stay out of reach."""
    mode.need("files")
    known = [str(course.root), str(course.root / "twins_np")]
    text = A.reference_on_disk(course.student_file(GELU), "gelu_backward", known, wide=False)
    r = _zero(mode.grade(course, submission(course, tmp_path, gelu_backward=text), tasks=["gelu_backward"]), "gelu_backward")
    assert r.checks[0].reason.startswith("RuntimeError: no solution found")


def test_a_walk_of_the_whole_file_system_finds_no_solution(course, mode, tmp_path):
    mode.need("machine")
    text = A.reference_on_disk(course.student_file(LN), "layernorm_backward", [], walk=True)
    _zero(mode.grade(course, submission(course, tmp_path, layernorm_backward=text), tasks=["layernorm_backward"]),
          "layernorm_backward")  # fmt: skip


# --- calling another task's solution ---------------------------------------------------------


@pytest.mark.parametrize("attack", [A.layernorm_as_group_norm, A.layernorm_as_batch_norm])
def test_another_tasks_solution_cannot_be_called(course, mode, tmp_path, attack):
    sub = submission(course, tmp_path, layernorm_backward=attack(course.student_file(LN)))
    r = _zero(mode.grade(course, sub, tasks=["layernorm_backward"]), "layernorm_backward")
    assert "belongs to another task" in r.line, r.line
    assert any("another task's function" in f for f in r.review), r.review


def test_a_dependency_answers_only_the_reference_calls(course, mode, tmp_path):
    """The FFN may call the GELU backward, but only as the reference does: other inputs get NaN
    (and a note), so only the checks that do not go through it pass."""
    sub = submission(course, tmp_path, ffn_backward=A.ffn_asks_gelu_for_other_inputs(course.student_file(MLP)))
    r = mode.grade(course, sub, tasks=["ffn_backward"])["ffn_backward"]
    passed = {c.name.split(": ")[1] for c in r.checks if c.passed}
    assert passed == {"dfc2_w", "dfc2_b"}, r.line
    assert any("gelu_backward was called with inputs that differ" in n for n in r.notes), r.notes


def test_the_ffn_uses_the_gelu_backward_of_the_reference_not_the_students(course, mode, tmp_path):
    """A correct FFN scores full marks beside a GELU stub, and a wrong GELU does not cost it."""
    stub = "    raise NotImplementedError('gelu_backward"
    wrong_gelu = course.student_file(GELU).replace(stub, "    return dout  # wrong\n" + stub)
    sub = submission(course, tmp_path, ffn_backward=reference_file("ffn_backward"), gelu_backward=wrong_gelu)
    res = mode.grade(course, sub, tasks=["gelu_backward", "ffn_backward"])
    assert res["ffn_backward"].score == 10.0 and res["gelu_backward"].score == 0.0, res["gelu_backward"].line


# --- not deriving it -------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "attack"), [("layernorm_backward", A.layernorm_gradcheck),
                                              ("layernorm_backward", A.layernorm_colored_differences),
                                              ("ffn_backward", A.ffn_finite_differences)])  # fmt: skip
def test_finite_differences_run_out_of_time(course, mode, tmp_path, task, attack):
    sub = submission(course, tmp_path, **{task: attack(course.student_file(FILES[task]))})
    t0 = time.monotonic()
    r = _zero(mode.grade(course, sub, tasks=[task]), task)
    assert r.status == "timeout" and r.line.split("  ", 1)[1].startswith("time limit:"), r.line
    assert time.monotonic() - t0 < 20  # killed at the case's limit, not at the task's 30 s


def test_autodiff_is_not_available(course, mode, tmp_path):
    sub = submission(course, tmp_path, gelu_backward=A.gelu_torch_autograd(course.student_file(GELU)))
    res = mode.grade(course, sub, tasks=["gelu_backward"])
    r = res["gelu_backward"]
    assert any("a string names torch" in f or "imports torch" in f for f in r.review) or "sys" in str(r.review), r.review
    mode.need("torch")
    _zero(res, "gelu_backward")
    assert "torch is not available when grading" in r.line, r.line


def test_vectorised_differences_of_an_elementwise_op_are_flagged(course, mode, tmp_path):
    """The one known gap: central differences of GELU cost two forward passes, as fast as the
    reference and accurate enough. The score cannot tell; the static review flags it."""
    sub = submission(course, tmp_path, gelu_backward=A.gelu_vectorised_differences(course.student_file(GELU)))
    r = mode.grade(course, sub, tasks=["gelu_backward"])["gelu_backward"]
    assert any("calls gelu_forward (the forward: finite differences?)" in f for f in r.review), r.review


# --- values never checked --------------------------------------------------------------------


@pytest.mark.parametrize("task", ["gelu_backward", "ffn_backward", "layernorm_backward"])
def test_zeros_of_the_right_shape_score_nothing(course, mode, tmp_path, task):
    sub = submission(course, tmp_path, **{task: A.zeros(course.student_file(FILES[task]), task)})
    r = _zero(mode.grade(course, sub, tasks=[task]), task)
    assert all("wrong (rel. error 1)" in c.reason for c in r.checks), [c.reason for c in r.checks]


# --- tampering from inside the process -------------------------------------------------------


def test_forged_messages_score_nothing(course, mode, tmp_path):
    sub = submission(course, tmp_path, gelu_backward=A.forge_messages(course.student_file(GELU)))
    _zero(mode.grade(course, sub, tasks=["gelu_backward"]), "gelu_backward")


def test_a_huge_message_is_refused(course, mode, tmp_path):
    sub = submission(course, tmp_path, gelu_backward=A.huge_message(course.student_file(GELU)))
    r = _zero(mode.grade(course, sub, tasks=["gelu_backward"]), "gelu_backward")
    assert "cannot read" in r.line, r.line


def test_killing_everything_costs_only_the_task(course, mode, tmp_path):
    mode.need("signals")
    sub = submission(course, tmp_path, gelu_backward=A.kill_everything(course.student_file(GELU)),
                     ffn_backward=reference_file("ffn_backward"))  # fmt: skip
    res = mode.grade(course, sub, tasks=["gelu_backward", "ffn_backward"], jobs=2)
    _zero(res, "gelu_backward")
    assert res["ffn_backward"].score == 10.0, res["ffn_backward"].line


@pytest.mark.parametrize("attack", [A.fork_bomb, A.memory_bomb, A.exits, A.fake_passed_output])
def test_bombs_exits_and_noise_score_nothing_and_grading_goes_on(course, mode, tmp_path, attack):
    sub = submission(course, tmp_path, gelu_backward=attack(course.student_file(GELU)),
                     layernorm_backward=reference_file("layernorm_backward"))  # fmt: skip
    res = mode.grade(course, sub, tasks=["gelu_backward", "layernorm_backward"], jobs=2)
    _zero(res, "gelu_backward")
    assert res["layernorm_backward"].score == 10.0, res["layernorm_backward"].line


def test_a_hang_at_import_is_killed_at_the_time_limit(course, mode, tmp_path):
    sub = submission(course, tmp_path, gelu_backward=A.hang_at_import(course.student_file(GELU)))
    t0 = time.monotonic()
    r = _zero(mode.grade(course, sub, tasks=["gelu_backward"], timeout=6), "gelu_backward")
    assert r.status == "timeout" and "killed after 6 s" in r.line, r.line
    assert time.monotonic() - t0 < 30


def _digest(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_the_instructors_files_and_grade_files_cannot_be_written(course, mode, tmp_path):
    """A submission that edits the instructor's tests/conftest.py, the checks, another task's
    solution and the grade files: nothing changes, for it or for the next, untouched student."""
    mode.need("writes")
    grade_file = tmp_path / "grades" / "alice.json"
    grade_file.parent.mkdir()
    grade_file.write_text("{}")
    protected = [course.root / "tests/conftest.py", course.root / "twins_np/course/checks.py",
                 course.root / "twins_np/functional/activation.py", course.base / "manifest.json", grade_file]  # fmt: skip
    before = _digest(protected)
    full = '{"score": 14.0, "tests": []}'
    targets = {str(p): (full if p.suffix == ".json" else "def pytest_collection_modifyitems(items):\n    items.clear()\n")
               for p in protected}  # fmt: skip
    sub = submission(course, tmp_path / "a", gelu_backward=A.write_files(course.student_file(GELU), targets))
    r = _zero(mode.grade(course, sub, tasks=["gelu_backward"]), "gelu_backward")
    assert "wrote 0 files" in r.line, r.line
    assert _digest(protected) == before
    untouched = mode.grade(course, submission(course, tmp_path / "b"))
    assert all(r.score == 0.0 for r in untouched.values()), {t: r.line for t, r in untouched.items()}


def test_no_process_outlives_grading(course, mode, tmp_path):
    """Children in new sessions (plain and double-forked) that would rewrite the grade file
    later are gone when grading returns, and the file stays as the grader wrote it."""
    token = f"twins-np-survivor-{time.time_ns()}"
    shared = pathlib.Path(tempfile.mkdtemp(prefix="twins-np-test-"))  # a folder every user may enter
    shared.chmod(0o777)
    grade_file = shared / "grade.json"
    grade_file.write_text("graded")
    grade_file.chmod(0o666)  # and a file every user may write: only the reaper keeps it as it is
    text = A.survivor(course.student_file(GELU), token, str(grade_file), "full marks")
    r = _zero(mode.grade(course, submission(course, tmp_path, gelu_backward=text), tasks=["gelu_backward"]), "gelu_backward")
    assert processes_with(token) == [], "a process started by the submission survived grading"
    assert any("were still running and were killed" in n for n in r.notes), r.notes
    time.sleep(4)  # past the survivors' delay
    assert grade_file.read_text() == "graded" and processes_with(token) == []
    shutil.rmtree(shared)


# --- leaks through feedback ------------------------------------------------------------------


def test_feedback_never_shows_the_solution(course, mode, tmp_path):
    solution = reference_file("gelu_backward").split("# BEGIN SOLUTION gelu_backward\n")[1].split("# END SOLUTION")[0]
    sub = submission(course, tmp_path, gelu_backward=A.leak_in_message(course.student_file(GELU), solution))
    r = _zero(mode.grade(course, sub, tasks=["gelu_backward"]), "gelu_backward")
    shown = " ".join([r.line, *(c.reason for c in r.checks), *r.notes])
    assert "withheld" in shown
    for line in solution.splitlines():
        if len(line.strip()) > 12:
            assert line.strip() not in shown, line


def test_every_file_of_the_submission_but_the_tasks_is_ignored(course, mode, tmp_path):
    """A submission's tests, conftest, pytest.ini and copy of the course package are never read."""
    sub = submission(course, tmp_path, ffn_backward=reference_file("ffn_backward"))
    hostile = {"pytest.ini": "[pytest]\naddopts = -k nothing\n", "conftest.py": "raise SystemExit(0)\n",
               "tests/conftest.py": "def pytest_collection_modifyitems(items):\n    items.clear()\n",
               "twins_np/course/checks.py": "CASES = {}\n", "twins_np/course/grader.py": "",
               "twins_np/functional/linear.py": "def linear_backward(*a):\n    return 0, 0, 0\n"}  # fmt: skip
    for rel, text in hostile.items():
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        (sub / rel).write_text(text)
    res = mode.grade(course, sub, tasks=["ffn_backward", "layernorm_backward"])
    assert res["ffn_backward"].score == 10.0 and res["layernorm_backward"].score == 0.0


def test_reference_files_are_complete_for_each_task():
    for task, rel in FILES.items():
        assert f"# BEGIN SOLUTION {task}" in (ROOT / rel).read_text()
    assert pathlib.Path(A.__file__).parent == pathlib.Path(__file__).parent


def test_a_worker_that_stops_reading_cannot_block_the_grader(course, mode, tmp_path):
    sub = submission(course, tmp_path, layernorm_backward=A.stop_reading(course.student_file(LN)))
    t0 = time.monotonic()
    r = _zero(mode.grade(course, sub, tasks=["layernorm_backward"], timeout=6), "layernorm_backward")
    assert r.status == "timeout" and "killed after 6 s" in r.line, r.line
    assert time.monotonic() - t0 < 30
