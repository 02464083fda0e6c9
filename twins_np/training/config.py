"""The settings of a training run, and the error that names a bad one.

:class:`TrainConfig` holds every setting (saved in the checkpoint as JSON) and checks those
that are bad on their own (:meth:`TrainConfig.check_fields`); what depends on the task (a
classifier or a segmenter: the model, the data, the model overrides) is checked in
:mod:`twins_np.training.tasks`, whose :func:`~twins_np.training.tasks.validate_config` joins
the two.

Errors name settings by their field (``batch_size``). A caller that spells them otherwise
(the command line: ``--batch-size``) re-renders the same message with
:meth:`SettingsMessage.spelled`: the library states facts, the command line turns them
into advice about its flags.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ConfigError", "SettingsMessage", "TrainConfig", "SETTING_NAMES", "FLOAT_SETTINGS", "MAX_IMAGE_SIZE"]

_SETTING = re.compile(r"<([a-z_]+)>")

# the settings that are real numbers: each must be finite (inf and nan are refused by name)
FLOAT_SETTINGS = ("lr", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "label_smoothing", "drop_path", "clip_grad")

# the largest image side a run may ask for: a 4096x4096 RGB image is 192 MiB as float32 on
# its own, and a model's activations are many times that; larger is refused, not tried
MAX_IMAGE_SIZE = 4096
# the most classes <num_classes> may ask for: label maps are 8- or 16-bit, so labels lie in [0, 65535]
MAX_CLASSES = 65536


class SettingsMessage:
    """A message whose settings are written ``<field>``: ``str()`` shows the field names,
    :meth:`spelled` the names a caller gives them (``--batch-size`` on the command line)."""

    template: str

    def spelled(self, name: Callable[[str], str]) -> str:
        """The message with every ``<field>`` of :data:`SETTING_NAMES` replaced by ``name(field)``."""
        return _SETTING.sub(lambda m: name(m.group(1)) if m.group(1) in SETTING_NAMES else m.group(0), self.template)


class ConfigError(SettingsMessage, ValueError):
    """A bad training setting; ``str(err)`` names it by its :class:`TrainConfig` field."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.spelled(lambda field: field))


@dataclass
class TrainConfig:
    """Every setting of a training run; saved in the checkpoint as JSON.

    Attributes:
        task: ``"classify"`` (one class per image) or ``"segment"`` (one per pixel).
        model: a name from :func:`twins_np.models.list_models` (classify) or
            :func:`twins_np.models.list_segmenters` (segment).
        model_overrides: config entries of that model to replace, e.g.
            ``{"depths": [1, 1, 1]}`` (JSON-serialisable); for a segmenter also the
            head's ``neck_channels`` (FPN), ``head_channels``, ``aux_channels`` and
            ``aux_weight`` (UPerNet), ``norm``, ``num_groups``, ``dropout_ratio``, ``test_cfg``.
        data: ``"digits"``, ``"cifar10"`` or ``"long-range"`` (classify);
            ``"shapes"``, ``"long_range_dense"`` or ``"folder:PATH"`` (segment); input
            channels and number of classes come from it.
        data_dir: where CIFAR-10 lies (unused by the other datasets).
        image_size: side of the images (None: the dataset's default, 32 for the
            classification sets, 64 for the segmentation sets); at most
            :data:`MAX_IMAGE_SIZE`.
        reduce_zero_label: ADE20K's convention for ``folder:PATH``: label 0 is ignored
            and every other label k becomes k - 1.
        num_classes: K for ``folder:PATH`` (the model's outputs), for a folder whose label
            maps do not show every class; None: from the folder's ``classes.txt``, else the
            largest label of both splits + 1. With a ``classes.txt`` it must equal its count.
        data_seed: seed of the digits train/test split and of the long-range draws;
            apart from ``seed`` so that runs with different seeds share one test set.
        epochs: E, number of passes over the training split.
        batch_size: B.
        lr: peak learning rate of AdamW. Every real-valued setting must be finite.
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
    num_classes: int | None = None
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

    def check_fields(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that is bad on its own.

        What depends on the task (model, data, model overrides) is checked by
        :func:`twins_np.training.tasks.validate_config`, which calls this first.
        """
        if self.image_size is not None and (
            not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1
        ):
            raise ConfigError(f"<image_size> must be an integer >= 1, got {self.image_size!r}")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            gib = 3 * 4 * self.image_size**2 / 2**30
            raise ConfigError(
                f"<image_size> {self.image_size} is larger than twins-np trains on (at most {MAX_IMAGE_SIZE} pixels a "
                f"side): one {self.image_size}x{self.image_size} RGB image alone is {gib:,.1f} GiB as float32, before "
                "any layer's activations"
            )
        k = self.num_classes
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_CLASSES):
            raise ConfigError(
                f"<num_classes> must be an integer from 1 to {MAX_CLASSES} (a label map holds at most 16-bit values), "
                f"got {self.num_classes!r}"
            )
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(f"<device> must be 'cpu' or 'gpu', got {self.device!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"<{name}> must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "data_seed"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"<{name}> must be >= 0, got {getattr(self, name)}")
        for name in FLOAT_SETTINGS:  # inf and nan pass `>= 0` checks (or fail them unclearly): refused by name
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"<{name}> must be a finite number, got {value!r}")
        if not self.lr > 0.0:
            raise ConfigError(f"<lr> must be > 0, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "clip_grad"):
            if not getattr(self, name) >= 0.0:
                raise ConfigError(f"<{name}> must be >= 0, got {getattr(self, name)}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"<warmup_epochs> ({self.warmup_epochs}) must not exceed <epochs> ({self.epochs})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"<label_smoothing> must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"<drop_path> must be in [0, 1), got {self.drop_path}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"<{name}> must be >= 1 (or None for all), got {value}")

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


# what <name> in a SettingsMessage may refer to: every TrainConfig field, and the run's folder
# (the Trainer's out_dir argument)
SETTING_NAMES = frozenset({*(f.name for f in dataclasses.fields(TrainConfig)), "out_dir"})
