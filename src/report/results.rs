//! `results.json`: everything a run measured, in one versioned serde document.
//!
//! Shape (tasks are 0-based in the file, 1-based in the human report):
//! ```json
//! { "version": 1, "metric": "accuracy" | "f1_macro", "num_tasks": T,
//!   "config": { ...resolved config, filled by the trainer... },
//!   "val":  { "matrix": [[a00, null, ...], ...], "task_id_matrix": [[...]],
//!             "tasks_evaluated": t, "ap": f|null, "fg": f|null, "ap_task_id": f|null,
//!             "no_samples": [[t, j], ...] },
//!   "test": { ...same... },
//!   "tasks": [ {"wall_seconds", "train_samples_per_second", "epochs", "steps",
//!               "final_loss"} | null, ... ],
//!   "selection_frequency": { "a": {"layer3.q.v": [counts per factor]}, "b": {...} },
//!   "cos_qv_qt": [ ... ],
//!   "skipped_images": [ {"item", "task", "split", "path", "error"}, ... ],
//!   "resumes": [ {"at", "task", "step", "checkpoint", "changes"}, ... ] }
//! ```
//! A cell listed in `no_samples` was evaluated on no sample at all (every image of the task's
//! split was skipped with `--skip-bad`): it is `null` in both matrices, since a metric over
//! nothing is undefined (0 would read as a real result), and AP/FG leave it out.
//! `matrix[t][j]` is a_{j,t}, the metric on task `j` after training task `t`; `null` above the
//! diagonal and where not evaluated yet. AP, FG and task-id AP are derived from the matrices
//! over the leading `tasks_evaluated` complete rows: every change to a matrix recomputes them,
//! and [`Results::load`] rejects a file whose stored summaries disagree with its matrices.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::{LabelKind, Split};
use crate::error::{Error, Result};
use crate::report::metrics::{average_performance, forgetting};

/// Version of the `results.json` layout; bump when a field changes meaning.
pub const RESULTS_VERSION: u32 = 1;

/// Tolerance when checking stored summaries against recomputed ones: serde_json round-trips
/// f64 exactly, so this only absorbs hand-edited files printed with fewer digits.
const SUMMARY_TOLERANCE: f64 = 1e-6;

/// The per-task metric of a benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Single-label: top-1 accuracy, in percent.
    Accuracy,
    /// Multi-label: F1-macro over the task's own classes, in percent.
    F1Macro,
}

impl Metric {
    /// The metric docs/data.md#metrics prescribes for a label kind.
    pub fn for_labels(kind: LabelKind) -> Metric {
        match kind {
            LabelKind::Single => Metric::Accuracy,
            LabelKind::Multi => Metric::F1Macro,
        }
    }

    /// `accuracy` or `f1_macro`, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1Macro => "f1_macro",
        }
    }

    /// Human name for reports and plot titles.
    pub fn display_name(self) -> &'static str {
        match self {
            Metric::Accuracy => "Accuracy (%)",
            Metric::F1Macro => "F1-macro (%)",
        }
    }
}

/// The matrices and summaries of one evaluation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitResults {
    /// `T × T`, `matrix[t][j]` = metric (percent) on task `j` after training task `t`.
    pub matrix: Vec<Vec<Option<f64>>>,
    /// Same shape: task-id accuracy (percent) of the Task-Key memory on task `j`'s samples.
    pub task_id_matrix: Vec<Vec<Option<f64>>>,
    /// How many leading rows are complete (on and below the diagonal); AP/FG are over these.
    pub tasks_evaluated: usize,
    /// AP = (1/t) Σ_j a_{j,t} over the complete rows; `null` before the first.
    pub ap: Option<f64>,
    /// FG (paper eq. 11) over the complete rows; `null` before the first.
    pub fg: Option<f64>,
    /// AP of the task-id matrix: mean task-id accuracy after the last complete row.
    pub ap_task_id: Option<f64>,
    /// Cells `[t, j]` evaluated on no sample (all skipped): `null` in both matrices, yet
    /// complete; AP and FG leave them out.
    #[serde(default)]
    pub no_samples: Vec<[usize; 2]>,
}

impl SplitResults {
    fn new(num_tasks: usize) -> Self {
        SplitResults {
            matrix: vec![vec![None; num_tasks]; num_tasks],
            task_id_matrix: vec![vec![None; num_tasks]; num_tasks],
            tasks_evaluated: 0,
            ap: None,
            fg: None,
            ap_task_id: None,
            no_samples: Vec::new(),
        }
    }

    /// Whether cell `[t, j]` was evaluated on no sample.
    pub fn is_empty_cell(&self, t: usize, j: usize) -> bool {
        self.no_samples.contains(&[t, j])
    }

    /// Number of leading rows whose entries `0..=t` are all present in both matrices (or
    /// evaluated on no sample).
    fn complete_rows(&self) -> usize {
        let full = |m: &[Vec<Option<f64>>], t: usize| {
            (0..=t).all(|j| m[t][j].is_some() || self.is_empty_cell(t, j))
        };
        (0..self.matrix.len())
            .take_while(|&t| full(&self.matrix, t) && full(&self.task_id_matrix, t))
            .count()
    }

    /// The summaries the matrices imply.
    fn summaries(&self) -> Result<Summaries> {
        let t = self.complete_rows();
        if t == 0 {
            return Ok(Summaries::default());
        }
        let m = &self.matrix[..t];
        let ti = &self.task_id_matrix[..t];
        if !self.no_samples.is_empty() {
            return Ok(Summaries {
                tasks_evaluated: t,
                ap: mean_of_last_row(m),
                fg: forgetting_of_present(m),
                ap_task_id: mean_of_last_row(ti),
            });
        }
        Ok(Summaries {
            tasks_evaluated: t,
            ap: Some(average_performance(m)?),
            fg: Some(forgetting(m)?),
            ap_task_id: Some(average_performance(ti)?),
        })
    }

    fn recompute(&mut self) -> Result<()> {
        let s = self.summaries()?;
        self.tasks_evaluated = s.tasks_evaluated;
        self.ap = s.ap;
        self.fg = s.fg;
        self.ap_task_id = s.ap_task_id;
        Ok(())
    }
}

/// AP over the cells of the last row that hold a value (cells without samples are `None`);
/// `None` when no cell does.
fn mean_of_last_row(m: &[Vec<Option<f64>>]) -> Option<f64> {
    let last = m.last()?;
    let values: Vec<f64> = last[..m.len()].iter().flatten().copied().collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// FG (paper eq. 11) over the tasks whose last entry and at least one earlier entry hold a
/// value; 0 for one task, `None` when no task qualifies.
fn forgetting_of_present(m: &[Vec<Option<f64>>]) -> Option<f64> {
    let t = m.len();
    if t == 1 {
        return Some(0.0);
    }
    let drops: Vec<f64> = (0..t - 1)
        .filter_map(|j| {
            let last = m[t - 1][j]?;
            (j..t - 1)
                .filter_map(|z| m[z][j])
                .map(|v| v - last)
                .reduce(f64::max)
        })
        .collect();
    (!drops.is_empty()).then(|| drops.iter().sum::<f64>() / drops.len() as f64)
}

/// One image left out of a run with `--skip-bad`, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedImage {
    /// The item's index in the benchmark JSON.
    pub item: usize,
    pub task: usize,
    /// `train`, `val` or `test`.
    pub split: String,
    /// The image file.
    pub path: String,
    /// Why it could not be read.
    pub error: String,
}

/// One `delo train --resume` of a run: when, and where the run went on from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// When the resumed run started, UTC, RFC 3339 (`2026-12-06T14:05:00Z`).
    pub at: String,
    /// The task (0-based) and the steps of it already done when the run went on.
    pub task: usize,
    pub step: usize,
    /// The mid-task checkpoint it went on from (a file of `checkpoints/`); `None`: the task's
    /// start.
    pub checkpoint: Option<String>,
    /// Settings changed with the resume, as `name: stored → given` (e.g. the device, or the
    /// learning rate with `--override-lr`).
    pub changes: Vec<String>,
}

/// The derived fields of a [`SplitResults`], computed from its matrices.
#[derive(Debug, Default)]
struct Summaries {
    tasks_evaluated: usize,
    ap: Option<f64>,
    fg: Option<f64>,
    ap_task_id: Option<f64>,
}

/// Training statistics of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStats {
    /// Wall time of the task's training (data loading included), seconds.
    pub wall_seconds: f64,
    /// Training samples processed per second of wall time.
    pub train_samples_per_second: f64,
    /// Epochs run.
    pub epochs: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Loss of the last step (or last-epoch mean, as the trainer documents).
    pub final_loss: f64,
}

/// One training step's loss terms (eq. 9–10) on a [`LossCurve`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossPoint {
    /// The step within its task, 1-based.
    pub step: u64,
    /// L = L_c + λ_align·L_align + λ_con·L_con.
    pub loss: f64,
    pub l_c: f64,
    /// 0 where the step did not compute it.
    pub l_align: f64,
    /// 0 where the step did not compute it.
    pub l_con: f64,
}

/// The loss terms of every step of one task, in step order (from the run's `metrics.jsonl`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossCurve {
    /// The task, 0-based.
    pub task: usize,
    pub points: Vec<LossPoint>,
}

/// Which side of a low-rank factor pool a selection count belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactorSide {
    /// The A pool (input projections, selected by router A).
    A,
    /// The B pool (output projections, selected by router B + compatibility term).
    B,
}

/// How often each factor of each pool was selected (paper Fig. 5), per side:
/// `a["layer3.q.v"][e]` = number of times factor `e` of that A pool was among the top-r.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SelectionFrequency {
    /// Counts for the A pools, keyed by pool name (`layer{l}.{target}.{v|t}`).
    pub a: BTreeMap<String, Vec<u64>>,
    /// Counts for the B pools, same keys.
    pub b: BTreeMap<String, Vec<u64>>,
}

impl SelectionFrequency {
    /// True when no pool has been recorded on either side.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty() && self.b.is_empty()
    }

    /// The map of one side.
    pub fn side(&self, side: FactorSide) -> &BTreeMap<String, Vec<u64>> {
        match side {
            FactorSide::A => &self.a,
            FactorSide::B => &self.b,
        }
    }
}

/// Everything a run writes to `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Layout version, [`RESULTS_VERSION`] when written by this build.
    pub version: u32,
    /// The per-task metric.
    pub metric: Metric,
    /// Number of tasks T of the benchmark.
    pub num_tasks: usize,
    /// The resolved configuration of the run, as the trainer chooses to describe it.
    pub config: serde_json::Value,
    /// Validation split.
    pub val: SplitResults,
    /// Test split.
    pub test: SplitResults,
    /// Per-task training statistics, `null` for tasks not trained yet.
    pub tasks: Vec<Option<TaskStats>>,
    /// Factor selection counts (empty for variants without routed pools).
    pub selection_frequency: SelectionFrequency,
    /// Samples of cos(q_v, q_t) on complete samples (paper Fig. 4b); may be empty.
    pub cos_qv_qt: Vec<f32>,
    /// Per-step loss curves of the trained tasks, for the report's plots. Not stored in
    /// `results.json`: `metrics.jsonl` beside it is their record.
    #[serde(skip)]
    pub loss_curves: Vec<LossCurve>,
    /// Images left out with `--skip-bad`, each once, in item order.
    #[serde(default)]
    pub skipped_images: Vec<SkippedImage>,
    /// Each resume of the run, in order.
    #[serde(default)]
    pub resumes: Vec<Resume>,
}

/// Checks a percentage before it enters a matrix: a NaN would serialise as `null` and read
/// back as "not evaluated", and values above 100 are a unit mistake. (A fraction in [0, 1] is
/// also a valid percentage and cannot be caught here: callers pass percent.)
fn check_percent(what: &str, v: f64) -> Result<()> {
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        return Err(Error::Msg(format!(
            "{what} = {v} is not a percentage in [0, 100]"
        )));
    }
    Ok(())
}

impl Results {
    /// Empty results for a benchmark of `num_tasks` tasks: every matrix entry `null`.
    pub fn new(metric: Metric, num_tasks: usize, config: serde_json::Value) -> Results {
        Results {
            version: RESULTS_VERSION,
            metric,
            num_tasks,
            config,
            val: SplitResults::new(num_tasks),
            test: SplitResults::new(num_tasks),
            tasks: vec![None; num_tasks],
            selection_frequency: SelectionFrequency::default(),
            cos_qv_qt: Vec::new(),
            loss_curves: Vec::new(),
            skipped_images: Vec::new(),
            resumes: Vec::new(),
        }
    }

    /// The results of `split` (`Val` or `Test`; `Train` is never evaluated).
    pub fn split(&self, split: Split) -> Result<&SplitResults> {
        match split {
            Split::Val => Ok(&self.val),
            Split::Test => Ok(&self.test),
            Split::Train => Err(Error::Msg(
                "results hold only the val and test splits, not train".into(),
            )),
        }
    }

    fn split_mut(&mut self, split: Split) -> Result<&mut SplitResults> {
        match split {
            Split::Val => Ok(&mut self.val),
            Split::Test => Ok(&mut self.test),
            Split::Train => Err(Error::Msg(
                "results hold only the val and test splits, not train".into(),
            )),
        }
    }

    /// Records a_{task, after_task} (percent) and the task-id accuracy (percent) of `task`'s
    /// `split` samples after training `after_task`, then recomputes that split's AP/FG.
    /// Errors for `task > after_task` (the future is never evaluated), indices `≥ T`, or a
    /// value that is not a finite percentage.
    pub fn set_entry(
        &mut self,
        split: Split,
        after_task: usize,
        task: usize,
        value: f64,
        task_id_acc: f64,
    ) -> Result<()> {
        let t = self.num_tasks;
        if after_task >= t || task > after_task {
            return Err(Error::Msg(format!(
                "results entry (after task {after_task}, task {task}) is outside the lower \
                 triangle of a {t} × {t} matrix"
            )));
        }
        check_percent(
            &format!("{} a[{after_task}][{task}]", split.as_str()),
            value,
        )?;
        check_percent(
            &format!("{} task-id accuracy [{after_task}][{task}]", split.as_str()),
            task_id_acc,
        )?;
        let s = self.split_mut(split)?;
        s.matrix[after_task][task] = Some(value);
        s.task_id_matrix[after_task][task] = Some(task_id_acc);
        s.recompute()
    }

    /// Records that `task`'s `split` had no sample to evaluate after training `after_task`
    /// (all its images skipped): the cell stays `null` in both matrices, counts as evaluated,
    /// and AP/FG leave it out.
    pub fn set_no_samples(&mut self, split: Split, after_task: usize, task: usize) -> Result<()> {
        let t = self.num_tasks;
        if after_task >= t || task > after_task {
            return Err(Error::Msg(format!(
                "results entry (after task {after_task}, task {task}) is outside the lower \
                 triangle of a {t} × {t} matrix"
            )));
        }
        let s = self.split_mut(split)?;
        s.matrix[after_task][task] = None;
        s.task_id_matrix[after_task][task] = None;
        if !s.is_empty_cell(after_task, task) {
            s.no_samples.push([after_task, task]);
        }
        s.recompute()
    }

    /// Records the training statistics of `task`.
    pub fn set_task_stats(&mut self, task: usize, stats: TaskStats) -> Result<()> {
        if task >= self.num_tasks {
            return Err(Error::Msg(format!(
                "task {task} out of range for {} tasks",
                self.num_tasks
            )));
        }
        // Non-finite numbers would serialise as `null` and fail to load.
        for (name, v) in [
            ("wall_seconds", stats.wall_seconds),
            ("train_samples_per_second", stats.train_samples_per_second),
            ("final_loss", stats.final_loss),
        ] {
            if !v.is_finite() {
                return Err(Error::Numeric(format!("task {task}: {name} = {v}")));
            }
        }
        self.tasks[task] = Some(stats);
        Ok(())
    }

    /// Adds selection counts of one pool (element-wise, so counts from several batches or
    /// evaluation passes accumulate). Errors when the pool was recorded with another size.
    pub fn add_selection_counts(
        &mut self,
        side: FactorSide,
        pool: &str,
        counts: &[u64],
    ) -> Result<()> {
        let map = match side {
            FactorSide::A => &mut self.selection_frequency.a,
            FactorSide::B => &mut self.selection_frequency.b,
        };
        let entry = map
            .entry(pool.to_string())
            .or_insert_with(|| vec![0; counts.len()]);
        if entry.len() != counts.len() {
            return Err(Error::Msg(format!(
                "pool {pool}: {} factor counts given, {} recorded before",
                counts.len(),
                entry.len()
            )));
        }
        for (e, c) in entry.iter_mut().zip(counts) {
            *e += c;
        }
        Ok(())
    }

    /// Appends samples of cos(q_v, q_t); errors on a non-finite value (it could not be
    /// stored in JSON).
    pub fn add_cos_samples(&mut self, samples: &[f32]) -> Result<()> {
        if let Some(bad) = samples.iter().find(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!("cos(q_v, q_t) sample {bad}")));
        }
        self.cos_qv_qt.extend_from_slice(samples);
        Ok(())
    }

    /// Ends a run: checks that every entry on and below the diagonal of all four matrices is
    /// present and recomputes AP, FG and task-id AP over all T tasks. Errors naming the first
    /// missing entry.
    pub fn finalize(&mut self) -> Result<()> {
        for (name, s) in [("val", &self.val), ("test", &self.test)] {
            for (mname, m) in [("matrix", &s.matrix), ("task_id_matrix", &s.task_id_matrix)] {
                for (t, row) in m.iter().enumerate() {
                    if let Some(j) = (0..=t).find(|&j| row[j].is_none() && !s.is_empty_cell(t, j)) {
                        return Err(Error::Msg(format!(
                            "cannot finalise results: {name} {mname} has no entry for task {j} \
                             after task {t}"
                        )));
                    }
                }
            }
        }
        self.val.recompute()?;
        self.test.recompute()
    }

    /// Serialises to pretty JSON and writes `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::format(path, format!("serialising results: {e}")))?;
        text.push('\n');
        crate::st::write_atomic(path, text.as_bytes())
    }

    /// Reads and validates a `results.json`: version, matrix shapes, `null` above the
    /// diagonal, percentages in range, and AP/FG consistent with the matrices.
    pub fn load(path: &Path) -> Result<Results> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let r: Results = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a valid results.json: {e}")))?;
        r.validate().map_err(|msg| Error::format(path, msg))?;
        Ok(r)
    }

    /// The consistency rules [`Results::load`] enforces, as a message naming the first
    /// violation.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.version == 0 || self.version > RESULTS_VERSION {
            return Err(format!(
                "results version {} is not supported (this build reads 1..={RESULTS_VERSION})",
                self.version
            ));
        }
        let t = self.num_tasks;
        if self.tasks.len() != t {
            return Err(format!("{} task entries for {t} tasks", self.tasks.len()));
        }
        for (name, s) in [("val", &self.val), ("test", &self.test)] {
            for (mname, m) in [("matrix", &s.matrix), ("task_id_matrix", &s.task_id_matrix)] {
                if m.len() != t || m.iter().any(|row| row.len() != t) {
                    return Err(format!("{name}.{mname} is not {t} × {t}"));
                }
                for (i, row) in m.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        match v {
                            Some(_) if j > i => {
                                return Err(format!(
                                    "{name}.{mname}[{i}][{j}] is above the diagonal and must \
                                     be null"
                                ))
                            }
                            Some(v) => check_percent(&format!("{name}.{mname}[{i}][{j}]"), *v)
                                .map_err(|e| e.to_string())?,
                            None => {}
                        }
                    }
                }
            }
            for &[i, j] in &s.no_samples {
                let present = s
                    .matrix
                    .get(i)
                    .and_then(|r| r.get(j))
                    .is_some_and(Option::is_some)
                    || s.task_id_matrix
                        .get(i)
                        .and_then(|r| r.get(j))
                        .is_some_and(Option::is_some);
                if i >= t || j > i || present {
                    return Err(format!(
                        "{name}.no_samples lists [{i}, {j}], which is not a null cell on or \
                         below the diagonal"
                    ));
                }
            }
            let Summaries {
                tasks_evaluated: te,
                ap,
                fg,
                ap_task_id: apt,
            } = s.summaries().map_err(|e| e.to_string())?;
            let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= SUMMARY_TOLERANCE * (1.0 + b.abs()),
                (None, None) => true,
                _ => false,
            };
            if s.tasks_evaluated != te
                || !close(s.ap, ap)
                || !close(s.fg, fg)
                || !close(s.ap_task_id, apt)
            {
                return Err(format!(
                    "{name}: stored summaries (tasks_evaluated {}, ap {:?}, fg {:?}, ap_task_id \
                     {:?}) disagree with the matrices (tasks_evaluated {te}, ap {ap:?}, fg \
                     {fg:?}, ap_task_id {apt:?})",
                    s.tasks_evaluated, s.ap, s.fg, s.ap_task_id
                ));
            }
        }
        Ok(())
    }
}
