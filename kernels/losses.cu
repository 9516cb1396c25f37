// Losses, mean-reduced by reduce_mean_f32 into a one-element device tensor, and their
// gradients, which read the upstream gradient from a one-element device tensor. Twins of the
// CPU backend's cross_entropy, bce_with_logits, kl_categorical and kl_bernoulli.
#include "common.cuh"

// Log-sum-exp of one row held by one warp.
static __device__ __forceinline__ float delo_row_lse(const float* x, int c, int lane,
                                                     float* mx_out) {
    float mx = -INFINITY;
    for (int j = lane; j < c; j += 32) mx = fmaxf(mx, x[j]);
    mx = delo_warp_max(mx);
    float s = 0.0f;
    for (int j = lane; j < c; j += 32) s += expf(x[j] - mx);
    s = delo_warp_sum(s);
    *mx_out = mx;
    return s;
}

// loss[r] = lse(logits[r]) - logits[r, labels[r]]; a label outside 0..c gives NaN and sets the
// error word. One warp a row.
extern "C" __global__ void ce_rows_f32(const float* logits, const int* labels, int rows, int c,
                                       float* loss, int* err) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const float* x = logits + (long long)r * c;
    float mx;
    const float s = delo_row_lse(x, c, lane, &mx);
    if (lane == 0) {
        const int l = labels[r];
        if (l < 0 || l >= c) {
            delo_set_err(err, DELO_ERR_LABEL);
            loss[r] = __int_as_float(0x7fc00000);
        } else {
            loss[r] = (mx + logf(s)) - x[l];
        }
    }
}

// dx[r] = (softmax(logits[r]) - onehot(labels[r])) * dloss / rows.
extern "C" __global__ void ce_backward_f32(const float* dloss, const float* logits,
                                           const int* labels, int rows, int c, float* dx,
                                           int* err) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const float g = dloss[0] / (float)rows;
    const long long base = (long long)r * c;
    const float* x = logits + base;
    float mx;
    const float s = delo_row_lse(x, c, lane, &mx);
    const int l = labels[r];
    const bool bad = l < 0 || l >= c;
    if (bad && lane == 0) delo_set_err(err, DELO_ERR_LABEL);
    for (int j = lane; j < c; j += 32) {
        float p = expf(x[j] - mx) / s;
        if (j == l) p -= 1.0f;
        dx[base + j] = bad ? __int_as_float(0x7fc00000) : p * g;
    }
}

// Per element: softplus(x) - x * t.
extern "C" __global__ void bce_elems_f32(const float* x, const float* t, long long n,
                                         float* out) {
    DELO_GRID_LOOP(i, n) out[i] = delo_softplus(x[i]) - x[i] * t[i];
}

// dx = dloss / div * (sigmoid(x) - t).
extern "C" __global__ void bce_backward_f32(const float* dloss, const float* x, const float* t,
                                            long long n, long long div, float* dx) {
    const float g = dloss[0] / (float)div;
    DELO_GRID_LOOP(i, n) dx[i] = g * (delo_sigmoid(x[i]) - t[i]);
}

// out[r] = KL(softmax(target[r]) || softmax(logits[r])), summed in double. One warp a row.
extern "C" __global__ void kl_cat_rows_f32(const float* target, const float* logits, int rows,
                                           int c, float* out) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const long long base = (long long)r * c;
    const float* tr = target + base;
    const float* lr = logits + base;
    float mt, ml;
    const float st = delo_row_lse(tr, c, lane, &mt);
    const float sl = delo_row_lse(lr, c, lane, &ml);
    const float lse_t = mt + logf(st), lse_l = ml + logf(sl);
    double acc = 0.0;
    for (int j = lane; j < c; j += 32) {
        const float p = expf(tr[j] - mt) / st;
        if (p > 0.0f) acc += (double)p * (double)((tr[j] - lse_t) - (lr[j] - lse_l));
    }
    acc = delo_warp_sum_d(acc);
    if (lane == 0) out[r] = (float)acc;
}

// dx[r] = dloss / rows * (softmax(logits[r]) - softmax(target[r])).
extern "C" __global__ void kl_cat_backward_f32(const float* dloss, const float* target,
                                               const float* logits, int rows, int c,
                                               float* dx) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * DELO_ROWS_PER_BLOCK + warp;
    if (r >= rows) return;
    const float g = dloss[0] / (float)rows;
    const long long base = (long long)r * c;
    const float* tr = target + base;
    const float* lr = logits + base;
    float mt, ml;
    const float st = delo_row_lse(tr, c, lane, &mt);
    const float sl = delo_row_lse(lr, c, lane, &ml);
    for (int j = lane; j < c; j += 32) {
        const float p = expf(tr[j] - mt) / st;
        const float q = expf(lr[j] - ml) / sl;
        dx[base + j] = g * (q - p);
    }
}

// Per element: Bernoulli KL(sigmoid(t) || sigmoid(l)) in the softplus form.
extern "C" __global__ void kl_bern_elems_f32(const float* t, const float* l, long long n,
                                             float* out) {
    DELO_GRID_LOOP(i, n) {
        const float ti = t[i], li = l[i];
        const float p = delo_sigmoid(ti);
        out[i] = p * (delo_softplus(-li) - delo_softplus(-ti)) +
                 (1.0f - p) * (delo_softplus(li) - delo_softplus(ti));
    }
}

// dx = dloss / div * (sigmoid(l) - sigmoid(t)).
extern "C" __global__ void kl_bern_backward_f32(const float* dloss, const float* t,
                                                const float* l, long long n, long long div,
                                                float* dx) {
    const float g = dloss[0] / (float)div;
    DELO_GRID_LOOP(i, n) dx[i] = g * (delo_sigmoid(l[i]) - delo_sigmoid(t[i]));
}
