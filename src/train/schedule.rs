//! The learning-rate schedule of docs/method.md#optimisation: linear warm-up over the first 10% of
//! a task's steps, then cosine annealing to zero; restarted for every task.

/// The learning rate of (0-based) `step` of `total` steps.
pub fn cosine_with_warmup(base_lr: f32, step: usize, total: usize, warmup_frac: f32) -> f32 {
    let total = total.max(1);
    let warmup = ((total as f32 * warmup_frac).ceil() as usize).min(total);
    if step < warmup {
        return base_lr * (step + 1) as f32 / warmup as f32;
    }
    let span = (total - warmup).max(1) as f32;
    let progress = ((step - warmup) as f32 / span).min(1.0);
    0.5 * base_lr * (1.0 + (std::f32::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::cosine_with_warmup;

    #[test]
    fn warms_up_then_anneals() {
        let lr = |s| cosine_with_warmup(1.0, s, 100, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-6, "first warm-up step");
        assert!(
            (lr(9) - 1.0).abs() < 1e-6,
            "end of warm-up reaches the base rate"
        );
        assert!(
            (lr(10) - 1.0).abs() < 1e-6,
            "cosine starts at the base rate"
        );
        assert!((lr(55) - 0.5).abs() < 1e-2, "half-way through the cosine");
        assert!(lr(99) < 1e-3, "ends near zero");
        assert!(
            (1..100).all(|s| s < 10 || lr(s) <= lr(s - 1)),
            "monotone after warm-up"
        );
    }
}
