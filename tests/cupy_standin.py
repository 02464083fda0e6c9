"""A strict, NumPy-backed stand-in for CuPy, so CI can run the ``gpu`` tests without a GPU.

What it proves, and what it does not
------------------------------------
It proves **structure**: which arrays live on which device, and which array API twins-np
calls. A ``cupy.ndarray`` here holds a NumPy array but behaves as a device array does:

- implicit conversion to the host is refused, as real CuPy refuses it: ``np.asarray(a)``,
  ``np.array(a)`` and anything else that calls ``a.__array__()`` raise ``TypeError``; the
  explicit ways out are ``a.get()`` and ``cupy.asnumpy(a)``; ``float``/``int``/``bool``/
  ``len``/iteration/``item``/``tolist`` behave as CuPy's (``cupy/_core/core.pyx``): a
  device array is never a Python index (no ``__index__``), ``bool`` of a multi-element
  array raises, iteration yields device arrays;
- mixing with host arrays is refused: ``device + host``, ``host * device``,
  ``cupy.matmul(device, host)``, ``np.concatenate([device, host])`` raise ``TypeError``
  (a NumPy function called on device arrays alone is dispatched to the CuPy function of the
  same name, through ``__array_function__`` / ``__array_ufunc__``, as real CuPy does);
- only functions real CuPy has can be called (:data:`FUNCTIONS`, :data:`METHODS`, an
  explicit allow-list): a NumPy-only function (``np.add.at``, ``np.nditer``,
  ``np.errstate`` on device work...) fails here as it would on a GPU;
- ``twins_np.cupy_available()`` is true, so every ``gpu``-marked test runs.

It proves **nothing** about GPU numerics (the arithmetic is NumPy's, on the CPU, so float32
rounding, reduction order and ``erf`` are the host's), nor about speed, memory or CUDA
kernels: ``RawModule``, ``RawKernel`` and ``ElementwiseKernel`` can be built but refuse to
run, so the fused-kernel path is skipped here and proven only on a real GPU
(``make gpu-check``).

How to use it
-------------
``pytest --cupy-standin -m gpu`` (or ``TWINS_NP_CUPY_STANDIN=1 pytest -m gpu``); ``make
test`` runs the ``gpu`` suite a second time this way. :func:`install` puts ``cupy``,
``cupyx`` and ``cupyx.scipy.special`` into ``sys.modules`` before ``twins_np.backend``
imports them (and re-points the backend if it was imported first). When a real CuPy with a
GPU is importable, the real one wins and nothing is installed.
"""

from __future__ import annotations

import copy as _copy
import sys
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

STANDIN_VERSION = "14.0.0+standin"
ENV_VAR = "TWINS_NP_CUPY_STANDIN"

# --- the allow-list: names real CuPy (13.x / 14.x) has ------------------------------------
# Module-level functions of ``cupy`` that forward to NumPy's function of the same name.
FUNCTIONS = frozenset(
    """
    abs absolute add all allclose amax amin angle any append arange arccos arccosh arcsin arcsinh
    arctan arctan2 arctanh argmax argmin argpartition argsort argwhere around array_equal
    array_split atleast_1d atleast_2d atleast_3d average bincount bitwise_and bitwise_not
    bitwise_or bitwise_xor broadcast_arrays broadcast_to cbrt ceil choose clip column_stack
    concatenate conj conjugate copysign copyto corrcoef cos cosh count_nonzero cov cross cumprod
    cumsum deg2rad degrees diag diagflat diagonal diff digitize divide divmod dot dsplit dstack
    einsum empty_like equal exp exp2 expand_dims expm1 extract eye fix flatnonzero flip fliplr
    flipud floor floor_divide fmax fmin fmod full_like greater greater_equal histogram
    hsplit hstack hypot identity imag inner invert isclose isfinite isin isinf isnan isreal kron
    ldexp left_shift less less_equal linspace log log10 log1p log2 logaddexp logaddexp2
    logical_and logical_not logical_or logical_xor logspace matmul max maximum mean median
    meshgrid min minimum mod moveaxis multiply nan_to_num nanargmax nanargmin nanmax nanmean
    nanmin nanprod nanstd nansum nanvar ndim negative nextafter nonzero not_equal ones_like outer
    pad partition percentile power prod ptp put quantile rad2deg radians ravel real
    reciprocal remainder repeat reshape right_shift rint roll rollaxis rot90 round searchsorted
    select shape sign signbit sin sinc sinh size sort split sqrt square squeeze stack std subtract sum
    swapaxes take take_along_axis tan tanh tensordot tile trace transpose tri tril triu true_divide
    trunc unique unravel_index var vdot vsplit vstack where zeros_like
    """.split()
)
# Creation from shapes: no array inputs, result on the device.
CREATION = frozenset("empty zeros ones full arange linspace eye identity tri".split())
# Elementwise ufuncs: every argument must be a device array or a scalar, as in CuPy.
UFUNCS = frozenset(
    """
    abs absolute add arccos arccosh arcsin arcsinh arctan arctan2 arctanh bitwise_and bitwise_not
    bitwise_or bitwise_xor cbrt ceil conj conjugate copysign cos cosh deg2rad degrees divide divmod
    equal exp exp2 expm1 floor floor_divide fmax fmin fmod greater greater_equal hypot
    invert isfinite isinf isnan ldexp left_shift less less_equal log log10 log1p log2 logaddexp
    logaddexp2 logical_and logical_not logical_or logical_xor maximum minimum mod multiply negative
    nextafter not_equal power rad2deg radians reciprocal remainder right_shift rint sign
    signbit sin sinh sqrt square subtract tan tanh true_divide trunc
    """.split()
)
# Host-side helpers real CuPy re-exports from NumPy (they take dtypes or Python objects).
PASSTHROUGH = frozenset(
    """
    dtype finfo iinfo issubdtype promote_types min_scalar_type isscalar
    newaxis pi e inf nan euler_gamma
    bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 complex64
    complex128 intp uintp byte ubyte short ushort intc uintc longlong ulonglong half single double
    csingle cdouble generic number integer signedinteger unsignedinteger inexact floating
    complexfloating
    """.split()
)
LINALG = frozenset("norm inv pinv solve det slogdet svd qr cholesky eigh eigvalsh lstsq matrix_power matrix_rank".split())
RANDOM = frozenset("seed rand randn random random_sample standard_normal normal uniform randint choice permutation".split())
# ``cupy.ndarray`` methods and attributes.
METHODS = frozenset(
    """
    all any argmax argmin argpartition argsort astype clip compress conj conjugate copy cumprod
    cumsum diagonal dot fill flatten max mean min nonzero partition prod ptp put ravel repeat
    reshape round sort squeeze std sum swapaxes take tobytes trace transpose var view
    """.split()
)
ATTRIBUTES = frozenset("shape dtype ndim size itemsize nbytes strides flags".split())
ARRAY_ATTRIBUTES = frozenset("T real imag base".split())


class StandinUnsupported(RuntimeError):
    """Raised for what the stand-in cannot do without a GPU (running a CUDA kernel)."""


def _mixed(where: str, value: Any) -> TypeError:
    return TypeError(
        f"{where}: unsupported type {type(value)} (the CuPy stand-in refuses host arrays where "
        "real CuPy does; move it with cupy.asarray or twins_np.to_device first)"
    )


# --- the device array ----------------------------------------------------------------------


class ndarray:  # noqa: N801 - the name real CuPy uses
    """A device array: a NumPy array behind a wall that only ``.get()`` crosses."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100.0
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Any, dtype: Any = float, order: str = "C") -> None:
        self._a = np.empty(shape, dtype=dtype, order=order)

    # ---- the wall ----
    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
        )

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__" or ufunc.__name__ not in UFUNCS:
            return NotImplemented
        return _module_functions[ufunc.__name__](*inputs, **kwargs)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        name, mod = func.__name__, func.__module__ or ""
        table = _linalg_functions if mod.endswith("linalg") else _module_functions
        if name not in table:
            return NotImplemented
        return table[name](*args, **kwargs)

    # ---- the explicit ways across ----
    def get(self, stream: Any = None, order: str = "C", out: Any = None) -> np.ndarray:
        """Copy to the host (the only way out, with ``cupy.asnumpy``)."""
        host = np.array(self._a, order=order, copy=True)
        if out is not None:
            out[...] = host
            return out
        return host

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        """Copy a host array into this device array."""
        self._a[...] = arr

    # ---- attributes and methods from the allow-list ----
    def __getattr__(self, name: str) -> Any:
        a = object.__getattribute__(self, "_a")
        if name in ATTRIBUTES:
            return getattr(a, name)
        if name in ARRAY_ATTRIBUTES:
            return _wrap(getattr(a, name))
        if name in METHODS:
            method = getattr(a, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                return _call(f"cupy.ndarray.{name}", method, args, kwargs)

            return call
        if name == "device":
            return cuda.Device(0)
        raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (not in the CuPy stand-in's allow-list)")

    # ---- Python protocol, as cupy/_core/core.pyx defines it ----
    # float(), int(), complex() and bool() copy the array to the host and convert it there
    # (an explicit, synchronising read: allowed, with NumPy's rules, so only 0-d/size-1
    # arrays convert); there is no __index__, so a device array is never a Python index
    # (range(n), a_list[i], host_array[i] all raise TypeError); iteration yields device
    # arrays, never host values; tolist() and item() return host Python objects.
    def __len__(self) -> int:
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self) -> Any:
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __bool__(self) -> bool:
        if self._a.size == 0:
            warnings.warn(
                "The truth value of an empty array is ambiguous. Returning False, but in future this will result "
                "in an error. Use `array.size > 0` to check that an array is not empty.",
                DeprecationWarning,
                stacklevel=2,
            )
            return False
        if self._a.size == 1:
            return bool(self.get())
        raise ValueError("The truth value of an array with more than one element is ambiguous. Use a.any() or a.all()")

    def __float__(self) -> float:
        return float(self.get())

    def __int__(self) -> int:
        return int(self.get())

    def __complex__(self) -> complex:
        return complex(self.get())

    def item(self) -> Any:
        """The one element as a Python scalar (copied to the host)."""
        if self._a.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().item()

    def tolist(self) -> Any:
        """A (nested) list of Python scalars, copied to the host."""
        return self.get().tolist()

    def __repr__(self) -> str:
        return repr(self._a)

    def __str__(self) -> str:
        return str(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __copy__(self) -> ndarray:
        return _wrap(self._a.copy())

    def __deepcopy__(self, memo: Any) -> ndarray:
        return _wrap(self._a.copy())

    def __reduce__(self) -> Any:
        return (_from_host, (self._a.copy(),))

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        # real CuPy copies a host value in (``a[...] = host`` is an explicit transfer)
        self._a[_index(key)] = value._a if isinstance(value, ndarray) else value


ndarray.__module__ = "cupy"  # as real CuPy's type reports it (tests check the module name)


def _index(key: Any) -> Any:
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, tuple):
        return tuple(k._a if isinstance(k, ndarray) else k for k in key)
    return key


def _from_host(a: np.ndarray) -> ndarray:
    out = ndarray.__new__(ndarray)
    out._a = a
    return out


# device arrays made by operations since install (tools/standin_notebook.py reports it): one
# per CuPy call that returns an array, a count of a GPU run's kernel launches and views
DEVICE_ARRAYS = [0]


def _wrap(obj: Any) -> Any:
    """Results back onto the 'device': arrays and NumPy scalars become ``ndarray``."""
    if isinstance(obj, np.ndarray):
        DEVICE_ARRAYS[0] += 1
        return _from_host(obj)
    if isinstance(obj, np.generic):
        DEVICE_ARRAYS[0] += 1
        return _from_host(np.asarray(obj))  # CuPy reductions return 0-d arrays
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


def _unwrap(where: str, obj: Any, allow_host: bool) -> Any:
    if isinstance(obj, ndarray):
        return obj._a
    if isinstance(obj, np.ndarray):
        if not allow_host:
            raise _mixed(where, obj)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(where, o, allow_host) for o in obj)
    return obj


def _call(where: str, fn: Callable[..., Any], args: Any, kwargs: Any, allow_host: bool = False) -> Any:
    out = kwargs.get("out")
    a = [_unwrap(where, x, allow_host) for x in args]
    k = {key: _unwrap(where, v, allow_host) for key, v in kwargs.items()}
    result = fn(*a, **k)
    if isinstance(out, ndarray) and result is out._a:
        return out
    return _wrap(result)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (bool, int, float, complex, np.generic))


def _ufunc(name: str) -> Callable[..., Any]:
    np_fn = getattr(np, name)

    def fn(*args: Any, **kwargs: Any) -> Any:
        for x in args:
            if not (isinstance(x, ndarray) or _is_scalar(x)):
                raise _mixed(f"cupy.{name}", x)
        out = kwargs.get("out")
        if out is not None and not isinstance(out, (ndarray, tuple)):
            raise _mixed(f"cupy.{name} (out=)", out)
        return _call(f"cupy.{name}", np_fn, args, kwargs)

    fn.__name__ = name
    return fn


def _function(name: str, np_fn: Callable[..., Any], prefix: str = "cupy") -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        return _call(f"{prefix}.{name}", np_fn, args, kwargs)

    fn.__name__ = name
    return fn


def _operator(name: str, reflected: bool = False, inplace: bool = False) -> Callable[..., Any]:
    def op(self: ndarray, other: Any) -> Any:
        if not (isinstance(other, ndarray) or _is_scalar(other)):
            if isinstance(other, np.ndarray):
                raise _mixed(f"cupy.ndarray.__{name}__", other)
            return NotImplemented
        b = other._a if isinstance(other, ndarray) else other
        if inplace:
            getattr(self._a, f"__i{name}__")(b)
            return self
        if reflected:
            return _wrap(getattr(self._a, f"__r{name}__")(b))
        return _wrap(getattr(self._a, f"__{name}__")(b))

    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"):
    setattr(ndarray, f"__{_name}__", _operator(_name))
    setattr(ndarray, f"__r{_name}__", _operator(_name, reflected=True))
    setattr(ndarray, f"__i{_name}__", _operator(_name, inplace=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _operator(_name))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda n: lambda self: _wrap(getattr(self._a, f"__{n}__")()))(_name))


# --- creation and transfer ---------------------------------------------------------------


def asarray(a: Any, dtype: Any = None, order: Any = None, **kwargs: Any) -> ndarray:
    """Host (or device) data onto the 'device'; a device array of the same dtype passes through."""
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return _from_host(np.array(_unwrap("cupy.asarray", a, True), dtype=dtype, order=order or "K", copy=True))


def array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", ndmin: int = 0, **kwargs: Any) -> ndarray:
    return _from_host(np.array(_unwrap("cupy.array", obj, True), dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asanyarray(a: Any, dtype: Any = None, order: Any = None) -> ndarray:
    return asarray(a, dtype, order)


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    if not isinstance(a, ndarray):
        raise _mixed("cupy.ascontiguousarray", a)
    return _wrap(np.ascontiguousarray(a._a, dtype=dtype))


def result_type(*arrays_and_dtypes: Any) -> np.dtype:
    return np.result_type(*(a.dtype if isinstance(a, ndarray) else a for a in arrays_and_dtypes))


def can_cast(from_: Any, to: Any, casting: str = "safe") -> bool:
    return bool(np.can_cast(from_.dtype if isinstance(from_, ndarray) else from_, to, casting=casting))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args: Any) -> Any:
    return sys.modules["cupy"] if any(isinstance(a, ndarray) for a in args) else np


def fuse(*args: Any, **kwargs: Any) -> Any:
    """``cupy.fuse``: here the Python function runs as written (no kernel is built)."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn


class _KernelRefused:
    def __init__(self, kind: str, *args: Any, **kwargs: Any) -> None:
        self.kind = kind
        self.args, self.kwargs = args, kwargs

    def get_function(self, name: str) -> _KernelRefused:
        return _KernelRefused(f"{self.kind} function {name!r}")

    def compile(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise StandinUnsupported(
            f"the CuPy stand-in cannot run CUDA code ({self.kind}); fused kernels are proven only on a real GPU"
        )


def RawModule(*args: Any, **kwargs: Any) -> _KernelRefused:  # noqa: N802 - CuPy's name
    return _KernelRefused("RawModule", *args, **kwargs)


def RawKernel(*args: Any, **kwargs: Any) -> _KernelRefused:  # noqa: N802
    return _KernelRefused("RawKernel", *args, **kwargs)


def ElementwiseKernel(*args: Any, **kwargs: Any) -> _KernelRefused:  # noqa: N802
    return _KernelRefused("ElementwiseKernel", *args, **kwargs)


def ReductionKernel(*args: Any, **kwargs: Any) -> _KernelRefused:  # noqa: N802
    return _KernelRefused("ReductionKernel", *args, **kwargs)


# --- cupy.cuda ---------------------------------------------------------------------------

cuda = types.ModuleType("cupy.cuda")


class _Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)
        self.compute_capability = "90"
        self.mem_info = (140 * 2**30, 141 * 2**30)

    def synchronize(self) -> None:
        return None

    def use(self) -> None:
        return None

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _Stream:
    def synchronize(self) -> None:
        return None


class _StreamClass:
    null = _Stream()

    def __call__(self, *args: Any, **kwargs: Any) -> _Stream:
        return _Stream()


class _Event:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.t = 0.0

    def record(self, stream: Any = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        return None


class _MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        return None


_pool = _MemoryPool()


def _get_elapsed_time(start: _Event, end: _Event) -> float:
    return (end.t - start.t) * 1e3


runtime = types.ModuleType("cupy.cuda.runtime")
runtime.getDeviceCount = lambda: 1  # type: ignore[attr-defined]
runtime.getDeviceProperties = lambda i: {  # type: ignore[attr-defined]
    "name": b"CuPy stand-in (NumPy on the CPU, no GPU)",
    "totalGlobalMem": 141 * 2**30,
    "major": 9,
    "minor": 0,
}
runtime.runtimeGetVersion = lambda: 13000  # type: ignore[attr-defined]
runtime.driverGetVersion = lambda: 13000  # type: ignore[attr-defined]
cuda.runtime = runtime  # type: ignore[attr-defined]
cuda.is_available = lambda: True  # type: ignore[attr-defined]
cuda.Device = _Device  # type: ignore[attr-defined]
cuda.Stream = _StreamClass()  # type: ignore[attr-defined]
cuda.Event = _Event  # type: ignore[attr-defined]
cuda.get_elapsed_time = _get_elapsed_time  # type: ignore[attr-defined]
cuda.MemoryPool = _MemoryPool  # type: ignore[attr-defined]


# --- assembling the modules ----------------------------------------------------------------

_module_functions: dict[str, Callable[..., Any]] = {}
_linalg_functions: dict[str, Callable[..., Any]] = {}


def _creation(name: str) -> Callable[..., Any]:
    np_fn = getattr(np, name)

    def fn(*args: Any, **kwargs: Any) -> Any:
        return _call(f"cupy.{name}", np_fn, args, kwargs)

    fn.__name__ = name
    return fn


def _random_module() -> types.ModuleType:
    mod = types.ModuleType("cupy.random")
    for name in RANDOM:
        setattr(mod, name, _function(name, getattr(np.random, name), "cupy.random"))

    class _Generator:
        def __init__(self, seed: Any = None) -> None:
            self._g = np.random.default_rng(seed)

        def __getattr__(self, name: str) -> Any:
            method = getattr(self._g, name)
            return lambda *a, **k: _call(f"cupy.random.Generator.{name}", method, a, k)

    mod.default_rng = _Generator  # type: ignore[attr-defined]
    mod.Generator = _Generator  # type: ignore[attr-defined]
    return mod


def build_modules() -> dict[str, types.ModuleType]:
    """The ``cupy``, ``cupy.cuda``, ``cupy.linalg``, ``cupy.random``, ``cupyx...`` modules."""
    cp = types.ModuleType("cupy", __doc__)
    for name in FUNCTIONS:
        _module_functions[name] = _ufunc(name) if name in UFUNCS else _function(name, getattr(np, name))
    for name in CREATION:
        _module_functions[name] = _creation(name)
    for fn in (asarray, array, asanyarray, ascontiguousarray, result_type, can_cast):
        _module_functions[fn.__name__] = fn
    for name, fn in _module_functions.items():
        setattr(cp, name, fn)
    for name in PASSTHROUGH:
        setattr(cp, name, getattr(np, name))
    linalg = types.ModuleType("cupy.linalg")
    for name in LINALG:
        _linalg_functions[name] = _function(name, getattr(np.linalg, name), "cupy.linalg")
        setattr(linalg, name, _linalg_functions[name])
    random = _random_module()
    for name, value in {
        "ndarray": ndarray,
        "asnumpy": asnumpy,
        "get_array_module": get_array_module,
        "fuse": fuse,
        "RawModule": RawModule,
        "RawKernel": RawKernel,
        "ElementwiseKernel": ElementwiseKernel,
        "ReductionKernel": ReductionKernel,
        "cuda": cuda,
        "linalg": linalg,
        "random": random,
        "is_available": lambda: True,
        "get_default_memory_pool": lambda: _pool,
        "__version__": STANDIN_VERSION,
        "__twins_np_standin__": True,
        "StandinUnsupported": StandinUnsupported,
    }.items():
        setattr(cp, name, value)

    from scipy.special import erf as _host_erf

    cupyx = types.ModuleType("cupyx")
    scipy_mod = types.ModuleType("cupyx.scipy")
    special = types.ModuleType("cupyx.scipy.special")
    special.erf = _ufunc_from(_host_erf, "cupyx.scipy.special.erf")  # type: ignore[attr-defined]
    scipy_mod.special = special  # type: ignore[attr-defined]
    cupyx.scipy = scipy_mod  # type: ignore[attr-defined]
    return {
        "cupy": cp,
        "cupy.cuda": cuda,
        "cupy.cuda.runtime": runtime,
        "cupy.linalg": linalg,
        "cupy.random": random,
        "cupyx": cupyx,
        "cupyx.scipy": scipy_mod,
        "cupyx.scipy.special": special,
    }


def _ufunc_from(np_fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        for x in args:
            if not (isinstance(x, ndarray) or _is_scalar(x)):
                raise _mixed(where, x)
        return _call(where, np_fn, args, kwargs)

    return fn


def real_gpu_present() -> bool:
    """True when a real CuPy imports and sees a GPU (then the stand-in stays out of the way)."""
    if "cupy" in sys.modules:
        mod = sys.modules["cupy"]
        if getattr(mod, "__twins_np_standin__", False):
            return False
    try:
        import cupy as real  # noqa: PLC0415

        return bool(real.cuda.is_available())
    except Exception:
        return False


def is_active() -> bool:
    return bool(getattr(sys.modules.get("cupy"), "__twins_np_standin__", False))


def install() -> bool:
    """Install the stand-in as ``cupy`` (unless a real GPU is present); True when installed."""
    if is_active():
        return True
    if real_gpu_present():
        return False
    for name in [m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx")]:
        del sys.modules[name]
    modules = build_modules()
    sys.modules.update(modules)
    backend = sys.modules.get("twins_np.backend")
    if backend is not None:  # imported before us: point it at the stand-in
        backend._cupy = modules["cupy"]  # type: ignore[attr-defined]
        backend._cupy_special = modules["cupyx.scipy.special"]  # type: ignore[attr-defined]
        backend.fuse = modules["cupy"].fuse  # type: ignore[attr-defined]
    return True


def copy_of(a: ndarray) -> ndarray:
    """A copy on the same device (for tests)."""
    return _copy.copy(a)
