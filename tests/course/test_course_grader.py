"""The grader, tested as an instructor's worries: is it fair, does it explain itself, does the CLI say so.

The assignment is the session's (``conftest.py``); the attacks are in ``test_course_attacks.py``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from course_helpers import GELU, LN, MLP, NORM2D, ROOT, TASKS, submission

from twins_np.course import checks, grader
from twins_np.course.build import build
from twins_np.course.manifest import GradingError, load_manifest

CLI = [sys.executable, "-m", "twins_np", "assignment"]
WRONG_GELU = "pdf = xp.exp(-0.5 * x * x) * _INV_SQRT_2PI\nreturn dout * (cdf - x * pdf)  # sign error"
HANG = "import time\nwhile True:  # endless, but idle: the test machine's cores stay free\n    time.sleep(0.5)"


def _replace_stub(text: str, body: str, which: int = 0) -> str:
    """The student's file with its ``which``-th ``raise NotImplementedError`` replaced by ``body``."""
    lines = text.splitlines(keepends=True)
    i = [k for k, ln in enumerate(lines) if "raise NotImplementedError(" in ln][which]
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = "".join(indent + b + "\n" for b in body.splitlines())
    return "".join(lines)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _by_task(results):
    return {r.task: r for r in results}


def test_the_manifest_lists_checks_that_compare_values(course):
    spec = course.manifest["tasks"]
    assert list(spec) == sorted(TASKS)
    assert spec["gelu_backward"]["points"] == 4 and spec["ffn_backward"]["points"] == 10  # the config's, over course.toml's 3
    for task in TASKS:
        names = list(spec[task]["checks"])
        assert sorted(names) == sorted(checks.check_names(task)) and len(names) >= 3
        assert any("float32" in n for n in names) and any("float64" in n for n in names)
    assert {n for n, v in spec["gelu_backward"]["checks"].items() if v == "hidden"} == {"float32: dx"}
    # the worker's library has no solution at all, of any task, assigned or not
    assert not any("BEGIN SOLUTION" in t for t in course.manifest["library"].values())
    assert "raise NotImplementedError('adamw_step" in course.manifest["library"]["twins_np/optim.py"]


def test_an_untouched_copy_scores_zero_and_says_why(course, tmp_path):
    res = grader.grade(submission(course, tmp_path), course.manifest, root=course.root)
    assert [r.score for r in res] == [0.0] * len(TASKS)
    for r in res:
        assert r.line == f"0.00 / {r.points:g}  stub not implemented", r.line
        assert all(c.reason == "stub not implemented" for c in r.checks)


def test_the_reference_scores_full_marks(course, tmp_path):
    files = {t: (ROOT / rel).read_text() for t, rel in {"gelu_backward": GELU, "ffn_backward": MLP,
             "layernorm_backward": LN, "group_norm_backward": NORM2D}.items()}  # fmt: skip
    res = grader.grade(submission(course, tmp_path, **files), course.manifest, root=course.root)
    assert all(r.score == r.points and r.status == "ok" and r.line.endswith("checks passed") for r in res), [r.line for r in res]
    assert all(r.review == [] for r in res), [r.review for r in res]


def test_a_one_term_bug_scores_partial_credit(course, tmp_path):
    """LayerNorm's dx without the path through the variance: dx fails, dgamma and dbeta pass."""
    text = (ROOT / LN).read_text()
    assert text.count("        xp.multiply(xh, _row_means_of_product(g, xh), out=out)\n") == 1
    text = text.replace("        xp.multiply(xh, _row_means_of_product(g, xh), out=out)\n", "        out[...] = 0.0\n")
    r = _by_task(grader.grade(submission(course, tmp_path, layernorm_backward=text), course.manifest, root=course.root,
                              tasks=["layernorm_backward"]))["layernorm_backward"]  # fmt: skip
    assert r.passed == 6 and r.total == 9 and r.score == pytest.approx(10 * 6 / 9), r.line
    # the line names the first failing check: the gradient for x, with its relative error
    assert re.search(r"6\.67 / 10  float64, \(B, N, C\) input: dx: gradient for x wrong \(rel\. error \d", r.line), r.line
    assert all(c.name.endswith(": dx") for c in r.failed) and all("inputs x (" in c.reason for c in r.failed)


def test_tasks_are_independent(course, tmp_path):
    """A correct FFN scores full marks beside a GELU with a sign error, which scores less."""
    sub = submission(course, tmp_path, gelu_backward=_replace_stub(course.student_file(GELU), WRONG_GELU),
                     ffn_backward=(ROOT / MLP).read_text())  # fmt: skip
    res = _by_task(grader.grade(sub, course.manifest, root=course.root, tasks=["gelu_backward", "ffn_backward"]))
    assert res["ffn_backward"].score == res["ffn_backward"].points == 10
    assert res["gelu_backward"].score == 0.0 and "gradient for x wrong" in res["gelu_backward"].line
    assert all("\n" not in c.reason and c.reason for c in res["gelu_backward"].failed)


def test_a_skip_and_a_wrong_dtype_fail(course, tmp_path):
    skip = _replace_stub(course.student_file(GELU), "import pytest\npytest.skip('later')")
    upcast = _replace_stub(course.student_file(LN), "C = xhat.shape[-1]\n"
                           "dout2, xhat2 = dout.reshape(-1, C), xhat.reshape(-1, C)\n"
                           "dgamma = (dout2 * xhat2).sum(axis=0).astype('float64')\ndbeta = dout2.sum(axis=0)\n"
                           "g = dout2 * gamma\n"
                           "dx = inv_std.reshape(-1, 1) * (g - _row_means(g) - xhat2 * _row_means_of_product(g, xhat2))\n"
                           "return dx.reshape(dout.shape), dgamma, dbeta")  # fmt: skip
    sub = submission(course, tmp_path, gelu_backward=skip, layernorm_backward=upcast)
    res = _by_task(grader.grade(sub, course.manifest, root=course.root, tasks=["gelu_backward", "layernorm_backward"]))
    assert res["gelu_backward"].score == 0.0 and "Skipped: later" in res["gelu_backward"].line, res["gelu_backward"].line
    ln = res["layernorm_backward"]
    bad = {c.name for c in ln.failed}
    assert bad == {"float32: dgamma"}, [(c.name, c.reason) for c in ln.failed]
    assert "dgamma is float64, expected float32" in ln.failed[0].reason


def test_hidden_checks_are_counted_but_never_named(course, tmp_path):
    sub = submission(course, tmp_path, gelu_backward=_replace_stub(course.student_file(GELU), WRONG_GELU))
    r = _by_task(grader.grade(sub, course.manifest, root=course.root, tasks=["gelu_backward"]))["gelu_backward"]
    hidden = [c for c in r.checks if c.visibility == "hidden"]
    assert [c.name for c in hidden] == ["float32: dx"] and not hidden[0].passed
    assert "float32" not in r.line


def test_the_seed_decides_the_inputs(course, tmp_path):
    """The same seed gives the same inputs (a run can be repeated); another seed other shapes."""
    sub = submission(course, tmp_path, layernorm_backward=_replace_stub(course.student_file(LN), "return dout, dout, dout"))

    def shapes(seed):
        r = grader.grade(sub, course.manifest, root=course.root, tasks=["layernorm_backward"], seed=seed)[0]
        return [c.reason.split("inputs ")[-1] for c in r.checks]

    assert shapes(1) == shapes(1) and shapes(1) != shapes(2)
    assert all("x (" in s for s in shapes(1))


def test_the_cli_reports_one_line_per_task_then_details(course, tmp_path):
    sub = submission(course, tmp_path, gelu_backward=_replace_stub(course.student_file(GELU), "return dout *"),
                     ffn_backward=(ROOT / MLP).read_text(),
                     layernorm_backward=_replace_stub(course.student_file(LN), "return dout, dout, dout"))  # fmt: skip
    out = tmp_path / "grade.json"
    cmd = [*CLI, "grade", str(sub), "--manifest", str(course.base / "manifest.json"), "--json", str(out)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr  # a syntax error: graded, with an error
    assert "FAILED" not in r.stdout and "(--verbose: the failed checks" in r.stdout  # the details only when asked
    assert re.search(r"^written +\d+ questions for \d+ points, graded by hand \(answers/a1_layers\.md", r.stdout, re.M), r.stdout
    r = subprocess.run([*cmd, "--verbose"], env=_env(), capture_output=True, text=True, timeout=300)
    lines = r.stdout.splitlines()
    first = {ln.split()[0]: ln for ln in lines[: len(TASKS)]}
    assert set(first) == set(TASKS) and lines[len(TASKS)].startswith("total")
    syntax = r"gelu_backward +0\.00 / 4 +does not import: SyntaxError: .*\(activation\.py, line \d+\)"
    assert re.search(syntax, first["gelu_backward"])
    assert "10.00 / 10  all 10 checks passed" in first["ffn_backward"]
    wrong = r"layernorm_backward +0\.00 / 10  float64, \(B, N, C\) input: dx: gradient for x wrong"
    assert re.match(wrong, first["layernorm_backward"])
    assert "FAILED float64, (B, N, C) input: dgamma: dgamma has shape" in r.stdout
    assert "sandbox: worker" in r.stdout
    data = json.loads(out.read_text())
    assert data["tasks"]["ffn_backward"]["score"] == 10.0 and data["errors"][0].startswith("gelu_backward: does not import")
    # the written questions of A1 (gelu, ffn, layernorm) and A3 (group norm), counted apart from the score
    assert data["manual"]["points"] == 14 and [q["id"] for q in data["manual"]["questions"]] == ["A1.1", "A1.2", "A1.3", "A3.1",
                                                                                                  "A3.2"]  # fmt: skip


def test_a_hang_is_reported_with_a_non_zero_exit(course, tmp_path):
    sub = submission(course, tmp_path, gelu_backward=_replace_stub(course.student_file(GELU), HANG))
    r = subprocess.run([*CLI, "grade", "--manifest", str(course.base / "manifest.json"), "--timeout", "8", str(sub),
                        "--tasks", "gelu_backward"], env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"gelu_backward +0\.00 / 4  killed after 8 s", r.stdout), r.stdout


def test_not_a_submission_exits_2_with_one_line(course, tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        r = subprocess.run([*CLI, "grade", "--manifest", str(course.base / "manifest.json"), str(target)], env=_env(),
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 2 and "not a submission" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([*CLI, "grade", "--manifest", str(tmp_path / "nope.json"), str(tmp_path / "empty")], env=_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "cannot read the grading manifest" in r.stderr


def test_file_system_faults_end_cleanly(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cmd = [*CLI, "build", "--manifest", str(tmp_path / "m.json")]
    r = subprocess.run([*cmd, str(tmp_path / "a_file" / "copy"), "--tasks", "gelu_backward"], env=_env(), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr, r.stderr
    r = subprocess.run([*cmd, str(tmp_path / "a_file"), "--tasks", "gelu_backward"], env=_env(), capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 2 and "not an empty folder" in r.stderr, r.stderr


@pytest.mark.slow
def test_student_status_and_submit(tmp_path):
    """In a copy whose student tests were frozen: status runs them on the student's code, submit
    zips exactly the files to hand in, and the zip grades."""
    base = tmp_path / "course"
    build(base / "student", root=ROOT, tasks=["gelu_backward", "ffn_backward"], manifest=base / "m.json", selfcheck=False)
    info = json.loads((base / "student" / "assignment.json").read_text())
    assert info["tasks"]["gelu_backward"]["tests"] and info["tasks"]["ffn_backward"]["checks"]
    copy = tmp_path / "copy"
    shutil.copytree(base / "student", copy)
    (copy / GELU).write_text((ROOT / GELU).read_text())  # gelu done, ffn not
    r = subprocess.run([*CLI, "status", str(copy)], env=_env(), capture_output=True, text=True, timeout=300)
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()}
    assert r.returncode == 1 and rows["gelu_backward"][1] == "done" and rows["ffn_backward"][1] == "todo", r.stdout + r.stderr
    assert rows["ffn_backward"][2].startswith("0/") and "FAILED" not in r.stdout and "1 of 2 tasks done" in r.stdout
    r = subprocess.run([*CLI, "status", str(copy), "--verbose"], env=_env(), capture_output=True, text=True, timeout=300)
    assert "ffn_backward:\n    FAILED tests/" in r.stdout and "NotImplementedError: ffn_backward" in r.stdout, r.stdout
    r = subprocess.run([*CLI, "submit", str(copy)], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(zipfile.ZipFile(copy / "submission.zip").namelist()) == ["answers/a1_layers.md", GELU, MLP]
    res = _by_task(grader.grade(copy / "submission.zip", load_manifest(base / "m.json")))
    assert res["gelu_backward"].score == 4.0 and res["ffn_backward"].score == 0.0
    (copy / MLP).unlink()
    r = subprocess.run([*CLI, "submit", str(copy)], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "mlp.py missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_the_dense_head_tasks_build_self_check_and_grade(tmp_path):
    """group_norm_backward and bilinear_resize_backward, built with the self-check (the
    reference scores full marks, the untouched copy 0); without the variance path, GroupNorm
    scores only part."""
    tasks = ["group_norm_backward", "bilinear_resize_backward"]
    resize = "twins_np/functional/resize.py"
    build(tmp_path / "student", root=ROOT, tasks=tasks, manifest=tmp_path / "m.json", freeze=False, selfcheck=True)
    manifest = load_manifest(tmp_path / "m.json")
    ref = tmp_path / "ref"
    (ref / "twins_np/functional").mkdir(parents=True)
    text = (ROOT / NORM2D).read_text()
    assert text.count("    dx -= xhat * m2\n") == 1
    (ref / NORM2D).write_text(text.replace("    dx -= xhat * m2\n", ""))  # the path through var forgotten
    shutil.copyfile(ROOT / resize, ref / resize)
    res = _by_task(grader.grade(ref, manifest))
    gn = res["group_norm_backward"]
    assert 0.0 < gn.score < gn.points and res["bilinear_resize_backward"].score == res["bilinear_resize_backward"].points, gn.line
    assert {c.name.rsplit(": ", 1)[1] for c in gn.failed} == {"dx"}


def test_a_broken_reference_fails_the_self_check(tmp_path):
    """build refuses an assignment whose reference solution cannot be checked (it gives zeros:
    every check must compare values that zeros would not pass)."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "twins_np", root / "twins_np", ignore=shutil.ignore_patterns("__pycache__"))
    resize = root / "twins_np/functional/resize.py"
    resize.write_text(resize.read_text().replace("    return dx\n    # END SOLUTION", "    return 0 * dx\n    # END SOLUTION"))
    with pytest.raises(GradingError, match="self-check failed: .*bilinear_resize_backward.*zeros"):
        build(tmp_path / "student", root=root, tasks=["bilinear_resize_backward"], manifest=tmp_path / "m.json",
              freeze=False)  # fmt: skip


def test_the_review_flags_only_what_the_stub_does_not_do(course):
    spec = course.manifest["tasks"]["layernorm_backward"]
    stub = spec["stubs"][LN]
    flagged = grader.review({LN: stub + "\nimport os\nexec('1')\nfrom twins_np import gradcheck\n"
                                        "def f():\n    return group_norm_backward\n"}, spec["stubs"], spec)  # fmt: skip
    assert len(flagged) == 4 and all(f.startswith("layernorm.py, line ") for f in flagged), flagged
    assert grader.review({LN: stub}, spec["stubs"], spec) == []
    assert ast.parse(stub)  # the stub itself parses


def test_scrub_cuts_and_withholds():
    secret = "dx = inv_std * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))"
    hashes = grader.shingles(secret)
    assert grader.scrub("ValueError: " + secret, hashes).startswith("(message withheld")
    message = "shapes (2, 3) and (4,) do not match"
    assert grader.scrub(message + "\nsecond line", hashes) == message + " second line"
    assert len(grader.scrub("x" * 1000)) == grader.MESSAGE_WIDTH


def test_reference_and_worker_agree_on_the_call(course):
    """The wire format round-trips the library's caches (NamedTuples, nested, None, tuples)."""
    from twins_np.course import reference, wire

    header, arrays = reference.reference_packet("ffn_backward", 3, [])
    case = header["cases"][0]
    args = wire.decode(case["call"]["args"], arrays, reference._resolve)
    assert type(args[1]).__name__ == "MlpCache" and type(args[1].act).__name__ == "GeluCache"
    out: list = []
    again = wire.decode(wire.encode(args, out), out, reference._resolve)
    assert type(again[1]) is type(args[1]) and (again[1].act.x == args[1].act.x).all()
    assert again[1].act.x.dtype == args[1].act.x.dtype
