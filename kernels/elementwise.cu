// Elementwise kernels over flat f32 buffers (grid-stride, 64-bit indices) and the f32 <-> bf16
// casts. Twins of the CPU backend's `map`/`zip` closures in src/backend/cpu.rs.
#include "common.cuh"

extern "C" __global__ void ew_add_f32(const float* a, const float* b, float* out, long long n) {
    DELO_GRID_LOOP(i, n) out[i] = a[i] + b[i];
}

// a += b (a may alias nothing else).
extern "C" __global__ void ew_add_assign_f32(float* a, const float* b, long long n) {
    DELO_GRID_LOOP(i, n) a[i] += b[i];
}

// dst_i[j] += src_i[j] for every part i of a table of `parts` rows {src_i, dst_i, n_i} (device
// addresses and a count, as 64-bit words); parts must not overlap. grid (blocks, parts).
extern "C" __global__ void ew_add_assign_parts_f32(const unsigned long long* table, int parts) {
    const int i = blockIdx.y;
    if (i >= parts) return;
    const float* src = (const float*)table[3 * i];
    float* dst = (float*)table[3 * i + 1];
    const long long n = (long long)table[3 * i + 2];
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n;
         j += (long long)gridDim.x * blockDim.x)
        dst[j] += src[j];
}

// y = a * y + b * x, in place (the task-key EMA).
extern "C" __global__ void ew_axpby_f32(float* y, const float* x, float a, float b, long long n) {
    DELO_GRID_LOOP(i, n) y[i] = a * y[i] + b * x[i];
}

// out = x * s; out may be x itself.
extern "C" __global__ void ew_scale_f32(const float* x, float s, float* out, long long n) {
    DELO_GRID_LOOP(i, n) out[i] = x[i] * s;
}

extern "C" __global__ void ew_mul_f32(const float* a, const float* b, float* out, long long n) {
    DELO_GRID_LOOP(i, n) out[i] = a[i] * b[i];
}

// out[r, j] = x[r, j] + b[j] over n = rows * d elements.
extern "C" __global__ void ew_bias_add_f32(const float* x, const float* b, float* out,
                                           long long n, long long d) {
    DELO_GRID_LOOP(i, n) out[i] = x[i] + b[i % d];
}

#define DELO_SQRT_1_2 0.70710678118654752f
#define DELO_INV_SQRT_2PI 0.3989423f

// out = (y + b[j]) + (p0 + p1) over n = rows * d elements: a frozen linear's product, its bias
// and the adapter's updates, in the unfused ops' order. b, p0 and p1 may each be null (absent).
extern "C" __global__ void ew_bias_add_parts_f32(const float* y, const float* b, const float* p0,
                                                 const float* p1, float* out, long long n,
                                                 long long d) {
    DELO_GRID_LOOP(i, n) {
        float v = y[i];
        if (b) v += b[i % d];
        if (p0) {
            const float parts = p1 ? p0[i] + p1[i] : p0[i];
            v += parts;
        }
        out[i] = v;
    }
}

DELO_OPTIONAL_PARAMS(ew_bias_add_parts_f32, 1, 2, 3)

__device__ __forceinline__ float delo_gelu(float v) {
    return 0.5f * v * (1.0f + erff(v * DELO_SQRT_1_2));
}

// pre = y + b[j] (b may be null), out = gelu(pre): the MLP's first bias with its activation.
extern "C" __global__ void ew_bias_gelu_f32(const float* y, const float* b, float* pre,
                                            float* out, long long n, long long d) {
    DELO_GRID_LOOP(i, n) {
        const float v = b ? y[i] + b[i % d] : y[i];
        pre[i] = v;
        out[i] = delo_gelu(v);
    }
}
DELO_OPTIONAL_PARAMS(ew_bias_gelu_f32, 1)

// Exact GELU, x * Phi(x).
extern "C" __global__ void ew_gelu_f32(const float* x, float* out, long long n) {
    DELO_GRID_LOOP(i, n) out[i] = delo_gelu(x[i]);
}

// dy * (Phi(x) + x * phi(x)).
extern "C" __global__ void ew_gelu_backward_f32(const float* dy, const float* x, float* out,
                                                long long n) {
    DELO_GRID_LOOP(i, n) {
        const float v = x[i];
        const float cdf = 0.5f * (1.0f + erff(v * DELO_SQRT_1_2));
        out[i] = dy[i] * (cdf + v * DELO_INV_SQRT_2PI * expf(-0.5f * v * v));
    }
}

extern "C" __global__ void ew_tanh_f32(const float* x, float* out, long long n) {
    DELO_GRID_LOOP(i, n) out[i] = tanhf(x[i]);
}

// dy * (1 - y^2) given the forward output y.
extern "C" __global__ void ew_tanh_backward_f32(const float* dy, const float* y, float* out,
                                                long long n) {
    DELO_GRID_LOOP(i, n) {
        const float t = y[i];
        out[i] = dy[i] * (1.0f - t * t);
    }
}

// f32 -> bf16, round to nearest even, NaN kept quiet: bit-identical to half::bf16::from_f32.
extern "C" __global__ void cast_f32_to_bf16(const float* x, unsigned short* out, long long n) {
    DELO_GRID_LOOP(i, n) {
        const unsigned int u = __float_as_uint(x[i]);
        unsigned short r;
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            r = (unsigned short)((u >> 16) | 0x0040u);
        } else {
            r = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
        out[i] = r;
    }
}

// bf16 -> f32 is exact: the bf16 bits are the high half of the f32 (a NaN is made quiet, as
// half::bf16::to_f32 does).
extern "C" __global__ void cast_bf16_to_f32(const unsigned short* x, float* out, long long n) {
    DELO_GRID_LOOP(i, n) {
        unsigned int h = x[i];
        if ((h & 0x7fffu) > 0x7f80u) h |= 0x0040u;
        out[i] = __uint_as_float(h << 16);
    }
}

// One AdamW element update per thread: PyTorch's formulation, the twin of `adamw_scalar`. The
// bias corrections bc1 = 1 - beta1^t and bc2 = 1 - beta2^t come from the host.
extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, long long n,
                                     const float* step_hp, float beta1, float beta2, float eps,
                                     float wd) {
    // The step's learning rate and bias corrections come from device memory, so that one
    // captured step serves every step of a schedule.
    const float lr = step_hp[0], bc1 = step_hp[1], bc2 = step_hp[2];
    const float sqrt_bc2 = sqrtf(bc2);
    const float step = lr / bc1;
    DELO_GRID_LOOP(i, n) {
        const float gi = g[i];
        float pi = p[i];
        pi -= lr * wd * pi;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / sqrt_bc2 + eps;
        p[i] = pi - step * mi / denom;
    }
}
