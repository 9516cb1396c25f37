//! Benchmarks behind `delo bench`. On shared CPUs only ratios measured in one run mean
//! anything, so every CPU figure is printed beside a reference timed in the same run. GPU
//! kernel microbenchmarks ([`kernels`]) report bandwidth against the device's peak.

pub mod kernels;
pub mod train;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::backend::{Device, Gemm};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

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
    numpy_script: &Path,
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
        numpy_info = match Command::new("python3")
            .arg(numpy_script)
            .arg(reps.to_string())
            .args(&specs)
            .output()
        {
            Ok(o) if o.status.success() => {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout)
                    .map_err(|e| Error::format(numpy_script, format!("unreadable output: {e}")))?;
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
            Ok(o) => format!(
                "numpy reference failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("numpy reference not run: {e}"),
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
