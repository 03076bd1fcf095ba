//! Reads sluice's counters from its admin `/metrics`, and turns them into send-to-visible
//! latency samples.
//!
//! What a latency sample is: senders note `(t, S)` — `t` the moment a write began, `S` the
//! cumulative number of events handed to the kernel once it returned — at most once per
//! `SAMPLE_EVERY` per sender. The prober scrapes `/metrics` every `--probe-ms`, over one
//! kept-alive connection, and reads
//! `V = Σ sluice_window_events_total + Σ sluice_late_events_total` (events the owning shard
//! has folded into its windows or, for late ones, dead-lettered), less its value before the
//! run.
//! The sample resolves at the end `r` of the first scrape with `V ≥ S`; its latency is `r - t`.
//! That is the time for the shards to catch up with everything sent up to `t`, not the time of
//! one particular event: events on different connections or shards may be folded out of order,
//! so one event can be seen earlier or later than the count suggests. It over-estimates by up
//! to one probe interval plus one scrape; the scrape time is reported beside it. Events that
//! are never counted (UDP loss, rejected lines) leave samples unresolved; they are reported as
//! such, not as latencies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

/// A sender notes a sample at most this often.
pub const SAMPLE_EVERY: Duration = Duration::from_micros(200);

/// Counters of one scrape, summed over cores and listeners.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// `sluice_lines_total`: lines accepted into the log.
    pub lines: f64,
    /// `sluice_window_events_total + sluice_late_events_total`: events through to a shard.
    pub visible: f64,
    /// `sluice_rejected_total`.
    pub rejected: f64,
    /// `sluice_udp_dropped_total`.
    pub udp_dropped: f64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            lines: self.lines - o.lines,
            visible: self.visible - o.visible,
            rejected: self.rejected - o.rejected,
            udp_dropped: self.udp_dropped - o.udp_dropped,
        }
    }
}

/// Scrapes `/metrics` over one kept-alive HTTP/1.1 connection, as Prometheus does: a scrape
/// every millisecond should not also cost a TCP handshake, an accept and a close on the box it
/// measures. A connection that fails or that the server closed is opened anew, once per scrape.
pub struct Scraper {
    admin: SocketAddr,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

/// Longest response head read before giving up on it.
const HEAD_BYTES_MAX: usize = 16 * 1024;

impl Scraper {
    /// A scraper of `admin`; it connects on the first scrape.
    pub fn new(admin: SocketAddr) -> Scraper {
        Scraper {
            admin,
            conn: None,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Scrapes `/metrics` once.
    pub fn scrape(&mut self) -> anyhow::Result<Counters> {
        let reused = self.conn.is_some();
        match self.try_scrape() {
            Ok(c) => Ok(c),
            // The server may close a kept-alive connection between scrapes: one retry on a
            // fresh connection.
            Err(_) if reused => {
                self.conn = None;
                self.try_scrape()
            }
            Err(e) => Err(e),
        }
        .inspect_err(|_| self.conn = None)
    }

    fn try_scrape(&mut self) -> anyhow::Result<Counters> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(5))
                .context("connect to admin")?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_nodelay(true)?;
            self.conn = Some(s);
        }
        let s = self.conn.as_mut().expect("connected above");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\n\r\n")?;
        self.buf.clear();
        let (head_len, body_len, close) = loop {
            read_some(s, &mut self.buf)?;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response
                .parse(&self.buf)
                .context("parse /metrics response head")?
            {
                httparse::Status::Complete(head_len) => {
                    if response.code != Some(200) {
                        bail!("/metrics answered {:?}", response.code);
                    }
                    let header = |name: &str| {
                        response
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .and_then(|h| std::str::from_utf8(h.value).ok())
                    };
                    let body_len: usize = header("content-length")
                        .context("/metrics response without Content-Length")?
                        .trim()
                        .parse()
                        .context("/metrics Content-Length")?;
                    let close =
                        header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    break (head_len, body_len, close);
                }
                httparse::Status::Partial if self.buf.len() < HEAD_BYTES_MAX => continue,
                httparse::Status::Partial => bail!("/metrics response head too long"),
            }
        };
        while self.buf.len() < head_len + body_len {
            read_some(s, &mut self.buf)?;
        }
        if close {
            self.conn = None;
        }
        let body = std::str::from_utf8(&self.buf[head_len..head_len + body_len])
            .context("/metrics body is not UTF-8")?;
        Ok(parse(body))
    }
}

/// Appends what one `read` gives to `buf`; the peer closing is an error here.
fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk).context("read /metrics")?;
    if n == 0 {
        bail!("admin closed the connection mid-response");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Sums the counters of a Prometheus text body.
pub fn parse(body: &str) -> Counters {
    let mut c = Counters::default();
    for line in body.lines().filter(|l| l.starts_with("sluice_")) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        match name {
            "sluice_lines_total" => c.lines += value,
            "sluice_window_events_total" | "sluice_late_events_total" => c.visible += value,
            "sluice_rejected_total" => c.rejected += value,
            "sluice_udp_dropped_total" => c.udp_dropped += value,
            _ => {}
        }
    }
    c
}

/// Latency and scrape-time histograms, in µs.
#[derive(Debug)]
pub struct Latency {
    /// Send-to-visible, per resolved sample.
    pub visible_us: Histogram<u64>,
    /// Duration of each scrape.
    pub scrape_us: Histogram<u64>,
    /// Samples still waiting when probing stopped.
    pub unresolved: usize,
    /// Each resolved sample: when its write began, and its latency in µs, in resolve order.
    pub resolved: Vec<(Instant, u64)>,
    pending: Vec<(Instant, u64)>,
}

impl Latency {
    /// Empty histograms (1 µs to 10 minutes, 3 significant digits).
    pub fn new() -> Latency {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        Latency {
            visible_us: h(),
            scrape_us: h(),
            unresolved: 0,
            resolved: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Adds the samples noted by senders since the last call.
    pub fn note(&mut self, samples: impl IntoIterator<Item = (Instant, u64)>) {
        self.pending.extend(samples);
    }

    /// A scrape that began at `asked` ended at `answered` with `visible` events counted.
    pub fn resolve(&mut self, asked: Instant, answered: Instant, visible: u64) {
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        self.scrape_us.saturating_record(us(answered - asked));
        let (hist, resolved) = (&mut self.visible_us, &mut self.resolved);
        self.pending.retain(|(sent_at, count)| {
            if *count <= visible {
                let took = us(answered.saturating_duration_since(*sent_at));
                hist.saturating_record(took);
                resolved.push((*sent_at, took));
                false
            } else {
                true
            }
        });
    }

    /// Ends probing: what is left is unresolved.
    pub fn finish(&mut self) {
        self.unresolved = self.pending.len();
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sums_series_over_labels() {
        let body = "# HELP sluice_lines_total x\n\
sluice_lines_total{core=\"0\",listener=\"g\"} 10\n\
sluice_lines_total{core=\"1\",listener=\"g\"} 5\n\
sluice_window_events_total{core=\"0\"} 7\n\
sluice_late_events_total{core=\"1\"} 1\n\
sluice_udp_dropped_total{core=\"0\",listener=\"u\"} 2\n\
sluice_lines_total_other 99\n";
        let c = parse(body);
        assert_eq!(c.lines, 15.0);
        assert_eq!(c.visible, 8.0);
        assert_eq!(c.udp_dropped, 2.0);
        assert_eq!(c.rejected, 0.0);
    }

    /// Reads one request head from `s`.
    fn read_request(s: &mut TcpStream) {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1, "request cut short");
            got.push(b[0]);
        }
        assert!(got.starts_with(b"GET /metrics HTTP/1.1\r\n"));
    }

    #[test]
    fn a_scraper_keeps_its_connection_and_opens_another_when_the_server_closes_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let body = |n: u32| {
                format!("# TYPE sluice_lines_total counter\nsluice_lines_total{{core=\"0\"}} {n}\n")
            };
            let mut connections = 0;
            let mut n = 0;
            for stream in listener.incoming().take(2) {
                let mut s = stream.unwrap();
                connections += 1;
                // The first connection answers twice, its second answer in pieces, then
                // closes; the second answers once with `Connection: close`.
                let answers = if connections == 1 { 2 } else { 1 };
                for a in 0..answers {
                    read_request(&mut s);
                    n += 1;
                    let b = body(n);
                    let close = if connections == 2 {
                        "Connection: close\r\n"
                    } else {
                        ""
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{close}\r\n",
                        b.len()
                    );
                    if a == 1 {
                        for piece in [&head.as_bytes()[..10], &head.as_bytes()[10..], b.as_bytes()]
                        {
                            s.write_all(piece).unwrap();
                            s.flush().unwrap();
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    } else {
                        s.write_all(format!("{head}{b}").as_bytes()).unwrap();
                    }
                }
            }
            connections
        });
        let mut scraper = Scraper::new(admin);
        for want in 1..=3 {
            assert_eq!(scraper.scrape().unwrap().lines, f64::from(want));
        }
        assert!(scraper.conn.is_none(), "closed after `Connection: close`");
        assert_eq!(server.join().unwrap(), 2);
        assert!(scraper.scrape().is_err(), "nothing listens any more");
    }

    #[test]
    fn a_sample_resolves_when_the_count_reaches_it() {
        let mut l = Latency::new();
        let t0 = Instant::now();
        l.note([(t0, 100), (t0, 200)]);
        l.resolve(t0, t0 + Duration::from_millis(3), 150);
        assert_eq!(l.visible_us.len(), 1);
        assert!(l.visible_us.max() >= 2_990);
        assert_eq!(l.resolved.len(), 1);
        assert_eq!(l.resolved[0].0, t0);
        assert!((2_990..=3_010).contains(&l.resolved[0].1));
        l.finish();
        assert_eq!(l.unresolved, 1);
    }
}
