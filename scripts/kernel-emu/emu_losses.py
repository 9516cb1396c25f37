"""kernels/losses.cu (with reduce_mean_f32 for the mean) against float64 references of
src/backend/cpu.rs, launched as ops.rs does. Invalid labels: the CPU refuses them; the device
sets the error word (code 1) and writes NaN, which the host reports at the next sync."""
import numpy as np
from emu import K, keep, cfg_rows, cfg_flat, CFG_ONE_BLOCK, empty, f32, close, check_err, ERR

rng = np.random.default_rng(17)


def mean_scalar(v, n, div):
    out = empty(1); K.reduce_mean_f32(CFG_ONE_BLOCK, v, n, div, out); return out


def cross_entropy(logits, labels):
    rows, c = logits.shape; per_row = empty(rows)
    K.ce_rows_f32(cfg_rows(rows), f32(logits), labels.astype(np.int32), rows, c, per_row, ERR)
    return mean_scalar(per_row, rows, rows)


def cross_entropy_backward(dloss, logits, labels):
    rows, c = logits.shape; dx = empty(rows * c)
    K.ce_backward_f32(cfg_rows(rows), f32(dloss), f32(logits), labels.astype(np.int32), rows, c, dx, ERR)
    return dx[:rows * c].reshape(rows, c)


def elems_mean(kernel, a, b):
    n = a.size; elems = empty(n)
    getattr(K, kernel)(cfg_flat(n), f32(a), f32(b), n, elems)
    return mean_scalar(elems, n, max(n, 1))


def elems_backward(kernel, dloss, a, b):
    n = a.size; dx = empty(n)
    getattr(K, kernel)(cfg_flat(n), f32(dloss), f32(a), f32(b), n, max(n, 1), dx)
    return dx[:n].reshape(a.shape)


def kl_categorical(target, logits):
    rows, c = logits.shape; per_row = empty(rows)
    K.kl_cat_rows_f32(cfg_rows(rows), f32(target), f32(logits), rows, c, per_row)
    return mean_scalar(per_row, rows, rows)


def kl_categorical_backward(dloss, target, logits):
    rows, c = logits.shape; dx = empty(rows * c)
    K.kl_cat_backward_f32(cfg_rows(rows), f32(dloss), f32(target), f32(logits), rows, c, dx)
    return dx[:rows * c].reshape(rows, c)


def lse(x):
    x = x.astype(np.float64); m = x.max(-1, keepdims=True); return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


softplus = lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
sigmoid = lambda x: 1 / (1 + np.exp(-x))
dl = np.array([1.7], np.float32)

for rows, c in keep((1, 1), (1, 2), (7, 31), (9, 33), (40, 1000), (3, 5000)):
    tag = f"{rows}x{c}"
    x = rng.normal(0, 5, (rows, c)).astype(np.float32); x[0, 0] = 80  # exp overflows without the max shift
    lab = rng.integers(0, c, rows)
    X = x.astype(np.float64); L = lse(X)
    close(f"cross_entropy {tag}", cross_entropy(x, lab), [(L[:, 0] - X[np.arange(rows), lab]).mean()], rtol=1e-5, atol=1e-6)
    P = np.exp(X - L); P[np.arange(rows), lab] -= 1
    close(f"cross_entropy_backward {tag}", cross_entropy_backward(dl, x, lab), P * 1.7 / rows, rtol=1e-5, atol_rel=1e-6)
    t = rng.normal(0, 3, (rows, c)).astype(np.float32)
    T = t.astype(np.float64); p = np.exp(T - lse(T)); lq = X - lse(X)
    close(f"kl_categorical {tag}", kl_categorical(t, x), [np.where(p > 0, p * ((T - lse(T)) - lq), 0).sum(1).mean()], rtol=1e-5, atol=1e-6)
    close(f"kl_categorical_backward {tag}", kl_categorical_backward(dl, t, x), 1.7 / rows * (np.exp(lq) - p), rtol=1e-5, atol_rel=1e-6)
    check_err(f"losses {tag}")
    print("  ok", tag)

# invalid labels: NaN for the row, error word 1; valid rows still right
x = rng.normal(size=(10, 6)).astype(np.float32); lab = np.array([0, 6, 2, -1, 5, 1, 1, 1, 1, 9])
per = empty(10); K.ce_rows_f32(cfg_rows(10), f32(x), lab.astype(np.int32), 10, 6, per, ERR)
bad = (lab < 0) | (lab >= 6)
assert np.isnan(per[bad]).all() and np.isfinite(per[~bad]).all(), per
check_err("ce_rows bad labels", 1)
g = cross_entropy_backward(dl, x, lab)
assert np.isnan(g[bad]).all() and np.isfinite(g[~bad]).all()
check_err("ce_backward bad labels", 1)
# zero rows: 0 / 0 as on the CPU
assert np.isnan(cross_entropy(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))[0])
print("  labels ok")

for n in keep(0, 1, 255, 257, 3000, 70001):
    x = rng.normal(0, 6, n).astype(np.float32); t = rng.random(n).astype(np.float32)
    X, T = x.astype(np.float64), t.astype(np.float64)
    close(f"bce n{n}", elems_mean('bce_elems_f32', x, t), [(softplus(X) - X * T).sum() / max(n, 1)], rtol=1e-5, atol=1e-6)
    close(f"bce_backward n{n}", elems_backward('bce_backward_f32', dl, x, t), 1.7 / max(n, 1) * (sigmoid(X) - T), rtol=1e-5, atol_rel=1e-6)
    l = rng.normal(0, 6, n).astype(np.float32); Lg = l.astype(np.float64)
    p = sigmoid(X); kl = p * (softplus(-Lg) - softplus(-X)) + (1 - p) * (softplus(Lg) - softplus(X))
    # per element kl is a difference of softplus terms: f32 cancellation of about 1e-6 * |x|
    close(f"kl_bernoulli n{n}", elems_mean('kl_bern_elems_f32', x, l), [kl.sum() / max(n, 1)], rtol=1e-5, atol=1e-5)
    close(f"kl_bernoulli_backward n{n}", elems_backward('kl_bern_backward_f32', dl, x, l),
          1.7 / max(n, 1) * (sigmoid(Lg) - sigmoid(X)), rtol=1e-5, atol_rel=1e-6)
    print("  ok n", n)
print("losses: all ok")
