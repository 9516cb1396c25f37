//! CUDA vs CPU parity of the DeLo expert ops: routing (`route`, `route_backward`) and the
//! gathered factor composition (`expert_forward`, `expert_backward`), fused and unfused, ρ = 1
//! and ρ = 2, shapes that cross every tiling boundary of the kernels (several token tiles, a
//! partial last tile, several staged column chunks, dimensions not a multiple of 4, a
//! misaligned view), the r·ρ > 16 fallback, bitwise run-to-run determinism, invalid
//! selections, the whole routed expert layer on a tape, and a layer's pools grouped into one
//! launch per stage against the pool-by-pool reference.
//!
//! Tolerances: selections must match exactly (inputs are drawn so that the r-th and (r+1)-th
//! scores differ by far more than rounding); floats `|cuda − cpu| ≤ a·max|cpu| + rtol·|cpu|`
//! (`check_scaled`, a and rtol stated at each check): the kernels sum in another order than
//! the CPU's sgemm (f32, no TF32) and use FMAs, so sums of n terms differ by a few ulp × √n of
//! their magnitude. Outputs (u, y, dx, probabilities): a = 2e-6..5e-6, rtol 2e-5..5e-5;
//! reductions over tokens or samples (pool, gate, router gradients, compat): a = 1e-5,
//! rtol 1e-4. A wrong index or a missing term is an error of order 1.
//!
//! Every test needs a CUDA device and the embedded PTX: without them it is reported as ignored,
//! with the reason (`common::harness`, decided at run time).

mod common;

use std::sync::{Arc, OnceLock};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use common::harness::{self, cuda_device};
use common::{assert_close, rng};
use delo::autograd::{ParamId, Tape, Var};
use delo::backend::cuda::{ExpertPath, FUSED_MAX_K, GROUP_MAX_K};
use delo::backend::experts::group::{
    backward_by_pool, forward_by_pool, with_pool_group, PoolGroup,
};
use delo::backend::{Backend, CpuBackend, CudaBackend, ExpertOps, Routing};
use delo::delo::experts::{compose, route, GateMode, PoolVars};
use delo::{Device, Tensor};

static CPU: CpuBackend = CpuBackend;

fn main() {
    let tests = [
        trial!(route_matches_cpu),
        trial!(route_ties_go_to_the_lower_index),
        trial!(route_backward_matches_cpu),
        trial!(expert_forward_backward_match_cpu),
        trial!(above_the_fused_width_falls_back_to_unfused),
        trial!(misaligned_views_take_the_scalar_path),
        trial!(fused_results_are_bitwise_reproducible),
        trial!(invalid_selections_are_reported),
        trial!(routed_layer_on_a_tape_matches_cpu),
        trial!(grouped_pools_match_the_pool_by_pool_reference),
    ];
    harness::main(tests.map(|t| t.needs(cuda_device())).into());
}

/// The CUDA backend shared by every test (the harness runs these tests only where there is
/// one).
fn gpu() -> Arc<CudaBackend> {
    static DEV: OnceLock<Arc<CudaBackend>> = OnceLock::new();
    DEV.get_or_init(|| {
        let b = CudaBackend::new(0).expect("a CUDA device is present but the backend failed");
        println!("CUDA device: {}", b.name().unwrap_or_default());
        b
    })
    .clone()
}

fn dev(b: &Arc<CudaBackend>) -> Device {
    Device::Cuda(b.clone())
}

fn up(b: &Arc<CudaBackend>, t: &Tensor) -> Tensor {
    t.to_device(&dev(b)).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

fn uniform(r: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32((0..n).map(|_| r.random_range(lo..hi)).collect(), shape).unwrap()
}

/// `|cuda − cpu| ≤ atol_rel·max|cpu| + rtol·|cpu|`: the absolute part scales with the
/// magnitude of the result (summation-order differences do).
fn check_scaled(what: &str, cuda: &Tensor, cpu: &Tensor, atol_rel: f32, rtol: f32) {
    assert!(cuda.device().is_cuda(), "{what}: result is not on the GPU");
    assert_eq!(cuda.shape(), cpu.shape(), "{what}: shapes differ");
    let want = host(cpu);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(what, &host(cuda), &want, atol_rel * scale + 1e-7, rtol);
}

// ---- routing ---------------------------------------------------------------------------------

/// The gap between the r-th and (r+1)-th largest entry of each row.
fn min_gap(v: &[f32], e: usize, r: usize) -> f32 {
    if r == e {
        return f32::INFINITY;
    }
    v.chunks(e)
        .map(|row| {
            let mut s = row.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            s[r - 1] - s[r]
        })
        .fold(f32::INFINITY, f32::min)
}

struct RouteCase {
    b: usize,
    e: usize,
    d: usize,
    r: usize,
    rho: usize,
    lambda: f32,
}

/// The smallest gap between the r-th and (r+1)-th score of any sample, over p_A and
/// p_B + λ·c: selections of inputs with a large gap cannot flip under rounding.
fn selection_margin(rt: &Routing, r: usize, lambda: f32) -> f32 {
    let (bsz, e) = (rt.p_a.dim(0), rt.p_a.dim(1));
    let (pb, comp) = (host(&rt.p_b), host(&rt.compat));
    let full: Vec<f32> = (0..bsz * e)
        .map(|n| {
            let (b, k) = (n / e, n % e);
            pb[n] + lambda * (0..r).map(|i| comp[(b * r + i) * e + k]).sum::<f32>()
        })
        .collect();
    min_gap(&host(&rt.p_a), e, r).min(min_gap(&full, e, r))
}

/// Router inputs whose selections are far from ties (re-drawn until they are).
fn route_inputs(seed: u64, c: &RouteCase) -> (Tensor, Tensor, Tensor, Tensor) {
    for s in seed.. {
        let mut r = rng(s);
        let la = uniform(&mut r, &[c.b, c.e], -3.0, 3.0);
        let lb = uniform(&mut r, &[c.b, c.e], -3.0, 3.0);
        let a_pool = uniform(&mut r, &[c.e, c.rho, c.d], -1.0, 1.0);
        let wc = uniform(&mut r, &[c.r, c.d, c.e], -0.3, 0.3);
        let rt = CPU.route(&la, &lb, &a_pool, &wc, c.lambda).unwrap();
        if selection_margin(&rt, c.r, c.lambda) > 1e-4 {
            return (la, lb, a_pool, wc);
        }
    }
    unreachable!()
}

fn route_cases() -> Vec<RouteCase> {
    vec![
        // the paper's pool: E 16, r 4, ρ 1
        RouteCase {
            b: 5,
            e: 16,
            d: 96,
            r: 4,
            rho: 1,
            lambda: 1.0,
        },
        // ρ = 2, E not a power of two, d not a multiple of 4
        RouteCase {
            b: 3,
            e: 10,
            d: 33,
            r: 3,
            rho: 2,
            lambda: 0.5,
        },
        // E 64, r 16 (the brief's maximum)
        RouteCase {
            b: 4,
            e: 64,
            d: 256,
            r: 16,
            rho: 1,
            lambda: 1.0,
        },
        // E above one block of 256: the 320-thread block
        RouteCase {
            b: 2,
            e: 300,
            d: 40,
            r: 5,
            rho: 2,
            lambda: 1.0,
        },
    ]
}

fn check_routing(what: &str, got: &Routing, want: &Routing) {
    assert_eq!(
        got.sel_a.to_vec_i32().unwrap(),
        want.sel_a.to_vec_i32().unwrap(),
        "{what}: S_A"
    );
    assert_eq!(
        got.sel_b.to_vec_i32().unwrap(),
        want.sel_b.to_vec_i32().unwrap(),
        "{what}: S_B"
    );
    // softmax: expf vs the host's exp and another summation order, a few ulp
    check_scaled(&format!("{what}: p_a"), &got.p_a, &want.p_a, 2e-6, 2e-5);
    check_scaled(&format!("{what}: p_b"), &got.p_b, &want.p_b, 2e-6, 2e-5);
    check_scaled(
        &format!("{what}: pa_sel"),
        &got.pa_sel,
        &want.pa_sel,
        2e-6,
        2e-5,
    );
    // ā: the same ρ-row sum in the same order: exact
    check_scaled(&format!("{what}: abar"), &got.abar, &want.abar, 0.0, 0.0);
    // compat: softmax of d-term dot products summed in another order
    check_scaled(
        &format!("{what}: compat"),
        &got.compat,
        &want.compat,
        1e-5,
        1e-4,
    );
    check_scaled(
        &format!("{what}: pb_sel"),
        &got.pb_sel,
        &want.pb_sel,
        1e-5,
        1e-4,
    );
}

fn route_matches_cpu() {
    let g = gpu();
    for (n, c) in route_cases().iter().enumerate() {
        let (la, lb, a_pool, wc) = route_inputs(100 + 10 * n as u64, c);
        let want = CPU.route(&la, &lb, &a_pool, &wc, c.lambda).unwrap();
        let got = g
            .route(
                &up(&g, &la),
                &up(&g, &lb),
                &up(&g, &a_pool),
                &up(&g, &wc),
                c.lambda,
            )
            .unwrap();
        check_routing(
            &format!("route E={} r={} ρ={} d={}", c.e, c.r, c.rho, c.d),
            &got,
            &want,
        );
    }
}

fn route_ties_go_to_the_lower_index() {
    let g = gpu();
    let la = Tensor::from_f32(vec![1.0, 3.0, 3.0, 0.0, 3.0], &[1, 5]).unwrap();
    let lb = Tensor::from_f32(vec![0.0; 5], &[1, 5]).unwrap();
    let a_pool = Tensor::from_f32(vec![0.0; 5 * 2], &[5, 1, 2]).unwrap();
    let wc = Tensor::from_f32(vec![0.0; 2 * 2 * 5], &[2, 2, 5]).unwrap();
    let rt = g
        .route(
            &up(&g, &la),
            &up(&g, &lb),
            &up(&g, &a_pool),
            &up(&g, &wc),
            1.0,
        )
        .unwrap();
    assert_eq!(rt.sel_a.to_vec_i32().unwrap(), [1, 2]);
    assert_eq!(
        rt.sel_b.to_vec_i32().unwrap(),
        [0, 1],
        "uniform p_B + uniform c"
    );
}

fn route_backward_matches_cpu() {
    let g = gpu();
    for (n, c) in route_cases().iter().enumerate() {
        let (la, lb, a_pool, wc) = route_inputs(200 + 10 * n as u64, c);
        let rt = CPU.route(&la, &lb, &a_pool, &wc, c.lambda).unwrap();
        let mut r = rng(300 + n as u64);
        let d_pa = uniform(&mut r, &[c.b, c.r], -1.0, 1.0);
        let d_pb = uniform(&mut r, &[c.b, c.r], -1.0, 1.0);
        let (wa, wb, ww) = CPU.route_backward(&d_pa, &d_pb, &rt, c.lambda).unwrap();
        let (ga, gb, gw) = g
            .route_backward(
                &up(&g, &d_pa),
                &up(&g, &d_pb),
                &rt.to_device(&dev(&g)).unwrap(),
                c.lambda,
            )
            .unwrap();
        let what = format!("route_backward E={} r={} ρ={}", c.e, c.r, c.rho);
        // E-term dot products (warp order vs sequential) and cancellation in p·(g − dot)
        check_scaled(&format!("{what}: dla"), &ga, &wa, 1e-5, 1e-4);
        check_scaled(&format!("{what}: dlb"), &gb, &wb, 1e-5, 1e-4);
        // sums over B samples of ā·dz (FMA vs multiply-then-add)
        check_scaled(&format!("{what}: dwc"), &gw, &ww, 1e-5, 1e-4);
    }
}

// ---- gathered factor composition --------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    t: usize,
    din: usize,
    dout: usize,
    e: usize,
    r: usize,
    rho: usize,
}

fn cases() -> Vec<Case> {
    vec![
        // the paper's shape, scaled down: ρ 1, r 4 (K 4), several tiles with a partial last one
        Case {
            b: 3,
            t: 37,
            din: 64,
            dout: 48,
            e: 8,
            r: 4,
            rho: 1,
        },
        // ρ 2 (K 6, register width 8), T above the largest tile (64)
        Case {
            b: 2,
            t: 70,
            din: 96,
            dout: 40,
            e: 6,
            r: 3,
            rho: 2,
        },
        // K 16: d_in and d_out above the 512 columns staged at a time for width 16
        Case {
            b: 2,
            t: 20,
            din: 600,
            dout: 520,
            e: 20,
            r: 8,
            rho: 2,
        },
        // dimensions not a multiple of 4: the scalar (unvectorised) path
        Case {
            b: 3,
            t: 9,
            din: 37,
            dout: 19,
            e: 5,
            r: 2,
            rho: 1,
        },
        // ρ = r (the released code's shapes) with one sample
        Case {
            b: 1,
            t: 5,
            din: 32,
            dout: 24,
            e: 4,
            r: 4,
            rho: 4,
        },
        // the real paper shape at batch 2
        Case {
            b: 2,
            t: 185,
            din: 768,
            dout: 768,
            e: 16,
            r: 4,
            rho: 1,
        },
    ]
}

struct Inputs {
    x: Tensor,
    a_pool: Tensor,
    b_pool: Tensor,
    sel_a: Tensor,
    sel_b: Tensor,
    gates: Tensor,
    dy: Tensor,
}

/// Random inputs; each sample selects r distinct factors; samples share some factors.
fn inputs(seed: u64, c: Case) -> Inputs {
    let mut r = rng(seed);
    let s = 1.0 / (c.din as f32).sqrt();
    let pick = |r: &mut StdRng| {
        let mut v = Vec::new();
        for _ in 0..c.b {
            let mut ids: Vec<i32> = (0..c.e as i32).collect();
            ids.shuffle(r);
            v.extend(&ids[..c.r]);
        }
        Tensor::from_i32(v, &[c.b, c.r]).unwrap()
    };
    let sel_a = pick(&mut r);
    let sel_b = pick(&mut r);
    Inputs {
        x: uniform(&mut r, &[c.b, c.t, c.din], -1.0, 1.0),
        a_pool: uniform(&mut r, &[c.e, c.rho, c.din], -s, s),
        b_pool: uniform(&mut r, &[c.e, c.dout, c.rho], -1.0, 1.0),
        sel_a,
        sel_b,
        gates: uniform(&mut r, &[c.b, c.r], 0.5, 1.5),
        dy: uniform(&mut r, &[c.b, c.t, c.dout], -1.0, 1.0),
    }
}

const ALPHA: f32 = 2.0;

fn paths(c: Case) -> Vec<ExpertPath> {
    if c.r * c.rho <= FUSED_MAX_K {
        vec![ExpertPath::Fused, ExpertPath::Unfused, ExpertPath::Auto]
    } else {
        vec![ExpertPath::Unfused, ExpertPath::Auto]
    }
}

/// Forward and backward of one case by one path against the CPU reference.
fn check_case(g: &Arc<CudaBackend>, c: Case, seed: u64, path: ExpertPath) {
    let i = inputs(seed, c);
    let what = format!("{path:?} {c:?}");
    let (y, u) = CPU
        .expert_forward(
            &i.x, &i.a_pool, &i.b_pool, &i.sel_a, &i.sel_b, &i.gates, ALPHA,
        )
        .unwrap();
    let d = |t: &Tensor| up(g, t);
    let (gx, ga, gb, gsa, gsb, gg, gdy) = (
        d(&i.x),
        d(&i.a_pool),
        d(&i.b_pool),
        d(&i.sel_a),
        d(&i.sel_b),
        d(&i.gates),
        d(&i.dy),
    );
    let (yg, ug) = g
        .expert_forward_path(path, &gx, &ga, &gb, &gsa, &gsb, &gg, ALPHA)
        .unwrap();
    // u: d_in-term dot products; y: K-term sums of those
    check_scaled(&format!("{what}: u"), &ug, &u, 5e-6, 5e-5);
    check_scaled(&format!("{what}: y"), &yg, &y, 5e-6, 5e-5);
    let want = CPU
        .expert_backward(
            &i.dy, &i.x, &i.a_pool, &i.b_pool, &i.sel_a, &i.sel_b, &i.gates, &u, ALPHA,
        )
        .unwrap();
    // backward from the CPU's u, so that only the backward is compared
    let got = g
        .expert_backward_path(path, &gdy, &gx, &ga, &gb, &gsa, &gsb, &gg, &d(&u), ALPHA)
        .unwrap();
    // dx: d_out- then K-term sums; pool and gate gradients: sums over up to B·T tokens
    check_scaled(&format!("{what}: dx"), &got.dx, &want.dx, 5e-6, 5e-5);
    check_scaled(
        &format!("{what}: da_pool"),
        &got.da_pool,
        &want.da_pool,
        1e-5,
        1e-4,
    );
    check_scaled(
        &format!("{what}: db_pool"),
        &got.db_pool,
        &want.db_pool,
        1e-5,
        1e-4,
    );
    check_scaled(
        &format!("{what}: dgates"),
        &got.dgates,
        &want.dgates,
        1e-5,
        1e-4,
    );
}

fn expert_forward_backward_match_cpu() {
    let g = gpu();
    for (n, c) in cases().into_iter().enumerate() {
        for path in paths(c) {
            check_case(&g, c, 500 + n as u64, path);
        }
    }
}

fn above_the_fused_width_falls_back_to_unfused() {
    let g = gpu();
    let c = Case {
        b: 2,
        t: 11,
        din: 40,
        dout: 28,
        e: 12,
        r: 9,
        rho: 2,
    };
    assert!(c.r * c.rho > FUSED_MAX_K);
    for path in paths(c) {
        check_case(&g, c, 77, path);
    }
    let i = inputs(78, c);
    let d = |t: &Tensor| up(&g, t);
    let e = g
        .expert_forward_path(
            ExpertPath::Fused,
            &d(&i.x),
            &d(&i.a_pool),
            &d(&i.b_pool),
            &d(&i.sel_a),
            &d(&i.sel_b),
            &d(&i.gates),
            ALPHA,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("unfused"), "{e}");
}

fn misaligned_views_take_the_scalar_path() {
    // x and dy as views one element into larger buffers: 4-byte aligned only, so the kernels
    // must not use 128-bit accesses although d_in and d_out are multiples of 4.
    let g = gpu();
    let c = Case {
        b: 2,
        t: 13,
        din: 64,
        dout: 32,
        e: 6,
        r: 4,
        rho: 1,
    };
    let i = inputs(90, c);
    let shift = |t: &Tensor| {
        let mut v = vec![7.0f32];
        v.extend(host(t));
        let n = v.len();
        let big = up(&g, &Tensor::from_f32(v, &[n]).unwrap());
        big.view(1, t.shape()).unwrap()
    };
    let (x, dy) = (shift(&i.x), shift(&i.dy));
    assert_eq!(x.offset(), 1);
    let d = |t: &Tensor| up(&g, t);
    let (ga, gb, gsa, gsb, gg) = (
        d(&i.a_pool),
        d(&i.b_pool),
        d(&i.sel_a),
        d(&i.sel_b),
        d(&i.gates),
    );
    let (y, u) = CPU
        .expert_forward(
            &i.x, &i.a_pool, &i.b_pool, &i.sel_a, &i.sel_b, &i.gates, ALPHA,
        )
        .unwrap();
    let want = CPU
        .expert_backward(
            &i.dy, &i.x, &i.a_pool, &i.b_pool, &i.sel_a, &i.sel_b, &i.gates, &u, ALPHA,
        )
        .unwrap();
    for path in [ExpertPath::Fused, ExpertPath::Unfused] {
        let (yg, ug) = g
            .expert_forward_path(path, &x, &ga, &gb, &gsa, &gsb, &gg, ALPHA)
            .unwrap();
        check_scaled(&format!("{path:?} misaligned: y"), &yg, &y, 5e-6, 5e-5);
        let got = g
            .expert_backward_path(path, &dy, &x, &ga, &gb, &gsa, &gsb, &gg, &ug, ALPHA)
            .unwrap();
        check_scaled(
            &format!("{path:?} misaligned: dx"),
            &got.dx,
            &want.dx,
            5e-6,
            5e-5,
        );
        check_scaled(
            &format!("{path:?} misaligned: da"),
            &got.da_pool,
            &want.da_pool,
            1e-5,
            1e-4,
        );
    }
}

fn fused_results_are_bitwise_reproducible() {
    let g = gpu();
    let c = Case {
        b: 4,
        t: 185,
        din: 768,
        dout: 768,
        e: 16,
        r: 4,
        rho: 1,
    };
    let i = inputs(91, c);
    let d = |t: &Tensor| up(&g, t);
    let (gx, ga, gb, gsa, gsb, gg, gdy) = (
        d(&i.x),
        d(&i.a_pool),
        d(&i.b_pool),
        d(&i.sel_a),
        d(&i.sel_b),
        d(&i.gates),
        d(&i.dy),
    );
    let run = || {
        let (y, u) = g
            .expert_forward_path(ExpertPath::Fused, &gx, &ga, &gb, &gsa, &gsb, &gg, ALPHA)
            .unwrap();
        let gr = g
            .expert_backward_path(
                ExpertPath::Fused,
                &gdy,
                &gx,
                &ga,
                &gb,
                &gsa,
                &gsb,
                &gg,
                &u,
                ALPHA,
            )
            .unwrap();
        [y, u, gr.dx, gr.da_pool, gr.db_pool, gr.dgates].map(|t| host(&t))
    };
    let (a, b) = (run(), run());
    for (n, (p, q)) in a.iter().zip(&b).enumerate() {
        assert!(
            p.iter().zip(q).all(|(x, y)| x.to_bits() == y.to_bits()),
            "output {n} differs between two identical runs"
        );
    }
}

fn invalid_selections_are_reported() {
    gpu();
    // A private backend: its error word is not shared with the tests running beside this one.
    let g = CudaBackend::new_private(0).unwrap();
    let c = Case {
        b: 2,
        t: 4,
        din: 8,
        dout: 8,
        e: 3,
        r: 2,
        rho: 1,
    };
    let i = inputs(92, c);
    let d = |t: &Tensor| up(&g, t);
    let bad = d(&Tensor::from_i32(vec![0, 1, 2, 3], &[2, 2]).unwrap());
    for path in [ExpertPath::Fused, ExpertPath::Unfused] {
        let (y, _) = g
            .expert_forward_path(
                path,
                &d(&i.x),
                &d(&i.a_pool),
                &d(&i.b_pool),
                &bad,
                &d(&i.sel_b),
                &d(&i.gates),
                ALPHA,
            )
            .unwrap();
        let e = y.to_vec_f32().unwrap_err().to_string();
        assert!(e.contains("factor selection"), "{path:?}: {e}");
        // the word is cleared once reported
        g.synchronize().unwrap();
    }
}

// ---- the routed expert layer on a tape ----------------------------------------------------------

/// x, A pool, B pool, W_A, b_A, W_B, b_B, W_C, re-drawn until the selections are far from
/// ties.
fn layer_inputs(seed: u64, c: Case) -> Vec<Tensor> {
    use delo::backend::Gemm;
    for seed in seed.. {
        let mut r = rng(seed);
        let s = |r: &mut StdRng, shape: &[usize], k: f32| uniform(r, shape, -k, k);
        let ins = vec![
            s(&mut r, &[c.b, c.t, c.din], 1.0),
            s(&mut r, &[c.e, c.rho, c.din], 1.0 / (c.din as f32).sqrt()),
            s(&mut r, &[c.e, c.dout, c.rho], 1.0),
            s(&mut r, &[c.e, c.din], 3.0),
            s(&mut r, &[c.e], 3.0),
            s(&mut r, &[c.e, c.din], 3.0),
            s(&mut r, &[c.e], 3.0),
            s(&mut r, &[c.r, c.din, c.e], 3.0),
        ];
        let mask = Tensor::from_f32(vec![1.0; c.b * c.t], &[c.b, c.t]).unwrap();
        let q = CPU.masked_mean(&ins[0], &mask).unwrap();
        let logits = |w: usize| {
            CPU.bias_add(&CPU.matmul(&q, &ins[w], Gemm::nt()).unwrap(), &ins[w + 1])
                .unwrap()
        };
        let rt = CPU
            .route(&logits(3), &logits(5), &ins[1], &ins[7], 1.0)
            .unwrap();
        if selection_margin(&rt, c.r, 1.0) > 1e-3 {
            return ins;
        }
    }
    unreachable!()
}

/// Routes the batch by the mean of its tokens and composes; returns the loss Σ w·y, the
/// selections and every gradient.
fn layer(
    device: &Device,
    ins: &[Tensor],
    w: &Tensor,
    gate: GateMode,
) -> (f32, Vec<i32>, Vec<Vec<f32>>) {
    let mut tape = Tape::new(device.clone());
    let v: Vec<Var> = ins
        .iter()
        .enumerate()
        .map(|(i, x)| tape.param(ParamId(i), x.to_device(device).unwrap()))
        .collect();
    let (b, t) = (ins[0].dim(0), ins[0].dim(1));
    let mask = Tensor::from_f32(vec![1.0; b * t], &[b, t])
        .unwrap()
        .to_device(device)
        .unwrap();
    let q = tape.masked_mean(v[0], &mask).unwrap();
    let pool = PoolVars {
        a_pool: v[1],
        b_pool: v[2],
        wa: v[3],
        ba: v[4],
        wb: v[5],
        bb: v[6],
        wc: v[7],
    };
    let sel = route(&mut tape, q, &pool, 1.0, gate).unwrap();
    let mut s = sel.sel_a.to_vec_i32().unwrap();
    s.extend(sel.sel_b.to_vec_i32().unwrap());
    let y = compose(&mut tape, v[0], &pool, &sel, ALPHA).unwrap();
    let l = common::scalar_loss(&mut tape, y, &w.to_device(device).unwrap());
    let loss = tape.value(l).item().unwrap();
    let grads = tape.backward(l).unwrap();
    let g = (0..ins.len())
        .map(|i| {
            host(
                grads
                    .get(ParamId(i))
                    .unwrap_or_else(|| panic!("no gradient for input {i}")),
            )
        })
        .collect();
    (loss, s, g)
}

fn routed_layer_on_a_tape_matches_cpu() {
    let g = gpu();
    let names = ["x", "A pool", "B pool", "W_A", "b_A", "W_B", "b_B", "W_C"];
    for (c, gate) in [
        (
            Case {
                b: 3,
                t: 12,
                din: 32,
                dout: 24,
                e: 8,
                r: 4,
                rho: 1,
            },
            GateMode::St,
        ),
        (
            Case {
                b: 2,
                t: 9,
                din: 20,
                dout: 16,
                e: 6,
                r: 2,
                rho: 2,
            },
            GateMode::Score,
        ),
    ] {
        let ins = layer_inputs(600, c);
        let w = uniform(&mut rng(601), &[c.b * c.t * c.dout], -1.0, 1.0);
        let (l0, s0, g0) = layer(&Device::Cpu, &ins, &w, gate);
        let (l1, s1, g1) = layer(&dev(&g), &ins, &w, gate);
        assert_eq!(s1, s0, "{gate:?}: selections");
        assert!(
            (l1 - l0).abs() <= 1e-4 * l0.abs().max(1.0),
            "{gate:?}: loss {l1} vs {l0}"
        );
        for (n, (a, b)) in g1.iter().zip(&g0).enumerate() {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            // whole-layer chains (router softmax, compatibility term, composition): looser
            assert_close(
                &format!("{gate:?} d{}", names[n]),
                a,
                b,
                1e-5 * scale + 1e-6,
                1e-3,
            );
        }
    }
}

// ---- a layer's pools grouped ----------------------------------------------------------------

/// A group: q, k, v-like pools (`targets` of them per query) over `queries` routing queries.
struct GroupCase {
    c: Case,
    queries: usize,
    targets: usize,
    gate: GateMode,
    lambda: f32,
}

/// Inputs of a group: x, the queries, then per pool (A, B, W_A, b_A, W_B, b_B, W_C); redrawn
/// until every pool's selections are far from ties.
fn group_inputs(seed: u64, gc: &GroupCase) -> (Tensor, Vec<Tensor>, Vec<[Tensor; 7]>) {
    let c = gc.c;
    for seed in seed.. {
        let mut r = rng(seed);
        let s = |r: &mut StdRng, shape: &[usize], k: f32| uniform(r, shape, -k, k);
        let x = s(&mut r, &[c.b, c.t, c.din], 1.0);
        let qs: Vec<Tensor> = (0..gc.queries)
            .map(|_| s(&mut r, &[c.b, c.din], 1.0))
            .collect();
        let params: Vec<[Tensor; 7]> = (0..gc.queries * gc.targets)
            .map(|_| {
                [
                    s(&mut r, &[c.e, c.rho, c.din], 1.0 / (c.din as f32).sqrt()),
                    s(&mut r, &[c.e, c.dout, c.rho], 1.0),
                    s(&mut r, &[c.e, c.din], 3.0),
                    s(&mut r, &[c.e], 3.0),
                    s(&mut r, &[c.e, c.din], 3.0),
                    s(&mut r, &[c.e], 3.0),
                    s(&mut r, &[c.r, c.din, c.e], 3.0),
                ]
            })
            .collect();
        let far = {
            let f = with_group(&x, &qs, &params, gc, |g| forward_by_pool(&CPU, g)).unwrap();
            f.routings
                .iter()
                .all(|rt| selection_margin(rt, c.r, gc.lambda) > 1e-3)
        };
        if far {
            return (x, qs, params);
        }
    }
    unreachable!()
}

/// Pool p of the group reads query p % queries (targets outer, modalities inner, as DeLo
/// orders a layer's pools).
fn with_group<R>(
    x: &Tensor,
    qs: &[Tensor],
    params: &[[Tensor; 7]],
    gc: &GroupCase,
    f: impl FnOnce(&PoolGroup) -> R,
) -> R {
    let which: Vec<usize> = (0..params.len()).map(|i| i % gc.queries).collect();
    with_pool_group(x, qs, params, &which, gc.lambda, gc.gate, ALPHA, |g| {
        Ok(f(g))
    })
    .unwrap()
}

fn grouped_pools_match_the_pool_by_pool_reference() {
    let g = gpu();
    let case = |b, t, din, dout, e, r, rho| Case {
        b,
        t,
        din,
        dout,
        e,
        r,
        rho,
    };
    let cases = [
        // DeLo's layer: q, k, v × image and text pools, the paper's E 16, r 4
        GroupCase {
            c: case(2, 12, 32, 32, 16, 4, 1),
            queries: 2,
            targets: 3,
            gate: GateMode::St,
            lambda: 1.0,
        },
        // the unified pool (one query), ρ = 2, widths not a multiple of 4, `score` gates
        GroupCase {
            c: case(2, 9, 20, 18, 6, 2, 2),
            queries: 1,
            targets: 3,
            gate: GateMode::Score,
            lambda: 0.5,
        },
        // `hard` gates (no router gradients), r·ρ = 8, a second query no pool reads
        GroupCase {
            c: case(4, 5, 24, 16, 10, 4, 2),
            queries: 2,
            targets: 1,
            gate: GateMode::Hard,
            lambda: 1.0,
        },
        // r·ρ = 12 > GROUP_MAX_K: pool by pool on the device, fused single-pool kernels
        GroupCase {
            c: case(2, 3, 8, 8, 8, 4, 3),
            queries: 2,
            targets: 1,
            gate: GateMode::Score,
            lambda: 1.0,
        },
        // r·ρ = 32 > 16: pool by pool, unfused
        GroupCase {
            c: case(2, 3, 8, 8, 10, 8, 4),
            queries: 2,
            targets: 2,
            gate: GateMode::St,
            lambda: 1.0,
        },
    ];
    for (n, gc) in cases.iter().enumerate() {
        let c = gc.c;
        let what = |s: &str| format!("group case {n} ({:?}): {s}", gc.gate);
        let (x, qs, params) = group_inputs(700 + 10 * n as u64, gc);
        let np = params.len();
        let mut r = rng(800 + n as u64);
        let dys: Vec<Tensor> = (0..np)
            .map(|_| uniform(&mut r, &[c.b, c.t, c.dout], -1.0, 1.0))
            .collect();
        let (want_f, want_g) = with_group(&x, &qs, &params, gc, |grp| {
            let f = forward_by_pool(&CPU, grp).unwrap();
            let dys: Vec<&Tensor> = dys.iter().collect();
            let gr = backward_by_pool(&CPU, grp, &f, &dys).unwrap();
            (f, gr)
        });
        let on = |t: &Tensor| up(&g, t);
        let (xg, qg) = (on(&x), qs.iter().map(on).collect::<Vec<_>>());
        let pg: Vec<[Tensor; 7]> = params.iter().map(|p| p.each_ref().map(on)).collect();
        let dyg: Vec<Tensor> = dys.iter().map(on).collect();
        let before = g.counts();
        let (got_f, got_g, forward) = with_group(&xg, &qg, &pg, gc, |grp| {
            let f = g.pool_group_forward(grp).unwrap();
            let mid = g.counts().since(&before);
            let dys: Vec<&Tensor> = dyg.iter().collect();
            let gr = g.pool_group_backward(grp, &f, &dys).unwrap();
            (f, gr, mid)
        });
        if c.r * c.rho <= GROUP_MAX_K {
            // routing (router linears included) and composition: one launch each, plus the
            // product of the `score` gates
            let want = 2 + (gc.gate == GateMode::Score) as u64;
            assert_eq!(forward.launches, want, "{}", what("forward launches"));
        }
        for p in 0..np {
            let w = |s: &str| what(&format!("pool {p} {s}"));
            check_routing(&w("routing"), &got_f.routings[p], &want_f.routings[p]);
            check_scaled(&w("gates"), &got_f.gates[p], &want_f.gates[p], 2e-6, 2e-5);
            check_scaled(&w("u"), &got_f.us[p], &want_f.us[p], 5e-6, 5e-5);
            check_scaled(&w("y"), &got_f.ys[p], &want_f.ys[p], 5e-6, 5e-5);
            let (a, b) = (&got_g.pools[p], &want_g.pools[p]);
            check_scaled(&w("dA"), &a.da_pool, &b.da_pool, 1e-5, 1e-4);
            check_scaled(&w("dB"), &a.db_pool, &b.db_pool, 1e-5, 1e-4);
            assert_eq!(
                a.routers.is_some(),
                b.routers.is_some(),
                "{}",
                w("router grads")
            );
            if let (Some(a), Some(b)) = (&a.routers, &b.routers) {
                for (name, x, y) in [
                    ("dW_A", &a.dwa, &b.dwa),
                    ("db_A", &a.dba, &b.dba),
                    ("dW_B", &a.dwb, &b.dwb),
                    ("db_B", &a.dbb, &b.dbb),
                    ("dW_C", &a.dwc, &b.dwc),
                ] {
                    check_scaled(&w(name), x, y, 1e-5, 1e-4);
                }
            }
        }
        check_scaled(&what("dx"), &got_g.dx, &want_g.dx, 5e-6, 5e-5);
        assert_eq!(got_g.dq.len(), want_g.dq.len(), "{}", what("queries"));
        for (i, (a, b)) in got_g.dq.iter().zip(&want_g.dq).enumerate() {
            match (a, b) {
                (Some(a), Some(b)) => check_scaled(&what(&format!("dq{i}")), a, b, 1e-5, 1e-4),
                (None, None) => {}
                _ => panic!("{}: one side has a gradient", what(&format!("dq{i}"))),
            }
        }
    }
}
