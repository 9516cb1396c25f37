//! `delo eval` and `delo predict`: a trained run applied to its benchmark or to new items.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use delo::data::Split;
use delo::delo::config::TaskKeySource;
use delo::train::{inputs, predict as pred, Trainer};

#[derive(Args)]
pub(super) struct EvalArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// val or test.
    #[arg(long, default_value = "test", value_parser = evaluated_split)]
    split: Split,
    /// `oracle`: evaluate task-incrementally with the true task id instead of the run's
    /// task keys.
    #[arg(long)]
    task_key: Option<TaskKeySource>,
    /// Write per-sample predictions (item index, task, predicted task, prediction).
    #[arg(long)]
    predictions: Option<PathBuf>,
}

/// `--split` of `delo eval`: a split a run is evaluated on.
fn evaluated_split(s: &str) -> Result<Split, String> {
    match s.parse() {
        Ok(Split::Train) | Err(_) => Err(format!("'{s}': expected val or test")),
        Ok(split) => Ok(split),
    }
}

/// The run in `dir`, answering by the task keys of `task_key` when given.
fn open_run(dir: &std::path::Path, task_key: Option<TaskKeySource>) -> Result<Trainer> {
    let mut tr = Trainer::resume(dir)?;
    if let Some(k) = task_key {
        tr.use_task_key(k)?;
    }
    Ok(tr)
}

/// `delo eval`.
pub(super) fn eval(a: &EvalArgs) -> Result<()> {
    let tr = open_run(&a.run, a.task_key)?;
    print!(
        "{}",
        delo::train::eval::eval_run(&tr, a.split, a.predictions.as_deref())?
    );
    Ok(())
}

#[derive(Args)]
pub(super) struct PredictArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// A JSON list in the CMML item shape (`image` and/or `text`) or a CSV with `image,text`
    /// columns; images relative to this file's folder (or its images/ folder).
    #[arg(long)]
    input: PathBuf,
    /// The predictions CSV to write.
    #[arg(long)]
    output: PathBuf,
    /// `oracle`: answer with the head of --task instead of the Task-Key memory's choice.
    #[arg(long)]
    task_key: Option<TaskKeySource>,
    /// With --task-key oracle: the task (0-based) whose head answers.
    #[arg(long)]
    task: Option<usize>,
    /// Classes listed per item, best first.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Multi-label: predict a label when its probability exceeds this.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Items per forward (default: the run's evaluation batch size).
    #[arg(long)]
    batch_size: Option<usize>,
}

/// `delo predict`.
pub(super) fn predict(a: &PredictArgs) -> Result<()> {
    let tr = open_run(&a.run, a.task_key)?;
    let items = inputs::read_items(&a.input)?;
    let opts = pred::PredictOptions {
        top_k: a.top_k,
        threshold: a.threshold,
        task: a.task,
        batch_size: a.batch_size,
    };
    let preds = pred::predict(&tr, &items, &opts)?;
    pred::write_csv(&tr, &preds, &a.output)?;
    println!(
        "wrote {} predictions to {}",
        preds.len(),
        a.output.display()
    );
    Ok(())
}
