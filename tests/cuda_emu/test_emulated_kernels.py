"""The fused CUDA kernels run on the CPU, through an emulation of CUDA's execution model.

Each kernel of ``twins_np/kernels/*.cu`` is compiled with the host C++ compiler against
``cuda_emu.h`` and launched by its own launcher (``twins_np.kernels``: grid, block, argument
types as on a GPU) on NumPy arrays, then compared with its NumPy twin, at sizes chosen to be
awkward: rows longer than a block, sizes that are not multiples of 32 or 256, and more work
than the grid holds (the grid limit is lowered to ``MAX_BLOCKS`` blocks, so every grid-stride
loop wraps several times). Each launch runs under four thread schedules and must give the same
bits under all of them (see ``emulator.py``); outputs start as NaN, as fresh device memory
holds garbage, so an element no thread writes is seen.

The planted-bug tests prove the harness can catch what it is for: each applies one bug to a
copy of the sources (a wrong shuffle offset, a missing barrier, an off-by-one or a missing
wrap in the grid-stride loop, ...) and requires the same comparison to fail.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import emulator
import numpy as np
import pytest

import twins_np.functional as F
import twins_np.kernels as K
from twins_np.nn.module import Parameter
from twins_np.optim import AdamW

KERNELS = Path(K.__file__).parent
MAX_BLOCKS = 3  # the emulated grid limit: 3 blocks of 256 threads cover 768 elements per sweep
# max |kernel - twin| / max |twin|, as tests/test_kernels.py allows on a GPU
TOL = {np.float64: 1e-12, np.float32: 2e-5}
DTYPES = [np.float64, np.float32]

pytestmark = pytest.mark.skipif(
    emulator.compiler() is None or shutil.which("nm") is None or shutil.which("c++filt") is None,
    reason="the CUDA emulator needs a host C++ compiler and binutils (nm, c++filt)",
)


# --- the launchers, pointed at the emulator -----------------------------------------------------


class _FreshMemory:
    """NumPy, but ``empty``/``empty_like`` give NaN-filled arrays: an output element no thread
    writes stays NaN and fails the comparison (np.empty may hand back a buffer that happens to
    hold the right values)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def empty_like(a: Any, dtype: Any = None, **kwargs: Any) -> np.ndarray:
        return np.full_like(a, np.nan, dtype=dtype, **kwargs)

    @staticmethod
    def empty(shape: Any, dtype: Any = float, **kwargs: Any) -> np.ndarray:
        return np.full(shape, np.nan, dtype=dtype, **kwargs)


_MODULES: dict[Path, emulator.Module] = {}


def need(*sources: str) -> None:
    """Skip where a kernel's source is not installed: a student copy leaves out the kernels of its
    tasks (they compute the answers), and their twins there are the student's to write."""
    gone = [s for s in sources if not (KERNELS / s).is_file()]
    if gone:
        pytest.skip(f"{', '.join(gone)} not in this copy (the kernel of an assignment task)")


def _module(path: Path) -> emulator.Module:
    lib = emulator.build(path)
    if lib not in _MODULES:
        _MODULES[lib] = emulator.Module(path)
    return _MODULES[lib]


@pytest.fixture
def launch_from(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """``launch_from(folder)``: the launchers of twins_np.kernels run folder's sources, emulated."""

    def point(folder: Path) -> None:
        monkeypatch.setattr(K, "cuda_function", lambda source, name: _module(folder / source).get_function(name))
        monkeypatch.setattr(K, "_MAX_BLOCKS", MAX_BLOCKS)
        fresh = _FreshMemory()
        monkeypatch.setattr(K, "get_xp", lambda *a, **k: fresh)

    return point


# --- each kernel against its twin ---------------------------------------------------------------


def _r(seed: int, *shape: int, dtype: Any) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _close(twin: list[np.ndarray], fused: list[np.ndarray], dtype: Any) -> None:
    for k, (a, b) in enumerate(zip(twin, fused)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"output {k}: {b.shape} {b.dtype}, twin {a.shape} {a.dtype}"
        assert np.isfinite(b).all() == np.isfinite(a).all(), f"output {k}: {np.count_nonzero(~np.isfinite(b))} non-finite"
        err = float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-300) if a.size else 0.0
        assert err < TOL[dtype], f"output {k}: max relative error {err:.2e} (tolerance {TOL[dtype]:g})"


def check_gelu(dtype: Any, shape: tuple[int, ...]) -> None:
    need("gelu.cu")
    x, d = 3.0 * _r(0, *shape, dtype=dtype), _r(1, *shape, dtype=dtype)
    y, cache = F.gelu_forward(x)
    fy, fcdf = K.gelu_forward(x)
    _close([y, cache.cdf, F.gelu_backward(d, cache)], [fy, fcdf, K.gelu_backward(d, x, fcdf)], dtype)


def check_layernorm(dtype: Any, C: int) -> None:
    need("layernorm.cu")
    x, d = 2.0 + _r(0, 3, 7, C, dtype=dtype), _r(1, 3, 7, C, dtype=dtype)
    g, b = 1.0 + _r(2, C, dtype=dtype), _r(3, C, dtype=dtype)
    y, cache = F.layernorm_forward(x, g, b, 1e-6)
    dx = F.layernorm_backward(d, cache)[0]
    fy, fxhat, finv = K.layernorm_forward(x, g, b, 1e-6)
    _close([y, cache.xhat, cache.inv_std, dx], [fy, fxhat, finv, K.layernorm_backward_dx(d, fxhat, finv, g)], dtype)


def check_softmax(dtype: Any, n: int) -> None:
    need("softmax.cu")
    # one spike per row, large enough that exp overflows unless the row maximum is found:
    # softmax is shift-invariant, so only such rows show a wrong maximum
    x, d = 5.0 * _r(0, 2, 3, 11, n, dtype=dtype), _r(1, 2, 3, 11, n, dtype=dtype)
    spike = np.random.default_rng(2).integers(0, n, size=x.shape[:-1])
    np.put_along_axis(x, spike[..., None], 800.0 if dtype == np.float64 else 120.0, axis=-1)
    y, cache = F.softmax_forward(x)
    fy = K.softmax_forward(x)
    _close([y, F.softmax_backward(d, cache)], [fy, K.softmax_backward(d, fy)], dtype)


def check_dwconv3x3(dtype: Any, B: int, H: int, W: int, C: int, bias: bool) -> None:
    need("dwconv3x3.cu")
    x, d, w = _r(0, B, H, W, C, dtype=dtype), _r(1, B, H, W, C, dtype=dtype), _r(2, C, 1, 3, 3, dtype=dtype)
    b = _r(3, C, dtype=dtype) if bias else None
    y, cache = F.depthwise_conv3x3_forward(x, w, b)
    fy, fxpad = K.dwconv3x3_forward(x, w, b)
    _close([y, cache.xpad, *F.depthwise_conv3x3_backward(d, cache)], [fy, fxpad, *K.dwconv3x3_backward(d, fxpad, w)], dtype)


def check_adamw(dtype: Any, wd: float) -> None:
    """Three steps (the bias corrections change with t): the optimiser's twin vs the kernel."""
    need("adamw.cu")
    p0, grads = _r(0, 37, 65, dtype=dtype), [_r(k, 37, 65, dtype=dtype) for k in (1, 2, 3)]
    hyper = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": wd}
    p = Parameter(p0.copy())
    opt = AdamW([p], **hyper)
    for g in grads:
        p.grad = g
        opt.step()
    state = opt.state[0] if isinstance(opt.state, list) else next(iter(opt.state.values()))
    fp, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        K.adamw_update(fp, g, m, v, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, wd=wd, t=t)
    _close([p.data, state["exp_avg"], state["exp_avg_sq"]], [fp, m, v], dtype)


# 14319 and 5005 elements wrap around the 768 threads of the grid; 1 is a lone thread's work
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 37, 129), (1,), (5, 1001), (769,)])
def test_gelu_emulated_matches_twin(launch_from, dtype, shape):
    launch_from(KERNELS)
    check_gelu(dtype, shape)


# C = 1: a row of one in a block of 32; 33, 65: partial warps; 257, 777: rows longer than the block
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 33, 65, 257, 777])
def test_layernorm_emulated_matches_twin(launch_from, dtype, C):
    launch_from(KERNELS)
    check_layernorm(dtype, C)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 49, 50, 300])
def test_softmax_emulated_matches_twin(launch_from, dtype, n):
    launch_from(KERNELS)
    check_softmax(dtype, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "H", "W", "C", "bias"), [(2, 7, 9, 33, True), (1, 1, 1, 5, False), (3, 14, 13, 64, True)])
def test_dwconv3x3_emulated_matches_twin(launch_from, dtype, B, H, W, C, bias):
    launch_from(KERNELS)
    check_dwconv3x3(dtype, B, H, W, C, bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adamw_emulated_matches_twin(launch_from, dtype, wd):
    launch_from(KERNELS)
    check_adamw(dtype, wd)


# --- planted bugs: the harness must catch them ---------------------------------------------------


def _in_function(name: str, edit: Callable[[str], str]) -> Callable[[str], str]:
    """Apply ``edit`` to the body of the first function ``name`` of a source text only."""

    def apply(text: str) -> str:
        start = re.search(rf"\b{name}\(T v\) \{{", text)
        assert start, f"{name} not found"
        end = text.index("\n}\n", start.end())
        return text[: start.end()] + edit(text[start.end() : end]) + text[end:]

    return apply


def _drop_nth(old: str, n: int) -> Callable[[str], str]:
    """Remove the n-th (from 0) occurrence of ``old``."""

    def apply(text: str) -> str:
        parts = text.split(old)
        assert len(parts) > n + 1, f"fewer than {n + 1} {old!r}"
        return old.join(parts[: n + 1]) + "/* planted: removed */" + old.join(parts[n + 1 :])

    return apply


def _replace(old: str, new: str, count: int = 1) -> Callable[[str], str]:
    def apply(text: str) -> str:
        assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times, expected {count}"
        return text.replace(old, new)

    return apply


# (id, file, edit, check that must fail, its arguments)
PLANTED = [
    # the warp sum starts at a shuffle offset of 8: lanes 16-31 never reach lane 0
    ("warp-sum-shuffle-offset", "common.cuh",
     _in_function("warp_sum", _replace("int offset = 16", "int offset = 8")), check_layernorm, (np.float64, 257)),
    # the same in the warp maximum: invisible to softmax's value (shift-invariant) except where exp overflows
    ("warp-max-shuffle-offset", "common.cuh",
     _in_function("warp_max", _replace("int offset = 16", "int offset = 8")), check_softmax, (np.float64, 300)),
    # every shuffle reads one lane too far
    ("shuffle-reads-next-lane", "common.cuh",
     _in_function("warp_sum", _replace("v, offset)", "v, offset + 1)")), check_softmax, (np.float32, 50)),
    # block_sum's three barriers, one at a time: the warps' partial sums read before written,
    # the total read before warp 0 wrote it, and the next reduction overwriting it too early
    ("block-sum-missing-barrier-1", "common.cuh",
     _in_function("block_sum", _drop_nth("__syncthreads();", 0)), check_layernorm, (np.float64, 777)),
    ("block-sum-missing-barrier-2", "common.cuh",
     _in_function("block_sum", _drop_nth("__syncthreads();", 1)), check_softmax, (np.float64, 300)),
    ("block-sum-missing-barrier-3", "common.cuh",
     _in_function("block_sum", _drop_nth("__syncthreads();", 2)), check_layernorm, (np.float32, 257)),
    ("block-max-missing-barrier-1", "common.cuh",
     _in_function("block_max", _drop_nth("__syncthreads();", 0)), check_softmax, (np.float64, 300)),
    # off-by-one: the grid-stride loop runs to i <= n (one element past the end)
    ("grid-stride-off-by-one", "common.cuh", _replace("i < (n);", "i <= (n);"), check_gelu, (np.float32, (5, 1001))),
    # the loop makes one sweep only (no wrap): elements past the grid's 768 threads are never written
    ("grid-stride-no-wrap", "common.cuh",
     _replace("i += (long long)blockDim.x * gridDim.x", "i += (n)"), check_adamw, (np.float64, 0.05)),
    # the stride forgets the grid: blocks redo each other's elements (AdamW updates in place)
    ("grid-stride-without-grid", "common.cuh",
     _replace("i += (long long)blockDim.x * gridDim.x", "i += (long long)blockDim.x"), check_adamw, (np.float32, 0.0)),
    # a row loop that assumes the row fits in the block
    ("layernorm-row-longer-than-block", "layernorm.cu",
     _replace("c += blockDim.x)", "c += 1024)", count=5), check_layernorm, (np.float64, 777)),
    # the depthwise conv's backward reads the tap of the forward (the flipped kernel forgotten)
    ("dwconv-backward-unflipped-taps", "dwconv3x3.cu",
     _replace("const int ho = h + 1 - u;", "const int ho = h - 1 + u;"), check_dwconv3x3, (np.float64, 2, 7, 9, 33, True)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "file", "edit", "check", "args"), PLANTED, ids=[p[0] for p in PLANTED])
def test_planted_bug_is_caught(launch_from, tmp_path: Path, name, file, edit, check, args):
    pristine, planted = tmp_path / "pristine", tmp_path / "planted"
    shutil.copytree(KERNELS, pristine, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copytree(pristine, planted)
    target = planted / file
    text = target.read_text(encoding="utf-8")
    target.write_text(edit(text), encoding="utf-8")
    assert target.read_text(encoding="utf-8") != text
    launch_from(pristine)
    check(*args)  # the same check passes on the unchanged sources ...
    launch_from(planted)
    with pytest.raises((AssertionError, emulator.EmulationError)):  # ... and fails with the bug (a BuildError is not enough)
        check(*args)
