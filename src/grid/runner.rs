//! Runs a grid's settings as child `delo train` processes, one per device at a time: a
//! finished run is skipped, an interrupted one resumed (`delo train --resume`), a new one
//! started; a run that fails is reported and noted (`logs/NAME.failed`) and the others go on.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::grid::status::{self, RunStatus};
use crate::grid::{Grid, Setting};
use crate::train::checkpoint::RUN_FILE;

/// What became of one setting.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Already finished: nothing run.
    Skipped,
    /// Trained from the start.
    Trained,
    /// Continued from its last finished task.
    Resumed,
    /// Failed (or cannot run): why.
    Failed(String),
}

/// Runs `settings` of `grid` into folder `out` with the `delo` executable `exe`, one child
/// process per device of `devices` at a time (a device listed twice runs two at once);
/// `report` gets one line per start and end. Returns each setting's outcome, in `settings`'
/// order.
pub fn run(
    grid: &Grid,
    out: &Path,
    settings: &[Setting],
    devices: &[String],
    exe: &Path,
    report: &(dyn Fn(&str) + Sync),
) -> Vec<(Setting, Outcome)> {
    let queue = Mutex::new(settings.iter().enumerate().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for device in devices {
            let (queue, done) = (&queue, &done);
            scope.spawn(move || loop {
                let Some((i, s)) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let outcome = run_one(grid, out, s, device, exe, report).unwrap_or_else(|e| {
                    let why = e.to_string();
                    report(&format!("[{device}] {}: FAILED: {why}", s.name()));
                    Outcome::Failed(why)
                });
                done.lock().expect("results").push((i, (*s, outcome)));
            });
        }
    });
    let mut done = done.into_inner().expect("results");
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Brings one setting's run to its end on `device`.
fn run_one(
    grid: &Grid,
    out: &Path,
    s: &Setting,
    device: &str,
    exe: &Path,
    report: &(dyn Fn(&str) + Sync),
) -> Result<Outcome> {
    let name = s.name();
    match status::run_status(grid, out, s) {
        RunStatus::Finished { .. } => {
            report(&format!("[{device}] {name}: finished before, skipped"));
            return Ok(Outcome::Skipped);
        }
        RunStatus::Foreign(why) => return Err(Error::Msg(why)),
        RunStatus::Missing | RunStatus::Incomplete { .. } | RunStatus::Failed(_) => {}
    }
    // A failed attempt may have stopped before its run directory held a run.
    let started_before = status::run_dir(out, s).join(RUN_FILE).is_file();
    let (args, outcome, what) = match started_before {
        true => (
            grid.resume_args(out, s, device),
            Outcome::Resumed,
            "resuming",
        ),
        false => (
            grid.train_args(out, s, device),
            Outcome::Trained,
            "training",
        ),
    };
    status::clear_failure(out, s)?;
    let log_path = status::log_file(out, s);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let command_line = std::iter::once(exe.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    writeln!(log, "$ {command_line}").map_err(|e| Error::io(&log_path, e))?;
    let err_log = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn()
        .map_err(|e| Error::io(exe, e))?;
    report(&format!(
        "[{device}] {name}: {what} (pid {}, log {})",
        child.id(),
        log_path.display()
    ));
    let exit = child.wait().map_err(|e| Error::io(exe, e))?;
    let secs = started.elapsed().as_secs_f64();
    if exit.success() {
        report(&format!("[{device}] {name}: finished in {secs:.0} s"));
        return Ok(outcome);
    }
    let why = format!(
        "delo train {exit} after {secs:.0} s: {} (log {})",
        last_error_line(&log_path),
        log_path.display()
    );
    status::note_failure(out, s, &why)?;
    report(&format!("[{device}] {name}: FAILED: {why}"));
    Ok(Outcome::Failed(why))
}

/// The last line that says `error` (what `delo` prints on failure) of the log's last attempt
/// (after its last `$ command` line), else that attempt's last line; `no output` when none.
fn last_error_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let attempt = lines
        .iter()
        .rposition(|l| l.starts_with("$ "))
        .map_or(0, |i| i + 1);
    let lines = &lines[attempt..];
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error"))
        .or(lines.last())
        .map_or_else(|| "no output".to_string(), |l| l.to_string())
}
