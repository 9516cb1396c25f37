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
    }
    Ok(())
}
