"""The training loop: AdamW, a per-update cosine schedule, clipping, checkpoints, metrics.

Notation: B batch size, E epochs, S steps (updates) per epoch, K classes.

One loop trains both a classifier (``task="classify"``: a Twins model, one class per
image) and a segmenter (``task="segment"``: a Semantic FPN :class:`~twins_np.models.Segmenter`,
one class per pixel, 255 ignored); what differs between the two (the model, the data,
the scores counted per epoch, the figures) is a :class:`~twins_np.training.tasks.Task`.

One update, as DeiT/Twins train (and as :mod:`twins_np.optim` documents)::

    lr = schedule.step(optimizer)         # linear warm-up, then cosine, per update
    optimizer.zero_grad()
    loss, logits = model.loss(x, y, label_smoothing)
    model.backward_loss()                 # fills every parameter's .grad
    clip_grad_norm(params, clip_grad)     # global 2-norm
    optimizer.step()                      # AdamW, no decay on biases, norms, PEG

After every epoch the test split is evaluated, the metric files and the learning
curves are rewritten, and a checkpoint is saved atomically (see
:mod:`twins_np.training.checkpoint`). Everything random depends only on the seed:
the model's initial weights and its dropout / drop-path generators (``seed``), the
data order and augmentation (``(seed, epoch, batch)``, see
:class:`twins_np.data.DataLoader`). So a run resumed from a checkpoint gives the same
weights, bit for bit on the CPU, as one that was never interrupted.

A segmentation batch in which every pixel is ignored (an all-background label map with
``reduce_zero_label``) has no loss to follow: it is skipped, as evaluation skips it (the
schedule moves on, the weights do not), each epoch logs how many were, and the first
time names the image; a training split without any labelled pixel is refused before any
work. A non-finite loss or gradient norm stops training at once with
:class:`NonFiniteLossError`; no checkpoint is written in that epoch, so the last
good one stays as it was. Only a checkpoint of this run (written by it, or the one it
resumed from) is ever called the last good one, never another run's file in the folder.

Output directory::

    checkpoint.npz         after every epoch: weights, optimizer, schedule, loader, RNGs
    metrics.csv / .json    one row per epoch (columns: metrics.METRIC_COLUMNS, or
                           tasks.SEGMENT_METRIC_COLUMNS for a segmenter)
    learning_curves.png    loss and accuracy (a segmenter: mIoU) against the epoch, train and test
    weights.npz            at the end: the model's state dict only (timm's names)
    confusion_matrix.png   classifier, at the end: on the test split
    class_iou.png          segmenter, after every epoch: per-class IoU on the test split
    overlays.png           segmenter, after every epoch: image / ground truth / prediction
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..backend import cpu_kernel_threads, cupy_available, synchronize
from ..data import DataLoader, Dataset
from ..optim import AdamW, CosineSchedule, clip_grad_norm, param_groups
from .checkpoint import load_checkpoint, restore_rng_states, save_checkpoint, save_npz
from .config import ConfigError, SettingsMessage, TrainConfig
from .metrics import write_metrics
from .outdir import writing_into
from .tasks import (
    TRAINING_TASKS,
    EvalResult,
    SegmentationEvalResult,
    Task,
    default_augment,
    load_split,
    validate_config,
)

__all__ = ["CHECKPOINT_NAME", "WEIGHTS_NAME", "NonFiniteLossError", "Trainer", "blas_threads", "likely_cause"]

CHECKPOINT_NAME = "checkpoint.npz"
WEIGHTS_NAME = "weights.npz"


# what a NaN stop advises when no setting stands out
GENERIC_CAUSE = "Try a lower <lr>, a longer <warmup_epochs>, or keep <clip_grad> on."

# AdamW peaks above this are far beyond what transformers train with (Twins: 5e-4 to 1e-3)
_HIGH_LR = 0.1


def likely_cause(config: TrainConfig) -> str:
    """The setting that most likely made training non-finite, as advice naming it ``<field>``.

    AdamW's decoupled decay multiplies every decayed weight by ``1 - lr * wd`` at each
    update: from ``lr * wd >= 1`` on, that factor is <= 0 and the weights flip sign or grow
    without bound, whatever the gradients do, so the decay is named, not the learning rate
    alone. Otherwise a learning rate far above the usual range is named, then clipping
    turned off, else the usual remedies.
    """
    decay = config.lr * config.weight_decay
    if decay >= 1.0:
        return (
            f"With <weight_decay> {config.weight_decay:g} and <lr> {config.lr:g}, AdamW multiplies every decayed weight "
            f"by 1 - lr * weight_decay = {1.0 - decay:g} at each update: lower <weight_decay> (0.05 is usual) so that "
            "lr * weight_decay is far below 1."
        )
    if config.lr >= _HIGH_LR:
        return f"A peak <lr> of {config.lr:g} is far above AdamW's usual 1e-4 to 1e-3: lower <lr>."
    if config.clip_grad == 0:
        return (
            "Gradient clipping is off (<clip_grad> 0): turn it on (5 is usual), or try a lower <lr> or a longer "
            "<warmup_epochs>."
        )
    return GENERIC_CAUSE


class NonFiniteLossError(SettingsMessage, RuntimeError):
    """The loss (or the gradient norm, or a weight) became NaN or infinite.

    The message names the setting that most likely caused it by its field (``lr``,
    ``weight_decay``: see :func:`likely_cause`), or the data when the batch's images hold
    NaN/Inf; the command line re-renders it with its flags (:meth:`SettingsMessage.spelled`).

    Attributes:
        epoch: the epoch (1-based) in which it happened.
        step: the update (1-based) within that epoch; 0 when found after the epoch.
        checkpoint: the last good checkpoint (left untouched), or None if there is none yet.
    """

    def __init__(
        self,
        what: str,
        value: float,
        epoch: int,
        step: int,
        steps: int,
        checkpoint: Path | None,
        last_epoch: int,
        cause: str = GENERIC_CAUSE,
    ):
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint
        where = f"epoch {epoch}, step {step}/{steps}" if step else f"the end of epoch {epoch}"
        if checkpoint is None:
            kept = "No checkpoint had been written yet (this was the first epoch of the run)."
        else:
            kept = f"The last good checkpoint, {checkpoint} (after epoch {last_epoch}), was left untouched."
        self.template = (
            f"training stopped: the {what} is {value} at {where}. {kept} {cause}"
        )
        super().__init__(self.spelled(lambda field: field))


def _check_some_labelled_pixel(config: TrainConfig, train_set: Dataset) -> None:
    """Refuse training data in which every pixel is ignored: no epoch could teach anything.

    Single batches without a labelled pixel are skipped while training; a whole split of
    them is an error, raised before any work.
    """
    ignore = train_set.ignore_index
    if ignore is None or bool((train_set.labels != ignore).any()):
        return
    zero = " (<reduce_zero_label> ignores label 0, and these label maps hold nothing else)" if config.reduce_zero_label else ""
    raise ConfigError(
        f"<data> {config.data}: every pixel of the {len(train_set)} training images is ignored ({ignore}){zero}, so no "
        "batch has a pixel to learn from"
    )


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit the BLAS library and the CPU kernels to ``n`` threads inside the block (None: leave them alone).

    On a machine whose cores are busy with other work, BLAS worker threads that wait
    for a core can make the many small matrix products of a training step several
    times slower; one thread is then faster. Uses ``threadpoolctl`` (installed with
    scikit-learn) for BLAS and :func:`twins_np.backend.cpu_kernel_threads` for the fused
    CPU kernels, so the two never ask for more cores than ``n``.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as err:  # pragma: no cover - scikit-learn brings it
        raise RuntimeError("limiting the BLAS threads needs the threadpoolctl package: pip install threadpoolctl") from err
    kernel_threads = cpu_kernel_threads()
    cpu_kernel_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        cpu_kernel_threads(kernel_threads)


# --- the trainer ------------------------------------------------------------------------------


class Trainer:
    """Train a Twins model or a segmenter on one of the twins-np datasets (see the module docstring).

    Args:
        config: the run's settings (validated here).
        out_dir: directory for the checkpoint, metrics, figures and weights (created).
        train_set, test_set: datasets to use instead of loading ``config.data``
            (their channels and classes then define the model).
        progress: show tqdm bars; None shows them only on a terminal.
        log: called with one summary line per epoch (None: silent).

    Attributes:
        task: the :class:`~twins_np.training.tasks.Task` of ``config.task``.
        model, optimizer, schedule, loader: the training objects.
        epoch: number of finished epochs.
        history: one metric dict per finished epoch.

    Raises:
        ValueError: for a bad config. RuntimeError: ``device="gpu"`` without a GPU.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        train_set: Dataset | None = None,
        test_set: Dataset | None = None,
        progress: bool | None = None,
        log: Callable[[str], None] | None = print,
    ) -> None:
        validate_config(config)
        if config.device == "gpu" and not cupy_available():
            raise RuntimeError("device='gpu' needs CuPy and a CUDA GPU, and none was found")
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.log = log
        self.train_set = train_set if train_set is not None else load_split(config, "train")
        self.test_set = test_set if test_set is not None else load_split(config, "test")
        self.task: Task = TRAINING_TASKS[config.task]
        for split, data in (("train", self.train_set), ("test", self.test_set)):
            if data.is_segmentation != (config.task == "segment"):
                kind = "per-pixel labels" if data.is_segmentation else "one label per image"
                raise ValueError(f"the {split} set {data.name} has {kind}, which task={config.task!r} cannot train on")
        _check_some_labelled_pixel(config, self.train_set)
        self.model: Any = self.task.create_model(config, self.train_set)
        self.model.to_device(config.device)
        self.optimizer = AdamW(param_groups(self.model, config.weight_decay), lr=config.lr)
        self.loader = DataLoader(
            self.train_set,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            augment=default_augment(config.data) if config.augment else None,
            device=config.device,
        )
        steps = len(self.loader)
        self.schedule = CosineSchedule(
            config.lr,
            total_steps=config.epochs * steps,
            warmup_steps=int(round(config.warmup_epochs * steps)),
            warmup_lr=min(config.warmup_lr, config.lr),
            min_lr=min(config.min_lr, config.lr),
        )
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.last_eval: EvalResult | SegmentationEvalResult | None = None
        # batches of the last epoch whose every pixel is ignored (skipped, as evaluation skips them)
        self.skipped_batches = 0
        self._skip_named = False  # whether the first skipped batch's image was named (once per run)
        self._first_skipped, self._first_skipped_step = "", 0
        # whether checkpoint_path holds this run's state (saved by it or resumed from)
        self._checkpoint_is_ours = False

    # -- resume ------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @classmethod
    def resume(cls, out_dir: str | Path, device: str | None = None, **kwargs: Any) -> Trainer:
        """A trainer restored from ``out_dir/checkpoint.npz``, ready to continue with :meth:`fit`.

        Args:
            out_dir: the run's directory.
            device: run on another device than the saved run (None: the same).
            **kwargs: passed to the constructor (``progress``, ``log``, datasets).

        Raises:
            FileNotFoundError: if there is no checkpoint; ValueError: if it does not fit.
        """
        ckpt = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
        config = TrainConfig.from_dict(ckpt["config"])
        if device is not None:
            config.device = device
        trainer = cls(config, out_dir, **kwargs)
        trainer.load_state(ckpt)
        return trainer

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore the state read by :func:`~twins_np.training.checkpoint.load_checkpoint`."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.loader.load_state_dict({key: int(v) for key, v in ckpt["loader"].items()})
        restore_rng_states(self.model, ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self._checkpoint_is_ours = True

    def save_checkpoint(self) -> Path:
        """Atomically write ``checkpoint.npz`` with the state after ``self.epoch`` epochs."""
        path = save_checkpoint(
            self.checkpoint_path,
            epoch=self.epoch,
            config=self.config.to_dict(),
            model=self.model,
            optimizer=self.optimizer,
            schedule=self.schedule,
            loader=self.loader,
            history=self.history,
        )
        self._checkpoint_is_ours = True
        return path

    # -- loops -------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are done, then write the final files.

        Args:
            stop_after: run at most this many epochs in this call (the run can be
                continued later with :meth:`resume`); None runs to the end.

        Returns:
            the history, one metric dict per epoch.

        Raises:
            NonFiniteLossError: when the loss, the gradient norm or a weight is not finite.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        done = 0
        while self.epoch < self.config.epochs and (stop_after is None or done < stop_after):
            self.run_epoch()
            done += 1
        if self.epoch >= self.config.epochs:
            self.finish()
        return self.history

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate the test split, save the checkpoint and the metrics."""
        start = time.perf_counter()
        train_loss, train_scores, train_seconds, images = self.train_epoch()
        result = self.evaluate(self.test_set)
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            **train_scores,
            **self.task.test_row(result),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
            "images_per_s": images / max(train_seconds, 1e-9),
        }
        self.history.append(row)
        self.last_eval = result
        with writing_into(self.out_dir):
            self.save_checkpoint()
            write_metrics(self.out_dir, self.history, self.task.columns)
            eps = self.config.label_smoothing
            loss = "pixel cross-entropy" if self.config.task == "segment" else "cross-entropy"
            loss_label = f"{loss} (label smoothing {eps:g})" if eps else loss
            self.task.plot_epoch(self.history, self.out_dir, self._title(), loss_label)
            if self.config.task == "segment":  # cheap next to an epoch, and a stopped run keeps its picture
                self.task.plot_result(result, self.test_set, self.out_dir, self._title("test"))
        if self.log is not None:
            self.log(self.task.epoch_line(row, self.config.epochs))
            if self.skipped_batches:
                self.log(self.skip_note(self.epoch))
        return row

    def train_epoch(self) -> tuple[float, dict[str, float], float, int]:
        """One pass over the training split.

        Returns:
            mean training loss (over images), the training scores (on the augmented
            batches, in training mode: ``{"train_acc"}``, or ``{"train_pixel_acc",
            "train_miou"}`` for a segmenter), seconds spent, number of images.
        """
        cfg, model = self.config, self.model
        params = model.parameters()
        max_norm = cfg.clip_grad if cfg.clip_grad > 0 else math.inf
        steps = len(self.loader)
        epoch = self.epoch + 1
        model.train()
        loss_sum, seen = 0.0, 0
        ignore = self.train_set.ignore_index  # None for one label per image
        self.skipped_batches, self._first_skipped = 0, ""  # counted afresh every epoch
        meter = self.task.meter(self.train_set)
        disable = None if self.progress is None else not self.progress  # None: only on a terminal
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=disable, leave=False)
        start = time.perf_counter()
        try:
            # Over/underflow warnings are silenced on purpose: non-finite values are
            # caught explicitly below and reported with the epoch and step.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                for step, (x, y) in enumerate(self.loader, 1):
                    lr = self.schedule.step(self.optimizer)
                    if ignore is not None and not bool((y != ignore).any()):
                        # no pixel to learn from (an all-background label map with reduce_zero_label):
                        # the mean loss over zero pixels is undefined, so the batch is skipped, as
                        # evaluation skips it; the schedule moves on, the weights do not
                        self._skipped(step)
                        bar.update(1)
                        continue
                    self.optimizer.zero_grad()
                    loss, logits = model.loss(x, y, cfg.label_smoothing)  # either model: (x, labels, smoothing)
                    if not math.isfinite(loss):
                        raise self._non_finite("loss", loss, epoch, step, steps, x)
                    model.backward_loss()
                    norm = clip_grad_norm(params, max_norm)
                    if not math.isfinite(norm):
                        raise self._non_finite("gradient norm", norm, epoch, step, steps)
                    self.optimizer.step()
                    n = int(y.shape[0])
                    seen += n
                    loss_sum += loss * n
                    meter.update(logits, y)
                    bar.update(1)
                    if not bar.disable:
                        rate = seen / max(time.perf_counter() - start, 1e-9)
                        bar.set_postfix(loss=f"{loss:.3f}", **meter.postfix(), lr=f"{lr:.1e}", img_s=f"{rate:.0f}")
            synchronize()
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if seen == 0:  # cannot happen after _check_some_labelled_pixel; a clear stop if it ever does
            raise ValueError(f"every batch of epoch {epoch} was skipped: no training image has a labelled pixel")
        # The last update of the epoch could still have broken a weight; the next loss
        # would show it, but only after a bad checkpoint had been written.
        bad = [name for name, p in model.named_parameters() if not bool(model.xp.isfinite(p.data).all())]
        if bad:
            raise self._non_finite(f"weight {bad[0]}", math.nan, epoch, 0, steps)
        return loss_sum / seen, meter.row(), seconds, seen

    def evaluate(self, dataset: Dataset, batch_size: int | None = None) -> Any:
        """Loss and scores on ``dataset`` in eval mode (no dropout, no drop path).

        Returns an :class:`EvalResult` (accuracy, predictions) for a classifier, a
        :class:`SegmentationEvalResult` (pixel accuracy, IoUs, mIoU) for a segmenter.

        Args:
            dataset: the split to evaluate, in its order.
            batch_size: images per forward (default: twice the training batch).
        """
        cfg = self.config
        return self.task.evaluate(self.model, dataset, batch_size or 2 * cfg.batch_size, cfg.device, cfg.label_smoothing)

    def finish(self) -> None:
        """Write ``weights.npz`` and the test split's figures (``confusion_matrix.png``;
        a segmenter: ``class_iou.png`` and ``overlays.png``).

        ``weights.npz`` holds the model's state dict only (what :func:`twins_np.load_weights`
        reads) and records the run's settings in the archive's comment
        (:func:`~twins_np.training.checkpoint.read_run_record`): ``twins-np evaluate`` and
        ``twins-np predict`` then rebuild the model without ``--model``.
        """
        with writing_into(self.out_dir):
            save_npz(self.out_dir / WEIGHTS_NAME, self.model.state_dict(), record={"config": self.config.to_dict()})
        result = self.last_eval if self.last_eval is not None else self.evaluate(self.test_set)
        self.last_eval = result
        with writing_into(self.out_dir):
            self.task.plot_result(result, self.test_set, self.out_dir, self._title("test"))

    # -- helpers -----------------------------------------------------------------------------
    def _skipped(self, step: int) -> None:
        """Count a skipped batch; remember the first one's image (its file, else its index)."""
        self.skipped_batches += 1
        if not self._first_skipped:
            idx = self.loader.last_indices
            i = int(idx[0]) if idx is not None and len(idx) else -1
            files = self.train_set.files
            self._first_skipped = files[i] if files is not None and i >= 0 else f"training image {i}"
            self._first_skipped_step = step

    def skip_note(self, epoch: int) -> str:
        """One line about the batches the last :meth:`train_epoch` skipped (every pixel ignored);
        the first time, it names the first such batch's image (its file for folder data)."""
        ignore = self.train_set.ignore_index
        line = (
            f"note: epoch {epoch} skipped {self.skipped_batches} of {len(self.loader)} batches in which every pixel "
            f"is ignored ({ignore}), as evaluation does"
        )
        if not self._skip_named:
            self._skip_named = True
            zero = " (reduce_zero_label ignores label 0)" if self.config.reduce_zero_label else ""
            line += (
                f"; the first (step {self._first_skipped_step}) holds {self._first_skipped}, whose labels are all "
                f"ignored{zero}"
            )
        return line


    def _title(self, split: str = "") -> str:
        parts = [self.config.model, self.config.data] + ([split] if split else [])
        return " / ".join(parts)

    def _non_finite(self, what: str, value: float, epoch: int, step: int, steps: int, x: Any = None) -> NonFiniteLossError:
        ckpt = self.checkpoint_path if self._checkpoint_is_ours and self.checkpoint_path.is_file() else None
        cause = likely_cause(self.config)
        if x is not None:  # NaN or Inf in the images makes the loss NaN at any setting: the data is to blame
            bad = int((~self.model.xp.isfinite(x)).sum())
            if bad:
                cause = f"The batch's images hold {bad} NaN or infinite value(s): the data is broken, not the settings."
        return NonFiniteLossError(what, value, epoch, step, steps, ckpt, self.epoch, cause)

