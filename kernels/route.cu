// DeLo factor selection (docs/method.md#routing: eq. 3 with the compatibility
// term) and its backward. Twins of experts::cpu::{route, route_backward}.
#include "common.cuh"

// Rust's f32::total_cmp as an integer key: a > b in the total order iff key(a) > key(b).
static __device__ __forceinline__ int delo_total_key(float v) {
    const int b = __float_as_int(v);
    return b ^ (int)(((unsigned)(b >> 31)) >> 1);
}

// Indices of the r largest of v[0..n) (smem), best first, ties to the lower index (the CPU's
// sort by total_cmp, then index): r rounds of a warp argmax over the entries not yet chosen.
// `chosen` (smem, n ints) must be zero on entry; `out` (smem, r ints) receives the indices.
// Called by one whole warp.
static __device__ void delo_warp_top_r(const float* v, int n, int r, int* chosen, int* out,
                                       int lane) {
    for (int i = 0; i < r; ++i) {
        int bk = -2147483647 - 1, bi = 2147483647;
        for (int k = lane; k < n; k += 32) {
            if (chosen[k]) continue;
            const int kk = delo_total_key(v[k]);
            if (kk > bk || (kk == bk && k < bi)) {
                bk = kk;
                bi = k;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const int k2 = __shfl_xor_sync(0xffffffffu, bk, o);
            const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            if (k2 > bk || (k2 == bk && i2 < bi)) {
                bk = k2;
                bi = i2;
            }
        }
        // Every lane now holds the same (key, index): the order is total.
        if (lane == 0) {
            out[i] = bi;
            chosen[bi] = 1;
        }
        __syncwarp();
    }
}

// Routes sample row `b` of the outputs from its router logits la, lb [E] (global or shared
// memory). A pool [E, rho, d], compatibility router wc [r, d, E]. Outputs (row b of each):
// sel_a, sel_b [., r] (i32), p_a, p_b [., E], compat [., r, E], abar [., r, d], pa_sel, pb_sel
// [., r]. `smem`: (4E + r*E + blockDim + 2r) floats. Called by a whole block (blockDim a multiple
// of 32, at least 64 and at least E).
static __device__ void delo_route_sample(const float* la, const float* lb,
                                         const float* __restrict__ a_pool,
                                         const float* __restrict__ wc, int E, int rho, int d,
                                         int r, float lambda, long long b, float* smem,
                                         int* __restrict__ sel_a, int* __restrict__ sel_b,
                                         float* __restrict__ p_a, float* __restrict__ p_b,
                                         float* __restrict__ compat, float* __restrict__ abar,
                                         float* __restrict__ pa_sel,
                                         float* __restrict__ pb_sel) {
    float* pa = smem;                      // [E]
    float* pb = pa + E;                    // [E]
    float* full = pb + E;                  // [E]  p_b + lambda * c
    float* comp = full + E;                // [r, E]  z, then softmax(z) in place
    float* red = comp + r * E;             // [blockDim]
    int* chosen = (int*)(red + blockDim.x);  // [E]
    int* ssa = chosen + E;                 // [r]
    int* ssb = ssa + r;                    // [r]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long be = b * E, br = b * r;

    // 1. p_A = softmax(la), S_A = top-r(p_A); p_B = softmax(lb) in parallel on warp 1.
    if (warp == 0) {
        delo_softmax_row(la, pa, E, lane);
        for (int k = lane; k < E; k += 32) chosen[k] = 0;
        __syncwarp();
        for (int k = lane; k < E; k += 32) p_a[be + k] = pa[k];
        delo_warp_top_r(pa, E, r, chosen, ssa, lane);
        for (int i = lane; i < r; i += 32) {
            sel_a[br + i] = ssa[i];
            pa_sel[br + i] = pa[ssa[i]];
        }
    } else if (warp == 1) {
        delo_softmax_row(lb, pb, E, lane);
        __syncwarp();
        for (int k = lane; k < E; k += 32) p_b[be + k] = pb[k];
    }
    __syncthreads();

    // 2. z_i = abar_i . W_C[i] with abar_i the sum of the rho rows of A[S_A[i]]. Threads form
    // G groups of E: thread (g, k) sums rows m = g, g + G, ... of column k (coalesced over
    // (m, k)); the G partials of each k are then added in group order (deterministic).
    const int G = blockDim.x / E;
    const int kk = tid % E, g = tid / E;
    for (int i = 0; i < r; ++i) {
        const float* A = a_pool + (long long)ssa[i] * rho * d;
        const float* W = wc + (long long)i * d * E;
        float* ab = abar + (br + i) * d;
        float z = 0.0f;
        if (g < G) {
            for (int m = g; m < d; m += G) {
                float a = 0.0f;
                for (int j = 0; j < rho; ++j) a += A[(long long)j * d + m];
                if (kk == 0) ab[m] = a;
                z += a * W[(long long)m * E + kk];
            }
        }
        red[tid] = z;
        __syncthreads();
        if (tid < E) {
            float s = 0.0f;
            for (int q = 0; q < G; ++q) s += red[q * E + tid];
            comp[i * E + tid] = s;
        }
        __syncthreads();
    }

    // 3. compat_i = softmax_E(z_i); c = sum_i compat_i; S_B = top-r(p_B + lambda * c).
    if (warp == 0) {
        for (int i = 0; i < r; ++i) {
            delo_softmax_row(comp + i * E, comp + i * E, E, lane);
        }
        __syncwarp();
        for (int n = lane; n < r * E; n += 32) compat[br * E + n] = comp[n];
        for (int k = lane; k < E; k += 32) {
            float c = 0.0f;
            for (int i = 0; i < r; ++i) c += comp[i * E + k];
            // no contraction into an FMA: the CPU rounds the product, then the sum
            full[k] = __fadd_rn(pb[k], __fmul_rn(lambda, c));
            chosen[k] = 0;
        }
        __syncwarp();
        delo_warp_top_r(full, E, r, chosen, ssb, lane);
        for (int i = lane; i < r; i += 32) {
            sel_b[br + i] = ssb[i];
            pb_sel[br + i] = full[ssb[i]];
        }
    }
}

// One block per sample b: routing from router logits la, lb [B, E] (see delo_route_sample).
// Dynamic shared memory: (4E + r*E + blockDim + 2r) * 4 bytes.
extern "C" __global__ void route_f32(const float* __restrict__ la, const float* __restrict__ lb,
                                     const float* __restrict__ a_pool,
                                     const float* __restrict__ wc, int E, int rho, int d, int r,
                                     float lambda, int* __restrict__ sel_a,
                                     int* __restrict__ sel_b, float* __restrict__ p_a,
                                     float* __restrict__ p_b, float* __restrict__ compat,
                                     float* __restrict__ abar, float* __restrict__ pa_sel,
                                     float* __restrict__ pb_sel) {
    extern __shared__ float delo_route_smem[];
    const long long b = blockIdx.x;
    delo_route_sample(la + b * E, lb + b * E, a_pool, wc, E, rho, d, r, lambda, b,
                      delo_route_smem, sel_a, sel_b, p_a, p_b, compat, abar, pa_sel, pb_sel);
}

// Every pool of a group (the q, k, v targets x modalities of one layer) in one launch, router
// linears included: grid (B, P), block as route_f32. table[7p .. 7p + 7) = the pool's query
// q [B, d], router A weight [E, d] and bias [E], router B weight and bias, A pool [E, rho, d]
// and compatibility router [r, d, E]. The logits W q + b (a warp a logit, lanes over d, fixed
// order) stay in shared memory; the outputs are stacked pool-major, [P * B, ...] rows.
// Dynamic shared memory: (6E + r*E + blockDim + 2r) * 4 bytes.
extern "C" __global__ void route_group_f32(const unsigned long long* __restrict__ table, int E,
                                           int rho, int d, int r, float lambda,
                                           int* __restrict__ sel_a, int* __restrict__ sel_b,
                                           float* __restrict__ p_a, float* __restrict__ p_b,
                                           float* __restrict__ compat,
                                           float* __restrict__ abar,
                                           float* __restrict__ pa_sel,
                                           float* __restrict__ pb_sel) {
    extern __shared__ float delo_route_smem[];
    const unsigned long long* t = table + 7 * blockIdx.y;
    const float* q = (const float*)t[0] + (long long)blockIdx.x * d;
    float* logits = delo_route_smem;  // [2E]: la, then lb
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int k = warp; k < 2 * E; k += warps) {
        const bool is_a = k < E;
        const int e = is_a ? k : k - E;
        const float* w = (const float*)t[is_a ? 1 : 3] + (long long)e * d;
        float s = 0.0f;
        for (int m = lane; m < d; m += 32) s += q[m] * w[m];
        s = delo_warp_sum(s);
        if (lane == 0) logits[k] = s + ((const float*)t[is_a ? 2 : 4])[e];
    }
    __syncthreads();
    const long long b = (long long)blockIdx.y * gridDim.x + blockIdx.x;
    delo_route_sample(logits, logits + E, (const float*)t[5], (const float*)t[6], E, rho, d, r,
                      lambda, b, logits + 2 * E, sel_a, sel_b, p_a, p_b, compat, abar, pa_sel,
                      pb_sel);
}

// Backward of the selected probabilities, one warp per sample (DELO_ROWS_PER_BLOCK samples a
// block): scatters d_pa, d_pb [B, r] to [B, E], then dla = softmax'(p_a), dlb = softmax'(p_b),
// and for the compatibility term dz [B, r, E] = softmax'(compat_i) of lambda * d(p_b + ...).
// Selections outside 0..E set the error word and contribute nothing.
extern "C" __global__ void route_backward_f32(const float* __restrict__ gpa,
                                              const float* __restrict__ gpb,
                                              const int* __restrict__ sel_a,
                                              const int* __restrict__ sel_b,
                                              const float* __restrict__ pa,
                                              const float* __restrict__ pb,
                                              const float* __restrict__ comp, int bsz, int E,
                                              int r, float lambda, float* __restrict__ dla,
                                              float* __restrict__ dlb, float* __restrict__ dz,
                                              int* err) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (b >= bsz) return;
    const long long br = (long long)b * r, be = (long long)b * E;
    const int* sa = sel_a + br;
    const int* sb = sel_b + br;
    if (lane == 0) {
        for (int i = 0; i < r; ++i) {
            if (sa[i] < 0 || sa[i] >= E || sb[i] < 0 || sb[i] >= E) {
                delo_set_err(err, DELO_ERR_SELECT);
            }
        }
    }
    // The scattered gradient of entry k, summed in slot order as the CPU does.
    auto scat = [&](const int* s, const float* gp, int k) {
        float v = 0.0f;
        for (int i = 0; i < r; ++i) {
            if (s[i] == k) v += gp[br + i];
        }
        return v;
    };
    float dot = 0.0f;
    for (int k = lane; k < E; k += 32) dot += scat(sa, gpa, k) * pa[be + k];
    dot = delo_warp_sum(dot);
    for (int k = lane; k < E; k += 32) dla[be + k] = pa[be + k] * (scat(sa, gpa, k) - dot);
    dot = 0.0f;
    for (int k = lane; k < E; k += 32) dot += scat(sb, gpb, k) * pb[be + k];
    dot = delo_warp_sum(dot);
    for (int k = lane; k < E; k += 32) dlb[be + k] = pb[be + k] * (scat(sb, gpb, k) - dot);
    for (int i = 0; i < r; ++i) {
        const float* c = comp + (br + i) * E;
        float* o = dz + (br + i) * E;
        float d2 = 0.0f;
        for (int k = lane; k < E; k += 32) d2 += (lambda * scat(sb, gpb, k)) * c[k];
        d2 = delo_warp_sum(d2);
        for (int k = lane; k < E; k += 32) o[k] = c[k] * (lambda * scat(sb, gpb, k) - d2);
    }
}

// dwc [P, r, d, E]: dwc[p, i, m, k] = sum over samples b (in order) of abar[p, b, i, m] *
// dz[p, b, i, k] for `pools` pools stacked one after another (abar [P, B, r, d], dz [P, B, r, E]).
// One thread an element, no atomics: deterministic.
extern "C" __global__ void route_dwc_f32(const float* __restrict__ abar_all,
                                         const float* __restrict__ dz_all, int bsz, int r, int d,
                                         int E, int pools, float* __restrict__ dwc) {
    const long long de = (long long)d * E, per = r * de;
    DELO_GRID_LOOP(n_all, per * pools) {
        const long long p = n_all / per, n = n_all - p * per;
        const float* abar = abar_all + p * bsz * r * d;
        const float* dz = dz_all + p * bsz * r * E;
        const long long i = n / de, rem = n - i * de;
        const long long m = rem / E, k = rem - m * E;
        float acc = 0.0f;
        for (int b = 0; b < bsz; ++b) {
            const long long bi = (long long)b * r + i;
            acc += abar[bi * d + m] * dz[bi * E + k];
        }
        dwc[n_all] = acc;
    }
}

// The router linears' backward for every pool of a group (route_group_f32's logits W q + b):
// table[4p .. 4p + 4) = the pool's query q [B, d], router weights W_A, W_B [E, d], and which of
// the group's M queries it reads (as an integer). dla, dlb [P, B, E] stacked. Outputs:
//   dwa, dwb [P, E, d]: sum over samples (in order) of dl[p, b, e] * q_p[b, m];
//   dba, dbb [P, E]:    sum over samples of dl[p, b, e];
//   dq [M, B, d]:       for each query, over its pools in order, sum_e dla W_A, then + sum_e
//                       dlb W_B (zero for a query no pool reads).
// One thread an output element, no atomics: deterministic.
extern "C" __global__ void router_backward_group_f32(const unsigned long long* __restrict__ table,
                                                     const float* __restrict__ dla,
                                                     const float* __restrict__ dlb, int pools,
                                                     int bsz, int E, int d, int queries,
                                                     float* __restrict__ dwa,
                                                     float* __restrict__ dwb,
                                                     float* __restrict__ dba,
                                                     float* __restrict__ dbb,
                                                     float* __restrict__ dq) {
    const long long ed = (long long)E * d, be = (long long)bsz * E;
    const long long n_w = 2 * pools * ed, n_b = 2LL * pools * E;
    const long long n_q = (long long)queries * bsz * d;
    DELO_GRID_LOOP(n, n_w + n_b + n_q) {
        if (n < n_w) {
            const long long p = n / (2 * ed), rem = n - p * 2 * ed;
            const bool is_a = rem < ed;
            const long long w = is_a ? rem : rem - ed, e = w / d, m = w - e * d;
            const float* dl = (is_a ? dla : dlb) + p * be + e;
            const float* q = (const float*)table[4 * p] + m;
            float acc = 0.0f;
            for (int b = 0; b < bsz; ++b) acc += dl[(long long)b * E] * q[(long long)b * d];
            (is_a ? dwa : dwb)[p * ed + w] = acc;
        } else if (n < n_w + n_b) {
            const long long k = n - n_w, p = k / (2 * E), rem = k - p * 2 * E;
            const bool is_a = rem < E;
            const long long e = is_a ? rem : rem - E;
            const float* dl = (is_a ? dla : dlb) + p * be + e;
            float acc = 0.0f;
            for (int b = 0; b < bsz; ++b) acc += dl[(long long)b * E];
            (is_a ? dba : dbb)[p * E + e] = acc;
        } else {
            const long long k = n - n_w - n_b, qi = k / ((long long)bsz * d);
            const long long rem = k - qi * bsz * d, b = rem / d, m = rem - b * d;
            float acc = 0.0f;
            for (int p = 0; p < pools; ++p) {
                if ((long long)table[4 * p + 3] != qi) continue;
                const float* wa = (const float*)table[4 * p + 1] + m;
                const float* wb = (const float*)table[4 * p + 2] + m;
                const float* la = dla + p * be + b * E;
                const float* lb = dlb + p * be + b * E;
                float sa = 0.0f, sb = 0.0f;
                for (int e = 0; e < E; ++e) sa += la[e] * wa[(long long)e * d];
                for (int e = 0; e < E; ++e) sb += lb[e] * wb[(long long)e * d];
                acc += sa + sb;
            }
            dq[k] = acc;
        }
    }
}
