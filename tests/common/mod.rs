//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use delo::Tensor;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A host f32 tensor of uniform values in [-1, 1).
pub fn randn(r: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect(),
        shape,
    )
    .unwrap()
}

/// Asserts `|a - b| <= atol + rtol·|b|` elementwise, naming the first offending element.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], atol: f32, rtol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs() && x.is_finite() == y.is_finite(),
            "{what}: element {i}: got {x}, expected {y} (atol {atol}, rtol {rtol})"
        );
    }
}
