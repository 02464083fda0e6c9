"""ImageNet-1k evaluation preprocessing, class names and top-k readout.

:func:`preprocess` reproduces timm's evaluation transform for Twins (its pretrained
config: ``crop_pct=0.9``, bicubic interpolation, ImageNet mean/std):

    resize the short side to floor(size / crop_pct) (bicubic)  -> 248 for size 224
    centre crop size x size
    to float32 in [0, 1], CHW
    normalise per channel: (x - mean) / std                     -> (1, 3, size, size)

Images are handled with Pillow (installed with matplotlib) and read with
:mod:`twins_np.image_files` (a size limit before decoding, bit depths scaled, one-line errors).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from .backend import asnumpy
from .image_files import MAX_IMAGE_PIXELS, read_image

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "DEFAULT_CROP_PCT",
    "load_image",
    "preprocess",
    "imagenet_classes",
    "softmax",
    "topk",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.9  # timm's pretrained config for every Twins variant


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("reading images needs Pillow: pip install pillow") from e
    return Image


def load_image(path: str | os.PathLike[str]) -> Any:
    """Open an image file as an RGB ``PIL.Image.Image`` (grey, palette and RGBA converted).

    Read with :func:`twins_np.image_files.read_image`: refused above
    :data:`~twins_np.image_files.MAX_IMAGE_PIXELS` before decoding (a larger JPEG is decoded
    at a reduced size instead), 16-bit and float images scaled to 8 bits, NaN/Inf pixels
    refused, every failure a ``ValueError`` naming the file.
    """
    return read_image(path)


def preprocess(
    image: Any,
    size: int = 224,
    crop_pct: float = DEFAULT_CROP_PCT,
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
) -> np.ndarray:
    """timm's eval transform: bicubic short-side resize, centre crop, normalise.

    Args:
        image: a ``PIL.Image.Image`` or a uint8 array (H, W, 3), RGB.
        size: side of the square crop.
        crop_pct: fraction of the resized short side kept by the crop, in (0, 1]; the
            short side is resized to ``floor(size / crop_pct)``.
        mean, std: per-channel normalisation, RGB order, for values in [0, 1].

    Returns:
        float32 array (1, 3, size, size), NCHW.

    Raises:
        ValueError: for bad arguments, and for an image so elongated that its resized copy
            would exceed :data:`~twins_np.image_files.MAX_IMAGE_PIXELS`.
    """
    Image = _pil()
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    elif image.mode != "RGB":
        image = image.convert("RGB")

    w, h = image.size
    short_target = math.floor(size / crop_pct)
    # the long side keeps the aspect ratio, rounded down (as torchvision's Resize(int))
    if w <= h:
        new_w, new_h = short_target, int(short_target * h / w)
    else:
        new_w, new_h = int(short_target * w / h), short_target
    if new_w * new_h > MAX_IMAGE_PIXELS:  # a 1 x 20000 strip would become 248 x 4960000 (4.9 GB) before the crop
        raise ValueError(
            f"the {w}x{h} image would be resized to {new_w}x{new_h} ({new_w * new_h:,} pixels) before the centre "
            f"crop, more than the {MAX_IMAGE_PIXELS:,} twins-np allocates for an image; crop it to a less elongated "
            "shape first"
        )
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))

    x01 = np.asarray(image, dtype=np.float32) / 255.0  # (size, size, 3) in [0, 1]
    x = (x01 - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the index order of the models' logits."""
    text = resources.files("twins_np").joinpath("data_files", "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:  # pragma: no cover - guards a damaged install
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


def softmax(logits: Any) -> np.ndarray:
    """Probabilities along the last axis, on the host in float64 (max subtracted first).

    ``logits`` may be NumPy or CuPy (copied to the host explicitly); the result is NumPy.
    """
    z = asnumpy(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk(logits: Any, k: int = 5, names: Any = None) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes of one image.

    Args:
        logits: (num_classes,) or (1, num_classes), NumPy or CuPy.
        k: how many rows (at most num_classes).
        names: class names by index; default the ImageNet names for 1000 classes,
            else ``"class i"``.

    Returns:
        ``[(index, name, probability), ...]`` sorted by decreasing probability
        (softmax over all classes; ties keep the lower index first).
    """
    z = asnumpy(logits)
    if z.ndim == 2 and z.shape[0] == 1:
        z = z[0]
    if z.ndim != 1:
        raise ValueError(f"expected logits of one image, (C,) or (1, C), got shape {z.shape}")
    C = z.shape[0]
    if not 1 <= k <= C:
        raise ValueError(f"k must be in [1, {C}], got {k}")
    if names is None:
        names = imagenet_classes() if C == 1000 else [f"class {i}" for i in range(C)]
    if len(names) != C:
        raise ValueError(f"{len(names)} class names for {C} logits")
    p = softmax(z)
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), str(names[i]), float(p[i])) for i in order]
