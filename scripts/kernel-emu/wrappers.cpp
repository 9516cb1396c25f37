typedef long long i64;
#define L(gx, gy, bx, call) emu_launch(dim3e{(unsigned)(gx), (unsigned)(gy), 1}, dim3e{(unsigned)(bx), 1, 1}, [&] { call; })
#define SMEM(b) g_dyn_bytes = (b)
extern "C" {
void w_route(int B, int threads, const float* la, const float* lb, const float* a, const float* wc, int E, int rho, int d, int r, float lam,
             int* sa, int* sb, float* pa, float* pb, float* comp, float* abar, float* pas, float* pbs) {
    SMEM((4 * E + r * E + threads + 2 * r) * 4);
    L(B, 1, threads, route_f32(la, lb, a, wc, E, rho, d, r, lam, sa, sb, pa, pb, comp, abar, pas, pbs));
}
void w_route_bwd(int grid, const float* gpa, const float* gpb, const int* sa, const int* sb, const float* pa, const float* pb,
                 const float* comp, int B, int E, int r, float lam, float* dla, float* dlb, float* dz, int* err) {
    SMEM(0);
    L(grid, 1, 256, route_backward_f32(gpa, gpb, sa, sb, pa, pb, comp, B, E, r, lam, dla, dlb, dz, err));
}
void w_route_dwc(int grid, const float* abar, const float* dz, int B, int r, int d, int E, float* dwc) {
    SMEM(0);
    L(grid, 1, 256, route_dwc_f32(abar, dz, B, r, d, E, dwc));
}
void w_fwd(int km, int gx, int gy, const float* x, const float* a, const float* b, const int* sa, const int* sb, const float* g,
           int T, int din, int dout, int E, int rho, int r, int tt, int cha, float alpha, int vec, float* y, float* u, int* err) {
    SMEM((size_t)km * cha * 4);
    if (km == 4) L(gx, gy, 256, expert_fwd_k4(x, a, b, sa, sb, g, T, din, dout, E, rho, r, tt, cha, alpha, vec, y, u, err));
    else if (km == 8) L(gx, gy, 256, expert_fwd_k8(x, a, b, sa, sb, g, T, din, dout, E, rho, r, tt, cha, alpha, vec, y, u, err));
    else L(gx, gy, 256, expert_fwd_k16(x, a, b, sa, sb, g, T, din, dout, E, rho, r, tt, cha, alpha, vec, y, u, err));
}
void w_bwd(int km, int gx, int gy, const float* dy, const float* x, const float* a, const float* b, const int* sa, const int* sb,
           const float* g, const float* u, int T, int din, int dout, int E, int rho, int r, int tt, int chb, float alpha, int vec,
           float* dx, float* pda, float* pdb, float* pdg, int* err) {
    SMEM((size_t)km * chb * 4);
    if (km == 4) L(gx, gy, 256, expert_bwd_k4(dy, x, a, b, sa, sb, g, u, T, din, dout, E, rho, r, tt, chb, alpha, vec, dx, pda, pdb, pdg, err));
    else if (km == 8) L(gx, gy, 256, expert_bwd_k8(dy, x, a, b, sa, sb, g, u, T, din, dout, E, rho, r, tt, chb, alpha, vec, dx, pda, pdb, pdg, err));
    else L(gx, gy, 256, expert_bwd_k16(dy, x, a, b, sa, sb, g, u, T, din, dout, E, rho, r, tt, chb, alpha, vec, dx, pda, pdb, pdg, err));
}
void w_sum_tiles(int grid, const float* p, int ntiles, i64 n, i64 B, float* out) {
    SMEM(0);
    L(grid, 1, 256, expert_sum_tiles_f32(p, ntiles, n, B, out));
}
void w_scatter(int grid, const float* s, const int* sel, int B, int r, int rho, int E, int W, int bl, float* pool) {
    SMEM(0);
    L(grid, 1, 256, expert_scatter_pool_f32(s, sel, B, r, rho, E, W, bl, pool));
}
void w_gather(int grid, const float* pool, const int* sel, int B, int r, int rho, int W, i64 se, i64 sj, i64 sc, int E, float* out, int* err) {
    SMEM(0);
    L(grid, 1, 256, expert_gather_f32(pool, sel, B, r, rho, W, se, sj, sc, E, out, err));
}
void w_gate_scale(int grid, const float* v, const float* g, i64 n, i64 tk, int K, int rho, int r, float alpha, float* out) {
    SMEM(0);
    L(grid, 1, 256, expert_gate_scale_f32(v, g, n, tk, K, rho, r, alpha, out));
}
void w_dgates(int r, int B, const float* dug, const float* u, int T, int K, int rho, float* out) {
    SMEM(0);
    L(r, B, 256, expert_dgates_f32(dug, u, T, K, rho, r, out));
}
}
