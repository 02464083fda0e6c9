"""Shared pieces of the CPU kernels (the ``*_cpu.py`` files here): the CPU's ``common.cuh``.

Each CPU kernel is a plain loop compiled by numba, the twin of a readable NumPy function in
``twins_np.functional``. What they share lives here:

- :func:`jit`, the one set of compiler options every kernel uses (see below);
- :func:`launch`, which runs a kernel over ``[0, n)`` on the calling thread, or splits the
  range over the threads of :func:`twins_np.backend.cpu_kernel_threads`;
- :func:`exp`, e^x in the argument's precision, in a form the compiler can vectorise;
- :func:`row_sum` and :func:`row_dot`, vectorised sums over a short row.

A kernel's signature is ``kernel(arrays..., scalars..., start, stop)``: it works on items
(elements, rows or images) ``start`` to ``stop - 1`` and writes its results into arrays the
launcher allocated, as a CUDA kernel writes into device memory. An elementwise kernel
first slices its arrays to ``[start:stop]`` and loops over ``range(x.size)``: an index
that cannot be negative lets the compiler drop the negative-index check and vectorise the
loop (``range(start, stop)`` ran 10x slower). Scalars arrive in the arrays' dtype
(``x.dtype.type(eps)``) or are made in it inside the kernel, so float32 stays float32: to
numba a Python float is a float64, and ``float32 * 0.5`` is computed in float64.

numba is imported here, on the first call of a CPU kernel (``twins_np.kernels.for_array``
imports this package's ``cpu`` module lazily), never by ``import twins_np``.

A note for anyone editing this file: numba's disk cache notices an edit of the file that
holds a kernel, but not of the helpers it calls from here (numba issue #1833). After
changing a helper, delete the ``*.nbi``/``*.nbc`` files in ``twins_np/kernels/__pycache__``
(or in ``$NUMBA_CACHE_DIR``), or the kernels keep the old helper's compiled code.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .. import backend

__all__ = ["jit", "launch", "exp", "row_sum", "row_dot"]

# cache=True: compiled code is kept on disk (next to this package, or in numba's user-wide
#   cache folder where the package is read-only, or in $NUMBA_CACHE_DIR), so only the first
#   run on a machine pays for compilation.
# nogil=True: a kernel releases the GIL, so launch() can run parts of it on other threads.
# error_model="numpy": a division by zero gives inf or NaN, as in NumPy, instead of
#   numba's default Python-style ZeroDivisionError, whose check stops the compiler from
#   vectorising a loop (measured: a GELU loop ran 10x slower with it).
# No fastmath: every addition and multiplication is rounded as written, in the order
#   written, with no fused multiply-add, so a kernel can give the twin's exact bits (the row
#   sums at the end of this file are the one, stated, exception).
JIT_OPTIONS: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy"}


def jit(fn: Callable[..., Any]) -> Any:
    """Compile ``fn`` with numba on its first call (lazily, per argument types) with ``JIT_OPTIONS``."""
    return numba.njit(**JIT_OPTIONS)(fn)


# --- running a kernel on one or more threads ------------------------------------------

# A thread gets at least this many elements of work: below it, waking a thread costs more
# than it saves (a few microseconds of work per 10,000 elements).
MIN_ELEMENTS_PER_THREAD = 1 << 16

_pool: ThreadPoolExecutor | None = None
_pool_key = (0, 0)  # (threads, process id) of _pool: a forked child must not use its parent's pool
_pool_lock = threading.Lock()


def _helpers(count: int) -> ThreadPoolExecutor:
    """A pool of ``count`` helper threads (created on first need; idle threads sleep, they never spin)."""
    global _pool, _pool_key
    with _pool_lock:
        key = (count, os.getpid())
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[1] == key[1]:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="twins_np-kernel")
            _pool_key = key
        return _pool


def launch(kernel: Callable[..., None], n: int, *args: Any, elements_per_item: int = 1) -> None:
    """Run ``kernel(*args, start, stop)`` over the items ``[0, n)``.

    With one thread (``twins_np.backend.cpu_kernel_threads()``, the default) this is one call
    on the calling thread. With more, ``[0, n)`` is cut into one contiguous share per thread:
    the calling thread runs the first share and helper threads the others. Items are
    independent (elements, rows, images), and each is computed by one thread in one fixed
    order, so the result is the same bits whatever the number of threads.

    Args:
        kernel: a :func:`jit` function whose last two arguments are ``start`` and ``stop``.
        n: number of items.
        args: the kernel's other arguments.
        elements_per_item: elements per item (C for a row of C channels), to give every
            thread at least ``MIN_ELEMENTS_PER_THREAD`` elements.
    """
    if n <= 0:
        return
    threads = min(backend.cpu_kernel_threads(), max(1, n * elements_per_item // MIN_ELEMENTS_PER_THREAD), n)
    if threads == 1:
        kernel(*args, 0, n)
        return
    bounds = [n * k // threads for k in range(threads + 1)]
    pool = _helpers(threads - 1)
    helpers = [pool.submit(kernel, *args, bounds[k], bounds[k + 1]) for k in range(1, threads)]
    kernel(*args, bounds[0], bounds[1])
    for job in helpers:
        job.result()


# --- e^x that the compiler can vectorise ------------------------------------------------
#
# numba compiles math.exp to a call of the C library's exp, one element at a time; NumPy's
# own exp is a vectorised routine, so a loop that calls math.exp is slower than NumPy (a
# GELU backward took 17 ms against NumPy's 9). exp_f32 below is built from multiplications
# and additions only, which the compiler turns into vector instructions:
#
#     e^x = 2^k e^r,   k = round(x / ln 2),   r = x - k ln 2,   |r| <= ln(2) / 2
#
# e^r from its Taylor series to r^8 (truncation error below 2e-10 relative), 2^k written
# straight into a float64's exponent bits, everything in float64 and rounded to float32
# once at the end: the result is the correctly rounded e^x except within 0.004 ulp of a
# rounding tie. NumPy's float32 exp is within a few ulp of it (the tests measure it).
# float64 arguments take math.exp (the C library's, correctly rounded in almost all cases):
# float64 is for gradient checks, where accuracy matters and speed does not.

_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)
_INV_FACTORIALS = tuple(1.0 / math.factorial(k) for k in range(9))  # 1/0!, ..., 1/8!


@jit
def _exp_f32(x: Any) -> Any:
    """e^x for a float32 x, correctly rounded to float32 (see the comment above)."""
    if x != x:  # NaN stays NaN
        return x
    d = np.float64(x)
    # beyond +-200 the float32 result is inf or 0 anyway; clamping keeps 2^k a normal float64
    if d > 200.0:
        d = np.float64(200.0)
    if d < -200.0:
        d = np.float64(-200.0)
    k = np.floor(d * _LOG2E + 0.5)
    r = d - k * _LN2
    p = _INV_FACTORIALS[8]
    p = p * r + _INV_FACTORIALS[7]
    p = p * r + _INV_FACTORIALS[6]
    p = p * r + _INV_FACTORIALS[5]
    p = p * r + _INV_FACTORIALS[4]
    p = p * r + _INV_FACTORIALS[3]
    p = p * r + _INV_FACTORIALS[2]
    p = p * r + _INV_FACTORIALS[1]
    p = p * r + _INV_FACTORIALS[0]
    two_k = (np.int64(k) + 1023) << 52  # the bits of the float64 2^k
    return np.float32(p * np.int64(two_k).view(np.float64))


def exp(x: Any) -> Any:
    """e^x in x's precision, for use inside a kernel: float32 via ``_exp_f32``, float64 via ``math.exp``.

    Called from Python (outside a kernel) it is ``math.exp``; inside a compiled kernel numba
    picks the implementation by the argument's type (the ``overload`` below).
    """
    return math.exp(x)


@overload(exp, jit_options={"nogil": True, "error_model": "numpy"})  # compiled into (and cached with) each caller
def _exp_for_type(x):  # type: ignore[no-untyped-def]  # numba compares this signature with the lambdas
    if x == types.float32:
        return lambda x: _exp_f32(x)
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)
    return None


# --- sums over a short row --------------------------------------------------------------
#
# A running sum s += a[j] makes every addition wait for the previous one, and a compiler may
# not reorder floating-point additions on its own (the rounding would change), so without
# permission the loop runs one addition at a time. These two helpers are the one place where
# the kernels give that permission (fastmath "reassoc", nothing else: no fused multiply-add,
# no assumptions about NaN or inf): the compiler then keeps a vector of partial sums and
# adds them at the end, 4x faster than eight scalar running sums and faster than the BLAS
# matrix-vector product the twins use. Which partial sums it keeps depends on the CPU's
# vector width, as BLAS's order does, so a sum can differ from the twin's in its last bits,
# and between two kinds of CPU; on one machine it is the same bits whatever the thread count
# (a row is always summed by one thread).
#
# The partial sums are float64, whatever the row's dtype, and the total is rounded to the
# row's dtype once. A float32 row is then summed more exactly than by the twin's float32 BLAS
# call: in a deep model the gradients that go through a cancelling sum (the queries' in the
# attention's softmax backward, the LayerNorm's mean terms) pick up visibly less rounding
# (tests/models/test_twins_parity.py, the base and large models in float32). Converting to
# float64 costs nothing here: the kernels wait for memory, not for arithmetic.

_REDUCTION_OPTIONS = {**JIT_OPTIONS, "fastmath": {"reassoc"}}


@numba.njit(**_REDUCTION_OPTIONS)
def row_sum(a: Any) -> Any:
    """sum(a) of a 1-D array, added in float64, returned in a's dtype."""
    s = 0.0
    for j in range(a.size):
        s += a[j]
    return a.dtype.type(s)


@numba.njit(**_REDUCTION_OPTIONS)
def row_dot(a: Any, b: Any) -> Any:
    """sum(a * b) of two 1-D arrays of one length, added in float64, returned in a's dtype;
    each product is rounded to a's dtype first, as NumPy's a * b."""
    s = 0.0
    for j in range(a.size):
        s += a[j] * b[j]
    return a.dtype.type(s)
