"""Handwritten digits: scikit-learn's bundled 8 x 8 images, brought to model size.

Notation: N images, 1 channel, S x S pixels at the output (S = ``image_size``).

scikit-learn ships the 1,797 images of ``load_digits`` inside its wheel, so this
dataset works offline. Each image is 8 x 8 with integer values 0..16. The pipeline:

1. **Split**: stratified and deterministic from ``seed``. Within every class the
   images are shuffled by ``numpy.random.default_rng(seed)`` and the first
   ``round(test_fraction * n_class)`` go to the test split (20 % by default), so both
   splits keep the class proportions and never share an image.
2. **Scale** to [0, 1] by dividing by 16.
3. **Resize** to S x S with :func:`twins_np.data.augment.resize`, bilinear with
   align_corners=False semantics (default S = 32: a 4x enlargement). Bilinear keeps
   the strokes smooth; nearest would give 4 x 4 blocks that line up exactly with the
   4 x 4 patches of the first stage and make the task look easier than it is.
4. **Normalise** with the mean and standard deviation of the *train* split's pixels
   (one value each, as there is one channel); both splits use the same two numbers.
"""

from __future__ import annotations

import numpy as np

from .augment import resize
from .loader import Dataset

__all__ = ["load_digits", "digits_split"]

_INSTALL_HINT = (
    "the 'digits' dataset needs scikit-learn (its images ship inside the wheel, no download): pip install scikit-learn"
)


def digits_split(labels: np.ndarray, seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices.

    Args:
        labels: (N,) integer class labels.
        seed: seed of the per-class shuffle.
        test_fraction: share of each class that goes to the test split, in (0, 1).

    Returns:
        train, test: sorted int64 index arrays that together cover ``range(N)`` once.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"'test_fraction' must lie in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):  # classes in a fixed order, so the draws are reproducible
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(split: str = "train", image_size: int | None = None, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The digits dataset, split, resized and normalised as the module docstring says.

    Args:
        split: ``"train"`` or ``"test"``.
        image_size: output side S (default 32).
        seed: seed of the stratified split.
        test_fraction: share of each class held out for the test split.

    Returns:
        Dataset with images (N, 1, S, S) float32 and labels (N,) int64 in 0..9
        (N = 1,438 train / 359 test with the defaults).

    Raises:
        ImportError: if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    if split not in ("train", "test"):
        raise ValueError(f"'split' must be 'train' or 'test', got {split!r}")
    size = 32 if image_size is None else image_size
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"'image_size' must be a positive integer, got {image_size!r}")

    pixels, labels = _sk_load_digits(return_X_y=True)
    images = (pixels.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    images = resize(images, int(size), mode="bilinear")
    train, test = digits_split(labels, seed, test_fraction)
    # Statistics in float64: a float32 sum over ~1.5 M pixels loses digits.
    mean = float(images[train].mean(dtype=np.float64))
    std = float(images[train].std(dtype=np.float64))
    chosen = train if split == "train" else test
    # Python floats keep the array float32 (a NumPy float64 scalar would upcast it).
    out = (images[chosen] - mean) / std
    return Dataset(
        images=out.astype(np.float32, copy=False),
        labels=labels[chosen].astype(np.int64),
        classes=[str(k) for k in range(10)],
        name="digits",
        mean=(mean,),
        std=(std,),
    )
