//! Damage on disk never costs more than the damaged batch, and never an offset given out
//! twice. Each case: load, a checkpoint that counts it all, kill -9, damage to partition 0,
//! restart, new traffic, kill -9 again, restart; then an oracle over the log and over every
//! line sent. Only the damaged batch's lines are missing from the log (and reported); every
//! line sent is counted exactly once (the lost ones were counted before the damage); new
//! lines never reuse an offset of the old ones.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Rows, Sluice, expect_1s, now_secs, read_aggregates, run, wait_for};

/// Bytes of a record batch header (the on-disk format in the design, "On disk").
const HEADER_BYTES: u64 = 40;
/// Batches start at multiples of this.
const ALIGN_BYTES: u64 = 8;

/// What is done to partition 0 while sluice is down.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// One byte flipped in the payload of a middle batch of the newest segment.
    NewestMiddleByte,
    /// Junk in the alignment padding of the newest segment's last padded batch.
    NewestLastPadding,
    /// One byte flipped in the payload of a middle batch of the oldest (sealed) segment.
    SealedByte,
    /// A segment between the oldest and the newest deleted, with its index.
    MiddleSegmentDeleted,
}

/// A record batch as the test reads it straight from a segment file.
#[derive(Debug, Clone)]
struct RawBatch {
    pos: u64,
    payload_bytes: u64,
    first_offset: u64,
    count: u64,
}

impl RawBatch {
    fn bytes(&self) -> u64 {
        (HEADER_BYTES + self.payload_bytes).next_multiple_of(ALIGN_BYTES)
    }
}

/// The batches of a segment file, walked with the test's own reading of the format (it
/// trusts the file: it runs before any damage).
fn raw_batches(path: &Path) -> Vec<RawBatch> {
    let bytes = std::fs::read(path).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos + HEADER_BYTES <= bytes.len() as u64
        && &bytes[pos as usize..pos as usize + 4] == b"SLCB"
    {
        let at = pos as usize;
        let batch = RawBatch {
            pos,
            payload_bytes: u32_at(at + 12),
            first_offset: u64_at(at + 16),
            count: u32_at(at + 32),
        };
        pos += batch.bytes();
        out.push(batch);
    }
    out
}

/// The segment files of partition 0, oldest first.
fn segments(data: &Path) -> Vec<PathBuf> {
    let dir = data.join("log").join("p000");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

fn base_of(segment: &Path) -> u64 {
    segment
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn write_at(path: &Path, pos: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, pos).unwrap();
}

fn flip_payload_byte(path: &Path, batch: &RawBatch) {
    use std::os::unix::fs::FileExt;
    let at = batch.pos + HEADER_BYTES + batch.payload_bytes / 2;
    let mut byte = [0u8];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut byte, at)
        .unwrap();
    write_at(path, at, &[byte[0] ^ 0x20]);
}

/// Does `damage` to partition 0; returns the offsets of partition 0 whose lines it destroys.
fn apply(data: &Path, damage: Damage) -> std::ops::Range<u64> {
    let segs = segments(data);
    assert!(segs.len() >= 3, "partition 0 has {} segments", segs.len());
    match damage {
        Damage::NewestMiddleByte => {
            let newest = segs.last().unwrap();
            let batches = raw_batches(newest);
            assert!(
                batches.len() >= 3,
                "{} batches in the newest segment",
                batches.len()
            );
            let b = &batches[batches.len() / 2];
            flip_payload_byte(newest, b);
            b.first_offset..b.first_offset + b.count
        }
        Damage::NewestLastPadding => {
            let newest = segs.last().unwrap();
            let batches = raw_batches(newest);
            let b = batches
                .iter()
                .rev()
                .find(|b| b.bytes() > HEADER_BYTES + b.payload_bytes)
                .expect("a batch with padding");
            let data_end = b.pos + HEADER_BYTES + b.payload_bytes;
            let junk = vec![0xa5; (b.pos + b.bytes() - data_end) as usize];
            write_at(newest, data_end, &junk);
            0..0
        }
        Damage::SealedByte => {
            let oldest = &segs[0];
            let batches = raw_batches(oldest);
            let b = &batches[batches.len() / 2];
            flip_payload_byte(oldest, b);
            b.first_offset..b.first_offset + b.count
        }
        Damage::MiddleSegmentDeleted => {
            let middle = &segs[segs.len() / 2];
            let next = &segs[segs.len() / 2 + 1];
            std::fs::remove_file(middle).unwrap();
            let _ = std::fs::remove_file(middle.with_extension("idx"));
            base_of(middle)..base_of(next)
        }
    }
}

/// Every line of the log, by (partition, offset), from `sluice log dump --json`.
fn dump(data: &Path) -> BTreeMap<(u64, u64), String> {
    let out = run(&[
        "log",
        "dump",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = BTreeMap::new();
    for text in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let at = (
            v["partition"].as_u64().unwrap(),
            v["offset"].as_u64().unwrap(),
        );
        let line = v["line"].as_str().unwrap().to_string();
        assert!(lines.insert(at, line).is_none(), "offset {at:?} twice");
    }
    lines
}

/// The expected 1 s rows of `lines` (Graphite: key value timestamp).
fn rows_of<'a>(lines: impl IntoIterator<Item = &'a String>) -> Rows {
    let mut rows = Rows::new();
    for line in lines {
        let mut f = line.split(' ');
        let (key, value, ts) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        expect_1s(&mut rows, key, ts.parse().unwrap(), value.parse().unwrap());
    }
    rows
}

/// Sends `n` Graphite lines tagged `tag` over two connections; returns them. Long keys, so
/// a few tens of thousands of lines fill several 1 MiB segments per partition.
fn send(addr: SocketAddr, tag: &str, n: usize) -> Vec<String> {
    let now = now_secs();
    let lines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "corruption.{tag}.{}.a-key-long-enough-to-fill-segments-quickly.{} {} {now}",
                i % 2,
                i % 17,
                (i % 89) as f64 / 4.0
            )
        })
        .collect();
    for half in 0..2 {
        let mut stream = TcpStream::connect(addr).unwrap();
        let text: String = lines
            .iter()
            .skip(half)
            .step_by(2)
            .map(|l| format!("{l}\n"))
            .collect();
        stream.write_all(text.as_bytes()).unwrap();
    }
    lines
}

fn start(data: &Path, config: &Path) -> Sluice {
    let config = config.to_str().unwrap();
    let args = [
        "--config",
        config,
        "--cores",
        "2",
        "--window",
        "1s",
        "--allowed-lateness",
        "2s",
        "--listen",
        "graphite+tcp://127.0.0.1:0?name=g",
    ];
    Sluice::start(data, &args)
}

/// Waits until the log holds `lines` lines.
fn wait_logged(data: &Path, lines: usize) {
    let mut logged = 0;
    let ok = wait_for(Duration::from_secs(60), || {
        logged = dump(data).len();
        logged >= lines
    });
    assert!(ok, "{logged} of {lines} lines logged");
}

/// Waits until the aggregates count `events` events and a checkpoint committed after that.
fn wait_counted_and_checkpointed(sluice: &Sluice, data: &Path, events: u64) {
    let mut counted = 0;
    let ok = wait_for(Duration::from_secs(60), || {
        counted = read_aggregates(data).values().map(|r| r.count).sum::<u64>();
        counted >= events
    });
    assert!(ok, "{counted} of {events} events counted");
    let epoch = sluice.metric("sluice_checkpoint_last_epoch", &[]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            sluice.metric("sluice_checkpoint_last_epoch", &[]) >= epoch + 2.0
        }),
        "no checkpoint after the load was counted"
    );
}

fn kill_9(mut sluice: Sluice) {
    sluice.child.kill().unwrap();
    sluice.child.wait().unwrap();
}

fn matrix_case(damage: Damage) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[checkpoint]\ninterval_ms = 200\nkeep = 3\n\n[log]\nsegment_bytes = \"1MiB\"\n",
    )
    .unwrap();

    // 1. Load, all of it counted and checkpointed.
    let sluice = start(&data, &config);
    let mut sent = send(sluice.addr("g"), "before", 80_000);
    wait_logged(&data, sent.len());
    wait_counted_and_checkpointed(&sluice, &data, sent.len() as u64);
    let before = dump(&data);
    kill_9(sluice);

    // 2. Damage, then a restart that must report it.
    let lost = apply(&data, damage);
    let verify = run(&["log", "verify", "--data-dir", data.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    match damage {
        Damage::NewestLastPadding => assert!(verify.status.success(), "{report}"),
        _ => assert!(!verify.status.success(), "verify found nothing:\n{report}"),
    }
    let sluice = start(&data, &config);
    let lost_lines = lost.end - lost.start;
    let reported = sluice.metric("sluice_log_lost_lines_total", &[]);
    match damage {
        // Below the checkpoint: replay does not pass the damage; recovery and verify do.
        Damage::SealedByte => {}
        Damage::NewestLastPadding => assert_eq!(reported, 0.0),
        _ => assert_eq!(reported, lost_lines as f64, "{}", sluice.stderr()),
    }

    // 3. New traffic, kill -9 as soon as it is logged, restart.
    let after = send(sluice.addr("g"), "after", 20_000);
    wait_logged(&data, before.len() - lost_lines as usize + after.len());
    kill_9(sluice);
    let sluice = start(&data, &config);
    sent.extend(after.iter().cloned());

    // 4. The oracle: the log lost exactly the damaged batch's lines...
    let logged = dump(&data);
    let mut expected = before.clone();
    expected.retain(|&(p, o), _| p != 0 || !lost.contains(&o));
    let old_end: BTreeMap<u64, u64> = before.keys().fold(BTreeMap::new(), |mut m, &(p, o)| {
        let e = m.entry(p).or_insert(0);
        *e = (*e).max(o + 1);
        m
    });
    for (&(p, o), line) in &logged {
        if line.contains(".after.") {
            assert!(
                o >= old_end[&p],
                "new line at reused offset {p}/{o}: {line}"
            );
        } else {
            assert_eq!(expected.get(&(p, o)), Some(line), "at {p}/{o}");
        }
    }
    let old_kept = logged.values().filter(|l| !l.contains(".after.")).count();
    assert_eq!(old_kept, expected.len(), "old lines kept");
    assert_eq!(
        logged.len(),
        expected.len() + after.len(),
        "new lines logged"
    );

    // ...and every line sent is counted exactly once (the lost ones before the damage).
    let want = rows_of(&sent);
    let total = sent.len() as u64;
    let settled = wait_for(Duration::from_secs(60), || {
        read_aggregates(&data)
            .values()
            .map(|r| r.count)
            .sum::<u64>()
            >= total
    });
    let got = read_aggregates(&data);
    assert!(
        settled && got == want,
        "{} events counted of {total}; rows equal: {}\n{}",
        got.values().map(|r| r.count).sum::<u64>(),
        got == want,
        sluice.stderr()
    );
}

#[test]
fn a_byte_flipped_in_a_middle_batch_of_the_newest_segment_loses_that_batch_only() {
    matrix_case(Damage::NewestMiddleByte);
}

#[test]
fn junk_in_the_last_batch_padding_loses_nothing() {
    matrix_case(Damage::NewestLastPadding);
}

#[test]
fn a_byte_flipped_in_a_sealed_segment_loses_that_batch_only() {
    matrix_case(Damage::SealedByte);
}

#[test]
fn a_deleted_middle_segment_loses_its_lines_only() {
    matrix_case(Damage::MiddleSegmentDeleted);
}
