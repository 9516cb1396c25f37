//! The CMML metrics of docs/data.md#metrics: per-task top-1 accuracy and F1-macro (both in
//! percent), and the run summaries AP and FG computed from an accuracy matrix.
//!
//! Matrices are indexed `matrix[t][j]` = a_{j,t}: row `t` is "after training task `t`",
//! column `j` is "evaluated on task `j`", 0-based; entries above the diagonal are `None`.

use crate::error::{Error, Result};

/// Top-1 accuracy in percent: `100 · |{i : predicted_i = target_i}| / N`.
///
/// Task-agnostic evaluation passes the prediction of the routed head mapped to global class
/// ids, so a sample routed to the wrong task can never match its target. Task-id accuracy is
/// the same function applied to predicted and true task ids.
/// Errors when the lengths differ or there are no samples (a metric over nothing is undefined,
/// and a silent 0 would read as a real result).
pub fn top1_accuracy(predicted: &[usize], targets: &[usize]) -> Result<f64> {
    if predicted.len() != targets.len() {
        return Err(Error::Msg(format!(
            "top1_accuracy: {} predictions for {} targets",
            predicted.len(),
            targets.len()
        )));
    }
    if targets.is_empty() {
        return Err(Error::Msg("top1_accuracy: no samples".into()));
    }
    let correct = predicted
        .iter()
        .zip(targets)
        .filter(|(p, t)| p == t)
        .count();
    Ok(100.0 * correct as f64 / targets.len() as f64)
}

/// Index of the largest value, the first one on ties (what `torch.argmax` returns on CPU).
/// NaNs never win; a row of only NaNs predicts class 0 so that every sample gets a defined
/// (and almost surely wrong) prediction. `None` for an empty slice.
pub fn argmax(values: &[f32]) -> Option<usize> {
    if values.is_empty() {
        return None;
    }
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    Some(best)
}

/// Multi-label decision rule: class `c` is predicted when `sigmoid(logit_c) > 0.5`, which is
/// exactly `logit_c > 0` (and avoids rounding in `exp` near 0).
pub fn predict_multi_hot(logits: &[f32]) -> Vec<bool> {
    logits.iter().map(|&z| z > 0.0).collect()
}

/// Per-class confusion counts for multi-label F1, accumulated batch by batch so the trainer
/// never has to keep every logit of a split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiLabelCounts {
    /// True positives per class.
    pub tp: Vec<u64>,
    /// False positives per class.
    pub fp: Vec<u64>,
    /// False negatives per class.
    pub fn_: Vec<u64>,
}

impl MultiLabelCounts {
    /// Zero counts for `num_classes` classes (a task's own classes).
    pub fn new(num_classes: usize) -> Self {
        MultiLabelCounts {
            tp: vec![0; num_classes],
            fp: vec![0; num_classes],
            fn_: vec![0; num_classes],
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.tp.len()
    }

    /// Adds one sample: its predicted and true multi-hot rows over the task's classes.
    pub fn add(&mut self, predicted: &[bool], target: &[bool]) -> Result<()> {
        let c = self.num_classes();
        if predicted.len() != c || target.len() != c {
            return Err(Error::Msg(format!(
                "F1 counts over {c} classes got a prediction of {} and a target of {} entries",
                predicted.len(),
                target.len()
            )));
        }
        for k in 0..c {
            match (predicted[k], target[k]) {
                (true, true) => self.tp[k] += 1,
                (true, false) => self.fp[k] += 1,
                (false, true) => self.fn_[k] += 1,
                (false, false) => {}
            }
        }
        Ok(())
    }

    /// Per-class F1 in percent: `F1_c = 2·TP_c / (2·TP_c + FP_c + FN_c)`.
    ///
    /// Conventions (torchmetrics' `zero_division = 0`, multilabel): a class with no positives
    /// and no predictions (0/0) scores 0; a class with no positives but some predictions has
    /// TP = 0 and so scores 0 as well.
    pub fn f1_per_class(&self) -> Vec<f64> {
        (0..self.num_classes())
            .map(|k| {
                let den = 2 * self.tp[k] + self.fp[k] + self.fn_[k];
                if den == 0 {
                    0.0
                } else {
                    100.0 * (2 * self.tp[k]) as f64 / den as f64
                }
            })
            .collect()
    }

    /// F1-macro in percent: `(1/C) Σ_c F1_c` over all `C` classes of the task, the classes
    /// without positives included (they score 0, see [`Self::f1_per_class`]).
    /// Errors for a task with no classes.
    pub fn f1_macro(&self) -> Result<f64> {
        let c = self.num_classes();
        if c == 0 {
            return Err(Error::Msg("f1_macro: no classes".into()));
        }
        Ok(self.f1_per_class().iter().sum::<f64>() / c as f64)
    }
}

/// F1-macro in percent over a task's `num_classes` classes,
/// `(1/C) Σ_c 2·TP_c / (2·TP_c + FP_c + FN_c)`, from row-major `N × C` multi-hot predictions
/// and targets. A class with no positives scores 0 whether or not it was predicted
/// (torchmetrics' convention); see [`MultiLabelCounts::f1_per_class`].
pub fn f1_macro(predicted: &[bool], targets: &[bool], num_classes: usize) -> Result<f64> {
    if num_classes == 0 {
        return Err(Error::Msg("f1_macro: no classes".into()));
    }
    if predicted.len() != targets.len() || !targets.len().is_multiple_of(num_classes) {
        return Err(Error::Msg(format!(
            "f1_macro: {} predictions and {} targets are not both N × {num_classes}",
            predicted.len(),
            targets.len()
        )));
    }
    let mut counts = MultiLabelCounts::new(num_classes);
    for (p, t) in predicted
        .chunks_exact(num_classes)
        .zip(targets.chunks_exact(num_classes))
    {
        counts.add(p, t)?;
    }
    counts.f1_macro()
}

/// [`f1_macro`] from row-major `N × C` logits (predicted when `logit > 0`, i.e.
/// `sigmoid(logit) > 0.5`) and 0/1 targets as stored in [`crate::data::Label::Multi`].
pub fn f1_macro_from_logits(logits: &[f32], targets: &[u8], num_classes: usize) -> Result<f64> {
    let predicted = predict_multi_hot(logits);
    let targets: Vec<bool> = targets.iter().map(|&t| t != 0).collect();
    f1_macro(&predicted, &targets, num_classes)
}

/// The entry a_{j,t} = `matrix[t][j]`, or an error naming the missing cell.
fn entry(matrix: &[Vec<Option<f64>>], t: usize, j: usize) -> Result<f64> {
    matrix
        .get(t)
        .and_then(|row| row.get(j).copied().flatten())
        .ok_or_else(|| {
            Error::Msg(format!(
                "matrix entry (after task {t}, task {j}) is missing; AP/FG need every entry on \
                 and below the diagonal"
            ))
        })
}

/// Average performance, `AP = (1/T) Σ_{j=1..T} a_{j,T}`: the mean of the last row of the
/// `T × T` lower-triangular matrix (`T = matrix.len()`, 0-based `matrix[T−1][j]`, j < T).
/// Errors for an empty matrix or a missing entry in the last row.
pub fn average_performance(matrix: &[Vec<Option<f64>>]) -> Result<f64> {
    let t = matrix.len();
    if t == 0 {
        return Err(Error::Msg("AP of an empty matrix".into()));
    }
    let mut sum = 0.0;
    for j in 0..t {
        sum += entry(matrix, t - 1, j)?;
    }
    Ok(sum / t as f64)
}

/// Forgetting, paper eq. (11):
/// `FG = (1/(T−1)) Σ_{j<T} max_{z∈{j..T−1}} (a_{j,z} − a_{j,T})`, 1-based.
/// 0-based with `matrix[z][j]` = a_{j,z}: for every task `j ≤ T−2`, the largest drop from any
/// row `z ∈ j..=T−2` (the rows before the last) to the last row `T−1`; then the mean over
/// those `T−1` tasks. No clamping: a task that only improved contributes a negative term, as
/// in the formula. For `T = 1` there is no earlier task and FG is defined as 0.
pub fn forgetting(matrix: &[Vec<Option<f64>>]) -> Result<f64> {
    let t = matrix.len();
    if t == 0 {
        return Err(Error::Msg("FG of an empty matrix".into()));
    }
    if t == 1 {
        return Ok(0.0);
    }
    let mut sum = 0.0;
    for j in 0..t - 1 {
        let last = entry(matrix, t - 1, j)?;
        let mut best = f64::NEG_INFINITY;
        for z in j..t - 1 {
            best = best.max(entry(matrix, z, j)? - last);
        }
        sum += best;
    }
    Ok(sum / (t - 1) as f64)
}
