"""Segmentation data: per-pixel labels with an ignore index.

Notation: N images, C channels, S x S pixels (S = ``image_size``), K classes; labels are
(N, S, S) int64 holding a class in ``[0, K)`` or :data:`IGNORE_INDEX` (255), the value
mmsegmentation and ``torch.nn.functional.cross_entropy(ignore_index=255)`` skip.

Every set comes back as a :class:`~twins_np.data.Dataset` whose ``labels`` are per pixel
(``dataset.is_segmentation`` is True, ``dataset.ignore_index == 255``), so the loader and
the rest of twins-np treat it like the classification sets.

- :func:`load_shapes`: squares, discs and triangles of random colours on textured, noisy
  backgrounds. Colour says nothing about the class: only the shape does.
- :func:`load_long_range_dense`: one object whose class is decided by a cue far away.
- :func:`load_segmentation_folder`: the user's own data, ``images/NAME.jpg|png`` with
  ``annotations/NAME.png`` label maps (the layout ADE20K and VOC ship).

The synthetic sets are deterministic: train and test are independent draws from the seeds
``[seed, 0]`` and ``[seed, 1]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..image_files import image_size as image_size_of
from ..image_files import read_image_array, read_label_map
from .augment import _source_coords
from .loader import Dataset

__all__ = [
    "IGNORE_INDEX",
    "SHAPE_CLASSES",
    "LONG_RANGE_DENSE_CLASSES",
    "CUE_SIGNS",
    "CUE_WIDTH",
    "SegmentationArrays",
    "make_shapes",
    "load_shapes",
    "make_long_range_dense",
    "load_long_range_dense",
    "load_segmentation_folder",
    "ADE20K_CLASSES",
    "MMSEG_DATASETS",
    "SegmentationImages",
    "apply_label_map",
    "load_segmentation_images",
    "reduce_zero",
    "rescale_size",
    "resize_image",
]

IGNORE_INDEX = 255
SHAPE_CLASSES = ["background", "square", "disc", "triangle"]
LONG_RANGE_DENSE_CLASSES = ["background", "object, bright cue", "object, dark cue"]
_SPLIT_STREAM = {"train": 0, "test": 1}


class SegmentationArrays(NamedTuple):
    images: np.ndarray  # (N, C, S, S) float32
    labels: np.ndarray  # (N, S, S) int64, IGNORE_INDEX where a pixel is not scored


def _check_common(n: object, image_size: object, minimum: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"'n' must be a positive integer, got {n!r}")
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < minimum:
        raise ValueError(f"'image_size' must be an integer >= {minimum}, got {image_size!r}")


def _split_seed(split: str, seed: int) -> list[int]:
    if split not in _SPLIT_STREAM:
        raise ValueError(f"'split' must be 'train' or 'test', got {split!r}")
    return [seed, _SPLIT_STREAM[split]]


def _shape_masks(kind: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray, s: int) -> np.ndarray:
    """(N, S, S) bool: pixel centres inside one shape per image.

    kind 0 square (half side r), 1 disc (radius r), 2 triangle (apex r above the centre,
    base r below it, base width 2r). Pixel centres sit at integer + 0.5.
    """
    centres = np.arange(s) + 0.5
    dy = centres[None, :, None] - cy[:, None, None]
    dx = centres[None, None, :] - cx[:, None, None]
    r3 = r[:, None, None]
    square = (np.abs(dy) <= r3) & (np.abs(dx) <= r3)
    disc = dy * dy + dx * dx <= r3 * r3
    triangle = (np.abs(dy) <= r3) & (np.abs(dx) <= (dy + r3) / 2.0)
    k3 = kind[:, None, None]
    return np.where(k3 == 0, square, np.where(k3 == 1, disc, triangle))


def _texture(rng: np.random.Generator, n: int, channels: int, s: int, amplitude: float) -> np.ndarray:
    """(N, C, S, S) float32: two random oriented gratings per image and channel."""
    yy, xx = np.meshgrid(np.arange(s, dtype=np.float64), np.arange(s, dtype=np.float64), indexing="ij")
    out = np.zeros((n, channels, s, s), dtype=np.float64)
    for _ in range(2):
        theta = rng.uniform(0.0, np.pi, size=(n, channels, 1, 1))
        freq = rng.uniform(0.05, 0.4, size=(n, channels, 1, 1))  # radians per pixel
        phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, channels, 1, 1))
        out += np.sin(freq * (np.cos(theta) * yy + np.sin(theta) * xx) + phase)
    return (amplitude / 2.0 * out).astype(np.float32)


def _ignore_boundaries(labels: np.ndarray, width: int) -> np.ndarray:
    """Set to IGNORE_INDEX every pixel within ``width`` pixels (Chebyshev) of a label change."""
    if width == 0:
        return labels
    edge = np.zeros(labels.shape, dtype=bool)
    vert = labels[:, 1:, :] != labels[:, :-1, :]
    horiz = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:, :] |= vert
    edge[:, :-1, :] |= vert
    edge[:, :, 1:] |= horiz
    edge[:, :, :-1] |= horiz
    grown = edge.copy()
    for _ in range(width - 1):  # dilate by one pixel per step (3 x 3 neighbourhood)
        g = grown.copy()
        g[:, 1:, :] |= grown[:, :-1, :]
        g[:, :-1, :] |= grown[:, 1:, :]
        g[:, :, 1:] |= grown[:, :, :-1]
        g[:, :, :-1] |= grown[:, :, 1:]
        grown = g
    return np.where(grown, IGNORE_INDEX, labels)


def make_shapes(
    n: int,
    image_size: int = 64,
    seed: int | Sequence[int] = 0,
    max_objects: int = 3,
    noise: float = 0.1,
    boundary: int = 0,
) -> SegmentationArrays:
    """Draw ``n`` images of the shapes set, deterministically from ``seed``.

    Each image has 3 channels: a texture of two random gratings per channel (amplitude
    0.5) plus Gaussian noise, and 1 to ``max_objects`` filled shapes. A shape's class
    (square, disc or triangle) is a fair draw; its colour is a random RGB vector in
    [-1, 1]^3 with a faint texture of its own, so a pixel's colour alone does not give its
    class: the model has to see the shape around it. Sizes: half side / radius uniform in
    [S/12, S/6]; later shapes cover earlier ones, and the labels follow what is visible.

    Args:
        n: number of images.
        image_size: S, at least 16.
        seed: seed of every draw (an int or a list of ints).
        max_objects: most shapes per image (at least 1).
        noise: standard deviation of the Gaussian pixel noise.
        boundary: width in pixels of an ignored band (label 255) around every label
            change, as VOC marks object outlines; 0 scores every pixel.

    Returns:
        :class:`SegmentationArrays`: images (N, 3, S, S) float32, labels (N, S, S) int64 in
        ``[0, 4)`` (``SHAPE_CLASSES``) or 255.
    """
    _check_common(n, image_size, 16)
    if not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
        raise ValueError(f"'max_objects' must be a positive integer, got {max_objects!r}")
    if noise < 0:
        raise ValueError(f"'noise' must be >= 0, got {noise!r}")
    if not isinstance(boundary, (int, np.integer)) or boundary < 0:
        raise ValueError(f"'boundary' must be a non-negative integer, got {boundary!r}")
    rng = np.random.default_rng(seed)
    s = int(image_size)
    images = _texture(rng, n, 3, s, 0.5) + (noise * rng.standard_normal((n, 3, s, s))).astype(np.float32)
    labels = np.zeros((n, s, s), dtype=np.int64)
    count = rng.integers(1, max_objects + 1, size=n)
    for j in range(max_objects):
        present = count > j
        kind = rng.integers(0, 3, size=n)
        r = rng.uniform(s / 12.0, s / 6.0, size=n)
        cy = rng.uniform(r, s - r)
        cx = rng.uniform(r, s - r)
        colour = rng.uniform(-1.0, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
        mask = _shape_masks(kind, cy, cx, r, s) & present[:, None, None]
        fill = colour + _texture(rng, n, 3, s, 0.15)
        images = np.where(mask[:, None], fill, images)
        labels = np.where(mask, kind[:, None, None] + 1, labels)
    return SegmentationArrays(images.astype(np.float32), _ignore_boundaries(labels, int(boundary)))


def load_shapes(
    split: str = "train", image_size: int | None = None, seed: int = 0, n: int | None = None, **options: object
) -> Dataset:
    """The shapes set as a :class:`Dataset` (default 2,048 train / 512 test images of 64 x 64).

    Args:
        split: ``"train"`` or ``"test"``.
        image_size: S (default 64).
        seed: base seed; the splits are independent draws.
        n: number of images.
        **options: ``max_objects``, ``noise``, ``boundary`` (see :func:`make_shapes`).
    """
    return _synthetic(make_shapes, SHAPE_CLASSES, "shapes", split, image_size, seed, n, options)


def _synthetic(
    make: Callable[..., SegmentationArrays],
    classes: list[str],
    name: str,
    split: str,
    image_size: int | None,
    seed: int,
    n: int | None,
    options: dict[str, object],
) -> Dataset:
    """A synthetic set's split: ``make(n, S, [seed, split stream], **options)`` as a Dataset."""
    if n is None:
        n = 2048 if split == "train" else 512
    arrays = make(n, 64 if image_size is None else image_size, _split_seed(split, seed), **options)
    return Dataset(arrays.images, arrays.labels, list(classes), name, ignore_index=IGNORE_INDEX)


# The cue of the dense long-range set: a bar CUE_WIDTH pixels wide (inside the 8-pixel edge
# band) of amplitude +1 (kind 0, bright) or -1 (kind 1, dark). The kind is the bar's sign, so
# any average over the bar keeps it: a sub-sampled key of GSA can carry it.
CUE_WIDTH = 6
CUE_SIGNS = (1.0, -1.0)


def make_long_range_dense(
    n: int,
    image_size: int = 64,
    seed: int | Sequence[int] = 0,
    gap: int = 28,
    noise: float = 0.3,
    cue_length: int = 32,
) -> SegmentationArrays:
    """Draw ``n`` images of the dense long-range set, deterministically from ``seed``.

    **The task.** Each 1-channel image is Gaussian noise (std ``noise``) with two things
    of amplitude 1: a **cue**, a contrast bar ``CUE_WIDTH`` = 6 pixels wide and
    ``cue_length`` pixels long, bright (+1) or dark (-1), lying along one edge inside the
    8-pixel band of that edge (which edge of the four, and where in the band, are fair
    draws), and one **object**, a bright (+1) filled square or disc (shape and size, 4 to 8
    pixels half side, drawn independently of everything else) on the opposite side. Every
    object pixel is labelled with the cue: class 1 for a bright cue, class 2 for a dark
    one (``LONG_RANGE_DENSE_CLASSES``); the rest is background (class 0), except the cue's
    pixels, which are all ignored (255): the cue is a hint, not a target. The cue kind is
    exactly balanced over the set (a random half of the images get a dark cue) and
    independent of the object. The kind is the bar's sign, so it survives averaging over
    the bar: a coarse summary of the band (a sub-sampled GSA key) carries it, which makes
    the cue easy to read for a model that sees it at all.

    **The distance.** Along the axis that separates them, every object pixel lies at least
    ``gap`` pixels beyond the cue band's last pixel, so every object pixel is more than
    ``gap`` pixels (in that coordinate, hence also in Euclidean and Chebyshev distance)
    from every cue pixel. The default ``gap = 28`` is one stage-1 LSA window of Twins-SVT
    (7 tokens of 4 pixels).

    **What a window-limited model can and cannot infer.** Call a model's *reach* the
    largest distance in pixels, along an axis, between an output pixel and an input pixel
    that can change it (its receptive field's half-width). If the reach is at most
    ``gap``, the model's output at an object pixel is a function of pixels that are
    independent of the cue kind. It can therefore find the object (object against
    background is plain to see, amplitude 1 against noise 0.3) and segment it exactly, but
    it cannot tell class 1 from class 2: on an image and its twin with the cue's sign
    flipped (same place, same noise) it predicts the same classes at the object pixels,
    while the labels differ, so it is right on at most half of the pair's object pixels
    and its expected accuracy on object pixels is at most 50 %, whatever it learned. A
    model whose reach exceeds ``gap`` (global sub-sampled attention, a stage whose window
    covers the whole map) can read the cue and be right everywhere.

    **The PEG and the head count towards the reach.** Notebook 09 showed that the PEG's
    3 x 3 convolution between two LSA blocks already crosses window borders: each PEG
    adds one token (the stage's stride in pixels) to the reach, and so does every 3 x 3
    convolution of a segmentation head at its level's stride; a later stage whose window
    covers the whole feature map makes the reach global. This set does not assume any
    of them away: it guarantees the ``gap`` and nothing else. Whether a given LSA-only
    model stays within it is a property of the model, to be measured (e.g. its effective
    receptive field with twins-np's own backward) against ``gap``; raise ``gap`` (with
    ``image_size``) for a model with a longer reach.

    Args:
        n: number of images (the cue kinds are exactly balanced: ``n // 2`` dark cues).
        image_size: S; needs ``8 + gap + 16 <= S`` (band, gap, the largest object).
        seed: seed of every draw.
        gap: minimum distance in pixels, along the separating axis, between the cue band
            and every object pixel.
        noise: background noise standard deviation.
        cue_length: length of the cue bar along its edge, ``CUE_WIDTH`` to S pixels.

    Returns:
        :class:`SegmentationArrays`: images (N, 1, S, S) float32, labels (N, S, S) int64 in
        ``{0, 1, 2, 255}``.
    """
    band, largest = 8, 16
    _check_common(n, image_size, 16)
    if not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"'gap' must be a non-negative integer, got {gap!r}")
    if band + gap + largest > image_size:
        raise ValueError(
            f"'image_size'={image_size} is too small for gap={gap}: the cue band ({band} px), the gap and "
            f"the largest object ({largest} px) need {band + gap + largest} pixels per side"
        )
    if noise < 0:
        raise ValueError(f"'noise' must be >= 0, got {noise!r}")
    if not isinstance(cue_length, (int, np.integer)) or isinstance(cue_length, bool) or not CUE_WIDTH <= cue_length <= image_size:
        raise ValueError(f"'cue_length' must be an integer in [{CUE_WIDTH}, image_size={image_size}], got {cue_length!r}")
    rng = np.random.default_rng(seed)
    s = int(image_size)
    cue = rng.permutation(np.arange(n) % 2)  # exactly balanced
    edge = rng.integers(0, 4, size=n)  # cue along the top, bottom, left or right edge
    shape = rng.integers(0, 2, size=n)  # object: 0 square, 1 disc
    half = rng.integers(4, largest // 2 + 1, size=n)  # half side / radius in pixels

    # Work in a frame where the cue band is the top rows, then rotate each image.
    cue_row = rng.integers(0, band - CUE_WIDTH + 1, size=n)
    cue_col = rng.integers(0, s - cue_length + 1, size=n)
    first_row = band + gap  # every object pixel row >= this
    cy = first_row + half + rng.uniform(0.0, 1.0, size=n) * (s - first_row - 2 * half)
    cx = half + rng.uniform(0.0, 1.0, size=n) * (s - 2 * half)
    # An object pixel's centre is within half of (cy, cx); its row is >= floor(cy - half) >= first_row.
    obj = _shape_masks(np.where(shape == 0, 0, 1), cy, cx, half.astype(np.float64), s)
    marks = np.zeros((n, s, s), dtype=np.float32)
    in_cue = np.zeros((n, s, s), dtype=bool)
    rows = (cue_row[:, None] + np.arange(CUE_WIDTH))[:, :, None]
    cols = (cue_col[:, None] + np.arange(cue_length))[:, None, :]
    marks[np.arange(n)[:, None, None], rows, cols] = np.asarray(CUE_SIGNS, dtype=np.float32)[cue][:, None, None]
    in_cue[np.arange(n)[:, None, None], rows, cols] = True
    images = noise * rng.standard_normal((n, s, s)) + marks + obj
    labels = np.where(obj, cue[:, None, None] + 1, 0)
    labels = np.where(in_cue, IGNORE_INDEX, labels)
    # edge 0: top (as built), 1: bottom, 2: left, 3: right
    images = np.stack([_orient(im, e) for im, e in zip(images, edge)]) if n else images
    labels = np.stack([_orient(lb, e) for lb, e in zip(labels, edge)]) if n else labels
    return SegmentationArrays(images[:, None].astype(np.float32), labels.astype(np.int64))


def _orient(a: np.ndarray, edge: int) -> np.ndarray:
    """Move the top band of a (S, S) array to edge 0 top, 1 bottom, 2 left, 3 right."""
    if edge == 1:
        return a[::-1]
    if edge == 2:
        return a.T
    if edge == 3:
        return a.T[:, ::-1]
    return a


def load_long_range_dense(
    split: str = "train", image_size: int | None = None, seed: int = 0, n: int | None = None, **options: object
) -> Dataset:
    """The dense long-range set as a :class:`Dataset` (default 2,048 train / 512 test, 64 x 64).

    Args:
        split: ``"train"`` or ``"test"``.
        image_size: S (default 64).
        seed: base seed; the splits are independent draws.
        n: number of images.
        **options: ``gap``, ``noise``, ``cue_length`` (see :func:`make_long_range_dense`).
    """
    return _synthetic(make_long_range_dense, LONG_RANGE_DENSE_CLASSES, "long-range-dense", split, image_size, seed, n, options)


# ImageNet statistics, as mmsegmentation normalises ADE20K and VOC.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_SPLIT_FOLDERS = {"train": ("train", "training"), "test": ("test", "val", "validation")}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def _split_folders(root: Path, split: str) -> tuple[Path, Path]:
    """(images, annotations) folders of one split: ``images/<split>`` if split subfolders exist."""
    images, annotations = root / "images", root / "annotations"
    for folder in (images, annotations):
        if not folder.is_dir():
            raise ValueError(
                f"segmentation folder {root}: no '{folder.name}/' folder (expected images/NAME.jpg|png "
                "and annotations/NAME.png, optionally inside train/ and val/ subfolders)"
            )
    for sub in _SPLIT_FOLDERS[split]:  # ADE20K: images/training, images/validation
        if (images / sub).is_dir():
            if not (annotations / sub).is_dir():
                raise ValueError(f"segmentation folder {root}: {images / sub} exists but {annotations / sub} does not")
            return images / sub, annotations / sub
    if any((images / sub).is_dir() for subs in _SPLIT_FOLDERS.values() for sub in subs):
        raise ValueError(f"segmentation folder {root}: no '{split}' split folder ({' or '.join(_SPLIT_FOLDERS[split])})")
    return images, annotations


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) paths of one split, sorted by name."""
    images, annotations = _split_folders(root, split)
    pairs = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
        ann = annotations / (img.stem + ".png")
        if not ann.is_file():
            raise ValueError(f"segmentation folder {root} ({split} split): image {img.name} has no label map {ann}")
        pairs.append((img, ann))
    if not pairs:
        raise ValueError(
            f"segmentation folder {root} ({split} split): no .jpg or .png images (nor .jpeg, .tif, .tiff, .bmp) in {images}"
        )
    return pairs


def _reduce_zero(label: np.ndarray) -> np.ndarray:
    """ADE20K's convention: 0 ("other") becomes IGNORE_INDEX, every other label k becomes k - 1."""
    label = label.astype(np.int64)
    return np.where(label == 0, IGNORE_INDEX, np.where(label == IGNORE_INDEX, IGNORE_INDEX, label - 1))


_BLOCK = 1 << 20  # pixels per block when counting the labels of a large map


def _largest_label(label: np.ndarray, reduce_zero_label: bool) -> int:
    """The largest class index of a label map (ignored pixels left out), -1 if it has none."""
    if label.dtype in (np.uint8, np.uint16) and label.size:  # counts per value, a block at a time: no copy of a large map
        flat = label.reshape(-1)
        counts = np.zeros(int(flat.max()) + 1, np.int64)
        for i in range(0, flat.size, _BLOCK):  # bincount converts to int64: 8 bytes a pixel, so in blocks
            counts += np.bincount(flat[i : i + _BLOCK], minlength=counts.size)
        values = np.flatnonzero(counts)
    else:
        values = np.unique(label)
    if reduce_zero_label:
        values = _reduce_zero(values)
    values = values[values != IGNORE_INDEX]
    return int(values.max()) if values.size else -1


def _class_names(root: Path) -> list[str] | None:
    """The names in ``root/classes.txt`` (UTF-8, one a line), or None without the file."""
    path = root / "classes.txt"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"segmentation folder {root}: {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at position "
            f"{err.start} cannot be decoded); save it as UTF-8"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _other_splits_largest(root: Path, split: str, reduce_zero_label: bool) -> int:
    """The largest class index in the label maps of the folder's other split (-1 if none),
    so that both splits count the same classes."""
    other = "test" if split == "train" else "train"
    try:
        mine, theirs = _split_folders(root, split), _split_folders(root, other)
    except ValueError:  # the other split does not exist: nothing to add
        return -1
    if theirs == mine:  # no split subfolders: one folder serves both splits
        return -1
    largest = -1
    for _, ann in _pairs(root, other):
        label = read_label_map(ann, f"label map of the {other} split")
        largest = max(largest, _largest_label(label, reduce_zero_label))
    return largest


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(nh, nw): the shorter side becomes ``size``, the other keeps the aspect ratio (at least ``size``)."""
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale))


def _fit(pixels: np.ndarray, scale: float, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shorter side to ``size`` (bilinear for the image, nearest for labels), then a centre crop.

    Only the crop is computed: each output pixel reads its (at most four) source pixels
    straight from the decoded array, so memory is that of the crop, never of the resized
    image (a 1 x 20000 strip would be 64 x 1280000 resized). The result equals resizing the
    whole image with :func:`twins_np.data.augment.resize` and cropping, bit for bit.

    Args:
        pixels: (h', w', C) decoded image (C = 3, or 1 to be broadcast to RGB), any dtype;
            (h', w') may be smaller than the label map's (a JPEG decoded at a reduced size).
        scale: ``pixels / scale`` lies in [0, 1].
        label: (h, w) class indices, the map's full size.
        size: S.

    Returns:
        image (3, S, S) float32 in [0, 1], labels (S, S) int64.
    """
    h, w = label.shape
    nh, nw = _resized_size(h, w, size)
    top, left = (nh - size) // 2, (nw - size) // 2
    # nearest: output pixel i copies input pixel floor(i * n_in / n_out) (labels stay exact class indices)
    rows = np.minimum(np.arange(top, top + size) * h // nh, h - 1)
    cols = np.minimum(np.arange(left, left + size) * w // nw, w - 1)
    lab = label[np.ix_(rows, cols)].astype(np.int64)
    # bilinear, rows then columns, as augment.resize computes it (align_corners=False)
    r_lo, r_hi, r_w = _source_coords(pixels.shape[0], nh, top, size)
    c_lo, c_hi, c_w = _source_coords(pixels.shape[1], nw, left, size)

    def unit(rows_: np.ndarray, cols_: np.ndarray) -> np.ndarray:  # (C, S, S) float32 in [0, 1]
        return pixels[np.ix_(rows_, cols_)].transpose(2, 0, 1).astype(np.float32) / scale

    wr = r_w[:, None]
    lo = unit(r_lo, c_lo) * (1.0 - wr) + unit(r_hi, c_lo) * wr
    hi = unit(r_lo, c_hi) * (1.0 - wr) + unit(r_hi, c_hi) * wr
    img = (lo * (1.0 - c_w) + hi * c_w).astype(np.float32, copy=False)
    return np.broadcast_to(img, (3, size, size)) if img.shape[0] == 1 else img, lab


def load_segmentation_folder(
    root: str | os.PathLike,
    split: str = "train",
    image_size: int | None = None,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    reduce_zero_label: bool = False,
) -> Dataset:
    """Read a segmentation set laid out as ADE20K and VOC ship it.

    Layout: ``root/images/NAME.jpg|png`` (or ``.tif``, ``.bmp``) and ``root/annotations/NAME.png``,
    where the label map holds one class index per pixel (8-bit grey or palette PNG, or 16-bit
    grey; 255 = ignored). With split subfolders (``images/train`` or ``images/training``,
    ``images/val`` or ``images/validation``, the same under ``annotations/``), ``split``
    picks one; without them the folder is one split, served for either.

    **One class count for every split.** K comes from ``classes``, else from
    ``root/classes.txt`` (UTF-8, one name a line), else from ``num_classes``, else from the
    largest label found in the label maps of *both* splits, so a validation split that
    lacks the rarest class (or holds one the training split lacks) still has the model's
    K classes. A label >= K that is not 255 is an error naming the label map and the split.

    Each image is resized so its shorter side is ``image_size`` (bilinear), the label map
    likewise with nearest neighbours (so every label stays an exact class index, never a
    blend of two), then both are centre-cropped to ``image_size`` x ``image_size``; only
    the crop is computed. Images are read by :mod:`twins_np.image_files`: more than
    :data:`~twins_np.image_files.MAX_IMAGE_PIXELS` pixels is refused before decoding (a JPEG
    is decoded at 1/2, 1/4 or 1/8 of its size when that still covers the resized size), 16-bit
    and float images are scaled to [0, 1], NaN/Inf pixels are refused. Images are normalised
    with the ImageNet mean and std (kept in ``dataset.mean``/``std``); ``dataset.files``
    names each image's file.

    Args:
        root: the folder.
        split: ``"train"`` or ``"test"``.
        image_size: S (default 64).
        num_classes: K, when neither ``classes`` nor ``classes.txt`` give the names.
        classes: class names (K of them).
        reduce_zero_label: ADE20K's convention: label 0 ("other") becomes 255 and every
            other label k becomes k - 1.

    Returns:
        A :class:`Dataset`: images (N, 3, S, S) float32, labels (N, S, S) int64.

    Raises:
        ValueError: naming the file and the split, and the problem (missing folder or label
            map, an image that cannot be read or is refused, sizes that differ, a label >= K
            that is not 255, a classes.txt that is not UTF-8).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"segmentation folder {root} does not exist or is not a folder")
    if split not in _SPLIT_FOLDERS:
        raise ValueError(f"'split' must be 'train' or 'test', got {split!r}")
    size = 64 if image_size is None else image_size
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"'image_size' must be a positive integer, got {image_size!r}")
    size = int(size)
    where = f"segmentation folder {root} ({split} split)"
    names = list(classes) if classes is not None else _class_names(root)
    if classes is not None:
        origin = "classes"
    elif names is not None:
        origin = str(root / "classes.txt")
    else:
        origin = "num_classes" if num_classes is not None else "the largest label of both splits"
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise ValueError(f"{origin} names {len(names)} classes but num_classes is {num_classes}")
    images, labels, pairs, largest = [], [], _pairs(root, split), -1
    for img_path, ann_path in pairs:
        try:  # both headers first: nothing is decoded for a pair that cannot fit
            (w, h), (lw, lh) = image_size_of(img_path), image_size_of(ann_path, "label map")
            if (lw, lh) != (w, h):
                raise ValueError(f"image {img_path} is {w}x{h} but its label map {ann_path} is {lw}x{lh}")
            nh, nw = _resized_size(h, w, size)
            pixels, scale, _ = read_image_array(img_path, need=(nw, nh))
            label = read_label_map(ann_path)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        largest = max(largest, _largest_label(label, reduce_zero_label))
        img, lab = _fit(pixels, scale, label, size)
        images.append(img)
        labels.append(_reduce_zero(lab) if reduce_zero_label else lab)
    if names is not None:
        num_classes = len(names)
    elif num_classes is None:  # the union of both splits: a class missing from one split still counts
        num_classes = max(largest, _other_splits_largest(root, split, reduce_zero_label)) + 1 or 1
    for (_, ann_path), lab in zip(pairs, labels):
        bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= num_classes))
        if bad.any():
            raise ValueError(
                f"{where}: label map {ann_path} holds {int(lab[bad][0])}, outside [0, {num_classes}) and not the ignore "
                f"index {IGNORE_INDEX} ({origin} gives {num_classes} classes)"
            )
    names = names if names is not None else [f"class {k}" for k in range(num_classes)]
    mean, std = np.asarray(_MEAN, dtype=np.float32), np.asarray(_STD, dtype=np.float32)
    stacked = (np.stack(images) - mean[:, None, None]) / std[:, None, None]
    return Dataset(
        stacked.astype(np.float32),
        np.stack(labels).astype(np.int64),
        names,
        f"folder:{root}",
        _MEAN,
        _STD,
        ignore_index=IGNORE_INDEX,
        files=[str(img) for img, _ in pairs],
    )


# --- mmsegmentation's evaluation: each image at its own size ------------------------------------
#
# What follows is used by `twins-np evaluate` for the mmsegmentation configurations
# (*_ade20k segmenters); the square-crop reader above is for training. mmsegmentation tests
# an ADE20K image whole: resized with its aspect ratio kept to fit (2048, 512), normalised,
# segmented, and its logits resized back to the label map's own size, which is never resized.


def _ade20k_classes() -> tuple[str, ...]:
    from importlib import resources

    text = resources.files("twins_np").joinpath("data_files", "ade20k_classes.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# mmsegmentation's ADE20KDataset: 150 classes (label 0, "other", is ignored: reduce_zero_label),
# test images rescaled to fit (2048, 512), pixel mean and std of its data preprocessor (RGB, 0-255)
ADE20K_CLASSES: tuple[str, ...] = _ade20k_classes()
MMSEG_DATASETS: dict[str, dict[str, Any]] = {
    "ade20k": dict(classes=ADE20K_CLASSES, reduce_zero_label=True, scale=(2048, 512)),
}
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)


def reduce_zero(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """mmsegmentation's ``reduce_zero_label``: 0 becomes ``ignore_index``, every other k becomes k - 1, the ignore index stays."""
    label = np.asarray(label, dtype=np.int64)
    return np.where((label == 0) | (label == ignore_index), ignore_index, label - 1)


def apply_label_map(label: np.ndarray, label_map: dict[int, int] | None) -> np.ndarray:
    """mmsegmentation's ``label_map``: every pixel labelled ``old`` becomes ``new``, all from the original labels.

    The replacements read a copy, so ``{1: 2, 2: 3}`` sends 1 to 2 and 2 to 3 (not 1 to 3).
    mmsegmentation 1.x applies it after ``reduce_zero_label``, and so does
    :class:`SegmentationImages`.
    """
    label = np.asarray(label, dtype=np.int64)
    if not label_map:
        return label
    out = label.copy()
    for old, new in label_map.items():
        out[label == int(old)] = int(new)
    return out


def rescale_size(height: int, width: int, scale: tuple[int, int] = (2048, 512)) -> tuple[int, int]:
    """The (h, w) mmcv's ``imrescale`` gives an image with its aspect ratio kept.

    The factor is min(long / max(h, w), short / min(h, w)) for scale = (long, short) in
    either order, and each side is rounded half up: int(side * factor + 0.5). ADE20K's
    (2048, 512) brings the shorter side to 512 unless the longer would exceed 2048.
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an 8-bit image (H, W, 3), rounded back to 8 bits, as OpenCV's ``INTER_LINEAR``.

    The sampling is OpenCV's (and torch's ``align_corners=False``): pixel centres at +0.5,
    edges clamped, no antialiasing. OpenCV computes in 11-bit fixed point; this computes in
    float64 and rounds half up, so a value can differ from OpenCV's by one grey level where
    its fixed-point rounding goes the other way.
    """
    from ..functional import bilinear_resize_forward

    if tuple(image.shape[:2]) == tuple(size):
        return image.astype(np.uint8)
    out, _ = bilinear_resize_forward(image.astype(np.float64)[None], size)
    return np.clip(np.floor(out[0] + 0.5), 0, 255).astype(np.uint8)


class SegmentationImages:
    """A segmentation split read one image at a time at its own size: mmsegmentation's test pipeline.

    ``read(i)`` returns the image rescaled to fit ``scale`` (:func:`rescale_size`,
    :func:`resize_image`) and normalised with ``mean`` and ``std`` (0-255 RGB values), as
    (3, h, w) float32, and the label map at the image's original size (H, W) int64 with
    ``reduce_zero_label`` then ``label_map`` applied. Labels are not checked against the
    classes: a label >= ``num_classes`` that is not the ignore index is scored as
    mmsegmentation scores it (see :func:`twins_np.training.intersect_and_union`).

    Attributes:
        pairs: (image path, label path) per image, sorted by name.
        classes: the class names (K of them).
        name: ``folder:PATH``.
    """

    is_segmentation = True
    channels = 3

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        name: str,
        reduce_zero_label: bool = False,
        label_map: dict[int, int] | None = None,
        scale: tuple[int, int] = (2048, 512),
        mean: Sequence[float] = MMSEG_MEAN,
        std: Sequence[float] = MMSEG_STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.pairs = list(pairs)
        self.classes = list(classes)
        self.name = name
        self.reduce_zero_label, self.label_map = bool(reduce_zero_label), dict(label_map or {})
        self.scale = (int(scale[0]), int(scale[1]))
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.ignore_index = int(ignore_index)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> SegmentationImages:
        out = SegmentationImages([], self.classes, self.name, self.reduce_zero_label, self.label_map, self.scale,
                                 self.mean, self.std, self.ignore_index)  # fmt: skip
        out.pairs = [self.pairs[int(i)] for i in indices]
        return out

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image i as (3, h, w) float32 (rescaled, normalised) and its label map (H, W) int64 at the original size."""
        img_path, ann_path = self.pairs[i]
        pixels, scale, _ = read_image_array(img_path)  # errors name the file, sizes are checked before decoding
        if scale == 255.0 and pixels.shape[-1] == 3:
            image = pixels  # an 8-bit RGB file: its values, exactly
        else:  # 16-bit or float grey: to the 8-bit scale, as mmsegmentation's loader does, on 3 channels
            grey = np.floor(pixels[:, :, 0].astype(np.float64) * (255.0 / scale) + 0.5).astype(np.uint8)
            image = np.repeat(grey[:, :, None], 3, axis=2)
        label = read_label_map(ann_path).astype(np.int64)
        if image.shape[:2] != label.shape:
            h, w = label.shape
            raise ValueError(f"{img_path.name}: image is {image.shape[1]}x{image.shape[0]} but its label map is {w}x{h}")
        if self.reduce_zero_label:
            label = reduce_zero(label, self.ignore_index)
        label = apply_label_map(label, self.label_map)
        image = resize_image(image, rescale_size(image.shape[0], image.shape[1], self.scale))
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        x = (image.astype(np.float32) - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1)), label.astype(np.int64)


def load_segmentation_images(
    root: str | os.PathLike,
    split: str = "test",
    classes: Sequence[str] | None = None,
    reduce_zero_label: bool = False,
    label_map: dict[int, int] | None = None,
    scale: tuple[int, int] = (2048, 512),
) -> SegmentationImages:
    """A folder laid out as :func:`load_segmentation_folder` reads it (ADE20K's
    ``ADEChallengeData2016``: ``images/validation``, ``annotations/validation``), for
    mmsegmentation's evaluation: every image at its own size (see :class:`SegmentationImages`).

    Args:
        root: the folder.
        split: ``"train"`` or ``"test"`` (ADE20K's ``training`` / ``validation``).
        classes: the class names; default ``root/classes.txt`` (one a line). The class count
            is theirs: a config's dataset (ADE20K's 150) fixes it, not the labels found.
        reduce_zero_label: ADE20K's convention (label 0 ignored, k -> k - 1).
        label_map: ``{old: new}`` applied after ``reduce_zero_label`` (:func:`apply_label_map`).
        scale: the (long, short) edges images are rescaled to fit (:func:`rescale_size`).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"segmentation folder {root} does not exist or is not a folder")
    if split not in _SPLIT_FOLDERS:
        raise ValueError(f"'split' must be 'train' or 'test', got {split!r}")
    if classes is None:
        classes = _class_names(root)
        if classes is None:
            raise ValueError(f"segmentation folder {root}: give the class names (no classes.txt in the folder)")
    return SegmentationImages(_pairs(root, split), classes, f"folder:{root}", reduce_zero_label, label_map, scale)
