"""Reading image files: a size limit checked before decoding, every bit depth scaled right,
every failure one line naming the file.

Notation: W x H pixels (Pillow's ``size`` is ``(W, H)``), arrays are (H, W, C).

What :func:`read_image` and :func:`read_image_array` guarantee, for ``predict``, the folder
reader of segmentation data and :func:`twins_np.imagenet.load_image`:

- **A size limit before decoding.** The header's size is read first (Pillow's ``open``
  decodes nothing). An image of more than :data:`MAX_IMAGE_PIXELS` pixels (2**25, e.g.
  8192 x 4096) is refused before a byte of it is decoded, except a JPEG, which is decoded
  at 1/2, 1/4 or 1/8 of its size (Pillow's ``draft``, done by the JPEG decoder itself) when
  that brings it under the limit. Decoding therefore never allocates more than
  :data:`MAX_IMAGE_PIXELS` pixels (4 bytes each at most: 128 MiB). Pillow's own
  decompression-bomb check (an error above 2 x 89,478,485 pixels, raised while the header
  is read) is reported the same way.
- **Decode no more than needed.** Given the size the image will be resized to (``need``),
  a JPEG is decoded at the smallest of those scales that still covers it; other formats
  cannot be decoded at a reduced size and are decoded whole (within the limit).
- **Bit depths.** 8-bit images (grey, RGB, palette, RGBA, CMYK, 1-bit) become RGB as
  Pillow converts them (alpha dropped). 16-bit grey (Pillow's ``I;16`` modes, and 16-bit
  PNGs that older Pillow opens as ``I``) is scaled by 1/65535 to [0, 1]; OpenCV, which
  mmsegmentation reads images with, keeps the high byte (1/256 after a shift), which
  differs by less than 1/255. Float images (mode ``F``, e.g. 32-bit float TIFFs) are taken
  as intensities in [0, 1]: a NaN or infinite pixel, or a value outside [0, 1], is refused
  naming the file. 32-bit integer images of other formats have no known range and are
  refused.
- **One line per failure.** Whatever Pillow raises (``UnidentifiedImageError``, a
  truncated file's ``OSError``, ``SyntaxError`` from a broken PNG, ``DecompressionBombError``,
  ...) becomes an :class:`ImageFileError` (a ``ValueError``) naming the file; Pillow's
  warnings (corrupt EXIF data, ...) are re-issued as one :class:`ImageFileWarning` each,
  naming the file, never printed raw.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageFileError",
    "ImageFileWarning",
    "image_size",
    "read_image",
    "read_image_array",
    "read_label_map",
]

# the most pixels twins-np decodes from one file (8192 x 4096): 128 MiB at 4 bytes a pixel
MAX_IMAGE_PIXELS = 2**25

_JPEG_SCALES = (2, 4, 8)  # the reduced sizes libjpeg decodes to (draft)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_LABEL_MODES = ("L", "P", "I", *_SIXTEEN_BIT)

PathLike = str | os.PathLike


class ImageFileError(ValueError):
    """An image file that cannot be read, or is refused; the message names the file.

    Attributes:
        reason: for a file Pillow could not read, Pillow's own one-line reason (else None).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class ImageFileWarning(UserWarning):
    """A warning Pillow gave while reading an image file (corrupt metadata, ...), naming the file."""


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("reading images needs Pillow: pip install pillow") from e
    return Image


@contextlib.contextmanager
def _opened(path: PathLike, what: str) -> Iterator[Any]:
    """``PIL.Image.open(path)`` with every failure inside the block as one :class:`ImageFileError`.

    Pillow's warnings inside the block are collected and re-issued naming the file; its
    decompression-bomb warning is dropped (the caller's size limit, lower than Pillow's,
    decides).
    """
    Image = _pil()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as im:
                yield im
        except (ImageFileError, MemoryError):
            raise
        except Image.DecompressionBombError as err:  # raised by open() itself, from the header's size
            claimed = re.search(r"\((\d+) pixels\)", str(err))
            count = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels than Pillow allows"
            raise ImageFileError(
                f"{what} {path}: refused before decoding: its header claims {count}, more than the "
                f"{MAX_IMAGE_PIXELS:,} twins-np decodes"
            ) from None
        except Exception as err:  # Pillow's errors are many: OSError, SyntaxError, ValueError, struct.error, ...
            reason = " ".join(str(err).split()) or type(err).__name__
            raise ImageFileError(f"cannot read {what} {path}: {reason}", reason) from None
    said = {" ".join(str(w.message).split()) for w in caught if not issubclass(w.category, Image.DecompressionBombWarning)}
    for message in sorted(said):  # once each, however often Pillow repeated it
        warnings.warn(ImageFileWarning(f"{what} {path}: {message}"), stacklevel=4)


def image_size(path: PathLike, what: str = "image") -> tuple[int, int]:
    """``(W, H)`` from the file's header, nothing decoded.

    Raises:
        ImageFileError: when the file is not an image Pillow can open (naming it).
    """
    with _opened(path, what) as im:
        w, h = im.size
    return int(w), int(h)


def _too_large(path: PathLike, what: str, w: int, h: int) -> ImageFileError:
    return ImageFileError(
        f"{what} {path}: refused before decoding: its header claims {w}x{h} = {w * h:,} pixels, more than the "
        f"{MAX_IMAGE_PIXELS:,} twins-np decodes (MAX_IMAGE_PIXELS); make it smaller first"
    )


def _decode(im: Any, path: PathLike, what: str, need: tuple[int, int] | None) -> None:
    """Decode ``im`` in place, at a reduced size where the format allows it, within the limit.

    ``need`` = (W, H) the image will be resized to: a JPEG is decoded at the smallest scale
    still covering it. Without ``need``, a JPEG is reduced only as far as the limit requires.
    """
    w, h = im.size
    if im.format == "JPEG":
        if need is not None:
            im.draft(None, (max(1, int(need[0])), max(1, int(need[1]))))
        elif w * h > MAX_IMAGE_PIXELS:
            k = next((k for k in _JPEG_SCALES if math.ceil(w / k) * math.ceil(h / k) <= MAX_IMAGE_PIXELS), _JPEG_SCALES[-1])
            im.draft(None, (math.ceil(w / k), math.ceil(h / k)))
    dw, dh = im.size
    if dw * dh > MAX_IMAGE_PIXELS:
        raise _too_large(path, what, w, h)
    im.load()


def _unit_range(path: PathLike, what: str, a: np.ndarray) -> None:
    """Refuse NaN/Inf and values outside [0, 1] of a float image, naming the file."""
    finite = np.isfinite(a)
    if not finite.all():
        n_nan = int(np.isnan(a).sum())
        raise ImageFileError(
            f"{what} {path} holds {n_nan} NaN and {a.size - n_nan - int(finite.sum())} infinite pixel value(s) of "
            f"{a.size}; a pixel must be a number"
        )
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise ImageFileError(
            f"{what} {path} is a float image with values in [{lo:g}, {hi:g}]; twins-np reads float pixels as "
            "intensities in [0, 1]: scale it to [0, 1] (or save it with 8 or 16 bits per channel)"
        )


def _pixels(im: Any, path: PathLike, what: str) -> tuple[np.ndarray, float]:
    """The decoded pixels as (H, W, C) and the number that maps them to [0, 1] (value / scale).

    8-bit images come back as RGB uint8 (scale 255), 16-bit grey as (H, W, 1) uint16
    (scale 65535), float images as (H, W, 1) float32 (scale 1, checked to lie in [0, 1]).
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT or (mode == "I" and im.format == "PNG"):  # 16-bit grey; older Pillow opens it as I
        a = np.asarray(im)
        if a.dtype != np.uint16:
            if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
                raise ImageFileError(f"{what} {path}: 16-bit image with values outside [0, 65535]")
            a = a.astype(np.uint16)
        return a[:, :, None], 65535.0
    if mode == "I":
        raise ImageFileError(
            f"{what} {path} has 32-bit integer pixels, whose range twins-np cannot know; save it with 8 or 16 bits "
            "per channel"
        )
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        _unit_range(path, what, a)
        return a[:, :, None], 1.0
    if mode == "P" and "transparency" in im.info:  # through RGBA: the same colours, without Pillow's warning
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB")), 255.0


def read_image_array(
    path: PathLike, what: str = "image", need: tuple[int, int] | None = None
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Decode an image file within the limits of the module docstring.

    Args:
        path: the file.
        what: how messages name it (``"image"``, ``"IMAGE"``).
        need: (W, H) it will be resized to, if known: a JPEG is then decoded at a reduced
            size (1/2, 1/4, 1/8) still covering it.

    Returns:
        ``(pixels, scale, (W, H))``: pixels (H', W', C) with C = 3 (RGB) or 1 (16-bit or
        float grey, to be broadcast), ``pixels / scale`` in [0, 1]; (H', W') is the decoded
        size (smaller than the header's (W, H) for a reduced JPEG).

    Raises:
        ImageFileError: naming the file, for anything unreadable or refused.
    """
    with _opened(path, what) as im:
        size = (int(im.size[0]), int(im.size[1]))
        _decode(im, path, what, need)
        pixels, scale = _pixels(im, path, what)
    return pixels, scale, size


def read_image(path: PathLike, what: str = "image", need: tuple[int, int] | None = None) -> Any:
    """Decode an image file (limits of the module docstring) as an 8-bit RGB ``PIL.Image.Image``.

    16-bit and float images are scaled to 8 bits (value / 65535 or value in [0, 1], times
    255, rounded); ``need`` as in :func:`read_image_array`. An 8-bit image stays a Pillow
    image throughout (no NumPy copy).
    """
    Image = _pil()
    with _opened(path, what) as im:
        _decode(im, path, what, need)
        if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
            pixels, scale = _pixels(im, path, what)
            grey = np.rint(pixels[:, :, 0].astype(np.float64) * (255.0 / scale)).astype(np.uint8)
            return Image.fromarray(grey, mode="L").convert("RGB")
        if im.mode == "P" and "transparency" in im.info:  # through RGBA: the same colours, without Pillow's warning
            return im.convert("RGBA").convert("RGB")
        return im.convert("RGB")


def read_label_map(path: PathLike, what: str = "label map") -> np.ndarray:
    """Decode a label map: (H, W) class indices of an 8-bit grey or palette PNG (its indices)
    or a 16-bit grey one, in the integer dtype they are stored in (uint8, uint16, int32).

    Raises:
        ImageFileError: naming the file, for anything unreadable, refused (size limit), or
            not a single-channel map of indices (RGB, float).
    """
    with _opened(path, what) as im:
        if im.mode not in _LABEL_MODES:
            raise ImageFileError(
                f"{what} {path}: mode {im.mode!r} is not a single-channel map of class indices "
                "(save label maps as 8-bit grey or palette PNGs)"
            )
        _decode(im, path, what, None)
        labels = np.asarray(im)  # palette PNGs give their indices
    return labels
