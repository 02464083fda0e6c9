"""The grading manifest: what :mod:`twins_np.course.build` writes and the grader reads.

One JSON file, the instructor's (keep it out of students' reach: it holds no solution, but
the hidden checks' names and the stubs the grader falls back on). Its content:

- ``version``, ``timeout`` (seconds per task), ``time_factor`` and ``time_slack`` (a case may
  take ``time_factor`` x the reference's time + ``time_slack`` seconds), ``hidden_visibility``,
  ``limits`` (the worker's memory, processes, file size and open files);
- ``library``: the student copy's ``twins_np`` with every task stripped (assigned or not),
  relative path -> text: the library the worker imports;
- ``functions``: task -> its functions (``"module:function"``) that other tasks may call:
  in a worker they are proxies, in the reference process their calls are recorded;
- ``scrub``: hashes of runs of tokens of the solution regions: a message quoting them is
  withheld from feedback;
- ``tasks``: per task its ``title``, ``doc``, ``points``, ``visibility``, ``files`` (what a
  student hands in), ``stubs`` (their stripped text, graded when a file is missing),
  ``modules`` (the files as module names), ``checks`` (check name -> "visible" or "hidden"), ``review`` (names whose use the
  static review flags) and optionally its own ``timeout``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

__all__ = ["MANIFEST_VERSION", "GradingError", "default_manifest", "instructor_root", "load_manifest"]

MANIFEST_VERSION = 2


class GradingError(Exception):
    """The submission cannot be graded at all (not a submission, unreadable manifest)."""


def instructor_root() -> pathlib.Path:
    """The instructor's copy: the project this very package was imported from."""
    return pathlib.Path(__file__).resolve().parents[2]


def default_manifest(root: pathlib.Path | None = None) -> pathlib.Path:
    """Where ``build`` keeps the grading manifest by default: in the instructor's project."""
    return (root or instructor_root()) / "build" / "assignment" / "manifest.json"


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read a manifest; ``"_path"`` is added (the grader hides the file from workers).

    Raises:
        GradingError: no file, not JSON, or another version.
    """
    try:
        manifest = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GradingError(f"cannot read the grading manifest {path}: {e}; run `twins-np assignment build` first") from e
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise GradingError(f"{path} is not a twins-np grading manifest of version {MANIFEST_VERSION}; rebuild the assignment")
    manifest["_path"] = str(pathlib.Path(path).resolve())
    return manifest
