//! Run directories: `run.json` (data, model, settings), one `task{t}.safetensors` per finished
//! task (its trainable tensors and task key) and `progress.json` (tasks done, keys, per-task
//! statistics and evaluations). Every file is written atomically, the task's tensors before the
//! progress that names them, so an interrupted run resumes from its last finished task.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::report::SkippedImage;
use crate::tensor::Tensor;
use crate::train::eval::TaskRow;
use crate::train::{FrozenTask, RunSpec, TaskKeys, TaskStats, Trainer};

pub const RUN_FILE: &str = "run.json";
pub const PROGRESS_FILE: &str = "progress.json";
/// Name of the task key in a task file (`key.layer{l}` for per-layer tables); the keys are
/// restored from the progress file, these copies are for users.
const KEY: &str = "key";

#[derive(Serialize, Deserialize)]
struct Progress {
    tasks_done: usize,
    /// One table, or one per encoder layer (`--task-key layer`).
    keys: Vec<TaskKeys>,
    stats: Vec<TaskStats>,
    evals: Vec<TaskRow>,
    /// Images left out so far (`--skip-bad`), so that a resumed run still reports them.
    #[serde(default)]
    skipped: Vec<SkippedImage>,
}

fn task_file(t: usize) -> String {
    format!("task{t}.safetensors")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("unreadable: {e}")))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::format(path, e.to_string()))?;
    crate::st::write_atomic(path, text.as_bytes())
}

pub fn write_run(dir: &Path, spec: &RunSpec) -> Result<()> {
    write_json(&dir.join(RUN_FILE), spec)
}

pub fn read_run(dir: &Path) -> Result<RunSpec> {
    let path = dir.join(RUN_FILE);
    if !path.is_file() {
        return Err(Error::format(
            dir,
            format!("no {RUN_FILE}: not a delo run directory"),
        ));
    }
    read_json(&path)
}

/// Writes task `t`'s tensors and key, then the progress that counts it.
pub fn save_task(tr: &Trainer, t: usize) -> Result<()> {
    let mut tensors = tr.tasks[t].params.clone();
    let layered = tr.keys.len() > 1;
    for (l, table) in tr.keys.iter().enumerate() {
        let key = &table.keys[t];
        let name = if layered {
            format!("{KEY}.layer{l}")
        } else {
            KEY.into()
        };
        tensors.push((name, Tensor::from_f32(key.clone(), &[key.len()])?));
    }
    crate::st::write_file(&tr.run_dir.join(task_file(t)), &tensors, None)?;
    let progress = Progress {
        tasks_done: t + 1,
        keys: tr.keys.clone(),
        stats: tr.stats.clone(),
        evals: tr.evals.clone(),
        skipped: tr.skipped_images(),
    };
    write_json(&tr.run_dir.join(PROGRESS_FILE), &progress)
}

/// Restores the finished tasks of a run directory into `tr`.
pub fn restore(tr: &mut Trainer) -> Result<()> {
    let path = tr.run_dir.join(PROGRESS_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let p: Progress = read_json(&path)?;
    if p.keys.len() != tr.key_tables() && p.tasks_done > 0 {
        return Err(Error::format(
            &path,
            format!(
                "holds {} task-key tables; this run's --task-key needs {}",
                p.keys.len(),
                tr.key_tables()
            ),
        ));
    }
    if p.keys.iter().any(|k| k.keys.len() < p.tasks_done)
        || p.stats.len() < p.tasks_done
        || p.evals.len() < p.tasks_done
    {
        return Err(Error::format(
            &path,
            format!(
                "records {} finished tasks but not their keys, statistics and evaluations",
                p.tasks_done
            ),
        ));
    }
    for t in 0..p.tasks_done {
        let file = tr.run_dir.join(task_file(t));
        let tensors = crate::st::read_file(&file)?;
        let params = tensors
            .into_iter()
            .filter(|(n, _)| n != KEY && !n.starts_with(&format!("{KEY}.")))
            .map(|(n, v)| Ok((n, v.to_device(&tr.device)?)))
            .collect::<Result<Vec<_>>>()?;
        tr.tasks.push(FrozenTask { params });
    }
    tr.keys = p
        .keys
        .iter()
        .map(|k| TaskKeys {
            keys: k.keys[..p.tasks_done].to_vec(),
        })
        .collect();
    tr.stats = p.stats[..p.tasks_done].to_vec();
    tr.evals = p.evals[..p.tasks_done].to_vec();
    for s in p.skipped {
        tr.record_skipped(s);
    }
    Ok(())
}
