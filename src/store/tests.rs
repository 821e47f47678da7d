//! Store tests: every query against a naive oracle over the appended `Vec<Event>`, and
//! recovery tests that drop the store and reopen the same directory.
//!
//! Tests that name a bug (`bug_...`) fail until that bug is fixed; their doc comments say why.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjall::{Database, KeyspaceCreateOptions, Slice};
use tempfile::TempDir;

use super::index::key_seq;
use super::{DEDUP_HEAD, DedupEntry, Event, INDEX_HEAD, Store, StoreError};
use crate::config::{SCAN_BUDGET, StoreConfig};
use crate::subject::{Filter, Subject, matches};

// ---- Fixtures and oracles ----

/// Space-separated. Byte-wise neighbours (`orders` / `orders.1` / `ordersX`), prefixes of
/// each other (`a` / `a.b` / `a.b.x`), and subjects that first-token wildcards reach (`*.x`).
const SUBJECTS: &str = "orders orders.1 ordersX orders.42.created orders.42.shipped orders.7.created orders.42 \
                        ordersX.42.created a.x b.x a.b.x a a.b orders.42.created.v2";

/// Space-separated. Literal, literal-prefix, index-prefix-plus-matcher and full-scan filters.
const FILTERS: &str = "orders orders.1 ordersX a orders.42 orders.42.created nope orders.42.> orders.> ordersX.> \
                       a.> orders.*.created a.* orders.* *.x *.*.x *.42.> * >";

const EVENTS: u64 = 48;

/// `n` events with consecutive sequences from 1; timestamps repeat in threes; revisions
/// count per subject; some events carry a header block (one of them empty).
fn make_events(n: u64) -> Vec<Event> {
    let subjects: Vec<&str> = SUBJECTS.split_whitespace().collect();
    let mut revisions: HashMap<&str, u64> = HashMap::new();
    (1..=n)
        .map(|seq| {
            let subject =
                if seq % 3 == 0 { "orders.42.created" } else { subjects[(seq * 5) as usize % subjects.len()] };
            let revision = revisions.entry(subject).or_default();
            *revision += 1;
            let headers = match seq % 8 {
                0 | 4 => Some(Bytes::from(format!("NATS/1.0\r\nK: {seq}\r\n\r\n"))),
                1 => Some(Bytes::new()),
                _ => None,
            };
            Event {
                seq,
                timestamp: 1_000 + seq / 3 * 10,
                revision: *revision,
                subject: Bytes::from_static(subject.as_bytes()),
                headers,
                // Every fifth payload is large, so some batches fill more than one run.
                payload: Bytes::from(format!(
                    "payload {seq}{}",
                    if seq % 5 == 0 { "x".repeat(5000) } else { String::new() }
                )),
            }
        })
        .collect()
}

/// Field order matters: the store drops (and closes fjall) before its directory goes.
struct Fixture {
    store: Arc<Store>,
    events: Vec<Event>,
    dir: TempDir,
}

/// A store holding [`make_events`]`(n)`, appended in batches of 7, 20 and 1 events (so
/// runs end inside batches and at their ends), fsyncing after every other batch.
fn filled(n: u64) -> Fixture {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path()).expect("opens");
    let events = make_events(n);
    let mut rest = &events[..];
    for (i, size) in [7, 20, 1].into_iter().cycle().enumerate() {
        if rest.is_empty() {
            break;
        }
        let (batch, later) = rest.split_at(size.min(rest.len()));
        store.append(batch, &[], &[]).expect("appends");
        if i % 2 == 0 {
            store.sync().expect("syncs");
        }
        rest = later;
    }
    Fixture { store, events, dir }
}

fn filter(text: &str) -> Filter {
    Filter::new(Bytes::copy_from_slice(text.as_bytes())).expect("valid filter")
}

/// The store in `dir`, its checkpoint thread idle for longer than any test, so that each
/// test decides when the mark moves and when checkpoints happen.
fn open(dir: &Path) -> Result<Arc<Store>, StoreError> {
    let idle = Duration::from_secs(3600);
    Store::open(&StoreConfig { mark_every: idle, checkpoint_every: idle, ..StoreConfig::new(dir) }, |_| {})
}

fn open_err(dir: &Path) -> StoreError {
    match open(dir) {
        Ok(_) => panic!("open of {} should fail", dir.display()),
        Err(error) => error,
    }
}

/// The events of `events` matching `filter` with sequences in `from..=to`.
fn naive(events: &[Event], filter: &str, from: u64, to: u64) -> Vec<Event> {
    events.iter().filter(|e| (from..=to).contains(&e.seq) && matches(filter.as_bytes(), &e.subject)).cloned().collect()
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Reads `from..=to` in pages of `limit`, checking each page's invariants, until done.
fn read_paged(store: &Store, filter_text: &str, mut from: u64, to: u64, limit: usize) -> Vec<Event> {
    let filter = filter(filter_text);
    let mut all: Vec<Event> = Vec::new();
    while from <= to {
        let chunk = store.read(&filter, from, to, limit).expect("reads");
        let context = format!("{filter_text} from {from} to {to} limit {limit}");
        assert!(chunk.events.len() <= limit, "{context}: page too long");
        assert!(chunk.next > from && chunk.next <= to + 1, "{context}: next {} out of range", chunk.next);
        assert!(chunk.events.iter().all(|e| e.seq >= from && e.seq < chunk.next), "{context}: event outside page");
        all.extend(chunk.events);
        from = chunk.next;
    }
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "{filter_text}: not strictly increasing");
    all
}

/// A high-water-mark record, written independently of `hwm.rs`: seq BE, crc32 BE.
fn mark_record(seq: u64) -> Vec<u8> {
    let mut record = seq.to_be_bytes().to_vec();
    record.extend_from_slice(&crc32fast::hash(&seq.to_be_bytes()).to_be_bytes());
    record
}

// ---- Append, get, read ----

#[test]
fn empty_store_has_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path()).expect("opens");
    assert_eq!(store.last_seq().expect("last"), 0);
    assert_eq!(store.high_water_mark(), 0);
    assert_eq!(store.get(1).expect("get"), None);
    assert!(store.read(&filter(">"), 1, 10, 10).expect("reads").events.is_empty());
    assert_eq!(store.first_at_or_after(0, 0).expect("search"), 1);
}

#[test]
fn appended_events_come_back_equal() {
    let f = filled(EVENTS);
    assert_eq!(f.store.last_seq().expect("last"), EVENTS);
    for event in &f.events {
        assert_eq!(f.store.get(event.seq).expect("get").as_ref(), Some(event));
    }
    // 48 events went in as 5 batches; the large payloads split some of them.
    assert!(f.store.events.iter().count() > 5, "no batch was split into runs");
    assert_eq!(f.store.get(0).expect("get 0"), None);
    assert_eq!(f.store.get(EVENTS + 1).expect("get past head"), None);
}

#[test]
fn read_returns_exactly_the_matching_events_for_every_filter_shape() {
    let f = filled(EVENTS);
    let bounds = [(1, EVENTS), (0, EVENTS), (5, 30), (17, 17), (30, 5), (EVENTS, EVENTS), (40, EVENTS)];
    for text in FILTERS.split_whitespace() {
        for (from, to) in bounds {
            let expected = naive(&f.events, text, from, to);
            for limit in [usize::MAX, 1, 2, 5] {
                assert_eq!(read_paged(&f.store, text, from, to, limit), expected, "{text} {from}..={to} by {limit}");
            }
            let first = f.store.read(&filter(text), from, to, 3).expect("reads");
            assert_eq!(seqs(&first.events), seqs(&expected[..expected.len().min(3)]), "{text} first page");
        }
    }
}

/// Subjects deeper than the index's prefixes: filters with longer literal prefixes read
/// through the deepest indexed prefix, and still return exactly the matching events.
#[test]
fn filters_deeper_than_the_indexed_prefixes_are_exact() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path()).expect("opens");
    let deep = |tail: &str| format!("{}.{tail}", ["d"; crate::config::INDEX_PREFIX_TOKENS + 2].join("."));
    let subjects = [deep("x.1"), deep("x.2"), deep("y.1"), "d.d".to_owned()];
    let events: Vec<Event> = (1..=40u64)
        .map(|seq| Event {
            seq,
            timestamp: seq,
            revision: 1 + (seq - 1) / 4,
            subject: Bytes::from(subjects[(seq % 4) as usize].clone()),
            headers: None,
            payload: Bytes::from(seq.to_string()),
        })
        .collect();
    store.append(&events, &[], &[]).expect("appends");
    for text in [deep("x.>"), deep("*.1"), deep("x.1"), deep(">"), "d.d.>".to_owned(), "d.>".to_owned()] {
        assert_eq!(read_paged(&store, &text, 1, 40, 3), naive(&events, &text, 1, 40), "{text}");
    }
}

/// Several filters at once: every event matching any of them, once, in order, whether
/// the filters go through the index (merged) or one of them needs a scan.
#[test]
fn read_any_returns_each_event_matching_any_filter_once() {
    let f = filled(EVENTS);
    let filter_sets: [&[&str]; 5] = [
        &["orders.42.>", "a.>"],
        &["orders.42.created", "orders.42.>", "orders"],
        &["a", "a.b", "nope"],
        &["ordersX", "*.x"],
        &["orders.*.created", "a.*", "b.x"],
    ];
    for texts in filter_sets {
        let filters: Vec<Filter> = texts.iter().map(|text| filter(text)).collect();
        for (from, to) in [(1, EVENTS), (5, 30), (17, 17), (40, EVENTS)] {
            let expected: Vec<u64> = f
                .events
                .iter()
                .filter(|e| (from..=to).contains(&e.seq) && texts.iter().any(|t| matches(t.as_bytes(), &e.subject)))
                .map(|e| e.seq)
                .collect();
            for limit in [usize::MAX, 1, 3] {
                let mut got = Vec::new();
                let mut at = from;
                while at <= to {
                    let chunk = f.store.read_any(&filters, at, to, limit).expect("reads");
                    assert!(chunk.events.len() <= limit && chunk.next > at, "{texts:?} from {at}: no progress");
                    assert!(chunk.events.iter().all(|e| e.seq >= at && e.seq < chunk.next), "{texts:?}: outside page");
                    got.extend(seqs(&chunk.events));
                    at = chunk.next;
                }
                assert_eq!(got, expected, "{texts:?} {from}..={to} by {limit}");
            }
        }
    }
}

#[test]
fn read_with_empty_range_or_zero_limit_stays_put() {
    let f = filled(10);
    for (from, to, limit) in [(5, 4, 10), (3, 9, 0)] {
        let chunk = f.store.read(&filter(">"), from, to, limit).expect("reads");
        assert!(chunk.events.is_empty());
        assert_eq!(chunk.next, from);
    }
}

#[test]
fn byte_neighbour_subjects_do_not_share_index_ranges() {
    let f = filled(EVENTS);
    for subject in ["orders", "orders.1", "ordersX", "a", "a.b", "orders.42"] {
        let got = read_paged(&f.store, subject, 1, EVENTS, usize::MAX);
        assert!(!got.is_empty(), "fixture lacks {subject}");
        assert!(got.iter().all(|e| &e.subject[..] == subject.as_bytes()), "{subject} picked up another subject");
        let last = got.last().map(|e| (e.seq, e.revision));
        assert_eq!(f.store.last_of_subject(subject.as_bytes(), EVENTS).expect("last"), last, "{subject}");
    }
}

#[test]
fn scans_past_the_budget_continue_where_they_stopped() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path()).expect("opens");
    let head = SCAN_BUDGET as u64 + 500;
    let events: Vec<Event> = (1..=head)
        .map(|seq| Event {
            seq,
            timestamp: seq,
            revision: if seq == 1 { 1 } else { seq - 1 },
            subject: Bytes::from_static(if seq == 1 { b"rare.x" } else { b"common.y" }),
            headers: None,
            payload: Bytes::new(),
        })
        .collect();
    for batch in events.chunks(10_000) {
        store.append(batch, &[], &[]).expect("appends");
    }
    // A full scan that finds nothing more returns after the budget, and says where to go on.
    let chunk = store.read(&filter("*.x"), 2, head, 10).expect("reads");
    assert!(chunk.events.is_empty());
    assert_eq!(chunk.next, 2 + SCAN_BUDGET as u64);
    assert_eq!(store.read(&filter("*.x"), chunk.next, head, 10).expect("reads").next, head + 1);
    assert_eq!(seqs(&read_paged(&store, "*.x", 1, head, 10)), [1]);
    // The backwards search walks more than one budget-sized window to find event 1.
    assert_eq!(store.last_matching(&filter("*.x"), 0, head).expect("last_matching"), Some(1));
    assert_eq!(store.last_matching(&filter("*.x"), 1, head).expect("last_matching"), None);
}

// ---- Point queries ----

#[test]
fn last_of_subject_respects_head() {
    let f = filled(EVENTS);
    for head in 0..=EVENTS {
        for subject in SUBJECTS.split_whitespace().chain(["nope", "orders.4", "ordersX.42"]) {
            let expected = f.events.iter().rfind(|e| e.seq <= head && &e.subject[..] == subject.as_bytes());
            let got = f.store.last_of_subject(subject.as_bytes(), head).expect("last_of_subject");
            assert_eq!(got, expected.map(|e| (e.seq, e.revision)), "{subject} at head {head}");
        }
    }
}

#[test]
fn last_matching_finds_the_highest_match_in_the_window() {
    let f = filled(EVENTS);
    for text in FILTERS.split_whitespace() {
        for after in 0..=EVENTS {
            for head in [after.saturating_sub(1), after, after + 1, after + 4, EVENTS / 2, EVENTS] {
                let head = head.min(EVENTS);
                let expected = naive(&f.events, text, after + 1, head).last().map(|e| e.seq);
                let got = f.store.last_matching(&filter(text), after, head).expect("last_matching");
                assert_eq!(got, expected, "{text} in ({after}, {head}]");
            }
        }
    }
}

#[test]
fn first_at_or_after_handles_repeats_and_both_ends() {
    let f = filled(EVENTS);
    let last_timestamp = f.events.last().map_or(0, |e| e.timestamp);
    for head in [0, 1, 2, 3, 17, EVENTS] {
        for timestamp in 0..=last_timestamp + 1 {
            let expected =
                f.events.iter().find(|e| e.seq <= head && e.timestamp >= timestamp).map_or(head + 1, |e| e.seq);
            assert_eq!(
                f.store.first_at_or_after(timestamp, head).expect("search"),
                expected,
                "{timestamp} head {head}"
            );
        }
    }
    // Events 3, 4 and 5 share a timestamp: the search lands on the first of them.
    assert_eq!(f.events[2].timestamp, f.events[4].timestamp);
    assert_eq!(f.store.first_at_or_after(f.events[3].timestamp, EVENTS).expect("search"), 3);
}

#[test]
fn last_per_subject_reports_each_matching_subject_once() {
    let f = filled(EVENTS);
    for text in FILTERS.split_whitespace() {
        for head in [0, 1, 7, 20, EVENTS] {
            let mut last: BTreeMap<&[u8], u64> = BTreeMap::new();
            for event in f.events.iter().filter(|e| e.seq <= head && matches(text.as_bytes(), &e.subject)) {
                last.insert(&event.subject, event.seq);
            }
            let mut expected: Vec<u64> = last.into_values().collect();
            expected.sort_unstable();
            let got = f.store.last_per_subject(&filter(text), head).expect("last_per_subject");
            assert_eq!(got, expected, "{text} at head {head}");
        }
    }
}

// ---- Dedup window ----

fn dedup(timestamp: u64, msg_id: &'static str, seq: u64) -> DedupEntry {
    DedupEntry { timestamp, msg_id: Bytes::from_static(msg_id.as_bytes()), seq }
}

#[test]
fn dedup_window_lists_expires_and_removes() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path()).expect("opens");
    let events = make_events(5);
    let entries = [dedup(100, "m1", 1), dedup(200, "m2", 2), dedup(200, "m0", 3), dedup(300, "m3", 4)];
    store.append(&events[..4], &entries, &[]).expect("appends");
    let (m1, m2, m0, m3) = (&entries[0], &entries[1], &entries[2], &entries[3]);

    let since =
        |timestamp| store.dedup_since(timestamp).expect("since").into_iter().map(|(e, _)| e).collect::<Vec<_>>();
    assert_eq!(since(0), [m1, m0, m2, m3].map(Clone::clone));
    assert_eq!(since(200), [m0, m2, m3].map(Clone::clone));
    assert_eq!(since(201), std::slice::from_ref(m3));
    assert!(since(301).is_empty());
    let revisions: Vec<_> = store.dedup_since(0).expect("since").into_iter().map(|(e, rev)| (e.seq, rev)).collect();
    let expected: Vec<_> = [1, 3, 2, 4].iter().map(|&seq| (seq, Some(events[seq as usize - 1].revision))).collect();
    assert_eq!(revisions, expected, "each entry records its event's revision");

    let key = |e: &DedupEntry| Slice::from([&e.timestamp.to_be_bytes()[..], &e.msg_id[..]].concat());
    assert!(store.dedup_expired(100, 10).expect("expired").is_empty());
    assert_eq!(store.dedup_expired(201, 10).expect("expired"), [key(m1), key(m0), key(m2)]);
    let expired = store.dedup_expired(201, 2).expect("expired");
    assert_eq!(expired, [key(m1), key(m0)]);

    store.append(&events[4..], &[], &expired).expect("appends");
    assert_eq!(since(0), [m2, m3].map(Clone::clone));
    assert_eq!(store.last_seq().expect("last"), 5);
}

// ---- Recovery ----

#[test]
fn reopen_keeps_events_indexes_and_dedup_and_appends_continue() {
    let Fixture { store, mut events, dir } = filled(EVENTS);
    store.append(&[], &[dedup(500, "kept", 9)], &[]).expect("dedup only");
    drop(store);

    let store = open(dir.path()).expect("reopens");
    assert_eq!(store.last_seq().expect("last"), EVENTS);
    for event in &events {
        assert_eq!(store.get(event.seq).expect("get").as_ref(), Some(event));
    }
    assert_eq!(store.dedup_since(0).expect("since"), [(dedup(500, "kept", 9), None)]);

    // Continue the timeline after the reopen, then check everything once more after another.
    let more = make_events(EVENTS + 6).split_off(EVENTS as usize);
    store.append(&more, &[], &[]).expect("appends after reopen");
    store.sync().expect("syncs");
    events.extend(more);
    drop(store);

    let store = open(dir.path()).expect("reopens again");
    let head = EVENTS + 6;
    assert_eq!(store.last_seq().expect("last"), head);
    for text in ["orders.42.created", "orders.>", "orders.*.created", "*.x", ">"] {
        assert_eq!(read_paged(&store, text, 1, head, 4), naive(&events, text, 1, head), "{text} after reopen");
    }
    let expected = events.iter().rfind(|e| &e.subject[..] == b"orders").map(|e| (e.seq, e.revision));
    assert_eq!(store.last_of_subject(b"orders", head).expect("last"), expected);
}

#[test]
fn high_water_mark_follows_checkpoints_and_reopens() {
    let f = filled(10);
    assert_eq!(f.store.high_water_mark(), 0, "appends and syncs alone leave the mark");
    f.store.mark_durable().expect("marks");
    assert_eq!(f.store.high_water_mark(), 7, "filled(10) last synced after event 7");
    f.store.checkpoint().expect("checkpoints");
    assert_eq!(f.store.high_water_mark(), 10);
    let Fixture { store, dir, .. } = f;
    drop(store);

    let store = open(dir.path()).expect("reopens");
    assert_eq!(store.high_water_mark(), 10);
    store.append(&make_events(12)[10..], &[], &[]).expect("appends");
    store.mark_durable().expect("marks");
    assert_eq!(store.high_water_mark(), 10, "an append not yet synced is not marked");
    store.sync().expect("syncs");
    store.mark_durable().expect("marks");
    assert_eq!(store.high_water_mark(), 12);
    store.append(&make_events(16)[12..], &[], &[]).expect("appends");
    drop(store);
    // Start-up checkpoints whatever it found past the mark.
    assert_eq!(open(dir.path()).expect("reopens").high_water_mark(), 16);
}

#[test]
fn reopen_refuses_a_log_shorter_than_the_acknowledged_mark() {
    let Fixture { store, dir, .. } = filled(10);
    store.checkpoint().expect("checkpoints");
    drop(store);
    let mark = dir.path().join("high-water-mark");
    assert_eq!(std::fs::read(&mark).expect("mark"), mark_record(10), "mark format");

    std::fs::write(&mark, mark_record(20)).expect("writes mark");
    let error = open_err(dir.path());
    assert!(matches!(error, StoreError::LostAcknowledged { head: 10, marked: 20 }), "{error:?}");

    // The refusal destroyed nothing: with the true mark back, the log opens whole.
    std::fs::write(&mark, mark_record(10)).expect("writes mark");
    let store = open(dir.path()).expect("reopens");
    assert_eq!((store.last_seq().expect("last"), store.high_water_mark()), (10, 10));
}

#[test]
fn reopen_refuses_a_torn_or_corrupt_mark() {
    let Fixture { store, dir, .. } = filled(10);
    store.checkpoint().expect("checkpoints");
    drop(store);
    let mark = dir.path().join("high-water-mark");
    let good = mark_record(10);

    let mut damaged: Vec<Vec<u8>> = (0..good.len())
        .map(|i| {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            bad
        })
        .collect();
    damaged.extend([good[..6].to_vec(), good[..11].to_vec(), Vec::new()]);
    for bytes in damaged {
        std::fs::write(&mark, &bytes).expect("writes mark");
        let error = open_err(dir.path());
        assert!(matches!(error, StoreError::BadHighWaterMark { .. }), "{bytes:?}: {error:?}");
    }

    std::fs::write(&mark, &good).expect("writes mark");
    let store = open(dir.path()).expect("reopens");
    assert_eq!((store.last_seq().expect("last"), store.high_water_mark()), (10, 10));
}

#[test]
fn half_initialised_directory_opens_as_a_fresh_log() {
    let dir = TempDir::new().expect("temp dir");
    let log = dir.path().join("log");
    std::fs::create_dir_all(log.join("keyspaces")).expect("creates log dir");
    std::fs::write(log.join("journal"), b"\xde\xad\xbe\xef not a journal").expect("writes junk");
    std::fs::write(log.join("keyspaces").join("0"), b"junk").expect("writes junk");

    let store = open(dir.path()).expect("opens a half-initialised dir");
    assert_eq!((store.last_seq().expect("last"), store.high_water_mark()), (0, 0));
    store.append(&make_events(3), &[], &[]).expect("appends");
    drop(store);
    assert_eq!(open(dir.path()).expect("reopens").last_seq().expect("last"), 3);
}

/// Removes from fjall every event after `after` with its index entries, as a crash that lost
/// fjall's unsynced tail would (`after` must end a batch: a fjall batch is atomic).
fn lose_fjall_tail(dir: &Path, after: u64) {
    let db = Database::builder(dir.join("log")).open().expect("opens fjall");
    for name in ["events", "index"] {
        let keyspace = db.keyspace(name, KeyspaceCreateOptions::default).expect("keyspace");
        let keys: Vec<Slice> = keyspace.iter().map(|guard| guard.key().expect("key")).collect();
        for key in keys.into_iter().filter(|key| super::key_seq(key) > after) {
            keyspace.remove(key).expect("removes");
        }
    }
    db.persist(fjall::PersistMode::SyncAll).expect("persists");
}

/// The write-ahead log's segment files.
fn wal_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir.join("wal")).expect("wal dir");
    entries.map(|entry| entry.expect("entry").path()).collect()
}

/// Flips a byte inside the write-ahead log's copy of `needle`, as a bad sector would.
fn damage_wal(dir: &Path, needle: &[u8]) {
    for path in wal_segments(dir) {
        let mut bytes = std::fs::read(&path).expect("reads segment");
        if let Some(at) = bytes.windows(needle.len()).position(|window| window == needle) {
            bytes[at] ^= 0x01;
            std::fs::write(&path, bytes).expect("writes segment");
            return;
        }
    }
    panic!("{} is not in the write-ahead log", String::from_utf8_lossy(needle));
}

#[test]
fn events_only_the_write_ahead_log_holds_are_replayed_at_open() {
    let Fixture { store, events, dir } = filled(300);
    drop(store);
    assert!(wal_segments(dir.path()).len() > 2, "the test spans several segments");
    lose_fjall_tail(dir.path(), 0);

    let store = open(dir.path()).expect("reopens");
    assert_eq!((store.last_seq().expect("last"), store.high_water_mark()), (300, 300));
    for text in FILTERS.split_whitespace() {
        assert_eq!(read_paged(&store, text, 1, 300, 50), naive(&events, text, 1, 300), "{text}");
    }
    let expected = events.iter().rfind(|e| &e.subject[..] == b"orders").map(|e| (e.seq, e.revision));
    assert_eq!(store.last_of_subject(b"orders", 300).expect("last"), expected, "index entries replayed");
}

#[test]
fn checkpointed_segments_are_reused_and_the_tail_after_them_replays() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(dir.path()).expect("opens");
    let events = make_events(650);
    for (i, batch) in events[..600].chunks(10).enumerate() {
        store.append(batch, &[], &[]).expect("appends");
        store.sync().expect("syncs");
        // As the server's checkpoint thread does: the mark follows every sync.
        store.mark_durable().expect("marks");
        if i % 5 == 4 {
            store.checkpoint().expect("checkpoints");
        }
    }
    assert_eq!(store.high_water_mark(), 600);
    // About ten segments' worth went through the log; checkpoints freed them for reuse.
    assert!(wal_segments(dir.path()).len() <= 4, "{} segments", wal_segments(dir.path()).len());
    for batch in events[600..].chunks(10) {
        store.append(batch, &[], &[]).expect("appends");
    }
    store.sync().expect("syncs");
    drop(store);
    lose_fjall_tail(dir.path(), 600);

    let store = open(dir.path()).expect("reopens");
    assert_eq!(store.last_seq().expect("last"), 650);
    assert_eq!(read_paged(&store, ">", 1, 650, 100), events);
}

#[test]
fn recovery_stops_at_a_damaged_record_and_never_resumes_past_it() {
    // Batches end at 7, 27, 28, 35 and 48, so the log's first segment starts with records
    // of 1..=7, 8..=27, 28, 29..=35.
    let Fixture { store, events, dir } = filled(EVENTS);
    drop(store);
    let segment = wal_segments(dir.path()).into_iter().min().expect("a segment");
    let bytes = std::fs::read(&segment).expect("reads segment");
    let record_end =
        |start: usize| start + 8 + u32::from_be_bytes(bytes[start..start + 4].try_into().expect("4")) as usize;
    let (start_28, start_29) = (record_end(record_end(0)), record_end(record_end(record_end(0))));
    let overhead = start_29 - start_28 - events[27].encoded_len();

    // A crash lost fjall's tail after 27 and damaged the log's record of event 28, while
    // the records of 29..=48 after it are intact (never acknowledged: an ack waits for an
    // fsync that covers 28 too).
    lose_fjall_tail(dir.path(), 27);
    damage_wal(dir.path(), b"payload 28");
    let store = open(dir.path()).expect("opens");
    assert_eq!(store.last_seq().expect("last"), 27);
    assert_eq!(read_paged(&store, ">", 1, 48, 100), events[..27]);

    // The log goes on with another event 28, sized so that its record, written over the
    // start of the reused segment, ends exactly where the old record of 29..=35 begins.
    let fixed = events[27].encoded_len() - events[27].payload.len();
    let payload = Bytes::from("y".repeat(start_29 - overhead - fixed));
    let replacement = Event { payload, ..events[27].clone() };
    store.append(std::slice::from_ref(&replacement), &[], &[]).expect("appends");
    drop(store);

    // After the same crash again, the new 28 comes back and none of the old 29..=48.
    lose_fjall_tail(dir.path(), 27);
    let store = open(dir.path()).expect("reopens");
    assert_eq!(store.last_seq().expect("last"), 28);
    assert_eq!(store.get(28).expect("get"), Some(replacement));
}

/// Rewrites stored runs with fjall directly (the `log` dir and `events` keyspace are the
/// documented layout), as a disk or a bug below the store could.
fn tamper(dir: &Path, edit: impl FnOnce(&fjall::Keyspace)) {
    tamper_keyspace(dir, "events", edit);
}

fn tamper_keyspace(dir: &Path, name: &str, edit: impl FnOnce(&fjall::Keyspace)) {
    let db = Database::builder(dir.join("log")).open().expect("opens fjall");
    let keyspace = db.keyspace(name, KeyspaceCreateOptions::default).expect("keyspace");
    edit(&keyspace);
    drop(keyspace);
    drop(db);
}

/// What fjall leaves when it cuts a damaged journal short after the events keyspace was
/// flushed but not the index and dedup ones: their last batches are gone. Start-up must
/// rebuild the index from the events, and the message ids from the write-ahead log while
/// it holds them (else name the range lost).
#[test]
fn keyspaces_that_lost_their_tail_are_rebuilt_or_the_loss_is_named() {
    for wal_covers in [true, false] {
        let dir = TempDir::new().expect("temp dir");
        let store = open(dir.path()).expect("opens");
        let events = make_events(20);
        store.append(&events[..10], &[dedup(100, "early", 3)], &[]).expect("appends");
        store.append(&events[10..], &[dedup(200, "late", 15)], &[]).expect("appends");
        store.sync().expect("syncs");
        store.close();
        drop(store);
        if !wal_covers {
            // As once its segments were reused: everything was checkpointed into fjall.
            std::fs::remove_dir_all(dir.path().join("wal")).expect("removes the write-ahead log");
        }
        for name in ["index", "dedup"] {
            tamper_keyspace(dir.path(), name, |keyspace| {
                let tail: Vec<_> = keyspace
                    .iter()
                    .map(|guard| guard.into_inner().expect("reads"))
                    .filter(|(key, value)| {
                        name == "dedup" && key.ends_with(b"late")
                            || name == "index" && key.len() > 8 && key_seq(key) > 10 && !value.is_empty()
                    })
                    .map(|(key, _)| key)
                    .collect();
                for key in tail {
                    keyspace.remove(key).expect("removes");
                }
                let head = if name == "index" { INDEX_HEAD.to_vec() } else { DEDUP_HEAD.to_vec() };
                keyspace.insert(head, 10u64.to_be_bytes()).expect("writes");
            });
        }
        let store = open(dir.path()).expect("reopens");
        for text in FILTERS.split_whitespace() {
            assert_eq!(read_paged(&store, text, 1, 20, 4), naive(&events, text, 1, 20), "{text} after the rebuild");
        }
        let last = events.iter().rev().find(|e| e.subject == events[19].subject).expect("an event");
        assert_eq!(store.last_of_subject(&last.subject, 20).expect("last"), Some((last.seq, last.revision)));
        let ids: Vec<_> = store.dedup_since(0).expect("since").into_iter().map(|(e, _)| e.msg_id).collect();
        if wal_covers {
            assert_eq!(ids, ["early", "late"], "message ids restored from the write-ahead log");
            assert_eq!(store.lost_dedup(), None);
        } else {
            assert_eq!(ids, ["early"]);
            assert_eq!(store.lost_dedup(), Some(11..=20), "the lost range is named");
        }
    }
}

/// The records (`len u32 | event`) of a stored run, each with its length prefix.
fn records(run: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut rest = run;
    while let Some(len) = rest.get(..4).map(|len| u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize) {
        records.push(rest[..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    records
}

#[test]
fn corrupt_or_misplaced_events_are_never_served() {
    let Fixture { store, events, dir } = filled(10);
    drop(store);
    tamper(dir.path(), |ks| {
        // The first run holds 1..=7. Event 6's record in event 5's place: a valid
        // encoding, but of another sequence.
        let mut run = records(&ks.get(1u64.to_be_bytes()).expect("reads").expect("first run"));
        run[4] = run[5].clone();
        ks.insert(1u64.to_be_bytes(), run.concat()).expect("writes");
    });

    let store = open(dir.path()).expect("only the last event is checked at open");
    assert!(matches!(store.get(5), Err(StoreError::Corrupt { seq: 5 })));
    assert_eq!(store.get(6).expect("get").as_ref(), Some(&events[5]));
    // A read delivers what comes before the damage, and the next one names it.
    let before = store.read(&filter(">"), 1, 10, 100).expect("the events before the damage");
    assert_eq!((before.events, before.next), (events[..4].to_vec(), 5));
    assert!(matches!(store.read(&filter(">"), 5, 10, 100), Err(StoreError::Corrupt { seq: 5 })));
    let subject = std::str::from_utf8(&events[4].subject).expect("utf-8");
    assert!(matches!(store.read(&filter(subject), 1, 10, 100), Err(StoreError::Corrupt { seq: 5 })));
    assert_eq!(read_paged(&store, ">", 6, 10, 100), events[5..]);
}

#[test]
fn reopen_refuses_a_corrupt_last_event() {
    let Fixture { store, dir, .. } = filled(10);
    drop(store);
    tamper(dir.path(), |ks| {
        // The last run holds 8..=10; its last byte is event 10's.
        let mut run = ks.get(8u64.to_be_bytes()).expect("reads").expect("last run").to_vec();
        let last = run.len() - 1;
        run[last] ^= 0x20;
        ks.insert(8u64.to_be_bytes(), run).expect("writes");
    });
    let error = open_err(dir.path());
    assert!(
        matches!(&error, StoreError::Opening { source, .. } if matches!(**source, StoreError::Corrupt { seq: 10 })),
        "{error:?}"
    );
    assert!(error.to_string().contains(&dir.path().join("log").display().to_string()), "names the log: {error}");
}

/// A subject containing 0x00 would sort inside another subject's index range (keys are
/// `subject 0x00 seq`), so subject validation refuses NUL and such a subject never reaches
/// the store; the index answers below stay exact.
#[test]
fn subject_with_nul_byte_never_reaches_the_store() {
    let sneaky: &[u8] = b"a\0\0\0\0\0\0\0\0\x01";
    assert!(Subject::new(Bytes::from_static(sneaky)).is_err());
    assert!(!crate::subject::is_valid_filter(sneaky));
}

/// Losing the `high-water-mark` file must not erase the log: a log with events but no mark
/// was never half-initialised (the mark is created before the first append), so open
/// refuses it instead of wiping it.
#[test]
fn missing_mark_file_with_a_populated_log_is_refused_not_erased() {
    let Fixture { store, dir, .. } = filled(10);
    store.checkpoint().expect("checkpoints");
    drop(store);
    std::fs::remove_file(dir.path().join("high-water-mark")).expect("removes mark");

    assert!(matches!(open(dir.path()), Err(StoreError::MissingHighWaterMark { .. })));
    assert!(dir.path().join("log").exists(), "the log is still there");
}
