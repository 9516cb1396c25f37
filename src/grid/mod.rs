//! `delo grid` and `delo table`: the paper's tables of results (2–6) as one resumable grid of
//! ordinary `delo train` runs, spread over devices or handed to Slurm, and collected back into
//! the paper's layout beside its published numbers.
//!
//! A grid folder holds `grid.json` (this [`Grid`]: data, model, tables, selection, the extra
//! `delo train` flags), one run directory per setting (named by [`Setting::name`]), and
//! `logs/` (each run's output, `NAME.log`, and `NAME.failed` when its last attempt failed).
//! The same [`expand::layout`] gives the runs and the tables' shape.

pub mod expand;
pub mod paper;
pub mod runner;
pub mod slurm;
pub mod status;
pub mod table;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{Benchmark, LabelKind};
use crate::error::{Error, Result};
pub use expand::{Method, Selection, Setting, TableId};

/// The grid's description inside its folder.
pub const MANIFEST_FILE: &str = "grid.json";
/// Run logs and failure notes inside the grid folder.
pub const LOGS_DIR: &str = "logs";

/// `delo train` flags that the grid sets itself (per setting, or per device), so an extra
/// flag may not set them again.
const RESERVED_FLAGS: [&str; 12] = [
    "--data",
    "--model",
    "--out",
    "--resume",
    "--device",
    "--missing",
    "--variant",
    "--experts",
    "--rank",
    "--lambda-align",
    "--lambda-con",
    "--no-cross-modal-guide",
];

/// Extra `delo train` flags that a resumed run takes as well (they do not change results).
const RESUME_FLAGS: [&str; 1] = ["--loader-threads"];

/// A grid: which tables and settings, on which benchmark and model, with which extra
/// `delo train` flags (the same for every run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub data: PathBuf,
    pub model: PathBuf,
    pub tables: Vec<TableId>,
    pub selection: Selection,
    pub train_flags: Vec<String>,
}

impl Grid {
    /// Checks the selection and that `train_flags` leave the grid's own flags alone.
    pub fn new(
        data: PathBuf,
        model: PathBuf,
        tables: Vec<TableId>,
        selection: Selection,
        train_flags: Vec<String>,
    ) -> Result<Grid> {
        let bad = |m: String| Err(Error::Msg(m));
        if tables.is_empty() {
            return bad("--table: no table given".into());
        }
        if let Some(e) = selection.etas.iter().find(|&&e| e == 0 || e > 100) {
            return bad(format!(
                "--etas: η = {e}%; expected a percentage in 1..=100"
            ));
        }
        if selection.etas.is_empty() || selection.types.is_empty() || selection.methods.is_empty() {
            return bad("--etas, --types and --methods need at least one value each".into());
        }
        for f in &train_flags {
            let name = f.split('=').next().unwrap_or(f);
            if RESERVED_FLAGS.contains(&name) {
                return bad(format!(
                    "delo train flag {name} after `--`: the grid sets it for every run itself \
                     (--data, --model, --out and --devices of `delo grid`, or the table's \
                     settings)"
                ));
            }
        }
        let grid = Grid {
            data,
            model,
            tables,
            selection,
            train_flags,
        };
        if grid.settings().is_empty() {
            return bad("the selection holds no run".into());
        }
        Ok(grid)
    }

    /// Every run of the grid, each once, in table order.
    pub fn settings(&self) -> Vec<Setting> {
        expand::settings(&self.tables, &self.selection)
    }

    /// The `delo train` arguments of a new run of `s` into `out`, on `device`.
    pub fn train_args(&self, out: &Path, s: &Setting, device: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["train".into(), "--data".into()];
        a.push(self.data.clone().into());
        a.push("--model".into());
        a.push(self.model.clone().into());
        a.push("--out".into());
        a.push(out.join(s.name()).into());
        a.extend(s.train_flags().into_iter().map(OsString::from));
        a.extend(self.train_flags.iter().map(OsString::from));
        a.extend(["--device".into(), device.into()]);
        a
    }

    /// The `delo train --resume` arguments of `s`'s interrupted run: the device and the extra
    /// flags that do not change results, nothing else (the run keeps its recorded settings).
    pub fn resume_args(&self, out: &Path, s: &Setting, device: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["train".into(), "--resume".into()];
        a.push(out.join(s.name()).into());
        a.extend(["--device".into(), device.into()]);
        let mut flags = self.train_flags.iter();
        while let Some(f) = flags.next() {
            let name = f.split('=').next().unwrap_or(f);
            if RESUME_FLAGS.contains(&name) {
                a.push(f.into());
                if !f.contains('=') {
                    a.extend(flags.next().map(OsString::from));
                }
            }
        }
        a
    }

    /// Reads the grid of folder `out`.
    pub fn load(out: &Path) -> Result<Grid> {
        let path = out.join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(Error::format(
                out,
                format!("no {MANIFEST_FILE}: not a folder written by `delo grid`"),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("unreadable: {e}")))
    }

    /// Records this grid in `out` (created if needed). A grid already there must have the same
    /// benchmark, model and extra flags, so that every run of the folder is comparable; the
    /// tables and selection become this grid's (the ones `delo table` shows).
    pub fn save(&self, out: &Path) -> Result<()> {
        if out.join(MANIFEST_FILE).is_file() {
            let old = Grid::load(out)?;
            let same_path = |a: &Path, b: &Path| {
                a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
            };
            let mut diffs = Vec::new();
            if !same_path(&old.data, &self.data) {
                diffs.push(format!("--data {}", old.data.display()));
            }
            if !same_path(&old.model, &self.model) {
                diffs.push(format!("--model {}", old.model.display()));
            }
            if old.train_flags != self.train_flags {
                diffs.push(format!("the flags after `--`: {:?}", old.train_flags));
            }
            if !diffs.is_empty() {
                return Err(Error::format(
                    out.join(MANIFEST_FILE),
                    format!(
                        "this grid folder was made with {}; run with the same, or choose \
                         another --out",
                        diffs.join(", ")
                    ),
                ));
            }
        }
        std::fs::create_dir_all(out.join(LOGS_DIR)).map_err(|e| Error::io(out, e))?;
        let text = serde_json::to_string_pretty(self).expect("a grid serialises");
        crate::st::write_atomic(&out.join(MANIFEST_FILE), text.as_bytes())
    }

    /// The arguments of `delo grid` that run this grid into `out` on `devices` (what each
    /// Slurm array job runs, with `--index`).
    pub fn grid_args(&self, out: &Path, devices: &str) -> Vec<OsString> {
        let list = |v: Vec<String>| OsString::from(v.join(","));
        let s = &self.selection;
        let mut a: Vec<OsString> = vec!["grid".into(), "--data".into()];
        a.push(self.data.clone().into());
        a.push("--model".into());
        a.push(self.model.clone().into());
        a.push("--out".into());
        a.push(out.into());
        a.push("--table".into());
        a.push(list(
            self.tables.iter().map(|t| t.number().to_string()).collect(),
        ));
        a.push("--etas".into());
        a.push(list(s.etas.iter().map(u32::to_string).collect()));
        a.push("--types".into());
        a.push(list(
            s.types.iter().map(|k| k.as_str().to_string()).collect(),
        ));
        a.push("--methods".into());
        a.push(list(
            s.methods.iter().map(|m| m.slug().to_string()).collect(),
        ));
        a.extend(["--devices".into(), devices.into()]);
        a
    }
}

/// The tables of a `--table` value: numbers separated by commas, or `all` (Tables 4–6 and
/// the main table of the benchmark's kind: 2 for single-label as UPMC-Food101, 3 for
/// multi-label as MM-IMDb, read from `data`).
pub fn parse_tables(spec: &str, data: &Path) -> Result<Vec<TableId>> {
    if spec.trim() == "all" {
        let main = match Benchmark::load(data)?.kind {
            LabelKind::Single => TableId::T2,
            LabelKind::Multi => TableId::T3,
        };
        return Ok(vec![main, TableId::T4, TableId::T5, TableId::T6]);
    }
    let mut tables = Vec::new();
    for part in spec.split(',') {
        let n: u8 = part.trim().parse().map_err(|_| {
            Error::Msg(format!(
                "--table {spec}: expected table numbers (2, 3, 4, 5, 6, comma-separated) or all"
            ))
        })?;
        let t = TableId::try_from(n)?;
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    Ok(tables)
}
