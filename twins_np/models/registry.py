"""Named configurations: timm's six Twins variants and small teaching configs."""

from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

from .features import TwinsFeatures
from .twins import Twins

_PCPVT = dict(
    patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1)
)
_SVT = dict(patch_size=4, mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1), wss=(7, 7, 7, 7))

# Teaching configs: three stages on a 16x16 / 8x8 / 4x4 token grid, windows of 4x4, so a
# stage-1 LSA window sees 1/16 of the map and the GSA summary keys number 16 / 16 / 16.
_TEACH = dict(
    embed_dims=(32, 64, 128), num_heads=(1, 2, 4), mlp_ratios=(4, 4, 4), depths=(2, 2, 2), sr_ratios=(4, 2, 1), num_classes=10
)

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "twins_pcpvt_small": dict(_PCPVT, depths=(3, 4, 6, 3)),
    "twins_pcpvt_base": dict(_PCPVT, depths=(3, 4, 18, 3)),
    "twins_pcpvt_large": dict(_PCPVT, depths=(3, 8, 27, 3)),
    "twins_svt_small": dict(_SVT, embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 2, 10, 4)),
    "twins_svt_base": dict(_SVT, embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(2, 2, 18, 2)),
    "twins_svt_large": dict(_SVT, embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), depths=(2, 2, 18, 2)),
    # 32x32 inputs (digits, CIFAR-10): patch 2 -> 16x16 tokens
    "twins_svt_teach32": dict(_TEACH, img_size=32, patch_size=2, wss=(4, 4, 4)),
    "twins_pcpvt_teach32": dict(_TEACH, img_size=32, patch_size=2),
    # 64x64 inputs: patch 4 -> 16x16 tokens
    "twins_svt_teach64": dict(_TEACH, img_size=64, patch_size=4, wss=(4, 4, 4)),
    "twins_pcpvt_teach64": dict(_TEACH, img_size=64, patch_size=4),
}


# The six models of the paper, by timm's names.
PAPER_MODELS = (
    "twins_pcpvt_small",
    "twins_pcpvt_base",
    "twins_pcpvt_large",
    "twins_svt_small",
    "twins_svt_base",
    "twins_svt_large",
)

# The models whose ImageNet-1k weights timm publishes on the Hugging Face Hub, as the Hub
# repository holding them (file model.safetensors); twins-np reads them but downloads nothing.
PUBLISHED_WEIGHTS: dict[str, str] = {name: f"timm/{name}.in1k" for name in PAPER_MODELS}


def _patterns(patterns: str | Sequence[str]) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def list_models(
    filter: str | Sequence[str] = "", exclude_filters: str | Sequence[str] = "", pretrained: bool = False
) -> list[str]:
    """Names accepted by :func:`create_model`, sorted; the arguments select as timm's ``list_models`` does.

    Args:
        filter: a shell-style wildcard pattern (``"*pcpvt*"``, ``"twins_svt_?ase"``) or a list of
            them; a name is kept if it matches any. ``""`` keeps every name.
        exclude_filters: pattern(s) of names to leave out.
        pretrained: keep only the models with published ImageNet-1k weights (:data:`PUBLISHED_WEIGHTS`).

    Returns:
        The matching names, sorted (an empty list when nothing matches).
    """
    names = sorted(MODEL_CONFIGS)
    if include := [p for p in _patterns(filter) if p]:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]
    if exclude := [p for p in _patterns(exclude_filters) if p]:
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    return [n for n in names if n in PUBLISHED_WEIGHTS] if pretrained else names


def _refuse_pretrained(name: str, pretrained: object) -> None:
    """twins-np downloads nothing and models do not read files: say where the weights come from."""
    if pretrained is False or pretrained is None:
        return
    repo = PUBLISHED_WEIGHTS.get(name)
    if repo is None:
        raise ValueError(f"{name} has no published weights (those of {', '.join(PUBLISHED_WEIGHTS)} do); train it instead")
    if isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(
            f"create_model does not read files: load {os.fspath(pretrained)!r} into the model with "
            f"twins_np.load_weights(twins_np.create_model({name!r}), {os.fspath(pretrained)!r})"
        )
    if pretrained is True:
        folder = repo.split("/")[1]
        raise ValueError(
            f"twins-np downloads no weights: get them with `hf download {repo} model.safetensors --local-dir {folder}`, "
            f"then twins_np.load_weights(model, '{folder}/model.safetensors')"
        )
    raise TypeError(f"pretrained must be True or False, got {pretrained!r}")


@overload
def create_model(
    name: str,
    features_only: Literal[False] = ...,
    out_indices: int | Sequence[int] | None = ...,
    pretrained: bool = ...,
    **overrides: Any,
) -> Twins: ...


@overload
def create_model(
    name: str,
    features_only: Literal[True],
    out_indices: int | Sequence[int] | None = ...,
    pretrained: bool = ...,
    **overrides: Any,
) -> TwinsFeatures: ...


def create_model(
    name: str,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    pretrained: bool = False,
    **overrides: Any,
) -> Twins | TwinsFeatures:
    """Build a named Twins; keyword overrides replace config entries (e.g. num_classes, seed, dtype).

    ``features_only=True`` gives a backbone, :class:`TwinsFeatures`, as timm's
    ``create_model(name, features_only=True)``: ``forward(x)`` returns the NCHW maps of the
    stages in ``out_indices`` (default: every stage, (0, 1, 2, 3) for the paper's models;
    timm's rules, negative indices count from the end) and ``feature_info`` their channels
    and reductions.

    ``pretrained=False`` is accepted for timm's signature; twins-np downloads nothing, so
    ``pretrained=True`` (or a file name) raises a ``ValueError`` that says how to get the
    published weights and load them with :func:`twins_np.load_weights`.
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    _refuse_pretrained(name, pretrained)
    if not features_only and out_indices is not None:
        raise ValueError("'out_indices' selects the stages of a feature extractor: pass features_only=True with it")
    model = Twins(**{**MODEL_CONFIGS[name], **overrides})
    # as timm's builder stamps pretrained_cfg: what the model was built as, so messages (twins_np.io)
    # can name it without reading the registry
    model.model_cfg = {"name": name, "num_classes": MODEL_CONFIGS[name].get("num_classes", _TWINS_NUM_CLASSES)}
    if not features_only:
        return model
    features = TwinsFeatures(model, out_indices)
    features.model_cfg = {"name": name}
    return features


_TWINS_NUM_CLASSES = inspect.signature(Twins.__init__).parameters["num_classes"].default


def model_factory(name: str) -> Callable[..., Twins]:
    return lambda **kw: create_model(name, **kw)
