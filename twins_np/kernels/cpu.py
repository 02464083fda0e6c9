"""The CPU kernels, under the names of the CUDA launchers in ``twins_np/kernels/__init__.py``.

Each kernel is a loop compiled with numba, in the ``*_cpu.py`` file beside its CUDA kernel,
and returns what its NumPy twin returns, cache included:

===========================  ==================  ======================================================
function                     file                twin
===========================  ==================  ======================================================
gelu_forward / _backward     gelu_cpu.py         twins_np.functional.activation.gelu_forward / _backward
layernorm_forward / _bwd_dx  layernorm_cpu.py    twins_np.functional.layernorm.layernorm_forward / _backward
softmax_forward / _backward  softmax_cpu.py      twins_np.functional.softmax.softmax_forward / _backward
dwconv3x3_forward / _bwd     dwconv3x3_cpu.py    twins_np.functional.depthwise_conv.depthwise_conv3x3_*
adamw_update                 adamw_cpu.py        twins_np.optim.AdamW._update
===========================  ==================  ======================================================

This module imports numba (through the kernel files), so nothing imports it until a CPU
kernel is first needed: ``twins_np.kernels.for_array`` does, on the first NumPy array that
``twins_np.backend.use_fused`` sends to a kernel. Every function takes NumPy arrays only.
"""

from __future__ import annotations

from .adamw_cpu import adamw_update
from .dwconv3x3_cpu import dwconv3x3_backward, dwconv3x3_forward
from .gelu_cpu import gelu_backward, gelu_forward
from .layernorm_cpu import layernorm_backward_dx, layernorm_forward
from .softmax_cpu import softmax_backward, softmax_forward

__all__ = [
    "adamw_update",
    "dwconv3x3_backward",
    "dwconv3x3_forward",
    "gelu_backward",
    "gelu_forward",
    "layernorm_backward_dx",
    "layernorm_forward",
    "softmax_backward",
    "softmax_forward",
]
