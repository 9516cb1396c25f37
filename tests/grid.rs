//! `delo grid` and `delo table` end to end on the synthetic benchmark: a reduced Table 2
//! (two settings × two methods) runs, one run is killed mid-way, the grid is run again
//! (finished runs skipped, the killed one resumed), and every number of the table equals its
//! run's results.json; the Slurm array's index lists every setting with the local flags.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use delo::report::Results;

const TRAIN_FLAGS: [&str; 8] = [
    "--epochs",
    "1",
    "--image-size",
    "96",
    "--max-text-len",
    "40",
    "--lr",
    "3e-3",
];

fn grid_cmd(data: &Path, model: &Path, out: &Path) -> Command {
    let mut c = Command::new(common::delo_exe());
    c.arg("grid")
        .arg("--data")
        .arg(data)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out);
    c.args(["--table", "2", "--etas", "70", "--types", "text,both"]);
    c.args(["--methods", "delo,heads-only", "--"])
        .args(TRAIN_FLAGS);
    c
}

#[test]
fn reduced_grid_survives_a_kill_and_its_table_matches_the_runs() {
    let (root, data, model) = common::synthetic_setup("grid-e2e");
    let out = root.join("grid");
    // First pass: kill the third run's process once it has finished a task.
    let mut grid = grid_cmd(&data, &model, &out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let victim = "both70-delo";
    let mut killed = false;
    for line in BufReader::new(grid.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix(&format!("[cpu] {victim}: training (pid ")) {
            let pid = rest.split(',').next().unwrap().to_string();
            while common::tasks_done(&out.join(victim)) < 1 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let st = Command::new("kill").args(["-9", &pid]).status().unwrap();
            assert!(st.success());
            killed = true;
        }
    }
    let st = grid.wait().unwrap();
    assert!(killed, "the grid never started {victim}");
    assert!(!st.success(), "a grid with a killed run must fail");
    let done = common::tasks_done(&out.join(victim));
    assert!(
        (1..3).contains(&done),
        "{victim} finished {done} tasks before the kill"
    );
    assert!(
        out.join("both70-heads-only/results.json").is_file(),
        "the run after the killed one did not go on"
    );
    // Meanwhile the table shows the killed run's state, not a number.
    let tb = Command::new(common::delo_exe())
        .arg("table")
        .arg(&out)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&tb.stdout);
    assert!(
        md.contains(&format!("stopped {done}/3 tasks")) || md.contains("failed"),
        "{md}"
    );

    // Second pass: three runs skipped, the killed one resumed.
    let again = grid_cmd(&data, &model, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{victim}: resuming")), "{stderr}");
    assert_eq!(
        stderr.matches("finished before, skipped").count(),
        3,
        "{stderr}"
    );

    // Every measured number of the CSV is its run's results.json, exactly.
    let tb = Command::new(common::delo_exe())
        .arg("table")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        tb.status.success(),
        "{}",
        String::from_utf8_lossy(&tb.stderr)
    );
    let md = String::from_utf8_lossy(&tb.stdout);
    let mut rdr = csv::Reader::from_path(out.join("tables.csv")).unwrap();
    let mut measured = 0;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        if &rec[3] != "measured" {
            assert_eq!(&rec[4], "claim");
            continue;
        }
        measured += 1;
        assert_eq!(&rec[4], "finished", "{rec:?}");
        let r = Results::load(&out.join(&rec[10]).join("results.json")).unwrap();
        let t = r.split(delo::data::Split::Test).unwrap();
        for (i, v) in [(7, t.ap), (8, t.fg), (9, t.ap_task_id)] {
            assert_eq!(
                rec[i].parse::<f64>().unwrap(),
                v.unwrap(),
                "{rec:?} column {i}"
            );
            assert!(md.contains(&format!("{:.2}", v.unwrap())), "{md}");
        }
    }
    assert_eq!(measured, 4);
    // The paper's claims are there, marked: Table 2, η = 70 %, both missing, DeLo.
    assert!(
        md.contains("DeLo AP (paper)") && md.contains("67.42"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn slurm_array_lists_every_setting_with_the_same_flags() {
    let (root, data, model) = common::synthetic_setup("grid-slurm");
    let out = root.join("grid");
    let mut c = Command::new(common::delo_exe());
    c.arg("grid")
        .arg("--data")
        .arg(&data)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out);
    c.args(["--table", "4,6", "--slurm", "--"])
        .args(TRAIN_FLAGS);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index = std::fs::read_to_string(out.join("grid-index.tsv")).unwrap();
    let lines: Vec<&str> = index.lines().collect();
    // Table 4's four runs and Table 6's four, the full method shared: seven runs.
    assert_eq!(lines.len(), 7, "{index}");
    for (i, line) in lines.iter().enumerate() {
        let parts: Vec<&str> = line.split('\t').collect();
        assert_eq!(parts[0], i.to_string());
        let args = &parts[2];
        assert!(args.starts_with("train --data "), "{line}");
        assert!(args.contains(&format!("--out {}", out.join(parts[1]).display())));
        assert!(
            args.ends_with(&format!("{} --device cuda", TRAIN_FLAGS.join(" "))),
            "{line}"
        );
    }
    assert!(lines[0].contains("both70-delo\t"), "{index}");
    let script = std::fs::read_to_string(out.join("grid.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-6\n"), "{script}");
    assert!(script.contains("#SBATCH --gres=gpu:1\n"), "{script}");
    let exec = script.lines().find(|l| l.starts_with("exec ")).unwrap();
    assert!(exec.contains(" grid --data "), "{exec}");
    assert!(
        exec.contains("--table '4,6'") && exec.contains("--devices cuda"),
        "{exec}"
    );
    assert!(
        exec.ends_with(&format!(
            "--index \"$SLURM_ARRAY_TASK_ID\" -- {}",
            TRAIN_FLAGS.join(" ")
        )),
        "{exec}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
