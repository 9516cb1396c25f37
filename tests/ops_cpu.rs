//! CPU ops against hand-computed values and naive loops.

mod common;

use common::{assert_close, randn, rng};
use delo::autograd::{ParamId, Tape};
use delo::backend::{AdamW, Gemm, Unary};
use delo::{Backend, DType, Device, Tensor};

fn cpu() -> &'static dyn Backend {
    // The CPU backend is a unit struct behind a static; borrow it for the test's lifetime.
    static D: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    D.get_or_init(|| Device::Cpu).backend()
}

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(v.to_vec(), shape).unwrap()
}

/// Naive `op(a) · op(b)` for one row-major matrix pair.
fn naive_mm(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    ta: bool,
    tb: bool,
) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let x = if ta { a[p * m + i] } else { a[i * k + p] };
                let y = if tb { b[j * k + p] } else { b[p * n + j] };
                s += (x * y) as f64;
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

#[test]
fn matmul_hand_values() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let b = t(&[7., 8., 9., 10., 11., 12.], &[3, 2]);
    let c = cpu().matmul(&a, &b, Gemm::nn()).unwrap();
    assert_eq!(c.shape(), [2, 2]);
    assert_eq!(c.to_vec_f32().unwrap(), [58., 64., 139., 154.]);
}

#[test]
fn matmul_transposes_batches_and_accumulation() {
    let mut r = rng(1);
    let (m, n, k) = (37, 29, 53);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = randn(&mut r, &if ta { [3, k, m] } else { [3, m, k] });
        let b = randn(&mut r, &if tb { [3, n, k] } else { [3, k, n] });
        let g = Gemm {
            trans_a: ta,
            trans_b: tb,
            alpha: 0.5,
        };
        let c = cpu().matmul(&a, &b, g).unwrap();
        assert_eq!(c.shape(), [3, m, n]);
        let (av, bv, cv) = (
            a.to_vec_f32().unwrap(),
            b.to_vec_f32().unwrap(),
            c.to_vec_f32().unwrap(),
        );
        for i in 0..3 {
            let want: Vec<f32> = naive_mm(&av[i * m * k..], &bv[i * k * n..], (m, n, k), ta, tb)
                .iter()
                .map(|v| v * 0.5)
                .collect();
            assert_close(
                "batched matmul",
                &cv[i * m * n..(i + 1) * m * n],
                &want,
                1e-4,
                1e-4,
            );
        }
        // matmul_bias adds its bias to every row of every batch's product.
        let bias = randn(&mut r, &[n]);
        let with_bias = cpu().matmul_bias(&a, &b, g, &bias).unwrap();
        let want = cpu().bias_add(&c, &bias).unwrap();
        assert_eq!(with_bias.shape(), [3, m, n]);
        assert_close(
            "matmul_bias",
            &with_bias.to_vec_f32().unwrap(),
            &want.to_vec_f32().unwrap(),
            1e-6,
            1e-6,
        );
        // A 2-D right operand is shared by every batch; matmul_into accumulates with beta.
        let b2 = randn(&mut r, &if tb { [n, k] } else { [k, n] });
        let mut acc = randn(&mut r, &[3, m, n]);
        let before = acc.to_vec_f32().unwrap();
        cpu().matmul_into(&a, &b2, g, &mut acc, 2.0).unwrap();
        let (b2v, accv) = (b2.to_vec_f32().unwrap(), acc.to_vec_f32().unwrap());
        for i in 0..3 {
            let prod = naive_mm(&av[i * m * k..], &b2v, (m, n, k), ta, tb);
            let want: Vec<f32> = prod
                .iter()
                .zip(&before[i * m * n..])
                .map(|(p, c)| 0.5 * p + 2.0 * c)
                .collect();
            assert_close(
                "matmul_into",
                &accv[i * m * n..(i + 1) * m * n],
                &want,
                1e-4,
                1e-4,
            );
        }
    }
}

#[test]
fn matmul_rejects_mismatched_shapes() {
    let e = cpu()
        .matmul(&t(&[0.; 6], &[2, 3]), &t(&[0.; 4], &[2, 2]), Gemm::nn())
        .unwrap_err();
    assert!(e.to_string().contains("inner dimensions"), "{e}");
}

#[test]
fn bf16_matmul_rounds_inputs_and_accumulates_in_f32() {
    let mut r = rng(2);
    let (a, b) = (randn(&mut r, &[8, 16]), randn(&mut r, &[4, 16]));
    let (ab, bb) = (
        cpu().cast(&a, DType::BF16).unwrap(),
        cpu().cast(&b, DType::BF16).unwrap(),
    );
    let c = cpu().matmul(&ab, &bb, Gemm::nt()).unwrap();
    assert_eq!(c.dtype(), DType::F32);
    let want = naive_mm(
        &ab.to_vec_f32().unwrap(),
        &bb.to_vec_f32().unwrap(),
        (8, 4, 16),
        false,
        true,
    );
    assert_close("bf16 matmul", &c.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
    // bf16 keeps 8 bits of mantissa: the rounded inputs differ from f32 by < 2^-8 relative.
    assert_close(
        "bf16 cast",
        &ab.to_vec_f32().unwrap(),
        &a.to_vec_f32().unwrap(),
        0.0,
        1.0 / 256.0,
    );
}

#[test]
fn elementwise_hand_values() {
    let x = t(&[-1., 0., 1., 2.], &[2, 2]);
    assert_close(
        "gelu",
        &cpu().unary(Unary::Gelu, &x).unwrap().to_vec_f32().unwrap(),
        &[-0.158_655_25, 0.0, 0.841_344_7, 1.954_5],
        1e-4,
        1e-4,
    );
    assert_close(
        "tanh",
        &cpu().unary(Unary::Tanh, &x).unwrap().to_vec_f32().unwrap(),
        &[-0.761_594_2, 0.0, 0.761_594_2, 0.964_027_6],
        1e-6,
        1e-6,
    );
    let b = t(&[10., 20.], &[2]);
    assert_eq!(
        cpu().bias_add(&x, &b).unwrap().to_vec_f32().unwrap(),
        [9., 20., 11., 22.]
    );
    assert_eq!(cpu().sum_rows(&x).unwrap().to_vec_f32().unwrap(), [0., 2.]);
    assert_eq!(
        cpu().mul(&x, &x).unwrap().to_vec_f32().unwrap(),
        [1., 0., 1., 4.]
    );
    let mut acc = t(&[1., 1., 1., 1.], &[2, 2]);
    cpu().add_assign(&mut acc, &x).unwrap();
    assert_eq!(acc.to_vec_f32().unwrap(), [0., 1., 2., 3.]);
}

#[test]
fn layernorm_and_softmax_hand_values() {
    let x = t(&[1., 2., 3.], &[1, 3]);
    let o = cpu()
        .layernorm(&x, &t(&[1., 1., 2.], &[3]), &t(&[0., 1., 0.], &[3]), 0.0)
        .unwrap();
    let s = (1.5f32).sqrt(); // (x − 2)/sqrt(2/3)
    assert_close(
        "layernorm",
        &o.y.to_vec_f32().unwrap(),
        &[-s, 1.0, 2.0 * s],
        1e-5,
        1e-5,
    );
    assert_close(
        "layernorm stats",
        &[o.mean.item().unwrap(), o.rstd.item().unwrap()],
        &[2.0, s],
        1e-6,
        1e-6,
    );
    let p = cpu()
        .softmax(&t(&[0., (2f32).ln(), 1000., 1000.], &[2, 2]))
        .unwrap();
    assert_close(
        "softmax",
        &p.to_vec_f32().unwrap(),
        &[1. / 3., 2. / 3., 0.5, 0.5],
        1e-6,
        1e-6,
    );
}

#[test]
fn attention_matches_naive_with_masked_keys() {
    let mut r = rng(3);
    let (b, tt, h, dh) = (2, 5, 3, 4);
    let d = h * dh;
    let (q, k, v) = (
        randn(&mut r, &[b, tt, d]),
        randn(&mut r, &[b, tt, d]),
        randn(&mut r, &[b, tt, d]),
    );
    let maskv = [1., 1., 0., 1., 0., 1., 0., 0., 1., 1.];
    let mask = t(&maskv, &[b, tt]);
    let (o, probs) = cpu().attention(&q, &k, &v, &mask, h).unwrap();
    let (qv, kv, vv) = (
        q.to_vec_f32().unwrap(),
        k.to_vec_f32().unwrap(),
        v.to_vec_f32().unwrap(),
    );
    let mut want = vec![0f32; b * tt * d];
    let mut want_p = vec![0f32; b * h * tt * tt];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..tt {
                let scores: Vec<f64> = (0..tt)
                    .map(|j| {
                        let s: f64 = (0..dh)
                            .map(|c| {
                                (qv[(bi * tt + i) * d + hi * dh + c]
                                    * kv[(bi * tt + j) * d + hi * dh + c])
                                    as f64
                            })
                            .sum();
                        if maskv[bi * tt + j] == 0.0 {
                            f64::NEG_INFINITY
                        } else {
                            s / (dh as f64).sqrt()
                        }
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
                for j in 0..tt {
                    let p = (scores[j] - mx).exp() / z;
                    want_p[((bi * h + hi) * tt + i) * tt + j] = p as f32;
                    for c in 0..dh {
                        want[(bi * tt + i) * d + hi * dh + c] +=
                            (p * vv[(bi * tt + j) * d + hi * dh + c] as f64) as f32;
                    }
                }
            }
        }
    }
    assert_close(
        "attention probs",
        &probs.to_vec_f32().unwrap(),
        &want_p,
        1e-6,
        1e-5,
    );
    assert_close("attention out", &o.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
}

#[test]
fn indexing_and_sequences() {
    let table = t(&[0., 1., 10., 11., 20., 21.], &[3, 2]);
    let idx = Tensor::from_i32(vec![2, 0, 2], &[3]).unwrap();
    assert_eq!(
        cpu()
            .gather_rows(&table, &idx)
            .unwrap()
            .to_vec_f32()
            .unwrap(),
        [20., 21., 0., 1., 20., 21.]
    );
    let back = cpu()
        .scatter_add_rows(&t(&[1., 1., 2., 2., 3., 3.], &[3, 2]), &idx, 3)
        .unwrap();
    assert_eq!(back.to_vec_f32().unwrap(), [2., 2., 0., 0., 4., 4.]);
    let bad = Tensor::from_i32(vec![3], &[1]).unwrap();
    assert!(cpu()
        .gather_rows(&table, &bad)
        .unwrap_err()
        .to_string()
        .contains("outside 0..3"));
    // copy_rows_where: rows choosing 1 take the source's, the rest keep theirs.
    let mut dst = t(&[1., 2., 3., 4., 5., 6.], &[3, 2]);
    let src = t(&[7., 8., 9., 10., 11., 12.], &[3, 2]);
    let choice = Tensor::from_i32(vec![1, 0, 1], &[3]).unwrap();
    cpu()
        .copy_rows_where(&mut dst, &src, &choice, 1, 2)
        .unwrap();
    assert_eq!(dst.to_vec_f32().unwrap(), [7., 8., 3., 4., 11., 12.]);
    for (choice, k, n, msg) in [
        (vec![1, 2, 0], 1, 2, "row 1 chooses 2, outside 0..2"),
        (vec![0, 1], 0, 2, "one per row"),
        (vec![0, 1, 0], 2, 2, "tensor 2 of 2"),
    ] {
        let c = Tensor::from_i32(choice.clone(), &[choice.len()]).unwrap();
        let e = cpu()
            .copy_rows_where(&mut dst, &src, &c, k, n)
            .unwrap_err()
            .to_string();
        assert!(e.contains(msg), "{e}");
    }
    let (a, b) = (
        t(&[1., 2., 3., 4.], &[2, 1, 2]),
        t(&[5., 6., 7., 8.], &[2, 1, 2]),
    );
    let c = cpu().concat_seq(&a, &b).unwrap();
    assert_eq!(c.shape(), [2, 2, 2]);
    assert_eq!(c.to_vec_f32().unwrap(), [1., 2., 5., 6., 3., 4., 7., 8.]);
    let (a2, b2) = cpu().split_seq(&c, 1).unwrap();
    assert_eq!(
        (a2.to_vec_f32().unwrap(), b2.to_vec_f32().unwrap()),
        (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap())
    );
}

#[test]
fn reductions_hand_values() {
    let x = t(
        &[1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.],
        &[2, 3, 2],
    );
    let mask = t(&[1., 0., 1., 0., 0., 0.], &[2, 3]);
    let m = cpu().masked_mean(&x, &mask).unwrap();
    assert_eq!(
        m.to_vec_f32().unwrap(),
        [3., 4., 0., 0.],
        "row 2 has no valid position: zeros"
    );
    let c = cpu()
        .cosine(
            &t(&[1., 0., 1., 1., 0., 0.], &[3, 2]),
            &t(&[0., 1., 2., 2., 1., 1.], &[3, 2]),
        )
        .unwrap();
    assert_close(
        "cosine",
        &c.to_vec_f32().unwrap(),
        &[0., 1., 0.],
        1e-6,
        1e-6,
    );
}

#[test]
fn losses_hand_values() {
    let logits = t(&[0., 0., 0., 0., 1000., 0.], &[2, 3]);
    let labels = Tensor::from_i32(vec![1, 1], &[2]).unwrap();
    // Row 1: log 3; row 2: the right class dominates, loss 0.
    assert_close(
        "ce",
        &[cpu()
            .cross_entropy(&logits, &labels)
            .unwrap()
            .item()
            .unwrap()],
        &[(3f32).ln() / 2.0],
        1e-6,
        1e-6,
    );
    let bad = Tensor::from_i32(vec![1, 3], &[2]).unwrap();
    assert!(cpu()
        .cross_entropy(&logits, &bad)
        .unwrap_err()
        .to_string()
        .contains("label 3 of row 1"));
    let bce = cpu()
        .bce_with_logits(&t(&[0., 2.], &[1, 2]), &t(&[1., 0.], &[1, 2]))
        .unwrap();
    let want = ((2f32).ln() + (1.0 + 2f32.exp()).ln()) / 2.0;
    assert_close("bce", &[bce.item().unwrap()], &[want], 1e-6, 1e-6);
    let same = t(&[0.3, -1., 2.], &[1, 3]);
    assert!(
        cpu()
            .kl_categorical(&same, &same)
            .unwrap()
            .item()
            .unwrap()
            .abs()
            < 1e-6
    );
    // KL([1/2, 1/2] ‖ [1/3, 2/3]) = ½ln(3/2) + ½ln(3/4).
    let kl = cpu()
        .kl_categorical(&t(&[0., 0.], &[1, 2]), &t(&[0., (2f32).ln()], &[1, 2]))
        .unwrap();
    assert_close(
        "kl",
        &[kl.item().unwrap()],
        &[0.5 * (1.5f32).ln() + 0.5 * (0.75f32).ln()],
        1e-6,
        1e-6,
    );
    // Bernoulli KL(½ ‖ σ(ln 3) = ¾) = ½ln(2/3) + ½ln(2).
    let klb = cpu()
        .kl_bernoulli(&t(&[0.], &[1, 1]), &t(&[(3f32).ln()], &[1, 1]))
        .unwrap();
    assert_close(
        "kl bernoulli",
        &[klb.item().unwrap()],
        &[0.5 * (2. / 3f32).ln() + 0.5 * (2f32).ln()],
        1e-6,
        1e-6,
    );
}

#[test]
fn adamw_two_steps_by_hand() {
    let hp = AdamW {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-8,
        weight_decay: 0.01,
        step: 1,
    };
    let (mut p, g) = (t(&[1.0, -2.0], &[2]), t(&[0.5, 0.0], &[2]));
    let (mut m, mut v) = (t(&[0., 0.], &[2]), t(&[0., 0.], &[2]));
    cpu().adamw(&mut p, &g, &mut m, &mut v, hp).unwrap();
    // Step 1: the bias-corrected update is lr·sign(g) (eps aside); decay first: p·(1 − lr·wd).
    assert_close(
        "adamw step 1",
        &p.to_vec_f32().unwrap(),
        &[1.0 * 0.999 - 0.1, -2.0 * 0.999],
        1e-6,
        1e-6,
    );
    cpu()
        .adamw(&mut p, &g, &mut m, &mut v, AdamW { step: 2, ..hp })
        .unwrap();
    // Step 2 with the same gradient: m̂ = g, v̂ = g², so again lr·sign(g).
    let p1 = 1.0 * 0.999 - 0.1;
    assert_close(
        "adamw step 2",
        &p.to_vec_f32().unwrap(),
        &[p1 * 0.999 - 0.1, -2.0 * 0.999 * 0.999],
        1e-6,
        1e-6,
    );
    assert_close(
        "adamw moments",
        &m.to_vec_f32().unwrap(),
        &[0.5 * 0.1 + 0.5 * 0.09, 0.0],
        1e-6,
        1e-6,
    );
}

#[test]
fn tape_records_nothing_without_trainable_inputs() {
    let mut r = rng(4);
    let mut tape = Tape::new(Device::Cpu);
    let x = tape.constant(randn(&mut r, &[2, 3]));
    let w = randn(&mut r, &[4, 3]);
    let y = tape.linear(x, &w, None).unwrap();
    let y = tape.unary(Unary::Gelu, y).unwrap();
    assert_eq!(
        tape.recorded(),
        0,
        "a frozen-only computation records no node"
    );
    assert!(!tape.needs_grad(y));
    let head = tape.param(ParamId(0), randn(&mut r, &[2, 4]));
    let z = tape.linear_param(y, head, None).unwrap();
    assert_eq!(tape.recorded(), 1);
    assert!(tape.needs_grad(z));
}

#[test]
fn parameter_used_twice_accumulates_gradients() {
    // L = w·x + w·x through two separate nodes: dL/dw = 2x.
    let mut tape = Tape::new(Device::Cpu);
    let w = tape.param(ParamId(0), t(&[1., 2.], &[1, 2]));
    let x = tape.constant(t(&[3., 4.], &[1, 2]));
    let a = tape.linear_param(x, w, None).unwrap();
    let b = tape.linear_param(x, w, None).unwrap();
    let s = tape.add(a, b).unwrap();
    let l = tape.reshape(s, &[1]).unwrap();
    assert_eq!(tape.value(l).item().unwrap(), 22.0);
    let g = tape.backward(l).unwrap();
    assert_eq!(g.get(ParamId(0)).unwrap().to_vec_f32().unwrap(), [6., 8.]);
}
