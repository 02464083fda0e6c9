"""The Gradescope autograder end to end, in a folder laid out like ``/autograder``.

``run_autograder`` runs as this process's user (root on Gradescope: then the workers run as
users of their own), with and without namespaces (Gradescope's containers may not allow
them), on honest submissions and on attacks that go for the grade file.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import zipfile

import course_attacks as A
import pytest
from course_helpers import GELU, LN, MLP, ROOT, processes_with

from twins_np.course import runner
from twins_np.course.autograder import write_autograder


def _check_results_json(data):
    assert set(data) >= {"score", "execution_time", "output", "tests"}
    assert isinstance(data["score"], float) and isinstance(data["execution_time"], (int, float))
    for t in data["tests"]:
        assert set(t) >= {"name", "score", "max_score", "status", "output", "visibility"}
        assert t["status"] in ("passed", "failed") and 0 <= t["score"] <= t["max_score"]
        assert t["visibility"] in ("visible", "hidden", "after_due_date", "after_published")


@pytest.fixture(scope="module")
def autograder(course, tmp_path_factory):
    zpath = tmp_path_factory.mktemp("zip") / "autograder.zip"
    names = write_autograder(zpath, course.base / "manifest.json", timeout=300, root=ROOT)
    assert {"setup.sh", "run_autograder", "requirements.txt", "manifest.json", GELU} <= set(names)
    assert not any(n.startswith("tests/") for n in names)  # grading runs no test of the project
    reqs = zipfile.ZipFile(zpath).read("requirements.txt").decode()
    assert "numpy" in reqs and not any(w in reqs for w in ("torch", "pytest"))
    return zpath


@pytest.fixture(params=["namespaces", "plain"])
def gradescope(request, autograder, tmp_path):
    """A fresh /autograder for one submission: run(files) unpacks, grades, returns results.json."""
    if request.param == "namespaces" and not runner.sandbox(True).namespaces:
        pytest.skip("namespaces are not available here")
    gs = tmp_path / "autograder"
    with zipfile.ZipFile(autograder) as z:
        z.extractall(gs / "source")
    (gs / "source" / "run_autograder").chmod(0o755)
    env = dict(os.environ, TWINS_NP_AUTOGRADER_ROOT=str(gs), TWINS_NP_PYTHON=sys.executable,
               TWINS_NP_NAMESPACES="1" if request.param == "namespaces" else "0")  # fmt: skip
    env.pop("PYTHONPATH", None)  # the grader runs from the unpacked source alone

    def run(files: dict[str, str], before=None) -> dict:
        shutil.rmtree(gs / "submission", ignore_errors=True)
        shutil.rmtree(gs / "results", ignore_errors=True)
        (gs / "submission").mkdir(parents=True)
        for rel, text in files.items():  # Gradescope's loose uploads: the files at the top
            (gs / "submission" / pathlib.Path(rel).name).write_text(text)
        if before:
            before(gs)
        r = subprocess.run(["bash", str(gs / "source" / "run_autograder")], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        data = json.loads((gs / "results" / "results.json").read_text())
        _check_results_json(data)
        return data

    run.root = gs  # type: ignore[attr-defined]
    run.mode = request.param  # type: ignore[attr-defined]
    return run


def test_honest_submissions(gradescope, course):
    stub = course.student_file
    good = gradescope({GELU: (ROOT / GELU).read_text(), MLP: (ROOT / MLP).read_text(), LN: (ROOT / LN).read_text()})
    assert good["score"] == 24.0, good["output"]
    assert all(t["status"] == "passed" for t in good["tests"] if not t["name"].startswith("group_norm_backward"))
    norm = [t for t in good["tests"] if t["name"].startswith("group_norm_backward")]
    assert norm and "not handed in" in norm[0]["output"] and norm[0]["score"] == 0.0
    # gelu's float32 check is hidden: an entry of its own that names no check
    hidden = [t for t in good["tests"] if t["name"].endswith("(hidden checks)")]
    assert len(hidden) == 1 and hidden[0]["visibility"] == "after_published" and "float32" not in hidden[0]["output"]
    untouched = gradescope({GELU: stub(GELU), MLP: stub(MLP)})
    assert untouched["score"] == 0.0 and "stub not implemented" in untouched["output"]
    syntax = gradescope({GELU: stub(GELU) + "\ndef broken(:\n", MLP: (ROOT / MLP).read_text()})
    assert syntax["score"] == 10.0 and "SyntaxError" in syntax["output"]
    empty = gradescope({"notes.txt": "nothing"})
    assert empty["score"] == 0.0 and "not a submission" in empty["output"]


def test_a_results_file_not_written_by_the_autograder_never_stays(gradescope, course):
    """One planted before grading, one written by the submission (its real path known), one
    written later by a process the submission left behind: the grader's own stays."""

    def plant(gs):
        (gs / "results").mkdir(exist_ok=True)
        (gs / "results" / "results.json").write_text('{"score": 100.0, "tests": []}')

    results = str(gradescope.root / "results" / "results.json")
    full = json.dumps({"score": 100.0, "execution_time": 1, "output": "", "tests": []})
    token = f"twins-np-gradescope-survivor-{time.time_ns()}"
    attack = A.survivor(A.write_files(course.student_file(GELU), {results: full}), token, results, full)
    attack = A.kill_everything(attack)
    data = gradescope({GELU: attack, MLP: (ROOT / MLP).read_text()}, before=plant)
    assert data["score"] == 10.0, data["output"]
    assert processes_with(token) == []
    time.sleep(4)  # past the survivors' delay
    assert json.loads(pathlib.Path(results).read_text())["score"] == 10.0


def test_the_instructors_source_is_out_of_reach(gradescope, course):
    """As root the source folder becomes root's only; a submission that knows its path finds no
    solution there and cannot change it for the next student."""
    if os.geteuid() != 0:
        pytest.skip("Gradescope runs the autograder as root; as a user the workers can read the source")
    src = gradescope.root / "source"
    known = [str(src), str(src / "twins_np")]
    attack = A.reference_on_disk(course.student_file(LN), "layernorm_backward", known, wide=False)
    target = str(src / "twins_np/course/checks.py")
    attack = A.write_files(attack.replace("def layernorm_backward", "def _unused"), {target: "CASES = {}\n"}) + (
        A.reference_on_disk("", "layernorm_backward", known, wide=False))  # fmt: skip
    before = (src / "twins_np/course/checks.py").read_bytes()
    data = gradescope({LN: attack})
    assert data["score"] == 0.0, data["output"]
    assert (src / "twins_np/course/checks.py").read_bytes() == before
    assert oct(src.stat().st_mode & 0o777) == "0o700"
    after = gradescope({LN: course.student_file(LN)})
    assert after["score"] == 0.0 and "stub not implemented" in after["output"]


def _per_task(data: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in data["tests"]:
        task = t["name"].split(":")[0]
        out[task] = out.get(task, 0.0) + t["score"]
    return out


def test_every_attack_class_gets_the_fair_score_on_gradescope(gradescope, course):
    """Through run_autograder, as root, each class of attack on some task: values never
    checked, finite differences, another task's solution, a solution on disk (the source's
    real path known), a leak through the message, autodiff, forged messages, a dependency
    asked for other inputs, bombs. Each task gets what it deserves."""
    stub = course.student_file
    src = str(gradescope.root / "source")
    solution = (ROOT / GELU).read_text().split("# BEGIN SOLUTION gelu_backward\n")[1].split("# END SOLUTION")[0]
    autodiff = A.gelu_torch_autograd(stub(GELU)) if gradescope.mode == "namespaces" or not _has_torch() else None
    runs = [
        ({GELU: A.zeros(stub(GELU), "gelu_backward"), MLP: A.ffn_finite_differences(stub(MLP)),
          LN: A.layernorm_as_group_norm(stub(LN))}, {"gelu_backward": 0.0, "ffn_backward": 0.0, "layernorm_backward": 0.0}),
        ({GELU: A.leak_in_message(stub(GELU), solution), LN: A.layernorm_colored_differences(stub(LN)),
          MLP: A.reference_on_disk(stub(MLP), "ffn_backward", [src, src + "/twins_np"], wide=False)},
         {"gelu_backward": 0.0, "ffn_backward": 0.0, "layernorm_backward": 0.0}),
        ({GELU: autodiff or A.forge_messages(stub(GELU)), MLP: A.ffn_asks_gelu_for_other_inputs(stub(MLP)),
          LN: A.layernorm_as_batch_norm(stub(LN))}, {"gelu_backward": 0.0, "ffn_backward": 4.0, "layernorm_backward": 0.0}),
        ({GELU: A.fork_bomb(stub(GELU)), MLP: (ROOT / MLP).read_text(), LN: (ROOT / LN).read_text()},
         {"gelu_backward": 0.0, "ffn_backward": 10.0, "layernorm_backward": 10.0}),
    ]  # fmt: skip
    for i, (files, expected) in enumerate(runs):
        data = gradescope(files)
        got = _per_task(data)
        assert {t: round(got[t], 4) for t in expected} == expected, data["output"]
        shown = json.dumps(data)
        assert not any(line.strip() in shown for line in solution.splitlines() if len(line.strip()) > 12)
        if i == 1:  # the leak: its message is withheld
            assert "message withheld: it quotes the reference solution" in shown


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _python_older_than_3_11():
    for version in ("3.10", "3.9"):
        pyenv = sorted(pathlib.Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
        for cand in (shutil.which(f"python{version}"), *pyenv):
            if cand and subprocess.run([str(cand), "-m", "pip", "--version"], capture_output=True).returncode == 0:
                return str(cand)
    return None


def test_setup_stops_on_a_python_older_than_3_11(tmp_path):
    """Gradescope's Ubuntu 22.04 image has Python 3.10: setup.sh stops there in one line that names
    the image to choose, before pip tries pins that Python cannot install."""
    from twins_np.course.autograder import SETUP_SH

    old = _python_older_than_3_11()
    if old is None:
        pytest.skip("no Python older than 3.11 with pip on this machine")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(old)
    (tmp_path / "setup.sh").write_text(SETUP_SH)
    (tmp_path / "requirements.txt").write_text("numpy==2.4.6\n")
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", str(tmp_path / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    said = r"twins-np needs Python 3\.11 or newer, this image has Python 3\.(9|10)\.\d+: choose the Ubuntu 24\.04 base image"
    assert re.fullmatch(said, line), line
