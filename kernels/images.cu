// Patch rows of a batch built on the device from 8-bit images kept in device memory (the
// image cache of `--cache-images`), so that a step uploads a small table instead of its f32
// patches. Twin: backend::patches::patches_from_u8.
#include "common.cuh"

// out[r, (ch * p + y) * p + x] = the value at channel ch, row cy * p + y, column cx * p + x of
// the batch's padded, normalised pixels for patch row r < rows, whose sample and grid cell are
// cells[2r], cells[2r + 1] (cy = cell / gw, cx = cell % gw). Sample s is the image of
// samples[3s + 1] rows and samples[3s + 2] columns stored CHW at byte samples[3s] of `images`
// (n_bytes bytes); a pixel outside it is padding, 0. Inside, 8-bit v becomes ViLT's value in
// transformers' operations: (float)(v * (1/255) in double), then (r - 0.5f) / 0.5f.
// A sample or image range outside the cache sets DELO_ERR_IMAGE and writes NaN.
extern "C" __global__ void patches_from_u8(const unsigned char* images, long long n_bytes,
                                           const long long* samples, int n_samples,
                                           const int* cells, long long rows, int p, int gw,
                                           float* out, int* err) {
    const long long pp = 3LL * p * p;
    DELO_GRID_LOOP(e, rows * pp) {
        const long long r = e / pp, k = e - r * pp;
        const int s = cells[2 * r], cell = cells[2 * r + 1];
        const int ch = (int)(k / ((long long)p * p)), y = (int)(k / p % p), x = (int)(k % p);
        bool bad = s < 0 || s >= n_samples || cell < 0;
        long long off = 0, h = 0, w = 0;
        if (!bad) {
            off = samples[3 * s], h = samples[3 * s + 1], w = samples[3 * s + 2];
            bad = off < 0 || h < 0 || w < 0 || off + 3 * h * w > n_bytes;
        }
        if (bad) {
            if (k == 0) delo_set_err(err, DELO_ERR_IMAGE);
            out[e] = __int_as_float(0x7fc00000);
            continue;
        }
        const long long row = (long long)(cell / gw) * p + y, col = (long long)(cell % gw) * p + x;
        float v = 0.0f;
        if (row < h && col < w) {
            const float scaled = (float)((double)images[off + (ch * h + row) * w + col] *
                                         (1.0 / 255.0));
            v = (scaled - 0.5f) / 0.5f;
        }
        out[e] = v;
    }
}
