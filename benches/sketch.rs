//! Quantile sketch comparison behind the choice in `src/window/mod.rs`: accuracy on a skewed
//! distribution (log-normal latencies), encoded size per key-window, and time per add.
//! Prints a table; not a criterion benchmark.

use std::time::Instant;

use sketches_ddsketch::{Config, DDSketch};

/// Log-normal samples (μ=3, σ=1) from a fixed seed (xorshift + Box-Muller).
fn samples(n: usize) -> Vec<f64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (uniform().max(1e-300), uniform());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (3.0 + z).exp()
        })
        .collect()
}

const QS: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * (sorted.len() - 1) as f64) as usize).min(sorted.len() - 1)]
}

fn row(name: &str, est: impl Fn(f64) -> f64, sorted: &[f64], bytes: usize, ns: f64) {
    let errs: Vec<String> = QS
        .iter()
        .map(|q| {
            format!(
                "{:>7.3}%",
                100.0 * (est(*q) - exact(sorted, *q)).abs() / exact(sorted, *q)
            )
        })
        .collect();
    println!("{name:<24} {}  {bytes:>9}  {ns:>6.1}", errs.join(" "));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = 100_000;
    let data = samples(n);
    let mut sorted = data.clone();
    sorted.sort_by(f64::total_cmp);
    println!("{n} log-normal samples (mu=3, sigma=1); relative error of p50 p90 p99 p99.9");
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}  {:>9}  {:>6}",
        "sketch", "p50", "p90", "p99", "p99.9", "bytes", "ns/add"
    );
    for alpha in [0.01, 0.02] {
        let t = Instant::now();
        let mut s = DDSketch::new(Config::new(alpha, 2048, 1e-9));
        for v in &data {
            s.add(*v);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        let bytes = postcard::to_stdvec(&s).unwrap().len();
        row(
            &format!("DDSketch a={alpha}"),
            |q| s.quantile(q).unwrap().unwrap(),
            &sorted,
            bytes,
            ns,
        );
        // The size a window of 100 samples needs (most windows are small).
        let mut small = DDSketch::new(Config::new(alpha, 2048, 1e-9));
        data[..100].iter().for_each(|v| small.add(*v));
        println!(
            "{:<24} {:>45}  {:>9}",
            "  (100 samples)",
            "",
            postcard::to_stdvec(&small).unwrap().len()
        );
    }
    for compression in [100usize, 200] {
        let t = Instant::now();
        let mut d = tdigest::TDigest::new_with_size(compression);
        for chunk in data.chunks(1000) {
            d = d.merge_unsorted(chunk.to_vec());
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        let bytes = format!("{d:?}").matches("Centroid").count() * 16;
        row(
            &format!("t-digest c={compression}"),
            |q| d.estimate_quantile(q),
            &sorted,
            bytes,
            ns,
        );
    }
}
