"""Twins as a backbone: stage feature maps, timm's ``features_only`` API.

Notation: S stages; stage s has C_s channels and an (H_s, W_s) map, H_s = H // r_s with
r_s = patch_size * 2**s the stage's reduction (output stride: 4, 8, 16, 32 in the paper's
models, 2, 4, 8 in the 32x32 teaching configs).

- :func:`feature_take_indices`: timm's rule for ``indices`` (None = all, int n = the last n
  stages, a sequence = those stages, negative counting from the end).
- :class:`FeatureInfo`: what each stage gives (``num_chs``, ``reduction``, ``module``), read
  with ``channels()``, ``reduction()``, ``module_name()`` as timm's ``FeatureInfo``.
- :class:`TwinsFeatures`: the feature extractor ``create_model(name, features_only=True)``
  returns, like timm's ``FeatureGetterNet``: a pruned :class:`Twins` under ``model``, whose
  ``forward(x)`` gives the list of NCHW maps and ``backward(grads)`` takes one gradient per map.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..nn import Module

__all__ = ["FeatureBackbone", "FeatureInfo", "TwinsFeatures", "feature_take_indices"]


@runtime_checkable
class FeatureBackbone(Protocol):
    """What a feature extractor needs of a model (timm's ``FeatureGetterNet`` asks the same).

    :class:`~twins_np.models.Twins` has it; so may any other :class:`~twins_np.nn.Module`
    with these four members, which is why this file knows no model class.
    """

    feature_info: list[dict[str, Any]]

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] | None = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]: ...

    def forward_intermediates(
        self,
        x: Any,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Any: ...

    def backward_intermediates(self, grads: Sequence[Any], dfinal: Any = None) -> Any: ...


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Absolute stage indices selected by ``indices``, and the largest; timm's ``feature_take_indices``.

    Args:
        num_features: the number of stages S.
        indices: None selects every stage; an int n the last n stages; a sequence the
            stages it names (negative entries count from the end, -1 = the last stage).

    Returns:
        (take, max_index): ``take`` in the order given (as timm, duplicates kept), and max(take).

    Raises:
        TypeError: ``indices`` is not None, an int or a sequence of ints.
        ValueError: an index or count out of range, or an empty sequence.
    """
    if indices is None:
        indices = num_features
    if not isinstance(indices, bool) and hasattr(indices, "__index__"):  # NumPy integers too
        indices = int(indices)
    if isinstance(indices, (bool, str, bytes)) or (not isinstance(indices, int) and not isinstance(indices, Sequence)):
        raise TypeError(
            f"'indices' must be None (every stage), an int n (the last n stages) or a sequence of stage indices, "
            f"got {type(indices).__name__}"
        )
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(
                f"'indices' = {indices} asks for the last {indices} stages; the model has {num_features} (1 to {num_features})"
            )
        take = [num_features - indices + i for i in range(indices)]
        return take, max(take)
    if len(indices) == 0:
        raise ValueError(f"'indices' is empty; name at least one stage (0 to {num_features - 1}, or -1 for the last)")
    take = []
    for i in indices:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"'indices' entries must be ints (stage numbers), got {i!r} of type {type(i).__name__}")
        i = int(i)
        idx = num_features + i if i < 0 else i
        if not 0 <= idx < num_features:
            raise ValueError(
                f"'indices' entry {i} is out of range: the model has {num_features} stages, "
                f"0 to {num_features - 1} (or -{num_features} to -1 from the end)"
            )
        take.append(idx)
    return take, max(take)


class FeatureInfo:
    """Per-stage channels, reduction and module name; timm's ``FeatureInfo``.

    ``info`` lists every stage of the model (``{"module": "block.s", "num_chs": C_s,
    "reduction": r_s, "index": s}``; ``block.s`` is timm's name); the accessors without an
    ``idx`` answer for ``out_indices`` only::

        fi.channels()   # [64, 128, 256, 512]  (twins_svt_small, every stage)
        fi.reduction()  # [4, 8, 16, 32]
        fi.channels(2)  # 256: stage 2, whatever out_indices holds
    """

    def __init__(self, feature_info: list[dict[str, Any]], out_indices: Sequence[int]) -> None:
        self.info = [dict(fi, index=fi.get("index", i)) for i, fi in enumerate(feature_info)]
        self.out_indices = tuple(int(i) for i in out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """``key`` for every out index (idx None), for one stage (int) or for the stages listed."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]  # type: ignore[index]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        """The info dicts (restricted to ``keys``) for the out indices, one stage or a list of stages."""
        pick = (lambda d: d) if keys is None else (lambda d: {k: d[k] for k in keys})
        if idx is None:
            return [pick(self.info[i]) for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [pick(self.info[i]) for i in idx]
        return pick(self.info[idx])  # type: ignore[index]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        """Channels C_s of the maps."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        """Output stride r_s: the input side divided by the map's side (before flooring)."""
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        """timm's module names (``block.s``)."""
        return self.get("module", idx)

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(channels={self.channels()}, reduction={self.reduction()}, out_indices={self.out_indices})"


class TwinsFeatures(Module):
    """A Twins backbone giving the stage maps; timm's ``features_only`` model (``FeatureGetterNet``).

    Built by ``create_model(name, features_only=True, out_indices=...)``. The wrapped model
    is pruned as timm prunes it: stages after the last out index, the final norm (unless
    ``norm``) and the classifier head are dropped, so ``state_dict`` keys are timm's
    (``model.patch_embeds.0.proj.weight``, ..., no ``model.norm.*``, no ``model.head.*``).

    Args:
        model: a :class:`~twins_np.models.Twins` (any Module that is a :class:`FeatureBackbone`);
            pruned in place and kept as ``self.model``.
        out_indices: stages to return (timm's rule, see :func:`feature_take_indices`);
            None: every stage.
        norm: apply the final LayerNorm to the last stage's map (only the last stage can be
            normed, as timm); keeps ``model.norm.*`` in the state_dict.
        output_fmt: ``"NCHW"`` (timm's) or ``"NHWC"`` (channels-last, the layout of
            twins-np's tokens).

    Shapes: ``forward(x)``: x (B, C_in, H, W) -> [ (B, C_s, H_s, W_s) for s in out_indices ],
    in stage order; ``backward(grads)``: one gradient per map (None = zero) -> dx (B, C_in, H, W).
    """

    def __init__(
        self, model: Module, out_indices: int | Sequence[int] | None = None, norm: bool = False, output_fmt: str = "NCHW"
    ) -> None:
        super().__init__()
        if not isinstance(model, FeatureBackbone):
            raise TypeError(
                f"TwinsFeatures needs a model with feature_info, prune_intermediate_layers, forward_intermediates and "
                f"backward_intermediates (a Twins), got {type(model).__name__}"
            )
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"'output_fmt' must be 'NCHW' (timm's) or 'NHWC' (channels-last), got {output_fmt!r}")
        take = model.prune_intermediate_layers(out_indices, prune_norm=not norm)
        self.model = model
        self.out_indices = tuple(take)
        self.norm = bool(norm)
        self.output_fmt = output_fmt
        self.feature_info = FeatureInfo(copy.deepcopy(model.feature_info), self.out_indices)
        self.model_cfg: dict[str, Any] = {}  # stamped by create_model: {"name"}

    def forward(self, x: Any) -> list[Any]:
        """Image (B, C_in, H, W) -> the selected stage maps, NCHW (or NHWC), in stage order."""
        return self.model.forward_intermediates(
            x, indices=list(self.out_indices), norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True
        )

    def backward(self, grads: Sequence[Any]) -> Any:  # type: ignore[override]
        """One gradient per returned map (None for a zero one) -> dx (B, C_in, H, W); fills ``.grad``."""
        return self.model.backward_intermediates(grads)

    def extra_repr(self) -> str:
        return f"out_indices={self.out_indices}, channels={self.feature_info.channels()}"
