"""The student copy: built from the library's markers, complete, deterministic, and without a solution.

For each task, a student copy that strips only that task must make the task's own tests
fail with that task's NotImplementedError (so the tests really exercise the region),
while the same tests pass in the solution tree (the rest of the suite runs them).
"""

from __future__ import annotations

import ast
import filecmp
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from twins_np.course.assignments import load_course, parse_answers
from twins_np.course.build import INSTRUCTOR_ONLY, _region_texts, build, project_files
from twins_np.course.tasks import ASSIGNMENT_TASKS as TASKS
from twins_np.course.tasks import BEGIN, END, kernel_files, solution_files, strip_source, task_functions

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _regions(text: str) -> dict[str, list[str]]:
    """task -> the source lines inside its solution regions."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"# BEGIN SOLUTION (\S+)\n(.*?)# END SOLUTION", text, re.S):
        out.setdefault(m[1], []).extend(m[2].splitlines())
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "copy"
    where = build(out, root=ROOT, freeze=False, manifest=False)  # the grading: test_course_grader.py
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


def test_build_is_deterministic(student, tmp_path):
    out, _ = student
    again = tmp_path / "again"
    build(again, root=ROOT, freeze=False, manifest=False)
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
    with pytest.raises(ValueError, match="END SOLUTION' without a BEGIN"):
        strip_source("x = 1\n# END SOLUTION\n")
    text, done = strip_source(
        "def f():\n    # BEGIN SOLUTION gelu_backward\n    return 1\n    # END SOLUTION\n", {"lsa_backward"}
    )
    assert done == [] and "return 1" in text and "SOLUTION" not in text


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_task_tests_fail_with_its_own_not_implemented(task, tmp_path):
    out = tmp_path / "copy"
    build(out, root=ROOT, tasks=[task], freeze=False, manifest=False)
    files = sorted({sel.partition("::")[0] for sel in TASKS[task].tests})
    env = dict(os.environ, PYTHONPATH=str(out))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-m", task, "-x", "-q", "-p", "no:cacheprovider"],
        cwd=out, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout[-3000:]
    assert f"NotImplementedError: {task}: implement" in r.stdout, r.stdout[-3000:]


def _solution_lines(text: str) -> tuple[list[str], str]:
    """(the non-trivial lines inside the solution regions, the text outside them)."""
    inside, outside, cur = [], [], None
    for line in text.splitlines():
        if BEGIN.match(line):
            cur = []
        elif END.match(line):
            inside += cur or []
            cur = None
        else:
            (outside if cur is None else cur).append(line)
    # short lines (`return dx`) and plain returns of names (the docstring names them) give nothing away
    code = [ln.strip() for ln in inside if len(ln.strip()) >= 20 and not ln.strip().startswith("#")]
    return [c for c in code if not re.fullmatch(r"return [\w, ]+", c)], "\n".join(outside)


def test_no_solution_line_anywhere_in_the_copy(student):
    """Every non-trivial line of every region (library, notebooks, docs), searched in every file
    of the copy. A line may appear in a copied library or test file only as often as the
    instructor's same file has it outside its regions (a shape check, say); elsewhere never."""
    out, _ = student
    lines, outside = [], {}
    for path in project_files(ROOT):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found, outside[path.relative_to(ROOT)] = _solution_lines(text)
        lines += [(path.relative_to(ROOT), ln) for ln in found]
    # a line the project also has outside every region (an import, a fence, a formula the docstring
    # states) was never a secret: only the regions' own lines are searched
    everywhere = "\n".join(text for rel, text in outside.items() if rel.suffix != ".ipynb")  # a notebook's JSON quotes its source
    lines = [(src, line) for src, line in lines if line not in everywhere]
    assert len(lines) > 60 and {p.parts[0] for p, _ in lines} >= {"twins_np", "notebooks", "docs"}
    copy = {}
    for path in out.rglob("*"):
        if path.is_file():
            try:
                copy[path.relative_to(out)] = path.read_text()
            except UnicodeDecodeError:
                continue
    leaks = []
    for src, line in lines:
        for rel, text in copy.items():
            # a library or test file, or the exercise's own notebook (its forward steps), may share a line
            same = rel.parts[0] in ("twins_np", "tests") or rel.with_suffix(".py") == src
            allowed = outside.get(rel, "").count(line) if same else 0
            if text.count(line) > allowed:
                leaks.append(f"{rel}: {line}  (from {src})")
    assert not leaks, "\n".join(leaks)
    markers = [f"{rel}: {ln}" for rel, t in copy.items() for ln in t.splitlines() if BEGIN.match(ln) or END.match(ln)]
    assert not markers, markers


def test_instructor_material_stays_out(student):
    out, _ = student
    for rel in INSTRUCTOR_ONLY:
        assert not (out / rel).exists(), rel
    assert not list((out / "tests").glob("course*")) and (ROOT / "tests/course").is_dir()
    assert "not part of a student copy" in (out / "docs/instructors.md").read_text()
    assert "assignment grade" not in (out / "docs/instructors.md").read_text()


def test_handout_and_pytest_config(student):
    out, where = student
    handout = (out / "STUDENT.md").read_text()
    for task, files in where.items():
        assert f"`{task}`" in handout and all(f in handout for f in files)
    for name in ("a1_layers", "a2_attention", "a3_dense"):
        assert f"(handouts/{name}.md)" in handout and f"`answers/{name}.md`" in handout
    assert "python -m pytest -m" in handout and "assignment submit" in handout and "points" in handout
    assert "make student" in handout and "no PyTorch" in handout and "`notebooks/04_lsa_windows.ipynb` | " in handout
    assert "STUDENT.md" in (out / "README.md").read_text().splitlines()[0]
    assert "pythonpath = ." in (out / "pytest.ini").read_text()
    info = json.loads((out / "assignment.json").read_text())
    assert set(info["tasks"]) == set(TASKS) and set(info["assignments"]) == {"A1", "A2", "A3"}


def test_every_task_belongs_to_exactly_one_assignment(tmp_path):
    course = load_course()
    listed = [t for a in course.assignments.values() for t in a.tasks]
    assert sorted(listed) == sorted(TASKS) and len(listed) == len(set(listed))
    assert len(set(course.points.values())) > 3, "points are weighted by the work, not all alike"
    assert all(a.questions and a.goals and a.notebooks for a in course.assignments.values())
    with pytest.raises(ValueError, match="in two assignments"):
        load_course({"assignments": {"A3": {"tasks": ["group_norm_backward", "gelu_backward"]}}})
    with pytest.raises(ValueError, match="in no assignment: bilinear_resize_backward"):
        load_course({"assignments": {"A3": {"tasks": ["group_norm_backward"]}}})
    over = load_course({"tasks": {"gelu_backward": {"points": 7}}})
    assert over.points["gelu_backward"] == 7 and over.points["windows"] == course.points["windows"]
    config = tmp_path / "assignment.toml"
    config.write_text("[tasks.gelu_backward]\npoints = 7\n")
    r = subprocess.run([sys.executable, "-m", "twins_np", "assignment", "list", "--config", str(config)], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert r.returncode == 0 and re.search(r"^  gelu_backward +7 pts", r.stdout, re.M), r.stdout + r.stderr
    assert sum(ln.startswith("A") for ln in r.stdout.splitlines()) == 3


def test_handouts_name_only_existing_files_tests_and_notebooks(student):
    """Every path a handout names exists in the copy, every `pytest -m X` is a task whose test files
    exist, every notebook a handout or STUDENT.md names is there; each answer file parses."""
    out, where = student
    pages = [*sorted((out / "handouts").glob("*.md")), *sorted((out / "docs/handouts").glob("a*.md"))]
    assert len(pages) == 6
    for page in pages:
        text = page.read_text()
        paths = re.findall(r"`((?:twins_np|docs|notebooks|answers|tests)/[\w./-]+)`", text)
        assert paths and all((out / p).exists() for p in paths), (page, [p for p in paths if not (out / p).exists()])
        marked = re.findall(r"python -m pytest -m (\w+)", text)
        assert marked and set(marked) <= set(where), page
        for task in marked:
            assert all((out / sel.partition("::")[0]).exists() for sel in TASKS[task].tests), task
        assert re.search(r"\| \d+ \| `\w+` \|.*\| \d+(\.\d+)? h \|", text) and "Written questions" in text
    assert (out / "docs/handouts/index.md").exists()
    notebooks = re.findall(r"`notebooks/([\w]+\.ipynb)`", (out / "STUDENT.md").read_text())
    assert len(notebooks) == 10 and all((out / "notebooks" / n).exists() for n in notebooks)
    for a in load_course().assignments.values():
        answers = parse_answers((out / a.answers_path).read_text())
        assert list(answers) == [q.id for q in a.questions] and not any(answers.values())
        filled = (out / a.answers_path).read_text().replace("_Your answer here._", "Because.", 1)
        assert parse_answers(filled)[a.questions[0].id] == "Because."


def test_the_docs_handout_pages_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools/make_handouts.py"), "--check"], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_stub_todo_lines_say_what_to_do(student):
    """Each stub states the contract: what to return (the docstring's Returns, with shapes), from
    which arguments, and what the cache holds (the cache class's fields); no helper's `out`."""
    out, _ = student
    functional = ("activation", "mlp", "layernorm", "norm2d", "resize", "softmax", "depthwise_conv", "gsa")
    files = (*(f"twins_np/functional/{m}.py" for m in functional), "twins_np/optim.py")
    todo = {rel: re.findall(r"# TODO\((\w+)\): (.*)", (out / rel).read_text()) for rel in files}
    assert todo["twins_np/functional/activation.py"] == [("gelu_backward", "return dx: the shape and dtype of dout")]
    assert todo["twins_np/functional/mlp.py"] == [
        ("ffn_backward", "return dx (..., C), dfc1_w (rC, C), dfc1_b (rC,), dfc2_w (C_out, rC), dfc2_b (C_out,)")
    ]
    assert todo["twins_np/functional/layernorm.py"] == [("layernorm_backward", "return dx (..., C), dgamma (C,), dbeta (C,)")]
    assert todo["twins_np/optim.py"] == [("adamw_step", "update p.data, m, v in place (nothing to return)")]
    assert [t for t, _ in todo["twins_np/functional/norm2d.py"]] == ["group_norm_backward"] * 3
    assert todo["twins_np/functional/resize.py"] == [("bilinear_resize_backward", "return dx: (B, H, W, C)")]
    assert todo["twins_np/functional/gsa.py"][0][1].startswith("return dx (B, N, C), dq_w (C, C), dq_b (C,)")
    for rel in files:
        text = (out / rel).read_text()
        assert "into `out`" not in text and "(used after this block)" not in text, rel  # no scaffolding
        for stub in re.findall(r"(# TODO\(\w+\):.*?)\n\s*raise NotImplementedError", text, re.S):
            assert "computed from" in stub or "in place" in stub, stub
    gelu = (out / "twins_np/functional/activation.py").read_text()
    assert "`cache` is the forward's GeluCache, which holds: x (the input" in gelu and "cdf (Phi(x)" in gelu
    ln = (out / "twins_np/functional/layernorm.py").read_text()
    assert "LayerNormCache, which holds: xhat ((..., C) normalised input); inv_std" in ln


def test_pytest_in_the_copy_tests_the_copys_own_code(student):
    """Even with the instructor's package first on PYTHONPATH (as if installed), `pytest -m TASK`
    in the copy imports the copy's twins_np; and the conftest refuses another twins_np."""
    out, _ = student
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["-q", "-p", "no:cacheprovider", "-m", "gelu_backward and not parity", "tests/functional/test_f_activation.py"]
    r = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "NotImplementedError: gelu_backward: implement" in r.stdout, r.stdout[-2000:]
    # pytest run without the current folder on sys.path (as an installed `pytest` script runs) and
    # with the copy's pythonpath switched off
    code = "import sys; del sys.path[0]; import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, *args, "-o", "pythonpath="], cwd=out, env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 4 and "not this copy's twins_np" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


_BLOCKER = """
import sys

BLOCKED = {"torch", "torchvision", "timm", "hypothesis", "nbmake", "jupytext", "numba", "xdist", "cupy", "cupyx"}


class Block:  # what the student extra does not install is not there
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())
"""


def test_a_task_runs_its_tests_in_the_students_set_up(student, tmp_path):
    """`pytest -m TASK` in the copy with only the student extra: no PyTorch, timm, hypothesis, nbmake,
    numba or pytest plugins (they are made unimportable). The collection has no error, the parity
    tests skip, and the task's tests fail on its stub."""
    out, _ = student
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr  # the blocker works
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gelu_backward"], cwd=out,
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    tail = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 1 and re.search(r"\d+ failed", tail) and re.search(r"\d+ skipped", tail), r.stdout[-3000:]
    assert not re.search(r"\d+ errors?", tail) and "NotImplementedError: gelu_backward: implement" in r.stdout, r.stdout[-3000:]


def test_docs_of_the_copy_have_no_source_pages(student):
    out, _ = student
    ns: dict = {"__file__": str(out / "docs" / "conf.py")}
    exec(compile((out / "docs" / "conf.py").read_text(), "conf.py", "exec"), ns)
    assert ns["STUDENT_COPY"] and "sphinx.ext.viewcode" not in ns["extensions"] and ns["nb_execution_mode"] == "off"
    assert "DO NOT" not in (out / "docs/derivations/gsa.md").read_text()
    assert "it is the assignment task `gsa_backward`" in (out / "docs/derivations/gsa.md").read_text()


def test_gradcheck_in_a_copy_marks_todo_and_goes_on(student):
    out, _ = student
    code = (
        "from twins_np.gradcheck_suite import run_all\n"
        "res = run_all(progress=False)\n"
        "todo = sum(1 for _, rows, err in res if rows is None and err.startswith('TODO: '))\n"
        "print(todo, sum(1 for _, rows, _ in res if rows))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(out))
    r = subprocess.run([sys.executable, "-c", code], cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    todo, ok = map(int, r.stdout.split())
    assert todo >= 9 and ok >= 3, r.stdout


def test_task_functions_follow_the_regions():
    """The functions a task's grading replaces by proxies in other tasks' workers: those that
    hold its regions, and those that hand them on (map_blocks, a shared helper, an alias)."""
    src = (ROOT / "twins_np/functional/norm2d.py").read_text()
    assert task_functions(src) == {"group_norm_backward": ["group_norm_backward", "batch_norm_backward"]}
    assert task_functions((ROOT / "twins_np/functional/activation.py").read_text()) == {"gelu_backward": ["gelu_backward"]}
    resize = task_functions((ROOT / "twins_np/functional/resize.py").read_text())["bilinear_resize_backward"]
    assert sorted(resize) == ["adaptive_avg_pool_backward", "bilinear_resize_backward", "nearest_resize_backward",
                              "resize_backward"]  # fmt: skip
    windows = task_functions((ROOT / "twins_np/functional/windows.py").read_text())["windows"]
    assert set(windows) == {"window_partition_forward", "window_partition_backward", "window_reverse_forward",
                            "window_reverse_backward"}  # fmt: skip


def _calls(tree: ast.AST) -> set[str]:
    """The names a piece of code calls (``f(...)`` and ``F.f(...)``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            out.add(name)
    return out


def _steps() -> dict[str, set[str]]:
    """task -> the library's functional ops its solution regions call (LSA's: linear_backward,
    window_reverse_backward, attention_backward, split_heads, join_qkv, window_partition_backward)."""
    import twins_np.functional as F

    ops = set(F.__all__)
    out: dict[str, set[str]] = {}
    for task, rels in solution_files(ROOT).items():
        for rel in rels:
            for region in _region_texts((ROOT / rel).read_text(), {task}):
                out.setdefault(task, set()).update(_calls(ast.parse(textwrap.dedent(region))) & ops)
    return out


def _pieces(copy: pathlib.Path) -> list[tuple[str, set[str]]]:
    """Every visible test function, notebook cell and documentation page of a copy, with the names
    it calls (code) or names in inline code (prose)."""
    out = []
    for path in sorted((copy / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((f"{path.relative_to(copy)}::{node.name}", _calls(node)))
    for path in sorted((copy / "notebooks").glob("[0-9]*.py")):
        for k, cell in enumerate(re.split(r"^# %%", path.read_text(), flags=re.M)):
            try:
                out.append((f"{path.relative_to(copy)}, cell {k}", _calls(ast.parse(cell))))
            except SyntaxError:
                continue
    for path in sorted((copy / "docs").rglob("*.md")):
        text = path.read_text()
        names = set(re.findall(r"`(?:F\.)?(\w+)(?:\([^`]*\))?`", text))  # inline code: `linear_backward`
        for block in re.findall(r"```(?:python|\{code-cell\}[^\n]*)\n(.*?)```", text, re.S):
            try:
                names |= _calls(ast.parse(re.sub(r"^:\w+:.*$", "", block, flags=re.M)))
            except SyntaxError:
                names |= set(re.findall(r"(\w+)\(", block))
        out.append((str(path.relative_to(copy)), names))
    return out


def test_no_visible_test_notebook_or_page_steps_through_a_stubbed_task(student):
    """A stubbed task's solution, as a chain of library calls, is in no visible test, notebook cell
    or page of the copy: none calls three of the functional ops the task's solution calls (a page:
    names four), or both of a two-op chain (the FFN's). Behaviour tests call the task's own
    function and compare values; the step-by-step tests live in tests/hidden/ (instructor-only)
    and the derivation pages keep the forward and the question."""
    out, where = student
    steps = {t: ops for t, ops in _steps().items() if t in where and len(ops) >= 2}
    assert steps["lsa_backward"] >= {"linear_backward", "attention_backward", "window_partition_backward", "join_qkv"}
    assert steps["gsa_backward"] >= {"linear_backward", "attention_backward", "layernorm_backward", "subsample_backward"}

    def through(name: str, called: set[str], ops: set[str]) -> bool:  # a page names ops more freely than code calls them
        return len(ops & called) >= min(4 if name.endswith(".md") else 3, len(ops))

    leaks = []
    for name, called in _pieces(out):
        for task, ops in steps.items():
            if through(name, called, ops):
                leaks.append(f"{name} steps through {task}: {sorted(ops & called)}")
    assert not leaks, "\n".join(leaks)
    # the same rule finds the instructor's own step-by-step tests and pages (they exist, and are left out)
    found = {name.split("::")[0] for name, called in _pieces(ROOT) for ops in steps.values() if through(name, called, ops)}
    assert {"tests/hidden/test_recipes.py", "docs/derivations/lsa.md", "docs/derivations/gsa.md"} <= found, found


def test_the_instructor_can_reveal_a_derivation(tmp_path):
    """`reveal = [task]` in the config keeps that task's backward steps on its pages (the code stays stubbed)."""
    config = tmp_path / "assignment.toml"
    config.write_text('reveal = ["lsa_backward"]\n')
    out = tmp_path / "copy"
    build(out, root=ROOT, tasks=["lsa_backward", "gsa_backward"], config=config, freeze=False, manifest=False)
    lsa, gsa = (out / "docs/derivations/lsa.md").read_text(), (out / "docs/derivations/gsa.md").read_text()
    assert "do = window_reverse_backward(dy, rev_cache)" in lsa and "SOLUTION" not in lsa
    assert "**Your task (`lsa_backward`).**" in lsa and "**Your task (`gsa_backward`).**" in gsa
    assert "it is the assignment task `gsa_backward`" in gsa and "it is the assignment task `lsa_backward`" not in lsa
    assert "raise NotImplementedError('lsa_backward:" in (out / "twins_np/functional/lsa.py").read_text()
    config.write_text('reveal = ["nope"]\n')
    with pytest.raises(ValueError, match="unknown tasks"):
        build(tmp_path / "again", root=ROOT, config=config, freeze=False, manifest=False)


# --- fused kernels: a kernel of a stubbed task would compute its answer -------------------------

# fused_kernels(True) without asking for a GPU
_KERNEL_FORCER = "def pytest_configure(config):\n    import twins_np.backend as b\n\n    b._FUSED = True\n"


def test_no_kernel_of_a_stubbed_task_in_the_copy_or_the_workers_library(student, tmp_path):
    """Every kernel source of twins_np/kernels/ (the backend's naming rule: NAME.cu, NAME_cpu.py)
    is dispatched by name from the ops; those a stubbed task's functions dispatch are left out of
    the copy, and the grader's worker gets none of any task."""
    from twins_np.backend import KERNEL_FILES

    out, where = student
    kernels = kernel_files(ROOT)
    assert set(kernels) == {"gelu_backward", "layernorm_backward", "attention_backward", "peg_backward", "adamw_step"}
    dispatched = set()
    for path in (ROOT / "twins_np").rglob("*.py"):
        dispatched |= set(re.findall(r'\buse_fused\([^)]*?,\s*"(\w+)"', path.read_text()))
    patterns = [re.compile("^" + re.escape(p).replace("%s", r"(\w+?)") + "$") for p in KERNEL_FILES.values()]
    sources = {f.name: m[1] for f in (ROOT / "twins_np/kernels").iterdir() for rx in patterns if (m := rx.match(f.name))}
    assert sources and set(sources.values()) <= dispatched, "a kernel file no op dispatches by name"
    owned = {f.rpartition("/")[2] for files in kernels.values() for f in files}
    assert owned == set(sources), "every kernel source belongs to the task whose function dispatches it"
    for task in where:
        for rel in kernels.get(task, []):
            assert (ROOT / rel).is_file() and not (out / rel).exists(), rel
    manifest = tmp_path / "m.json"
    build(tmp_path / "copy", root=ROOT, tasks=["windows"], manifest=manifest, freeze=False, selfcheck=False)
    library = json.loads(manifest.read_text())["library"]
    assert not any(rel.rpartition("/")[2] in sources for rel in library), "the worker's library holds a kernel"
    assert all((tmp_path / "copy" / rel).exists() for files in kernels.values() for rel in files)  # windows has none


def test_an_untouched_copy_fails_its_tests_with_every_kernel_switch_on(student, tmp_path):
    """With the fused-kernel switches on (the CPU one by its variable, the GPU one forced, arrays on
    the CuPy stand-in), the copy's ops still run the student's stubs: the kernel files are not there.
    In the instructor's project the same switch sends the same call to the kernel."""
    out, _ = student
    (tmp_path / "force_kernels.py").write_text(_KERNEL_FORCER)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT / 'tests'}", TWINS_NP_CPU_KERNELS="1")
    probe = (
        "import cupy_standin; cupy_standin.install(); import cupy, twins_np.backend as b; b._FUSED = True; "
        "print(all(b.use_fused(cupy.ones(3), k) for k in ('gelu', 'layernorm', 'softmax', 'dwconv3x3', 'adamw')))"
    )
    for tree, expected in ((out, "False"), (ROOT, "True")):
        r = subprocess.run([sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == expected, (tree, r.stdout + r.stderr)
    files = {"gelu_backward": "functional/test_f_activation.py", "layernorm_backward": "functional/test_f_layernorm.py",
             "attention_backward": "functional/test_f_softmax.py", "peg_backward": "functional/test_f_depthwise_conv.py",
             "adamw_step": "test_optim.py"}  # fmt: skip
    for task, rel in files.items():
        args = [
            "-p",
            "force_kernels",
            "--cupy-standin",
            "-m",
            f"{task} and gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rf",
            f"tests/{rel}",
        ]
        r = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=out, env={**env, "COLUMNS": "1000"}, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
        failed = [ln for ln in r.stdout.splitlines() if ln.startswith("FAILED")]
        assert r.returncode == 1 and failed, (task, r.stdout[-2000:])
        assert all(f"NotImplementedError: {task}:" in ln for ln in failed), (task, failed)
