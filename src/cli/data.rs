//! Benchmarks on disk: `delo prepare` (from a raw dataset) and `delo synth` (synthetic).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub(super) enum PrepareCmd {
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
pub(super) struct PrepareIo {
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

/// `delo prepare food101|mmimdb`.
pub(super) fn prepare(dataset: PrepareCmd) -> Result<()> {
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
    Ok(())
}

#[derive(Args)]
pub(super) struct SynthArgs {
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

/// `delo synth`.
pub(super) fn synth(a: &SynthArgs) -> Result<()> {
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
    Ok(())
}
