//! The expert linear: finite-difference checks of every gradient (input, both pools, routers
//! A and B, compatibility router) and the routing semantics of docs/method.md#routing.

mod common;

use std::cell::RefCell;

use common::{assert_close, check, randn, rng, ATOL, H, RTOL};
use delo::autograd::{ParamId, Tape, Var};
use delo::backend::{ExpertOps, Gemm};
use delo::delo::experts::{compose, route, GateMode, PoolVars};
use delo::{Device, Tensor};

const B: usize = 3;
const T: usize = 2;
const DIN: usize = 4;
const DOUT: usize = 3;
const E: usize = 5;
const R: usize = 2;
const ALPHA: f32 = 2.0;
const LAMBDA: f32 = 1.0;

/// x, A pool, B pool, W_A, b_A, W_B, b_B, W_C. Router weights are scaled up so that the
/// probabilities of neighbouring factors differ by far more than a finite-difference step
/// moves them: the selection stays fixed while gradients are checked.
fn inputs(seed: u64, rho: usize) -> Vec<Tensor> {
    let mut r = rng(seed);
    let s = |t: Tensor, k: f32| {
        Tensor::from_f32(
            t.to_vec_f32().unwrap().iter().map(|v| v * k).collect(),
            t.shape(),
        )
        .unwrap()
    };
    vec![
        randn(&mut r, &[B, T, DIN]),
        randn(&mut r, &[E, rho, DIN]),
        randn(&mut r, &[E, DOUT, rho]),
        s(randn(&mut r, &[E, DIN]), 3.0),
        s(randn(&mut r, &[E]), 3.0),
        s(randn(&mut r, &[E, DIN]), 3.0),
        s(randn(&mut r, &[E]), 3.0),
        s(randn(&mut r, &[R, DIN, E]), 3.0),
    ]
}

fn pool(v: &[Var]) -> PoolVars {
    PoolVars {
        a_pool: v[1],
        b_pool: v[2],
        wa: v[3],
        ba: v[4],
        wb: v[5],
        bb: v[6],
        wc: v[7],
    }
}

/// The expert update of a batch routed by the mean of its own tokens (so the input gradient
/// also flows through the query), with the selection pinned to the first evaluation's.
fn expert_graph(gate: GateMode, lambda: f32) -> impl Fn(&mut Tape, &[Var]) -> Var {
    let seen: RefCell<Option<(Vec<i32>, Vec<i32>)>> = RefCell::new(None);
    move |t, v| {
        let mask = Tensor::from_f32(vec![1.0; B * T], &[B, T]).unwrap();
        let q = t.masked_mean(v[0], &mask).unwrap();
        let sel = route(t, q, &pool(v), lambda, gate).unwrap();
        let now = (
            sel.sel_a.to_vec_i32().unwrap(),
            sel.sel_b.to_vec_i32().unwrap(),
        );
        let first = seen.borrow_mut().get_or_insert_with(|| now.clone()).clone();
        assert_eq!(
            first, now,
            "a finite-difference step changed the factor selection"
        );
        compose(t, v[0], &pool(v), &sel, ALPHA).unwrap()
    }
}

/// With score gates the forward depends on every router, so finite differences see the true
/// gradient. The compatibility term reads the A pool under stop-gradient (ā), which finite
/// differences cannot honour: the A pool is checked with λ_cfs = 0, everything else with 1.
fn check_score(name: &str, seed: u64, rho: usize) {
    check(
        name,
        inputs(seed, rho),
        &[0, 2, 3, 4, 5, 6, 7],
        expert_graph(GateMode::Score, LAMBDA),
    );
    check(
        name,
        inputs(seed, rho),
        &[1],
        expert_graph(GateMode::Score, 0.0),
    );
}

#[test]
fn score_gates_every_gradient_rank_one() {
    check_score("experts ρ=1 (score gates)", 1, 1);
}

#[test]
fn score_gates_every_gradient_rank_rho() {
    check_score("experts ρ=2 (score gates)", 2, 2);
}

const HARD_SEED: u64 = 8;

#[test]
fn hard_gates_train_only_the_factors() {
    check(
        "experts (hard gates)",
        inputs(HARD_SEED, 1),
        &[0, 1, 2],
        expert_graph(GateMode::Hard, LAMBDA),
    );
    let ins = inputs(HARD_SEED, 1);
    let mut tape = Tape::new(Device::Cpu);
    let v: Vec<Var> = ins
        .iter()
        .enumerate()
        .map(|(i, x)| tape.param(ParamId(i), x.clone()))
        .collect();
    let y = expert_graph(GateMode::Hard, LAMBDA)(&mut tape, &v);
    let l = common::scalar_loss(
        &mut tape,
        y,
        &Tensor::from_f32(vec![1.0; B * T * DOUT], &[B * T * DOUT]).unwrap(),
    );
    let g = tape.backward(l).unwrap();
    for i in 3..8 {
        assert!(
            g.get(ParamId(i)).is_none(),
            "router input {i} got a gradient through hard gates"
        );
    }
}

/// The straight-through gradient is the exact derivative of the surrogate in which the gates
/// are (1 + P_A(θ) − P_A(θ₀))(1 + P_B(θ) − P_B(θ₀)): the forward is unchanged at θ₀ (gates 1)
/// and moves with the routers elsewhere. The surrogate is built here from backend ops alone.
#[test]
fn straight_through_gates_match_surrogate_finite_differences() {
    let ins = inputs(4, 1);
    let mut r = rng(99);
    let w = randn(&mut r, &[B * T * DOUT]);
    let mut tape = Tape::new(Device::Cpu);
    let v: Vec<Var> = ins
        .iter()
        .enumerate()
        .map(|(i, x)| tape.param(ParamId(i), x.clone()))
        .collect();
    let y = expert_graph(GateMode::St, LAMBDA)(&mut tape, &v);
    let l = common::scalar_loss(&mut tape, y, &w);
    let grads = tape.backward(l).unwrap();

    let be = Device::Cpu.backend();
    let mask = Tensor::from_f32(vec![1.0; B * T], &[B, T]).unwrap();
    let q = be.masked_mean(&ins[0], &mask).unwrap();
    let logits = |ins: &[Tensor], wi: usize| {
        be.bias_add(&be.matmul(&q, &ins[wi], Gemm::nt()).unwrap(), &ins[wi + 1])
            .unwrap()
    };
    let routing = |ins: &[Tensor]| {
        be.route(&logits(ins, 3), &logits(ins, 5), &ins[1], &ins[7], LAMBDA)
            .unwrap()
    };
    let base = routing(&ins);
    let surrogate = |ins: &[Tensor]| -> f64 {
        let rt = routing(ins);
        assert_eq!(
            rt.sel_a.to_vec_i32().unwrap(),
            base.sel_a.to_vec_i32().unwrap()
        );
        assert_eq!(
            rt.sel_b.to_vec_i32().unwrap(),
            base.sel_b.to_vec_i32().unwrap()
        );
        let f = |p: &Tensor, p0: &Tensor| -> Vec<f32> {
            p.to_vec_f32()
                .unwrap()
                .iter()
                .zip(p0.to_vec_f32().unwrap())
                .map(|(a, b)| 1.0 + a - b)
                .collect()
        };
        let g: Vec<f32> = f(&rt.pa_sel, &base.pa_sel)
            .iter()
            .zip(f(&rt.pb_sel, &base.pb_sel))
            .map(|(a, b)| a * b)
            .collect();
        let g = Tensor::from_f32(g, &[B, R]).unwrap();
        let (y, _) = be
            .expert_forward(&ins[0], &ins[1], &ins[2], &rt.sel_a, &rt.sel_b, &g, ALPHA)
            .unwrap();
        y.to_vec_f32()
            .unwrap()
            .iter()
            .zip(w.to_vec_f32().unwrap())
            .map(|(a, b)| (a * b) as f64)
            .sum()
    };
    for i in 3..8 {
        let analytic = grads
            .get(ParamId(i))
            .expect("router gradient")
            .to_vec_f32()
            .unwrap();
        let base_v = ins[i].to_vec_f32().unwrap();
        for j in 0..base_v.len() {
            let at = |d: f32| {
                let mut vv = base_v.clone();
                vv[j] += d;
                let mut p = ins.clone();
                p[i] = Tensor::from_f32(vv, ins[i].shape()).unwrap();
                surrogate(&p)
            };
            let numeric = ((at(H) - at(-H)) / (2.0 * H as f64)) as f32;
            assert!(
                (analytic[j] - numeric).abs() <= ATOL + RTOL * numeric.abs(),
                "st input{i}[{j}]: analytic {}, numeric {numeric}",
                analytic[j]
            );
        }
    }
}

#[test]
fn selections_differ_across_samples_and_are_honoured() {
    // Three samples with very different queries pick different factors; each sample's update
    // equals the one computed from its own selected factors alone.
    let ins = inputs(5, 1);
    let be = Device::Cpu.backend();
    let mut tape = Tape::new(Device::Cpu);
    let v: Vec<Var> = ins.iter().map(|x| tape.constant(x.clone())).collect();
    let mask = Tensor::from_f32(vec![1.0; B * T], &[B, T]).unwrap();
    let q = tape.masked_mean(v[0], &mask).unwrap();
    let sel = route(&mut tape, q, &pool(&v), LAMBDA, GateMode::St).unwrap();
    let (sa, sb) = (
        sel.sel_a.to_vec_i32().unwrap(),
        sel.sel_b.to_vec_i32().unwrap(),
    );
    let rows: Vec<&[i32]> = sa.chunks(R).collect();
    assert!(
        rows.iter().any(|r| *r != rows[0]),
        "all samples chose the same A factors: {sa:?}"
    );
    let y = compose(&mut tape, v[0], &pool(&v), &sel, ALPHA).unwrap();
    let yv = tape.value(y).to_vec_f32().unwrap();
    let (xv, av, bv) = (
        ins[0].to_vec_f32().unwrap(),
        ins[1].to_vec_f32().unwrap(),
        ins[2].to_vec_f32().unwrap(),
    );
    let mut want = vec![0f32; B * T * DOUT];
    for b in 0..B {
        for t in 0..T {
            for i in 0..R {
                let (fa, fb) = (sa[b * R + i] as usize, sb[b * R + i] as usize);
                let ax: f32 = (0..DIN)
                    .map(|k| av[fa * DIN + k] * xv[(b * T + t) * DIN + k])
                    .sum();
                for o in 0..DOUT {
                    want[(b * T + t) * DOUT + o] += ALPHA * bv[fb * DOUT + o] * ax;
                }
            }
        }
    }
    assert_close("per-sample composition", &yv, &want, 1e-5, 1e-5);
    // The selection follows eq. (3): S_A is the top-r of softmax(W_A q + b_A), best first.
    let qv = tape.value(q).clone();
    let la = be
        .bias_add(&be.matmul(&qv, &ins[3], Gemm::nt()).unwrap(), &ins[4])
        .unwrap()
        .to_vec_f32()
        .unwrap();
    for b in 0..B {
        let row = &la[b * E..(b + 1) * E];
        let mut order: Vec<usize> = (0..E).collect();
        order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
        assert_eq!(
            &sa[b * R..(b + 1) * R],
            &order[..R].iter().map(|&i| i as i32).collect::<Vec<_>>()[..]
        );
    }
}

#[test]
fn ties_go_to_the_lower_index() {
    use delo::backend::cpu::CpuBackend;
    let la = Tensor::from_f32(vec![1.0, 3.0, 3.0, 0.0, 3.0], &[1, 5]).unwrap();
    let lb = Tensor::from_f32(vec![0.0; 5], &[1, 5]).unwrap();
    let a_pool = Tensor::from_f32(vec![0.0; 5 * 2], &[5, 1, 2]).unwrap();
    let wc = Tensor::from_f32(vec![0.0; 2 * 2 * 5], &[2, 2, 5]).unwrap();
    let rt = CpuBackend.route(&la, &lb, &a_pool, &wc, 1.0).unwrap();
    assert_eq!(rt.sel_a.to_vec_i32().unwrap(), [1, 2]);
    assert_eq!(
        rt.sel_b.to_vec_i32().unwrap(),
        [0, 1],
        "uniform p_B + uniform c: lowest indices"
    );
}

#[test]
fn text_missing_samples_route_their_text_pool_by_the_image_query() {
    use delo::data::MissingType;
    use delo::delo::adapter::{guide_queries, Proxy};
    let mut tape = Tape::new(Device::Cpu);
    let qv = tape.constant(Tensor::from_f32(vec![1., 1., 2., 2., 3., 3.], &[3, 2]).unwrap());
    let qt = tape.constant(Tensor::from_f32(vec![-1., -1., -2., -2., -3., -3.], &[3, 2]).unwrap());
    let missing = [MissingType::None, MissingType::Text, MissingType::Image];
    let (hv, ht) = guide_queries(&mut tape, qv, qt, &missing, true, Proxy::None).unwrap();
    // Sample 1 lacks its text: q̂_t = q_v; sample 2 lacks its image: q̂_v = q_t (eq. 5).
    assert_eq!(
        tape.value(ht).to_vec_f32().unwrap(),
        [-1., -1., 2., 2., -3., -3.]
    );
    assert_eq!(
        tape.value(hv).to_vec_f32().unwrap(),
        [1., 1., 2., 2., -3., -3.]
    );
    // The ablation uses the dummy modality's own query.
    let (hv, ht) = guide_queries(&mut tape, qv, qt, &missing, false, Proxy::None).unwrap();
    assert_eq!((hv, ht), (qv, qt));
    // The consistency forward's proxy routes every text pool by q_v.
    let (_, ht) = guide_queries(&mut tape, qv, qt, &missing, true, Proxy::Text).unwrap();
    assert_eq!(ht, qv);
}
