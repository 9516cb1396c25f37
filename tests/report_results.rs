//! `results.json` round trip and validation, `report.md` content, and the SVG plots
//! (well-formed, one cell per lower-triangle entry).

use std::path::PathBuf;

use delo::data::{MissingKind, MissingSpec, Split};
use delo::report::{
    self, missing_label, render_report, render_summary_table, write_plots, FactorSide, Metric,
    Results, SummaryRow, TaskStats,
};
use delo::Error;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delo-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Test matrix (see tests/report_metrics.rs): AP 58.33…, FG 17.5; val = test − 1 everywhere
/// (AP 57.33…, FG 17.5); task-id accuracy 100 − 10·(t − j) → last row 80, 90, 100 → 90.
const TEST: [[f64; 3]; 3] = [[90.0, 0.0, 0.0], [80.0, 70.0, 0.0], [60.0, 65.0, 50.0]];

fn task_id(t: usize, j: usize) -> f64 {
    100.0 - 10.0 * (t - j) as f64
}

fn full_results() -> Results {
    let config = serde_json::json!({"variant": "delo", "pool_size": 4, "seed": 7});
    let mut r = Results::new(Metric::Accuracy, 3, config);
    for (t, row) in TEST.iter().enumerate() {
        for (j, &v) in row.iter().enumerate().take(t + 1) {
            r.set_entry(Split::Test, t, j, v, task_id(t, j)).unwrap();
            r.set_entry(Split::Val, t, j, v - 1.0, task_id(t, j))
                .unwrap();
        }
        r.set_task_stats(
            t,
            TaskStats {
                wall_seconds: 12.5 + t as f64,
                train_samples_per_second: 321.76,
                epochs: 2,
                steps: 40 + t as u64,
                final_loss: 0.125,
            },
        )
        .unwrap();
    }
    // Out of natural order on purpose: layer10 must come after layer2 in the plot.
    for pool in ["layer10.q.v", "layer2.q.t", "layer2.q.v"] {
        r.add_selection_counts(FactorSide::A, pool, &[5, 0, 3, 1])
            .unwrap();
        r.add_selection_counts(FactorSide::B, pool, &[1, 1, 1, 6])
            .unwrap();
    }
    r.add_selection_counts(FactorSide::A, "layer2.q.v", &[1, 1, 1, 1])
        .unwrap();
    let cos: Vec<f32> = (0..200).map(|i| 0.2 + 0.7 * (i as f32 / 199.0)).collect();
    r.add_cos_samples(&cos).unwrap();
    r.finalize().unwrap();
    r
}

#[test]
fn summaries_follow_the_matrix() {
    let r = full_results();
    assert_eq!(r.test.tasks_evaluated, 3);
    assert!(close(r.test.ap.unwrap(), 175.0 / 3.0));
    assert!(close(r.test.fg.unwrap(), 17.5));
    assert!(close(r.val.ap.unwrap(), 172.0 / 3.0));
    assert!(close(r.val.fg.unwrap(), 17.5));
    assert!(close(r.test.ap_task_id.unwrap(), 90.0));
    assert_eq!(r.selection_frequency.a["layer2.q.v"], vec![6, 1, 4, 2]);
}

#[test]
fn partial_runs_summarise_the_complete_rows() {
    let mut r = Results::new(Metric::F1Macro, 3, serde_json::Value::Null);
    assert_eq!(r.test.ap, None);
    r.set_entry(Split::Test, 0, 0, 90.0, 100.0).unwrap();
    assert_eq!(r.test.tasks_evaluated, 1);
    assert!(close(r.test.ap.unwrap(), 90.0));
    assert!(close(r.test.fg.unwrap(), 0.0), "FG is 0 for one task");
    // Row 1 is incomplete: the summaries still describe task 1 only.
    r.set_entry(Split::Test, 1, 0, 80.0, 90.0).unwrap();
    assert_eq!(r.test.tasks_evaluated, 1);
    r.set_entry(Split::Test, 1, 1, 70.0, 100.0).unwrap();
    assert_eq!(r.test.tasks_evaluated, 2);
    assert!(close(r.test.ap.unwrap(), 75.0));
    assert!(close(r.test.fg.unwrap(), 10.0));
    assert!(close(r.test.ap_task_id.unwrap(), 95.0));
    assert_eq!(r.val.tasks_evaluated, 0);
    // finalize insists on every entry.
    let err = r.finalize().unwrap_err().to_string();
    assert!(err.contains("val matrix"), "{err}");
}

#[test]
fn set_entry_rejects_bad_input() {
    let mut r = Results::new(Metric::Accuracy, 2, serde_json::Value::Null);
    assert!(
        r.set_entry(Split::Test, 0, 1, 50.0, 50.0).is_err(),
        "future task"
    );
    assert!(r.set_entry(Split::Test, 2, 0, 50.0, 50.0).is_err(), "t ≥ T");
    assert!(r.set_entry(Split::Test, 0, 0, f64::NAN, 50.0).is_err());
    assert!(r.set_entry(Split::Test, 0, 0, 150.0, 50.0).is_err());
    assert!(r.set_entry(Split::Test, 0, 0, 50.0, -1.0).is_err());
    assert!(r.set_entry(Split::Train, 0, 0, 50.0, 50.0).is_err());
    assert!(r.add_cos_samples(&[0.5, f32::NAN]).is_err());
    r.add_selection_counts(FactorSide::A, "p", &[1, 2]).unwrap();
    assert!(r
        .add_selection_counts(FactorSide::A, "p", &[1, 2, 3])
        .is_err());
    let stats = TaskStats {
        wall_seconds: 1.0,
        train_samples_per_second: 1.0,
        epochs: 1,
        steps: 1,
        final_loss: f64::NAN,
    };
    assert!(r.set_task_stats(0, stats).is_err());
}

#[test]
fn results_json_round_trip_with_nulls_above_the_diagonal() {
    let dir = tmp("roundtrip");
    let r = full_results();
    let path = dir.join("results.json");
    r.save(&path).unwrap();
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(raw["version"], 1);
    assert_eq!(raw["metric"], "accuracy");
    for split in ["val", "test"] {
        for m in ["matrix", "task_id_matrix"] {
            let mat = &raw[split][m];
            for t in 0..3 {
                for j in 0..3 {
                    assert_eq!(mat[t][j].is_null(), j > t, "{split}.{m}[{t}][{j}]");
                }
            }
        }
    }
    assert_eq!(raw["test"]["matrix"][2][1], 65.0);
    assert_eq!(raw["config"]["pool_size"], 4);
    assert_eq!(raw["tasks"][1]["steps"], 41);
    assert_eq!(
        raw["selection_frequency"]["b"]["layer10.q.v"],
        serde_json::json!([1, 1, 1, 6])
    );
    assert_eq!(raw["cos_qv_qt"].as_array().unwrap().len(), 200);

    let back = Results::load(&path).unwrap();
    assert_eq!(back, r);

    // A partial run (nulls on and below the diagonal too) round-trips as well.
    let mut p = Results::new(Metric::F1Macro, 4, serde_json::Value::Null);
    p.set_entry(Split::Val, 0, 0, 33.0, 100.0).unwrap();
    p.save(&path).unwrap();
    assert_eq!(Results::load(&path).unwrap(), p);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_rejects_inconsistent_files() {
    let dir = tmp("load");
    let path = dir.join("results.json");
    let good = serde_json::to_value(full_results()).unwrap();
    let write = |v: &serde_json::Value| {
        std::fs::write(&path, serde_json::to_string(v).unwrap()).unwrap();
    };
    let expect_format = |what: &str, needle: &str| {
        let e = Results::load(&path).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{what}: {e}");
        assert!(e.to_string().contains(needle), "{what}: {e}");
    };

    let mut v = good.clone();
    v["test"]["ap"] = serde_json::json!(99.0);
    write(&v);
    expect_format("stale AP", "disagree");

    let mut v = good.clone();
    v["val"]["matrix"][0][2] = serde_json::json!(10.0);
    write(&v);
    expect_format("above diagonal", "above the diagonal");

    let mut v = good.clone();
    v["test"]["matrix"][1].as_array_mut().unwrap().pop();
    write(&v);
    expect_format("ragged", "3 × 3");

    let mut v = good.clone();
    v["version"] = serde_json::json!(99);
    write(&v);
    expect_format("version", "version 99");

    let mut v = good;
    v["metric"] = serde_json::json!("bleu");
    write(&v);
    expect_format("metric", "not a valid results.json");

    std::fs::write(&path, "{ not json").unwrap();
    expect_format("garbage", "not a valid results.json");

    let e = Results::load(&dir.join("absent.json")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_md_contains_the_numbers() {
    let r = full_results();
    let missing = missing_label(&MissingSpec::new(MissingKind::Both, 0.7).unwrap());
    assert_eq!(missing, "#Image 65% #Text 65%");
    let md = render_report(&r, "DeLo", &missing).unwrap();
    assert!(
        md.contains("| Method | Missing | AP ↑ | FG ↓ | Task-id acc ↑ |"),
        "{md}"
    );
    assert!(
        md.contains("| DeLo | #Image 65% #Text 65% | 58.33 | 17.50 | 90.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| DeLo | #Image 65% #Text 65% | 57.33 | 17.50 | 90.00 |"),
        "val summary\n{md}"
    );
    // Test matrix rows, 2 decimals, — above the diagonal.
    assert!(md.contains("| 1 | 90.00 | — | — |"), "{md}");
    assert!(md.contains("| 3 | 60.00 | 65.00 | 50.00 |"), "{md}");
    assert!(md.contains("| 2 | 79.00 | 69.00 | — |"), "val row\n{md}");
    assert!(
        md.contains("| 3 | 80.00 | 90.00 | 100.00 |"),
        "task-id row\n{md}"
    );
    // Per-task time and throughput.
    assert!(
        md.contains("| 2 | 2 | 41 | 13.5 | 321.8 | 0.1250 |"),
        "{md}"
    );
    assert!(md.contains("| total | | 123 | 40.5 | | |"), "{md}");
    for f in [
        "(accuracy_test.svg)",
        "(accuracy_val.svg)",
        "(selection_frequency.svg)",
        "(cos_qv_qt.svg)",
    ] {
        assert!(md.contains(f), "link {f}\n{md}");
    }
    assert!(md.contains("\"pool_size\": 4"), "config\n{md}");
}

#[test]
fn summary_table_of_several_runs() {
    let delo = full_results();
    let mut heads = Results::new(Metric::Accuracy, 3, serde_json::Value::Null);
    heads.set_entry(Split::Test, 0, 0, 88.0, 100.0).unwrap();
    let missing = missing_label(&MissingSpec::new(MissingKind::Text, 0.1).unwrap());
    assert_eq!(missing, "#Image 100% #Text 90%");
    let rows = [
        SummaryRow::from_results("DeLo", &missing, &delo, Split::Test).unwrap(),
        SummaryRow::from_results("heads-only", &missing, &heads, Split::Test).unwrap(),
    ];
    let md = render_summary_table(&rows);
    assert!(md.starts_with("Metric: Accuracy (%)."), "{md}");
    assert!(
        md.contains("| DeLo | #Image 100% #Text 90% | 58.33 | 17.50 | 90.00 |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| heads-only (after task 1 of 3) | #Image 100% #Text 90% | 88.00 | 0.00 | 100.00 |"
        ),
        "{md}"
    );
    assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 3);
}

/// A tiny well-formedness checker: every tag closes in order, attribute quotes balance, and
/// text holds no raw `<` or a bare `&` outside a known entity. Enough to catch broken
/// hand-written SVG without an XML crate.
fn check_well_formed(doc: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = doc;
    let mut roots = 0;
    let check_text = |t: &str| -> Result<(), String> {
        let mut s = t;
        while let Some(i) = s.find('&') {
            let after = &s[i..];
            let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| after.starts_with(e));
            if !ok {
                return Err(format!("bare & in {t:?}"));
            }
            s = &s[i + 1..];
        }
        Ok(())
    };
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        if stack.is_empty() && !text.trim().is_empty() {
            return Err(format!("text outside the root: {text:?}"));
        }
        check_text(text)?;
        rest = &rest[open..];
        if rest.starts_with("<?") {
            let end = rest.find("?>").ok_or("unclosed <?")?;
            rest = &rest[end + 2..];
            continue;
        }
        if rest.starts_with("<!--") {
            let end = rest.find("-->").ok_or("unclosed comment")?;
            rest = &rest[end + 3..];
            continue;
        }
        // Find the tag end outside quotes.
        let mut in_quote = None;
        let mut end = None;
        for (i, c) in rest.char_indices().skip(1) {
            match (in_quote, c) {
                (None, '"' | '\'') => in_quote = Some(c),
                (Some(q), c) if c == q => in_quote = None,
                (None, '<') => return Err(format!("'<' inside a tag: {}", &rest[..i])),
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("unclosed tag")?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().ok_or(format!("stray </{name}>"))?;
            if top != name.trim() {
                return Err(format!("</{name}> closes <{top}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name: String = tag
            .trim_end_matches('/')
            .split_whitespace()
            .next()
            .ok_or("empty tag")?
            .to_string();
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-')
        {
            return Err(format!("bad tag name {name:?}"));
        }
        if !tag.matches('"').count().is_multiple_of(2) {
            return Err(format!("unbalanced quotes in <{tag}>"));
        }
        check_text(tag)?;
        if stack.is_empty() {
            roots += 1;
        }
        if !self_closing {
            stack.push(name);
        }
    }
    if !rest.trim().is_empty() {
        return Err(format!("trailing text {rest:?}"));
    }
    if !stack.is_empty() {
        return Err(format!("unclosed {stack:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(())
}

#[test]
fn checker_catches_broken_documents() {
    assert!(check_well_formed("<svg><g></g><rect/></svg>").is_ok());
    assert!(check_well_formed("<svg><g></svg>").is_err());
    assert!(check_well_formed("<svg><text>a < b</text></svg>").is_err());
    assert!(check_well_formed("<svg><text>a & b</text></svg>").is_err());
    assert!(check_well_formed("<svg a=\"1></svg>").is_err());
    assert!(check_well_formed("<svg></svg><svg></svg>").is_err());
}

#[test]
fn plots_are_well_formed_with_one_cell_per_entry() {
    let dir = tmp("plots");
    let r = full_results();
    let written = write_plots(&r, &dir).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "accuracy_test.svg",
            "accuracy_val.svg",
            "selection_frequency.svg",
            "cos_qv_qt.svg"
        ]
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    for f in &names {
        let svg = read(f);
        check_well_formed(&svg).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(
            svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{f}"
        );
    }

    let acc = read("accuracy_test.svg");
    assert_eq!(acc.matches("class=\"cell\"").count(), 6, "3·4/2 cells");
    assert!(acc.contains(">65.0</text>") && acc.contains(">50.0</text>"));
    assert!(acc.contains("trained up to task") && acc.contains("evaluated task"));
    assert!(acc.contains("linearGradient"), "colour scale legend");
    assert!(read("accuracy_val.svg").contains(">64.0</text>"));

    let sel = read("selection_frequency.svg");
    // 3 pools × 4 factors × 2 sides.
    assert_eq!(sel.matches("class=\"cell\"").count(), 24);
    let pos = |s: &str| sel.find(&format!(">{s}</text>")).unwrap();
    assert!(pos("layer2.q.t") < pos("layer2.q.v") && pos("layer2.q.v") < pos("layer10.q.v"));
    // layer2.q.v A: counts [6, 1, 4, 2] → 46.2 % for factor 0 (its tooltip).
    assert!(sel.contains("<title>46.2% (6)</title>"));

    let hist = read("cos_qv_qt.svg");
    assert_eq!(hist.matches("class=\"bar\"").count(), report::svg::COS_BINS);
    // The bar tooltips end in "): count</title>"; the counts add up to every sample.
    let total: u64 = hist
        .split("</title>")
        .filter_map(|s| s.rsplit_once("): ").map(|(_, n)| n.parse::<u64>().unwrap()))
        .sum();
    assert_eq!(total, 200);
    assert!(hist.contains("n = 200"));

    // Empty selection counts and cosines: those two plots are skipped; missing lower
    // entries still get a (grey) cell each.
    let mut partial = Results::new(Metric::F1Macro, 4, serde_json::Value::Null);
    partial.set_entry(Split::Test, 1, 0, 12.5, 100.0).unwrap();
    let dir2 = tmp("plots-partial");
    let written = write_plots(&partial, &dir2).unwrap();
    assert_eq!(written.len(), 2);
    assert!(!dir2.join("selection_frequency.svg").exists());
    let acc = std::fs::read_to_string(dir2.join("accuracy_test.svg")).unwrap();
    check_well_formed(&acc).unwrap();
    assert_eq!(acc.matches("class=\"cell").count(), 10, "4·5/2 cells");
    assert_eq!(acc.matches("class=\"cell missing\"").count(), 9);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn write_all_writes_every_output() {
    let dir = tmp("all").join("run");
    let r = full_results();
    let written = report::write_all(&r, &dir, "DeLo", "#Image 65% #Text 65%").unwrap();
    assert_eq!(written.len(), 6);
    for p in &written {
        assert!(p.exists(), "{}", p.display());
    }
    assert_eq!(Results::load(&dir.join("results.json")).unwrap(), r);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn loss_curves_are_plotted_per_task_and_linked_but_not_stored() {
    let dir = tmp("loss");
    let mut r = full_results();
    let point = |step: u64| report::LossPoint {
        step,
        loss: 2.0 / step as f64,
        l_c: 1.5 / step as f64,
        l_align: 0.5,
        l_con: if step.is_multiple_of(2) { 0.0 } else { 0.25 },
    };
    r.loss_curves = vec![
        report::LossCurve {
            task: 0,
            points: (1..=40).map(point).collect(),
        },
        // Long curves are drawn as means over runs of steps: 1500 steps → 3 per point.
        report::LossCurve {
            task: 1,
            points: (1..=1500).map(point).collect(),
        },
        report::LossCurve {
            task: 2,
            points: Vec::new(),
        },
    ];
    let written = write_plots(&r, &dir).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        &names[4..],
        ["loss_task1.svg", "loss_task2.svg"],
        "no plot without steps"
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    for f in ["loss_task1.svg", "loss_task2.svg"] {
        let svg = read(f);
        check_well_formed(&svg).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(svg.matches("class=\"series\"").count(), 4, "{f}");
        for name in ["L (total)", "L_c", "L_align", "L_con"] {
            assert!(
                svg.contains(&format!(">{name}</text>")),
                "{f}: legend {name}"
            );
        }
    }
    assert!(read("loss_task1.svg").contains("task 1 (40 steps)"));
    let long = read("loss_task2.svg");
    assert!(
        long.contains("task 2 (1500 steps, mean of every 3)"),
        "{long}"
    );
    let series = long.split("class=\"series\"").nth(1).unwrap();
    let points = series
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(points.split(' ').count(), 500);
    let md = render_report(&r, "DeLo", "#Image 65% #Text 65%").unwrap();
    assert!(md.contains("(loss_task1.svg)") && md.contains("(loss_task2.svg)"));
    assert!(!md.contains("loss_task3.svg"));
    r.save(&dir.join("results.json")).unwrap();
    let json = std::fs::read_to_string(dir.join("results.json")).unwrap();
    assert!(
        !json.contains("loss_curves") && !json.contains("l_align"),
        "the curves live in metrics.jsonl"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cells_without_samples_are_empty_and_left_out_of_ap_and_fg() {
    // Test split: task 1 has no sample after task 2 (all its images skipped).
    //   row 0: [80]
    //   row 1: [70, 90]
    //   row 2: [60, --, 40]
    // AP = (60 + 40) / 2 = 50; FG over task 0 only: max(80 − 60, 70 − 60) = 20.
    let mut r = Results::new(Metric::Accuracy, 3, serde_json::json!({}));
    for (t, j, v) in [
        (0, 0, 80.0),
        (1, 0, 70.0),
        (1, 1, 90.0),
        (2, 0, 60.0),
        (2, 2, 40.0),
    ] {
        r.set_entry(Split::Test, t, j, v, 100.0).unwrap();
        r.set_entry(Split::Val, t, j, v, 100.0).unwrap();
    }
    assert_eq!(r.test.tasks_evaluated, 2, "row 2 is not complete yet");
    r.set_no_samples(Split::Test, 2, 1).unwrap();
    r.set_entry(Split::Val, 2, 1, 50.0, 100.0).unwrap();
    r.finalize().unwrap();
    assert_eq!(r.test.tasks_evaluated, 3);
    assert_eq!(r.test.matrix[2][1], None);
    assert_eq!(r.test.no_samples, vec![[2, 1]]);
    assert!(close(r.test.ap.unwrap(), 50.0), "{:?}", r.test.ap);
    assert!(close(r.test.fg.unwrap(), 20.0), "{:?}", r.test.fg);
    assert!(close(r.test.ap_task_id.unwrap(), 100.0));
    // Val has every cell: the usual formulas (AP (60 + 50 + 40) / 3, FG mean of 20 and 40).
    assert!(close(r.val.ap.unwrap(), 50.0) && close(r.val.fg.unwrap(), 30.0));

    let dir = tmp("no-samples");
    r.save(&dir.join("results.json")).unwrap();
    let back = Results::load(&dir.join("results.json")).unwrap();
    assert_eq!(back, r);
    let md = render_report(&r, "DeLo", "#Image 100% #Text 100%").unwrap();
    assert!(md.contains("| 3 | 60.00 |  | 40.00 |"), "{md}");
    assert!(md.contains("An empty cell had no sample"), "{md}");

    // A no-sample cell that holds a value, or lies above the diagonal, is refused on load.
    let mut bad = r.clone();
    bad.test.no_samples.push([2, 2]);
    assert!(bad
        .validate()
        .unwrap_err()
        .contains("no_samples lists [2, 2]"));
    let mut bad = r.clone();
    bad.test.no_samples = vec![[0, 1]];
    assert!(bad.validate().is_err());
    // Only empty cells in the last row: no AP rather than a made-up 0.
    let mut one = Results::new(Metric::Accuracy, 1, serde_json::json!({}));
    one.set_no_samples(Split::Test, 0, 0).unwrap();
    assert_eq!((one.test.tasks_evaluated, one.test.ap), (1, None));
    let _ = std::fs::remove_dir_all(&dir);
}
