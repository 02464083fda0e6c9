"""Finite-difference gradient checks that can actually fail.

Three rules make a gradient check trustworthy, and this module enforces all three:

1. **Random upstream gradient.** The checked scalar is L = sum(out * dout) with dout
   drawn from N(0, 1), never all ones. With ones, every backward that maps a constant
   vector to zero looks right: for softmax the true gradient of sum(y) is exactly zero,
   so a wrong backward such as ``y*dout - y*mean(dout)`` (a plain mean where a
   y-weighted sum belongs) passes; and LayerNorm's dx vanishes when gamma = 1.
2. **float64 on the host.** Central differences with eps = 1e-6 have truncation error
   ~eps^2 and rounding error ~1e-16 / eps; only float64 makes both far smaller than the
   errors we hunt. The arrays are copied to NumPy float64 whatever they came as.
3. **A stated tolerance.** The error of one array is the worst entry measured against
   the array's own scale, so tiny entries do not blow it up::

       rel_err = max_i abs(analytic_i - numeric_i) / max(max_i abs(numeric_i), max_i abs(analytic_i), tiny)

   and it must be below ``TOLERANCES["gradcheck_rel"]`` (1e-6).

Modes: ``full`` perturbs every element (small inputs), ``sampled`` a random subset,
``directional`` one random unit direction per input (for whole blocks and models).
Directional checks use the fourth-order stencil (four evaluations)::

    f'(0) ~ (-f(2h) + 8 f(h) - 8 f(-h) + f(-2h)) / (12 h),  h = 1e-2

Why: in a deep float64 model the two-point quotient with h = 1e-6 is
limited by rounding noise (~1e-10 absolute), which is 1e-4 relative for a parameter
whose directional derivative is 1e-6; the fourth-order stencil allows a step 10^4 times
larger with truncation error O(h^4), and brings such rows to ~1e-8.

Exactly zero gradients: when the numeric *and* the analytic gradient of an input both lie
below the resolution of the finite differences, 16 * eps_machine * sum(abs(out * dout)) /
step (the rounding of L itself, divided by the step), no relative error can be measured;
such a row passes when the absolute error is below that resolution and is shown as
"yes (zero)". Every other row must meet the relative tolerance.

On failure an ``AssertionError`` prints a table: input, shape, max abs error, max rel
error, worst index, numeric vs analytic value, and the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import asnumpy, device_of, to_device

__all__ = ["TOLERANCES", "GradCheckResult", "numerical_grad", "check_backward", "check_module", "format_table"]

# The one table of tolerances used by twins-np's checks and tests.
TOLERANCES: dict[str, float] = {
    # float64 finite differences vs the analytic backward (max relative error)
    "gradcheck_rel": 1e-6,
    # float64 twins-np vs float64 PyTorch/timm (relative to the array's scale)
    "parity_f64_rel": 1e-10,
    # float64 whole-model parity (deeper chains accumulate rounding)
    "parity_model_f64_rel": 1e-9,
    # float32 twins-np vs float32 PyTorch/timm
    "parity_f32_rel": 1e-4,
    # float32 forward vs float64 forward of the same op
    "f32_vs_f64_rel": 1e-4,
    # finite-difference step (full / sampled: central difference)
    "eps": 1e-6,
    # step along a unit direction (directional: fourth-order stencil)
    "eps_directional": 1e-2,
}


_EPS_MACH = float(np.finfo(np.float64).eps)


@dataclass
class GradCheckResult:
    """One row of the report: how well one input's gradient matched."""

    name: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...] | None
    numeric: float
    analytic: float
    checked: int  # number of elements (or 1 for a direction)
    resolution: float = 0.0  # finite-difference resolution of this check (see below)
    zero: bool = False  # numeric and analytic both below the resolution: a zero gradient

    def passed(self, tol: float) -> bool:
        """Relative error below ``tol``, or a gradient that is zero to the check's resolution."""
        return self.max_rel_err < tol or (self.zero and self.max_abs_err <= self.resolution)


def _to_host64(a: Any) -> Any:
    if hasattr(a, "dtype") and hasattr(a, "shape") and np.dtype(a.dtype).kind == "f":
        return asnumpy(a).astype(np.float64)
    return a


def _as_out(result: Any) -> tuple[Any, Any]:
    """Accept ``forward`` returning ``(out, cache)`` or just ``out``."""
    if isinstance(result, tuple) and len(result) == 2:
        return np.asarray(asnumpy(result[0])) if np.isscalar(result[0]) else result[0], result[1]
    return result, None


def _scalar(forward: Callable[..., Any], args: list[Any], dout: np.ndarray) -> float:
    out, _ = _as_out(forward(*args))
    return float(np.sum(asnumpy(out) * dout))


def numerical_grad(
    f: Callable[[], float], x: np.ndarray, eps: float = 1e-6, indices: Sequence[tuple[int, ...]] | None = None
) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to ``x`` (in place).

    Args:
        f: takes no argument and reads ``x``; returns a float.
        x: float64 array, perturbed in place and restored.
        eps: step.
        indices: elements to perturb; all of them when None.

    Returns:
        grad: array of x's shape; elements not in ``indices`` are NaN.
    """
    if x.dtype != np.float64:
        raise TypeError(f"numerical_grad needs a float64 array, got {x.dtype}")
    grad = np.full(x.shape, np.nan)
    it = indices if indices is not None else list(np.ndindex(*x.shape))
    for idx in it:
        old = x[idx]
        x[idx] = old + eps
        fp = f()
        x[idx] = old - eps
        fm = f()
        x[idx] = old
        grad[idx] = (fp - fm) / (2.0 * eps)
    return grad


def _compare(
    name: str,
    shape: tuple[int, ...],
    num: np.ndarray,
    ana: np.ndarray,
    idx: list[tuple[int, ...]] | None,
    resolution: float,
) -> GradCheckResult:
    diff = np.abs(num - ana)
    scale = max(float(np.max(np.abs(num))), float(np.max(np.abs(ana))), 1e-300)
    k = int(np.argmax(diff))
    worst = idx[k] if idx is not None else None
    return GradCheckResult(
        name, shape, float(diff.max()), float(diff.max() / scale), worst, float(num.flat[k]), float(ana.flat[k]),
        num.size, resolution, zero=scale <= resolution,
    )  # fmt: skip


def format_table(rows: list[GradCheckResult], tol: float, seed: int | None = None) -> str:
    """The report printed on failure (and by ``twins-np gradcheck -v``)."""
    w = max([len("input")] + [len(r.name) for r in rows]) + 2
    head = (
        f"{'input':<{w}}{'shape':<18}{'checked':>8}{'max abs err':>13}{'max rel err':>13}  "
        f"{'worst index':<16}{'numeric':>13}{'analytic':>13}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<{w}}{str(r.shape):<18}{r.checked:>8}{r.max_abs_err:>13.3e}{r.max_rel_err:>13.3e}  "
            f"{str(r.worst_index):<16}{r.numeric:>13.5e}{r.analytic:>13.5e}  "
            f"{('yes (zero)' if r.zero else 'yes') if r.passed(tol) else 'NO'}"
        )
    lines.append(f"tolerance: max rel err < {tol:g}; seed = {seed}")
    return "\n".join(lines)


def _flat_grads(grads: Any) -> list[Any]:
    """A backward's result as a flat list: nested tuples flattened, None entries dropped."""
    if not isinstance(grads, (tuple, list)):
        return [grads]
    out: list[Any] = []
    for g in grads:
        if isinstance(g, (tuple, list)):
            out += _flat_grads(g)
        elif g is not None:
            out.append(g)
    return out


def check_backward(
    forward: Callable[..., Any],
    backward: Callable[[Any, Any], Any],
    args: Sequence[Any],
    wrt: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    mode: str = "full",
    dout: Any | None = None,
    n_samples: int = 20,
    eps: float | None = None,
    tol: float | None = None,
    seed: int = 0,
    check_inputs_unchanged: bool = True,
    device: str = "cpu",
) -> list[GradCheckResult]:
    """Compare ``backward`` with finite differences of ``forward``, in float64.

    Args:
        forward: ``forward(*args) -> (out, cache)`` (or just ``out``).
        backward: ``backward(dout, cache) -> grads``: one array, or a tuple with one gradient
            per array argument in the forward's order (twins-np's backward contract): nested
            tuples (a group of parameters, e.g. GSA's ``sr_params``) are flattened and None
            entries (arguments passed as None) dropped, and the result is aligned with ``wrt``.
        args: the inputs; float arrays are converted to NumPy float64, other values
            (sizes, head counts, None) are passed through unchanged.
        wrt: indices of ``args`` to check; default: every float array.
        names: display names of the ``wrt`` inputs.
        mode: ``"full"``, ``"sampled"`` or ``"directional"``.
        dout: upstream gradient; default N(0, 1) from ``seed`` (never ones).
        n_samples: elements per input in ``sampled`` mode.
        eps: finite-difference step (default ``TOLERANCES["eps"]``).
        tol: max relative error allowed (default ``TOLERANCES["gradcheck_rel"]``).
        seed: seeds dout, sampled indices and directions.
        check_inputs_unchanged: also assert that forward/backward leave ``args`` intact.
        device: where the *analytic* forward/backward run (``"gpu"``: CuPy float64); the
            numeric differences always run on the host.

    Returns:
        One :class:`GradCheckResult` per checked input.

    Raises:
        AssertionError: with the report table, if any error exceeds ``tol``, if forward
            is not deterministic, or if it mutated an input.
    """
    if mode not in ("full", "sampled", "directional"):
        raise ValueError(f"mode must be 'full', 'sampled' or 'directional', got {mode!r}")
    eps = TOLERANCES["eps"] if eps is None else eps
    tol = TOLERANCES["gradcheck_rel"] if tol is None else tol
    rng = np.random.default_rng(seed)
    args64 = [_to_host64(a) for a in args]
    if wrt is None:
        wrt = [i for i, a in enumerate(args64) if isinstance(a, np.ndarray) and a.dtype == np.float64]
    names = list(names) if names is not None else [f"arg{i}" for i in wrt]
    if len(names) != len(wrt):
        raise ValueError(f"{len(names)} names for {len(wrt)} checked inputs")
    originals = [a.copy() if isinstance(a, np.ndarray) else a for a in args64]

    dev_args = args64 if device == "cpu" else to_device(args64, device)
    out, cache = _as_out(forward(*dev_args))
    out = asnumpy(out)
    out2, _ = _as_out(forward(*dev_args))
    if not np.array_equal(out, asnumpy(out2), equal_nan=True):
        raise AssertionError("forward is not deterministic: two calls with the same inputs differ")
    if dout is None:
        dout = rng.standard_normal(out.shape)
    dout = np.asarray(asnumpy(dout), dtype=np.float64)
    grads = backward(to_device(dout.copy(), device), cache)
    # size of the terms summed into L = sum(out * dout): their rounding sets the resolution
    # of the finite differences (see the module docstring)
    lmag = float(np.sum(np.abs(out) * np.abs(dout)))
    grads = _flat_grads(grads)
    if len(grads) < len(wrt):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(wrt)} checked inputs")
    if check_inputs_unchanged:
        for i, (a, o) in enumerate(zip(dev_args, originals)):
            if isinstance(o, np.ndarray) and not np.array_equal(asnumpy(a), o):
                raise AssertionError(f"forward or backward modified input {i} in place")

    rows = []
    for name, i, g in zip(names, wrt, grads):
        x = args64[i]
        ana = np.asarray(asnumpy(g), dtype=np.float64)
        if ana.shape != x.shape:
            raise AssertionError(f"gradient of '{name}' has shape {ana.shape}, input has {x.shape}")

        def f() -> float:
            return _scalar(forward, args64, dout)

        if mode == "directional":
            u = rng.standard_normal(x.shape)
            u /= np.linalg.norm(u) or 1.0
            x0 = x.copy()
            h = TOLERANCES["eps_directional"]
            vals = []
            for step in (2.0, 1.0, -1.0, -2.0):
                x[...] = x0 + (step * h) * u
                vals.append(f())
            x[...] = x0
            num_d = np.array([(-vals[0] + 8.0 * vals[1] - 8.0 * vals[2] + vals[3]) / (12.0 * h)])
            ana_d = np.array([float(np.sum(ana * u))])
            rows.append(_compare(name, x.shape, num_d, ana_d, None, 16.0 * _EPS_MACH * lmag / h))
            rows[-1].checked = 1
            continue
        if mode == "sampled" and x.size > n_samples:
            flat = rng.choice(x.size, size=n_samples, replace=False)
            idx = [tuple(int(j) for j in np.unravel_index(k, x.shape)) for k in flat]
        else:
            idx = [tuple(int(j) for j in t) for t in np.ndindex(*x.shape)]
        num = numerical_grad(f, x, eps, idx)
        num_v = np.array([num[t] for t in idx])
        ana_v = np.array([ana[t] for t in idx])
        rows.append(_compare(name, x.shape, num_v, ana_v, idx, 16.0 * _EPS_MACH * lmag / eps))

    if not all(r.passed(tol) for r in rows):
        raise AssertionError("gradient check failed\n" + format_table(rows, tol, seed))
    return rows


def check_module(
    module: Any,
    x: Any,
    *extra: Any,
    mode: str = "sampled",
    params: bool = True,
    n_samples: int = 10,
    tol: float | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> list[GradCheckResult]:
    """Gradient-check a module's ``backward`` for its input and every parameter.

    The module is cast to float64 (in place) and put in eval mode is *not* forced: a
    module with active dropout must use fixed masks to be checkable.

    Args:
        module: a :class:`twins_np.nn.Module`; ``module.forward(x, *extra)`` returns an
            array (or a tuple whose first element is the array) and
            ``module.backward(dout)`` returns dx.
        x: the input array (converted to float64).
        *extra: further forward arguments passed unchanged (e.g. ``size``).
        mode: as in :func:`check_backward` (``"sampled"`` by default: modules are big).
        params: also check every parameter's ``.grad``.

    Returns / Raises: as :func:`check_backward`.
    """
    module.astype(np.float64)
    if device != "cpu":
        module.to_device(device)
    named = list(module.named_parameters()) if params else []

    def forward(x_: Any, *ps: Any) -> tuple[Any, None]:
        for (_, p), a in zip(named, ps):
            p.data = a  # the checker perturbs these arrays in place
        # buffers (BatchNorm's running statistics) follow the input too: the numeric
        # differences run on the host even when the analytic pass runs on the GPU
        dev = device_of(x_)
        module._map_buffers(lambda b: b if device_of(b) == dev else to_device(b, dev))
        out = module.forward(x_, *extra)
        # PatchEmbed returns (tokens, size): the array is the first element
        return (out[0] if isinstance(out, tuple) else out), None

    def backward(dout: Any, _: Any) -> list[Any]:
        module.zero_grad()
        dx = module.backward(dout)
        return [dx] + [p.grad if p.grad is not None else p.data * 0.0 for _, p in named]

    args = [x] + [asnumpy(p.data) for _, p in named]
    names = ["x"] + [n for n, _ in named]
    return check_backward(
        forward,
        backward,
        args,
        wrt=list(range(len(args))),
        names=names,
        mode=mode,
        n_samples=n_samples,
        tol=tol,
        seed=seed,
        device=device,
    )
