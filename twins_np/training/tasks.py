"""What differs between training a classifier and a segmenter: the task of a run.

The training loop (:class:`twins_np.training.Trainer`) is one and the same for both; a
:class:`Task` supplies the parts that differ:

===========================  ===============================  ===================================
part                         ``classify``                      ``segment``
===========================  ===============================  ===================================
models                       :func:`~twins_np.list_models`     :func:`~twins_np.list_segmenters`
data                         digits, cifar10, long-range       shapes, long_range_dense, folder:PATH
labels                       (N,) one class per image          (N, H, W) per pixel, 255 ignored
augmentation                 crop / flip of the images         flip of images and labels together
loss                         cross-entropy                     per-pixel cross-entropy (255 skipped)
metrics per epoch            accuracy                          pixel accuracy, mIoU (mmseg's sums)
figures                      learning curves, confusion        learning curves (mIoU), per-class
                             matrix                            IoU bars, image / truth / prediction
===========================  ===============================  ===================================

Notation: N images, B batch size, K classes, H x W pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import functional as F
from ..backend import asnumpy, to_device
from ..data import DATASETS, Dataset, HorizontalFlip, PairedHorizontalFlip, RandomCrop, load_dataset, standard_augment
from ..data.segmentation import IGNORE_INDEX, MMSEG_DATASETS, SegmentationImages, load_segmentation_images
from ..models import MODEL_CONFIGS, SEGMENTER_CONFIGS, create_model, create_segmenter, list_models, list_segmenters
from ..models.segmentation import HEAD_OPTIONS, check_test_cfg
from ..nn.module import Module
from .config import ConfigError, TrainConfig
from .metrics import (
    METRIC_COLUMNS,
    confusion_matrix,
    format_confusion_matrix,
    per_class_accuracy,
    plot_confusion_matrix,
    plot_learning_curves,
)
from .overrides import check_model_overrides, did_you_mean
from .segmentation_metrics import (
    SegmentationMetrics,
    format_iou_table,
    format_mmseg_tables,
    plot_class_iou,
    plot_segmentation_grid,
)

__all__ = [
    "TRAINING_TASKS",
    "validate_config",
    "Task",
    "ClassifyTask",
    "SegmentTask",
    "EvalResult",
    "SegmentationEvalResult",
    "METRIC_COLUMNS",
    "SEGMENT_METRIC_COLUMNS",
    "SEGMENT_HEAD_OPTIONS",
    "SEGMENTATION_DATA",
    "default_augment",
    "load_split",
    "evaluate_model",
    "evaluate_segmenter",
    "evaluate_segmenter_images",
    "is_segmentation_data",
    "task_of_model",
]

# One row per epoch of a segmentation run. Losses are the training objective (per-pixel
# cross-entropy over the pixels not ignored, with the run's label smoothing); pixel
# accuracies and IoUs are fractions in [0, 1]. The train scores are counted on the
# augmented training batches in training mode (dropout on), like the classifier's train_acc.
SEGMENT_METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_pixel_acc",
    "train_miou",
    "test_loss",
    "test_pixel_acc",
    "test_miou",
    "test_macc",
    "lr",
    "seconds",
    "images_per_s",
)

# the segmentation data on the command line (folder:PATH: the user's own folder)
SEGMENTATION_DATA = ("shapes", "long_range_dense", "folder:PATH")

# entries of --model-overrides that configure the neck and heads (FPN or UPerNet); the others the backbone
SEGMENT_HEAD_OPTIONS = (
    "neck_channels",
    "head_channels",
    "aux_channels",
    "aux_weight",
    "norm",
    "num_groups",
    "dropout_ratio",
    "test_cfg",
)

# how many test images the overlay grid shows
GRID_IMAGES = 6


def is_segmentation_data(name: str) -> bool:
    """True for ``shapes``, ``long_range_dense`` (or ``long-range-dense``) and ``folder:PATH``."""
    return name.replace("_", "-") in ("shapes", "long-range-dense") or (name.startswith("folder:") and len(name) > 7)


def task_of_model(name: str | None) -> str | None:
    """``"segment"`` for a segmenter's name, ``"classify"`` for a classifier's, None otherwise."""
    if name in list_segmenters():
        return "segment"
    if name in list_models():
        return "classify"
    return None


class EvalResult(NamedTuple):
    """Loss, accuracy and predictions of a classifier on one split (host arrays)."""

    loss: float  # mean cross-entropy, with the run's label smoothing
    accuracy: float  # fraction in [0, 1]
    preds: np.ndarray  # (N,) int64 predicted classes
    labels: np.ndarray  # (N,) int64 true classes


class SegmentationEvalResult(NamedTuple):
    """Loss and mmsegmentation's scores of a segmenter on one split (host arrays).

    ``preds`` and ``labels`` hold only the first few images (what the overlay grid
    shows); the scores count every pixel of the split.
    """

    loss: float  # per-pixel cross-entropy, mean over the counted pixels of the whole split
    pixel_accuracy: float  # mmseg's aAcc
    miou: float
    scores: dict[str, Any]  # SegmentationMetrics.compute(): iou, acc, macc, the four counts
    preds: np.ndarray  # (n, H, W) int64 of the first n images
    labels: np.ndarray  # (n, H, W) int64, 255 where ignored


# --- classification ----------------------------------------------------------------------------


def default_augment(data: str) -> Callable[..., Any]:
    """The training augmentation of a dataset.

    digits: random translation by up to 2 pixels (zero padding + crop); no flip, a
    mirrored digit is another glyph. cifar10: the usual 4-pixel crop and horizontal
    flip. long-range: horizontal flip only; a crop could move a mark out of its edge
    band, which the task's construction relies on, while a flip keeps both marks'
    shapes (plus and cross are mirror-symmetric) and their distance. The segmentation
    sets: a horizontal flip of the image and its label map together (shapes stay their
    class when mirrored; the dense long-range set's cue, a bright or dark bar, keeps its
    sign under a flip, and a flip keeps every distance); no crop, which would cut the
    dense long-range set's cue band.
    """
    if data == "digits":
        return RandomCrop(pad=2)
    if data == "cifar10":
        return standard_augment(pad=4, p=0.5)
    if data == "long-range":
        return HorizontalFlip(p=0.5)
    if is_segmentation_data(data):
        return PairedHorizontalFlip(p=0.5)
    raise ValueError(f"unknown dataset {data!r}")


def load_split(config: TrainConfig, split: str) -> Dataset:
    """One split of ``config.data``, cut to ``limit_train`` / ``limit_test`` images."""
    options: dict[str, Any] = {}
    if config.reduce_zero_label:
        options["reduce_zero_label"] = True
    if config.num_classes is not None:
        options["num_classes"] = config.num_classes
    data = load_dataset(
        config.data, split, image_size=config.image_size, data_dir=config.data_dir, seed=config.data_seed, **options
    )
    limit = config.limit_train if split == "train" else config.limit_test
    if limit is not None and limit < len(data):
        data = data.subset(np.arange(limit))
    return data


def _logits(model: Any, x: Any, start: int, check_finite: bool) -> Any:
    """The model's logits for the batch of images starting at ``start``; with ``check_finite``,
    a FloatingPointError naming the images when a logit is NaN or infinite."""
    # overflow warnings are silenced when checked: the non-finite logits are reported in one message
    with np.errstate(over="ignore", invalid="ignore") if check_finite else contextlib.nullcontext():
        logits = model(x)
    if check_finite and not bool(model.xp.isfinite(logits).all()):
        bad = int((~model.xp.isfinite(logits)).sum())
        last = start + int(x.shape[0]) - 1
        raise FloatingPointError(f"the logits of images {start}-{last} hold {bad} NaN or infinite value(s)")
    return logits


def evaluate_model(
    model: Any, dataset: Dataset, batch_size: int, device: str, label_smoothing: float = 0.0, check_finite: bool = False
) -> EvalResult:
    """Run ``model`` in eval mode over ``dataset`` in order; its train/eval mode is restored after.

    Args:
        model: a Twins model on ``device``.
        dataset: images (N, C, H, W) and labels (N,).
        batch_size: images per forward.
        device: ``"cpu"`` or ``"gpu"``.
        label_smoothing: eps of the reported cross-entropy.
        check_finite: raise ``FloatingPointError`` when a logit is NaN or infinite (an
            accuracy computed from NaN logits would be meaningless).
    """
    was_training = model.training
    model.eval()
    n = len(dataset)
    preds = np.empty(n, dtype=np.int64)
    loss_sum = 0.0
    for start in range(0, n, batch_size):
        x = to_device(dataset.images[start : start + batch_size], device)
        y = to_device(dataset.labels[start : start + batch_size], device)
        try:
            logits = _logits(model, x, start, check_finite)
        except FloatingPointError:
            model.train(was_training)
            raise
        loss, _ = F.cross_entropy_forward(logits, y, label_smoothing)
        loss_sum += loss * int(y.shape[0])
        preds[start : start + len(y)] = asnumpy(logits.argmax(axis=1))
    model.train(was_training)
    return EvalResult(loss_sum / n, float((preds == dataset.labels).mean()), preds, dataset.labels.copy())


def evaluate_segmenter(
    model: Any,
    dataset: Dataset,
    batch_size: int,
    device: str,
    label_smoothing: float = 0.0,
    check_finite: bool = False,
    keep: int = GRID_IMAGES,
) -> SegmentationEvalResult:
    """Run a segmenter in eval mode over ``dataset`` in order and score it as mmsegmentation does.

    The intersection and union of every class are summed over the whole split before
    dividing (:class:`~twins_np.training.SegmentationMetrics`); the loss is the mean over
    every counted pixel of the split (each batch's mean weighted by its counted pixels).
    The model's train/eval mode is restored after.

    Args:
        model: a :class:`~twins_np.models.Segmenter` on ``device``.
        dataset: images (N, C, H, W) and labels (N, H, W) with ignore index 255.
        batch_size: images per forward.
        device: ``"cpu"`` or ``"gpu"``.
        label_smoothing: eps of the reported cross-entropy.
        check_finite: raise ``FloatingPointError`` when a logit is NaN or infinite.
        keep: how many of the first images' predictions to return (for the overlay grid).
    """
    if not dataset.is_segmentation:
        raise ValueError(f"evaluate_segmenter needs per-pixel labels (N, H, W); {dataset.name} has {dataset.labels.shape}")
    ignore = IGNORE_INDEX if dataset.ignore_index is None else int(dataset.ignore_index)
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(dataset.num_classes, ignore)
    n = len(dataset)
    kept = min(keep, n)
    preds = np.empty((kept, *dataset.labels.shape[1:]), dtype=np.int64)
    loss_sum, counted = 0.0, 0
    try:
        for start in range(0, n, batch_size):
            x = to_device(dataset.images[start : start + batch_size], device)
            y = to_device(dataset.labels[start : start + batch_size], device)
            logits = _logits(model, x, start, check_finite)
            pixels = int((y != ignore).sum())
            if pixels:  # a batch whose every pixel is ignored adds nothing (and has no mean)
                loss, _ = F.pixel_cross_entropy_forward(logits, y, label_smoothing, ignore)
                loss_sum += loss * pixels
                counted += pixels
            pred = logits.argmax(axis=1)
            metrics.update(pred, y)
            if start < kept:
                preds[start : min(kept, start + batch_size)] = asnumpy(pred[: kept - start])
    finally:
        model.train(was_training)
    scores = metrics.compute()
    return SegmentationEvalResult(
        loss_sum / counted if counted else float("nan"),
        scores["pixel_accuracy"],
        scores["miou"],
        scores,
        preds,
        dataset.labels[:kept].copy(),
    )


def evaluate_segmenter_images(
    model: Any, images: SegmentationImages, device: str, check_finite: bool = False, label_smoothing: float = 0.0
) -> SegmentationEvalResult:
    """mmsegmentation's evaluation: each image at its own size, as its ``test`` loop runs it.

    For every image of ``images`` (read by :meth:`SegmentationImages.read`: rescaled to fit
    the dataset's scale and normalised; its label map at the original size): the model's
    :meth:`~twins_np.models.Segmenter.inference` (whole-image or sliding-window, as its
    ``test_cfg`` says) gives logits at the rescaled size, resized bilinearly to the label
    map's size; the argmax is scored with mmsegmentation's label rule (a label outside the
    classes counts only as a prediction, see :func:`~twins_np.training.intersect_and_union`),
    intersections and unions summed over the split. The loss is the per-pixel
    cross-entropy over the pixels whose label is a class (mmsegmentation reports none).
    No caches are kept (``no_grad``); the model's train/eval mode is restored after.
    """
    from ..nn import no_grad

    was_training = model.training
    model.eval()
    K, ignore = images.num_classes, images.ignore_index
    metrics = SegmentationMetrics(K, ignore, labels="mmseg")
    loss_sum, counted = 0.0, 0
    try:
        for i in range(len(images)):
            image, label = images.read(i)
            x = to_device(image[None].astype(model.dtype, copy=False), device)  # float32 pixels, exact in float64 too
            with no_grad(), np.errstate(over="ignore", invalid="ignore") if check_finite else contextlib.nullcontext():
                logits = model.inference(x)  # (1, K, h, w)
                if tuple(logits.shape[2:]) != label.shape:  # mmseg's postprocess_result: back to the original size
                    nhwc, _ = F.bilinear_resize_forward(logits.transpose(0, 2, 3, 1), label.shape)
                    logits = nhwc.transpose(0, 3, 1, 2)
            if check_finite and not bool(model.xp.isfinite(logits).all()):
                bad = int((~model.xp.isfinite(logits)).sum())
                name = images.pairs[i][0].name
                raise FloatingPointError(f"the logits of image {i} ({name}) hold {bad} NaN or infinite value(s)")
            y = to_device(label[None], device)
            metrics.update(logits.argmax(axis=1), y)
            scored = (y >= 0) & (y < K)
            pixels = int(scored.sum())
            if pixels:
                loss, _ = F.pixel_cross_entropy_forward(logits, model.xp.where(scored, y, ignore), label_smoothing, ignore)
                loss_sum += loss * pixels
                counted += pixels
    finally:
        model.train(was_training)
    scores = metrics.compute()
    none = np.zeros((0, 0, 0), np.int64)  # every image has its own size: no overlay grid
    return SegmentationEvalResult(
        loss_sum / counted if counted else float("nan"), scores["pixel_accuracy"], scores["miou"], scores, none, none
    )


# --- the tasks ------------------------------------------------------------------------------------


class _ClassifyMeter:
    """Training accuracy over the batches of an epoch."""

    def __init__(self) -> None:
        self.correct, self.seen = 0, 0

    def update(self, logits: Any, y: Any) -> None:
        self.correct += int((logits.argmax(axis=1) == y).sum())
        self.seen += int(y.shape[0])

    def postfix(self) -> dict[str, str]:
        return {"acc": f"{100 * self.correct / max(self.seen, 1):.1f}%"}

    def row(self) -> dict[str, float]:
        return {"train_acc": self.correct / max(self.seen, 1)}


class _SegmentMeter:
    """Pixel accuracy and mIoU summed over the training batches of an epoch."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.metrics = SegmentationMetrics(num_classes, ignore_index)

    def update(self, logits: Any, y: Any) -> None:
        self.metrics.update(logits.argmax(axis=1), y)

    def postfix(self) -> dict[str, str]:
        s = self.metrics.compute()
        return {"pix": f"{100 * s['pixel_accuracy']:.1f}%", "mIoU": f"{100 * s['miou']:.1f}%"}

    def row(self) -> dict[str, float]:
        s = self.metrics.compute()
        return {"train_pixel_acc": s["pixel_accuracy"], "train_miou": s["miou"]}


class Task:
    """The parts of a training run that depend on what is learned (see the module docstring).

    Attributes:
        name: ``"classify"`` or ``"segment"`` (``--task``).
        columns: the metric table's columns, one row per epoch.
        metric, metric_label: the history key of the headline score on the test split
            and how figures and messages name it.
        figures: the figure files a finished run leaves in its folder.
    """

    name = ""
    columns: tuple[str, ...] = ()
    metric = ""
    metric_label = ""
    figures: tuple[str, ...] = ()

    def model_names(self) -> list[str]:
        raise NotImplementedError

    def check(self, config: TrainConfig) -> None:
        """Raise :class:`~twins_np.training.config.ConfigError` naming ``model``, ``data`` or
        ``model_overrides`` (as ``<field>``) when they do not fit the task."""
        raise NotImplementedError

    def create_model(self, config: TrainConfig, train_set: Dataset) -> Module:
        raise NotImplementedError

    def meter(self, dataset: Dataset) -> Any:
        """An accumulator of the training scores: ``update(logits, y)``, ``postfix()``, ``row()``."""
        raise NotImplementedError

    def evaluate(
        self, model: Module, dataset: Dataset, batch_size: int, device: str, label_smoothing: float, check_finite: bool = False
    ) -> Any:
        """Loss and scores on ``dataset`` in eval mode; ``check_finite`` refuses NaN/Inf logits (FloatingPointError)."""
        raise NotImplementedError

    def evaluation_data(self, config: TrainConfig, split: str) -> Any:
        """The split ``twins-np evaluate`` scores: the training's data by default (:func:`load_split`)."""
        return load_split(config, split)

    def evaluation_summary(self, result: Any, dataset: Dataset) -> tuple[str, dict[str, Any]]:
        """What an evaluation found: a text for people and a JSON-ready dict of the same numbers."""
        raise NotImplementedError

    def test_row(self, result: Any) -> dict[str, float]:
        """The test split's entries of the epoch's metric row."""
        raise NotImplementedError

    def epoch_line(self, row: dict[str, Any], epochs: int) -> str:
        raise NotImplementedError

    def plot_epoch(self, history: list[dict[str, Any]], out_dir: Path, title: str, loss_label: str) -> None:
        """The figures rewritten after every epoch."""
        plot_learning_curves(
            history,
            out_dir / "learning_curves.png",
            title=title,
            loss_label=loss_label,
            metric=self.metric.replace("test_", ""),
            metric_label=self.metric_label,
        )

    def plot_result(self, result: Any, dataset: Dataset, out_dir: Path, title: str, suffix: str = "") -> list[Path]:
        """The figures of an evaluation (after every epoch or at the end, see the subclasses); returns their paths.

        ``suffix`` is appended to each file's stem (``twins-np evaluate`` writes ``_test``).
        """
        raise NotImplementedError


def _check_overrides(model: str, overrides: Any, batch_size: int) -> None:
    """:func:`~twins_np.training.overrides.check_model_overrides`, its errors as ConfigError naming <model_overrides>."""
    try:
        check_model_overrides(model, overrides, batch_size, name="<model_overrides>")
    except ValueError as err:
        raise ConfigError(str(err)) from None


class ClassifyTask(Task):
    """One class per image: Twins models on digits, CIFAR-10 or the long-range task."""

    name = "classify"
    columns = METRIC_COLUMNS
    metric = "test_acc"
    metric_label = "accuracy"
    figures = ("learning_curves.png", "confusion_matrix.png")

    def model_names(self) -> list[str]:
        return list_models()

    def check(self, config: TrainConfig) -> None:
        if config.model in list_segmenters():
            raise ConfigError(
                f"<model>: {config.model!r} is a segmenter (an FPN head on a backbone); "
                f"train it with <task> segment, or choose a classifier: {', '.join(list_models())}"
            )
        if config.model not in list_models():
            raise ConfigError(
                f"<model>: unknown model {config.model!r}{did_you_mean(str(config.model), list_models())}; "
                f"choose one of {', '.join(list_models())}"
            )
        if is_segmentation_data(config.data):
            raise ConfigError(
                f"<data>: {config.data!r} has per-pixel labels: train a segmenter on it with <task> segment, "
                f"or choose a classification set: {', '.join(DATASETS)}"
            )
        if config.data not in DATASETS:
            raise ConfigError(f"<data>: unknown dataset {config.data!r}; choose one of {', '.join(DATASETS)}")
        for name in ("reduce_zero_label", "num_classes"):  # a classification set has its own classes
            if getattr(config, name) not in (None, False):
                raise ConfigError(f"<{name}> is for segmentation folders (<data> folder:PATH)")
        _check_overrides(config.model, config.model_overrides, config.batch_size)

    def create_model(self, config: TrainConfig, train_set: Dataset) -> Module:
        return create_model(
            config.model,
            **config.model_overrides,
            in_chans=train_set.images.shape[1],
            num_classes=train_set.num_classes,
            drop_path_rate=config.drop_path,
            seed=config.seed,
            dtype=np.float32,
        )

    def meter(self, dataset: Dataset) -> _ClassifyMeter:
        return _ClassifyMeter()

    def evaluate(
        self, model: Module, dataset: Dataset, batch_size: int, device: str, label_smoothing: float, check_finite: bool = False
    ) -> EvalResult:
        return evaluate_model(model, dataset, batch_size, device, label_smoothing, check_finite)

    def evaluation_summary(self, result: EvalResult, dataset: Dataset) -> tuple[str, dict[str, Any]]:
        """Accuracy, cross-entropy and the confusion matrix (rows: true class, columns: predicted)."""
        cm = confusion_matrix(result.labels, result.preds, dataset.num_classes)
        per_class = per_class_accuracy(cm)
        n = len(result.labels)
        text = (
            f"accuracy {100 * result.accuracy:.2f}% ({int(np.trace(cm))}/{n}), cross-entropy {result.loss:.4f}\n\n"
            "confusion matrix (rows: true class, columns: predicted class):\n" + format_confusion_matrix(cm, dataset.classes)
        )
        report = {
            "accuracy": result.accuracy,
            "loss": result.loss,
            "per_class_accuracy": {c: (None if np.isnan(a) else float(a)) for c, a in zip(dataset.classes, per_class)},
            "confusion_matrix": cm.tolist(),
        }
        return text, report

    def test_row(self, result: EvalResult) -> dict[str, float]:
        return {"test_loss": result.loss, "test_acc": result.accuracy}

    def epoch_line(self, row: dict[str, Any], epochs: int) -> str:
        return (
            f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:5.1f}%  "
            f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:5.1f}%  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f} s  {row['images_per_s']:.0f} img/s"
        )

    def plot_result(self, result: EvalResult, dataset: Dataset, out_dir: Path, title: str, suffix: str = "") -> list[Path]:
        """At the end only: the test split's confusion matrix."""
        cm = confusion_matrix(result.labels, result.preds, dataset.num_classes)
        return [plot_confusion_matrix(cm, dataset.classes, out_dir / f"confusion_matrix{suffix}.png", title=title)]


class SegmentTask(Task):
    """One class per pixel: Semantic FPN segmenters on shapes, the dense long-range set or a folder."""

    name = "segment"
    columns = SEGMENT_METRIC_COLUMNS
    metric = "test_miou"
    metric_label = "mIoU"
    figures = ("learning_curves.png", "class_iou.png", "overlays.png")

    def model_names(self) -> list[str]:
        return list_segmenters()

    def check(self, config: TrainConfig) -> None:
        names = list_segmenters()
        if config.model in list_models():
            fit = f"{config.model}_fpn"
            hint = f" ({fit} puts the FPN head on it)" if fit in names else ""
            raise ConfigError(
                f"<model>: {config.model!r} is a classifier; <task> segment trains a segmenter{hint}: "
                f"choose one of {', '.join(names)}"
            )
        if config.model not in names:
            raise ConfigError(
                f"<model>: unknown segmenter {config.model!r}{did_you_mean(str(config.model), names)}; "
                f"choose one of {', '.join(names)}"
            )
        if config.data in DATASETS:
            raise ConfigError(
                f"<data>: {config.data!r} has one label per image; <task> segment needs per-pixel labels: "
                f"{', '.join(SEGMENTATION_DATA)}"
            )
        if not is_segmentation_data(config.data):
            raise ConfigError(
                f"<data>: unknown segmentation data {config.data!r}; choose one of {', '.join(SEGMENTATION_DATA)}"
            )
        for name in ("reduce_zero_label", "num_classes"):  # the synthetic sets have their own classes
            if getattr(config, name) not in (None, False) and not config.data.startswith("folder:"):
                raise ConfigError(f"<{name}> is for segmentation folders (<data> folder:PATH), not {config.data}")
        dataset = SEGMENTER_CONFIGS[config.model].get("dataset")
        if dataset is not None and config.num_classes is not None:
            classes = len(MMSEG_DATASETS[str(dataset)]["classes"])
            if config.num_classes != classes:
                raise ConfigError(
                    f"<num_classes> {config.num_classes}: {config.model} is mmsegmentation's configuration for "
                    f"{dataset}, whose {classes} classes it predicts"
                )
        overrides = config.model_overrides
        if not isinstance(overrides, dict):
            raise ConfigError(f"<model_overrides> must be a JSON object (a dict), got {type(overrides).__name__}")
        head = {k: v for k, v in overrides.items() if k in SEGMENT_HEAD_OPTIONS}
        kind = SEGMENTER_CONFIGS[config.model]["head"]
        foreign = sorted(set(head) - set(HEAD_OPTIONS[kind]))
        if foreign:
            raise ConfigError(
                f"<model_overrides>: {', '.join(foreign)} not an option of {config.model}, whose head "
                f"({'UPerNet' if kind == 'uper' else 'FPN'}) takes {', '.join(HEAD_OPTIONS[kind])}"
            )
        for key in ("neck_channels", "head_channels", "aux_channels", "num_groups"):
            if key in head and (not isinstance(head[key], int) or isinstance(head[key], bool) or head[key] < 1):
                raise ConfigError(f"<model_overrides>: {key} must be an integer >= 1, got {head[key]!r}")
        weight = head.get("aux_weight", 0.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight < float("inf"):
            raise ConfigError(f"<model_overrides>: aux_weight must be a number >= 0, got {weight!r}")
        if "test_cfg" in head:
            try:
                check_test_cfg(head["test_cfg"])
            except ValueError as err:
                raise ConfigError(f"<model_overrides>: {err}") from None
        if "norm" in head and head["norm"] not in (None, "gn", "bn"):
            raise ConfigError(f"<model_overrides>: norm must be null, \"gn\" or \"bn\", got {head['norm']!r}")
        rate = head.get("dropout_ratio", 0.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"<model_overrides>: dropout_ratio must be a number in [0, 1), got {rate!r}")
        cfg = {**SEGMENTER_CONFIGS[config.model], **head}
        for key in ("head_channels", "aux_channels"):
            if cfg["norm"] == "gn" and key in cfg and cfg[key] % cfg["num_groups"]:
                raise ConfigError(
                    f"<model_overrides>: {key} ({cfg[key]}) must be divisible by num_groups ({cfg['num_groups']}) for GroupNorm"
                )
        backbone = SEGMENTER_CONFIGS[config.model]["backbone"]
        assert backbone in MODEL_CONFIGS
        rest = {k: v for k, v in overrides.items() if k not in SEGMENT_HEAD_OPTIONS}
        _check_overrides(backbone, rest, config.batch_size)

    def create_model(self, config: TrainConfig, train_set: Dataset | SegmentationImages) -> Module:
        head = {k: v for k, v in config.model_overrides.items() if k in SEGMENT_HEAD_OPTIONS}
        backbone = {k: v for k, v in config.model_overrides.items() if k not in SEGMENT_HEAD_OPTIONS}
        channels = train_set.channels if isinstance(train_set, SegmentationImages) else train_set.images.shape[1]
        return create_segmenter(
            config.model,
            num_classes=train_set.num_classes,
            seed=config.seed,
            dtype=np.float32,
            backbone_kwargs={**backbone, "in_chans": channels, "drop_path_rate": config.drop_path},
            **head,
        )

    def evaluation_data(self, config: TrainConfig, split: str) -> Dataset | SegmentationImages:
        """mmsegmentation's configurations (``*_ade20k``) on a folder: its test pipeline, every image at
        its own size (:class:`~twins_np.data.segmentation.SegmentationImages`) with the dataset's classes,
        ``reduce_zero_label`` and test scale; anything else: the training's data (:func:`load_split`)."""
        dataset = SEGMENTER_CONFIGS[config.model].get("dataset")
        if dataset is None or not config.data.startswith("folder:"):
            return load_split(config, split)
        settings = MMSEG_DATASETS[str(dataset)]
        root = Path(config.data[len("folder:") :])
        classes = None if (root / "classes.txt").is_file() else settings["classes"]
        data = load_segmentation_images(
            root, split, classes, bool(settings["reduce_zero_label"]) or config.reduce_zero_label, None, settings["scale"]
        )
        limit = config.limit_train if split == "train" else config.limit_test
        return data if limit is None or limit >= len(data) else data.subset(np.arange(limit))

    def meter(self, dataset: Dataset) -> _SegmentMeter:
        return _SegmentMeter(dataset.num_classes, IGNORE_INDEX if dataset.ignore_index is None else dataset.ignore_index)

    def evaluate(
        self,
        model: Module,
        dataset: Dataset | SegmentationImages,
        batch_size: int,
        device: str,
        label_smoothing: float,
        check_finite: bool = False,
    ) -> SegmentationEvalResult:
        if isinstance(dataset, SegmentationImages):  # one image at a time, each at its own size
            return evaluate_segmenter_images(model, dataset, device, check_finite, label_smoothing)
        return evaluate_segmenter(model, dataset, batch_size, device, label_smoothing, check_finite)

    def evaluation_summary(
        self, result: SegmentationEvalResult, dataset: Dataset | SegmentationImages
    ) -> tuple[str, dict[str, Any]]:
        """mmsegmentation's scores: pixel accuracy, mIoU, mAcc, and the per-class IoU table
        (mmsegmentation's own printout for its test pipeline)."""
        scores = result.scores

        def number(v: float) -> float | None:
            return None if np.isnan(v) else float(v)

        if isinstance(dataset, SegmentationImages):
            text = format_mmseg_tables(scores, list(dataset.classes)) + f"\npixel cross-entropy {result.loss:.4f}"
        else:
            text = (
                f"pixel accuracy {100 * result.pixel_accuracy:.2f}%, mIoU {100 * result.miou:.2f}%, mAcc "
                f"{100 * scores['macc']:.2f}%, pixel cross-entropy {result.loss:.4f}\n\n"
                "per-class IoU (intersections and unions summed over the split; 'absent': neither labelled nor predicted,\n"
                "left out of the mIoU):\n" + format_iou_table(scores, list(dataset.classes))
            )
        report = {
            "pixel_accuracy": result.pixel_accuracy,
            "miou": number(result.miou),
            "macc": number(scores["macc"]),
            "loss": number(result.loss),
            "iou": {c: number(v) for c, v in zip(dataset.classes, scores["iou"])},
            "accuracy": {c: number(v) for c, v in zip(dataset.classes, scores["acc"])},
            "area_intersect": scores["area_intersect"].tolist(),
            "area_union": scores["area_union"].tolist(),
            "area_pred": scores["area_pred"].tolist(),
            "area_label": scores["area_label"].tolist(),
        }
        return text, report

    def test_row(self, result: SegmentationEvalResult) -> dict[str, float]:
        return {
            "test_loss": result.loss,
            "test_pixel_acc": result.pixel_accuracy,
            "test_miou": result.miou,
            "test_macc": result.scores["macc"],
        }

    def epoch_line(self, row: dict[str, Any], epochs: int) -> str:
        return (
            f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} pixel acc {100 * row['train_pixel_acc']:5.1f}% "
            f"mIoU {100 * row['train_miou']:5.1f}%  test loss {row['test_loss']:.4f} pixel acc "
            f"{100 * row['test_pixel_acc']:5.1f}% mIoU {100 * row['test_miou']:5.1f}%  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f} s  {row['images_per_s']:.0f} img/s"
        )

    def plot_result(
        self, result: SegmentationEvalResult, dataset: Dataset, out_dir: Path, title: str, suffix: str = ""
    ) -> list[Path]:
        """After every epoch: per-class IoU bars and the overlays of the first test images (bars only for
        images at their own sizes)."""
        bars = plot_class_iou(result.scores["iou"], dataset.classes, out_dir / f"class_iou{suffix}.png", title=title)
        if isinstance(dataset, SegmentationImages):
            return [bars]
        n = len(result.preds)
        grid = plot_segmentation_grid(
            dataset.images[:n],
            result.labels,
            result.preds,
            dataset.classes,
            out_dir / f"overlays{suffix}.png",
            dataset.mean,
            dataset.std,
            ignore_index=IGNORE_INDEX if dataset.ignore_index is None else dataset.ignore_index,
        )
        return [bars, grid]


# the two tasks of a training run, by TrainConfig.task (not the course's assignment tasks)
TRAINING_TASKS: dict[str, Task] = {"classify": ClassifyTask(), "segment": SegmentTask()}


def validate_config(config: TrainConfig) -> None:
    """Check every setting of a run: the fields on their own, then what the task needs of them.

    The one place that joins :meth:`TrainConfig.check_fields` and the task's checks.

    Raises:
        ConfigError: naming the first bad setting by its field (``<field>`` in the template,
            so the command line can name its flag instead).
    """
    if config.task not in TRAINING_TASKS:
        raise ConfigError(f"<task> must be one of {', '.join(TRAINING_TASKS)}, got {config.task!r}")
    config.check_fields()
    TRAINING_TASKS[config.task].check(config)  # model, data and model overrides

