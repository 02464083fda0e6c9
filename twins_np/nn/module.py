"""Parameters and the Module base class.

A :class:`Module` owns :class:`Parameter` objects and child modules, calls the pure
functional pairs of :mod:`twins_np.functional` in ``forward``/``backward``, and keeps
the cache between the two. The naming rules follow PyTorch, so ``state_dict`` keys
equal timm's (``blocks.0.1.attn.qkv.weight``).

Gradient rule: ``backward`` *adds* into ``param.grad`` (like PyTorch), so call
``zero_grad()`` before each step. A cache is used once: a second ``backward``
without a new ``forward`` raises, because it would silently double the gradients.

**The cache rule** (one mechanism for every module and model). A module keeps what its
backward needs only through :meth:`Module._save` (in the slot ``"_cache"``, or a named
slot such as ``"_loss_cache"``) and reads it back with :meth:`Module._pop` (or
:meth:`Module._peek` to look without consuming it); no other attribute carries state from a
forward to a backward. One backward, one forward: a backward must never combine caches of
two different forwards, the gradients would be silently wrong. Three rules make sure of it,
and none copies anything:

- Every cache is tagged with the id of the *top-level* forward that made it: the outermost
  forward method running (``model.forward(x)``, ``model.loss(x, y)``,
  ``model.forward_intermediates(x)``, or a module used on its own); nested module calls
  inside it share its id. A backward checks that every cache it reads carries the same id
  as the first one it read (a part of the model run on its own after the model's forward,
  or a loss followed by another forward, is refused).
- A forward whose run makes another entry point's backward meaningless drops that entry's
  slot with :meth:`Module._forget` (``Twins.forward_intermediates`` drops the caches of
  ``Twins.backward``, and ``forward_features`` the one of ``backward_intermediates``).
- A top-level forward that stops part-way (an exception, Ctrl-C, out of memory) marks
  the cache of every module in its tree as incomplete, so the next backward raises
  instead of mixing the new batch's caches with the old batch's.

The rules hook into the methods named ``forward``/``forward_*``/``loss`` (forward passes)
and ``backward``/``backward_*`` (backward passes) of every Module subclass; see
:meth:`Module.__init_subclass__`.
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from ..backend import asnumpy, get_xp
from ..backend import to_device as _to_device

__all__ = ["Parameter", "Module", "ModuleList", "Sequential", "Identity", "no_grad"]

# False inside ``no_grad()``: modules then keep no cache, so a forward used only for
# inference holds no activations for a backward that will never come.
_KEEP_CACHES = [True]
_NO_CACHE = object()  # what _save stores under no_grad, so backward can say why it fails

# dtype kinds load_state_dict refuses, and why
_REFUSED_KINDS = {
    "c": "complex: casting would drop the imaginary part",
    "b": "bool: not weights",
    "U": "strings",
    "S": "bytes",
    "O": "Python objects",
    "V": "raw or structured records",
    "M": "dates",
    "m": "time spans",
}


class _Saved(NamedTuple):
    """A cache and the id of the top-level forward that made it."""

    cache: Any
    forward_id: int


class _Incomplete(NamedTuple):
    """Left in place of a module's cache when the top-level forward over it raised."""

    root: str  # class name of the module whose forward raised
    path: str  # this module's dotted name inside it ("" for the root itself)
    error: str  # the exception's class name


class _PassState(threading.local):
    """Per thread: whether a forward/backward pass is running, and which ids it uses."""

    running = False  # True inside a top-level forward or backward method
    forward_id = 0  # id of the top-level forward now running (tags every cache saved in it)
    backward_of: int | None = None  # id of the forward the running backward reads caches of


_PASS = _PassState()
_FORWARD_IDS = itertools.count(1)

# method names that are forward or backward passes, wrapped in every Module subclass
_FORWARD_NAMES = re.compile(r"forward(_\w+)?|loss")
_BACKWARD_NAMES = re.compile(r"backward(_\w+)?")


def _forward_pass(method: Callable[..., Any]) -> Callable[..., Any]:
    """Give a top-level forward a fresh id; on an exception, mark the module tree incomplete."""

    @functools.wraps(method)
    def run(self: Module, *args: Any, **kwargs: Any) -> Any:
        if _PASS.running:  # a module called inside another forward: part of that pass
            out = method(self, *args, **kwargs)
        else:
            _PASS.running, _PASS.forward_id = True, next(_FORWARD_IDS)
            try:
                out = method(self, *args, **kwargs)
            except BaseException as e:  # Ctrl-C and MemoryError too: those leave half-new caches as well
                self._mark_incomplete(type(e).__name__)
                raise
            finally:
                _PASS.running = False
        if isinstance(self._cache, _Incomplete):  # a module that saves no cache of its own (Sequential)
            object.__setattr__(self, "_cache", None)
        return out

    return run


def _backward_pass(method: Callable[..., Any]) -> Callable[..., Any]:
    """Make every cache one top-level backward reads come from one forward."""

    @functools.wraps(method)
    def run(self: Module, *args: Any, **kwargs: Any) -> Any:
        if _PASS.running:
            return method(self, *args, **kwargs)
        if isinstance(self._cache, _Incomplete):  # say so before any gradient is accumulated
            raise self._incomplete_error(self._cache, method.__name__)
        _PASS.running, _PASS.backward_of = True, None
        try:
            return method(self, *args, **kwargs)
        finally:
            _PASS.running, _PASS.backward_of = False, None

    return run


@contextmanager
def no_grad() -> Iterator[None]:
    """Run forwards without keeping what backward needs (inference: less memory).

    Example::

        with twins_np.no_grad():
            logits = model.forward(x)

    A ``backward`` after such a forward raises a RuntimeError saying so.
    """
    previous = _KEEP_CACHES[0]
    _KEEP_CACHES[0] = False
    try:
        yield
    finally:
        _KEEP_CACHES[0] = previous


class Parameter:
    """A trainable array and its gradient.

    Attributes:
        data: the values, a NumPy or CuPy array.
        grad: the accumulated gradient (same shape and dtype), or ``None`` before the
            first backward / after ``zero_grad``.
        no_weight_decay: True for biases, norms and the PEG (timm's
            ``no_weight_decay``); the optimiser reads it.
    """

    __slots__ = ("data", "grad", "no_weight_decay")

    def __init__(self, data: Any, no_weight_decay: bool = False) -> None:
        self.data = data
        self.grad: Any = None
        self.no_weight_decay = no_weight_decay

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    def accumulate(self, g: Any) -> None:
        """Add ``g`` to ``.grad`` (creating it on first use)."""
        if self.grad is None:
            self.grad = g.copy() if g.dtype == self.data.dtype else g.astype(self.data.dtype)
        else:
            self.grad += g

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: registers parameters and child modules by attribute name.

    Subclasses implement ``forward(...)`` (storing what backward needs with
    :meth:`_save`) and ``backward(dout)`` (reading it back with :meth:`_pop`).
    """

    training: bool
    _parameters: dict[str, Parameter]
    _modules: dict[str, Module]
    _cache: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # forward/backward passes get the bookkeeping that keeps one backward on one forward
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if not callable(value):
                continue
            if _FORWARD_NAMES.fullmatch(name):
                setattr(cls, name, _forward_pass(value))
            elif _BACKWARD_NAMES.fullmatch(name):
                setattr(cls, name, _backward_pass(value))

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)

    # -- registration ---------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if params is None:
            raise RuntimeError("call Module.__init__() before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield ``(dotted_name, module)`` for this module and every descendant."""
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Yield ``(dotted_name, Parameter)`` in registration order, like PyTorch."""
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        """Forget every accumulated gradient (sets ``.grad`` to None)."""
        for p in self.parameters():
            p.grad = None

    # -- buffers: state that is saved but not trained (BatchNorm's running statistics) ----
    def register_buffer(self, name: str, value: Any) -> None:
        """Keep the array ``value`` as attribute ``name`` and in ``state_dict``, but not in ``parameters()``.

        As in PyTorch: the optimiser never sees a buffer, ``astype`` casts only floating
        buffers (a step counter stays int64), ``to_device`` moves all of them, and a buffer
        set to None is left out of ``state_dict``. Assigning ``self.name = array`` later
        keeps it registered.
        """
        names = self.__dict__.get("_buffer_names")
        if names is None:
            names = []
            object.__setattr__(self, "_buffer_names", names)
        if name not in names:
            names.append(name)
        setattr(self, name, value)

    def _own_buffers(self) -> Iterator[tuple[str, Any]]:
        for name in self.__dict__.get("_buffer_names", ()):
            value = self.__dict__.get(name)
            if value is not None:
                yield name, value

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted_name, array)`` for every buffer of this module and its descendants."""
        for mod_prefix, m in self.named_modules(prefix):
            for name, value in m._own_buffers():
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value

    def _map_buffers(self, fn: Any) -> None:
        for _, m in self.named_modules():
            for name, value in list(m._own_buffers()):
                object.__setattr__(m, name, fn(value))

    def _state_entries(self) -> dict[str, tuple[Module, str, Any]]:
        """``{key: (owning module, attribute, Parameter or buffer array)}`` in PyTorch's
        ``state_dict`` order: per module its parameters, then its buffers, then its children."""
        out: dict[str, tuple[Module, str, Any]] = {}
        for prefix, m in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, p in m._parameters.items():
                out[dot + name] = (m, name, p)
            for name, value in m._own_buffers():
                out[dot + name] = (m, name, value)
        return out

    # -- modes, dtype, device -------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def astype(self, dtype: Any) -> Module:
        """Cast every parameter (and gradient) to ``dtype`` in place; returns self."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"astype needs a floating dtype, got {dtype}")
        if dtype == np.float16:
            raise TypeError(
                "float16 is not supported: LayerNorm and softmax statistics overflow/underflow "
                "in half precision; use float32 (or float64 for gradient checks)"
            )
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            if p.grad is not None:
                p.grad = p.grad.astype(dtype)
        self._map_buffers(lambda b: b.astype(dtype) if b.dtype.kind == "f" else b)
        self._clear_caches()
        return self

    def to_device(self, device: str) -> Module:
        """Move every parameter to ``"cpu"`` or ``"gpu"`` in place; returns self."""
        for p in self.parameters():
            p.data = _to_device(p.data, device)
            if p.grad is not None:
                p.grad = _to_device(p.grad, device)
        self._map_buffers(lambda b: _to_device(b, device))
        self._clear_caches()
        return self

    def _clear_caches(self) -> None:
        """Drop every cache slot of every module in the tree (the cache rule's first point)."""
        for _, m in self.named_modules():
            for slot in m.__dict__.get("_cache_slots", ("_cache",)):
                object.__setattr__(m, slot, None)

    @property
    def dtype(self) -> Any:
        ps = self.parameters()
        return ps[0].data.dtype if ps else np.dtype(np.float32)

    @property
    def xp(self) -> Any:
        ps = self.parameters()
        return get_xp(ps[0].data) if ps else np

    # -- state dict ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{name: array}`` with timm's key names (the arrays themselves, not copies).

        Parameters and buffers (BatchNorm's running statistics), in PyTorch's order.
        """
        return {k: v.data if isinstance(v, Parameter) else v for k, (_, _, v) in self._state_entries().items()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, allow_nonfinite: bool = False) -> Module:
        """Copy arrays into the parameters, converting dtype and device to the module's.

        All or nothing: every value is checked and converted first, and only when all
        of them are good are they assigned, so a refused state dict leaves the module
        exactly as it was. Accepted values are real floating or integer arrays (NumPy,
        CuPy, or anything ``np.asarray`` turns into one); complex, bool, string and
        object arrays are refused rather than cast.

        Args:
            state: ``{name: array}`` with this module's ``state_dict()`` names.
            strict: if True, a missing or an unexpected key is an error.
            allow_nonfinite: load NaN and Inf values (refused by default: a model with
                them computes NaN everywhere, silently).

        Raises:
            KeyError: (strict) listing missing and unexpected keys; (``strict=False``) when
                no key of ``state`` is one of the module's (nothing would load).
            ValueError: listing every key whose shape differs, expected vs received,
                or whose values are not finite.
            TypeError: listing every key whose value is not a real number array.
        """
        if not hasattr(state, "keys") or isinstance(state, Module):
            hint = (
                "a file name: use twins_np.io.load_weights(model, path)"
                if isinstance(state, (str, bytes)) or hasattr(state, "__fspath__")
                else "pass other.state_dict() for a module"
            )
            raise TypeError(
                f"load_state_dict needs a mapping {{name: array}} (model.state_dict()), got {type(state).__name__}; {hint}"
            )
        entries = self._state_entries()
        own = {k: v for k, (_, _, v) in entries.items()}
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [
            f"{k}: expected {own[k].shape}, got {tuple(np.shape(state[k]))}"
            for k in own
            if k in state and tuple(np.shape(state[k])) != own[k].shape
        ]
        if wrong:
            raise ValueError("state_dict has wrongly shaped keys:\n  " + "\n  ".join(wrong))
        if strict and (missing or unexpected):
            raise KeyError(
                f"state_dict does not match {type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}"
            )
        if own and len(missing) == len(own):  # strict=False: nothing would load, silently
            raise KeyError(
                f"state_dict matches no key of {type(self).__name__}, so strict=False would load nothing: its keys "
                f"(first: {', '.join(list(state)[:2]) or 'none'}) are not the module's (first: {', '.join(list(own)[:2])}); "
                "a submodule's state_dict loads into that submodule"
            )
        new, bad_type, not_finite = {}, [], []
        for k, p in own.items():
            if k not in state:
                continue
            current = p.data if isinstance(p, Parameter) else p  # a buffer is the array itself
            value = state[k]
            if not isinstance(getattr(value, "dtype", None), np.dtype):  # lists, scalars, torch tensors
                value = np.asarray(value)
            kind = value.dtype.kind
            if kind not in "fiu":
                what = _REFUSED_KINDS.get(kind, "not a number array")
                bad_type.append(f"{k}: dtype {value.dtype} ({what})")
                continue
            xp = get_xp(current)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow to Inf is reported below
                converted = xp.asarray(asnumpy(value) if xp is np else value, dtype=current.dtype).copy()
            if not allow_nonfinite and not bool(xp.isfinite(converted).all()):
                n_nan = int(xp.isnan(converted).sum())
                n_inf = int(converted.size) - n_nan - int(xp.isfinite(converted).sum())
                cast = ""
                if kind == "f" and bool(xp.isfinite(xp.asarray(value)).all()):
                    cast = f" (finite as {value.dtype}: its values overflow {current.dtype})"
                not_finite.append(f"{k}: {n_nan} NaN and {n_inf} Inf values{cast}")
                continue
            new[k] = converted
        if bad_type:
            raise TypeError(
                f"cannot load {len(bad_type)} of the arrays into {type(self).__name__} (nothing was loaded); "
                "only real floating or integer arrays are accepted:\n  " + "\n  ".join(bad_type)
            )
        if not_finite:
            raise ValueError(
                f"cannot load {len(not_finite)} of the arrays into {type(self).__name__} (nothing was loaded): "
                "they hold NaN or Inf, which would make every output NaN; pass allow_nonfinite=True to load "
                "them anyway:\n  " + "\n  ".join(not_finite)
            )
        for k, data in new.items():  # every value is good: assign them all
            p = own[k]
            if isinstance(p, Parameter):
                p.data = data
            else:  # a buffer: replace the module's array
                module, name, _ = entries[k]
                object.__setattr__(module, name, data)
        self._clear_caches()
        return self

    # -- forward / backward plumbing ----------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, dout: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def _save(self, cache: Any, slot: str = "_cache") -> None:
        """Keep ``cache`` for backward in ``slot``, tagged with the top-level forward that made it."""
        slots = self.__dict__.get("_cache_slots")
        if slots is None:
            slots = ["_cache"]
            object.__setattr__(self, "_cache_slots", slots)
        if slot not in slots:
            slots.append(slot)
        kept = _Saved(cache, _PASS.forward_id) if _KEEP_CACHES[0] else _NO_CACHE
        object.__setattr__(self, slot, kept)

    def _forget(self, *slots: str) -> None:
        """Drop this module's caches in ``slots``: their backward must not run after this forward."""
        for slot in slots:
            object.__setattr__(self, slot, None)

    def _peek(self, slot: str = "_cache") -> Any:
        """The cache in ``slot``, left in place (to check a backward's arguments before using it).

        Raises the errors of :meth:`_pop` for a missing, incomplete or ``no_grad`` cache.
        """
        return self._checked(slot, getattr(self, slot, None)).cache

    def _pop(self, slot: str = "_cache") -> Any:
        """Return the cache saved by the last forward and forget it.

        Raises:
            RuntimeError: if there is none (no forward, or a second backward), if the
                forward ran under ``no_grad``, stopped part-way, or is not the forward
                the other caches of the running backward come from.
        """
        saved = self._checked(slot, getattr(self, slot, None))
        where = f"{type(self).__name__}.backward()" + ("" if slot == "_cache" else f" ({slot})")
        if _PASS.running:
            if _PASS.backward_of is None:  # the first cache read fixes the forward this backward is of
                _PASS.backward_of = saved.forward_id
            elif saved.forward_id != _PASS.backward_of:
                raise RuntimeError(
                    f"{where}: its cache comes from another forward call than the caches this backward read "
                    "before it (e.g. a part of the model was run on its own after the model's forward); gradients "
                    "would mix two batches. The gradients accumulated so far are partial: call zero_grad(), then "
                    "run forward and backward again"
                )
        object.__setattr__(self, slot, None)
        return saved.cache

    def _checked(self, slot: str, saved: Any) -> _Saved:
        """``saved`` if it is a usable cache; else the error that says why not."""
        where = f"{type(self).__name__}.backward()" + ("" if slot == "_cache" else f" ({slot})")
        if saved is None:
            raise RuntimeError(
                f"{where} called without a forward() before it (or twice for one forward): run forward again first"
            )
        if isinstance(saved, _Incomplete):
            raise self._incomplete_error(saved)
        if saved is _NO_CACHE:
            raise RuntimeError(
                f"{where}: the forward ran inside twins_np.no_grad(), which keeps no "
                "cache for backward; run forward again outside no_grad()"
            )
        return saved  # type: ignore[no-any-return]

    def _mark_incomplete(self, error: str) -> None:
        """After a forward that raised: no module of the tree may serve a backward."""
        for path, m in self.named_modules():
            object.__setattr__(m, "_cache", _Incomplete(type(self).__name__, path, error))

    def _incomplete_error(self, marker: _Incomplete, method: str = "backward") -> RuntimeError:
        where = f"{type(self).__name__}.{method}()" + (f" ({marker.path} of {marker.root})" if marker.path else "")
        return RuntimeError(
            f"{where}: the last forward of {marker.root} stopped part-way ({marker.error}), so its modules hold "
            "caches of different batches; run forward again before backward"
        )

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules registered under ``"0"``, ``"1"``, ... (timm's key names)."""

    def __init__(self, modules: list[Module] | None = None) -> None:
        super().__init__()
        for m in modules or []:
            self.append(m)

    def append(self, m: Module) -> None:
        setattr(self, str(len(self._modules)), m)

    def __getitem__(self, i: int) -> Any:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._modules.values()))


class Sequential(ModuleList):
    """Modules applied in order; backward runs them in reverse."""

    def forward(self, x: Any, *args: Any) -> Any:
        for m in self:
            x = m(x, *args)
        return x

    def backward(self, dout: Any) -> Any:
        for m in reversed(list(self)):
            dout = m.backward(dout)
        return dout


class Identity(Module):
    """Returns its input; backward returns the upstream gradient."""

    def forward(self, x: Any, *args: Any) -> Any:
        return x

    def backward(self, dout: Any) -> Any:
        return dout
