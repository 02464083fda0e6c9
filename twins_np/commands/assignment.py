"""``twins-np assignment``: build a student copy, grade submissions, make the Gradescope autograder.

Instructor: ``list``, ``build OUT_DIR``, ``grade SUBMISSION``, ``autograder OUT.zip``.
Student (inside a copy): ``status``, ``submit``.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    from ._common import finite_float

    p = sub.add_parser(name, help="build a student copy of the project, grade submissions, make a Gradescope autograder")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    b = verbs.add_parser("build", help="write the student copy and the grading manifest, then check both with the grader")
    b.add_argument("out_dir")
    b.add_argument("--tasks", nargs="+", help="task ids to strip (default: all); see `twins-np assignment list`")
    b.add_argument("--manifest", help="where to write the grading manifest (default: build/assignment/manifest.json here)")
    b.add_argument("--config", help="points, hidden tests and time limits (default: assignment.toml here, if any)")
    b.set_defaults(func=run_build)
    g = verbs.add_parser("grade", help="grade a submission (folder or zip): its code runs sandboxed, on hidden inputs")
    g.add_argument("submission", help="the student's project folder, or the zip made by `assignment submit`")
    g.add_argument("--manifest", help="the grading manifest written by `build` (default: build/assignment/manifest.json)")
    g.add_argument("--tasks", nargs="+")
    g.add_argument("--timeout", type=finite_float, help="seconds per task (default: the manifest's)")
    g.add_argument("--jobs", type=int, help="tasks graded at once (default: the number of cores)")
    g.add_argument("--seed", type=int, help="the secret seed of the inputs (default: a new one; give one to repeat a run)")
    g.add_argument("--json", default=None, help="also write the grade as JSON to this file")
    g.add_argument("--gradescope", default=None, help="also write Gradescope's results.json to this file")
    g.add_argument("--verbose", "-v", action="store_true", help="after the line per task, every failed check, note and flag")
    g.set_defaults(func=run_grade)
    a = verbs.add_parser("autograder", help="write the zip Gradescope's autograder expects (setup.sh, run_autograder)")
    a.add_argument("out_zip")
    a.add_argument("--manifest", help="the grading manifest written by `build` (default: build/assignment/manifest.json)")
    a.add_argument("--timeout", type=finite_float, default=600, help="seconds for the whole grading run (default 600)")
    a.set_defaults(func=run_autograder)
    ls = verbs.add_parser("list", help="list the assignments and their tasks, points and suggested hours")
    ls.add_argument("--config", help="your assignment.toml (default: assignment.toml here, if any)")
    ls.set_defaults(func=run_list)
    st = verbs.add_parser("status", help="(in a student copy) which tasks pass")
    st.add_argument("dir", nargs="?", default=".")
    st.add_argument("--verbose", "-v", action="store_true", help="after the line per task, its failing tests and why")
    st.set_defaults(func=run_status)
    sm = verbs.add_parser("submit", help="(in a student copy) zip the files to hand in")
    sm.add_argument("dir", nargs="?", default=".")
    sm.add_argument("--out", help="the zip to write (default: submission.zip in the copy)")
    sm.set_defaults(func=run_submit)


def _clean_exit(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """File-system faults (read-only or full disk, a file where a folder should be) and bad
    input end the command with one line and exit status 2, not a traceback."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from ..course.extras import MissingPackages
        from ..course.manifest import GradingError

        try:
            return run(args)
        except (OSError, ValueError, GradingError, MissingPackages) as e:
            what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename else str(e)
            print(f"twins-np assignment {args.verb}: error: {what}", file=sys.stderr)
            return 2

    return wrapper


def _width(tasks: Iterable[str]) -> int:
    """The task column's width: the longest task id and a space (at least 20, as before)."""
    return max([20, *(len(t) + 1 for t in tasks)])


@_clean_exit
def run_list(args: argparse.Namespace) -> int:
    from ..course.assignments import load_course
    from ..course.build import load_config
    from ..course.manifest import instructor_root
    from ..course.tasks import ASSIGNMENT_TASKS

    course = load_course(load_config(args.config, instructor_root()))
    w = _width(ASSIGNMENT_TASKS)
    for a in course.assignments.values():
        code = sum(course.points[t] for t in a.tasks)
        print(f"{a.key}: {a.title}  ({code:g} points of code, {len(a.questions)} written questions for "
              f"{a.manual_points:g} points; handout handouts/{a.name}.md)")  # fmt: skip
        for name in a.tasks:
            task = ASSIGNMENT_TASKS[name]
            print(f"  {name:<{w}} {course.points[name]:>4g} pts {course.hours[name]:>4g} h  {task.title}  ({task.doc})")
    return 0


@_clean_exit
def run_build(args: argparse.Namespace) -> int:
    from ..course.build import build
    from ..course.manifest import default_manifest

    t0 = time.perf_counter()
    where = build(args.out_dir, tasks=args.tasks, manifest=args.manifest, config=args.config)
    w = _width(where)
    for task, files in where.items():
        print(f"{task:<{w}} stripped in {', '.join(files) if files else '(no region found)'}")
    print(f"student copy written to {args.out_dir} (its STUDENT.md is the handout)")
    print(f"grading manifest: {args.manifest or default_manifest()}; self-check passed: the reference scores full "
          f"marks, the untouched copy 0 ({time.perf_counter() - t0:.0f} s)")
    return 0


@_clean_exit
def run_grade(args: argparse.Namespace) -> int:
    from ..course import grader, runner
    from ..course.autograder import gradescope_results
    from ..course.manifest import GradingError, default_manifest, load_manifest

    t0 = time.perf_counter()
    manifest = load_manifest(args.manifest or default_manifest())
    try:
        results = grader.grade(args.submission, manifest, args.tasks, timeout=args.timeout, jobs=args.jobs, seed=args.seed)
    except GradingError as e:
        if args.gradescope:  # Gradescope shows this to the student instead of an empty result
            _write(args.gradescope, {"score": 0.0, "execution_time": round(time.perf_counter() - t0, 2), "output": str(e),
                                     "visibility": "visible", "tests": []})  # fmt: skip
        raise
    seconds = time.perf_counter() - t0
    summary = grader.summary(results, manifest)
    w = _width(r.task for r in results)
    for r in results:  # one line per task first: points and why
        print(f"{r.task:<{w}} {r.line}")
    print(f"{'total':<{w}} {summary['score']:.2f} / {summary['max_score']:g}  ({summary['percent']:.0f} %, {seconds:.0f} s)")
    manual = summary["manual"]
    if manual["questions"]:
        print(f"{'written':<{w}} {len(manual['questions'])} questions for {manual['points']:g} points, graded by hand "
              f"({', '.join(q['answers'] for q in manual['assignments'])})")  # fmt: skip
    details = []
    for r in results:  # then the details (not when every check failed for the reason on the task's line)
        hidden = [c for c in r.failed if c.visibility == "hidden"]
        same = len(r.failed) == r.total and len({c.reason for c in r.failed}) == 1 and r.failed[0].reason in r.line
        lines = [] if same else [f"    FAILED {c.name}: {c.reason}" for c in r.failed if c.visibility == "visible"]
        lines += [f"    {len(hidden)} hidden checks failed"] if hidden and not same else []
        lines += [f"    note: {n}" for n in r.notes] + [f"    REVIEW {f}" for f in r.review]
        if lines:
            details.append(f"\n{r.task}:\n" + "\n".join(lines))
    if args.verbose:
        print("".join(details))
    elif details:
        print(f"(--verbose: the failed checks, notes and review flags of {len(details)} task(s))")
    box = runner.sandbox()
    print(f"\nsandbox: {box.describe()}")
    if not box.namespaces:  # then only file permissions keep the solutions from the workers
        from ..course.manifest import instructor_root

        mine = [instructor_root() / "twins_np", pathlib.Path(manifest["_path"])]
        seen = runner.exposed(mine) if box.root else [str(p) for p in mine]
        if seen:
            print(f"WARNING: the workers can read {', '.join(seen)} (solutions, manifest): "
                  + ("chmod 700 the project, or " if box.root else "grade as root in a container, or ")
                  + "grade where namespaces work (docs/instructors.md, threat model)", file=sys.stderr)  # fmt: skip
    if args.json:
        _write(args.json, summary)
    if args.gradescope:
        _write(args.gradescope, gradescope_results(results, manifest, seconds))
    return 1 if summary["errors"] else 0


def _write(path: str, data: dict[str, Any]) -> None:
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@_clean_exit
def run_autograder(args: argparse.Namespace) -> int:
    from ..course.autograder import gradescope_outline, write_autograder
    from ..course.grader import manual_questions
    from ..course.manifest import default_manifest, load_manifest

    manifest_path = args.manifest or default_manifest()
    files = write_autograder(args.out_zip, manifest_path, timeout=args.timeout)
    manifest = load_manifest(manifest_path)
    outline = pathlib.Path(args.out_zip).with_suffix(".outline.md")
    outline.write_text(gradescope_outline(manifest))
    manual = manual_questions(manifest)
    auto = sum(float(t["points"]) for t in manifest["tasks"].values())
    print(f"Gradescope autograder written to {args.out_zip} ({len(files)} files); upload it under 'Configure Autograder'")
    if manual["questions"]:
        print(f"the assignment's outline: the autograder, {auto:g} points, and {len(manual['questions'])} questions graded by "
              f"hand, {manual['points']:g} points ({', '.join(q['id'] for q in manual['questions'])}): {outline}")  # fmt: skip
    return 0


@_clean_exit
def run_status(args: argparse.Namespace) -> int:
    from ..course.student import status

    res = status(args.dir)
    w = _width(res)
    for task, r in res.items():  # one line per task
        mark = "done" if r["passed"] == r["total"] and r["total"] else "todo"
        why = f"  first failing: {r['failed'][0]}" if r["failed"] and mark == "todo" and r["passed"] else ""
        print(f"{task:<{w}} {mark}  {r['passed']}/{r['total']} tests pass{why}")
    done = sum(r["passed"] == r["total"] and r["total"] > 0 for r in res.values())
    print(f"{'total':<{w}} {done} of {len(res)} tasks done")
    if args.verbose:
        for task, r in res.items():
            if r["failed"]:
                print(f"\n{task}:")
                print("\n".join(f"    FAILED {t}" + (f": {r['reasons'][t]}" if r["reasons"].get(t) else "") for t in r["failed"]))
    elif any(r["failed"] for r in res.values()):
        print("(--verbose: every failing test and why; python -m pytest -m TASK runs one task's tests)")
    return 0 if all(r["passed"] == r["total"] for r in res.values()) else 1


@_clean_exit
def run_submit(args: argparse.Namespace) -> int:
    from ..course.student import submit

    dest, files = submit(args.dir, args.out)
    print(f"wrote {dest} with {len(files)} files: {', '.join(files)}")
    return 0
