//! `delo bench train`: samples/s of a full DeLo training step on synthetic inputs, with the
//! breakdown that says what the experts cost, and optionally the same step written in
//! idiomatic, batched PyTorch (`benches/torch_step.py`, driven by `benches/torch_train.py`;
//! checked against the golden reference by `benches/check_torch_step.py`) timed in the same
//! run, in alternating rounds.
//!
//! Variants timed (each a complete step: forward(s), backward, AdamW, loss read-back):
//! - `delo`: the method, incl. the L_con proxy forward on the complete samples.
//! - `delo, λ_con = 0`: one adapted forward + backward, the experts' own cost.
//! - `lora`: a static rank-r LoRA on the same targets. This is the "frozen-only
//!   forward+backward" baseline: its trivial adapter in every layer forces the backward
//!   through the whole frozen trunk (input gradients of every frozen linear and attention),
//!   which `heads-only` never takes because nothing upstream of the head trains. Its own
//!   adapter work (2 rank-r GEMMs per target) is ~1% of the trunk's.
//! - `heads-only`: frozen forward, backward through the head only.
//!
//! "Experts add X%" = t(delo, λ_con = 0) / t(lora) − 1: both run one forward and one full
//! backward, so the difference is routing, compatibility and the gathered factor composition.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::json;

use crate::backend::cuda::{nvtx, DriverCounts};
use crate::backend::Device;
use crate::data::MissingType;
use crate::delo::config::{DeloConfig, Variant};
use crate::delo::losses::Targets;
use crate::delo::params::{init_params, task_specs};
use crate::error::{Error, Result};
use crate::params::ParamSet;
use crate::tensor::{DType, Tensor};
use crate::train::step::{run_step, ScalarQueue, StepBatch, StepOptim, TaskState};
use crate::vilt::{init_weights, InitOptions, Preset, Vilt, ViltConfig, ViltInputs};

/// Classes of the synthetic task (Food101's count).
const CLASSES: usize = 101;

#[derive(Clone, Debug)]
pub struct TrainBenchOptions {
    pub preset: Preset,
    pub batch: usize,
    pub text_len: usize,
    pub image_size: usize,
    pub experts: usize,
    pub rank: usize,
    /// Timed steps per variant and round (after five warm-up rounds); the best round is kept.
    pub steps: usize,
    /// Alternating rounds over all variants (and the PyTorch reference).
    pub rounds: usize,
    /// On CUDA, replay each step as a CUDA graph.
    pub cuda_graph: bool,
    /// On CUDA, the batch's images as 8-bit images in the device image cache
    /// (`--cache-images`), the patch rows gathered on the device, instead of f32 pixels.
    pub cache_images: bool,
}

/// A synthetic batch with the missing mix: samples `i % 4` ∈ {0, 1} complete, 2 text
/// missing (`[CLS][SEP]`), 3 image missing (the white dummy image, all normalised pixels 1).
/// `benches/torch_train.py` builds the same mix and text lengths.
pub fn synthetic_batch(
    cfg: &ViltConfig,
    batch: usize,
    text_len: usize,
    image_size: usize,
) -> Result<(ViltInputs, Vec<MissingType>, Targets)> {
    if text_len < 2 {
        return Err(Error::Msg(
            "--text-len must be at least 2 ([CLS][SEP])".into(),
        ));
    }
    let missing: Vec<MissingType> = (0..batch)
        .map(|i| {
            [
                MissingType::None,
                MissingType::None,
                MissingType::Text,
                MissingType::Image,
            ][i % 4]
        })
        .collect();
    let (mut ids, mut am) = (vec![0i32; batch * text_len], vec![0i32; batch * text_len]);
    let mut state = 0x9e37_79b9u32;
    let mut next = move || {
        // xorshift: cheap deterministic token ids; their values do not affect the timing.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for (i, m) in missing.iter().enumerate() {
        let n = if *m == MissingType::Text {
            2
        } else {
            (text_len - (i % 4) * (text_len / 8)).max(2)
        };
        for j in 0..n {
            ids[i * text_len + j] = 1000 + (next() as usize % (cfg.vocab_size - 1000)) as i32;
            am[i * text_len + j] = 1;
        }
        ids[i * text_len] = 101;
        ids[i * text_len + n - 1] = 102;
    }
    let px = 3 * image_size * image_size;
    let mut pv = vec![0f32; batch * px];
    for (i, m) in missing.iter().enumerate() {
        for v in &mut pv[i * px..(i + 1) * px] {
            *v = if *m == MissingType::Image {
                1.0
            } else {
                (next() % 2001) as f32 / 1000.0 - 1.0
            };
        }
    }
    let labels = (0..batch).map(|i| ((i * 37) % CLASSES) as i32).collect();
    let inputs = ViltInputs {
        input_ids: Tensor::from_i32(ids, &[batch, text_len])?,
        attention_mask: Tensor::from_i32(am, &[batch, text_len])?,
        token_type_ids: None,
        pixel_values: Tensor::from_f32(pv, &[batch, 3, image_size, image_size])?.into(),
        pixel_mask: Tensor::from_i32(
            vec![1; batch * image_size * image_size],
            &[batch, image_size, image_size],
        )?,
    };
    Ok((
        inputs,
        missing,
        Targets::Single(Tensor::from_i32(labels, &[batch])?),
    ))
}

/// `inputs` with its pixels replaced by 8-bit images of the same size in a device image
/// cache of their own (values drawn as in [`synthetic_batch`]; white for a missing image), as
/// a `--cache-images` run's steps take them once every image has been seen.
fn with_cached_images(
    be: &std::sync::Arc<crate::backend::cuda::CudaBackend>,
    inputs: ViltInputs,
    missing: &[MissingType],
) -> Result<ViltInputs> {
    let shape = inputs.pixel_values.shape();
    let (h, w) = (shape[2], shape[3]);
    let cache = std::sync::Arc::new(crate::backend::cuda::DeviceImageCache::new(
        be,
        missing.len() * 3 * h * w,
    )?);
    let mut state = 0x2545_f491u32;
    let images = missing
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let data: Vec<u8> = (0..3 * h * w)
                .map(|_| match m {
                    MissingType::Image => 255,
                    _ => {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        state as u8
                    }
                })
                .collect();
            cache.store(i, h, w, &data)
        })
        .collect::<Result<_>>()?;
    Ok(ViltInputs {
        pixel_values: crate::vilt::Pixels::Cached {
            cache,
            images,
            height: h,
            width: w,
        },
        ..inputs
    })
}

/// One timed configuration: its settings and its task's state.
struct Case {
    name: &'static str,
    what: &'static str,
    cfg: DeloConfig,
    state: TaskState,
    best_s: f64,
    /// Driver work per step of the last round (CUDA only).
    per_step: Option<DriverCounts>,
}

/// `steps` training steps run back to back as the trainer runs them (each loss queued and
/// taken one step late), then the last loss taken, which waits for the device. Returns the
/// wall time per step and, on CUDA, what the steps asked of the driver in total.
fn timed_steps(
    vilt: &Vilt,
    case: &mut Case,
    batch: &(ViltInputs, Vec<MissingType>, Targets),
    steps: usize,
    graph: bool,
) -> Result<(f64, Option<DriverCounts>)> {
    let (inputs, missing, targets) = batch;
    let counts = || match &vilt.device {
        Device::Cuda(b) => Some(b.counts()),
        Device::Cpu => None,
    };
    let mut losses = ScalarQueue::new(&vilt.device, 2, 1)?;
    let before = counts();
    let started = Instant::now();
    for _ in 0..steps {
        let batch = StepBatch {
            inputs,
            missing,
            targets,
        };
        let loss = run_step(vilt, &case.cfg, &mut case.state, &batch, OPTIM, graph)?.total;
        losses.push_late(&[&loss])?;
    }
    while losses.pop()?.is_some() {}
    let seconds = started.elapsed().as_secs_f64() / steps as f64;
    let used = counts()
        .zip(before)
        .map(|(after, before)| after.since(&before));
    Ok((seconds, used))
}

/// The optimiser settings of every timed step (the defaults of docs/method.md#optimisation).
const OPTIM: StepOptim = StepOptim {
    lr: 1e-4,
    betas: (0.9, 0.98),
    eps: 1e-8,
    weight_decay: 0.01,
};

/// The PyTorch reference, kept running between rounds so it compiles once.
pub struct TorchRef {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub info: String,
    pub eager_s: Option<f64>,
    pub compile_s: Option<f64>,
    pub compile_note: String,
}

impl TorchRef {
    /// Starts `python script --serve …` with the model's config in `config_path`.
    pub fn start(
        python: &str,
        script: &Path,
        config_path: &Path,
        o: &TrainBenchOptions,
        device: &Device,
        compile_budget_s: u64,
        no_compile: bool,
    ) -> Result<TorchRef> {
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .arg("--serve")
            .arg("--config")
            .arg(config_path)
            .args(["--batch", &o.batch.to_string()])
            .args(["--text-len", &o.text_len.to_string()])
            .args(["--image-size", &o.image_size.to_string()])
            .args(["--experts", &o.experts.to_string()])
            .args(["--rank", &o.rank.to_string()])
            .args(["--steps", &o.steps.to_string()])
            .args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }])
            .args(["--compile-budget", &compile_budget_s.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if no_compile {
            cmd.arg("--no-compile");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Msg(format!("cannot start {python} {}: {e}", script.display())))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut t = TorchRef {
            child,
            stdin,
            stdout,
            info: String::new(),
            eager_s: None,
            compile_s: None,
            compile_note: String::new(),
        };
        let v = t.read_json()?;
        t.info = format!(
            "torch {} on {}, {} threads",
            v["torch"].as_str().unwrap_or("?"),
            v["device"].as_str().unwrap_or("?"),
            v["threads"]
        );
        Ok(t)
    }

    fn read_json(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| Error::Msg(format!("torch reference: {e}")))?;
        if line.is_empty() {
            return Err(Error::Msg(
                "the torch reference exited early (its error is above)".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| Error::Msg(format!("torch reference printed {line:?}: {e}")))
    }

    /// One round of eager (and compiled) steps; keeps the best of each.
    pub fn round(&mut self) -> Result<()> {
        writeln!(self.stdin, "round")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| Error::Msg(format!("torch reference: {e}")))?;
        let v = self.read_json()?;
        let keep = |best: &mut Option<f64>, x: Option<f64>| {
            if let Some(x) = x {
                *best = Some(best.map_or(x, |b| b.min(x)));
            }
        };
        keep(&mut self.eager_s, v["eager_s"].as_f64());
        keep(&mut self.compile_s, v["compile_s"].as_f64());
        self.compile_note = v["compile_note"].as_str().unwrap_or("").to_string();
        Ok(())
    }
}

impl Drop for TorchRef {
    fn drop(&mut self) {
        // Closing stdin ends the server's loop; wait so no orphan keeps the cores busy.
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One timed variant.
pub struct TrainBenchRow {
    pub name: &'static str,
    pub what: &'static str,
    /// Wall seconds per step of the fastest round (its steps pipelined, their mean).
    pub seconds: f64,
    /// Driver work per step (CUDA only), averaged over the last round's steps.
    pub per_step: Option<PerStep>,
}

/// Driver work of one step, averaged over the timed steps.
#[derive(Clone, Copy, Debug)]
pub struct PerStep {
    pub launches: f64,
    pub memops: f64,
    pub host_syncs: f64,
    pub event_waits: f64,
    pub allocs: f64,
    pub uploads: f64,
    /// Bytes copied host → device, a graph's payload included.
    pub upload_bytes: f64,
    pub graph_launches: f64,
}

impl PerStep {
    fn of(c: &DriverCounts, steps: usize) -> PerStep {
        let n = steps.max(1) as f64;
        PerStep {
            launches: c.launches as f64 / n,
            memops: c.memops as f64 / n,
            host_syncs: c.host_syncs as f64 / n,
            event_waits: c.event_waits as f64 / n,
            allocs: c.allocs as f64 / n,
            uploads: c.uploads as f64 / n,
            upload_bytes: c.upload_bytes as f64 / n,
            graph_launches: c.graph_launches as f64 / n,
        }
    }
}

pub struct TrainBenchReport {
    pub opts: TrainBenchOptions,
    pub device: String,
    pub rows: Vec<TrainBenchRow>,
    pub torch: Option<(String, Option<f64>, Option<f64>, String)>,
}

/// Builds the model and the four variants, then times them in `rounds` alternating rounds
/// (with the PyTorch reference's round after each engine round when `torch` is given).
pub fn bench_train(
    o: &TrainBenchOptions,
    device: &Device,
    mut torch: Option<TorchRef>,
) -> Result<TrainBenchReport> {
    let vcfg = o.preset.config();
    let vilt = bench_model(o, &vcfg, device)?;
    let mut cases = variant_cases(o, &vcfg, device)?;
    let mut batch = synthetic_batch(&vcfg, o.batch, o.text_len, o.image_size)?;
    if let (true, Device::Cuda(be)) = (o.cache_images, device) {
        batch.0 = with_cached_images(be, batch.0, &batch.1)?;
    }
    let graph = o.cuda_graph && device.is_cuda();
    // Warm-up rounds over the variants before anything is timed or counted: GEMM heuristics
    // chosen, the block cache filled for every variant's shapes while every variant's own
    // state (parameters, moments, keys) is alive, and with the graph on both instances of each
    // variant's steady-state graph captured (a task's first step has no key to decay, its
    // second starts with the key's block taken, the third is the steady state's first sight,
    // run kernel by kernel; the fourth and fifth capture its two instances).
    for _ in 0..5 {
        for case in cases.iter_mut() {
            timed_steps(&vilt, case, &batch, 1, graph)?;
        }
    }
    let steps = o.steps.max(1);
    for _ in 0..o.rounds.max(1) {
        for case in cases.iter_mut() {
            let _range = nvtx::range(&format!("bench train {}", case.name));
            let (t, used) = timed_steps(&vilt, case, &batch, steps, graph)?;
            case.best_s = case.best_s.min(t);
            case.per_step = used;
        }
        if let Some(t) = torch.as_mut() {
            t.round()?;
        }
    }
    Ok(TrainBenchReport {
        opts: o.clone(),
        device: device.name(),
        rows: cases
            .iter()
            .map(|c| TrainBenchRow {
                name: c.name,
                what: c.what,
                seconds: c.best_s,
                per_step: c.per_step.map(|u| PerStep::of(&u, steps)),
            })
            .collect(),
        torch: torch.map(|t| {
            (
                t.info.clone(),
                t.eager_s,
                t.compile_s,
                t.compile_note.clone(),
            )
        }),
    })
}

/// The benchmark's ViLT of `vcfg` with seeded weights, its frozen linears in bf16 on the GPU
/// as in training (docs/method.md#optimisation).
fn bench_model(o: &TrainBenchOptions, vcfg: &ViltConfig, device: &Device) -> Result<Vilt> {
    let weights = init_weights(
        vcfg,
        InitOptions {
            seed: 42,
            randomize_all: false,
        },
    )?;
    let dtype = if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    Vilt::new(vcfg.clone(), weights, device, o.text_len, dtype)
}

/// The four timed variants (see the module comment), each with a fresh task's parameters.
fn variant_cases(o: &TrainBenchOptions, vcfg: &ViltConfig, device: &Device) -> Result<Vec<Case>> {
    let base = DeloConfig {
        experts: o.experts,
        rank: o.rank,
        ..DeloConfig::default()
    };
    base.validate()?;
    let variants: [(&str, &str, DeloConfig); 4] = [
        (
            "delo",
            "full step: main + L_con proxy forward, backward, AdamW",
            base.clone(),
        ),
        (
            "delo, λ_con = 0",
            "one adapted forward + backward (the experts' own cost)",
            DeloConfig {
                lambda_con: 0.0,
                ..base.clone()
            },
        ),
        (
            "lora",
            "frozen-only forward+backward baseline: trunk backward forced by a rank-r LoRA",
            DeloConfig {
                variant: Variant::Lora,
                ..base.clone()
            },
        ),
        (
            "heads-only",
            "frozen forward, backward through the head only",
            DeloConfig {
                variant: Variant::HeadsOnly,
                ..base.clone()
            },
        ),
    ];
    variants
        .into_iter()
        .map(|(name, what, cfg)| {
            let specs = task_specs(&cfg, vcfg, CLASSES);
            Ok(Case {
                name,
                what,
                state: TaskState {
                    params: ParamSet::new(device, init_params(&specs, 7)?)?,
                    keys: vec![None],
                },
                cfg,
                best_s: f64::INFINITY,
                per_step: None,
            })
        })
        .collect()
}

/// The Markdown table and the experts' share line.
pub fn train_table(r: &TrainBenchReport) -> String {
    let o = &r.opts;
    let mut s = train_heading(r);
    s += &speed_table(r);
    if r.rows.iter().any(|x| x.per_step.is_some()) {
        s += &driver_table(&r.rows);
    }
    let seconds = |n: &str| r.rows.iter().find(|x| x.name == n).map(|x| x.seconds);
    if let (Some(nocon), Some(full), Some(l)) =
        (seconds("delo, λ_con = 0"), seconds("delo"), seconds("lora"))
    {
        let x = (nocon / l - 1.0) * 100.0;
        s += &format!(
            "\nExperts add {x:.1}% to a frozen-only forward+backward at E={}, r={} (target < 30%: {}); the full DeLo step, with its L_con proxy forward on the complete samples, costs {:+.1}% over it.\n",
            o.experts,
            o.rank,
            if x < 30.0 { "met" } else { "NOT met" },
            (full / l - 1.0) * 100.0
        );
    }
    if let Some((info, _, _, note)) = &r.torch {
        s += &format!(
            "\nPyTorch: the delo step in idiomatic, batched PyTorch (benches/torch_step.py: HF ViLT modules, scaled_dot_product_attention, gathered factors composed with bmm/einsum, torch.optim.AdamW; checked against the golden reference by benches/check_torch_step.py): {info}; torch.compile: {note}. \"delo / eager\" > 1 means the engine is faster.\n"
        );
    }
    s
}

/// The line above the tables: the model, batch, expert settings, device and timing protocol.
fn train_heading(r: &TrainBenchReport) -> String {
    let o = &r.opts;
    let vcfg = o.preset.config();
    format!(
        "DeLo training step, {:?} ViLT (d={}, L={}), batch {}, text {} + image {}² ({} patches), E={}, r={}, on {} ({}; {} rayon threads); best of {} rounds of {} pipelined steps; CUDA graph: {}\n\n",
        o.preset,
        vcfg.hidden_size,
        vcfg.num_hidden_layers,
        o.batch,
        o.text_len,
        o.image_size,
        (o.image_size / vcfg.patch_size).pow(2),
        o.experts,
        o.rank,
        r.device,
        super::cpu_description(),
        rayon::current_num_threads(),
        o.rounds,
        o.steps,
        if o.cuda_graph && r.device.starts_with("cuda") {
            "on"
        } else {
            "off"
        }
    )
}

/// Per variant: ms/step, samples/s and the cost over `lora`, with the PyTorch reference's
/// columns on the `delo` row when it ran.
fn speed_table(r: &TrainBenchReport) -> String {
    let b = r.opts.batch as f64;
    let lora = r.rows.iter().find(|x| x.name == "lora").map(|x| x.seconds);
    let torch_cols = r.torch.is_some();
    let mut s = String::new();
    s += "| variant | what is timed | ms/step | samples/s | vs lora (frozen fwd+bwd) |";
    if torch_cols {
        s += " torch eager samples/s | torch.compile samples/s | delo / eager | delo / compile |";
    }
    s += "\n|---|---|---|---|---|";
    if torch_cols {
        s += "---|---|---|---|";
    }
    s += "\n";
    let sps = |t: f64| b / t;
    for row in &r.rows {
        let (name, what, t) = (row.name, row.what, row.seconds);
        let rel = lora.map_or("—".into(), |l| format!("{:+.1}%", (t / l - 1.0) * 100.0));
        s += &format!(
            "| {name} | {what} | {:.1} | {:.2} | {rel} |",
            t * 1e3,
            sps(t)
        );
        if let Some((_, eager, compiled, _)) = &r.torch {
            let cell = |x: &Option<f64>| x.map_or("—".into(), |x| format!("{:.2}", sps(x)));
            let ratio = |x: &Option<f64>| x.map_or("—".into(), |x| format!("{:.2}×", x / t));
            if name == "delo" {
                s += &format!(
                    " {} | {} | {} | {} |",
                    cell(eager),
                    cell(compiled),
                    ratio(eager),
                    ratio(compiled)
                );
            } else {
                s += " — | — | — | — |";
            }
        }
        s += "\n";
    }
    s
}

/// What one step asks of the driver, per variant that counted it (CUDA).
fn driver_table(rows: &[TrainBenchRow]) -> String {
    let mut s = "\nWhat one step asks of the driver (counted by the backend, steady state; with the graph on, the kernels, copies and uploads are inside the graph launch):\n\n| variant | graph launches | kernel launches | memsets + copies | host syncs | event waits | allocations | uploads | bytes uploaded |\n|---|---|---|---|---|---|---|---|---|\n".to_string();
    for row in rows {
        if let Some(p) = &row.per_step {
            s += &format!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} |\n",
                row.name,
                p.graph_launches,
                p.launches,
                p.memops,
                p.host_syncs,
                p.event_waits,
                p.allocs,
                p.uploads,
                p.upload_bytes
            );
        }
    }
    s
}

/// The report as one JSON object for scripts: the `delo` variant's figures at the top level
/// (`samples_per_second`, `launches_per_step` (kernel launches and cuBLAS calls the host
/// makes), `graph_launches_per_step`, `host_syncs_per_step`, `allocs_per_step`, …; the
/// per-step counts are null on the CPU), every variant under `variants`, and the PyTorch
/// reference's samples/s when it ran.
pub fn train_json(r: &TrainBenchReport) -> serde_json::Value {
    let o = &r.opts;
    let b = o.batch as f64;
    let row_json = |row: &TrainBenchRow| {
        let p = row.per_step.as_ref();
        json!({
            "variant": row.name,
            "ms_per_step": row.seconds * 1e3,
            "samples_per_second": b / row.seconds,
            "launches_per_step": p.map(|p| p.launches),
            "memops_per_step": p.map(|p| p.memops),
            "host_syncs_per_step": p.map(|p| p.host_syncs),
            "event_waits_per_step": p.map(|p| p.event_waits),
            "allocs_per_step": p.map(|p| p.allocs),
            "uploads_per_step": p.map(|p| p.uploads),
            "upload_bytes_per_step": p.map(|p| p.upload_bytes),
            "graph_launches_per_step": p.map(|p| p.graph_launches),
        })
    };
    let mut top = r
        .rows
        .iter()
        .find(|x| x.name == "delo")
        .map(row_json)
        .unwrap_or_else(|| json!({}));
    let torch = r.torch.as_ref().map(|(info, eager, compiled, note)| {
        json!({
            "info": info,
            "eager_samples_per_second": eager.map(|t| b / t),
            "compiled_samples_per_second": compiled.map(|t| b / t),
            "compile_note": note,
        })
    });
    let extra = json!({
        "device": r.device,
        "preset": format!("{:?}", o.preset),
        "batch": o.batch,
        "text_len": o.text_len,
        "image_size": o.image_size,
        "experts": o.experts,
        "rank": o.rank,
        "steps": o.steps,
        "rounds": o.rounds,
        "cuda_graph": o.cuda_graph && r.device.starts_with("cuda"),
        "variants": r.rows.iter().map(row_json).collect::<Vec<_>>(),
        "torch": torch,
    });
    if let (Some(t), Some(e)) = (top.as_object_mut(), extra.as_object()) {
        t.extend(e.clone());
    }
    top
}
