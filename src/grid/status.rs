//! Where each run of a grid stands, read from its directory: finished (with its test AP, FG
//! and task-id accuracy), stopped part-way, failed at its last attempt, not started, or a run
//! of another setting.

use std::path::{Path, PathBuf};

use crate::data::Split;
use crate::error::{Error, Result};
use crate::grid::{Grid, Setting, LOGS_DIR};
use crate::report::{Metric, Results, RESULTS_FILE};
use crate::train::checkpoint::{read_run, RUN_FILE};

/// The state of one setting's run.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    /// Every task trained and evaluated: the test split's summaries (percent) and the run's
    /// `results.json`.
    Finished {
        metric: Metric,
        ap: Option<f64>,
        fg: Option<f64>,
        task_id: Option<f64>,
        tasks: usize,
    },
    /// Started, stopped after `done` tasks (of `total`, when known) and resumable.
    Incomplete { done: usize, total: Option<usize> },
    /// The last attempt failed: why (the exit status and the run's last error line).
    Failed(String),
    /// Not started.
    Missing,
    /// The directory holds a run of other settings, or one the grid cannot read.
    Foreign(String),
}

/// Run directory of `s` in grid folder `out`.
pub fn run_dir(out: &Path, s: &Setting) -> PathBuf {
    out.join(s.name())
}

/// The failure note of `s`'s last attempt.
pub fn failure_file(out: &Path, s: &Setting) -> PathBuf {
    out.join(LOGS_DIR).join(format!("{}.failed", s.name()))
}

/// The output of `s`'s attempts.
pub fn log_file(out: &Path, s: &Setting) -> PathBuf {
    out.join(LOGS_DIR).join(format!("{}.log", s.name()))
}

/// Reads where `s`'s run in `out` stands.
pub fn run_status(grid: &Grid, out: &Path, s: &Setting) -> RunStatus {
    let dir = run_dir(out, s);
    let has_run = dir.join(RUN_FILE).is_file();
    if has_run {
        if let Err(why) = check_spec(grid, &dir, s) {
            return RunStatus::Foreign(why);
        }
        if let Some(st) = finished(&dir) {
            return st;
        }
    }
    if let Ok(why) = std::fs::read_to_string(failure_file(out, s)) {
        return RunStatus::Failed(why.trim().to_string());
    }
    if !has_run {
        return RunStatus::Missing;
    }
    match Results::load(&dir.join(RESULTS_FILE)) {
        Ok(r) => RunStatus::Incomplete {
            done: r.split(Split::Test).map_or(0, |s| s.tasks_evaluated),
            total: Some(r.num_tasks),
        },
        Err(_) => RunStatus::Incomplete {
            done: 0,
            total: None,
        },
    }
}

/// The finished status of the run in `dir`, if it finished.
fn finished(dir: &Path) -> Option<RunStatus> {
    let r = Results::load(&dir.join(RESULTS_FILE)).ok()?;
    let test = r.split(Split::Test).ok()?;
    (test.tasks_evaluated == r.num_tasks).then_some(RunStatus::Finished {
        metric: r.metric,
        ap: test.ap,
        fg: test.fg,
        task_id: test.ap_task_id,
        tasks: r.num_tasks,
    })
}

/// Whether the run in `dir` is `s` on the grid's benchmark and model.
fn check_spec(grid: &Grid, dir: &Path, s: &Setting) -> std::result::Result<(), String> {
    let spec = read_run(dir).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    if spec.data != grid.data {
        diffs.push(format!("data {}", spec.data.display()));
    }
    if spec.model != grid.model {
        diffs.push(format!("model {}", spec.model.display()));
    }
    if let Err(d) = s.check_run(&spec.settings) {
        diffs.push(d);
    }
    match diffs.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "{} holds another run ({}); move it away to run {}",
            dir.display(),
            diffs.join(", "),
            s.name()
        )),
    }
}

/// Records why `s`'s attempt failed (read by [`run_status`] until the next attempt).
pub fn note_failure(out: &Path, s: &Setting, why: &str) -> Result<()> {
    let path = failure_file(out, s);
    crate::st::write_atomic(&path, format!("{why}\n").as_bytes())
}

/// Clears `s`'s failure note before a new attempt.
pub fn clear_failure(out: &Path, s: &Setting) -> Result<()> {
    let path = failure_file(out, s);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
        _ => Ok(()),
    }
}
