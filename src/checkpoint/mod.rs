//! Checkpoints: aligned snapshots of every shard's open windows and every partition's log
//! position, so that after a crash the appliance resumes with each logged event counted once.

pub mod file;

use std::path::PathBuf;

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error.
    #[error("checkpoint I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's checksum (or header) is wrong.
    #[error("checkpoint {path} is corrupt: {reason}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The body could not be decoded.
    #[error("checkpoint body does not decode: {0}")]
    Decode(String),
}
