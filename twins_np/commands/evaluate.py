"""``twins-np evaluate``: accuracy, per-class accuracy and confusion matrix of trained weights;
for a segmenter pixel accuracy, mIoU and the per-class IoU table (mmsegmentation's sums).

The weights may be a ``weights.npz`` written by ``twins-np train`` or a training
``checkpoint.npz`` (both record the run: its settings fill in the model and the data), an
mmsegmentation Twins checkpoint (recognised by its keys: they say the model), or any file
:func:`twins_np.io.read_weights` reads (.npz, .safetensors, .pth; then ``--model`` is needed).
An mmsegmentation configuration (``*_ade20k``) on a folder is scored as mmsegmentation
tests it: every image at its own size, mmsegmentation's table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import IO, Any

from .train import add_model_data_options

# the files evaluate writes into --out, as (stem, suffix): <stem>_<split>.<suffix>
_OUTPUTS = (("confusion_matrix", "png"), ("class_iou", "png"), ("overlays", "png"), ("evaluation", "json"))

# what to try when memory runs out (twins_np.cli names it after "out of memory")
OUT_OF_MEMORY = "try a smaller --batch-size or --image-size"


def add_parser(sub: Any, name: str) -> None:
    from ..training import TrainConfig

    p = sub.add_parser(
        name,
        help="evaluate trained weights on a dataset split: accuracy and confusion matrix, or a segmenter's pixel "
        "accuracy, mIoU and per-class IoU",
        description="Run trained weights over a dataset split and print the accuracy, the per-class accuracy and the "
        "confusion matrix (rows: true class, columns: prediction); write OUT/confusion_matrix_<split>.png and "
        "OUT/evaluation_<split>.json. The weights.npz and checkpoint.npz of twins-np train record their run: with "
        "them --model, --model-overrides and the data options default to the run's (`twins-np evaluate --weights "
        "run/weights.npz` is enough). Other weights files need --model. A segmenter (a --model ending in _fpn, or a "
        "run of twins-np train --task segment) is scored as mmsegmentation does: pixel accuracy, the IoU of every class "
        "and their mean (mIoU), intersections and unions summed over the whole split; it writes "
        "OUT/class_iou_<split>.png, OUT/overlays_<split>.png and OUT/evaluation_<split>.json. An mmsegmentation Twins "
        "checkpoint (.pth) is recognised and names its model (a *_ade20k configuration); on --data folder:PATH "
        "(ADEChallengeData2016) it is scored as mmsegmentation tests it: each image rescaled to fit 2048x512, "
        "whole-image inference, logits resized to the label map's size, and mmsegmentation's table (aAcc, mIoU, mAcc, "
        "per-class IoU and Acc).",
    )
    p.add_argument(
        "--weights", required=True, metavar="FILE", help="weights.npz from twins-np train, a checkpoint.npz, .safetensors or .pth"
    )
    add_model_data_options(p, TrainConfig())
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split (default test)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="images per forward (default 128)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where the forward passes run")
    p.add_argument("--threads", type=int, metavar="N", help="BLAS threads (default: the library's)")
    p.add_argument("--out", metavar="DIR", help="where to write the figure and the JSON (default: the weights' folder)")
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """One path for both tasks: the weights' model decides the task, the task does what differs."""
    import numpy as np

    from ..io import load_arrays
    from ..training import (
        TRAINING_TASKS,
        blas_threads,
        check_out_dir,
        check_output_files,
        writing_into,
    )
    from ._common import CommandError, check_device, read_model_weights, reading_data

    check_device(args.device)
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_dir(out)  # a file, or a symbolic link to nothing: refused before any work
    if args.model is not None and args.model_overrides is not None:  # what was typed, before the weights are read
        _validate(_config(args.model, args.model_overrides, {}, args), args, weights=None, saved={})
    weights = Path(args.weights)
    state, saved = read_model_weights(weights, args.model, advice="drop --model to evaluate them as recorded")
    setting = {
        k: getattr(args, k) if getattr(args, k) is not None else saved.get(k)
        for k in ("model", "model_overrides", "data", "data_dir", "data_seed", "image_size", "reduce_zero_label", "num_classes")
    }
    if setting["model"] is None:
        raise CommandError(
            f"--model is needed: {weights} records no model (checkpoint.npz and weights.npz of twins-np train do; "
            "a weights.npz of twins-np 0.1.0 and other weights files do not)"
        )
    config = _config(setting["model"], setting["model_overrides"] or {}, setting, args)
    _validate(config, args, weights, saved)
    out = out if out is not None else weights.parent
    check_out_dir(out)
    names = [f"{stem}_{args.split}.{ext}" for stem, ext in _OUTPUTS]
    check_output_files(out, names)  # a folder where a figure or the report goes: refused before the evaluation
    task = TRAINING_TASKS[config.task]
    with reading_data(setting["data_dir"], args.command):
        data = task.evaluation_data(config, args.split)
    if args.limit is not None:
        data = data.subset(np.arange(min(args.limit, len(data))))
    model = task.create_model(config, data)
    load_arrays(model, state, source=f"weights {weights}")
    model.to_device(args.device)
    with blas_threads(args.threads):
        try:
            result = task.evaluate(model, data, args.batch_size, args.device, 0.0, check_finite=True)
        except FloatingPointError as err:
            raise CommandError(
                f"{err}: the weights in {weights} are broken (NaN/Inf weights, or so large that the forward overflows)"
            ) from err
    if hasattr(data, "images"):
        size = "of " + "x".join(str(v) for v in data.images.shape[2:])
    else:  # mmsegmentation's test pipeline: every image at its own size
        size = f"at their own sizes, rescaled to fit {data.scale[0]}x{data.scale[1]}"
    print(f"{config.model} on {config.data} ({args.split} split, {len(data)} images {size}), weights {weights}")
    summary, report = task.evaluation_summary(result, data)
    print(summary)

    out.mkdir(parents=True, exist_ok=True)
    with writing_into(out):
        figures = task.plot_result(result, data, out, f"{config.model} / {config.data} / {args.split}", suffix=f"_{args.split}")
    header = {"weights": str(weights), "model": config.model, "data": config.data, "split": args.split, "images": len(data)}
    report = {**header, **report}
    js = _write_report(out, args.split, report)
    print(f"\nwrote {', '.join(str(f) for f in figures)} and {js}")
    return 0


def _config(model: str, overrides: Any, setting: dict[str, Any], args: argparse.Namespace) -> Any:
    """The settings that rebuild the model and its data: a TrainConfig of the model's task."""
    from ..training import TrainConfig
    from ..training.tasks import task_of_model

    task = task_of_model(model) or "classify"
    return TrainConfig(
        task=task,
        model=model,
        model_overrides=overrides,
        data=setting.get("data") or ("shapes" if task == "segment" else "digits"),
        data_dir=setting.get("data_dir"),
        data_seed=setting.get("data_seed") or 0,
        image_size=setting.get("image_size"),
        reduce_zero_label=bool(setting.get("reduce_zero_label")),
        num_classes=setting.get("num_classes"),
        batch_size=args.batch_size,
    )


def _validate(config: Any, args: argparse.Namespace, weights: Path | None, saved: dict[str, Any]) -> None:
    """The one check of train's settings, in evaluate's words: a setting typed on the command
    line is named by its flag, one taken from the weights file's record as recorded there."""
    from ..training import ConfigError, validate_config
    from ._common import CommandError, flag

    def name(field: str) -> str:
        if weights is None or getattr(args, field, None) is not None or field not in saved:
            return flag(field)
        return f"the {field} recorded in {weights}"

    try:
        validate_config(config)
    except ConfigError as err:
        raise CommandError(" ".join(err.spelled(name).split())) from None


def _write_report(out: Path, split: str, report: dict[str, Any]) -> Path:
    """Write ``out/evaluation_<split>.json`` atomically; returns its path."""
    from ..training import atomic_write, writing_into

    js = out / f"evaluation_{split}.json"
    text = json.dumps(report, indent=1) + "\n"

    def write_json(f: IO[bytes]) -> None:
        f.write(text.encode("utf-8"))

    with writing_into(out):
        atomic_write(js, write_json)
    return js
