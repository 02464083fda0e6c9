"""``twins-np convert``: rewrite a checkpoint in another format (.npz, .safetensors, .pth)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# what to try when memory runs out (twins_np.cli names it after "out of memory")
OUT_OF_MEMORY = "convert holds every array of the file at once: close other programs, or convert on a machine with more memory"


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="convert weights between .npz, .safetensors and .pth (.pth needs torch)",
        description="Read a checkpoint and write the same arrays (names, shapes, dtypes, values) in the format "
        "given by OUT's suffix. A .pth training checkpoint is reduced to its model state dict "
        "(nested under 'model', 'state_dict' or 'model_state'; a 'module.' prefix is removed). An mmsegmentation "
        "Twins checkpoint is recognised by its keys and written with twins-np's names, for its *_ade20k segmenter.",
    )
    p.add_argument("input", metavar="IN", help="checkpoint to read (.npz, .safetensors, .pth, .pt, .pth.tar)")
    p.add_argument("output", metavar="OUT", help="file to write; replaced atomically if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import convert_weights
    from ._common import CommandError

    if Path(args.input).is_dir():
        raise CommandError(f"IN {args.input} is a folder, not a weights file")
    if Path(args.output).is_dir():
        raise CommandError(f"OUT {args.output} is a folder; give the file to write, e.g. {Path(args.output) / 'weights.npz'}")
    from ..training import writing_into

    with writing_into(args.output):
        arrays = convert_weights(args.input, args.output)  # ImportError for .pth without torch: one line from main
    n = sum(int(a.size) for a in arrays.values())
    dtypes = ", ".join(sorted({str(a.dtype) for a in arrays.values()}))
    print(f"wrote {len(arrays)} arrays ({n:,} values; {dtypes}) to {args.output}")
    if any(k.startswith("decode_head.") for k in arrays):  # a segmenter's: say which configuration it fits
        from ..models.mmseg import recognise

        try:
            name, classes, overrides = recognise(arrays)
        except ValueError:
            return 0
        extra = "".join(f", {k}={v!r}" for k, v in overrides.items())
        print(f"a {name} segmenter ({classes} classes{extra}): twins_np.create_segmenter({name!r}, {classes}{extra})")
    return 0
