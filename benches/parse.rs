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
            // Telegraf's cpu plugin: one line, several fields (one event each).
            Format::Influx => format!("cpu,cpu=cpu{},host=web{:02}.eu-west-1 usage_user={}.{},usage_system=1.5,usage_idle=90.25,usage_iowait=0i 1764360000{:09}", i % 8, i % 40, i % 100, i % 10, i),
            // ~230 bytes, three fields extracted (service, http.status, latency_ms).
            Format::Json => format!(r#"{{"ts":"2026-11-28T20:00:{:02}.{:03}Z","level":"info","service":"checkout-{}","host":"web-{:02}.eu-west-1","http":{{"method":"GET","path":"/api/v1/cart/{i}","status":{}}},"latency_ms":{}.{},"msg":"request served"}}"#, i % 60, i % 1000, i % 7, i % 40, [200, 404, 500][i % 3], i % 900, i % 10),
            Format::Logfmt => format!(r#"ts=2026-11-28T20:00:{:02}Z level=info service=checkout-{} status={} latency_ms={}.{} path=/api/v1/cart/{i} msg="request served""#, i % 60, i % 7, [200, 404, 500][i % 3], i % 900, i % 10),
        }
        .into_bytes())
        .collect()
}

/// The options a listener of each format would have.
fn options(format: Format) -> FormatOptions {
    let names = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    match format {
        Format::Json => FormatOptions {
            key: names(&["service", "http.status"]),
            value: Some("latency_ms".into()),
            time: None,
            strict: None,
            unit: None,
        },
        Format::Logfmt => FormatOptions {
            key: names(&["service", "status"]),
            value: Some("latency_ms".into()),
            time: Some("ts".into()),
            strict: None,
            unit: None,
        },
        _ => FormatOptions::default(),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for format in [
        Format::Graphite,
        Format::Statsd,
        Format::Syslog,
        Format::Raw,
        Format::Influx,
        Format::Json,
        Format::Logfmt,
    ] {
        let input = lines(format, 10_000);
        let bytes: usize = input.iter().map(|l| l.len() + 1).sum();
        let mut parser = Parser::new(format, &options(format), "bench");
        // Throughput in events (an Influx line gives one per numeric field).
        let mut events = 0u64;
        for line in &input {
            events += u64::from(
                parser
                    .parse(line, 0, &mut |_| {})
                    .expect("bench lines are valid"),
            );
        }
        group.throughput(Throughput::Elements(events));
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
