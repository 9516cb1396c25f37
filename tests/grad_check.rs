//! Finite-difference checks of every backward on the tape (method: `common::check`).

mod common;

use common::{check, randn, rng};
use delo::backend::Unary;
use delo::{Device, Tensor};

#[test]
fn frozen_linear_input_gradient() {
    let mut r = rng(1);
    let (w, b) = (randn(&mut r, &[4, 3]), randn(&mut r, &[4]));
    check(
        "linear",
        vec![randn(&mut r, &[2, 2, 3])],
        &[0],
        move |t, v| t.linear(v[0], &w, Some(&b)).unwrap(),
    );
}

#[test]
fn trainable_linear_all_gradients() {
    let mut r = rng(2);
    let ins = vec![
        randn(&mut r, &[5, 3]),
        randn(&mut r, &[4, 3]),
        randn(&mut r, &[4]),
    ];
    check("linear_param", ins, &[0, 1, 2], |t, v| {
        t.linear_param(v[0], v[1], Some(v[2])).unwrap()
    });
}

#[test]
fn layernorm_input_gradient() {
    let mut r = rng(3);
    let (w, b) = (randn(&mut r, &[6]), randn(&mut r, &[6]));
    check(
        "layernorm",
        vec![randn(&mut r, &[3, 6])],
        &[0],
        move |t, v| t.layernorm(v[0], &w, &b, 1e-5).unwrap(),
    );
}

#[test]
fn layernorm_affine_gradients() {
    // The tape keeps LayerNorm affine parameters frozen; the backend's affine gradients are
    // checked here through a custom node that exposes them.
    let mut r = rng(4);
    let ins = vec![
        randn(&mut r, &[3, 5]),
        randn(&mut r, &[5]),
        randn(&mut r, &[5]),
    ];
    check("layernorm affine", ins, &[0, 1, 2], |t, v| {
        let be = Device::Cpu.backend();
        let (x, w, b) = (
            t.value(v[0]).clone(),
            t.value(v[1]).clone(),
            t.value(v[2]).clone(),
        );
        let o = be.layernorm(&x, &w, &b, 1e-5).unwrap();
        t.custom(&[v[0], v[1], v[2]], o.y, move |be, dy, _| {
            let g = be.layernorm_backward(dy, &x, &w, &o.mean, &o.rstd, true)?;
            Ok(vec![Some(g.dx), g.dw, g.db])
        })
    });
}

#[test]
fn masked_attention_gradients() {
    let mut r = rng(5);
    let mask = Tensor::from_f32(vec![1., 1., 1., 0., 1., 0., 1., 1.], &[2, 4]).unwrap();
    let ins = vec![
        randn(&mut r, &[2, 4, 6]),
        randn(&mut r, &[2, 4, 6]),
        randn(&mut r, &[2, 4, 6]),
    ];
    check("attention", ins, &[0, 1, 2], move |t, v| {
        t.attention(v[0], v[1], v[2], &mask, 2).unwrap()
    });
}

#[test]
fn elementwise_gradients() {
    let mut r = rng(6);
    for &op in Unary::ALL {
        check(
            op.name(),
            vec![randn(&mut r, &[3, 4])],
            &[0],
            move |t, v| t.unary(op, v[0]).unwrap(),
        );
    }
    check("softmax", vec![randn(&mut r, &[3, 4])], &[0], |t, v| {
        t.softmax(v[0]).unwrap()
    });
    check("scale", vec![randn(&mut r, &[3, 4])], &[0], |t, v| {
        t.scale(v[0], -1.7).unwrap()
    });
    check(
        "add",
        vec![randn(&mut r, &[3, 4]), randn(&mut r, &[3, 4])],
        &[0, 1],
        |t, v| t.add(v[0], v[1]).unwrap(),
    );
    check(
        "mul",
        vec![randn(&mut r, &[3, 4]), randn(&mut r, &[3, 4])],
        &[0, 1],
        |t, v| t.mul(v[0], v[1]).unwrap(),
    );
}

#[test]
fn reused_value_gradients_accumulate() {
    let mut r = rng(7);
    // y = x ⊙ x + tanh(x): x feeds three edges, so its gradient is a sum of three terms.
    check("reuse", vec![randn(&mut r, &[2, 3])], &[0], |t, v| {
        let sq = t.mul(v[0], v[0]).unwrap();
        let th = t.unary(Unary::Tanh, v[0]).unwrap();
        t.add(sq, th).unwrap()
    });
}

#[test]
fn indexing_gradients() {
    let mut r = rng(8);
    // Index 1 repeats, so its rows' gradients must add up in the scatter.
    let idx = Tensor::from_i32(vec![1, 0, 1, 3], &[2, 2]).unwrap();
    check(
        "gather_rows",
        vec![randn(&mut r, &[4, 2, 3])],
        &[0],
        move |t, v| t.gather_rows(v[0], &idx).unwrap(),
    );
    let ins = vec![randn(&mut r, &[2, 3, 4]), randn(&mut r, &[2, 2, 4])];
    check("concat_seq", ins, &[0, 1], |t, v| {
        t.concat_seq(v[0], v[1]).unwrap()
    });
    // Rows 0 and 3 choose the first tensor, 1 the third, 2 the second.
    let choice = Tensor::from_i32(vec![0, 2, 1, 0], &[4]).unwrap();
    let ins = (0..3).map(|_| randn(&mut r, &[4, 2, 3])).collect();
    check("select_rows", ins, &[0, 1, 2], move |t, v| {
        t.select_rows(v, &choice).unwrap()
    });
    check("reshape", vec![randn(&mut r, &[2, 6])], &[0], |t, v| {
        t.reshape(v[0], &[3, 4]).unwrap()
    });
}

#[test]
fn reduction_gradients() {
    let mut r = rng(9);
    let mask = Tensor::from_f32(vec![1., 0., 1., 1., 0., 0., 1., 0.], &[2, 4]).unwrap();
    check(
        "masked_mean",
        vec![randn(&mut r, &[2, 4, 3])],
        &[0],
        move |t, v| t.masked_mean(v[0], &mask).unwrap(),
    );
    let ins = vec![randn(&mut r, &[3, 5]), randn(&mut r, &[3, 5])];
    check("cosine", ins, &[0, 1], |t, v| t.cosine(v[0], v[1]).unwrap());
}

#[test]
fn loss_gradients() {
    let mut r = rng(10);
    let labels = Tensor::from_i32(vec![2, 0, 3], &[3]).unwrap();
    check(
        "cross_entropy",
        vec![randn(&mut r, &[3, 4])],
        &[0],
        move |t, v| t.cross_entropy(v[0], &labels).unwrap(),
    );
    let targets = Tensor::from_f32(vec![1., 0., 0., 1., 1., 0.], &[2, 3]).unwrap();
    check("bce", vec![randn(&mut r, &[2, 3])], &[0], move |t, v| {
        t.bce_with_logits(v[0], &targets).unwrap()
    });
    let target = randn(&mut r, &[3, 4]);
    let tc = target.clone();
    check(
        "kl_categorical",
        vec![randn(&mut r, &[3, 4])],
        &[0],
        move |t, v| t.kl_categorical(&tc, v[0]).unwrap(),
    );
    let target = randn(&mut r, &[2, 3]);
    check(
        "kl_bernoulli",
        vec![randn(&mut r, &[2, 3])],
        &[0],
        move |t, v| t.kl_bernoulli(&target, v[0]).unwrap(),
    );
}

#[test]
fn deep_chain_through_frozen_block() {
    // A pre-LN block with a trainable head: gradient flows through frozen linears, attention,
    // LayerNorm, GELU and residuals to the input.
    let mut r = rng(11);
    let d = 4;
    let ws: Vec<Tensor> = (0..6).map(|_| randn(&mut r, &[d, d])).collect();
    let (lw, lb) = (randn(&mut r, &[d]), randn(&mut r, &[d]));
    let mask = Tensor::from_f32(vec![1., 1., 0.], &[1, 3]).unwrap();
    check(
        "block",
        vec![randn(&mut r, &[1, 3, d]), randn(&mut r, &[2, d])],
        &[0, 1],
        move |t, v| {
            let h = t.layernorm(v[0], &lw, &lb, 1e-5).unwrap();
            let (q, k, vv) = (
                t.linear(h, &ws[0], None).unwrap(),
                t.linear(h, &ws[1], None).unwrap(),
                t.linear(h, &ws[2], None).unwrap(),
            );
            let a = t.attention(q, k, vv, &mask, 2).unwrap();
            let o = t.linear(a, &ws[3], None).unwrap();
            let x = t.add(v[0], o).unwrap();
            let f = t.linear(x, &ws[4], None).unwrap();
            let f = t.unary(Unary::Gelu, f).unwrap();
            let f = t.linear(f, &ws[5], None).unwrap();
            let x = t.add(x, f).unwrap();
            t.linear_param(x, v[1], None).unwrap()
        },
    );
}
