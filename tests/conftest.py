"""Shared test fixtures: backends, the matplotlib backend, torch availability."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # set here only: a global MPLBACKEND would reach the notebook kernels

import numpy as np
import pytest

from twins_np.backend import cupy_available


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test; the cupy case is skipped without a GPU."""
    if request.param == "cupy":
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
