// 3x3 depthwise convolution, stride 1, zero padding 1, channels-last (the PEG's conv).
//
//     forward:   out[b,i,j,c] = bias[c] + sum_{u,v in 0..2} xpad[b, i+u, j+v, c] w[c, u, v]
//     backward:  dx[b,i,j,c]  = sum_{u,v} dout[b, i+1-u, j+1-v, c] w[c, u, v]   (inside the map)
//                dw_img[b,u,v,c] = sum_{i,j} dout[b,i,j,c] xpad[b, i+u, j+v, c]   (per image)
//
// NumPy twin: twins_np.functional.depthwise_conv.depthwise_conv3x3_forward / _backward. x is
// (B, H, W, C), w is (C, 1, 3, 3) read as (C, 9). The forward also fills the interior of
// the zeroed padded copy xpad, the twin's cache. The launcher sums dw_img over the images
// and dout over (b, i, j) for the bias, as the twin does.
#include "common.cuh"

template <typename T>
__device__ void dwconv3x3_forward(const T* x, const T* w, const T* bias, int has_bias, T* y, T* xpad, int B, int H, int W, int C) {
    const long long n = (long long)B * H * W * C;
    GRID_STRIDE_LOOP(i, n) {
        const int c = i % C;
        long long t = i / C;
        const int j = t % W;
        t /= W;
        const int h = t % H;
        const long long b = t / H;
        T acc = has_bias ? bias[c] : T(0);
        for (int u = 0; u < 3; ++u) {
            const int hh = h + u - 1;
            if (hh < 0 || hh >= H) continue;  // the zero padding
            for (int v = 0; v < 3; ++v) {
                const int ww = j + v - 1;
                if (ww < 0 || ww >= W) continue;
                acc += x[((b * H + hh) * W + ww) * C + c] * w[c * 9 + u * 3 + v];
            }
        }
        y[i] = acc;
        xpad[((b * (H + 2) + h + 1) * (W + 2) + j + 1) * C + c] = x[i];
    }
}

template <typename T>
__device__ void dwconv3x3_backward_input(const T* dout, const T* w, T* dx, int B, int H, int W, int C) {
    const long long n = (long long)B * H * W * C;
    GRID_STRIDE_LOOP(i, n) {
        const int c = i % C;
        long long t = i / C;
        const int j = t % W;
        t /= W;
        const int h = t % H;
        const long long b = t / H;
        T acc = T(0);
        for (int u = 0; u < 3; ++u) {
            const int ho = h + 1 - u;  // the output row that tap u of which reads input row h
            if (ho < 0 || ho >= H) continue;
            for (int v = 0; v < 3; ++v) {
                const int wo = j + 1 - v;
                if (wo < 0 || wo >= W) continue;
                acc += dout[((b * H + ho) * W + wo) * C + c] * w[c * 9 + u * 3 + v];
            }
        }
        dx[i] = acc;
    }
}

// one thread per (image, tap, channel): consecutive threads read consecutive channels
template <typename T>
__device__ void dwconv3x3_backward_weight(const T* dout, const T* xpad, T* dw_img, int B, int H, int W, int C) {
    const long long n = (long long)B * 9 * C;
    GRID_STRIDE_LOOP(i, n) {
        const int c = i % C;
        const int tap = (i / C) % 9;
        const long long b = i / (9LL * C);
        const int u = tap / 3, v = tap % 3;
        T acc = T(0);
        for (int h = 0; h < H; ++h)
            for (int j = 0; j < W; ++j)
                acc += dout[((b * H + h) * W + j) * C + c] * xpad[((b * (H + 2) + h + u) * (W + 2) + j + v) * C + c];
        dw_img[i] = acc;  // laid out (B, 3, 3, C)
    }
}

extern "C" __global__ void dwconv3x3_forward_f32(const float* x, const float* w, const float* bias, int has_bias, float* y,
                                                 float* xpad, int B, int H, int W, int C) {
    dwconv3x3_forward(x, w, bias, has_bias, y, xpad, B, H, W, C);
}
extern "C" __global__ void dwconv3x3_forward_f64(const double* x, const double* w, const double* bias, int has_bias, double* y,
                                                 double* xpad, int B, int H, int W, int C) {
    dwconv3x3_forward(x, w, bias, has_bias, y, xpad, B, H, W, C);
}
extern "C" __global__ void dwconv3x3_backward_input_f32(const float* dout, const float* w, float* dx, int B, int H, int W, int C) {
    dwconv3x3_backward_input(dout, w, dx, B, H, W, C);
}
extern "C" __global__ void dwconv3x3_backward_input_f64(const double* dout, const double* w, double* dx, int B, int H, int W,
                                                        int C) {
    dwconv3x3_backward_input(dout, w, dx, B, H, W, C);
}
extern "C" __global__ void dwconv3x3_backward_weight_f32(const float* dout, const float* xpad, float* dw_img, int B, int H, int W,
                                                         int C) {
    dwconv3x3_backward_weight(dout, xpad, dw_img, B, H, W, C);
}
extern "C" __global__ void dwconv3x3_backward_weight_f64(const double* dout, const double* xpad, double* dw_img, int B, int H,
                                                         int W, int C) {
    dwconv3x3_backward_weight(dout, xpad, dw_img, B, H, W, C);
}
