//! A run's results: the matrices of every evaluation so far, AP/FG, per-task statistics, the
//! probes of the final evaluation and the loss curves of `metrics.jsonl`, written as
//! results.json, report.md and plots.

use crate::data::{LabelKind, Split};
use crate::error::Result;
use crate::report::{FactorSide, LossCurve, LossPoint, Metric, Results, TaskStats as ReportStats};
use crate::train::eval::Probes;
use crate::train::metrics::StepMetrics;
use crate::train::Trainer;

/// The display name of a variant in reports.
pub fn method_name(tr: &Trainer) -> String {
    tr.settings().delo.variant.display_name().into()
}

/// Results of every task finished so far (a partial run gives a partial lower triangle).
pub fn build(tr: &Trainer, probes: Option<&Probes>) -> Result<Results> {
    let metric = match tr.bench.kind {
        LabelKind::Single => Metric::Accuracy,
        LabelKind::Multi => Metric::F1Macro,
    };
    let config = serde_json::json!({
        "data": tr.spec.data,
        "model": tr.spec.model,
        "benchmark": tr.bench.name,
        "settings": tr.spec.settings,
        "backbone": tr.vilt.cfg,
    });
    let mut r = Results::new(metric, tr.bench.num_tasks(), config);
    for (t, row) in tr.evals.iter().enumerate() {
        for (split, cells) in [(Split::Val, &row.val), (Split::Test, &row.test)] {
            for (j, c) in cells.iter().enumerate() {
                match c.empty {
                    true => r.set_no_samples(split, t, j)?,
                    false => r.set_entry(split, t, j, c.metric, c.task_id)?,
                }
            }
        }
    }
    for (t, s) in tr.stats.iter().enumerate() {
        let stats = ReportStats {
            wall_seconds: s.wall_seconds,
            train_samples_per_second: s.train_samples_per_second,
            epochs: s.epochs,
            steps: s.steps as u64,
            final_loss: s.final_loss as f64,
        };
        r.set_task_stats(t, stats)?;
    }
    r.loss_curves = loss_curves(&crate::train::metrics::read_metrics(&tr.run_dir)?);
    r.skipped_images = tr.skipped_images();
    r.resumes = tr.spec.resumes.clone();
    if let Some(p) = probes {
        for (side, map) in [
            (FactorSide::A, &p.selection_a),
            (FactorSide::B, &p.selection_b),
        ] {
            for (pool, counts) in map {
                r.add_selection_counts(side, pool, counts)?;
            }
        }
        r.add_cos_samples(&p.cos_qv_qt)?;
    }
    Ok(r)
}

/// The steps of `metrics.jsonl` as one loss curve per task, in task order.
fn loss_curves(steps: &[StepMetrics]) -> Vec<LossCurve> {
    let mut curves: Vec<LossCurve> = Vec::new();
    for m in steps {
        if curves.last().is_none_or(|c| c.task != m.task) {
            curves.push(LossCurve {
                task: m.task,
                points: Vec::new(),
            });
        }
        let curve = curves.last_mut().expect("just pushed");
        curve.points.push(LossPoint {
            step: m.step as u64,
            loss: m.loss as f64,
            l_c: m.l_c as f64,
            l_align: m.l_align as f64,
            l_con: m.l_con as f64,
        });
    }
    curves
}

/// Writes results.json, report.md and the plots into the run directory.
pub fn write(tr: &Trainer, probes: Option<&Probes>) -> Result<Results> {
    let mut r = build(tr, probes)?;
    if tr.evals.len() == tr.bench.num_tasks() {
        r.finalize()?;
    }
    let missing = crate::report::missing_label(&tr.missing);
    crate::report::write_all(&r, &tr.run_dir, &method_name(tr), &missing)?;
    Ok(r)
}
