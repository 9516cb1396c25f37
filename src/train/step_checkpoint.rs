//! Checkpoints inside a task (`checkpoints/task{t}-step{s}.safetensors` in the run directory),
//! taken every `--checkpoint-every` steps and/or seconds, so that a killed run loses at most
//! one interval of work instead of the whole task.
//!
//! A checkpoint holds everything the rest of the task depends on: the task's parameters,
//! AdamW's moments and step count, the running task keys, the loader's position (epoch and
//! next batch), the samples and wall time so far and the images skipped. There is no other
//! random state to keep: batch orders and missing tables are drawn afresh from (seed, epoch)
//! and (seed, task, split) by `data::rng`, and a step draws nothing. `metrics.jsonl` holds
//! exactly the checkpoint's steps when it is written (the loss queue is drained first), and a
//! resume drops the lines after them.
//!
//! Each file is a safetensors file (tensors `values`, `adam.m`, `adam.v`, `key.{l}`) whose
//! metadata entry [`STATE_KEY`] is the JSON [`StepState`], including a CRC-32 of the tensors'
//! bytes: a truncated file fails to parse, a corrupted one fails the checksum, and either is
//! named and passed over for the previous checkpoint. Writes are atomic
//! ([`crate::st::write_atomic`]); the newest [`KEEP`] checkpoints of the task are kept, and
//! all of a task's are removed once its task file is saved.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::ParamSnapshot;
use crate::report::SkippedImage;
use crate::tensor::Tensor;

/// The folder of mid-task checkpoints inside a run directory.
pub const DIR: &str = "checkpoints";
/// Mid-task checkpoints kept per task: the newest and one to fall back on.
pub const KEEP: usize = 2;
/// The metadata entry holding the [`StepState`].
pub const STATE_KEY: &str = "delo_step_checkpoint";
/// The layout version this build writes and reads.
const FORMAT: u32 = 1;

/// When to checkpoint inside a task: after every `steps` steps and/or once `seconds` have
/// passed since the last checkpoint, whichever comes first; neither: only at task ends.
/// Written and parsed as `200`, `5m`, `90s`, `200,5m` or `off`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckpointEvery {
    pub steps: Option<usize>,
    pub seconds: Option<f64>,
}

impl Default for CheckpointEvery {
    /// Every 5 minutes: a few seconds of writing at most per interval at ViLT-B/32 sizes.
    fn default() -> Self {
        CheckpointEvery {
            steps: None,
            seconds: Some(300.0),
        }
    }
}

impl CheckpointEvery {
    /// Whether a checkpoint is due `steps` steps and `elapsed` after the previous one.
    pub fn due(&self, steps: usize, elapsed: Duration) -> bool {
        self.steps.is_some_and(|n| steps >= n)
            || self.seconds.is_some_and(|s| elapsed.as_secs_f64() >= s)
    }
}

impl FromStr for CheckpointEvery {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        let bad = |part: &str| {
            Error::Msg(format!(
                "--checkpoint-every {text:?}: {part:?} is not a step count (200), a time (90s, \
                 5m, 1h) or `off`; give one or both, comma-separated (200,5m)"
            ))
        };
        let mut every = CheckpointEvery {
            steps: None,
            seconds: None,
        };
        if text.trim() == "off" {
            return Ok(every);
        }
        for part in text.split(',').map(str::trim) {
            let (number, unit) =
                part.split_at(part.find(|c: char| c.is_alphabetic()).unwrap_or(part.len()));
            let scale = match unit {
                "" => {
                    let n: usize = number.parse().map_err(|_| bad(part))?;
                    if n == 0 || every.steps.is_some() {
                        return Err(bad(part));
                    }
                    every.steps = Some(n);
                    continue;
                }
                "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad(part)),
            };
            let x: f64 = number.parse().map_err(|_| bad(part))?;
            if !(x > 0.0 && x.is_finite()) || every.seconds.is_some() {
                return Err(bad(part));
            }
            every.seconds = Some(x * scale);
        }
        Ok(every)
    }
}

impl fmt::Display for CheckpointEvery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .steps
            .map(|n| n.to_string())
            .into_iter()
            .chain(self.seconds.map(|s| format!("{s}s")))
            .collect();
        match parts.is_empty() {
            true => f.write_str("off"),
            false => f.write_str(&parts.join(",")),
        }
    }
}

impl Serialize for CheckpointEvery {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for CheckpointEvery {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where a task stands at a checkpoint (the file's [`STATE_KEY`] metadata).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub format: u32,
    /// The task, 0-based.
    pub task: usize,
    /// Steps taken in the task.
    pub step: usize,
    /// The loader's position: the epoch (0-based) and the number of the batch the next step
    /// takes (the loader's batch numbering, which counts wholly skipped batches).
    pub epoch: usize,
    pub next_batch: usize,
    /// Training samples seen in the task.
    pub samples: usize,
    /// Wall time spent on the task, in seconds.
    pub seconds: f64,
    /// Per key table, whether its running key exists (it does after the first step).
    pub keys: Vec<bool>,
    /// Images left out so far (`--skip-bad`), this task's included.
    pub skipped: Vec<SkippedImage>,
    /// CRC-32 of the tensors' bytes, in the order `values`, `adam.m`, `adam.v`, `key.{l}`.
    pub crc32: u32,
}

impl StepState {
    /// Task `task` before its first step.
    pub fn start(task: usize) -> StepState {
        StepState {
            format: FORMAT,
            task,
            step: 0,
            epoch: 0,
            next_batch: 0,
            samples: 0,
            seconds: 0.0,
            keys: Vec::new(),
            skipped: Vec::new(),
            crc32: 0,
        }
    }
}

/// A task's state at a checkpoint: where it stands, the optimiser state and the running keys
/// (host tensors `[d]`).
pub struct StepCheckpoint {
    /// The file it was read from (empty for one not read from a file).
    pub file: PathBuf,
    pub state: StepState,
    pub params: ParamSnapshot,
    pub keys: Vec<Option<Tensor>>,
}

fn file_name(task: usize, step: usize) -> String {
    format!("task{task}-step{step:08}.safetensors")
}

/// The (task, step) of a checkpoint file name.
fn parse_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("task")?.strip_suffix(".safetensors")?;
    let (task, step) = rest.split_once("-step")?;
    Some((task.parse().ok()?, step.parse().ok()?))
}

fn checksum(params: &ParamSnapshot, keys: &[Option<Tensor>]) -> Result<u32> {
    let mut h = crc32fast::Hasher::new();
    for v in [&params.values, &params.m, &params.v] {
        h.update(bytemuck::cast_slice(v));
    }
    for k in keys.iter().flatten() {
        h.update(bytemuck::cast_slice(&k.to_vec_f32()?));
    }
    Ok(h.finalize())
}

/// Writes a checkpoint of task `state.task` at step `state.step` into `run_dir` (the CRC is
/// filled in here), then removes that task's checkpoints older than the newest [`KEEP`].
/// Returns the file and its size in bytes. Errors name the file; the checkpoints written
/// before are left as they were.
pub fn save(run_dir: &Path, cp: &StepCheckpoint) -> Result<(PathBuf, u64)> {
    let dir = run_dir.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut state = cp.state.clone();
    state.format = FORMAT;
    state.keys = cp.keys.iter().map(Option::is_some).collect();
    state.crc32 = checksum(&cp.params, &cp.keys)?;
    let n = cp.params.values.len();
    let flat = |v: &Vec<f32>| Tensor::from_f32(v.clone(), &[n]);
    let mut tensors = vec![
        ("values".to_string(), flat(&cp.params.values)?),
        ("adam.m".to_string(), flat(&cp.params.m)?),
        ("adam.v".to_string(), flat(&cp.params.v)?),
    ];
    for (l, k) in cp.keys.iter().enumerate() {
        if let Some(k) = k {
            tensors.push((format!("key.{l}"), k.clone()));
        }
    }
    let path = dir.join(file_name(state.task, state.step));
    let meta = serde_json::to_string(&StateMeta {
        state: &state,
        adam_step: cp.params.step,
    })
    .map_err(|e| Error::format(&path, e.to_string()))?;
    crate::st::write_file(
        &path,
        &tensors,
        Some(HashMap::from([(STATE_KEY.into(), meta)])),
    )?;
    let size = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    for (_, old) in list(run_dir, state.task)?.into_iter().skip(KEEP) {
        std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok((path, size))
}

/// The metadata as written: the state and AdamW's step count.
#[derive(Serialize, Deserialize)]
struct StateMeta<S> {
    #[serde(flatten)]
    state: S,
    adam_step: u32,
}

/// Task `task`'s checkpoint files as (step, path), newest first.
pub fn list(run_dir: &Path, task: usize) -> Result<Vec<(usize, PathBuf)>> {
    let mut found: Vec<(usize, PathBuf)> = all(run_dir)?
        .into_iter()
        .filter(|(t, _, _)| *t == task)
        .map(|(_, s, p)| (s, p))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

/// Every checkpoint file of the run as (task, step, path).
fn all(run_dir: &Path) -> Result<Vec<(usize, usize, PathBuf)>> {
    let dir = run_dir.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((t, s)) = parse_name(&name) {
            out.push((t, s, entry.path()));
        }
    }
    Ok(out)
}

/// Reads and checks one checkpoint file; errors say what is wrong with it.
pub fn load(path: &Path) -> Result<StepCheckpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("truncated or corrupt: {e}")))?;
    let text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| {
            Error::format(
                path,
                format!("no `{STATE_KEY}` metadata: not a delo step checkpoint"),
            )
        })?;
    let StateMeta { state, adam_step }: StateMeta<StepState> = serde_json::from_str(text)
        .map_err(|e| Error::format(path, format!("unreadable `{STATE_KEY}` metadata: {e}")))?;
    if state.format != FORMAT {
        return Err(Error::format(
            path,
            format!(
                "checkpoint layout {} (this build reads {FORMAT})",
                state.format
            ),
        ));
    }
    let tensors = crate::st::read_file(path)?;
    let take = |name: &str| {
        tensors
            .get(name)
            .ok_or_else(|| Error::format(path, format!("no tensor `{name}`")))?
            .to_vec_f32()
            .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))
    };
    let params = ParamSnapshot {
        values: take("values")?,
        m: take("adam.m")?,
        v: take("adam.v")?,
        step: adam_step,
    };
    let keys = state
        .keys
        .iter()
        .enumerate()
        .map(|(l, &has)| match has {
            true => {
                let v = take(&format!("key.{l}"))?;
                let n = v.len();
                Tensor::from_f32(v, &[n]).map(Some)
            }
            false => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let crc = checksum(&params, &keys)?;
    if crc != state.crc32 {
        return Err(Error::format(
            path,
            format!(
                "checksum mismatch (stored {:08x}, computed {crc:08x}): the file is corrupt",
                state.crc32
            ),
        ));
    }
    Ok(StepCheckpoint {
        file: path.to_path_buf(),
        state,
        params,
        keys,
    })
}

/// The newest good checkpoint of task `task`, passing over (and reporting through `warn`)
/// each file that cannot be read; `None` when there is none. Checkpoints of earlier tasks
/// (left by a kill between a task's end and their removal) and temporary files of
/// interrupted writes are removed.
pub fn latest(
    run_dir: &Path,
    task: usize,
    warn: &mut dyn FnMut(&str),
) -> Result<Option<StepCheckpoint>> {
    clear(run_dir, task)?;
    for (_, path) in list(run_dir, task)? {
        match load(&path) {
            Ok(cp) if cp.state.task == task => return Ok(Some(cp)),
            Ok(cp) => warn(&format!(
                "skipping checkpoint {}: it holds task {}, not {task}",
                path.display(),
                cp.state.task
            )),
            Err(e) => warn(&format!(
                "skipping bad checkpoint {e}; falling back to the one before"
            )),
        }
    }
    Ok(None)
}

/// Removes the checkpoints of tasks before `task` and leftover temporary files.
pub fn clear(run_dir: &Path, task: usize) -> Result<()> {
    let dir = run_dir.join(DIR);
    for (t, _, path) in all(run_dir)? {
        if t < task {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_print_and_fall_due() {
        let e: CheckpointEvery = "200,5m".parse().unwrap();
        assert_eq!((e.steps, e.seconds), (Some(200), Some(300.0)));
        assert_eq!(e.to_string(), "200,300s");
        assert_eq!(e.to_string().parse::<CheckpointEvery>().unwrap(), e);
        assert_eq!("off".parse::<CheckpointEvery>().unwrap().to_string(), "off");
        assert_eq!(
            "90s".parse::<CheckpointEvery>().unwrap().seconds,
            Some(90.0)
        );
        for bad in ["0", "5x", "m", "-3s", "1,2", "", "5m,1h"] {
            assert!(bad.parse::<CheckpointEvery>().is_err(), "{bad:?} accepted");
        }
        assert!(e.due(200, Duration::ZERO) && !e.due(199, Duration::from_secs(299)));
        assert!(e.due(1, Duration::from_secs(300)));
        assert_eq!(parse_name(&file_name(3, 120)), Some((3, 120)));
        assert_eq!(parse_name("task3-step1.safetensors.tmp"), None);
    }
}
