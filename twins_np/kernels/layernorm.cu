// LayerNorm over the last axis (C channels), one thread block per row.
//
//     forward:   mu = mean(x),  var = mean((x - mu)^2)  (biased, as torch),
//                inv_std = 1 / sqrt(var + eps),  xhat = (x - mu) inv_std,  y = gamma xhat + beta
//     backward:  g = dout gamma,  dx = inv_std (g - mean(g) - xhat mean(g xhat))
//
// NumPy twin: twins_np.functional.layernorm.layernorm_forward / layernorm_backward. The
// forward writes the twin's cache (xhat and inv_std); the backward computes dx only: dgamma
// and dbeta are sums over all rows, which the launcher leaves to the array library (a
// column reduction, as in the twin).
#include "common.cuh"

template <typename T>
__device__ void layernorm_forward(const T* x, const T* gamma, const T* beta, T eps, T* y, T* xhat, T* inv_std, int C) {
    const long long row = blockIdx.x;
    const T* xr = x + row * C;
    T s = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
    const T mean = block_sum(s) / T(C);
    T q = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T d = xr[c] - mean;
        q += d * d;  // two passes over the row: no cancellation in E[x^2] - E[x]^2
    }
    const T r = T(1) / sqrt(block_sum(q) / T(C) + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T h = (xr[c] - mean) * r;
        xhat[row * C + c] = h;
        y[row * C + c] = gamma[c] * h + beta[c];
    }
    if (threadIdx.x == 0) inv_std[row] = r;
}

template <typename T>
__device__ void layernorm_backward(const T* dout, const T* xhat, const T* inv_std, const T* gamma, T* dx, int C) {
    const long long row = blockIdx.x;
    const T* dr = dout + row * C;
    const T* hr = xhat + row * C;
    T a = T(0), b = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const T g = dr[c] * gamma[c];
        a += g;
        b += g * hr[c];
    }
    const T mean_g = block_sum(a) / T(C);
    const T mean_gx = block_sum(b) / T(C);
    const T r = inv_std[row];
    for (int c = threadIdx.x; c < C; c += blockDim.x) dx[row * C + c] = r * (dr[c] * gamma[c] - mean_g - hr[c] * mean_gx);
}

extern "C" __global__ void layernorm_forward_f32(const float* x, const float* gamma, const float* beta, float eps, float* y,
                                                 float* xhat, float* inv_std, int C) {
    layernorm_forward(x, gamma, beta, eps, y, xhat, inv_std, C);
}
extern "C" __global__ void layernorm_forward_f64(const double* x, const double* gamma, const double* beta, double eps,
                                                 double* y, double* xhat, double* inv_std, int C) {
    layernorm_forward(x, gamma, beta, eps, y, xhat, inv_std, C);
}
extern "C" __global__ void layernorm_backward_f32(const float* dout, const float* xhat, const float* inv_std,
                                                  const float* gamma, float* dx, int C) {
    layernorm_backward(dout, xhat, inv_std, gamma, dx, C);
}
extern "C" __global__ void layernorm_backward_f64(const double* dout, const double* xhat, const double* inv_std,
                                                  const double* gamma, double* dx, int C) {
    layernorm_backward(dout, xhat, inv_std, gamma, dx, C);
}
