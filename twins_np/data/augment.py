"""Image transforms on (N, C, H, W) batches: resizing and random augmentation.

Notation: x is a batch (N, C, H, W) on either backend, ``xp`` its array module
(NumPy or CuPy, from :func:`twins_np.backend.get_xp`), ``rng`` a host
``numpy.random.Generator``.

Every random number is drawn on the host from ``rng`` and only then moved to the
batch's device, so one seed gives the same augmentation on the CPU and on the GPU.
The draws are part of each function's contract (written in its docstring), which lets
a test replay them. All transforms keep the dtype: float32 in, float32 out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backend import asnumpy, get_xp

__all__ = [
    "resize",
    "crop_at",
    "random_crop",
    "flip_where",
    "hflip",
    "RandomCrop",
    "HorizontalFlip",
    "Compose",
    "standard_augment",
    "PairedHorizontalFlip",
]


def _check_batch(x: Any) -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"'x' must be a batch of shape (N, C, H, W), got shape {getattr(x, 'shape', None)}")


def _source_coords(n_in: int, n_out: int, start: int = 0, count: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling along one axis, align_corners=False.

    Output pixel centre ``i + 0.5`` maps to input coordinate ``(i + 0.5) * n_in / n_out``,
    i.e. pixel index ``src = (i + 0.5) * n_in / n_out - 0.5``, clamped at 0 (as
    PyTorch's ``interpolate(..., align_corners=False)`` does).

    ``start`` and ``count`` compute only the output pixels ``start .. start + count - 1``
    (a crop of the resized axis), with the same values as the whole axis's.

    Returns:
        lo, hi: (count,) int64 neighbour indices; w: (count,) float32 weight of ``hi``
        (count defaults to ``n_out - start``).
    """
    stop = n_out if count is None else start + count
    src = np.maximum((np.arange(start, stop) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize(x: Any, size: int | tuple[int, int], mode: str = "bilinear") -> Any:
    """Resize a batch of images.

    Modes:
        ``"bilinear"``: align_corners=False semantics (pixel centres are aligned,
        edges clamp), matching PyTorch's ``F.interpolate(mode="bilinear",
        align_corners=False)`` without antialiasing. Shrinking by large factors
        therefore aliases; twins-np only uses it to enlarge.
        ``"nearest"``: output pixel ``i`` copies input pixel ``floor(i * n_in / n_out)``;
        for an integral factor k this is ``np.repeat(x, k)`` on both axes.

    Args:
        x: (N, C, H, W) float array on either backend.
        size: output side (square) or ``(H_out, W_out)``.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        (N, C, H_out, W_out), same dtype and backend as ``x``.
    """
    _check_batch(x)
    xp = get_xp(x=x)
    h_out, w_out = (size, size) if isinstance(size, (int, np.integer)) else size
    if min(h_out, w_out) < 1:
        raise ValueError(f"'size' must be positive, got {size!r}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"'mode' must be 'bilinear' or 'nearest', got {mode!r}")
    h_in, w_in = x.shape[2:]
    if mode == "nearest":
        rows = np.minimum(np.arange(h_out) * h_in // h_out, h_in - 1)
        cols = np.minimum(np.arange(w_out) * w_in // w_out, w_in - 1)
        return x[:, :, xp.asarray(rows)][:, :, :, xp.asarray(cols)]
    # Separable: interpolate along H, then along W. Weights broadcast over the other axes.
    lo, hi, w = (xp.asarray(a) for a in _source_coords(h_in, h_out))
    w = w[:, None]
    x = x[:, :, lo] * (1.0 - w) + x[:, :, hi] * w
    lo, hi, w = (xp.asarray(a) for a in _source_coords(w_in, w_out))
    return (x[..., lo] * (1.0 - w) + x[..., hi] * w).astype(x.dtype, copy=False)


def crop_at(x: Any, pad: int, offsets: Any) -> Any:
    """Zero-pad each image by ``pad`` pixels and cut an H x W window at given offsets.

    Args:
        x: (N, C, H, W) batch.
        pad: zero border added on every side.
        offsets: (N, 2) integers ``(dy, dx)`` in ``[0, 2 * pad]``; the window of image n
            starts at row ``dy`` and column ``dx`` of the padded image. ``(pad, pad)``
            gives the image back.

    Returns:
        (N, C, H, W), same dtype and backend as ``x``.
    """
    _check_batch(x)
    xp = get_xp(x=x)
    n, c, h, w = x.shape
    # offsets and mask are small: read them on the host (asnumpy is the explicit copy a
    # CuPy array needs; np.asarray would refuse one)
    offsets = asnumpy(offsets).astype(np.int64, copy=False)
    if offsets.shape != (n, 2) or offsets.min(initial=0) < 0 or offsets.max(initial=0) > 2 * pad:
        raise ValueError(f"'offsets' must be (N, 2) = ({n}, 2) integers in [0, {2 * pad}], got shape {offsets.shape}")
    padded = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    # One gather for the whole batch: per-image row and column index grids.
    rows = xp.asarray(offsets[:, 0, None] + np.arange(h))  # (N, H)
    cols = xp.asarray(offsets[:, 1, None] + np.arange(w))  # (N, W)
    ni = xp.arange(n)[:, None, None, None]
    ci = xp.arange(c)[None, :, None, None]
    return padded[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop(x: Any, pad: int, rng: np.random.Generator) -> Any:
    """Random translation: zero padding by ``pad`` then a random H x W crop.

    Draws ``offsets = rng.integers(0, 2 * pad + 1, size=(N, 2))`` (one ``(dy, dx)`` per
    image) and returns :func:`crop_at` ``(x, pad, offsets)``. The zeros of the border
    equal the dataset mean once images are normalised.

    Args:
        x: (N, C, H, W) batch on either backend.
        pad: border width (>= 0); 0 returns ``x`` unchanged.
        rng: host generator.

    Returns:
        (N, C, H, W), same dtype and backend as ``x``.
    """
    _check_batch(x)
    if not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"'pad' must be a non-negative integer, got {pad!r}")
    offsets = rng.integers(0, 2 * pad + 1, size=(x.shape[0], 2))
    return crop_at(x, pad, offsets)


def flip_where(x: Any, mask: Any) -> Any:
    """Mirror the images selected by ``mask`` left to right (along W).

    Args:
        x: (N, C, H, W) batch.
        mask: (N,) booleans, True where the image is flipped.

    Returns:
        (N, C, H, W), same dtype and backend as ``x``.
    """
    _check_batch(x)
    xp = get_xp(x=x)
    mask = asnumpy(mask).astype(bool, copy=False)
    if mask.shape != (x.shape[0],):
        raise ValueError(f"'mask' must have shape (N,) = ({x.shape[0]},), got {mask.shape}")
    return xp.where(xp.asarray(mask)[:, None, None, None], x[..., ::-1], x)


def hflip(x: Any, rng: np.random.Generator, p: float = 0.5) -> Any:
    """Random horizontal flip of each image with probability ``p``.

    Draws ``mask = rng.random(N) < p`` and returns :func:`flip_where` ``(x, mask)``.
    Meant for natural images (CIFAR-10); a mirrored digit is a different glyph.

    Args:
        x: (N, C, H, W) batch on either backend.
        rng: host generator.
        p: flip probability in [0, 1].

    Returns:
        (N, C, H, W), same dtype and backend as ``x``.
    """
    _check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"'p' must be a probability in [0, 1], got {p!r}")
    return flip_where(x, rng.random(x.shape[0]) < p)


class RandomCrop:
    """``RandomCrop(pad)(x, rng)`` is :func:`random_crop` ``(x, pad, rng)``."""

    def __init__(self, pad: int = 4) -> None:
        self.pad = pad

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        return random_crop(x, self.pad, rng)

    def __repr__(self) -> str:
        return f"RandomCrop(pad={self.pad})"


class HorizontalFlip:
    """``HorizontalFlip(p)(x, rng)`` is :func:`hflip` ``(x, rng, p)``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        return hflip(x, rng, self.p)

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms ``t(x, rng)`` in order, all drawing from the same generator.

    Args:
        transforms: callables ``t(x, rng) -> x``.
    """

    def __init__(self, transforms: Sequence[Callable[[Any, np.random.Generator], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def standard_augment(pad: int = 4, p: float = 0.5) -> Compose:
    """The usual CIFAR-10 augmentation: random crop with zero padding, then a flip."""
    return Compose([RandomCrop(pad), HorizontalFlip(p)])


class PairedHorizontalFlip:
    """Mirror images *and their per-pixel labels* together: ``(x, y) = t(x, y, rng)``.

    The transform for segmentation batches: an image-only flip would move the pixels but
    not their labels. Draws ``mask = rng.random(N) < p`` (as :func:`hflip`) and mirrors
    the same images of ``x`` (N, C, H, W) and label maps of ``y`` (N, H, W) along W.
    :class:`~twins_np.data.DataLoader` calls it with the labels because ``joint`` is True.
    """

    joint = True

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"'p' must be a probability in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, x: Any, y: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        _check_batch(x)
        want = (x.shape[0], *x.shape[2:])
        if tuple(getattr(y, "shape", ())) != want:
            raise ValueError(f"'y' must be label maps of shape (N, H, W) = {want}, got {getattr(y, 'shape', None)}")
        mask = rng.random(x.shape[0]) < self.p
        xp = get_xp(x=x)
        return flip_where(x, mask), xp.where(xp.asarray(mask)[:, None, None], y[..., ::-1], y)

    def __repr__(self) -> str:
        return f"PairedHorizontalFlip(p={self.p})"
