"""The student's commands, run inside a student copy: ``assignment status`` and ``submit``.

``status`` runs the copy's own tests that reach each task's code (``assignment.json`` lists
them; :mod:`twins_np.course.build` found them) on the student's code, in one pytest run;
``submit`` zips exactly the files to hand in. Neither needs the instructor's material.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

from .build import REPORT_PLUGIN, STUDENT_MANIFEST
from .extras import require

__all__ = ["STUDENT_MANIFEST", "status", "submit"]


def _student_root(path: str | os.PathLike) -> tuple[pathlib.Path, dict[str, Any]]:
    root = pathlib.Path(path).resolve()
    try:
        return root, json.loads((root / STUDENT_MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{root} is not a student copy (no {STUDENT_MANIFEST}); run this in your copy's folder") from None


def status(path: str | os.PathLike = ".", timeout: float = 600) -> dict[str, dict[str, Any]]:
    """Run each task's tests in a student copy, in one pytest run of the copy's own tests.

    Returns ``{task: {"passed", "total", "failed": [test ids], "reasons": {test id: one line}}}``
    (visible tests only).
    """
    root, info = _student_root(path)
    require("student", "assignment status")
    tests = sorted({t for v in info["tasks"].values() for t in v["tests"]})
    got: dict[str, str] = {}
    reasons: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp_name:  # the report plugin stays out of the student's tree
        tmp = pathlib.Path(tmp_name)
        (tmp / "_twins_np_grader_report.py").write_text(REPORT_PLUGIN)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH")}
        env.update(PYTHONPATH=f"{root}{os.pathsep}{tmp}", TWINS_NP_GRADER_REPORT=str(tmp / "r.jsonl"), TQDM_DISABLE="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_twins_np_grader_report", *tests]
        subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        if (tmp / "r.jsonl").exists():
            for line in (tmp / "r.jsonl").read_text().splitlines():
                r = json.loads(line)
                if r["outcome"] != "passed" or r["test"] not in got:
                    got[r["test"]] = r["outcome"]
                    if r.get("reason"):
                        reasons[r["test"]] = " ".join(str(r["reason"]).split())[:200]
    res = {}
    for task, v in info["tasks"].items():
        failed = [t for t in v["tests"] if got.get(t) != "passed"]
        res[task] = {
            "passed": len(v["tests"]) - len(failed),
            "total": len(v["tests"]),
            "failed": failed,
            "reasons": {t: reasons.get(t, "not run") for t in failed},
        }
    return res


def submit(path: str | os.PathLike = ".", out: str | os.PathLike | None = None) -> tuple[pathlib.Path, list[str]]:
    """Zip the files a student hands in (those holding the tasks, and the written answers) into ``submission.zip``.

    Returns (the zip's path, the files). Raises FileNotFoundError when one is missing.
    """
    root, info = _student_root(path)
    files = sorted({f for v in info["tasks"].values() for f in v["files"]})
    # the written answers (graded by hand) go with the code
    files += sorted({a["answers"] for a in info.get("assignments", {}).values() if a.get("answers")})
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot hand in: {', '.join(missing)} missing from {root}")
    dest = pathlib.Path(out) if out else root / "submission.zip"
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(root / f, f)
    return dest, files
