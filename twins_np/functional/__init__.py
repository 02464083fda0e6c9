"""Pure forward/backward pairs for every layer of Twins.

Each op is a pair ``*_forward(...) -> (out, cache)`` and ``*_backward(dout, cache) ->
grads``; the cache is a small NamedTuple holding only what the backward needs, so
``cache._fields`` shows it. Every op takes its array module from its inputs and runs on
NumPy and CuPy alike.
"""

from .activation import GeluCache, ReluCache, gelu_backward, gelu_forward, relu_backward, relu_forward
from .attention import (
    AttentionCache,
    attention_backward,
    attention_forward,
    merge_heads,
    split_heads,
)
from .conv2d import Conv2dCache, conv2d_backward, conv2d_forward
from .depthwise_conv import DWConvCache, depthwise_conv3x3_backward, depthwise_conv3x3_forward
from .dropout import (
    DropoutCache,
    drop_path_backward,
    drop_path_forward,
    dropout_backward,
    dropout_forward,
    dropout_mask,
)
from .gsa import GSACache, gsa_backward, gsa_forward
from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward
from .linear import LinearCache, linear_backward, linear_forward
from .loss import (
    CrossEntropyCache,
    PixelCrossEntropyCache,
    cross_entropy_backward,
    cross_entropy_forward,
    pixel_cross_entropy_backward,
    pixel_cross_entropy_forward,
)
from .lsa import LSACache, join_qkv, lsa_backward, lsa_forward, split_qkv
from .mlp import MlpCache, mlp_backward, mlp_forward
from .norm2d import (
    BatchNormCache,
    GroupNormCache,
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
)
from .patch_conv import (
    AvgPoolCache,
    CornerPadCache,
    DWPatchConvCache,
    PatchConvCache,
    avg_pool_backward,
    avg_pool_forward,
    corner_pad_backward,
    corner_pad_forward,
    depthwise_patch_conv_backward,
    depthwise_patch_conv_forward,
    patch_conv_backward,
    patch_conv_forward,
)
from .peg import PEGCache, peg_backward, peg_forward
from .resize import (
    ResizeCache,
    Upsample2xCache,
    adaptive_avg_pool_backward,
    adaptive_avg_pool_forward,
    bilinear_resize_backward,
    bilinear_resize_forward,
    nearest_resize_backward,
    nearest_resize_forward,
    nearest_upsample2x_backward,
    nearest_upsample2x_forward,
    resize_backward,
)
from .softmax import SoftmaxCache, softmax_backward, softmax_forward
from .subsample import SUBSAMPLE_MODES, SUBSAMPLE_PARAMS, SubsampleCache, subsample_backward, subsample_forward
from .windows import (
    MASK_VALUE,
    PAD_MASK_RULES,
    WindowCache,
    window_pad_mask,
    window_pads,
    window_partition_backward,
    window_partition_forward,
    window_reverse_backward,
    window_reverse_forward,
)

__all__ = [name for name in dir() if not name.startswith("_")]
