#include <cstdio>
#include <random>
extern "C" {
void w_route(int, int, const float*, const float*, const float*, const float*, int, int, int, int, float, int*, int*, float*, float*, float*, float*, float*, float*);
void w_route_bwd(int, const float*, const float*, const int*, const int*, const float*, const float*, const float*, int, int, int, float, float*, float*, float*, int*);
void w_fwd(int, int, int, const float*, const float*, const float*, const int*, const int*, const float*, int, int, int, int, int, int, int, int, float, int, float*, float*, int*);
void w_bwd(int, int, int, const float*, const float*, const float*, const float*, const int*, const int*, const float*, const float*, int, int, int, int, int, int, int, int, float, int, float*, float*, float*, float*, int*);
}
std::mt19937 rng(1);
std::vector<float> rnd(size_t n) { std::uniform_real_distribution<float> d(-1, 1); std::vector<float> v(n); for (auto& x : v) x = d(rng); return v; }
int main() {
    int err = 0;
    struct C { int b, t, din, dout, E, r, rho, km, tt, ch; };
    for (C c : {C{2, 37, 64, 48, 8, 4, 1, 4, 16, 64}, C{1, 70, 96, 40, 6, 3, 2, 8, 64, 96}, C{1, 20, 600, 520, 20, 8, 2, 16, 16, 512}, C{2, 9, 37, 19, 5, 2, 1, 4, 8, 40}}) {
        int K = c.r * c.rho, nt = (c.t + c.tt - 1) / c.tt;
        auto x = rnd(c.b * c.t * c.din), dy = rnd(c.b * c.t * c.dout), A = rnd(c.E * c.rho * c.din), B = rnd(c.E * c.dout * c.rho), g = rnd(c.b * c.r);
        std::vector<int> sa(c.b * c.r), sb(c.b * c.r);
        for (int i = 0; i < c.b * c.r; ++i) { sa[i] = i % c.E; sb[i] = (i * 7 + 1) % c.E; }
        std::vector<float> y(c.b * c.t * c.dout), u(c.b * c.t * K), dx(c.b * c.t * c.din), pda(c.b * nt * K * c.din), pdb(c.b * nt * K * c.dout), pdg(c.b * nt * c.r);
        int vec = c.din % 4 == 0 && c.dout % 4 == 0;
        w_fwd(c.km, nt, c.b, x.data(), A.data(), B.data(), sa.data(), sb.data(), g.data(), c.t, c.din, c.dout, c.E, c.rho, c.r, c.tt, c.ch, 2.f, vec, y.data(), u.data(), &err);
        int chb = std::min((c.dout + 3) / 4 * 4, 8192 / c.km / 4 * 4);
        w_bwd(c.km, nt, c.b, dy.data(), x.data(), A.data(), B.data(), sa.data(), sb.data(), g.data(), u.data(), c.t, c.din, c.dout, c.E, c.rho, c.r, c.tt, chb, 2.f, vec, dx.data(), pda.data(), pdb.data(), pdg.data(), &err);
        printf("case ok\n");
    }
    for (int E : {16, 300}) {
        int B = 3, d = 40, r = 4, rho = 2, threads = E <= 256 ? 256 : (E + 31) / 32 * 32;
        auto la = rnd(B * E), lb = rnd(B * E), A = rnd(E * rho * d), wc = rnd(r * d * E);
        std::vector<int> sa(B * r), sb(B * r);
        std::vector<float> pa(B * E), pb(B * E), comp(B * r * E), abar(B * r * d), pas(B * r), pbs(B * r), dla(B * E), dlb(B * E), dz(B * r * E);
        w_route(B, threads, la.data(), lb.data(), A.data(), wc.data(), E, rho, d, r, 1.f, sa.data(), sb.data(), pa.data(), pb.data(), comp.data(), abar.data(), pas.data(), pbs.data());
        auto gg = rnd(B * r);
        w_route_bwd(1, gg.data(), gg.data(), sa.data(), sb.data(), pa.data(), pb.data(), comp.data(), B, E, r, 1.f, dla.data(), dlb.data(), dz.data(), &err);
        printf("route ok\n");
    }
    printf("err=%d\n", err);
}
