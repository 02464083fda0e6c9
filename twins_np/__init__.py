"""twins-np: Twins-PCPVT and Twins-SVT with hand-written forward and backward passes.

NumPy on the CPU, CuPy on the GPU, one code path. See README.md for the two commands.
"""

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - a clear error on the Pythons setup.cfg refuses (python_requires)
    raise ImportError(f"twins-np needs Python 3.11 or newer; this is Python {sys.version.split()[0]}")

__version__ = "0.1.0"

from ._malloc import tune_malloc as _tune_malloc  # noqa: E402

# NumPy's large temporaries are much cheaper when glibc keeps freed memory for the next one;
# see twins_np/_malloc.py for when this is skipped (TWINS_NP_NO_MALLOC_TUNING=1 opts out)
_tune_malloc()

from .backend import asnumpy, cpu_kernels, cupy_available, fused_kernels, get_xp, to_device  # noqa: E402
from .io import load_weights, save_weights  # noqa: E402
from .models import Twins, create_model, create_segmenter, list_models  # noqa: E402
from .nn.module import no_grad  # noqa: E402

__all__ = [
    "__version__",
    "Twins",
    "asnumpy",
    "cpu_kernels",
    "create_model",
    "create_segmenter",
    "cupy_available",
    "fused_kernels",
    "get_xp",
    "list_models",
    "load_weights",
    "no_grad",
    "save_weights",
    "to_device",
]
