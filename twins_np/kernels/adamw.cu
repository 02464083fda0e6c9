// One AdamW update of one parameter tensor in a single launch (the NumPy twin makes about a
// dozen passes over memory).
//
//     p <- p (1 - lr wd)
//     m <- m + (1 - beta1) (g - m)                    (= beta1 m + (1 - beta1) g, torch's lerp)
//     v <- beta2 v + (1 - beta2) g^2
//     p <- p - step_size m / (sqrt(v) / bias_c2_sqrt + eps)
//
// with step_size = lr / (1 - beta1^t) and bias_c2_sqrt = sqrt(1 - beta2^t), computed on the
// host. NumPy twin: twins_np.optim.AdamW._update.
#include "common.cuh"

template <typename T>
__device__ void adamw_update(T* p, const T* g, T* m, T* v, long long n, T decay, T beta1, T beta2, T step_size,
                             T bias_c2_sqrt, T eps) {
    GRID_STRIDE_LOOP(i, n) {
        const T gi = g[i];
        T mi = m[i], vi = v[i];
        mi += (T(1) - beta1) * (gi - mi);
        vi = vi * beta2 + (T(1) - beta2) * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * (mi / (sqrt(vi) / bias_c2_sqrt + eps));
    }
}

extern "C" __global__ void adamw_update_f32(float* p, const float* g, float* m, float* v, long long n, float decay, float beta1,
                                            float beta2, float step_size, float bias_c2_sqrt, float eps) {
    adamw_update(p, g, m, v, n, decay, beta1, beta2, step_size, bias_c2_sqrt, eps);
}
extern "C" __global__ void adamw_update_f64(double* p, const double* g, double* m, double* v, long long n, double decay,
                                            double beta1, double beta2, double step_size, double bias_c2_sqrt, double eps) {
    adamw_update(p, g, m, v, n, decay, beta1, beta2, step_size, bias_c2_sqrt, eps);
}
