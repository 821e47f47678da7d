//! Parser and encoder micro benches.
//!
//! `cargo bench --bench parser`. Each iteration decodes (or encodes) a batch of [`OPS`]
//! messages; the decode benches are reported twice, as ops/s and as bytes/s, since
//! criterion takes one throughput per group.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eventline::config::DEFAULT_MAX_PAYLOAD;
use eventline::protocol::codec::ClientCodec;
use eventline::protocol::encode;
use tokio_util::codec::Decoder;

/// Ops per iteration.
const OPS: usize = 1_000;

/// Payload sizes: 16 B, 128 B, 1 KiB.
const SIZES: [usize; 3] = [16, 128, 1024];

const SUBJECT: &[u8] = b"orders.eu.created";
const SID: &[u8] = b"42";

/// `OPS` copies of `PUB orders.eu.created <size>\r\n<payload>\r\n`.
fn pub_template(size: usize) -> Vec<u8> {
    let mut one = format!("PUB {} {size}\r\n", String::from_utf8_lossy(SUBJECT)).into_bytes();
    one.extend(std::iter::repeat_n(b'x', size));
    one.extend_from_slice(b"\r\n");
    one.repeat(OPS)
}

/// Decodes every op in `buf`; returns how many there were so nothing is optimised away.
fn decode_all(codec: &mut ClientCodec, buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Ok(Some(op)) = codec.decode(buf) {
        black_box(op);
        n += 1;
    }
    n
}

fn decode_group(group: &mut BenchmarkGroup<'_, WallTime>, throughput: fn(&[u8]) -> Throughput) {
    for size in SIZES {
        let template = pub_template(size);
        group.throughput(throughput(&template));
        group.bench_with_input(BenchmarkId::from_parameter(size), &template, |b, template| {
            let mut codec = ClientCodec::new(DEFAULT_MAX_PAYLOAD);
            // The refill is setup, outside the timing; LargeInput keeps few 1 MB buffers alive.
            b.iter_batched_ref(
                || BytesMut::from(&template[..]),
                |buf| {
                    let n = decode_all(&mut codec, buf);
                    debug_assert_eq!(n, OPS);
                    n
                },
                BatchSize::LargeInput,
            );
        });
    }
}

fn decode(c: &mut Criterion) {
    let mut ops = c.benchmark_group("decode_pub_ops");
    decode_group(&mut ops, |_| Throughput::Elements(OPS as u64));
    ops.finish();
    let mut bytes = c.benchmark_group("decode_pub_bytes");
    decode_group(&mut bytes, |template| Throughput::Bytes(template.len() as u64));
    bytes.finish();
}

fn encode_msg(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_msg");
    group.throughput(Throughput::Elements(OPS as u64));
    for size in SIZES {
        let payload = vec![b'x'; size];
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut dst = BytesMut::with_capacity(OPS * (size + 64));
            b.iter(|| {
                dst.clear();
                for _ in 0..OPS {
                    encode::msg(&mut dst, black_box(SUBJECT), black_box(SID), None, None, black_box(payload));
                }
                black_box(dst.len())
            });
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, encode_msg
}
criterion_main!(benches);
