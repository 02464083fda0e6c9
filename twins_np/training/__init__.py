"""Training Twins models on the twins-np datasets: the loop, checkpoints and metrics.

Typical use (what ``twins-np train`` does)::

    from twins_np.training import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(model="twins_svt_teach32", data="digits", epochs=10), "runs/digits")
    history = trainer.fit()                     # one metric dict per epoch
    trainer = Trainer.resume("runs/digits")     # after an interruption: continue bit for bit

See :mod:`twins_np.training.trainer` for the update rule and the files written.
"""

from .checkpoint import (
    RUN_RECORD_FORMAT,
    atomic_write,
    load_checkpoint,
    read_run_record,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    save_npz,
)
from .config import ConfigError, SettingsMessage, TrainConfig
from .metrics import (
    METRIC_COLUMNS,
    confusion_matrix,
    format_confusion_matrix,
    per_class_accuracy,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_predictions,
    read_metrics,
    write_metrics,
)
from .outdir import (
    OutDirBusyError,
    OutDirError,
    check_out_dir,
    check_output_files,
    claim_out_dir,
    clear_outputs,
    earlier_outputs,
    remove_leftovers,
    writing_into,
)
from .segmentation_metrics import SegmentationMetrics, plot_class_iou, plot_segmentation_grid
from .tasks import (
    SEGMENT_METRIC_COLUMNS,
    TRAINING_TASKS,
    EvalResult,
    SegmentationEvalResult,
    default_augment,
    evaluate_model,
    evaluate_segmenter,
    evaluate_segmenter_images,
    load_split,
    validate_config,
)
from .trainer import CHECKPOINT_NAME, WEIGHTS_NAME, NonFiniteLossError, Trainer, blas_threads

__all__ = [
    "SEGMENT_METRIC_COLUMNS",
    "TRAINING_TASKS",
    "ConfigError",
    "SettingsMessage",
    "validate_config",
    "SegmentationEvalResult",
    "SegmentationMetrics",
    "evaluate_segmenter",
    "evaluate_segmenter_images",
    "plot_class_iou",
    "plot_segmentation_grid",
    "CHECKPOINT_NAME",
    "WEIGHTS_NAME",
    "METRIC_COLUMNS",
    "OutDirBusyError",
    "OutDirError",
    "RUN_RECORD_FORMAT",
    "check_out_dir",
    "check_output_files",
    "claim_out_dir",
    "clear_outputs",
    "earlier_outputs",
    "read_run_record",
    "remove_leftovers",
    "EvalResult",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "atomic_write",
    "blas_threads",
    "confusion_matrix",
    "default_augment",
    "evaluate_model",
    "format_confusion_matrix",
    "load_checkpoint",
    "load_split",
    "per_class_accuracy",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_predictions",
    "read_metrics",
    "restore_rng_states",
    "rng_states",
    "save_checkpoint",
    "save_npz",
    "write_metrics",
    "writing_into",
]
