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

Each kernel file is imported on the first use of one of its functions (this module's
``__getattr__``), and that file imports numba, so ``import twins_np`` never does:
``twins_np.kernels.for_array`` hands this module out on the first NumPy array that
``twins_np.backend.use_fused`` sends to a kernel. A kernel file may be absent (a course's
student copy leaves out the kernels of its tasks): ``use_fused`` then never sends an array
here for it, and the other kernels still load. Every function takes NumPy arrays only.
"""

from __future__ import annotations

import importlib
from typing import Any

# function -> the kernel file (twins_np/kernels/NAME_cpu.py) that defines it
_FILES = {
    "adamw_update": "adamw",
    "dwconv3x3_backward": "dwconv3x3",
    "dwconv3x3_forward": "dwconv3x3",
    "gelu_backward": "gelu",
    "gelu_forward": "gelu",
    "layernorm_backward_dx": "layernorm",
    "layernorm_forward": "layernorm",
    "softmax_backward": "softmax",
    "softmax_forward": "softmax",
}

__all__ = sorted(_FILES)


def __getattr__(name: str) -> Any:
    if name not in _FILES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    function = getattr(importlib.import_module(f"{__package__}.{_FILES[name]}_cpu"), name)
    globals()[name] = function  # found directly from now on
    return function
