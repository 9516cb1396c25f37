//! Test-only fault injection for file writes, driven by the `DELO_TEST_FAULT` environment
//! variable; with the variable unset (every real run) nothing here has any effect.
//!
//! The tests of checkpointing need two things that cannot be had on demand otherwise: a kill
//! that lands *inside* a checkpoint write, and a full disk. [`crate::st::write_atomic`] calls
//! [`during_write`] after writing the first half of its temporary file, and the variable says
//! what happens there for files whose name contains a given text:
//!
//! - `enospc:TEXT` — the write fails with the operating system's "No space left on device"
//!   (ENOSPC), as it would on a full disk;
//! - `pause:TEXT:N` — the N-th such write (1-based) prints [`PAUSE_MARK`] and the file's path on
//!   stderr and then waits forever, half written, for the test to kill the process.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a write paused by `pause:` prints on stderr before it waits.
pub const PAUSE_MARK: &str = "DELO_TEST_FAULT: paused inside the write of";

/// ENOSPC on Linux and the BSDs.
const ENOSPC: i32 = 28;

static MATCHED_WRITES: AtomicUsize = AtomicUsize::new(0);

/// The injected fault, if any, for a write of `path` that is half done.
pub fn during_write(path: &Path) -> io::Result<()> {
    let Ok(spec) = std::env::var("DELO_TEST_FAULT") else {
        return Ok(());
    };
    let name = path.to_string_lossy();
    let mut parts = spec.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("enospc"), Some(text), None) if name.contains(text) => {
            Err(io::Error::from_raw_os_error(ENOSPC))
        }
        (Some("pause"), Some(text), Some(n)) if name.contains(text) => {
            let nth = MATCHED_WRITES.fetch_add(1, Ordering::SeqCst) + 1;
            if n.parse() == Ok(nth) {
                eprintln!("{PAUSE_MARK} {name}");
                loop {
                    std::thread::park();
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
