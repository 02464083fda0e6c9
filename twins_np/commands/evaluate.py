"""``twins-np evaluate``: accuracy, per-class accuracy and confusion matrix of trained weights.

The weights may be a ``weights.npz`` written by ``twins-np train`` (or any file
:func:`twins_np.io.read_weights` reads: .npz, .safetensors, .pth), or a training
``checkpoint.npz``, whose saved settings then fill in the model and the data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .train import add_model_data_options


def add_parser(sub: Any, name: str) -> None:
    from ..training import TrainConfig

    p = sub.add_parser(
        name,
        help="evaluate trained weights on a dataset split: accuracy, per-class accuracy, confusion matrix",
        description="Print the accuracy, the per-class accuracy and the confusion matrix (rows: true class, columns: "
        "prediction); write OUT/confusion_matrix_<split>.png and OUT/evaluation_<split>.json. With a training "
        "checkpoint as --weights, the model and data settings default to the saved run's.",
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


def _is_checkpoint(path: Path) -> bool:
    import numpy as np

    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as archive:
            return "format" in archive.files
    except (OSError, ValueError):
        return False  # read_weights will explain what is wrong with the file


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..backend import cupy_available
    from ..data import load_dataset
    from ..io import load_arrays, read_weights
    from ..models import create_model
    from ..training import (
        blas_threads,
        confusion_matrix,
        evaluate_model,
        format_confusion_matrix,
        load_checkpoint,
        per_class_accuracy,
        plot_confusion_matrix,
    )

    if args.device == "gpu" and not cupy_available():
        print(
            f"twins-np {args.command}: error: --device gpu needs CuPy and a CUDA GPU, and none was found; use --device cpu",
            file=sys.stderr,
        )
        return 2
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    weights = Path(args.weights)
    saved: dict[str, Any] = {}
    if _is_checkpoint(weights):
        ckpt = load_checkpoint(weights)
        state, saved = ckpt["model"], ckpt["config"]
    else:
        try:
            state = read_weights(weights)
        except ImportError as err:  # a .pth file without torch
            print(f"twins-np {args.command}: error: {err}", file=sys.stderr)
            return 2
    setting = {
        k: getattr(args, k) if getattr(args, k) is not None else saved.get(k)
        for k in ("model", "model_overrides", "data", "data_dir", "data_seed")
    }
    if setting["model"] is None:
        raise ValueError("--model is needed (only a training checkpoint records its model)")
    data_name = setting["data"] or "digits"
    data = load_dataset(data_name, args.split, data_dir=setting["data_dir"], seed=setting["data_seed"] or 0)
    if args.limit is not None:
        data = data.subset(np.arange(min(args.limit, len(data))))
    model = create_model(
        setting["model"],
        **(setting["model_overrides"] or {}),
        in_chans=data.images.shape[1],
        num_classes=data.num_classes,
        dtype=np.float32,
    )
    load_arrays(model, state, source=f"weights {weights}")
    model.to_device(args.device)

    with blas_threads(args.threads):
        result = evaluate_model(model, data, args.batch_size, args.device)
    cm = confusion_matrix(result.labels, result.preds, data.num_classes)
    per_class = per_class_accuracy(cm)
    correct = int(np.trace(cm))
    print(f"{setting['model']} on {data_name} ({args.split} split, {len(data)} images), weights {weights}")
    print(f"accuracy {100 * result.accuracy:.2f}% ({correct}/{len(data)}), cross-entropy {result.loss:.4f}")
    print("\nconfusion matrix (rows: true class, columns: predicted class):")
    print(format_confusion_matrix(cm, data.classes))

    out = Path(args.out) if args.out else weights.parent
    out.mkdir(parents=True, exist_ok=True)
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
    js = out / f"evaluation_{args.split}.json"
    js.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {png} and {js}")
    return 0
