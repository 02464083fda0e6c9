"""mmsegmentation's Twins checkpoints: recognise them, map their key names, build their model.

mmsegmentation publishes the Twins paper's ADE20K segmenters (configs/twins/, Semantic FPN
and UPerNet on PCPVT-S/B/L and SVT-S/B/L) as ``.pth`` files holding ``{"state_dict": ...,
"meta": ...}``. Their neck and head keys (``neck.*``, ``decode_head.*``,
``auxiliary_head.*``) are twins-np's already (:class:`~twins_np.models.Segmenter` uses
mmsegmentation's layout); the backbone's are not, because twins-np's Twins keeps timm's
names. The map, for stage s and block i (``backbone.`` in front of both sides; ``*`` is
``weight`` or ``bias``):

- ``patch_embeds.s.projection.*`` -> ``patch_embeds.s.proj.*``; ``patch_embeds.s.norm.*`` unchanged
- ``position_encodings.s.proj.*`` -> ``pos_block.s.proj.0.*``
- ``layers.s.i.norm1.*``, ``norm2.*`` -> ``blocks.s.i.norm1.*``, ``norm2.*``
- LSA: ``layers.s.i.attn.qkv.*``, ``attn.proj.*`` -> ``blocks.s.i.attn.qkv.*``, ``attn.proj.*``
- GSA: ``layers.s.i.attn.attn.in_proj_weight`` -> rows 0:C ``blocks.s.i.attn.q.weight``, rows
  C:3C ``blocks.s.i.attn.kv.weight`` (``in_proj_bias`` split the same way into ``q.bias`` and
  ``kv.bias``); ``layers.s.i.attn.attn.out_proj.*`` -> ``blocks.s.i.attn.proj.*``;
  ``layers.s.i.attn.sr.*``, ``attn.norm.*`` -> ``blocks.s.i.attn.sr.*``, ``attn.norm.*``
- ``layers.s.i.ffn.layers.0.0.*`` -> ``blocks.s.i.mlp.fc1.*``; ``layers.s.i.ffn.layers.1.*`` ->
  ``blocks.s.i.mlp.fc2.*``
- ``norm_list.s.*`` (SVT) unchanged

The GSA split is exact: mmsegmentation's GSA is torch's ``nn.MultiheadAttention``, whose
packed ``in_proj_weight`` stacks the query, key and value projections in that order, and
timm's ``kv`` Linear stacks key and value the same way. Renaming is not enough to reproduce
the checkpoints' outputs: they need mmsegmentation's flavour of the backbone
(:data:`twins_np.models.segmentation.MMSEG_BACKBONE`), which the ``*_ade20k`` segmenters use.

Reading the files belongs to :mod:`twins_np.io` (``load_weights`` and ``twins-np convert``
call :func:`from_mmseg` when :func:`is_mmseg_state` says the keys are mmsegmentation's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .registry import MODEL_CONFIGS
from .segmentation import SEGMENTER_CONFIGS, Segmenter, create_segmenter

__all__ = ["is_mmseg_state", "from_mmseg", "to_mmseg", "recognise", "create_segmenter_for", "flavour_mismatch"]

# the parts of mmsegmentation's EncoderDecoder; keys outside them are not a segmenter's
_PARTS = ("backbone.", "neck.", "decode_head.", "auxiliary_head.")

# keys only mmsegmentation's Twins backbone has (timm's and twins-np's never do)
_MMSEG_MARKERS = ("backbone.layers.", "backbone.position_encodings.")

_S = r"(\d+)"
_P = r"(weight|bias)"
# mmsegmentation backbone key (after "backbone.") <-> twins-np's, one-to-one both ways; {S} is a
# stage, {I} a block, {N} 1 or 2, {P} weight or bias
_PAIRS = [
    ("patch_embeds.{S}.projection.{P}", "patch_embeds.{S}.proj.{P}"),
    ("patch_embeds.{S}.norm.{P}", "patch_embeds.{S}.norm.{P}"),
    ("position_encodings.{S}.proj.{P}", "pos_block.{S}.proj.0.{P}"),
    ("layers.{S}.{I}.norm{N}.{P}", "blocks.{S}.{I}.norm{N}.{P}"),
    ("layers.{S}.{I}.attn.qkv.{P}", "blocks.{S}.{I}.attn.qkv.{P}"),
    ("layers.{S}.{I}.attn.sr.{P}", "blocks.{S}.{I}.attn.sr.{P}"),
    ("layers.{S}.{I}.attn.norm.{P}", "blocks.{S}.{I}.attn.norm.{P}"),
    ("layers.{S}.{I}.ffn.layers.0.0.{P}", "blocks.{S}.{I}.mlp.fc1.{P}"),
    ("layers.{S}.{I}.ffn.layers.1.{P}", "blocks.{S}.{I}.mlp.fc2.{P}"),
    ("norm_list.{S}.{P}", "norm_list.{S}.{P}"),
]
# the output projection: LSA's and GSA's (inside nn.MultiheadAttention) both become attn.proj;
# the way back needs to know which block is which (to_mmseg)
_PROJ_PAIRS = [
    ("layers.{S}.{I}.attn.proj.{P}", "blocks.{S}.{I}.attn.proj.{P}"),
    ("layers.{S}.{I}.attn.attn.out_proj.{P}", "blocks.{S}.{I}.attn.proj.{P}"),
]
_FIELDS = {"S": r"(?P<S>\d+)", "I": r"(?P<I>\d+)", "N": "(?P<N>[12])", "P": "(?P<P>weight|bias)"}


def _rule(source: str, target: str) -> tuple[re.Pattern[str], str]:
    """The key template ``source`` as a regex, and ``target`` as its replacement."""
    parts = re.split(r"\{(\w)\}", source)  # text, field, text, field, ..., text
    regex = "".join(_FIELDS[part] if k % 2 else re.escape(part) for k, part in enumerate(parts))
    return re.compile(regex), re.sub(r"\{(\w)\}", r"\\g<\1>", target)


_RENAMES = [_rule(mmseg, ours) for mmseg, ours in _PAIRS + _PROJ_PAIRS]
# GSA's packed projection: one mmsegmentation key -> twins-np's q and kv (split after C rows)
_IN_PROJ = re.compile(rf"layers\.{_S}\.{_S}\.attn\.attn\.in_proj_(weight|bias)")


def is_mmseg_state(keys: Any) -> bool:
    """True when the keys (or a state dict's) hold mmsegmentation's Twins backbone names."""
    return any(str(k).startswith(_MMSEG_MARKERS) for k in keys)


def from_mmseg(state: Mapping[str, Any]) -> dict[str, Any]:
    """mmsegmentation's ``EncoderDecoder`` state dict -> twins-np's Segmenter names (the arrays are kept).

    ``neck.*``, ``decode_head.*`` and ``auxiliary_head.*`` keep their names; the backbone's
    are mapped by the module's table, GSA's ``in_proj_*`` split into ``q`` and ``kv``.

    Raises:
        KeyError: naming the first key that has no place in a twins-np segmenter (outside the
            four parts, or a backbone key the table does not know), and how many there are.
        ValueError: an ``in_proj`` array whose first axis is not 3C.
    """
    out: dict[str, Any] = {}
    unmapped = []
    for key, value in state.items():
        if not key.startswith(_PARTS):
            unmapped.append(key)
            continue
        if not key.startswith("backbone."):
            out[key] = value
            continue
        name = key[len("backbone.") :]
        m = _IN_PROJ.fullmatch(name)
        if m is not None:
            s, i, kind = m.groups()
            rows = int(np.shape(value)[0])
            if rows % 3:
                raise ValueError(f"{key}: a packed q/k/v projection needs 3C rows, got shape {tuple(np.shape(value))}")
            c = rows // 3
            out[f"backbone.blocks.{s}.{i}.attn.q.{kind}"] = value[:c]
            out[f"backbone.blocks.{s}.{i}.attn.kv.{kind}"] = value[c:]
            continue
        for pattern, target in _RENAMES:
            if pattern.fullmatch(name):
                out["backbone." + pattern.sub(target, name)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        more = f" (and {len(unmapped) - 1} more)" if len(unmapped) > 1 else ""
        raise KeyError(
            f"mmsegmentation key {unmapped[0]!r}{more} has no place in a twins-np segmenter: not a Twins backbone, "
            "FPN/UPerNet head or auxiliary head key this map knows (see twins_np.models.mmseg)"
        )
    return out


# twins-np backbone key (after "backbone.") -> mmsegmentation's: _PAIRS the other way
_BACK = [_rule(ours, mmseg) for mmseg, ours in _PAIRS]
_PROJ = re.compile(rf"blocks\.{_S}\.{_S}\.attn\.proj\.{_P}")
_Q = re.compile(rf"blocks\.{_S}\.{_S}\.attn\.q\.{_P}")
_KV = re.compile(rf"blocks\.{_S}\.{_S}\.attn\.kv\.{_P}")


def to_mmseg(state: Mapping[str, Any], concatenate: Callable[[list[Any]], Any] | None = None) -> dict[str, Any]:
    """twins-np Segmenter names -> mmsegmentation's (the inverse of :func:`from_mmseg`).

    An LSA block's ``attn.proj`` stays ``attn.proj``; a GSA block's becomes
    ``attn.attn.out_proj`` and its ``q`` and ``kv`` are stacked into ``attn.attn.in_proj_*``
    (with ``concatenate``, NumPy's by default: pass torch's ``torch.cat`` for tensors).

    Raises:
        KeyError: naming a backbone key mmsegmentation's Twins has no place for (timm's
            final ``norm`` or ``head``, a sub-sampling other than the conv).
    """
    cat = concatenate if concatenate is not None else (lambda parts: np.concatenate(parts, axis=0))
    gsa = {m.group(1, 2) for k in state if k.startswith("backbone.") and (m := _Q.fullmatch(k[len("backbone.") :]))}
    out: dict[str, Any] = {}
    pending: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, value in state.items():
        if not key.startswith("backbone."):
            out[key] = value
            continue
        name = key[len("backbone.") :]
        if (m := _Q.fullmatch(name)) or (m := _KV.fullmatch(name)):
            s, i, kind = m.groups()
            pending.setdefault((s, i, kind), {})["q" if ".attn.q." in name else "kv"] = value
            continue
        if m := _PROJ.fullmatch(name):
            s, i, kind = m.groups()
            where = "attn.attn.out_proj" if (s, i) in gsa else "attn.proj"
            out[f"backbone.layers.{s}.{i}.{where}.{kind}"] = value
            continue
        for pattern, target in _BACK:
            if pattern.fullmatch(name):
                out["backbone." + pattern.sub(target, name)] = value
                break
        else:
            raise KeyError(f"{key!r} has no place in mmsegmentation's Twins backbone")
    for (s, i, kind), parts in pending.items():
        if set(parts) != {"q", "kv"}:
            raise KeyError(f"backbone.blocks.{s}.{i}.attn: q.{kind} and kv.{kind} must both be given")
        out[f"backbone.layers.{s}.{i}.attn.attn.in_proj_{kind}"] = cat([parts["q"], parts["kv"]])
    return out


def flavour_mismatch(model: Any) -> str | None:
    """Why ``model`` cannot compute what an mmsegmentation checkpoint was trained as, or None.

    A twins-np segmenter built on timm's flavour of Twins (the ``*_fpn`` configurations) has
    the same PCPVT keys as mmsegmentation's but floors its patch embeddings, does not mask
    padded LSA windows and uses LayerNorm eps 1e-6: the weights would load and give other outputs.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "patch_embeds"):
        return None
    wants = {"patch_padding": "corner", "pad_mask": "mmseg", "norm_eps": 1e-5}
    config = getattr(backbone, "config", {})
    wrong = [f"{k}={config.get(k)!r}" for k, v in wants.items() if config.get(k) != v]
    if not wrong:
        return None
    name = getattr(model, "model_cfg", {}).get("name", type(model).__name__)
    return (
        f"{name} is built on timm's flavour of Twins ({', '.join(wrong)}), but mmsegmentation's checkpoints need its own "
        f"(patch_padding='corner', pad_mask='mmseg', norm_eps=1e-5): build the model with a *_ade20k configuration "
        "(twins_np.io.load_segmenter(path) does)"
    )


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    return tuple(int(n) for n in np.shape(state[key])) if key in state else None


def recognise(state: Mapping[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """Which named segmenter a state dict (mmsegmentation's or twins-np's names) belongs to.

    Reads the backbone's stage widths and depths and whether it has per-stage norms (SVT)
    or LSA blocks, the head's kind (FPN neck + FPNHead, or UPerHead + auxiliary FCNHead),
    the classifier's class count and the head widths.

    Returns:
        ``(name, num_classes, overrides)``: a ``*_fpn_ade20k`` or ``*_uperhead_ade20k`` name of
        :func:`twins_np.models.list_segmenters`, K, and the :func:`create_segmenter` overrides
        for head widths or norms that differ from that config's (empty for the published files).

    Raises:
        ValueError: when the weights match none of the paper's backbones or heads, saying what was found.
    """
    keys = from_mmseg(state) if is_mmseg_state(state) else dict(state)
    dims, depths, s = [], [], 0
    while (shape := _shape(keys, f"backbone.patch_embeds.{s}.norm.weight")) is not None:
        dims.append(shape[0])
        depths.append(len({k.split(".")[3] for k in keys if k.startswith(f"backbone.blocks.{s}.")}))
        s += 1
    svt = any(".attn.qkv." in k for k in keys if k.startswith("backbone."))
    backbone = None
    for b, c in MODEL_CONFIGS.items():
        if tuple(c["embed_dims"]) == tuple(dims) and tuple(c["depths"]) == tuple(depths) and (c.get("wss") is not None) == svt:
            backbone = b
    if backbone is None or f"{backbone}_fpn_ade20k" not in SEGMENTER_CONFIGS:
        raise ValueError(
            f"these weights hold a Twins backbone with stage widths {tuple(dims)} and depths {tuple(depths)}"
            f" ({'SVT' if svt else 'PCPVT'}), none of the paper's PCPVT-S/B/L and SVT-S/B/L"
        )
    cls = _shape(keys, "decode_head.conv_seg.weight")
    if cls is None:
        raise ValueError("these weights have no decode_head.conv_seg: not a segmenter's")
    if "decode_head.psp_modules.0.1.conv.weight" in keys:
        name = f"{backbone}_uperhead_ade20k"
        widths = {"head_channels": "decode_head.bottleneck.conv.weight", "aux_channels": "auxiliary_head.convs.0.conv.weight"}
    elif "decode_head.scale_heads.0.0.conv.weight" in keys:
        name = f"{backbone}_fpn_ade20k"
        widths = {"neck_channels": "neck.lateral_convs.0.conv.weight", "head_channels": "decode_head.scale_heads.0.0.conv.weight"}
    else:
        raise ValueError(
            "these weights have neither an FPN head (decode_head.scale_heads) nor a UPerHead (decode_head.psp_modules)"
        )
    cfg = SEGMENTER_CONFIGS[name]
    overrides: dict[str, Any] = {}
    for option, key in widths.items():
        shape = _shape(keys, key)
        if shape is not None and shape[0] != cfg[option]:
            overrides[option] = shape[0]
    norm = "bn" if any(".bn.weight" in k for k in keys) else "gn" if any(".gn.weight" in k for k in keys) else None
    if norm != cfg["norm"]:
        overrides["norm"] = norm
    return name, int(cls[0]), overrides


def create_segmenter_for(state: Mapping[str, Any], dtype: Any = np.float32, **kwargs: Any) -> Segmenter:
    """The segmenter (untrained) whose configuration matches ``state``: :func:`recognise` then :func:`create_segmenter`."""
    name, num_classes, overrides = recognise(state)
    return create_segmenter(name, num_classes=num_classes, dtype=dtype, **{**overrides, **kwargs})
