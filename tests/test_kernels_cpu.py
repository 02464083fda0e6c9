"""The CPU kernels (twins_np/kernels/*_cpu.py, numba) against their NumPy twins.

Every kernel runs the twin's steps in the twin's order, so most of its results are the twin's
bits exactly: ``EXACT`` below lists them, and the tests assert ``array_equal``. The others
differ only where the kernel cannot repeat NumPy's exact operation: a row sum (BLAS or
``einsum`` in the twin, vectorised partial sums in the kernel) or exp (NumPy's own vectorised
exp against ``cpu_common.exp``). For those the bound is stated in ulp of a scale: the
magnitude the result is computed from, since a difference of a sum's rounding is relative
to the sum of the terms' magnitudes, not to the (possibly cancelling) result; ``ulps_of_sum`` and ``ULPS_EXP`` are the bounds.

The shapes are odd on purpose: sizes that are not multiples of any vector width, one-element
axes, empty arrays, non-contiguous inputs; float32 and float64. Whole models are compared
with kernels on and off, and the switch, the threads, the disk cache and a machine without
numba are tested in subprocesses.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import twins_np
import twins_np.functional as F
from twins_np import backend
from twins_np.functional import normal_cdf
from twins_np.nn.module import Parameter
from twins_np.optim import AdamW

numba = pytest.importorskip("numba", reason="the CPU kernels need numba (pip install numba)")

from twins_np.kernels import cpu, cpu_common, gelu_cpu  # noqa: E402  (imports numba)

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [np.float32, np.float64]

# results that are the twin's bits exactly
EXACT = {
    "gelu_forward": "y and Phi(x), float32 and float64",
    "layernorm_backward": "dgamma, dbeta (the twin's own lines)",
    "dwconv3x3": "out, xpad, dx, db",
    "adamw": "p, m, v",
}
# the others: max |kernel - twin| in ulp (of the dtype) of the scale named in each test. A sum
# of n terms in two orders differs by rounding errors that grow about as sqrt(n) (as n in the
# worst case): the bound for a result that goes through a sum of n terms is 4 + 2 sqrt(n) ulp
# (measured on these tests, n = 1 to 3000: at most 2 + sqrt(n) for softmax, less elsewhere).
ULPS_EXP = 4  # GELU's backward: NumPy's float32 exp is within 2 ulp of the correct value, the kernel's within 1


def ulps_of_sum(n: int) -> float:
    return 4.0 + 2.0 * math.sqrt(n)


@pytest.fixture(autouse=True)
def _kernels_restored():
    """Each test may switch kernels and threads; the session's settings come back afterwards."""
    on, threads = backend.cpu_kernels(), backend.cpu_kernel_threads()
    yield
    backend.cpu_kernels(on)
    backend.cpu_kernel_threads(threads)


def _r(seed: int, *shape: int, dtype=np.float64, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def _both(fn, *args):
    """fn(*args) with the kernels off (the twin) and on, each on fresh copies of the arrays."""
    out = []
    for on in (False, True):
        backend.cpu_kernels(on)
        res = fn(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
        out.append(res if isinstance(res, tuple) else (res,))
    return out


def _ulps(got: np.ndarray, want: np.ndarray, scale: np.ndarray) -> float:
    """max |got - want| in units of the last place of ``scale`` (in the arrays' dtype); NaN = NaN counts as equal."""
    assert got.shape == want.shape and got.dtype == want.dtype
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if same.all():
        return 0.0
    ulp = np.spacing(np.abs(np.broadcast_to(scale, got.shape)).astype(got.dtype)).astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return float(np.max(np.where(same, 0.0, diff / ulp)))


def _noncontiguous(a: np.ndarray) -> np.ndarray:
    """The same values in a non-contiguous array (every other element of a twice-as-large one)."""
    big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), dtype=a.dtype)
    big[..., ::2] = a
    view = big[..., ::2]
    assert np.array_equal(view, a) and (a.shape[-1] < 2 or not view.flags.c_contiguous)
    return view


# --- the switch ----------------------------------------------------------------------------


def test_kernels_are_on_by_default_where_numba_is_installed():
    assert backend.cpu_kernels_available()
    code = "from twins_np import backend; print(backend.cpu_kernels(), backend.cpu_kernel_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("TWINS_NP_CPU_KERNELS", "TWINS_NP_CPU_THREADS")}
    assert _run(code, env).split() == ["True", "1"]
    assert _run(code, {**env, "TWINS_NP_CPU_KERNELS": "0", "TWINS_NP_CPU_THREADS": "3"}).split() == ["False", "3"]


def test_use_fused_picks_numpy_float_arrays_only_when_on():
    x = np.ones(3, np.float32)
    backend.cpu_kernels(True)
    assert backend.use_fused(x, "gelu") and backend.use_fused(x.astype(np.float64), "gelu")
    assert not backend.use_fused(x.astype(np.float16), "gelu") and not backend.use_fused([1.0], "gelu")
    assert not backend.use_fused(x, "no_such_kernel")  # no twins_np/kernels/no_such_kernel_cpu.py: the twin
    backend.cpu_kernels(False)
    assert not backend.use_fused(x, "gelu")
    assert twins_np.cpu_kernels is backend.cpu_kernels


def test_thread_count_is_checked():
    with pytest.raises(ValueError, match="n must be >= 1"):
        backend.cpu_kernel_threads(0)


def _run(code: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


def test_import_does_not_import_numba_and_the_first_kernel_does():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import twins_np, twins_np.functional as F
        assert "numba" not in sys.modules, "import twins_np imported numba"
        F.gelu_forward(np.ones(5, np.float32))
        print("numba" in sys.modules)
    """)
    assert _run(code) == "True"


def test_without_numba_everything_takes_the_twins():
    """numba hidden from the import system: the switch reads off, refuses on, and a model trains."""
    code = textwrap.dedent("""
        import sys
        sys.modules["numba"] = None  # as if not installed: find_spec gives None, import raises ImportError
        import numpy as np
        import twins_np
        from twins_np import backend
        assert not backend.cpu_kernels_available() and backend.cpu_kernels() is False
        try:
            backend.cpu_kernels(True)
        except RuntimeError as err:
            assert "needs numba" in str(err)
        else:
            raise AssertionError("cpu_kernels(True) did not refuse")
        model = twins_np.create_model("twins_svt_teach32", num_classes=10, seed=0)
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        model.loss(x, np.array([1, 2]))
        model.backward_loss()
        assert sys.modules["numba"] is None
        print("ok")
    """)
    assert _run(code) == "ok"


# --- each kernel against its twin ------------------------------------------------------------


def test_gelu_coefficients_are_the_twins():
    """gelu_cpu keeps a copy of Phi's float32 coefficients (the kernels cannot import functional)."""
    assert gelu_cpu._PHI_P == normal_cdf._PHI_P and gelu_cpu._PHI_Q == normal_cdf._PHI_Q
    assert gelu_cpu._CLAMP == normal_cdf._CLAMP
    assert all(type(c) is np.float32 for c in (*gelu_cpu._PHI_P, *gelu_cpu._PHI_Q, gelu_cpu._CLAMP))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 37, 129), (1,), (5, 1001), (0, 4), (2, 1, 1)])
def test_gelu_forward_is_the_twins_bits(dtype, shape):
    x = _r(0, *shape, dtype=dtype, scale=3.0)
    if x.size >= 8:  # the special values, and the clamp at +-4 sqrt(2) and beyond
        x.reshape(-1)[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 5.66, -6.0, 40.0]
    with np.errstate(invalid="ignore"):
        (y0, c0), (y1, c1) = [(y, c.cdf) for y, c in _both(F.gelu_forward, x)]
    assert y1.dtype == dtype and c1.dtype == dtype
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(c1, c0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 37, 129), (1,), (5, 1001), (2, 1, 1)])
def test_gelu_backward_within_ulps(dtype, shape):
    x, d = _r(0, *shape, dtype=dtype, scale=3.0), _r(1, *shape, dtype=dtype)
    _, cache = F.gelu_forward(x)
    (dx0,), (dx1,) = _both(lambda d: F.gelu_backward(d, cache), _noncontiguous(d))
    xd = x.astype(np.float64)
    scale = np.abs(d) * (cache.cdf + np.abs(xd) * np.exp(-0.5 * xd * xd) / math.sqrt(2.0 * math.pi))
    assert dx1.dtype == dtype
    assert (u := _ulps(dx1, dx0, scale)) <= ULPS_EXP, f"dx1: {u:.1f} ulp"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 3, 33, 64, 65, 257])
def test_layernorm_within_ulps(dtype, C):
    x, d = _r(0, 3, 7, C, dtype=dtype, scale=2.0) + 1.5, _r(1, 3, 7, C, dtype=dtype)
    g, b = 1.0 + _r(2, C, dtype=dtype), _r(3, C, dtype=dtype)
    x, d = _noncontiguous(x), _noncontiguous(d)

    def run(x, d):
        y, cache = F.layernorm_forward(x, g, b, 1e-6)
        return (y, cache.xhat, cache.inv_std, *F.layernorm_backward(d, cache))

    (y0, xh0, s0, dx0, dg0, db0), (y1, xh1, s1, dx1, dg1, db1) = _both(run, x, d)
    assert all(a.dtype == dtype for a in (y1, xh1, s1, dx1, dg1, db1))
    # xhat and y: the mean's rounding scales with the row's magnitude, max |x| inv_std
    row_scale = np.abs(x).max(axis=-1, keepdims=True) * s0
    assert (u := _ulps(xh1, xh0, np.abs(xh0) + row_scale)) <= ulps_of_sum(C), f"xh1: {u:.1f} ulp"
    assert (u := _ulps(y1, y0, (np.abs(xh0) + row_scale) * np.abs(g) + np.abs(b))) <= ulps_of_sum(C), f"y1: {u:.1f} ulp"
    assert (u := _ulps(s1, s0, s0)) <= ulps_of_sum(C), f"s1: {u:.1f} ulp"
    # dx: g - xhat mean(g xhat) - mean(g), scaled by inv_std; the means' roundings scale with the terms' magnitudes
    gg = np.abs(d * g)
    terms = gg + np.abs(xh0) * (gg * np.abs(xh0)).mean(axis=-1, keepdims=True) + gg.mean(axis=-1, keepdims=True)
    assert (u := _ulps(dx1, dx0, terms * s0)) <= ulps_of_sum(C), f"dx1: {u:.1f} ulp"
    # dgamma = sum over rows of dout xhat: the twin's line, on the kernel's xhat; dbeta does not read xhat
    mags = np.abs(d * xh0).reshape(-1, C).sum(axis=0) + (np.abs(d) * np.abs(xh1 - xh0)).reshape(-1, C).sum(axis=0)
    assert (u := _ulps(dg1, dg0, mags)) <= ulps_of_sum(C), f"dg1: {u:.1f} ulp"
    np.testing.assert_array_equal(db1, db0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 49, 50, 300])
def test_softmax_within_ulps(dtype, n):
    x, d = _r(0, 2, 3, 11, n, dtype=dtype, scale=5.0), _r(1, 2, 3, 11, n, dtype=dtype)

    def run(x, d):
        y, cache = F.softmax_forward(x)
        return y, F.softmax_backward(d, cache)

    (y0, dx0), (y1, dx1) = _both(run, _noncontiguous(x), d)
    assert y1.dtype == dtype and dx1.dtype == dtype
    assert (u := _ulps(y1, y0, y0)) <= ulps_of_sum(n), f"y1: {u:.1f} ulp"
    p = np.abs(d * y0)
    assert (u := _ulps(dx1, dx0, p + y0 * p.sum(axis=-1, keepdims=True))) <= ulps_of_sum(n), f"dx1: {u:.1f} ulp"


def test_softmax_rows_with_special_values_are_the_twins():
    x = np.array([[0.0, 1.0, np.nan], [-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0], [1e4, -1e4, 0.0]], np.float32)
    with np.errstate(invalid="ignore"):
        (y0,), (y1,) = [(y,) for y, _ in _both(F.softmax_forward, x)]
    np.testing.assert_array_equal(y1, y0)


def test_softmax_on_another_axis_takes_the_twin():
    x = _r(0, 4, 5, 6, dtype=np.float32)
    (y0, _), (y1, _) = _both(lambda x: F.softmax_forward(x, axis=1), x)
    np.testing.assert_array_equal(y1, y0)


DWCONV_CASES = [(2, 7, 9, 33, True), (1, 1, 1, 5, False), (3, 14, 13, 64, True), (2, 1, 6, 3, True), (2, 5, 1, 2, False),
                (1, 2, 2, 17, True)]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "H", "W", "C", "bias"), DWCONV_CASES)
def test_dwconv3x3_is_the_twins_bits(dtype, B, H, W, C, bias):
    x, d, w = _r(0, B, H, W, C, dtype=dtype), _r(1, B, H, W, C, dtype=dtype), _r(2, C, 1, 3, 3, dtype=dtype)
    b = _r(3, C, dtype=dtype) if bias else None

    def run(x, d):
        y, cache = F.depthwise_conv3x3_forward(x, w, b)
        return (y, cache.xpad, *F.depthwise_conv3x3_backward(d, cache))

    (y0, xp0, dx0, dw0, db0), (y1, xp1, dx1, dw1, db1) = _both(run, _noncontiguous(x), _noncontiguous(d))
    for got, want in ((y1, y0), (xp1, xp0), (dx1, dx0), (db1, db0)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)
    # dW: a sum over the batch and the image of dout * the shifted input
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    mags = np.stack([np.abs(d * xp[:, u : u + H, v : v + W]).sum(axis=(0, 1, 2)) for u in range(3) for v in range(3)], -1)
    assert (u := _ulps(dw1, dw0, mags.reshape(C, 1, 3, 3))) <= ulps_of_sum(B * H * W), f"dw1: {u:.1f} ulp"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adamw_is_the_twins_bits(dtype, wd):
    def run(p0, *grads):
        p = Parameter(p0)
        opt = AdamW([p], lr=1e-2, weight_decay=wd)
        for g in grads:  # three steps: the bias corrections change with t
            p.grad = g
            opt.step()
        s = opt.state[0] if isinstance(opt.state, list) else next(iter(opt.state.values()))
        return p.data, s["exp_avg"], s["exp_avg_sq"]

    twin, fused = _both(run, _r(0, 37, 65, dtype=dtype), *(_r(k, 37, 65, dtype=dtype) for k in (1, 2, 3)))
    for got, want in zip(fused, twin):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)


def test_a_kernel_forward_then_the_twins_backward():
    """The caches are the twins': either backward can follow either forward."""
    x, d = _r(0, 2, 9, 65), _r(1, 2, 9, 65)
    g, b = 1.0 + _r(2, 65), _r(3, 65)
    backend.cpu_kernels(True)
    _, cache = F.layernorm_forward(x, g, b, 1e-6)
    backend.cpu_kernels(False)
    mixed = F.layernorm_backward(d, cache)
    _, cache = F.layernorm_forward(x, g, b, 1e-6)
    twin = F.layernorm_backward(d, cache)
    for m, t in zip(mixed, twin):
        np.testing.assert_allclose(m, t, rtol=1e-13, atol=1e-15)


# --- exp -------------------------------------------------------------------------------------


def test_exp_f32_is_within_one_ulp_of_the_correctly_rounded_value():
    x = np.concatenate([np.linspace(-110, 90, 400_001, dtype=np.float32), _r(0, 100_000, dtype=np.float32, scale=20.0),
                        np.array([0.0, -0.0, 88.72, 88.73, -87.3, -103.9, -104.0, 1e30, -1e30], np.float32)])  # fmt: skip
    got = np.empty_like(x)
    _exp_loop(x, got)
    with np.errstate(over="ignore"):  # beyond 88.72 the float32 value is inf
        want = np.exp(x.astype(np.float64)).astype(np.float32)  # correct but for a double rounding, itself within 1 ulp
    ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1, f"{ulps.max()} ulp at x = {x[ulps.argmax()]}"
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    out = np.empty_like(special)
    _exp_loop(special, out)
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == 0.0


@numba.njit
def _exp_loop(x, out):
    for i in range(x.size):
        out[i] = cpu_common.exp(x[i])


# --- threads, whole models -------------------------------------------------------------------


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    """Every item (element, row, image) is computed by one thread in one order: the same bits with 1 or 3 threads."""
    monkeypatch.setattr(cpu_common, "MIN_ELEMENTS_PER_THREAD", 16)
    x, g, b = _r(0, 4, 50, 33, dtype=np.float32), 1.0 + _r(1, 33, dtype=np.float32), _r(2, 33, dtype=np.float32)
    w = _r(3, 33, 1, 3, 3, dtype=np.float32)

    def run():
        y, ln = F.layernorm_forward(x, g, b, 1e-6)
        s, _ = F.softmax_forward(x)
        h, _ = F.gelu_forward(x)
        c, _ = F.depthwise_conv3x3_forward(x.reshape(4, 5, 10, 33), w, b)
        return y, ln.inv_std, s, h, c, F.layernorm_backward(x, ln)[0]

    backend.cpu_kernels(True)
    backend.cpu_kernel_threads(1)
    one = run()
    backend.cpu_kernel_threads(3)
    three = run()
    for a, c in zip(one, three):
        np.testing.assert_array_equal(a, c)


def test_blas_threads_sets_the_kernels_threads_too():
    from twins_np.training import blas_threads

    backend.cpu_kernel_threads(1)
    with blas_threads(2):
        assert backend.cpu_kernel_threads() == 2
    assert backend.cpu_kernel_threads() == 1
    with blas_threads(None):
        assert backend.cpu_kernel_threads() == 1


MODEL_CASES = [("twins_svt_teach32", np.float64, 1e-12), ("twins_pcpvt_teach32", np.float64, 1e-12),
               ("twins_svt_teach32", np.float32, 2e-4)]  # fmt: skip


@pytest.mark.parametrize(("name", "dtype", "rtol"), MODEL_CASES)
def test_whole_model_with_kernels_on_and_off(name, dtype, rtol):
    """Logits, the input gradient and every parameter gradient agree (float32: within the model's float32 rounding)."""
    x = _r(0, 3, 3, 37, 45, dtype=dtype)
    d = _r(1, 3, 10, dtype=dtype)

    def run(x):
        model = twins_np.create_model(name, num_classes=10, seed=0, dtype=dtype)
        out = model.forward(x)
        dx = model.backward(d)
        return out, dx, *(p.grad for _, p in model.named_parameters())

    twin, fused = _both(run, x)
    for t, f in zip(twin, fused):
        assert f.dtype == dtype
        err = np.abs(f - t).max() / max(np.abs(t).max(), 1e-30)
        assert err < rtol, f"relative error {err:.2e}"


# --- the disk cache ------------------------------------------------------------------------


def _copy_package(tmp_path: Path) -> Path:
    """twins_np copied without compiled files, so the subprocess compiles (and caches) afresh."""
    dst = tmp_path / "pkg"
    shutil.copytree(ROOT / "twins_np", dst / "twins_np", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


_CACHE_PROBE = textwrap.dedent("""
    import numpy as np, twins_np, twins_np.functional as F
    assert twins_np.__file__.startswith({pkg!r}), twins_np.__file__
    y, _ = F.softmax_forward(np.ones((2, 3), np.float32))
    assert np.allclose(y, 1 / 3)
    print("ok")
""")


def _cache_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")]


def test_kernels_cache_in_numba_cache_dir(tmp_path):
    pkg = _copy_package(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(pkg), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    assert _run(_CACHE_PROBE.format(pkg=str(pkg)), env, cwd=tmp_path) == "ok"
    assert _cache_files(tmp_path / "cache") and not _cache_files(pkg)


def test_kernels_cache_in_the_user_folder_when_the_package_is_read_only(tmp_path):
    """An install the user cannot write to (site-packages of a system Python): numba caches in ~/.cache/numba."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount the package read-only")
    pkg = _copy_package(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(pkg), XDG_CACHE_HOME=str(tmp_path / "user-cache"))
    probe = tmp_path / "probe.py"
    probe.write_text(_CACHE_PROBE.format(pkg=str(pkg)))
    script = f"mount --bind {pkg} {pkg} && mount -o remount,ro,bind {pkg} && exec {sys.executable} {probe}"
    cmd = ["unshare", "-m", "sh", "-c", script]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    if res.returncode != 0 and "mount" in res.stderr and "ok" not in res.stdout:
        pytest.skip(f"cannot mount read-only here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
    assert _cache_files(tmp_path / "user-cache" / "numba") and not _cache_files(pkg)


def test_every_cpu_kernel_file_names_its_formula_and_its_twin():
    for name in cpu.__all__:
        module = sys.modules[getattr(cpu, name).__module__]
        doc = module.__doc__ or ""
        assert "twin" in doc and "twins_np." in doc and ".cu" in doc, module.__name__
