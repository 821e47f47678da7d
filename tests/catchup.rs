//! Catch-up subscriptions (`SUB <filter> <sid> FROM <start>`) against the real server: replay
//! from the log, then live, with no gap, no duplicate and one caught-up marker, whatever is
//! published meanwhile; a reader too slow for its buffer is paced, never cut; the log
//! replays across a restart; volatile subjects never replay; bad starts are refused.
//!
//! Every network wait is under [`TIMEOUT`]; ordering across connections uses PING/PONG.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Hmsg, Incoming, Raw, TIMEOUT, TestServer, ack_seq, nanos, subject_matches};
use eventline::config::{Config, Limits};
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The `n`th (mod 25) subject of the test streams: `orders.{0..9}.{created,shipped}` and
/// `customers.{0..4}`.
fn subject(n: usize) -> String {
    match n % 25 {
        n if n < 20 => format!("orders.{}.{}", n / 2, if n % 2 == 0 { "created" } else { "shipped" }),
        n => format!("customers.{}", n - 20),
    }
}

/// The filters the concurrent test follows; every one of them matches [`SENTINEL_SUBJECT`].
const FILTERS: [&str; 4] = [">", "orders.>", "orders.*.created", "orders.3.created"];
const SENTINEL_SUBJECT: &str = "orders.3.created";
const SENTINEL: &[u8] = b"sentinel";

/// What one catch-up subscription delivered: its events, and where the caught-up marker
/// came among them with the `Nats-Last-Sequence` it carried.
struct Delivery {
    events: Vec<Hmsg>,
    marker_at: usize,
    marker_last: u64,
}

impl Delivery {
    fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(Hmsg::seq).collect()
    }
}

/// Reads a catch-up subscription on `sid` (marker subject `marker_subject`) until an event
/// satisfying `last` (given the event and whether the marker came before it) and the
/// caught-up marker have both arrived. Fails on a second marker,
/// on any other line, or on a message for another sid.
async fn read_delivery(
    raw: &mut Raw,
    marker_subject: &str,
    sid: &str,
    mut last: impl FnMut(&Hmsg, bool) -> bool,
) -> Delivery {
    let (mut events, mut marker, mut done) = (Vec::new(), None::<(usize, u64)>, false);
    while !(done && marker.is_some()) {
        let msg = match raw.incoming().await {
            Incoming::Msg(msg) => msg,
            Incoming::Line(line) => panic!("catch-up {marker_subject} on {sid}: unexpected line {line:?}"),
        };
        assert_eq!(msg.sid, sid, "message for another sid: {msg:?}");
        if msg.status().is_some() {
            assert_eq!(msg.status(), Some("100 Caught Up"), "unexpected status {msg:?}");
            assert!(marker.is_none(), "a second caught-up marker after {} events: {msg:?}", events.len());
            assert_eq!(msg.subject, marker_subject, "marker subject");
            assert!(msg.payload.is_empty(), "marker with a payload: {msg:?}");
            marker = Some((events.len(), msg.number("Nats-Last-Sequence")));
            continue;
        }
        done |= last(&msg, marker.is_some());
        events.push(msg);
    }
    let (marker_at, marker_last) = marker.unwrap_or_default();
    Delivery { events, marker_at, marker_last }
}

/// An event's `Nats-Time-Stamp`.
fn stamp(event: &Hmsg) -> &str {
    event.header("Nats-Time-Stamp").expect("a Nats-Time-Stamp header")
}

/// The whole log as `FETCH >` returns it, checked to hold every sequence from 1 in order.
async fn read_log(raw: &mut Raw) -> Vec<Hmsg> {
    let (log, end) = raw.fetch("log", "> limit=1000000").await;
    let seqs: Vec<u64> = log.iter().map(Hmsg::seq).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>(), "the log has every sequence from 1");
    assert_eq!(end.number("Eventline-Count"), log.len() as u64);
    log
}

/// Asserts a delivery is exactly `expected` (sequences, in order), each event as stored in
/// `log` with its log headers, and the marker between the replayed and the live events.
fn check_delivery(what: &str, delivery: &Delivery, expected: &[u64], log: &[Hmsg]) {
    let seqs = delivery.seqs();
    if let Some(pair) = seqs.windows(2).find(|pair| pair[0] >= pair[1]) {
        panic!("{what}: sequences not strictly increasing at {pair:?}");
    }
    if seqs != expected {
        let missing: Vec<_> = expected.iter().filter(|s| !seqs.contains(s)).take(10).collect();
        let extra: Vec<_> = seqs.iter().filter(|s| !expected.contains(s)).take(10).collect();
        panic!(
            "{what}: got {} events, expected {}; missing {missing:?}, unexpected {extra:?}",
            seqs.len(),
            expected.len()
        );
    }
    for event in &delivery.events {
        let stored = &log[usize::try_from(event.seq()).expect("seq") - 1];
        assert_eq!((&event.subject, &event.payload), (&stored.subject, &stored.payload), "{what}: event {event:?}");
        assert_eq!(event.header("Nats-Subject"), Some(stored.subject.as_str()), "{what}: {event:?}");
        for header in ["Nats-Time-Stamp", "Eventline-Revision"] {
            assert_eq!(event.header(header), stored.header(header), "{what}: {header} of {event:?}");
        }
    }
    let (before, after) = seqs.split_at(delivery.marker_at);
    let last = delivery.marker_last;
    assert!(before.iter().all(|&s| s <= last), "{what}: an event after Nats-Last-Sequence {last} before the marker");
    assert!(after.iter().all(|&s| s > last), "{what}: a replayed event (<= {last}) after the marker");
    assert!(last <= log.len() as u64, "{what}: marker's last sequence {last} is past the head");
}

/// Publishes `count` events from one connection in batches of 100 (`APUB` waiting for the
/// acks, or `PUB` with a PING/PONG per batch), meeting `waves` after the first batch and
/// halfway through.
async fn publish(addr: std::net::SocketAddr, publisher: usize, count: usize, acked: bool, waves: Arc<Barrier>) {
    const BATCH: usize = 100;
    let mut raw = Raw::with_headers(addr).await;
    for batch in 0..count / BATCH {
        let mut text = String::new();
        for k in batch * BATCH..(batch + 1) * BATCH {
            let payload = format!("p{publisher}-{k}");
            let verb = if acked { "APUB" } else { "PUB" };
            text += &format!("{verb} {} {}\r\n{payload}\r\n", subject(k * 3 + publisher * 11), payload.len());
        }
        raw.send(&text).await;
        if acked {
            for _ in 0..BATCH {
                ack_seq(&raw.line().await);
            }
        } else {
            assert_eq!(raw.sync().await, Vec::<String>::new(), "publisher {publisher}");
        }
        if batch == 0 || batch == count / BATCH / 2 {
            tokio::time::timeout(TIMEOUT, waves.wait()).await.expect("everyone meets in time");
        }
    }
}

/// Follows `filter` from `start` on a connection of its own, until the sentinel; then ends
/// the subscription and checks nothing more arrives.
async fn follow(addr: std::net::SocketAddr, filter: &'static str, start: String) -> Delivery {
    let mut raw = Raw::with_headers(addr).await;
    raw.send(&format!("SUB {filter} 7 FROM {start}\r\n")).await;
    let delivery = read_delivery(&mut raw, filter, "7", |event, _| event.payload == SENTINEL).await;
    raw.send("UNSUB 7\r\n").await;
    assert_eq!(raw.sync().await, Vec::<String>::new(), "{filter} from {start}: nothing after the sentinel");
    delivery
}

// ---------------------------------------------------------------------------------------------
// The core guarantee

/// 3,000 events in the log, two connections publishing 5,000 more, and forty catch-ups (four
/// filters, five start positions, two waves) started while they publish: each receives exactly
/// the stored events of its filter from its start, in order, once, marked once at the handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_while_publishing_has_no_gap_no_duplicate_and_one_marker() {
    const PRELOAD: usize = 3_000;
    const PER_PUBLISHER: usize = 2_500;
    let server = TestServer::start().await;
    let mut main = Raw::with_headers(server.addr).await;
    for batch in 0..PRELOAD / 500 {
        let mut text = String::new();
        for i in batch * 500..(batch + 1) * 500 {
            let payload = format!("pre-{i}");
            text += &format!("APUB {} {}\r\n{payload}\r\n", subject(i * 7), payload.len());
        }
        main.send(&text).await;
        for i in batch * 500..(batch + 1) * 500 {
            assert_eq!(ack_seq(&main.line().await), i as u64 + 1);
        }
    }
    let middle = PRELOAD as u64 / 2;
    let (found, _) = main.fetch("t", &format!("> from-seq={middle} limit=1")).await;
    let time = stamp(&found[0]).to_owned();

    let waves = Arc::new(Barrier::new(3));
    let publishers: Vec<_> =
        (0..2).map(|p| tokio::spawn(publish(server.addr, p, PER_PUBLISHER, p == 1, Arc::clone(&waves)))).collect();
    let starts = ["0".to_owned(), middle.to_string(), time.clone(), "last".to_owned(), "new".to_owned()];
    let mut followers = Vec::new();
    // Two waves of followers: as publishing starts, and halfway through.
    for _ in 0..2 {
        tokio::time::timeout(TIMEOUT, waves.wait()).await.expect("publishers reach the wave in time");
        for filter in FILTERS {
            for (kind, start) in ["0", "middle", "time", "last", "new"].into_iter().zip(&starts) {
                followers.push((filter, kind, tokio::spawn(follow(server.addr, filter, start.clone()))));
            }
        }
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let sentinel = main.apub(SENTINEL_SUBJECT, "sentinel").await;
    let mut deliveries = Vec::new();
    for (filter, kind, follower) in followers {
        deliveries.push((filter, kind, follower.await.expect("follower")));
    }

    let log = read_log(&mut main).await;
    assert_eq!(log.len(), PRELOAD + 2 * PER_PUBLISHER + 1);
    assert_eq!(sentinel, log.len() as u64, "the sentinel is the head");
    let matching = |filter: &str| -> Vec<u64> {
        log.iter().filter(|e| subject_matches(filter, &e.subject)).map(Hmsg::seq).collect()
    };
    for filter in FILTERS {
        let (fetched, _) = main.fetch("f", &format!("{filter} limit=1000000")).await;
        assert_eq!(fetched.iter().map(Hmsg::seq).collect::<Vec<_>>(), matching(filter), "FETCH {filter}");
    }
    let start_time = nanos(&time);
    for (filter, kind, delivery) in &deliveries {
        let what = format!("SUB {filter} FROM {kind}");
        let all = matching(filter);
        let expected: Vec<u64> = match *kind {
            "0" => all,
            "middle" => all.into_iter().filter(|&s| s >= middle).collect(),
            "time" => all.into_iter().filter(|&s| nanos(stamp(&log[s as usize - 1])) >= start_time).collect(),
            "last" => expected_from_last(&what, filter, delivery, &log, PRELOAD as u64),
            _ => {
                let first = delivery.events.first().map_or(0, Hmsg::seq);
                assert!(first > PRELOAD as u64, "{what}: started in the preloaded log at {first}");
                all.into_iter().filter(|&s| s >= first).collect()
            }
        };
        check_delivery(&what, delivery, &expected, &log);
    }
}

/// The expected sequences of a `FROM last` delivery: the last event of each matching subject
/// as of the head H the subscription started at, then every matching event after H. H is
/// read from the delivery itself: every subject has events in the preload, so the first
/// `subjects` events are the per-subject part and the next one is the first after H.
fn expected_from_last(what: &str, filter: &str, delivery: &Delivery, log: &[Hmsg], preload: u64) -> Vec<u64> {
    let subjects: std::collections::BTreeSet<&str> =
        log.iter().map(|e| e.subject.as_str()).filter(|s| subject_matches(filter, s)).collect();
    let seqs = delivery.seqs();
    assert!(seqs.len() > subjects.len(), "{what}: only {} events for {} subjects", seqs.len(), subjects.len());
    let head = seqs[subjects.len()] - 1;
    assert!(head >= preload, "{what}: started at head {head}, before the preload ended");
    let mut last_of = BTreeMap::new();
    for event in log.iter().take_while(|e| e.seq() <= head).filter(|e| subject_matches(filter, &e.subject)) {
        last_of.insert(event.subject.as_str(), event.seq());
    }
    let mut expected: Vec<u64> = last_of.into_values().collect();
    expected.sort_unstable();
    expected.extend(log.iter().filter(|e| e.seq() > head && subject_matches(filter, &e.subject)).map(Hmsg::seq));
    expected
}

// ---------------------------------------------------------------------------------------------
// A reader slower than the publishers

/// A catch-up on `>` that reads nothing while 25,000 events (about 9 MB of deliveries) are
/// published, on a server whose per-connection bound is 256 KiB: its buffer overflows and
/// fan-out knocks it back to the store, but it is never cut, and once it reads it gets every
/// event in order with no gap and one marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_catch_up_reader_is_paced_from_the_store_not_cut() {
    const PRELOAD: usize = 1_000;
    const TOTAL: usize = 26_000;
    const BATCH: usize = 500;
    let limits = Limits {
        max_pending: 256 * 1024,
        // The reader's socket is full for as long as publishing lasts; the deadline for a
        // stuck write is not what this test is about.
        write_deadline: Duration::from_secs(120),
        ..Limits::default()
    };
    let config = Config { limits, ..Config::default() };
    let server = TestServer::with_config(config).await;
    let payload = |i: usize| format!("{i:08}{}", "x".repeat(192));
    let mut publisher = Raw::with_headers(server.addr).await;
    let publish = |from: usize, to: usize| {
        (from..to).map(|i| format!("PUB {} 200\r\n{}\r\n", subject(i), payload(i))).collect::<String>()
    };
    publisher.send(&publish(0, PRELOAD)).await;
    assert_eq!(publisher.sync().await, Vec::<String>::new());

    let mut reader = Raw::with_headers(server.addr).await;
    reader.send("SUB > 1 FROM 0\r\n").await;
    for from in (PRELOAD..TOTAL).step_by(BATCH) {
        publisher.send(&publish(from, from + BATCH)).await;
        assert_eq!(publisher.sync().await, Vec::<String>::new());
    }

    let delivery = read_delivery(&mut reader, ">", "1", |event, _| event.seq() == TOTAL as u64).await;
    let seqs = delivery.seqs();
    if let Some(at) = seqs.iter().enumerate().position(|(i, &seq)| seq != i as u64 + 1) {
        panic!("gap or duplicate after {} events: got {:?}", at, &seqs[at..(at + 5).min(seqs.len())]);
    }
    assert_eq!(seqs.len(), TOTAL);
    for event in &delivery.events {
        let i = usize::try_from(event.seq()).expect("seq") - 1;
        assert_eq!((event.subject.as_str(), event.payload.as_slice()), (subject(i).as_str(), payload(i).as_bytes()));
    }
    let last = delivery.marker_last;
    assert!(
        seqs[..delivery.marker_at].iter().all(|&s| s <= last) && seqs[delivery.marker_at..].iter().all(|&s| s > last)
    );
    assert_eq!(reader.sync().await, Vec::<String>::new(), "nothing more, and still connected");
}

/// Bursts of publishing, each started when the reader is nearly through the previous one, on
/// a 64 KiB bound: the subscription falls behind in each burst (back to the store), hands
/// over to live again around the start of the next, and still delivers every event once,
/// in order, with one marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_falling_back_and_catching_up_during_bursts_loses_nothing() {
    const BURST: usize = 1_000;
    const BURSTS: usize = 20;
    let config = Config { limits: Limits { max_pending: 64 * 1024, ..Limits::default() }, ..Config::default() };
    let server = TestServer::with_config(config).await;
    let payload = |i: usize| format!("{i:08}{}", "y".repeat(120));
    let (progress, mut read_up_to) = tokio::sync::watch::channel(0u64);
    let mut reader = Raw::with_headers(server.addr).await;
    reader.send("SUB > 1 FROM 0\r\n").await;
    let reading = tokio::spawn(async move {
        let (mut next, mut markers) = (1, 0);
        while next <= (BURST * BURSTS) as u64 {
            let event = reader.hmsg().await;
            if event.status().is_some() {
                assert_eq!(event.status(), Some("100 Caught Up"));
                markers += 1;
                continue;
            }
            assert_eq!(event.seq(), next, "gap or duplicate");
            assert_eq!(event.payload, payload(usize::try_from(next).expect("seq") - 1).as_bytes());
            progress.send_replace(next);
            next += 1;
        }
        assert_eq!(markers, 1, "one caught-up marker");
        assert_eq!(reader.sync().await, Vec::<String>::new(), "nothing more, and still connected");
    });
    let mut publisher = Raw::with_headers(server.addr).await;
    for burst in 0..BURSTS {
        let text: String = (burst * BURST..(burst + 1) * BURST)
            .map(|i| format!("PUB {} {}\r\n{}\r\n", subject(i), payload(i).len(), payload(i)))
            .collect();
        publisher.send(&text).await;
        assert_eq!(publisher.sync().await, Vec::<String>::new());
        let nearly = (burst * BURST + BURST * 4 / 5) as u64;
        let caught = tokio::time::timeout(TIMEOUT, read_up_to.wait_for(|&read| read >= nearly)).await;
        caught.expect("the reader progresses in time").expect("the reader is running");
    }
    tokio::time::timeout(TIMEOUT, reading).await.expect("the reader finishes in time").expect("reader");
}

/// Sixty handovers under a steady stream of appends on `fire.{0..3}` in turn: each catch-up,
/// from `new`, from `last` or from a recent sequence, replays, hands over to live while
/// events keep coming, and goes on with consecutive sequences (with four subjects in turn,
/// `last` too is consecutive: the head's last four). Whether an append lands exactly inside
/// the handover is up to timing; sixty tries make it likelier.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handovers_under_a_steady_stream_are_seamless() {
    let server = TestServer::start().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, stopped) = (server.addr, Arc::clone(&stop));
    let firehose = tokio::spawn(async move {
        let mut raw = Raw::with_headers(addr).await;
        let mut i = 0;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let text: String = (i..i + 200).map(|i| format!("PUB fire.{} 4\r\n{:04}\r\n", i % 4, i % 10_000)).collect();
            raw.send(&text).await;
            assert_eq!(raw.sync().await, Vec::<String>::new());
            i += 200;
        }
    });
    let mut recent = 1;
    for round in 0..60 {
        let start = match round % 3 {
            0 => "new".to_owned(),
            1 => "last".to_owned(),
            _ => recent.to_string(),
        };
        let mut raw = Raw::with_headers(server.addr).await;
        raw.send(&format!("SUB fire.> 1 FROM {start}\r\n")).await;
        let mut live_events = 0;
        let delivery = read_delivery(&mut raw, "fire.>", "1", |_, marked| {
            live_events += usize::from(marked);
            live_events > 150
        })
        .await;
        let what = format!("round {round}: SUB fire.> 1 FROM {start}");
        let seqs = delivery.seqs();
        if let Some(pair) = seqs.windows(2).find(|pair| pair[1] != pair[0] + 1) {
            panic!("{what}: {pair:?} not consecutive; marker after {} events", delivery.marker_at);
        }
        if round % 3 == 2 {
            assert_eq!(seqs[0], recent, "{what}");
        }
        let (before, after) = seqs.split_at(delivery.marker_at);
        assert!(before.iter().all(|&s| s <= delivery.marker_last), "{what}");
        assert!(after.iter().all(|&s| s > delivery.marker_last), "{what}");
        recent = seqs[seqs.len() - 1].saturating_sub(1_000).max(1);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    firehose.await.expect("publisher");
}

// ---------------------------------------------------------------------------------------------
// Restart

/// Events stored before a restart replay after it, with the same sequences, times and
/// revisions; new events continue the sequence and arrive live after the marker.
#[tokio::test]
async fn catch_up_replays_the_log_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start_in(dir.path(), Config::default()).await;
    let mut raw = Raw::with_headers(server.addr).await;
    for i in 0..50 {
        assert_eq!(raw.apub(&format!("r.{}", i % 3), &format!("before-{i}")).await, i + 1);
    }
    let before = read_log(&mut raw).await;
    drop(raw);
    server.stop().await;

    let server = TestServer::start_in(dir.path(), Config::default()).await;
    let mut reader = Raw::with_headers(server.addr).await;
    reader.send("SUB r.> 1 FROM 0\r\n").await;
    let replayed = read_delivery(&mut reader, "r.>", "1", |event, _| event.seq() == 50).await;
    check_delivery("after restart", &replayed, &(1..=50).collect::<Vec<_>>(), &before);
    assert_eq!((replayed.marker_at, replayed.marker_last), (50, 50));

    let mut writer = Raw::with_headers(server.addr).await;
    writer.send("APUB r.1 5\r\nafter\r\n").await;
    assert_eq!(writer.line().await, "+ACK seq=51 rev=18", "r.1 had 17 events before the restart");
    let live = reader.hmsg().await;
    assert_eq!((live.seq(), live.subject.as_str(), live.payload.as_slice()), (51, "r.1", &b"after"[..]));
    assert_eq!(live.header("Eventline-Revision"), Some("18"));

    reader.send("SUB r.> 2 FROM last\r\n").await;
    let last = read_delivery(&mut reader, "r.>", "2", |event, _| event.seq() == 51).await;
    assert_eq!(last.seqs(), [48, 49, 51], "the last event of r.2, r.0 and r.1");
    assert_eq!((last.marker_at, last.marker_last), (3, 51));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Volatile subjects

/// Messages on `_INBOX.>` and `$` subjects are delivered live but never stored: they take no
/// sequence, a catch-up from 0 never replays them, and a live catch-up never carries them.
#[tokio::test]
async fn volatile_subjects_are_never_replayed() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    assert_eq!(raw.apub("a.1", "one").await, 1);
    raw.send("PUB _INBOX.x 3\r\nvol\r\nPUB $SYS.x 3\r\nvol\r\nAPUB _INBOX.y 3\r\nvol\r\n").await;
    assert_eq!(raw.line().await, "-NAK 'subject _INBOX.y is volatile: it is delivered but never stored'");
    assert_eq!(raw.apub("a.2", "two").await, 2, "volatile messages take no sequence");

    let mut reader = Raw::with_headers(server.addr).await;
    reader.send("SUB > 1 FROM 0\r\n").await;
    let delivery = read_delivery(&mut reader, ">", "1", |event, _| event.seq() == 2).await;
    assert_eq!((delivery.seqs(), delivery.marker_at, delivery.marker_last), (vec![1, 2], 2, 2));

    raw.send("PUB _INBOX.z 3\r\nvol\r\n").await;
    assert_eq!(raw.apub("a.3", "three").await, 3);
    let live = reader.hmsg().await;
    assert_eq!((live.subject.as_str(), live.seq()), ("a.3", 3));
    assert_eq!(reader.sync().await, Vec::<String>::new());
    let (all, _) = raw.fetch("q", ">").await;
    assert_eq!(all.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(), ["a.1", "a.2", "a.3"]);
}

// ---------------------------------------------------------------------------------------------
// Start positions and errors, as a telnet session

/// Reads a catch-up on `sid` up to its caught-up marker: the replayed sequences, and the
/// marker's `Nats-Last-Sequence`.
async fn replay(raw: &mut Raw, filter: &str, sid: &str) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    loop {
        let msg = raw.hmsg().await;
        assert_eq!(msg.sid, sid, "{msg:?}");
        match msg.status() {
            None => seqs.push(msg.seq()),
            Some(status) => {
                assert_eq!((status, msg.subject.as_str()), ("100 Caught Up", filter));
                return (seqs, msg.number("Nats-Last-Sequence"));
            }
        }
    }
}

/// Every start position on a quiet three-event log; each catch-up then goes live, and
/// `UNSUB` ends one.
#[tokio::test]
async fn start_positions() {
    let server = TestServer::start().await;
    let mut writer = Raw::with_headers(server.addr).await;
    for (i, subject) in ["a.x", "a.y", "a.x"].into_iter().enumerate() {
        assert_eq!(writer.apub(subject, &format!("e{}", i + 1)).await, i as u64 + 1);
    }
    let (third, _) = writer.fetch("t", "a.> from-seq=3").await;
    let third_time = stamp(&third[0]).to_owned();
    let mut raw = Raw::with_headers(server.addr).await;
    let cases: [(&str, &[u64]); 10] = [
        ("0", &[1, 2, 3]),
        ("1", &[1, 2, 3]),
        ("2", &[2, 3]),
        ("4", &[]),
        (&third_time, &[3]),
        ("1970-01-01T00:00:00Z", &[1, 2, 3]),
        ("2100-01-01T00:00:00Z", &[]),
        ("last", &[2, 3]),
        ("LAST", &[2, 3]),
        ("new", &[]),
    ];
    for (sid, (start, expected)) in cases.iter().enumerate() {
        raw.send(&format!("SUB a.> {sid} FROM {start}\r\n")).await;
        assert_eq!(replay(&mut raw, "a.>", &sid.to_string()).await, (expected.to_vec(), 3), "FROM {start}");
    }

    assert_eq!(writer.apub("a.y", "e4").await, 4);
    let mut live: Vec<(String, u64)> = Vec::new();
    for _ in 0..cases.len() {
        let event = raw.hmsg().await;
        live.push((event.sid.clone(), event.seq()));
    }
    live.sort_by_key(|(sid, _)| sid.parse::<usize>().unwrap_or(usize::MAX));
    assert_eq!(live, (0..cases.len()).map(|sid| (sid.to_string(), 4)).collect::<Vec<_>>(), "each live once");

    let unsubs: String = (1..cases.len()).map(|sid| format!("UNSUB {sid}\r\n")).collect();
    raw.send(&unsubs).await;
    assert_eq!(raw.sync().await, Vec::<String>::new());
    assert_eq!(writer.apub("b.z", "not for a.>").await, 5);
    assert_eq!(writer.apub("a.x", "e6").await, 6);
    let only = raw.hmsg().await;
    assert_eq!((only.sid.as_str(), only.seq()), ("0", 6));
    assert_eq!(raw.sync().await, Vec::<String>::new(), "ended catch-ups deliver nothing");
}

/// Bad starts and filters are refused with `-NAK` and the connection stays open.
#[tokio::test]
async fn bad_starts_are_refused_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    assert_eq!(raw.apub("a.x", "one").await, 1);
    // A refusal comes after the answers to the publishes sent before it.
    raw.send("APUB a.x 3\r\ntwo\r\nSUB a.> 1 FROM soon\r\n").await;
    let refusal = "-NAK 'invalid start position soon: expected a sequence, an RFC 3339 time, last or new'";
    raw.expect_lines(&["+ACK seq=2 rev=2", refusal]).await;
    raw.send("SUB a.> 1 FROM yesterday\r\n").await;
    raw.expect("-NAK 'invalid start position yesterday: expected a sequence, an RFC 3339 time, last or new'").await;
    raw.send("SUB a.> 1 FROM 4\r\n").await;
    raw.expect("-NAK 'start sequence 4 is beyond the head 2'").await;
    raw.send("SUB a.> 1 FROM 1969-12-31T23:59:59Z\r\n").await;
    raw.expect(
        "-NAK 'invalid start position 1969-12-31T23:59:59Z: expected a sequence, an RFC 3339 time, last or new'",
    )
    .await;
    for filter in ["a..b", "a.>.b", "a.b."] {
        raw.send(&format!("SUB {filter} 1 FROM 0\r\n")).await;
        let line = raw.line().await;
        assert!(line.starts_with(&format!("-NAK 'invalid filter {filter}: ")), "SUB {filter} 1 FROM 0: got {line:?}");
    }
    assert_eq!(raw.sync().await, Vec::<String>::new(), "still open, nothing started");

    raw.send("SUB a.> 1 FROM 3\r\n").await;
    assert_eq!(replay(&mut raw, "a.>", "1").await, (vec![], 2), "head + 1 is the next event");
    raw.send("SUB a.> 1 FROM 0\r\nSUB plain 2\r\nSUB a.> 2 FROM 0\r\n").await;
    raw.expect("-NAK 'sid 1 is already in use'").await;
    raw.expect("-NAK 'sid 2 is already in use'").await;
    assert_eq!(raw.sync().await, Vec::<String>::new());
    let mut writer = Raw::with_headers(server.addr).await;
    assert_eq!(writer.apub("a.y", "three").await, 3);
    let live = raw.hmsg().await;
    assert_eq!((live.sid.as_str(), live.seq()), ("1", 3), "the first catch-up on sid 1 goes on");
}

/// A connection may hold 1024 catch-up subscriptions; the next is refused until one ends.
#[tokio::test]
async fn a_connection_holds_at_most_1024_catch_ups() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    let subscribe: String = (1..=1025).map(|sid| format!("SUB limit.x {sid} FROM new\r\n")).collect();
    // Each catch-up sends its caught-up marker meanwhile: look at the other lines only.
    let refusals = |lines: Vec<String>| lines.into_iter().filter(|line| line.starts_with('-')).collect::<Vec<_>>();
    raw.send(&subscribe).await;
    let refused = refusals(raw.sync().await);
    assert_eq!(refused, vec!["-NAK 'too many catch-up subscriptions on this connection: at most 1024'"]);
    raw.send("UNSUB 1\r\nSUB limit.x 1025 FROM new\r\n").await;
    assert_eq!(refusals(raw.sync().await), Vec::<String>::new(), "one ended, so one more may start");
}
