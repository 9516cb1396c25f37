//! Where the CPU forward of ViLT-B/32 spends its time: each op family of one encoder layer
//! timed alone on the shapes of batch 4 × 185 tokens, times its count per forward, beside the
//! whole forward and [`delo::vilt::Vilt::infer`].
//! Run: `cargo run --release --example forward_profile`.

use delo::backend::{Device, Gemm};
use delo::bench::best_of;
use delo::Tensor;

fn filled(shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(
        (0..n)
            .map(|i| (((i * 31 + seed) % 97) as f32 - 48.0) / 97.0)
            .collect(),
        shape,
    )
    .unwrap()
}

fn main() -> delo::Result<()> {
    delo::malloc::keep_freed_memory();
    let (b, reps) = (4, 5);
    op_families(b, reps)?;
    whole_model(b, reps)
}

/// Each op family of one encoder layer timed alone at batch `b` × 185 tokens, times its count
/// per forward.
fn op_families(b: usize, reps: usize) -> delo::Result<()> {
    let be = Device::Cpu.backend();
    let (s, d, f, h, layers) = (185usize, 768usize, 3072usize, 12usize, 12usize);
    let rows = b * s;
    let x = filled(&[rows, d], 1);
    let x3 = filled(&[b, s, d], 2);
    let xf = filled(&[rows, f], 3);
    let (wd, wf1, wf2) = (filled(&[d, d], 4), filled(&[f, d], 5), filled(&[d, f], 6));
    let (bd, bf) = (filled(&[d], 7), filled(&[f], 8));
    let ones = Tensor::from_f32(vec![1.0; d], &[d])?;
    let mask = Tensor::from_f32(vec![1.0; b * s], &[b, s])?;
    let mut total = 0.0;
    let mut row = |name: &str, count: usize, t: f64| {
        total += t * count as f64;
        println!(
            "{name:<28} {:>8.2} ms × {count:>2} = {:>8.1} ms",
            t * 1e3,
            t * 1e3 * count as f64
        );
    };
    row(
        "matmul q/k/v/o 740×768×768",
        4 * layers,
        best_of(reps, || be.matmul(&x, &wd, Gemm::nt()).map(drop))?,
    );
    row(
        "matmul fc1 740×3072×768",
        layers,
        best_of(reps, || be.matmul(&x, &wf1, Gemm::nt()).map(drop))?,
    );
    row(
        "matmul fc2 740×768×3072",
        layers,
        best_of(reps, || be.matmul(&xf, &wf2, Gemm::nt()).map(drop))?,
    );
    row(
        "bias_add [740,768]",
        5 * layers,
        best_of(reps, || be.bias_add(&x, &bd).map(drop))?,
    );
    row(
        "bias_add [740,3072]",
        layers,
        best_of(reps, || be.bias_add(&xf, &bf).map(drop))?,
    );
    row(
        "gelu [740,3072]",
        layers,
        best_of(reps, || be.unary(delo::backend::Unary::Gelu, &xf).map(drop))?,
    );
    row(
        "layernorm [740,768]",
        2 * layers + 1,
        best_of(reps, || be.layernorm(&x, &ones, &bd, 1e-12).map(drop))?,
    );
    row(
        "add [740,768]",
        2 * layers,
        best_of(reps, || be.add(&x, &x).map(drop))?,
    );
    row(
        "attention [4,185,768] 12 h",
        layers,
        best_of(reps, || be.attention(&x3, &x3, &x3, &mask, h).map(drop))?,
    );
    println!("{:<28} {:>36.1} ms", "sum of the above", total * 1e3);
    Ok(())
}

/// The embedding, the whole forward and [`delo::vilt::Vilt::infer`] of ViLT-B/32 at batch `b`.
fn whole_model(b: usize, reps: usize) -> delo::Result<()> {
    let cfg = delo::vilt::ViltConfig::base();
    let w = delo::vilt::init_weights(
        &cfg,
        delo::vilt::InitOptions {
            seed: 0,
            randomize_all: false,
        },
    )?;
    let model = delo::vilt::Vilt::new(cfg, w, &Device::Cpu, 0, delo::DType::F32)?;
    let inputs = delo::vilt::ViltInputs {
        input_ids: Tensor::from_i32(vec![1000; b * 40], &[b, 40])?,
        attention_mask: Tensor::from_i32(vec![1; b * 40], &[b, 40])?,
        token_type_ids: None,
        pixel_values: filled(&[b, 3, 384, 384], 9).into(),
        pixel_mask: Tensor::from_i32(vec![1; b * 384 * 384], &[b, 384, 384])?,
    };
    let emb = best_of(reps, || model.embed(&inputs).map(drop))?;
    println!("{:<28} {:>36.1} ms", "embed", emb * 1e3);
    let fwd = best_of(reps, || {
        let mut tape = delo::autograd::Tape::new(Device::Cpu);
        model
            .forward(&mut tape, &inputs, &mut delo::vilt::NoAdapter)
            .map(drop)
    })?;
    println!("{:<28} {:>36.1} ms", "whole forward", fwd * 1e3);
    let infer = best_of(reps, || model.infer(&inputs).map(drop))?;
    println!(
        "{:<28} {:>36.1} ms",
        "infer (samples shared out)",
        infer * 1e3
    );
    Ok(())
}
