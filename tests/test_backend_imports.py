"""Only twins_np/backend.py may import cupy, and importing twins_np never needs it."""

import ast
import pathlib
import subprocess
import sys

import twins_np

PKG = pathlib.Path(twins_np.__file__).parent


def _imports_cupy(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("cupy", "cupyx") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("cupy", "cupyx"):
            return True
    return False


def test_only_backend_imports_cupy():
    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if p.name != "backend.py" and _imports_cupy(p)]
    assert offenders == []
    assert _imports_cupy(PKG / "backend.py"), "the backend is where cupy is imported"


def test_import_without_cupy_works():
    # simulate a machine where cupy is missing or broken: any import of it fails
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def fake(name, *a, **k):\n"
        "    if name.split('.')[0] in ('cupy', 'cupyx'): raise ImportError('no cupy here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = fake\n"
        "import twins_np, twins_np.functional, twins_np.nn, twins_np.models\n"
        "assert not twins_np.cupy_available()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
