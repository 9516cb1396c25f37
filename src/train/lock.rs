//! One training process per run directory: `delo train` holds an exclusive lock on the run's
//! `lock` file (an OS file lock, `File::try_lock`) while it trains, and writes its PID into
//! the file so that a second process can say who holds it.
//!
//! The operating system releases the lock when its holder exits, however it exits (a kill
//! included), so a lock file left by a dead process is stale by construction: the next
//! process takes the lock and says whose it was.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = "lock";

/// The lock of one run directory, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    /// The PID a stale lock file named (its process has ended), if there was one.
    pub stale_pid: Option<u32>,
}

impl RunLock {
    /// Takes the lock of `run_dir`. Errors: another process holds it (the message names its
    /// PID and the lock file), or the file cannot be opened or written.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let holder = previous.trim().parse::<u32>().ok();
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let who = holder.map_or("another process".into(), |p| format!("process {p}"));
                return Err(Error::Msg(format!(
                    "{} is in use: {who} is training into it (it holds {}). Wait for it to \
                     finish or stop it; two processes must not train into one run directory",
                    run_dir.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let pid = std::process::id();
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{pid}")?;
            f.sync_data()
        };
        write(&mut file).map_err(|e| Error::io(&path, e))?;
        Ok(RunLock {
            file,
            stale_pid: holder.filter(|&p| p != pid),
        })
    }
}

impl Drop for RunLock {
    /// Empties the file before the lock goes, so that the next process does not take a run
    /// that ended normally for one that was killed. (The file stays: removing it while others
    /// may have it open would let two processes lock two different files.)
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}
