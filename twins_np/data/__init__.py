"""Datasets, a resumable loader and augmentation for twins-np.

Notation: N images, C channels, S x S pixels, B the batch size.

Every dataset comes back as a :class:`Dataset`: ``images`` (N, C, S, S) float32,
normalised, and ``labels`` (N,) int64, on the host. :class:`DataLoader` serves
batches on the CPU or the GPU::

    from twins_np.data import DataLoader, load_dataset

    train = load_dataset("digits", "train")            # (1438, 1, 32, 32)
    loader = DataLoader(train, batch_size=64, seed=0)
    for images, labels in loader:                      # one epoch
        ...

Datasets (all offline):

==============  ======================================================  ===========
name            content                                                 input
==============  ======================================================  ===========
``digits``      scikit-learn's handwritten digits, 8 x 8 enlarged to S  (1, 32, 32)
``cifar10``     CIFAR-10 from the user's copy of the python archive     (3, 32, 32)
``long-range``  two distant marks, same shape or not (synthetic)        (1, 32, 32)
==============  ======================================================  ===========

Segmentation sets (per-pixel labels (N, H, W), 255 ignored; see
:mod:`twins_np.data.segmentation`):

======================  ================================================  ===========
name                    content                                           input
======================  ================================================  ===========
``shapes``              squares, discs, triangles on textured noise       (3, 64, 64)
``long-range-dense``    an object whose class is set by a distant cue     (1, 64, 64)
``folder:PATH``         the user's ``images/`` + ``annotations/`` folder  (3, 64, 64)
======================  ================================================  ===========
"""

from __future__ import annotations

from typing import Any

from .augment import (
    Compose,
    HorizontalFlip,
    PairedHorizontalFlip,
    RandomCrop,
    crop_at,
    flip_where,
    hflip,
    random_crop,
    resize,
    standard_augment,
)
from .cifar10 import load_cifar10
from .digits import load_digits
from .loader import DataLoader, Dataset
from .long_range import load_long_range, make_long_range
from .segmentation import (
    IGNORE_INDEX,
    load_long_range_dense,
    load_segmentation_folder,
    load_shapes,
    make_long_range_dense,
    make_shapes,
)

__all__ = [
    "Dataset",
    "DataLoader",
    "DATASETS",
    "load_dataset",
    "load_digits",
    "load_cifar10",
    "load_long_range",
    "make_long_range",
    "IGNORE_INDEX",
    "SEGMENTATION_DATASETS",
    "load_shapes",
    "make_shapes",
    "load_long_range_dense",
    "make_long_range_dense",
    "load_segmentation_folder",
    "resize",
    "crop_at",
    "random_crop",
    "flip_where",
    "hflip",
    "RandomCrop",
    "HorizontalFlip",
    "PairedHorizontalFlip",
    "Compose",
    "standard_augment",
]

DATASETS = ("digits", "cifar10", "long-range")
SEGMENTATION_DATASETS = ("shapes", "long-range-dense", "folder:PATH")


def load_dataset(
    name: str,
    split: str = "train",
    image_size: int | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Load one split of a dataset by name.

    Args:
        name: ``"digits"``, ``"cifar10"`` or ``"long-range"`` (classification);
            ``"shapes"``, ``"long-range-dense"`` or ``"folder:PATH"`` (segmentation;
            underscores may stand for the hyphens).
        split: ``"train"`` or ``"test"``.
        image_size: output side S; None keeps the dataset's default (32 for the
            classification sets, 64 for the segmentation sets).
        data_dir: where CIFAR-10 lies (see :func:`load_cifar10`); unused by the others.
        seed: seed of the digits split and of the long-range draws; CIFAR-10's split is fixed.
        **options: passed on, e.g. ``test_fraction`` (digits), ``n`` and ``noise`` (long-range).

    Returns:
        The :class:`Dataset`.

    Raises:
        ValueError: for an unknown name or split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"'split' must be 'train' or 'test', got {split!r}")
    if name == "digits":
        return load_digits(split, image_size, seed, **options)
    if name == "cifar10":
        return load_cifar10(split, image_size, data_dir, **options)
    if name == "long-range":
        return load_long_range(split, image_size, seed, **options)
    if name.startswith("folder:"):
        return load_segmentation_folder(name[len("folder:") :], split, image_size, **options)
    canonical = name.replace("_", "-")
    if canonical == "shapes":
        return load_shapes(split, image_size, seed, **options)
    if canonical == "long-range-dense":
        return load_long_range_dense(split, image_size, seed, **options)
    raise ValueError(f"'name' must be one of {', '.join(DATASETS + SEGMENTATION_DATASETS)}; got {name!r}")
