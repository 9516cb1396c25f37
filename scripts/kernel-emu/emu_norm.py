"""kernels/norm.cu (and the affine-gradient column sums of reduce.cu that layernorm_backward
launches) against float64 references of src/backend/cpu.rs, launched as ops.rs does."""
import numpy as np
from emu import K, keep, cfg_rows, cfg_flat, cfg_colsum, colsum_chunks, empty, f32, close

rng = np.random.default_rng(11)
F32_MIN = np.float32(-3.40282347e38)


def layernorm(x, w, b, eps):
    rows, d = x.shape
    y, mean, rstd = empty(rows * d), empty(rows), empty(rows)
    K.layernorm_f32(cfg_rows(rows), f32(x), f32(w), f32(b), rows, d, eps, y, mean, rstd)
    return y[:rows * d].reshape(rows, d), mean[:rows], rstd[:rows]


def layernorm_backward(dy, x, w, mean, rstd):
    rows, d = x.shape
    dx = empty(rows * d)
    K.layernorm_backward_f32(cfg_rows(rows), f32(dy), f32(x), f32(w), f32(mean), f32(rstd), rows, d, dx)
    if rows == 0 or d == 0:
        return dx[:rows * d].reshape(rows, d), np.zeros(d, np.float32), np.zeros(d, np.float32)
    nchunks, rpc = colsum_chunks(rows, d)
    qw, qb = empty(nchunks * d), empty(nchunks * d)
    dw, db = empty(d), empty(d)
    K.ln_affine_partial_f32(cfg_colsum(d, nchunks), f32(dy), f32(x), f32(mean), f32(rstd), rows, d, rpc, qw, qb)
    K.colsum_final_f32(cfg_flat(d), qw, nchunks, d, dw)
    K.colsum_final_f32(cfg_flat(d), qb, nchunks, d, db)
    return dx[:rows * d].reshape(rows, d), dw[:d], db[:d]


def softmax(x):
    rows, d = x.shape; y = empty(rows * d)
    K.softmax_f32(cfg_rows(rows), f32(x), rows, d, y)
    return y[:rows * d].reshape(rows, d)


def softmax_backward(dy, y, in_place=False):
    rows, d = y.shape
    dx = f32(dy).copy() if in_place else empty(rows * d)
    K.softmax_backward_f32(cfg_rows(rows), dx if in_place else f32(dy), f32(y), rows, d, dx)
    return dx[:rows * d].reshape(rows, d)


def ref_softmax(x):
    x = np.asarray(x, np.float64)
    if x.shape[-1] == 0:
        return x
    e = np.exp(x - x.max(-1, keepdims=True)); return e / e.sum(-1, keepdims=True)


SHAPES = keep((0, 16), (1, 1), (1, 5), (7, 31), (8, 32), (9, 33), (17, 768), (3, 3000))
for rows, d in SHAPES:
    tag = f"{rows}x{d}"
    x = (3.0 + rng.normal(0, 2, (rows, d))).astype(np.float32)
    w, b = rng.normal(size=d).astype(np.float32), rng.normal(size=d).astype(np.float32)
    y, mean, rstd = layernorm(x, w, b, 1e-5)
    X = x.astype(np.float64); mu = X.mean(-1); var = X.var(-1)
    rs = 1 / np.sqrt(var + np.float64(np.float32(1e-5)))
    # f32 warp statistics against the CPU's f64 ones
    close(f"layernorm mean {tag}", mean, mu, rtol=1e-6, atol_rel=1e-6)
    close(f"layernorm rstd {tag}", rstd, rs, rtol=1e-5, atol_rel=0)
    close(f"layernorm y {tag}", y, (X - mu[:, None]) * rs[:, None] * w + b, rtol=1e-5, atol_rel=1e-5)
    dy = rng.normal(size=(rows, d)).astype(np.float32)
    dx, dw, db = layernorm_backward(dy, x, w, mean, rstd)
    M, R = mean.astype(np.float64)[:, None], rstd.astype(np.float64)[:, None]
    xh = (X - M) * R; g = dy.astype(np.float64) * w
    want = R * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True)) if d else g
    close(f"layernorm_backward dx {tag}", dx, want, rtol=1e-5, atol_rel=1e-5)
    close(f"layernorm dw {tag}", dw, (dy * xh).sum(0), rtol=1e-5, atol_rel=1e-5)
    close(f"layernorm db {tag}", db, dy.astype(np.float64).sum(0), rtol=1e-5, atol_rel=1e-5)
    s = rng.normal(0, 4, (rows, d)).astype(np.float32)
    p = softmax(s)
    close(f"softmax {tag}", p, ref_softmax(s), rtol=1e-5, atol_rel=1e-6)
    P = p.astype(np.float64); G = dy.astype(np.float64)
    want = P * (G - (G * P).sum(-1, keepdims=True))
    close(f"softmax_backward {tag}", softmax_backward(dy, p), want, rtol=1e-5, atol_rel=1e-5)
    close(f"softmax_backward in place {tag}", softmax_backward(dy, p, True), want, rtol=1e-5, atol_rel=1e-5)
    print("  ok", tag)
# Many rows: every column chunk and a second chunk row of the affine sums
for rows, d in keep((2500, 40), (70, 1100)):
    x = rng.normal(size=(rows, d)).astype(np.float32); w = np.ones(d, np.float32); b = np.zeros(d, np.float32)
    y, mean, rstd = layernorm(x, w, b, 1e-5)
    dy = rng.normal(size=(rows, d)).astype(np.float32)
    dx, dw, db = layernorm_backward(dy, x, w, mean, rstd)
    xh = (x.astype(np.float64) - mean[:, None]) * rstd[:, None]
    close(f"layernorm dw {rows}x{d}", dw, (dy * xh).sum(0), rtol=1e-5, atol_rel=1e-5)
    close(f"layernorm db {rows}x{d}", db, dy.astype(np.float64).sum(0), rtol=1e-5, atol_rel=1e-5)
    print("  affine ok", rows, d, colsum_chunks(rows, d))


# ---- attention's masked softmax: in place on scores [B, H, T, T], mask [B, T] ----
def attn_masked_softmax(s, mask, heads):
    bsz, _, t, _ = s.shape; rows = bsz * heads * t; sf = f32(s).copy()
    K.attn_masked_softmax_f32(cfg_rows(rows), sf, f32(mask), rows, t, heads)
    return sf.reshape(s.shape)


for bsz, heads, t in keep((1, 1, 1), (2, 3, 5), (3, 2, 40), (1, 12, 33)):
    s = rng.normal(0, 3, (bsz, heads, t, t)).astype(np.float32)
    mask = (rng.random((bsz, t)) < 0.7).astype(np.float32)
    mask[0, :] = 0  # a sequence with no valid key: the CPU's softmax over f32::MIN + s
    if bsz > 1: mask[1, :] = 1
    if bsz > 2: mask[2, 0] = 0.5  # any non-zero counts as valid
    want = s.copy(); want[np.broadcast_to((mask == 0)[:, None, None, :], s.shape)] += F32_MIN  # f32 adds, as on the CPU
    close(f"attn_masked_softmax B{bsz} H{heads} T{t}", attn_masked_softmax(s, mask, heads), ref_softmax(want), rtol=1e-5, atol_rel=1e-6)
print("norm: all ok")
