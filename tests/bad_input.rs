//! Bad input from real datasets, end to end: a truncated test image stops a run (naming the
//! file) or, with `--skip-bad`, is left out and reported on the console, in results.json and
//! in report.md, with an empty cell where no sample remained; an out-of-range id in
//! `delo forward` names its tensor, sample and position.

mod common;

use std::path::{Path, PathBuf};

use delo::delo::config::Variant;
use delo::report::Results;
use delo::train::demo::demo_settings;
use delo::train::{Event, TrainSettings, Trainer};

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delo-bad-input-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A JPEG of `w × h` with some structure, as bytes.
fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 + seed) as u8,
            (y * 5) as u8,
            (x * y + seed * 31) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A one-task, two-class benchmark whose only test item's image is `test_image` (bytes), and
/// the tiny model; returns (data JSON, model dir).
fn one_task_benchmark(root: &Path, test_image: &[u8]) -> (PathBuf, PathBuf) {
    let data = root.join("data");
    std::fs::create_dir_all(data.join("images")).unwrap();
    let mut items = Vec::new();
    for (i, split) in ["train", "train", "train", "train", "val", "val"]
        .iter()
        .enumerate()
    {
        let name = format!("{split}{i}.jpg");
        std::fs::write(data.join("images").join(&name), jpeg(40, 32, i as u32)).unwrap();
        items.push(
            serde_json::json!({"task_id": 0, "split": split, "image": name,
            "text": format!("a photo number {i}"), "label": i % 2}),
        );
    }
    std::fs::write(data.join("images/t.jpg"), test_image).unwrap();
    items.push(
        serde_json::json!({"task_id": 0, "split": "test", "image": "t.jpg",
        "text": "the test photo", "label": 1}),
    );
    let json = data.join("bench.json");
    std::fs::write(&json, serde_json::to_string(&items).unwrap()).unwrap();
    let model = root.join("model");
    let opts = delo::vilt::InitOptions {
        seed: 0,
        randomize_all: false,
    };
    delo::vilt::init_model_dir(
        &model,
        delo::vilt::Preset::parse("tiny").unwrap(),
        opts,
        false,
    )
    .unwrap();
    (json, model)
}

fn settings(skip_bad: bool) -> TrainSettings {
    TrainSettings {
        epochs: 1,
        missing: "both:0.0".into(),
        skip_bad,
        loader_threads: 1,
        ..demo_settings(Variant::Delo)
    }
}

fn truncated_jpeg() -> Vec<u8> {
    let whole = jpeg(48, 40, 9);
    whole[..whole.len() * 6 / 10].to_vec()
}

#[test]
fn a_truncated_test_image_stops_the_run_naming_the_file() {
    // Issue case 2: the run used to finish on grey pixels, without a word.
    let root = scratch("truncated");
    let (data, model) = one_task_benchmark(&root, &truncated_jpeg());
    let mut tr = Trainer::create(&data, &model, &root.join("run"), settings(false)).unwrap();
    let e = tr.run(&mut |_| {}).map(drop).unwrap_err().to_string();
    assert!(e.contains("images/t.jpg") && e.contains("truncated"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn skip_bad_reports_the_skipped_file_and_leaves_the_cell_empty() {
    // Issue case 3: the count and the file on the console, in results.json and report.md; a
    // task whose only test sample was skipped has an empty cell, not 0.0%.
    let root = scratch("skip-bad");
    let (data, model) = one_task_benchmark(&root, &truncated_jpeg());
    let run = root.join("run");
    let mut tr = Trainer::create(&data, &model, &run, settings(true)).unwrap();
    let mut lines = Vec::new();
    let results = tr
        .run(&mut |e: Event| {
            if let Event::Line(l) = e {
                lines.push(l.to_string());
            }
        })
        .unwrap();
    let console = lines.join("\n");
    assert!(
        console.contains("--skip-bad: left out item 6 (task 0, test)")
            && console.contains("images/t.jpg")
            && console.contains("1 unreadable image(s) left out"),
        "{console}"
    );
    assert!(console.contains("test [-] (task-id % [-])"), "{console}");

    for r in [results, Results::load(&run.join("results.json")).unwrap()] {
        assert_eq!(r.skipped_images.len(), 1);
        let s = &r.skipped_images[0];
        assert_eq!((s.item, s.task, s.split.as_str()), (6, 0, "test"));
        assert!(s.path.ends_with("images/t.jpg") && s.error.contains("truncated"));
        assert_eq!(r.test.matrix[0][0], None);
        assert_eq!(r.test.task_id_matrix[0][0], None);
        assert_eq!(r.test.no_samples, vec![[0, 0]]);
        assert_eq!(
            (r.test.tasks_evaluated, r.test.ap, r.test.fg),
            (1, None, Some(0.0))
        );
        // Val had its samples: a real value.
        assert!(r.val.matrix[0][0].is_some() && r.val.ap.is_some());
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## Skipped images"), "{report}");
    assert!(report.contains("1 image could not be read"), "{report}");
    assert!(report.contains("images/t.jpg"), "{report}");
    assert!(report.contains("| 1 |  |\n"), "the empty cell:\n{report}");
    assert!(report.contains("An empty cell had no sample"), "{report}");

    // `delo eval` says "no samples" and lists the file too.
    let tr = Trainer::resume(&run).unwrap();
    assert_eq!(tr.skipped_images().len(), 1, "kept across a resume");
    let table = delo::train::eval::eval_run(&tr, delo::data::Split::Test, None).unwrap();
    assert!(table.contains("| 1 | no samples | no samples |"), "{table}");
    assert!(table.contains("t.jpg"), "{table}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_out_of_range_id_names_the_tensor_sample_and_position() {
    // Issue case 6: `gather_rows: index 30522 at position 1 is outside 0..30522`.
    let dir = scratch("ids");
    let model = common::data_dir().join("vilt-tiny");
    let cfg = delo::vilt::ViltConfig::from_file(&model.join("config.json")).unwrap();
    let case = delo::st::read_file(&model.join("case_a_padded.safetensors")).unwrap();
    for (name, bad, limit) in [
        ("input_ids", cfg.vocab_size as i32, cfg.vocab_size),
        ("token_type_ids", 2, 2),
    ] {
        let ids = &case["input_ids"];
        let (b, t) = (ids.dim(0), ids.dim(1));
        let mut values = match name {
            "input_ids" => ids.to_vec_i32().unwrap(),
            _ => vec![0; b * t],
        };
        // Sample 1, position 2.
        values[t + 2] = bad;
        let mut tensors: Vec<(String, delo::Tensor)> = case
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        tensors.push((
            name.into(),
            delo::Tensor::from_i32(values, &[b, t]).unwrap(),
        ));
        let inputs = dir.join(format!("{name}.safetensors"));
        delo::st::write_file(&inputs, &tensors, None).unwrap();
        let out = std::process::Command::new(common::delo_exe())
            .args(["forward", "--model"])
            .arg(&model)
            .arg("--inputs")
            .arg(&inputs)
            .arg("--output")
            .arg(dir.join("out.safetensors"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!("`{name}` of sample 1 at position 2 is {bad}, outside");
        assert!(err.contains(&want), "{err}");
        assert!(err.contains(&format!("ids 0..{limit}")), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gif_named_jpg_trains_and_evaluates() {
    // Issue case 1: `cannot decode image: The image format Gif is not supported`.
    let gif = std::fs::read(common::data_dir().join("formats/gif_named.jpg")).unwrap();
    let root = scratch("gif");
    let (data, model) = one_task_benchmark(&root, &gif);
    let mut tr = Trainer::create(&data, &model, &root.join("run"), settings(false)).unwrap();
    let r = tr.run(&mut |_| {}).unwrap();
    assert!(r.test.matrix[0][0].is_some() && r.test.no_samples.is_empty());
    assert!(r.skipped_images.is_empty());
    let _ = std::fs::remove_dir_all(&root);
}
