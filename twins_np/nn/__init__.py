"""Modules that own parameters and call the functional pairs; names and state_dict keys as timm."""

from .attention import GlobalSubSampleAttn, LocallyGroupedAttn
from .blocks import Block, PatchEmbed, PosConv
from .dense import BatchNorm2d, GroupNorm, ReLU
from .layers import Conv2d, Dropout, DropPath, LayerNorm, Linear, Mlp
from .module import Identity, Module, ModuleList, Parameter, Sequential, no_grad
from .resize import Upsample

__all__ = [
    "BatchNorm2d",
    "Block",
    "Conv2d",
    "DropPath",
    "Dropout",
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
