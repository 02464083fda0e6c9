"""A synthetic task that local windows cannot solve: do two distant marks match?

Notation: S x S pixels (S = ``image_size``, default 32), p = 4 the stage-1 patch
size, T = S / p tokens per side at stage 1, ws = 7 the window side in tokens
(Twins-SVT's locally-grouped attention), m = 3 the mark side in pixels.

Each image is Gaussian noise with two 3 x 3 marks. A mark is a "plus" or a "cross";
both shapes light up 5 pixels, so the pixel sum says nothing about the shapes. The
label is 1 ("same") when the two marks have the same shape and 0 ("different")
otherwise, an XOR. Classes are exactly balanced, the first mark's shape is a fair
coin independent of the label, and so is the second's: P(label | one mark) = 1/2.

Placement: the marks are separated along one axis (rows or columns, a fair coin).
Along it, the first mark lies in the first k token rows/columns and the second in
the last k, with k = (T - ws + 1) // 2, so their token indices differ by at least
ws. Along the other axis each mark is placed uniformly. At S = 32 (T = 8) this means
k = 1: one mark inside the 4-pixel band at one edge, the other inside the opposite
band, the two spanning at least 30 > 28 = ws * p pixels; at S = 64, k = 5.

Why a local-window model stays at chance: a ws x ws window of stage-1 tokens,
whatever its offset, never holds a pixel of both marks, and one mark alone is
independent of the label. So any decision made from one window is a coin flip.
A model that encodes windows independently, averages the window features and
classifies them linearly scores f(first mark) + g(second mark): no sum of that form
separates XOR, and its cross-entropy optimum is the constant ln 2 (a sum can still
get 3 of the 4 mark combinations right, so accuracy alone is a weaker witness than
the loss). Solving the task needs information to flow between windows: Twins' global
sub-sampled attention, a stage whose window covers the whole map, or the PEG, whose
3x3 conv between two LSA blocks already crosses window borders (notebook 09 removes it
from both models for the LSA-only vs LSA+GSA comparison).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .loader import Dataset

__all__ = ["LongRangeArrays", "make_long_range", "load_long_range", "band_tokens", "MARKS", "CLASSES"]

# The two mark shapes (kind 0: plus, kind 1: cross), 5 lit pixels each.
MARKS = np.array(
    [
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
        [[1, 0, 1], [0, 1, 0], [1, 0, 1]],
    ],
    dtype=np.float32,
)
CLASSES = ["different", "same"]
_SPLIT_STREAM = {"train": 0, "test": 1}


class LongRangeArrays(NamedTuple):
    images: np.ndarray  # (N, 1, S, S) float32
    labels: np.ndarray  # (N,) int64: 1 when both marks have the same kind
    corners: np.ndarray  # (N, 2, 2) int64: (row, col) of each mark's top-left pixel
    kinds: np.ndarray  # (N, 2) int64: 0 plus, 1 cross


def band_tokens(image_size: int, patch_size: int = 4, window: int = 7) -> int:
    """k, the width in tokens of the band each mark is confined to (see module docstring)."""
    tokens = image_size // patch_size
    return (tokens - window + 1) // 2


def make_long_range(
    n: int,
    image_size: int = 32,
    seed: int | Sequence[int] = 0,
    noise: float = 0.3,
    patch_size: int = 4,
    window: int = 7,
) -> LongRangeArrays:
    """Draw ``n`` images of the task, deterministically from ``seed``.

    Args:
        n: number of images (labels are balanced: ``n // 2`` of class 0).
        image_size: S, a multiple of ``patch_size`` with at least ``window + 1`` tokens.
        seed: seed of every draw (an int or a list of ints, as ``numpy.random.default_rng`` takes).
        noise: standard deviation of the background noise (marks have amplitude 1).
        patch_size: p, pixels per token at stage 1.
        window: ws, window side in tokens.

    Returns:
        :class:`LongRangeArrays` with images (N, 1, S, S) float32, labels, corners, kinds.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"'n' must be a positive integer, got {n!r}")
    if not isinstance(image_size, (int, np.integer)) or image_size % patch_size:
        raise ValueError(f"'image_size' must be a multiple of patch_size={patch_size}, got {image_size!r}")
    k = band_tokens(image_size, patch_size, window)
    m = MARKS.shape[-1]
    if k < 1 or k * patch_size < m:
        raise ValueError(
            f"'image_size'={image_size} is too small: two marks {window} tokens apart need at least "
            f"{(window + 1) * patch_size} pixels per side"
        )
    if noise < 0:
        raise ValueError(f"'noise' must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    s, band = int(image_size), k * patch_size

    labels = rng.permutation(np.arange(n) % 2)  # exactly balanced (n odd: one more 0)
    first = rng.integers(0, 2, size=n)
    # same -> equal kinds, different -> opposite kinds: each kind alone is a fair coin.
    kinds = np.stack([first, np.where(labels == 1, first, 1 - first)], axis=1)

    axis = rng.integers(0, 2, size=n)  # 0: marks apart along rows, 1: along columns
    near = rng.integers(0, band - m + 1, size=n)  # first mark inside [0, band)
    far = rng.integers(s - band, s - m + 1, size=n)  # second mark inside [S - band, S)
    free = rng.integers(0, s - m + 1, size=(n, 2))  # position along the other axis
    corners = np.empty((n, 2, 2), dtype=np.int64)
    corners[:, 0, 0] = np.where(axis == 0, near, free[:, 0])
    corners[:, 0, 1] = np.where(axis == 0, free[:, 0], near)
    corners[:, 1, 0] = np.where(axis == 0, far, free[:, 1])
    corners[:, 1, 1] = np.where(axis == 0, free[:, 1], far)

    images = (noise * rng.standard_normal((n, 1, s, s))).astype(np.float32)
    # Stamp the marks with one fancy-indexed assignment per mark: rows (N, m, 1), cols (N, 1, m).
    offs = np.arange(m)
    idx = np.arange(n)[:, None, None]
    for j in range(2):
        rows = (corners[:, j, 0, None] + offs)[:, :, None]
        cols = (corners[:, j, 1, None] + offs)[:, None, :]
        images[idx, 0, rows, cols] += MARKS[kinds[:, j]]
    return LongRangeArrays(images, labels.astype(np.int64), corners, kinds.astype(np.int64))


def load_long_range(
    split: str = "train", image_size: int | None = None, seed: int = 0, n: int | None = None, noise: float = 0.3
) -> Dataset:
    """The long-range task as a :class:`Dataset` (images need no normalisation: noise is centred).

    Train and test are independent draws, from the seeds ``[seed, 0]`` and ``[seed, 1]``.

    Args:
        split: ``"train"`` or ``"test"``.
        image_size: S (default 32).
        seed: base seed.
        n: number of images (default 4,096 train, 1,024 test).
        noise: background noise standard deviation.

    Returns:
        Dataset with images (N, 1, S, S) float32 and labels (N,) int64 (1 = same).
    """
    if split not in _SPLIT_STREAM:
        raise ValueError(f"'split' must be 'train' or 'test', got {split!r}")
    if n is None:
        n = 4096 if split == "train" else 1024
    arrays = make_long_range(n, 32 if image_size is None else image_size, [seed, _SPLIT_STREAM[split]], noise)
    return Dataset(arrays.images, arrays.labels, list(CLASSES), "long-range")
