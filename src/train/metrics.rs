//! Training curves: every step's loss terms, learning rate and throughput, on the progress
//! line and appended to `metrics.jsonl` in the run directory (one JSON object per line).
//!
//! The values come from the device one step late, through the same [`ScalarQueue`] as the
//! progress line (see `step.rs`): a step never waits for its own kernels. A resumed run starts
//! at a checkpoint (a task boundary or a step within a task), so opening the log for step s of
//! task t drops every line written after it (by a run killed later in task t) and the file
//! keeps exactly one line per step the run's state holds.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::train::step::{ScalarQueue, StepLosses};
use crate::train::Event;

/// File name of the per-step log inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`: one optimiser step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The task, 0-based (as in `results.json`).
    pub task: usize,
    /// The step within the task, 1-based (as on the progress line).
    pub step: usize,
    /// The epoch within the task, 1-based.
    pub epoch: usize,
    /// L = L_c + λ_align·L_align + λ_con·L_con (eq. 10).
    pub loss: f32,
    /// Classification loss L_c.
    pub l_c: f32,
    /// Alignment loss L_align; 0 when not computed (λ_align = 0 or no complete sample).
    pub l_align: f32,
    /// Consistency loss L_con; 0 when not computed (λ_con = 0 or no complete sample).
    pub l_con: f32,
    /// The step's learning rate (after warm-up and cosine decay).
    pub lr: f32,
    /// Training samples per second of wall time since the task started.
    pub samples_per_second: f64,
}

/// Reads `metrics.jsonl` of a run directory (no file: no steps). A last line without its
/// newline (a write cut short by a kill) is left out; any other unreadable line is an error
/// naming the file and line.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<StepMetrics>> {
    let path = run_dir.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::format(
                    &path,
                    format!(
                        "line {}: expected one step's metrics as a JSON object ({e})",
                        i + 1
                    ),
                )
            })
        })
        .collect()
}

/// `metrics.jsonl` open for appending the steps of one task.
pub struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsFile {
    /// Opens the log of `run_dir` to append task `task`'s steps after its first `done` steps
    /// (0 for a task that starts afresh), first dropping the lines of later steps and tasks
    /// (left by a run killed after them).
    pub fn open(run_dir: &Path, task: usize, done: usize) -> Result<MetricsFile> {
        let path = run_dir.join(METRICS_FILE);
        let steps = read_metrics(run_dir)?;
        let kept: Vec<&StepMetrics> = steps
            .iter()
            .filter(|m| m.task < task || (m.task == task && m.step <= done))
            .collect();
        if path.exists() {
            let mut text = String::new();
            for m in kept {
                text += &line(m, &path)?;
            }
            crate::st::write_atomic(&path, text.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsFile { path, file })
    }

    /// Appends one step as one line, written whole at once so that a reader (or a kill) never
    /// sees half of it before the newline.
    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let l = line(m, &self.path)?;
        self.file
            .write_all(l.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Puts the lines appended so far on disk (before a checkpoint that counts them).
    fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

fn line(m: &StepMetrics, path: &Path) -> Result<String> {
    let mut l = serde_json::to_string(m).map_err(|e| Error::format(path, e.to_string()))?;
    l.push('\n');
    Ok(l)
}

/// What the trainer knows about a step when it queues its losses.
struct QueuedStep {
    /// 0-based step and epoch of the task.
    step: usize,
    epoch: usize,
    lr: f32,
    /// Samples trained on up to and including this step.
    samples: usize,
    /// Seconds since the task started when the step was queued.
    seconds: f64,
    /// Which optional terms were queued after L and L_c.
    has_align: bool,
    has_con: bool,
}

/// The losses of one task's steps on their way to the progress line and `metrics.jsonl`,
/// read back one step late.
pub struct StepLog {
    queue: ScalarQueue,
    steps: VecDeque<QueuedStep>,
    file: MetricsFile,
    run_dir: PathBuf,
    task: usize,
    total: usize,
    /// When the task started.
    pub started: Instant,
    /// The latest loss shown.
    pub last: f32,
}

/// Scalars queued per step: L, L_c, L_align, L_con.
const TERMS: usize = 4;

impl StepLog {
    /// The log of task `task` (`total` steps) of the run in `run_dir`, on `device`, from
    /// step `done` on: 0, or the steps of a checkpoint taken `seconds` into the task.
    pub fn new(
        device: &Device,
        run_dir: &Path,
        task: usize,
        total: usize,
        (done, seconds): (usize, f64),
    ) -> Result<StepLog> {
        let now = Instant::now();
        Ok(StepLog {
            // Two steps' terms: the one the device runs and the one read back meanwhile.
            queue: ScalarQueue::new(device, 2, TERMS)?,
            steps: VecDeque::new(),
            file: MetricsFile::open(run_dir, task, done)?,
            run_dir: run_dir.to_path_buf(),
            task,
            total,
            // A resumed task's throughput counts the time before the checkpoint too.
            started: now
                .checked_sub(std::time::Duration::from_secs_f64(seconds.max(0.0)))
                .unwrap_or(now),
            last: f32::NAN,
        })
    }

    /// Queues the step's loss terms and reports the previous step's: one step late, as
    /// [`ScalarQueue::push_late`] does for a single value, but for the step's whole group of
    /// terms. `step`, `epoch` are 0-based.
    pub fn push(
        &mut self,
        step: usize,
        epoch: usize,
        lr: f32,
        samples: usize,
        losses: &StepLosses,
        log: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let mut group = vec![&losses.total, &losses.c];
        group.extend([&losses.align, &losses.con].into_iter().flatten());
        self.queue.push(&group)?;
        self.steps.push_back(QueuedStep {
            step,
            epoch,
            lr,
            samples,
            seconds: self.started.elapsed().as_secs_f64(),
            has_align: losses.align.is_some(),
            has_con: losses.con.is_some(),
        });
        if self.steps.len() > 1 {
            self.show_oldest(log)?;
        }
        Ok(())
    }

    /// Reports every step still queued (waiting for the device), so that `metrics.jsonl` holds
    /// every step taken, on disk, and each of their losses is known to be finite.
    pub fn flush(&mut self, log: &mut dyn FnMut(Event)) -> Result<()> {
        while !self.steps.is_empty() {
            self.show_oldest(log)?;
        }
        self.file.sync()
    }

    /// Reports every step still queued; returns the last step's loss.
    pub fn finish(mut self, log: &mut dyn FnMut(Event)) -> Result<f32> {
        self.flush(log)?;
        Ok(self.last)
    }

    /// Reads the oldest step's terms, stops the run if its loss is not finite, and reports it.
    fn show_oldest(&mut self, log: &mut dyn FnMut(Event)) -> Result<()> {
        let Some(q) = self.steps.pop_front() else {
            return Err(Error::Msg("a loss read back for no queued step".into()));
        };
        let terms = self
            .queue
            .pop()?
            .ok_or_else(|| Error::Msg("a step's loss terms were not queued".into()))?;
        let mut terms = terms.into_iter();
        let mut next = || {
            terms
                .next()
                .ok_or_else(|| Error::Msg("a step's loss terms were cut short".into()))
        };
        let (loss, l_c) = (next()?, next()?);
        let l_align = if q.has_align { next()? } else { 0.0 };
        let l_con = if q.has_con { next()? } else { 0.0 };
        let task = self.task;
        if !loss.is_finite() {
            return Err(Error::Numeric(format!(
                "the loss of task {task} became {loss} at step {} (epoch {}); stopping. {} \
                 To go on with a lower learning rate: `delo train --resume {} --override-lr \
                 LR`; or check the data",
                q.step + 1,
                q.epoch + 1,
                crate::train::saved_tasks_note(task, &self.run_dir),
                self.run_dir.display()
            )));
        }
        self.last = loss;
        let samples_per_second = q.samples as f64 / q.seconds.max(f64::MIN_POSITIVE);
        self.file.append(&StepMetrics {
            task,
            step: q.step + 1,
            epoch: q.epoch + 1,
            loss,
            l_c,
            l_align,
            l_con,
            lr: q.lr,
            samples_per_second,
        })?;
        log(Event::Step {
            task,
            step: q.step + 1,
            total: self.total,
            loss,
            lr: q.lr,
            samples_per_second,
        });
        Ok(())
    }
}
