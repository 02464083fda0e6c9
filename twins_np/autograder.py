"""The zip Gradescope's autograder expects: ``setup.sh``, ``run_autograder`` and the instructor's copy.

Gradescope unpacks the zip to ``/autograder/source``, runs ``setup.sh`` once to build the
image, then, for each submission, ``run_autograder``, which must leave
``/autograder/results/results.json``. Here ``run_autograder`` grades
``/autograder/submission`` with :mod:`twins_np.grader` (sealed: only the solution files are
taken from it), under a time limit for the whole run, and writes a results file even when
grading fails. ``TWINS_NP_AUTOGRADER_ROOT`` replaces ``/autograder`` (the tests run it in a
temporary folder laid out the same way).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import zipfile

# what the grading needs from the instructor's project (no notebooks, docs or benchmarks)
_SOURCE = ("twins_np/", "tests/", "pytest.ini", "setup.cfg", "pyproject.toml", "conftest.py")
# the runtime and test dependencies; no torch: the grader blocks it and the frozen tests do not need it
_REQUIREMENTS = ("numpy", "scipy", "matplotlib", "tqdm", "scikit-learn", "pytest", "hypothesis")

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3 python3-pip
fi
python3 -m pip install --no-cache-dir -r requirements.txt || \\
    python3 -m pip install --no-cache-dir --break-system-packages -r requirements.txt
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission; it must leave results/results.json.
ROOT="${{TWINS_NP_AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{TWINS_NP_PYTHON:-python3}}"
mkdir -p "$ROOT/results"
cd "$ROOT/source" || exit 1
timeout --kill-after=10 {timeout:g} "$PYTHON" -m twins_np assignment grade "$ROOT/submission" \\
    --manifest manifest.json --gradescope "$ROOT/results/results.json"
status=$?
if [ ! -s "$ROOT/results/results.json" ]; then
    printf '{{"score": 0.0, "execution_time": 0, "visibility": "visible", "tests": [], "output": "%s"}}\\n' \\
        "The grader stopped without a result (exit status $status, time limit {timeout:g} s)." > "$ROOT/results/results.json"
fi
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
        manifest: the grading manifest written by :func:`twins_np.assignments.build`.
        timeout: seconds for one submission's whole grading run.
        root: the instructor's copy (default: the project this package comes from).
    """
    from .assignments import _project_files
    from .grader import instructor_root, load_manifest

    root = root or instructor_root()
    data = load_manifest(manifest)  # refuses a missing or stale manifest before writing anything
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
        for path in _project_files(root):
            rel = path.relative_to(root).as_posix()
            if any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in _SOURCE) and "__pycache__" not in rel:
                add(rel, path.read_bytes())
    return names
