//! The CMML format read from disk, and the synthetic benchmark: format, determinism, speed and
//! learnable signal in each modality.

mod data_util;

use std::collections::HashMap;
use std::time::Instant;

use data_util::{write, TempDir};
use delo::data::{synth, Benchmark, Label, LabelKind, MissingType, Split, SynthConfig};

#[test]
fn load_from_file_or_folder_with_optional_meta() {
    let dir = TempDir::new("cmml-load");
    let items: Vec<String> = (0..2)
        .flat_map(|t| {
            ["train", "val", "test"].map(move |s| {
                format!(
                    r#"{{"task_id":{t},"split":"{s}","image":"sub/{t}{s}.jpg","text":["x","y"],"label":{}}}"#,
                    t * 2 + 1
                )
            })
        })
        .collect();
    write(&dir.join("bench.json"), &format!("[{}]", items.join(",\n")));
    let b = Benchmark::load(dir.join("bench.json")).unwrap();
    assert_eq!(b.name, "bench");
    assert_eq!(b.kind, LabelKind::Single);
    assert_eq!(b.num_classes, 4);
    assert_eq!(b.tasks[1].classes, vec![3]);
    assert_eq!(b.items[4].image_path, dir.join("images/sub/1val.jpg"));
    assert_eq!(b.items[4].text, "x. y");

    // A folder works too, and meta.json is picked up.
    write(
        &dir.join("meta.json"),
        r#"{"name":"Mine","class_names":["a","b","c","d","e"]}"#,
    );
    let b = Benchmark::load(dir.path()).unwrap();
    assert_eq!(b.name, "Mine");
    assert_eq!(b.num_classes, 5);
    assert_eq!(b.class_name(3), "d");

    // A broken meta.json is an error naming it.
    write(&dir.join("meta.json"), r#"{"kind": 3}"#);
    let e = Benchmark::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("meta.json") && e.contains("\"kind\""), "{e}");
    std::fs::remove_file(dir.join("meta.json")).unwrap();

    // Two candidate JSON files in a folder: ask for the file.
    write(&dir.join("other.json"), "[]");
    let e = Benchmark::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("bench.json") && e.contains("other.json"), "{e}");
}

#[test]
fn malformed_json_names_file_line_and_column() {
    let dir = TempDir::new("cmml-bad");
    let p = dir.join("b.json");
    write(
        &p,
        "[\n  {\"task_id\": 0, \"split\": \"train\",\n   \"image\": \"a.jpg\" \"text\": \"t\"}\n]",
    );
    let e = Benchmark::load(&p).unwrap_err().to_string();
    assert!(e.contains("b.json") && e.contains("line 3, column"), "{e}");
    let e = Benchmark::load(dir.join("absent.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.json"), "{e}");
}

fn small_cfg(seed: u64) -> SynthConfig {
    SynthConfig {
        tasks: 3,
        classes_per_task: 4,
        per_class: 12,
        val_per_class: 4,
        test_per_class: 10,
        image_size: 32,
        seed,
    }
}

#[test]
fn synth_defaults_are_fast_and_load_back() {
    let dir = TempDir::new("synth-default");
    let t0 = Instant::now();
    let rep = synth(dir.path(), &SynthConfig::default()).unwrap();
    let took = t0.elapsed();
    // Meant to take < 2 s; allow slack for a loaded shared machine and unoptimised builds.
    assert!(took.as_secs_f64() < 6.0, "synth took {took:?}");
    let b = Benchmark::load(&rep.json_path).unwrap();
    assert_eq!(b.num_tasks(), 3);
    assert_eq!(b.num_classes, 12);
    assert_eq!(b.split_indices(0, Split::Train).len(), 4 * 24);
    assert_eq!(b.split_indices(2, Split::Val).len(), 4 * 8);
    assert_eq!(b.split_indices(1, Split::Test).len(), 4 * 8);
    assert_eq!(b.tasks[2].classes, vec![8, 9, 10, 11]);
    assert_eq!(b.name, "Synthetic-CMML");
    let img = image::open(&b.items[0].image_path).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert_eq!(rep.split_counts, [288, 96, 96]);
}

#[test]
fn synth_is_deterministic_and_seed_dependent() {
    let (a, b, c) = (
        TempDir::new("synth-a"),
        TempDir::new("synth-b"),
        TempDir::new("synth-c"),
    );
    let ra = synth(a.path(), &small_cfg(1)).unwrap();
    let rb = synth(b.path(), &small_cfg(1)).unwrap();
    let rc = synth(c.path(), &small_cfg(2)).unwrap();
    let ja = std::fs::read(&ra.json_path).unwrap();
    assert_eq!(ja, std::fs::read(&rb.json_path).unwrap());
    assert_ne!(ja, std::fs::read(&rc.json_path).unwrap());
    let png = "images/train/t1_c2_0003.png";
    assert_eq!(
        std::fs::read(a.join(png)).unwrap(),
        std::fs::read(b.join(png)).unwrap()
    );
    assert_ne!(
        std::fs::read(a.join(png)).unwrap(),
        std::fs::read(c.join(png)).unwrap()
    );
    let e = synth(
        a.path(),
        &SynthConfig {
            tasks: 11,
            ..small_cfg(1)
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("tasks"), "{e}");
}

/// Image features: the 8×8 average-pooled RGB image.
fn features(path: &std::path::Path) -> Vec<f32> {
    let img = image::open(path).unwrap().into_rgb8();
    let small = image::imageops::resize(&img, 8, 8, image::imageops::FilterType::Triangle);
    small.pixels().flat_map(|p| p.0.map(f32::from)).collect()
}

fn nearest_centroid_accuracy(train: &[(usize, Vec<f32>)], test: &[(usize, Vec<f32>)]) -> f64 {
    let mut sums: HashMap<usize, (Vec<f32>, usize)> = HashMap::new();
    for (y, f) in train {
        let e = sums.entry(*y).or_insert_with(|| (vec![0.0; f.len()], 0));
        e.0.iter_mut().zip(f).for_each(|(a, b)| *a += b);
        e.1 += 1;
    }
    let cents: Vec<(usize, Vec<f32>)> = sums
        .into_iter()
        .map(|(y, (s, n))| (y, s.into_iter().map(|v| v / n as f32).collect()))
        .collect();
    let correct = test
        .iter()
        .filter(|(y, f)| {
            let best = cents
                .iter()
                .min_by(|a, b| {
                    let d =
                        |c: &Vec<f32>| c.iter().zip(f).map(|(x, z)| (x - z).powi(2)).sum::<f32>();
                    d(&a.1).total_cmp(&d(&b.1))
                })
                .unwrap();
            best.0 == *y
        })
        .count();
    correct as f64 / test.len() as f64
}

/// Naive Bayes over words, with add-one smoothing.
fn text_accuracy(train: &[(usize, String)], test: &[(usize, String)]) -> f64 {
    let mut counts: HashMap<usize, HashMap<&str, f64>> = HashMap::new();
    for (y, t) in train {
        for w in t.split_whitespace() {
            *counts.entry(*y).or_default().entry(w).or_default() += 1.0;
        }
    }
    let correct = test
        .iter()
        .filter(|(y, t)| {
            let score = |c: &HashMap<&str, f64>| {
                let total: f64 = c.values().sum();
                t.split_whitespace()
                    .map(|w| ((c.get(w).copied().unwrap_or(0.0) + 1.0) / (total + 500.0)).ln())
                    .sum::<f64>()
            };
            let best = counts
                .iter()
                .max_by(|a, b| score(a.1).total_cmp(&score(b.1)))
                .unwrap();
            best.0 == y
        })
        .count();
    correct as f64 / test.len() as f64
}

#[test]
fn synth_classes_and_tasks_are_learnable_from_each_modality_alone() {
    let dir = TempDir::new("synth-learn");
    let rep = synth(dir.path(), &small_cfg(7)).unwrap();
    let b = Benchmark::load(&rep.json_path).unwrap();
    let class = |it: &delo::data::Item| match it.label {
        Label::Single(c) => c,
        _ => unreachable!(),
    };
    let pick = |split: Split| -> Vec<&delo::data::Item> {
        (0..b.num_tasks())
            .flat_map(|t| b.split_items(t, split))
            .collect()
    };
    let (train, test) = (pick(Split::Train), pick(Split::Test));
    let img = |v: &[&delo::data::Item], by_task: bool| -> Vec<(usize, Vec<f32>)> {
        v.iter()
            .map(|it| {
                (
                    if by_task { it.task } else { class(it) },
                    features(&it.image_path),
                )
            })
            .collect()
    };
    let txt = |v: &[&delo::data::Item], by_task: bool| -> Vec<(usize, String)> {
        v.iter()
            .map(|it| (if by_task { it.task } else { class(it) }, it.text.clone()))
            .collect()
    };
    let chance = 1.0 / b.num_classes as f64;
    let image_class = nearest_centroid_accuracy(&img(&train, false), &img(&test, false));
    let text_class = text_accuracy(&txt(&train, false), &txt(&test, false));
    let image_task = nearest_centroid_accuracy(&img(&train, true), &img(&test, true));
    let text_task = text_accuracy(&txt(&train, true), &txt(&test, true));
    println!("image→class {image_class:.3}, text→class {text_class:.3}, image→task {image_task:.3}, text→task {text_task:.3} (chance {chance:.3})");
    assert!(image_class > 0.8, "image-only class accuracy {image_class}");
    assert!(text_class > 0.9, "text-only class accuracy {text_class}");
    assert!(image_task > 0.95, "image-only task accuracy {image_task}");
    assert!(text_task > 0.95, "text-only task accuracy {text_task}");
}

#[test]
fn benchmark_missing_table_aligns_with_splits() {
    let dir = TempDir::new("synth-missing");
    let rep = synth(dir.path(), &small_cfg(3)).unwrap();
    let b = Benchmark::load(&rep.json_path).unwrap();
    let spec = "both:0.5".parse().unwrap();
    let n = b.split_indices(1, Split::Train).len();
    let t = b.missing_table(1, Split::Train, &spec, 9);
    assert_eq!(t.len(), n);
    let m = n / 2;
    assert_eq!(
        t.iter().filter(|&&x| x == MissingType::Image).count(),
        m / 2
    );
    assert_eq!(
        t.iter().filter(|&&x| x == MissingType::Text).count(),
        m - m / 2
    );
    assert_eq!(t, b.missing_table(1, Split::Train, &spec, 9));
}
