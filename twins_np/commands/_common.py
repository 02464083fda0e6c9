"""What the ``twins-np`` commands share: one-line errors, argument types, reading weights.

Every command reports a problem it can name as ``twins-np COMMAND: error: MESSAGE`` on
stderr and exits with 2 (see :func:`twins_np.cli.main`); the helpers here raise
:class:`CommandError` (or ``ValueError``) with such a message.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import sys
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class CommandError(Exception):
    """A bad argument or environment: ``main`` prints the message on one line and returns 2."""


# One wording, in every command, for a GPU asked for where there is none.
NO_GPU = (
    "--device gpu needs CuPy and a CUDA GPU, and none was found "
    '(pip install -e ".[gpu]" in the twins-np folder, on a machine with an NVIDIA GPU); use --device cpu'
)


# settings whose flag is not their field's name with dashes
_FLAGS = {"out_dir": "--out"}


def flag(field: str) -> str:
    """The command-line flag of a training setting: ``batch_size`` -> ``--batch-size``, ``out_dir`` -> ``--out``.

    The library names settings by their field (:class:`twins_np.training.ConfigError`,
    :class:`twins_np.training.NonFiniteLossError`); the commands show them as flags with
    ``err.spelled(flag)``.
    """
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def finite_float(text: str) -> float:
    """argparse type of every real-valued option: a finite number (``inf`` and ``nan`` are refused).

    ``float("inf")`` and ``float("nan")`` parse, and would pass on to a run that can only
    end in a NaN stop; argparse reports the error as ``argument --lr: ...``.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def model_name(text: str, names: list[str] | None = None) -> str:
    """argparse type of ``--model`` / ``MODEL``: a registered name, with a suggestion for a typo.

    ``names`` defaults to the classification models (:func:`twins_np.list_models`).
    """
    from ..models import list_models
    from ..training.overrides import did_you_mean

    names = list_models() if names is None else names
    if text not in names:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}{did_you_mean(text, names)}; choose one of {', '.join(names)}")
    return text


def any_model_name(text: str) -> str:
    """argparse type of ``--model`` where classifiers and segmenters are both welcome.

    Whether the name fits ``--task`` is checked with the other settings
    (:meth:`twins_np.training.TrainConfig.validate`), which then says which task it needs.
    """
    from ..models import list_models, list_segmenters

    return model_name(text, list_models() + list_segmenters())


def data_name(text: str) -> str:
    """argparse type of ``--data``: a classification set, a segmentation set or ``folder:PATH``."""
    from ..data import DATASETS
    from ..training.overrides import did_you_mean
    from ..training.tasks import SEGMENTATION_DATA, is_segmentation_data

    if text in DATASETS or is_segmentation_data(text):
        return text
    if text == "folder:":
        raise argparse.ArgumentTypeError("folder: needs the folder's path, e.g. folder:data/ade_small")
    names = list(DATASETS) + list(SEGMENTATION_DATA)
    raise argparse.ArgumentTypeError(f"unknown dataset {text!r}{did_you_mean(text, names)}; choose one of {', '.join(names)}")


def check_device(device: str | None) -> None:
    """Refuse ``--device gpu`` without CuPy and a GPU, before anything is loaded."""
    from ..backend import cupy_available

    if device == "gpu" and not cupy_available():
        raise CommandError(NO_GPU)


def is_training_checkpoint(path: Path) -> bool:
    """True for a ``checkpoint.npz`` written by ``twins-np train`` (its ``format`` entry)."""
    import zipfile

    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return "format.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile, EOFError):
        return False  # reading the weights will explain what is wrong with the file


def read_model_weights(
    path: Path, model: str | None = None, advice: str = ""
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The model's arrays in ``path`` and the training settings recorded with them.

    ``model`` is the ``--model`` given, if any: when it differs from the recorded model,
    the recorded model settings (``model_overrides``) are dropped, the data settings kept.

    A ``--model`` of the other kind than the weights (a classifier for a segmenter's
    weights, or the other way round) is refused naming both, with ``advice`` appended
    when the file records its run (the recorded settings of one task do not fit the other).

    ``path`` is a training ``checkpoint.npz`` (its ``model.*`` arrays and its config), a
    ``weights.npz`` written by ``twins-np train`` (its record of the run, see
    :func:`twins_np.training.read_run_record`), an mmsegmentation Twins checkpoint (its
    keys mapped to twins-np's; the configuration they match is its model), or any weights
    file :func:`twins_np.io.read_weights` reads (no settings: ``{}``).
    """
    from ..io import read_weights
    from ..models.mmseg import from_mmseg, is_mmseg_state, recognise
    from ..training import load_checkpoint, read_run_record

    if path.is_dir():
        raise CommandError(f"--weights {path} is a folder, not a weights file")
    from ..models import list_models, list_segmenters

    if is_training_checkpoint(path):
        ckpt = load_checkpoint(path)
        state, saved = ckpt["model"], dict(ckpt["config"])
    else:
        state, saved = read_weights(path), read_run_record(path) or {}
        if is_mmseg_state(state):  # an mmsegmentation checkpoint: its keys say which configuration it is
            state = from_mmseg(state)
            try:
                name, _, overrides = recognise(state)
            except ValueError as err:
                raise CommandError(f"{path}: {err}") from None
            if model is not None and model != name:
                raise CommandError(
                    f"--model {model}: {path} is an mmsegmentation checkpoint of {name} (its keys say so); "
                    f"leave --model out, or pass --model {name}"
                )
            saved = {"model": name, "model_overrides": overrides or None}
    _check_model_kind(path, model, state, saved, advice)
    if model is not None and saved.get("model") not in (None, model):
        # --model names another model than the recorded one: the recorded overrides belong to that one
        saved = {k: v for k, v in saved.items() if k not in ("model", "model_overrides")}
    if model is None and "model" in saved and saved["model"] not in list_models() + list_segmenters():
        raise CommandError(f"{path} records the model {saved['model']!r}, which this twins-np does not know; pass --model")
    return state, saved


_KINDS = {"classify": "a classifier", "segment": "a segmenter"}


def _check_model_kind(path: Path, model: str | None, state: dict[str, Any], saved: dict[str, Any], advice: str) -> None:
    """``--model`` of the other task than the weights: name that mismatch, not a setting it leads to."""
    from ..training.tasks import task_of_model

    wanted = task_of_model(model)
    held = saved.get("task") if saved.get("task") in _KINDS else task_of_model(saved.get("model"))
    if held is None:  # weights without a record: their names tell a segmenter's (decode_head.*) from a classifier's
        held = "segment" if any(k.startswith("decode_head.") for k in state) else "classify" if "head.weight" in state else None
    if wanted is None or held is None or wanted == held:
        return
    if saved.get("model"):
        recorded = f" ({saved['model']}, trained with --task {held})"
        advice = f"; {advice}" if advice else ""
    else:  # no record to fall back on: the model must be named
        recorded, advice = "", f"; pass {_KINDS[held]} as --model"
    raise CommandError(f"--model {model} is {_KINDS[wanted]}, but {path} holds the weights of {_KINDS[held]}{recorded}{advice}")


def check_finite_logits(logits: Any, weights: Path | str) -> None:
    """Refuse NaN or infinite logits: a probability of nan is no answer."""
    from ..backend import asnumpy

    host = np.asarray(asnumpy(logits))
    bad = int((~np.isfinite(host)).sum())
    if bad:
        raise CommandError(
            f"the model's output holds {bad} NaN or infinite value(s) of {host.size}: the weights in {weights} are "
            "broken (NaN/Inf weights, or values so large that the forward overflows)"
        )


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Show each warning raised inside as one line, ``twins-np COMMAND: warning: MESSAGE``.

    Python's default shows the warning's source file and line (two lines, a library's
    path); a warning that reaches a user of the command line is about their input (an
    image's corrupt metadata) and says so in one line.
    """

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        print(f"twins-np {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def reading_data(data_dir: str | None, command: str = "") -> Iterator[None]:
    """Name ``--data-dir`` in the errors of reading a dataset (missing, damaged or hostile files);
    with ``command``, show the warnings of reading it (an image's corrupt metadata) as one line each."""
    try:
        with one_line_warnings(command) if command else contextlib.nullcontext():
            yield
    except (FileNotFoundError, pickle.UnpicklingError, tarfile.TarError, EOFError) as err:
        text = " ".join(str(err).split()).replace("pass its location as data_dir", "pass its location with --data-dir")
        where = f"--data-dir {data_dir}: " if data_dir is not None else ""
        raise CommandError(f"{where}{text}") from err
