"""Metric files and figures of a training run: CSV/JSON tables, learning curves, confusion matrix.

Notation: K classes, N evaluated images, E finished epochs.

Every file is written atomically (see :func:`twins_np.io.atomic_write`)
and rewritten in full from the run's history after each epoch, so the tables always
match the checkpoint next to them, even after an interrupted and resumed run.

Figures use matplotlib's object API (``matplotlib.figure.Figure`` with the Agg canvas),
never ``pyplot``: no global figure state, no display needed, nothing to close.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..io import atomic_write

__all__ = [
    "METRIC_COLUMNS",
    "write_metrics",
    "read_metrics",
    "confusion_matrix",
    "per_class_accuracy",
    "format_confusion_matrix",
    "plot_learning_curves",
    "plot_confusion_matrix",
    "plot_predictions",
]

# One row per epoch. Both losses are the training objective (cross-entropy with the run's
# label smoothing), so the two curves compare. Accuracies are fractions in [0, 1]; ``lr`` is
# the rate of the epoch's last update; ``seconds`` is the epoch's wall time (training and
# test evaluation); ``images_per_s`` counts training images over the training part only.
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s")


# --- tables -------------------------------------------------------------------------------


def write_metrics(
    out_dir: str | os.PathLike, history: Sequence[dict[str, Any]], columns: Sequence[str] = METRIC_COLUMNS
) -> tuple[Path, Path]:
    """Write ``metrics.csv`` and ``metrics.json`` (a list of row dicts) into ``out_dir``.

    Args:
        out_dir: an existing directory.
        history: one dict per epoch with (at least) the keys of ``columns``.
        columns: the columns, in order: :data:`METRIC_COLUMNS` for a classifier,
            :data:`twins_np.training.tasks.SEGMENT_METRIC_COLUMNS` for a segmenter.

    Returns:
        the paths of the CSV and the JSON file.
    """
    out_dir = Path(out_dir)
    rows = [{key: row[key] for key in columns} for row in history]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = _write_text(out_dir / "metrics.csv", text.getvalue())
    json_path = _write_text(out_dir / "metrics.json", json.dumps(rows, indent=1) + "\n")
    return csv_path, json_path


def _write_text(path: Path, text: str) -> Path:
    def write(f: IO[bytes]) -> None:
        f.write(text.encode("utf-8"))

    return atomic_write(path, write)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``metrics.json`` (UTF-8, as :func:`write_metrics` writes it) back as a list of row dicts.

    Raises:
        ValueError: naming the file, when it is not UTF-8 JSON.
    """
    try:
        return list(json.loads(Path(path).read_text(encoding="utf-8")))
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError alike
        raise ValueError(f"{path} is not a metrics file of twins-np (UTF-8 JSON): {err}") from None


# --- classification summaries ----------------------------------------------------------------


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Count matrix ``cm[true, predicted]``.

    Args:
        labels: (N,) true class indices in [0, K).
        preds: (N,) predicted class indices in [0, K).
        num_classes: K.

    Returns:
        (K, K) int64; row k sums to the number of images of class k, the diagonal
        counts the correct ones.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    preds = np.asarray(preds, dtype=np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must have the same length")
    for name, a in (("labels", labels), ("preds", preds)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{a.min()}, {a.max()}]")
    # bincount of the flat index true*K + pred: one pass, no Python loop
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """(K,) accuracy of each class (recall): diagonal over row sums; NaN for a class with no image."""
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)


def format_confusion_matrix(cm: np.ndarray, classes: Sequence[str]) -> str:
    """The matrix as aligned text: rows are true classes, columns predictions, plus per-class accuracy."""
    names = [str(c) for c in classes]
    width = max(5, max(len(n) for n in names), len(str(int(cm.max(initial=0)))) + 1)
    acc = per_class_accuracy(cm)
    head = "true \\ pred".ljust(12) + "".join(n[:width].rjust(width) for n in names) + "   accuracy"
    lines = [head]
    for k, name in enumerate(names):
        cells = "".join(str(int(v)).rjust(width) for v in cm[k])
        a = "    -" if np.isnan(acc[k]) else f"{100.0 * acc[k]:8.1f}%"
        lines.append(name[:12].ljust(12) + cells + "  " + a)
    return "\n".join(lines)


# --- figures ----------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def plot_learning_curves(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    loss_label: str = "cross-entropy",
    metric: str = "acc",
    metric_label: str = "accuracy",
) -> Path:
    """Loss and a score (accuracy, or a segmenter's mIoU) against the epoch, train and test; PNG.

    Args:
        history: metric rows (see :data:`METRIC_COLUMNS`).
        path: the ``.png`` to write.
        title: optional figure title.
        loss_label: y-axis label of the loss panel.
        metric: the score's key without its split: the rows hold ``train_<metric>`` and
            ``test_<metric>`` as fractions in [0, 1] (``"miou"`` for a segmenter).
        metric_label: how the panel names it.
    """
    train_key, test_key = f"train_{metric}", f"test_{metric}"
    epochs = [int(r["epoch"]) for r in history]
    fig = _new_figure(9.0, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    style = {"marker": "o", "markersize": 3}
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train", **style)
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="test", **style)
    ax_loss.set(xlabel="epoch", ylabel=loss_label, title="loss")
    ax_acc.plot(epochs, [100.0 * r[train_key] for r in history], label="train", **style)
    ax_acc.plot(epochs, [100.0 * r[test_key] for r in history], label="test", **style)
    ax_acc.set(xlabel="epoch", ylabel=f"{metric_label} (%)", title=metric_label)
    if history:
        best = max(history, key=lambda r: r[test_key])
        ax_acc.annotate(
            f"best {100.0 * best[test_key]:.1f}%",
            (best["epoch"], 100.0 * best[test_key]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
        )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return _save_png(fig, path)


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """The confusion matrix as a heat map with counts, rows normalised for the colour; saved as PNG.

    Args:
        cm: (K, K) counts, ``cm[true, predicted]``.
        classes: K class names.
        path: the ``.png`` to write.
        title: figure title (the overall accuracy is appended).
    """
    k = len(classes)
    side = min(12.0, 2.5 + 0.45 * k)
    fig = _new_figure(side + 1.0, side)
    ax = fig.subplots()
    totals = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    share = cm / totals
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    if k <= 30:  # beyond that the numbers would not fit in the cells
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=color, fontsize=8)
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=90 if k > 12 else 0)
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set(xlabel="predicted class", ylabel="true class")
    accuracy = np.trace(cm) / max(int(cm.sum()), 1)
    ax.set_title(f"{title + ': ' if title else ''}accuracy {100.0 * accuracy:.1f}% ({np.trace(cm)}/{cm.sum()})")
    return _save_png(fig, path)


def plot_predictions(
    images: np.ndarray,
    labels: Sequence[int],
    preds: Sequence[int],
    classes: Sequence[str],
    path: str | os.PathLike,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    columns: int = 8,
    title: str | None = None,
) -> Path:
    """A grid of images titled with the predicted class (red when wrong); saved as PNG.

    Args:
        images: (n, C, H, W) normalised images on the host (C = 1 or 3).
        labels, preds: (n,) true and predicted class indices.
        classes: class names.
        path: the ``.png`` to write.
        mean, std: per-channel normalisation to undo for display (Dataset.mean/std).
        columns: images per row.
        title: the figure's title; say how the images were chosen (a grid picked to show the
            mistakes has far more red than the model's error rate). Default: "predicted class
            (red: wrong)".
    """
    images = np.asarray(images, dtype=np.float32)
    n = len(images)
    if mean is not None and std is not None:
        images = images * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = _new_figure(1.3 * columns, 1.45 * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for i in range(n):
        img = images[i].transpose(1, 2, 0)
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax = axes[i]
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray_r", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(img)
        ok = int(preds[i]) == int(labels[i])
        text = f"{classes[int(preds[i])]}" if ok else f"{classes[int(preds[i])]} (true {classes[int(labels[i])]})"
        ax.set_title(text, color="black" if ok else "red", fontsize=9)
    fig.suptitle(title or "predicted class (red: wrong)", fontsize=10)
    return _save_png(fig, path)
