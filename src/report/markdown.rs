//! `report.md`: the human report of a run (matrices, a summary row shaped like the paper's
//! tables, per-task timing, links to the plots), and a side-by-side table of several runs.
//!
//! Tasks are numbered 1..T here, as in the paper; `results.json` numbers them 0..T−1.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::data::{MissingSpec, Split};
use crate::error::Result;
use crate::report::results::{Metric, Results};
use crate::report::svg::plot_files;

/// A run's summary: one row of a paper-style `| Method | Missing | AP ↑ | FG ↓ | Task-id |`
/// table.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    /// Method name, e.g. `DeLo` or `heads-only`.
    pub method: String,
    /// Missing-modality setting, e.g. from [`missing_label`].
    pub missing: String,
    pub metric: Metric,
    /// Tasks of the benchmark.
    pub num_tasks: usize,
    /// Tasks the summaries cover (less than `num_tasks` for an unfinished run).
    pub tasks_evaluated: usize,
    pub ap: Option<f64>,
    pub fg: Option<f64>,
    /// Mean task-id accuracy after the last evaluated task.
    pub ap_task_id: Option<f64>,
}

impl SummaryRow {
    /// The summary of `split` of `results` (the paper reports the test split).
    pub fn from_results(
        method: &str,
        missing: &str,
        results: &Results,
        split: Split,
    ) -> Result<SummaryRow> {
        let s = results.split(split)?;
        Ok(SummaryRow {
            method: method.to_string(),
            missing: missing.to_string(),
            metric: results.metric,
            num_tasks: results.num_tasks,
            tasks_evaluated: s.tasks_evaluated,
            ap: s.ap,
            fg: s.fg,
            ap_task_id: s.ap_task_id,
        })
    }
}

/// The paper's header for a missing setting (Tables 2/3): the share of items that keep each
/// modality, e.g. η = 10 % of type text → `#Image 100% #Text 90%`, η = 70 % of type both →
/// `#Image 65% #Text 65%`.
pub fn missing_label(spec: &MissingSpec) -> String {
    let (text, image) = spec.presence();
    format!("#Image {} #Text {}", pct(image), pct(text))
}

/// A share in [0, 1] as a percentage without trailing zeros (`65%`, `87.5%`).
pub(crate) fn pct(x: f64) -> String {
    let s = format!("{:.2}", 100.0 * x);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// A value with 2 decimals, or `n/a`.
fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"))
}

/// Escapes the characters that would break a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Several runs' summary rows in one table, one row per run, e.g. DeLo vs heads-only; a run
/// that has not finished every task is marked with how far it got.
pub fn render_summary_table(rows: &[SummaryRow]) -> String {
    let mut out = String::new();
    let mut metrics: Vec<&str> = rows.iter().map(|r| r.metric.display_name()).collect();
    metrics.sort_unstable();
    metrics.dedup();
    if metrics.len() == 1 {
        let _ = writeln!(out, "Metric: {}.\n", metrics[0]);
    }
    out.push_str("| Method | Missing | AP ↑ | FG ↓ | Task-id acc ↑ |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    for r in rows {
        let mut method = cell(&r.method);
        if r.tasks_evaluated < r.num_tasks {
            let _ = write!(
                method,
                " (after task {} of {})",
                r.tasks_evaluated, r.num_tasks
            );
        }
        if metrics.len() > 1 {
            let _ = write!(method, " [{}]", r.metric.display_name());
        }
        let _ = writeln!(
            out,
            "| {method} | {} | {} | {} | {} |",
            cell(&r.missing),
            num(r.ap),
            num(r.fg),
            num(r.ap_task_id)
        );
    }
    out
}

/// A lower-triangular matrix as a Markdown table: 2 decimals, `—` above the diagonal, `n/a`
/// where not evaluated yet, an empty cell where the evaluation had no sample (`empty`).
fn matrix_table(out: &mut String, matrix: &[Vec<Option<f64>>], empty: &[[usize; 2]]) {
    let t = matrix.len();
    out.push_str("| after task ↓ / task → |");
    for j in 0..t {
        let _ = write!(out, " {} |", j + 1);
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(t));
    out.push('\n');
    for (i, row) in matrix.iter().enumerate() {
        let _ = write!(out, "| {} |", i + 1);
        for (j, v) in row.iter().enumerate() {
            if j > i {
                out.push_str(" — |");
            } else if empty.contains(&[i, j]) {
                out.push_str("  |");
            } else {
                let _ = write!(out, " {} |", num(*v));
            }
        }
        out.push('\n');
    }
}

/// The full `report.md` of one run: summary (test split, then val), the metric and task-id
/// matrices of both splits, per-task training time and throughput, links to the plots of
/// [`plot_files`], and the resolved configuration.
pub fn render_report(results: &Results, method: &str, missing: &str) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} — continual missing-modality results\n",
        cell(method)
    );
    let _ = writeln!(
        out,
        "Missing modality: {}. Metric: {} per task; tasks: {}. AP = (1/T) Σ_j a_(j,T); \
         FG = (1/(T−1)) Σ_(j<T) max_(z∈j..T−1) (a_(j,z) − a_(j,T)) (paper eq. 11), 0 for T = 1.\n",
        cell(missing),
        results.metric.display_name(),
        results.num_tasks
    );
    for (i, split) in [Split::Test, Split::Val].into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = write!(out, "## Summary ({})\n\n", split.as_str());
        out.push_str(&render_summary_table(&[SummaryRow::from_results(
            method, missing, results, split,
        )?]));
    }
    for split in [Split::Test, Split::Val] {
        matrix_sections(&mut out, results, split)?;
    }
    skipped_section(&mut out, results);
    resumes_section(&mut out, results);
    training_section(&mut out, results);
    plots_section(&mut out, results);
    out.push_str("\n## Configuration\n\n```json\n");
    out.push_str(&serde_json::to_string_pretty(&results.config).unwrap_or_default());
    out.push_str("\n```\n");
    Ok(out)
}

/// The metric matrix and the task-id accuracy matrix of `split`, each with its empty-cell
/// note.
fn matrix_sections(out: &mut String, results: &Results, split: Split) -> Result<()> {
    let s = results.split(split)?;
    let _ = writeln!(
        out,
        "\n## {} matrix ({})\n\nRow t: after training task t; column j: evaluated on task j.\n",
        results.metric.display_name(),
        split.as_str()
    );
    matrix_table(out, &s.matrix, &s.no_samples);
    empty_note(out, &s.no_samples);
    let _ = writeln!(
        out,
        "\n### Task-id accuracy (%) ({})\n\nShare of task j's samples the Task-Key \
         memory routed to task j.\n",
        split.as_str()
    );
    matrix_table(out, &s.task_id_matrix, &s.no_samples);
    empty_note(out, &s.no_samples);
    Ok(())
}

/// Per task: epochs, steps, wall time, throughput and final loss (`n/a` for a task not
/// trained yet), then the totals.
fn training_section(out: &mut String, results: &Results) {
    out.push_str("\n## Training per task\n\n");
    out.push_str(
        "| Task | Epochs | Steps | Wall time (s) | Samples/s | Final loss |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    let (mut wall, mut steps) = (0.0, 0u64);
    for (i, t) in results.tasks.iter().enumerate() {
        match t {
            Some(t) => {
                wall += t.wall_seconds;
                steps += t.steps;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.1} | {:.1} | {:.4} |",
                    i + 1,
                    t.epochs,
                    t.steps,
                    t.wall_seconds,
                    t.train_samples_per_second,
                    t.final_loss
                );
            }
            None => {
                let _ = writeln!(out, "| {} | n/a | n/a | n/a | n/a | n/a |", i + 1);
            }
        }
    }
    let _ = writeln!(out, "| total | | {steps} | {wall:.1} | | |");
}

/// Links to the plots of [`plot_files`], and a line for each plot left out for want of data.
fn plots_section(out: &mut String, results: &Results) {
    out.push_str("\n## Plots\n\n");
    for p in plot_files(results) {
        let _ = writeln!(out, "- [{}]({})", p.caption, p.file);
    }
    if results.selection_frequency.is_empty() {
        out.push_str("- (no factor selection counts recorded)\n");
    }
    if results.cos_qv_qt.is_empty() {
        out.push_str("- (no cos(q_v, q_t) samples recorded)\n");
    }
}

/// Says what the empty cells of a matrix mean, when it has any.
fn empty_note(out: &mut String, empty: &[[usize; 2]]) {
    if !empty.is_empty() {
        out.push_str(
            "\nAn empty cell had no sample to evaluate (every image of that task's split was \
             skipped); AP and FG leave it out.\n",
        );
    }
}

/// Most skipped images listed by name in the report; `results.json` lists them all.
const SKIPPED_LISTED: usize = 50;

/// The images `--skip-bad` left out: their count, then each with its item, task, split and
/// reason.
fn skipped_section(out: &mut String, results: &Results) {
    let skipped = &results.skipped_images;
    if skipped.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Skipped images\n\n{} image{} could not be read and {} left out (`--skip-bad`):\n",
        skipped.len(),
        if skipped.len() == 1 { "" } else { "s" },
        if skipped.len() == 1 { "was" } else { "were" }
    );
    out.push_str("| Item | Task | Split | File | Reason |\n|---:|---:|---|---|---|\n");
    for s in skipped.iter().take(SKIPPED_LISTED) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            s.item,
            s.task + 1,
            s.split,
            cell(&s.path),
            cell(&s.error)
        );
    }
    if skipped.len() > SKIPPED_LISTED {
        let _ = writeln!(
            out,
            "\n… and {} more, all listed in results.json.",
            skipped.len() - SKIPPED_LISTED
        );
    }
}

/// Each resume of the run: when, and from which task and step (1-based, as elsewhere in the
/// report), with the settings changed.
fn resumes_section(out: &mut String, results: &Results) {
    if results.resumes.is_empty() {
        return;
    }
    out.push_str("\n## Resumes\n\n| When (UTC) | Task | Steps done | Checkpoint | Changed |\n|---|---:|---:|---|---|\n");
    for r in &results.resumes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.at,
            r.task + 1,
            r.step,
            cell(r.checkpoint.as_deref().unwrap_or("task start")),
            cell(&r.changes.join("; "))
        );
    }
}

/// Writes `report.md` into `dir` atomically and returns its path.
pub fn write_report(results: &Results, dir: &Path, method: &str, missing: &str) -> Result<PathBuf> {
    let text = render_report(results, method, missing)?;
    let path = dir.join("report.md");
    crate::st::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}
