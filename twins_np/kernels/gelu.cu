// Exact GELU, forward and backward, one pass over memory each.
//
//     forward:   y = x Phi(x),   Phi(x) = (1 + erf(x / sqrt(2))) / 2
//     backward:  dx = dout (Phi(x) + x phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//
// NumPy twin: twins_np.functional.activation.gelu_forward / gelu_backward. The forward
// also writes Phi(x), the twin's cache (GeluCache(x, cdf)), so either backward can follow
// either forward.
#include "common.cuh"

template <typename T>
__device__ void gelu_forward(const T* x, T* y, T* cdf, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const T xi = x[i];
        const T c = T(0.5) * (T(1) + erf(xi * T(0.70710678118654752440)));  // 1 / sqrt(2)
        cdf[i] = c;
        y[i] = xi * c;
    }
}

template <typename T>
__device__ void gelu_backward(const T* dout, const T* x, const T* cdf, T* dx, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const T xi = x[i];
        const T pdf = exp(T(-0.5) * xi * xi) * T(0.39894228040143267794);  // 1 / sqrt(2 pi)
        dx[i] = dout[i] * (cdf[i] + xi * pdf);
    }
}

extern "C" __global__ void gelu_forward_f32(const float* x, float* y, float* cdf, long long n) { gelu_forward(x, y, cdf, n); }
extern "C" __global__ void gelu_forward_f64(const double* x, double* y, double* cdf, long long n) { gelu_forward(x, y, cdf, n); }
extern "C" __global__ void gelu_backward_f32(const float* dout, const float* x, const float* cdf, float* dx, long long n) {
    gelu_backward(dout, x, cdf, dx, n);
}
extern "C" __global__ void gelu_backward_f64(const double* dout, const double* x, const double* cdf, double* dx, long long n) {
    gelu_backward(dout, x, cdf, dx, n);
}
