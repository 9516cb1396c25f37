// Deterministic reductions: column sums (bias and LayerNorm-affine gradients) in two passes
// with a fixed summation order, masked means, row-wise cosine, and the scalar loss mean.
#include "common.cuh"

// Pass 1 of a column sum of x [rows, d]: block (32, 8) handles 32 columns of one chunk of
// `rpc` rows; grid (ceil(d / 32), nchunks). partial [nchunks, d].
extern "C" __global__ void colsum_partial_f32(const float* x, int rows, int d, int rpc,
                                              float* partial) {
    __shared__ float sh[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int chunk = blockIdx.y;
    const int r0 = chunk * rpc;
    const int r1 = min(rows, r0 + rpc);
    float acc = 0.0f;
    if (c < d) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) acc += x[(long long)r * d + c];
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < d) {
        float s = 0.0f;
        for (int k = 0; k < 8; ++k) s += sh[k][threadIdx.x];
        partial[(long long)chunk * d + c] = s;
    }
}

// Pass 1 of the LayerNorm affine gradients: dw = sum_r dy * xhat, db = sum_r dy, with
// xhat = (x - mean[r]) * rstd[r]. Same layout as colsum_partial_f32.
extern "C" __global__ void ln_affine_partial_f32(const float* dy, const float* x,
                                                 const float* mean, const float* rstd, int rows,
                                                 int d, int rpc, float* pdw, float* pdb) {
    __shared__ float shw[8][33];
    __shared__ float shb[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int chunk = blockIdx.y;
    const int r0 = chunk * rpc;
    const int r1 = min(rows, r0 + rpc);
    float aw = 0.0f, ab = 0.0f;
    if (c < d) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            const long long e = (long long)r * d + c;
            const float g = dy[e];
            aw += g * ((x[e] - mean[r]) * rstd[r]);
            ab += g;
        }
    }
    shw[threadIdx.y][threadIdx.x] = aw;
    shb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < d) {
        float sw = 0.0f, sb = 0.0f;
        for (int k = 0; k < 8; ++k) {
            sw += shw[k][threadIdx.x];
            sb += shb[k][threadIdx.x];
        }
        pdw[(long long)chunk * d + c] = sw;
        pdb[(long long)chunk * d + c] = sb;
    }
}

// Pass 2: out[c] = sum over chunks of partial[chunk, c], in chunk order. Grid-stride, since
// the host sizes the grid with cfg_flat, which caps it at 65535 blocks.
extern "C" __global__ void colsum_final_f32(const float* partial, int nchunks, int d,
                                            float* out) {
    DELO_GRID_LOOP(c, d) {
        float s = 0.0f;
        for (int k = 0; k < nchunks; ++k) s += partial[(long long)k * d + c];
        out[c] = s;
    }
}

// out[b, j] = mean of x[b, t, j] over the t with mask[b, t] != 0 (zeros when none).
// grid (ceil(d / blockDim.x), B).
extern "C" __global__ void masked_mean_f32(const float* x, const float* mask, int t, int d,
                                           float* out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int b = blockIdx.y;
    if (j >= d) return;
    float acc = 0.0f;
    int cnt = 0;
    for (int i = 0; i < t; ++i) {
        if (mask[(long long)b * t + i] != 0.0f) {
            acc += x[((long long)b * t + i) * d + j];
            ++cnt;
        }
    }
    out[(long long)b * d + j] = acc / (float)max(cnt, 1);
}

// dx[b, t, j] = mask[b, t] != 0 ? dy[b, j] / max(count_b, 1) : 0. One block a (b, t) row.
extern "C" __global__ void masked_mean_backward_f32(const float* dy, const float* mask, int t,
                                                    int d, float* dx) {
    __shared__ float sh[32];
    const long long row = blockIdx.x;
    const long long b = row / t;
    float c = 0.0f;
    for (int i = threadIdx.x; i < t; i += blockDim.x) c += mask[b * t + i] != 0.0f ? 1.0f : 0.0f;
    const float n = fmaxf(delo_block_sum(c, sh), 1.0f);
    const bool valid = mask[row] != 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        dx[row * d + j] = valid ? dy[b * d + j] / n : 0.0f;
    }
}

#define DELO_COS_EPS 1e-8f

// Row-wise cosine of a, b [rows, d] with norms clamped below at 1e-8. One warp a row.
extern "C" __global__ void cosine_f32(const float* a, const float* b, int rows, int d,
                                      float* out) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const float* x = a + (long long)r * d;
    const float* y = b + (long long)r * d;
    float dot = 0.0f, xx = 0.0f, yy = 0.0f;
    for (int j = lane; j < d; j += 32) {
        dot += x[j] * y[j];
        xx += x[j] * x[j];
        yy += y[j] * y[j];
    }
    dot = delo_warp_sum(dot);
    const float na = fmaxf(sqrtf(delo_warp_sum(xx)), DELO_COS_EPS);
    const float nb = fmaxf(sqrtf(delo_warp_sum(yy)), DELO_COS_EPS);
    if (lane == 0) out[r] = dot / (na * nb);
}

// (da, db) of the cosine for upstream dc [rows]; a clamped norm passes no gradient through
// its own normalisation (the CPU backend's `cos_parts`).
extern "C" __global__ void cosine_backward_f32(const float* dc, const float* a, const float* b,
                                               int rows, int d, float* da, float* db) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const long long base = (long long)r * d;
    const float* x = a + base;
    const float* y = b + base;
    float dot = 0.0f, xx = 0.0f, yy = 0.0f;
    for (int j = lane; j < d; j += 32) {
        dot += x[j] * y[j];
        xx += x[j] * x[j];
        yy += y[j] * y[j];
    }
    dot = delo_warp_sum(dot);
    const float na0 = sqrtf(delo_warp_sum(xx));
    const float nb0 = sqrtf(delo_warp_sum(yy));
    const bool ca = na0 > DELO_COS_EPS, cb = nb0 > DELO_COS_EPS;
    const float na = fmaxf(na0, DELO_COS_EPS), nb = fmaxf(nb0, DELO_COS_EPS);
    const float c = dot / (na * nb);
    const float g = dc[r];
    for (int j = lane; j < d; j += 32) {
        da[base + j] = g * (y[j] / (na * nb) - (ca ? c * x[j] / (na * na) : 0.0f));
        db[base + j] = g * (x[j] / (na * nb) - (cb ? c * y[j] / (nb * nb) : 0.0f));
    }
}

// out[0] = (sum of v[0..n)) / div, accumulated in double in a fixed order. One block of 1024.
extern "C" __global__ void reduce_mean_f32(const float* v, long long n, long long div,
                                           float* out) {
    __shared__ double sh[32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) acc += (double)v[i];
    const double s = delo_block_sum_d(acc, sh);
    if (threadIdx.x == 0) out[0] = (float)(s / (double)div);
}
