//! The `delo` command line: thin wrappers over the library.

use anyhow::Result;
use clap::{Parser, Subcommand};

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

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Devices => {
            println!("cpu: {} threads", rayon::current_num_threads());
            match delo::Device::parse("cuda") {
                Ok(d) => println!("{}: available", d.name()),
                Err(e) => println!("cuda: unavailable ({e})"),
            }
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
