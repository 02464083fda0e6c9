"""``twins-np evaluate``: accuracy, per-class accuracy and confusion matrix of trained weights;
for a segmenter pixel accuracy, mIoU and the per-class IoU table (mmsegmentation's sums).

The weights may be a ``weights.npz`` written by ``twins-np train`` or a training
``checkpoint.npz`` (both record the run: its settings fill in the model and the data), or
any file :func:`twins_np.io.read_weights` reads (.npz, .safetensors, .pth; then ``--model``
is needed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import IO, Any

from .train import add_model_data_options


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
        "OUT/class_iou_<split>.png, OUT/overlays_<split>.png and OUT/evaluation_<split>.json.",
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
    import numpy as np

    from ..data import load_dataset
    from ..io import load_arrays
    from ..models import create_model
    from ..training import (
        blas_threads,
        confusion_matrix,
        evaluate_model,
        format_confusion_matrix,
        per_class_accuracy,
        plot_confusion_matrix,
        writing_into,
    )
    from ..training.overrides import check_model_overrides
    from ..training.tasks import task_of_model
    from ._common import CommandError, check_device, read_model_weights, reading_data

    check_device(args.device)
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder")
    if args.model is not None and args.model_overrides is not None:  # what was typed, before the weights are read
        if task_of_model(args.model) == "segment":
            _check_segmenter_overrides(args)
        else:
            check_model_overrides(args.model, args.model_overrides, args.batch_size, "--model-overrides")
    weights = Path(args.weights)
    state, saved = read_model_weights(weights, args.model)
    setting = {
        k: getattr(args, k) if getattr(args, k) is not None else saved.get(k)
        for k in ("model", "model_overrides", "data", "data_dir", "data_seed", "image_size", "reduce_zero_label")
    }
    if setting["model"] is None:
        raise CommandError(
            f"--model is needed: {weights} records no model (checkpoint.npz and weights.npz of twins-np train do; "
            "a weights.npz of twins-np 0.1.0 and other weights files do not)"
        )
    overrides = setting["model_overrides"] or {}
    what = "--model-overrides" if args.model_overrides is not None else f"the model_overrides recorded in {weights}"
    if task_of_model(setting["model"]) == "segment":
        return _evaluate_segmenter(args, weights, state, setting, overrides, what)
    if setting["image_size"] is not None or setting["reduce_zero_label"]:
        raise CommandError("--image-size and --reduce-zero-label are for segmenters (evaluate keeps a classifier's image size)")
    check_model_overrides(setting["model"], overrides, args.batch_size, what)
    data_name = setting["data"] or "digits"
    with reading_data(setting["data_dir"]):
        data = load_dataset(data_name, args.split, data_dir=setting["data_dir"], seed=setting["data_seed"] or 0)
    if args.limit is not None:
        data = data.subset(np.arange(min(args.limit, len(data))))
    model = create_model(
        setting["model"],
        **overrides,
        in_chans=data.images.shape[1],
        num_classes=data.num_classes,
        dtype=np.float32,
    )
    load_arrays(model, state, source=f"weights {weights}")
    model.to_device(args.device)

    with blas_threads(args.threads):
        try:
            result = evaluate_model(model, data, args.batch_size, args.device, check_finite=True)
        except FloatingPointError as err:
            raise CommandError(
                f"{err}: the weights in {weights} are broken (NaN/Inf weights, or so large that the forward overflows)"
            ) from err
    cm = confusion_matrix(result.labels, result.preds, data.num_classes)
    per_class = per_class_accuracy(cm)
    correct = int(np.trace(cm))
    print(f"{setting['model']} on {data_name} ({args.split} split, {len(data)} images), weights {weights}")
    print(f"accuracy {100 * result.accuracy:.2f}% ({correct}/{len(data)}), cross-entropy {result.loss:.4f}")
    print("\nconfusion matrix (rows: true class, columns: predicted class):")
    print(format_confusion_matrix(cm, data.classes))

    out = out if out is not None else weights.parent
    out.mkdir(parents=True, exist_ok=True)
    with writing_into(out):
        png = plot_confusion_matrix(
            cm, data.classes, out / f"confusion_matrix_{args.split}.png", title=f"{setting['model']} / {data_name} / {args.split}"
        )
    report = {
        "weights": str(weights),
        "model": setting["model"],
        "data": data_name,
        "split": args.split,
        "images": len(data),
        "accuracy": result.accuracy,
        "loss": result.loss,
        "per_class_accuracy": {c: (None if np.isnan(a) else float(a)) for c, a in zip(data.classes, per_class)},
        "confusion_matrix": cm.tolist(),
    }
    js = _write_report(out, args.split, report)
    print(f"\nwrote {png} and {js}")
    return 0


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


def format_iou_table(scores: dict[str, Any], classes: list[str]) -> str:
    """Per-class IoU and accuracy as aligned text; classes absent from labels and predictions marked."""
    import numpy as np

    width = max(12, *(len(c) for c in classes))
    lines = [f"{'class'.ljust(width)}      IoU   accuracy   labelled pixels"]
    for k, name in enumerate(classes):
        iou, acc, n = scores["iou"][k], scores["acc"][k], int(scores["area_label"][k])
        iou_text = "  absent" if np.isnan(iou) else f"{100 * iou:7.2f}%"
        acc_text = "        -" if np.isnan(acc) else f"{100 * acc:8.2f}%"
        lines.append(f"{name[:width].ljust(width)} {iou_text}  {acc_text}   {n:15d}")
    return "\n".join(lines)


def _check_segmenter_overrides(args: argparse.Namespace) -> None:
    """The typed --model-overrides of a typed segmenter --model, before the weights are read."""
    from ..training import TrainConfig
    from ..training.tasks import TASKS
    from ._common import CommandError

    config = TrainConfig(task="segment", model=args.model, model_overrides=args.model_overrides, data="shapes")
    try:
        TASKS["segment"].check(config, lambda field: "--" + field.replace("_", "-"))
    except ValueError as err:
        raise CommandError(str(err)) from None


def _evaluate_segmenter(
    args: argparse.Namespace,
    weights: Path,
    state: dict[str, Any],
    setting: dict[str, Any],
    overrides: dict[str, Any],
    what: str,
) -> int:
    """``evaluate`` for a segmenter: pixel accuracy, per-class IoU, mIoU; figures and JSON."""
    import numpy as np

    from ..io import load_arrays
    from ..training import TrainConfig, blas_threads, writing_into
    from ..training.tasks import TASKS, evaluate_segmenter, load_split
    from ._common import CommandError, reading_data

    task = TASKS["segment"]
    data_name = setting["data"] or "shapes"
    config = TrainConfig(
        task="segment",
        model=setting["model"],
        model_overrides=overrides,
        data=data_name,
        data_dir=setting["data_dir"],
        data_seed=setting["data_seed"] or 0,
        image_size=setting["image_size"],
        reduce_zero_label=bool(setting["reduce_zero_label"]),
        batch_size=args.batch_size,
    )
    try:
        task.check(config, lambda field: "--" + field.replace("_", "-"))
    except ValueError as err:
        text = str(err)
        if args.model_overrides is None and text.startswith("--model-overrides"):
            text = what + text[len("--model-overrides") :]
        raise CommandError(text) from None
    with reading_data(setting["data_dir"]):
        data = load_split(config, args.split)
    if args.limit is not None:
        data = data.subset(np.arange(min(args.limit, len(data))))
    model = task.create_model(config, data)
    load_arrays(model, state, source=f"weights {weights}")
    model.to_device(args.device)
    with blas_threads(args.threads):
        try:
            result = evaluate_segmenter(model, data, args.batch_size, args.device, check_finite=True)
        except FloatingPointError as err:
            raise CommandError(
                f"{err}: the weights in {weights} are broken (NaN/Inf weights, or so large that the forward overflows)"
            ) from err
    scores = result.scores
    size = "x".join(str(v) for v in data.images.shape[2:])
    print(f"{setting['model']} on {data_name} ({args.split} split, {len(data)} images of {size}), weights {weights}")
    print(
        f"pixel accuracy {100 * result.pixel_accuracy:.2f}%, mIoU {100 * result.miou:.2f}%, mAcc "
        f"{100 * scores['macc']:.2f}%, pixel cross-entropy {result.loss:.4f}"
    )
    print("\nper-class IoU (intersections and unions summed over the split; 'absent': neither labelled nor predicted,")
    print("left out of the mIoU):")
    print(format_iou_table(scores, list(data.classes)))

    out = Path(args.out) if args.out else weights.parent
    out.mkdir(parents=True, exist_ok=True)
    title = f"{setting['model']} / {data_name} / {args.split}"
    with writing_into(out):
        task.plot_result(result, data, out, title, suffix=f"_{args.split}")

    def number(v: float) -> float | None:
        return None if np.isnan(v) else float(v)

    report = {
        "weights": str(weights),
        "model": setting["model"],
        "data": data_name,
        "split": args.split,
        "images": len(data),
        "pixel_accuracy": result.pixel_accuracy,
        "miou": number(result.miou),
        "macc": number(scores["macc"]),
        "loss": number(result.loss),
        "iou": {c: number(v) for c, v in zip(data.classes, scores["iou"])},
        "accuracy": {c: number(v) for c, v in zip(data.classes, scores["acc"])},
        "area_intersect": scores["area_intersect"].tolist(),
        "area_union": scores["area_union"].tolist(),
        "area_pred": scores["area_pred"].tolist(),
        "area_label": scores["area_label"].tolist(),
    }
    js = _write_report(out, args.split, report)
    print(f"\nwrote {out / f'class_iou_{args.split}.png'}, {out / f'overlays_{args.split}.png'} and {js}")
    return 0
