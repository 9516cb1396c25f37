//! The `delo` command line: thin wrappers over the library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "delo",
    version,
    about = "DeLo continual missing-modality training engine"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the devices this binary can use.
    Devices,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write a CMML benchmark (JSON + meta.json + images/) from a raw dataset.
    Prepare {
        #[command(subcommand)]
        dataset: PrepareCmd,
    },
    /// Write the small synthetic CMML benchmark (demo, tests).
    Synth(SynthArgs),
    /// Run the frozen ViLT on HF-named inputs (pixel_values, pixel_mask, input_ids,
    /// attention_mask, token_type_ids), or on raw images and texts through the training
    /// pre-processing, and write last_hidden_state and pooler_output.
    Forward {
        /// A Hugging Face ViLT model directory (config.json, model.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Input safetensors file (pre-processed tensors).
        #[arg(long, required_unless_present_any = ["images", "texts", "items"], conflicts_with_all = ["images", "texts", "items"])]
        inputs: Option<PathBuf>,
        /// Image paths, one per line (relative to this file's folder; an empty line: no image).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Texts, one per line (an empty line: no text); line i goes with image line i.
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Items as a CMML JSON list (`image`, `text`) or a CSV with `image,text` columns.
        #[arg(long, conflicts_with_all = ["images", "texts"])]
        items: Option<PathBuf>,
        /// With raw inputs: also write the pre-processed pixel_values, pixel_mask, input_ids,
        /// attention_mask and token_type_ids (safetensors, HF names) to this file.
        #[arg(long, conflicts_with = "inputs")]
        dump_inputs: Option<PathBuf>,
        /// With raw inputs: square image size (0: ViLT's shortest-edge resize, ViltProcessor's
        /// default).
        #[arg(long, default_value_t = 0)]
        image_size: u32,
        /// Output safetensors file.
        #[arg(long)]
        output: PathBuf,
        /// Stretch the text position table to this many rows when longer (MAP/RebQ use 512).
        #[arg(long, default_value_t = 0)]
        max_text_len: usize,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Keep the frozen linear weights in bf16 (GPU mixed precision).
        #[arg(long)]
        bf16: bool,
    },
    /// The synthetic benchmark, a tiny model, DeLo and heads-only trained on the CPU, and
    /// their AP/FG table (a couple of minutes at most, no downloads).
    Demo {
        /// Where the data, model, runs and reports go.
        #[arg(long, default_value = "delo-demo")]
        out: PathBuf,
    },
    /// Evaluate a run's finished tasks (task-agnostic by default).
    Eval {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// val or test.
        #[arg(long, default_value = "test")]
        split: String,
        /// `oracle`: evaluate task-incrementally with the true task id instead of the run's
        /// task keys.
        #[arg(long)]
        task_key: Option<String>,
        /// Write per-sample predictions (item index, task, predicted task, prediction).
        #[arg(long)]
        predictions: Option<PathBuf>,
    },
    /// Apply a trained run to new image–text items: per item the chosen task and its key
    /// cosine, the predicted class and score, the top-k, and for multi-label every label over
    /// the threshold, as CSV.
    Predict {
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
        task_key: Option<String>,
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
    },
    /// Train DeLo on a CMML benchmark, task after task, evaluating and checkpointing each.
    Train(Box<TrainArgs>),
    /// Run the paper's tables of results (2–6) as a grid of `delo train` runs, one per
    /// setting, on the given devices in turn or in parallel, or as a Slurm job array; again, it
    /// skips finished runs and resumes interrupted ones. Extra `delo train` flags after `--`
    /// apply to every run.
    Grid(Box<GridArgs>),
    /// Collect the runs of a `delo grid` folder into the paper's tables, beside the paper's
    /// published numbers (printed, and written as tables.md and tables.csv in the folder).
    Table {
        /// The grid folder (`--out` of `delo grid`).
        dir: PathBuf,
    },
    /// Trainable parameters per task and total parameters of a DeLo model (paper Table 5).
    Params {
        /// A model directory (its config.json); default: the ViLT-B/32 dimensions.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        tasks: usize,
        #[arg(long, default_value_t = 10)]
        classes_per_task: usize,
        /// Rows of the stretched text position table (512 as in the CMML code).
        #[arg(long, default_value_t = 512)]
        text_positions: usize,
        #[command(flatten)]
        delo: DeloArgs,
    },
    /// Write a randomly initialised ViLT model directory in the Hugging Face layout
    /// (config.json, model.safetensors, vocab.txt).
    InitModel {
        /// Model size: `tiny` (hidden 32, 2 layers, 96×96 images) or `base` (ViLT-B/32).
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Output directory (created if needed).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Seed of the initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also randomise biases, LayerNorms, the CLS token and the position tables
        /// (Hugging Face leaves them constant); for test fixtures.
        #[arg(long)]
        randomize_all: bool,
        /// Overwrite an existing model.safetensors.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct TrainArgs {
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
    /// Missing modality, `type:η` with type text, image or both (CMML.md).
    #[arg(long, default_value = "both:0.7")]
    missing: String,
    /// cpu, cuda or cuda:N. Changes no result on a device, but another device rounds
    /// differently: a run resumed elsewhere is not bit-identical to one run in one place.
    #[arg(long, default_value = "cpu", help_heading = RUNTIME)]
    device: String,
    /// Checkpoint inside a task after this many steps (`200`), this much time (`90s`, `5m`,
    /// `1h`), whichever comes first (`200,5m`), or only at task ends (`off`). A kill loses at
    /// most one interval.
    #[arg(long, default_value = "5m", help_heading = RUNTIME)]
    checkpoint_every: String,
    /// Element type of the frozen linears' weights: auto (bf16 on CUDA, f32 on the CPU), f32
    /// or bf16.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16"])]
    frozen_dtype: String,
    /// On CUDA: replay each kind of training step as one CUDA graph (`on`), or launch kernel by
    /// kernel (`off`). Both give the same parameters.
    #[arg(long, default_value = "on", value_parser = ["on", "off"], help_heading = RUNTIME)]
    cuda_graph: String,
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

impl TrainArgs {
    fn settings(&self) -> Result<delo::train::TrainSettings> {
        Ok(delo::train::TrainSettings {
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
            device: self.device.clone(),
            frozen_dtype: self.frozen_dtype.clone(),
            cuda_graph: self.cuda_graph == "on",
            max_steps_per_task: self.max_steps_per_task,
            checkpoint_every: self.checkpoint_every.parse()?,
            delo: self.delo.config()?,
        })
    }

    /// The run-time settings given with `--resume` (`given`: the flags on the command line),
    /// after checking that no flag that changes results differs from the run's setting.
    fn resume_options(
        &self,
        run: &std::path::Path,
        given: &ArgMatches,
    ) -> Result<delo::train::ResumeOptions> {
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
        Ok(delo::train::ResumeOptions {
            device: on_line("device").then(|| self.device.clone()),
            loader_threads: self.loader_threads,
            cache_images: on_line("cache_images").then_some(true),
            cuda_graph: on_line("cuda_graph").then(|| self.cuda_graph == "on"),
            checkpoint_every: match on_line("checkpoint_every") {
                true => Some(self.checkpoint_every.parse()?),
                false => None,
            },
            override_lr: self.override_lr,
        })
    }
}

/// The help heading of the `delo train` flags that change no result: with `--resume` they may
/// be given and apply.
const RUNTIME: &str = "Run-time settings (may be given with --resume)";

/// A setting as `run.json` stores it.
type Stored = fn(&delo::train::TrainSettings) -> String;

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

#[derive(Args)]
struct GridArgs {
    /// The CMML benchmark JSON (or its folder).
    #[arg(long)]
    data: PathBuf,
    /// A Hugging Face ViLT model directory.
    #[arg(long)]
    model: PathBuf,
    /// The grid folder: one run directory per setting, logs, grid.json.
    #[arg(long)]
    out: PathBuf,
    /// Paper tables: 2 (UPMC-Food101), 3 (MM-IMDb), 4 (components), 5 (E × r), 6 (losses),
    /// comma-separated, or `all` (4–6 and the main table of the benchmark's label kind).
    #[arg(long)]
    table: String,
    /// Tables 2/3: η values in percent.
    #[arg(long, value_delimiter = ',', default_values_t = delo::grid::expand::MAIN_ETAS)]
    etas: Vec<u32>,
    /// Tables 2/3: missing types (text, image, both).
    #[arg(long, value_delimiter = ',', default_value = "text,image,both")]
    types: Vec<String>,
    /// Tables 2/3: methods, from delo, heads-only, seq-lora, delo-lora, delo-no-guide,
    /// unified-pool.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "delo,heads-only,seq-lora"
    )]
    methods: Vec<String>,
    /// Devices, comma-separated: one run at a time on each (default cpu: runs in turn; with
    /// --slurm, cuda: one GPU per job).
    #[arg(long)]
    devices: Option<String>,
    /// Write a Slurm job array (grid.sbatch, one index per setting, and grid-index.tsv)
    /// instead of running; each job trains on --devices (default there: one GPU, `cuda`).
    #[arg(long)]
    slurm: bool,
    /// Run only setting N of the grid (0-based, the lines of grid-index.tsv): what each Slurm
    /// array job runs.
    #[arg(long, conflicts_with = "slurm")]
    index: Option<usize>,
    /// `delo train` flags for every run, after `--` (e.g. `-- --epochs 1 --image-size 96`).
    #[arg(last = true)]
    train_flags: Vec<String>,
}

impl GridArgs {
    fn grid(&self) -> Result<delo::grid::Grid> {
        let selection = delo::grid::Selection {
            etas: self.etas.clone(),
            types: self
                .types
                .iter()
                .map(|t| delo::grid::expand::parse_kind(t))
                .collect::<delo::error::Result<_>>()?,
            methods: self
                .methods
                .iter()
                .map(|m| m.parse())
                .collect::<delo::error::Result<_>>()?,
        };
        let grid = delo::grid::Grid::new(
            self.data.clone(),
            self.model.clone(),
            delo::grid::parse_tables(&self.table, &self.data)?,
            selection,
            self.train_flags.clone(),
        )?;
        // The extra flags as `delo train` itself reads them, so that a typo stops the grid
        // before its first run rather than failing every run.
        let mut probe: Vec<std::ffi::OsString> = vec!["delo".into()];
        probe.extend(grid.train_args(&self.out, &grid.settings()[0], "cpu"));
        let probe = Cli::try_parse_from(probe)
            .map_err(|e| anyhow::anyhow!("the delo train flags after `--`: {e}"))?;
        if let Command::Train(a) = probe.command {
            a.settings()?;
        }
        Ok(grid)
    }
}

/// Every DeLo setting of DELO.md, with its defaults.
#[derive(Args, Clone)]
struct DeloArgs {
    /// delo, lora, unified-pool, heads-only or seq-lora.
    #[arg(long, default_value = "delo")]
    variant: String,
    /// Pool size E.
    #[arg(long = "experts", default_value_t = 16)]
    experts: usize,
    /// Selected rank r.
    #[arg(long, default_value_t = 4)]
    rank: usize,
    /// Rows per factor ρ: a number, or `r` for ρ = r (the released code's shapes).
    #[arg(long, default_value = "1")]
    factor_rank: String,
    #[arg(long, default_value_t = 2.0)]
    alpha: f32,
    /// Adapted linears of every layer, from q,k,v,o,fc1,fc2.
    #[arg(long, default_value = "q,k,v")]
    targets: String,
    /// st (straight-through), score or hard.
    #[arg(long, default_value = "st")]
    gate: String,
    #[arg(long, default_value_t = 1.0)]
    lambda_cfs: f32,
    #[arg(long, default_value_t = 0.1)]
    lambda_align: f32,
    #[arg(long, default_value_t = 0.1)]
    lambda_con: f32,
    /// EMA momentum β of the task keys.
    #[arg(long, default_value_t = 0.99)]
    ema_beta: f32,
    /// Ablation: route dummy modalities by their own queries.
    #[arg(long)]
    no_cross_modal_guide: bool,
    /// input, frozen, layer or oracle.
    #[arg(long, default_value = "input")]
    task_key: String,
    /// text, image or both.
    #[arg(long, default_value = "text")]
    con_proxy: String,
}

impl DeloArgs {
    fn config(&self) -> Result<delo::delo::config::DeloConfig> {
        use delo::delo::config::{DeloConfig, Target};
        let word = |s: &str| serde_json::Value::String(s.to_string());
        let cfg = DeloConfig {
            variant: self.variant.parse()?,
            experts: self.experts,
            rank: self.rank,
            factor_rank: if self.factor_rank == "r" {
                self.rank
            } else {
                self.factor_rank
                    .parse()
                    .context("--factor-rank: a number or `r`")?
            },
            alpha: self.alpha,
            targets: Target::parse_list(&self.targets)?,
            gate: self.gate.parse()?,
            lambda_cfs: self.lambda_cfs,
            lambda_align: self.lambda_align,
            lambda_con: self.lambda_con,
            ema_beta: self.ema_beta,
            cross_modal_guide: !self.no_cross_modal_guide,
            task_key: serde_json::from_value(word(&self.task_key))
                .context("--task-key: input, frozen, layer or oracle")?,
            con_proxy: serde_json::from_value(word(&self.con_proxy))
                .context("--con-proxy: text, image or both")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Subcommand)]
enum PrepareCmd {
    /// UPMC-Food101: images/{train,test}/<class>/*.jpg + texts/{train,test}_titles.csv.
    Food101 {
        #[command(flatten)]
        io: PrepareIo,
        /// Number of tasks.
        #[arg(long, default_value_t = 10)]
        tasks: usize,
        /// Classes per task (tasks × this are kept, the rest dropped by seed).
        #[arg(long, default_value_t = 10)]
        classes_per_task: usize,
    },
    /// MM-IMDb: <id>.jpeg + <id>.json + split.json.
    Mmimdb {
        #[command(flatten)]
        io: PrepareIo,
        /// Number of tasks.
        #[arg(long, default_value_t = 5)]
        tasks: usize,
        /// Genres per task (the tasks × this most frequent genres are kept).
        #[arg(long, default_value_t = 4)]
        genres_per_task: usize,
    },
}

#[derive(Args)]
struct PrepareIo {
    /// The raw dataset folder.
    #[arg(long)]
    raw: PathBuf,
    /// The output folder (created if needed; must differ from --raw).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the class drop, class order and val split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct SynthArgs {
    /// The output folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    tasks: usize,
    #[arg(long, default_value_t = 4)]
    classes_per_task: usize,
    /// Train items per class.
    #[arg(long, default_value_t = 24)]
    per_class: usize,
    #[arg(long, default_value_t = 8)]
    val_per_class: usize,
    #[arg(long, default_value_t = 8)]
    test_per_class: usize,
    /// Side of the square PNG images.
    #[arg(long, default_value_t = 64)]
    image_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// CPU GEMM throughput on ViLT-B/32 linear shapes, beside numpy's matmul in the same run.
    Gemm {
        /// Timed repetitions per shape (the best is kept).
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Alternating rounds of delo and numpy (each keeps its best).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Python interpreter with numpy (default: $DELO_PYTHON, else python3).
        #[arg(long)]
        python: Option<String>,
    },
    /// CPU forward samples/s of the frozen ViLT (random init), beside Hugging Face's
    /// ViltModel in PyTorch in the same run.
    Forward {
        /// Model size: `base` (ViLT-B/32) or `tiny`.
        #[arg(long, default_value = "base")]
        preset: String,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Text tokens per sample (at most the position table, 40).
        #[arg(long, default_value_t = 40)]
        text_len: usize,
        /// Side of the square images; the preset's pre-training size when absent (384 for base).
        #[arg(long)]
        image_size: Option<usize>,
        /// Timed forwards per round (the best is kept).
        #[arg(long, default_value_t = 1)]
        reps: usize,
        /// Alternating rounds of delo and PyTorch (each keeps its best over all rounds).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Python interpreter with torch and transformers (default: $DELO_PYTHON, else python3).
        #[arg(long)]
        python: Option<String>,
    },
    /// CUDA kernel microbenchmarks: the fused gathered factor composition (DeLo experts)
    /// against gather + cuBLAS, forward and backward, at the paper's shapes, in GB/s and % of
    /// the device's peak memory bandwidth. Needs a CUDA device (exits non-zero without one).
    Kernels {
        /// Timed calls per entry (averaged between two CUDA events).
        #[arg(long, default_value_t = 50)]
        reps: usize,
    },
    /// Samples/s of a full DeLo training step (both forwards, backward, AdamW) on synthetic
    /// inputs (half complete, a quarter text-missing, a quarter image-missing), beside
    /// `delo, λ_con = 0`, `lora` (the frozen-only forward+backward baseline) and `heads-only`;
    /// prints the experts' share. `--torch` adds the PyTorch reference (eager and
    /// torch.compile) timed in the same run, in alternating rounds. Defaults are sized for
    /// the CPU (tiny); use `--preset base` for ViLT-B/32.
    Train {
        /// `tiny` or `base` (ViLT-B/32), random weights.
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 40)]
        text_len: usize,
        #[arg(long, default_value_t = 384)]
        image_size: usize,
        /// `cpu` or `cuda` (bf16 frozen linears; steps pipelined as in training, each loss read one step late).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Timed steps per variant and round, after five warm-up rounds over the variants (the
        /// best round is kept).
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Alternating rounds over the variants (and the PyTorch reference).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Pool size E.
        #[arg(long, default_value_t = 16)]
        experts: usize,
        /// Selected rank r.
        #[arg(long, default_value_t = 4)]
        rank: usize,
        /// Also time benches/torch_train.py: the same step written in idiomatic, batched PyTorch
        /// (benches/torch_step.py), eager and torch.compile.
        #[arg(long)]
        torch: bool,
        /// Python with torch and transformers (default: $DELO_PYTHON, else python3).
        #[arg(long)]
        python: Option<String>,
        /// Seconds torch.compile may take before it is reported unavailable.
        #[arg(long, default_value_t = 240)]
        compile_budget: u64,
        /// Skip torch.compile (eager only).
        #[arg(long)]
        no_compile: bool,
        /// Print one JSON object (samples_per_second, launches_per_step, host_syncs_per_step,
        /// allocs_per_step, cuda_graph, every variant) instead of the tables.
        #[arg(long)]
        json: bool,
        /// On CUDA: replay each step as a CUDA graph (`on`) or launch kernel by kernel (`off`).
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        cuda_graph: String,
        /// On CUDA: the images as 8-bit images in device memory, as `train --cache-images` keeps them.
        #[arg(long)]
        cache_images: bool,
    },
}

/// A progress bar per task (loss, lr, samples/s, ETA) on a terminal; plain log lines every
/// 10 steps and at each task's end when stderr is not a terminal.
fn progress_reporter() -> impl FnMut(delo::train::Event) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut bar: Option<(usize, indicatif::ProgressBar)> = None;
    move |ev| match ev {
        delo::train::Event::Step {
            task,
            step,
            total,
            loss,
            lr,
            samples_per_second,
        } if tty => {
            if bar.as_ref().is_none_or(|(t, _)| *t != task) {
                let b = indicatif::ProgressBar::new(total as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "task {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(task.to_string());
                bar = Some((task, b));
            }
            let (_, b) = bar.as_ref().expect("just set");
            b.set_position(step as u64);
            b.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {samples_per_second:.1} samples/s"
            ));
            if step == total {
                b.finish();
            }
        }
        ev @ delo::train::Event::Step { step, total, .. } => {
            if step % 10 == 0 || step == total {
                eprintln!("{}", ev.line());
            }
        }
        ev => match &bar {
            Some((_, b)) if !b.is_finished() => b.println(ev.line()),
            _ => eprintln!("{}", ev.line()),
        },
    }
}

/// `delo grid`: writes the Slurm array, or runs the grid's settings (or one, `--index`) as
/// child processes of this executable and fails when any run failed.
fn run_grid(a: &GridArgs) -> Result<()> {
    use delo::grid::{check_device, runner, slurm};
    let grid = a.grid()?;
    let devices = a
        .devices
        .as_deref()
        .unwrap_or(if a.slurm { "cuda" } else { "cpu" });
    let devices: Vec<String> = devices.split(',').map(|d| d.trim().to_string()).collect();
    for d in &devices {
        check_device(d)?;
    }
    grid.save(&a.out)?;
    let exe = std::env::current_exe().context("finding the delo executable")?;
    let settings = grid.settings();
    if a.slurm {
        if devices.len() != 1 {
            anyhow::bail!("--slurm: one device per job (--devices cuda, the default)");
        }
        let device = devices[0].as_str();
        let (script, index) = slurm::write_slurm(&grid, &a.out, &exe, device)?;
        println!(
            "wrote {} ({} array jobs) and {}; submit with: sbatch {}",
            script.display(),
            settings.len(),
            index.display(),
            script.display()
        );
        return Ok(());
    }
    let chosen = match a.index {
        Some(i) => vec![*settings.get(i).with_context(|| {
            format!(
                "--index {i}: the grid has {} settings (0..{})",
                settings.len(),
                settings.len()
            )
        })?],
        None => settings,
    };
    let report = |line: &str| eprintln!("{line}");
    let outcomes = runner::run(&grid, &a.out, &chosen, &devices, &exe, &report);
    let count = |f: fn(&runner::Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    println!(
        "grid {}: {} trained, {} resumed, {} skipped (finished before), {} failed",
        a.out.display(),
        count(|o| *o == runner::Outcome::Trained),
        count(|o| *o == runner::Outcome::Resumed),
        count(|o| *o == runner::Outcome::Skipped),
        count(|o| matches!(o, runner::Outcome::Failed(_)))
    );
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(s, o)| match o {
            runner::Outcome::Failed(why) => Some(format!("{}: {why}", s.name())),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("{} run(s) failed:\n{}", failed.len(), failed.join("\n"));
    }
    println!("tables: delo table {}", a.out.display());
    Ok(())
}

/// A `--task-key` value.
fn parse_task_key(k: &str) -> Result<delo::delo::config::TaskKeySource> {
    serde_json::from_value(serde_json::Value::String(k.to_string()))
        .context("--task-key: input, frozen, layer or oracle")
}

/// The Python interpreter of a `delo bench` reference: `--python`, else `$DELO_PYTHON`, else
/// `python3`.
fn bench_python(arg: Option<String>) -> String {
    arg.or_else(|| std::env::var("DELO_PYTHON").ok())
        .unwrap_or_else(|| "python3".into())
}

/// Runs the command `cli`, parsed from `matches` (which say which flags were given).
pub fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    match cli.command {
        Command::Devices => {
            println!("cpu: {} threads", rayon::current_num_threads());
            match delo::Device::parse("cuda") {
                Ok(d) => println!("{}: available", d.name()),
                Err(e) => println!("cuda: unavailable ({e})"),
            }
        }
        Command::Bench(BenchCommand::Gemm {
            reps,
            rounds,
            python,
        }) => {
            let script = delo::bench::PyScript::embedded("numpy_gemm.py")?;
            let (rows, info) = delo::bench::gemm_cpu_vs_numpy(
                &delo::bench::vilt_gemm_shapes(),
                &script,
                &bench_python(python),
                reps,
                rounds,
            )?;
            print!("{}", delo::bench::gemm_table(&rows, &info));
        }
        Command::Bench(BenchCommand::Forward {
            preset,
            batch,
            text_len,
            image_size,
            reps,
            rounds,
            python,
        }) => {
            let setup = delo::bench::ForwardSetup {
                preset: delo::vilt::Preset::parse(&preset)?,
                batch,
                text_len,
                image_size,
            };
            let script = delo::bench::PyScript::embedded("torch_forward.py")?;
            let python = bench_python(python);
            let (row, info) =
                delo::bench::forward_cpu_vs_torch(setup, &script, &python, reps, rounds)?;
            print!("{}", delo::bench::forward_table(&row, &info));
        }
        Command::Prepare { dataset } => {
            use delo::data::prepare::{prepare_food101, prepare_mmimdb};
            let report = match dataset {
                PrepareCmd::Food101 {
                    io,
                    tasks,
                    classes_per_task,
                } => {
                    let opts = delo::data::Food101Options {
                        seed: io.seed,
                        tasks,
                        classes_per_task,
                    };
                    prepare_food101(&io.raw, &io.out, &opts)?
                }
                PrepareCmd::Mmimdb {
                    io,
                    tasks,
                    genres_per_task,
                } => {
                    let opts = delo::data::MmImdbOptions {
                        seed: io.seed,
                        tasks,
                        genres_per_task,
                    };
                    prepare_mmimdb(&io.raw, &io.out, &opts)?
                }
            };
            println!("{report}");
        }
        Command::Synth(a) => {
            let cfg = delo::data::SynthConfig {
                tasks: a.tasks,
                classes_per_task: a.classes_per_task,
                per_class: a.per_class,
                val_per_class: a.val_per_class,
                test_per_class: a.test_per_class,
                image_size: a.image_size,
                seed: a.seed,
            };
            println!("{}", delo::data::synth(&a.out, &cfg)?);
        }
        Command::Forward {
            model,
            inputs,
            images,
            texts,
            items,
            dump_inputs,
            image_size,
            output,
            max_text_len,
            device,
            bf16,
        } => {
            let device = delo::Device::parse(&device)?;
            let dtype = if bf16 {
                delo::DType::BF16
            } else {
                delo::DType::F32
            };
            if let Some(inputs) = inputs {
                delo::vilt::model::forward_file(
                    &model,
                    &inputs,
                    &output,
                    max_text_len,
                    &device,
                    dtype,
                )?;
            } else {
                use delo::train::{forward, inputs};
                let items = match items {
                    Some(file) => inputs::read_items(&file)?,
                    None => inputs::read_line_lists(images.as_deref(), texts.as_deref())?,
                };
                let prep = forward::RawPrep {
                    image_size: (image_size > 0).then_some(image_size),
                    max_text_len,
                };
                forward::forward_raw(
                    &model,
                    &items,
                    &prep,
                    &output,
                    dump_inputs.as_deref(),
                    &device,
                    dtype,
                )?;
                if let Some(d) = &dump_inputs {
                    println!("wrote {}", d.display());
                }
            }
            println!("wrote {}", output.display());
        }
        Command::Demo { out } => {
            let started = std::time::Instant::now();
            let table = delo::train::demo::run_demo(&out, &mut progress_reporter())?;
            println!("\n{table}");
            println!(
                "finished in {:.0} s; reports: {}/delo/report.md, {}/heads-only/report.md",
                started.elapsed().as_secs_f64(),
                out.display(),
                out.display()
            );
        }
        Command::Eval {
            run,
            split,
            task_key,
            predictions,
        } => {
            let mut tr = delo::train::Trainer::resume(&run)?;
            if let Some(k) = task_key {
                tr.use_task_key(parse_task_key(&k)?)?;
            }
            let split = match split.as_str() {
                "val" => delo::data::Split::Val,
                "test" => delo::data::Split::Test,
                s => anyhow::bail!("--split {s}: expected val or test"),
            };
            print!(
                "{}",
                delo::train::eval::eval_run(&tr, split, predictions.as_deref())?
            );
        }
        Command::Predict {
            run,
            input,
            output,
            task_key,
            task,
            top_k,
            threshold,
            batch_size,
        } => {
            use delo::train::{inputs, predict};
            let mut tr = delo::train::Trainer::resume(&run)?;
            if let Some(k) = task_key {
                tr.use_task_key(parse_task_key(&k)?)?;
            }
            let items = inputs::read_items(&input)?;
            let opts = predict::PredictOptions {
                top_k,
                threshold,
                task,
                batch_size,
            };
            let preds = predict::predict(&tr, &items, &opts)?;
            predict::write_csv(&tr, &preds, &output)?;
            println!("wrote {} predictions to {}", preds.len(), output.display());
        }
        Command::Train(a) => {
            let mut trainer = match &a.resume {
                Some(dir) => {
                    let given = matches
                        .subcommand_matches("train")
                        .context("the matches of `delo train`")?;
                    delo::train::Trainer::resume_with(dir, &a.resume_options(dir, given)?)?
                }
                None => {
                    let (data, model, out) = (
                        a.data.as_ref().unwrap(),
                        a.model.as_ref().unwrap(),
                        a.out.as_ref().unwrap(),
                    );
                    delo::train::Trainer::create(data, model, out, a.settings()?)?
                }
            };
            trainer.run(&mut progress_reporter())?;
            println!("run finished: {}", trainer.run_dir.display());
        }
        Command::Grid(a) => run_grid(&a)?,
        Command::Table { dir } => {
            use delo::grid::table;
            let c = table::collect(&dir)?;
            let md = table::render_markdown(&c);
            print!("{md}");
            let (md_path, csv_path) = (dir.join(table::MARKDOWN_FILE), dir.join(table::CSV_FILE));
            delo::st::write_atomic(&md_path, md.as_bytes())?;
            table::write_csv(&c, &csv_path)?;
            println!("wrote {} and {}", md_path.display(), csv_path.display());
        }
        Command::Params {
            model,
            tasks,
            classes_per_task,
            text_positions,
            delo: d,
        } => {
            let cfg = d.config()?;
            let vcfg = match model {
                Some(dir) => delo::vilt::ViltConfig::from_file(&dir.join("config.json"))?,
                None => delo::vilt::ViltConfig::base(),
            };
            let c = delo::delo::config::count_params(
                &cfg,
                &vcfg,
                tasks,
                classes_per_task,
                text_positions,
            );
            let m = |n: usize| format!("{:.1}M", n as f64 / 1e6);
            println!(
                "| variant | E | r | ρ | trainable per task | backbone | total ({tasks} tasks) |"
            );
            println!("|---|---|---|---|---|---|---|");
            println!(
                "| {:?} | {} | {} | {} | {} ({}) | {} | {} ({}) |",
                cfg.variant,
                cfg.experts,
                cfg.rank,
                cfg.factor_rank,
                m(c.trainable_per_task),
                c.trainable_per_task,
                m(c.backbone),
                m(c.total),
                c.total
            );
        }
        Command::InitModel {
            preset,
            out,
            seed,
            randomize_all,
            force,
        } => {
            let preset = delo::vilt::Preset::parse(&preset)?;
            let opts = delo::vilt::InitOptions {
                seed,
                randomize_all,
            };
            delo::vilt::init_model_dir(&out, preset, opts, force)?;
            println!("wrote a {preset:?} ViLT model to {}", out.display());
        }
        Command::Bench(BenchCommand::Kernels { reps }) => {
            use delo::bench::kernels;
            let rep = kernels::expert_kernels(&kernels::paper_shapes(), reps.max(1))?;
            print!("{}", kernels::kernel_table(&rep));
        }
        Command::Bench(BenchCommand::Train {
            preset,
            batch,
            text_len,
            image_size,
            device,
            steps,
            rounds,
            experts,
            rank,
            torch,
            python,
            compile_budget,
            no_compile,
            json,
            cuda_graph,
            cache_images,
        }) => {
            use delo::bench::train;
            let opts = train::TrainBenchOptions {
                preset: delo::vilt::Preset::parse(&preset)?,
                batch,
                text_len,
                image_size,
                experts,
                rank,
                steps,
                rounds,
                cuda_graph: cuda_graph == "on",
                cache_images,
            };
            let device = delo::Device::parse(&device)?;
            let script = if torch {
                Some(delo::bench::PyScript::embedded("torch_train.py")?)
            } else {
                None
            };
            let torch_ref = match &script {
                Some(script) => {
                    let config = script
                        .write_beside("config.json", &opts.preset.config().to_json_string())?;
                    // A machine without torch still gets the engine's table (gpu-check runs this).
                    match train::TorchRef::start(
                        &bench_python(python),
                        script.path(),
                        &config,
                        &opts,
                        &device,
                        compile_budget,
                        no_compile,
                    ) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            eprintln!("torch reference unavailable ({e}); timing the engine alone");
                            None
                        }
                    }
                }
                None => None,
            };
            let report = train::bench_train(&opts, &device, torch_ref)?;
            if json {
                println!("{}", train::train_json(&report));
            } else {
                print!("{}", train::train_table(&report));
            }
        }
    }
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
        let cmd = Cli::command();
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
