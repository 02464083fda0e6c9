"""``twins-np flops``: per-layer multiply-adds and parameters of a named model, from its config."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    from ..models import list_models
    from ..models.segmentation import list_segmenters
    from ._common import model_name

    p = sub.add_parser(
        name,
        help="count multiply-adds (1 MAC = 1 FLOP) and parameters of a model, without building it",
        description="Multiply-adds per layer, computed from the model's structure (no weights, no forward pass). "
        "LayerNorm, softmax, GELU, bias adds, residuals and pooling are not counted.",
    )
    names = list_models() + list_segmenters()
    p.add_argument(
        "model",
        type=lambda text: model_name(text, names),
        metavar="MODEL",
        help="one of: " + ", ".join(names) + " (the *_fpn segmenters are built to be counted: a few seconds)",
    )
    p.add_argument(
        "--size", nargs=2, type=int, metavar=("H", "W"), default=None, help="input image size (default: the model's img_size)"
    )
    p.add_argument("--batch", type=int, default=1, metavar="B", help="batch size (MACs scale with it; default 1)")
    p.add_argument(
        "--no-attention",
        action="store_true",
        help="leave out the q.k^T and attn.v products (the official README's convention)",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=3,
        metavar="D",
        help="merge layers by the first D parts of their names: 3 = per block, 4 = attn/mlp, 0 = every layer (default 3)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import count_flops

    if args.depth < 0:
        raise ValueError(f"--depth must be >= 0, got {args.depth}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.size is not None and min(args.size) < 1:
        raise ValueError(f"--size must be two sides >= 1, got {args.size[0]} {args.size[1]}")
    report = count_flops(args.model, args.size, batch_size=args.batch, include_attention=not args.no_attention)
    # LayerNorm rows count 0 MACs; they are hidden here but their parameters are in the total
    print(report.table(depth=args.depth or None, skip_zero=True))
    print()
    print(report.summary())
    return 0
