"""Tests of twins_np.functional.normal_cdf: the rational Phi behind the float32 GELU.

The claims of the module docstring, measured: the fitted erf's relative error, the
float32 GELU's error envelope next to PyTorch's own, the special values, and that
float64 and CuPy keep scipy's / cupyx's erf.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest
from scipy.special import erf

from twins_np import functional as F
from twins_np.functional import normal_cdf as N

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A dense grid over the range where GELU's inputs live, and past the clamp at 4 sqrt(2).
GRID = np.linspace(-8.0, 8.0, 1_600_001).astype(np.float32)


def _exact_gelu(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 * 0.5 * (1.0 + erf(x64 / math.sqrt(2.0)))


def _envelope(approx: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(max |err| / |x| over all x, max |err| in float32 ulps of the result over x >= 0)."""
    exact = _exact_gelu(x)
    err = np.abs(approx.astype(np.float64) - exact)
    per_x = float(np.max(err / np.maximum(np.abs(x.astype(np.float64)), 1e-30)))
    ulps = err / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return per_x, float(np.max(ulps[x >= 0]))


def test_fitted_erf_relative_error():
    """The coefficients as fitted (float64) reach the 2.1e-9 the docstring states."""
    u = np.linspace(1e-4, 4.0, 200_001)
    t = u * u
    approx = u * np.polynomial.polynomial.polyval(t, N._ERF_P) / np.polynomial.polynomial.polyval(t, N._ERF_Q)
    assert np.max(np.abs(approx / erf(u) - 1.0)) < 2.1e-9


def test_gelu_float32_error_envelope():
    out, _ = F.gelu_forward(GRID)
    per_x, ulps = _envelope(out, GRID)
    assert per_x < 3.0e-7  # measured 2.9e-7
    assert ulps <= 4.0  # measured 3.3


@pytest.mark.parity
def test_gelu_float32_as_accurate_as_torch():
    torch = pytest.importorskip("torch")
    ours, _ = F.gelu_forward(GRID)
    theirs = torch.nn.functional.gelu(torch.from_numpy(GRID)).numpy()
    ours_x, ours_ulps = _envelope(ours, GRID)
    torch_x, torch_ulps = _envelope(theirs, GRID)
    assert ours_x <= torch_x and ours_ulps <= torch_ulps


def test_phi_stays_a_probability_and_special_values():
    phi = N.normal_cdf(GRID)
    assert phi.dtype == np.float32
    assert phi.min() == 0.0 and phi.max() == 1.0  # clipped, never a hair outside
    special = N.normal_cdf(np.array([np.nan, -np.inf, np.inf, 0.0, -0.0, 1e-40], dtype=np.float32))
    assert np.isnan(special[0])
    np.testing.assert_array_equal(special[1:], np.array([0.0, 1.0, 0.5, 0.5, 0.5], dtype=np.float32))


def test_float64_keeps_scipy_erf():
    x = np.linspace(-9.0, 9.0, 10_001)
    np.testing.assert_array_equal(N.normal_cdf(x), (1.0 + erf(x * (1.0 / math.sqrt(2.0)))) * 0.5)


@pytest.mark.slow
def test_fit_tool_reproduces_the_coefficients():
    spec = importlib.util.spec_from_file_location("fit_erf", ROOT / "tools" / "fit_erf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p, q, rel = mod.fit()
    np.testing.assert_allclose(p, N._ERF_P, rtol=1e-6)
    np.testing.assert_allclose(q, N._ERF_Q, rtol=1e-6)
    assert rel < 2.1e-9


@pytest.mark.gpu
def test_cupy_matches_numpy(xp):
    if xp is np:
        pytest.skip("the CuPy case")
    for dtype in (np.float32, np.float64):
        x = GRID[::97].astype(dtype)
        gpu = xp.asnumpy(N.normal_cdf(xp.asarray(x)))
        assert gpu.dtype == dtype
        np.testing.assert_allclose(gpu, N.normal_cdf(x), rtol=0, atol=4e-7 if dtype == np.float32 else 1e-15)
