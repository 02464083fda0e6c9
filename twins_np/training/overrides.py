"""Checking ``model_overrides`` (``--model-overrides``) before a model is built.

A JSON object from the command line can hold anything: a key the model does not have, a
string where a size belongs, a zero or negative size, a negative LayerNorm eps, or a
window so much larger than its token map that LSA's padding would need more memory than
the machine has. :func:`check_model_overrides` refuses each with one line that names the
key, instead of an error deep inside the constructor or the first forward pass.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import os
from typing import Any

from ..models import MODEL_CONFIGS, Twins

__all__ = ["check_model_overrides", "lsa_attention_bytes", "RESERVED_OVERRIDES"]

# set by the run from the data and its own settings, never by an override
RESERVED_OVERRIDES = ("in_chans", "num_classes", "drop_path_rate", "seed", "dtype")

_POSITIVE_INTS = ("embed_dims", "num_heads", "sr_ratios", "wss")  # per stage, >= 1
_RATES = ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate")
_CHOICES = {
    "global_pool": ("", "avg"),
    "sr_mode": ("conv", "avg", "sep"),
    "patch_padding": ("floor", "corner"),  # mmsegmentation's flavour of Twins: see Twins' docstring
    "pad_mask": (None, "mmseg", "padded"),
}


def _valid_keys() -> list[str]:
    params = inspect.signature(Twins.__init__).parameters
    return sorted(k for k in params if k != "self" and k not in RESERVED_OVERRIDES)


def did_you_mean(word: str, choices: list[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def _machine_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def lsa_attention_bytes(side: tuple[int, int], ws: int, heads: int, batch: int, itemsize: int = 4) -> int:
    """Bytes of one LSA layer's attention weights: the map padded to a multiple of ``ws``.

    ``B * heads * windows * (ws*ws)^2`` values; ``windows = ceil(H/ws) * ceil(W/ws)``.
    """
    windows = math.ceil(side[0] / ws) * math.ceil(side[1] / ws)
    return batch * heads * windows * (ws * ws) ** 2 * itemsize


def check_model_overrides(model: str, overrides: Any, batch_size: int = 1, name: str = "model_overrides") -> None:
    """Raise ``ValueError`` naming the first bad entry of ``overrides`` for model ``model``.

    Args:
        model: a registered model name (its config is the base the overrides replace).
        overrides: the dict to check.
        batch_size: images per forward, for the memory a window would need.
        name: how messages name the overrides (``"--model-overrides"`` on the command line).
    """
    if not isinstance(overrides, dict):
        raise ValueError(f"{name} must be a JSON object (a dict), got {type(overrides).__name__}")
    valid = _valid_keys()
    for key in overrides:
        if key in RESERVED_OVERRIDES:
            raise ValueError(f"{name} must not set {key!r}: it comes from the data and the run's settings")
        if key not in valid:
            raise ValueError(f"{name}: unknown key {key!r}{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}")
    if model not in MODEL_CONFIGS:
        return  # the model name is refused elsewhere, with its own message
    cfg: dict[str, Any] = {"img_size": 224, "patch_size": 4, **MODEL_CONFIGS[model], **overrides}

    def bad(key: str, what: str) -> ValueError:
        return ValueError(f"{name}: {key} must be {what}, got {json_value(cfg[key])}")

    depths = cfg.get("depths", (3, 4, 6, 3))
    if not isinstance(depths, (list, tuple)) or not depths or not all(_is_int(d) and d >= 0 for d in depths):
        raise bad("depths", "a non-empty list of block counts >= 0")
    stages = len(depths)

    def per_stage(key: str, ok: Any, what: str) -> list[Any]:
        v = cfg[key]
        if not isinstance(v, (list, tuple)) or len(v) != stages or not all(ok(x) for x in v):
            raise bad(key, f"a list of {stages} {what} (one per stage, as depths)")
        return list(v)

    if not (_is_int(cfg["patch_size"]) and cfg["patch_size"] >= 1):
        raise bad("patch_size", "an integer >= 1")
    img = cfg["img_size"]
    side = (img, img) if _is_int(img) else tuple(img) if isinstance(img, (list, tuple)) and len(img) == 2 else None
    if side is None or not all(_is_int(s) and s >= 1 for s in side):
        raise bad("img_size", "an integer >= 1 or a list [H, W] of them")
    dims = per_stage("embed_dims", lambda x: _is_int(x) and x >= 1, "integers >= 1")
    heads = per_stage("num_heads", lambda x: _is_int(x) and x >= 1, "integers >= 1")
    for s, (d, h) in enumerate(zip(dims, heads)):
        if d % h:
            raise ValueError(f"{name}: embed_dims[{s}] = {d} is not divisible by num_heads[{s}] = {h}")
    if "mlp_ratios" in cfg:
        per_stage("mlp_ratios", lambda x: _is_real(x) and x > 0, "numbers > 0")
    per_stage("sr_ratios", lambda x: _is_int(x) and x >= 1, "integers >= 1")
    wss = None if cfg.get("wss") is None else per_stage("wss", lambda x: _is_int(x) and x >= 1, "integers >= 1")
    for key in _RATES:
        if key in cfg and not (_is_real(cfg[key]) and 0 <= cfg[key] < 1):
            raise bad(key, "a rate in [0, 1)")
    if "norm_eps" in cfg and not (_is_real(cfg["norm_eps"]) and cfg["norm_eps"] > 0):
        raise bad("norm_eps", "a number > 0 (LayerNorm divides by sqrt(var + eps))")
    for key, choices in _CHOICES.items():
        if key in cfg and cfg[key] not in choices:
            raise bad(key, "one of " + ", ".join(repr(c) for c in choices))
    for key in ("check_finite", "norm_after_stage"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise bad(key, "true or false")

    if wss is None:
        return
    # LSA pads the token map to a multiple of ws: a window far larger than the map is mostly padding
    memory = _machine_memory()
    h, w, p = side[0], side[1], cfg["patch_size"]
    for s in range(stages):
        h, w = h // p, w // p
        p = 2
        if depths[s] == 0 or wss[s] == 1:
            continue
        need = lsa_attention_bytes((max(h, 1), max(w, 1)), wss[s], heads[s], batch_size)
        if memory is not None and need > memory:
            why = (
                f"is far larger than stage {s + 1}'s {h}x{w} token map: LSA pads the map to a multiple of the window, and"
                if wss[s] > max(h, w)
                else f"on stage {s + 1}'s {h}x{w} token map:"
            )
            raise ValueError(
                f"{name}: wss[{s}] = {wss[s]} {why} one layer's attention would need {_bytes(need)} for a batch of "
                f"{batch_size}, more than this machine's memory; use a window of at most {max(h, w, 2)}"
            )


def json_value(v: Any) -> str:
    """A value as it was typed in the JSON (``[1, 2]``, ``"x"``, ``true``)."""
    import json

    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)
