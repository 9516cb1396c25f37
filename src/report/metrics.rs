//! Placeholder module replaced by the report branch.

/// F1-macro in percent from per-class counts.
pub fn f1_macro_from_counts(tp: &[u64], fp: &[u64], fn_: &[u64]) -> f64 {
    let n = tp.len().max(1) as f64;
    100.0
        * (0..tp.len())
            .map(|c| {
                let d = 2 * tp[c] + fp[c] + fn_[c];
                if d == 0 {
                    0.0
                } else {
                    2.0 * tp[c] as f64 / d as f64
                }
            })
            .sum::<f64>()
        / n
}
