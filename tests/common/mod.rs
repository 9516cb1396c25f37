//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod fixture;
pub mod harness;

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use delo::autograd::{ParamId, Tape, Var};
use delo::{Device, Tensor};

/// Runs the `delo` binary with `args` and then each `(flag, path)` pair; its output, whatever
/// its exit status.
pub fn run_delo(args: &[&str], paths: &[(&str, &std::path::Path)]) -> std::process::Output {
    let mut c = std::process::Command::new(delo_exe());
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().unwrap()
}

/// The repository root, where the fixtures (`tests/data`) are: `$CARGO_MANIFEST_DIR` at run time
/// when set (cargo sets it when it runs a test; scripts/gpu-check.sh exports it), else the
/// folder the test was compiled in. So a test binary copied to another machine, where the
/// repository sits elsewhere, still finds its fixtures.
pub fn repo_dir() -> PathBuf {
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

/// The fixtures folder, `tests/data` of [`repo_dir`].
pub fn data_dir() -> PathBuf {
    repo_dir().join("tests/data")
}

/// The `delo` executable: `$CARGO_BIN_EXE_delo` at run time when set, else the one cargo
/// built beside this test when it is still there, else `delo` next to the folder of the test
/// binary (the layout of `target/*/deps/` and of scripts/gpu-build.sh's `gpu-dist/tests/`).
pub fn delo_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_delo").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let built = PathBuf::from(env!("CARGO_BIN_EXE_delo"));
    if built.exists() {
        return built;
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("delo")))
        .filter(|p| p.exists())
        .unwrap_or(built)
}

/// Starts `c` (a `delo` command) with the fault hook (`delo::fault`) pausing the `n`-th write of a file whose path contains
/// `file`, and returns the process once it is paused there.
pub fn paused_in_write(mut c: std::process::Command, file: &str, n: usize) -> std::process::Child {
    c.env("DELO_TEST_FAULT", format!("pause:{file}:{n}"));
    let mut child = c
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut seen = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with(delo::fault::PAUSE_MARK) {
            return child;
        }
        seen += &line;
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    panic!("the run ended ({status}) before write {n} of {file}:\n{seen}");
}

/// SIGKILL (`Child::kill` on Unix), then reap.
pub fn sigkill(mut child: std::process::Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A host f32 tensor of uniform values in [-1, 1).
pub fn randn(r: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect(),
        shape,
    )
    .unwrap()
}

/// Asserts `|a - b| <= atol + rtol·|b|` elementwise, naming the first offending element.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], atol: f32, rtol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs() && x.is_finite() == y.is_finite(),
            "{what}: element {i}: got {x}, expected {y} (atol {atol}, rtol {rtol})"
        );
    }
}

// ---- finite differences ---------------------------------------------------------------
//
// Each check makes every input a trainable parameter, reduces the op's output to a scalar
// with fixed random weights (L = Σ wᵢ·yᵢ, through a frozen linear, itself checked), and
// compares the tape's gradient with central differences. The CPU backend computes in f32, so
// the step is h = 1e-2 and the tolerance |analytic − numeric| ≤ 2e-3 + 2e-2·|numeric|: the
// truncation error is O(h²·f‴) ≈ 1e-4 and the f32 rounding error ≈ 1e-7·|L|/h ≈ 1e-4 at
// these sizes, so a wrong gradient (typically off by O(1)) cannot pass.

pub const H: f32 = 1e-2;
pub const ATOL: f32 = 2e-3;
pub const RTOL: f32 = 2e-2;

/// Builds the graph `f` over `inputs` and returns the scalar L (sum of weighted outputs).
pub fn scalar_loss(tape: &mut Tape, y: Var, weights: &Tensor) -> Var {
    let n = tape.value(y).numel();
    if n == 1 {
        return y;
    }
    let flat = tape.reshape(y, &[1, n]).unwrap();
    let s = tape
        .linear(flat, &weights.reshape(&[1, n]).unwrap(), None)
        .unwrap();
    tape.reshape(s, &[1]).unwrap()
}

pub fn eval(f: &dyn Fn(&mut Tape, &[Var]) -> Var, inputs: &[Tensor], weights: &Tensor) -> f64 {
    let mut tape = Tape::new(Device::Cpu);
    let vars: Vec<Var> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| tape.param(ParamId(i), t.clone()))
        .collect();
    let y = f(&mut tape, &vars);
    let l = scalar_loss(&mut tape, y, weights);
    tape.value(l).item().unwrap() as f64
}

/// Checks d L / d input for every input element, on the inputs listed in `check`.
pub fn check(
    name: &str,
    inputs: Vec<Tensor>,
    check: &[usize],
    f: impl Fn(&mut Tape, &[Var]) -> Var,
) {
    let mut r = rng(7);
    let mut tape = Tape::new(Device::Cpu);
    let vars: Vec<Var> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| tape.param(ParamId(i), t.clone()))
        .collect();
    let y = f(&mut tape, &vars);
    let weights = randn(&mut r, &[tape.value(y).numel()]);
    let l = scalar_loss(&mut tape, y, &weights);
    let grads = tape.backward(l).unwrap();
    for &i in check {
        let analytic = grads
            .get(ParamId(i))
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"))
            .to_vec_f32()
            .unwrap();
        let base = inputs[i].to_vec_f32().unwrap();
        for j in 0..base.len() {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[j] += delta;
                let mut ins = inputs.clone();
                ins[i] = Tensor::from_f32(v, inputs[i].shape()).unwrap();
                eval(&f, &ins, &weights)
            };
            let numeric = ((at(H) - at(-H)) / (2.0 * H as f64)) as f32;
            let a = analytic[j];
            assert!(
                (a - numeric).abs() <= ATOL + RTOL * numeric.abs(),
                "{name}: d/d input{i}[{j}]: analytic {a}, numeric {numeric}"
            );
        }
    }
}

/// A fresh temporary folder with the synthetic benchmark (`data`) and a `tiny` model
/// (`model`): returns (root, data, model).
pub fn synthetic_setup(name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let root = std::env::temp_dir().join(format!("delo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (data, model) = (root.join("data"), root.join("model"));
    delo::data::synth(&data, &delo::data::SynthConfig::default()).unwrap();
    let opts = delo::vilt::InitOptions {
        seed: 0,
        randomize_all: false,
    };
    let preset = delo::vilt::Preset::parse("tiny").unwrap();
    delo::vilt::init_model_dir(&model, preset, opts, false).unwrap();
    (root, data, model)
}

/// Tasks a run directory has finished, from its `progress.json` (0 before the first).
pub fn tasks_done(run: &std::path::Path) -> usize {
    std::fs::read_to_string(run.join("progress.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["tasks_done"].as_u64())
        .unwrap_or(0) as usize
}

/// Asserts that two runs' `results.json` hold the same val and test matrices, task-id
/// matrices, AP and FG; returns both.
pub fn assert_same_results(
    a: &std::path::Path,
    b: &std::path::Path,
) -> (delo::report::Results, delo::report::Results) {
    use delo::report::Results;
    let (ra, rb) = (
        Results::load(&a.join("results.json")).unwrap(),
        Results::load(&b.join("results.json")).unwrap(),
    );
    for split in [delo::data::Split::Val, delo::data::Split::Test] {
        let (x, y) = (ra.split(split).unwrap(), rb.split(split).unwrap());
        assert_eq!(x.matrix, y.matrix, "{split:?} matrix");
        assert_eq!(
            x.task_id_matrix, y.task_id_matrix,
            "{split:?} task-id matrix"
        );
        assert_eq!((x.ap, x.fg), (y.ap, y.fg), "{split:?} AP, FG");
    }
    (ra, rb)
}
