"""The fused CUDA kernels (twins_np/kernels): they compile, match their launchers, and equal their twins.

Without a GPU: every source compiles with ``nvcc -ptx`` (skipped only where nvcc is absent)
and with NVRTC, the compiler CuPy's ``RawModule`` uses (skipped where libnvrtc is absent);
every kernel a launcher names exists in both precisions; the switch stays off by default and
refuses to turn on where no kernel can run (no GPU, or the CuPy stand-in).

Without a GPU, ``tests/cuda_emu/`` runs every kernel on the CPU through an emulation of CUDA's
execution model and compares it with its twin (planted bugs included, to prove it catches them).

On a GPU (``gpu`` marker; skipped on the stand-in, which cannot run CUDA code): each fused
kernel against its twin, the readable CuPy expression, on random odd shapes, at the
tolerances of ``TOL`` below; and a fused forward followed by the twin's backward.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import twins_np.functional as F
from twins_np import backend
from twins_np.backend import asnumpy, fused_kernels, fused_kernels_available, to_device

KERNELS = Path(backend.__file__).parent / "kernels"
SOURCES = sorted(KERNELS.glob("*.cu"))
# max |fused - twin| / max |twin|, per dtype: float64 kernels differ from the twin only in the
# order of sums; float32 ones also in where a rounding falls (a row sum of 512 terms)
TOL = {np.float64: 1e-12, np.float32: 2e-5}


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_kernel_compiles_with_nvcc(source: Path, tmp_path: Path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    cmd = [nvcc, "-ptx", "-arch=sm_90", "-std=c++14", f"-I{KERNELS}", str(source), "-o", str(tmp_path / "k.ptx")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    names = set(re.findall(r'extern "C" __global__ void (\w+)', source.read_text()))
    ptx = (tmp_path / "k.ptx").read_text()
    assert names and all(f".entry {n}(" in ptx for n in names), "an extern C kernel is missing from the PTX"


def _libnvrtc():
    candidates = [ctypes.util.find_library("nvrtc")]
    for base in {sys.prefix, *sys.path}:
        candidates += glob.glob(os.path.join(base, "nvidia", "*", "lib", "libnvrtc.so*"))
    candidates += glob.glob("/usr/local/cuda/lib64/libnvrtc.so*")
    for path in filter(None, candidates):
        try:
            # NVRTC opens its builtins library by name: load the one next to it first
            for builtins in glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*")):
                ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_kernel_compiles_with_nvrtc_as_cupy_does(source: Path):
    """The options of backend.cuda_function (RawModule): no system headers, -I the kernels folder."""
    lib = _libnvrtc()
    if lib is None:
        pytest.skip("libnvrtc is not available")
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.read_bytes(), source.name.encode(), 0, None, None) == 0
    opts = [b"--std=c++14", f"-I{KERNELS}".encode(), b"--gpu-architecture=compute_90"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode(errors="replace")


def test_every_launched_kernel_exists_in_both_precisions():
    launcher = (KERNELS / "__init__.py").read_text()
    calls = re.findall(r'cuda_function\("(\w+\.cu)", f"(\w+)_\{_suffix', launcher)
    used, present = {c[0] for c in calls}, {p.name for p in SOURCES}
    assert present <= used, f"sources no launcher uses: {sorted(present - used)}"
    if used - present:  # a student copy leaves out the kernels of its tasks: they compute the answers
        assert (KERNELS.parents[1] / "assignment.json").exists(), f"launched but missing: {sorted(used - present)}"
    for source, name in calls:
        if source not in present:
            continue
        text = (KERNELS / source).read_text()
        for suffix in ("f32", "f64"):
            assert f'extern "C" __global__ void {name}_{suffix}(' in text, f"{source}: {name}_{suffix}"


def test_a_missing_kernel_file_means_the_twin(monkeypatch):
    """A kernel whose source is not installed (a student copy leaves out those of its tasks) is
    unavailable, not an error: use_fused says no and the op runs its twin."""
    assert backend.kernel_available("gelu") is (KERNELS / "gelu.cu").is_file()
    assert backend.kernel_available("no_such_kernel") is False
    assert backend.kernel_available("no_such_kernel", "cpu") is False
    monkeypatch.setattr(backend, "_FUSED", True)
    monkeypatch.setattr(backend, "is_cupy_array", lambda a: True)
    assert backend.use_fused(np.ones(3), "no_such_kernel") is False
    assert backend.use_fused(np.ones(3), "gelu") is (KERNELS / "gelu.cu").is_file()


def test_every_source_names_its_formula_and_its_twin():
    for source in SOURCES:
        head = source.read_text().split("#include")[0]
        assert "twin" in head.lower() and "twins_np." in head, source.name


def test_fused_kernels_are_off_by_default_and_refuse_without_a_gpu():
    import twins_np

    assert twins_np.fused_kernels is fused_kernels and fused_kernels() is False
    if fused_kernels_available():
        pytest.skip("a GPU is present (the switch is exercised by the gpu tests)")
    with pytest.raises(RuntimeError, match="needs CuPy with a real CUDA GPU"):
        fused_kernels(True)
    assert fused_kernels() is False


# --- on a GPU: each kernel against its twin -------------------------------------------------


@pytest.fixture
def gpu():
    if not fused_kernels_available():
        pytest.skip("the fused kernels need a real CUDA GPU (the CuPy stand-in cannot run CUDA code)")
    yield
    fused_kernels(False)


def _both(fn, *host_args):
    """fn on device copies of host_args, unfused (the twin) and fused; returns host results."""
    dev = to_device(list(host_args), "gpu")
    out = {}
    for fused in (False, True):
        fused_kernels(fused)
        res = fn(*[a.copy() if hasattr(a, "copy") else a for a in dev])
        out[fused] = [asnumpy(r) for r in (res if isinstance(res, (tuple, list)) else [res])]
    fused_kernels(False)
    return out[False], out[True]


def _close(twin, fused, dtype):
    for a, b in zip(twin, fused):
        assert a.shape == b.shape and a.dtype == b.dtype
        err = float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-300)
        assert err < TOL[dtype], f"max relative error {err:.2e} (tolerance {TOL[dtype]:g})"


DTYPES = [np.float64, np.float32]


def _r(seed, *shape, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 37, 129), (1,), (5, 1001)])
def test_gelu_fused_matches_twin(gpu, dtype, shape):
    x, d = 3.0 * _r(0, *shape, dtype=dtype), _r(1, *shape, dtype=dtype)

    def run(x, d):
        y, cache = F.gelu_forward(x)
        return y, cache.cdf, F.gelu_backward(d, cache)

    _close(*_both(run, x, d), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 33, 65, 257, 777])
def test_layernorm_fused_matches_twin(gpu, dtype, C):
    x, d = 2.0 + _r(0, 3, 7, C, dtype=dtype), _r(1, 3, 7, C, dtype=dtype)
    g, b = 1.0 + _r(2, C, dtype=dtype), _r(3, C, dtype=dtype)

    def run(x, g, b, d):
        y, cache = F.layernorm_forward(x, g, b, 1e-6)
        return (y, cache.xhat, cache.inv_std, *F.layernorm_backward(d, cache))

    _close(*_both(run, x, g, b, d), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 49, 50, 300])
def test_softmax_fused_matches_twin(gpu, dtype, n):
    x, d = 5.0 * _r(0, 2, 3, 11, n, dtype=dtype), _r(1, 2, 3, 11, n, dtype=dtype)

    def run(x, d):
        y, cache = F.softmax_forward(x)
        return y, F.softmax_backward(d, cache)

    _close(*_both(run, x, d), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "H", "W", "C", "bias"), [(2, 7, 9, 33, True), (1, 1, 1, 5, False), (3, 14, 13, 64, True)])
def test_dwconv3x3_fused_matches_twin(gpu, dtype, B, H, W, C, bias):
    x, d, w = _r(0, B, H, W, C, dtype=dtype), _r(1, B, H, W, C, dtype=dtype), _r(2, C, 1, 3, 3, dtype=dtype)
    b = _r(3, C, dtype=dtype) if bias else None

    def run(x, w, d, b=None):
        y, cache = F.depthwise_conv3x3_forward(x, w, b)
        return (y, cache.xpad, *F.depthwise_conv3x3_backward(d, cache))

    args = (x, w, d, b) if bias else (x, w, d)
    twin, fused = _both(run, *args)
    _close([t for t in twin if t is not None], [f for f in fused if f is not None], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adamw_fused_matches_twin(gpu, dtype, wd):
    from twins_np.nn.module import Parameter
    from twins_np.optim import AdamW

    def run(p0, *grads):
        p = Parameter(p0)
        opt = AdamW([p], lr=1e-2, weight_decay=wd)
        for g in grads:  # three steps: the bias corrections change with t
            p.grad = g
            opt.step()
        s = opt.state[0] if isinstance(opt.state, list) else next(iter(opt.state.values()))
        return p.data, s["exp_avg"], s["exp_avg_sq"]

    _close(*_both(run, _r(0, 37, 65, dtype=dtype), *(_r(k, 37, 65, dtype=dtype) for k in (1, 2, 3))), dtype)


@pytest.mark.gpu
def test_fused_forward_then_twin_backward(gpu):
    """The caches are the twins': a fused forward can be followed by the readable backward."""
    x, d = to_device([_r(0, 2, 9, 65, dtype=np.float64), _r(1, 2, 9, 65, dtype=np.float64)], "gpu")
    g, b = to_device([1.0 + _r(2, 65, dtype=np.float64), _r(3, 65, dtype=np.float64)], "gpu")
    fused_kernels(True)
    _, cache = F.layernorm_forward(x, g, b, 1e-6)
    fused_kernels(False)
    mixed = F.layernorm_backward(d, cache)
    _, cache = F.layernorm_forward(x, g, b, 1e-6)
    twin = F.layernorm_backward(d, cache)
    _close([asnumpy(t) for t in twin], [asnumpy(m) for m in mixed], np.float64)


@pytest.mark.gpu
def test_fused_kernels_refuse_on_the_cupy_standin():
    """On the stand-in the gpu suite runs unfused, and asking for the kernels says why not."""
    import cupy_standin

    if not cupy_standin.is_active():
        pytest.skip("only under the CuPy stand-in")
    with pytest.raises(RuntimeError, match="needs CuPy with a real CUDA GPU"):
        fused_kernels(True)
    assert fused_kernels() is False
