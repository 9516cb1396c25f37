// LayerNorm and softmax over the last dimension, one warp a row (DELO_ROWS_PER_BLOCK rows in a
// 256-thread block), f32 statistics. Twins of CpuBackend::{layernorm, softmax}(_backward).
#include "common.cuh"

// LayerNorm of one row xr into yr by one warp: y = (x - mean) * rstd * w + b with
// rstd = 1 / sqrt(var + eps) (biased variance); lane 0 stores the statistics of row r.
__device__ __forceinline__ void delo_layernorm_row(const float* xr, const float* w, const float* b,
                                                   int d, float eps, float* yr, float* mean,
                                                   float* rstd, int r, int lane) {
    float s = 0.0f;
    for (int j = lane; j < d; j += 32) s += xr[j];
    const float mu = delo_warp_sum(s) / (float)d;
    float v = 0.0f;
    for (int j = lane; j < d; j += 32) {
        const float c = xr[j] - mu;
        v += c * c;
    }
    const float var = delo_warp_sum(v) / (float)d;
    const float rs = 1.0f / sqrtf(var + eps);
    for (int j = lane; j < d; j += 32) yr[j] = (xr[j] - mu) * rs * w[j] + b[j];
    if (lane == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
}

extern "C" __global__ void layernorm_f32(const float* x, const float* w, const float* b,
                                         int rows, int d, float eps, float* y, float* mean,
                                         float* rstd) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    delo_layernorm_row(x + (long long)r * d, w, b, d, eps, y + (long long)r * d, mean, rstd, r,
                       lane);
}

// The residual stream and its LayerNorm in one pass: s = x + (yin + bias) (bias may be null),
// then y = LayerNorm(s). Each lane reads back only the elements it wrote, so the row needs no
// barrier between the two.
extern "C" __global__ void add_layernorm_f32(const float* x, const float* yin, const float* bias,
                                             const float* w, const float* b, int rows, int d,
                                             float eps, float* s, float* y, float* mean,
                                             float* rstd) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const long long base = (long long)r * d;
    for (int j = lane; j < d; j += 32) {
        const float o = bias ? yin[base + j] + bias[j] : yin[base + j];
        s[base + j] = x[base + j] + o;
    }
    delo_layernorm_row(s + base, w, b, d, eps, y + base, mean, rstd, r, lane);
}
DELO_OPTIONAL_PARAMS(add_layernorm_f32, 2)

// dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)).
extern "C" __global__ void layernorm_backward_f32(const float* dy, const float* x,
                                                  const float* w, const float* mean,
                                                  const float* rstd, int rows, int d,
                                                  float* dx) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const long long base = (long long)r * d;
    const float mu = mean[r], rs = rstd[r];
    float s1 = 0.0f, s2 = 0.0f;
    for (int j = lane; j < d; j += 32) {
        const float g = dy[base + j] * w[j];
        s1 += g;
        s2 += g * ((x[base + j] - mu) * rs);
    }
    const float m1 = delo_warp_sum(s1) / (float)d;
    const float m2 = delo_warp_sum(s2) / (float)d;
    for (int j = lane; j < d; j += 32) {
        const float xhat = (x[base + j] - mu) * rs;
        dx[base + j] = rs * (dy[base + j] * w[j] - m1 - xhat * m2);
    }
}

extern "C" __global__ void softmax_f32(const float* x, int rows, int d, float* y) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    delo_softmax_row(x + (long long)r * d, y + (long long)r * d, d, lane);
}

// dx = y * (dy - sum(dy * y)); dx may be dy itself (attention backward does it in place).
extern "C" __global__ void softmax_backward_f32(const float* dy, const float* y, int rows,
                                                int d, float* dx) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const long long base = (long long)r * d;
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32) dot += dy[base + j] * y[base + j];
    dot = delo_warp_sum(dot);
    for (int j = lane; j < d; j += 32) {
        const float p = y[base + j];
        dx[base + j] = p * (dy[base + j] - dot);
    }
}

// In-place masked softmax of attention scores s [B, H, T, T] (already scaled by 1/sqrt(Dh)):
// keys with mask[b, key] == 0 get f32::MIN added first, as the CPU backend does.
extern "C" __global__ void attn_masked_softmax_f32(float* s, const float* mask, int rows, int t,
                                                   int heads) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const long long b = r / ((long long)heads * t);
    const float* m = mask + b * t;
    float* row = s + (long long)r * t;
    for (int j = lane; j < t; j += 32) {
        if (m[j] == 0.0f) row[j] += DELO_F32_MIN;
    }
    __syncwarp();
    delo_softmax_row(row, row, t, lane);
}
