//! `delo bench kernels`: the fused gathered factor composition against the unfused one (a
//! gather, then cuBLAS strided-batched GEMMs), forward and backward, at the paper's shapes, on
//! a CUDA device, timed with CUDA events.
//!
//! Byte model (f32, 4 bytes an element; the minimum traffic of the op, the same for both paths,
//! so the unfused path's extra traffic shows as a lower effective bandwidth):
//! - forward: x read (B·T·d_in) + y written (B·T·d_out) + u written (B·T·K) + the selected
//!   factors read once per sample (B·K·(d_in + d_out)), K = r·ρ;
//! - backward: dy read (B·T·d_out) + x read (B·T·d_in) + u read (B·T·K) + dx written
//!   (B·T·d_in) + the selected factors (B·K·(d_in + d_out)) + the pool gradients written
//!   (E·ρ·(d_in + d_out)) + the gate gradients written (B·r).
//!
//! Peak bandwidth: 2 × memory clock × bus width / 8, from the device attributes
//! CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE and CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::backend::cuda::{nvtx, ExpertPath};
use crate::backend::{CudaBackend, Device};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One expert composition: batch, tokens, hidden size (d_in = d_out), pool size, selected
/// rank, factor rank.
#[derive(Clone, Copy, Debug)]
pub struct ExpertShape {
    pub b: usize,
    pub t: usize,
    pub d: usize,
    pub e: usize,
    pub r: usize,
    pub rho: usize,
}

impl ExpertShape {
    fn k(&self) -> usize {
        self.r * self.rho
    }
    /// Bytes of the forward pass under the byte model (module docs).
    pub fn forward_bytes(&self) -> f64 {
        let (b, t, d, k) = (self.b, self.t, self.d, self.k());
        4.0 * (b * t * d + b * t * d + b * t * k + b * k * 2 * d) as f64
    }
    /// Bytes of the backward pass under the byte model (module docs).
    pub fn backward_bytes(&self) -> f64 {
        let (b, t, d, k) = (self.b, self.t, self.d, self.k());
        4.0 * (3 * b * t * d + b * t * k + b * k * 2 * d + self.e * self.rho * 2 * d + b * self.r)
            as f64
    }
}

/// The paper's setting: ViLT-B/32 (d = 768), E = 16, r = 4, ρ = 1; batch 4 and 32; 185 tokens
/// (the paper's text + image length) and 657 (384×384 images at patch 32 with 40 text tokens,
/// the longest ViLT sequence).
pub fn paper_shapes() -> Vec<ExpertShape> {
    let mut v = Vec::new();
    for b in [4, 32] {
        for t in [185, 657] {
            v.push(ExpertShape {
                b,
                t,
                d: 768,
                e: 16,
                r: 4,
                rho: 1,
            });
        }
    }
    v
}

/// Timings of one pass at one shape.
pub struct KernelRow {
    pub shape: ExpertShape,
    pub pass: &'static str,
    pub fused_ms: f64,
    pub unfused_ms: f64,
    pub bytes: f64,
    /// max |fused − unfused| / max |unfused| over the pass's outputs.
    pub rel_diff: f32,
}

/// Everything `delo bench kernels` prints.
pub struct KernelReport {
    pub device: String,
    pub sms: usize,
    pub clock_khz: i32,
    pub bus_bits: i32,
    pub peak_bps: f64,
    pub nvtx: bool,
    pub reps: usize,
    pub rows: Vec<KernelRow>,
}

fn uniform(r: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_f32((0..n).map(|_| r.random_range(lo..hi)).collect(), shape)
}

/// max |a − b| / max |b| (0 when both are zero).
fn rel_diff(pairs: &[(&Tensor, &Tensor)]) -> Result<f32> {
    let (mut num, mut den) = (0f32, 0f32);
    for (a, b) in pairs {
        let (a, b) = (a.to_vec_f32()?, b.to_vec_f32()?);
        for (x, y) in a.iter().zip(&b) {
            num = num.max((x - y).abs());
            den = den.max(y.abs());
        }
    }
    Ok(if den > 0.0 { num / den } else { num })
}

/// Times the fused and the unfused expert composition at `shapes` (each pass `reps` times
/// after 3 warm-up calls). Fails without a CUDA device.
pub fn expert_kernels(shapes: &[ExpertShape], reps: usize) -> Result<KernelReport> {
    let dev = Device::parse("cuda").map_err(|e| {
        Error::Msg(format!(
            "`delo bench kernels` needs a CUDA device and a binary built with nvcc: {e}"
        ))
    })?;
    let Device::Cuda(be) = &dev else {
        unreachable!("Device::parse(\"cuda\") gives a CUDA device")
    };
    let (peak_bps, clock_khz, bus_bits) = be.peak_memory_bandwidth()?;
    let mut rows = Vec::new();
    let mut rng = StdRng::seed_from_u64(42);
    for &s in shapes {
        let _range = nvtx::range(&format!("bench kernels B={} T={}", s.b, s.t));
        let inputs = ExpertInputs::random(s, &mut rng, &dev)?;
        rows.extend(inputs.compare_paths(be, reps)?);
    }
    Ok(KernelReport {
        device: be.name()?,
        sms: be.multiprocessors(),
        clock_khz,
        bus_bits,
        peak_bps,
        nvtx: nvtx::available(),
        reps,
        rows,
    })
}

/// The operands of one expert composition at a shape, on the device: random activations and
/// pools, `r` distinct factors per sample from each pool, gates in [0.5, 1.5).
struct ExpertInputs {
    shape: ExpertShape,
    /// Input `[B, T, d]` and output gradient `[B, T, d]`.
    x: Tensor,
    dy: Tensor,
    /// Pools `[E, ρ, d]` and `[E, d, ρ]`.
    a_pool: Tensor,
    b_pool: Tensor,
    /// Selected factors `[B, r]` (i32) and their gates `[B, r]`.
    sel_a: Tensor,
    sel_b: Tensor,
    gates: Tensor,
}

/// The LoRA scale α the benchmark composes with.
const ALPHA: f32 = 2.0;

impl ExpertInputs {
    fn random(s: ExpertShape, rng: &mut StdRng, dev: &Device) -> Result<ExpertInputs> {
        let up = |t: Tensor| t.to_device(dev);
        let x = up(uniform(rng, &[s.b, s.t, s.d], -1.0, 1.0)?)?;
        let dy = up(uniform(rng, &[s.b, s.t, s.d], -1.0, 1.0)?)?;
        let scale = 1.0 / (s.d as f32).sqrt();
        let a_pool = up(uniform(rng, &[s.e, s.rho, s.d], -scale, scale)?)?;
        let b_pool = up(uniform(rng, &[s.e, s.d, s.rho], -1.0, 1.0)?)?;
        let mut pick = || {
            let mut v: Vec<i32> = Vec::with_capacity(s.b * s.r);
            for _ in 0..s.b {
                let mut ids: Vec<i32> = (0..s.e as i32).collect();
                ids.shuffle(rng);
                v.extend(&ids[..s.r]);
            }
            Tensor::from_i32(v, &[s.b, s.r])
        };
        let sel_a = up(pick()?)?;
        let sel_b = up(pick()?)?;
        let gates = up(uniform(rng, &[s.b, s.r], 0.5, 1.5)?)?;
        Ok(ExpertInputs {
            shape: s,
            x,
            dy,
            a_pool,
            b_pool,
            sel_a,
            sel_b,
            gates,
        })
    }

    /// The forward and the backward row: both paths run once and compared, then each timed.
    fn compare_paths(&self, be: &CudaBackend, reps: usize) -> Result<[KernelRow; 2]> {
        let (s, alpha) = (self.shape, ALPHA);
        let (x, dy, a_pool, b_pool) = (&self.x, &self.dy, &self.a_pool, &self.b_pool);
        let (sel_a, sel_b, gates) = (&self.sel_a, &self.sel_b, &self.gates);
        let fwd =
            |path| be.expert_forward_path(path, x, a_pool, b_pool, sel_a, sel_b, gates, alpha);
        let (y_f, u) = fwd(ExpertPath::Fused)?;
        let (y_u, _) = fwd(ExpertPath::Unfused)?;
        let bwd = |path| {
            be.expert_backward_path(path, dy, x, a_pool, b_pool, sel_a, sel_b, gates, &u, alpha)
        };
        let (g_f, g_u) = (bwd(ExpertPath::Fused)?, bwd(ExpertPath::Unfused)?);
        let fwd_diff = rel_diff(&[(&y_f, &y_u)])?;
        let bwd_diff = rel_diff(&[
            (&g_f.dx, &g_u.dx),
            (&g_f.da_pool, &g_u.da_pool),
            (&g_f.db_pool, &g_u.db_pool),
            (&g_f.dgates, &g_u.dgates),
        ])?;
        let time = |name: &str, path: ExpertPath, backward: bool| -> Result<f64> {
            let _range = nvtx::range(name);
            be.time_ms(3, reps, || {
                if backward {
                    bwd(path).map(drop)
                } else {
                    fwd(path).map(drop)
                }
            })
        };
        let row =
            |pass: &'static str, backward: bool, bytes: f64, rel_diff: f32| -> Result<KernelRow> {
                Ok(KernelRow {
                    shape: s,
                    pass,
                    fused_ms: time(&format!("fused {pass}"), ExpertPath::Fused, backward)?,
                    unfused_ms: time(&format!("unfused {pass}"), ExpertPath::Unfused, backward)?,
                    bytes,
                    rel_diff,
                })
            };
        Ok([
            row("forward", false, s.forward_bytes(), fwd_diff)?,
            row("backward", true, s.backward_bytes(), bwd_diff)?,
        ])
    }
}

/// A Markdown report of the comparison.
pub fn kernel_table(rep: &KernelReport) -> String {
    let mut s = format!(
        "Expert composition, fused vs unfused (gather + cuBLAS), on {} ({} SMs)\n\
         Peak DRAM bandwidth {:.0} GB/s (memory clock {} MHz × {}-bit bus × 2 / 8); \
         {} timed calls per entry, CUDA events; NVTX {}.\n\
         Byte model (f32): forward = x + y + u + selected factors per sample; backward = dy + \
         x + u + dx + selected factors per sample + pool gradients + gate gradients. The same \
         bytes for both paths: GB/s is the effective bandwidth of the op.\n\n\
         | B | T | d | E | r | ρ | pass | MB | fused µs | fused GB/s | fused % peak | \
         unfused µs | unfused GB/s | unfused % peak | speed-up | max rel. diff |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        rep.device,
        rep.sms,
        rep.peak_bps / 1e9,
        rep.clock_khz / 1000,
        rep.bus_bits,
        rep.reps,
        if rep.nvtx {
            "ranges on (libnvToolsExt loaded)"
        } else {
            "ranges off (libnvToolsExt not found)"
        },
    );
    for r in &rep.rows {
        let gbs = |ms: f64| r.bytes / (ms * 1e-3) / 1e9;
        let pct = |ms: f64| 100.0 * r.bytes / (ms * 1e-3) / rep.peak_bps;
        let sh = r.shape;
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0}% | {:.1} | {:.0} | \
             {:.0}% | {:.2}× | {:.1e} |\n",
            sh.b,
            sh.t,
            sh.d,
            sh.e,
            sh.r,
            sh.rho,
            r.pass,
            r.bytes / 1e6,
            r.fused_ms * 1e3,
            gbs(r.fused_ms),
            pct(r.fused_ms),
            r.unfused_ms * 1e3,
            gbs(r.unfused_ms),
            pct(r.unfused_ms),
            r.unfused_ms / r.fused_ms,
            r.rel_diff,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_model_of_the_paper_shape() {
        let s = ExpertShape {
            b: 4,
            t: 185,
            d: 768,
            e: 16,
            r: 4,
            rho: 1,
        };
        // x + y + u + factors
        let f = 4 * (4 * 185 * 768 * 2 + 4 * 185 * 4 + 4 * 4 * 1536);
        assert_eq!(s.forward_bytes(), f as f64);
        // dy + x + dx + u + factors + pools + gates
        let b = 4 * (3 * 4 * 185 * 768 + 4 * 185 * 4 + 4 * 4 * 1536 + 16 * 1536 + 16);
        assert_eq!(s.backward_bytes(), b as f64);
        assert_eq!(paper_shapes().len(), 4);
    }
}
