//! Resuming `delo train` from checkpoints inside a task: SIGKILL at several points (inside a
//! checkpoint write, inside a task file's write, at random times) and each resume ends with
//! the same results, loss log and final parameters as an uninterrupted run; flags with
//! `--resume`; a full disk during a checkpoint write; truncated and corrupted checkpoints; two
//! processes on one run directory; `--override-lr` after a NaN loss.
//!
//! Writes are interrupted deterministically with the test-only hook `DELO_TEST_FAULT`
//! (`delo::fault`): `pause:TEXT:N` stops the N-th write of a file whose path contains TEXT half
//! way, so the test can kill the process there; `enospc:TEXT` fails it as a full disk does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use rand::{Rng, SeedableRng};

use delo::report::Results;
use delo::train::step_checkpoint;

/// The fixture (synthetic benchmark + tiny model), made once for every test of this file.
fn fixture() -> &'static (PathBuf, PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| common::synthetic_setup("train-resume"))
}

/// Tests in this file: the last one to pass removes the fixture's folder (a failed test leaves
/// it for a look).
const TESTS: usize = 6;

fn passed() {
    static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if DONE.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == TESTS {
        let _ = std::fs::remove_dir_all(&fixture().0);
    }
}

/// `delo train` into `out`: 3 tasks of 8 steps each, 6 batches an epoch (so a task crosses an
/// epoch end, at a checkpoint), a checkpoint every 2 steps.
fn train(out: &Path) -> Command {
    let (_, data, model) = fixture();
    let mut c = Command::new(common::delo_exe());
    c.args(["train", "--data"])
        .arg(data)
        .arg("--model")
        .arg(model);
    c.arg("--out").arg(out).args([
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--max-steps-per-task",
        "8",
        "--max-text-len",
        "40",
        "--image-size",
        "96",
        "--cache-images",
        "--checkpoint-every",
        "2",
    ]);
    c
}

fn resume(run: &Path) -> Command {
    let mut c = Command::new(common::delo_exe());
    c.args(["train", "--resume"]).arg(run);
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The uninterrupted run, made once.
fn full_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = fixture().0.join("full");
        ok(train(&run));
        run
    })
}

/// Every per-step log field but the wall-clock throughput.
fn loss_log(run: &Path) -> Vec<String> {
    delo::train::metrics::read_metrics(run)
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{} {} {} {:?} {:?} {:?} {:?} {:?}",
                m.task, m.step, m.epoch, m.loss, m.l_c, m.l_align, m.l_con, m.lr
            )
        })
        .collect()
}

/// `run` ended exactly as the uninterrupted run: the same final parameters and keys of every
/// task (the task files, byte for byte), matrices, AP/FG, per-task steps and final losses, and
/// loss log.
fn assert_same_as_full(run: &Path) {
    let full = full_run();
    for t in 0..3 {
        let f = format!("task{t}.safetensors");
        assert!(
            std::fs::read(full.join(&f)).unwrap() == std::fs::read(run.join(&f)).unwrap(),
            "{f} differs from the uninterrupted run's"
        );
    }
    let (a, b) = common::assert_same_results(full, run);
    let per_task = |r: &Results| -> Vec<(u64, usize, f64)> {
        r.tasks
            .iter()
            .map(|t| {
                t.as_ref()
                    .map(|t| (t.steps, t.epochs, t.final_loss))
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(per_task(&a), per_task(&b), "steps, epochs, final losses");
    assert_eq!(loss_log(full), loss_log(run), "metrics.jsonl");
    assert!(!run
        .join(step_checkpoint::DIR)
        .read_dir()
        .unwrap()
        .any(|_| true));
}

fn checkpoint_file(run: &Path, task: usize, step: usize) -> PathBuf {
    run.join(step_checkpoint::DIR)
        .join(format!("task{task}-step{step:08}.safetensors"))
}

#[test]
fn sigkill_anywhere_then_resume_ends_as_the_uninterrupted_run() {
    let full = full_run();
    let took = {
        let started = Instant::now();
        ok(train(&fixture().0.join("timed")));
        started.elapsed()
    };
    let run = fixture().0.join("killed");
    // Inside the write of task 0's third checkpoint (step 6, the end of epoch 1).
    common::sigkill(common::paused_in_write(train(&run), "checkpoints/", 3));
    let half_written = run
        .join(step_checkpoint::DIR)
        .join(".task0-step00000006.safetensors.tmp");
    assert!(
        half_written.is_file(),
        "the kill did not land inside the write"
    );
    // Inside the write of task 1's file, after its training.
    common::sigkill(common::paused_in_write(
        resume(&run),
        "task1.safetensors",
        1,
    ));
    // At random times.
    let seed = u64::from(std::process::id());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..2 {
        let after = took.mul_f64(rng.random_range(0.1..0.6));
        eprintln!("seed {seed}: killing after {after:?}");
        let mut child = resume(&run).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_none() {
            common::sigkill(child);
        }
    }
    // The random kills may have landed after the end; then this resume has nothing to do.
    ok(resume(&run));
    assert_same_as_full(&run);

    let r = Results::load(&run.join("results.json")).unwrap();
    assert!(r.resumes.len() >= 2, "{:?}", r.resumes);
    // The first resume went on after task 0's newest complete checkpoint, step 4.
    let first = &r.resumes[0];
    assert_eq!((first.task, first.step), (0, 4), "{first:?}");
    assert_eq!(
        first.checkpoint.as_deref(),
        Some("task0-step00000004.safetensors")
    );
    // The second went on after task 1's training: its newest checkpoint, step 6.
    assert_eq!((r.resumes[1].task, r.resumes[1].step), (1, 6));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## Resumes") && report.contains("task0-step00000004"));
    assert!(Results::load(&full.join("results.json"))
        .unwrap()
        .resumes
        .is_empty());
    passed();
}

#[test]
fn a_truncated_or_corrupted_checkpoint_is_named_and_the_one_before_is_used() {
    let run = fixture().0.join("corrupt");
    common::sigkill(common::paused_in_write(train(&run), "checkpoints/", 3));
    let (two, four) = (checkpoint_file(&run, 0, 2), checkpoint_file(&run, 0, 4));
    // A flipped byte in the tensors fails the checksum.
    let mut bytes = std::fs::read(&two).unwrap();
    let end = bytes.len() - 10;
    bytes[end] ^= 0x40;
    let flipped = fixture().0.join("flipped.safetensors");
    std::fs::write(&flipped, &bytes).unwrap();
    let err = step_checkpoint::load(&flipped)
        .err()
        .expect("a corrupt file loaded")
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("flipped"),
        "{err}"
    );
    // The newest checkpoint cut short: resume names it and goes on from step 2.
    let b = std::fs::read(&four).unwrap();
    std::fs::write(&four, &b[..b.len() / 2]).unwrap();
    let out = ok(resume(&run));
    let log = text(&out.stderr);
    assert!(
        log.contains("skipping bad checkpoint")
            && log.contains("task0-step00000004.safetensors")
            && log.contains("truncated"),
        "{log}"
    );
    assert!(log.contains("resuming task 0 after step 2"), "{log}");
    assert_same_as_full(&run);
    passed();
}

#[test]
fn a_full_disk_during_a_checkpoint_write_stops_and_keeps_the_previous_one() {
    let run = fixture().0.join("full-disk");
    let mut c = train(&run);
    c.env("DELO_TEST_FAULT", "enospc:task0-step00000004");
    let out = c.output().unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "the run went on after a failed write"
    );
    assert!(
        err.contains("No space left on device")
            && err.contains("checkpoint of task 0 at step 4 could not be written")
            && err.contains("The checkpoint of task 0 at step 2")
            && err.contains("is intact"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(run.join(step_checkpoint::DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        ["task0-step00000002.safetensors"],
        "no temporary file is left"
    );
    step_checkpoint::load(&checkpoint_file(&run, 0, 2)).unwrap();
    let out = ok(resume(&run));
    assert!(text(&out.stderr).contains("resuming task 0 after step 2"));
    assert_same_as_full(&run);
    passed();
}

/// A run stopped (killed) after task 0.
fn stopped_after_task0(name: &str) -> PathBuf {
    let run = fixture().0.join(name);
    common::sigkill(common::paused_in_write(train(&run), "progress.json", 2));
    run
}

#[test]
fn flags_that_change_results_are_refused_and_run_time_ones_apply() {
    let run = stopped_after_task0("flags");
    let before = std::fs::read(run.join("run.json")).unwrap();
    let mut c = resume(&run);
    // The flags of the issue, and one (--seed) given with the run's own value.
    c.args([
        "--epochs",
        "3",
        "--lr",
        "0.05",
        "--variant",
        "heads-only",
        "--seed",
        "42",
    ]);
    let out = c.output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "refused flags were accepted");
    for line in [
        "--epochs: the run has 2, given 3",
        "--lr: the run has 0.0001, given 0.05",
        "--variant: the run has \"delo\", given \"heads-only\"",
    ] {
        assert!(err.contains(line), "{line:?} not in\n{err}");
    }
    assert!(
        !err.contains("--seed"),
        "a flag equal to the run's is no difference:\n{err}"
    );
    assert_eq!(
        std::fs::read(run.join("run.json")).unwrap(),
        before,
        "run.json changed"
    );

    let out = resume(&run)
        .args(["--override-lr", "5e-5"])
        .arg("--data")
        .arg(".")
        .output()
        .unwrap();
    assert!(!out.status.success(), "--data with --resume");

    let mut c = resume(&run);
    c.args(["--epochs", "2", "--device", "cpu", "--loader-threads", "1"]);
    c.args([
        "--checkpoint-every",
        "off",
        "--cuda-graph",
        "off",
        "--override-lr",
        "5e-5",
    ]);
    let out = ok(c);
    let log = text(&out.stderr);
    assert!(
        !log.contains("checkpoint at step"),
        "--checkpoint-every off ignored:\n{log}"
    );
    let spec = delo::train::checkpoint::read_run(&run).unwrap();
    let s = &spec.settings;
    assert_eq!((s.loader_threads, s.lr, s.cuda_graph), (1, 5e-5, false));
    assert_eq!(s.checkpoint_every.to_string(), "off");
    let r = Results::load(&run.join("results.json")).unwrap();
    let changes = r.resumes[0].changes.join("; ");
    assert_eq!(r.resumes[0].task, 1);
    for c in [
        "loader_threads: ",
        "checkpoint_every: ",
        "lr (--override-lr): 0.0001 → 5e-5",
    ] {
        assert!(changes.contains(c), "{c:?} not in {changes:?}");
    }
    assert!(
        !changes.contains("device"),
        "an unchanged device recorded: {changes}"
    );

    let out = common::run_delo(&["train", "--override-lr", "1e-3"], &[("--out", &run)]);
    assert!(!out.status.success(), "--override-lr without --resume");
    passed();
}

#[test]
fn a_second_process_is_refused_and_a_dead_ones_lock_is_taken_over() {
    let run = stopped_after_task0("lock");
    // The first process, paused inside a checkpoint write, still holds the run.
    let first = common::paused_in_write(resume(&run), "checkpoints/", 1);
    let pid = first.id();
    let out = resume(&run).output().unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a second process trained into the run"
    );
    assert!(
        err.contains(&format!("process {pid}")) && err.contains("in use"),
        "{err}"
    );
    common::sigkill(first);
    // Its lock file still names it; the lock itself died with it.
    let lock = std::fs::read_to_string(run.join(delo::train::lock::LOCK_FILE)).unwrap();
    assert_eq!(lock.trim(), pid.to_string());
    let out = ok(resume(&run));
    let log = text(&out.stderr);
    assert!(
        log.contains(&format!("left by process {pid}, which has ended")),
        "{log}"
    );
    // A run that ended normally leaves no stale lock behind.
    let out = ok(resume(&run));
    assert!(!text(&out.stderr).contains("left by process"));
    passed();
}

#[test]
fn after_a_nan_loss_override_lr_goes_on_with_a_lower_rate() {
    let run = fixture().0.join("nan");
    let out = train(&run).args(["--lr", "1e30"]).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "an absurd learning rate trained");
    assert!(
        err.contains("became") && err.contains("--override-lr"),
        "{err}"
    );
    let mut c = resume(&run);
    c.args(["--override-lr", "1e-4"]);
    ok(c);
    let spec = delo::train::checkpoint::read_run(&run).unwrap();
    assert_eq!(spec.settings.lr, 1e-4);
    let r = Results::load(&run.join("results.json")).unwrap();
    assert!(r.test.ap.is_some(), "the run did not finish");
    assert_eq!(r.resumes.len(), 1);
    assert!(r.resumes[0].changes[0].starts_with("lr (--override-lr): 1e30 → 0.0001"));
    passed();
}
