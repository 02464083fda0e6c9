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


def test_each_implicit_conversion_behaves_as_in_cupy():
    """Python's conversion protocol on a device array, as cupy/_core/core.pyx defines it.

    Refused: anything that needs ``__array__`` (NumPy functions, NumPy scalars' constructors,
    indexing a host array), a device array as a Python index (CuPy has no ``__index__``),
    ``float``/``int``/``complex``/``bool`` of several elements, ``len`` and iteration of a
    0-d array. Allowed, as explicit synchronising reads: ``float``/``int``/``bool`` of one
    element, ``item()``, ``tolist()`` (host Python objects); iteration yields device arrays.
    """
    import operator
    import warnings

    many = cp.asarray(np.arange(6.0).reshape(2, 3))
    one = cp.asarray(np.array(2.5))
    index = cp.asarray(np.array(1))
    refused = {
        "np.asarray": (lambda: np.asarray(one), TypeError),
        "np.array": (lambda: np.array(many), TypeError),
        "np.float32(a)": (lambda: np.float32(one), TypeError),
        "np.array([a, a])": (lambda: np.array([one, one]), TypeError),
        "host[a]": (lambda: np.arange(3)[index], TypeError),
        "host[...] = a": (lambda: np.zeros((2, 3)).__setitem__(Ellipsis, many), TypeError),
        "np.zeros(a)": (lambda: np.zeros(index), TypeError),
        "operator.index": (lambda: operator.index(index), TypeError),
        "range(a)": (lambda: range(index), TypeError),
        "list[a]": (lambda: [10, 20, 30][index], TypeError),
        "float(many)": (lambda: float(many), TypeError),
        "int(many)": (lambda: int(many), TypeError),
        "complex(many)": (lambda: complex(many), TypeError),
        "bool(many)": (lambda: bool(many), ValueError),
        "if many": (lambda: 1 if many else 0, ValueError),
        "many.item()": (lambda: many.item(), ValueError),
        "len(0-d)": (lambda: len(one), TypeError),
        "iter(0-d)": (lambda: iter(one), TypeError),
    }
    for what, (convert, error) in refused.items():
        with pytest.raises(error):
            convert()
            pytest.fail(f"{what} was allowed")
    assert float(one) == 2.5 and isinstance(float(one), float)
    assert int(index) == 1 and bool(index) is True and one.item() == 2.5
    assert many.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and type(many.tolist()[0][0]) is float
    assert one.tolist() == 2.5 and len(many) == 2
    rows = list(many)
    assert all(isinstance(r, cp.ndarray) for r in rows) and all(isinstance(v, cp.ndarray) and v.ndim == 0 for v in rows[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bool(cp.zeros(0)) is False  # CuPy: False with a DeprecationWarning (NumPy 2 raises here)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
