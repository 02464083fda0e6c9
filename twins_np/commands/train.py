"""``twins-np train``: train a Twins model on digits, CIFAR-10 or the long-range task, or
(``--task segment``) a Semantic FPN segmenter on shapes, the dense long-range set or a folder.

Exit codes: 0 when training finished (or stopped early on request), 1 when a NaN/Inf
stopped it, 2 for bad arguments or environment (argparse's errors too, a missing or
damaged file, a read-only or full disk, another run holding ``--out``).

Every option's default lives in :class:`twins_np.training.TrainConfig`; argparse gets
``None`` instead, so that with ``--resume`` the options given explicitly can be told
apart and compared with the saved run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# what to try when memory runs out (twins_np.cli names it after "out of memory")
OUT_OF_MEMORY = "try a smaller --batch-size or --image-size, or a smaller model (--model, --model-overrides)"

# option name (argparse dest) -> TrainConfig field, for the settings saved with the run
_CONFIG_OPTIONS = (
    "model",
    "model_overrides",
    "data",
    "data_dir",
    "data_seed",
    "task",
    "image_size",
    "reduce_zero_label",
    "num_classes",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "warmup_lr",
    "min_lr",
    "label_smoothing",
    "drop_path",
    "clip_grad",
    "seed",
    "augment",
    "limit_train",
    "limit_test",
)


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object such as ``'{"depths": [1, 1, 1]}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"depths\": [1, 1, 1]}}', got {text!r}")
    return value


def add_model_data_options(p: argparse.ArgumentParser, defaults: Any) -> None:
    """--model, --model-overrides, --data, --data-dir, --data-seed, --image-size, --reduce-zero-label,
    --num-classes (shared with ``evaluate``)."""
    from ..data import DATASETS
    from ..models import list_models, list_segmenters
    from ..training.tasks import SEGMENTATION_DATA
    from ._common import any_model_name, data_name

    names = ", ".join(list_models())
    p.add_argument(
        "--model",
        type=any_model_name,
        metavar="NAME",
        help=f"a classifier: {names} (default {defaults.model}); with --task segment a segmenter: "
        f"{', '.join(list_segmenters())}",
    )
    p.add_argument(
        "--model-overrides",
        type=json_object,
        metavar="JSON",
        help="replace entries of the model's config, e.g. '{\"depths\": [1, 1, 1]}' (keys: the arguments of "
        "twins_np.models.Twins except in_chans, num_classes, drop_path_rate, seed and dtype)",
    )
    p.add_argument(
        "--data",
        type=data_name,
        metavar="NAME",
        help=f"dataset; sets the input channels and classes: {', '.join(DATASETS)} (default {defaults.data}); with "
        f"--task segment {', '.join(SEGMENTATION_DATA)} (PATH holds images/NAME.jpg|png and annotations/NAME.png)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="where CIFAR-10's python archive (or its folder) lies")
    p.add_argument(
        "--data-seed", type=int, metavar="S", help=f"seed of the digits split / synthetic draws (default {defaults.data_seed})"
    )
    p.add_argument(
        "--image-size", type=int, metavar="S", help="image side (default: the dataset's; 32 classification, 64 segmentation)"
    )
    p.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        help="folder:PATH as ADE20K labels it: label 0 ('other') is ignored, every other label k becomes k - 1 (default off)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="folder:PATH: the model's K classes, for label maps that do not show every class (default: the count "
        "in PATH/classes.txt, else the largest label of both splits + 1)",
    )


def add_parser(sub: Any, name: str) -> None:
    from ..training import TrainConfig
    from ._common import finite_float as number  # inf and nan are refused

    d = TrainConfig()
    p = sub.add_parser(
        name,
        help="train a Twins model or segmenter (AdamW, cosine schedule, checkpoints, metrics, learning curves)",
        description="Train with AdamW (no weight decay on biases, norms and the PEG), a per-update cosine schedule with "
        "linear warm-up, gradient clipping, label smoothing and drop path. After every epoch the test split is "
        "evaluated and OUT/checkpoint.npz, OUT/metrics.csv, OUT/metrics.json and OUT/learning_curves.png are "
        "written; at the end OUT/weights.npz and OUT/confusion_matrix.png. With --task segment a segmenter learns "
        "one class per pixel: the metrics hold pixel accuracy and mIoU (mmsegmentation's sums), the curves show mIoU, "
        "and OUT/class_iou.png and OUT/overlays.png are rewritten after every epoch. OUT belongs to one run at a time (a "
        "second run into it is refused while the first runs). Exit codes: 0 ok, 1 stopped by a NaN/Inf, 2 bad "
        "arguments or environment (a missing or damaged file, a read-only or full disk).",
    )
    p.add_argument(
        "--task",
        choices=["classify", "segment"],
        help="classify: one class per image (default); segment: one class per pixel (a segmenter on segmentation data)",
    )
    add_model_data_options(p, d)
    p.add_argument("--epochs", type=int, metavar="N", help=f"passes over the training split (default {d.epochs})")
    p.add_argument("--batch-size", type=int, metavar="B", help=f"images per update (default {d.batch_size})")
    p.add_argument("--lr", type=number, metavar="LR", help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--weight-decay", type=number, metavar="WD", help=f"AdamW weight decay (default {d.weight_decay:g})")
    p.add_argument("--warmup-epochs", type=number, metavar="W", help=f"linear warm-up, in epochs (default {d.warmup_epochs:g})")
    p.add_argument("--warmup-lr", type=number, metavar="LR", help=f"lr of the first update (default {d.warmup_lr:g})")
    p.add_argument("--min-lr", type=number, metavar="LR", help=f"lr at the end of the cosine (default {d.min_lr:g})")
    p.add_argument("--label-smoothing", type=number, metavar="EPS", help=f"(default {d.label_smoothing:g})")
    p.add_argument("--drop-path", type=number, metavar="P", help=f"stochastic depth of the last block (default {d.drop_path:g})")
    p.add_argument(
        "--clip-grad", type=number, metavar="NORM", help=f"max global gradient norm, 0 = off (default {d.clip_grad:g})"
    )
    p.add_argument("--seed", type=int, metavar="S", help=f"seed of weights, dropout, data order, augmentation (default {d.seed})")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random crop (digits: 2 px, no flip; CIFAR-10: 4 px + flip) or flip (long-range; segmentation: image and "
        "labels together) (default on)",
    )
    p.add_argument("--device", choices=["cpu", "gpu"], help="where to train (default cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="BLAS threads (default: the library's; 1 helps on a busy machine)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUT/checkpoint.npz")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUT that holds an earlier run: its checkpoint, weights, metrics and figures are "
        "removed before the first epoch",
    )
    # quick runs and tests: a subset of the data, or an early stop that acts like an interruption
    p.add_argument("--limit-train", type=int, help=argparse.SUPPRESS)
    p.add_argument("--limit-test", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stop-after", type=int, metavar="N", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _error(args: argparse.Namespace, message: str) -> int:
    print(f"twins-np {args.command}: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ..training import (
        CHECKPOINT_NAME,
        TrainConfig,
        claim_out_dir,
        earlier_outputs,
        validate_config,
    )
    from ._common import check_device

    check_device(args.device)  # before anything touches the disk
    out = Path(args.out)
    given = {name: getattr(args, name) for name in _CONFIG_OPTIONS if getattr(args, name) is not None}
    checkpoint = out / CHECKPOINT_NAME
    if args.resume and args.overwrite:
        return _error(args, "--resume and --overwrite exclude each other")
    if args.threads is not None and args.threads < 1:
        return _error(args, f"--threads must be >= 1, got {args.threads}")
    if not args.resume:
        cfg = TrainConfig(**given, device=args.device or "cpu")
        validate_config(cfg)  # every setting checked before the folder is touched (a ConfigError names its flag)
    # The folder belongs to this run until it ends: a second run into it is refused.
    with claim_out_dir(out):
        if args.resume:
            if not checkpoint.is_file():
                return _error(args, f"--resume: no checkpoint at {checkpoint} (run without --resume to start)")
            from ..training import load_checkpoint

            saved = load_checkpoint(checkpoint)["config"]
            differ = [f"--{k.replace('_', '-')} {v!r} (saved: {saved.get(k)!r})" for k, v in given.items() if saved.get(k) != v]
            if differ:
                return _error(
                    args,
                    "--resume continues the saved run unchanged, but these options differ from it: "
                    + ", ".join(differ)
                    + "; drop them, or start a new run in another --out",
                )
        elif not args.overwrite:
            earlier = earlier_outputs(out)
            if checkpoint.is_file():
                return _error(
                    args,
                    f"{out} already holds a checkpoint: pass --resume to continue it, --overwrite to start afresh, "
                    "or choose another --out",
                )
            if earlier:
                return _error(
                    args,
                    f"{out} already holds an earlier run's files ({', '.join(p.name for p in earlier)}): pass --overwrite "
                    "to remove them and start afresh, or choose another --out",
                )
        return _train(args, out, given)


def _train(args: argparse.Namespace, out: Path, given: dict[str, Any]) -> int:
    from ..training import NonFiniteLossError, TrainConfig, Trainer, blas_threads, clear_outputs
    from ._common import flag, reading_data

    start = time.perf_counter()
    with blas_threads(args.threads):
        if args.resume:
            with reading_data(args.data_dir, args.command):
                trainer = Trainer.resume(out, device=args.device)
            cfg = trainer.config
            print(f"resuming {out} after epoch {trainer.epoch}/{cfg.epochs}")
        else:
            cfg = TrainConfig(**given, device=args.device or "cpu")
            with reading_data(cfg.data_dir, args.command):
                trainer = Trainer(cfg, out)  # loads the data and builds the model: nothing written yet
            if args.overwrite:
                removed = clear_outputs(out)
                if removed:
                    print(f"--overwrite: removed the earlier run's {', '.join(p.name for p in removed)} from {out}")
        size = "x".join(str(v) for v in trainer.train_set.images.shape[2:])
        pixels = f"{size} pixels, " if cfg.task == "segment" else ""
        print(
            f"training {cfg.model} on {cfg.data} ({len(trainer.train_set)} train / {len(trainer.test_set)} test images, "
            f"{pixels}{trainer.train_set.images.shape[1]} channel(s), {trainer.train_set.num_classes} classes) on {cfg.device}: "
            f"{cfg.epochs} epochs of {len(trainer.loader)} steps, batch {cfg.batch_size}, lr {cfg.lr:g}"
        )
        try:
            history = trainer.fit(stop_after=args.stop_after)
        except NonFiniteLossError as err:
            print(f"twins-np {args.command}: {err.spelled(flag)}", file=sys.stderr)
            return 1
    seconds = time.perf_counter() - start
    if not history:
        print("nothing to do")
        return 0
    last = history[-1]
    finished = trainer.epoch >= cfg.epochs
    status = "finished" if finished else f"stopped after epoch {trainer.epoch}/{cfg.epochs} (continue with --resume)"
    if cfg.task == "segment":
        score = f"test mIoU {100 * last['test_miou']:.2f}%, pixel accuracy {100 * last['test_pixel_acc']:.2f}%"
    else:
        score = f"test accuracy {100 * last['test_acc']:.2f}%"
    print(f"{status}: {score}, test loss {last['test_loss']:.4f} after epoch {last['epoch']} ({seconds:.1f} s in this call)")
    files = ["checkpoint.npz", "metrics.csv", "metrics.json", "learning_curves.png"]
    if cfg.task == "segment":
        files += ["class_iou.png", "overlays.png"]
    if finished:
        files += ["weights.npz"] + ([] if cfg.task == "segment" else ["confusion_matrix.png"])
    print(f"files in {out}: {', '.join(files)}")
    return 0
