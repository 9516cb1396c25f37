//! Vectorisable f32 row kernels of the CPU backend's forward hot path: exp (softmax), erf
//! (exact GELU), LayerNorm statistics.
//!
//! Calling libm's `expf` / `erff` element by element cost more of a ViLT-B/32 forward than
//! all the attention GEMMs: each is a scalar call the compiler cannot vectorise. Here the
//! functions are branch-free polynomials (selects only) over plain slices, so the loops
//! vectorise. The release build targets baseline x86-64 (SSE2), so each entry point also has
//! an AVX2 copy picked at run time: the same source compiled for wider registers. Neither copy
//! uses FMA, so both give bit-identical results and a test on one machine holds on another.

/// Defines `pub fn $name` that runs `$kernel` compiled for AVX2 when the CPU has it, else as
/// compiled for the baseline. The kernels are `#[inline(always)]`, so each copy is compiled
/// with its caller's target features.
macro_rules! with_avx2 {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $kernel:ident;) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { wide($($arg),*) };
                }
            }
            $kernel($($arg),*)
        }
    };
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in f32 and the rest (Cephes), so `x − n·ln2` loses nothing.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding 1.5·2²³ rounds an f32 of magnitude < 2²² to an integer, readable from the low bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Below this eˣ is subnormal; it is flushed to 0 (a masked attention score must give 0).
const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.0;

/// eˣ to about 2 ulp for x ≤ 88 (Cephes `expf`: x = n·ln2 + r, |r| ≤ ln2/2, a degree-7
/// polynomial for eʳ, 2ⁿ put into the exponent bits); 0 below −87.3.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = if x > EXP_HI { EXP_HI } else { x };
    let xc = if xc < EXP_LO { EXP_LO } else { xc };
    let z = xc * LOG2E + ROUND_MAGIC;
    let n = z - ROUND_MAGIC;
    let ni = (z.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((ni + 127) << 23) as u32);
    if x < EXP_LO {
        0.0
    } else {
        er * two_n
    }
}

/// Φ(x), the standard normal CDF, as `0.5·erfc(−x/√2)` with erfc by Abramowitz & Stegun
/// 7.1.26 (|error of erf| ≤ 1.5e-7): the approximation PyTorch's vectorised CPU GELU uses, so
/// the engine's GELU tracks Hugging Face's. Written on erfc(|z|) for both signs so that the
/// negative tail is not 1 − (1 − small).
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let a = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4;
    p = p * t - 1.453_152;
    p = p * t + 1.421_413_7;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let half_erfc = 0.5 * p * t * exp(-a * a);
    if x < 0.0 {
        half_erfc
    } else {
        1.0 - half_erfc
    }
}

const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn gelu_kernel(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v * normal_cdf(v);
    }
}

#[inline(always)]
fn gelu_backward_kernel(dy: &[f32], x: &[f32], dx: &mut [f32]) {
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        *o = g * (normal_cdf(v) + v * INV_SQRT_2PI * exp(-0.5 * v * v));
    }
}

with_avx2! {
    /// `y = x · Φ(x)` (exact GELU) over a slice.
    pub fn gelu(x: &[f32], y: &mut [f32]) = gelu_kernel;
}

with_avx2! {
    /// `dx = dy · (Φ(x) + x · φ(x))` over a slice.
    pub fn gelu_backward(dy: &[f32], x: &[f32], dx: &mut [f32]) = gelu_backward_kernel;
}

/// Lanes of the reductions below: independent accumulators the compiler keeps in one vector
/// register, instead of one scalar sum whose every add waits for the previous one.
const LANES: usize = 8;

#[inline(always)]
fn softmax_kernel(row: &mut [f32]) {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .chain(&mx)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    // A plain loop, so the loop vectoriser handles the exponential; the lane-wise form of the
    // other two passes leaves it scalar.
    for v in row.iter_mut() {
        *v = exp(*v - m);
    }
    let mut sum = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            sum[l] += c[l];
        }
    }
    let s: f32 = chunks.remainder().iter().sum();
    let inv = 1.0 / (s + sum.iter().sum::<f32>());
    for v in row.iter_mut() {
        *v *= inv;
    }
}

with_avx2! {
    /// Softmax of one row in place.
    pub fn softmax(row: &mut [f32]) = softmax_kernel;
}

#[inline(always)]
fn layernorm_kernel(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) -> (f32, f32) {
    // f64 lanes: the statistics stay as accurate as the reference's sequential f64 sums.
    let d = x.len() as f64;
    let mut acc = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l] as f64;
        }
    }
    let mean =
        (chunks.remainder().iter().map(|&v| v as f64).sum::<f64>() + acc.iter().sum::<f64>()) / d;
    let mut acc = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = c[l] as f64 - mean;
            acc[l] += e * e;
        }
    }
    let var = (chunks
        .remainder()
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        + acc.iter().sum::<f64>())
        / d;
    let rstd = 1.0 / (var + eps as f64).sqrt();
    for (((o, &v), &wj), &bj) in y.iter_mut().zip(x).zip(w).zip(b) {
        *o = ((v as f64 - mean) * rstd) as f32 * wj + bj;
    }
    (mean as f32, rstd as f32)
}

with_avx2! {
    /// LayerNorm of one row into `y`; returns its mean and 1/sqrt(var + eps).
    pub fn layernorm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) -> (f32, f32)
        = layernorm_kernel;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in -873_300..=880_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "relative error {worst}");
        // Subnormal results flush to 0.
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn gelu_matches_erf() {
        let xs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 5e-4).collect();
        let mut y = vec![0f32; xs.len()];
        gelu(&xs, &mut y);
        for (&x, &g) in xs.iter().zip(&y) {
            let want = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / 2f64.sqrt()));
            assert!(
                (g as f64 - want).abs() < 2e-7 * (1.0 + x.abs() as f64),
                "gelu({x})"
            );
        }
    }

    #[test]
    fn softmax_and_layernorm_rows() {
        let mut row: Vec<f32> = (0..19).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mx = row.iter().cloned().fold(f32::MIN, f32::max);
        let z: f64 = row.iter().map(|&v| ((v - mx) as f64).exp()).sum();
        let want: Vec<f64> = row.iter().map(|&v| ((v - mx) as f64).exp() / z).collect();
        let x = row.clone();
        softmax(&mut row);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{g} vs {w}");
        }
        let (w, b) = (vec![1f32; 19], vec![0f32; 19]);
        let mut y = vec![0f32; 19];
        let (mean, rstd) = layernorm_row(&x, &w, &b, 0.0, &mut y);
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / 19.0;
        let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / 19.0;
        assert!((mean as f64 - m).abs() < 1e-6);
        assert!((rstd as f64 - 1.0 / var.sqrt()).abs() < 1e-5);
        assert!((y.iter().map(|&v| v as f64).sum::<f64>()).abs() < 1e-5);
    }
}
