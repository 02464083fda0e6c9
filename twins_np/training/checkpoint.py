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
allow_pickle=False)``, so opening a checkpoint can never run code. Random generator
states are dicts with 128-bit integers; they travel as JSON text (Python's JSON keeps
integers of any size exactly).

Files are written atomically (:func:`twins_np.io.atomic_write`): a crash or an error while
writing leaves the previous checkpoint byte for byte as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import asnumpy
from ..io import atomic_write
from ..nn.module import Module

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write",
    "save_npz",
    "rng_states",
    "restore_rng_states",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "twins-np-checkpoint/1"
_SECTIONS = ("model", "optimizer", "schedule", "loader")
_JSON_KEYS = ("config", "history", "rng")


# --- atomic files ----------------------------------------------------------------------


def save_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Atomically write ``{name: array}`` as an uncompressed ``.npz`` (host copies of GPU arrays).

    Every value must be numeric or a string (no object arrays): the file then loads
    with ``allow_pickle=False``.
    """
    host = {name: np.asarray(asnumpy(value)) for name, value in arrays.items()}
    for name, a in host.items():
        if a.dtype == object:
            raise TypeError(f"'{name}' is an object array; a checkpoint stores only numbers and strings")
    savez: Any = np.savez  # its stubs read a ``**arrays`` dict as the options
    return atomic_write(path, lambda f: savez(f, **host))


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
        ValueError: if the file is not a twins-np checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            raw = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:  # not a zip / truncated / object arrays
        raise ValueError(f"{path} is not a readable .npz checkpoint: {err}") from err
    fmt = str(raw.pop("format", ""))
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a twins-np training checkpoint (format {fmt!r}, expected {CHECKPOINT_FORMAT!r})")
    out: dict[str, Any] = {section: {} for section in _SECTIONS}
    out["epoch"] = int(raw.pop("epoch"))
    for key in _JSON_KEYS:
        out[key] = json.loads(str(raw.pop(key)))
    for key, value in raw.items():
        section, _, name = key.partition(".")
        if section not in out or not name:
            raise ValueError(f"{path}: unexpected entry {key!r}")
        out[section][name] = value
    return out
