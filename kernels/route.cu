// DeLo factor selection (DELO.md "Routing and factor selection", eq. 3 with the compatibility
// term) and its backward. Twins of cpu_experts::{route, route_backward}.
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

// One block per sample b (blockDim a multiple of 32, at least 64 and at least E). Inputs: router
// logits la, lb [B, E], A pool [E, rho, d], compatibility router wc [r, d, E]. Outputs: sel_a,
// sel_b [B, r] (i32), p_a, p_b [B, E], compat [B, r, E], abar [B, r, d], pa_sel, pb_sel [B, r].
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
    float* pa = delo_route_smem;           // [E]
    float* pb = pa + E;                    // [E]
    float* full = pb + E;                  // [E]  p_b + lambda * c
    float* comp = full + E;                // [r, E]  z, then softmax(z) in place
    float* red = comp + r * E;             // [blockDim]
    int* chosen = (int*)(red + blockDim.x);  // [E]
    int* ssa = chosen + E;                 // [r]
    int* ssb = ssa + r;                    // [r]
    const int b = blockIdx.x;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long be = (long long)b * E, br = (long long)b * r;

    // 1. p_A = softmax(la), S_A = top-r(p_A); p_B = softmax(lb) in parallel on warp 1.
    if (warp == 0) {
        delo_softmax_row(la + be, pa, E, lane);
        for (int k = lane; k < E; k += 32) chosen[k] = 0;
        __syncwarp();
        for (int k = lane; k < E; k += 32) p_a[be + k] = pa[k];
        delo_warp_top_r(pa, E, r, chosen, ssa, lane);
        for (int i = lane; i < r; i += 32) {
            sel_a[br + i] = ssa[i];
            pa_sel[br + i] = pa[ssa[i]];
        }
    } else if (warp == 1) {
        delo_softmax_row(lb + be, pb, E, lane);
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

// dwc [r, d, E]: dwc[i, m, k] = sum over samples b (in order) of abar[b, i, m] * dz[b, i, k].
// One thread an element, no atomics: deterministic.
extern "C" __global__ void route_dwc_f32(const float* __restrict__ abar,
                                         const float* __restrict__ dz, int bsz, int r, int d,
                                         int E, float* __restrict__ dwc) {
    const long long de = (long long)d * E;
    DELO_GRID_LOOP(n, (long long)r * de) {
        const long long i = n / de, rem = n - i * de;
        const long long m = rem / E, k = rem - m * E;
        float acc = 0.0f;
        for (int b = 0; b < bsz; ++b) {
            const long long bi = (long long)b * r + i;
            acc += abar[bi * d + m] * dz[bi * E + k];
        }
        dwc[n] = acc;
    }
}
