"""Gradescope: the autograder zip, and the ``results.json`` it leaves.

Gradescope unpacks the zip to ``/autograder/source``, runs ``setup.sh`` once to build the
image, then, for each submission, ``run_autograder``, as root, which must leave
``/autograder/results/results.json``. Here ``run_autograder``:

1. makes ``source/`` (the instructor's project, with the solutions, and the manifest)
   readable by root only, and removes any ``results.json`` already there;
2. grades ``/autograder/submission`` with :mod:`twins_np.course.grader`, under a time limit
   for the whole run, writing the results into a folder of its own (made with ``mktemp -d``,
   root's only); the workers run as ``nobody``;
3. copies that file, and only that file, to ``results/results.json``, or writes a zero
   result that says why when grading produced none. A ``results.json`` it did not write
   itself never stays.

``TWINS_NP_AUTOGRADER_ROOT`` replaces ``/autograder`` (the tests run it in a temporary
folder laid out the same way) and ``TWINS_NP_PYTHON`` the Python.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import zipfile
from typing import Any

from .build import project_files
from .grader import TaskResult, manual_questions
from .manifest import instructor_root, load_manifest

__all__ = ["RUN_AUTOGRADER", "SETUP_SH", "gradescope_outline", "gradescope_results", "write_autograder"]

# what the grading needs from the instructor's project (no tests, notebooks, docs or benchmarks)
_SOURCE = ("twins_np/", "setup.cfg", "pyproject.toml")
# the runtime dependencies; no torch: grading blocks it, and no pytest: grading runs none
_REQUIREMENTS = ("numpy", "scipy", "matplotlib", "tqdm", "scikit-learn")

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3 python3-pip
fi
# twins-np needs Python 3.11+ (setup.cfg); Gradescope's Ubuntu 24.04 base image has 3.12, its 22.04 one 3.10
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "twins-np needs Python 3.11 or newer, this image has $(python3 -V 2>&1): choose the Ubuntu 24.04 base image" >&2
    exit 1
fi
python3 -m pip install --no-cache-dir -r requirements.txt || \\
    python3 -m pip install --no-cache-dir --break-system-packages -r requirements.txt
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission, as root; it must leave results/results.json.
ROOT="${{TWINS_NP_AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{TWINS_NP_PYTHON:-python3}}"
mkdir -p "$ROOT/results"
rm -f "$ROOT/results/results.json"
if [ "$(id -u)" = 0 ]; then
    chown -R root "$ROOT/source" "$ROOT/results"
    chmod -R go-rwx "$ROOT/source"    # the solutions and the manifest: root only
    chmod 755 "$ROOT/results"         # the workers (user nobody) cannot write here
fi
PRIVATE="$(mktemp -d)"                # the grader's results, until they are checked
cd "$ROOT/source" || exit 1
timeout --kill-after=10 {timeout:g} "$PYTHON" -m twins_np assignment grade "$ROOT/submission" \\
    --manifest manifest.json --gradescope "$PRIVATE/results.json"
status=$?
rm -f "$ROOT/results/results.json"   # not written by this script: refused
if [ -s "$PRIVATE/results.json" ]; then
    cp "$PRIVATE/results.json" "$ROOT/results/results.json"
else
    printf '{{"score": 0.0, "execution_time": 0, "visibility": "visible", "tests": [], "output": "%s"}}\\n' \\
        "The grader stopped without a result (exit status $status, time limit {timeout:g} s)." > "$ROOT/results/results.json"
fi
rm -rf "$PRIVATE"
# the grade is in results.json; a non-zero status here would only hide it behind Gradescope's error page
exit 0
"""


def _requirements() -> str:
    lines = []
    for name in _REQUIREMENTS:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(name)
    return "\n".join(lines) + "\n"


def write_autograder(
    out_zip: str | os.PathLike, manifest: str | os.PathLike, timeout: float = 600, root: pathlib.Path | None = None
) -> list[str]:
    """Write the autograder zip; returns the names in it.

    Args:
        out_zip: the zip to write.
        manifest: the grading manifest written by :func:`twins_np.course.build.build`.
        timeout: seconds for one submission's whole grading run.
        root: the instructor's copy (default: the project this package comes from).
    """
    root = root or instructor_root()
    data = load_manifest(manifest)  # refuses a missing or stale manifest before writing anything
    data.pop("_path", None)
    names = []
    with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_DEFLATED) as z:

        def add(name: str, text: str | bytes, mode: int = 0o644) -> None:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, text)
            names.append(name)

        add("setup.sh", SETUP_SH, 0o755)
        add("run_autograder", RUN_AUTOGRADER.format(timeout=timeout), 0o755)
        add("requirements.txt", _requirements())
        add("manifest.json", json.dumps(data, indent=1, sort_keys=True) + "\n")
        for path in project_files(root):
            rel = path.relative_to(root).as_posix()
            if any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in _SOURCE) and "__pycache__" not in rel:
                add(rel, path.read_bytes())
    return names


def gradescope_results(results: list[TaskResult], manifest: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Gradescope's ``results.json``: one test entry per task and visibility.

    A task's hidden checks form an entry of their own whose output does not name them; its
    visibility is the manifest's ``hidden_visibility``. A task flagged by the static review
    gets an entry worth 0 points that only the instructor sees.
    """
    tests = []
    hidden_visibility = manifest.get("hidden_visibility", "after_published")
    for r in results:
        spec = manifest["tasks"][r.task]
        for vis in ("visible", "hidden"):
            mine = [c for c in r.checks if c.visibility == vis]
            if not mine:
                continue
            passed = 0 if r.status in ("timeout", "sandbox") else sum(c.passed for c in mine)
            if vis == "visible":
                lines = [f"{r.task}: {r.line}", ""]
                lines += [f"FAILED {c.name}: {c.reason}" for c in mine if not c.passed]
                lines += [f"note: {n}" for n in r.notes]
                lines += [f"{passed} of {len(mine)} checks passed."]
            else:
                lines = [f"{passed} of {len(mine)} hidden checks passed."]
            tests.append({
                "name": f"{r.task}: {r.title}" + (" (hidden checks)" if vis == "hidden" else ""),
                "score": round(r.points * passed / r.total, 4) if r.total else 0.0,
                "max_score": round(r.points * len(mine) / r.total, 4) if r.total else 0.0,
                "status": "passed" if passed == len(mine) and r.status == "ok" else "failed",
                "output": "\n".join(lines),
                "visibility": spec.get("visibility", "visible") if vis == "visible" else hidden_visibility,
            })  # fmt: skip
        if r.review:
            tests.append({"name": f"{r.task}: flagged for review", "score": 0.0, "max_score": 0.0, "status": "passed",
                          "output": "\n".join(r.review), "visibility": "hidden"})  # fmt: skip
    total = sum(r.score for r in results)
    output = f"Score {total:.2f} / {sum(r.points for r in results):g}.\n" + "\n".join(f"{r.task}: {r.line}" for r in results)
    manual = manual_questions(manifest, [r.task for r in results])
    if manual["questions"]:
        output += (f"\nWritten questions ({', '.join(q['id'] for q in manual['questions'])}: {manual['points']:g} points) "
                   "are graded by hand, apart from this score.")  # fmt: skip
    return {
        "score": round(total, 4),
        "execution_time": round(seconds, 2),
        "output": output,
        "visibility": "visible",
        "tests": tests,
    }


def gradescope_outline(manifest: dict[str, Any]) -> str:
    """What to set up on Gradescope beside the zip (Markdown): the autograder's points and, for
    manual grading, one question per written question, with its points and text."""
    auto = sum(float(t["points"]) for t in manifest["tasks"].values())
    manual = manual_questions(manifest)
    lines = ["# The assignment's outline on Gradescope", "",
             f"- **Autograder**: {auto:g} points (`autograder.zip`; one test entry per task).", ""]  # fmt: skip
    if manual["questions"]:
        lines += [f"- **Graded by hand** ({manual['points']:g} points): enable manual grading, then under *Edit Outline* add "
                  "one question per row below. Students hand in their answers in the files named here, inside "
                  "`submission.zip`; the code view shows them.", "",
                  "| question | points | answers in | text |", "|---|---|---|---|"]  # fmt: skip
        for a in manifest.get("assignments", {}).values():
            for q in a["questions"]:
                lines.append(f"| {q['id']} | {float(q['points']):g} | `{a['answers']}` | {q['text']} |")
        lines += ["", f"Total: {auto + manual['points']:g} points."]
    return "\n".join(lines) + "\n"
