//! Parse throughput per format, in events/s and bytes/s, on realistic lines.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::{Format, FormatOptions};
use sluice::parse::Parser;

fn lines(format: Format, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| match format {
            Format::Graphite => format!("servers.host{:03}.cpu.user {}.{} 1764360000", i % 500, i % 100, i % 7),
            Format::Raw => format!("{:03}.{:03}.1.1 - - [28/Nov/2026:20:00:00 +0000] \"GET /a/{i} HTTP/1.1\" 200 512", i % 255, i % 7),
            Format::Statsd => format!("api.requests.host{:03}:{}|c|@0.5|#env:prod,region:eu", i % 500, i % 9 + 1),
            Format::Syslog => format!("<34>1 2026-11-28T20:00:00.123Z host{:02} app{} 1234 ID47 - message number {i}", i % 50, i % 9),
        }
        .into_bytes())
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for format in [
        Format::Graphite,
        Format::Statsd,
        Format::Syslog,
        Format::Raw,
    ] {
        let input = lines(format, 10_000);
        let bytes: usize = input.iter().map(|l| l.len() + 1).sum();
        let mut parser = Parser::new(format, &FormatOptions::default(), "bench");
        group.throughput(Throughput::Elements(input.len() as u64));
        group.bench_function(format!("{}_events", format.as_str()), |b| {
            b.iter(|| {
                let mut n = 0u64;
                for line in &input {
                    let _ = parser.parse(line, 0, &mut |e| n += e.key.len() as u64);
                }
                n
            })
        });
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(format!("{}_bytes", format.as_str()), |b| {
            b.iter(|| {
                let mut n = 0u64;
                for line in &input {
                    let _ = parser.parse(line, 0, &mut |e| n += e.key.len() as u64);
                }
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
