//! Pre-generated payload: a pool of chunks (64 KiB writes for TCP, one datagram each for UDP)
//! built once before sending, cycled until the count or the duration is reached.
//!
//! Lines carry event times, and a pool may be sent for minutes, so each line's timestamp is a
//! fixed-width slot that is re-stamped just before its chunk is sent: `now - skew - lag`, where
//! `lag` is 0 for in-order lines and 1..=`ooo_max_secs` for the out-of-order fraction. A stamp
//! is a 10-byte copy, so generation cost stays far below the cost of the send itself.

/// Line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `path value unix_ts`
    Graphite,
    /// `name:value|ms` (no timestamp: ingest time)
    Statsd,
    /// `measurement,host=hN value=V ts_ns`
    Influx,
    /// `{"key":..,"value":..,"ts":..}` (read with `?key=key&value=value&time=ts`)
    Json,
    /// RFC 5424 with an RFC 3339 timestamp
    Syslog,
    /// `key message...` (no timestamp)
    Raw,
}

/// How keys are drawn.
#[derive(Debug, Clone)]
pub enum Keys {
    /// Uniformly over `n` keys.
    Uniform(u64),
    /// Zipf over `n` keys with exponent `s`: the cumulative distribution.
    Zipf(Vec<f64>),
}

impl Keys {
    /// Builds the key distribution.
    pub fn new(n: u64, zipf: Option<f64>) -> Keys {
        match zipf {
            None => Keys::Uniform(n),
            Some(s) => {
                let mut cdf = Vec::with_capacity(n as usize);
                let mut total = 0.0;
                for rank in 1..=n {
                    total += 1.0 / (rank as f64).powf(s);
                    cdf.push(total);
                }
                cdf.iter_mut().for_each(|c| *c /= total);
                Keys::Zipf(cdf)
            }
        }
    }

    fn draw(&self, rng: &mut Rng) -> u64 {
        match self {
            Keys::Uniform(n) => rng.next() % n,
            Keys::Zipf(cdf) => {
                let u = rng.unit();
                (cdf.partition_point(|c| *c < u) as u64).min(cdf.len() as u64 - 1)
            }
        }
    }
}

/// splitmix64: small, fast, good enough to spread keys and values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the payload looks like.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Line format.
    pub format: Format,
    /// Key distribution.
    pub keys: Keys,
    /// Approximate line length, terminator included (padding goes into the key or message).
    pub line_bytes: usize,
    /// Every event time lies this far in the past.
    pub skew_secs: u64,
    /// Share of lines sent out of order, 0..=1.
    pub out_of_order: f64,
    /// Largest extra lag of an out-of-order line.
    pub ooo_max_secs: u64,
    /// Bytes per TCP write.
    pub chunk_bytes: usize,
    /// Lines per UDP datagram; 0 means TCP (chunks of `chunk_bytes`).
    pub lines_per_datagram: usize,
}

/// Where a timestamp goes in a chunk and how far behind now it is.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    pos: u32,
    lag_secs: u32,
}

/// One write (TCP) or datagram (UDP).
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Byte offset just past each line's terminator (or the end), for partial sends.
    pub line_ends: Vec<u32>,
    stamps: Vec<Stamp>,
}

impl Chunk {
    /// Lines (events) in the chunk.
    pub fn lines(&self) -> u64 {
        self.line_ends.len() as u64
    }

    /// Writes event times for `now_secs` into every slot.
    pub fn stamp(&mut self, format: Format, now_secs: u64, cache: &mut StampCache) {
        for s in &self.stamps {
            let t = now_secs.saturating_sub(u64::from(s.lag_secs));
            let text = cache.text(format, t);
            let pos = s.pos as usize;
            self.bytes[pos..pos + text.len()].copy_from_slice(text);
        }
    }
}

/// Formatted timestamps of recent seconds (few distinct values are live at once).
#[derive(Debug, Default)]
pub struct StampCache {
    entries: Vec<(u64, Vec<u8>)>,
}

impl StampCache {
    fn text(&mut self, format: Format, t: u64) -> &[u8] {
        if let Some(i) = self.entries.iter().position(|(s, _)| *s == t) {
            return &self.entries[i].1;
        }
        if self.entries.len() >= 256 {
            self.entries.clear();
        }
        let text = match format {
            Format::Syslog => rfc3339_secs(t),
            _ => format!("{t:010}"),
        };
        self.entries.push((t, text.into_bytes()));
        &self.entries.last().expect("just pushed").1
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a unix time, without the zone.
pub fn rfc3339_secs(t: u64) -> String {
    let mut s = sluice::window::rfc3339(t as i64 * 1000);
    s.pop(); // the `Z`
    s
}

/// Width of the timestamp slot of a format (0: the format carries none).
fn stamp_width(format: Format) -> usize {
    match format {
        Format::Graphite | Format::Influx | Format::Json => 10,
        Format::Syslog => 19,
        Format::Statsd | Format::Raw => 0,
    }
}

/// Appends one line for key `k` and returns the offset of its timestamp slot in `out`.
fn line(format: Format, out: &mut String, pad: &str, k: u64, value: f64) -> Option<usize> {
    let slot = "0".repeat(stamp_width(format));
    let (before, after) = match format {
        Format::Graphite => (format!("{pad}key{k:07} {value:.2} "), "\n".to_string()),
        Format::Statsd => (format!("{pad}key{k:07}:{value:.2}|ms\n"), String::new()),
        Format::Influx => (
            format!("{pad}key{k:07},host=h{:02} value={value:.2} ", k % 16),
            "000000000\n".to_string(),
        ),
        Format::Json => (
            format!(r#"{{"key":"{pad}key{k:07}","value":{value:.2},"ts":"#),
            "}\n".to_string(),
        ),
        Format::Syslog => (
            "<134>1 ".to_string(),
            format!("Z host app{k:07} - - - {pad}request served in {value:.2} ms\n"),
        ),
        Format::Raw => (format!("key{k:07} {pad}request served\n"), String::new()),
    };
    out.push_str(&before);
    let pos = out.len();
    out.push_str(&slot);
    out.push_str(&after);
    (!slot.is_empty()).then_some(pos)
}

/// Padding that brings a format's typical line to about `line_bytes`.
fn padding(format: Format, line_bytes: usize) -> String {
    let mut probe = String::new();
    line(format, &mut probe, "", 0, 123.45);
    let want = line_bytes.saturating_sub(probe.len());
    const WORDS: &str = "region-eu-west.rack-17.host-web-frontend-0042.service-nginx.requests.";
    let mut pad = String::new();
    while pad.len() < want {
        let take = (want - pad.len()).min(WORDS.len());
        pad.push_str(&WORDS[..take]);
    }
    if !pad.is_empty() && !pad.ends_with('.') {
        pad.pop();
        pad.push('.');
    }
    pad
}

/// Builds a pool of `lines` lines as chunks, seeded per connection.
pub fn pool(spec: &Spec, lines: u64, seed: u64) -> Vec<Chunk> {
    let mut rng = Rng::new(seed);
    let pad = padding(spec.format, spec.line_bytes);
    let mut chunks = Vec::new();
    let mut text = String::new();
    let mut chunk = new_chunk();
    for _ in 0..lines {
        let k = spec.keys.draw(&mut rng);
        let value = (rng.next() % 100_000) as f64 / 100.0;
        text.clear();
        let slot = line(spec.format, &mut text, &pad, k, value);
        let start = chunk.bytes.len();
        chunk.bytes.extend_from_slice(text.as_bytes());
        chunk.line_ends.push(chunk.bytes.len() as u32);
        if let Some(slot) = slot {
            let mut lag = spec.skew_secs;
            if spec.out_of_order > 0.0 && rng.unit() < spec.out_of_order {
                lag += 1 + rng.next() % spec.ooo_max_secs.max(1);
            }
            chunk.stamps.push(Stamp {
                pos: (start + slot) as u32,
                lag_secs: lag as u32,
            });
        }
        let full = if spec.lines_per_datagram > 0 {
            chunk.line_ends.len() >= spec.lines_per_datagram
        } else {
            chunk.bytes.len() + spec.line_bytes > spec.chunk_bytes
        };
        if full {
            let mut done = std::mem::replace(&mut chunk, new_chunk());
            // A datagram's chunk holds ~100 bytes: give back the rest of its allocation.
            done.bytes.shrink_to_fit();
            chunks.push(done);
        }
    }
    if !chunk.bytes.is_empty() {
        chunk.bytes.shrink_to_fit();
        chunks.push(chunk);
    }
    chunks
}

fn new_chunk() -> Chunk {
    Chunk {
        bytes: Vec::with_capacity(64 * 1024),
        line_ends: Vec::new(),
        stamps: Vec::new(),
    }
}

/// A one-line description of a sample line, for the report.
pub fn sample(spec: &Spec) -> String {
    let mut text = String::new();
    line(
        spec.format,
        &mut text,
        &padding(spec.format, spec.line_bytes),
        42,
        123.45,
    );
    text.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: Format) -> Spec {
        Spec {
            format,
            keys: Keys::new(100, None),
            line_bytes: 100,
            skew_secs: 0,
            out_of_order: 0.0,
            ooo_max_secs: 10,
            chunk_bytes: 4096,
            lines_per_datagram: 0,
        }
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00");
        assert_eq!(rfc3339_secs(1_764_360_000), "2025-11-28T20:00:00");
        assert_eq!(rfc3339_secs(951_782_400), "2000-02-29T00:00:00");
    }

    #[test]
    fn lines_are_about_the_asked_length_and_stamped() {
        for format in [
            Format::Graphite,
            Format::Statsd,
            Format::Influx,
            Format::Json,
            Format::Syslog,
            Format::Raw,
        ] {
            let mut chunks = pool(&spec(format), 500, 1);
            let mut cache = StampCache::default();
            let lines: u64 = chunks.iter().map(Chunk::lines).sum();
            assert_eq!(lines, 500);
            for c in &mut chunks {
                c.stamp(format, 1_764_360_000, &mut cache);
                assert!(c.bytes.len() <= 4096, "{format:?}");
                assert_eq!(*c.line_ends.last().unwrap() as usize, c.bytes.len());
            }
            let text = String::from_utf8(chunks[0].bytes.clone()).unwrap();
            let first = text.lines().next().unwrap();
            assert!(
                (90..=110).contains(&(first.len() + 1)),
                "{format:?}: {first}"
            );
            if stamp_width(format) > 0 {
                let want = if format == Format::Syslog {
                    "2025-11-28T20:00:00"
                } else {
                    "1764360000"
                };
                assert!(first.contains(want), "{format:?}: {first}");
            }
        }
    }

    #[test]
    fn out_of_order_lines_lag_within_bounds() {
        let mut s = spec(Format::Graphite);
        s.out_of_order = 0.25;
        s.ooo_max_secs = 5;
        let chunks = pool(&s, 10_000, 7);
        let lags: Vec<u32> = chunks
            .iter()
            .flat_map(|c| c.stamps.iter().map(|s| s.lag_secs))
            .collect();
        let late = lags.iter().filter(|l| **l > 0).count();
        assert!((2000..3000).contains(&late), "{late}");
        assert!(lags.iter().all(|l| *l <= 5));
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let keys = Keys::new(1000, Some(1.1));
        let mut rng = Rng::new(3);
        let draws: Vec<u64> = (0..100_000).map(|_| keys.draw(&mut rng)).collect();
        let top = draws.iter().filter(|k| **k == 0).count();
        let tail = draws.iter().filter(|k| **k == 999).count();
        assert!(top > 10_000 && tail < 100, "top={top} tail={tail}");
        assert!(draws.iter().all(|k| *k < 1000));
    }
}
