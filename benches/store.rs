//! The event log on its own, without network or fsync: append batches and replay.
//!
//! `cargo bench --bench store`. Appends are batches of 256 events of 128 B (one writer
//! batch under load), written to the OS only, so the figure is the store's CPU cost per
//! event, not the disk's; as in the server, the store's own thread checkpoints every 100 ms,
//! so the write-ahead log reuses its segments instead of creating new ones. Replays read
//! 65,536 stored events in chunks of 512, as a
//! catch-up subscription does: through the subject index (a literal subject) and by a scan
//! (a filter starting with a wildcard).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use eventline::config::StoreConfig;
use eventline::store::{Event, Store};
use eventline::subject::Filter;

const BATCH: u64 = 256;
const STORED: u64 = 65_536;
const CHUNK: usize = 512;

fn events(first: u64, n: u64) -> Vec<Event> {
    (first..first + n)
        .map(|seq| Event {
            seq,
            timestamp: 1_700_000_000_000_000_000 + seq,
            revision: seq,
            subject: Bytes::from_static(b"orders.42.created"),
            headers: None,
            payload: Bytes::from(vec![b'x'; 128]),
        })
        .collect()
}

fn filter(text: &'static str) -> Filter {
    Filter::new(Bytes::from_static(text.as_bytes())).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&StoreConfig::new(dir.path()), |_| {}).expect("opens");
    let mut next = 1;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("append 256 x 128 B", |b| {
        b.iter_batched(
            || {
                let batch = events(next, BATCH);
                next += BATCH;
                batch
            },
            |batch| store.append(&batch, &[], &[]).expect("appends"),
            BatchSize::SmallInput,
        );
    });
    group.finish();
    store.close();
}

fn replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&StoreConfig::new(dir.path()), |_| {}).expect("opens");
    for first in (1..=STORED).step_by(BATCH as usize) {
        store.append(&events(first, BATCH), &[], &[]).expect("appends");
    }
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(STORED));
    for (name, text) in
        [("replay 64 Ki, literal subject (index)", "orders.42.created"), ("replay 64 Ki, *.42.> (scan)", "*.42.>")]
    {
        let filter = filter(text);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut from = 1;
                while from <= STORED {
                    let chunk = store.read(&filter, from, STORED, CHUNK).expect("reads");
                    black_box(&chunk.events);
                    from = chunk.next;
                }
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = append, replay
}
criterion_main!(benches);
