//! The `delo` binary on a CUDA device against the same binary on the CPU: `delo forward`
//! (frozen ViLT outputs within the parity tolerances) and `delo train` on the demo's synthetic
//! benchmark and tiny model (AP and FG within 1 point); a CUDA run killed inside a checkpoint
//! write resumes to an uninterrupted CUDA run's parameters and losses. Each test needs a CUDA device and the
//! embedded PTX; without them it is reported as ignored, with the reason.

mod common;

use std::path::Path;
use std::process::Command;

use common::assert_close;
use common::harness::{self, cuda_device};

fn main() {
    let tests = [
        trial!(delo_forward_cuda_matches_cpu),
        trial!(delo_train_cuda_matches_cpu),
        trial!(bench_train_json_counts_a_step_without_syncs),
        trial!(a_run_killed_inside_a_checkpoint_write_resumes_to_the_same_parameters),
    ];
    harness::main(tests.map(|t| t.needs(cuda_device())).into());
}

/// Runs `delo ARGS` and returns its standard output and error, failing the test with them when
/// it fails.
fn delo(args: &[&str]) -> (String, String) {
    let out = Command::new(common::delo_exe())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "delo {}: {}\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn delo_forward_cuda_matches_cpu() {
    let dir = common::data_dir().join("vilt-tiny");
    let inputs = dir.join("case_a_padded.safetensors");
    let root = std::env::temp_dir().join(format!("delo-cuda-forward-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let run = |device: &str, extra: &[&str]| {
        let out = root.join(format!("{device}{}.safetensors", extra.join("")));
        let mut args = vec!["forward", "--model", path(&dir), "--inputs", path(&inputs)];
        args.extend(["--output", path(&out), "--device", device]);
        args.extend(extra);
        delo(&args);
        delo::st::read_file(&out).unwrap()
    };
    let cpu = run("cpu", &[]);
    let host = |t: &delo::Tensor| t.to_vec_f32().unwrap();
    // f32 on both: only the summation order differs (the tolerances of tests/cuda_model.rs).
    let cuda = run("cuda", &[]);
    // bf16 frozen linears: 8 mantissa bits per weight, a few 1e-2 through two layers.
    let bf16 = run("cuda", &["--bf16"]);
    for name in ["last_hidden_state", "pooler_output"] {
        assert_eq!(
            cuda[name].shape(),
            cpu[name].shape(),
            "{name}: shapes differ"
        );
        assert_close(name, &host(&cuda[name]), &host(&cpu[name]), 1e-4, 1e-4);
        assert_close(name, &host(&bf16[name]), &host(&cpu[name]), 5e-2, 5e-2);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// AP and FG of a run's test split (results.json).
fn ap_fg(run: &Path) -> (f64, f64) {
    let text = std::fs::read_to_string(run.join("results.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        v["test"]["ap"].as_f64().unwrap(),
        v["test"]["fg"].as_f64().unwrap(),
    )
}

fn delo_train_cuda_matches_cpu() {
    let (root, data, model) = common::synthetic_setup("cuda-train");
    // The demo's DeLo settings (delo::train::demo::demo_settings), with f32 frozen linears on
    // both devices so that the comparison is about the CUDA path, not bf16's precision.
    let train = |device: &str, graph: &str, bucket: &str| {
        let out = root.join(format!("{device}-graph-{graph}-bucket-{bucket}"));
        let (stdout, stderr) = delo(&[
            "train",
            "--cuda-graph",
            graph,
            "--data",
            path(&data),
            "--model",
            path(&model),
            "--out",
            path(&out),
            "--device",
            device,
            "--frozen-dtype",
            "f32",
            "--lr",
            "0.003",
            "--max-text-len",
            "40",
            "--image-size",
            "96",
            "--text-bucket",
            bucket,
            "--cache-images",
        ]);
        (ap_fg(&out), format!("{stdout}{stderr}"))
    };
    // Texts padded to each batch's longest on both devices (the CPU's default): the same
    // inputs, so the comparison is about the CUDA path.
    let ((ap_cpu, fg_cpu), _) = train("cpu", "on", "1");
    let ((ap, fg), _) = train("cuda", "on", "1");
    println!("AP {ap:.2} FG {fg:.2} on CUDA, AP {ap_cpu:.2} FG {fg_cpu:.2} on the CPU");
    assert!(
        (ap - ap_cpu).abs() <= 1.0,
        "AP {ap} on CUDA, {ap_cpu} on the CPU"
    );
    assert!(
        (fg - fg_cpu).abs() <= 1.0,
        "FG {fg} on CUDA, {fg_cpu} on the CPU"
    );
    // CUDA's default 32-token text buckets: a few kinds of step, most steps replay a graph.
    let ((ap, fg), log) = train("cuda", "on", "32");
    let replayed: Vec<(u64, u64)> = log
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(": ")?;
            let (n, rest) = rest.split_once(" of ")?;
            let (total, _) = rest.split_once(" steps replayed as CUDA graphs")?;
            Some((n.parse().ok()?, total.parse().ok()?))
        })
        .collect();
    assert_eq!(replayed.len(), 3, "one graph line per task:\n{log}");
    for (n, total) in replayed {
        assert!(n * 10 >= total * 8, "{n} of {total} steps replayed");
    }
    // The graph replays exactly the kernels the plain path launches: the same results.
    let ((ap_plain, fg_plain), _) = train("cuda", "off", "32");
    assert_eq!((ap, fg), (ap_plain, fg_plain), "CUDA graph on vs off");
    // `--cache-images` kept the training images in device memory (its steps equal the host
    // path's bit for bit: tests/cuda_step.rs).
    assert_eq!(
        log.matches("images kept in device memory").count(),
        3,
        "one line per task:\n{log}"
    );
    // `delo eval` on CUDA (one forward per batch whatever tasks its samples picked, read back
    // together) gives the AP of the run's own final evaluation, waiting for the device twice
    // per batch: once for the task queries, once for every picked task's logits. No buffer's
    // shape depends on how a batch splits between tasks, so once the batches that pick the
    // most tasks have run, the device block cache serves every buffer (a forward per task
    // group allocated about five times per batch).
    let (table, _) = delo(&["eval", "--run", path(&root.join("cuda-graph-on-bucket-32"))]);
    let line = |start: &str| {
        table
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?}:\n{table}"))
    };
    let mean = line("| mean (AP) |");
    assert!(
        mean.contains(&format!(" {ap:.2} ")),
        "AP {ap:.2} in training, {mean}"
    );
    let work = line("CUDA driver work per evaluation batch");
    assert!(work.contains("host syncs 2.00,"), "{work}");
    let allocations: f64 = work
        .split_once("allocations ")
        .and_then(|(_, r)| r.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no allocation count in {work}"));
    assert!(allocations < 1.0, "{work}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// `delo bench train --json` on both devices: one JSON object whose per-step driver counts are
/// those of a step that neither synchronises the host nor allocates (CUDA), and null on the CPU.
fn bench_train_json_counts_a_step_without_syncs() {
    let run_with = |device: &str, graph: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "bench",
            "train",
            "--device",
            device,
            "--cuda-graph",
            graph,
            "--json",
            "--steps",
            "2",
            "--rounds",
            "1",
            "--image-size",
            "96",
            "--text-len",
            "16",
        ];
        args.extend(extra);
        let (out, _) = delo(&args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let run = |device: &str, graph: &str| run_with(device, graph, &[]);
    // Kernel by kernel: hundreds of launches, one wait (the previous step's loss).
    let p = run("cuda", "off");
    assert_eq!(p["cuda_graph"], false);
    assert_eq!(p["variant"], "delo");
    assert_eq!(p["host_syncs_per_step"], 0.0, "{p}");
    assert_eq!(p["allocs_per_step"], 0.0, "{p}");
    assert_eq!(p["event_waits_per_step"], 1.0, "{p}");
    assert_eq!(p["graph_launches_per_step"], 0.0, "{p}");
    assert!(p["launches_per_step"].as_f64().unwrap() > 100.0, "{p}");
    assert!(p["samples_per_second"].as_f64().unwrap() > 0.0, "{p}");
    assert_eq!(p["variants"].as_array().unwrap().len(), 4, "{p}");
    // One graph launch and nothing else; a second wait, for the staging buffer.
    let g = run("cuda", "on");
    assert_eq!(g["cuda_graph"], true);
    for v in g["variants"].as_array().unwrap() {
        assert_eq!(v["graph_launches_per_step"], 1.0, "{v}");
        assert_eq!(v["launches_per_step"], 0.0, "{v}");
        assert_eq!(v["uploads_per_step"], 0.0, "{v}");
        assert_eq!(v["host_syncs_per_step"], 0.0, "{v}");
        assert_eq!(v["allocs_per_step"], 0.0, "{v}");
        assert_eq!(v["event_waits_per_step"], 2.0, "{v}");
    }
    // With the images in the device image cache a step uploads its table of where they lie
    // instead of its f32 patch rows: per sample it embeds (the batch's, and its complete ones
    // again for the L_con proxies) 9 rows of 12 KiB (96² images, 32² patches) give way to
    // 3 + 9 words of 8 bytes.
    let cached = run_with("cuda", "on", &["--cache-images"]);
    for (v, c) in g["variants"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cached["variants"].as_array().unwrap())
    {
        let bytes = |x: &serde_json::Value| x["upload_bytes_per_step"].as_f64().unwrap();
        let saved = (bytes(v) - bytes(c)) as usize;
        let per_sample = 9 * 3 * 32 * 32 * 4 - 8 * (3 + 9);
        assert!(
            saved > 0 && saved.is_multiple_of(per_sample),
            "{} bytes uploaded per step, {} with the device cache",
            bytes(v),
            bytes(c)
        );
        assert_eq!(c["allocs_per_step"], 0.0, "{c}");
        assert_eq!(c["graph_launches_per_step"], 1.0, "{c}");
    }
    let c = run("cpu", "on");
    assert!(c["launches_per_step"].is_null(), "{c}");
    assert!(c["samples_per_second"].as_f64().unwrap() > 0.0, "{c}");
}

/// On CUDA a checkpoint inside a task drains the one-step-late loss queue and reads the state
/// back from the device; a run killed inside the write of one (CUDA graphs on) and resumed ends
/// with the same task files and loss log as an uninterrupted CUDA run.
fn a_run_killed_inside_a_checkpoint_write_resumes_to_the_same_parameters() {
    let (root, data, model) = common::synthetic_setup("cuda-resume");
    let train = |out: &Path| {
        let mut c = Command::new(common::delo_exe());
        c.args([
            "train",
            "--device",
            "cuda",
            "--data",
            path(&data),
            "--model",
        ])
        .args([path(&model), "--out", path(out), "--epochs", "2"])
        .args(["--batch-size", "16", "--max-steps-per-task", "8"])
        .args([
            "--max-text-len",
            "40",
            "--image-size",
            "96",
            "--cache-images",
        ])
        .args(["--checkpoint-every", "2"]);
        c
    };
    let (full, killed) = (root.join("full"), root.join("killed"));
    assert!(train(&full).output().unwrap().status.success());
    // Task 1's second checkpoint (step 4), after task 0's three.
    common::sigkill(common::paused_in_write(train(&killed), "checkpoints/", 5));
    let (_, log) = delo(&["train", "--resume", path(&killed)]);
    assert!(log.contains("resuming task 1 after step 2"), "{log}");
    for t in 0..3 {
        let f = format!("task{t}.safetensors");
        assert!(
            std::fs::read(full.join(&f)).unwrap() == std::fs::read(killed.join(&f)).unwrap(),
            "{f} differs from the uninterrupted CUDA run's"
        );
    }
    let losses = |run: &Path| -> Vec<(usize, usize, f32, f32)> {
        delo::train::metrics::read_metrics(run)
            .unwrap()
            .iter()
            .map(|m| (m.task, m.step, m.loss, m.lr))
            .collect()
    };
    assert_eq!(losses(&full), losses(&killed), "metrics.jsonl");
    std::fs::remove_dir_all(&root).unwrap();
}
