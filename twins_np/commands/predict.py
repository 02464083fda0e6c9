"""``twins-np predict``: classify one image with a Twins model and a weights file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

# what to try when memory runs out (twins_np.cli names it after "out of memory"): predict has
# no batch to shrink, and the image is decoded within twins_np.image_files.MAX_IMAGE_PIXELS
OUT_OF_MEMORY = (
    "predict runs one image through the model named by the weights, so there is no batch to shrink: close other "
    "programs, or use a smaller model's weights"
)


def add_parser(sub: Any, name: str) -> None:
    from ..models import list_models
    from ._common import model_name

    p = sub.add_parser(
        name,
        help="print the top classes of an image (ImageNet preprocessing, as timm evaluates Twins)",
        description="Resize (bicubic) and centre-crop the image as timm's evaluation transform does, run the model, "
        "print the most probable classes. The number of classes is read from the weights' head; 1000 classes are "
        "named with the ImageNet-1k labels. The weights may also be a training checkpoint.npz or the weights.npz of "
        "twins-np train: the model, its settings, the input normalisation and the class names then come from the "
        "recorded run (the whole image is resized to the model's input, grey for one-channel models).",
    )
    p.add_argument("image", metavar="IMAGE", help="image file (anything Pillow reads)")
    p.add_argument(
        "--model",
        type=model_name,
        metavar="MODEL",
        help="one of: " + ", ".join(list_models()) + " (default: the model recorded in a file of twins-np train)",
    )
    p.add_argument(
        "--weights",
        required=True,
        metavar="FILE",
        help="weights (.npz, .safetensors, .pth), or checkpoint.npz / weights.npz of twins-np train",
    )
    p.add_argument("--topk", type=int, default=5, metavar="K", help="how many classes to print (default 5)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where the forward pass runs")
    p.set_defaults(func=run)


def read_image(path: Path) -> Any:
    """The image as RGB (:func:`twins_np.image_files.read_image`), or a one-line :class:`CommandError`."""
    from ..image_files import ImageFileError
    from ..image_files import read_image as read
    from ._common import CommandError, one_line_warnings

    if path.is_dir():
        raise CommandError(f"IMAGE {path} is a folder, not an image file")
    if not path.is_file():
        raise CommandError(f"IMAGE {path}: no such file")
    try:
        with one_line_warnings("predict"):
            return read(path, what="IMAGE")
    except ImageFileError as err:
        if err.reason is None:  # refused: the size limit, NaN pixels, an unknown range
            raise CommandError(str(err)) from None
        raise CommandError(f"IMAGE {path} cannot be read as an image ({err.reason})") from None


def _readout(saved: dict[str, Any], in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...], list[str] | None, float]:
    """(mean, std, class names, crop_pct) of the preprocessing: the training data's, else ImageNet's."""
    from ..imagenet import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    data = saved.get("data")
    if data is None:
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), None, DEFAULT_CROP_PCT
    if data == "cifar10":  # the constants, so that predict needs no copy of CIFAR-10
        from ..data.cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

        return tuple(CIFAR10_MEAN), tuple(CIFAR10_STD), list(CIFAR10_CLASSES), 1.0
    from ..data import load_dataset

    ds = load_dataset(data, "test", seed=int(saved.get("data_seed") or 0))
    mean = tuple(ds.mean) if ds.mean is not None else (0.0,) * in_chans
    std = tuple(ds.std) if ds.std is not None else (1.0,) * in_chans
    return mean, std, list(ds.classes), 1.0  # the training images were whole, not centre crops


def _input(
    image: Any, size: int, in_chans: int, mean: tuple[float, ...], std: tuple[float, ...], crop_pct: float, path: Path
) -> np.ndarray:
    """(1, in_chans, size, size) float32: timm's eval transform; grey (ITU-R 601 luma) for one channel."""
    from ..imagenet import preprocess
    from ._common import CommandError

    try:
        x01 = preprocess(image, size=size, crop_pct=crop_pct, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    except ValueError as err:  # an image too elongated to resize within the pixel limit
        raise CommandError(f"IMAGE {path}: {err}") from None
    if in_chans == 1:
        x01 = np.tensordot(np.asarray([0.299, 0.587, 0.114], np.float32), x01[0], axes=1)[None, None]
    elif in_chans != 3:
        raise CommandError(f"the model takes {in_chans}-channel images; predict reads grey (1) or RGB (3) images")
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x01 - m) / s, dtype=np.float32)


def run(args: argparse.Namespace) -> int:
    from ..backend import asnumpy, to_device
    from ..imagenet import topk
    from ..io import load_arrays
    from ..models import MODEL_CONFIGS, create_model
    from ..training.overrides import check_model_overrides
    from ._common import CommandError, check_device, check_finite_logits, read_model_weights

    # everything the user typed is checked before the (possibly large) weights are read
    check_device(args.device)
    if args.topk < 1:
        raise CommandError(f"--topk must be >= 1, got {args.topk}")
    image = read_image(Path(args.image))

    weights = Path(args.weights)
    state, saved = read_model_weights(
        weights, args.model, advice="predict names the class of a whole image; score a segmenter with twins-np evaluate"
    )
    name = args.model or saved.get("model")
    if name is None:
        raise CommandError(
            f"--model is needed: {weights} records no model (only checkpoint.npz and weights.npz of twins-np train do)"
        )
    if saved.get("task") == "segment" or name.endswith("_fpn"):
        raise CommandError(
            f"{name} in {weights} is a segmenter: predict names the class of a whole image; score a segmenter with "
            "twins-np evaluate"
        )
    head = state.get("head.weight")
    if head is None or head.ndim != 2:
        raise CommandError(f"--weights {weights} has no classifier head (head.weight): nothing to predict")
    embed = state.get("patch_embeds.0.proj.weight")
    in_chans = int(embed.shape[1]) if embed is not None and embed.ndim == 4 else 3
    overrides = dict(saved.get("model_overrides") or {})
    check_model_overrides(name, overrides, 1, name=f"the model_overrides recorded in {weights}")
    # the weights decide the number of classes (1000 for ImageNet weights) and the input channels
    model = create_model(name, **overrides, num_classes=int(head.shape[0]), in_chans=in_chans)
    load_arrays(model, state, source=f"weights {weights}")
    model.eval().to_device(args.device)

    size = int(overrides.get("img_size") or MODEL_CONFIGS[name].get("img_size", 224))
    mean, std, classes, crop_pct = _readout(saved, in_chans)
    x = _input(image, size, in_chans, mean, std, crop_pct, Path(args.image))
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite logits are reported below, in one line
        logits = asnumpy(model(to_device(x, args.device)))
    check_finite_logits(logits, weights)
    rows = topk(logits, k=min(args.topk, logits.shape[-1]), names=classes)

    print(f"{name} on {args.image} ({size}x{size} crop), weights {weights}")
    print(f"{'rank':>4}  {'class':>5}  {'probability':>11}  name")
    for r, (i, label, p) in enumerate(rows, 1):
        print(f"{r:>4}  {i:>5}  {p:>11.6f}  {label}")
    return 0
