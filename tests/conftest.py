"""Shared test fixtures: backends, the matplotlib backend, torch availability."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # set here only: a global MPLBACKEND would reach the notebook kernels

import os

import cupy_standin  # tests/ is on sys.path (rootdir conftest); the module imports no twins_np
import numpy as np
import pytest


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test; the cupy case is skipped without a GPU."""
    if request.param == "cupy":
        from twins_np.backend import cupy_available

        if not cupy_available():
            pytest.skip("CuPy with a CUDA GPU is not available")
        import importlib

        return importlib.import_module("cupy")
    return np


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def pytest_addoption(parser):
    parser.addoption(
        "--cupy-standin",
        action="store_true",
        default=os.environ.get(cupy_standin.ENV_VAR) == "1",
        help="without a GPU, run the gpu tests on the strict NumPy-backed CuPy stand-in "
        f"(tests/cupy_standin.py; also {cupy_standin.ENV_VAR}=1): proves device placement, not GPU numerics",
    )


def pytest_configure(config):
    """Install the CuPy stand-in if asked (before twins_np is imported); register task markers.

    In a student copy (it has an assignment.json), stop unless the imported twins_np is the
    copy's own: tests run against an installed twins_np would check its solutions instead.
    """
    if config.getoption("--cupy-standin"):
        cupy_standin.install()
    import pathlib

    import twins_np
    from twins_np.course.build import STUDENT_MANIFEST
    from twins_np.course.tasks import ASSIGNMENT_TASKS

    root = pathlib.Path(__file__).resolve().parents[1]
    if (root / STUDENT_MANIFEST).exists() and pathlib.Path(twins_np.__file__).resolve().parents[1] != root:
        pytest.exit(f"these tests would check {twins_np.__file__}, not this copy's twins_np/: "
                    f"run `python -m pytest` inside {root} (its pytest.ini puts it first on the path)", returncode=4)  # fmt: skip
    if (root / STUDENT_MANIFEST).exists():
        # the tasks are in the NumPy twins; the fused CPU kernels would answer without the student's code
        twins_np.cpu_kernels(False)

    for name, task in ASSIGNMENT_TASKS.items():
        config.addinivalue_line("markers", f"{name}: assignment task - {task.title}")


def pytest_collection_modifyitems(config, items):
    """Attach each assignment task's marker to its tests, so `pytest -m lsa_backward` grades one task."""
    from twins_np.course.tasks import task_of_test

    for item in items:
        for task in task_of_test(item.nodeid):
            item.add_marker(getattr(pytest.mark, task))


def pytest_report_header(config):
    if cupy_standin.is_active():
        return (
            "cupy: strict NumPy-backed stand-in (proves which arrays live where and which APIs are called; "
            "not GPU numerics or speed)"
        )
    return None
