// Helpers shared by every kernel file. build.rs compiles all kernels/*.cu as ONE translation
// unit, so everything here is `static __device__` (or a macro) and guarded by #pragma once.
#pragma once

// Codes a kernel writes into the backend's device error word when its input is invalid (the
// host reads the word at the next synchronize/download and reports the op by name).
#define DELO_ERR_LABEL 1
#define DELO_ERR_GATHER 2
#define DELO_ERR_SCATTER 3
#define DELO_ERR_SELECT 4
#define DELO_ERR_CHOICE 5
#define DELO_ERR_IMAGE 6

// Declares which pointer parameters (0-based) of kernel `name` may be null: absent operands the
// kernel tests before any access. Nothing for nvcc; the emulated driver refuses a null pointer
// anywhere else.
#ifndef DELO_OPTIONAL_PARAMS
#define DELO_OPTIONAL_PARAMS(name, ...)
#endif

// Rust's f32::MIN, the additive mask of attention scores.
#define DELO_F32_MIN (-3.40282347e+38f)

// Rows handled by one 256-thread block in the one-warp-per-row kernels.
#define DELO_ROWS_PER_BLOCK 8

// Grid-stride loop over [0, n) with 64-bit indices.
#define DELO_GRID_LOOP(i, n)                                                                 \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);            \
         i += (long long)blockDim.x * gridDim.x)

static __device__ __forceinline__ float delo_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ double delo_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float delo_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a 1-D block (blockDim.x a multiple of 32, at most 1024), in a fixed order, returned
// to every thread. `sh` is __shared__ float[32]. Every thread of the block must call it.
static __device__ float delo_block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;
    v = delo_warp_sum(v);
    __syncthreads();  // an earlier call's readers of sh[0] are done
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float w = lane < nw ? sh[lane] : 0.0f;
        w = delo_warp_sum(w);
        if (lane == 0) sh[0] = w;
    }
    __syncthreads();
    return sh[0];
}

// Same in double; `sh` is __shared__ double[32].
static __device__ double delo_block_sum_d(double v, double* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int nw = (blockDim.x + 31) >> 5;
    v = delo_warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        double w = lane < nw ? sh[lane] : 0.0;
        w = delo_warp_sum_d(w);
        if (lane == 0) sh[0] = w;
    }
    __syncthreads();
    return sh[0];
}

// Records the first error code of the stream in the error word.
static __device__ __forceinline__ void delo_set_err(int* err, int code) {
    atomicCAS(err, 0, code);
}

static __device__ __forceinline__ float delo_sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

// log(1 + e^x) without overflow (the CPU backend's `softplus`).
static __device__ __forceinline__ float delo_softplus(float x) {
    return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

// Softmax of one row of length d held by one warp; y may be x itself (softmax, attention,
// routing).
static __device__ __forceinline__ void delo_softmax_row(const float* x, float* y, int d,
                                                        int lane) {
    float mx = -INFINITY;
    for (int j = lane; j < d; j += 32) mx = fmaxf(mx, x[j]);
    mx = delo_warp_max(mx);
    float s = 0.0f;
    for (int j = lane; j < d; j += 32) {
        const float e = expf(x[j] - mx);
        y[j] = e;
        s += e;
    }
    s = delo_warp_sum(s);
    for (int j = lane; j < d; j += 32) y[j] = y[j] / s;
}
