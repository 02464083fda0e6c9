"""The worker's sandbox as a submission sees it, in each mode; and what the grader does when
the sandbox itself is attacked."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from course_helpers import GELU, ROOT, submission

from twins_np.course import runner

PROBE = '''

def gelu_backward(dout, cache):
    import json, os, socket
    seen = {"uid": os.getuid(), "pid": os.getpid(), "processes": len([p for p in os.listdir("/proc") if p.isdigit()]),
            "cwd": os.getcwd(), "root_listing": sorted(os.listdir("/"))}
    # the project folder: absent, or (when the grader's Python lives in it, as .venv) only that
    seen["project"] = sorted(os.listdir(PROJECT)) if os.path.isdir(PROJECT) else os.path.exists(PROJECT)
    seen["home"] = os.path.exists("/root")
    try:
        socket.create_connection(("127.0.0.1", 22), timeout=1)
        seen["network"] = "connected"
    except OSError as e:
        seen["network"] = type(e).__name__ + ": " + str(e.errno)
    try:
        open("/etc/twins-np-probe", "w").write("x")
        seen["write_etc"] = True
    except OSError:
        seen["write_etc"] = False
    try:
        open("scratch.txt", "w").write("x")
        seen["write_cwd"] = True
    except OSError:
        seen["write_cwd"] = False
    raise RuntimeError("PROBE" + json.dumps(seen))
'''


def test_the_worker_runs_as_another_user_in_its_own_folder(course, mode, tmp_path):
    """Read back through the feedback: the probe's message is cut to one line, so the test asks
    one question at a time through the message's first characters."""
    text = course.student_file(GELU) + '''

def gelu_backward(dout, cache):
    import os
    raise RuntimeError(f"uid={os.getuid()} cwd_empty={os.listdir('.') == []} cwd={os.getcwd()}")
'''
    r = mode.grade(course, submission(course, tmp_path, gelu_backward=text), tasks=["gelu_backward"])["gelu_backward"]
    reason = r.checks[0].reason
    uid = int(reason.split("uid=")[1].split()[0])
    if mode.root and not mode.namespaces:
        assert runner.UID_RANGE[0] <= uid <= runner.UID_RANGE[1], reason
    elif mode.root:
        assert uid >= runner.UID_RANGE[0] and uid != 0, reason
    assert "cwd_empty=True" in reason and reason.split("cwd=")[1].split(" ")[0].endswith("/work"), reason


def test_with_namespaces_the_worker_sees_only_what_it_needs(course, tmp_path):
    box = runner.sandbox(True)
    if not box.namespaces:
        pytest.skip(f"namespaces are not available here: {box.why}")
    from course_helpers import Mode

    mode = Mode("namespaces", os.geteuid() == 0, True)
    found = _probe_each(course, tmp_path, mode)
    assert found["processes"] <= 3, found  # itself, and at most a child: not the grader's processes
    # the project is not in its view: at most the Python environment inside it (make's .venv), bound
    # for the worker's interpreter, with none of the project's files beside it
    bound = [pathlib.Path(b) for b in runner.binds(box.python, tmp_path)]
    inside = sorted({b.relative_to(ROOT).parts[0] for b in bound if ROOT in b.parents})
    assert set(inside) <= {".venv", "venv", ".env", "env"}, inside  # a Python environment, never sources
    assert found["project"] is False or found["project"] == inside, found
    assert found["home"] is False, found
    assert set(found["root_listing"]) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp",
                                          "usr", *{p.split("/")[1] for p in runner.binds(box.python, ROOT)}}, found  # fmt: skip
    assert found["network"].startswith("OSError") or "Error" in found["network"], found
    assert found["write_etc"] is False and found["write_cwd"] is True, found


def _probe_each(course, tmp_path, mode) -> dict:
    """The probe's findings, one per grading run: feedback messages are one short line each."""
    text = course.student_file(GELU) + f"\nPROJECT = {str(ROOT)!r}\n" + PROBE
    out = {}
    for key in ("processes", "project", "home", "root_listing", "network", "write_etc", "write_cwd"):
        one = text.replace("json.dumps(seen)", f"json.dumps(seen[{key!r}])")
        r = mode.grade(course, submission(course, tmp_path / key, gelu_backward=one), tasks=["gelu_backward"])["gelu_backward"]
        reason = r.checks[0].reason
        body = reason.split("PROBE", 1)[1].rsplit(" (activation.py", 1)[0]
        out[key] = json.loads(body) if not body.endswith("...") else body
    return out


def test_a_worker_that_kills_its_warden_scores_nothing(course, tmp_path, monkeypatch):
    """Without another user and namespaces, a worker can kill the warden above it (here made
    possible on purpose: the worker runs as the grader's own user). The grader notices and
    gives the task no points."""
    from course_helpers import Mode

    if os.geteuid() == 0:
        monkeypatch.setenv("TWINS_NP_WORKER_USER", "root")
    text = course.student_file(GELU) + '''

def gelu_backward(dout, cache):
    import os, signal
    os.kill(os.getppid(), signal.SIGKILL)
    return dout
'''
    mode = Mode("plain", os.geteuid() == 0, False)
    r = mode.grade(course, submission(course, tmp_path, gelu_backward=text), tasks=["gelu_backward"])["gelu_backward"]
    assert r.score == 0.0 and r.status == "sandbox" and "interfered" in r.line, r.line


def test_the_sandbox_says_what_it_does():
    box = runner.sandbox()
    text = box.describe()
    assert ("namespaces (no network" in text) == box.namespaces
    assert ("a user id of its own" in text or "as " in text) and box.python


def test_hidden_paths_split_around_what_the_worker_needs(tmp_path):
    project = tmp_path / "project"
    for rel in ("twins_np/__init__.py", "tests/x.py", ".venv/bin/python", ".venv/lib/site/numpy/__init__.py"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("")
    hide = runner.hidden_paths([project], [str(tmp_path)], [project / ".venv/lib/site", project / ".venv/bin/python"])
    assert str(project / "twins_np") in hide and str(project / "tests") in hide
    assert not any(h == str(project) or h.startswith(str(project / ".venv/lib/site")) for h in hide), hide
    assert str(project / ".venv/bin/python") not in hide


def test_a_worker_that_cannot_start_stops_grading(course, tmp_path, monkeypatch):
    """A sandbox that cannot start its worker (here: a Python that is not there) is the
    machine's fault: grading stops with the warden's reason, rather than scoring 0."""
    import dataclasses

    from twins_np.course.grader import grade
    from twins_np.course.manifest import GradingError

    for ns in (True, False):
        box = runner.sandbox(ns)
        monkeypatch.setitem(runner._SANDBOX, ns, dataclasses.replace(box, python="/nonexistent/python3"))
    with pytest.raises(GradingError, match="could not start a worker: FileNotFoundError"):
        grade(submission(course, tmp_path), course.manifest, root=course.root, tasks=["gelu_backward"])
