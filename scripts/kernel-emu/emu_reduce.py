"""kernels/reduce.cu (column sums, masked means, cosine, the scalar mean) against float64
references of src/backend/cpu.rs, launched as ops.rs does. The LayerNorm affine sums are in
emu_norm.py."""
import numpy as np
from emu import K, keep, cfg_rows, cfg_flat, cfg_colsum, colsum_chunks, CFG_ONE_BLOCK, empty, f32, close

rng = np.random.default_rng(13)


def sum_rows(x):
    rows, d = x.shape
    if rows == 0 or d == 0:
        return np.zeros(d, np.float32)
    out = empty(d); nchunks, rpc = colsum_chunks(rows, d); partial = empty(nchunks * d)
    K.colsum_partial_f32(cfg_colsum(d, nchunks), f32(x), rows, d, rpc, partial)
    K.colsum_final_f32(cfg_flat(d), partial, nchunks, d, out)
    return out[:d]


def masked_mean(x, mask):
    bsz, t, d = x.shape; out = empty(bsz * d)
    if bsz * d == 0:
        return out[:0].reshape(bsz, d)
    assert bsz <= 65535
    K.masked_mean_f32(((-(-d // 128), bsz, 1), (128, 1, 1), 0), f32(x), f32(mask), t, d, out)
    return out[:bsz * d].reshape(bsz, d)


def masked_mean_backward(dy, mask):
    bsz, t = mask.shape; d = dy.shape[1]; rows = bsz * t; out = empty(rows * d)
    if rows * d == 0:
        return out[:0].reshape(bsz, t, d)
    K.masked_mean_backward_f32(((rows, 1, 1), (256, 1, 1), 0), f32(dy), f32(mask), t, d, out)
    return out[:rows * d].reshape(bsz, t, d)


def cosine(a, b):
    rows, d = a.shape; out = empty(rows)
    K.cosine_f32(cfg_rows(rows), f32(a), f32(b), rows, d, out)
    return out[:rows]


def cosine_backward(dc, a, b):
    rows, d = a.shape; da, db = empty(rows * d), empty(rows * d)
    K.cosine_backward_f32(cfg_rows(rows), f32(dc), f32(a), f32(b), rows, d, da, db)
    return da[:rows * d].reshape(rows, d), db[:rows * d].reshape(rows, d)


def mean_scalar(v, n, div):
    out = empty(1)
    K.reduce_mean_f32(CFG_ONE_BLOCK, f32(v) if v.size else empty(0), n, div, out)
    return out


for rows, d in keep((1, 1), (0, 5), (3, 0), (31, 33), (100, 768), (3000, 7), (40, 2100)):
    x = rng.normal(size=(rows, d)).astype(np.float32)
    close(f"sum_rows {rows}x{d}", sum_rows(x), x.astype(np.float64).sum(0), rtol=1e-5, atol_rel=1e-6)
# cfg_flat caps the grid at 65535 blocks: a grid smaller than the columns must still cover them
part = rng.normal(size=(3, 1000)).astype(np.float32); out = empty(1000)
K.colsum_final_f32(((2, 1, 1), (256, 1, 1), 0), f32(part), 3, 1000, out)
close("colsum_final, capped grid", out, part.astype(np.float64).sum(0), rtol=1e-6)
print("  sum_rows ok")

for bsz, t, d in keep((1, 1, 1), (2, 5, 3), (3, 40, 130), (2, 300, 257)):
    x = rng.normal(size=(bsz, t, d)).astype(np.float32)
    mask = (rng.random((bsz, t)) < 0.5).astype(np.float32)
    mask[0] = 0  # no valid position: zeros (the CPU divides by max(count, 1))
    if bsz > 1: mask[1, ::2] = -2.0  # any non-zero counts
    valid = (mask != 0).astype(np.float64); cnt = np.maximum(valid.sum(1), 1)
    tag = f"B{bsz} T{t} d{d}"
    close(f"masked_mean {tag}", masked_mean(x, mask), (x * valid[:, :, None]).sum(1) / cnt[:, None], rtol=1e-5, atol_rel=1e-6)
    dy = rng.normal(size=(bsz, d)).astype(np.float32)
    close(f"masked_mean_backward {tag}", masked_mean_backward(dy, mask),
          valid[:, :, None] * dy[:, None, :] / cnt[:, None, None], rtol=1e-6, atol_rel=0)
print("  masked_mean ok")


def ref_cos(a, b, dc):
    A, B = a.astype(np.float64), b.astype(np.float64)
    na0, nb0 = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    ca, cb = na0 > 1e-8, nb0 > 1e-8
    na, nb = np.maximum(na0, 1e-8)[:, None], np.maximum(nb0, 1e-8)[:, None]
    c = (A * B).sum(1)[:, None] / (na * nb); g = dc.astype(np.float64)[:, None]
    da = g * (B / (na * nb) - np.where(ca[:, None], c * A / na ** 2, 0))
    db = g * (A / (na * nb) - np.where(cb[:, None], c * B / nb ** 2, 0))
    return c[:, 0], da, db


for rows, d in keep((1, 1), (9, 31), (17, 768), (2, 3000)):
    a = rng.normal(size=(rows, d)).astype(np.float32); b = rng.normal(size=(rows, d)).astype(np.float32)
    a[0] = 0  # a clamped norm: no gradient through its own normalisation
    if rows > 1: b[1] = 1e-12
    dc = rng.normal(size=rows).astype(np.float32)
    c, da, db = ref_cos(a, b, dc)
    tag = f"{rows}x{d}"
    close(f"cosine {tag}", cosine(a, b), c, rtol=1e-5, atol=1e-6)
    gda, gdb = cosine_backward(dc, a, b)
    # rows with a clamped norm have entries near 1e8 * x; compare row by row at their scale
    for r in range(rows):
        close(f"cosine_backward da {tag} row {r}", gda[r], da[r], rtol=1e-5, atol_rel=1e-5)
        close(f"cosine_backward db {tag} row {r}", gdb[r], db[r], rtol=1e-5, atol_rel=1e-5)
print("  cosine ok")

for n, div in keep((0, 1), (1, 1), (1023, 1023), (1025, 1025), (100000, 7)):
    v = rng.normal(size=n).astype(np.float32)
    close(f"reduce_mean n{n}", mean_scalar(v, n, div), [v.astype(np.float64).sum() / div], rtol=1e-6, atol=1e-9)
print("reduce: all ok")
