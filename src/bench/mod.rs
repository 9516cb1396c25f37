//! Benchmarks behind `delo bench`. On shared CPUs only ratios measured in one run mean
//! anything, so every CPU figure is printed beside a reference timed in the same run. GPU
//! kernel microbenchmarks ([`kernels`]) report bandwidth against the device's peak.

pub mod kernels;
pub mod train;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::backend::{Device, Gemm};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::vilt::{init_weights, InitOptions, Preset, Vilt, ViltConfig, ViltInputs};

/// Every Python file `delo bench` runs, and every local module those import, as (file name,
/// text), embedded so that `delo bench` works from any directory. A script runs from a folder
/// holding all of them ([`PyScript`]), so an import of one of them resolves wherever the binary
/// is; the test `shipped_imports_resolve` fails when a script imports a local module missing
/// from this list.
pub const PY_FILES: &[(&str, &str)] = &[
    ("numpy_gemm.py", include_str!("../../benches/numpy_gemm.py")),
    (
        "torch_forward.py",
        include_str!("../../benches/torch_forward.py"),
    ),
    (
        "torch_train.py",
        include_str!("../../benches/torch_train.py"),
    ),
    ("torch_step.py", include_str!("../../benches/torch_step.py")),
    (
        "delo_reference.py",
        include_str!("../../scripts/fixtures/delo_reference.py"),
    ),
    (
        "patch_order.py",
        include_str!("../../scripts/fixtures/patch_order.py"),
    ),
];

/// A reference script written, with every file of [`PY_FILES`] beside it, to a private
/// temporary folder that lives as long as this value.
pub struct PyScript {
    dir: PathBuf,
    path: PathBuf,
}

impl PyScript {
    /// Writes the embedded script `name` (one of [`PY_FILES`]) and the modules it may import.
    /// Errors: `name` is not embedded, or the folder cannot be written.
    pub fn embedded(name: &str) -> Result<PyScript> {
        let text = PY_FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| Error::Msg(format!("no embedded Python script {name}")))?;
        PyScript::write(name, text)
    }

    /// Writes `text` as `name` into a fresh per-process temporary folder, with every file of
    /// [`PY_FILES`] beside it (`text` replaces the embedded file of the same name).
    pub fn write(name: &str, text: &str) -> Result<PyScript> {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "delo-bench-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let script = PyScript {
            path: dir.join(name),
            dir,
        };
        for (file, embedded) in PY_FILES {
            script.write_beside(file, embedded)?;
        }
        script.write_beside(name, text)?;
        Ok(script)
    }

    /// Writes another file (e.g. a config the script reads) into the script's folder.
    pub fn write_beside(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// The script's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the script with `python` and parses the one JSON object it prints. A reference
    /// that cannot run (no interpreter, no torch) is not an error of the benchmark: the
    /// message comes back as `Err` for the table to show, and the engine's row still prints.
    pub fn run_json(
        &self,
        python: &str,
        args: &[String],
    ) -> std::result::Result<serde_json::Value, String> {
        match Command::new(python).arg(&self.path).args(args).output() {
            Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout)
                .map_err(|e| format!("unreadable output of {}: {e}", self.path.display())),
            Ok(o) => Err(failure(&String::from_utf8_lossy(&o.stderr))),
            Err(e) => Err(format!("not run ({python}: {e})")),
        }
    }

    /// Starts the script as a server that answers each line on its stdin with one JSON line
    /// (for a reference too slow to build to restart every round). Errors as in `run_json`.
    pub fn spawn(&self, python: &str, args: &[String]) -> std::result::Result<PyServer, String> {
        let mut child = Command::new(python)
            .arg(&self.path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("not run ({python}: {e})"))?;
        // Drained on a thread so that warnings filling the pipe cannot stall the script.
        let mut err = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(PyServer {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().expect("stdout is piped")),
            stderr: Some(stderr),
            child,
        })
    }
}

/// The last line of a failed script's stderr: for a Python traceback, the exception.
fn failure(stderr: &str) -> String {
    format!(
        "failed: {}",
        stderr.trim().lines().last().unwrap_or("no message")
    )
}

/// A running [`PyScript::spawn`]; closing its stdin on drop ends it.
pub struct PyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl PyServer {
    /// The next JSON line the script prints.
    pub fn read_json(&mut self) -> std::result::Result<serde_json::Value, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(n) if n > 0 => {
                serde_json::from_str(&line).map_err(|e| format!("unreadable output: {e}"))
            }
            _ => {
                // End of output: the script died; its stderr says why.
                self.stdin.take();
                let _ = self.child.wait();
                let err = self.stderr.take().and_then(|h| h.join().ok());
                Err(failure(&err.unwrap_or_default()))
            }
        }
    }

    /// Sends one request line and reads the JSON line that answers it.
    pub fn request(&mut self, line: &str) -> std::result::Result<serde_json::Value, String> {
        if let Some(stdin) = self.stdin.as_mut() {
            // A write to a dead script fails; read_json then reports why it died.
            let _ = writeln!(stdin, "{line}").and_then(|_| stdin.flush());
        }
        self.read_json()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl Drop for PyScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The CPU's model (Linux `/proc/cpuinfo`) and its widest vector extension detected at run
/// time, e.g. "AMD EPYC 7B13 (AVX2, no AVX-512)": every CPU figure is printed with it, since
/// a ratio to PyTorch depends on which SIMD both sides can use.
pub fn cpu_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU model".into());
    #[cfg(target_arch = "x86_64")]
    let simd = if std::arch::is_x86_feature_detected!("avx512f") {
        "AVX-512"
    } else if std::arch::is_x86_feature_detected!("avx2") {
        "AVX2, no AVX-512"
    } else {
        "no AVX2"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let simd = std::env::consts::ARCH;
    format!("{model} ({simd})")
}

/// Best wall time of `reps` runs of `f` after one warm-up run, in seconds.
pub fn best_of(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One linear-layer product `y[M,N] = x[M,K] · W[N,K]ᵀ`.
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub what: &'static str,
}

impl GemmShape {
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
}

/// The frozen linears of ViLT-B/32 at the paper's batch (4 samples × 185 tokens) and at 32.
pub fn vilt_gemm_shapes() -> Vec<GemmShape> {
    let t = 185;
    vec![
        GemmShape {
            m: 4 * t,
            n: 768,
            k: 768,
            what: "q/k/v/o, batch 4",
        },
        GemmShape {
            m: 4 * t,
            n: 3072,
            k: 768,
            what: "fc1, batch 4",
        },
        GemmShape {
            m: 4 * t,
            n: 768,
            k: 3072,
            what: "fc2, batch 4",
        },
        GemmShape {
            m: 32 * t,
            n: 768,
            k: 768,
            what: "q/k/v/o, batch 32",
        },
    ]
}

pub struct GemmRow {
    pub shape: GemmShape,
    pub delo_s: f64,
    pub numpy_s: Option<f64>,
}

/// Times the CPU backend's GEMM on `shapes` and numpy's (via `numpy_gemm.py`, when python3
/// with numpy is available). The two alternate over `rounds` rounds and each keeps its best
/// time, so a load that comes and goes on a shared machine hits both alike.
pub fn gemm_cpu_vs_numpy(
    shapes: &[GemmShape],
    numpy_script: &PyScript,
    python: &str,
    reps: usize,
    rounds: usize,
) -> Result<(Vec<GemmRow>, String)> {
    let be = Device::Cpu.backend();
    let mut rows: Vec<GemmRow> = shapes
        .iter()
        .map(|&shape| GemmRow {
            shape,
            delo_s: f64::INFINITY,
            numpy_s: None,
        })
        .collect();
    let specs: Vec<String> = shapes
        .iter()
        .map(|s| format!("{},{},{}", s.m, s.n, s.k))
        .collect();
    let mut numpy_info = String::new();
    for _ in 0..rounds.max(1) {
        for row in rows.iter_mut() {
            let s = row.shape;
            let x = Tensor::from_f32(
                (0..s.m * s.k)
                    .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
                    .collect(),
                &[s.m, s.k],
            )?;
            let w = Tensor::from_f32(
                (0..s.n * s.k)
                    .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
                    .collect(),
                &[s.n, s.k],
            )?;
            row.delo_s = row
                .delo_s
                .min(best_of(reps, || be.matmul(&x, &w, Gemm::nt()).map(drop))?);
        }
        let mut args = vec![reps.to_string()];
        args.extend(specs.iter().cloned());
        numpy_info = match numpy_script.run_json(python, &args) {
            Ok(v) => {
                for (row, spec) in rows.iter_mut().zip(&specs) {
                    if let Some(t) = v[spec].as_f64() {
                        row.numpy_s = Some(row.numpy_s.map_or(t, |b: f64| b.min(t)));
                    }
                }
                format!(
                    "numpy {} ({})",
                    v["numpy"].as_str().unwrap_or("?"),
                    v["blas"].as_str().unwrap_or("?")
                )
            }
            Err(e) => format!("numpy reference {e}"),
        };
    }
    Ok((rows, numpy_info))
}

/// A Markdown table of the GEMM comparison.
pub fn gemm_table(rows: &[GemmRow], numpy_info: &str) -> String {
    let mut s = format!(
        "CPU GEMM, {} rayon threads; reference: {numpy_info}\n\n| shape (M×N×K) | layer | delo GFLOP/s | numpy GFLOP/s | delo / numpy |\n|---|---|---|---|---|\n",
        rayon::current_num_threads()
    );
    for r in rows {
        let g = |t: f64| r.shape.flops() / t / 1e9;
        let (np, ratio) = match r.numpy_s {
            Some(t) => (format!("{:.1}", g(t)), format!("{:.2}×", t / r.delo_s)),
            None => ("—".into(), "—".into()),
        };
        s += &format!(
            "| {}×{}×{} | {} | {:.1} | {np} | {ratio} |\n",
            r.shape.m,
            r.shape.n,
            r.shape.k,
            r.shape.what,
            g(r.delo_s)
        );
    }
    s
}

/// What `delo bench forward` runs: a randomly initialised ViLT of `preset`'s dimensions on a
/// batch of `batch` texts of `text_len` tokens and `image_size`² images.
#[derive(Clone, Copy, Debug)]
pub struct ForwardSetup {
    pub preset: Preset,
    pub batch: usize,
    pub text_len: usize,
    /// Side of the square images; `None` takes the preset's pre-training size.
    pub image_size: Option<usize>,
}

/// The engine's and PyTorch's times per forward of one batch, each side's best of every round.
pub struct ForwardRow {
    pub cfg: ViltConfig,
    pub setup: ForwardSetup,
    pub image_size: usize,
    /// Tokens of one sample: text, then image CLS and patches.
    pub text_tokens: usize,
    pub image_tokens: usize,
    pub delo_rounds: Vec<f64>,
    /// Empty when the reference did not run.
    pub torch_rounds: Vec<f64>,
    /// The 1-minute load average before and after the run (Linux), to judge the noise by.
    pub load: Option<(f64, f64)>,
}

impl ForwardRow {
    /// The best time of the engine over all rounds.
    pub fn delo_s(&self) -> f64 {
        best(&self.delo_rounds).unwrap_or(f64::INFINITY)
    }
    /// The best time of the reference over all rounds, when it ran.
    pub fn torch_s(&self) -> Option<f64> {
        best(&self.torch_rounds)
    }
}

fn best(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| (v[(n - 1) / 2] + v[n / 2]) / 2.0)
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Deterministic inputs of the setup: random token ids (no padding), pixels in [-1, 1] and
/// all-ones masks, so every sample has every patch and both sides do the same work.
fn forward_inputs(cfg: &ViltConfig, s: &ForwardSetup, image: usize) -> Result<ViltInputs> {
    let (b, t) = (s.batch, s.text_len);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // SplitMix64: any fixed stream will do; the values only need to look like data.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let vocab = cfg.vocab_size as u64;
    let ids = (0..b * t)
        .map(|_| (104.min(vocab - 1) + next() % (vocab - 104.min(vocab - 1))) as i32)
        .collect();
    let pixels = (0..b * 3 * image * image)
        .map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect();
    Ok(ViltInputs {
        input_ids: Tensor::from_i32(ids, &[b, t])?,
        attention_mask: Tensor::from_i32(vec![1; b * t], &[b, t])?,
        token_type_ids: None,
        pixel_values: Tensor::from_f32(pixels, &[b, 3, image, image])?.into(),
        pixel_mask: Tensor::from_i32(vec![1; b * image * image], &[b, image, image])?,
    })
}

/// Times the frozen ViLT forward on the CPU backend and Hugging Face's `ViltModel` in PyTorch
/// (`torch_forward.py` run by `python`, with as many threads as rayon has). The two alternate
/// over `rounds` rounds of `reps` forwards each and each keeps its best, so a load that comes
/// and goes on a shared machine hits both alike; the PyTorch model is built once and stays up,
/// so a round can be as short as one forward each. Returns the row and a line describing the
/// reference (or why it did not run).
pub fn forward_cpu_vs_torch(
    setup: ForwardSetup,
    torch_script: &PyScript,
    python: &str,
    reps: usize,
    rounds: usize,
) -> Result<(ForwardRow, String)> {
    let cfg = setup.preset.config();
    let image = setup.image_size.unwrap_or(cfg.image_size);
    check_forward_setup(&cfg, &setup, image)?;
    let weights = init_weights(
        &cfg,
        InitOptions {
            seed: 0,
            randomize_all: false,
        },
    )?;
    let model = Vilt::new(cfg.clone(), weights, &Device::Cpu, 0, DType::F32)?;
    let inputs = forward_inputs(&cfg, &setup, image)?;
    let grid = image / cfg.patch_size;
    let mut row = ForwardRow {
        cfg: cfg.clone(),
        setup,
        image_size: image,
        text_tokens: setup.text_len,
        image_tokens: 1 + grid * grid,
        delo_rounds: Vec::new(),
        torch_rounds: Vec::new(),
        load: None,
    };
    let load_before = load_average();
    let (mut torch, mut info) = start_torch_forward(torch_script, python, &cfg, &setup, image);
    let forward = || model.infer(&inputs).map(drop);
    forward()?; // warm-up, as the reference did before its first line
    for _ in 0..rounds.max(1) {
        let mut round_best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            forward()?;
            round_best = round_best.min(t.elapsed().as_secs_f64());
        }
        row.delo_rounds.push(round_best);
        if let Ok((p, _)) = &mut torch {
            match p.request(&reps.max(1).to_string()) {
                Ok(v) => row.torch_rounds.extend(v["best_s"].as_f64()),
                Err(e) => {
                    // Half a comparison would mislead: drop what the reference measured.
                    info = format!("PyTorch reference {e}");
                    row.torch_rounds.clear();
                    torch = Err(e);
                }
            }
        }
    }
    row.load = load_before.zip(load_average());
    Ok((row, info))
}

/// Checks that the forward setup fits the model: a text within ViLT's position table, a
/// batch and at least one patch per image. Errors name the flag and the range.
fn check_forward_setup(cfg: &ViltConfig, setup: &ForwardSetup, image: usize) -> Result<()> {
    if setup.text_len == 0 || setup.text_len > cfg.max_position_embeddings {
        return Err(Error::Msg(format!(
            "--text-len must be 1..={} (the text position table; Hugging Face does not stretch it)",
            cfg.max_position_embeddings
        )));
    }
    if setup.batch == 0 || image < cfg.patch_size {
        return Err(Error::Msg(format!(
            "need a batch of at least 1 and images of at least one {p}×{p} patch",
            p = cfg.patch_size
        )));
    }
    Ok(())
}

/// Starts the PyTorch forward reference as a server and waits for its first line (sent once
/// its model is built and warm). Returns it, or why it did not start, and the line that
/// describes it.
fn start_torch_forward(
    torch_script: &PyScript,
    python: &str,
    cfg: &ViltConfig,
    setup: &ForwardSetup,
    image: usize,
) -> (
    std::result::Result<(PyServer, serde_json::Value), String>,
    String,
) {
    let args: Vec<String> = [
        rayon::current_num_threads(),
        setup.batch,
        setup.text_len,
        image,
    ]
    .iter()
    .map(|v| v.to_string())
    .chain([cfg.to_json_string()])
    .collect();
    let torch = torch_script.spawn(python, &args).and_then(|mut p| {
        let v = p.read_json()?;
        Ok((p, v))
    });
    let info = match &torch {
        Ok((_, v)) => format!(
            "PyTorch {} + transformers {} ViltModel ({} attention, {} threads, no_grad)",
            v["torch"].as_str().unwrap_or("?"),
            v["transformers"].as_str().unwrap_or("?"),
            v["attn"].as_str().unwrap_or("?"),
            v["threads"]
        ),
        Err(e) => format!("PyTorch reference {e}"),
    };
    (torch, info)
}

/// A Markdown table of the forward comparison, with the medians and the machine's load below
/// it: on a shared machine the best of each side is the figure, the rest says how noisy it was.
pub fn forward_table(r: &ForwardRow, torch_info: &str) -> String {
    let sps = |t: f64| r.setup.batch as f64 / t;
    let (torch, ratio) = match r.torch_s() {
        Some(t) => (format!("{:.2}", sps(t)), format!("{:.2}×", t / r.delo_s())),
        None => ("— (not measured)".into(), "—".into()),
    };
    let mut s = format!(
        "CPU ViLT forward on {}, {} rayon threads; reference: {torch_info}\n\n\
         | model | batch | tokens / sample | delo samples/s | PyTorch samples/s | delo / PyTorch (target ≥ 1.0×) |\n\
         |---|---|---|---|---|---|\n\
         | {:?} (d {}, {} layers, {} heads), random init | {} | {} text + {} image ({}×{}) | {:.2} | {torch} | {ratio} |\n",
        cpu_description(),
        rayon::current_num_threads(),
        r.setup.preset,
        r.cfg.hidden_size,
        r.cfg.num_hidden_layers,
        r.cfg.num_attention_heads,
        r.setup.batch,
        r.text_tokens,
        r.image_tokens,
        r.image_size,
        r.image_size,
        sps(r.delo_s()),
    );
    s += &format!("\nBest of {} alternating rounds each.", r.delo_rounds.len());
    if let Some(d) = median(&r.delo_rounds) {
        s += &format!(" Medians: delo {:.2} samples/s", sps(d));
        if let Some(t) = median(&r.torch_rounds) {
            s += &format!(", PyTorch {:.2} samples/s ({:.2}×)", sps(t), t / d);
        }
        s += ".";
    }
    if let Some((a, b)) = r.load {
        s += &format!(" Load average (1 min): {a:.2} before, {b:.2} after.");
    }
    s + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Modules the scripts import that are not ours: Python's standard library and the
    /// packages of the reference environment (torch, transformers, ...). An import neither here
    /// nor in [`PY_FILES`] fails `shipped_imports_resolve`, so adding one is a conscious act.
    const NOT_OURS: &[&str] = &[
        "argparse",
        "contextlib",
        "dataclasses",
        "json",
        "math",
        "os",
        "signal",
        "sys",
        "time",
        "numpy",
        "PIL",
        "safetensors",
        "torch",
        "transformers",
    ];

    /// The top-level modules a Python file imports (`import a.b, c as d`, `from a.b import x`,
    /// at any indentation); a relative import is reported as ".".
    fn imports(text: &str) -> Vec<String> {
        let top = |m: &str| {
            let m = m.trim();
            if m.starts_with('.') {
                ".".to_string()
            } else {
                m.split(['.', ' ']).next().unwrap_or("").to_string()
            }
        };
        let mut out = Vec::new();
        for line in text.lines() {
            let code = line.split('#').next().unwrap_or("").trim();
            if let Some(rest) = code.strip_prefix("import ") {
                out.extend(rest.split(',').map(top));
            } else if let Some((module, _)) = code
                .strip_prefix("from ")
                .and_then(|rest| rest.split_once(" import "))
            {
                out.push(top(module));
            }
        }
        out
    }

    /// (file, module) for every import in `files` that is neither in NOT_OURS nor one of `files`.
    fn unresolved(files: &[(&str, &str)]) -> Vec<(String, String)> {
        let ours = |m: &str| files.iter().any(|(n, _)| n.strip_suffix(".py") == Some(m));
        files
            .iter()
            .flat_map(|(name, text)| imports(text).into_iter().map(move |m| (*name, m)))
            .filter(|(_, m)| !NOT_OURS.contains(&m.as_str()) && !ours(m))
            .map(|(n, m)| (n.to_string(), m))
            .collect()
    }

    #[test]
    fn import_forms_are_parsed() {
        let text = "import os, sys as s\nfrom a.b import c\n    import torch.nn.functional as F\n\
                    x = 1  # import nothing\nfrom the docstring, not code\nfrom . import y\n";
        assert_eq!(imports(text), ["os", "sys", "a", "torch", "."]);
    }

    #[test]
    fn shipped_imports_resolve() {
        assert_eq!(unresolved(PY_FILES), Vec::<(String, String)>::new());
        // The list is not vacuous: the train reference imports two of our modules.
        let train = PY_FILES
            .iter()
            .find(|(n, _)| *n == "torch_train.py")
            .unwrap();
        assert!(imports(train.1).contains(&"torch_step".to_string()));
    }

    #[test]
    fn a_module_missing_from_the_shipped_set_is_reported() {
        let without: Vec<_> = PY_FILES
            .iter()
            .filter(|(n, _)| *n != "patch_order.py")
            .copied()
            .collect();
        let missing = unresolved(&without);
        for script in ["delo_reference.py", "torch_step.py", "torch_forward.py"] {
            let want = (script.to_string(), "patch_order".to_string());
            assert!(missing.contains(&want), "{missing:?}");
        }
    }

    #[test]
    fn a_script_runs_from_a_folder_with_every_shipped_file() {
        let script = PyScript::embedded("torch_train.py").unwrap();
        let dir = script.path().parent().unwrap().to_path_buf();
        for (name, text) in PY_FILES {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), *text);
        }
        // Two scripts of one process get two folders; each is removed with its script.
        let other = PyScript::write("torch_train.py", "").unwrap();
        assert_ne!(other.path(), script.path());
        drop(script);
        assert!(!dir.exists());
        assert!(other.path().exists());
    }

    #[test]
    fn an_unknown_embedded_script_is_an_error() {
        let err = PyScript::embedded("nope.py").err().expect("not embedded");
        assert!(err.to_string().contains("nope.py"), "{err}");
    }
}
