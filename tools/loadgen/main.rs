//! `loadgen`: sends a pre-generated workload to sluice (or any line receiver) over TCP or UDP
//! and reports what was sent, what was delivered and how long events took to become visible.
//!
//! Delivered figures come from sluice's `/metrics` (with `--admin`); latency is explained in
//! `probe.rs`. The payload is built before sending starts (`payload.rs`), so the sender threads
//! only stamp event times and call `write` (TCP) or, for UDP, make segmented sends (UDP GSO:
//! up to 64 datagrams of one size a call, split into separate datagrams by the kernel before
//! any socket receives them) or, with `--no-gso`, `sendmmsg` (16 datagrams a call); a
//! `--rate` is paced per call. The report is `key=value` lines on stdout, for people and
//! for `tools/bench-compare`.

mod payload;
mod probe;
mod udp;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use udp::{DATAGRAMS_PER_CALL, SEGMENTED_BYTES_MAX, SEGMENTS_PER_SEND};

use payload::{Chunk, Format, Keys, Spec, StampCache};
use probe::{Counters, Latency, Scraper};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

/// Most datagrams pre-generated for UDP, over all sockets.
const UDP_POOL_DATAGRAMS_MAX: u64 = 100_000;

/// Load generator for sluice.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Args {
    /// Target address.
    #[arg(long, default_value = "127.0.0.1:2003")]
    addr: SocketAddr,
    /// Transport.
    #[arg(long, value_enum, default_value = "tcp")]
    proto: Proto,
    /// Line format.
    #[arg(long, value_enum, default_value = "graphite")]
    format: Format,
    /// TCP connections or UDP sockets, each on its own thread.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Events to send in all (default 1,000,000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Send for this long instead of a count (e.g. `30s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Draw keys from a Zipf distribution with this exponent (default: uniform).
    #[arg(long, value_name = "S")]
    zipf: Option<f64>,
    /// Offered rate in events/s over all connections (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Event times are this many seconds in the past.
    #[arg(long, default_value_t = 0)]
    skew_secs: u64,
    /// Fraction of lines (0..1) whose event time lags a further 1..=--ooo-max-secs seconds.
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Largest extra lag of an out-of-order line.
    #[arg(long, default_value_t = 5)]
    ooo_max_secs: u64,
    /// Approximate line length in bytes, terminator included.
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// Lines per UDP datagram.
    #[arg(long, default_value_t = 1)]
    lines_per_datagram: usize,
    /// UDP: send each datagram as its own message of a `sendmmsg` batch, instead of segmented
    /// sends (UDP GSO), which carry up to 64 datagrams of one size through the sender's IP
    /// stack at once. Either way the receiver gets separate datagrams.
    #[arg(long)]
    no_gso: bool,
    /// Bytes per TCP write.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk_bytes: usize,
    /// Lines pre-generated in all (cycled when more are sent).
    #[arg(long, default_value_t = 1_000_000)]
    pool_lines: u64,
    /// Seed of the key and value draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// sluice admin address: report delivered events from /metrics.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Measure send-to-visible latency (needs --admin).
    #[arg(long, requires = "admin")]
    latency: bool,
    /// Write each latency sample to this file: milliseconds since the first send at which
    /// its write began, and its send-to-visible latency in milliseconds, one per line.
    #[arg(long, requires = "latency", value_name = "PATH")]
    latency_log: Option<std::path::PathBuf>,
    /// Milliseconds between /metrics scrapes while measuring latency.
    #[arg(long, default_value_t = 1)]
    probe_ms: u64,
    /// Longest wait for delivery after sending.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

/// What the senders share with the prober.
#[derive(Debug, Default)]
struct Shared {
    sent_events: AtomicU64,
    samples: Mutex<Vec<(Instant, u64)>>,
    stop_probe: AtomicBool,
}

/// When a sender stops.
#[derive(Debug, Clone, Copy)]
enum Quota {
    Events(u64),
    Until(Instant),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.keys == 0 || args.lines_per_datagram == 0 {
        bail!("--connections, --keys and --lines-per-datagram must be positive");
    }
    if !(0.0..=1.0).contains(&args.out_of_order) {
        bail!("--out-of-order is a fraction in 0..=1");
    }
    if args.keys > 50_000_000 {
        bail!("--keys: at most 50,000,000");
    }
    let spec = Spec {
        format: args.format,
        keys: Keys::new(args.keys, args.zipf),
        line_bytes: args.line_bytes,
        skew_secs: args.skew_secs,
        out_of_order: args.out_of_order,
        ooo_max_secs: args.ooo_max_secs,
        chunk_bytes: args.chunk_bytes.max(1024),
        lines_per_datagram: if args.proto == Proto::Udp {
            args.lines_per_datagram
        } else {
            0
        },
    };
    let count = args.count.unwrap_or(1_000_000);
    let conns = args.connections as u64;
    // One chunk per datagram costs ~200 bytes of bookkeeping each: a smaller UDP pool.
    let pool_lines = match args.proto {
        Proto::Tcp => args.pool_lines,
        Proto::Udp => args
            .pool_lines
            .min(UDP_POOL_DATAGRAMS_MAX * args.lines_per_datagram as u64),
    };
    let per_conn_pool = (pool_lines / conns).max(1);
    let gso = args.proto == Proto::Udp && !args.no_gso;
    let mut pools: Vec<Vec<Chunk>> = (0..conns)
        .map(|c| {
            let quota = count / conns + u64::from(c < count % conns);
            let lines = match args.duration {
                Some(_) => per_conn_pool,
                None => per_conn_pool.min(quota.max(1)),
            };
            payload::pool(&spec, lines, args.seed.wrapping_mul(1000).wrapping_add(c))
        })
        .collect();
    if gso {
        // A segmented send carries datagrams of one size: sizes differ by a byte or two (the
        // values' digits), so datagrams of one size go next to each other.
        for pool in &mut pools {
            pool.sort_by_key(|c| c.bytes.len());
        }
    }
    println!(
        "workload proto={:?} format={:?} connections={} keys={} dist={} rate={} udp_gso={gso} \
         line=\"{}\"",
        args.proto,
        args.format,
        args.connections,
        args.keys,
        args.zipf
            .map_or("uniform".to_string(), |s| format!("zipf({s})")),
        args.rate,
        payload::sample(&spec),
    );

    let mut scraper = args.admin.map(Scraper::new);
    let before = scraper.as_mut().map(Scraper::scrape).transpose()?;
    let shared = Arc::new(Shared::default());
    let prober = match (args.latency, args.admin, before) {
        (true, Some(admin), Some(before)) => {
            Some(spawn_prober(admin, before, args.probe_ms, &shared))
        }
        _ => None,
    };

    let start_unix_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let started = Instant::now();
    let handles: Vec<_> = pools
        .into_iter()
        .enumerate()
        .map(|(c, chunks)| {
            let quota = match args.duration {
                Some(d) => Quota::Until(started + d),
                None => Quota::Events(count / conns + u64::from((c as u64) < count % conns)),
            };
            let sender = Sender {
                addr: args.addr,
                proto: args.proto,
                format: args.format,
                rate: args.rate as f64 / conns as f64,
                gso,
                latency: args.latency,
                shared: shared.clone(),
            };
            std::thread::spawn(move || sender.run(chunks, quota))
        })
        .collect();
    let (mut sent, mut bytes) = (0u64, 0u64);
    for h in handles {
        let (l, b) = h.join().expect("sender thread")?;
        sent += l;
        bytes += b;
    }
    let send_secs = started.elapsed().as_secs_f64();
    println!(
        "sent_events={sent} sent_bytes={bytes} send_start_unix_ns={start_unix_ns} \
         send_secs={send_secs:.3} send_events_per_sec={:.0} send_mb_per_sec={:.1}",
        sent as f64 / send_secs,
        bytes as f64 / send_secs / 1e6
    );
    let (Some(mut scraper), Some(before)) = (scraper, before) else {
        return Ok(());
    };
    let (got, at) = await_delivery(
        &mut scraper,
        before,
        sent,
        Duration::from_secs(args.wait_secs),
    )?;
    report_delivery(got, sent, bytes, (at - started).as_secs_f64());
    if let Some(p) = prober {
        shared.stop_probe.store(true, Ordering::Release);
        let latency = p.join().expect("prober thread")?;
        report_latency(&latency, args.probe_ms);
        if let Some(path) = &args.latency_log {
            write_latency_log(path, &latency, started)
                .with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(())
}

/// Waits until every sent event is visible, or nothing has changed for 2 s, or `limit`.
/// Returns the last counters and when they last changed.
fn await_delivery(
    scraper: &mut Scraper,
    before: Counters,
    sent: u64,
    limit: Duration,
) -> anyhow::Result<(Counters, Instant)> {
    let deadline = Instant::now() + limit;
    let mut last = scraper.scrape()? - before;
    let mut changed_at = Instant::now();
    while last.visible < sent as f64
        && changed_at.elapsed() < Duration::from_secs(2)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
        let now = scraper.scrape()? - before;
        if now.visible != last.visible || now.lines != last.lines {
            changed_at = Instant::now();
        }
        last = now;
    }
    Ok((last, changed_at))
}

fn report_delivery(got: Counters, sent: u64, bytes: u64, secs: f64) {
    let bytes_per_event = bytes as f64 / sent.max(1) as f64;
    println!(
        "delivered_events={:.0} lines={:.0} rejected={:.0} udp_dropped={:.0} delivered_secs={secs:.3} \
         delivered_events_per_sec={:.0} delivered_mb_per_sec={:.1} loss_ratio={:.6}",
        got.visible,
        got.lines,
        got.rejected,
        got.udp_dropped,
        got.visible / secs,
        got.visible * bytes_per_event / secs / 1e6,
        1.0 - got.lines / sent.max(1) as f64
    );
}

fn report_latency(l: &Latency, probe_ms: u64) {
    let ms = |us: u64| us as f64 / 1000.0;
    let h = &l.visible_us;
    println!(
        "latency_samples={} unresolved={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} \
         max_ms={:.3} probe_ms={probe_ms} scrape_p50_ms={:.3} scrape_p99_ms={:.3}",
        h.len(),
        l.unresolved,
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        ms(l.scrape_us.value_at_quantile(0.5)),
        ms(l.scrape_us.value_at_quantile(0.99)),
    );
}

/// Sends `datagrams` on `s`: runs of one size in segmented sends while `gso` holds (it turns
/// off for good when the kernel refuses them), the rest in `sendmmsg` batches. A send that
/// fails loses what it carried, and the receiver's counts show it: an ICMP "port
/// unreachable" while the receiver restarts, reported by the next send, costs a segmented
/// send one retry and then its run, a batch its first datagram.
fn send_udp(s: &UdpSocket, datagrams: &[&[u8]], gso: &mut bool) {
    let mut at = 0;
    while at < datagrams.len() {
        let run = if *gso {
            segment_run(&datagrams[at..])
        } else {
            0
        };
        if run > 0 {
            let send = || udp::send_segmented(s, &datagrams[at..at + run]);
            match send() {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EIO)
                    ) =>
                {
                    *gso = false;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    let _ = send();
                }
                _ => {}
            }
            at += run;
            continue;
        }
        match udp::send_batch(s, &datagrams[at..]) {
            Ok(k) => at += k.max(1),
            Err(_) => at += 1,
        }
    }
}

/// How many of `datagrams`, from the first, one segmented send can carry: those as long as
/// the first, then one shorter, within the kernel's limits; 0 when the first cannot go so.
fn segment_run(datagrams: &[&[u8]]) -> usize {
    let seg = datagrams.first().map_or(0, |d| d.len());
    let (mut n, mut bytes) = (0, 0);
    for d in datagrams.iter().take(SEGMENTS_PER_SEND) {
        if d.is_empty() || d.len() > seg || bytes + d.len() > SEGMENTED_BYTES_MAX {
            break;
        }
        n += 1;
        bytes += d.len();
        if d.len() < seg {
            break;
        }
    }
    n
}

/// Writes the resolved samples, ordered by when their writes began.
fn write_latency_log(
    path: &std::path::Path,
    latency: &Latency,
    started: Instant,
) -> anyhow::Result<()> {
    let mut samples = latency.resolved.clone();
    samples.sort_unstable_by_key(|&(sent_at, _)| sent_at);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "# sent_ms latency_ms")?;
    for (sent_at, us) in samples {
        let at = sent_at.saturating_duration_since(started).as_secs_f64() * 1e3;
        writeln!(out, "{at:.3} {:.3}", us as f64 / 1e3)?;
    }
    out.flush()?;
    Ok(())
}

/// Scrapes every `probe_ms` and resolves the senders' samples, until told to stop.
fn spawn_prober(
    admin: SocketAddr,
    before: Counters,
    probe_ms: u64,
    shared: &Arc<Shared>,
) -> std::thread::JoinHandle<anyhow::Result<Latency>> {
    let shared = shared.clone();
    std::thread::spawn(move || {
        let mut latency = Latency::new();
        let mut scraper = Scraper::new(admin);
        while !shared.stop_probe.load(Ordering::Acquire) {
            latency.note(std::mem::take(
                &mut *shared.samples.lock().expect("samples"),
            ));
            let asked = Instant::now();
            let visible = (scraper.scrape()? - before).visible;
            latency.resolve(asked, Instant::now(), visible as u64);
            std::thread::sleep(Duration::from_millis(probe_ms));
        }
        latency.finish();
        Ok(latency)
    })
}

/// One sender thread's connection and pacing.
struct Sender {
    addr: SocketAddr,
    proto: Proto,
    format: Format,
    /// Events/s for this sender (0: flat out).
    rate: f64,
    /// UDP: segmented sends (until the kernel refuses them).
    gso: bool,
    latency: bool,
    shared: Arc<Shared>,
}

enum Sock {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Sender {
    /// Sends chunks, cycling, until the quota is met. Returns (events, bytes) sent.
    fn run(self, mut chunks: Vec<Chunk>, quota: Quota) -> anyhow::Result<(u64, u64)> {
        let mut sock = match self.proto {
            Proto::Tcp => {
                let s = TcpStream::connect(self.addr)
                    .with_context(|| format!("connect {}", self.addr))?;
                s.set_nodelay(true)?;
                Sock::Tcp(s)
            }
            Proto::Udp => {
                let s = UdpSocket::bind(if self.addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                })?;
                s.connect(self.addr)?;
                Sock::Udp(s)
            }
        };
        let (mut events, mut bytes) = (0u64, 0u64);
        let mut cache = StampCache::default();
        let mut last_sample: Option<Instant> = None;
        let t0 = Instant::now();
        // UDP sends a group of chunks (one datagram each) per system call; TCP one chunk
        // per write.
        let group_len = match sock {
            Sock::Tcp(_) => 1,
            Sock::Udp(_) if self.gso => SEGMENTS_PER_SEND,
            Sock::Udp(_) => DATAGRAMS_PER_CALL,
        };
        let mut gso = self.gso;
        'outer: loop {
            for group in chunks.chunks_mut(group_len) {
                let now_secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                let mut datagrams: [&[u8]; SEGMENTS_PER_SEND] = [&[]; SEGMENTS_PER_SEND];
                let (mut group_events, mut group_bytes, mut count) = (0u64, 0usize, 0usize);
                for chunk in group.iter_mut() {
                    let mut n = chunk.lines();
                    let mut len = chunk.bytes.len();
                    let sent = events + group_events;
                    match quota {
                        Quota::Events(q) if sent >= q => break,
                        Quota::Events(q) if q - sent < n => {
                            n = q - sent;
                            len = chunk.line_ends[n as usize - 1] as usize;
                        }
                        Quota::Until(t) if Instant::now() >= t => break 'outer,
                        _ => {}
                    }
                    chunk.stamp(self.format, now_secs, &mut cache);
                    datagrams[count] = &chunk.bytes[..len];
                    count += 1;
                    group_events += n;
                    group_bytes += len;
                }
                if count == 0 {
                    break 'outer;
                }
                let began = Instant::now();
                match &mut sock {
                    Sock::Tcp(s) => s.write_all(datagrams[0]).context("write")?,
                    Sock::Udp(s) => send_udp(s, &datagrams[..count], &mut gso),
                }
                events += group_events;
                bytes += group_bytes as u64;
                let total = self
                    .shared
                    .sent_events
                    .fetch_add(group_events, Ordering::AcqRel)
                    + group_events;
                if self.latency && last_sample.is_none_or(|l| began - l >= probe::SAMPLE_EVERY) {
                    last_sample = Some(began);
                    self.shared
                        .samples
                        .lock()
                        .expect("samples")
                        .push((began, total));
                }
                if self.rate > 0.0 {
                    let due = Duration::from_secs_f64(events as f64 / self.rate);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        Ok((events, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_run_is_datagrams_of_the_first_size_then_one_shorter_within_limits() {
        let (a, b, c) = (vec![1u8; 10], vec![2u8; 9], vec![3u8; 11]);
        assert_eq!(segment_run(&[]), 0);
        assert_eq!(
            segment_run(&[&[]]),
            0,
            "an empty datagram cannot be a segment"
        );
        assert_eq!(segment_run(&[&a, &a, &a]), 3);
        assert_eq!(
            segment_run(&[&a, &a, &b, &a]),
            3,
            "a shorter one ends the run"
        );
        assert_eq!(
            segment_run(&[&a, &c, &a]),
            1,
            "a longer one starts the next"
        );
        let many = vec![&a[..]; 100];
        assert_eq!(segment_run(&many), SEGMENTS_PER_SEND);
        let big = vec![0u8; 20_000];
        assert_eq!(
            segment_run(&[&big, &big, &big, &big]),
            3,
            "under 60 KiB in all"
        );
        let huge = vec![0u8; SEGMENTED_BYTES_MAX + 1];
        assert_eq!(segment_run(&[&huge]), 0);
    }

    #[test]
    fn datagrams_sent_in_runs_arrive_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let sent: Vec<Vec<u8>> = (0..150)
            .map(|i: usize| format!("k{} {}\n", i / 40, "v".repeat(i / 40)).into_bytes())
            .collect();
        let slices: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        let mut gso = true;
        send_udp(&tx, &slices, &mut gso);
        assert!(gso, "segmented sends work on loopback");
        let mut gso = false;
        send_udp(&tx, &slices[..5], &mut gso);
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        for want in slices.iter().chain(&slices[..5]) {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], *want);
        }
    }
}
