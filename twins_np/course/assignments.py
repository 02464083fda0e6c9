"""The assignments: tasks grouped, points, hours, written questions, and the handout pages.

The defaults are ``course.toml`` beside this module; an instructor's ``assignment.toml``
overrides them (``[tasks.T] points``/``hours``, and any key of ``[assignments.A1]``). Each task
belongs to exactly one assignment. :func:`handout` writes an assignment's page (goals, files
to edit, tests and notebooks to run, points, suggested order and hours, the written questions),
:func:`answers_template` the file a student answers the questions in; ``build`` puts both in the
student copy and ``tools/make_handouts.py`` the pages into ``docs/handouts/``.
"""

from __future__ import annotations

import pathlib
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from .tasks import ASSIGNMENT_TASKS

__all__ = ["COURSE_FILE", "Assignment", "Course", "Question", "answers_template", "handout", "handouts_index", "load_course",
           "parse_answers"]  # fmt: skip

COURSE_FILE = pathlib.Path(__file__).with_name("course.toml")


@dataclass(frozen=True)
class Question:
    """A written question, graded by hand."""

    id: str  # "A1.2"
    points: float
    text: str


@dataclass(frozen=True)
class Assignment:
    key: str  # "A1"
    name: str  # "a1_layers": the handout's and the answer file's name
    title: str
    tasks: tuple[str, ...]  # in the suggested order
    notebooks: tuple[str, ...]
    goals: tuple[str, ...]
    questions: tuple[Question, ...]

    @property
    def manual_points(self) -> float:
        return sum(q.points for q in self.questions)

    @property
    def handout_path(self) -> str:
        return f"handouts/{self.name}.md"

    @property
    def answers_path(self) -> str:
        return f"answers/{self.name}.md"


@dataclass(frozen=True)
class Course:
    assignments: dict[str, Assignment]
    points: dict[str, float]  # task -> points
    hours: dict[str, float]  # task -> suggested hours
    notebooks: dict[str, tuple[str, ...]]  # notebook (without suffix) -> the tasks it needs

    def assignment_of(self, task: str) -> Assignment:
        return next(a for a in self.assignments.values() if task in a.tasks)


def load_course(config: dict[str, Any] | None = None) -> Course:
    """The course in force: ``course.toml`` with the instructor's ``config`` over it.

    Raises:
        ValueError: a task in no assignment or in two, an unknown task, a question without an
            id, text or points.
    """
    with COURSE_FILE.open("rb") as f:
        base = tomllib.load(f)
    config = config or {}
    tasks_conf = {t: {**base.get("tasks", {}).get(t, {}), **config.get("tasks", {}).get(t, {})} for t in ASSIGNMENT_TASKS}
    points = {t: float(c.get("points", 10.0)) for t, c in tasks_conf.items()}
    hours = {t: float(c.get("hours", 1.0)) for t, c in tasks_conf.items()}
    raw = {k: dict(v) for k, v in base.get("assignments", {}).items()}
    for key, over in config.get("assignments", {}).items():
        raw[key] = {**raw.get(key, {}), **over}
    assignments: dict[str, Assignment] = {}
    seen: dict[str, str] = {}
    for key, a in raw.items():
        tasks = tuple(a.get("tasks", ()))
        for t in tasks:
            if t not in ASSIGNMENT_TASKS:
                raise ValueError(f"assignment {key}: unknown task {t!r}; known: {', '.join(ASSIGNMENT_TASKS)}")
            if t in seen:
                raise ValueError(f"task {t} is in two assignments, {seen[t]} and {key}: each task belongs to one")
            seen[t] = key
        questions = []
        for q in a.get("questions", ()):
            if not {"id", "points", "text"} <= set(q):
                raise ValueError(f"assignment {key}: a written question needs id, points and text, got {sorted(q)}")
            questions.append(Question(str(q["id"]), float(q["points"]), " ".join(str(q["text"]).split())))
        assignments[key] = Assignment(key, str(a.get("name", key.lower())), str(a.get("title", key)), tasks,
                                      tuple(a.get("notebooks", ())), tuple(a.get("goals", ())), tuple(questions))  # fmt: skip
    missing = [t for t in ASSIGNMENT_TASKS if t not in seen]
    if missing:
        raise ValueError(f"tasks in no assignment: {', '.join(missing)} (each task belongs to one assignment)")
    notebooks = {k: tuple(v) for k, v in {**base.get("notebooks", {}), **config.get("notebooks", {})}.items()}
    return Course(assignments, points, hours, notebooks)


def _hours(h: float) -> str:
    return f"{h:g} h"


def handout(a: Assignment, course: Course, chosen: list[str], files: dict[str, list[str]], docs: dict[str, str]) -> str:
    """An assignment's handout page (Markdown), for the tasks of it that are in ``chosen``.

    Args:
        a: the assignment.
        course: the course in force (points, hours, the notebooks' tasks).
        chosen: the tasks stripped in this copy.
        files: task -> the files a student edits.
        docs: task -> the page to read first.
    """
    tasks = [t for t in a.tasks if t in chosen]
    code = sum(course.points[t] for t in tasks)
    hours = sum(course.hours[t] for t in tasks)
    lines = [f"# {a.key}: {a.title}", "",
             f"**Points:** {code:g} for the code (graded automatically on inputs you do not see) + "
             f"{a.manual_points:g} for the written questions (graded by hand) = {code + a.manual_points:g}. "
             f"**Suggested time:** {_hours(hours)} for the code, plus the questions.", "",
             "## Goals", "", *(f"- {g[0].upper()}{g[1:]}." for g in a.goals), "",
             "## Tasks, in the suggested order", "",
             "Each task's code is a `TODO(task)` stub that states what the function takes and returns, with "
             "shapes, and what its cache holds; the docstring above it has the Math.", "",
             "| # | task | what to implement | file to edit | read first | run | points | hours |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, t in enumerate(tasks, 1):
        where = ", ".join(f"`{f}`" for f in files.get(t, []))
        lines.append(f"| {i} | `{t}` | {ASSIGNMENT_TASKS[t].title} | {where} | `{docs[t]}` | "
                     f"`python -m pytest -m {t}` | {course.points[t]:g} | {_hours(course.hours[t])} |")  # fmt: skip
    lines += ["", "## Notebooks", "",
              "Run them in JupyterLab (`jupyter lab notebooks/`). A cell that needs a task you have not written "
              "yet says so in one line and the notebook goes on; run it again once the task passes its tests.", ""]  # fmt: skip
    for nb in a.notebooks:
        needs = [t for t in course.notebooks.get(nb, ()) if t in chosen]
        lines.append(f"- `notebooks/{nb}.ipynb`" + (f": needs {', '.join(f'`{t}`' for t in needs)}" if needs else ""))
    lines += ["", "## Checking your work", "", "```bash",
              *(f"python -m pytest -m {t}" for t in tasks),
              "twins-np assignment status          # one line per task; --verbose names the failing tests",
              "twins-np gradcheck                  # every layer's finite-difference check (TODO = not written yet)",
              "```", ""]  # fmt: skip
    if a.questions:
        lines += ["## Written questions (graded by hand)", "",
                  f"Answer in `{a.answers_path}`, in the answer cell under each question (keep the two marker "
                  "lines around it). Your instructor grades these answers by hand.", ""]  # fmt: skip
        for q in a.questions:
            lines += [f"**{q.id}** ({q.points:g} points). {q.text}", ""]
    lines += ["## Handing in", "", "`twins-np assignment submit` writes `submission.zip` with the files above"
              + (f" and `{a.answers_path}`" if a.questions else "") + "; upload it as your course asks.", ""]  # fmt: skip
    return "\n".join(lines)


ANSWER_BEGIN = "<!-- BEGIN ANSWER {} -->"
ANSWER_END = "<!-- END ANSWER {} -->"
_PLACEHOLDER = "_Your answer here._"


def answers_template(a: Assignment) -> str:
    """The file a student answers an assignment's written questions in: one answer cell per question."""
    lines = [f"# {a.key} written answers", "",
             "Write each answer between its two marker lines; keep the markers. Formulas in LaTeX ($...$) are fine.",
             ""]  # fmt: skip
    for q in a.questions:
        lines += [f"## {q.id} ({q.points:g} points)", "", q.text, "", ANSWER_BEGIN.format(q.id), _PLACEHOLDER,
                  ANSWER_END.format(q.id), ""]  # fmt: skip
    return "\n".join(lines)


def parse_answers(text: str) -> dict[str, str]:
    """question id -> the answer written in its cell ("" when untouched or empty)."""
    out = {}
    for m in re.finditer(r"<!-- BEGIN ANSWER (\S+) -->\n(.*?)<!-- END ANSWER \1 -->", text, re.S):
        body = m[2].strip()
        out[m[1]] = "" if body == _PLACEHOLDER else body
    return out


def handouts_index(course: Course, chosen: list[str], link: str = "{name}") -> str:
    """The list of the assignments with their points, for STUDENT.md and the docs."""
    rows = ["| assignment | tasks | code points | written questions | suggested hours |", "|---|---|---|---|---|"]
    for a in course.assignments.values():
        tasks = [t for t in a.tasks if t in chosen]
        if not tasks:
            continue
        name = link.format(name=a.name, key=a.key)
        rows.append(f"| [{a.key}: {a.title}]({name}) | {', '.join(f'`{t}`' for t in tasks)} | "
                    f"{sum(course.points[t] for t in tasks):g} | {len(a.questions)} ({a.manual_points:g} points) | "
                    f"{sum(course.hours[t] for t in tasks):g} |")  # fmt: skip
    return "\n".join(rows)
