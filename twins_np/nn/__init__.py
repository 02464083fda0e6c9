"""Modules that own parameters and call the functional pairs; names and state_dict keys as timm.

One module per kind: :mod:`~twins_np.nn.linear` (Linear, Mlp), :mod:`~twins_np.nn.norm`
(LayerNorm, GroupNorm, BatchNorm2d), :mod:`~twins_np.nn.activation` (ReLU),
:mod:`~twins_np.nn.conv` (Conv2d, ConvModule), :mod:`~twins_np.nn.dropout` (Dropout, DropPath,
Dropout2d), :mod:`~twins_np.nn.resize` (Upsample, AdaptiveAvgPool2d), :mod:`~twins_np.nn.attention` (LSA, GSA) and
:mod:`~twins_np.nn.blocks` (PatchEmbed, PosConv, Block); :mod:`~twins_np.nn.module` holds the
base class and its cache rule.
"""

from .activation import ReLU
from .attention import GlobalSubSampleAttn, LocallyGroupedAttn
from .blocks import Block, PatchEmbed, PosConv
from .conv import Conv2d, ConvModule
from .dropout import Dropout, Dropout2d, DropPath
from .linear import Linear, Mlp
from .module import Identity, Module, ModuleList, Parameter, Sequential, no_grad
from .norm import BatchNorm2d, GroupNorm, LayerNorm
from .resize import AdaptiveAvgPool2d, Upsample

__all__ = [
    "AdaptiveAvgPool2d",
    "BatchNorm2d",
    "Block",
    "Conv2d",
    "ConvModule",
    "DropPath",
    "Dropout",
    "Dropout2d",
    "GlobalSubSampleAttn",
    "GroupNorm",
    "Identity",
    "LayerNorm",
    "Linear",
    "LocallyGroupedAttn",
    "Mlp",
    "Module",
    "ModuleList",
    "Parameter",
    "PatchEmbed",
    "PosConv",
    "ReLU",
    "Sequential",
    "Upsample",
    "no_grad",
]
