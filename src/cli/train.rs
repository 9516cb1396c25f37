//! `delo train` (with the classification of its flags for `--resume`) and `delo demo`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use delo::train::step_checkpoint::CheckpointEvery;
use delo::train::{ResumeOptions, TrainSettings, Trainer};
use delo::DeviceName;

use super::delo_args::DeloArgs;
use super::progress::progress_reporter;
use super::OnOff;

#[derive(Args)]
pub(super) struct TrainArgs {
    /// The CMML benchmark JSON (or its folder).
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// A Hugging Face ViLT model directory.
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// The run directory to create.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint (a finished task or a
    /// step inside one). The run keeps the settings it was started with: a flag that changes
    /// results (every flag but the run-time settings below) is refused when its value differs
    /// from the run's; the run-time settings may be given and apply from the resume on.
    #[arg(long, conflicts_with_all = ["data", "model", "out"])]
    resume: Option<PathBuf>,
    /// With --resume: change the base learning rate on purpose (e.g. after a NaN loss) from
    /// the resumed step on; recorded in run.json, results.json and report.md.
    #[arg(long, requires = "resume")]
    override_lr: Option<f32>,
    /// Missing modality, `type:η` with type text, image or both (docs/data.md#missing-modality).
    #[arg(long, default_value = "both:0.7", value_parser = as_given::<delo::data::MissingSpec>)]
    missing: String,
    /// cpu, cuda or cuda:N. Changes no result on a device, but another device rounds
    /// differently: a run resumed elsewhere is not bit-identical to one run in one place.
    #[arg(long, default_value = "cpu", help_heading = RUNTIME)]
    device: DeviceName,
    /// Checkpoint inside a task after this many steps (`200`), this much time (`90s`, `5m`,
    /// `1h`), whichever comes first (`200,5m`), or only at task ends (`off`). A kill loses at
    /// most one interval.
    #[arg(long, default_value = "5m", help_heading = RUNTIME)]
    checkpoint_every: CheckpointEvery,
    /// Element type of the frozen linears' weights: auto (bf16 on CUDA, f32 on the CPU), f32
    /// or bf16.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16"])]
    frozen_dtype: String,
    /// On CUDA: replay each kind of training step as one CUDA graph (`on`), or launch kernel by
    /// kernel (`off`). Both give the same parameters.
    #[arg(long, value_enum, default_value_t = OnOff::On, help_heading = RUNTIME)]
    cuda_graph: OnOff,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, default_value_t = 16)]
    eval_batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// AdamW β₁.
    #[arg(long, default_value_t = 0.9)]
    beta1: f32,
    /// AdamW β₂.
    #[arg(long, default_value_t = 0.98)]
    beta2: f32,
    /// AdamW ε.
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f32,
    /// Fraction of each task's steps spent in linear warm-up before the cosine decay.
    #[arg(long, default_value_t = 0.1)]
    warmup: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 512)]
    max_text_len: usize,
    /// Square image size (0: ViLT's shortest-edge resize).
    #[arg(long, default_value_t = 384)]
    image_size: u32,
    /// Stop each task after this many steps (quick runs).
    #[arg(long)]
    max_steps_per_task: Option<usize>,
    /// Round every batch's text length up to a multiple of this many tokens (default: 32 on
    /// CUDA, where each length is a kind of step with its own CUDA graph; 1 on the CPU).
    #[arg(long)]
    text_bucket: Option<usize>,
    /// Threads decoding and pre-processing batches (default: one per core of the machine).
    #[arg(long, help_heading = RUNTIME)]
    loader_threads: Option<usize>,
    /// Keep every pre-processed image in host memory after its first use, as 8-bit values
    /// (a quarter of f32's bytes, normalised when a batch is assembled): later epochs and
    /// evaluations decode nothing.
    #[arg(long, help_heading = RUNTIME)]
    cache_images: bool,
    /// Leave out unreadable images instead of failing: each is printed and listed in
    /// results.json and report.md; a task left with no sample gets an empty cell, not 0%.
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    delo: DeloArgs,
}

/// A value parser that checks a value as a `T` and keeps it as the user spelled it: for the
/// settings that `run.json` stores as text (`--missing text:10%` stays `text:10%`).
fn as_given<T: std::str::FromStr>(s: &str) -> std::result::Result<String, T::Err> {
    s.parse::<T>().map(|_| s.to_string())
}

impl TrainArgs {
    /// The run's settings from the flags.
    pub(super) fn settings(&self) -> Result<TrainSettings> {
        Ok(TrainSettings {
            epochs: self.epochs,
            batch_size: self.batch_size,
            eval_batch_size: self.eval_batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            betas: (self.beta1, self.beta2),
            eps: self.adam_eps,
            warmup: self.warmup,
            seed: self.seed,
            missing: self.missing.clone(),
            max_text_len: self.max_text_len,
            text_bucket: self.text_bucket,
            image_size: (self.image_size > 0).then_some(self.image_size),
            loader_threads: self
                .loader_threads
                .unwrap_or_else(delo::train::default_loader_threads),
            cache_images: self.cache_images,
            skip_bad: self.skip_bad,
            device: self.device.to_string(),
            frozen_dtype: self.frozen_dtype.clone(),
            cuda_graph: self.cuda_graph.is_on(),
            max_steps_per_task: self.max_steps_per_task,
            checkpoint_every: self.checkpoint_every,
            delo: self.delo.config()?,
        })
    }

    /// The run-time settings given with `--resume` (`given`: the flags on the command line),
    /// after checking that no flag that changes results differs from the run's setting.
    fn resume_options(&self, run: &Path, given: &ArgMatches) -> Result<ResumeOptions> {
        let on_line = |id: &str| given.value_source(id) == Some(ValueSource::CommandLine);
        let stored = delo::train::checkpoint::read_run(run)?.settings;
        let mine = self.settings()?;
        let differences: Vec<String> = RESULT_FLAGS
            .iter()
            .filter(|(id, _)| on_line(id))
            .filter_map(|(id, get)| {
                let (a, b) = (get(&stored), get(&mine));
                (a != b)
                    .then(|| format!("  --{}: the run has {a}, given {b}", id.replace('_', "-")))
            })
            .collect();
        if !differences.is_empty() {
            anyhow::bail!(
                "--resume {} continues the run with the settings it was started with, and \
                 these flags would change its results:\n{}\nLeave them out to continue the \
                 run as it is (--override-lr changes the learning rate on purpose), or start \
                 a new run with --out.",
                run.display(),
                differences.join("\n")
            );
        }
        if let Some(lr) = self.override_lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
            anyhow::bail!("--override-lr {lr}: expected a positive learning rate");
        }
        Ok(ResumeOptions {
            device: on_line("device").then(|| self.device.to_string()),
            loader_threads: self.loader_threads,
            cache_images: on_line("cache_images").then_some(true),
            cuda_graph: on_line("cuda_graph").then(|| self.cuda_graph.is_on()),
            checkpoint_every: on_line("checkpoint_every").then_some(self.checkpoint_every),
            override_lr: self.override_lr,
        })
    }
}

/// The help heading of the `delo train` flags that change no result: with `--resume` they may
/// be given and apply.
const RUNTIME: &str = "Run-time settings (may be given with --resume)";

/// A setting as `run.json` stores it.
type Stored = fn(&TrainSettings) -> String;

/// A setting's value as JSON writes it (an f32 in its shortest form, `0.0001`).
fn show<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<{e}>"))
}

/// The `delo train` flags (clap ids) that change results, each with the setting it sets: with
/// `--resume`, each one given must equal the run's. The flags under [`RUNTIME`] and
/// `--resume`, `--override-lr`, `--data`, `--model`, `--out` are the others; the test
/// `every_train_flag_is_classified` keeps the two lists complete.
const RESULT_FLAGS: &[(&str, Stored)] = &[
    ("missing", |s| show(&s.missing)),
    ("frozen_dtype", |s| show(&s.frozen_dtype)),
    ("epochs", |s| show(&s.epochs)),
    ("batch_size", |s| show(&s.batch_size)),
    ("eval_batch_size", |s| show(&s.eval_batch_size)),
    ("lr", |s| show(&s.lr)),
    ("weight_decay", |s| show(&s.weight_decay)),
    ("beta1", |s| show(&s.betas.0)),
    ("beta2", |s| show(&s.betas.1)),
    ("adam_eps", |s| show(&s.eps)),
    ("warmup", |s| show(&s.warmup)),
    ("seed", |s| show(&s.seed)),
    ("max_text_len", |s| show(&s.max_text_len)),
    ("image_size", |s| show(&s.image_size)),
    ("max_steps_per_task", |s| show(&s.max_steps_per_task)),
    ("text_bucket", |s| show(&s.text_bucket)),
    ("skip_bad", |s| show(&s.skip_bad)),
    ("variant", |s| show(&s.delo.variant)),
    ("experts", |s| show(&s.delo.experts)),
    ("rank", |s| show(&s.delo.rank)),
    ("factor_rank", |s| show(&s.delo.factor_rank)),
    ("alpha", |s| show(&s.delo.alpha)),
    ("targets", |s| show(&s.delo.targets)),
    ("gate", |s| show(&s.delo.gate)),
    ("lambda_cfs", |s| show(&s.delo.lambda_cfs)),
    ("lambda_align", |s| show(&s.delo.lambda_align)),
    ("lambda_con", |s| show(&s.delo.lambda_con)),
    ("ema_beta", |s| show(&s.delo.ema_beta)),
    ("no_cross_modal_guide", |s| show(&!s.delo.cross_modal_guide)),
    ("task_key", |s| show(&s.delo.task_key)),
    ("con_proxy", |s| show(&s.delo.con_proxy)),
];

/// `delo train`: a new run from `--data`, `--model`, `--out`, or `--resume` of one
/// (`matches`: the whole command line, which says which flags were given).
pub(super) fn train(a: &TrainArgs, matches: &ArgMatches) -> Result<()> {
    let mut trainer = match &a.resume {
        Some(dir) => {
            let given = matches
                .subcommand_matches("train")
                .context("the matches of `delo train`")?;
            Trainer::resume_with(dir, &a.resume_options(dir, given)?)?
        }
        None => {
            let (data, model, out) = (
                a.data.as_ref().unwrap(),
                a.model.as_ref().unwrap(),
                a.out.as_ref().unwrap(),
            );
            Trainer::create(data, model, out, a.settings()?)?
        }
    };
    trainer.run(&mut progress_reporter())?;
    println!("run finished: {}", trainer.run_dir.display());
    Ok(())
}

#[derive(Args)]
pub(super) struct DemoArgs {
    /// Where the data, model, runs and reports go.
    #[arg(long, default_value = "delo-demo")]
    out: PathBuf,
}

/// `delo demo`.
pub(super) fn demo(a: &DemoArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let table = delo::train::demo::run_demo(&a.out, &mut progress_reporter())?;
    println!("\n{table}");
    println!(
        "finished in {:.0} s; reports: {}/delo/report.md, {}/heads-only/report.md",
        started.elapsed().as_secs_f64(),
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A flag added to `delo train` must be put in one of the two lists, or `--resume` would
    /// silently ignore it.
    #[test]
    fn every_train_flag_is_classified() {
        let cmd = super::super::Cli::command();
        let train = cmd.find_subcommand("train").unwrap();
        for arg in train.get_arguments() {
            let id = arg.get_id().as_str();
            let result = RESULT_FLAGS.iter().any(|(r, _)| *r == id);
            let runtime = arg.get_help_heading() == Some(RUNTIME);
            let run = ["resume", "override_lr", "data", "model", "out", "help"].contains(&id);
            assert_eq!(
                [result, runtime, run].iter().filter(|&&b| b).count(),
                1,
                "--{id}: in {} of the lists (results, run-time, the run itself)",
                [result, runtime, run].iter().filter(|&&b| b).count()
            );
        }
        for (id, _) in RESULT_FLAGS {
            assert!(
                train.get_arguments().any(|a| a.get_id() == id),
                "{id} is not a flag"
            );
        }
    }
}
