//! `delo predict` on a trained synthetic run: on benchmark test items (complete, image-missing
//! and text-missing ones, written as new items) it predicts what `delo eval --predictions`
//! does, task-agnostically and with `--task-key oracle --task T`, from a JSON list or a CSV;
//! multi-label predictions are every label over the threshold; bad inputs are named errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use delo::data::{Benchmark, MissingType, Split};
use delo::delo::config::Variant;
use delo::train::demo::demo_settings;
use delo::train::inputs::read_items;
use delo::train::Trainer;

use common::run_delo as delo;

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A trained run on the synthetic benchmark (made multi-label first when `multi`).
fn trained(name: &str, multi: bool, epochs: usize) -> (PathBuf, PathBuf, Trainer) {
    let (root, data, model) = common::synthetic_setup(name);
    if multi {
        make_multi_label(&data);
    }
    let mut s = demo_settings(Variant::Delo);
    s.epochs = epochs;
    let mut tr = Trainer::create(&data, &model, &root.join("run"), s).unwrap();
    tr.run(&mut |_| {}).unwrap();
    (root, data, tr)
}

/// Rewrites the benchmark's class ids as one-hot vectors (a valid multi-label benchmark with
/// the same tasks and classes).
fn make_multi_label(data: &Path) {
    let bench = Benchmark::load(data).unwrap();
    let mut items: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bench.json_path).unwrap()).unwrap();
    for it in items.as_array_mut().unwrap() {
        let c = it["label"].as_u64().unwrap() as usize;
        let mut hot = vec![0; bench.num_classes];
        hot[c] = 1;
        it["label"] = serde_json::json!(hot);
    }
    std::fs::write(&bench.json_path, items.to_string()).unwrap();
    let meta_path = data.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["kind"] = serde_json::json!("multi");
    std::fs::write(&meta_path, meta.to_string()).unwrap();
}

/// Every other test item of each task, with the modality the run's missing table removes for
/// it removed: (benchmark index, missing type, image as written, text).
fn chosen_items(tr: &Trainer) -> Vec<(usize, MissingType, String, String)> {
    let mut out = Vec::new();
    for t in 0..tr.bench.num_tasks() {
        let missing = tr
            .bench
            .missing_table(t, Split::Test, &tr.missing, tr.settings().seed);
        for (k, (it, m)) in tr
            .bench
            .split_items(t, Split::Test)
            .zip(missing)
            .enumerate()
        {
            if k % 2 == 0 || m != MissingType::None {
                out.push((it.index, m, it.image.clone(), it.text.clone()));
            }
        }
    }
    let count = |m| out.iter().filter(|x| x.1 == m).count();
    assert!(
        count(MissingType::Image) > 2
            && count(MissingType::Text) > 2
            && count(MissingType::None) > 2
    );
    out
}

/// The items as a predict JSON beside the benchmark folder `data` (which must keep a single
/// JSON).
fn write_json(data: &Path, items: &[(usize, MissingType, String, String)]) -> PathBuf {
    let list: Vec<serde_json::Value> = items
        .iter()
        .map(|(_, m, image, text)| (m, format!("data/images/{image}"), text))
        .map(|(m, image, text)| match m {
            MissingType::Image => serde_json::json!({"text": text}),
            MissingType::Text => serde_json::json!({"image": image, "text": ""}),
            MissingType::None => serde_json::json!({"image": image, "text": [text]}),
        })
        .collect();
    let path = data.parent().unwrap().join("new-items.json");
    std::fs::write(&path, serde_json::to_string(&list).unwrap()).unwrap();
    path
}

/// `delo eval --predictions` as item index → (predicted task, prediction).
fn eval_predictions(run: &Path, extra: &[&str], root: &Path) -> HashMap<usize, (String, String)> {
    let csv = root.join("eval.csv");
    let mut args = vec!["eval"];
    args.extend(extra);
    ok(delo(&args, &[("--run", run), ("--predictions", &csv)]));
    read_csv(&csv)
        .into_iter()
        .map(|r| {
            (
                r["item_index"].parse().unwrap(),
                (r["predicted_task"].clone(), r["prediction"].clone()),
            )
        })
        .collect()
}

#[test]
fn predictions_equal_the_evaluation_on_the_same_items() {
    let (root, data, tr) = trained("predict", false, 3);
    let run = tr.run_dir.clone();
    let items = chosen_items(&tr);
    let json = write_json(&data, &items);
    let preds = root.join("preds.csv");
    ok(delo(
        &["predict", "--top-k", "3"],
        &[("--run", &run), ("--input", &json), ("--output", &preds)],
    ));
    let rows = read_csv(&preds);
    assert_eq!(rows.len(), items.len());
    let eval = eval_predictions(&run, &[], &root);
    let names = tr.bench.class_names.clone().unwrap();
    for (i, (row, (index, missing, image, _))) in rows.iter().zip(&items).enumerate() {
        let (task, class) = &eval[index];
        assert_eq!(row["index"], i.to_string());
        assert_eq!(
            (&row["task"], &row["class"]),
            (task, class),
            "item {index} ({missing:?}): predict {row:?} vs eval"
        );
        assert_eq!(row["missing"], missing.as_str());
        let image_given = match missing {
            MissingType::Image => String::new(),
            _ => format!("data/images/{image}"),
        };
        assert_eq!(row["image"], image_given);
        assert_eq!(row["class_name"], names[class.parse::<usize>().unwrap()]);
        assert_eq!(
            (&row["labels"], &row["label_names"]),
            (class, &row["class_name"])
        );
        let cos: f32 = row["task_cosine"].parse().unwrap();
        assert!((-1.0..=1.0).contains(&cos), "{row:?}");
        let score: f32 = row["score"].parse().unwrap();
        let top: Vec<(&str, f32)> = row["top_k"]
            .split('|')
            .map(|p| {
                let (c, s) = p.split_once(':').unwrap();
                (c, s.parse().unwrap())
            })
            .collect();
        assert_eq!(top.len(), 3);
        assert_eq!((top[0].0, top[0].1), (class.as_str(), score));
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1) && score > 0.25 && score <= 1.0);
        let sum: f32 = top.iter().map(|x| x.1).sum();
        assert!(sum <= 1.0 + 1e-5, "softmax probabilities: {row:?}");
    }

    // The same items as a CSV with explicit paths give the same answers.
    let csv_path = root.join("new-items.csv");
    let mut w = csv::Writer::from_path(&csv_path).unwrap();
    w.write_record(["image", "text"]).unwrap();
    for (_, m, image, text) in &items {
        let image = match m {
            MissingType::Image => String::new(),
            _ => format!("data/images/{image}"),
        };
        let text = if *m == MissingType::Text { "" } else { text };
        w.write_record([image.as_str(), text]).unwrap();
    }
    w.flush().unwrap();
    let preds2 = root.join("preds2.csv");
    ok(delo(
        &["predict", "--top-k", "3", "--batch-size", "5"],
        &[
            ("--run", &run),
            ("--input", &csv_path),
            ("--output", &preds2),
        ],
    ));
    let key = |rows: &[HashMap<String, String>]| -> Vec<(String, String, String)> {
        rows.iter()
            .map(|r| (r["task"].clone(), r["class"].clone(), r["missing"].clone()))
            .collect()
    };
    assert_eq!(key(&read_csv(&preds2)), key(&rows));

    // Task-incremental: --task-key oracle --task 1 answers task 1's items with head 1.
    let eval = eval_predictions(&run, &["--task-key", "oracle"], &root);
    let task1: Vec<_> = items
        .iter()
        .filter(|x| tr.bench.items[x.0].task == 1)
        .cloned()
        .collect();
    let json1 = write_json(&data, &task1);
    let preds3 = root.join("preds3.csv");
    ok(delo(
        &["predict", "--task-key", "oracle", "--task", "1"],
        &[("--run", &run), ("--input", &json1), ("--output", &preds3)],
    ));
    for (row, (index, ..)) in read_csv(&preds3).iter().zip(&task1) {
        assert_eq!(
            (&row["task"], &row["class"]),
            (&eval[index].0, &eval[index].1)
        );
        assert_eq!(row["task"], "1");
        assert_eq!(row["task_cosine"], "", "no key chose the task");
    }

    // Flags that cannot work are refused with a reason.
    let refused = |args: &[&str], want: &str| {
        let out = delo(
            args,
            &[("--run", &run), ("--input", &json1), ("--output", &preds3)],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    };
    refused(&["predict", "--task-key", "oracle"], "needs --task");
    refused(
        &["predict", "--task", "1"],
        "--task is for --task-key oracle",
    );
    refused(
        &["predict", "--task-key", "oracle", "--task", "3"],
        "--task 3",
    );
    refused(
        &["predict", "--task-key", "frozen"],
        "built from `input` queries",
    );
    refused(&["predict", "--threshold", "1.5"], "--threshold 1.5");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn multi_label_predictions_are_every_label_over_the_threshold() {
    let (root, data, tr) = trained("predict-multi", true, 10);
    let run = tr.run_dir.clone();
    let items = chosen_items(&tr);
    let task0: Vec<_> = items
        .into_iter()
        .filter(|x| tr.bench.items[x.0].task == 0)
        .collect();
    let json = write_json(&data, &task0);
    let eval = eval_predictions(&run, &["--task-key", "oracle"], &root);
    let preds = root.join("preds.csv");
    // Default threshold 0.5: the evaluation's rule, the same labels.
    ok(delo(
        &[
            "predict",
            "--task-key",
            "oracle",
            "--task",
            "0",
            "--top-k",
            "4",
        ],
        &[("--run", &run), ("--input", &json), ("--output", &preds)],
    ));
    let rows = read_csv(&preds);
    let mut some_labels = false;
    for (row, (index, ..)) in rows.iter().zip(&task0) {
        assert_eq!(row["labels"], eval[index].1, "item {index}");
        some_labels |= !row["labels"].is_empty();
        // Every listed probability over 0.5 is a label, and only those.
        let over: Vec<&str> = row["top_k"]
            .split('|')
            .filter_map(|p| p.split_once(':'))
            .filter(|(_, s)| s.parse::<f32>().unwrap() > 0.5)
            .map(|(c, _)| c)
            .collect();
        let mut labels: Vec<&str> = row["labels"].split('|').filter(|s| !s.is_empty()).collect();
        labels.sort();
        let mut over_sorted = over.clone();
        over_sorted.sort();
        assert_eq!(labels, over_sorted, "{row:?}");
    }
    assert!(some_labels, "no item got a label");
    // A lower threshold predicts at least as many labels, among them every earlier one.
    let low = root.join("low.csv");
    ok(delo(
        &[
            "predict",
            "--task-key",
            "oracle",
            "--task",
            "0",
            "--threshold",
            "0.05",
        ],
        &[("--run", &run), ("--input", &json), ("--output", &low)],
    ));
    let mut grew = false;
    for (a, b) in rows.iter().zip(read_csv(&low)) {
        let (a, b): (Vec<&str>, Vec<&str>) = (
            a["labels"].split('|').filter(|s| !s.is_empty()).collect(),
            b["labels"].split('|').filter(|s| !s.is_empty()).collect(),
        );
        assert!(a.iter().all(|c| b.contains(c)), "{a:?} ⊄ {b:?}");
        grew |= b.len() > a.len();
    }
    assert!(grew, "a threshold of 0.05 added no label");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_inputs_are_named_errors() {
    let dir = std::env::temp_dir().join(format!("delo-predict-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::write(dir.join("images/a.png"), b"not read here").unwrap();
    let check = |name: &str, text: &str, want: &[&str]| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let err = read_items(&p).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
        for w in want {
            assert!(err.contains(w), "{name}: {err} lacks {w:?}");
        }
    };
    check(
        "a.json",
        r#"[{"image": "a.png"}, {"text": ""}]"#,
        &["item 1", "neither an image nor a text"],
    );
    check(
        "b.json",
        r#"[{"image": "b.png", "text": "x"}]"#,
        &["item 0", "\"image\"", "b.png"],
    );
    check("c.json", r#"{"image": "a.png"}"#, &["expected a JSON list"]);
    check(
        "d.json",
        r#"[{"text": 3}]"#,
        &["item 0", "\"text\"", "a string"],
    );
    check(
        "e.json",
        r#"[{"image": "a.png""#,
        &["invalid JSON", "line 1"],
    );
    check("f.json", "[]", &["no item"]);
    check(
        "g.csv",
        "picture,caption\na.png,hi\n",
        &["no `image` or `text` column"],
    );
    check("h.csv", "image,text\na.png,hi,extra\n", &["item 0"]);
    // Good inputs: the images/ fallback, absent and empty fields, a text-only CSV.
    let p = dir.join("ok.json");
    std::fs::write(
        &p,
        r#"[{"image": "a.png", "text": null}, {"image": "", "text": ["a", "b"]}]"#,
    )
    .unwrap();
    let items = read_items(&p).unwrap();
    assert_eq!(
        items[0].image_path.as_deref(),
        Some(dir.join("images/a.png").as_path())
    );
    assert_eq!(items[0].missing(), MissingType::Text);
    assert_eq!(
        (items[1].missing(), items[1].text.as_deref()),
        (MissingType::Image, Some("a. b"))
    );
    let p = dir.join("ok.csv");
    std::fs::write(&p, "text\n\"a, quoted\"\n").unwrap();
    let items = read_items(&p).unwrap();
    assert_eq!(items[0].text.as_deref(), Some("a, quoted"));
    assert_eq!(items[0].missing(), MissingType::Image);
    let _ = std::fs::remove_dir_all(&dir);
}
