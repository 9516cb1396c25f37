// Row gathers and scatters (embedding lookups and their adjoints) and strided row copies
// (sequence concat/split). Out-of-range indices set the device error word.
#include "common.cuh"

// out[i, :] = table[idx[i], :] for i < n_idx, rows of `row` elements; table has m rows.
// Rows of no elements still visit each index once, since the CPU backend refuses a bad index
// whatever the row length.
extern "C" __global__ void gather_rows_f32(const float* table, const int* idx, long long n_idx,
                                           long long row, int m, float* out, int* err) {
    const long long w = row > 0 ? row : 1;
    DELO_GRID_LOOP(e, n_idx * w) {
        const long long i = e / w, j = e - i * w;
        const int id = idx[i];
        if (id < 0 || id >= m) {
            if (j == 0) delo_set_err(err, DELO_ERR_GATHER);
            if (row > 0) out[e] = 0.0f;
        } else if (row > 0) {
            out[e] = table[(long long)id * row + j];
        }
    }
}

// out[idx[i], :] += dy[i, :]; out [m, row] must be zeroed first. Order of the atomic adds into
// one row is not fixed.
extern "C" __global__ void scatter_add_rows_f32(const float* dy, const int* idx, long long n_idx,
                                                long long row, int m, float* out, int* err) {
    const long long w = row > 0 ? row : 1;  // as in gather_rows_f32
    DELO_GRID_LOOP(e, n_idx * w) {
        const long long i = e / w, j = e - i * w;
        const int id = idx[i];
        if (id < 0 || id >= m) {
            if (j == 0) delo_set_err(err, DELO_ERR_SCATTER);
        } else if (row > 0) {
            atomicAdd(out + (long long)id * row + j, dy[e]);
        }
    }
}

// dst[r, :] = src[r, :] for every row r of [rows, row] whose choice[r] == k; other rows keep
// their values. A choice outside [0, n) sets the error word: every row must name one of the n
// tensors that select_rows chooses among, and the host cannot check device-made choices.
extern "C" __global__ void copy_rows_where_f32(const float* src, const int* choice, int k, int n,
                                               long long rows, long long row, float* dst,
                                               int* err) {
    const long long w = row > 0 ? row : 1;  // as in gather_rows_f32
    DELO_GRID_LOOP(e, rows * w) {
        const long long r = e / w;
        const int c = choice[r];
        if (c < 0 || c >= n) {
            if (e - r * w == 0) delo_set_err(err, DELO_ERR_CHOICE);
        } else if (c == k && row > 0) {
            dst[e] = src[e];
        }
    }
}

// dst[r * dst_ld + c] = src[r * src_ld + c] for r < rows, c < cols.
extern "C" __global__ void copy2d_f32(const float* src, long long src_ld, float* dst,
                                      long long dst_ld, long long rows, long long cols) {
    DELO_GRID_LOOP(e, rows * cols) {
        const long long r = e / cols, c = e - r * cols;
        dst[r * dst_ld + c] = src[r * src_ld + c];
    }
}
