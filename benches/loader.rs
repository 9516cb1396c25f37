//! Loader throughput (samples/s, and per core: per worker thread, or the consumer's own
//! thread when inline) with the training pipeline's own preparation (`ViltPrep`: Pillow-exact
//! bicubic resize to a square, tokenizer, padding, normalisation at collate) on the synthetic
//! benchmark (64×64 PNG) and 384×384 JPEGs (the paper's image size), with 0 (inline), 1 and 2
//! worker threads, plus epochs served from the image cache (`--cache-images`: u8 images,
//! normalised when a batch is collated), and the bytes that cache holds. The consumer only
//! touches the pixels, so this is the rate the loader can feed a training step at.
//!
//! Run: `cargo bench --bench loader`. Absolute numbers on a shared machine are noise; compare
//! rows of one run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use delo::data::image::ImageProcessor;
use delo::data::tokenizer::BertTokenizer;
use delo::data::{synth, Benchmark, Loader, LoaderConfig, MissingSpec, Split, SynthConfig};
use delo::train::prep::ViltPrep;
use delo::vilt::{init_model_dir, InitOptions, Preset};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("delo-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

/// A benchmark of `n` 384×384 JPEGs (one task, two classes) with photo-like content: smooth
/// gradients plus noise, so decoding costs what a real photo costs.
fn jpeg_benchmark(dir: &Path, n: usize) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut items = Vec::new();
    let mut state = 0x1234_5678u32;
    for k in 0..n {
        let img = image::RgbImage::from_fn(384, 384, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = state % 48;
            image::Rgb([
                ((x + k as u32 * 7) % 256 / 2 + noise) as u8,
                ((y * 2) % 256 / 2 + noise) as u8,
                (((x + y) / 3) % 256 / 2 + noise) as u8,
            ])
        });
        let name = format!("{k:04}.jpg");
        img.save(images.join(&name)).unwrap();
        for split in ["train", "val", "test"] {
            if split == "train" || k < 2 {
                items.push(serde_json::json!({
                    "task_id": 0, "split": split, "image": name,
                    "text": format!("a photo number {k}"), "label": k % 2,
                }));
            }
        }
    }
    let json = dir.join("jpeg.json");
    std::fs::write(&json, serde_json::to_string(&items).unwrap()).unwrap();
    json
}

/// Samples/s over one epoch (best of `reps` epochs, epochs 0..reps).
fn rate(loader: &Loader<ViltPrep>, reps: u64) -> f64 {
    let mut best = 0f64;
    for epoch in 0..reps {
        let t0 = Instant::now();
        let mut n = 0usize;
        let mut sink = 0f32;
        for b in loader.epoch(epoch) {
            let b = b.unwrap();
            n += b.len();
            sink += b
                .data
                .pixel_values
                .values()
                .unwrap()
                .f32s()
                .unwrap()
                .iter()
                .step_by(97)
                .sum::<f32>();
        }
        std::hint::black_box(sink);
        best = best.max(n as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

/// Task 0's training split of `bench`, batches of 16, shuffled, on `threads` workers, with or
/// without the decoded-image cache.
fn loader_for(
    bench: &Benchmark,
    prep: Arc<ViltPrep>,
    threads: usize,
    cache_images: bool,
) -> Loader<ViltPrep> {
    Loader::from_benchmark(
        bench,
        0,
        Split::Train,
        &MissingSpec::NONE,
        0,
        prep,
        LoaderConfig {
            batch_size: 16,
            shuffle: true,
            threads,
            prefetch: 2,
            cache_images,
            ..Default::default()
        },
    )
    .unwrap()
}

fn main() {
    let synth_dir = temp("synth");
    let cfg = SynthConfig {
        per_class: 100,
        ..SynthConfig::default()
    };
    let t0 = Instant::now();
    let rep = synth(&synth_dir.0, &cfg).unwrap();
    let synth_s = t0.elapsed().as_secs_f64();
    let synth_default = temp("synth-default");
    let t0 = Instant::now();
    synth(&synth_default.0, &SynthConfig::default()).unwrap();
    let synth_default_s = t0.elapsed().as_secs_f64();

    let jpeg_dir = temp("jpeg");
    let t0 = Instant::now();
    let jpeg_json = jpeg_benchmark(&jpeg_dir.0, 96);
    let jpeg_s = t0.elapsed().as_secs_f64();

    // A tiny model folder for its tokenizer: the texts are tokenized as in training.
    let model = temp("model");
    let opts = InitOptions {
        seed: 0,
        randomize_all: false,
    };
    init_model_dir(&model.0, Preset::parse("tiny").unwrap(), opts, false).unwrap();
    let tokenizer = Arc::new(BertTokenizer::from_model_dir(&model.0).unwrap());
    let prep = |size: u32| {
        Arc::new(ViltPrep {
            tokenizer: tokenizer.clone(),
            images: ImageProcessor::square(size),
            max_text_len: 40,
            text_bucket: 1,
        })
    };

    println!("synth defaults: {synth_default_s:.2} s; synth 3x4x100: {synth_s:.2} s; 96 JPEGs 384x384 written in {jpeg_s:.2} s");
    println!(
        "{:<28} {:>7} {:>6} {:>12} {:>14}",
        "data (prep)", "threads", "cache", "samples/s", "per core"
    );
    let per_core = |r: f64, threads: usize| r / threads.max(1) as f64;
    let cases = [
        ("synth 64px PNG (64px)", rep.json_path.clone(), 64u32),
        ("synth 64px PNG (384px)", rep.json_path.clone(), 384),
        ("JPEG 384px (384px)", jpeg_json, 384),
    ];
    for (name, json, size) in cases {
        let bench = Benchmark::load(&json).unwrap();
        for threads in [0usize, 1, 2] {
            let loader = loader_for(&bench, prep(size), threads, false);
            let r = rate(&loader, 2);
            println!(
                "{name:<28} {threads:>7} {:>6} {r:>12.0} {:>14.0}",
                "off",
                per_core(r, threads)
            );
        }
        // The cache: the first epoch fills it, the timed ones are served from memory.
        let loader = loader_for(&bench, prep(size), 2, true);
        rate(&loader, 1);
        let r = rate(&loader, 2);
        println!(
            "{name:<28} {:>7} {:>6} {r:>12.0} {:>14.0}",
            2,
            "warm",
            per_core(r, 2)
        );
        let pixels = loader.len() * 3 * (size * size) as usize;
        println!(
            "{name:<28} cache holds {:.1} MiB of u8 images ({:.1} MiB as f32)",
            pixels as f64 / (1 << 20) as f64,
            4.0 * pixels as f64 / (1 << 20) as f64
        );
    }
    println!(
        "(shared machine with {} CPUs: compare rows of one run, not absolute numbers)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
