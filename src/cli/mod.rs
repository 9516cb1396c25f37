//! The `delo` command line: thin wrappers over the library, one function per subcommand.
//!
//! Every option is parsed into its domain type by clap (the type's `FromStr`, the one parser
//! of its spelling), so a bad value is refused before anything runs, with the accepted values.

mod bench;
mod data;
mod delo_args;
mod eval;
mod grid;
mod model;
mod progress;
mod train;

use anyhow::Result;
use clap::{ArgMatches, Parser, Subcommand, ValueEnum};

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
    Bench(bench::BenchCommand),
    /// Write a CMML benchmark (JSON + meta.json + images/) from a raw dataset.
    Prepare {
        #[command(subcommand)]
        dataset: data::PrepareCmd,
    },
    /// Write the small synthetic CMML benchmark (demo, tests).
    Synth(data::SynthArgs),
    /// Run the frozen ViLT on HF-named inputs (pixel_values, pixel_mask, input_ids,
    /// attention_mask, token_type_ids), or on raw images and texts through the training
    /// pre-processing, and write last_hidden_state and pooler_output.
    Forward(model::ForwardArgs),
    /// The synthetic benchmark, a tiny model, DeLo and heads-only trained on the CPU, and
    /// their AP/FG table (a couple of minutes at most, no downloads).
    Demo(train::DemoArgs),
    /// Evaluate a run's finished tasks (task-agnostic by default).
    Eval(eval::EvalArgs),
    /// Apply a trained run to new image–text items: per item the chosen task and its key
    /// cosine, the predicted class and score, the top-k, and for multi-label every label over
    /// the threshold, as CSV.
    Predict(eval::PredictArgs),
    /// Train DeLo on a CMML benchmark, task after task, evaluating and checkpointing each.
    Train(Box<train::TrainArgs>),
    /// Run the paper's tables of results (2–6) as a grid of `delo train` runs, one per
    /// setting, on the given devices in turn or in parallel, or as a Slurm job array; again, it
    /// skips finished runs and resumes interrupted ones. Extra `delo train` flags after `--`
    /// apply to every run.
    Grid(Box<grid::GridArgs>),
    /// Collect the runs of a `delo grid` folder into the paper's tables, beside the paper's
    /// published numbers (printed, and written as tables.md and tables.csv in the folder).
    Table(grid::TableArgs),
    /// Trainable parameters per task and total parameters of a DeLo model (paper Table 5).
    Params(model::ParamsArgs),
    /// Write a randomly initialised ViLT model directory in the Hugging Face layout
    /// (config.json, model.safetensors, vocab.txt).
    InitModel(model::InitModelArgs),
}

/// `on` or `off`: a switch that the command line spells as a word, as `--cuda-graph` does.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn is_on(self) -> bool {
        self == OnOff::On
    }
}

/// Runs the command `cli`, parsed from `matches` (which say which flags were given).
pub fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    match cli.command {
        Command::Devices => devices(),
        Command::Bench(b) => bench::run(b),
        Command::Prepare { dataset } => data::prepare(dataset),
        Command::Synth(a) => data::synth(&a),
        Command::Forward(a) => model::forward(&a),
        Command::Demo(a) => train::demo(&a),
        Command::Eval(a) => eval::eval(&a),
        Command::Predict(a) => eval::predict(&a),
        Command::Train(a) => train::train(&a, matches),
        Command::Grid(a) => grid::grid(&a),
        Command::Table(a) => grid::table(&a),
        Command::Params(a) => model::params(&a),
        Command::InitModel(a) => model::init_model(&a),
    }
}

/// `delo devices`.
fn devices() -> Result<()> {
    println!("cpu: {} threads", rayon::current_num_threads());
    match delo::Device::parse("cuda") {
        Ok(d) => println!("{}: available", d.name()),
        Err(e) => println!("cuda: unavailable ({e})"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The error of `delo ARGS`, which must be refused while parsing.
    fn refused(args: &[&str]) -> String {
        match Cli::try_parse_from(std::iter::once("delo").chain(args.iter().copied())) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// Each typed option refuses a bad value before anything runs, naming the flag and the
    /// values it takes (the domain type's own parser says which).
    #[test]
    fn bad_values_are_refused_with_the_accepted_ones() {
        let train = ["train", "--data", "d", "--model", "m", "--out", "o"];
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--variant", "loar"],
                "--variant",
                "delo, lora, unified-pool",
            ),
            (&["--gate", "soft"], "--gate", "st, score or hard"),
            (
                &["--task-key", "keys"],
                "--task-key",
                "input, frozen, layer or oracle",
            ),
            (
                &["--con-proxy", "audio"],
                "--con-proxy",
                "text, image or both",
            ),
            (&["--targets", "q,x"], "--targets", "q,k,v,o,fc1,fc2"),
            (
                &["--factor-rank", "rho"],
                "--factor-rank",
                "a number or `r`",
            ),
            (&["--device", "gpu"], "--device", "cpu, cuda or cuda:N"),
            (&["--cuda-graph", "yes"], "--cuda-graph", "on, off"),
            (&["--missing", "both"], "--missing", "TYPE:RATE"),
            (&["--checkpoint-every", "5x"], "--checkpoint-every", "`off`"),
        ];
        for (flag_value, flag, accepted) in cases {
            let e = refused(&[&train[..], *flag_value].concat());
            assert!(
                e.contains(flag) && e.contains(accepted),
                "{flag_value:?}: {e}"
            );
        }
        let e = refused(&["eval", "--run", "r", "--split", "train"]);
        assert!(e.contains("--split") && e.contains("val or test"), "{e}");
        let e = refused(&["init-model", "--out", "m", "--preset", "large"]);
        assert!(
            e.contains("--preset") && e.contains("\"tiny\" or \"base\""),
            "{e}"
        );
        let grid = [
            "grid", "--data", "d", "--model", "m", "--out", "o", "--table", "2",
        ];
        let e = refused(&[&grid[..], &["--methods", "delo,lora"]].concat());
        assert!(e.contains("--methods") && e.contains("delo-lora"), "{e}");
        let e = refused(&[&grid[..], &["--types", "text,audio"]].concat());
        assert!(
            e.contains("--types") && e.contains("text, image or both"),
            "{e}"
        );
        let e = refused(&[&grid[..], &["--devices", "cpu,cuda:x"]].concat());
        assert!(e.contains("--devices") && e.contains("cuda:N"), "{e}");
    }

    /// A device keeps the spelling it was given (run.json stores it as text).
    #[test]
    fn device_names_print_as_given() {
        for name in ["cpu", "cuda", "cuda:0", "cuda:3"] {
            assert_eq!(name.parse::<delo::DeviceName>().unwrap().to_string(), name);
        }
    }
}
