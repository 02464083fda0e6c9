"""Training checkpoints: one ``.npz`` file that holds everything a resumed run needs.

A checkpoint is written after every epoch, so an interrupted run loses at most one
epoch, and a resumed run continues *bit for bit* as the uninterrupted one would have
(on the CPU). That needs more than the weights:

=====================  ==========================================================
key(s) in the .npz     what
=====================  ==========================================================
``format``             ``"twins-np-checkpoint/1"`` (0-d string)
``epoch``              number of finished epochs (0-d int64)
``config``             the run's settings, a JSON string (0-d string)
``history``            the metric rows so far, a JSON list (0-d string)
``rng``                every dropout / drop-path generator state, JSON (0-d string)
``model.<name>``       model parameters, timm's names (``model.head.weight``)
``optimizer.<key>``    :meth:`twins_np.optim.Optimizer.state_dict` (moments, steps)
``schedule.<key>``     :meth:`twins_np.optim.CosineSchedule.state_dict` (step ``t``)
``loader.<key>``       :meth:`twins_np.data.DataLoader.state_dict` (epoch, batch)
=====================  ==========================================================

Only numbers and strings are stored: the file loads with ``np.load(path,
allow_pickle=False)``, so opening a checkpoint can never run code. twins-np itself reads it
with :func:`twins_np.io.read_npz`, which checks every member's claimed size before
allocating it (a damaged or hostile file is a ``ValueError`` naming the member). Random generator
states are dicts with 128-bit integers; they travel as JSON text (Python's JSON keeps
integers of any size exactly).

Files are written atomically (:func:`twins_np.io.atomic_write`): a crash or an error while
writing leaves the previous checkpoint byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..backend import asnumpy
from ..io import atomic_write, read_npz
from ..nn.module import Module

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write",
    "save_npz",
    "rng_states",
    "restore_rng_states",
    "save_checkpoint",
    "load_checkpoint",
    "RUN_RECORD_FORMAT",
    "read_run_record",
]

CHECKPOINT_FORMAT = "twins-np-checkpoint/1"
RUN_RECORD_FORMAT = "twins-np-run/1"
_MAX_ZIP_COMMENT = 65535  # bytes, the ZIP format's limit
_SECTIONS = ("model", "optimizer", "schedule", "loader")
_JSON_KEYS = ("config", "history", "rng")


# --- atomic files ----------------------------------------------------------------------


def save_npz(path: str | os.PathLike, arrays: dict[str, Any], record: dict[str, Any] | None = None) -> Path:
    """Atomically write ``{name: array}`` as an uncompressed ``.npz`` (host copies of GPU arrays).

    Every value must be numeric or a string (no object arrays): the file then loads
    with ``allow_pickle=False``. ``record`` (JSON-serialisable) is kept in the ZIP
    archive's comment, where readers of the arrays never see it: ``weights.npz`` records
    the run's settings there, so that ``twins-np evaluate`` and ``predict`` need no
    ``--model`` (see :func:`read_run_record`).
    """
    host = {name: np.asarray(asnumpy(value)) for name, value in arrays.items()}
    for name, a in host.items():
        if a.dtype == object:
            raise TypeError(f"'{name}' is an object array; a checkpoint stores only numbers and strings")
    comment = b""
    if record is not None:
        comment = json.dumps({"format": RUN_RECORD_FORMAT, **record}, sort_keys=True).encode("utf-8")
        if len(comment) > _MAX_ZIP_COMMENT:
            raise ValueError(f"{path}: the run record is {len(comment)} bytes, more than a ZIP comment holds")
    savez: Any = np.savez  # its stubs read a ``**arrays`` dict as the options

    def write(f: IO[bytes]) -> None:
        savez(f, **host)
        if comment:
            _set_zip_comment(f, comment)

    return atomic_write(path, write)


def _set_zip_comment(f: IO[bytes], comment: bytes) -> None:
    """Append ``comment`` to the ZIP archive just written to ``f`` (without one).

    A ZIP file ends with its end-of-central-directory record, whose last field is the
    comment's 2-byte length, followed by the comment itself (APPNOTE 4.3.16).
    """
    f.seek(-2, os.SEEK_END)
    f.write(len(comment).to_bytes(2, "little") + comment)


def read_run_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The run settings recorded in a ``weights.npz`` by :func:`save_npz`, or None.

    None for every file without a record: other formats, ``.npz`` files written by
    :func:`twins_np.io.save_weights` or NumPy, and ``weights.npz`` of older twins-np
    versions. Never raises for a damaged file (reading its arrays will say what is wrong).
    """
    if not str(path).endswith(".npz"):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            raw = zf.comment
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return None
    try:
        record = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != RUN_RECORD_FORMAT or not isinstance(record.get("config"), dict):
        return None
    return dict(record["config"])


# --- random generator states ------------------------------------------------------------


def rng_states(model: Module) -> dict[str, Any]:
    """The state of every generator used by dropout, drop path and attention dropout.

    Modules with an ``rng`` attribute (a ``numpy.random.Generator``) are collected by
    name. Several modules often share one generator (a Twins model hands one to all
    its blocks), so each distinct generator is stored once.

    Returns:
        ``{"generators": [bit_generator.state, ...], "modules": {module name: index}}``,
        JSON-serialisable.
    """
    generators: list[dict[str, Any]] = []
    index_of: dict[int, int] = {}
    modules: dict[str, int] = {}
    for name, m in model.named_modules():
        rng = getattr(m, "rng", None)
        if not isinstance(rng, np.random.Generator):
            continue
        if id(rng) not in index_of:
            index_of[id(rng)] = len(generators)
            generators.append(dict(rng.bit_generator.state))
        modules[name] = index_of[id(rng)]
    return {"generators": generators, "modules": modules}


def restore_rng_states(model: Module, states: dict[str, Any]) -> None:
    """Put back the generator states saved by :func:`rng_states` (in place).

    Raises:
        ValueError: if the model's modules with generators differ from the saved ones.
    """
    mine = {name for name, m in model.named_modules() if isinstance(getattr(m, "rng", None), np.random.Generator)}
    saved = set(states["modules"])
    if mine != saved:
        raise ValueError(
            f"the checkpoint's random generators belong to other modules: missing {sorted(mine - saved)}, "
            f"unexpected {sorted(saved - mine)}"
        )
    modules: dict[str, Any] = dict(model.named_modules())
    for name, i in states["modules"].items():
        # Shared generators receive the same state once per module: harmless.
        modules[name].rng.bit_generator.state = states["generators"][int(i)]


# --- checkpoints --------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike,
    *,
    epoch: int,
    config: dict[str, Any],
    model: Module,
    optimizer: Any,
    schedule: Any,
    loader: Any,
    history: list[dict[str, Any]] | None = None,
) -> Path:
    """Atomically write a training checkpoint (layout in the module docstring).

    Args:
        path: the ``.npz`` file to (over)write.
        epoch: number of finished epochs.
        config: JSON-serialisable settings of the run.
        model: the :class:`~twins_np.nn.Module` (parameters and generator states).
        optimizer, schedule, loader: objects with ``state_dict()``.
        history: metric rows so far (JSON-serialisable dicts).
    """
    arrays: dict[str, Any] = {
        "format": np.array(CHECKPOINT_FORMAT),
        "epoch": np.array(int(epoch), dtype=np.int64),
        "config": np.array(json.dumps(config, sort_keys=True)),
        "history": np.array(json.dumps(history or [])),
        "rng": np.array(json.dumps(rng_states(model))),
    }
    for section, obj in zip(_SECTIONS, (model, optimizer, schedule, loader)):
        for key, value in obj.state_dict().items():
            arrays[f"{section}.{key}"] = value
    return save_npz(path, arrays)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Returns:
        A dict with the keys epoch (int), config (dict), history (list), rng (dict),
        model ({name: array}), optimizer, schedule and loader (their state dicts), all
        with host NumPy arrays (0-d arrays for scalars; the ``load_state_dict`` methods
        accept them).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a twins-np checkpoint, or is damaged or hostile
            (the message names the file and the member).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # the hardened reader of weights files: every member's claimed size is checked before
    # anything is allocated, so a hostile member is refused by name (a ValueError naming
    # the file and the member), never an out-of-memory error
    try:
        raw = read_npz(path)
    except ValueError as err:  # damaged (truncated, CRC) or hostile (a member claiming terabytes): named
        reason = " ".join(str(err).split()).removeprefix(f"{path}: ")
        raise ValueError(f"{path} is not a readable .npz checkpoint: {reason}") from None
    fmt = str(raw.pop("format", ""))
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a twins-np training checkpoint (format {fmt!r}, expected {CHECKPOINT_FORMAT!r})")
    out: dict[str, Any] = {section: {} for section in _SECTIONS}
    missing = [key for key in ("epoch", *_JSON_KEYS) if key not in raw]
    if missing:
        raise ValueError(f"{path}: damaged checkpoint, the entries {missing} are missing")
    try:
        out["epoch"] = int(raw.pop("epoch"))
        for key in _JSON_KEYS:
            out[key] = json.loads(str(raw.pop(key)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: damaged checkpoint, an entry cannot be read ({err})") from err
    if not isinstance(out["config"], dict):
        raise ValueError(f"{path}: damaged checkpoint, its config is not a JSON object")
    for key, value in raw.items():
        section, _, name = key.partition(".")
        if section not in out or not name:
            raise ValueError(f"{path}: unexpected entry {key!r}")
        out[section][name] = value
    return out
