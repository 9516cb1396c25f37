import ctypes as C, numpy as np, sys, itertools
import os
lib = C.CDLL(os.path.join(os.environ.get('EMU_OUT', '/tmp/delo-kernel-emu'), 'libemu.so'))
vp, i32, i64, f32 = C.c_void_p, C.c_int, C.c_longlong, C.c_float
def sig(name, *types): getattr(lib, name).argtypes = list(types); getattr(lib, name).restype = None
sig('w_route', i32, i32, vp, vp, vp, vp, i32, i32, i32, i32, f32, vp, vp, vp, vp, vp, vp, vp, vp)
sig('w_route_bwd', i32, vp, vp, vp, vp, vp, vp, vp, i32, i32, i32, f32, vp, vp, vp, vp)
sig('w_route_dwc', i32, vp, vp, i32, i32, i32, i32, vp)
sig('w_fwd', i32, i32, i32, vp, vp, vp, vp, vp, vp, i32, i32, i32, i32, i32, i32, i32, i32, f32, i32, vp, vp, vp)
sig('w_bwd', i32, i32, i32, vp, vp, vp, vp, vp, vp, vp, vp, i32, i32, i32, i32, i32, i32, i32, i32, f32, i32, vp, vp, vp, vp, vp)
sig('w_sum_tiles', i32, vp, i32, i64, i64, vp)
sig('w_scatter', i32, vp, vp, i32, i32, i32, i32, i32, i32, vp)
sig('w_gather', i32, vp, vp, i32, i32, i32, i32, i64, i64, i64, i32, vp, vp)
sig('w_gate_scale', i32, vp, vp, i64, i64, i32, i32, i32, f32, vp)
sig('w_dgates', i32, i32, vp, vp, i32, i32, i32, vp)
def P(a): return C.c_void_p(a.ctypes.data)
def empty(n, dt=np.float32): return np.full(max(n, 1), np.nan if dt == np.float32 else -7, dtype=dt)
def cfg_flat(n): return min(max(-(-n // 256), 1), 65535)
ERR = np.zeros(1, np.int32)

# ---- host logic mirrored from src/backend/cuda/experts.rs ----
def km_of(k): return 4 if k <= 4 else 8 if k <= 8 else 16
def stage_cols(n, km): return min(-(-n // 4) * 4, 8192 // km // 4 * 4)
def tile(bsz, t, minb):
    for tt in (64, 32, 16):
        if bsz * (-(-t // tt)) >= minb: return tt
    return 8
def al(a): return a.ctypes.data % 16 == 0

def fused_fwd(x, A, Bp, sa, sb, g, alpha, sms):
    bsz, t, din = x.shape; E, rho, _ = A.shape; dout = Bp.shape[1]; r = sa.shape[1]; k = r * rho
    km = km_of(k); tt = tile(bsz, t, 2 * sms); cha = stage_cols(din, km)
    vec = int(din % 4 == 0 and dout % 4 == 0 and al(x) and al(A))
    y = empty(bsz * t * dout); u = empty(bsz * t * k)
    lib.w_fwd(km, -(-t // tt), bsz, P(x), P(A), P(Bp), P(sa), P(sb), P(g), t, din, dout, E, rho, r, tt, cha, alpha, vec, P(y), P(u), P(ERR))
    return y[:bsz*t*dout].reshape(bsz, t, dout), u[:bsz*t*k].reshape(bsz, t, k), (tt, vec)

def scatter(s, sel, bsz, r, rho, E, W, bl):
    pool = empty(E * rho * W)
    lib.w_scatter(cfg_flat(E * rho * W), P(s), P(sel), bsz, r, rho, E, W, bl, P(pool))
    return pool[:E*rho*W].reshape((E, rho, W) if not bl else (E, W, rho))

def fused_bwd(dy, x, A, Bp, sa, sb, g, u, alpha, sms):
    bsz, t, din = x.shape; E, rho, _ = A.shape; dout = Bp.shape[1]; r = sa.shape[1]; k = r * rho
    km = km_of(k); tt = tile(bsz, t, sms); nt = -(-t // tt); chb = stage_cols(dout, km)
    vec = int(din % 4 == 0 and dout % 4 == 0 and al(x) and al(A) and al(dy))
    dx = empty(bsz * t * din); parts = bsz * nt
    pda = empty(parts * k * din); pdb = empty(parts * k * dout); pdg = empty(parts * r)
    lib.w_bwd(km, nt, bsz, P(dy), P(x), P(A), P(Bp), P(sa), P(sb), P(g), P(u), t, din, dout, E, rho, r, tt, chb, alpha, vec, P(dx), P(pda), P(pdb), P(pdg), P(ERR))
    def st(p, n):
        if nt == 1: return p
        s = empty(bsz * n); lib.w_sum_tiles(cfg_flat(bsz * n), P(p), nt, n, bsz, P(s)); return s
    sA = st(pda, k * din); sB = st(pdb, k * dout)
    dg = empty(bsz * r); lib.w_sum_tiles(cfg_flat(bsz * r), P(pdg), nt, r, bsz, P(dg))
    da = scatter(sA, sa, bsz, r, rho, E, din, 0); db = scatter(sB, sb, bsz, r, rho, E, dout, 1)
    return dx[:bsz*t*din].reshape(bsz, t, din), da, db, dg[:bsz*r].reshape(bsz, r), (tt, nt, vec)

def gemm(c):
    """Row-major semantics of CudaBackend::gemm for one GemmCall (dict), with cuBLAS's ld checks."""
    m, n, k = c['m'], c['n'], c['k']
    assert c['lda'] >= (m if c['trans_a'] else k) and c['ldb'] >= (k if c['trans_b'] else n) and c['ldc'] >= n, c
    A, B, Cm = c['a'], c['b'], c['c']
    for bi in range(c['batch']):
        oa, ob, oc = bi * c['stride_a'], bi * c['stride_b'], bi * c['stride_c']
        if c['trans_a']: opA = np.array([[A[oa + p * c['lda'] + i] for p in range(k)] for i in range(m)], np.float64)
        else: opA = np.array([[A[oa + i * c['lda'] + p] for p in range(k)] for i in range(m)], np.float64)
        if c['trans_b']: opB = np.array([[B[ob + j * c['ldb'] + p] for j in range(n)] for p in range(k)], np.float64)
        else: opB = np.array([[B[ob + p * c['ldb'] + j] for j in range(n)] for p in range(k)], np.float64)
        res = c['alpha'] * opA @ opB
        for i in range(m):
            Cm[oc + i * c['ldc']: oc + i * c['ldc'] + n] = res[i] + (c['beta'] * Cm[oc + i * c['ldc']: oc + i * c['ldc'] + n] if c['beta'] else 0)
def gemm_or_zero(c):
    if c['batch'] * c['m'] * c['n'] == 0: return
    if c['k'] == 0: c['c'][: c['batch'] * c['m'] * c['n']] = 0; return
    gemm(c)
def G(**kw):
    d = dict(trans_a=False, trans_b=False, alpha=1.0, beta=0.0); d.update(kw); return d

def gather(o, bsz, t, din, dout, E, rho, r, sa, sb, A, Bp):
    k = r * rho
    a_sel = empty(bsz * k * din); b_selt = empty(bsz * k * dout)
    lib.w_gather(cfg_flat(bsz * k * din), P(A), P(sa), bsz, r, rho, din, rho * din, din, 1, E, P(a_sel), P(ERR))
    lib.w_gather(cfg_flat(bsz * k * dout), P(Bp), P(sb), bsz, r, rho, dout, dout * rho, 1, rho, E, P(b_selt), P(ERR))
    return a_sel, b_selt
def gate_scale(v, g, bsz, t, k, rho, r, alpha):
    out = empty(bsz * t * k); n = bsz * t * k
    lib.w_gate_scale(cfg_flat(n), P(v), P(g), n, t * k, k, rho, r, alpha, P(out)); return out

def unfused_fwd(x, A, Bp, sa, sb, g, alpha):
    bsz, t, din = x.shape; E, rho, _ = A.shape; dout = Bp.shape[1]; r = sa.shape[1]; k = r * rho
    a_sel, b_selt = gather(None, bsz, t, din, dout, E, rho, r, sa, sb, A, Bp)
    xf = x.reshape(-1); u = empty(bsz * t * k); y = empty(bsz * t * dout)
    gemm_or_zero(G(trans_b=True, m=t, n=k, k=din, a=xf, lda=din, stride_a=t*din, b=a_sel, ldb=din, stride_b=k*din, c=u, ldc=k, stride_c=t*k, batch=bsz))
    ug = gate_scale(u, g, bsz, t, k, rho, r, alpha)
    gemm_or_zero(G(m=t, n=dout, k=k, a=ug, lda=k, stride_a=t*k, b=b_selt, ldb=dout, stride_b=k*dout, c=y, ldc=dout, stride_c=t*dout, batch=bsz))
    return y[:bsz*t*dout].reshape(bsz, t, dout), u[:bsz*t*k].reshape(bsz, t, k)

def unfused_bwd(dy, x, A, Bp, sa, sb, g, u, alpha):
    bsz, t, din = x.shape; E, rho, _ = A.shape; dout = Bp.shape[1]; r = sa.shape[1]; k = r * rho
    a_sel, b_selt = gather(None, bsz, t, din, dout, E, rho, r, sa, sb, A, Bp)
    dyf, xf, uf = dy.reshape(-1), x.reshape(-1), u.reshape(-1)
    base = dict(trans_a=False, trans_b=False, m=t, n=k, k=dout, alpha=1.0, beta=0.0, a=dyf, lda=dout, stride_a=t*dout, b=b_selt, ldb=dout, stride_b=k*dout, c=None, ldc=k, stride_c=t*k, batch=bsz)
    dug = empty(bsz * t * k); gemm_or_zero({**base, 'trans_b': True, 'alpha': alpha, 'c': dug})
    dg = empty(bsz * r); lib.w_dgates(r, bsz, P(dug), P(uf), t, k, rho, P(dg))
    ug = gate_scale(uf, g, bsz, t, k, rho, r, alpha)
    dbs = empty(bsz * k * dout)
    gemm_or_zero({**base, 'trans_a': True, 'm': k, 'n': dout, 'k': t, 'a': ug, 'lda': k, 'stride_a': t*k, 'b': dyf, 'ldb': dout, 'stride_b': t*dout, 'c': dbs, 'ldc': dout, 'stride_c': k*dout})
    du = gate_scale(dug, g, bsz, t, k, rho, r, 1.0)
    dx = empty(bsz * t * din)
    gemm_or_zero({**base, 'm': t, 'n': din, 'k': k, 'a': du, 'lda': k, 'stride_a': t*k, 'b': a_sel, 'ldb': din, 'stride_b': k*din, 'c': dx, 'ldc': din, 'stride_c': t*din})
    das = empty(bsz * k * din)
    gemm_or_zero({**base, 'trans_a': True, 'm': k, 'n': din, 'k': t, 'a': du, 'lda': k, 'stride_a': t*k, 'b': xf, 'ldb': din, 'stride_b': t*din, 'c': das, 'ldc': din, 'stride_c': k*din})
    da = scatter(das, sa, bsz, r, rho, E, din, 0); db = scatter(dbs, sb, bsz, r, rho, E, dout, 1)
    return dx[:bsz*t*din].reshape(bsz, t, din), da, db, dg[:bsz*r].reshape(bsz, r)

# ---- references (the CPU semantics, float64) ----
def sel_mats(A, Bp, sa_b, sb_b, rho):
    a = np.concatenate([A[s] for s in sa_b], 0).astype(np.float64)               # [K, din]
    b = np.concatenate([Bp[s] for s in sb_b], 1).astype(np.float64)              # [dout, K]
    return a, b
def ref_fwd(x, A, Bp, sa, sb, g, alpha):
    bsz = x.shape[0]; rho = A.shape[1]; ys, us = [], []
    for b in range(bsz):
        a, bb = sel_mats(A, Bp, sa[b], sb[b], rho)
        u = x[b].astype(np.float64) @ a.T; gk = np.repeat(g[b].astype(np.float64), rho)
        ys.append(alpha * (u * gk) @ bb.T); us.append(u)
    return np.stack(ys), np.stack(us)
def ref_bwd(dy, x, A, Bp, sa, sb, g, u, alpha):
    bsz = x.shape[0]; E, rho, din = A.shape; dout = Bp.shape[1]; r = sa.shape[1]
    da = np.zeros((E, rho, din)); db = np.zeros((E, dout, rho)); dxs = []; dgs = []
    for b in range(bsz):
        a, bb = sel_mats(A, Bp, sa[b], sb[b], rho)
        gk = np.repeat(g[b].astype(np.float64), rho); ub = u[b].astype(np.float64); dyb = dy[b].astype(np.float64)
        dug = alpha * dyb @ bb
        dgs.append((dug * ub).reshape(-1, r, rho).sum((0, 2)))
        du = dug * gk
        dxs.append(du @ a)
        dA = du.T @ x[b].astype(np.float64); dB = alpha * dyb.T @ (ub * gk)
        for i in range(r):
            da[sa[b, i]] += dA[i*rho:(i+1)*rho]; db[sb[b, i]] += dB[:, i*rho:(i+1)*rho]
    return np.stack(dxs), da, db, np.stack(dgs)

def close(what, got, want, atol_rel=2e-6, rtol=2e-5):
    got = np.asarray(got, np.float64); want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite (unwritten?) entries"
    sc = np.abs(want).max() if want.size else 0
    err = np.abs(got - want) - (atol_rel * sc + 1e-7 + rtol * np.abs(want))
    if err.size and err.max() > 0:
        i = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(f"{what}: at {i} got {got[i]} want {want[i]} (scale {sc})")

def case(b, t, din, dout, E, r, rho, seed, sms_list=(1, 4, 64, 1000), misalign=False):
    rng = np.random.default_rng(seed)
    def buf(shape, lo, hi):
        n = int(np.prod(shape))
        base = rng.uniform(lo, hi, n + (1 if misalign else 0)).astype(np.float32)
        return (base[1:] if misalign else base).reshape(shape)
    x = buf((b, t, din), -1, 1); dy = buf((b, t, dout), -1, 1)
    A = rng.uniform(-1, 1, (E, rho, din)).astype(np.float32) / np.float32(np.sqrt(din))
    Bp = rng.uniform(-1, 1, (E, dout, rho)).astype(np.float32)
    sa = np.stack([rng.permutation(E)[:r] for _ in range(b)]).astype(np.int32)
    sb = np.stack([rng.permutation(E)[:r] for _ in range(b)]).astype(np.int32)
    g = rng.uniform(0.5, 1.5, (b, r)).astype(np.float32)
    alpha = 2.0
    yr, ur = ref_fwd(x, A, Bp, sa, sb, g, alpha)
    u32 = ur.astype(np.float32)
    bw = ref_bwd(dy, x, A, Bp, sa, sb, g, u32, alpha)
    tag = f"B{b} T{t} din{din} dout{dout} E{E} r{r} rho{rho}{' misaligned' if misalign else ''}"
    if r * rho <= 16:
        for sms in sms_list:
            y, u, (tt, vec) = fused_fwd(x, A, Bp, sa, sb, g, alpha, sms)
            close(f"fused fwd y {tag} sms{sms}", y, yr); close(f"fused fwd u {tag}", u, ur)
            dx, da, db, dg, (tt2, nt, vec2) = fused_bwd(dy, x, A, Bp, sa, sb, g, u32, alpha, sms)
            for nm, gv, wv in zip(("dx", "da", "db", "dg"), (dx, da, db, dg), bw):
                close(f"fused bwd {nm} {tag} sms{sms} tt{tt2} nt{nt} vec{vec2}", gv, wv, 5e-6, 1e-4)
            print(f"  fused ok {tag} sms={sms}: fwd tt={tt} vec={vec}; bwd tt={tt2} tiles={nt} vec={vec2}")
    if b * t * max(din, dout) <= 20000:
        y, u = unfused_fwd(x, A, Bp, sa, sb, g, alpha)
        close(f"unfused fwd y {tag}", y, yr); close(f"unfused fwd u {tag}", u, ur)
        for nm, gv, wv in zip(("dx", "da", "db", "dg"), unfused_bwd(dy, x, A, Bp, sa, sb, g, u32, alpha), bw):
            close(f"unfused bwd {nm} {tag}", gv, wv, 5e-6, 1e-4)
        print(f"  unfused ok {tag}")
    assert ERR[0] == 0, ERR

if __name__ == '__main__':
    which = sys.argv[1] if len(sys.argv) > 1 else 'all'
    if which in ('all', 'experts'):
        case(3, 37, 64, 48, 8, 4, 1, 1)
        case(2, 70, 96, 40, 6, 3, 2, 2)
        case(2, 20, 600, 520, 20, 8, 2, 3, sms_list=(4, 1000))
        case(3, 9, 37, 19, 5, 2, 1, 4)
        case(1, 5, 32, 24, 4, 4, 4, 5)
        case(2, 13, 64, 32, 6, 4, 1, 6, misalign=True)
        case(2, 11, 40, 28, 12, 9, 2, 7)
        case(2, 185, 768, 768, 16, 4, 1, 8, sms_list=(4, 132))
        print("experts: all ok")
