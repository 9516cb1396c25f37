//! The `delo` command line: one function per subcommand in `cli/`.

#![warn(clippy::too_many_lines)]

use clap::{CommandFactory, FromArgMatches};

mod cli;

fn main() {
    delo::malloc::keep_freed_memory();
    let matches = cli::Cli::command().get_matches();
    let args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = cli::run(args, &matches) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
