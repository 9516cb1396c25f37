//! Run outputs (docs/data.md#run-outputs): the metrics, `results.json`, the human `report.md`
//! and hand-written SVG plots.
//!
//! The trainer's path through it:
//! 1. [`Results::new`] once, with the metric ([`Metric::for_labels`]), T and the resolved
//!    config;
//! 2. after every task t, for every evaluated task j ≤ t and split:
//!    [`Results::set_entry`] with the value from [`metrics::top1_accuracy`] or
//!    [`metrics::f1_macro`] and the task-id accuracy; [`Results::set_task_stats`];
//!    optionally [`Results::add_selection_counts`] and [`Results::add_cos_samples`], and
//!    the per-step [`LossCurve`]s in [`Results::loss_curves`];
//!    [`write_all`] (AP/FG always match the matrices, so partial runs report honestly);
//! 3. at the end [`Results::finalize`] (errors on a missing entry) and [`write_all`].

pub mod markdown;
pub mod metrics;
pub mod results;
pub mod svg;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use markdown::{missing_label, render_report, render_summary_table, write_report, SummaryRow};
pub use metrics::{
    argmax, average_performance, f1_macro, f1_macro_from_logits, forgetting, predict_multi_hot,
    top1_accuracy, MultiLabelCounts,
};
pub use results::{
    FactorSide, LossCurve, LossPoint, Metric, Results, Resume, SelectionFrequency, SkippedImage,
    SplitResults, TaskStats, RESULTS_VERSION,
};
pub use svg::{plot_files, write_plots, PlotFile};

/// File name of the machine-readable results inside a run directory.
pub const RESULTS_FILE: &str = "results.json";

/// Writes `results.json`, `report.md` and the plots into `dir` (created if needed), each file
/// atomically; returns every path written. `method` and `missing` label the summary row.
pub fn write_all(
    results: &Results,
    dir: &Path,
    method: &str,
    missing: &str,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = dir.join(RESULTS_FILE);
    results.save(&json)?;
    let mut written = vec![json];
    written.extend(write_plots(results, dir)?);
    written.push(write_report(results, dir, method, missing)?);
    Ok(written)
}
