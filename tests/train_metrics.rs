//! Training curves: `metrics.jsonl` holds one line per step with finite loss terms that add
//! up to the loss, the same values as the progress line; a resumed run continues it without
//! duplicated or lost steps; the report draws one loss curve per task.

mod common;

use std::io::Write as _;

use delo::delo::config::Variant;
use delo::train::demo::demo_settings;
use delo::train::metrics::{read_metrics, StepMetrics, METRICS_FILE};
use delo::train::schedule::cosine_with_warmup;
use delo::train::{Event, Trainer};

/// (task, step, loss) of every progress event.
fn recorder(into: &mut Vec<(usize, usize, f32)>) -> impl FnMut(Event) + '_ {
    move |ev| {
        if let Event::Step {
            task, step, loss, ..
        } = ev
        {
            into.push((task, step, loss));
        }
    }
}

#[test]
fn every_step_is_logged_once_and_a_resumed_run_continues_the_log() {
    let (root, data, model) = common::synthetic_setup("metrics");
    let run = root.join("run");
    let mut s = demo_settings(Variant::Delo);
    s.epochs = 2;
    let mut shown = Vec::new();
    let mut tr = Trainer::create(&data, &model, &run, s.clone()).unwrap();
    tr.run_until(1, &mut recorder(&mut shown)).unwrap();
    drop(tr);
    let task0 = read_metrics(&run).unwrap();

    // A run killed during task 1 leaves some of its lines, the last one cut short.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join(METRICS_FILE))
        .unwrap();
    let stale = StepMetrics {
        task: 1,
        loss: 99.0,
        ..task0[0].clone()
    };
    writeln!(f, "{}", serde_json::to_string(&stale).unwrap()).unwrap();
    write!(f, "{{\"task\":1,\"step\":2,\"epo").unwrap();
    drop(f);

    let mut tr = Trainer::resume(&run).unwrap();
    tr.run(&mut recorder(&mut shown)).unwrap();
    let all = read_metrics(&run).unwrap();
    assert_eq!(&all[..task0.len()], &task0[..], "task 0's lines changed");

    let steps: Vec<usize> = tr.stats.iter().map(|t| t.steps).collect();
    assert_eq!(all.len(), steps.iter().sum::<usize>(), "one line per step");
    let mut lines = all.iter();
    for (t, &n) in steps.iter().enumerate() {
        for step in 1..=n {
            let m = lines.next().unwrap();
            assert_eq!((m.task, m.step), (t, step), "steps in order, once each");
            let values = [m.loss, m.l_c, m.l_align, m.l_con, m.lr];
            assert!(
                values.iter().all(|v| v.is_finite()) && m.samples_per_second.is_finite(),
                "{m:?}"
            );
            assert!(m.samples_per_second > 0.0 && m.l_c > 0.0, "{m:?}");
            assert_eq!(m.lr, cosine_with_warmup(s.lr, step - 1, n, s.warmup));
            assert_eq!(m.epoch, (step - 1) / n.div_ceil(s.epochs) + 1, "{m:?}");
            // eq. (10), as the tape adds it up in f32.
            let l = (m.l_c + s.delo.lambda_align * m.l_align) + s.delo.lambda_con * m.l_con;
            assert!((l - m.loss).abs() <= 1e-6 * m.loss.abs(), "{m:?}: {l}");
        }
        assert_eq!(all.iter().rfind(|m| m.task == t).unwrap().loss, {
            tr.stats[t].final_loss
        });
    }
    // With 70% of samples missing a modality, some batches have complete samples and some
    // do not: both terms appear, and are 0 where not computed.
    assert!(all.iter().any(|m| m.l_align > 0.0) && all.iter().any(|m| m.l_con > 0.0));
    assert!(all.iter().any(|m| m.l_align == 0.0 && m.l_con == 0.0));
    // The progress line showed the same losses (task 1's lines once more after the resume).
    let logged: Vec<(usize, usize, f32)> = all.iter().map(|m| (m.task, m.step, m.loss)).collect();
    assert_eq!(shown, logged);

    // The report draws one loss curve per task next to the other plots.
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for t in 1..=3 {
        let file = format!("loss_task{t}.svg");
        assert!(report.contains(&format!("({file})")), "{file} not linked");
        let svg = std::fs::read_to_string(run.join(&file)).unwrap();
        assert_eq!(svg.matches("class=\"series\"").count(), 4, "{file}");
        assert!(svg.contains(&format!("task {t} ({} steps)", steps[t - 1])));
    }
    let results = std::fs::read_to_string(run.join("results.json")).unwrap();
    assert!(
        !results.contains("loss_curves"),
        "curves stay in metrics.jsonl"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_unreadable_line_is_named() {
    let dir = std::env::temp_dir().join(format!("delo-metrics-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    assert!(read_metrics(&dir).unwrap().is_empty(), "no file: no steps");
    let good = r#"{"task":0,"step":1,"epoch":1,"loss":1.5,"l_c":1.4,"l_align":0.5,"l_con":0.5,"lr":0.001,"samples_per_second":10.0}"#;
    std::fs::write(
        dir.join(METRICS_FILE),
        format!("{good}\n{{\"task\": 0}}\n{good}\n"),
    )
    .unwrap();
    let err = read_metrics(&dir).unwrap_err().to_string();
    assert!(
        err.contains(METRICS_FILE) && err.contains("line 2") && err.contains("step"),
        "{err}"
    );
    // A cut-short last line is a killed write, not an error.
    std::fs::write(dir.join(METRICS_FILE), format!("{good}\n{good}\n{{\"ta")).unwrap();
    assert_eq!(read_metrics(&dir).unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
