//! `delo grid --slurm`: the grid as a Slurm job array, so a cluster's own scheduler runs it.
//! Array index N runs `delo grid … --index N` (the same command line for every index), which
//! trains, resumes or skips setting N exactly as a local `delo grid` would; the index file
//! lists each N with its run's name and full `delo train` command.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::grid::{Grid, LOGS_DIR};

/// The job script inside the grid folder.
pub const SCRIPT_FILE: &str = "grid.sbatch";
/// One line per setting: `index<TAB>name<TAB>delo train arguments` (shell-quoted).
pub const INDEX_FILE: &str = "grid-index.tsv";

/// Arguments as one shell-quoted line.
fn quote_line<'a>(args: impl IntoIterator<Item = &'a OsString>) -> Result<String> {
    let words = args
        .into_iter()
        .map(|a| {
            let s = a.to_str().ok_or_else(|| {
                Error::Msg(format!("{a:?}: a Slurm script needs UTF-8 paths and flags"))
            })?;
            shlex::try_quote(s)
                .map(|q| q.into_owned())
                .map_err(|e| Error::Msg(format!("{s:?} cannot be quoted for a shell: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(words.join(" "))
}

/// Writes the job script and the index file of `grid` into its folder `out` (which
/// [`Grid::save`] made); `exe` is the `delo` executable the jobs run, `device` what each job
/// trains on (`cuda`: one GPU per job, `--gres=gpu:1`). Returns (script, index).
pub fn write_slurm(
    grid: &Grid,
    out: &Path,
    exe: &Path,
    device: &str,
) -> Result<(PathBuf, PathBuf)> {
    let abs = |p: &Path| p.canonicalize().map_err(|e| Error::io(p, e));
    let (out_abs, exe_abs) = (abs(out)?, abs(exe)?);
    let logs = out_abs.join(LOGS_DIR);
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    for p in [&logs, &cwd] {
        if p.to_string_lossy().chars().any(char::is_whitespace) {
            return Err(Error::format(
                p,
                "holds a space: #SBATCH lines cannot quote paths; choose a folder without one",
            ));
        }
    }
    let settings = grid.settings();
    let mut index = String::new();
    for (i, s) in settings.iter().enumerate() {
        let line = quote_line(&grid.train_args(out, s, device))?;
        let _ = writeln!(index, "{i}\t{}\t{line}", s.name());
    }
    let index_path = out.join(INDEX_FILE);
    crate::st::write_atomic(&index_path, index.as_bytes())?;

    let mut command: Vec<OsString> = vec![exe_abs.into()];
    command.extend(grid.grid_args(out, device));
    let mut line = quote_line(&command)?;
    line.push_str(" --index \"$SLURM_ARRAY_TASK_ID\"");
    if !grid.train_flags.is_empty() {
        let extra: Vec<OsString> = grid.train_flags.iter().map(OsString::from).collect();
        line.push_str(" -- ");
        line.push_str(&quote_line(&extra)?);
    }
    let mut script = String::from("#!/bin/bash\n#SBATCH --job-name=delo-grid\n");
    let _ = writeln!(script, "#SBATCH --array=0-{}", settings.len() - 1);
    if device.starts_with("cuda") {
        script.push_str("#SBATCH --gres=gpu:1\n");
    }
    let _ = writeln!(script, "#SBATCH --chdir={}", cwd.display());
    let _ = writeln!(
        script,
        "#SBATCH --output={}/slurm-%A_%a.out",
        logs.display()
    );
    let _ = write!(
        script,
        "# delo grid as a job array: index N runs setting N of {index} (its name and its\n\
         # `delo train` command); a finished run is skipped, an interrupted one resumed, so the\n\
         # array can be submitted again after a failure or a time limit.\n\
         # Submit: sbatch {script_path}\n\
         # Cluster options go on the command line, e.g. sbatch --partition=gpu --time=24:00:00.\n\
         set -euo pipefail\n\
         exec {line}\n",
        index = index_path.display(),
        script_path = out.join(SCRIPT_FILE).display(),
    );
    let script_path = out.join(SCRIPT_FILE);
    crate::st::write_atomic(&script_path, script.as_bytes())?;
    Ok((script_path, index_path))
}
