"""Saving and loading weights: ``.npz``, ``.safetensors`` and PyTorch ``.pth``.

A checkpoint is a flat ``{name: array}`` dict with timm's key names
(``blocks.0.1.attn.qkv.weight``), so a file written by twins-np loads into timm and a
timm/official Twins ``.pth`` loads into twins-np. The format follows the file's suffix:

========================  ======================================================
``.npz``                  NumPy zip archive of ``.npy`` members; read here member
                          by member, never unpickled
``.safetensors``          8-byte little-endian header length, JSON header, raw
                          little-endian bytes; read and written here with NumPy
``.pth`` ``.pt``          PyTorch pickle, read with ``torch.load(weights_only=True)``
``.pth.tar``              (needs torch: ``pip install -e ".[parity]"``)
========================  ======================================================

Loading never runs code from the file: ``.npz`` object arrays and ``.pth`` files with
Python objects other than tensors and plain containers are refused with a ``ValueError``.
Damaged or hostile files (empty, truncated, a header claiming more data than the file
holds, members that are not arrays, JSON nested to exhaust the parser, tensor types NumPy
has no dtype for) are a ``ValueError`` naming the file and the problem, raised before
anything the file claims is allocated.
Writes are atomic: the bytes go to a temporary file next to the target, which replaces
the target only once it is complete and flushed to disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .backend import asnumpy
from .models.mmseg import create_segmenter_for, flavour_mismatch, from_mmseg, is_mmseg_state

__all__ = [
    "FORMATS",
    "weights_format",
    "read_weights",
    "read_npz",
    "save_weights",
    "convert_weights",
    "load_weights",
    "load_arrays",
    "PartialLoadWarning",
    "load_segmenter",
]

PathLike = str | os.PathLike

# suffix -> format name; ".pth.tar" is checked first because Path.suffix would say ".tar"
FORMATS: dict[str, str] = {".npz": "npz", ".safetensors": "safetensors", ".pth.tar": "pth", ".pth": "pth", ".pt": "pth"}

# keys under which training scripts nest the model's state dict (official Twins: "model";
# timm's train.py: "state_dict"; others: "model_state"), tried in this order
_NESTED_KEYS = ("model", "state_dict", "model_state")

# safetensors dtype codes <-> little-endian NumPy dtypes; BF16 is handled apart (no NumPy dtype)
_ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ST_CODES = {dt.newbyteorder("="): code for code, dt in _ST_DTYPES.items()}
_ST_MAX_HEADER = 100_000_000  # the reference implementation's limit, bytes


def weights_format(path: PathLike) -> str:
    """``"npz"``, ``"safetensors"`` or ``"pth"`` from the file name's suffix.

    Raises:
        ValueError: for any other suffix.
    """
    name = Path(path).name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: unknown weights format; use one of the suffixes {', '.join(FORMATS)}")


# -- reading -----------------------------------------------------------------------------
def read_weights(path: PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint into ``{name: numpy array}`` (file order, dtypes as stored).

    ``.pth`` files may nest the state dict under ``"model"``, ``"state_dict"`` or
    ``"model_state"`` and carry DataParallel's ``"module."`` prefix; both are undone.
    A safetensors ``BF16`` tensor is returned as float32 (exact: bfloat16 is the upper
    half of a float32).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown suffix and for corrupt, truncated or unsafe files
            (the message names the file).
        ImportError: for ``.pth`` when PyTorch is not installed.
    """
    fmt = weights_format(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    if Path(path).stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes), not a {fmt} checkpoint: an interrupted download or copy?")
    if fmt == "npz":
        return _read_npz(path)
    if fmt == "safetensors":
        return _read_safetensors(path)[0]
    return _read_pth(path)


# -- any .npz of named arrays (training checkpoints) --------------------------------------
def read_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Read any ``.npz`` archive of named arrays with the checks :func:`read_weights` makes.

    Training checkpoints (``checkpoint.npz`` of ``twins-np train``: weights, optimizer
    moments, strings of JSON) are read here rather than with ``np.load``: every member's
    claimed dtype and shape is checked against its real size before anything is
    allocated, so a member claiming terabytes is refused naming it, never an
    out-of-memory error.

    Returns:
        ``{name: array}`` in archive order (0-d arrays for scalars and strings).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: for an empty, damaged or hostile archive, naming the file and the member.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if Path(path).stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes), not an .npz archive: an interrupted write or copy?")
    return _read_npz(path)


def _read_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Read an .npz archive member by member, without ``np.load``.

    Every claim a member's ``.npy`` header makes (dtype, shape) is checked against the
    member's real size from the zip directory before any array is allocated, so a
    header claiming a huge array fails at once; object arrays, which only unpickling
    could restore, are refused.
    """
    with open(path, "rb") as f:
        magic = f.read(len(np.lib.format.MAGIC_PREFIX))
    if magic == np.lib.format.MAGIC_PREFIX:
        raise ValueError(f"{path}: holds a single .npy array, not an .npz archive of named arrays")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: refused to load: not an .npz archive (an .npz file is a zip archive of .npy arrays, and this "
            "file is not a zip archive: truncated, corrupt, or another format renamed?)"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz archive (truncated or corrupt?): {e}") from e
    out: dict[str, np.ndarray] = {}
    with archive:
        archive_size = Path(path).stat().st_size
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{path}: member {info.filename!r} is not a .npy array: not an .npz archive of arrays")
            name = info.filename[: -len(".npy")]
            if name in out:
                raise ValueError(f"{path}: the archive holds two members named {info.filename!r}")
            _check_zip_sizes(path, info, archive_size)
            try:
                with archive.open(info) as member:
                    out[name] = _read_npy_member(path, name, member, info.file_size)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
                raise ValueError(f"{path}: array {name!r} cannot be read (truncated or corrupt?): {e}") from e
    return out


# deflate cannot shrink data by more than about 1032:1, so a larger claimed ratio is a lie
_MAX_DEFLATE_RATIO = 1032


def _check_zip_sizes(path: PathLike, info: zipfile.ZipInfo, archive_size: int) -> None:
    """The sizes the zip directory gives for a member must be possible for this file."""
    where = f"{path}: member {info.filename!r}"
    if info.compress_size > archive_size:
        raise ValueError(f"{where} claims {info.compress_size} stored bytes in a {archive_size}-byte file (truncated?)")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise ValueError(f"{where} is stored uncompressed but claims {info.file_size} bytes in {info.compress_size}")
    if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise ValueError(f"{where} claims {info.file_size} bytes from {info.compress_size} compressed: corrupt or hostile")


def _read_npy_member(path: PathLike, name: str, member: Any, size: int) -> np.ndarray:
    """One open ``.npy`` zip member of ``size`` bytes (its real size from the zip directory) -> array."""

    def bad(msg: str) -> ValueError:
        return ValueError(f"{path}: array {name!r} {msg}")

    fmt = np.lib.format
    try:
        version = fmt.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(member)
        else:
            raise bad(f"has .npy format version {version[0]}.{version[1]}, which is not supported (1.0 and 2.0 are)")
    except ValueError as e:
        if str(e).startswith(f"{path}:"):
            raise
        # NumPy's own message may suggest allow_pickle: never pass that advice on
        raise bad("is not a valid .npy member: its header cannot be read") from e
    if dtype.hasobject:
        raise ValueError(
            f"{path}: refused to load array {name!r}: it is an object array, whose loading would unpickle "
            "(and could run) arbitrary code"
        )
    if dtype.itemsize == 0 or any(d < 0 for d in shape):
        raise bad(f"has an invalid header: dtype {dtype}, shape {shape}")
    need = math.prod(shape) * dtype.itemsize
    have = size - member.tell()
    if need != have:
        raise bad(f"claims shape {shape} of {dtype} ({need} bytes) but its member holds {have} bytes of data: corrupt or hostile")
    arr = np.empty(math.prod(shape), dtype=dtype)
    if member.readinto(arr.view(np.uint8).data) != need:
        raise bad("ends before its data does (truncated?)")
    if member.read(1):  # also makes zipfile check the member's CRC, which it does at the end
        raise bad("holds more bytes than the zip directory says")
    if not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr.reshape(shape, order="F" if fortran else "C")


def _read_safetensors(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Validate and read a safetensors file; returns (arrays, metadata)."""

    def bad(msg: str) -> ValueError:
        return ValueError(f"{path}: corrupt safetensors file: {msg}")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(f.read(8), "little")
        if n < 2 or n > min(size - 8, _ST_MAX_HEADER):
            raise bad(f"header length {n} does not fit a file of {size} bytes")
        header = _parse_st_header(f.read(n), bad)
        buf_len = size - 8 - n
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise bad("__metadata__ must map strings to strings")
        entries = [(name, *_check_st_entry(name, info, buf_len, bad)) for name, info in header.items()]

        # the tensors must tile the buffer exactly: contiguous, no overlap, no gap, no tail
        end = 0
        for name, _, _, start, stop in sorted(entries, key=lambda e: (e[3], e[4])):
            if start != end:
                kind = "overlaps the previous tensor" if start < end else f"leaves a gap of {start - end} bytes"
                raise bad(f"tensor {name!r} at bytes [{start}, {stop}) {kind}")
            end = stop
        if end != buf_len:
            raise bad(f"the tensors cover {end} bytes but the data buffer has {buf_len}")
        # entries are now known to tile the buffer in offset order: read each straight into its array
        arrays: dict[str, np.ndarray] = {}
        for name, code, shape, start, stop in sorted(entries, key=lambda e: (e[3], e[4])):
            dt = np.dtype("<u2") if code == "BF16" else _ST_DTYPES[code]
            arr = np.empty(math.prod(shape), dtype=dt)
            if f.readinto(arr.view(np.uint8).data) != stop - start:  # the file shrank while we read it
                raise bad(f"tensor {name!r}: the file ends inside its bytes")
            if code == "BF16":  # bfloat16 = the high 16 bits of a float32
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            elif not dt.isnative:  # big-endian machines
                arr = arr.astype(dt.newbyteorder("="))
            arrays[name] = arr.reshape(shape)
    out = {name: arrays[name] for name, *_ in entries}  # header order
    return out, metadata


def _parse_st_header(raw: bytes, bad: Callable[[str], ValueError]) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise bad("the JSON header repeats a key")
        return d

    try:
        # the reference writer pads the header with spaces to a multiple of 8 bytes
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"the header is not valid UTF-8 JSON ({e})") from e
    except RecursionError as e:  # e.g. 100 000 nested brackets: a header no writer makes
        raise bad("the JSON header is nested too deeply") from e
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    return header


def _check_st_entry(
    name: str, info: Any, buf_len: int, bad: Callable[[str], ValueError]
) -> tuple[str, tuple[int, ...], int, int]:
    """Check one header entry; returns (dtype code, shape, start, stop)."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"entry {name!r} must have exactly the keys dtype, shape, data_offsets")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in _ST_DTYPES and code != "BF16":
        raise bad(f"tensor {name!r} has unknown or unsupported dtype {code!r}")

    def is_count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(o) for o in offsets):
        raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    start, stop = offsets
    if start > stop or stop > buf_len:
        raise bad(f"tensor {name!r} at bytes [{start}, {stop}) lies outside the {buf_len}-byte data buffer (truncated file?)")
    itemsize = 2 if code == "BF16" else _ST_DTYPES[code].itemsize
    nbytes = math.prod(shape) * itemsize
    if nbytes != stop - start:
        raise bad(f"tensor {name!r}: shape {tuple(shape)} of {code} needs {nbytes} bytes, its offsets give {stop - start}")
    return code, tuple(shape), start, stop


def _import_torch(path: PathLike) -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f'reading or writing {path} needs PyTorch (pip install -e ".[parity]" in the twins-np folder), or convert the file '
            "to .npz or .safetensors on a machine with torch (twins-np convert IN.pth OUT.safetensors)"
        ) from e
    return torch


def _read_pth(path: PathLike) -> dict[str, np.ndarray]:
    _check_pth_kind(path)  # before torch is imported: the same answer with or without torch
    torch = _import_torch(path)
    try:
        # Training checkpoints (official Twins, timm's train.py) keep their command line
        # as an argparse.Namespace: a plain attribute holder, safe to rebuild. torch's own
        # warnings are not shown: whatever goes wrong is said below, in one line.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to load: the file holds Python objects other than tensors (a whole pickled model?), and "
            f"unpickling them could run arbitrary code ({_unpickling_reason(e)}); twins-np reads state dicts: in "
            "PyTorch, save one with torch.save(model.state_dict(), path)"
        ) from e
    except Exception as e:  # torch.load fails on damaged files with many types (IndexError, KeyError, ...)
        first = (str(e).splitlines() or [""])[0]
        if "weights_only" in first:  # torch's advice to load unsafely is never passed on
            first = "torch.load with weights_only=True cannot read it"
        raise ValueError(f"{path}: not a readable PyTorch file (truncated or corrupt?): {type(e).__name__}: {first}") from e

    state = obj
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path}: expected a state dict (name -> tensor), found {type(state).__name__}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path}: not a state dict of tensors: {not_tensors[0]!r} is a {type(state[not_tensors[0]]).__name__} "
            f"(top-level keys: {', '.join(map(str, list(obj)[:8]))})"
        )
    names = list(state)
    if all(str(k).startswith("module.") for k in names):  # saved from nn.DataParallel / DDP
        names = [str(k)[len("module.") :] for k in names]
    out = {}
    for name, t in zip(names, state.values()):
        out[str(name)] = _pth_tensor_to_numpy(path, str(name), t, torch)
    return out


def _check_pth_kind(path: PathLike) -> None:
    """Refuse the zip-based ``.pth`` kinds that are not a ``torch.save`` pickle: TorchScript
    programs (``torch.jit.save``: ``constants.pkl`` and ``code/``), mobile bytecode, other
    zip files. A file that is not a zip (torch's legacy format) is left to ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, EOFError, zipfile.BadZipFile, ValueError):
        return
    leaves = {n.rsplit("/", 1)[-1] for n in names}
    if "constants.pkl" in leaves or "bytecode.pkl" in leaves or any("/code/" in n for n in names):
        raise ValueError(
            f"{path}: a TorchScript program (torch.jit.save), not a state dict of tensors; twins-np reads state dicts "
            "only: in PyTorch, load the program with torch.jit.load and save model.state_dict() with torch.save"
        )
    if "data.pkl" not in leaves:
        raise ValueError(f"{path}: a zip archive without data.pkl, not a file written by torch.save")


def _unpickling_reason(err: Exception) -> str:
    """The global torch's safe unpickler refused, without torch's advice on how to allow it."""
    for line in str(err).splitlines():
        if "Unsupported global" in line:
            return line.strip().split(". Please")[0].split(" was not an allowed global")[0]
    return "torch.load with weights_only=True refused it"


def _pth_tensor_to_numpy(path: PathLike, name: str, t: Any, torch: Any) -> np.ndarray:
    """A dense CPU tensor of a dtype NumPy has -> array; anything else a ValueError naming it."""

    def bad(msg: str) -> ValueError:
        return ValueError(f"{path}: tensor {name!r} {msg}; twins-np reads dense tensors of NumPy's dtypes only")

    if t.is_meta or t.device.type == "meta":
        raise bad("is a meta tensor: it has a shape but no values")
    if t.layout != torch.strided:
        raise bad(f"is a sparse tensor (layout {t.layout})")
    if t.is_quantized:
        raise bad(f"is quantized ({t.dtype})")
    t = t.detach().cpu().resolve_conj().resolve_neg()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
        t = t.float()
    try:
        return t.numpy().copy()
    except (TypeError, RuntimeError) as e:  # float8, complex32, bit and unsigned types NumPy lacks
        raise bad(f"has dtype {t.dtype}, which NumPy cannot hold") from e


# -- writing -----------------------------------------------------------------------------
def save_weights(model_or_state_dict: Any, path: PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a model's parameters (or a ``{name: array}`` dict) to ``path``, atomically.

    Args:
        model_or_state_dict: a twins-np module (its ``state_dict()`` is written) or a
            mapping from names to NumPy/CuPy arrays. Arrays are written as they are:
            names, shapes and dtypes are kept.
        path: target file; the suffix picks the format (see :data:`FORMATS`).
        metadata: string key/values stored in the ``__metadata__`` of a ``.safetensors``
            file (only that format has a place for them).

    Returns:
        The path written.

    Raises:
        ValueError: for an unknown suffix, metadata for a format without it, or an
            array dtype the format cannot hold. The existing file at ``path`` is left
            untouched on any error.
        ImportError: for ``.pth`` when PyTorch is not installed.
    """
    fmt = weights_format(path)
    state = model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a module or a mapping of arrays, got {type(model_or_state_dict).__name__}")
    arrays = {str(k): _c_order(asnumpy(v)) for k, v in state.items()}
    if metadata and fmt != "safetensors":
        raise ValueError(f"{path}: only .safetensors files can hold metadata")
    if fmt == "npz":
        atomic_write(path, lambda f: _write_npz(f, arrays))
    elif fmt == "safetensors":
        header = _safetensors_header(arrays, dict(metadata or {}), path)  # validate before touching the disk
        atomic_write(path, lambda f: _write_safetensors(f, header, arrays))
    else:
        torch = _import_torch(path)
        native = {k: a.astype(a.dtype.newbyteorder("="), copy=False) for k, a in arrays.items()}  # torch wants native order
        atomic_write(path, lambda f: _write_pth(f, native, torch))
    return Path(path)


def _c_order(a: np.ndarray) -> np.ndarray:
    # not np.ascontiguousarray, which turns a 0-d array into shape (1,)
    return a if a.flags.c_contiguous else a.copy(order="C")


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Run ``write(f)`` on a temporary file beside ``path``, then move it over ``path``.

    The temporary file is flushed and fsync'ed before ``os.replace`` so that a crash
    leaves either the old file or the complete new one, never a mix. On any error
    (Ctrl-C included) the temporary file is deleted and ``path`` is not touched. Used for
    weights, training checkpoints, metrics and figures alike.

    Returns:
        the path written (symlinks resolved).
    """
    target = Path(os.path.realpath(path))  # through a symlink: replace the file it points to, not the link
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_npz(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    # np.savez would take names such as "file" as its own arguments, so the archive is
    # written member by member, exactly as np.savez lays it out (uncompressed, name.npy)
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            if a.dtype.hasobject:
                raise ValueError(f"array {name!r} has dtype object, which .npz can only store by pickling")
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)


def _safetensors_header(arrays: dict[str, np.ndarray], metadata: dict[str, str], path: PathLike) -> bytes:
    """The 8-byte length plus the JSON header, padded with spaces to a multiple of 8 bytes."""
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError(f"{path}: safetensors metadata must map strings to strings")
        header["__metadata__"] = metadata
    offset = 0
    for name, a in arrays.items():
        code = _ST_CODES.get(a.dtype.newbyteorder("="))
        if code is None:
            raise ValueError(f"{path}: array {name!r} has dtype {a.dtype}, which safetensors cannot hold")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keeps the data buffer 8-byte aligned, as the reference writer does
    return len(raw).to_bytes(8, "little") + raw


def _write_safetensors(f: IO[bytes], header: bytes, arrays: dict[str, np.ndarray]) -> None:
    f.write(header)
    for a in arrays.values():
        le = a.astype(a.dtype.newbyteorder("<"), copy=False)  # no copy on little-endian machines
        f.write(np.ascontiguousarray(le).reshape(-1).view(np.uint8).data)


def _write_pth(f: IO[bytes], arrays: dict[str, np.ndarray], torch: Any) -> None:
    torch.save({name: torch.from_numpy(a.copy()) for name, a in arrays.items()}, f)


def convert_weights(src: PathLike, dst: PathLike) -> dict[str, np.ndarray]:
    """Rewrite checkpoint ``src`` in ``dst``'s format; returns the arrays written.

    Names, shapes, dtypes and values are kept exactly (a safetensors BF16 tensor
    becomes float32, exactly); safetensors-to-safetensors also keeps ``__metadata__``.
    An mmsegmentation Twins checkpoint is recognised by its keys and written with
    twins-np's names (:func:`twins_np.models.mmseg.from_mmseg`), ready for
    :func:`load_weights` into its ``*_ade20k`` segmenter.
    """
    metadata: dict[str, str] = {}
    if weights_format(src) == "safetensors" and weights_format(dst) == "safetensors":
        if not Path(src).is_file():
            raise FileNotFoundError(f"no such weights file: {src}")
        arrays, metadata = _read_safetensors(src)
    else:
        arrays = read_weights(src)
    if is_mmseg_state(arrays):
        arrays = from_mmseg(arrays)
    save_weights(arrays, dst, metadata=metadata)
    return arrays


# -- loading into a model ------------------------------------------------------------------
def load_weights(model: Any, path: PathLike, strict: bool = True, allow_nonfinite: bool = False) -> Any:
    """Read ``path`` and copy its arrays into ``model`` (dtype and device become the model's).

    All or nothing: on any error the model is left exactly as it was. Parameters and
    buffers (BatchNorm's running statistics) are both loaded. An mmsegmentation Twins
    checkpoint (``.pth`` with ``state_dict`` and ``meta``, backbone keys
    ``backbone.layers.*``) is recognised by its keys and mapped to twins-np's names
    (:mod:`twins_np.models.mmseg`); build its model with :func:`load_segmenter` or
    ``create_segmenter("<backbone>_<fpn|uperhead>_ade20k")``.

    Args:
        model: a twins-np module, e.g. from :func:`twins_np.create_model`.
        path: a ``.npz``, ``.safetensors`` or ``.pth`` checkpoint.
        strict: if True, a missing or an unexpected key is an error. With False, a
            segmenter whose backbone receives no parameter is still an error (the file
            would leave the backbone at its initial values).
        allow_nonfinite: load NaN and Inf weights (refused by default).

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: if a shape differs (the message names the model, the first
            mismatched key and both shapes), if weights are NaN or Inf, for an
            mmsegmentation checkpoint and a model on timm's flavour of Twins, and for
            unreadable files (see :func:`read_weights`).
        TypeError: for complex, bool, string or object arrays, naming every such key.
        KeyError: (strict) if keys are missing or unexpected, naming the first few; an
            mmsegmentation key without a twins-np place, naming it; (``strict=False``) if no
            name of the file is a parameter of the model (nothing would load), saying which
            prefix would make them match, or if a segmenter's backbone would get none.

    Warns:
        PartialLoadWarning: (``strict=False``) when only some parameters were loaded, or
            some arrays of the file were not used: how many, and the first names.
    """
    state = read_weights(path)
    if is_mmseg_state(state):
        problem = flavour_mismatch(model)
        if problem:
            raise ValueError(f"checkpoint {path} is mmsegmentation's: {problem}")
        state = from_mmseg(state)
    return load_arrays(model, state, strict=strict, source=f"checkpoint {path}", allow_nonfinite=allow_nonfinite)


def load_arrays(
    model: Any, state: Mapping[str, Any], strict: bool = True, source: str = "checkpoint", allow_nonfinite: bool = False
) -> Any:
    """Copy ``{name: array}`` into ``model`` with :func:`load_weights`'s checks and messages.

    ``source`` names where the arrays came from in error messages. The model's keys are
    its ``state_dict``'s: parameters and buffers.
    """
    label = _model_label(model)
    own = model.state_dict()  # parameters and buffers (BatchNorm's running statistics)
    wrong = [
        (k, tuple(p.shape), tuple(np.shape(state[k])))
        for k, p in own.items()
        if k in state and tuple(p.shape) != tuple(np.shape(state[k]))
    ]
    if wrong:
        k, want, got = wrong[0]
        more = f" (and {len(wrong) - 1} more keys)" if len(wrong) > 1 else ""
        raise ValueError(f"{source} does not fit {label}: {k} expected {want}, got {got}{more}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        parts = [
            f"{len(v)} {what} keys (first: {', '.join(v[:3])})"
            for what, v in (("missing", missing), ("unexpected", unexpected))
            if v
        ]
        raise KeyError(f"{source} does not fit {label}: " + "; ".join(parts))
    if not strict:
        _check_any_match(own, state, source, label)  # nothing at all would load: says which prefix would match
    backbone = [k for k in own if k.startswith("backbone.")]
    if backbone and not any(k in state for k in backbone):
        raise KeyError(
            f"{source} holds no parameter of the backbone of {label} ({len(backbone)} keys, first: {backbone[0]}): "
            f"loading it would leave the backbone at its initial values (the file's keys start with: "
            f"{', '.join(sorted({k.split('.')[0] for k in state})[:4]) or 'nothing'})"
        )
    if not strict:
        _report_partial_load(own, state, source, label)  # a load that will happen: how much of it
    try:
        return model.load_state_dict(state, strict=strict, allow_nonfinite=allow_nonfinite)
    except (TypeError, ValueError) as e:  # bad values: say which file they came from
        raise type(e)(f"{source}: {e}") from e


class PartialLoadWarning(UserWarning):
    """``strict=False`` loaded some of a model's parameters, not all (the message says how many)."""


def _check_any_match(own: Mapping[str, Any], state: Mapping[str, Any], source: str, label: str) -> None:
    """``strict=False``: a file that matches no parameter is an error.

    Without this, classifier weights loaded into a segmenter (whose names start with
    ``backbone.``) or a ``features_only`` model (``model.``) change nothing, silently.
    """
    if not any(k in state for k in own):
        first = ", ".join(list(state)[:2]) or "none"
        raise KeyError(
            f"{source} matches no parameter of {label}, so strict=False would load nothing: its {len(state)} "
            f"names (first: {first}) are not the model's {len(own)} (first: {', '.join(list(own)[:2])})"
            f"{_prefix_hint(own, state)}"
        )


def _report_partial_load(own: Mapping[str, Any], state: Mapping[str, Any], source: str, label: str) -> None:
    """``strict=False``: a partial match is reported (a PartialLoadWarning: how many loaded, what was left)."""
    matched = [k for k in own if k in state]
    kept = [k for k in own if k not in state]
    unused = [k for k in state if k not in own]
    if kept or unused:
        parts = [f"strict=False loaded {len(matched)} of the {len(own)} parameters of {label}"]
        if kept:
            parts.append(f"{len(kept)} kept their values (first: {', '.join(kept[:3])})")
        if unused:
            parts.append(f"{len(unused)} arrays of the file were not used (first: {', '.join(unused[:3])})")
        warnings.warn(f"{source}: " + "; ".join(parts), PartialLoadWarning, stacklevel=4)


def _prefix_hint(own: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """Say so when the names would match with a prefix added or removed (``backbone.``, ``model.``, ``module.``)."""
    counts: Counter[tuple[str, str]] = Counter()
    for names, others, side in ((own, state, "model"), (state, own, "file")):
        for name in names:
            for i, char in enumerate(name):
                if char == "." and name[i + 1 :] in others:
                    counts[side, name[: i + 1]] += 1
    if not counts:
        return ""
    (side, prefix), n = counts.most_common(1)[0]
    if side == "model":
        return (
            f"; {n} of the model's names are the file's with {prefix!r} in front: load the file into that part of "
            f"the model (the submodule {prefix[:-1]!r}), or add the prefix to the file's names"
        )
    return f"; {n} of the file's names are the model's with {prefix!r} in front: remove that prefix from the file's names"


def _model_label(model: Any) -> str:
    """The name ``create_model`` / ``create_segmenter`` stamped on ``model`` (e.g. ``twins_svt_small``),
    with its class count where that differs from the named config's; else the class name."""
    cfg = getattr(model, "model_cfg", None)
    if not isinstance(cfg, dict) or not cfg.get("name"):
        return type(model).__name__
    n = getattr(model, "num_classes", None)
    return cfg["name"] if n is None or n == cfg.get("num_classes") else f"{cfg['name']} (num_classes={n})"


def load_segmenter(path: PathLike, dtype: Any = np.float32, allow_nonfinite: bool = False) -> Any:
    """Build the segmenter a checkpoint holds and load it strictly: mmsegmentation's Twins files first of all.

    The checkpoint's keys (mmsegmentation's or twins-np's names) say which ``*_fpn_ade20k`` or
    ``*_uperhead_ade20k`` configuration it is (:func:`twins_np.models.mmseg.recognise`), with
    its class count and head widths.

    Example::

        seg = twins_np.io.load_segmenter("twins_svt-s_uperhead_8x2_512x512_160k_ade20k_20211130_141005-e48a2d94.pth")
        logits = seg.inference(image)   # (1, 150, H, W), mmsegmentation's whole-image inference
    """
    state = read_weights(path)
    if is_mmseg_state(state):
        state = from_mmseg(state)
    try:
        model = create_segmenter_for(state, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return load_arrays(model, state, strict=True, source=f"checkpoint {path}", allow_nonfinite=allow_nonfinite)
