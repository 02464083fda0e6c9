"""The CuPy stand-in is strict where real CuPy is strict (tests/cupy_standin.py).

These run on every machine (no ``gpu`` marker): they check the stand-in itself, built
without installing it, so the rest of the session keeps its real (or absent) cupy.
"""

from __future__ import annotations

import pickle

import cupy_standin
import numpy as np
import pytest

cp = cupy_standin.build_modules()["cupy"]
special = cupy_standin.build_modules()["cupyx.scipy.special"]


def test_implicit_host_conversion_is_refused():
    g = cp.asarray(np.arange(6.0).reshape(2, 3))
    for convert in (np.asarray, np.array, lambda a: np.ascontiguousarray(a), lambda a: np.testing.assert_allclose(a, 0)):
        with pytest.raises(TypeError):
            convert(g)
    np.testing.assert_array_equal(g.get(), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(cp.asnumpy(g), g.get())


def test_mixing_host_and_device_is_refused():
    g, h = cp.ones((2, 3)), np.ones((2, 3))
    for mix in (
        lambda: g + h,
        lambda: h + g,
        lambda: h * g,
        lambda: g @ h.T,
        lambda: cp.matmul(g, h.T),
        lambda: cp.exp(h),
        lambda: cp.concatenate([g, h]),
        lambda: np.concatenate([g, h]),
        lambda: cp.where(h > 0, g, 0.0),
        lambda: special.erf(h),
    ):
        with pytest.raises(TypeError):
            mix()


def test_device_only_work_stays_on_the_device():
    g = cp.asarray(np.linspace(-1, 1, 12).reshape(3, 4), dtype=np.float32)
    out = (cp.exp(g) * 2.0 + g.T.T).sum(axis=-1, keepdims=True)
    assert isinstance(out, cp.ndarray) and out.dtype == np.float32 and out.shape == (3, 1)
    # NumPy functions on device arrays alone dispatch to the CuPy function, as in CuPy
    assert isinstance(np.concatenate([g, g]), cp.ndarray)
    assert isinstance(np.exp(g), cp.ndarray)
    # reductions give 0-d device arrays; float() is an explicit, synchronising read
    s = g.sum()
    assert isinstance(s, cp.ndarray) and s.ndim == 0 and isinstance(float(s), float)
    # host values may be written into a device array (an explicit copy in CuPy too)
    g[0] = np.zeros(4, np.float32)
    assert float(abs(g[0]).sum()) == 0.0
    assert isinstance(pickle.loads(pickle.dumps(g)), cp.ndarray)


def test_numpy_only_functions_are_refused():
    g = cp.zeros(4)
    with pytest.raises(TypeError):
        np.add.at(g, cp.asarray(np.array([0, 1])), 1.0)  # CuPy has no ufunc.at dispatch here
    with pytest.raises(TypeError):
        np.nditer(g)
    for name in ("errstate", "nditer", "ndindex", "add_at", "lib"):
        assert not hasattr(cp, name)
    with pytest.raises(AttributeError):
        g.tofile  # noqa: B018 - not on the allow-list


def test_cuda_kernels_refuse_clearly():
    kernel = cp.RawModule(code='extern "C" __global__ void f() {}').get_function("f")
    with pytest.raises(cupy_standin.StandinUnsupported, match="cannot run CUDA code"):
        kernel((1,), (1,), ())
    assert cp.cuda.is_available() and cp.__twins_np_standin__
