"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU, one code path.

This is the only module of twins-np that imports ``cupy``. Every operation
finds its array module with :func:`get_xp` from the arrays it is given, so the
same line of code runs on ``numpy.ndarray`` and on ``cupy.ndarray``::

    xp = get_xp(x=x, weight=w)      # numpy or cupy; TypeError if they are mixed
    out = xp.matmul(x, w.T)

Importing twins-np never fails because of CUDA: a missing cupy, a cupy without
a driver, or a machine without a GPU all mean "NumPy only", and
:func:`cupy_available` says which case holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

try:  # cupy is optional; a broken CUDA install must not break `import twins_np`.
    import cupy as _cupy
    import cupyx.scipy.special as _cupy_special
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None
    _cupy_special = None

__all__ = [
    "cupy_available",
    "is_cupy_array",
    "get_xp",
    "asnumpy",
    "to_device",
    "device_of",
    "erf",
    "default_rng",
    "host_normal",
    "host_uniform",
    "fuse",
    "cupy_version",
    "gpu_description",
    "synchronize",
    "map_blocks",
    "row_sums",
    "fused_kernels",
    "fused_kernels_available",
    "cpu_kernels",
    "cpu_kernels_available",
    "cpu_kernel_threads",
    "use_fused",
    "kernel_available",
    "KERNEL_FILES",
    "cuda_function",
]

Device = str  # "cpu" or "gpu"


def cupy_available() -> bool:
    """True when CuPy is installed *and* sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return bool(_cupy.cuda.is_available())
    except Exception:  # pragma: no cover - driver errors vary
        return False


def is_cupy_array(a: Any) -> bool:
    """True for a ``cupy.ndarray`` (False for everything when cupy is absent)."""
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def get_xp(*arrays: Any, **named: Any) -> Any:
    """Return the array module (``numpy`` or ``cupy``) of the given arrays.

    Positional and keyword arguments are both accepted; ``None`` and Python
    scalars are ignored. Keyword names are used in the error message, so ops
    call it as ``get_xp(x=x, weight=w, bias=b)``.

    Raises:
        TypeError: if NumPy and CuPy arrays are mixed. The message names the
            argument that lives on the other device and suggests ``to_device``.
    """
    items = [(f"argument {i}", a) for i, a in enumerate(arrays)] + list(named.items())
    first_name, first_dev = None, None
    for name, a in items:
        if a is None or np.isscalar(a):
            continue
        dev = "gpu" if is_cupy_array(a) else "cpu"
        if first_dev is None:
            first_name, first_dev = name, dev
        elif dev != first_dev:
            raise TypeError(
                f"'{name}' is a {_kind(dev)} array but '{first_name}' is a "
                f"{_kind(first_dev)} array; move them to one device first, e.g. "
                f"twins_np.to_device({name}, {first_dev!r})"
            )
    return _cupy if first_dev == "gpu" else np


def _kind(dev: str) -> str:
    return "CuPy (GPU)" if dev == "gpu" else "NumPy (CPU)"


def device_of(a: Any) -> Device:
    """``"gpu"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "gpu" if is_cupy_array(a) else "cpu"


def asnumpy(a: Any) -> np.ndarray:
    """Copy a CuPy array to the host; NumPy arrays and scalars pass through."""
    if is_cupy_array(a):
        return _cupy.asnumpy(a)  # type: ignore[union-attr]
    return np.asarray(a)


def to_device(obj: Any, device: Device) -> Any:
    """Move an array, a module, or a (nested) list/tuple/dict of them.

    Args:
        obj: ``numpy.ndarray``, ``cupy.ndarray``, an object with a
            ``to_device(device)`` method (every twins-np module has one), or a
            list / tuple / dict of those. Anything else is returned unchanged.
        device: ``"cpu"`` or ``"gpu"``.

    Raises:
        ValueError: for an unknown device name.
        RuntimeError: when ``"gpu"`` is asked for but CuPy sees no GPU.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" and not cupy_available():
        raise RuntimeError(
            "device='gpu' needs CuPy and a CUDA GPU; none was found "
            '(pip install -e ".[gpu]" in the twins-np folder, on a machine with an NVIDIA GPU)'
        )
    if hasattr(obj, "to_device") and not isinstance(obj, (np.ndarray,)) and not is_cupy_array(obj):
        return obj.to_device(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if isinstance(obj, np.ndarray) or is_cupy_array(obj):
        if device == "cpu":
            return asnumpy(obj)
        return _cupy.asarray(obj)  # type: ignore[union-attr]
    return obj


def erf(x: Any) -> Any:
    """Elementwise error function on either backend, keeping the dtype.

    NumPy: ``scipy.special.erf``; CuPy: ``cupyx.scipy.special.erf``.
    """
    if is_cupy_array(x):
        return _cupy_special.erf(x)  # type: ignore[union-attr]
    from scipy.special import erf as _scipy_erf

    return _scipy_erf(x)


# --- randomness ------------------------------------------------------------------
# All random numbers are drawn on the host from an explicit numpy Generator and then
# moved to the array's device. This costs a copy on the GPU but makes a seed give the
# same numbers on both backends, which is what a student comparing runs expects.


def default_rng(seed: int | None | np.random.Generator = None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a seed (a Generator passes through)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def host_normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float32, xp: Any = np) -> Any:
    """Standard-normal array drawn on the host from ``rng``, returned on ``xp``."""
    a = rng.standard_normal(shape).astype(dtype, copy=False)
    return a if xp is np else xp.asarray(a)


def host_uniform(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float32, xp: Any = np) -> Any:
    """Uniform [0, 1) array drawn on the host from ``rng``, returned on ``xp``."""
    a = rng.random(shape).astype(dtype, copy=False)
    return a if xp is np else xp.asarray(a)


def _identity_decorator(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    return wrap


# ``fuse()`` turns an elementwise Python function into one GPU kernel when CuPy is
# present; called with NumPy arrays, a cupy-fused function simply runs as NumPy.
# Without cupy it is an identity decorator, so the same function is the NumPy twin.
fuse: Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]] = _cupy.fuse if _cupy is not None else _identity_decorator


def cupy_version() -> str | None:
    """CuPy's version string, or None when it is not importable."""
    return None if _cupy is None else str(_cupy.__version__)


def gpu_description() -> str | None:
    """``"NAME (XX.X GiB)"`` of the current CUDA device, or None without a GPU."""
    if not cupy_available():
        return None
    dev = _cupy.cuda.Device()  # type: ignore[union-attr]
    props = _cupy.cuda.runtime.getDeviceProperties(dev.id)  # type: ignore[union-attr]
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"{name} ({dev.mem_info[1] / 2**30:.1f} GiB)"


def synchronize() -> None:
    """Wait for queued GPU work (a no-op on the CPU); needed before timing CuPy code."""
    if cupy_available():
        _cupy.cuda.Stream.null.synchronize()  # type: ignore[union-attr]


# --- cache-sized blocks for chains of elementwise work ---------------------------
# A NumPy expression such as ``(x - mean) * inv_std * gamma + beta`` makes one pass
# over memory per operator, each reading and writing arrays far larger than the CPU's
# caches: on a (B, N, C) activation that is memory traffic, not arithmetic. PyTorch
# fuses such chains into one loop. :func:`map_blocks` gets most of that back while
# keeping the readable form: it runs the whole chain on one block of rows at a time,
# so the block and its temporaries stay in cache, and only the inputs and the results
# travel to and from memory.
#
# It is deliberately single-threaded. NumPy's ufuncs release the GIL, so a thread pool
# could run blocks in parallel, but on the two-core machines this was measured on it
# made whole models 0-30 % slower: OpenBLAS keeps its threads spinning for a while after
# each matrix product, and the pool's threads fought them for the cores.

DEFAULT_BLOCK_BYTES = 1 << 20  # read at call time, so tests can shrink it


def map_blocks(fn: Callable[..., None], *arrays: Any, out: Any, block_bytes: int | None = None) -> Any:
    """Run ``fn(*arrays, out=out)`` block by block on the CPU; returns ``out``.

    ``fn`` computes its result from its arguments and writes it into ``out`` (one array,
    or a tuple of arrays). It must treat the rows (axis 0) of its arguments
    independently, as an elementwise or a per-row function does: then calling it on
    matching blocks of rows of the inputs and of ``out`` gives the result of one call
    over everything, whatever the block size (bit for bit for elementwise functions;
    a function that calls BLAS may differ in the last bit, as BLAS results can depend
    on where a row sits in the matrix). Writing straight into the caller's arrays
    (rather than returning new ones) saves a copy of every block.

    On CuPy, and when everything fits in one block, this is one call over the whole
    arrays: the GPU runs each ufunc over the whole array at once.

    Args:
        fn: ``fn(*row_blocks, out=out_row_blocks)``, written with the array module of
            its arguments.
        arrays: inputs with the same number of rows (axis 0).
        out: the output array, or a tuple of them, allocated by the caller with the
            inputs' number of rows.
        block_bytes: size of one block of the first input; default
            ``DEFAULT_BLOCK_BYTES`` = 1 MiB. Smaller blocks fit better in cache but each
            block pays NumPy's fixed cost per ufunc call (about a microsecond); 1 MiB was
            the fastest for GELU, LayerNorm and softmax on the benchmark machine.

    Returns:
        ``out``.
    """
    first = arrays[0]
    rows = first.shape[0]
    block_bytes = DEFAULT_BLOCK_BYTES if block_bytes is None else block_bytes
    row_bytes = max(1, first.itemsize * (first.size // max(rows, 1)))
    step = max(1, block_bytes // row_bytes)
    if is_cupy_array(first) or rows <= step:
        fn(*arrays, out=out)
        return out
    outs = out if isinstance(out, tuple) else None
    for start in range(0, rows, step):
        rows_ = slice(start, start + step)
        block_out = tuple(o[rows_] for o in outs) if outs is not None else out[rows_]
        fn(*(a[rows_] for a in arrays), out=block_out)
    return out


def row_sums(a: Any) -> Any:
    """Sums over the last axis, keeping it: ``a.sum(axis=-1, keepdims=True)``.

    Computed as a matrix-vector product with a vector of ones, one BLAS call that is
    several times faster than NumPy's reduction loop over a short last axis (a row of
    32 to 512 channels, or of 49 attention scores). The last bit may differ from
    ``sum``'s, as BLAS accumulates in its own order.
    """
    return (a @ get_xp(a).ones(a.shape[-1], dtype=a.dtype))[..., None]


# --- fused kernels: one switch per device -------------------------------------------------
# A few operations have fused kernels that do in one pass over memory what the readable
# NumPy/CuPy expression (the "twin", always the reference) does in several: GELU, LayerNorm,
# softmax, the PEG's 3x3 depthwise conv and the AdamW update. Which path runs is decided here,
# per device, and nowhere else:
#
#   NumPy arrays: the CPU kernels (twins_np/kernels/*_cpu.py, compiled with numba). On by
#     default wherever numba is installed, as tests/test_kernels_cpu.py proves them equal to
#     their twins on this kind of machine; off with TWINS_NP_CPU_KERNELS=0 or cpu_kernels(False).
#     Without numba everything takes the twins, as before; so does a numba whose import fails
#     (one warning says why, see _cpu_kernels_load).
#   CuPy arrays: the CUDA kernels (twins_np/kernels/*.cu). Off by default until a GPU run has
#     proven them; on with fused_kernels(True).

_FUSED = False
_CPU_KERNELS: bool | None = None  # None: not decided yet (on first use: the environment, then numba's presence)
_CPU_THREADS: int | None = None  # None: not decided yet (on first use: TWINS_NP_CPU_THREADS, else 1)
_NUMBA_ERROR: str | None = None  # why numba did not import, once a kernel has tried (see _cpu_kernels_load)
_NUMBA_TRIED = False
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fused_kernels_available() -> bool:
    """True when the fused GPU kernels can run: CuPy with a real CUDA GPU (not a stand-in)."""
    return cupy_available() and not getattr(_cupy, "__twins_np_standin__", False)


def fused_kernels(enabled: bool | None = None) -> bool:
    """Switch the fused GPU kernels on or off (default off); returns the setting now in force.

    ``fused_kernels()`` only reads it. NumPy arrays are ruled by :func:`cpu_kernels` instead.

    Raises:
        RuntimeError: ``fused_kernels(True)`` where no kernel can run (no GPU, or the test
            suite's CuPy stand-in, which cannot run CUDA code).
    """
    global _FUSED
    if enabled is not None:
        if enabled and not fused_kernels_available():
            raise RuntimeError(
                "fused_kernels(True) needs CuPy with a real CUDA GPU to compile and run the kernels in "
                "twins_np/kernels/; none is available here, so the readable (unfused) path is used"
            )
        _FUSED = bool(enabled)
    return _FUSED


def cpu_kernels_available() -> bool:
    """True when numba is installed, so the CPU kernels can be compiled (numba is not imported here)."""
    import importlib.util

    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as absent
        return False


def cpu_kernels(enabled: bool | None = None) -> bool:
    """Switch the CPU kernels on or off; returns the setting now in force.

    The default is on where numba is installed, unless the environment variable
    ``TWINS_NP_CPU_KERNELS`` is ``0`` (read once, at the first call). ``cpu_kernels()`` only
    reads the setting. Switching changes which path the next call takes; results agree to the
    bit or within the few ulp that tests/test_kernels_cpu.py states per kernel.

    Raises:
        RuntimeError: ``cpu_kernels(True)`` where numba is not installed.
    """
    global _CPU_KERNELS
    if enabled is not None:
        if enabled and not cpu_kernels_available():
            raise RuntimeError("cpu_kernels(True) needs numba (pip install numba, or twins-np[fast]); it is not installed")
        if enabled and not _cpu_kernels_load(warn=False):
            raise RuntimeError(f"cpu_kernels(True): numba is installed but does not import ({_NUMBA_ERROR})")
        _CPU_KERNELS = bool(enabled)
    elif _CPU_KERNELS is None:
        _CPU_KERNELS = os.environ.get("TWINS_NP_CPU_KERNELS", "1").strip() != "0" and cpu_kernels_available()
    return _CPU_KERNELS


def cpu_kernel_threads(n: int | None = None) -> int:
    """Threads the CPU kernels use (default 1); ``cpu_kernel_threads(n)`` sets it, and returns n.

    The default comes from ``TWINS_NP_CPU_THREADS`` when set, else 1. One thread, because
    the kernels run between matrix products whose BLAS threads keep spinning on the other
    cores for a while after each product: a second kernel thread has to fight them for a
    core, and on a machine shared with other work it waits for one (benchmarks/RESULTS.md
    measures both). ``twins-np train --threads N`` (``training.blas_threads``) sets BLAS and
    the kernels to N together.

    Raises:
        ValueError: for n < 1.
    """
    global _CPU_THREADS
    if n is not None:
        if int(n) < 1:
            raise ValueError(f"cpu_kernel_threads: n must be >= 1, got {n}")
        _CPU_THREADS = int(n)
    elif _CPU_THREADS is None:
        value = os.environ.get("TWINS_NP_CPU_THREADS", "").strip()
        _CPU_THREADS = max(1, int(value)) if value.isdigit() else 1
    return _CPU_THREADS


# Where a kernel's source lives: the kernel NAME of a device is the file KERNEL_FILES[device] % NAME
# of twins_np/kernels/ (gelu -> gelu.cu). A missing file means "no such kernel here", not an
# error: the student copy of a course leaves out the kernels of the tasks it asks for (they
# would compute the answer), and every op then takes its readable twin.
KERNEL_FILES = {"gpu": "%s.cu", "cpu": "%s_cpu.py"}
_PRESENT: dict[tuple[str, str], bool] = {}


def kernel_available(kernel: str, device: Device = "gpu") -> bool:
    """True when the source file of the fused kernel ``kernel`` for ``device`` is installed.

    Args:
        kernel: the kernel's name, as the ops pass it to :func:`use_fused` ("gelu").
        device: "gpu" (``twins_np/kernels/NAME.cu``) or "cpu" (``twins_np/kernels/NAME_cpu.py``).
    """
    key = (kernel, device)
    if key not in _PRESENT:
        from importlib import resources

        try:
            _PRESENT[key] = resources.files("twins_np").joinpath("kernels", KERNEL_FILES[device] % kernel).is_file()
        except (OSError, KeyError, ModuleNotFoundError):
            _PRESENT[key] = False
    return _PRESENT[key]


def use_fused(a: Any, kernel: str) -> bool:
    """True when ``a`` should take the fused kernel ``kernel`` ("gelu"): its device's switch is on,
    its dtype is float32/float64 and the kernel's source is installed (:func:`kernel_available`);
    else the op runs its twin.

    CuPy arrays: :func:`fused_kernels` and ``kernels/NAME.cu``; NumPy arrays: :func:`cpu_kernels`
    and ``kernels/NAME_cpu.py``.
    """
    if is_cupy_array(a):
        return _FUSED and kernel_available(kernel, "gpu")
    return (
        isinstance(a, np.ndarray)
        and a.dtype in _KERNEL_DTYPES
        and cpu_kernels()
        and kernel_available(kernel, "cpu")
        and _cpu_kernels_load()
    )


def _cpu_kernels_load(warn: bool = True) -> bool:
    """True when numba imports, tried once, the first time a CPU kernel would run.

    "Installed" (:func:`cpu_kernels_available`, which only looks for the package) is not
    "works": a NumPy newer than the installed numba supports, or a broken llvmlite, makes
    ``import numba`` raise. Then every op takes its twin, as without numba, and one warning
    says why, instead of every forward failing with numba's ImportError. The import is the
    kernels' own (``twins_np.kernels.cpu_common``, the one module that imports numba), by name,
    because the backend sits below the kernels.
    """
    global _NUMBA_TRIED, _NUMBA_ERROR, _CPU_KERNELS
    if not _NUMBA_TRIED:
        import importlib

        _NUMBA_TRIED = True
        try:
            importlib.import_module(f"{__package__}.kernels.cpu_common")
        except Exception as e:  # noqa: BLE001 - any failure of numba's import means "no kernels"
            _NUMBA_ERROR = f"{type(e).__name__}: {e}"
            _CPU_KERNELS = False
            if warn:
                import warnings

                warnings.warn(
                    f"numba is installed but does not import ({_NUMBA_ERROR}); the CPU kernels are off and "
                    "every op runs its NumPy twin (same results, slower). Repair numba (pip install -U numba) "
                    "or set TWINS_NP_CPU_KERNELS=0 to silence this warning.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _NUMBA_ERROR is None


_MODULES: dict[str, Any] = {}


def cuda_function(source: str, name: str) -> Any:
    """The kernel ``name`` of ``twins_np/kernels/<source>``, compiled once with ``cupy.RawModule``."""
    if source not in _MODULES:
        from importlib import resources

        folder = resources.files("twins_np").joinpath("kernels")
        code = folder.joinpath(source).read_text(encoding="utf-8")
        _MODULES[source] = _cupy.RawModule(code=code, options=("--std=c++14", f"-I{folder}"))  # type: ignore[union-attr]
    return _MODULES[source].get_function(name)
