//! The data dir's lock: one instance serves a data dir at a time.

#![forbid(unsafe_code)]

use std::path::Path;

use super::{Error, io_err};

/// Name of the lock file in the data dir.
const LOCK_FILE: &str = "sluice.lock";

/// Takes the data dir's exclusive lock (`flock` on `sluice.lock`, which then holds this
/// process's pid): two instances appending to one log would interleave their batches. The
/// kernel drops the lock when the process ends, kill -9 included, so a stale file never
/// blocks a restart.
pub(super) fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, Error> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("cannot open", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the pid only makes the message more useful.
            let _ = file.read_to_string(&mut holder);
            return Err(Error::DataDirInUse {
                path: data_dir.to_path_buf(),
                pid: holder.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err("cannot lock", &path)(e)),
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .map_err(io_err("cannot write", &path))?;
    Ok(file)
}
