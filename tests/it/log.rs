//! The log through the real binary: a writer killed mid-stream, 60 MB across many segments
//! with garbage, cut and flipped bytes, `sluice log tail` following a live instance, and
//! checkpoints naming only flushed log.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::harness::{Sluice, bin, run, signal, wait_for, wait_timeout};

/// Bytes of every test line, newline excluded.
const LINE_BYTES: usize = 100;
/// Lines sent per write.
const LINES_PER_WRITE: u64 = 1_000;

/// Line `i` of connection `conn`: unique, `LINE_BYTES` long, easy to parse back.
fn test_line(conn: usize, i: u64) -> String {
    let head = format!("c{conn}-{i:09} ");
    format!("{head}{}", "x".repeat(LINE_BYTES - head.len()))
}

/// Parses a line made by [`test_line`]: (conn, i); `None` for anything else.
fn parse_line(line: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let (head, pad) = text.split_once(' ')?;
    if text.len() != LINE_BYTES || pad.bytes().any(|b| b != b'x') {
        return None;
    }
    let (conn, i) = head.strip_prefix('c')?.split_once('-')?;
    Some((conn.parse().ok()?, i.parse().ok()?))
}

fn config_file(dir: &Path) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, "[log]\nsegment_bytes = \"1MiB\"\n").unwrap();
    path
}

fn start(data: &Path, config: &Path, extra: &[&str]) -> Sluice {
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--cores",
        "2",
        "--listen",
        "raw+tcp://127.0.0.1:0?name=raw",
    ];
    args.extend_from_slice(extra);
    Sluice::start(data, &args)
}

/// Sends `lines` lines over each of `conns` connections, one thread each.
fn send_all(addr: SocketAddr, conns: usize, lines: u64) {
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let mut buf = String::new();
                for i in 0..lines {
                    buf.push_str(&test_line(c, i));
                    buf.push('\n');
                    if (i + 1) % LINES_PER_WRITE == 0 || i + 1 == lines {
                        s.write_all(buf.as_bytes()).unwrap();
                        buf.clear();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn lines_total(sluice: &Sluice) -> u64 {
    sluice.metric("sluice_lines_total", &[]) as u64
}

/// Every stored line, by `sluice log dump`, parsed; panics on a line that was never sent.
fn dump(data: &Path) -> Vec<(usize, u64)> {
    let out = run(&["log", "dump", "--data-dir", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            parse_line(l).unwrap_or_else(|| panic!("garbled line {:?}", String::from_utf8_lossy(l)))
        })
        .collect()
}

/// Per connection, the indexes stored, checked to be exactly `0..n` in order (a prefix of
/// what was sent: no duplicate, no gap, no reordering); returns `n` per connection.
fn prefixes(lines: &[(usize, u64)]) -> BTreeMap<usize, u64> {
    let mut next: BTreeMap<usize, u64> = BTreeMap::new();
    for &(conn, i) in lines {
        let n = next.entry(conn).or_default();
        assert_eq!(i, *n, "connection {conn}: line {i} where {n} was expected");
        *n += 1;
    }
    next
}

fn verify(data: &Path) -> (i32, String) {
    let out = run(&["log", "verify", "--data-dir", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
            assert_eq!(stem.len(), 20, "segment name {p:?}");
            (stem.parse().unwrap(), p)
        })
        .collect();
    out.sort();
    out
}

/// (position, line count) of every batch in a segment file, walking the headers.
fn batches(segment: &Path) -> Vec<(u64, u32, u64)> {
    let bytes = std::fs::read(segment).unwrap();
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 40 <= bytes.len() && &bytes[pos..pos + 4] == b"SLCB" {
        let payload = u32::from_le_bytes(bytes[pos + 12..pos + 16].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(bytes[pos + 32..pos + 36].try_into().unwrap());
        let batch_bytes = (40 + payload).next_multiple_of(8);
        out.push((pos as u64, count, batch_bytes as u64));
        pos += batch_bytes;
    }
    out
}

#[test]
fn a_writer_killed_mid_stream_recovers_a_clean_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = config_file(tmp.path());
    let sluice = start(&data, &config, &["--flush", "always"]);
    let addr = sluice.addr("raw");
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let senders: Vec<_> = (0..2)
        .map(|c| {
            let (stop, sent) = (stop.clone(), sent[c].clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let buf: String = (i..i + LINES_PER_WRITE)
                        .map(|i| test_line(c, i) + "\n")
                        .collect();
                    if s.write_all(buf.as_bytes()).is_err() {
                        return;
                    }
                    i += LINES_PER_WRITE;
                    sent.store(i, Ordering::Relaxed);
                }
            })
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(60), || lines_total(&sluice) >= 50_000),
        "lines never arrived:\n{}",
        sluice.stderr()
    );
    let appended = lines_total(&sluice);
    let mut sluice = sluice;
    signal(sluice.child.id(), "KILL");
    sluice.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    drop(sluice);

    // A restart recovers (cutting whatever torn tail the kill left), then stops cleanly.
    let sluice = start(&data, &config, &["--flush", "always"]);
    let (_, metrics) = sluice.http_get("/metrics");
    assert!(
        metrics.contains("sluice_log_truncated_bytes_total{core=\"0\"}"),
        "{metrics}"
    );
    assert!(sluice.stop().success());
    let (code, report) = verify(&data);
    assert_eq!(code, 0, "{report}");
    assert!(report.ends_with("ok\n"), "{report}");
    let stored = dump(&data);
    let per_conn = prefixes(&stored);
    for (conn, n) in &per_conn {
        assert!(*n <= sent[*conn].load(Ordering::Relaxed));
    }
    assert!(
        stored.len() as u64 >= appended,
        "{} lines stored, {appended} were appended before the kill",
        stored.len()
    );
}

#[test]
fn sixty_megabytes_roll_many_segments_and_survive_garbage_cuts_and_flips() {
    const CONNS: usize = 4;
    const LINES: u64 = 150_000; // per connection: 600,000 lines of 101 bytes, ~60 MB
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = config_file(tmp.path());
    let total = CONNS as u64 * LINES;

    let sluice = start(&data, &config, &[]);
    send_all(sluice.addr("raw"), CONNS, LINES);
    assert!(
        wait_for(Duration::from_secs(120), || lines_total(&sluice) >= total),
        "{} of {total} lines",
        lines_total(&sluice)
    );
    assert!(sluice.stop().success());

    // Many 1 MiB segments, named by their base offsets, each with an index.
    let partitions: Vec<PathBuf> = (0..2).map(|p| data.join(format!("log/p{p:03}"))).collect();
    let mut all_segments = 0;
    for dir in &partitions {
        let segs = segments(dir);
        assert_eq!(segs[0].0, 0);
        for (base, path) in &segs {
            assert_eq!(
                path.file_name().unwrap().to_str().unwrap(),
                format!("{base:020}.seg")
            );
            assert_eq!(std::fs::metadata(path).unwrap().len(), 1 << 20);
            assert!(path.with_extension("idx").exists(), "{path:?} has no index");
        }
        // Each base is the offset after the segment before it.
        for w in segs.windows(2) {
            let lines: u64 = batches(&w[0].1).iter().map(|b| u64::from(b.1)).sum();
            assert_eq!(w[0].0 + lines, w[1].0);
        }
        all_segments += segs.len();
    }
    assert!(all_segments >= 50, "{all_segments} segments");
    let (code, report) = verify(&data);
    assert_eq!((code, report.ends_with("ok\n")), (0, true), "{report}");
    let stored = dump(&data);
    assert_eq!(stored.len() as u64, total);
    assert_eq!(prefixes(&stored), (0..CONNS).map(|c| (c, LINES)).collect());

    // Garbage after the data of the newest segment: verify calls it a torn tail, a restart
    // cuts it (and counts it) and loses nothing. (Connections spread over the cores by the
    // kernel's hash: one core may have had them all; use the busier partition.)
    let busy = (0..2)
        .max_by_key(|&p| segments(&partitions[p]).len())
        .unwrap();
    let p0 = &partitions[busy];
    let core_label = format!("core=\"{busy}\"");
    let newest = segments(p0).last().unwrap().1.clone();
    let end = batches(&newest).last().map_or(0, |b| b.0 + b.2);
    let garbage: Vec<u8> = (0..5_000u32).map(|i| (i * 7 + 1) as u8).collect();
    write_at(&newest, end, &garbage);
    let (code, report) = verify(&data);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("TornTail"), "{report}");
    let sluice = start(&data, &config, &[]);
    assert!(sluice.metric("sluice_log_truncated_bytes_total", &[&core_label]) > 0.0);
    assert!(sluice.stop().success());
    let (code, report) = verify(&data);
    assert_eq!((code, report.ends_with("ok\n")), (0, true), "{report}");
    assert_eq!(dump(&data).len() as u64, total);

    // The newest segment cut inside its last batch: a restart keeps the batches before it.
    // The checkpoint of the clean stop counted the lost lines, so their offsets are never
    // given out again: new lines start after them, and verify reports the gap.
    let newest = segments(p0).last().unwrap().1.clone();
    let (pos, count, batch_bytes) = *batches(&newest).last().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(pos + batch_bytes / 2)
        .unwrap();
    let sluice = start(&data, &config, &[]);
    assert_eq!(
        sluice.metric("sluice_log_lost_lines_total", &[&core_label]),
        f64::from(count)
    );
    assert!(sluice.stop().success());
    let (code, report) = verify(&data);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("Discontinuity"), "{report}");
    let stored = dump(&data);
    assert_eq!(stored.len() as u64, total - u64::from(count));
    let unique: HashSet<&(usize, u64)> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "duplicates");

    // A flipped byte in an old segment: verify exits 1 and names the segment and offset.
    let (base, oldest) = segments(p0)[0].clone();
    let flip_at = 1_000;
    let mut byte = [0u8];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&oldest).unwrap();
        f.read_exact_at(&mut byte, flip_at).unwrap();
    }
    write_at(&oldest, flip_at, &[byte[0] ^ 0x01]);
    let (code, report) = verify(&data);
    assert_eq!(code, 1, "{report}");
    let name = oldest.file_name().unwrap().to_str().unwrap();
    assert!(
        report.contains(&format!("Corrupt in {}", oldest.display()))
            && report.contains(name)
            && report.contains(&format!("(offset {base})")),
        "{report}"
    );
    assert!(report.ends_with("corrupt\n"), "{report}");
}

fn write_at(path: &Path, pos: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, pos).unwrap();
}

#[test]
fn log_tail_follows_a_live_instance_until_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = config_file(tmp.path());
    let sluice = start(&data, &config, &[]);
    let mut tail = Command::new(bin())
        .args(["log", "tail", "--json", "--from", "0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    const LINES: u64 = 2_000;
    send_all(sluice.addr("raw"), 3, LINES);
    let mut seen = Vec::new();
    while seen.len() < 3 * LINES as usize {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("tail printed {} of {} lines", seen.len(), 3 * LINES));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["partition"].as_u64().unwrap() < 2);
        seen.push(parse_line(v["line"].as_str().unwrap().as_bytes()).unwrap());
    }
    // Per connection in order, nothing twice.
    seen.sort_by_key(|&(c, _)| c);
    assert_eq!(prefixes(&seen), (0..3).map(|c| (c, LINES)).collect());
    signal(tail.id(), "INT");
    let status = wait_timeout(&mut tail, Duration::from_secs(10)).expect("tail did not stop");
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    assert!(sluice.stop().success());
}

#[test]
fn retention_deletes_old_segments_only_behind_every_kept_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[log]\nsegment_bytes = \"1MiB\"\nretention_bytes = \"3MiB\"\n[checkpoint]\ninterval_ms = 200\nkeep = 2\n",
    )
    .unwrap();
    let sluice = start(&data, &config, &[]);
    const LINES: u64 = 100_000; // ~10 MB per connection
    send_all(sluice.addr("raw"), 2, LINES);
    assert!(wait_for(Duration::from_secs(60), || lines_total(&sluice)
        >= 2 * LINES));
    // Retention runs on the cores' ticks once `keep` checkpoints have passed the old segments:
    // the first segment (base offset 0) of a busy partition goes, and at most ~3 MiB remain.
    let first_bases = || -> Vec<(u64, usize)> {
        (0..2)
            .map(|p| data.join(format!("log/p{p:03}")))
            .filter(|d| d.exists())
            .map(|d| segments(&d))
            .filter(|s| !s.is_empty())
            .map(|s| (s[0].0, s.len()))
            .collect()
    };
    let trimmed = wait_for(Duration::from_secs(30), || {
        first_bases().iter().any(|(base, n)| *base > 0 && *n <= 5)
    });
    assert!(
        trimmed,
        "old segments were not deleted: {:?}",
        first_bases()
    );
    // The other partition may still be trimming: dump once retention has settled, or a
    // segment deleted under the reader would show as a gap.
    let mut last = first_bases();
    let mut steady = 0;
    let settled = wait_for(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = first_bases();
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
        steady >= 3
    });
    assert!(settled, "retention did not settle: {last:?}");
    let (code, text) = verify(&data);
    assert_eq!(code, 0, "{text}");
    // What is left is, per connection, the newest lines, contiguous up to the last one sent.
    let mut by_conn: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (c, i) in dump(&data) {
        by_conn.entry(c).or_default().push(i);
    }
    for (c, mut idx) in by_conn {
        idx.sort_unstable();
        let first = idx[0];
        assert!(
            idx.iter().enumerate().all(|(k, i)| *i == first + k as u64),
            "connection {c} has a gap"
        );
        assert_eq!(
            *idx.last().unwrap(),
            LINES - 1,
            "connection {c} lost its newest lines"
        );
    }
    assert!(sluice.stop().success());
    // A restart replays from the checkpoint, which retention never passed.
    let sluice = start(&data, &config, &[]);
    assert!(sluice.stop().success());
}

/// Under `flush = never` nothing but a checkpoint flushes the segment being written, and it
/// does so off the cores, before the checkpoint is committed: every committed checkpoint's
/// offsets are flushed.
#[test]
fn a_committed_checkpoint_names_only_flushed_log_even_under_flush_never() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("sluice.toml");
    std::fs::write(&config, "[checkpoint]\ninterval_ms = 200\n").unwrap();
    let sluice = start(&data, &config, &["--flush", "never"]);
    let (conns, lines) = (2usize, 20_000u64);
    send_all(sluice.addr("raw"), conns, lines);
    let total = conns as u64 * lines;
    assert!(
        wait_for(Duration::from_secs(30), || lines_total(&sluice) == total),
        "lines logged: {} of {total}",
        lines_total(&sluice)
    );
    let d = data.to_str().unwrap();
    let mut offsets: Vec<(u64, u64)> = Vec::new();
    let covered = wait_for(Duration::from_secs(30), || {
        let out = run(&["checkpoint", "inspect", "--data-dir", d]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        offsets = v["checkpoint"]["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let n = |k: &str| p[k].as_u64().unwrap();
                (n("partition"), n("next_offset"))
            })
            .collect();
        offsets.iter().map(|(_, o)| o).sum::<u64>() == total
    });
    assert!(covered, "no checkpoint covers every line: {offsets:?}");
    for (partition, offset) in offsets {
        let filter = format!("core=\"{partition}\"");
        let flushed = || sluice.metric("sluice_log_flushed_offset", &[&filter]) as u64;
        assert!(
            wait_for(Duration::from_secs(10), || flushed() >= offset),
            "partition {partition}: checkpointed offset {offset}, flushed {}",
            flushed()
        );
    }
    assert!(sluice.stop().success());
}

/// `sluice log CMD ARGS | head -N` under bash: (what head printed, the exit status of sluice,
/// its stderr); panics when the pipeline has not ended within 20 s.
fn into_head(data: &Path, args: &[&str], n: usize) -> (Vec<String>, String, String) {
    let script = format!(
        "\"$0\" log {} --data-dir \"$1\" 2>\"$2\" | head -{n}; echo \"status ${{PIPESTATUS[0]}}\"",
        args.join(" ")
    );
    let err = data.with_extension("stderr");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .arg(bin())
        .arg(data)
        .arg(&err)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        panic!("`sluice log {}` | head -{n} did not end", args.join(" "));
    }
    let mut lines = reader.join().unwrap();
    let last = lines.pop().unwrap_or_default();
    (lines, last, std::fs::read_to_string(&err).unwrap())
}

#[test]
fn log_dump_and_tail_into_a_closed_pipe_exit_0_at_once_and_json_names_the_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = config_file(tmp.path());
    let sluice = start(&data, &config, &[]);
    // Three lines fit in the pipe: `tail` has written them all and is idle when `head` goes.
    send_all(sluice.addr("raw"), 1, 3);
    assert!(
        wait_for(Duration::from_secs(20), || dump(&data).len() == 3),
        "3 lines stored"
    );
    let (lines, status, err) = into_head(&data, &["tail", "--json", "--from", "0"], 2);
    assert_eq!(
        (lines.len(), status.as_str(), err.as_str()),
        (2, "status 0", "")
    );
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["listener"], "raw", "{first}");
    assert!(first["listener_id"].is_u64(), "{first}");
    // More than a pipe holds: `dump` meets the closed pipe while writing.
    send_all(sluice.addr("raw"), 2, 5_000);
    assert!(
        wait_for(Duration::from_secs(30), || dump(&data).len() == 10_003),
        "10,003 lines stored"
    );
    let (lines, status, err) = into_head(&data, &["dump", "--json"], 1);
    assert_eq!(
        (lines.len(), status.as_str(), err.as_str()),
        (1, "status 0", "")
    );
    let (lines, status, err) = into_head(&data, &["tail", "--from", "0"], 2);
    assert_eq!(
        (lines.len(), status.as_str(), err.as_str()),
        (2, "status 0", "")
    );
    assert!(sluice.stop().success());
}
