//! Routing throughput: events/s pushed through the per-destination batches and queues of a
//! two-core mesh, drained on the same thread.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::parse::{Event, Kind};
use sluice::route::{Doorbell, Msg, Wake, mesh};

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

fn bench(c: &mut Criterion) {
    let doorbells: Vec<Doorbell> = (0..2)
        .map(|_| Doorbell {
            sleeping: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(NoWake),
        })
        .collect();
    let mut m = mesh(&doorbells);
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("servers.host{i:05}.cpu").into_bytes())
        .collect();
    const EVENTS: usize = 100_000;
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("push_and_drain_2_cores", |b| {
        b.iter(|| {
            let mut received = 0usize;
            for i in 0..EVENTS {
                let e = Event {
                    key: &keys[i % keys.len()],
                    value: 1.0,
                    time_ms: 0,
                    kind: Kind::Sample,
                    unit: None,
                };
                m.routers[0].push(&e);
                if i % 4096 == 0 {
                    received += drain(&m.inbounds);
                    m.routers[0].retry();
                }
            }
            m.routers[0].flush();
            while received < EVENTS {
                received += drain(&m.inbounds);
                m.routers[0].retry();
            }
        })
    });
    group.finish();
}

fn drain(inbounds: &[Vec<sluice::route::Inbound>]) -> usize {
    let mut n = 0;
    for dst in inbounds {
        while let Ok(msg) = dst[0].rx.try_recv() {
            if let Msg::Events(mut b) = msg {
                n += b.len();
                b.clear();
                let _ = dst[0].free.try_send(b);
            }
        }
    }
    n
}

criterion_group!(benches, bench);
criterion_main!(benches);
