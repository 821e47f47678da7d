//! Subscription trie: matches per second over 10,000 subscriptions.
//!
//! `cargo bench --bench trie`. Two groups, cache on and cache off, each
//! matching a hot set of 512 subjects (fits the match cache) and a cold set
//! of 4,096 (four times the cache bound, so with the cache on most lookups
//! miss and pay for the cache upkeep).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventline::subject::{Filter, Sublist};

fn filter(s: &str) -> Filter {
    Filter::new(Bytes::from(s.to_owned())).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// 10,000 subscriptions: mostly literal, some `*` and `>`, some queue groups.
fn populate(list: &Sublist<Arc<u32>>) {
    let mut id = 0;
    let mut add = |f: String, queue: Option<&Bytes>| {
        id += 1;
        list.insert(&filter(&f), queue, Arc::new(id));
    };
    let (workers, shippers) = (Bytes::from_static(b"workers"), Bytes::from_static(b"shippers"));
    for n in 0..4000 {
        add(format!("orders.{n}.created"), None);
    }
    for n in 0..2000 {
        add(format!("orders.{n}.created"), Some(&workers));
    }
    for _ in 0..50 {
        add("orders.*.shipped".to_owned(), None);
        add("orders.*.shipped".to_owned(), Some(&shippers));
    }
    for host in 0..2000 {
        add(format!("metrics.host{host}.>"), None);
    }
    for n in 0..1000 {
        add(format!("events.{n}.*"), None);
    }
    for n in 0..900 {
        add(format!("users.{n}"), None);
    }
    assert_eq!(list.len(), 10_000);
}

/// `count` literal subjects cycling through five shapes, one with no interest.
fn subjects(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let n = i * 7 % 5000;
            match i % 5 {
                0 => format!("orders.{n}.created"),
                1 => format!("orders.{n}.shipped"),
                2 => format!("metrics.host{}.cpu.load", n % 2500),
                3 => format!("events.{}.login", n % 1200),
                _ => format!("nobody.{n}.listens"),
            }
            .into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion, cache: bool) {
    let list = Sublist::with_cache(cache);
    populate(&list);
    let mut group = c.benchmark_group(if cache { "trie/cache_on" } else { "trie/cache_off" });
    for (name, set) in [("hot_512", subjects(512)), ("cold_4096", subjects(4096))] {
        group.throughput(Throughput::Elements(set.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                for subject in &set {
                    black_box(list.matches(black_box(subject)));
                }
            });
        });
    }
    group.finish();
}

fn cache_on(c: &mut Criterion) {
    bench(c, true);
}

fn cache_off(c: &mut Criterion) {
    bench(c, false);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = cache_on, cache_off
}
criterion_main!(benches);
