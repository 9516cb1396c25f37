//! The test harness of the test files whose tests need something a machine may lack (a CUDA
//! device, the embedded PTX, ptxas): built with `harness = false` on `libtest-mimic`, it
//! decides at run time, not at compile time, which tests can run, and reports the others as
//! **ignored**, with the reason, instead of letting them pass without running.
//!
//! A test file lists its tests in `main`:
//!
//! ```ignore
//! fn main() {
//!     harness::main(vec![
//!         trial!(runs_everywhere),
//!         trial!(needs_a_gpu).needs(harness::cuda_device()),
//!     ]);
//! }
//! ```
//!
//! It behaves like libtest: the same output and summary line (`test result: ok. N passed; N
//! failed; N ignored; ...`), exit status 101 when a test fails, and the usual flags
//! (`--test-threads` or `RUST_TEST_THREADS`, a name filter, `--exact`, `--skip`, `--list`,
//! `--ignored`, `--include-ignored`, `--nocapture`; output is never captured). A test whose
//! requirement is unmet prints `ignored (reason)`; `--ignored` or `--include-ignored` runs it
//! anyway, and then it fails with that reason. A test that panics fails, with the panic's
//! message and location; each test runs on a thread named after it, like libtest's.

use std::cell::RefCell;
use std::panic::PanicHookInfo;
use std::sync::OnceLock;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// One test: a name, a body and, when the body cannot run on this machine, why.
pub struct Test {
    name: &'static str,
    body: fn(),
    unmet: Option<String>,
}

impl Test {
    pub fn new(name: &'static str, body: fn()) -> Test {
        Test {
            name,
            body,
            unmet: None,
        }
    }

    /// Adds a requirement: `unmet` is None when it is met here, else the reason the test
    /// cannot run (the first unmet requirement is the one reported).
    pub fn needs(mut self, unmet: Option<String>) -> Test {
        if self.unmet.is_none() {
            self.unmet = unmet;
        }
        self
    }
}

/// `trial!(f)`: the test function `f` under its own name.
#[macro_export]
macro_rules! trial {
    ($f:ident) => {
        $crate::common::harness::Test::new(stringify!($f), $f)
    };
}

/// Why the CUDA tests cannot run here (no embedded PTX, no CUDA device), or None.
pub fn cuda_device() -> Option<String> {
    static UNMET: OnceLock<Option<String>> = OnceLock::new();
    UNMET
        .get_or_init(|| {
            embedded_ptx().or_else(|| {
                (!delo::backend::cuda::cuda_available()).then(|| {
                    "no CUDA device: run under scripts/emulated-cuda or on a GPU".to_string()
                })
            })
        })
        .clone()
}

/// Why a test that reads the embedded PTX cannot run here (built without nvcc), or None.
pub fn embedded_ptx() -> Option<String> {
    delo::backend::cuda::PTX.is_none().then(|| {
        "built without nvcc, no PTX embedded: set NVCC (or REQUIRE_NVCC=1) and rebuild".to_string()
    })
}

/// Runs `tests` as libtest would (arguments from the command line) and exits with its status.
pub fn main(tests: Vec<Test>) -> ! {
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0);
    }
    let forced = args.ignored || args.include_ignored;
    record_panics();
    let trials = tests
        .into_iter()
        .map(|t| {
            let Test { name, body, unmet } = t;
            match unmet {
                None => Trial::test(name, move || run_body(name, body)),
                // Not asked to run ignored tests: libtest-mimic prints a reason only for a test
                // that ignores itself when run, so the trial does that.
                Some(reason) if !forced => {
                    Trial::ignorable_test(name, move || Ok(Completion::ignored_with(reason)))
                }
                // --ignored / --include-ignored: the flag selects it, and it fails with the
                // reason rather than pretend to have run.
                Some(reason) => Trial::test(name, move || {
                    Err(format!("cannot run on this machine: {reason}").into())
                })
                .with_ignored_flag(true),
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

thread_local! {
    /// The message and location of the last panic on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps the default panic output on stderr and also records each panic's message and
/// location, for the failure report.
fn record_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
        let at = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        let text = format!("panicked{at}:\n{}", payload_text(info.payload()));
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        default(info);
    }));
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_string())
}

/// Runs `body` on a thread named `name`; a panic fails the test with its message.
fn run_body(name: &str, body: fn()) -> Result<(), Failed> {
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            std::panic::catch_unwind(body).map_err(|payload| {
                LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| payload_text(&*payload))
            })
        })
        .map_err(|e| Failed::from(format!("cannot start the test's thread: {e}")))?;
    match thread.join() {
        Ok(result) => result.map_err(Failed::from),
        Err(payload) => Err(Failed::from(payload_text(&*payload))),
    }
}
