"""``twins-np assignment build OUT_DIR`` and ``twins-np assignment grade [DIR]``."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="build a student copy of the project, or grade one")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    b = verbs.add_parser("build", help="write the student copy (solution regions replaced by NotImplementedError)")
    b.add_argument("out_dir")
    b.add_argument("--tasks", nargs="+", help="task ids to strip (default: all); see `twins-np assignment list`")
    b.set_defaults(func=run_build)
    g = verbs.add_parser("grade", help="run each task's tests and print a score table")
    g.add_argument("dir", nargs="?", default=".", help="the project to grade (default: here)")
    g.add_argument("--tasks", nargs="+")
    g.add_argument("--json", default=None, help="also write the scores as JSON to this file")
    g.set_defaults(func=run_grade)
    ls = verbs.add_parser("list", help="list the tasks")
    ls.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    from ..assignments import TASKS

    for name, task in TASKS.items():
        print(f"{name:<20} {task.title}  ({task.doc})")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from ..assignments import build

    where = build(args.out_dir, tasks=args.tasks)
    for task, files in where.items():
        print(f"{task:<20} stripped in {', '.join(files) if files else '(no region found)'}")
    print(f"student copy written to {args.out_dir}; run `pytest -m TASK` there to check one task")
    return 0


def run_grade(args: argparse.Namespace) -> int:
    from ..assignments import grade

    res = grade(args.dir, args.tasks, args.json)
    print(f"{'task':<20}{'passed':>8}{'failed':>8}{'skipped':>9}{'score':>8}")
    for task, r in res.items():
        print(f"{task:<20}{r['passed']:>8}{r['failed']:>8}{r['skipped']:>9}{100 * r['score']:>7.0f}%")
    total = sum(r["score"] for r in res.values()) / max(len(res), 1)
    print(f"{'overall':<20}{'':>25}{100 * total:>7.0f}%")
    return 0
