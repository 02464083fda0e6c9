"""``twins-np predict``: classify one image with a Twins model and a weights file."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    from ..models import list_models

    p = sub.add_parser(
        name,
        help="print the top classes of an image (ImageNet preprocessing, as timm evaluates Twins)",
        description="Resize (bicubic) and centre-crop the image as timm's evaluation transform does, run the model, "
        "print the most probable classes. The number of classes is read from the checkpoint's head; "
        "1000 classes are named with the ImageNet-1k labels.",
    )
    p.add_argument("image", metavar="IMAGE", help="image file (anything Pillow reads)")
    p.add_argument("--model", required=True, choices=list_models(), metavar="MODEL", help="one of: " + ", ".join(list_models()))
    p.add_argument("--weights", required=True, metavar="FILE", help="checkpoint (.npz, .safetensors, .pth)")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="how many classes to print (default 5)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where the forward pass runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backend import asnumpy, to_device
    from ..imagenet import load_image, preprocess, topk
    from ..io import load_arrays, read_weights
    from ..models import MODEL_CONFIGS, create_model

    try:
        state = read_weights(args.weights)
    except ImportError as e:  # a .pth file without torch installed
        print(f"twins-np {args.command}: error: {e}", file=sys.stderr)
        return 2
    head = state.get("head.weight")
    if head is None or head.ndim != 2:
        raise ValueError(f"{args.weights} has no classifier head (head.weight): nothing to predict")
    # the checkpoint decides the number of classes (1000 for ImageNet weights)
    model = create_model(args.model, num_classes=int(head.shape[0]))
    load_arrays(model, state, source=f"checkpoint {args.weights}")
    model.eval().to_device(args.device)

    size = MODEL_CONFIGS[args.model].get("img_size", 224)
    x = preprocess(load_image(args.image), size=size)
    logits = asnumpy(model(to_device(x, args.device)))
    rows = topk(logits, k=min(args.topk, logits.shape[-1]))

    print(f"{args.model} on {args.image} ({size}x{size} crop), weights {args.weights}")
    print(f"{'rank':>4}  {'class':>5}  {'probability':>11}  name")
    for r, (i, name, p) in enumerate(rows, 1):
        print(f"{r:>4}  {i:>5}  {p:>11.6f}  {name}")
    return 0
