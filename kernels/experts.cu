// The gathered factor composition of DeLo, eq. (2)/(4), forward and backward, fused: per
// sample b and tile of tokens, the selected A rows and B columns are gathered by index and
//   u = A_sel x,   y = alpha * sum_k (g_{k/rho} u_k) B_sel[:, k]
// is applied to every token of the tile without materialising dW = B_sel diag(g) A_sel. Twins
// of experts::cpu::{expert_forward, expert_backward}. Plus the kernels of the unfused path
// (gather the selected factors into dense per-sample matrices, then cuBLAS) and the
// deterministic reductions both paths share.
//
// Layouts: x [B, T, din], y [B, T, dout], u [B, T, K] with K = r * rho (slot i's rho factor rows
// at k = i*rho + j), A pool [E, rho, din], B pool [E, dout, rho], sel_a / sel_b [B, r] (i32),
// gates [B, r].
//
// The fused kernels are templated on KM, a power of two >= K (4, 8 or 16): per-token factor
// activations live in KM registers and are reduced across a warp with a reduce-scatter.
#include "common.cuh"

#define DELO_EXP_THREADS 256
#define DELO_EXP_WARPS (DELO_EXP_THREADS / 32)
// Most tokens a block handles (the tile; the host picks 8, 16, 32 or 64).
#define DELO_EXP_TT_MAX 64

// ---- helpers ---------------------------------------------------------------------------------

// Four consecutive elements c..c+3 of a row of length n starting at p. With `vec` the caller
// guarantees n % 4 == 0 and a 16-byte aligned row (one 128-bit load); otherwise elements past
// the row's end read as 0.
static __device__ __forceinline__ float4 delo_ld4(const float* __restrict__ p, int c, int n,
                                                  int vec) {
    if (vec) return *reinterpret_cast<const float4*>(p + c);
    float4 v;
    v.x = c < n ? p[c] : 0.0f;
    v.y = c + 1 < n ? p[c + 1] : 0.0f;
    v.z = c + 2 < n ? p[c + 2] : 0.0f;
    v.w = c + 3 < n ? p[c + 3] : 0.0f;
    return v;
}

// Stores four consecutive elements c..c+3 of a row of length n (those below n).
static __device__ __forceinline__ void delo_st4(float* __restrict__ p, int c, int n, int vec,
                                                float4 v) {
    if (vec) {
        *reinterpret_cast<float4*>(p + c) = v;
        return;
    }
    if (c < n) p[c] = v.x;
    if (c + 1 < n) p[c + 1] = v.y;
    if (c + 2 < n) p[c + 2] = v.z;
    if (c + 3 < n) p[c + 3] = v.w;
}

static __device__ __forceinline__ float delo_dot4(float4 a, float4 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// acc += s * v
static __device__ __forceinline__ void delo_axpy4(float4& acc, float s, float4 v) {
    acc.x = fmaf(s, v.x, acc.x);
    acc.y = fmaf(s, v.y, acc.y);
    acc.z = fmaf(s, v.z, acc.z);
    acc.w = fmaf(s, v.w, acc.w);
}

static __device__ __forceinline__ float4 delo_zero4() { return make_float4(0.f, 0.f, 0.f, 0.f); }

// Warp reduce-scatter of KM values (KM a power of two, at most 32): returns, to lane l, the sum
// over the warp of v[l / (32 / KM)]. KM - 1 + log2(32 / KM) shuffles instead of 5 * KM. v is
// clobbered. Every lane of the warp must call it.
template <int KM>
static __device__ __forceinline__ float delo_warp_reduce_scatter(float (&v)[KM], int lane) {
#pragma unroll
    for (int s = 0; (KM >> (s + 1)) >= 1; ++s) {
        const int half = KM >> (s + 1);
        const int o = 16 >> s;
        const bool upper = (lane & o) != 0;
#pragma unroll
        for (int j = 0; j < half; ++j) {
            const float send = upper ? v[j] : v[j + half];
            const float keep = upper ? v[j + half] : v[j];
            v[j] = keep + __shfl_xor_sync(0xffffffffu, send, o);
        }
    }
    float t = v[0];
#pragma unroll
    for (int o = 16 / KM; o >= 1; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

// The sample's selections and gates into shared memory; an index outside 0..E sets the error
// word and is stored as -1 (the factor then reads as zeros).
static __device__ __forceinline__ void delo_load_selection(const int* __restrict__ sel_a,
                                                           const int* __restrict__ sel_b,
                                                           const float* __restrict__ gates,
                                                           int b, int r, int E, int* ssa,
                                                           int* ssb, float* sg, int* err) {
    for (int i = threadIdx.x; i < r; i += blockDim.x) {
        int sa = sel_a[(long long)b * r + i];
        int sb = sel_b[(long long)b * r + i];
        if (sa < 0 || sa >= E) {
            delo_set_err(err, DELO_ERR_SELECT);
            sa = -1;
        }
        if (sb < 0 || sb >= E) {
            delo_set_err(err, DELO_ERR_SELECT);
            sb = -1;
        }
        ssa[i] = sa;
        ssb[i] = sb;
        sg[i] = gates[(long long)b * r + i];
    }
}

// Stages columns c0 .. c0 + 4*nq of the selected A rows into fs [KM][ld] (ld a multiple of 4):
// fs[k][c] = A[S_A[k / rho], k % rho, c0 + c], zero for k >= K, invalid selections and columns
// past din.
template <int KM>
static __device__ __forceinline__ void delo_stage_a(float* fs, int ld,
                                                    const float* __restrict__ a_pool,
                                                    const int* ssa, int K, int rho, int din,
                                                    int c0, int nq, int vec) {
    float4* fs4 = reinterpret_cast<float4*>(fs);
    for (int n = threadIdx.x; n < KM * nq; n += blockDim.x) {
        const int k = n / nq, q = n - k * nq;
        float4 v = delo_zero4();
        if (k < K) {
            const int s = ssa[k / rho];
            if (s >= 0) {
                v = delo_ld4(a_pool + ((long long)s * rho + k % rho) * din, c0 + 4 * q, din,
                             vec);
            }
        }
        fs4[k * (ld / 4) + q] = v;
    }
}

// Output columns o..o+3 of the selected B factors for k = slot*rho + j: B[S_B[k / rho], o, k % rho]
// (zero past dout, for k >= K and for invalid selections).
static __device__ __forceinline__ float4 delo_b_cols(const float* __restrict__ b_pool,
                                                     const int* ssb, int k, int K, int rho,
                                                     int dout, int o) {
    float4 v = delo_zero4();
    if (k >= K) return v;
    const int s = ssb[k / rho];
    if (s < 0) return v;
    const float* bp = b_pool + (long long)s * dout * rho + k % rho;
    v.x = o < dout ? bp[(long long)o * rho] : 0.0f;
    v.y = o + 1 < dout ? bp[(long long)(o + 1) * rho] : 0.0f;
    v.z = o + 2 < dout ? bp[(long long)(o + 2) * rho] : 0.0f;
    v.w = o + 3 < dout ? bp[(long long)(o + 3) * rho] : 0.0f;
    return v;
}

// Stages output columns c0 .. c0 + 4*nq of the selected B factors, transposed, into
// fs [KM][ld]: fs[k][c] = B[S_B[k / rho], c0 + c, k % rho].
template <int KM>
static __device__ __forceinline__ void delo_stage_bt(float* fs, int ld,
                                                     const float* __restrict__ b_pool,
                                                     const int* ssb, int K, int rho, int dout,
                                                     int c0, int nq) {
    float4* fs4 = reinterpret_cast<float4*>(fs);
    for (int n = threadIdx.x; n < KM * nq; n += blockDim.x) {
        const int k = n / nq, q = n - k * nq;
        fs4[k * (ld / 4) + q] = delo_b_cols(b_pool, ssb, k, K, rho, dout, c0 + 4 * q);
    }
}

// For every token t < nt of a tile (rows of length n at rows + t*n), acc[t][k] +=
// sum_c rows[t, c] * F[k, c] over the columns of F (KM rows of n, staged in chunks of ld
// columns through fs). One warp a token, its lanes over column quads; reduce-scatter at the end
// of each chunk. Only k < K are written. Ends with a __syncthreads.
template <int KM>
static __device__ __forceinline__ void delo_rows_times_ft(const float* __restrict__ rows, int nt,
                                                          int n, int vec, int K, float* fs,
                                                          int ld, float (*acc)[KM],
                                                          const float* __restrict__ pool,
                                                          const int* ssel, int rho, bool is_a) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float4* fs4 = reinterpret_cast<const float4*>(fs);
    for (int c0 = 0; c0 < n; c0 += ld) {
        const int nq = (min(ld, n - c0) + 3) >> 2;
        __syncthreads();  // the previous chunk's readers are done with fs
        if (is_a) {
            delo_stage_a<KM>(fs, ld, pool, ssel, K, rho, n, c0, nq, vec);
        } else {
            delo_stage_bt<KM>(fs, ld, pool, ssel, K, rho, n, c0, nq);
        }
        __syncthreads();
        for (int t = warp; t < nt; t += DELO_EXP_WARPS) {
            const float* row = rows + (long long)t * n;
            float v[KM];
#pragma unroll
            for (int k = 0; k < KM; ++k) v[k] = 0.0f;
            for (int q = lane; q < nq; q += 32) {
                const float4 xv = delo_ld4(row, c0 + 4 * q, n, vec);
#pragma unroll
                for (int k = 0; k < KM; ++k) v[k] += delo_dot4(xv, fs4[k * (ld / 4) + q]);
            }
            const float s = delo_warp_reduce_scatter<KM>(v, lane);
            const int k = lane / (32 / KM);
            // one lane per (t, k); the same warp owns token t in every chunk: no race
            if (lane % (32 / KM) == 0 && k < K) acc[t][k] += s;
        }
    }
    __syncthreads();
}

// ---- fused forward ---------------------------------------------------------------------------

// grid (ceil(T / tt), B), block DELO_EXP_THREADS, dynamic shared memory KM * cha * 4 bytes.
// tt <= DELO_EXP_TT_MAX tokens a block; cha (a multiple of 4) columns of A staged at a time.
// vec: din % 4 == 0, dout % 4 == 0 and x, y, a_pool 16-byte aligned.
template <int KM>
static __device__ void delo_expert_fwd(const float* __restrict__ x,
                                       const float* __restrict__ a_pool,
                                       const float* __restrict__ b_pool,
                                       const int* __restrict__ sel_a,
                                       const int* __restrict__ sel_b,
                                       const float* __restrict__ gates, int T, int din, int dout,
                                       int E, int rho, int r, int tt, int cha, float alpha,
                                       int vec, float* __restrict__ y, float* __restrict__ u,
                                       int* err) {
    extern __shared__ float4 delo_exp_smem[];
    float* fs = reinterpret_cast<float*>(delo_exp_smem);  // [KM][cha]
    __shared__ __align__(16) float sug[DELO_EXP_TT_MAX][KM];  // u, then alpha * g * u, of the tile
    __shared__ int ssa[KM], ssb[KM];
    __shared__ float sg[KM];
    const int K = r * rho;
    const int b = blockIdx.y;
    const int t0 = blockIdx.x * tt;
    const int nt = min(tt, T - t0);
    const int tid = threadIdx.x;
    delo_load_selection(sel_a, sel_b, gates, b, r, E, ssa, ssb, sg, err);
    for (int n = tid; n < DELO_EXP_TT_MAX * KM; n += blockDim.x) (&sug[0][0])[n] = 0.0f;
    __syncthreads();

    // u = A_sel x for the tile: x read once.
    const long long row0 = (long long)b * T + t0;
    delo_rows_times_ft<KM>(x + row0 * din, nt, din, vec, K, fs, cha, sug, a_pool, ssa, rho,
                           true);

    // Write u (pre-gate) and fold the gates and alpha in.
    for (int n = tid; n < nt * K; n += blockDim.x) {
        const int t = n / K, k = n - t * K;
        const float uv = sug[t][k];
        u[row0 * K + n] = uv;
        sug[t][k] = alpha * sg[k / rho] * uv;
    }
    __syncthreads();

    // y = (alpha g u) B_sel^T: a thread a quad of output columns, its B columns in registers,
    // every token of the tile: y written once.
    const int nqo = (dout + 3) >> 2;
    for (int q = tid; q < nqo; q += blockDim.x) {
        float4 bq[KM];
#pragma unroll
        for (int k = 0; k < KM; ++k) bq[k] = delo_b_cols(b_pool, ssb, k, K, rho, dout, 4 * q);
        for (int t = 0; t < nt; ++t) {
            float4 acc = delo_zero4();
#pragma unroll
            for (int k = 0; k < KM; ++k) delo_axpy4(acc, sug[t][k], bq[k]);
            delo_st4(y + (row0 + t) * dout, 4 * q, dout, vec, acc);
        }
    }
}

#define DELO_EXPERT_FWD(KM)                                                                     \
    extern "C" __global__ void __launch_bounds__(DELO_EXP_THREADS) expert_fwd_k##KM(             \
        const float* __restrict__ x, const float* __restrict__ a_pool,                          \
        const float* __restrict__ b_pool, const int* __restrict__ sel_a,                        \
        const int* __restrict__ sel_b, const float* __restrict__ gates, int T, int din,         \
        int dout, int E, int rho, int r, int tt, int cha, float alpha, int vec,                 \
        float* __restrict__ y, float* __restrict__ u, int* err) {                               \
        delo_expert_fwd<KM>(x, a_pool, b_pool, sel_a, sel_b, gates, T, din, dout, E, rho, r,    \
                            tt, cha, alpha, vec, y, u, err);                                    \
    }
DELO_EXPERT_FWD(4)
DELO_EXPERT_FWD(8)
DELO_EXPERT_FWD(16)

// Every pool of a group (the q, k, v targets x modalities of one layer, sharing the input x) in
// one launch, for K = r * rho <= 8 (at KM = 16 the per-pool pointers held in registers beside
// the 16-wide tiles cost the backward a stack frame; such groups run pool by pool): grid (ceil(T / tt), B, P), blockIdx.z the pool. table[2p .. 2p + 2) = its A and B
// pools; selections and gates are stacked [P, B, r], y [P, B, T, dout], u [P, B, T, K].
#define DELO_EXPERT_FWD_GROUP(KM)                                                               \
    extern "C" __global__ void __launch_bounds__(DELO_EXP_THREADS) expert_fwd_group_k##KM(       \
        const unsigned long long* __restrict__ table, const float* __restrict__ x,              \
        const int* __restrict__ sel_a, const int* __restrict__ sel_b,                           \
        const float* __restrict__ gates, int T, int din, int dout, int E, int rho, int r,       \
        int tt, int cha, float alpha, int vec, float* __restrict__ y, float* __restrict__ u,    \
        int* err) {                                                                             \
        const long long p = blockIdx.z, bsz = gridDim.y, K = (long long)r * rho;                \
        const long long sel = p * bsz * r;                                                      \
        delo_expert_fwd<KM>(x, (const float*)table[2 * p], (const float*)table[2 * p + 1],      \
                            sel_a + sel, sel_b + sel, gates + sel, T, din, dout, E, rho, r, tt, \
                            cha, alpha, vec, y + p * bsz * T * dout, u + p * bsz * T * K, err); \
    }
DELO_EXPERT_FWD_GROUP(4)
DELO_EXPERT_FWD_GROUP(8)

// ---- fused backward --------------------------------------------------------------------------

// grid (ntiles = ceil(T / tt), B), block DELO_EXP_THREADS, dynamic shared memory KM * chb * 4
// bytes (chb columns of B staged at a time). Per tile:
//   dug = alpha dy B_sel            (warp per token; dy read from HBM once)
//   pdg[b, tile, i] = sum_t sum_j dug u            (slot i's rho columns)
//   du = dug g
//   pdb[b, tile, k, o] = sum_t dy[t, o] (alpha g u)[t, k]  (dy again, from L1/L2)
//   dx = du A_sel, pda[b, tile, k, c] = sum_t du[t, k] x[t, c]   (x read once, dx written once)
// The partial factor gradients pda [B*ntiles, K, din], pdb [B*ntiles, K, dout] and pdg
// [B*ntiles, r] are summed over tiles and scattered into the pools by expert_sum_tiles_f32 and
// expert_scatter_pool_f32, in a fixed order: no atomics, deterministic.
// vec: din % 4 == 0, dout % 4 == 0 and dy, x, dx, a_pool 16-byte aligned.
template <int KM>
static __device__ void delo_expert_bwd(const float* __restrict__ dy,
                                       const float* __restrict__ x,
                                       const float* __restrict__ a_pool,
                                       const float* __restrict__ b_pool,
                                       const int* __restrict__ sel_a,
                                       const int* __restrict__ sel_b,
                                       const float* __restrict__ gates,
                                       const float* __restrict__ u, int T, int din, int dout,
                                       int E, int rho, int r, int tt, int chb, float alpha,
                                       int vec, float* __restrict__ dx, float* __restrict__ pda,
                                       float* __restrict__ pdb, float* __restrict__ pdg,
                                       int* err) {
    extern __shared__ float4 delo_exp_smem[];
    float* fs = reinterpret_cast<float*>(delo_exp_smem);  // [KM][chb]
    __shared__ __align__(16) float su[DELO_EXP_TT_MAX][KM];   // u
    __shared__ __align__(16) float sug[DELO_EXP_TT_MAX][KM];  // alpha g u
    __shared__ __align__(16) float sdu[DELO_EXP_TT_MAX][KM];  // dy B_sel, then dug, then du
    __shared__ int ssa[KM], ssb[KM];
    __shared__ float sg[KM];
    const int K = r * rho;
    const int b = blockIdx.y;
    const int tile = blockIdx.x, ntiles = gridDim.x;
    const int t0 = tile * tt;
    const int nt = min(tt, T - t0);
    const int tid = threadIdx.x;
    const long long row0 = (long long)b * T + t0;
    const long long part = (long long)b * ntiles + tile;
    delo_load_selection(sel_a, sel_b, gates, b, r, E, ssa, ssb, sg, err);
    for (int n = tid; n < DELO_EXP_TT_MAX * KM; n += blockDim.x) {
        (&su[0][0])[n] = 0.0f;
        (&sdu[0][0])[n] = 0.0f;
    }
    __syncthreads();
    for (int n = tid; n < nt * K; n += blockDim.x) {
        const int t = n / K, k = n - t * K;
        const float uv = u[row0 * K + n];
        su[t][k] = uv;
        sug[t][k] = alpha * sg[k / rho] * uv;
    }
    for (int n = tid; n < DELO_EXP_TT_MAX * KM; n += blockDim.x) {
        const int t = n / KM, k = n - t * KM;
        if (t >= nt || k >= K) sug[t][k] = 0.0f;
    }
    // (delo_rows_times_ft starts with a __syncthreads)

    // dy B_sel for the tile.
    const float* dyt = dy + row0 * dout;
    delo_rows_times_ft<KM>(dyt, nt, dout, vec, K, fs, chb, sdu, b_pool, ssb, rho, false);

    // dug = alpha * (dy B_sel); the gate gradient of each slot; du = dug * g.
    for (int n = tid; n < nt * K; n += blockDim.x) {
        const int t = n / K, k = n - t * K;
        sdu[t][k] *= alpha;
    }
    __syncthreads();
    for (int i = tid; i < r; i += blockDim.x) {
        float s = 0.0f;
        for (int t = 0; t < nt; ++t) {
            for (int j = 0; j < rho; ++j) s += sdu[t][i * rho + j] * su[t][i * rho + j];
        }
        pdg[part * r + i] = s;
    }
    __syncthreads();
    for (int n = tid; n < nt * K; n += blockDim.x) {
        const int t = n / K, k = n - t * K;
        sdu[t][k] *= sg[k / rho];
    }
    __syncthreads();

    // Partial dB (transposed, [K, dout]): a thread a quad of output columns over the tile.
    const int nqo = (dout + 3) >> 2;
    for (int q = tid; q < nqo; q += blockDim.x) {
        float4 acc[KM];
#pragma unroll
        for (int k = 0; k < KM; ++k) acc[k] = delo_zero4();
        for (int t = 0; t < nt; ++t) {
            const float4 g4 = delo_ld4(dyt + (long long)t * dout, 4 * q, dout, vec);
#pragma unroll
            for (int k = 0; k < KM; ++k) delo_axpy4(acc[k], sug[t][k], g4);
        }
#pragma unroll
        for (int k = 0; k < KM; ++k) {
            if (k < K) delo_st4(pdb + (part * K + k) * dout, 4 * q, dout, vec, acc[k]);
        }
    }

    // dx and partial dA: a thread a quad of input columns, its A columns in registers.
    const int nqi = (din + 3) >> 2;
    const float* xt = x + row0 * din;
    for (int q = tid; q < nqi; q += blockDim.x) {
        float4 a[KM], acc[KM];
#pragma unroll
        for (int k = 0; k < KM; ++k) {
            a[k] = delo_zero4();
            acc[k] = delo_zero4();
            if (k < K) {
                const int s = ssa[k / rho];
                if (s >= 0) {
                    a[k] = delo_ld4(a_pool + ((long long)s * rho + k % rho) * din, 4 * q, din,
                                    vec);
                }
            }
        }
        for (int t = 0; t < nt; ++t) {
            const float4 xv = delo_ld4(xt + (long long)t * din, 4 * q, din, vec);
            float4 d = delo_zero4();
#pragma unroll
            for (int k = 0; k < KM; ++k) {
                const float g = sdu[t][k];
                delo_axpy4(d, g, a[k]);
                delo_axpy4(acc[k], g, xv);
            }
            delo_st4(dx + (row0 + t) * din, 4 * q, din, vec, d);
        }
#pragma unroll
        for (int k = 0; k < KM; ++k) {
            if (k < K) delo_st4(pda + (part * K + k) * din, 4 * q, din, vec, acc[k]);
        }
    }
}

#define DELO_EXPERT_BWD(KM)                                                                     \
    extern "C" __global__ void __launch_bounds__(DELO_EXP_THREADS) expert_bwd_k##KM(             \
        const float* __restrict__ dy, const float* __restrict__ x,                              \
        const float* __restrict__ a_pool, const float* __restrict__ b_pool,                     \
        const int* __restrict__ sel_a, const int* __restrict__ sel_b,                           \
        const float* __restrict__ gates, const float* __restrict__ u, int T, int din, int dout, \
        int E, int rho, int r, int tt, int chb, float alpha, int vec, float* __restrict__ dx,   \
        float* __restrict__ pda, float* __restrict__ pdb, float* __restrict__ pdg, int* err) {  \
        delo_expert_bwd<KM>(dy, x, a_pool, b_pool, sel_a, sel_b, gates, u, T, din, dout, E,     \
                            rho, r, tt, chb, alpha, vec, dx, pda, pdb, pdg, err);               \
    }
DELO_EXPERT_BWD(4)
DELO_EXPERT_BWD(8)
DELO_EXPERT_BWD(16)

// The backward of expert_fwd_group_k*: grid (ntiles, B, P), blockIdx.z the pool.
// table[3p .. 3p + 3) = its A pool, B pool and upstream gradient dy [B, T, dout]; x is shared;
// selections, gates [P, B, r] and u [P, B, T, K] stacked; dx [P, B, T, din] (one slab per pool,
// summed by the caller) and the partials pda [P, B, ntiles, K, din], pdb [P, B, ntiles, K, dout],
// pdg [P, B, ntiles, r] stacked, so that one expert_sum_tiles_f32 over P*B rows reduces them.
#define DELO_EXPERT_BWD_GROUP(KM)                                                               \
    extern "C" __global__ void __launch_bounds__(DELO_EXP_THREADS) expert_bwd_group_k##KM(       \
        const unsigned long long* __restrict__ table, const float* __restrict__ x,              \
        const int* __restrict__ sel_a, const int* __restrict__ sel_b,                           \
        const float* __restrict__ gates, const float* __restrict__ u, int T, int din, int dout, \
        int E, int rho, int r, int tt, int chb, float alpha, int vec, float* __restrict__ dx,   \
        float* __restrict__ pda, float* __restrict__ pdb, float* __restrict__ pdg, int* err) {  \
        const long long p = blockIdx.z, bsz = gridDim.y, K = (long long)r * rho;                \
        const long long parts = p * bsz * gridDim.x, sel = p * bsz * r;                         \
        delo_expert_bwd<KM>((const float*)table[3 * p + 2], x, (const float*)table[3 * p],      \
                            (const float*)table[3 * p + 1], sel_a + sel, sel_b + sel,           \
                            gates + sel, u + p * bsz * T * K, T, din, dout, E, rho, r, tt, chb, \
                            alpha, vec, dx + p * bsz * T * din, pda + parts * K * din,          \
                            pdb + parts * K * dout, pdg + parts * r, err);                      \
    }
DELO_EXPERT_BWD_GROUP(4)
DELO_EXPERT_BWD_GROUP(8)

// ---- reductions shared by both paths -----------------------------------------------------------

// out[b, j] = sum over tiles (in order) of p[b, tile, j]; p [B, ntiles, n], out [B, n].
extern "C" __global__ void expert_sum_tiles_f32(const float* __restrict__ p, int ntiles,
                                                long long n, long long bsz,
                                                float* __restrict__ out) {
    DELO_GRID_LOOP(e, bsz * n) {
        const long long b = e / n, j = e - b * n;
        const float* q = p + b * ntiles * n + j;
        float s = 0.0f;
        for (int t = 0; t < ntiles; ++t) s += q[(long long)t * n];
        out[e] = s;
    }
}

// Scatter-add of per-sample factor gradients s [B, K, W] (K = r * rho, row k = slot k / rho,
// factor row k % rho) into a pool, deterministically: one thread an element of the pool, adding
// the rows of every (sample, slot) that selected its factor, samples then slots in order (the
// CPU's order). b_layout 0: pool [E, rho, W] (A pool, W = din); 1: pool [E, W, rho] (B pool,
// W = dout). Selections outside 0..E match no factor. `pools` groups of (s, sel, pool) stacked
// one after another (s [P, B, K, W], sel [P, B, r], pool [P, E, ...]) are scattered at once.
extern "C" __global__ void expert_scatter_pool_f32(const float* __restrict__ s_all,
                                                   const int* __restrict__ sel_all, int bsz,
                                                   int r, int rho, int E, int W, int b_layout,
                                                   int pools, float* __restrict__ pool) {
    const long long K = (long long)r * rho, per = (long long)E * rho * W;
    DELO_GRID_LOOP(n_all, per * pools) {
        const long long p = n_all / per, n = n_all - p * per;
        const float* s = s_all + p * bsz * K * W;
        const int* sel = sel_all + p * bsz * r;
        long long e, j, c;
        if (b_layout) {
            e = n / ((long long)W * rho);
            const long long rem = n - e * W * rho;
            c = rem / rho;
            j = rem - c * rho;
        } else {
            e = n / ((long long)rho * W);
            const long long rem = n - e * rho * W;
            j = rem / W;
            c = rem - j * W;
        }
        float acc = 0.0f;
        for (int b = 0; b < bsz; ++b) {
            for (int i = 0; i < r; ++i) {
                if (sel[(long long)b * r + i] == e) acc += s[((long long)b * K + i * rho + j) * W + c];
            }
        }
        pool[n_all] = acc;
    }
}

// ---- unfused path ----------------------------------------------------------------------------

// Dense selected factors: out[b, k, c] = pool[S[b, k / rho] * se + (k % rho) * sj + c * sc] for
// out [B, K, W]. A_sel [B, K, din]: se = rho*din, sj = din, sc = 1. B_sel transposed
// [B, K, dout]: se = dout*rho, sj = 1, sc = rho. Invalid selections give zeros and set the
// error word.
extern "C" __global__ void expert_gather_f32(const float* __restrict__ pool,
                                             const int* __restrict__ sel, int bsz, int r,
                                             int rho, int W, long long se, long long sj,
                                             long long sc, int E, float* __restrict__ out,
                                             int* err) {
    const long long K = (long long)r * rho;
    DELO_GRID_LOOP(n, (long long)bsz * K * W) {
        const long long bk = n / W, c = n - bk * W;
        const long long b = bk / K, k = bk - b * K;
        const int s = sel[b * r + k / rho];
        if (s < 0 || s >= E) {
            if (c == 0) delo_set_err(err, DELO_ERR_SELECT);
            out[n] = 0.0f;
        } else {
            out[n] = pool[s * se + (k % rho) * sj + c * sc];
        }
    }
}

// out[b, t, k] = alpha * gates[b, k / rho] * v[b, t, k] over n = B*T*K elements, tk = T*K.
extern "C" __global__ void expert_gate_scale_f32(const float* __restrict__ v,
                                                 const float* __restrict__ gates, long long n,
                                                 long long tk, int K, int rho, int r,
                                                 float alpha, float* __restrict__ out) {
    DELO_GRID_LOOP(e, n) {
        const long long b = e / tk;
        const int k = (int)(e % K);
        out[e] = alpha * gates[b * r + k / rho] * v[e];
    }
}

// dgates[b, i] = sum_t sum_j dug[b, t, i*rho + j] * u[b, t, i*rho + j]; grid (r, B), one block
// (DELO_EXP_THREADS threads) an output, fixed summation order.
extern "C" __global__ void expert_dgates_f32(const float* __restrict__ dug,
                                             const float* __restrict__ u, int T, int K, int rho,
                                             int r, float* __restrict__ out) {
    __shared__ float sh[32];
    const int i = blockIdx.x, b = blockIdx.y;
    const long long base = (long long)b * T * K + (long long)i * rho;
    float s = 0.0f;
    for (long long n = threadIdx.x; n < (long long)T * rho; n += blockDim.x) {
        const long long t = n / rho, j = n - t * rho;
        const long long e = base + t * K + j;
        s += dug[e] * u[e];
    }
    s = delo_block_sum(s, sh);
    if (threadIdx.x == 0) out[(long long)b * r + i] = s;
}
