from emu_experts import *
def softmax(v):
    v = v.astype(np.float64); e = np.exp(v - v.max(-1, keepdims=True)); return e / e.sum(-1, keepdims=True)
def topr(p, r):  # descending, ties to lower index
    return np.array(sorted(range(len(p)), key=lambda i: (-p[i], i))[:r], np.int64)
def ref_route(la, lb, A, wc, lam):
    B, E = la.shape; r = wc.shape[0]; rho = A.shape[1]
    out = dict(sa=[], sb=[], pa=[], pb=[], comp=[], abar=[], pas=[], pbs=[])
    for b in range(B):
        pa = softmax(la[b]); sa = topr(pa, r)
        abar = np.stack([A[s].astype(np.float64).sum(0) for s in sa]) if r else np.zeros((0, A.shape[2]))
        comp = np.stack([softmax(abar[i] @ wc[i].astype(np.float64)) for i in range(r)]) if r else np.zeros((0, E))
        c = comp.sum(0); pb = softmax(lb[b]); full = pb + lam * c; sb = topr(full, r)
        for k, v in zip(out, (sa, sb, pa, pb, comp, abar, pa[sa], full[sb])): out[k].append(v)
    return {k: np.stack(v) for k, v in out.items()}
def dev_route(la, lb, A, wc, lam):
    B, E = la.shape; r = wc.shape[0]; rho, d = A.shape[1], A.shape[2]
    threads = 256 if E <= 256 else -(-E // 32) * 32
    o = dict(sa=empty(B*r, np.int32), sb=empty(B*r, np.int32), pa=empty(B*E), pb=empty(B*E), comp=empty(B*r*E), abar=empty(B*r*d), pas=empty(B*r), pbs=empty(B*r))
    lib.w_route(B, threads, P(la), P(lb), P(A), P(wc), E, rho, d, r, lam, *[P(o[k]) for k in ('sa','sb','pa','pb','comp','abar','pas','pbs')])
    shp = dict(sa=(B, r), sb=(B, r), pa=(B, E), pb=(B, E), comp=(B, r, E), abar=(B, r, d), pas=(B, r), pbs=(B, r))
    return {k: o[k][:int(np.prod(shp[k]))].reshape(shp[k]) for k in o}
def ref_route_bwd(gpa, gpb, rt, lam):
    B, E = rt['pa'].shape; r = rt['sa'].shape[1]; d = rt['abar'].shape[2]
    dla = np.zeros((B, E)); dlb = np.zeros((B, E)); dwc = np.zeros((r, d, E))
    for b in range(B):
        dpa = np.zeros(E); dpb = np.zeros(E)
        for i in range(r): dpa[rt['sa'][b, i]] += gpa[b, i]; dpb[rt['sb'][b, i]] += gpb[b, i]
        pa, pb = rt['pa'][b].astype(np.float64), rt['pb'][b].astype(np.float64)
        dla[b] = pa * (dpa - dpa @ pa); dlb[b] = pb * (dpb - dpb @ pb)
        dc = lam * dpb
        for i in range(r):
            cp = rt['comp'][b, i].astype(np.float64); dz = cp * (dc - dc @ cp)
            dwc[i] += np.outer(rt['abar'][b, i].astype(np.float64), dz)
    return dla, dlb, dwc
def dev_route_bwd(gpa, gpb, rt, lam):
    B, E = rt['pa'].shape; r = rt['sa'].shape[1]; d = rt['abar'].shape[2]
    dla, dlb, dz, dwc = empty(B*E), empty(B*E), empty(B*r*E), empty(r*d*E)
    c = {k: np.ascontiguousarray(v) for k, v in rt.items()}
    lib.w_route_bwd(-(-B // 8), P(gpa), P(gpb), P(c['sa']), P(c['sb']), P(c['pa']), P(c['pb']), P(c['comp']), B, E, r, lam, P(dla), P(dlb), P(dz), P(ERR))
    if r * d * E: lib.w_route_dwc(cfg_flat(r*d*E), P(c['abar']), P(dz), B, r, d, E, P(dwc))
    return dla[:B*E].reshape(B, E), dlb[:B*E].reshape(B, E), dwc[:r*d*E].reshape(r, d, E)
def rcase(B, E, d, r, rho, lam, seed):
    rng = np.random.default_rng(seed)
    f = lambda *s, k=1.0: rng.uniform(-k, k, s).astype(np.float32)
    la, lb, A, wc = f(B, E, k=3), f(B, E, k=3), f(E, rho, d), f(r, d, E, k=0.3)
    want = ref_route(la, lb, A, wc, lam); got = dev_route(la, lb, A, wc, lam)
    tag = f"B{B} E{E} d{d} r{r} rho{rho}"
    assert (got['sa'] == want['sa']).all(), (tag, got['sa'], want['sa'])
    assert (got['sb'] == want['sb']).all(), (tag, got['sb'], want['sb'])
    for k in ('pa', 'pb', 'comp', 'abar', 'pas', 'pbs'): close(f"route {k} {tag}", got[k], want[k], 2e-6, 2e-5)
    gpa, gpb = f(B, r), f(B, r)
    rt32 = {k: (v.astype(np.int32) if k in ('sa', 'sb') else v.astype(np.float32)) for k, v in got.items()}
    for nm, gv, wv in zip(("dla", "dlb", "dwc"), dev_route_bwd(gpa, gpb, rt32, lam), ref_route_bwd(gpa, gpb, rt32, lam)):
        close(f"route_bwd {nm} {tag}", gv, wv, 2e-6, 2e-5)
    print("  route ok", tag)
rcase(5, 16, 96, 4, 1, 1.0, 1)
rcase(3, 10, 33, 3, 2, 0.5, 2)
rcase(4, 64, 256, 16, 1, 1.0, 3)
rcase(2, 300, 40, 5, 2, 1.0, 4)
rcase(9, 16, 768, 4, 1, 1.0, 5)
rcase(2, 7, 12, 0, 1, 1.0, 6)
# ties
la = np.array([[1, 3, 3, 0, 3]], np.float32); lb = np.zeros((1, 5), np.float32)
g = dev_route(la, lb, np.zeros((5, 1, 2), np.float32), np.zeros((2, 2, 5), np.float32), 1.0)
assert g['sa'].tolist() == [[1, 2]] and g['sb'].tolist() == [[0, 1]], g
assert ERR[0] == 0
print("route: all ok")
