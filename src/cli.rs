//! The `delo` command line: thin wrappers over the library.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

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
    /// attention_mask, token_type_ids) and write last_hidden_state and pooler_output.
    Forward {
        /// A Hugging Face ViLT model directory (config.json, model.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Input safetensors file.
        #[arg(long)]
        inputs: PathBuf,
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
        /// Python interpreter with numpy.
        #[arg(long, default_value = "python3")]
        python: String,
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
        /// Python interpreter with torch and transformers.
        #[arg(long, default_value = "python3")]
        python: String,
    },
}

/// The reference scripts, embedded so that `delo bench` works from any directory.
const NUMPY_GEMM_PY: &str = include_str!("../benches/numpy_gemm.py");
const TORCH_FORWARD_PY: &str = include_str!("../benches/torch_forward.py");

pub fn run(cli: Cli) -> Result<()> {
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
            let script = delo::bench::PyScript::write("numpy_gemm.py", NUMPY_GEMM_PY)?;
            let (rows, info) = delo::bench::gemm_cpu_vs_numpy(
                &delo::bench::vilt_gemm_shapes(),
                &script,
                &python,
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
            let script = delo::bench::PyScript::write("torch_forward.py", TORCH_FORWARD_PY)?;
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
            delo::vilt::model::forward_file(
                &model,
                &inputs,
                &output,
                max_text_len,
                &device,
                dtype,
            )?;
            println!("wrote {}", output.display());
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
    }
    Ok(())
}
