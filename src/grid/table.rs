//! `delo table`: a grid folder's runs in the paper's layout (Tables 2–6), each measured cell
//! the test split's AP, FG and task-id accuracy of one run's `results.json`, beside the
//! paper's published AP and FG, marked as its claims. A run that is not finished shows its
//! state (missing, failed, stopped after k tasks), never a number. Markdown for reading, CSV
//! (one line per cell group, full precision) for scripts.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::grid::expand::{layout, Layout};
use crate::grid::paper::Claim;
use crate::grid::status::{run_status, RunStatus};
use crate::grid::{Grid, Setting};

/// The Markdown file `delo table` writes into the grid folder.
pub const MARKDOWN_FILE: &str = "tables.md";
/// The CSV file `delo table` writes into the grid folder.
pub const CSV_FILE: &str = "tables.csv";

/// A grid's tables with the state of every run.
pub struct Collected {
    pub grid: Grid,
    pub layouts: Vec<Layout>,
    /// `(setting, status)` of every run of the grid, in its order.
    pub runs: Vec<(Setting, RunStatus)>,
}

impl Collected {
    fn status(&self, s: &Setting) -> &RunStatus {
        &self
            .runs
            .iter()
            .find(|(x, _)| x == s)
            .expect("every setting of a layout is a run of the grid")
            .1
    }
}

/// Reads the grid of folder `out` and where each of its runs stands.
pub fn collect(out: &Path) -> Result<Collected> {
    let grid = Grid::load(out)?;
    let layouts = grid
        .tables
        .iter()
        .map(|&t| layout(t, &grid.selection))
        .collect();
    let runs = grid
        .settings()
        .into_iter()
        .map(|s| {
            let st = run_status(&grid, out, &s);
            (s, st)
        })
        .collect();
    Ok(Collected {
        grid,
        layouts,
        runs,
    })
}

/// A measured value with 2 decimals, as the paper prints them.
fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"))
}

/// The three Markdown cells (AP, FG, task-id) of a run.
fn run_cells(st: &RunStatus) -> [String; 3] {
    let dash = || "—".to_string();
    match st {
        RunStatus::Finished {
            ap, fg, task_id, ..
        } => [num(*ap), num(*fg), num(*task_id)],
        RunStatus::Incomplete { done, total } => [
            match total {
                Some(t) => format!("stopped {done}/{t} tasks"),
                None => "stopped".into(),
            },
            dash(),
            dash(),
        ],
        RunStatus::Failed(_) => ["failed".into(), dash(), dash()],
        RunStatus::Missing => ["missing".into(), dash(), dash()],
        RunStatus::Foreign(_) => ["other run".into(), dash(), dash()],
    }
}

/// The paper's two cells (AP, FG) of a claim, or `—` where it reports none.
fn claim_cells(c: Option<Claim>) -> [String; 2] {
    match c {
        Some(c) => [format!("{:.2}", c.ap), format!("{:.2}", c.fg)],
        None => ["—".into(), "—".into()],
    }
}

/// `group` and a column name, e.g. `DeLo AP ↑`, or the column name alone.
fn head(group: &str, col: &str) -> String {
    match group.is_empty() {
        true => col.to_string(),
        false => format!("{group} {col}"),
    }
}

/// The Markdown of every table of the grid, with notes on the runs that did not finish.
pub fn render_markdown(c: &Collected) -> String {
    let mut out = String::new();
    let metric = c.runs.iter().find_map(|(_, st)| match st {
        RunStatus::Finished { metric, .. } => Some(metric.display_name()),
        _ => None,
    });
    let _ = writeln!(
        out,
        "# DeLo paper tables: {}\n\nMeasured: the test split's AP, FG and task-id accuracy \
         (Task-Key memory, task-agnostic) of each run{}; benchmark `{}`, model `{}`{}.\n\
         Columns marked **(paper)** are the paper's published numbers: its claims, not \
         measured here.\n",
        c.layouts
            .iter()
            .map(|l| l.table.number().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        metric.map_or_else(String::new, |m| format!(", metric {m}")),
        c.grid.data.display(),
        c.grid.model.display(),
        match c.grid.train_flags.is_empty() {
            true => String::new(),
            false => format!(", every run with `{}`", c.grid.train_flags.join(" ")),
        }
    );
    for l in &c.layouts {
        let _ = writeln!(out, "## {}\n", l.title);
        let mut cols: Vec<String> = l.row_header.iter().map(|h| h.to_string()).collect();
        let mut align = vec!["---"; cols.len()];
        for g in &l.methods {
            cols.extend([head(g, "AP ↑"), head(g, "FG ↓"), head(g, "task-id ↑")]);
            align.extend(["---:"; 3]);
        }
        for (g, _) in l.paper.iter().filter(|(_, shown)| *shown) {
            cols.extend([head(g, "AP (paper)"), head(g, "FG (paper)")]);
            align.extend(["---:"; 2]);
        }
        let _ = writeln!(out, "| {} |\n|{}|", cols.join(" | "), align.join("|"));
        for row in &l.rows {
            let mut cells = row.labels.clone();
            for s in &row.runs {
                cells.extend(run_cells(c.status(s)));
            }
            for ((_, shown), claim) in l.paper.iter().zip(&row.claims) {
                if *shown {
                    cells.extend(claim_cells(*claim));
                }
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    let notes: Vec<String> = c
        .runs
        .iter()
        .filter_map(|(s, st)| match st {
            RunStatus::Failed(why) => Some(format!("- `{}` failed: {why}", s.name())),
            RunStatus::Foreign(why) => Some(format!("- `{}`: {why}", s.name())),
            RunStatus::Incomplete { .. } => Some(format!(
                "- `{}` stopped part-way; `delo grid` again resumes it",
                s.name()
            )),
            _ => None,
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "Runs without results:\n\n{}\n", notes.join("\n"));
    }
    out
}

/// The CSV header of [`write_csv`].
pub const CSV_HEADER: [&str; 12] = [
    "table",
    "row",
    "method",
    "source",
    "status",
    "tasks_done",
    "num_tasks",
    "ap",
    "fg",
    "task_id_acc",
    "run",
    "note",
];

/// Writes every cell group of every table as one CSV record ([`CSV_HEADER`]): `source` is
/// `measured` (a run; `status` finished, stopped, failed, missing or other-run; values only
/// when finished, at full precision) or `paper` (status `claim`, AP and FG as published).
pub fn write_csv(c: &Collected, path: &Path) -> Result<()> {
    let mut buf = Vec::new();
    {
        let mut w = csv::Writer::from_writer(&mut buf);
        let err = |e: csv::Error| Error::format(path, e.to_string());
        w.write_record(CSV_HEADER).map_err(err)?;
        for l in &c.layouts {
            for row in &l.rows {
                let label = l
                    .row_header
                    .iter()
                    .zip(&row.labels)
                    .map(|(h, v)| format!("{h}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let table = l.table.number().to_string();
                for s in &row.runs {
                    let f = CsvRunFields::of(c.status(s));
                    let [ap, fg, task_id] = &f.values;
                    w.write_record([
                        table.as_str(),
                        &label,
                        s.method.label(),
                        "measured",
                        f.status,
                        &f.done,
                        &f.total,
                        ap,
                        fg,
                        task_id,
                        &s.name(),
                        &f.note,
                    ])
                    .map_err(err)?;
                }
                for ((group, _), claim) in l.paper.iter().zip(&row.claims) {
                    let Some(claim) = claim else { continue };
                    // A single reference group (ablations): the row's own method.
                    let method = match *group {
                        "" => row.runs[0].method.label(),
                        g => g,
                    };
                    w.write_record([
                        table.as_str(),
                        &label,
                        method,
                        "paper",
                        "claim",
                        "",
                        "",
                        &claim.ap.to_string(),
                        &claim.fg.to_string(),
                        "",
                        "",
                        "",
                    ])
                    .map_err(err)?;
                }
            }
        }
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    crate::st::write_atomic(path, &buf)
}

/// A run's fields of a `measured` CSV record: its status word, tasks done and in all, AP, FG
/// and task-id accuracy at full precision (finished runs only), and why it has no result.
struct CsvRunFields {
    status: &'static str,
    done: String,
    total: String,
    values: [String; 3],
    note: String,
}

impl CsvRunFields {
    fn of(st: &RunStatus) -> CsvRunFields {
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
        let without_result = |status, note: &str| CsvRunFields {
            status,
            done: String::new(),
            total: String::new(),
            values: Default::default(),
            note: note.to_string(),
        };
        match st {
            RunStatus::Finished {
                ap,
                fg,
                task_id,
                tasks,
                ..
            } => CsvRunFields {
                status: "finished",
                done: tasks.to_string(),
                total: tasks.to_string(),
                values: [opt(*ap), opt(*fg), opt(*task_id)],
                note: String::new(),
            },
            RunStatus::Incomplete { done, total } => CsvRunFields {
                done: done.to_string(),
                total: total.map_or_else(String::new, |t| t.to_string()),
                ..without_result("stopped", "")
            },
            RunStatus::Failed(why) => without_result("failed", why),
            RunStatus::Missing => without_result("missing", ""),
            RunStatus::Foreign(why) => without_result("other-run", why),
        }
    }
}
