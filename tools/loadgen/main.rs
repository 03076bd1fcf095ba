//! `loadgen`: sends a pre-generated workload to sluice over TCP or UDP and reports sent and
//! delivered events and throughput. Delivered events are read from sluice's `/metrics`
//! (`sluice_lines_total`), so the figure is what the appliance accepted, not what was written.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Graphite,
    Statsd,
    Raw,
    Syslog,
}

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
    /// Events to send in all.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Offered rate in events/s over all connections (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Event times are this many seconds in the past.
    #[arg(long, default_value_t = 0)]
    skew_secs: u64,
    /// Lines per UDP datagram.
    #[arg(long, default_value_t = 1)]
    lines_per_datagram: usize,
    /// sluice admin address, to read delivered events from /metrics.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// How long to wait for delivery after sending.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
}

fn line(format: Format, i: u64, keys: u64, ts: u64) -> String {
    let k = i % keys;
    match format {
        Format::Graphite => format!("load.key{k:06}.value {} {ts}\n", i % 1000),
        Format::Statsd => format!("load.key{k:06}:{}|ms\n", i % 1000),
        Format::Raw => format!("key{k:06} request {i} served\n"),
        Format::Syslog => format!("<134>1 2026-11-28T20:00:00Z host app{k} - - - message {i}\n"),
    }
}

/// Pre-generates one connection's payload as chunks of about 64 KiB.
fn payload(args: &Args, conn: usize) -> Vec<Vec<u8>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - args.skew_secs;
    let per_conn = args.count / args.connections as u64
        + u64::from((conn as u64) < args.count % args.connections as u64);
    let mut chunks = Vec::new();
    let mut chunk = Vec::with_capacity(64 * 1024);
    let mut in_datagram = 0;
    for j in 0..per_conn {
        let i = j * args.connections as u64 + conn as u64;
        chunk.extend_from_slice(line(args.format, i, args.keys, now).as_bytes());
        in_datagram += 1;
        let full = match args.proto {
            Proto::Tcp => chunk.len() >= 64 * 1024,
            Proto::Udp => in_datagram >= args.lines_per_datagram,
        };
        if full {
            chunks.push(std::mem::replace(&mut chunk, Vec::with_capacity(64 * 1024)));
            in_datagram = 0;
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

fn lines_total(admin: SocketAddr) -> anyhow::Result<f64> {
    let mut s =
        TcpStream::connect_timeout(&admin, Duration::from_secs(5)).context("connect to admin")?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("sluice_lines_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.keys == 0 || args.lines_per_datagram == 0 {
        bail!("--connections, --keys and --lines-per-datagram must be positive");
    }
    let before = args.admin.map(lines_total).transpose()?.unwrap_or(0.0);
    let payloads: Vec<Vec<Vec<u8>>> = (0..args.connections).map(|c| payload(&args, c)).collect();
    let lines_per_chunk = |chunk: &[u8]| bytecount(chunk) as u64;
    let started = Instant::now();
    let per_conn_rate = args.rate as f64 / args.connections as f64;
    let handles: Vec<_> = payloads
        .into_iter()
        .map(|chunks| {
            let addr = args.addr;
            let proto = args.proto;
            std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
                let mut sent_lines = 0u64;
                let mut sent_bytes = 0u64;
                let t0 = Instant::now();
                let pace = |sent: u64| {
                    if per_conn_rate > 0.0 {
                        let due = Duration::from_secs_f64(sent as f64 / per_conn_rate);
                        if let Some(wait) = due.checked_sub(t0.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                };
                match proto {
                    Proto::Tcp => {
                        let mut s =
                            TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
                        for c in &chunks {
                            s.write_all(c)?;
                            sent_lines += lines_per_chunk(c);
                            sent_bytes += c.len() as u64;
                            pace(sent_lines);
                        }
                    }
                    Proto::Udp => {
                        let s = UdpSocket::bind("127.0.0.1:0")?;
                        s.connect(addr)?;
                        for c in &chunks {
                            // A full socket buffer is loss we measure, not an error.
                            let _ = s.send(c);
                            sent_lines += lines_per_chunk(c);
                            sent_bytes += c.len() as u64;
                            pace(sent_lines);
                        }
                    }
                }
                Ok((sent_lines, sent_bytes))
            })
        })
        .collect();
    let mut sent = 0u64;
    let mut bytes = 0u64;
    for h in handles {
        let (l, b) = h.join().expect("sender thread")?;
        sent += l;
        bytes += b;
    }
    let send_secs = started.elapsed().as_secs_f64();
    println!(
        "sent_events={sent} sent_bytes={bytes} send_secs={send_secs:.3} send_events_per_sec={:.0}",
        sent as f64 / send_secs
    );
    if let Some(admin) = args.admin {
        let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
        let mut delivered;
        loop {
            delivered = lines_total(admin)? - before;
            if delivered >= sent as f64 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "delivered_events={delivered:.0} delivered_secs={secs:.3} delivered_events_per_sec={:.0} loss_ratio={:.6}",
            delivered / secs,
            1.0 - delivered / sent.max(1) as f64
        );
    }
    Ok(())
}

fn bytecount(chunk: &[u8]) -> usize {
    let n = chunk.iter().filter(|b| **b == b'\n').count();
    // A UDP datagram may end without its LF.
    n + usize::from(chunk.last().is_some_and(|b| *b != b'\n'))
}
