//! Checkpoint files: `checkpoint/ckpt-{epoch:012}.bin`. (Being written.)

use std::path::{Path, PathBuf};

use super::Error;

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Loaded {
    /// Its epoch.
    pub epoch: u64,
    /// The body bytes (CRC verified).
    pub body: Vec<u8>,
    /// The file.
    pub path: PathBuf,
}

/// Writes checkpoint `epoch` with `body` into `dir`: temp file, fsync, rename, fsync dir.
pub fn write(_dir: &Path, _epoch: u64, _body: &[u8]) -> Result<PathBuf, Error> {
    todo!("checkpoint file")
}

/// The newest checkpoint in `dir` whose CRC is good; older ones are tried when the newest is
/// bad (with a warning). `None` when there is none.
pub fn load_newest(_dir: &Path) -> Result<Option<Loaded>, Error> {
    todo!("checkpoint file")
}

/// Deletes all but the newest `keep` checkpoint files (and stray temp files).
pub fn prune(_dir: &Path, _keep: usize) -> Result<(), Error> {
    todo!("checkpoint file")
}
