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

A non-finite loss or gradient norm stops training at once with
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
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import cpu_kernel_threads, cupy_available, synchronize
from ..data import DataLoader, Dataset
from ..optim import AdamW, CosineSchedule, clip_grad_norm, param_groups
from .checkpoint import load_checkpoint, restore_rng_states, save_checkpoint, save_npz
from .metrics import write_metrics
from .outdir import writing_into
from .tasks import TASKS, EvalResult, SegmentationEvalResult, Task, default_augment, evaluate_model, load_split

__all__ = [
    "CHECKPOINT_NAME",
    "WEIGHTS_NAME",
    "TrainConfig",
    "Trainer",
    "EvalResult",
    "SegmentationEvalResult",
    "NonFiniteLossError",
    "default_augment",
    "load_split",
    "blas_threads",
    "evaluate_model",
]

# One wording, in every command, for a GPU asked for where there is none.
NO_GPU = (
    "--device gpu needs CuPy and a CUDA GPU, and none was found (pip install twins-np[gpu] on a machine "
    "with an NVIDIA GPU); use --device cpu"
)

CHECKPOINT_NAME = "checkpoint.npz"
WEIGHTS_NAME = "weights.npz"


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm, or a weight) became NaN or infinite.

    Attributes:
        epoch: the epoch (1-based) in which it happened.
        step: the update (1-based) within that epoch; 0 when found after the epoch.
        checkpoint: the last good checkpoint (left untouched), or None if there is none yet.
    """

    def __init__(self, what: str, value: float, epoch: int, step: int, steps: int, checkpoint: Path | None, last_epoch: int):
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint
        where = f"epoch {epoch}, step {step}/{steps}" if step else f"the end of epoch {epoch}"
        if checkpoint is None:
            kept = "No checkpoint had been written yet (this was the first epoch of the run)."
        else:
            kept = f"The last good checkpoint, {checkpoint} (after epoch {last_epoch}), was left untouched."
        super().__init__(
            f"training stopped: the {what} is {value} at {where}. {kept} "
            "Try a lower --lr, a longer --warmup-epochs, or keep --clip-grad on."
        )


@dataclass
class TrainConfig:
    """Every setting of a training run; saved in the checkpoint as JSON.

    Attributes:
        task: ``"classify"`` (one class per image) or ``"segment"`` (one per pixel).
        model: a name from :func:`twins_np.models.list_models` (classify) or
            :func:`twins_np.models.list_segmenters` (segment).
        model_overrides: config entries of that model to replace, e.g.
            ``{"depths": [1, 1, 1]}`` (JSON-serialisable); for a segmenter also the
            head's ``neck_channels``, ``head_channels``, ``norm``, ``num_groups``,
            ``dropout_ratio``.
        data: ``"digits"``, ``"cifar10"`` or ``"long-range"`` (classify);
            ``"shapes"``, ``"long_range_dense"`` or ``"folder:PATH"`` (segment); input
            channels and number of classes come from it.
        data_dir: where CIFAR-10 lies (unused by the other datasets).
        image_size: side of the images (None: the dataset's default, 32 for the
            classification sets, 64 for the segmentation sets).
        reduce_zero_label: ADE20K's convention for ``folder:PATH``: label 0 is ignored
            and every other label k becomes k - 1.
        data_seed: seed of the digits train/test split and of the long-range draws;
            apart from ``seed`` so that runs with different seeds share one test set.
        epochs: E, number of passes over the training split.
        batch_size: B.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled decay (not on biases, norms and the PEG).
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        warmup_lr: lr of the first update.
        min_lr: lr at the end of the cosine.
        label_smoothing: eps of the smoothed cross-entropy.
        drop_path: stochastic-depth rate of the last block (linear in depth).
        clip_grad: max global gradient norm; 0 turns clipping off.
        seed: seed of the weights, dropout and drop path, data order and augmentation.
        augment: random crop (digits: 2 px, CIFAR-10: 4 px + flips) or flips (long-range;
            the segmentation sets: image and label map flipped together).
        device: ``"cpu"`` or ``"gpu"``.
        limit_train: use only the first N training images (quick runs, tests).
        limit_test: use only the first N test images.
    """

    model: str = "twins_svt_teach32"
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: str = "digits"
    data_dir: str | None = None
    task: str = "classify"
    image_size: int | None = None
    reduce_zero_label: bool = False
    data_seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    clip_grad: float = 5.0
    seed: int = 0
    augment: bool = True
    device: str = "cpu"
    limit_train: int | None = None
    limit_test: int | None = None

    def validate(self, flags: bool = False) -> None:
        """Raise ``ValueError`` naming the first bad setting.

        Args:
            flags: name the settings as ``twins-np train`` spells them (``--batch-size``
                rather than ``batch_size``).
        """

        def n(field: str) -> str:
            return "--" + field.replace("_", "-") if flags else field

        if self.task not in TASKS:
            raise ValueError(f"{n('task')} must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.image_size is not None and (
            not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1
        ):
            raise ValueError(f"{n('image_size')} must be an integer >= 1, got {self.image_size!r}")
        TASKS[self.task].check(self, n)  # model, data and model overrides
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"{n('device')} must be 'cpu' or 'gpu', got {self.device!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{n(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "data_seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{n(name)} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0.0:
            raise ValueError(f"{n('lr')} must be > 0, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "clip_grad"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{n(name)} must be >= 0, got {getattr(self, name)}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"{n('warmup_epochs')} ({self.warmup_epochs}) must not exceed {n('epochs')} ({self.epochs})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"{n('label_smoothing')} must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"{n('drop_path')} must be in [0, 1), got {self.drop_path}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{n(name)} must be >= 1 (or None for all), got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}")
        return cls(**d)


# EvalResult, default_augment, load_split and evaluate_model live in .tasks and are
# re-exported from here, where they were first defined.


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
        raise RuntimeError("--threads needs the threadpoolctl package: pip install threadpoolctl") from err
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
        config.validate()
        if config.device == "gpu" and not cupy_available():
            raise RuntimeError(NO_GPU)
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.log = log
        self.train_set = train_set if train_set is not None else load_split(config, "train")
        self.test_set = test_set if test_set is not None else load_split(config, "test")
        self.task: Task = TASKS[config.task]
        for split, data in (("train", self.train_set), ("test", self.test_set)):
            if data.is_segmentation != (config.task == "segment"):
                kind = "per-pixel labels" if data.is_segmentation else "one label per image"
                raise ValueError(f"the {split} set {data.name} has {kind}, which task={config.task!r} cannot train on")
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
        return row

    def train_epoch(self) -> tuple[float, dict[str, float], float, int]:
        """One pass over the training split.

        Returns:
            mean training loss (over images), the training scores (on the augmented
            batches, in training mode: ``{"train_acc"}``, or ``{"train_pixel_acc",
            "train_miou"}`` for a segmenter), seconds spent, number of images.
        """
        from tqdm.auto import tqdm

        cfg, model = self.config, self.model
        params = model.parameters()
        max_norm = cfg.clip_grad if cfg.clip_grad > 0 else math.inf
        steps = len(self.loader)
        epoch = self.epoch + 1
        model.train()
        loss_sum, seen = 0.0, 0
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
                    self.optimizer.zero_grad()
                    loss, logits = self.task.loss(model, x, y, cfg.label_smoothing)
                    if not math.isfinite(loss):
                        raise self._non_finite("loss", loss, epoch, step, steps)
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
    def _title(self, split: str = "") -> str:
        parts = [self.config.model, self.config.data] + ([split] if split else [])
        return " / ".join(parts)

    def _non_finite(self, what: str, value: float, epoch: int, step: int, steps: int) -> NonFiniteLossError:
        ckpt = self.checkpoint_path if self._checkpoint_is_ours and self.checkpoint_path.is_file() else None
        return NonFiniteLossError(what, value, epoch, step, steps, ckpt, self.epoch)

