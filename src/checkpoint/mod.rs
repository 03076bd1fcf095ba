//! Checkpoints: aligned snapshots of every shard's open windows and every partition's log
//! position, so that after a crash the appliance resumes with each logged event counted once.

pub mod coordinator;
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
    /// The log could not be made durable up to a reported offset.
    #[error(transparent)]
    Log(#[from] crate::log::Error),
    /// The body was written by a build with another body version.
    #[error("checkpoint body version {found} (this build reads {BODY_VERSION})")]
    Version {
        /// The version found.
        found: u16,
    },
}

use serde::{Deserialize, Serialize};

pub use crate::alerts::StateRecord as AlertState;
use crate::window::WindowRecord;

/// Version of the body encoding. 2: larger windows composed from smaller ones hold only the
/// smaller windows that closed (version 1 folded every event into every window), so a
/// version-1 body's windows would count the open smaller windows twice. 3: aggregates count
/// distinct set members, and shards keep running gauge values. 4: aggregates keep the
/// deviation sums of their standard deviation. 5: shards keep their alert states and the
/// position of their alerts record. 6: a shard's open windows are kept in chunks (snapshots
/// are taken in steps, into chunks, so no buffer is copied whole on a core). 7: the
/// experiments record's position and the cumulative experiment states.
pub const BODY_VERSION: u16 = 7;

/// One partition's position in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Partition number.
    pub partition: u16,
    /// Every line before this offset is reflected in the shards' state or output.
    pub next_offset: u64,
    /// Largest event time routed from this partition (drives its watermark).
    pub max_event_ms: Option<i64>,
}

/// One shard's state in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardState {
    /// Shard number.
    pub shard: u16,
    /// Length of `aggregates/s{NNN}.jsonl` at the snapshot; the file is cut back to it.
    pub aggregates_len: u64,
    /// Every window ending at or before this is closed and written.
    pub closed_through_ms: i64,
    /// Open windows: [`WindowRecord`]s encoded back to back, in chunks that each hold whole
    /// records (see `window/snapshot.rs` and [`ShardState::windows`]).
    pub windows: Vec<serde_bytes::ByteBuf>,
    /// Number of records in `windows`.
    pub window_count: u64,
    /// Running StatsD gauge values (key, value), restored to each key's owner.
    pub gauges: Vec<(String, f64)>,
    /// Position of the shard's `alerts/` record at the snapshot; it is cut back to it.
    pub alerts_len: u64,
    /// Every (rule, key) alert state, restored to each key's owner.
    pub alerts: Vec<AlertState>,
    /// Position of the shard's `experiments/` record at the snapshot; it is cut back to it.
    pub experiments_len: u64,
    /// Every experiment key's cumulative state, restored to each key's owner.
    pub experiments: Vec<crate::experiments::engine::CumulativeRecord>,
}

impl ShardState {
    /// The open windows, decoded.
    pub fn windows(&self) -> impl Iterator<Item = Result<WindowRecord, Error>> + '_ {
        self.windows
            .iter()
            .flat_map(|chunk| crate::window::decode_records(chunk))
            .map(|r| r.map_err(|e| Error::Decode(format!("window record: {e}"))))
    }
}

/// The body of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    /// Encoding version ([`BODY_VERSION`]).
    pub version: u16,
    /// Checkpoint epoch; rises by one per checkpoint of an instance.
    pub epoch: u64,
    /// Wall-clock time of the commit, ms since the epoch.
    pub created_ms: i64,
    /// Cores (partitions written, shards) of the instance that wrote it.
    pub cores: u16,
    /// Window sizes in ms.
    pub window_sizes_ms: Vec<i64>,
    /// Every partition's position.
    pub partitions: Vec<PartitionState>,
    /// Every shard's state.
    pub shards: Vec<ShardState>,
}

impl Body {
    /// Encodes the body (postcard: compact, versioned by [`BODY_VERSION`]).
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        postcard::to_stdvec(self).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Decodes a body.
    pub fn decode(bytes: &[u8]) -> Result<Body, Error> {
        let body: Body = postcard::from_bytes(bytes).map_err(|e| Error::Decode(e.to_string()))?;
        if body.version != BODY_VERSION {
            return Err(Error::Version {
                found: body.version,
            });
        }
        Ok(body)
    }

    /// The position of `partition`, 0 when the checkpoint does not know it.
    pub fn offset_of(&self, partition: u16) -> u64 {
        self.partitions
            .iter()
            .find(|p| p.partition == partition)
            .map_or(0, |p| p.next_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Agg;

    #[test]
    fn body_round_trips() {
        let record = WindowRecord {
            key: "a.b".into(),
            size_ms: 1000,
            hop_ms: 500,
            start_ms: 0,
            agg: {
                let mut a = Agg::one(2.5, 3);
                a.add(7.0, 4, true);
                a.add(-1.0, 5, true);
                a
            },
        };
        let windows = vec![serde_bytes::ByteBuf::from(
            postcard::to_stdvec(&record).unwrap(),
        )];
        let body = Body {
            version: BODY_VERSION,
            epoch: 9,
            created_ms: 1,
            cores: 2,
            window_sizes_ms: vec![1000, 60_000],
            partitions: vec![PartitionState {
                partition: 0,
                next_offset: 42,
                max_event_ms: Some(-5),
            }],
            shards: vec![ShardState {
                shard: 1,
                aggregates_len: 77,
                closed_through_ms: i64::MIN,
                windows,
                window_count: 1,
                gauges: vec![("queue".into(), 114.0)],
                alerts_len: 12,
                alerts: vec![AlertState {
                    rule: "r".into(),
                    key: "k".into(),
                    state: crate::alerts::state::State::new(),
                }],
                experiments_len: 7,
                experiments: vec![crate::experiments::engine::CumulativeRecord {
                    experiment: "x".into(),
                    key: "k".into(),
                    since_ms: 0,
                    none: 1,
                    arms: vec![crate::window::Agg::one(2.0, 5)],
                }],
            }],
        };
        let bytes = body.encode().unwrap();
        let decoded = Body::decode(&bytes).unwrap();
        assert_eq!(decoded, body);
        let records: Vec<WindowRecord> = decoded.shards[0]
            .windows()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records, vec![record]);
        assert_eq!(body.offset_of(0), 42);
        assert_eq!(body.offset_of(3), 0);
        assert!(Body::decode(&bytes[..bytes.len() / 2]).is_err());
    }
}
