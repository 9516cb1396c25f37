//! End to end: the synthetic benchmark trains; AP, FG and task-id accuracy land in a sane
//! range; earlier tasks' parameters stay bit-identical; a killed run resumes to the same
//! results as an uninterrupted one; results.json's AP and FG follow from its matrix.

mod common;

use std::path::Path;
use std::process::Command;

use delo::delo::config::Variant;
use delo::report::Results;
use delo::train::demo::demo_settings;
use delo::train::Trainer;

fn host_params(tr: &Trainer, t: usize) -> Vec<(String, Vec<f32>)> {
    tr.tasks[t]
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.to_vec_f32().unwrap()))
        .collect()
}

/// AP = mean of the last row; FG = mean over j < T of the largest drop from an earlier row.
fn ap_fg_by_hand(m: &[Vec<Option<f64>>]) -> (f64, f64) {
    let t = m.len();
    let last: Vec<f64> = m[t - 1].iter().map(|v| v.unwrap()).collect();
    let ap = last.iter().sum::<f64>() / t as f64;
    let fg = (0..t - 1)
        .map(|j| {
            (j..t - 1)
                .map(|z| m[z][j].unwrap() - last[j])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum::<f64>()
        / (t - 1) as f64;
    (ap, fg)
}

#[test]
fn synthetic_benchmark_trains_and_keeps_earlier_tasks_frozen() {
    let (root, data, model) = common::synthetic_setup("e2e-train");
    let mut tr = Trainer::create(
        &data,
        &model,
        &root.join("run"),
        demo_settings(Variant::Delo),
    )
    .unwrap();
    tr.run_until(1, &mut |_| {}).unwrap();
    let task0 = host_params(&tr, 0);
    let results = tr.run(&mut |_| {}).unwrap();
    assert_eq!(
        host_params(&tr, 0),
        task0,
        "task 0's parameters changed while later tasks trained"
    );
    let on_disk = delo::st::read_file(&root.join("run/task0.safetensors")).unwrap();
    for (name, v) in &task0 {
        assert_eq!(
            &on_disk[name].to_vec_f32().unwrap(),
            v,
            "checkpointed {name} differs"
        );
    }
    let test = results.split(delo::data::Split::Test).unwrap();
    let (ap, fg) = (test.ap.unwrap(), test.fg.unwrap());
    // 4 classes per task: chance is 25%; the task-agnostic protocol also needs the right key.
    assert!(ap > 45.0, "AP {ap} is not well above chance");
    assert!((-20.0..=50.0).contains(&fg), "FG {fg} out of a sane range");
    let id = test.task_id_matrix.iter().flatten().flatten().count();
    assert_eq!(id, 6, "task-id accuracy for every lower-triangle entry");
    // AP and FG of results.json follow from its matrix by the formulas of docs/data.md#metrics.
    let saved = Results::load(&root.join("run/results.json")).unwrap();
    let s = saved.split(delo::data::Split::Test).unwrap();
    let (ap2, fg2) = ap_fg_by_hand(&s.matrix);
    assert!(
        (s.ap.unwrap() - ap2).abs() < 1e-9 && (s.fg.unwrap() - fg2).abs() < 1e-9,
        "stored AP/FG {:?}/{:?} vs {ap2}/{fg2}",
        s.ap,
        s.fg
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn delo_cmd(args: &[&str], extra: &[&Path]) -> Command {
    let mut c = Command::new(common::delo_exe());
    c.args(args);
    for p in extra {
        c.arg(p);
    }
    c
}

#[test]
fn killed_run_resumes_to_the_same_results() {
    let (root, data, model) = common::synthetic_setup("e2e-resume");
    let args = [
        "--epochs",
        "10",
        "--lr",
        "3e-3",
        "--missing",
        "both:0.7",
        "--max-text-len",
        "40",
        "--image-size",
        "96",
        "--cache-images",
    ];
    let train = |out: &Path| {
        let mut c = delo_cmd(&["train", "--data"], &[&data]);
        c.arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(out)
            .args(args);
        c
    };
    let full = root.join("full");
    let st = train(&full).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let killed = root.join("killed");
    let mut child = train(&killed)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while common::tasks_done(&killed) < 1 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = common::tasks_done(&killed);
    assert!(done < 3, "the run finished before the kill ({done} tasks)");
    let st = delo_cmd(&["train", "--resume"], &[&killed])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let (_, b) = common::assert_same_results(&full, &killed);
    // `delo eval` on the resumed run reproduces the last row of its test matrix.
    let ev = delo_cmd(&["eval", "--run"], &[&killed]).output().unwrap();
    assert!(
        ev.status.success(),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
    let table = String::from_utf8_lossy(&ev.stdout);
    for v in b.split(delo::data::Split::Test).unwrap().matrix[2]
        .iter()
        .flatten()
    {
        assert!(
            table.contains(&format!("{v:.2}")),
            "{v:.2} missing from\n{table}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let (root, data, model) = common::synthetic_setup("e2e-nan");
    let mut s = demo_settings(Variant::Delo);
    s.epochs = 1;
    let mut tr = Trainer::create(&data, &model, &root.join("run"), s.clone()).unwrap();
    tr.run_until(1, &mut |_| {}).unwrap();
    drop(tr);
    // An absurd learning rate makes the next task's loss overflow.
    let mut run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("run/run.json")).unwrap()).unwrap();
    run["settings"]["lr"] = serde_json::json!(1e30);
    std::fs::write(root.join("run/run.json"), run.to_string()).unwrap();
    let before = std::fs::read(root.join("run/task0.safetensors")).unwrap();
    let mut tr = Trainer::resume(&root.join("run")).unwrap();
    let err = tr
        .run(&mut |_| {})
        .map(drop)
        .expect_err("the run must stop")
        .to_string();
    assert!(err.contains("loss of task 1 became"), "{err}");
    assert!(
        err.contains("The checkpoint of task 0 in") && err.contains("continues at task 1"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(root.join("run/task0.safetensors")).unwrap(),
        before,
        "the last good checkpoint changed"
    );
    assert_eq!(common::tasks_done(&root.join("run")), 1);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_nan_loss_in_the_first_task_says_no_checkpoint_exists_yet() {
    // Issue case 7: "the checkpoints of tasks 0..0 are intact" was said with none written.
    let (root, data, model) = common::synthetic_setup("e2e-nan-first");
    let mut s = demo_settings(Variant::Delo);
    s.epochs = 1;
    s.lr = 1e30;
    let mut tr = Trainer::create(&data, &model, &root.join("run"), s).unwrap();
    let err = tr
        .run(&mut |_| {})
        .map(drop)
        .expect_err("the run must stop")
        .to_string();
    assert!(err.contains("loss of task 0 became"), "{err}");
    assert!(err.contains("holds no task checkpoint yet"), "{err}");
    assert!(!err.contains("intact"), "{err}");
    assert!(!root.join("run/task0.safetensors").exists());
    assert_eq!(common::tasks_done(&root.join("run")), 0);
    let _ = std::fs::remove_dir_all(&root);
}
