//! The results record is bounded on disk: with `[results] retention_bytes` set small, a
//! long run keeps each shard's `aggregates/sNNN/` near that bound while it writes many
//! times more, and what is kept is the newest rows, each once. (That a lagging reader's
//! cursor holds segments back is a unit test of `results`: no reader runs in the binary yet.)

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::harness::{Sluice, aggregate_lines, now_secs, wait_for};

const KEYS: usize = 300;
const WAVES: i64 = 12;
const SEGMENT_BYTES: u64 = 16 * 1024;
const RETENTION_BYTES: u64 = 64 * 1024;

/// Bytes in each shard's record directory.
fn record_bytes(data: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(data.join("aggregates")).unwrap() {
        let shard = shard.unwrap().path();
        if shard.is_dir() {
            let bytes = std::fs::read_dir(&shard)
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            out.push(bytes);
        }
    }
    out
}

#[test]
fn a_small_retention_keeps_the_aggregates_directory_near_its_bound_over_a_long_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[checkpoint]\ninterval_ms = 200\n\n[results]\nsegment_bytes = \"{SEGMENT_BYTES}\"\n\
             retention_bytes = \"{RETENTION_BYTES}\"\n"
        ),
    )
    .unwrap();
    let sluice = Sluice::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--cores",
            "2",
            "--window",
            "1s",
            "--allowed-lateness",
            "1s",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=g",
        ],
    );
    let base = now_secs() - 120;
    let mut stream = TcpStream::connect(sluice.addr("g")).unwrap();
    let mut largest = 0;
    for wave in 0..WAVES {
        let text: String = (0..KEYS)
            .map(|k| format!("results.retention.key.{k} {wave} {}\n", base + wave))
            .collect();
        stream.write_all(text.as_bytes()).unwrap();
        // Each wave closes the windows of the one before; wait for them and a checkpoint.
        let closed = (wave as usize * KEYS) as f64;
        assert!(
            wait_for(Duration::from_secs(30), || {
                sluice.metric("sluice_windows_closed_total", &[]) >= closed
            }),
            "wave {wave}: windows did not close"
        );
        let epoch = sluice.metric("sluice_checkpoint_last_epoch", &[]);
        assert!(wait_for(Duration::from_secs(30), || {
            sluice.metric("sluice_checkpoint_last_epoch", &[]) >= epoch + 2.0
        }));
        largest = largest.max(record_bytes(&data).into_iter().max().unwrap_or(0));
    }
    // Idle input: the watermark closes the last wave's windows too.
    let all = (WAVES as usize * KEYS) as f64;
    assert!(wait_for(Duration::from_secs(30), || {
        sluice.metric("sluice_windows_closed_total", &[]) >= all
    }));
    // Closed rows are staged and written out at the latest by the next checkpoint.
    let epoch = sluice.metric("sluice_checkpoint_last_epoch", &[]);
    assert!(wait_for(Duration::from_secs(30), || {
        sluice.metric("sluice_checkpoint_last_epoch", &[]) >= epoch + 2.0
    }));

    // Each wave writes ~35 KB of rows per shard, ~420 KB in all; retention keeps the bound,
    // the segment being written and one wave not yet behind a checkpoint.
    let slack = 3 * SEGMENT_BYTES + 48 * 1024;
    assert!(
        largest <= RETENTION_BYTES + slack,
        "a shard's record reached {largest} bytes (bound {RETENTION_BYTES})"
    );
    let lines = aggregate_lines(&data);
    let rows = lines.len();
    assert!(
        rows < KEYS * WAVES as usize / 2,
        "{rows} rows kept of {}",
        KEYS * WAVES as usize
    );
    // What is kept is the newest rows, each once.
    let mut seen = std::collections::BTreeSet::new();
    for (_, line) in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let at = (
            v["key"].as_str().unwrap().to_string(),
            v["start_ms"].as_i64().unwrap(),
        );
        assert!(seen.insert(at.clone()), "row {at:?} twice");
    }
    let newest = (base + WAVES - 1) * 1000;
    assert!(
        seen.iter().any(|(_, start)| *start == newest),
        "the newest windows are kept"
    );
    assert!(
        !seen.iter().any(|(_, start)| *start == base * 1000),
        "the oldest windows are gone"
    );
}
