"""Run every bad-input case of twins-np and write docs/reliability.md.

    python tools/bad_input_table.py          # write docs/reliability.md
    python tools/bad_input_table.py --check  # exit 1 if docs/reliability.md is out of date

Each :class:`Case` gives one public entry point (a functional op, a module, the model,
the command line) one bad input, and records what twins-np does: the exception type and
its message, or the exit status and the stderr line of the CLI. The page is the intro
below plus that table, so it shows what a user sees today, not what we hope they see.

``tests/reliability/test_bad_inputs.py`` runs the same cases under ``pytest.raises``
(``expect`` and ``match``), turns the cases with an ``issue`` into strict xfails, and
checks that the committed page equals what this script writes now.

Only cases whose outcome is the same on every machine belong here: no GPU, no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import pathlib
import sys
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import twins_np.functional as F
from twins_np.cli import main as cli_main
from twins_np.imagenet import load_image
from twins_np.io import load_weights, read_weights, save_weights
from twins_np.models import create_model, create_segmenter
from twins_np.nn import (
    BatchNorm2d,
    Block,
    Conv2d,
    GlobalSubSampleAttn,
    GroupNorm,
    Linear,
    LocallyGroupedAttn,
    PosConv,
    Upsample,
)
from twins_np.optim import AdamW, clip_grad_norm
from twins_np.training import ConfigError, NonFiniteLossError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reliability.md"
MAX_MESSAGE = 320  # characters shown per message; longer ones (key lists) are cut


@dataclass(frozen=True)
class Case:
    """One bad input for one entry point.

    Attributes:
        entry: the public entry point, as a user writes it.
        bad: what is wrong with the input, in a few words.
        expect: the exception a user should get (``None`` for CLI cases: ``main`` returns
            2 for every bad input, argparse's errors included).
        match: a regular expression the message (or the CLI's stderr) must contain.
        run: calls the entry point; if it returns instead of raising, it returns a
            short description of what came back (shown in the table).
        argv: for a CLI case, the arguments of ``twins_np.cli.main`` (then ``run`` is None).
        files: for a CLI case that needs files (a damaged checkpoint, an image): writes them
            into an empty temporary folder, in which ``main`` then runs (so the messages
            name short relative paths, the same on every machine).
        status: the exit status a CLI case must end with (2: a bad input or environment).
        issue: non-empty when today's behaviour is a known gap: what is wrong and what
            should change. The test for such a case is a strict xfail.

    An API case with ``expect=None`` is an input twins-np handles without an error (a
    16-bit image scaled, an all-ignored batch skipped): ``run`` returns what it did, and
    ``match`` must match that.
    """

    entry: str
    bad: str
    expect: type[BaseException] | None
    match: str
    run: Callable[[], str] | None = None
    argv: tuple[str, ...] | None = None
    files: Callable[[pathlib.Path], Any] | None = None
    status: int = 2
    issue: str = ""

    @property
    def id(self) -> str:
        return f"{self.entry} | {self.bad}"


# --- inputs -----------------------------------------------------------------------------


def _rand(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _lsa(**over: Any) -> str:
    """F.lsa_forward on x (2, 12, 8), size (3, 4), 2 heads, ws 2, with overrides."""
    args: dict[str, Any] = dict(
        x=_rand(2, 12, 8), size=(3, 4), qkv_w=_rand(24, 8), qkv_b=_rand(24), proj_w=_rand(8, 8), proj_b=_rand(8),
        num_heads=2, ws=2,
    )  # fmt: skip
    args.update(over)
    F.lsa_forward(**args)
    return "returned"


def _gsa(**over: Any) -> str:
    """F.gsa_forward on x (2, 12, 8), size (3, 4), 2 heads, sr 2, with overrides."""
    args: dict[str, Any] = dict(
        x=_rand(2, 12, 8), size=(3, 4), q_w=_rand(8, 8), q_b=_rand(8), kv_w=_rand(16, 8), kv_b=_rand(16),
        proj_w=_rand(8, 8), proj_b=_rand(8), num_heads=2, sr_ratio=2, sr_params=(_rand(8, 8, 2, 2), _rand(8)),
        norm_w=_rand(8), norm_b=_rand(8),
    )  # fmt: skip
    args.update(over)
    F.gsa_forward(**args)
    return "returned"


def _ce(target: Any, logits: Any = None, label_smoothing: float = 0.0) -> str:
    logits = _rand(4, 5) if logits is None else logits
    F.cross_entropy_forward(logits, target, label_smoothing)
    return "returned"


def _labels(bad: int) -> np.ndarray:
    """(2, 3, 4) labels in [0, 5) with 255 (ignored) pixels and one ``bad`` label."""
    y = (np.arange(24).reshape(2, 3, 4) * 7) % 5
    y[0, 0, :2] = 255
    y[1, 2, 3] = bad
    return y


def _pixel_ce(target: Any, logits: Any = None) -> str:
    logits = _rand(2, 5, 3, 4) if logits is None else logits
    F.pixel_cross_entropy_forward(logits, target)
    return "returned"


def _seg() -> Any:
    return create_segmenter("twins_svt_teach32_fpn", num_classes=3)


def _seg_backward(dlogits: Any) -> str:
    seg = _seg()
    seg(_rand(1, 3, 8, 8))
    seg.backward(dlogits)
    return "returned"


@functools.cache
def _svt_small() -> Any:
    return create_model("twins_svt_small", num_classes=10).eval()


@functools.cache
def _teach(**kw: Any) -> Any:
    return create_model("twins_svt_teach32", **kw).eval()


def _forward(model: Any, x: Any) -> str:
    out = model(x)
    return f"returned logits {tuple(out.shape)} {out.dtype}"


def _backward_twice() -> str:
    lsa = LocallyGroupedAttn(8, 2, ws=2, rng=0)
    dout = _rand(2, 12, 8)
    lsa(_rand(2, 12, 8), (3, 4))
    lsa.backward(dout)
    lsa.backward(dout)
    return "returned"


def _linear_backward_f64() -> str:
    lin = Linear(3, 4, rng=0)
    lin(_rand(2, 3))
    dx = lin.backward(_rand(2, 4, dtype=np.float64))
    return f"returned dx of dtype {dx.dtype} (float32 module)"


def _twins_backward(dlogits: Any, forward: bool = True) -> str:
    m = create_model("twins_svt_teach32", seed=0)
    if forward:
        m(_rand(2, 3, 32, 32))
    m.backward(dlogits)
    return "returned"


def _intermediates(**kw: Any) -> str:
    maps = create_model("twins_svt_teach32").forward_intermediates(_rand(2, 3, 32, 32), intermediates_only=True, **kw)
    return f"returned {len(maps)} maps"


def _intermediates_backward(grads: Any = "ok", dfinal: Any = None, forward: bool = True, **kw: Any) -> str:
    """forward_intermediates (every stage, NCHW) on 2 images of the teaching model, then backward with ``grads``."""
    m = create_model("twins_svt_teach32", seed=0)
    maps = m.forward_intermediates(_rand(2, 3, 32, 32), intermediates_only=True, **kw) if forward else []
    ok = [_rand(*a.shape) for a in maps]
    m.backward_intermediates(ok if isinstance(grads, str) else grads(ok) if callable(grads) else grads, dfinal)
    return "returned"


def _features_backward(n: int) -> str:
    f = create_model("twins_svt_teach32", features_only=True)
    maps = f(_rand(2, 3, 32, 32))
    f.backward([_rand(*a.shape) for a in maps][:n])
    return "returned"


def _twins_backward_after_intermediates() -> str:
    m = create_model("twins_svt_teach32", seed=0)
    m.forward_intermediates(_rand(2, 3, 32, 32))
    m.backward(_rand(2, 10))
    return "returned"


def _load(state: Any) -> str:
    create_model("twins_svt_teach32").load_state_dict(state)
    return "returned"


def _state(**change: Any) -> dict[str, Any]:
    sd = dict(create_model("twins_svt_teach32").state_dict())
    for k, v in change.items():
        if v is None:
            sd.pop(k.replace("__", "."))
        else:
            sd[k.replace("__", ".")] = v
    return sd


def _built(**kw: Any) -> str:
    m = create_model("twins_svt_teach32", **kw)
    return f"built a model with {m.dtype} parameters"


def _nan_image(value: float) -> np.ndarray:
    x = _rand(1, 3, 32, 32)
    x[0, 0, :2, :3] = value
    return x


# stale caches: a backward after a forward that did not complete, or of another forward


def _block_backward_after_refused_forward() -> str:
    blk = Block(8, 2, sr_ratio=3, ws=1, rng=0)
    blk(_rand(2, 12, 8), (3, 4))
    with contextlib.suppress(ValueError):
        blk(_rand(2, 12, 8), (2, 6))  # LayerNorm ran on the new tokens, then the attention refused the 2x6 map
    blk.backward(_rand(2, 12, 8))
    return "returned gradients mixing two batches"


def _twins_backward_after_interrupt() -> str:
    m = create_model("twins_svt_teach32", seed=0)
    m(_rand(2, 3, 32, 32))
    blk = m.blocks[1][0]
    real = blk.forward

    def interrupted(*args: Any) -> Any:
        blk.forward = real
        raise KeyboardInterrupt

    blk.forward = interrupted
    with contextlib.suppress(KeyboardInterrupt):
        m(_rand(2, 3, 32, 32))  # Ctrl-C in stage 2: stage 1 holds the new batch's caches
    m.backward(_rand(2, 10))
    return "returned gradients mixing two batches"


def _backward_loss_after_refused_labels() -> str:
    m = create_model("twins_svt_teach32", seed=0)
    m.loss(_rand(2, 3, 32, 32), np.array([0, 1]))
    with contextlib.suppress(ValueError):
        m.loss(_rand(2, 3, 32, 32), np.array([0, 10]))
    m.backward_loss()
    return "returned the previous batch's loss gradient"


def _twins_backward_after_block_alone() -> str:
    m = create_model("twins_svt_teach32", seed=0)
    m(_rand(2, 3, 32, 32))
    m.blocks[2][1](_rand(2, 16, 128), (4, 4))
    m.backward(_rand(2, 10))
    return "returned gradients mixing two batches"


# checkpoint files, written in a temporary folder (names relative to it, so messages are stable)


def _read(name: str, content: bytes | Callable[[pathlib.Path], Any]) -> str:
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):
        if isinstance(content, bytes):
            pathlib.Path(name).write_bytes(content)
        else:
            content(pathlib.Path(name))
        arrays = read_weights(name)
    return f"returned {len(arrays)} arrays"


def _npz(members: dict[str, bytes]) -> Callable[[pathlib.Path], Any]:
    def write(path: pathlib.Path) -> None:
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    return write


def _npy_claiming(shape: tuple[int, ...], data: bytes) -> bytes:
    """A .npy member whose header claims float64 ``shape`` followed by ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _nested_safetensors(depth: int) -> bytes:
    raw = b'{"__metadata__":' + b"[" * depth + b"]" * depth + b"}"
    return len(raw).to_bytes(8, "little") + raw


def _load_file_with(key: str, value: np.ndarray) -> str:
    m = create_model("twins_svt_teach32")
    state = dict(m.state_dict())
    state[key] = value
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):
        save_weights(state, "w.npz")
        load_weights(m, "w.npz")
    return "loaded"


# folder data, image files, training checkpoints and advice (written in a temporary folder:
# messages name short relative paths)


def _in_tmp(write: Callable[[pathlib.Path], Any], run: Callable[[], str]) -> str:
    """``write(folder)`` into a fresh temporary folder, then ``run()`` there."""
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):
        write(pathlib.Path("."))
        return run()


def _png_claiming(width: int, height: int, mode: str = "RGB") -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` pixels and almost no pixel data
    (138 bytes for any size): what a decompression bomb looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    colour = {"RGB": 2, "L": 0}[mode]
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, colour, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(69), 9)) + chunk(b"IEND", b"")


def _write(path: str | pathlib.Path, content: Any, **save: Any) -> None:
    """Write bytes as they are, or an array as an image file (its format from the suffix)."""
    from PIL import Image

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        Image.fromarray(content).save(path, **save)


def _pair(name: str, image: Any, label: Any, split: str = "") -> Callable[[pathlib.Path], Any]:
    """One image and its label map in a segmentation folder (in ``split``'s subfolder, if given)."""

    def write(root: pathlib.Path) -> None:
        sub = f"/{split}" if split else ""
        _write(root / f"images{sub}/{name}", image)
        stem = pathlib.Path(name).stem
        _write(root / f"annotations{sub}/{stem}.png", label if isinstance(label, bytes) else label.astype(np.uint8))

    return write


def _all(*writers: Callable[[pathlib.Path], Any]) -> Callable[[pathlib.Path], Any]:
    return lambda root: [w(root) for w in writers]


_RGB8 = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
_RGB16 = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def _bands(values: list[int], size: int = 8) -> np.ndarray:
    """A size x size label map holding each of ``values`` (in horizontal bands)."""
    return np.repeat(np.asarray(values), -(-size // len(values)))[:size][:, None].repeat(size, 1).astype(np.uint8)


def _splits(train_values: list[int], val_values: list[int]) -> Callable[[pathlib.Path], Any]:
    """ADE20K's layout: one training and one validation image with the given labels."""
    return _all(
        _pair("a.png", _RGB8, _bands(train_values), "training"), _pair("b.png", _RGB8, _bands(val_values), "validation")
    )


def _class_counts() -> str:
    from twins_np.data import load_segmentation_folder

    train, test = (load_segmentation_folder(".", s, image_size=8) for s in ("train", "test"))
    return f"returned train: {train.num_classes} classes, test: {test.num_classes} classes"


def _folder(**kw: Any) -> str:
    """load_segmentation_folder('.') with 8x8 images (unless told otherwise): what came back."""
    from twins_np.data import load_segmentation_folder

    kw = {"image_size": 8, **kw}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_segmentation_folder(".", **kw)
    x = data.images * np.asarray(data.std, np.float32)[:, None, None] + np.asarray(data.mean, np.float32)[:, None, None]
    return (
        f"returned {len(data)} image(s) {data.images.shape[1:]}, pixels in [{x.min():.3f}, {x.max():.3f}] with mean "
        f"{x.mean():.3f}; {len(caught)} warning(s)"
    )


_GRADIENT16 = (np.arange(256).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535, mean 32767.5
_GRADIENT_F = (np.arange(256).reshape(16, 16) / 255.0).astype(np.float32)  # 0 .. 1, mean 0.5


def _float_image(**change: float) -> np.ndarray:
    a = _GRADIENT_F.copy()
    for where, value in change.items():
        a.flat[int(where[1:])] = value
    return a


def _palette_with_transparency() -> Any:
    from PIL import Image

    im = Image.fromarray(_RGB8).convert("P")
    im.info["transparency"] = bytes(range(256))
    return im


def _write_palette(root: pathlib.Path) -> None:
    (root / "images").mkdir()
    _palette_with_transparency().save(root / "images" / "a.png")
    _write(root / "annotations" / "a.png", _bands([0, 1]))


def _skip_empty_batches() -> str:
    """One epoch of the teaching segmenter, batch 1, on two images: one has labels, one only
    label 0, which reduce_zero_label ignores; returns what the trainer logged about it."""
    from twins_np.training import TrainConfig, Trainer

    def run() -> str:
        cfg = TrainConfig(
            task="segment", model="twins_svt_teach32_fpn", data="folder:.", image_size=16, reduce_zero_label=True,
            epochs=1, batch_size=1, warmup_epochs=0.0, drop_path=0.0, label_smoothing=0.0,
        )  # fmt: skip
        trainer = Trainer(cfg, "run", progress=False, log=None)
        trainer.train_epoch()  # the epoch's updates (fit() would also evaluate, save and plot)
        return f"trained; {trainer.skip_note(1)}"

    return _in_tmp(_all(_pair("a.png", _RGB16, _bands([1, 2], 16)), _pair("b.png", _RGB16, _bands([0], 16))), run)


def _hostile_checkpoint(root: pathlib.Path) -> None:
    """A twins-np checkpoint whose model.head.weight member claims 7 TiB (in 8 bytes)."""
    from twins_np.training import TrainConfig
    from twins_np.training.checkpoint import CHECKPOINT_FORMAT

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a)
        return buf.getvalue()

    members = {
        "format.npy": npy(np.array(CHECKPOINT_FORMAT)),
        "epoch.npy": npy(np.array(1, np.int64)),
        "config.npy": npy(np.array(json.dumps(TrainConfig().to_dict()))),
        "history.npy": npy(np.array("[]")),
        "rng.npy": npy(np.array('{"generators": [], "modules": {}}')),
        "model.head.weight.npy": _npy_claiming((7 * 2**40 // 8,), bytes(8)),
    }
    _npz(members)(root / "checkpoint.npz")


def _load_checkpoint() -> str:
    from twins_np.training import load_checkpoint

    return f"returned {len(load_checkpoint('checkpoint.npz'))} entries"


def _check(**settings: Any) -> str:
    from twins_np.training import TrainConfig, validate_config

    validate_config(TrainConfig(**settings))
    return "accepted"


def _teach_weights(model: str = "twins_svt_teach32", **kw: Any) -> Callable[[pathlib.Path], Any]:
    return lambda root: save_weights(create_model(model, seed=0, **kw), root / "w.npz")


def _segmenter_run_weights(root: pathlib.Path) -> None:
    """The weights.npz of a segmentation run (its settings recorded in the archive's comment)."""
    from twins_np.training import TrainConfig, save_npz

    cfg = TrainConfig(task="segment", model="twins_svt_teach32_fpn", data="shapes", image_size=32)
    save_npz(root / "w.npz", create_segmenter("twins_svt_teach32_fpn", num_classes=4).state_dict(), {"config": cfg.to_dict()})


def _strict_false(into: Callable[[], Any], drop: str = "") -> str:
    """load_weights(into(), w.npz, strict=False) with the teaching classifier's weights (minus keys starting with ``drop``)."""
    state = {k: v for k, v in create_model("twins_svt_teach32").state_dict().items() if not (drop and k.startswith(drop))}
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_weights(state, "w.npz")
        load_weights(into(), "w.npz", strict=False)
    return "loaded; " + " ".join(str(w.message) for w in caught)


def _torchscript_like() -> bytes:
    """The layout torch.jit.save writes (constants.pkl, code/): no torch needed to make or refuse it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("m/data.pkl", "m/constants.pkl", "m/code/__torch__/m.py", "m/version"):
            zf.writestr(name, b"\x80\x02}q\x00." if name.endswith(".pkl") else b"1")
    return buf.getvalue()


def _nan_stop(nan_pixels: int = 0, **settings: Any) -> str:
    """One epoch of the tiny teaching classifier on 8 random 16x16 images, batch 1, with ``settings``."""
    from twins_np.data import Dataset
    from twins_np.training import TrainConfig, Trainer

    x = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
    x.reshape(-1)[:nan_pixels] = np.nan
    data = Dataset(x, np.arange(8, dtype=np.int64), [f"class {k}" for k in range(10)], "random")
    tiny = {"embed_dims": [8, 16, 32], "num_heads": [1, 2, 2], "depths": [1, 1, 1]}
    cfg = TrainConfig(model_overrides=tiny, epochs=1, batch_size=1, warmup_epochs=0.0, drop_path=0.0, augment=False, **settings)
    with tempfile.TemporaryDirectory() as d:
        Trainer(cfg, d, train_set=data, test_set=data, progress=False, log=None).train_epoch()
    return "trained"


def _memory_advice(command: str) -> str:
    from twins_np.cli import _message

    return _message(MemoryError("Unable to allocate 64.0 GiB for an array with shape (8, 4, 65536, 65536)"), command)


# --- the cases --------------------------------------------------------------------------

CASES: list[Case] = [
    # functional ops
    Case("F.lsa_forward", "x 2-D (N, C) instead of (B, N, C)", ValueError,
         r"'x' must have shape \(B, N, C\) \(3-D\), got shape \(12, 8\)",
         lambda: _lsa(x=_rand(12, 8))),
    Case("F.lsa_forward", "N = 12 tokens with size (3, 3)", ValueError,
         r"N = 12 tokens but size \(H, W\) = \(3, 3\) needs H\*W = 9",
         lambda: _lsa(size=(3, 3))),
    Case("F.lsa_forward", "C = 8 with num_heads = 3", ValueError, r"dim = 8 is not divisible by num_heads = 3",
         lambda: _lsa(num_heads=3)),
    Case("F.lsa_forward", "qkv_w of shape (16, 8) for C = 8", ValueError, r"'qkv_w' must have shape \(24, 8\), got \(16, 8\)",
         lambda: _lsa(qkv_w=_rand(16, 8))),
    Case("F.lsa_forward", "window size ws = 0", ValueError, r"ws must be a positive integer, got 0",
         lambda: _lsa(ws=0)),
    Case("F.lsa_forward", "float16 tokens", TypeError, r"'x' must be float32 or float64, got float16 \(half precision is refused",
         lambda: _lsa(x=_rand(2, 12, 8, dtype=np.float16))),
    Case("F.lsa_forward", "size (3.5, 4): not integers", ValueError, r"'size' must be a pair of integers",
         lambda: _lsa(size=(3.5, 4))),
    Case("F.gsa_forward", "sr_ratio = 4 on a 3x4 map", ValueError, r"sr = 4 is larger than the 3x4 map",
         lambda: _gsa(sr_ratio=4, sr_params=(_rand(8, 8, 4, 4), _rand(8)))),
    Case("F.gsa_forward", "sr_ratio = 2 without the sub-sampling weights", ValueError, r"sr_ratio > 1 needs sr_params",
         lambda: _gsa(sr_params=())),
    Case("F.gsa_forward", "sr_ratio = 0", ValueError, r"sr_ratio must be a positive integer, got 0",
         lambda: _gsa(sr_ratio=0)),
    Case("F.gsa_forward", "x 4-D (B, H, W, C) instead of tokens", ValueError, r"'x' must have shape \(B, N, C\)",
         lambda: _gsa(x=_rand(2, 3, 4, 8))),
    Case("F.peg_forward", "depthwise weight (8, 3, 3) without the group axis", ValueError,
         r"'weight' must have shape \(8, 1, 3, 3\), got \(8, 3, 3\)",
         lambda: (F.peg_forward(_rand(2, 12, 8), (3, 4), _rand(8, 3, 3), _rand(8)), "returned")[1]),
    Case("F.depthwise_patch_conv_forward", "kernel 4 on a 3x3 map", ValueError, r"kernel = stride = 4 is larger than the 3x3 map",
         lambda: (F.depthwise_patch_conv_forward(_rand(1, 3, 3, 2), _rand(2, 1, 4, 4), _rand(2)), "returned")[1]),
    Case("F.avg_pool_forward", "window k = 4 on a 3x4 map", ValueError,
         r"window k = 4 must be a positive integer no larger than the 3x4 map",
         lambda: (F.avg_pool_forward(_rand(1, 3, 4, 2), 4), "returned")[1]),
    Case("F.subsample_forward", "mode 'max'", ValueError, r"mode must be one of .*'conv'.*got 'max'",
         lambda: (F.subsample_forward(_rand(1, 4, 4, 2), "max", 2, {}), "returned")[1]),
    Case("F.softmax_forward", "int64 logits", TypeError, r"'x' must be float32 or float64, got int64",
         lambda: (F.softmax_forward(np.arange(6).reshape(2, 3)), "returned")[1]),
    Case("F.layernorm_forward", "float64 x with float32 gamma/beta", TypeError, r"'gamma' is float32 but 'x' is float64",
         lambda: (F.layernorm_forward(_rand(2, 3, dtype=np.float64), _rand(3), _rand(3)), "returned")[1]),
    Case("F.linear_forward", "x with 3 features, weight for 4", ValueError, r"x has 3 input features",
         lambda: (F.linear_forward(_rand(2, 3), _rand(5, 4), _rand(5)), "returned")[1]),
    Case("F.attention_forward", "k with 5 keys, v with 6", ValueError, r"do not fit",
         lambda: (F.attention_forward(_rand(2, 3, 4), _rand(2, 5, 4), _rand(2, 6, 4)), "returned")[1]),
    Case("F.patch_conv_forward", "kernel 4 on a 3x3 map", ValueError, r"kernel = stride = 4 is larger than the 3x3 map",
         lambda: (F.patch_conv_forward(_rand(1, 3, 3, 2), _rand(4, 2, 4, 4), _rand(4)), "returned")[1]),
    Case("F.dropout_forward", "p = 1.5", ValueError, r"p must be in \[0, 1\], got 1.5",
         lambda: (F.dropout_forward(_rand(3), 1.5), "returned")[1]),
    Case("F.gelu_forward", "float16 input", TypeError, r"got float16 \(half precision is refused",
         lambda: (F.gelu_forward(_rand(3, dtype=np.float16)), "returned")[1]),
    Case("F.mlp_forward", "fc1_w for 3 features, x with 4", ValueError, r"x has 4 input features .* weight expects 3",
         lambda: (F.mlp_forward(_rand(2, 4), _rand(16, 3), _rand(16), _rand(4, 16), _rand(4)), "returned")[1]),
    Case("F.window_partition_forward", "N = 12 tokens with size (3, 3)", ValueError, r"N = 12 tokens but size",
         lambda: (F.window_partition_forward(_rand(2, 12, 8), (3, 3), 2), "returned")[1]),
    Case("F.window_reverse_forward", "windows (2, 3, 4, 8) for size (3, 4), ws 2", ValueError,
         r"windows must have shape \(B, 4, 4, C\) for size \(3, 4\) and ws 2, got \(2, 3, 4, 8\)",
         lambda: (F.window_reverse_forward(_rand(2, 3, 4, 8), (3, 4), 2), "returned")[1]),
    Case("F.depthwise_conv3x3_forward", "x 3-D (H, W, C)", ValueError, r"'x' must have shape \(B, H, W, C\) \(4-D\)",
         lambda: (F.depthwise_conv3x3_forward(_rand(3, 3, 2), _rand(2, 1, 3, 3), _rand(2)), "returned")[1]),
    Case("F.drop_path_forward", "mask of shape (3,) for a batch of 2", ValueError,
         r"mask must have shape \(B,\) = \(2,\), got \(3,\)",
         lambda: (F.drop_path_forward(_rand(2, 3), 0.5, mask=np.ones(3, np.float32)), "returned")[1]),
    Case("F.cross_entropy_forward", "float labels [0., 1., 2., 4.]", TypeError, r"integer labels expected .* got float64",
         lambda: _ce(np.array([0.0, 1.0, 2.0, 4.0]))),
    Case("F.cross_entropy_forward", "label 5 with K = 5 classes", ValueError, r"labels must be in \[0, 5\), got range \[0, 5\]",
         lambda: _ce(np.array([0, 1, 2, 5]))),
    Case("F.cross_entropy_forward", "label -1", ValueError, r"labels must be in \[0, 5\), got range \[-1, 4\]",
         lambda: _ce(np.array([0, 1, -1, 4]))),
    Case("F.cross_entropy_forward", "3 labels for a batch of 4", ValueError, r"target has 3 labels for a batch of 4",
         lambda: _ce(np.array([0, 1, 2]))),
    Case("F.cross_entropy_forward", "bool labels", TypeError, r"integer labels expected .* got bool",
         lambda: _ce(np.array([True, False, True, True]))),
    Case("F.cross_entropy_forward", "soft target (4, 4) for logits (4, 5)", ValueError,
         r"soft target must have shape \(4, 5\), got \(4, 4\)",
         lambda: _ce(_rand(4, 4))),
    Case("F.cross_entropy_forward", "label_smoothing = 1.0", ValueError, r"label_smoothing must be in \[0, 1\), got 1.0",
         lambda: _ce(np.array([0, 1, 2, 4]), label_smoothing=1.0)),
    Case("F.cross_entropy_forward", "logits 1-D (K,)", ValueError, r"'logits' must have shape \(B, K\) \(2-D\)",
         lambda: _ce(np.array([0]), logits=_rand(5))),
    Case("F.cross_entropy_forward", "target as a Python list", TypeError, r"target",
         lambda: _ce([0, 1, 2, 4])),
    Case("F.bilinear_resize_forward", "size (0, 3)", ValueError,
         r"'size' must be a pair of positive integers \(Ho, Wo\), got \(0, 3\)",
         lambda: (F.bilinear_resize_forward(_rand(1, 4, 4, 2), (0, 3)), "returned")[1]),
    Case("F.bilinear_resize_forward", "x 3-D (H, W, C)", ValueError, r"'x' must have shape \(B, H, W, C\) \(4-D\)",
         lambda: (F.bilinear_resize_forward(_rand(4, 4, 2), (8, 8)), "returned")[1]),
    Case("F.bilinear_resize_forward", "both size and scale_factor", ValueError, r"give exactly one of 'size' and 'scale_factor'",
         lambda: (F.bilinear_resize_forward(_rand(1, 4, 4, 2), (8, 8), 2), "returned")[1]),
    Case("F.nearest_resize_forward", "scale_factor 0.1 on a 4x4 map", ValueError,
         r"scale_factor 0.1 makes the 4x4 map empty \(0x0\)",
         lambda: (F.nearest_resize_forward(_rand(1, 4, 4, 2), scale_factor=0.1), "returned")[1]),
    Case("F.adaptive_avg_pool_forward", "output size (0, 2)", ValueError,
         r"'size' must be a pair of positive integers \(Ho, Wo\), got \(0, 2\)",
         lambda: (F.adaptive_avg_pool_forward(_rand(1, 4, 4, 2), (0, 2)), "returned")[1]),
    Case("F.corner_pad_forward", "multiple 2.5", ValueError, r"'multiple' must be a positive integer, got 2.5",
         lambda: (F.corner_pad_forward(_rand(1, 5, 5, 2), 2.5), "returned")[1]),
    Case("F.nearest_upsample2x_forward", "uint8 map", TypeError, r"'x' must be float32 or float64, got uint8",
         lambda: (F.nearest_upsample2x_forward(np.zeros((1, 4, 4, 2), np.uint8)), "returned")[1]),
    Case("F.pixel_cross_entropy_forward", "label 7 with K = 5 classes (not the ignore index)", ValueError,
         r"labels must be in \[0, 5\) or equal ignore_index = 255; got 1 pixels with labels in \[7, 7\]",
         lambda: _pixel_ce(_labels(7))),
    Case("F.pixel_cross_entropy_forward", "label -1 with ignore_index = 255", ValueError,
         r"labels must be in \[0, 5\) or equal ignore_index = 255; got 1 pixels with labels in \[-1, -1\]",
         lambda: _pixel_ce(_labels(-1))),
    Case("F.pixel_cross_entropy_forward", "every pixel 255 (torch returns nan)", ValueError,
         r"every pixel of target is ignore_index = 255: the mean over zero pixels is undefined",
         lambda: _pixel_ce(np.full((2, 3, 4), 255))),
    Case("F.pixel_cross_entropy_forward", "target (2, 3, 3) for logits (2, 5, 3, 4)", ValueError,
         r"target must have shape \(B, H, W\) = \(2, 3, 4\) for logits \(2, 5, 3, 4\), got \(2, 3, 3\)",
         lambda: _pixel_ce(np.zeros((2, 3, 3), np.int64))),
    Case("F.pixel_cross_entropy_forward", "float labels", TypeError, r"integer labels expected for target, got float64",
         lambda: _pixel_ce(np.zeros((2, 3, 4)))),
    Case("F.pixel_cross_entropy_forward", "logits 3-D (K, H, W)", ValueError, r"'logits' must have shape \(B, K, H, W\) \(4-D\)",
         lambda: _pixel_ce(np.zeros((3, 4), np.int64), logits=_rand(5, 3, 4))),
    Case("Upsample(mode='bicubic')", "unsupported mode", ValueError,
         r"mode must be one of \('nearest', 'bilinear'\), got 'bicubic'",
         lambda: (Upsample(scale_factor=2, mode="bicubic"), "built")[1]),
    Case("Upsample(size=8, mode='bilinear')", "align_corners=True", ValueError, r"align_corners=True is not supported",
         lambda: (Upsample(size=8, mode="bilinear", align_corners=True), "built")[1]),
    # dense-head layers
    Case("F.conv2d_forward", "x with 4 channels, weight for 3", ValueError, r"x has C_in = 4 channels .* expects C_in = 3",
         lambda: (F.conv2d_forward(_rand(1, 5, 5, 4), _rand(6, 3, 3, 3), None, 1, 1), "returned")[1]),
    Case("F.conv2d_forward", "padding = -1", ValueError, r"padding must be an integer >= 0, got -1",
         lambda: (F.conv2d_forward(_rand(1, 5, 5, 3), _rand(6, 3, 3, 3), None, 1, -1), "returned")[1]),
    Case("F.conv2d_forward", "stride = 0", ValueError, r"stride must be an integer >= 1, got 0",
         lambda: (F.conv2d_forward(_rand(1, 5, 5, 3), _rand(6, 3, 3, 3), None, 0, 1), "returned")[1]),
    Case("F.conv2d_forward", "kernel 5 on a 2x2 map with padding 1", ValueError,
         r"kernel_size 5 is larger than the padded input 4x4 \(2x2 with padding 1\)",
         lambda: (F.conv2d_forward(_rand(1, 2, 2, 3), _rand(6, 3, 5, 5), None, 1, 1), "returned")[1]),
    Case("F.relu_forward", "int64 input", TypeError, r"'x' must be float32 or float64, got int64",
         lambda: (F.relu_forward(np.arange(4)), "returned")[1]),
    Case("F.group_norm_forward", "num_groups = 4 for C = 6", ValueError, r"num_groups = 4 does not divide the C = 6 channels",
         lambda: (F.group_norm_forward(_rand(2, 3, 3, 6), None, None, 4), "returned")[1]),
    Case("F.batch_norm_forward", "training on one value per channel", ValueError,
         r"training needs more than one value per channel, got x of shape \(1, 1, 1, 3\)",
         lambda: (F.batch_norm_forward(_rand(1, 1, 1, 3), None, None, None, None, True), "returned")[1]),
    Case("Conv2d(3, 8, 3, padding=1)", "a map with 4 channels", ValueError, r"x has C_in = 4 channels .* expects C_in = 3",
         lambda: (Conv2d(3, 8, 3, padding=1, rng=0)(_rand(1, 5, 5, 4)), "returned")[1]),
    Case("Conv2d(3, 8, 3, padding=-1)", "negative padding", ValueError, r"padding >= 0; got kernel_size=3, stride=1, padding=-1",
         lambda: (Conv2d(3, 8, 3, padding=-1), "built")[1]),
    Case("Conv2d(8, 8, 3, groups=2)", "groups other than 1 or depthwise", ValueError, r"groups == 1 with any kernel",
         lambda: (Conv2d(8, 8, 3, groups=2), "built")[1]),
    Case("GroupNorm(4, 6)", "groups do not divide the channels", ValueError,
         r"num_groups = 4 must be a positive divisor of num_channels = 6",
         lambda: (GroupNorm(4, 6), "built")[1]),
    Case("GroupNorm(3, 6)", "a map with 5 channels", ValueError, r"GroupNorm was built for dim = 6 channels, but x has C = 5",
         lambda: (GroupNorm(3, 6)(_rand(1, 2, 2, 5)), "returned")[1]),
    Case("BatchNorm2d(4)", "a map with 3 channels", ValueError, r"BatchNorm2d was built for dim = 4 channels, but x has C = 3",
         lambda: (BatchNorm2d(4)(_rand(2, 2, 2, 3)), "returned")[1]),
    Case("BatchNorm2d(3)", "NCHW map (2, 3, 5, 5) instead of channels-last", ValueError,
         r"BatchNorm2d was built for dim = 3 channels, but x has C = 5 .* looks NCHW: pass x.transpose\(0, 2, 3, 1\)",
         lambda: (BatchNorm2d(3)(_rand(2, 3, 5, 5)), "returned")[1]),
    # modules
    Case("LocallyGroupedAttn(8, num_heads=3)", "dim not divisible by heads", ValueError,
         r"dim = 8 is not divisible by num_heads = 3",
         lambda: (LocallyGroupedAttn(8, 3, ws=2), "built")[1]),
    Case("LocallyGroupedAttn(8, 2, ws=1)", "ws = 1", ValueError, r"ws >= 2, got 1 \(in Twins, ws = 1 means .*GlobalSubSampleAttn",
         lambda: (LocallyGroupedAttn(8, 2, ws=1), "built")[1]),
    Case("LocallyGroupedAttn(8, 2, ws=2)", "tokens with C = 6 channels", ValueError, r"channels",
         lambda: (LocallyGroupedAttn(8, 2, ws=2, rng=0)(_rand(2, 12, 6), (3, 4)), "returned")[1]),
    Case("LocallyGroupedAttn.backward", "called twice for one forward", RuntimeError, r"LocallyGroupedAttn",
         _backward_twice),
    Case("GlobalSubSampleAttn(8, 2, sr_ratio=4)", "a 3x4 map", ValueError, r"sr = 4 is larger than the 3x4 map",
         lambda: (GlobalSubSampleAttn(8, 2, sr_ratio=4, rng=0)(_rand(2, 12, 8), (3, 4)), "returned")[1]),
    Case("GlobalSubSampleAttn(8, 2, sr_ratio=2)", "float64 tokens, float32 parameters", TypeError,
         r"'weight' is float32 but 'x' is float64; cast both to one dtype",
         lambda: (GlobalSubSampleAttn(8, 2, sr_ratio=2, rng=0)(_rand(2, 12, 8, dtype=np.float64), (3, 4)), "returned")[1]),
    Case("PosConv(8, 8)", "N = 12 tokens with size (4, 4)", ValueError, r"N = 12 tokens but size \(H, W\) = \(4, 4\)",
         lambda: (PosConv(8, 8, rng=0)(_rand(2, 12, 8), (4, 4)), "returned")[1]),
    Case("Block(8, 2, ws=2)", "float16 tokens", TypeError, r"got float16 \(half precision is refused",
         lambda: (Block(8, 2, ws=2, rng=0)(_rand(2, 12, 8, dtype=np.float16), (3, 4)), "returned")[1]),
    Case("Block(8, 2, ws=2)", "int64 tokens", TypeError, r"'x' must be float32 or float64, got int64",
         lambda: (Block(8, 2, ws=2, rng=0)(np.ones((2, 12, 8), np.int64), (3, 4)), "returned")[1]),
    Case("Linear(3, 4).backward", "float64 dout after a float32 forward", TypeError, r"dout",
         _linear_backward_f64),
    Case("Module.astype", "np.float16", TypeError, r"float16 is not supported",
         lambda: (create_model("twins_svt_teach32").astype(np.float16), "returned")[1]),
    Case("Module.astype", "'bfloat16'", TypeError, r"bfloat16",
         lambda: (create_model("twins_svt_teach32").astype("bfloat16"), "returned")[1]),
    Case("Module.astype", "np.int32", TypeError, r"astype needs a floating dtype, got int32",
         lambda: (create_model("twins_svt_teach32").astype(np.int32), "returned")[1]),
    Case("Module.load_state_dict", "a key missing", KeyError, r"missing keys \['head.bias'\]",
         lambda: _load(_state(head__bias=None))),
    Case("Module.load_state_dict", "an unexpected key", KeyError, r"unexpected keys \['head.scale'\]",
         lambda: _load(_state(head__scale=np.ones(10, np.float32)))),
    Case("Module.load_state_dict", "head.weight of shape (3, 3)", ValueError, r"head.weight: expected \(10, 128\), got \(3, 3\)",
         lambda: _load(_state(head__weight=np.ones((3, 3), np.float32)))),
    Case("Module.load_state_dict", "a model instead of its state_dict()", TypeError, r"state_dict\(\)",
         lambda: _load(create_model("twins_svt_teach32"))),
    Case("Module.load_state_dict", "a file name instead of a dict", TypeError, r"load_weights",
         lambda: _load("weights.npz")),
    # the segmenter (Semantic FPN)
    Case("create_segmenter", "unknown name 'twins_fpn'", ValueError, r"unknown segmenter 'twins_fpn'; choose one of",
         lambda: (create_segmenter("twins_fpn"), "built")[1]),
    Case("create_segmenter", "num_groups=5 for 16 head channels", ValueError,
         r"GroupNorm: 16 channels are not divisible into num_groups = 5",
         lambda: (create_segmenter("twins_svt_teach32_fpn", num_groups=5), "built")[1]),
    Case("twins_svt_teach32_fpn", "image with 4 channels", ValueError, r"'x' must have 3 channels on axis 1",
         lambda: _forward(_seg(), _rand(1, 4, 32, 32))),
    Case("twins_svt_teach32_fpn", "4x4 image", ValueError, r"smallest input it accepts is 8x8",
         lambda: _forward(_seg(), _rand(1, 3, 4, 4))),
    Case("twins_svt_teach32_fpn.loss", "label 3 with K = 3 classes (not 255)", ValueError,
         r"labels must be in \[0, 3\) or equal ignore_index = 255; got 4 pixels with labels in \[3, 3\]",
         lambda: (_seg().loss(_rand(1, 3, 8, 8), np.pad(np.full((1, 2, 2), 3), ((0, 0), (0, 6), (0, 6)))), "returned")[1]),
    Case("twins_svt_teach32_fpn.backward", "dlogits with 4 classes for K = 3", ValueError,
         r"dlogits must have the logits' shape \(1, 3, 8, 8\), got \(1, 4, 8, 8\)",
         lambda: _seg_backward(_rand(1, 4, 8, 8))),
    Case("FPN(in_channels=(32, 64, 128))", "a list of 2 maps", ValueError, r"FPN takes a list of 3 maps \(one per level\), got 2",
         lambda: (_seg().neck([_rand(1, 4, 4, 32), _rand(1, 2, 2, 64)]), "returned")[1]),
    Case("FPN(in_channels=(32, 64, 128))", "level 1 with 8 channels", ValueError,
         r"FPN: level 1 must have 64 channels \(channels-last, last axis\), got shape \(1, 2, 2, 8\)",
         lambda: (_seg().neck([_rand(1, 4, 4, 32), _rand(1, 2, 2, 8), _rand(1, 1, 1, 128)]), "returned")[1]),
    Case("FPN(in_channels=(32, 64, 128))", "NCHW maps (C on axis 1)", ValueError, r"FPN: level 0 must have 32 channels",
         lambda: (_seg().neck([_rand(1, 32, 4, 4), _rand(1, 64, 2, 2), _rand(1, 128, 1, 1)]), "returned")[1]),
    # the model
    Case("create_model", "unknown name 'twins_svt_tiny'", ValueError, r"unknown model 'twins_svt_tiny'; choose one of",
         lambda: (create_model("twins_svt_tiny"), "built")[1]),
    Case("create_model", "dtype=np.float16", TypeError, r"float16",
         lambda: _built(dtype=np.float16)),
    Case("twins_svt_small", "16x16 image", ValueError,
         r"input image 16x16 is too small .* 4x4 token map .* sr = 8, .* smallest input it accepts is 32x32",
         lambda: _forward(_svt_small(), _rand(1, 3, 16, 16))),
    Case("twins_svt_small", "31x31 image", ValueError,
         r"input image 31x31 is too small .* stage 1 has a 7x7 token map .* sr = 8, .* 32x32",
         lambda: _forward(_svt_small(), _rand(1, 3, 31, 31))),
    Case("twins_svt_small", "32x16 image (one side too small)", ValueError, r"input image 32x16 is too small .* 8x4 token map",
         lambda: _forward(_svt_small(), _rand(1, 3, 32, 16))),
    Case("twins_svt_small", "3x3 image, smaller than a patch", ValueError,
         r"patch embedding \(patch size 4\) gets a 3x3 map, smaller than one patch",
         lambda: _forward(_svt_small(), _rand(1, 3, 3, 3))),
    Case("twins_svt_teach32", "4x4 image", ValueError, r"smallest input it accepts is 8x8",
         lambda: _forward(_teach(), _rand(1, 3, 4, 4))),
    Case("twins_svt_teach32", "image 3-D (C, H, W), no batch axis", ValueError, r"'x' must have shape \(B, C, H, W\) \(4-D\)",
         lambda: _forward(_teach(), _rand(3, 32, 32))),
    Case("twins_svt_teach32", "channels-last image (B, H, W, C)", ValueError, r"looks channels-last .* x.transpose\(0, 3, 1, 2\)",
         lambda: _forward(_teach(), _rand(1, 32, 32, 3))),
    Case("twins_svt_teach32", "1 channel instead of 3", ValueError, r"'x' must have 3 channels on axis 1",
         lambda: _forward(_teach(), _rand(1, 1, 32, 32))),
    Case("twins_svt_teach32", "empty batch (0, 3, 32, 32)", ValueError, r"batch size B = 0",
         lambda: _forward(_teach(), _rand(0, 3, 32, 32))),
    Case("twins_svt_teach32", "uint8 image", TypeError, r"got uint8 \(convert images with x.astype\(np.float32\)",
         lambda: _forward(_teach(), np.zeros((1, 3, 32, 32), np.uint8))),
    Case("twins_svt_teach32", "float16 image", TypeError, r"got float16 \(half precision is refused",
         lambda: _forward(_teach(), _rand(1, 3, 32, 32, dtype=np.float16))),
    Case("twins_svt_teach32", "float64 image, float32 model", TypeError,
         r"'x' is float64 but the model's parameters are float32; twins-np never upcasts silently",
         lambda: _forward(_teach(), _rand(1, 3, 32, 32, dtype=np.float64))),
    Case("twins_svt_teach32", "a nested list", TypeError, r"'x' must be an array \(NumPy or CuPy\), got list",
         lambda: _forward(_teach(), [[[[0.0]]]])),
    Case("twins_svt_teach32, check_finite=True", "6 NaN pixels", ValueError, r"'x' contains 6 NaN and 0 Inf values",
         lambda: _forward(_teach(check_finite=True), _nan_image(np.nan))),
    Case("twins_svt_teach32, check_finite=True", "6 Inf pixels", ValueError, r"'x' contains 0 NaN and 6 Inf values",
         lambda: _forward(_teach(check_finite=True), _nan_image(np.inf))),
    Case("Twins.loss", "label 10 for 10 classes", ValueError, r"labels must be in \[0, 10\), got range \[0, 10\]",
         lambda: (_teach().loss(_rand(2, 3, 32, 32), np.array([0, 10])), "returned")[1]),
    Case("Twins.backward_loss", "without loss() before it", RuntimeError, r"backward_loss\(\) needs a loss\(\) call",
         lambda: (create_model("twins_svt_teach32").backward_loss(), "returned")[1]),
    Case("Twins.backward", "dlogits (3, 10) after a forward on 2 images", ValueError, r"\(2, 10\)",
         lambda: _twins_backward(_rand(3, 10))),
    Case("Twins.backward", "without a forward", RuntimeError, r"Twins",
         lambda: _twins_backward(_rand(2, 10), forward=False)),
    # the model as a backbone (stage maps)
    Case("Twins.forward_intermediates", "indices=[3] for a 3-stage model", ValueError,
         r"'indices' entry 3 is out of range: the model has 3 stages, 0 to 2", lambda: _intermediates(indices=[3])),
    Case("Twins.forward_intermediates", "indices=0", ValueError, r"'indices' = 0 asks for the last 0 stages",
         lambda: _intermediates(indices=0)),
    Case("Twins.forward_intermediates", "indices='all'", TypeError, r"'indices' must be None \(every stage\), an int n",
         lambda: _intermediates(indices="all")),
    Case("Twins.forward_intermediates", "output_fmt='NLC'", ValueError, r"'output_fmt' must be 'NCHW' \(timm's\) or 'NHWC'",
         lambda: _intermediates(output_fmt="NLC")),
    Case("Twins.backward_intermediates", "without forward_intermediates before it", RuntimeError,
         r"backward_intermediates\(\) needs a forward_intermediates\(\) before it",
         lambda: _intermediates_backward([None, None, None], forward=False)),
    Case("Twins.backward_intermediates", "2 gradients for 3 maps", ValueError,
         r"'grads' has 2 entries but forward_intermediates returned 3 maps \(stages \[0, 1, 2\]\)",
         lambda: _intermediates_backward(lambda g: g[:2])),
    Case("Twins.backward_intermediates", "an NHWC gradient for an NCHW map", ValueError,
         r"'grads\[0\]' must have the shape of the map of stage 0 \(NCHW\) \(2, 32, 16, 16\), got \(2, 16, 16, 32\)",
         lambda: _intermediates_backward(lambda g: [g[0].transpose(0, 2, 3, 1), *g[1:]])),
    Case("Twins.backward_intermediates", "one array instead of a list", TypeError, r"'grads' must be a list",
         lambda: _intermediates_backward(lambda g: g[0])),
    Case("Twins.backward_intermediates", "dfinal after intermediates_only=True", ValueError,
         r"'dfinal' was given but forward_intermediates\(intermediates_only=True\) returned no final output",
         lambda: _intermediates_backward(dfinal=_rand(2, 16, 128))),
    Case("Twins.backward", "after forward_intermediates (not forward)", RuntimeError, r"without a forward\(\)",
         _twins_backward_after_intermediates),
    Case("create_model", "out_indices without features_only=True", ValueError, r"pass features_only=True",
         lambda: (create_model("twins_svt_teach32", out_indices=(0, 1)), "built")[1]),
    Case("create_model, features_only=True", "out_indices=(0, 3) for a 3-stage model", ValueError,
         r"'indices' entry 3 is out of range",
         lambda: (create_model("twins_svt_teach32", features_only=True, out_indices=(0, 3)), "built")[1]),
    Case("TwinsFeatures.backward", "2 gradients for 3 maps", ValueError,
         r"'grads' has 2 entries but forward_intermediates returned 3 maps", lambda: _features_backward(2)),
    # one backward, one forward
    Case("Block.backward", "after a forward refused half-way (LayerNorm ran, GSA refused the map)", RuntimeError,
         r"Block.backward\(\): the last forward of Block stopped part-way \(ValueError\)",
         _block_backward_after_refused_forward),
    Case("Twins.backward", "after Ctrl-C in the middle of forward", RuntimeError,
         r"Twins.backward\(\): the last forward of Twins stopped part-way \(KeyboardInterrupt\)",
         _twins_backward_after_interrupt),
    Case("Twins.backward_loss", "after loss() refused the next batch's labels", RuntimeError,
         r"Twins.backward_loss\(\): the last forward of Twins stopped part-way \(ValueError\)",
         _backward_loss_after_refused_labels),
    Case("Twins.backward", "after a block was run on its own since the forward", RuntimeError,
         r"Block.backward\(\): its cache comes from another forward call",
         _twins_backward_after_block_alone),
    # loading weights: all or nothing
    Case("Module.load_state_dict", "complex128 head.weight", TypeError,
         r"nothing was loaded.*\n  head.weight: dtype complex128 \(complex: casting would drop the imaginary part\)",
         lambda: _load(_state(head__weight=np.ones((10, 128), np.complex128)))),
    Case("Module.load_state_dict", "bool norm.weight", TypeError, r"norm.weight: dtype bool",
         lambda: _load(_state(norm__weight=np.ones(128, bool)))),
    Case("Module.load_state_dict", "strings in head.bias", TypeError, r"head.bias: dtype <U3 \(strings\)",
         lambda: _load(_state(head__bias=np.full(10, "abc")))),
    Case("Module.load_state_dict", "NaN in head.bias", ValueError,
         r"NaN or Inf, .* allow_nonfinite=True .*\n  head.bias: 10 NaN and 0 Inf values",
         lambda: _load(_state(head__bias=np.full(10, np.nan, np.float32)))),
    Case("load_weights", "an .npz whose norm.bias is Inf", ValueError,
         r"checkpoint w.npz: cannot load 1 of the arrays [\s\S]*norm.bias: 0 NaN and 128 Inf values",
         lambda: _load_file_with("norm.bias", np.full(128, np.inf, np.float32))),
    # damaged and hostile checkpoint files
    Case("read_weights", "an empty .npz", ValueError, r"w.npz: the file is empty \(0 bytes\)",
         lambda: _read("w.npz", b"")),
    Case("read_weights", "an empty .safetensors", ValueError, r"w.safetensors: the file is empty \(0 bytes\)",
         lambda: _read("w.safetensors", b"")),
    Case("read_weights", "an empty .pth (no torch needed to refuse it)", ValueError, r"w.pth: the file is empty \(0 bytes\)",
         lambda: _read("w.pth", b"")),
    Case("read_weights", "random bytes named .npz", ValueError, r"w.npz: refused to load: not an .npz archive",
         lambda: _read("w.npz", np.random.default_rng(0).bytes(256))),
    Case("read_weights", ".npz member whose header claims a 1 GiB array", ValueError,
         r"w.npz: array 'w' claims shape \(134217728,\) of float64 \(1073741824 bytes\) but its member holds 16 bytes",
         lambda: _read("w.npz", _npz({"w.npy": _npy_claiming((2**27,), bytes(16))}))),
    Case("read_weights", ".npz member that is not a .npy array", ValueError,
         r"w.npz: member 'readme.txt' is not a .npy array",
         lambda: _read("w.npz", _npz({"w.npy": _npy_claiming((1,), bytes(8)), "readme.txt": b"hi"}))),
    Case("read_weights", ".safetensors header nesting JSON 100 000 deep", ValueError,
         r"w.safetensors: corrupt safetensors file: the JSON header is nested too deeply",
         lambda: _read("w.safetensors", _nested_safetensors(100_000))),
    # training
    Case("AdamW", "a model instead of its parameters", TypeError, r"got a Module; pass model.parameters\(\)",
         lambda: (AdamW(_teach()), "built")[1]),
    Case("AdamW", "lr = -1", ValueError, r"lr must be >= 0, got -1",
         lambda: (AdamW(_teach().parameters(), lr=-1), "built")[1]),
    Case("AdamW", "betas (1.0, 0.9)", ValueError, r"betas must be two numbers in \[0, 1\)",
         lambda: (AdamW(_teach().parameters(), betas=(1.0, 0.9)), "built")[1]),
    Case("clip_grad_norm", "max_norm = -1", ValueError, r"max_norm must be > 0, got -1",
         lambda: (clip_grad_norm(_teach().parameters(), -1.0), "returned")[1]),
    # the command line
    Case("twins-np flops", "a mistyped model name", None, r"unknown model 'twins_svt_smal' \(did you mean 'twins_svt_small'\?\)",
         argv=("flops", "twins_svt_smal")),
    Case("twins-np flops", "--size 16 16 for twins_svt_small", None, r"4x4 token grid is smaller than .* sr=8",
         argv=("flops", "twins_svt_small", "--size", "16", "16")),
    Case("twins-np flops", "--depth -1", None, r"--depth must be >= 0, got -1",
         argv=("flops", "twins_svt_small", "--depth", "-1")),
    Case("twins-np flops", "--batch x", None, r"argument --batch: invalid int value: 'x'",
         argv=("flops", "twins_svt_small", "--batch", "x")),
    Case("twins-np predict", "an image that does not exist", None, r"IMAGE /nonexistent/cat.png: no such file",
         argv=("predict", "/nonexistent/cat.png", "--model", "twins_svt_teach32", "--weights", "/nonexistent/w.npz")),
    Case("twins-np predict", "a file Pillow cannot read as IMAGE", None,
         r"IMAGE tests/data_files/README.md cannot be read as an image",
         argv=("predict", "tests/data_files/README.md", "--weights", "/nonexistent/w.npz")),
    Case("twins-np predict", "a folder as IMAGE", None, r"IMAGE tests/data_files is a folder, not an image file",
         argv=("predict", "tests/data_files", "--weights", "/nonexistent/w.npz")),
    Case("twins-np predict", "--topk 0 (checked before the weights are read)", None, r"--topk must be >= 1, got 0",
         argv=("predict", "tests/data_files/chelsea.jpg", "--weights", "/nonexistent/w.npz", "--topk", "0")),
    Case("twins-np predict", "a weights file that does not exist", None, r"no such weights file: /nonexistent/w.npz",
         argv=("predict", "tests/data_files/chelsea.jpg", "--model", "twins_svt_teach32", "--weights", "/nonexistent/w.npz")),
    Case("twins-np predict", "a folder as --weights", None, r"--weights tests/data_files is a folder, not a weights file",
         argv=("predict", "tests/data_files/chelsea.jpg", "--weights", "tests/data_files")),
    Case("twins-np evaluate", "a mistyped --model", None,
         r"unknown model 'twins_svt_teach23' \(did you mean 'twins_svt_teach32'\?\)",
         argv=("evaluate", "--weights", "w.npz", "--model", "twins_svt_teach23")),
    Case("twins-np evaluate", "--batch-size 0", None, r"--batch-size must be >= 1, got 0",
         argv=("evaluate", "--weights", "w.npz", "--batch-size", "0")),
    Case("twins-np evaluate", "a file as --out", None, r"--out README.md is a file, not a folder",
         argv=("evaluate", "--weights", "w.npz", "--out", "README.md")),
    Case("twins-np train", "a file as --out", None, r"--out README.md is a file, not a folder",
         argv=("train", "--out", "README.md")),
    Case("twins-np train", "--epochs 0", None, r"--epochs must be >= 1, got 0",
         argv=("train", "--out", "/nonexistent/run", "--epochs", "0")),
    Case("twins-np train", "a mistyped --model-overrides key", None,
         r"--model-overrides: unknown key 'embed_dim' \(did you mean 'embed_dims'\?\); valid keys: attn_drop_rate, ",
         argv=("train", "--out", "/nonexistent/run", "--model-overrides", '{"embed_dim": [8, 16, 32]}')),
    Case("twins-np train", "a zero size in --model-overrides", None,
         r"embed_dims must be a list of 3 integers >= 1 .* got \[0, 16, 32\]",
         argv=("train", "--out", "/nonexistent/run", "--model-overrides", '{"embed_dims": [0, 16, 32]}')),
    Case("twins-np train", "a negative eps in --model-overrides", None, r"norm_eps must be a number > 0 .* got -1e-06",
         argv=("train", "--out", "/nonexistent/run", "--model-overrides", '{"norm_eps": -1e-6}')),
    Case("twins-np train", "a string for a size in --model-overrides", None, r"patch_size must be an integer >= 1, got \"2\"",
         argv=("train", "--out", "/nonexistent/run", "--model-overrides", '{"patch_size": "2"}')),
    Case("twins-np train", "a window of 100000 on a 16x16 map", None,
         r"wss\[0\] = 100000 is far larger than stage 1's 16x16 .* would need",
         argv=("train", "--out", "/nonexistent/run", "--model-overrides", '{"wss": [100000, 4, 4]}')),
    Case("twins-np train", "--task segment with a classifier", None,
         r"--model: 'twins_svt_teach32' is a classifier; --task segment trains a segmenter \(twins_svt_teach32_fpn puts",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--model", "twins_svt_teach32", "--data", "shapes")),
    Case("twins-np train", "--task segment on classification data", None,
         r"--data: 'digits' has one label per image; --task segment needs per-pixel labels: shapes, long_range_dense",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--model", "twins_svt_teach64_fpn",
               "--data", "digits")),
    Case("twins-np train", "a segmenter without --task segment", None,
         r"--model: 'twins_svt_teach64_fpn' is a segmenter .* train it with --task segment",
         argv=("train", "--out", "/nonexistent/run", "--model", "twins_svt_teach64_fpn")),
    Case("twins-np train", "segmentation data without --task segment", None,
         r"--data: 'shapes' has per-pixel labels: train a segmenter on it with --task segment",
         argv=("train", "--out", "/nonexistent/run", "--data", "shapes")),
    Case("twins-np train", "a mistyped --data", None, r"unknown dataset 'shape' \(did you mean 'shapes'\?\)",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--data", "shape")),
    Case("twins-np train", "--data folder: a missing folder", None,
         r"segmentation folder /nonexistent/ade does not exist or is not a folder",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--model", "twins_svt_teach64_fpn",
               "--data", "folder:/nonexistent/ade")),
    Case("twins-np train", "--reduce-zero-label on synthetic data", None,
         r"--reduce-zero-label is for segmentation folders \(--data folder:PATH\), not shapes",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--model", "twins_svt_teach64_fpn",
               "--data", "shapes", "--reduce-zero-label")),
    Case("twins-np train", "--num-classes on synthetic data", None,
         r"--num-classes is for segmentation folders \(--data folder:PATH\), not shapes",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--model", "twins_svt_teach64_fpn",
               "--data", "shapes", "--num-classes", "5")),
    Case("twins-np train", "--num-classes 0", None, r"--num-classes must be an integer from 1 to 65536",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--model", "twins_svt_teach64_fpn",
               "--data", "folder:/nonexistent/ade", "--num-classes", "0")),
    Case("twins-np train", "--num-classes other than an mmsegmentation configuration's dataset", None,
         r"--num-classes 5: twins_svt_small_fpn_ade20k is mmsegmentation's configuration for ade20k, whose 150 classes",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--model", "twins_svt_small_fpn_ade20k",
               "--data", "folder:/nonexistent/ade", "--num-classes", "5")),
    Case("twins-np train", "head_channels 0 in --model-overrides", None,
         r"--model-overrides: head_channels must be an integer >= 1, got 0",
         argv=("train", "--out", "/nonexistent/run", "--task", "segment", "--model", "twins_svt_teach64_fpn",
               "--data", "shapes", "--model-overrides", '{"head_channels": 0}')),
    Case("twins-np convert", "an input with an unknown suffix", None, r"weights.txt: unknown weights format",
         argv=("convert", "weights.txt", "out.npz")),
    Case("twins-np convert", "a folder as OUT", None, r"OUT docs is a folder; give the file to write",
         argv=("convert", "w.npz", "docs")),
    Case("twins-np", "no command", None, r"the following arguments are required: COMMAND",
         argv=()),
    # folder data: one class count for every split, errors naming the file and the split
    Case("load_segmentation_folder", "the validation split lacks the rarest class (no classes.txt)", None,
         r"returned train: 4 classes, test: 4 classes",
         lambda: _in_tmp(_splits([0, 1, 2, 3], [0, 1, 2]), _class_counts)),
    Case("load_segmentation_folder", "the validation split holds a class the training split lacks", None,
         r"returned train: 4 classes, test: 4 classes",
         lambda: _in_tmp(_splits([0, 1, 2], [0, 3]), _class_counts)),
    Case("load_segmentation_folder", "classes.txt names 3 classes, a validation label map holds 3", ValueError,
         r"segmentation folder \. \(test split\): label map annotations/validation/b.png holds 3, outside \[0, 3\) and not "
         r"the ignore index 255 \(classes.txt gives 3 classes\)",
         lambda: _in_tmp(_all(_splits([0, 1, 2], [0, 3]), lambda r: (r / "classes.txt").write_text("a\nb\nc\n")),
                         lambda: _folder(split="test"))),
    Case("load_segmentation_folder", "classes.txt saved in cp1252", ValueError,
         r"segmentation folder \.: classes.txt is not UTF-8 text \(byte 0xe9 at position 3 cannot be decoded\); save it as UTF-8",
         lambda: _in_tmp(_all(_splits([0, 1], [0, 1]), lambda r: (r / "classes.txt").write_bytes(b"caf\xe9\nbar\n")), _folder)),
    Case("load_segmentation_folder", "an 8x8 image with an 8x9 label map", ValueError,
         r"segmentation folder \. \(train split\): image images/a.png is 8x8 but its label map annotations/a.png is 8x9",
         lambda: _in_tmp(_pair("a.png", _RGB8, np.zeros((9, 8))), _folder)),
    # image files: size limits before decoding, bit depths, one line naming the file
    Case("load_segmentation_folder", "a 138-byte PNG whose header claims 20000x20000 pixels", ValueError,
         r"segmentation folder \. \(train split\): image images/a.png: refused before decoding: its header claims "
         r"400,000,000 pixels, more than the 33,554,432 twins-np decodes",
         lambda: _in_tmp(_pair("a.png", _png_claiming(20000, 20000), _png_claiming(20000, 20000, "L")), _folder)),
    Case("load_segmentation_folder", "a PNG whose header claims 10000x10000 pixels (Pillow only warns)", ValueError,
         r"image images/a.png: refused before decoding: its header claims 10000x10000 = 100,000,000 pixels, more than "
         r"the 33,554,432 twins-np decodes \(MAX_IMAGE_PIXELS\)",
         lambda: _in_tmp(_pair("a.png", _png_claiming(10000, 10000), _png_claiming(10000, 10000, "L")), _folder)),
    Case("load_segmentation_folder", "a 1x20000 strip (only the 8x8 crop is computed)", None,
         r"returned 1 image\(s\) \(3, 8, 8\)",
         lambda: _in_tmp(_pair("a.png", np.full((20000, 1, 3), 200, np.uint8), np.zeros((20000, 1))), _folder)),
    Case("load_segmentation_folder", "a 16-bit grey PNG (0 to 65535)", None,
         r"pixels in \[0.000, 1.000\] with mean 0.500",
         lambda: _in_tmp(_pair("a.png", _GRADIENT16, np.zeros((16, 16))), lambda: _folder(image_size=16))),
    Case("load_segmentation_folder", "a float32 TIFF with values in [0, 1]", None,
         r"pixels in \[0.000, 1.000\] with mean 0.500",
         lambda: _in_tmp(_pair("a.tif", _GRADIENT_F, np.zeros((16, 16))), lambda: _folder(image_size=16))),
    Case("load_segmentation_folder", "a float32 TIFF with a NaN pixel", ValueError,
         r"\(train split\): image images/a.tif holds 1 NaN and 0 infinite pixel value\(s\) of 256; a pixel must be a number",
         lambda: _in_tmp(_pair("a.tif", _float_image(p5=np.nan), np.zeros((16, 16))), _folder)),
    Case("load_segmentation_folder", "a float32 TIFF with values in [0, 255]", ValueError,
         r"image images/a.tif is a float image with values in \[0, 255\]; twins-np reads float pixels as intensities in \[0, 1\]",
         lambda: _in_tmp(_pair("a.tif", _GRADIENT_F * 255, np.zeros((16, 16))), _folder)),
    Case("load_segmentation_folder", "text saved as a.png", ValueError,
         r"\(train split\): cannot read image images/a.png: cannot identify image file",
         lambda: _in_tmp(_pair("a.png", b"not an image\n", np.zeros((8, 8))), _folder)),
    Case("load_segmentation_folder", "a palette PNG with transparency (Pillow warns on RGB)", None,
         r"returned 1 image\(s\) \(3, 8, 8\).*; 0 warning\(s\)",
         lambda: _in_tmp(_write_palette, _folder)),
    Case("twins_np.imagenet.load_image", "a 16-bit grey PNG (0 to 65535)", None, r"returned RGB, mean 127.50",
         lambda: _in_tmp(lambda r: _write(r / "a.png", _GRADIENT16),
                         lambda: f"returned {(im := load_image('a.png')).mode}, mean {np.asarray(im).mean():.2f}")),
    # training on folder data: batches without a labelled pixel
    Case("Trainer.train_epoch", "reduce_zero_label and an all-background label map, batch 1", None,
         r"trained; note: epoch 1 skipped 1 of 2 batches in which every pixel is ignored \(255\), as evaluation does; the "
         r"first \(step \d\) holds images/b.png, whose labels are all ignored",
         _skip_empty_batches),
    Case("twins-np train", "--reduce-zero-label and every label map all background", None,
         r"--data folder:\.: every pixel of the 2 training images is ignored \(255\) \(--reduce-zero-label ignores label 0",
         argv=("train", "--task", "segment", "--model", "twins_svt_teach32_fpn", "--data", "folder:.", "--image-size", "16",
               "--reduce-zero-label", "--out", "run"),
         files=_all(_pair("a.png", _RGB16, _bands([0], 16)), _pair("b.png", _RGB16, _bands([0], 16)))),
    Case("twins-np train", "--data folder: with classes.txt in cp1252", None,
         r"segmentation folder \.: classes.txt is not UTF-8 text \(byte 0xe9",
         argv=("train", "--task", "segment", "--model", "twins_svt_teach32_fpn", "--data", "folder:.", "--out", "run"),
         files=_all(_pair("a.png", _RGB16, _bands([0, 1], 16)), lambda r: (r / "classes.txt").write_bytes(b"caf\xe9\n"))),
    # predict: the same image reader
    Case("twins-np predict", "a 138-byte PNG claiming 20000x20000 pixels", None,
         r"IMAGE big.png: refused before decoding: its header claims 400,000,000 pixels, more than the 33,554,432",
         argv=("predict", "big.png", "--weights", "w.npz"), files=lambda r: _write(r / "big.png", _png_claiming(20000, 20000))),
    Case("twins-np predict", "a 1x20000 PNG for a 64x64 model", None,
         r"IMAGE strip.png: the 1x20000 image would be resized to 71x1420000 \(100,820,000 pixels\) before the centre crop, "
         r"more than the 33,554,432",
         argv=("predict", "strip.png", "--model", "twins_svt_teach64", "--weights", "w.npz"),
         files=_all(lambda r: _write(r / "strip.png", np.zeros((20000, 1, 3), np.uint8)),
                    _teach_weights(model="twins_svt_teach64"))),
    Case("twins-np predict", "a float32 TIFF with an infinite pixel", None,
         r"IMAGE x.tif holds 0 NaN and 1 infinite pixel value\(s\) of 256; a pixel must be a number",
         argv=("predict", "x.tif", "--weights", "w.npz"), files=lambda r: _write(r / "x.tif", _float_image(p0=np.inf))),
    # training checkpoints through the hardened reader
    Case("load_checkpoint", "a member claiming 7 TiB", ValueError,
         r"checkpoint.npz is not a readable .npz checkpoint: array 'model.head.weight' claims shape \(962072674304,\) of "
         r"float64 \(7696581394432 bytes\) but its member holds 8 bytes of data: corrupt or hostile",
         lambda: _in_tmp(_hostile_checkpoint, _load_checkpoint)),
    Case("twins-np evaluate", "a checkpoint.npz whose member claims 7 TiB", None,
         r"checkpoint.npz is not a readable .npz checkpoint: array 'model.head.weight' claims shape \(962072674304,\)",
         argv=("evaluate", "--weights", "checkpoint.npz"), files=_hostile_checkpoint),
    Case("twins-np train", "--resume from a checkpoint.npz whose member claims 7 TiB", None,
         r"checkpoint.npz is not a readable .npz checkpoint: array 'model.head.weight' claims shape \(962072674304,\)",
         argv=("train", "--resume", "--out", "."), files=_hostile_checkpoint),
    # advice that fits the command
    Case("twins-np train", "--lr inf", None, r"argument --lr: must be a finite number, got 'inf'",
         argv=("train", "--lr", "inf", "--out", "/nonexistent/run")),
    Case("twins-np train", "--weight-decay inf", None, r"argument --weight-decay: must be a finite number, got 'inf'",
         argv=("train", "--weight-decay", "inf", "--out", "/nonexistent/run")),
    Case("twins-np train", "--warmup-epochs nan", None, r"argument --warmup-epochs: must be a finite number, got 'nan'",
         argv=("train", "--warmup-epochs", "nan", "--out", "/nonexistent/run")),
    Case("twins-np demo", "--lr -inf", None, r"argument --lr: must be a finite number, got '-inf'",
         argv=("demo", "--lr=-inf")),
    Case("validate_config", "TrainConfig(lr=inf)", ConfigError, r"lr must be a finite number, got inf",
         lambda: _check(lr=float("inf"))),
    Case("validate_config", "TrainConfig(clip_grad=nan)", ConfigError, r"clip_grad must be a finite number, got nan",
         lambda: _check(clip_grad=float("nan"))),
    Case("twins-np train", "--image-size 100000", None,
         r"--image-size 100000 is larger than twins-np trains on \(at most 4096 pixels a side\): one 100000x100000 RGB "
         r"image alone is 111.8 GiB",
         argv=("train", "--image-size", "100000", "--out", "/nonexistent/run")),
    Case("twins-np evaluate", "--image-size 100000", None, r"--image-size 100000 is larger than twins-np trains on",
         argv=("evaluate", "--weights", "w.npz", "--model", "twins_svt_teach32", "--image-size", "100000"),
         files=_teach_weights(in_chans=1)),
    Case("Trainer.train_epoch", "weight_decay 1e30 with lr 1: the weights blow up", NonFiniteLossError,
         r"training stopped: the loss is nan at epoch 1, step 2/8.* With weight_decay 1e\+30 and lr 1, AdamW multiplies every "
         r"decayed weight by 1 - lr \* weight_decay = -1e\+30 at each update: lower weight_decay",
         lambda: _nan_stop(lr=1.0, weight_decay=1e30)),
    Case("Trainer.train_epoch", "lr 1e30 without weight decay", NonFiniteLossError,
         r"training stopped: .* A peak lr of 1e\+30 is far above AdamW's usual 1e-4 to 1e-3: lower lr",
         lambda: _nan_stop(lr=1e30, min_lr=1e30, weight_decay=0.0)),
    Case("Trainer.train_epoch", "a training image holding NaN", NonFiniteLossError,
         r"training stopped: the loss is nan at epoch 1, step \d/8.* The batch's images hold 3 NaN or infinite value\(s\): the "
         r"data is broken, not the settings",
         lambda: _nan_stop(nan_pixels=3)),
    Case("cli._message", "out of memory in predict (no --batch-size there)", None,
         r"out of memory: Unable to allocate 64.0 GiB .*; predict runs one image through the model .* no batch to shrink",
         lambda: _memory_advice("predict")),
    Case("cli._message", "out of memory in evaluate", None, r"out of memory: .*; try a smaller --batch-size or --image-size$",
         lambda: _memory_advice("evaluate")),
    Case("cli._message", "out of memory in train", None,
         r"out of memory: .*; try a smaller --batch-size or --image-size, or a smaller model \(--model, --model-overrides\)",
         lambda: _memory_advice("train")),
    Case("twins-np evaluate", "a segmenter's weights.npz with a classifier --model", None,
         r"--model twins_svt_teach32 is a classifier, but w.npz holds the weights of a segmenter \(twins_svt_teach32_fpn, "
         r"trained with --task segment\); drop --model to evaluate them as recorded",
         argv=("evaluate", "--weights", "w.npz", "--model", "twins_svt_teach32"), files=_segmenter_run_weights),
    Case("twins-np evaluate", "a classifier's plain weights with a segmenter --model", None,
         r"--model twins_svt_teach32_fpn is a segmenter, but w.npz holds the weights of a classifier; pass a classifier as "
         r"--model",
         argv=("evaluate", "--weights", "w.npz", "--model", "twins_svt_teach32_fpn"), files=_teach_weights()),
    Case("twins-np predict", "a segmenter's weights.npz with a classifier --model", None,
         r"--model twins_svt_teach32 is a classifier, but w.npz holds the weights of a segmenter .*; predict names the "
         r"class of a whole image",
         argv=("predict", "cat.png", "--weights", "w.npz", "--model", "twins_svt_teach32"),
         files=_all(_segmenter_run_weights, lambda r: _write(r / "cat.png", _RGB16))),
    Case("twins-np train", "OUT/checkpoint.npz is a folder (found before any work)", None,
         r"--out run: run/checkpoint.npz is a folder, where twins-np writes a file; move it away, or choose another --out",
         argv=("train", "--out", "run"), files=lambda r: (r / "run" / "checkpoint.npz").mkdir(parents=True)),
    Case("twins-np train", "--out a symbolic link to a folder that does not exist", None,
         r"--out run is a symbolic link to missing, which does not exist; create the folder it points to, or choose another "
         r"--out",
         argv=("train", "--out", "run"), files=lambda r: os.symlink("missing", r / "run")),
    Case("twins-np train", "--out inside a symbolic link to a folder that does not exist", None,
         r"--out link/run: link is a symbolic link to missing, which does not exist",
         argv=("train", "--out", "link/run"), files=lambda r: os.symlink("missing", r / "link")),
    Case("twins-np evaluate", "--out a symbolic link to a folder that does not exist", None,
         r"--out ev is a symbolic link to missing, which does not exist",
         argv=("evaluate", "--weights", "w.npz", "--out", "ev"), files=lambda r: os.symlink("missing", r / "ev")),
    Case("twins-np evaluate", "OUT/evaluation_test.json is a folder", None,
         r"--out ev: ev/evaluation_test.json is a folder, where twins-np writes a file",
         argv=("evaluate", "--weights", "w.npz", "--model", "twins_svt_teach32", "--out", "ev"),
         files=_all(_teach_weights(in_chans=1), lambda r: (r / "ev" / "evaluation_test.json").mkdir(parents=True))),
    # loading weights: strict=False that loads nothing, TorchScript
    Case("load_weights(segmenter, strict=False)", "a classifier's weights", KeyError,
         r"checkpoint w.npz matches no parameter of twins_svt_teach32_fpn \(num_classes=3\), so strict=False would load "
         r"nothing: .* 104 of the model's names are the file's with 'backbone.' in front",
         lambda: _strict_false(_seg)),
    Case("load_weights(features_only model, strict=False)", "a classifier's weights", KeyError,
         r"matches no parameter of twins_svt_teach32, so strict=False would load nothing: .* 104 of the model's names are "
         r"the file's with 'model.' in front",
         lambda: _strict_false(lambda: create_model("twins_svt_teach32", features_only=True))),
    Case("load_weights(model, strict=False)", "weights without the head", None,
         r"loaded; checkpoint w.npz: strict=False loaded 106 of the 108 parameters of twins_svt_teach32; 2 kept their "
         r"values \(first: head.weight, head.bias\)",
         lambda: _strict_false(lambda: create_model("twins_svt_teach32"), drop="head.")),
    Case("Module.load_state_dict", "strict=False, a classifier's state into a features_only model", KeyError,
         r"state_dict matches no key of TwinsFeatures, so strict=False would load nothing",
         lambda: (create_model("twins_svt_teach32", features_only=True).load_state_dict(_state(), strict=False), "loaded")[1]),
    Case("read_weights", "a TorchScript program named .pth (no torch needed to refuse it)", ValueError,
         r"w.pth: a TorchScript program \(torch.jit.save\), not a state dict of tensors; twins-np reads state dicts only",
         lambda: _read("w.pth", _torchscript_like())),
    Case("read_weights", "a zip named .pth without data.pkl", ValueError, r"w.pth: a zip archive without data.pkl",
         lambda: _read("w.pth", _npz({"w.npy": _npy_claiming((1,), bytes(8))}))),
]  # fmt: skip


# --- running the cases ------------------------------------------------------------------


def run_cli(argv: tuple[str, ...], files: Callable[[pathlib.Path], Any] | None = None) -> tuple[int, str]:
    """``twins_np.cli.main(argv)`` run in the repository's root -> (exit status, stderr).

    Paths in the cases are relative to the root (``tests/data_files/chelsea.jpg``), so the
    messages, and the page, are the same on every machine. With ``files``, ``main`` runs in
    a fresh temporary folder that ``files(folder)`` filled first.
    """
    err, out = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        where = ROOT
        if files is not None:
            where = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
            with contextlib.chdir(where):
                files(where)
        with contextlib.chdir(where), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = cli_main(list(argv))
    return rc, err.getvalue()


def outcome(case: Case) -> tuple[str, str]:
    """What the case does now: (exception column, message column) of the table."""
    if case.argv is not None:
        rc, err = run_cli(case.argv, case.files)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        return f"exit {rc}", (lines[-1] if lines else "")
    assert case.run is not None
    try:
        result = case.run()
    except Exception as e:  # the point: record whatever is raised
        return type(e).__name__, str(e)
    return "no error", result


def _cell(text: str) -> str:
    text = " ".join(text.split())  # one line: multi-line messages (shape lists) are joined
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return text.replace("`", "'").replace("|", "\\|")


INTRO = """\
# Reliability: what twins-np refuses, and how it says so

twins-np checks its inputs where they enter: every functional op (`twins_np.functional`),
the modules that call them, the model's `forward`, `load_state_dict`, the optimisers and
the command line. A bad input raises a `ValueError` (wrong shape, size, range) or a
`TypeError` (wrong dtype, wrong kind of object, NumPy and CuPy mixed) whose message names
the argument, what was expected and what was received, as early as it can be known, so the
error does not surface as a broadcasting failure three calls deeper.

What is refused, and why:

- **Only float32 and float64.** float16 (and bfloat16, which NumPy does not have) is refused
  with a `TypeError`: LayerNorm variances and softmax sums lose too much precision in 16
  bits. `Module.astype(np.float16)` is refused for the same reason.
- **No silent casts.** Integer and bool images are refused rather than cast (a uint8 image
  needs scaling, which only the caller knows); float64 inputs into a float32 model (or the
  other way round) are a `TypeError`, never a silent upcast. `model.astype(dtype)` casts
  every parameter; `x.astype(np.float32)` casts an image.
- **Images too small for the model.** The model checks the image before the first layer. Stage
  *s* sees the input divided by the product of the patch sizes so far, and each GSA with
  sub-sampling ratio sr > 1 needs at least sr tokens per side (its k = s = sr convolution
  would have no output otherwise). For the six ImageNet configurations the minimum is 32x32
  (stage 1 of a 31x31 image is 7x7, smaller than sr = 8); it is 8x8 for the `*_teach32`
  configurations and 16x16 for the `*_teach64` ones. Any larger size works, square or not.
- **Windows larger than the map are allowed.** LSA pads the map on the right and bottom to
  a multiple of ws, as timm does, so a 1x1 map with ws = 7 is one window of 49 tokens, 48 of
  them padding. Only GSA's sub-sampling ratio has a hard limit (sr <= H and sr <= W).
- **NaN and Inf are checked only on request.** `create_model(name, check_finite=True)` makes
  the model refuse an image holding NaN or Inf (the message counts them). It is off by
  default because it costs a full pass over the input; without it, NaN propagates to the
  logits as in NumPy.
- **NumPy and CuPy are not mixed.** An op given arrays from both raises a `TypeError` naming
  the argument on the other device and suggesting `twins_np.to_device(...)`; the model says
  which of image and model is on the GPU.
- **Backbone gradients must fit their forward.** `backward_intermediates` (and a feature
  extractor's `backward`) takes one gradient per map the last `forward_intermediates`
  returned, each of that map's shape and layout (`None` for a zero gradient); a list of the
  wrong length, a wrongly shaped entry or a backward without its forward is refused before
  any gradient is accumulated.
- **State dicts must match.** `load_state_dict` lists missing and unexpected keys
  (`KeyError`, unless `strict=False`) and every wrongly shaped key, expected vs received
  (`ValueError`).
- **Loading is all or nothing.** `load_state_dict`, `load_weights` and `load_arrays` check
  and convert every value before they assign any, so a refused checkpoint leaves the model
  exactly as it was. Only real floating or integer arrays load: complex (which would lose
  its imaginary part), bool, string and object arrays are a `TypeError` listing every such
  key. NaN and Inf weights (including float64 values that overflow float32) are a
  `ValueError` unless `allow_nonfinite=True` is passed.
- **Damaged or hostile checkpoint files** are a `ValueError` naming the file and the
  problem, never NumPy's or torch's own exception and never the advice to unpickle:
  empty files of every format, `.npz` archives that are not zip files, members that are
  not `.npy` arrays, `.npy` headers whose claimed size differs from the member's real size
  in the zip directory (checked before anything is allocated), deeply nested JSON in a
  `.safetensors` header, and `.pth` tensors NumPy cannot hold (float8, complex32, sparse,
  meta, quantized: tested in `tests/test_io_hostile.py`, which needs torch).
- **One backward, one forward.** A backward never combines the caches of two forwards.
  Each cache is tagged with the outermost forward call that made it (`model.forward`,
  `model.loss`, or a module used on its own), and a forward that raises part-way (a bad
  input found in a submodule, Ctrl-C, out of memory) marks every cache of its module tree
  as incomplete. The next `backward` raises a `RuntimeError` naming the module (for an
  incomplete forward before any gradient is accumulated) instead of returning gradients
  that mix two batches. A forward that completes makes the module usable again.
- **Image files** (the folder reader of segmentation data, `predict`, `load_image`) are read
  by `twins_np.image_files`. The size in the file's header is checked before anything is
  decoded: more than `MAX_IMAGE_PIXELS` = 2**25 pixels (8192x4096) is refused, except a
  JPEG, which is decoded at 1/2, 1/4 or 1/8 of its size when that brings it under the limit
  (the folder reader always decodes a JPEG at the smallest of those scales that still covers
  the resized image, and computes only the centre crop of the resize). So decoding one image
  never allocates more than 2**25 pixels; `tests/data/test_image_files.py` measures the
  peak memory of the cases below in a fresh process: a 10000x10000 PNG that took 3.6 GB in
  the folder reader is refused having added 3 MiB, a 1x20000 strip (5.26 GB in `predict` at
  224) 4 MiB, a 12000x9000 JPEG in `predict` adds 133 MiB instead of 518, a 6000x4500 JPEG
  in the folder reader 84 MiB instead of 906. 16-bit grey images are scaled by
  1/65535, float images (32-bit TIFFs) are read as intensities in [0, 1], and a NaN or
  infinite pixel, or a float outside [0, 1], is refused naming the file. Every exception
  Pillow raises becomes one line naming the file (and, in a folder, the split); Pillow's
  warnings are re-issued naming the file, one line each on the command line.
- **Folder data has one class count for every split**: from `classes.txt` (UTF-8; another
  encoding is named as the problem), else the largest label of both splits, so a validation
  split that lacks the rarest class still scores the model's classes. Training skips a batch
  in which every pixel is ignored (as evaluation does), says so once per epoch naming the
  first such image, and refuses before any work a training split with no labelled pixel.
- **Training checkpoints** (`checkpoint.npz`: `train --resume`, `evaluate`, `predict`) are
  read by the same hardened reader as weights files (`twins_np.io.read_npz`): a member
  claiming terabytes is refused by name, not reported as out of memory.
- **`strict=False` that would load nothing is an error** (`load_weights`, `load_arrays`,
  `load_state_dict`): classifier weights loaded into a segmenter or a `features_only`
  model used to change no parameter, silently. The message says which prefix
  (`backbone.`, `model.`) would make the names match; a partial load is reported with a
  `PartialLoadWarning` (how many parameters loaded, which kept their values). A TorchScript
  program or another zip named `.pth` is refused in one line, without torch's advice to load
  it unsafely.
- **Advice fits the command.** Every real-valued option refuses `inf` and `nan` (argparse,
  and `TrainConfig` for the library); `--image-size` above 4096 is refused; out-of-memory
  errors name the knobs the command has (`predict` has no `--batch-size`); a NaN stop names
  the setting that most likely caused it (`--weight-decay` when lr x weight decay >= 1, a
  huge `--lr`, clipping turned off) or the data when the batch holds NaN; a `--model` of the
  other task than the weights is named as that mismatch; output files are checked before
  any work (a folder named `checkpoint.npz`, a dangling symbolic link as `--out`).
- **The command line** prints one line `twins-np <command>: error: <message>` to stderr and
  exits with status 2 for every bad input or environment: a bad option (argparse's errors
  too; `main()` returns 2 and never raises `SystemExit`, while `--help` and `--version` exit
  with 0), a missing, damaged or hostile file, an image Pillow cannot read, a file where a
  folder is expected or the other way round, a read-only or full disk, an output folder in
  use by another run, `--model-overrides` values the model cannot take (a window that would
  need more memory than the machine has is refused with the memory it would need), NaN or
  infinite logits from `predict` or `evaluate`. Status 1 means only that a training run
  stopped on a NaN/Inf (or that `gradcheck` found a failing layer). Ctrl-C ends a command
  with one line and status 130, SIGTERM (`kill`, a job scheduler) likewise with status 143;
  either way a checkpoint being written is discarded and the last one stays intact
  (`tests/test_cli_faults.py` sends SIGTERM to a real training process). `tests/test_cli_faults.py`
  tests one case of each kind of fault, the file-system ones included, which this table
  cannot show (they depend on the machine).

The table below is generated by `tools/bad_input_table.py`, which runs each case and records
what happens now; `tests/reliability/test_bad_inputs.py` fails when this page is out of date
(run `python tools/bad_input_table.py` to regenerate it). Rows marked *known gap* are
behaviours still to improve; they are listed with the change they need after the table.
"""


def render() -> str:
    """The whole page: intro, the table, and the known gaps."""
    lines = [INTRO, "| entry point | bad input | exception | message |", "|---|---|---|---|"]
    gaps = []
    for case in CASES:
        exc, msg = outcome(case)
        bad = case.bad + (" (*known gap*)" if case.issue else "")
        lines.append(f"| `{_cell(case.entry)}` | {_cell(bad)} | {exc} | `{_cell(msg)}` |")
        if case.issue:
            gaps.append(f"- `{case.entry}`, {case.bad}: {case.issue}.")
    if gaps:
        lines += ["", "## Known gaps", "", *gaps]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date, write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python tools/bad_input_table.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
