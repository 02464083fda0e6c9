"""Tests of twins_np.backend: array-module dispatch, device moves, seeded host randomness, erf."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from twins_np import backend
from twins_np import functional as F
from twins_np.backend import (
    asnumpy,
    cupy_available,
    default_rng,
    device_of,
    erf,
    get_xp,
    host_normal,
    host_uniform,
    is_cupy_array,
    to_device,
)
from twins_np.gradcheck import TOLERANCES

ROOT = Path(__file__).resolve().parents[1]
needs_gpu = pytest.mark.skipif(not cupy_available(), reason="CuPy with a CUDA GPU is not available")


# --- dispatch ----------------------------------------------------------------------


def test_get_xp_numpy_and_ignores_none_and_scalars():
    a = np.zeros(3)
    assert get_xp(a) is np
    assert get_xp(None, 1.5, 3, a) is np
    assert get_xp(x=a, bias=None, scale=0.5) is np
    assert get_xp() is np
    assert get_xp(None, 2.0) is np
    assert get_xp(np.float64(1.0), a) is np


def test_numpy_arrays_are_cpu():
    a = np.ones(2)
    assert device_of(a) == "cpu"
    assert not is_cupy_array(a)
    assert asnumpy(a) is a  # a NumPy array passes through without a copy
    assert isinstance(asnumpy(3.0), np.ndarray)


# --- to_device ---------------------------------------------------------------------


def test_to_device_cpu_round_trips_containers():
    a = np.arange(6.0).reshape(2, 3)
    moved = to_device({"w": a, "pair": (a, [a, 7]), "name": "x", "none": None}, "cpu")
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)
    np.testing.assert_array_equal(moved["w"], a)
    np.testing.assert_array_equal(moved["pair"][1][0], a)
    assert moved["pair"][1][1] == 7 and moved["name"] == "x" and moved["none"] is None
    assert isinstance(to_device(a, "cpu"), np.ndarray)


def test_to_device_cpu_moves_a_module():
    from twins_np.nn import Linear

    m = Linear(4, 3, rng=0)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    out = to_device(m, "cpu")
    assert out is m
    for k, v in m.state_dict().items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("device", ["cuda", "GPU", "", None, 0])
def test_to_device_bad_name_raises(device):
    with pytest.raises(ValueError, match="device must be 'cpu' or 'gpu'"):
        to_device(np.zeros(2), device)


def test_to_device_gpu_without_gpu_raises():
    if cupy_available():
        pytest.skip("a GPU is present: the no-GPU error cannot be shown here")
    with pytest.raises(RuntimeError, match="needs CuPy and a CUDA GPU"):
        to_device(np.zeros(2), "gpu")


# --- randomness --------------------------------------------------------------------


def test_host_normal_is_seeded_and_typed():
    a = host_normal(np.random.default_rng(5), (3, 4))
    b = host_normal(np.random.default_rng(5), (3, 4))
    c = host_normal(np.random.default_rng(6), (3, 4))
    assert a.dtype == np.float32 and a.shape == (3, 4) and isinstance(a, np.ndarray)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = host_normal(np.random.default_rng(5), (3, 4), dtype=np.float64)
    assert d.dtype == np.float64
    np.testing.assert_array_equal(d.astype(np.float32), a)  # the same stream, only cast


def test_host_uniform_is_seeded_and_in_unit_interval():
    a = host_uniform(np.random.default_rng(7), (1000,), dtype=np.float64)
    np.testing.assert_array_equal(a, host_uniform(np.random.default_rng(7), (1000,), dtype=np.float64))
    assert a.min() >= 0.0 and a.max() < 1.0


def test_default_rng_passes_generators_through():
    g = np.random.default_rng(0)
    assert default_rng(g) is g
    assert default_rng(3).random() == np.random.default_rng(3).random()


# --- erf and fuse ------------------------------------------------------------------


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-6.0, 6.0, 241), [0.0, 1e-8, -1e-300, 30.0, -30.0]])
    ref = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(erf(x) - ref)) <= 2e-16
    y = erf(x.astype(np.float32))
    assert y.dtype == np.float32
    assert np.max(np.abs(y - ref)) < 1e-6


def test_fuse_runs_on_numpy():
    @backend.fuse()
    def axpy(a, x, y):
        return a * x + y

    x, y = np.arange(4.0), np.ones(4)
    out = axpy(2.0, x, y)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, 2.0 * x + 1.0)


def test_helpers_without_gpu():
    if cupy_available():
        pytest.skip("a GPU is present")
    assert backend.gpu_description() is None
    backend.synchronize()  # a no-op, must not raise


# --- GPU: CuPy vs NumPy for a few ops, and the mixed-array error -------------------


def _rel(a, b) -> float:
    a, b = asnumpy(a).astype(np.float64), asnumpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.gpu
@needs_gpu
def test_cupy_round_trip():
    import cupy

    a = np.arange(6.0).reshape(2, 3)
    g = to_device({"a": a}, "gpu")["a"]
    assert isinstance(g, cupy.ndarray) and device_of(g) == "gpu" and is_cupy_array(g)
    assert get_xp(g) is cupy
    np.testing.assert_array_equal(to_device(g, "cpu"), a)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_matches_numpy_on_ops(dtype):
    import cupy

    tol = TOLERANCES["parity_f64_rel"] if dtype == np.float64 else TOLERANCES["parity_f32_rel"]
    r = np.random.default_rng(8)
    x = r.standard_normal((2, 30, 8)).astype(dtype)
    qkv_w, qkv_b = r.standard_normal((24, 8)).astype(dtype), r.standard_normal(24).astype(dtype)
    proj_w, proj_b = r.standard_normal((8, 8)).astype(dtype), r.standard_normal(8).astype(dtype)
    cases = [
        (lambda *a: erf(a[0]), [x]),
        (lambda *a: F.softmax_forward(a[0])[0], [x]),
        (lambda *a: F.gelu_forward(a[0])[0], [x]),
        (lambda *a: F.layernorm_forward(a[0], a[1], a[2])[0], [x, proj_b, proj_b[::-1].copy()]),
        (lambda *a: F.lsa_forward(a[0], (5, 6), *a[1:], num_heads=2, ws=4)[0], [x, qkv_w, qkv_b, proj_w, proj_b]),
    ]
    for fn, args in cases:
        cpu = fn(*args)
        gpu = fn(*(cupy.asarray(a) for a in args))
        assert isinstance(gpu, cupy.ndarray) and gpu.dtype == dtype
        assert _rel(gpu, cpu) < tol


@pytest.mark.gpu
@needs_gpu
def test_mixed_arrays_name_the_argument():
    import cupy

    with pytest.raises(TypeError, match=r"'weight' is a CuPy \(GPU\) array but 'x' is a NumPy \(CPU\) array.*to_device"):
        get_xp(x=np.zeros(2), weight=cupy.zeros(2))
    with pytest.raises(TypeError, match="'argument 1' is a NumPy"):
        get_xp(cupy.zeros(2), np.zeros(2))


def test_a_numba_that_does_not_import_turns_the_cpu_kernels_off(tmp_path):
    """numba installed but broken (its import raises, as with a NumPy newer than it supports):
    one warning naming numba's error, the switch reads off, cpu_kernels(True) refuses with that
    error, and a model gives the bits of the kernels-off path instead of failing every forward."""
    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.3 or less. Got NumPy 9.9.")\n')
    code = textwrap.dedent("""
        import sys, warnings
        import numpy as np
        import twins_np
        from twins_np import backend
        model = twins_np.create_model("twins_svt_teach32", num_classes=10, seed=0)
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            logits = model(x)
            model(x)
        messages = [str(w.message) for w in caught if "numba" in str(w.message)]
        if sys.argv[2] == "broken":
            assert len(messages) == 1, messages
            assert "Got NumPy 9.9" in messages[0] and "TWINS_NP_CPU_KERNELS=0" in messages[0], messages[0]
            try:
                backend.cpu_kernels(True)
            except RuntimeError as err:
                assert "does not import" in str(err) and "Got NumPy 9.9" in str(err), err
            else:
                raise AssertionError("cpu_kernels(True) did not refuse")
        assert backend.cpu_kernels() is False and not messages[1:]
        np.save(sys.argv[1], logits)
    """)
    outputs = {}
    for name, extra in (("broken", {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}), ("off", {"TWINS_NP_CPU_KERNELS": "0"})):
        env = {k: v for k, v in os.environ.items() if k != "TWINS_NP_CPU_KERNELS"}
        env.update({"PYTHONPATH": str(ROOT), **extra})
        target = tmp_path / f"{name}.npy"
        res = subprocess.run(
            [sys.executable, "-c", code, str(target), name], capture_output=True, text=True, env=env, timeout=300
        )
        assert res.returncode == 0, res.stderr[-3000:]
        outputs[name] = np.load(target)
    np.testing.assert_array_equal(outputs["broken"], outputs["off"])
