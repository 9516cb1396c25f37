"""kernels/elementwise.cu against float64 references of src/backend/cpu.rs, launched as
src/backend/cuda/ops.rs does (map1 / map2 / add_assign / bias_add / cast / adamw, and
matmul_into's in-place ew_scale for an empty inner dimension)."""
import math
import numpy as np
from emu import K, keep, cfg_flat, empty, f32, close, exact

rng = np.random.default_rng(7)
SIZES = keep(0, 1, 31, 255, 256, 257, 1000, 4099, 70001)


def map1(kernel, x, *extra):
    n = x.size; out = empty(n)
    getattr(K, kernel)(cfg_flat(n), f32(x), *extra[:1], out, n) if extra else getattr(K, kernel)(cfg_flat(n), f32(x), out, n)
    return out[:n]


def map2(kernel, a, b):
    n = a.size; out = empty(n)
    getattr(K, kernel)(cfg_flat(n), f32(a), f32(b), out, n)
    return out[:n]


def r32(v):  # a float64 value rounded once to f32: the exact result of one f32 operation
    return np.asarray(v, np.float64).astype(np.float32)


PHI = lambda v: 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(v / math.sqrt(2.0)))

for n in SIZES:
    a = rng.normal(0, 3, n).astype(np.float32); b = rng.normal(0, 3, n).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    # one f32 operation each: bit-exact
    exact(f"add n{n}", map2('ew_add_f32', a, b), r32(a64 + b64))
    exact(f"mul n{n}", map2('ew_mul_f32', a, b), r32(a64 * b64))
    exact(f"scale n{n}", map1('ew_scale_f32', a, np.float32(-0.37).item()), r32(a64 * np.float64(np.float32(-0.37))))
    acc = a.copy(); K.ew_add_assign_f32(cfg_flat(n), acc, f32(b), n) if n else None
    exact(f"add_assign n{n}", acc, r32(a64 + b64))
    # matmul_into with k == 0 and beta != 0: out = beta * out in place
    c = a.copy(); K.ew_scale_f32(cfg_flat(n), c, 0.5, c, n) if n else None
    exact(f"scale in place n{n}", c, r32(a64 * 0.5))
    # transcendental: libm-level accuracy (the CPU twin's own erf is good to 1.5e-7)
    close(f"gelu n{n}", map1('ew_gelu_f32', a), a64 * PHI(a64), atol_rel=0, rtol=1e-6, atol=3e-7)
    want = b64 * (PHI(a64) + a64 * np.exp(-0.5 * a64 * a64) / math.sqrt(2 * math.pi))
    close(f"gelu_backward n{n}", map2('ew_gelu_backward_f32', b, a), want, atol_rel=0, rtol=2e-6, atol=5e-7)
    close(f"tanh n{n}", map1('ew_tanh_f32', a), np.tanh(a64), atol_rel=0, rtol=5e-7, atol=1e-30)
    y = np.tanh(a).astype(np.float32)
    close(f"tanh_backward n{n}", map2('ew_tanh_backward_f32', b, y), b64 * (1 - y.astype(np.float64) ** 2),
          atol_rel=0, rtol=1e-6, atol=1e-7 * np.abs(b64).max(initial=0))
print("  map kernels ok", SIZES)

for rows, d in keep((1, 1), (3, 7), (5, 768), (257, 3), (2, 1000)):
    x = rng.normal(size=(rows, d)).astype(np.float32); bias = rng.normal(size=d).astype(np.float32)
    n = rows * d; out = empty(n)
    K.ew_bias_add_f32(cfg_flat(n), f32(x), f32(bias), out, n, d)
    exact(f"bias_add {rows}x{d}", out[:n], r32(x.astype(np.float64) + bias).reshape(-1))
print("  bias_add ok")


# ---- casts: half::bf16::from_f32 / to_f32 ----
def bf16_rne(u):
    """Round-to-nearest-even of f32 bits to bf16 bits, decided in float64 between the two
    neighbouring bf16 values (a NaN keeps its top bits and is made quiet)."""
    u = int(u)
    sign, mag = u & 0x80000000, u & 0x7fffffff
    if mag > 0x7f800000:
        return (u >> 16) | 0x0040
    val = lambda m: math.ldexp(1.0, 128) if m >= 0x7f800000 else float(np.array([m], np.uint32).view(np.float32)[0])
    lo = mag & 0x7fff0000; hi = lo + 0x10000
    x, vlo, vhi = val(mag), val(lo), val(hi)
    pick = lo if x - vlo < vhi - x else hi if x - vlo > vhi - x else (lo if (lo >> 16) & 1 == 0 else hi)
    return (sign | pick) >> 16


special = [0, 0x80000000, 1, 0x8000, 0x7f7fffff, 0x7f7f8000, 0x7f7f7fff, 0xff7f8000, 0x7f800000, 0xff800000,
           0x7f800001, 0x7fa00000, 0xffc00001, 0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff, 0x00018000, 0x807f8000]
for n in keep(0, 1, 300, 5000):
    bits = np.concatenate([np.array(special, np.uint32), rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)])
    bits = bits[(bits >> 16) != 0xFFFF]  # 0xFFFF is the output sentinel
    bits[::3] = (bits[::3] & 0xffff0000) | 0x8000  # many exact ties
    m = bits.size; x = bits.view(np.float32); out = empty(m, np.uint16)
    K.cast_f32_to_bf16(cfg_flat(m), x, out, m)
    exact(f"cast_f32_to_bf16 n{m}", out[:m], np.array([bf16_rne(u) for u in bits], np.uint16))
    h = rng.integers(0, 2**16, n + 8, dtype=np.uint64).astype(np.uint16); h[:4] = [0x7f81, 0xffc0, 0x7f80, 0x8000]
    back = empty(h.size)
    K.cast_bf16_to_f32(cfg_flat(h.size), h, back, h.size)
    want = np.array([((int(v) | 0x40) if (int(v) & 0x7fff) > 0x7f80 else int(v)) << 16 for v in h], np.uint32)
    exact(f"cast_bf16_to_f32 n{h.size}", back[:h.size].view(np.uint32), want)
print("  casts ok")

# ---- adamw: PyTorch's formula with the host's f32 bias corrections ----
for n, step in keep((1, 1), (257, 3), (5000, 1000)):
    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.01
    bc1 = float(np.float32(1) - np.float32(b1) ** np.float32(step))
    bc2 = float(np.float32(1) - np.float32(b2) ** np.float32(step))
    p, g = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    m, v = (rng.normal(size=n) * 0.1).astype(np.float32), (rng.random(n) * 0.01).astype(np.float32)
    P, G, M, V = (t.astype(np.float64) for t in (p, g, m, v))
    F = lambda t: float(np.float32(t))
    lr_, b1_, b2_, eps_, wd_ = map(F, (lr, b1, b2, eps, wd))
    P = P - lr_ * wd_ * P; M = b1_ * M + (1 - b1_) * G; V = b2_ * V + (1 - b2_) * G * G
    P = P - lr_ / bc1 * M / (np.sqrt(V) / math.sqrt(bc2) + eps_)
    K.adamw_f32(cfg_flat(n), p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2)
    # m cancels (0.9 m + 0.1 g): f32 rounding is relative to the largest |m|
    for nm, got, want in (("m", m, M), ("v", v, V), ("p", p, P)):
        close(f"adamw {nm} n{n}", got, want, atol_rel=1e-6, rtol=1e-6, atol=0)
print("  adamw ok")

# The grid-stride loop past the 65535-block clamp, with fewer blocks than the host would use.
n = 5000; a = rng.normal(size=n).astype(np.float32); out = empty(n)
K.ew_scale_f32(((3, 1, 1), (256, 1, 1), 0), a, 2.0, out, n)
exact("grid-stride scale", out, a * 2)
print("elementwise: all ok")
