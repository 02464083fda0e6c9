"""The CUDA emulator itself (cuda_emu.h, emulator.py): CUDA's semantics, and the misuse it reports.

Small kernels written here check each built-in against what the CUDA C++ Programming Guide
specifies (the shuffles lane by lane, with sub-warp widths; indices across a grid), and each
error the emulator promises: a barrier some threads never reach, a shuffle over missing
lanes, a race on shared memory, an access past an array, arguments of the wrong type.
"""

from __future__ import annotations

import shutil

import emulator
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    emulator.compiler() is None or shutil.which("nm") is None or shutil.which("c++filt") is None,
    reason="the CUDA emulator needs a host C++ compiler and binutils (nm, c++filt)",
)

SOURCE = r"""
extern "C" __global__ void shuffles(const int* in, int* down, int* up, int* bfly, int* idx, int width) {
    const int t = threadIdx.x, v = in[t];
    down[t] = __shfl_down_sync(0xffffffffu, v, 3, width);
    up[t] = __shfl_up_sync(0xffffffffu, v, 5, width);
    bfly[t] = __shfl_xor_sync(0xffffffffu, v, 6, width);
    idx[t] = __shfl_sync(0xffffffffu, v, 7, width);
}

extern "C" __global__ void indices(int* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[4 * i] = blockIdx.x;
    out[4 * i + 1] = threadIdx.x;
    out[4 * i + 2] = blockDim.x;
    out[4 * i + 3] = gridDim.x;
}

extern "C" __global__ void reverse_in_shared(const float* in, float* out, int with_barrier) {
    __shared__ float s[64];
    s[threadIdx.x] = in[blockIdx.x * 64 + threadIdx.x];
    if (with_barrier) __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = s[63 - threadIdx.x];
}

extern "C" __global__ void early_exit_before_barrier(int* out) {
    if (threadIdx.x < 16) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

extern "C" __global__ void full_warp_shuffle(int* out) { out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1); }

extern "C" __global__ void write_every_thread(float* out) { out[threadIdx.x] = 1.0f; }
"""


@pytest.fixture(scope="module")
def mod(tmp_path_factory: pytest.TempPathFactory) -> emulator.Module:
    path = tmp_path_factory.mktemp("emu") / "probe.cu"
    path.write_text(SOURCE, encoding="utf-8")
    return emulator.Module(path)


def _expected_shuffles(v: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """The CUDA Programming Guide's warp shuffle functions, lane by lane (one warp)."""
    lanes = np.arange(32)
    base = lanes & ~(width - 1)
    down = np.where(lanes + 3 < base + width, lanes + 3, lanes)
    up = np.where(lanes - 5 >= base, lanes - 5, lanes)
    bfly = np.where((lanes ^ 6) < base + width, lanes ^ 6, lanes)  # a later group's lane: own value
    idx = base + 7 % width
    return {"down": v[down], "up": v[up], "bfly": v[bfly], "idx": v[idx]}


@pytest.mark.parametrize("width", [32, 16, 8, 4])
def test_shuffles_follow_cuda_lane_by_lane(mod, width):
    v = np.random.default_rng(width).integers(-1000, 1000, 64).astype(np.int32)  # two warps
    outs = {k: np.zeros(64, np.int32) for k in ("down", "up", "bfly", "idx")}
    mod.get_function("shuffles")((1,), (64,), (v, outs["down"], outs["up"], outs["bfly"], outs["idx"], np.int32(width)))
    for warp in range(2):
        want = _expected_shuffles(v[32 * warp : 32 * warp + 32], width)
        for k in outs:
            np.testing.assert_array_equal(outs[k][32 * warp : 32 * warp + 32], want[k], err_msg=f"{k}, warp {warp}")


def test_grid_and_block_indices(mod):
    out = np.full(4 * 5 * 96, -1, np.int32)
    mod.get_function("indices")((5,), (96,), (out,))
    got = out.reshape(5, 96, 4)
    np.testing.assert_array_equal(got[..., 0], np.repeat(np.arange(5)[:, None], 96, axis=1))
    np.testing.assert_array_equal(got[..., 1], np.tile(np.arange(96), (5, 1)))
    assert (got[..., 2] == 96).all() and (got[..., 3] == 5).all()


def test_shared_memory_is_per_block_and_a_missing_barrier_is_a_race(mod):
    x = np.arange(3 * 64, dtype=np.float32)
    out = np.zeros_like(x)
    mod.get_function("reverse_in_shared")((3,), (64,), (x, out, np.int32(1)))
    np.testing.assert_array_equal(out, x.reshape(3, 64)[:, ::-1].ravel())
    with pytest.raises(emulator.EmulationError, match="differs between schedule .* a race"):
        mod.get_function("reverse_in_shared")((3,), (64,), (x, out, np.int32(0)))


def test_a_barrier_some_threads_never_reach_is_an_error(mod):
    with pytest.raises(emulator.EmulationError, match="__syncthreads reached by 48 threads of the block while 16 have exited"):
        mod.get_function("early_exit_before_barrier")((1,), (64,), (np.zeros(64, np.int32),))


def test_a_full_mask_shuffle_in_a_partial_warp_is_an_error(mod):
    out = np.zeros(48, np.int32)
    with pytest.raises(emulator.EmulationError, match="names lane 16, which does not exist"):
        mod.get_function("full_warp_shuffle")((1,), (48,), (out,))
    mod.get_function("full_warp_shuffle")((1,), (64,), (out := np.zeros(64, np.int32),))
    np.testing.assert_array_equal(out, np.where(np.arange(64) % 32 < 31, np.arange(64) + 1, np.arange(64)))


def test_an_access_past_an_array_names_the_thread_and_the_argument(mod):
    where = r"past the end of argument 0 \(252 bytes\) by block \(0,0,0\) thread \(63,0,0\)"
    with pytest.raises(emulator.EmulationError, match=where):
        mod.get_function("write_every_thread")((1,), (64,), (np.zeros(63, np.float32),))


def test_arguments_are_checked_against_the_kernel_signature(mod):
    k = mod.get_function("write_every_thread")
    assert k.params == ["f32*"]
    for bad, message in (
        (np.zeros(64, np.float64), "pointer to float32, got a float64 array"),
        (np.zeros((64, 2), np.float32)[:, 0], "not C-contiguous"),
        (np.float32(1.0), "must be an array"),
    ):
        with pytest.raises(emulator.EmulationError, match=message):
            k((1,), (64,), (bad,))
    with pytest.raises(emulator.EmulationError, match="must be a NumPy int32 scalar"):
        mod.get_function("reverse_in_shared")((1,), (64,), (np.zeros(64, np.float32), np.zeros(64, np.float32), 1))
    with pytest.raises(emulator.EmulationError, match="more than 1024 threads"):
        k((1,), (2048,), (np.zeros(2048, np.float32),))
