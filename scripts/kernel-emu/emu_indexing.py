"""kernels/indexing.cu against src/backend/cpu.rs, launched as ops.rs does (gather_rows,
scatter_add_rows into a zeroed output, concat_seq / split_seq through copy2d). Copies are
bit-exact; scatter sums differ from the CPU's order only by rounding. Out-of-range indices:
the CPU refuses them; the device sets the error word (2 gather, 3 scatter)."""
import numpy as np
from emu import K, keep, cfg_flat, empty, zeros, f32, close, exact, check_err, ERR

rng = np.random.default_rng(19)


def gather_rows(table, idx):
    m = table.shape[0]; row = table.size // max(m, 1); n_idx = idx.size
    out = empty(n_idx * row)
    K.gather_rows_f32(cfg_flat(n_idx * max(row, 1)), f32(table), idx.astype(np.int32).reshape(-1), n_idx, row, m, out, ERR)
    return out[:n_idx * row].reshape(idx.shape + table.shape[1:])


def scatter_add_rows(dy, idx, m):
    n = idx.size; assert n > 0 and dy.size % n == 0; row = dy.size // n
    out = zeros(m * row)
    K.scatter_add_rows_f32(cfg_flat(n * max(row, 1)), f32(dy), idx.astype(np.int32).reshape(-1), n, row, m, out, ERR)
    return out[:m * row].reshape((m,) + dy.shape[idx.ndim:])


def copy2d(src, src_ld, dst, dst_ld, rows, cols):
    K.copy2d_f32(cfg_flat(rows * cols), src, src_ld, dst, dst_ld, rows, cols)


def concat_seq(a, b):
    bsz, t1, d = a.shape; t2 = b.shape[1]; out = empty(bsz * (t1 + t2) * d); ld = (t1 + t2) * d
    copy2d(f32(a), t1 * d, out, ld, bsz, t1 * d)
    copy2d(f32(b), t2 * d, out[t1 * d:], ld, bsz, t2 * d)
    return out[:bsz * (t1 + t2) * d].reshape(bsz, t1 + t2, d)


def split_seq(x, t1):
    bsz, t, d = x.shape; xf = f32(x); a = empty(bsz * t1 * d); b = empty(bsz * (t - t1) * d)
    copy2d(xf, t * d, a, t1 * d, bsz, t1 * d)
    copy2d(xf[t1 * d:], t * d, b, (t - t1) * d, bsz, (t - t1) * d)
    return a[:bsz * t1 * d].reshape(bsz, t1, d), b[:bsz * (t - t1) * d].reshape(bsz, t - t1, d)


for m, tail, ishape in ((1, (1,), (1,)), (5, (3,), (7,)), (30522, (), (2, 40)), (40, (768,), (3, 11)), (9, (4, 33), (257,))):
    if not keep(np.prod(ishape + tail)): continue
    table = rng.normal(size=(m,) + tail).astype(np.float32); idx = rng.integers(0, m, ishape)
    tag = f"m{m} tail{tail} idx{ishape}"
    exact(f"gather_rows {tag}", gather_rows(table, idx), table[idx])
    dy = rng.normal(size=ishape + tail).astype(np.float32)
    want = np.zeros((m,) + tail); np.add.at(want, idx.reshape(-1), dy.reshape((-1,) + tail).astype(np.float64))
    close(f"scatter_add_rows {tag}", scatter_add_rows(dy, idx, m), want, rtol=1e-5, atol_rel=1e-6)
    check_err(tag)
print("  gather / scatter ok")

# out-of-range indices: zeros (gather) or skipped (scatter), and the error word
table = rng.normal(size=(6, 5)).astype(np.float32); idx = np.array([0, 6, -1, 5, 2])
g = gather_rows(table, idx); ok = (idx >= 0) & (idx < 6)
exact("gather_rows bad", g, np.where(ok[:, None], table[np.clip(idx, 0, 5)], 0).astype(np.float32))
check_err("gather_rows bad", 2)
dy = rng.normal(size=(5, 5)).astype(np.float32)
want = np.zeros((6, 5)); np.add.at(want, idx[ok], dy[ok].astype(np.float64))
close("scatter_add_rows bad", scatter_add_rows(dy, idx, 6), want, rtol=1e-6)
check_err("scatter_add_rows bad", 3)
# rows of no elements: the CPU still refuses a bad index
gather_rows(np.zeros((4, 0), np.float32), np.array([1, 9]))
check_err("gather_rows bad index, empty rows", 2)
scatter_add_rows(np.zeros((2, 0), np.float32), np.array([1, 9]), 4)
check_err("scatter_add_rows bad index, empty rows", 3)
print("  bad indices ok")

for bsz, t1, t2, d in keep((1, 1, 1, 1), (2, 0, 3, 4), (3, 5, 0, 7), (2, 50, 145, 768), (4, 3, 17, 33)):
    a = rng.normal(size=(bsz, t1, d)).astype(np.float32); b = rng.normal(size=(bsz, t2, d)).astype(np.float32)
    cat = concat_seq(a, b)
    exact(f"concat_seq {bsz} {t1}+{t2} {d}", cat, np.concatenate([a, b], 1))
    sa, sb = split_seq(cat, t1)
    exact(f"split_seq a {bsz} {t1}+{t2} {d}", sa, a)
    exact(f"split_seq b {bsz} {t1}+{t2} {d}", sb, b)
print("indexing: all ok")
