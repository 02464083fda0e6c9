"""Segmentation metrics as mmsegmentation computes them, and their figures.

Notation: K classes, predictions and labels (B, H, W) integer maps, 255 the ignore index.

For each batch, :func:`intersect_and_union` counts per class, over the pixels whose label is
not ignored: the intersection (pixels predicted k whose label is k), the pixels predicted k,
and the pixels labelled k. :class:`SegmentationMetrics` *sums these counts over the whole
evaluation set* and only then divides, as mmsegmentation's ``IoUMetric`` does:

- IoU_k = intersection_k / union_k with union_k = predicted_k + labelled_k - intersection_k;
- mIoU = the mean of IoU_k over the classes whose union is not empty: a class that neither
  appears in the labels nor is ever predicted is left out of the mean (its IoU is NaN),
  while a class that is predicted but never present scores 0 and counts;
- pixel accuracy (mmseg's ``aAcc``) = all intersections / all labelled pixels;
- per-class accuracy Acc_k = intersection_k / labelled_k, mAcc their mean (NaN-skipping).

Summing first is not the same as averaging per-image IoUs: one image with a tiny object
would otherwise weigh as much as a whole scene.

A label outside [0, K) that is not the ignore index is an error by default. With
``labels="mmseg"`` it is counted as mmsegmentation's ``IoUMetric`` counts it: its histograms
(``torch.histc`` over [0, K - 1]) drop the label, so the pixel adds to no class's labelled
pixels, but its prediction still adds to the predicted class's pixels (and so to that
class's union: a false positive). :func:`format_mmseg_tables` prints mmsegmentation's
per-class table and summary (aAcc, mIoU, mAcc).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import asnumpy, get_xp
from .metrics import _new_figure, _save_png

__all__ = [
    "LABEL_RULES",
    "format_mmseg_tables",
    "intersect_and_union",
    "SegmentationMetrics",
    "plot_class_iou",
    "plot_segmentation_grid",
]


LABEL_RULES = ("strict", "mmseg")


def intersect_and_union(
    pred: Any, label: Any, num_classes: int, ignore_index: int = 255, labels: str = "strict"
) -> tuple[np.ndarray, ...]:
    """Per-class pixel counts of one batch.

    Args:
        pred: (B, H, W) predicted classes in ``[0, K)``, NumPy or CuPy.
        label: (B, H, W) true classes in ``[0, K)`` or ``ignore_index``, on the same device.
        num_classes: K.
        ignore_index: label value of pixels that are not scored.
        labels: ``"strict"``: a label outside ``[0, K)`` other than the ignore index is an
            error; ``"mmseg"``: such a pixel counts in ``area_pred`` (its prediction) and in no
            class's ``area_label``, as mmsegmentation's histograms do (see the module doc).

    Returns:
        area_intersect, area_union, area_pred, area_label: four (K,) int64 host arrays.

    Raises:
        ValueError: on shapes that differ, or values outside ``[0, K)`` (other than the
            ignore index in ``label``, and with ``labels="mmseg"`` any label).
    """
    if labels not in LABEL_RULES:
        raise ValueError(f"'labels' must be one of {LABEL_RULES}, got {labels!r}")
    xp = get_xp(pred=pred, label=label)
    if pred.shape != label.shape:
        raise ValueError(f"'pred' has shape {tuple(pred.shape)} but 'label' has {tuple(label.shape)}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"'num_classes' must be a positive integer, got {num_classes!r}")
    keep = label != ignore_index
    p, t = pred[keep].astype(xp.int64), label[keep].astype(xp.int64)
    for name, a in (("pred", p), ("label", t)):
        if name == "label" and labels == "mmseg":
            continue
        if a.size and (int(a.min()) < 0 or int(a.max()) >= num_classes):
            raise ValueError(
                f"'{name}' holds values in [{int(a.min())}, {int(a.max())}], outside [0, {num_classes})"
                + (f" and not the ignore index {ignore_index}" if name == "label" else "")
            )
    k = int(num_classes)
    area_intersect = xp.bincount(t[p == t], minlength=k)
    area_pred = xp.bincount(p, minlength=k)
    area_label = xp.bincount(t[(t >= 0) & (t < k)], minlength=k)  # mmseg: labels outside the classes count nowhere
    counts = [asnumpy(a).astype(np.int64) for a in (area_intersect, area_pred, area_label)]
    inter, pred_area, label_area = counts
    return inter, pred_area + label_area - inter, pred_area, label_area


class SegmentationMetrics:
    """Accumulates pixel counts over an evaluation set; :meth:`compute` gives the scores.

    Example::

        metrics = SegmentationMetrics(num_classes=4)
        for images, labels in loader:
            metrics.update(logits.argmax(axis=1), labels)
        scores = metrics.compute()   # {"pixel_accuracy", "miou", "iou", "macc", "acc"}

    Args:
        num_classes: K.
        ignore_index: label value that is not scored (255).
        labels: ``"strict"`` or ``"mmseg"``, the rule for labels outside the classes (see
            :func:`intersect_and_union`).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, labels: str = "strict") -> None:
        if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"'num_classes' must be a positive integer, got {num_classes!r}")
        if labels not in LABEL_RULES:
            raise ValueError(f"'labels' must be one of {LABEL_RULES}, got {labels!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.labels = labels
        self.reset()

    def reset(self) -> None:
        """Forget every count."""
        k = self.num_classes
        self.area_intersect = np.zeros(k, np.int64)
        self.area_union = np.zeros(k, np.int64)
        self.area_pred = np.zeros(k, np.int64)
        self.area_label = np.zeros(k, np.int64)

    def update(self, pred: Any, label: Any) -> None:
        """Add one batch: pred and label (B, H, W) on one device."""
        counts = intersect_and_union(pred, label, self.num_classes, self.ignore_index, self.labels)
        self.area_intersect += counts[0]
        self.area_union += counts[1]
        self.area_pred += counts[2]
        self.area_label += counts[3]

    def compute(self) -> dict[str, Any]:
        """The scores of everything seen since the last :meth:`reset`.

        Returns:
            ``pixel_accuracy`` (float, aAcc), ``miou`` and ``macc`` (floats, NaN-skipping
            means), ``iou`` and ``acc`` ((K,) float64 arrays, NaN for a class with an empty
            union / no labelled pixel), and the four count arrays.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(self.area_union > 0, self.area_intersect / np.maximum(self.area_union, 1), np.nan)
            acc = np.where(self.area_label > 0, self.area_intersect / np.maximum(self.area_label, 1), np.nan)
        labelled = int(self.area_label.sum())
        return {
            "pixel_accuracy": float(self.area_intersect.sum() / labelled) if labelled else float("nan"),
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "macc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "iou": iou,
            "acc": acc,
            "area_intersect": self.area_intersect.copy(),
            "area_union": self.area_union.copy(),
            "area_pred": self.area_pred.copy(),
            "area_label": self.area_label.copy(),
        }


def plot_class_iou(iou: Sequence[float], classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Per-class IoU as horizontal bars, the mIoU as a line; classes left out (NaN) marked; PNG.

    Args:
        iou: (K,) IoU per class, NaN for a class absent from labels and predictions.
        classes: K class names.
        path: the ``.png`` to write.
        title: figure title (the mIoU is appended).
    """
    scores = np.asarray(iou, dtype=np.float64)
    k = len(classes)
    fig = _new_figure(7.0, min(12.0, 1.2 + 0.3 * k))
    ax = fig.subplots()
    rows = np.arange(k)
    ax.barh(rows, np.nan_to_num(100.0 * scores), color="tab:blue")
    for i in np.flatnonzero(np.isnan(scores)):
        ax.text(1.0, i, "absent: not in the mean", va="center", fontsize=8, color="gray")
    miou = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
    ax.axvline(100.0 * miou, color="tab:red", linestyle="--", label=f"mIoU {100.0 * miou:.1f}%")
    ax.set_yticks(rows, [str(c) for c in classes])
    ax.invert_yaxis()
    ax.set(xlim=(0, 100), xlabel="IoU (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"{title + ': ' if title else ''}per-class IoU, mIoU {100.0 * miou:.1f}%")
    return _save_png(fig, path)


def _class_colours(k: int) -> np.ndarray:
    """(K + 1, 3) RGB in [0, 1]: a fixed colour per class, grey last (for ignored pixels)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if k > 10 else colormaps["tab10"]
    colours = np.array([cmap(i % cmap.N)[:3] for i in range(k)], dtype=np.float32)
    return np.concatenate([colours, np.full((1, 3), 0.5, np.float32)])


def plot_segmentation_grid(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ignore_index: int = 255,
    alpha: float = 0.55,
) -> Path:
    """Rows of image / ground truth overlay / prediction overlay, one row per image; PNG.

    The overlays lay the class colours over a grey copy of the image, so the colours
    read as classes and not as the image's own.

    Args:
        images: (n, C, H, W) normalised images on the host (C = 1 or 3).
        labels, preds: (n, H, W) class maps (labels may hold ``ignore_index``, drawn grey).
        classes: K class names (the legend).
        path: the ``.png`` to write.
        mean, std: per-channel normalisation to undo for display.
        ignore_index: the label value drawn grey.
        alpha: opacity of the class colours over the image.
    """
    images = np.asarray(images, dtype=np.float32)
    labels, preds = np.asarray(labels), np.asarray(preds)
    n, k = len(images), len(classes)
    if mean is not None and std is not None:
        images = images * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    colours = _class_colours(k)
    fig = _new_figure(7.5, 2.3 * n + 0.6)
    axes = np.atleast_2d(fig.subplots(n, 3))
    for i in range(n):
        img = images[i].transpose(1, 2, 0)
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
        grey = np.repeat(rgb.mean(axis=-1, keepdims=True), 3, axis=-1)  # under the overlays: colours are the classes
        correct = (preds[i] == labels[i])[labels[i] != ignore_index]
        for j, (title, cls) in enumerate((("image", None), ("ground truth", labels[i]), ("prediction", preds[i]))):
            ax = axes[i, j]
            ax.axis("off")
            if cls is None:
                ax.imshow(rgb)
            else:
                index = np.where(cls == ignore_index, k, np.clip(cls, 0, k - 1))
                ax.imshow((1.0 - alpha) * grey + alpha * colours[index])
            if j == 2 and correct.size:
                title = f"prediction ({100.0 * correct.mean():.1f}% of pixels right)"
            ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(color=colours[c], label=str(classes[c])) for c in range(k)]
    handles.append(Patch(color=colours[k], label=f"ignored ({ignore_index})"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8)
    return _save_png(fig, path)


def format_iou_table(scores: dict[str, Any], classes: list[str]) -> str:
    """Per-class IoU and accuracy of :meth:`SegmentationMetrics.compute` as aligned text; absent classes marked."""
    width = max(12, *(len(c) for c in classes))
    lines = [f"{'class'.ljust(width)}      IoU   accuracy   labelled pixels"]
    for k, name in enumerate(classes):
        iou, acc, n = scores["iou"][k], scores["acc"][k], int(scores["area_label"][k])
        iou_text = "  absent" if np.isnan(iou) else f"{100 * iou:7.2f}%"
        acc_text = "        -" if np.isnan(acc) else f"{100 * acc:8.2f}%"
        lines.append(f"{name[:width].ljust(width)} {iou_text}  {acc_text}   {n:15d}")
    return "\n".join(lines)


def _ascii_table(header: list[str], rows: list[list[str]]) -> str:
    """A table with +---+ rules, as mmsegmentation prints them (PrettyTable's default style)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {str(c).center(w)} " for c, w in zip(cells, widths)) + "|"

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def format_mmseg_tables(scores: dict[str, Any], classes: Sequence[str]) -> str:
    """mmsegmentation's evaluation printout: ``per class results`` (Class, IoU, Acc) and the summary (aAcc, mIoU, mAcc).

    Percentages rounded to 2 decimals and written as mmsegmentation's tables write them
    (``str(np.round(100 * v, 2))``: 50.0, 37.5, 66.67); a class with an empty union shows
    ``nan`` and is left out of the means.
    """

    def pct(v: float) -> str:
        return str(float(np.round(100.0 * v, 2)))

    per_class = [[str(c), pct(i), pct(a)] for c, i, a in zip(classes, scores["iou"], scores["acc"])]
    summary = [[pct(scores["pixel_accuracy"]), pct(scores["miou"]), pct(scores["macc"])]]
    return (
        "per class results:\n"
        + _ascii_table(["Class", "IoU", "Acc"], per_class)
        + "\nSummary:\n"
        + _ascii_table(["aAcc", "mIoU", "mAcc"], summary)
    )
