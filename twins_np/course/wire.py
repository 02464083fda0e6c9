"""The messages between the grader, a worker and the reference process: JSON and ``.npy``, never pickle.

One message is a JSON header and a list of arrays, each written in NumPy's ``.npy`` format
and read back with ``allow_pickle=False``::

    <u64 header length> <u32 array count> <header JSON>  then per array: <u64 length> <.npy bytes>

Values travel as a JSON tree whose leaves are numbers, strings, ``None`` and references
``{"$a": i}`` to the message's arrays; tuples are ``{"$t": [...]}``, dicts ``{"$d": {...}}``
and the library's NamedTuple caches ``{"$n": "module:Class", "$v": [...]}``. The receiver
rebuilds a NamedTuple only from a class of ``twins_np`` it was told to trust (the worker,
from the grader); everywhere else it stays a :class:`Record`, plain data.

:func:`perform` is how a check calls the code under test. The worker runs it on the
student's code and the reference process on the instructor's, so both sides make exactly
the same call.

This file is copied next to ``worker.py`` into the worker's folder and imported there as a
top-level module, before any student code: it needs only the standard library and NumPy.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ProtocolError", "Record", "decode", "encode", "pack_message", "perform", "read_message", "write_message"]

HEADER_LIMIT = 4 << 20  # bytes of JSON in one message
ARRAY_COUNT_LIMIT = 4096
# array kinds that may cross: bool, signed and unsigned integers, floats (no objects, strings, complex)
_KINDS = frozenset("biuf")
_PREFIX = struct.Struct("<QI")
_LENGTH = struct.Struct("<Q")


class ProtocolError(Exception):
    """A message that does not follow the format (cut short, too large, or not data)."""


class Record(tuple):
    """A NamedTuple received without its class: the values, and the class's name in ``kind``."""

    kind: str

    def __new__(cls, kind: str, values: Any) -> Record:
        self = super().__new__(cls, values)
        self.kind = kind
        return self


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def pack_message(header: dict[str, Any], arrays: list[np.ndarray] = ()) -> bytes:  # type: ignore[assignment]
    """One message as bytes."""
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [_PREFIX.pack(len(head), len(arrays)), head]
    for a in arrays:
        blob = _npy(a)
        parts += [_LENGTH.pack(len(blob)), blob]
    return b"".join(parts)


def write_message(fd: int, header: dict[str, Any], arrays: list[np.ndarray] = ()) -> None:  # type: ignore[assignment]
    """Write one message to the file descriptor ``fd`` (a pipe), blocking until it is written."""
    data = memoryview(pack_message(header, arrays))
    while data:
        n = os.write(fd, data)
        data = data[n:]


def read_message(read_exact: Callable[[int], bytes], max_bytes: int) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Read one message with ``read_exact(n)`` (which returns exactly n bytes or raises).

    Raises:
        ProtocolError: a header or array over the limits, JSON that is not an object, an
            array that is not plain numbers (object, string, complex, structured dtypes).
    """
    n_head, n_arrays = _PREFIX.unpack(read_exact(_PREFIX.size))
    if n_head > HEADER_LIMIT or n_arrays > ARRAY_COUNT_LIMIT:
        raise ProtocolError(f"message too large ({n_head} bytes of header, {n_arrays} arrays)")
    try:
        header = json.loads(read_exact(n_head))
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"the header is not JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header is not a JSON object")
    arrays, total = [], 0
    for _ in range(n_arrays):
        (n,) = _LENGTH.unpack(read_exact(_LENGTH.size))
        total += n
        if total > max_bytes:
            raise ProtocolError(f"message over {max_bytes} bytes of arrays")
        arrays.append(_load(read_exact(n)))
    return header, arrays


def _load(blob: bytes) -> np.ndarray:
    try:
        a = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
    except Exception as e:  # a forged header: ValueError, SyntaxError from its literal, ...
        raise ProtocolError(f"an array is not in .npy format ({type(e).__name__})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in _KINDS or a.dtype.fields is not None or a.ndim > 16:
        raise ProtocolError(f"an array of dtype {getattr(a, 'dtype', '?')} is not plain numbers")
    return a


def encode(obj: Any, arrays: list[np.ndarray]) -> Any:
    """A JSON-able tree for ``obj``; its arrays are appended to ``arrays``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
        return obj if isinstance(obj, int) or np.isfinite(obj) else {"$f": repr(float(obj))}
    if isinstance(obj, (np.ndarray, np.generic)):
        arrays.append(np.asarray(obj))
        return {"$a": len(arrays) - 1, **({"$s": 1} if isinstance(obj, np.generic) else {})}
    if isinstance(obj, Record):
        return {"$n": obj.kind, "$v": [encode(v, arrays) for v in obj]}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        cls = type(obj)
        return {"$n": f"{cls.__module__}:{cls.__qualname__}", "$v": [encode(v, arrays) for v in obj]}
    if isinstance(obj, tuple):
        return {"$t": [encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, arrays) for v in obj]
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"$d": {k: encode(v, arrays) for k, v in obj.items()}}
    if hasattr(obj, "__array__") and hasattr(obj, "shape"):  # a CuPy array: its values
        return encode(np.asarray(obj.get() if hasattr(obj, "get") else obj), arrays)
    raise TypeError(f"cannot send a {type(obj).__name__}: only arrays, numbers, strings, tuples, lists and dicts")


def decode(tree: Any, arrays: list[np.ndarray], resolve: Callable[[str], Any] | None = None) -> Any:
    """The value of an :func:`encode` tree; NamedTuples come back through ``resolve`` or as :class:`Record`.

    Raises:
        ProtocolError: a malformed tree (unknown node, array index out of range, nested too deep).
    """
    try:
        return _decode(tree, arrays, resolve)
    except RecursionError:
        raise ProtocolError("a value nested too deep") from None


def _decode(tree: Any, arrays: list[np.ndarray], resolve: Callable[[str], Any] | None) -> Any:
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [_decode(v, arrays, resolve) for v in tree]
    if not isinstance(tree, dict) or len(tree) == 0:
        raise ProtocolError("malformed value")
    if "$a" in tree:
        i = tree["$a"]
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(arrays):
            raise ProtocolError("an array reference out of range")
        return arrays[i][()] if tree.get("$s") else arrays[i]
    if "$f" in tree and tree["$f"] in ("nan", "inf", "-inf"):
        return float(tree["$f"])
    if "$t" in tree and isinstance(tree["$t"], list):
        return tuple(_decode(v, arrays, resolve) for v in tree["$t"])
    if "$d" in tree and isinstance(tree["$d"], dict):
        return {str(k): _decode(v, arrays, resolve) for k, v in tree["$d"].items()}
    if "$n" in tree and isinstance(tree["$n"], str) and isinstance(tree.get("$v"), list):
        values = [_decode(v, arrays, resolve) for v in tree["$v"]]
        if resolve is None:
            return Record(tree["$n"][:200], values)
        return resolve(tree["$n"])(*values)
    raise ProtocolError("malformed value")


def perform(call: dict[str, Any], args: list[Any], kwargs: dict[str, Any], resolve: Callable[[str], Any]) -> Any:
    """Make one check's call: ``call["form"]`` says how.

    - ``"call"``: ``fn(*args, **kwargs)`` with ``fn = resolve(call["fn"])``; returns its result.
    - ``"optimizer"``: one ``step()`` of the optimizer class ``call["fn"]`` on one parameter:
      ``args = (data, grad, state)``, ``kwargs`` its hyperparameters, ``state`` {} (a first
      update) or ``{"step", "exp_avg", "exp_avg_sq"}``. Returns (the change of the
      parameter, the state's exp_avg, exp_avg_sq) after the step: the change, not the new
      values, so a wrong update is not lost in the parameter's size.
    """
    fn = resolve(call["fn"])
    if call.get("form", "call") == "call":
        return fn(*args, **kwargs)
    if call["form"] == "optimizer":
        data, grad, state = args
        parameter = resolve("twins_np.nn.module:Parameter")(data)
        parameter.grad = grad
        before = np.array(data, copy=True)
        opt = fn([parameter], **kwargs)
        opt.state[0].update(state)
        opt.step()
        after = opt.state[0]
        return parameter.data - before, after.get("exp_avg"), after.get("exp_avg_sq")
    raise ValueError(f"unknown call form {call['form']!r}")
