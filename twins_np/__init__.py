"""twins-np: Twins-PCPVT and Twins-SVT with hand-written forward and backward passes.

NumPy on the CPU, CuPy on the GPU, one code path. See README.md for the two commands.
"""

__version__ = "0.1.0"

from .backend import asnumpy, cupy_available, fused_kernels, get_xp, to_device  # noqa: E402
from .models import Twins, create_model, list_models  # noqa: E402
from .nn.module import no_grad  # noqa: E402

__all__ = [
    "__version__",
    "Twins",
    "asnumpy",
    "create_model",
    "cupy_available",
    "fused_kernels",
    "get_xp",
    "list_models",
    "no_grad",
    "to_device",
]
