"""Run twins-np's CUDA kernels on the CPU, launched as CuPy's ``RawKernel`` launches them.

:class:`Module` builds one kernel file (``twins_np/kernels/*.cu``) with the host C++ compiler
against ``cuda_emu.h`` (CUDA's grid, blocks, threads, barriers, warp shuffles and shared
memory, emulated with one fiber per thread) into a shared library, once per content: the
library is cached under the temporary directory, keyed by a hash of everything that goes into
it. ``Module(path).get_function(name)(grid, block, args)`` is then a kernel launch on NumPy
arrays, with the checks a GPU would not make for you:

- every argument against the kernel's C++ signature: an array for a pointer (C-contiguous,
  the pointer's element type: a float64 array handed to a ``float*`` is an error, not
  garbage), a NumPy scalar of exactly the parameter's type for a value (a 64-bit integer
  where the kernel reads an ``int`` would shift every later argument);
- every array is copied into "device memory" that ends where an inaccessible page begins
  (a thread that reads or writes past the end stops the launch with an error naming it and
  the argument) and starts after poisoned slack (0xFF bytes: NaN for floats; a write there is
  reported);
- the launch runs under each of the emulator's schedules (orders in which the threads of a
  block run between synchronisation points) on fresh copies of the inputs, and the results
  must be bitwise equal: a result that depends on the order is a race, such as a missing
  ``__syncthreads``.

Barriers and warp operations that CUDA would leave undefined or hang on (a barrier some
threads never reach, a shuffle mask naming a missing lane, a deadlock) raise
:class:`EmulationError` naming the block and thread.

What it proves: the kernels' indexing, synchronisation and arithmetic, against their NumPy
twins, on the CPU. What it does not: GPU speed, the float rounding of CUDA's own math
functions (the host's ``erf``/``exp`` run here), memory-model effects beyond barrier
ordering, and NVRTC's compilation (``tests/test_kernels.py`` compiles every file with NVRTC
and nvcc).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HEADER = Path(__file__).with_name("cuda_emu.h")
SCHEDULES = (0, 1, 2, 3)  # see cuda_emu.h: threads ascending/descending, warps ascending/descending
FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared")
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
_DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64, "u32": np.uint32, "u64": np.uint64,
           "i8": np.int8, "u8": np.uint8, "i16": np.int16, "u16": np.uint16}  # fmt: skip
_CTYPES = {"f32": ctypes.c_float, "f64": ctypes.c_double, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
           "u32": ctypes.c_uint32, "u64": ctypes.c_uint64, "i8": ctypes.c_int8, "u8": ctypes.c_uint8,
           "i16": ctypes.c_int16, "u16": ctypes.c_uint16}  # fmt: skip


class BuildError(RuntimeError):
    """The kernel file did not compile against the emulator (the compiler's output attached)."""


class EmulationError(RuntimeError):
    """A launch did something CUDA leaves undefined, or a check of the emulator failed."""


def compiler() -> str | None:
    """The host C++ compiler (g++ or c++), or None."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "twins_np_cuda_emu"


def kernel_names(source: Path) -> list[str]:
    return _KERNEL.findall(source.read_text(encoding="utf-8"))


def _wrapper(source_name: str, names: Sequence[str]) -> str:
    lines = [
        f'#include "{source_name}"',
        'extern "C" const char* cuda_emu_error() { return cuda_emu::state.error.c_str(); }',
        'extern "C" void* cuda_emu_alloc(unsigned long long bytes, int label) { return cuda_emu::alloc(bytes, label); }',
        'extern "C" void cuda_emu_free(void* data) { cuda_emu::release(static_cast<char*>(data)); }',
        'extern "C" int cuda_emu_slack_intact(void* data) { return cuda_emu::slack_intact(static_cast<char*>(data)); }',
        'extern "C" void cuda_emu_set_shared(void** p, const unsigned long long* n, int count) {',
        "    cuda_emu::state.shared.clear();",
        "    for (int i = 0; i < count; ++i) cuda_emu::state.shared.emplace_back(p[i], (std::size_t)n[i]);",
        "}",
    ]
    for name in names:
        lines += [
            f'extern "C" int cuda_emu_launch_{name}(const unsigned* g, const unsigned* b, void** args, int schedule) {{',
            f"    return cuda_emu::launch({name}, g, b, args, schedule);",
            "}",
            f'extern "C" int cuda_emu_signature_{name}(char* buf, int n) {{',
            f"    const std::string s = cuda_emu::signature({name});",
            '    std::snprintf(buf, n, "%s", s.c_str());',
            "    return (int)s.size();",
            "}",
        ]
    return "\n".join(lines) + "\n"


def build(source: Path) -> Path:
    """The shared library of ``source`` built against the emulator, cached by content.

    The file and the headers beside it (everything it may include) are copied into the
    cache entry, whose name is a hash of their contents, the emulator header, the compiler
    and its flags: the same sources in another folder (a test's copy) reuse the build.
    """
    cxx = compiler()
    if cxx is None:
        raise BuildError("no host C++ compiler (g++) found")
    source = Path(source).resolve()
    names = kernel_names(source)
    if not names:
        raise BuildError(f'{source.name}: no extern "C" __global__ kernel found')
    wrapper = _wrapper(source.name, names)
    deps = {p.name: p.read_bytes() for p in sorted(source.parent.iterdir()) if p.suffix in (".cu", ".cuh", ".h")}
    key = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    for part in (version, " ".join(FLAGS), HEADER.read_text(encoding="utf-8"), wrapper):
        key.update(part.encode())
    for name, data in deps.items():
        key.update(name.encode() + b"\0" + data)
    out_dir = cache_dir() / key.hexdigest()[:24]
    lib = out_dir / f"{source.stem}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for name, data in deps.items():
            (Path(tmp) / name).write_bytes(data)
        cpp = Path(tmp) / f"{source.stem}_emu.cpp"
        cpp.write_text(wrapper, encoding="utf-8")
        cmd = [cxx, *FLAGS, "-include", str(HEADER), str(cpp), "-o", str(Path(tmp) / lib.name)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if res.returncode != 0:
            raise BuildError(f"{source.name} does not compile against the CUDA emulator:\n{res.stderr[-4000:]}")
        os.replace(Path(tmp) / lib.name, lib)  # atomic: parallel test workers may build the same library
    return lib


def _shared_variables(lib_path: Path, lib: ctypes.CDLL, anchor: str) -> list[tuple[int, int]]:
    """(address, size) of every function-local static of the library: the kernels' ``__shared__`` memory.

    CUDA device code has no other function-local statics, and the emulator defines none, so
    all of them are shared memory. Their addresses come from the symbol table (``nm``),
    placed where the library was loaded (found through the kernel ``anchor``).
    """
    nm = shutil.which("nm")
    if nm is None:
        raise BuildError("nm (binutils) is needed to find the kernels' __shared__ variables")
    table = subprocess.run([nm, "--defined-only", "-S", str(lib_path)], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in table.splitlines()]
    addresses = {r[-1]: int(r[0], 16) for r in rows if len(r) >= 3}
    base = ctypes.cast(getattr(lib, anchor), ctypes.c_void_p).value - addresses[anchor]
    statics = [r for r in rows if len(r) == 4 and r[3].startswith("_ZZ") and r[2] in "bBdDuV"]
    # the C++ library's own (std::to_string's digit table, ...) are not the kernels'
    names = subprocess.run(["c++filt"], input="\n".join(r[3] for r in statics), capture_output=True, text=True).stdout.split("\n")
    return [(base + int(r[0], 16), int(r[1], 16)) for r, name in zip(statics, names)
            if not name.startswith(("std::", "__gnu_cxx::", "cuda_emu::"))]  # fmt: skip


class Module:
    """One kernel file built for the emulator; the counterpart of ``cupy.RawModule``."""

    def __init__(self, source: str | Path) -> None:
        self.source = Path(source)
        self.path = build(self.source)
        self.lib = ctypes.CDLL(str(self.path))
        self.names = kernel_names(self.source)
        shared = _shared_variables(self.path, self.lib, self.names[0])
        ptrs = (ctypes.c_void_p * max(1, len(shared)))(*(a for a, _ in shared))
        sizes = (ctypes.c_ulonglong * max(1, len(shared)))(*(n for _, n in shared))
        self.lib.cuda_emu_set_shared(ptrs, sizes, len(shared))
        self.shared = shared
        self.lib.cuda_emu_error.restype = ctypes.c_char_p
        self.lib.cuda_emu_alloc.restype = ctypes.c_void_p
        self.lib.cuda_emu_alloc.argtypes = [ctypes.c_ulonglong, ctypes.c_int]
        self.lib.cuda_emu_free.argtypes = [ctypes.c_void_p]
        self.lib.cuda_emu_slack_intact.argtypes = [ctypes.c_void_p]

    def get_function(self, name: str) -> Kernel:
        if name not in self.names:
            raise EmulationError(f"{self.source.name} has no kernel {name!r} (it has {', '.join(self.names)})")
        return Kernel(self, name)


def _dim3(v: Any, what: str) -> tuple[int, int, int]:
    dims = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise EmulationError(f"{what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))  # type: ignore[return-value]


class Kernel:
    """A kernel of a :class:`Module`; call it as a ``cupy.RawKernel``: ``k(grid, block, args)``."""

    def __init__(self, module: Module, name: str) -> None:
        self.module, self.name = module, name
        lib = module.lib
        buf = ctypes.create_string_buffer(512)
        getattr(lib, f"cuda_emu_signature_{name}")(buf, len(buf))
        self.params = buf.value.decode().split(",")
        self._launch = getattr(lib, f"cuda_emu_launch_{name}")
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p, ctypes.c_int]

    def _check(self, args: Sequence[Any]) -> None:
        if len(args) != len(self.params):
            raise EmulationError(f"{self.name} takes {len(self.params)} arguments ({', '.join(self.params)}), got {len(args)}")
        for i, (code, a) in enumerate(zip(self.params, args)):
            what = f"{self.name}: argument {i} ({code})"
            if "*" in code:
                want = np.dtype(_DTYPES[code.split("*")[0]])
                if not isinstance(a, np.ndarray):
                    raise EmulationError(f"{what} must be an array, got {type(a).__name__}")
                if a.dtype != want:
                    raise EmulationError(f"{what} is a pointer to {want}, got a {a.dtype} array")
                if not a.flags.c_contiguous:
                    raise EmulationError(f"{what} is not C-contiguous: a kernel reads its pointer as a dense array")
            else:
                want = np.dtype(_DTYPES[code])
                if not isinstance(a, np.generic) or a.dtype != want:
                    got = a.dtype if isinstance(a, np.generic) else type(a).__name__
                    raise EmulationError(f"{what} must be a NumPy {want} scalar (passed by value as that type), got {got}")

    def __call__(self, grid: Any, block: Any, args: Sequence[Any], shared_mem: int = 0, stream: Any = None) -> None:
        if shared_mem:
            raise EmulationError("dynamic shared memory is not emulated")
        g, b = _dim3(grid, "grid"), _dim3(block, "block")
        self._check(args)
        arrays = [i for i, code in enumerate(self.params) if "*" in code]
        # one staging buffer per distinct array: an array passed twice stays one buffer
        owner: dict[int, int] = {}
        for i in arrays:
            for j in arrays:
                if j >= i:
                    break
                if args[i] is args[j] or (args[i].ctypes.data == args[j].ctypes.data and args[i].nbytes == args[j].nbytes):
                    owner[i] = owner.get(j, j)
                    break
                if np.shares_memory(args[i], args[j]) and not (self.params[i].endswith("*c") and self.params[j].endswith("*c")):
                    raise EmulationError(f"{self.name}: arguments {j} and {i} overlap")
        first: dict[int, np.ndarray] | None = None
        for schedule in SCHEDULES:
            staged = {i: self._stage(i, args[i]) for i in arrays if i not in owner}
            try:
                first = self._run(g, b, args, staged, owner, schedule, first)
            finally:
                for ptr, _ in staged.values():
                    self.module.lib.cuda_emu_free(ptr)
        assert first is not None
        for i, data in first.items():
            if not self.params[i].endswith("*c"):
                args[i].reshape(-1).view(np.uint8)[...] = data

    def _stage(self, i: int, a: np.ndarray) -> tuple[int, np.ndarray]:
        """Device memory for argument i (see cuda_emu.h's alloc), holding a copy of a."""
        ptr = self.module.lib.cuda_emu_alloc(a.nbytes, i)
        if not ptr:
            raise MemoryError(f"could not map {a.nbytes} bytes for argument {i}")
        view = np.ctypeslib.as_array((ctypes.c_uint8 * a.nbytes).from_address(ptr)) if a.nbytes else np.zeros(0, np.uint8)
        view[...] = a.reshape(-1).view(np.uint8)
        return ptr, view

    def _run(self, g: tuple[int, int, int], b: tuple[int, int, int], args: Sequence[Any], staged: dict[int, Any],
             owner: dict[int, int], schedule: int, first: dict[int, np.ndarray] | None) -> dict[int, np.ndarray]:  # fmt: skip
        """One launch under one schedule; its results (copies), checked against the first schedule's."""
        holders, argv = [], (ctypes.c_void_p * max(1, len(args)))()
        for i, (code, a) in enumerate(zip(self.params, args)):
            h: Any = ctypes.c_void_p(staged[owner.get(i, i)][0]) if "*" in code else _CTYPES[code](a.item())
            holders.append(h)
            argv[i] = ctypes.addressof(h)
        rc = self._launch((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), ctypes.cast(argv, ctypes.c_void_p), schedule)
        if rc != 0:
            raise EmulationError(f"{self.name}<<<{g}, {b}>>> (schedule {schedule}): {self.module.lib.cuda_emu_error().decode()}")
        for i, (ptr, _) in staged.items():
            if not self.module.lib.cuda_emu_slack_intact(ptr):
                raise EmulationError(f"{self.name}: a thread wrote before the start of argument {i} ({self.params[i]})")
        results = {i: view.copy() for i, (_, view) in staged.items()}
        for i in results if first is not None else ():
            if not np.array_equal(results[i], first[i]):
                raise EmulationError(
                    f"{self.name}<<<{g}, {b}>>>: argument {i} differs between schedule {SCHEDULES[0]} and {schedule} "
                    "(the order threads run in changes the result: a race, such as a missing __syncthreads)"
                )
        return results if first is None else first
