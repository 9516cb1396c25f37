//! `delo bench`: GEMM, forward and training-step throughput (beside their Python references)
//! and the CUDA expert kernels.

use anyhow::Result;
use clap::{Args, Subcommand};
use delo::bench::{train as bt, PyScript};
use delo::vilt::Preset;
use delo::DeviceName;

use super::OnOff;

#[derive(Subcommand)]
pub(super) enum BenchCommand {
    /// CPU GEMM throughput on ViLT-B/32 linear shapes, beside numpy's matmul in the same run.
    Gemm(GemmArgs),
    /// CPU forward samples/s of the frozen ViLT (random init), beside Hugging Face's
    /// ViltModel in PyTorch in the same run.
    Forward(ForwardArgs),
    /// CUDA kernel microbenchmarks: the fused gathered factor composition (DeLo experts)
    /// against gather + cuBLAS, forward and backward, at the paper's shapes, in GB/s and % of
    /// the device's peak memory bandwidth. Needs a CUDA device (exits non-zero without one).
    Kernels(KernelsArgs),
    /// Samples/s of a full DeLo training step (both forwards, backward, AdamW) on synthetic
    /// inputs (half complete, a quarter text-missing, a quarter image-missing), beside
    /// `delo, λ_con = 0`, `lora` (the frozen-only forward+backward baseline) and `heads-only`;
    /// prints the experts' share. `--torch` adds the PyTorch reference (eager and
    /// torch.compile) timed in the same run, in alternating rounds. Defaults are sized for
    /// the CPU (tiny); use `--preset base` for ViLT-B/32.
    Train(Box<TrainArgs>),
}

/// `delo bench …`.
pub(super) fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Gemm(a) => gemm(&a),
        BenchCommand::Forward(a) => forward(&a),
        BenchCommand::Kernels(a) => kernels(&a),
        BenchCommand::Train(a) => train(&a),
    }
}

/// The Python interpreter of a `delo bench` reference: `--python`, else `$DELO_PYTHON`, else
/// `python3`.
fn bench_python(arg: Option<&str>) -> String {
    arg.map(str::to_string)
        .or_else(|| std::env::var("DELO_PYTHON").ok())
        .unwrap_or_else(|| "python3".into())
}

#[derive(Args)]
pub(super) struct GemmArgs {
    /// Timed repetitions per shape (the best is kept).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Alternating rounds of delo and numpy (each keeps its best).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Python interpreter with numpy (default: $DELO_PYTHON, else python3).
    #[arg(long)]
    python: Option<String>,
}

/// `delo bench gemm`.
fn gemm(a: &GemmArgs) -> Result<()> {
    let script = PyScript::embedded("numpy_gemm.py")?;
    let (rows, info) = delo::bench::gemm_cpu_vs_numpy(
        &delo::bench::vilt_gemm_shapes(),
        &script,
        &bench_python(a.python.as_deref()),
        a.reps,
        a.rounds,
    )?;
    print!("{}", delo::bench::gemm_table(&rows, &info));
    Ok(())
}

#[derive(Args)]
pub(super) struct ForwardArgs {
    /// Model size: `base` (ViLT-B/32) or `tiny`.
    #[arg(long, default_value = "base")]
    preset: Preset,
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
}

/// `delo bench forward`.
fn forward(a: &ForwardArgs) -> Result<()> {
    let setup = delo::bench::ForwardSetup {
        preset: a.preset,
        batch: a.batch,
        text_len: a.text_len,
        image_size: a.image_size,
    };
    let script = PyScript::embedded("torch_forward.py")?;
    let python = bench_python(a.python.as_deref());
    let (row, info) = delo::bench::forward_cpu_vs_torch(setup, &script, &python, a.reps, a.rounds)?;
    print!("{}", delo::bench::forward_table(&row, &info));
    Ok(())
}

#[derive(Args)]
pub(super) struct KernelsArgs {
    /// Timed calls per entry (averaged between two CUDA events).
    #[arg(long, default_value_t = 50)]
    reps: usize,
}

/// `delo bench kernels`.
fn kernels(a: &KernelsArgs) -> Result<()> {
    use delo::bench::kernels;
    let rep = kernels::expert_kernels(&kernels::paper_shapes(), a.reps.max(1))?;
    print!("{}", kernels::kernel_table(&rep));
    Ok(())
}

#[derive(Args)]
pub(super) struct TrainArgs {
    /// `tiny` or `base` (ViLT-B/32), random weights.
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 40)]
    text_len: usize,
    #[arg(long, default_value_t = 384)]
    image_size: usize,
    /// `cpu` or `cuda` (bf16 frozen linears; steps pipelined as in training, each loss read one step late).
    #[arg(long, default_value = "cpu")]
    device: DeviceName,
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
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    cuda_graph: OnOff,
    /// On CUDA: the images as 8-bit images in device memory, as `train --cache-images` keeps them.
    #[arg(long)]
    cache_images: bool,
}

/// `delo bench train`.
fn train(a: &TrainArgs) -> Result<()> {
    let opts = bt::TrainBenchOptions {
        preset: a.preset,
        batch: a.batch,
        text_len: a.text_len,
        image_size: a.image_size,
        experts: a.experts,
        rank: a.rank,
        steps: a.steps,
        rounds: a.rounds,
        cuda_graph: a.cuda_graph.is_on(),
        cache_images: a.cache_images,
    };
    let device = a.device.open()?;
    let script = match a.torch {
        true => Some(PyScript::embedded("torch_train.py")?),
        false => None,
    };
    let torch_ref = match &script {
        Some(script) => torch_reference(a, script, &opts, &device)?,
        None => None,
    };
    let report = bt::bench_train(&opts, &device, torch_ref)?;
    match a.json {
        true => println!("{}", bt::train_json(&report)),
        false => print!("{}", bt::train_table(&report)),
    }
    Ok(())
}

/// The PyTorch reference of `delo bench train --torch`, started; `None` (with a note) when
/// it cannot start, so that a machine without torch still gets the engine's table
/// (gpu-check runs this).
fn torch_reference(
    a: &TrainArgs,
    script: &PyScript,
    opts: &bt::TrainBenchOptions,
    device: &delo::Device,
) -> Result<Option<bt::TorchRef>> {
    let config = script.write_beside("config.json", &opts.preset.config().to_json_string())?;
    match bt::TorchRef::start(
        &bench_python(a.python.as_deref()),
        script.path(),
        &config,
        opts,
        device,
        a.compile_budget,
        a.no_compile,
    ) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            eprintln!("torch reference unavailable ({e}); timing the engine alone");
            Ok(None)
        }
    }
}
