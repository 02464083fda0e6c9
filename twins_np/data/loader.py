"""The :class:`Dataset` container and a resumable, seeded :class:`DataLoader`.

Notation: N samples, C channels, H x W pixels, B the batch size.

A :class:`Dataset` is just arrays on the host: ``images`` (N, C, H, W) float32 and
``labels`` (N,) int64, or (N, H, W) int64 per-pixel labels for segmentation. The
:class:`DataLoader` cuts it into batches, moves each batch
to the requested device and optionally augments it there.

Reproducibility is built on one rule: every random number depends only on
``(seed, epoch, batch index)``. The order of epoch ``e`` is the permutation drawn by
``numpy.random.default_rng([seed, e])``; the augmentation of batch ``i`` uses its own
generator ``default_rng([seed, e, i])``. The loader's whole state is therefore three
integers (see :meth:`DataLoader.state_dict`), and a run that is stopped, saved and
resumed sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import to_device

__all__ = ["Dataset", "DataLoader"]

# An augmentation takes a batch (B, C, H, W) on any backend and a host Generator.
Augment = Callable[[Any, np.random.Generator], Any]


@dataclass
class Dataset:
    """Images and labels of one split, on the host.

    Attributes:
        images: (N, C, H, W) float32, already normalised.
        labels: (N,) int64 class indices in ``[0, len(classes))`` (classification), or
            (N, H, W) int64 per-pixel class indices (segmentation), where a pixel may also
            hold ``ignore_index``.
        classes: class names; ``classes[k]`` names label ``k``.
        name: dataset name, e.g. ``"digits"``.
        mean: per-channel mean (C values) that was subtracted, or None. With
            ``std`` it undoes the normalisation for display: ``x * std + mean``.
        std: per-channel standard deviation (C values) that was divided out, or None.
        ignore_index: the label of pixels that are not scored (segmentation), or None.
        files: the file each image was read from (N of them), or None (synthetic sets):
            errors and notes name an image by it.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    ignore_index: int | None = None
    files: list[str] | None = None

    def __post_init__(self) -> None:
        # Checked once here, so that the loader and the models can trust the layout.
        if not isinstance(self.images, np.ndarray) or self.images.ndim != 4:
            raise ValueError(
                f"'images' must be a NumPy array of shape (N, C, H, W), got "
                f"{type(self.images).__name__} with shape {getattr(self.images, 'shape', None)}"
            )
        if self.images.dtype != np.float32:
            raise ValueError(f"'images' must be float32, got {self.images.dtype}")
        if not isinstance(self.labels, np.ndarray) or self.labels.dtype != np.int64:
            raise ValueError(f"'labels' must be an int64 NumPy array, got {getattr(self.labels, 'dtype', type(self.labels))}")
        n, h, w = len(self.images), *self.images.shape[2:]
        if self.labels.shape not in ((n,), (n, h, w)):
            raise ValueError(
                f"'labels' must have shape (N,) = ({n},) or, per pixel, (N, H, W) = ({n}, {h}, {w}); got {self.labels.shape}"
            )
        if self.files is not None and len(self.files) != n:
            raise ValueError(f"'files' must name the {n} images, got {len(self.files)} names")
        if self.ignore_index is not None and self.labels.ndim == 1:
            raise ValueError("'ignore_index' is for per-pixel labels (N, H, W); these labels have shape (N,)")
        valid = self.labels if self.ignore_index is None else self.labels[self.labels != self.ignore_index]
        if valid.size and (valid.min() < 0 or valid.max() >= len(self.classes)):
            also = "" if self.ignore_index is None else f" or equal ignore_index={self.ignore_index}"
            raise ValueError(
                f"'labels' must lie in [0, {len(self.classes)}) (one per class name){also}, "
                f"got values in [{valid.min()}, {valid.max()}]"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    def subset(self, indices: Any) -> Dataset:
        """A new Dataset holding ``images[indices]``, ``labels[indices]`` (copies).

        Args:
            indices: integer index array or slice, e.g. ``np.arange(256)`` for a quick run.
        """
        files = None if self.files is None else [str(f) for f in np.asarray(self.files, dtype=object)[indices]]
        return Dataset(
            self.images[indices],
            self.labels[indices],
            list(self.classes),
            self.name,
            self.mean,
            self.std,
            self.ignore_index,
            files,
        )

    @property
    def is_segmentation(self) -> bool:
        """True when the labels are per pixel, (N, H, W)."""
        return self.labels.ndim == 3


class DataLoader:
    """Iterate over a :class:`Dataset` in (images, labels) batches.

    Each ``for`` loop over the loader continues the current epoch from where the last
    one stopped, and moves to the next epoch once the epoch is exhausted. So
    ``for x, y in loader`` is one epoch, and after ``load_state_dict`` it is the rest of
    the interrupted epoch.

    Args:
        dataset: the data to serve.
        batch_size: B, samples per batch (the last batch may be smaller).
        shuffle: draw a new order every epoch; otherwise serve samples in order.
        seed: seed of every random draw (order and augmentation).
        drop_last: skip the last batch when it has fewer than B samples.
        augment: optional ``augment(images, rng) -> images`` applied to each batch
            on its device, e.g. :func:`twins_np.data.augment.standard_augment`; for a
            segmentation set a joint transform (``augment.joint`` True) called as
            ``augment(images, labels, rng) -> (images, labels)``, e.g.
            :class:`twins_np.data.augment.PairedHorizontalFlip`.
        device: ``"cpu"`` (NumPy) or ``"gpu"`` (CuPy).

    Yields:
        images: (B, C, H, W) float32 on ``device``.
        labels: (B,) int64 on ``device``.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        augment: Augment | None = None,
        device: str = "cpu",
    ) -> None:
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"'batch_size' must be a positive integer, got {batch_size!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"'seed' must be a non-negative integer, got {seed!r}")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"'device' must be 'cpu' or 'gpu', got {device!r}")
        if augment is not None and not callable(augment):
            raise ValueError(f"'augment' must be callable as augment(images, rng), got {augment!r}")
        if len(dataset) == 0:
            raise ValueError("'dataset' is empty")
        joint = bool(getattr(augment, "joint", False))
        if augment is not None and dataset.is_segmentation and not joint:
            # An image-only transform would move the pixels but not their labels.
            raise ValueError(
                "'augment' transforms images only and would misalign per-pixel labels; "
                "augment segmentation batches with a transform that moves images and labels together "
                "(one with joint = True, called as augment(images, labels, rng), e.g. PairedHorizontalFlip)"
            )
        if joint and not dataset.is_segmentation:
            raise ValueError("'augment' is a joint image + label-map transform, but this dataset has one label per image")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.augment = augment
        self.device = device
        self.epoch = 0  # epoch being served
        self.batch = 0  # index of the next batch within that epoch
        self.last_indices: np.ndarray | None = None  # the dataset indices of the batch served last

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of an epoch: (N,) int64, a permutation when shuffling."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        order = self.order(self.epoch)
        while self.batch < len(self):
            i = self.batch
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            # Count the batch as served before handing it out: a state saved while the
            # caller trains on batch i must resume at batch i + 1.
            self.batch += 1
            self.last_indices = idx
            images = to_device(self.dataset.images[idx], self.device)
            labels = to_device(self.dataset.labels[idx], self.device)
            if self.augment is not None:
                rng = np.random.default_rng([self.seed, self.epoch, i])
                if getattr(self.augment, "joint", False):  # segmentation: labels move with their pixels
                    joint: Any = self.augment  # augment(images, labels, rng), see PairedHorizontalFlip
                    images, labels = joint(images, labels, rng)
                else:
                    images = self.augment(images, rng)
            yield images, labels
        self.epoch += 1
        self.batch = 0

    def state_dict(self) -> dict[str, int]:
        """The position of the loader, as plain ints (safe to store anywhere).

        Returns:
            ``{"seed", "epoch", "batch", "batch_size", "num_samples"}``; ``batch`` is
            the index of the next batch to serve. The last two are checked on load.
        """
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "batch": self.batch,
            "batch_size": self.batch_size,
            "num_samples": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises:
            ValueError: if the state is incomplete, or was saved with another batch
                size or dataset size (the batches would then differ silently).
        """
        missing = {"seed", "epoch", "batch"} - set(state)
        if missing:
            raise ValueError(f"'state' lacks the keys {sorted(missing)}")
        for key, mine in (("batch_size", self.batch_size), ("num_samples", len(self.dataset))):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"'state' was saved with {key}={int(state[key])}, this loader has {mine}")
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(f"'state' has epoch={epoch}, batch={batch}; need epoch >= 0, 0 <= batch <= {len(self)}")
        self.seed, self.epoch, self.batch = int(state["seed"]), epoch, batch
