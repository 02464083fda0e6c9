"""CIFAR-10 from the standard "python version" archive, read without trusting pickle.

Notation: N images, C = 3 channels (R, G, B), 32 x 32 pixels (S x S after resizing).

The archive ``cifar-10-python.tar.gz`` holds a folder ``cifar-10-batches-py/`` with
``data_batch_1`` .. ``data_batch_5`` (train, 10,000 images each), ``test_batch`` and
``batches.meta``. Each batch is a pickled dict with bytes keys: ``b"data"`` is uint8
(10000, 3072), one row per image holding the R, G and B planes of 32 x 32 pixels in
row-major order, so ``row.reshape(3, 32, 32)`` is already (C, H, W); ``b"labels"`` is a
list of ints. ``batches.meta`` gives ``b"label_names"``.

Unpickling can run arbitrary code, so the batches are read with
:class:`RestrictedUnpickler`, which resolves only the few globals a NumPy array needs.
Members are read straight from the tar file; nothing is extracted to disk.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from .augment import resize
from .loader import Dataset

__all__ = ["load_cifar10", "read_batches", "RestrictedUnpickler", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES"]

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"

# Per-channel mean and standard deviation of the 50,000 training images (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Used when batches.meta is absent; it is the order of batches.meta in the archive.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # NumPy 2 renamed numpy.core to numpy._core; files written by either name the one
    # current when they were written, so both spellings map to the same function.
    core = getattr(np, "_core", None) or np.core  # type: ignore[attr-defined]
    reconstruct = core.multiarray._reconstruct
    frombuffer = core.numeric._frombuffer  # pickle protocol 5 uses it
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes and NumPy arrays, and nothing else.

    ``find_class`` is how a pickle names a callable to run (``os.system`` in a hostile
    file). Here it answers only for ``numpy.ndarray``, ``numpy.dtype``, NumPy's
    ``_reconstruct`` / ``_frombuffer`` (under ``numpy.core`` and ``numpy._core``) and a
    latin-1-only ``_codecs.encode``; every other name raises
    ``pickle.UnpicklingError`` naming the refused global.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global '{module}.{name}': a CIFAR-10 batch only needs NumPy arrays"
            ) from None


def _unpickle(data: bytes) -> Any:
    # encoding="bytes" keeps the Python-2 str keys as bytes (b"data", b"labels").
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _read_files(data_dir: str | os.PathLike[str], names: list[str]) -> tuple[dict[str, bytes], str]:
    """Read the named files from the first CIFAR-10 layout found under ``data_dir``.

    Looks for, in order: ``data_dir`` being the archive, ``data_dir`` being the
    extracted folder, ``data_dir/cifar-10-batches-py/``, ``data_dir/cifar-10-python.tar.gz``.

    Returns:
        ``{name: contents}`` for the names that exist, and the path that was used.
    """
    root = Path(data_dir).expanduser()
    for path in (root, root / FOLDER, root / ARCHIVE):
        if path.is_file() and tarfile.is_tarfile(path):
            return _read_tar(path, names), str(path)
        if path.is_dir() and any((path / n).is_file() for n in TRAIN_FILES + TEST_FILES):
            return {n: (path / n).read_bytes() for n in names if (path / n).is_file()}, str(path)
    looked = ", ".join(str(p) for p in (root / FOLDER, root / ARCHIVE))
    raise FileNotFoundError(
        f"CIFAR-10 not found under {str(root)!r}: looked for the folder and archive {looked} "
        f"(the folder must contain {', '.join(TRAIN_FILES + TEST_FILES)} and {META_FILE}). "
        "Download the 'CIFAR-10 python version' from https://www.cs.toronto.edu/~kriz/cifar.html "
        "and pass its location as data_dir."
    )


def _read_tar(path: Path, names: list[str]) -> dict[str, bytes]:
    # One pass over the (compressed) archive; members are matched by base name, so an
    # archive with another top folder name still works. Nothing touches the disk.
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            base = os.path.basename(member.name)
            if member.isfile() and base in names and base not in found:
                f = tar.extractfile(member)
                if f is not None:
                    found[base] = f.read()
    return found


def read_batches(data_dir: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Raw CIFAR-10 pixels and labels of one split.

    Args:
        data_dir: the archive, the ``cifar-10-batches-py`` folder, or a folder holding either.
        split: ``"train"`` (data_batch_1..5) or ``"test"`` (test_batch).

    Returns:
        images: (N, 3, 32, 32) uint8, channels R, G, B.
        labels: (N,) int64, in file order.
        classes: the 10 class names.

    Raises:
        FileNotFoundError: naming the files looked for.
        ValueError: for a batch with the wrong layout.
    """
    if split not in ("train", "test"):
        raise ValueError(f"'split' must be 'train' or 'test', got {split!r}")
    names = TRAIN_FILES if split == "train" else TEST_FILES
    files, where = _read_files(data_dir, names + [META_FILE])
    missing = [n for n in names if n not in files]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 at {where!r} lacks the batch files {missing}")
    images, labels = [], []
    for name in names:
        batch = _unpickle(files[name])
        data = np.asarray(batch[b"data"]) if isinstance(batch, dict) and b"data" in batch else None
        if data is None or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{name} in {where!r}: expected b'data' uint8 (N, 3072), got {getattr(data, 'shape', None)}")
        lab = np.asarray(batch.get(b"labels", []), dtype=np.int64)
        if lab.shape != (len(data),) or (len(lab) and (lab.min() < 0 or lab.max() > 9)):
            raise ValueError(f"{name} in {where!r}: expected {len(data)} labels in 0..9 under b'labels'")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    classes = CIFAR10_CLASSES
    if META_FILE in files:
        names_in_meta = _unpickle(files[META_FILE])[b"label_names"]
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names_in_meta]
    return np.concatenate(images), np.concatenate(labels), list(classes)


def load_cifar10(split: str = "train", image_size: int | None = None, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """CIFAR-10, scaled to [0, 1] and normalised with :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        image_size: output side S; None or 32 keeps 32 x 32, otherwise bilinear resize
            (align_corners=False).
        data_dir: where the data lies (see :func:`read_batches`); default: the
            environment variable ``TWINS_NP_DATA``, else ``./data``.

    Returns:
        Dataset with images (N, 3, S, S) float32 (R, G, B) and labels (N,) int64.
    """
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
        raise ValueError(f"'image_size' must be a positive integer, got {image_size!r}")
    if data_dir is None:
        data_dir = os.environ.get("TWINS_NP_DATA", "data")
    raw, labels, classes = read_batches(data_dir, split)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, dtype=np.float32)[:, None, None]
    images = (raw.astype(np.float32) / 255.0 - mean) / std
    if image_size is not None and image_size != 32:
        images = resize(images, int(image_size), mode="bilinear")
    return Dataset(images, labels, classes, "cifar10", CIFAR10_MEAN, CIFAR10_STD)
