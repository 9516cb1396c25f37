//! The `delo` command line: thin wrappers over the library.

use anyhow::{Context, Result};
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
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// CPU GEMM throughput on ViLT-B/32 linear shapes, beside numpy's matmul in the same run.
    Gemm {
        /// Timed repetitions per shape (the best is kept).
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// CUDA kernel microbenchmarks: the fused gathered factor composition (DeLo experts)
    /// against gather + cuBLAS, forward and backward, at the paper's shapes, in GB/s and % of
    /// the device's peak memory bandwidth. Needs a CUDA device (exits non-zero without one).
    Kernels {
        /// Timed calls per entry (averaged between two CUDA events).
        #[arg(long, default_value_t = 50)]
        reps: usize,
    },
}

/// The numpy reference script, embedded so that `delo bench` works from any directory.
const NUMPY_GEMM_PY: &str = include_str!("../benches/numpy_gemm.py");

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Devices => {
            println!("cpu: {} threads", rayon::current_num_threads());
            match delo::Device::parse("cuda") {
                Ok(d) => println!("{}: available", d.name()),
                Err(e) => println!("cuda: unavailable ({e})"),
            }
        }
        Command::Bench(BenchCommand::Gemm { reps }) => {
            let script =
                std::env::temp_dir().join(format!("delo-numpy-gemm-{}.py", std::process::id()));
            std::fs::write(&script, NUMPY_GEMM_PY)
                .with_context(|| format!("writing {}", script.display()))?;
            let result =
                delo::bench::gemm_cpu_vs_numpy(&delo::bench::vilt_gemm_shapes(), &script, reps);
            let _ = std::fs::remove_file(&script);
            let (rows, info) = result?;
            print!("{}", delo::bench::gemm_table(&rows, &info));
        }
        Command::Bench(BenchCommand::Kernels { reps }) => {
            use delo::bench::kernels;
            let rep = kernels::expert_kernels(&kernels::paper_shapes(), reps.max(1))?;
            print!("{}", kernels::kernel_table(&rep));
        }
    }
    Ok(())
}
