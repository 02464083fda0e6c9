"""The notebooks of a student copy work at any stage: a cell that needs an unwritten task says so
in one line (which task, and the command that checks it) and the notebook goes on.

The guard (``twins_np.course.cells``) is tested in an IPython shell; the notebooks themselves
run under nbmake in an untouched copy (every task a stub) and in a solved one (the instructor's
solution files put back), the ``slow`` part of this file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from course_helpers import ROOT

from twins_np.course.assignments import load_course
from twins_np.course.build import build
from twins_np.course.tasks import regions_in, solution_files

IPython = pytest.importorskip("IPython")

SKIPPED = re.compile(r"^\[skipped\] this cell (?:needs|steps through) `(\w+)`", re.M)


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    from twins_np.course import cells

    ip = InteractiveShell()
    cells.load_ipython_extension(ip)
    ip.run_cell("def stub():\n    raise NotImplementedError('gelu_backward: implement exact GELU backward')")
    yield ip
    cells.unload_ipython_extension(ip)
    InteractiveShell.clear_instance()


def test_a_cell_stopped_by_a_stub_says_which_task_and_the_notebook_goes_on(shell, capsys, monkeypatch):
    from twins_np.course import cells

    monkeypatch.setattr(cells, "_in_library", lambda error: True)  # as if `stub` were the library's
    r = shell.run_cell("a = 1\nb = stub()\nc = 3")
    out = capsys.readouterr().out
    assert r.success and len(out.strip().splitlines()) == 1 and "`gelu_backward`" in out and "[skipped]" in out
    assert shell.user_ns["a"] == 1 and "b" not in shell.user_ns and "c" not in shell.user_ns  # it stopped at the stub
    r = shell.run_cell("print(b + 1)")  # reads a name the stopped cell did not compute
    out = capsys.readouterr().out
    assert r.success and "needs `gelu_backward`" in out and "through `b`" in out
    r = shell.run_cell("print(undefined_name)")  # a name a stripped step-through would have defined
    assert r.success and "needs `gelu_backward`" in capsys.readouterr().out
    r = shell.run_cell("a + 41")  # a cell that needs nothing runs, and its value is shown
    assert r.success and r.result == 42
    r = shell.run_cell("b = 2\nb * 2")  # assigning the name again computes it anew
    assert r.success and r.result == 4


def test_a_notebooks_own_step_through_says_so(shell, capsys):
    """A stub raised by the cell itself (a stripped step-through of the notebook) is the student's to
    write there: the line says so, and the cells reading what it computes say where it comes from."""
    r = shell.run_cell("dx = stub()")
    assert r.success and "steps through `gelu_backward` by hand: write its TODO above" in capsys.readouterr().out
    r = shell.run_cell("print(dx)")
    assert r.success and "it reads `dx`, which the step-through above computes" in capsys.readouterr().out


def test_other_errors_are_raised_as_usual(shell, capsys):
    for code, kind in (("1 / 0", ZeroDivisionError), ("raise NotImplementedError('not a task')", NotImplementedError),
                       ("assert False, 'a wrong answer'", AssertionError)):  # fmt: skip
        r = shell.run_cell(code)
        assert not r.success and isinstance(r.error_in_exec, kind), code
    shell.run_cell("print(never_defined)")  # no stub has stopped a cell yet: a NameError is a NameError
    assert "[skipped]" not in capsys.readouterr().out


# --- the notebooks, under nbmake -------------------------------------------------------------


def _run_notebooks(copy, names, timeout):
    """Execute notebooks of a copy with nbmake, in place; {notebook: [(task, line)]} of the skip lines."""
    ipython = copy.parent / "ipython" / "profile_default"
    ipython.mkdir(parents=True, exist_ok=True)
    (ipython / "ipython_kernel_config.py").write_text('c.IPKernelApp.log_level = "ERROR"\n')
    env = dict(os.environ, PYTHONPATH=str(copy), IPYTHONDIR=str(ipython.parent), OPENBLAS_NUM_THREADS="1", TQDM_DISABLE="1",
               MPLBACKEND="Agg")  # fmt: skip
    paths = [f"notebooks/{n}.ipynb" for n in names]
    cmd = [sys.executable, "-m", "pytest", "--nbmake", "--overwrite", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
           f"--nbmake-timeout={timeout}", *paths]  # fmt: skip
    r = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout * len(names) + 120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    found = {}
    for n in names:
        cells = json.loads((copy / "notebooks" / f"{n}.ipynb").read_text())["cells"]
        streams = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream"]
        text = "".join("".join(o.get("text", "")) for o in streams)
        found[n] = [(m[1], m[0]) for m in SKIPPED.finditer(text)]
    return found


@pytest.mark.slow
def test_every_notebook_goes_on_in_an_untouched_copy(tmp_path):
    """Every notebook runs to its end with every task a stub (about a minute for the ten); the tasks
    its skipped cells name are among those STUDENT.md says it needs."""
    copy = tmp_path / "copy"
    build(copy, root=ROOT, freeze=False, manifest=False)
    declared = load_course().notebooks
    names = sorted(p.stem for p in (copy / "notebooks").glob("[0-9]*.ipynb"))
    assert len(names) == 10 and set(names) == set(declared)
    found = _run_notebooks(copy, names, timeout=600)
    for n in names:
        named = {t for t, _ in found[n]}
        assert named <= set(declared[n]), (n, named - set(declared[n]))
        assert bool(named) == bool(declared[n]), (n, found[n])
        assert all(len(line) < 300 for _, line in found[n])


@pytest.mark.slow
def test_notebooks_01_to_08_run_in_a_solved_copy(tmp_path):
    """With the instructor's solution files put back, notebooks 01-08 run and skip nothing but their
    own step-through cells (stripped in the notebook: the student writes them there too). 09 and 10
    train for minutes: they run in the instructor's project (make pytest), on the same library code."""
    copy = tmp_path / "copy"
    build(copy, root=ROOT, freeze=False, manifest=False)
    for files in solution_files(ROOT).values():
        for rel in files:
            shutil.copyfile(ROOT / rel, copy / rel)
    names = sorted(p.stem for p in (copy / "notebooks").glob("0[1-8]_*.ipynb"))
    found = _run_notebooks(copy, names, timeout=600)
    for n in names:
        own = set(regions_in((ROOT / "notebooks" / f"{n}.py").read_text()))
        assert all(t in own and "steps through" in line for t, line in found[n]), (n, found[n])
