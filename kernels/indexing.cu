// Row gathers and scatters (embedding lookups and their adjoints) and strided row copies
// (sequence concat/split). Out-of-range indices set the device error word.
#include "common.cuh"

// out[i, :] = table[idx[i], :] for i < n_idx, rows of `row` elements; table has m rows.
extern "C" __global__ void gather_rows_f32(const float* table, const int* idx, long long n_idx,
                                           long long row, int m, float* out, int* err) {
    DELO_GRID_LOOP(e, n_idx * row) {
        const long long i = e / row, j = e - i * row;
        const int id = idx[i];
        if (id < 0 || id >= m) {
            if (j == 0) delo_set_err(err, DELO_ERR_GATHER);
            out[e] = 0.0f;
        } else {
            out[e] = table[(long long)id * row + j];
        }
    }
}

// out[idx[i], :] += dy[i, :]; out [m, row] must be zeroed first. Order of the atomic adds into
// one row is not fixed.
extern "C" __global__ void scatter_add_rows_f32(const float* dy, const int* idx, long long n_idx,
                                                long long row, int m, float* out, int* err) {
    DELO_GRID_LOOP(e, n_idx * row) {
        const long long i = e / row, j = e - i * row;
        const int id = idx[i];
        if (id < 0 || id >= m) {
            if (j == 0) delo_set_err(err, DELO_ERR_SCATTER);
        } else {
            atomicAdd(out + (long long)id * row + j, dy[e]);
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
