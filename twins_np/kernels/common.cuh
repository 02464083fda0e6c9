// Shared helpers of the fused kernels: grid-stride loops and block-wide reductions.
//
// Every kernel exists for float and double: a template holds the code, and two extern "C"
// wrappers (..._f32, ..._f64) give CuPy's RawModule plain names to look up. Block sizes are
// multiples of 32 (the launchers in twins_np/kernels/__init__.py see to it), as the warp
// shuffles below need whole warps.
#pragma once

// for (i over [0, n)), spread over every thread of the grid
#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)blockDim.x * gridDim.x)

// -infinity without <cmath> (NVRTC, which CuPy compiles with, has no INFINITY macro)
template <typename T>
__device__ __forceinline__ T neg_infinity();
template <>
__device__ __forceinline__ float neg_infinity<float>() { return __int_as_float(0xff800000); }
template <>
__device__ __forceinline__ double neg_infinity<double>() { return __longlong_as_double(0xfff0000000000000ULL); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        T other = __shfl_down_sync(0xffffffffu, v, offset);
        v = other > v ? other : v;
    }
    return v;
}

// Sum of v over the block, returned to every thread. Each warp reduces its 32 values,
// warp 0 reduces the warps' partial sums, and the result is broadcast through shared
// memory; the last __syncthreads lets the caller reduce again right away.
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = threadIdx.x < warps ? partial[threadIdx.x] : T(0);
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    v = partial[0];
    __syncthreads();
    return v;
}

// Maximum of v over the block (threads without data pass -infinity).
template <typename T>
__device__ T block_max(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = threadIdx.x < warps ? partial[threadIdx.x] : neg_infinity<T>();
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    v = partial[0];
    __syncthreads();
    return v;
}
