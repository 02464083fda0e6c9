// Softmax over the last axis (rows of n scores), one thread block per row.
//
//     forward:   y = exp(x - max(x)) / sum(exp(x - max(x)))
//     backward:  dx = y (dout - sum(dout y))     (the Jacobian-vector product, no Jacobian)
//
// NumPy twin: twins_np.functional.softmax.softmax_forward / softmax_backward (last axis).
// The twin's cache is y itself.
#include "common.cuh"

template <typename T>
__device__ void softmax_forward(const T* x, T* y, int n) {
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    T m = neg_infinity<T>();
    for (int k = threadIdx.x; k < n; k += blockDim.x) m = xr[k] > m ? xr[k] : m;
    m = block_max(m);
    T s = T(0);
    for (int k = threadIdx.x; k < n; k += blockDim.x) {
        const T e = exp(xr[k] - m);
        y[row * n + k] = e;
        s += e;
    }
    const T total = block_sum(s);  // its __syncthreads also orders the writes above before the reads below
    for (int k = threadIdx.x; k < n; k += blockDim.x) y[row * n + k] /= total;
}

template <typename T>
__device__ void softmax_backward(const T* dout, const T* y, T* dx, int n) {
    const long long row = blockIdx.x;
    T s = T(0);
    for (int k = threadIdx.x; k < n; k += blockDim.x) s += dout[row * n + k] * y[row * n + k];
    s = block_sum(s);
    for (int k = threadIdx.x; k < n; k += blockDim.x) dx[row * n + k] = y[row * n + k] * (dout[row * n + k] - s);
}

extern "C" __global__ void softmax_forward_f32(const float* x, float* y, int n) { softmax_forward(x, y, n); }
extern "C" __global__ void softmax_forward_f64(const double* x, double* y, int n) { softmax_forward(x, y, n); }
extern "C" __global__ void softmax_backward_f32(const float* dout, const float* y, float* dx, int n) { softmax_backward(dout, y, dx, n); }
extern "C" __global__ void softmax_backward_f64(const double* dout, const double* y, double* dx, int n) {
    softmax_backward(dout, y, dx, n);
}
