//! One-shot queries (`FETCH <sid> <filters> [options]`) as a telnet session, and the `$EL.`
//! request API (`$EL.SUB`, `$EL.FETCH`, `$EL.LAST.<subject>`) driven by async-nats as an
//! application would. Every network wait is under [`TIMEOUT`].

mod common;

use std::future::Future;

use async_nats::{Client, Message, RequestErrorKind, Subscriber};
use bytes::Bytes;
use common::{Hmsg, Raw, TIMEOUT, TestServer, nanos, subject_matches};
use futures::StreamExt;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The subject of the `i`th test event: `q.0`, `q.1`, `q.2` in turn, every fifth `other.x`.
fn subject(i: usize) -> String {
    if i % 5 == 4 { "other.x".to_owned() } else { format!("q.{}", i % 3) }
}

/// Stores 60 events, one `APUB` at a time, and returns the log as `FETCH >` reads it.
async fn sixty_events(raw: &mut Raw) -> Vec<Hmsg> {
    for i in 0..60 {
        assert_eq!(raw.apub(&subject(i), &format!("e{}", i + 1)).await, i as u64 + 1);
    }
    let (log, _) = raw.fetch("log", ">").await;
    assert_eq!(seqs(&log), (1..=60).collect::<Vec<_>>());
    log
}

fn seqs(events: &[Hmsg]) -> Vec<u64> {
    events.iter().map(Hmsg::seq).collect()
}

/// The sequences of `log` matching any of `filters` and `keep`.
fn expected(log: &[Hmsg], filters: &[&str], keep: impl Fn(&Hmsg) -> bool) -> Vec<u64> {
    log.iter().filter(|e| filters.iter().any(|f| subject_matches(f, &e.subject)) && keep(e)).map(Hmsg::seq).collect()
}

fn stamp(event: &Hmsg) -> &str {
    event.header("Nats-Time-Stamp").expect("a Nats-Time-Stamp header")
}

/// The `Eventline-Count` and `Nats-Last-Sequence` of an end status.
fn count_and_last(end: &Hmsg) -> (u64, u64) {
    (end.number("Eventline-Count"), end.number("Nats-Last-Sequence"))
}

// ---------------------------------------------------------------------------------------------
// FETCH

/// Whole filters, sequence ranges, limits and paging with `Nats-Last-Sequence`.
#[tokio::test]
async fn fetch_ranges_limits_and_paging() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    let log = sixty_events(&mut raw).await;
    let all_q = expected(&log, &["q.>"], |_| true);

    let (events, end) = raw.fetch("1", "q.>").await;
    assert_eq!(seqs(&events), all_q);
    assert_eq!((end.subject.as_str(), end.sid.as_str()), ("q.>", "1"), "the end status names the filters");
    assert_eq!(count_and_last(&end), (all_q.len() as u64, 60));
    for event in &events {
        let stored = &log[event.seq() as usize - 1];
        assert_eq!(
            (&event.subject, &event.payload, &event.headers),
            (&stored.subject, &stored.payload, &stored.headers)
        );
        assert_eq!(event.header("Nats-Subject"), Some(event.subject.as_str()));
        assert!(event.header("Eventline-Revision").is_some(), "{event:?}");
    }

    let (events, end) = raw.fetch("2", "q.> from-seq=10 to-seq=20").await;
    assert_eq!(seqs(&events), expected(&log, &["q.>"], |e| (10..=20).contains(&e.seq())));
    assert_eq!(count_and_last(&end), (events.len() as u64, 20));
    let (events, end) = raw.fetch("2", "q.1 to-seq=1000").await;
    assert_eq!((seqs(&events), count_and_last(&end).1), (expected(&log, &["q.1"], |_| true), 60));

    let (events, end) = raw.fetch("3", "q.> limit=5").await;
    assert_eq!(seqs(&events), all_q[..5]);
    assert_eq!(count_and_last(&end), (5, all_q[4]), "the last sequence is where the next page starts");

    let mut paged = Vec::new();
    let mut from = 1;
    for _ in 0..all_q.len() {
        let (page, end) = raw.fetch("4", &format!("q.> from-seq={from} limit=7")).await;
        let (count, last) = count_and_last(&end);
        assert_eq!(count, page.len() as u64);
        assert!(count <= 7, "a page of {count}");
        if count == 0 {
            break;
        }
        paged.extend(seqs(&page));
        from = last + 1;
    }
    assert_eq!(paged, all_q, "pages of 7 cover every match once");

    for (args, last) in [("q.> limit=0", None), ("nothing.here", Some(60)), ("q.> from-seq=61", None)] {
        let (events, end) = raw.fetch("5", args).await;
        assert!(events.is_empty(), "FETCH 5 {args}: {events:?}");
        assert_eq!(end.number("Eventline-Count"), 0, "FETCH 5 {args}");
        if let Some(last) = last {
            assert_eq!(end.number("Nats-Last-Sequence"), last, "FETCH 5 {args}");
        }
    }
    assert_eq!(raw.sync().await, Vec::<String>::new());
}

/// `since` (inclusive) and `until` (exclusive) taken from the events' own time stamps.
#[tokio::test]
async fn fetch_time_ranges() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    let log = sixty_events(&mut raw).await;
    let (since, until) = (stamp(&log[19]).to_owned(), stamp(&log[39]).to_owned());
    let (from, to) = (nanos(&since), nanos(&until));
    let time = |e: &Hmsg| nanos(stamp(e));

    let (events, end) = raw.fetch("1", &format!("q.> since={since} until={until}")).await;
    let wanted = expected(&log, &["q.>"], |e| time(e) >= from && time(e) < to);
    assert!(wanted.len() > 10 && wanted.iter().all(|s| (20..40).contains(s)), "{wanted:?}");
    assert_eq!(seqs(&events), wanted);
    assert_eq!(end.number("Eventline-Count"), wanted.len() as u64);

    let (events, _) = raw.fetch("2", &format!("> since={since}")).await;
    assert_eq!(seqs(&events), expected(&log, &[">"], |e| time(e) >= from));
    let (events, _) = raw.fetch("3", &format!("other.x until={until}")).await;
    assert_eq!(seqs(&events), expected(&log, &["other.x"], |e| time(e) < to));
    let (events, end) = raw.fetch("4", "> since=2100-01-01T00:00:00Z").await;
    assert_eq!((events.len(), end.number("Eventline-Count")), (0, 0));
    let (events, _) = raw.fetch("5", &format!("> since={since} from-seq=30 limit=3")).await;
    assert_eq!(seqs(&events), expected(&log, &[">"], |e| time(e) >= from && e.seq() >= 30)[..3]);
}

/// Several filters merge in sequence order, each event once however many filters match it.
#[tokio::test]
async fn fetch_merges_several_filters() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    let log = sixty_events(&mut raw).await;

    let (events, end) = raw.fetch("1", "q.0,other.x").await;
    assert_eq!(seqs(&events), expected(&log, &["q.0", "other.x"], |_| true));
    assert_eq!(end.subject, "q.0,other.x");
    let (events, end) = raw.fetch("2", "q.>,q.1,>,other.*").await;
    assert_eq!(seqs(&events), (1..=60).collect::<Vec<_>>(), "no duplicates");
    assert_eq!(count_and_last(&end), (60, 60));

    let both = expected(&log, &["q.2", "other.x"], |_| true);
    let (events, end) = raw.fetch("3", "q.2,other.x from-seq=5 limit=4").await;
    let from_five: Vec<u64> = both.iter().copied().filter(|&s| s >= 5).collect();
    assert_eq!(seqs(&events), from_five[..4]);
    let next = count_and_last(&end).1 + 1;
    let (events, _) = raw.fetch("3", &format!("q.2,other.x from-seq={next} limit=4")).await;
    assert_eq!(seqs(&events), from_five[4..8], "the next page continues after Nats-Last-Sequence");
}

/// An event published with headers replays with them, followed by the log's headers.
#[tokio::test]
async fn fetched_events_keep_their_own_headers() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    let headers = "NATS/1.0\r\nX-Trace: abc\r\n\r\n";
    raw.send(&format!("HPUB h.1 {} {}\r\n{headers}body\r\n", headers.len(), headers.len() + 4)).await;
    assert_eq!(raw.sync().await, Vec::<String>::new());
    let (events, _) = raw.fetch("1", "h.1").await;
    let [event] = events.as_slice() else { panic!("one event expected: {events:?}") };
    assert!(event.headers.starts_with("NATS/1.0\r\nX-Trace: abc\r\nNats-Sequence: 1\r\n"), "{event:?}");
    assert_eq!((event.payload.as_slice(), event.header("Nats-Subject")), (&b"body"[..], Some("h.1")));
}

/// A query that does not parse is refused with `-NAK`; the connection stays open.
#[tokio::test]
async fn bad_queries_are_refused() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    let refusals = [
        ("q.> colour=red", "-NAK 'unknown option colour'"),
        ("q.> limit=x", "-NAK 'option limit needs a non-negative integer'"),
        ("q.> limit=-1", "-NAK 'option limit needs a non-negative integer'"),
        ("q.> from-seq", "-NAK 'option from-seq is not key=value'"),
        ("q.> since=yesterday", "-NAK 'invalid time yesterday"),
        ("q..x", "-NAK 'invalid filter q..x: "),
        ("q.>,a.>.b", "-NAK 'invalid filter a.>.b: "),
        (",", "-NAK 'a query needs at least one subject filter'"),
    ];
    for (args, refusal) in refusals {
        raw.send(&format!("FETCH 1 {args}\r\n")).await;
        let line = raw.line().await;
        assert!(line.starts_with(refusal), "FETCH 1 {args}: expected {refusal:?}, got {line:?}");
    }
    assert_eq!(raw.sync().await, Vec::<String>::new(), "still open");
    let (events, end) = raw.fetch("1", "q.>").await;
    assert_eq!((events.len(), end.number("Eventline-Count")), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// The $EL. request API through async-nats

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future).await.expect("network wait exceeded TIMEOUT")
}

/// A client that has stored `orders.0.created`, `orders.1.created`, ... in turn (ten events,
/// payloads `o1` to `o10`), and synced: a request nobody answers on a volatile subject,
/// ended by the 503 status the server sends once the client's publishes are delivered.
async fn client_with_orders(server: &TestServer) -> Client {
    let client = within(async_nats::connect(server.url())).await.expect("async-nats connects");
    for i in 0..10 {
        within(client.publish(format!("orders.{}.created", i % 2), format!("o{}", i + 1).into())).await.expect("pub");
    }
    let sync = within(client.request(format!("$SYNC.{}", client.new_inbox()), Bytes::new())).await;
    assert_eq!(sync.expect_err("nobody answers").kind(), RequestErrorKind::NoResponders);
    client
}

async fn subscribe(client: &Client, subject: &str) -> Subscriber {
    within(client.subscribe(subject.to_owned())).await.expect("subscribe")
}

async fn next(sub: &mut Subscriber) -> Message {
    within(sub.next()).await.expect("subscription ended while a message was expected")
}

/// A `$`-API request answered with JSON.
async fn request_json(client: &Client, subject: &str, body: &Value) -> Value {
    let reply = within(client.request(subject.to_owned(), Bytes::from(body.to_string())))
        .await
        .unwrap_or_else(|e| panic!("no reply to {subject} {body}: {e}"));
    serde_json::from_slice(&reply.payload).expect("a JSON reply")
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|value| value.as_str())
}

fn seq_of(message: &Message) -> u64 {
    header(message, "Nats-Sequence").and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no seq: {message:?}"))
}

/// Reads events up to a status message; returns the events and the status.
async fn until_status(sub: &mut Subscriber) -> (Vec<Message>, Message) {
    let mut events = Vec::new();
    loop {
        let message = next(sub).await;
        if message.status.is_some() {
            return (events, message);
        }
        events.push(message);
    }
}

/// `$EL.SUB` replays on the requester's subscription to `deliver`, marks the handover on
/// the deliver subject, then goes live.
#[tokio::test]
async fn el_sub_replays_then_goes_live_on_the_deliver_subscription() {
    let server = TestServer::start().await;
    let client = client_with_orders(&server).await;
    let deliver = client.new_inbox();
    let mut sub = subscribe(&client, &deliver).await;
    let request = json!({"filter": "orders.>", "start": "0", "deliver": deliver});
    let answer = request_json(&client, "$EL.SUB", &request).await;
    assert_eq!((&answer["ok"], &answer["filter"], &answer["head"]), (&json!(true), &json!("orders.>"), &json!(10)));

    let (events, marker) = until_status(&mut sub).await;
    assert_eq!(events.iter().map(seq_of).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    for (i, event) in events.iter().enumerate() {
        let subject = format!("orders.{}.created", i % 2);
        assert_eq!((event.subject.as_str(), &event.payload[..]), (subject.as_str(), format!("o{}", i + 1).as_bytes()));
        assert_eq!(header(event, "Nats-Subject"), Some(subject.as_str()));
        assert_eq!(header(event, "Eventline-Revision"), Some((i / 2 + 1).to_string().as_str()));
        assert!(header(event, "Nats-Time-Stamp").is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()), "{event:?}");
    }
    assert_eq!(marker.status.map(|s| s.as_u16()), Some(100));
    assert_eq!((marker.subject.as_str(), marker.description.as_deref()), (deliver.as_str(), Some("Caught Up")));
    assert_eq!(header(&marker, "Nats-Last-Sequence"), Some("10"));

    within(client.publish("orders.7.shipped", "live".into())).await.expect("pub");
    let live = next(&mut sub).await;
    assert_eq!((seq_of(&live), live.subject.as_str()), (11, "orders.7.shipped"));

    // A numeric start, and `last`.
    for (start, replayed) in [(json!(9), vec![9, 10, 11]), (json!("last"), vec![9, 10, 11])] {
        let deliver = client.new_inbox();
        let mut sub = subscribe(&client, &deliver).await;
        let answer =
            request_json(&client, "$EL.SUB", &json!({"filter": ">", "start": start, "deliver": deliver})).await;
        assert_eq!(answer["ok"], json!(true), "{answer}");
        let (events, marker) = until_status(&mut sub).await;
        assert_eq!(events.iter().map(seq_of).collect::<Vec<_>>(), replayed, "start {start}");
        assert_eq!(header(&marker, "Nats-Last-Sequence"), Some("11"));
    }
}

/// A `$EL.SUB` that cannot start answers a JSON error and starts nothing.
#[tokio::test]
async fn el_sub_errors_are_json() {
    let server = TestServer::start().await;
    let client = client_with_orders(&server).await;
    let deliver = client.new_inbox();
    let _sub = subscribe(&client, &deliver).await;
    let cases = [
        (json!({"filter": ">", "start": "yesterday", "deliver": deliver}), "invalid start position yesterday"),
        (json!({"filter": ">", "start": 12, "deliver": deliver}), "start sequence 12 is beyond the head 10"),
        (json!({"filter": "a..b", "start": "0", "deliver": deliver}), "invalid filter a..b: "),
        (json!({"filter": ">", "start": "0", "deliver": "nobody.here"}), "no subscription of this connection matches"),
        (json!({"filter": ">", "start": -1, "deliver": deliver}), "invalid start position -1"),
        (json!({"filter": ">", "deliver": deliver}), "invalid request: "),
        (json!({"filter": ">", "start": "0", "deliver": deliver, "colour": "red"}), "invalid request: "),
    ];
    for (request, reason) in cases {
        let answer = request_json(&client, "$EL.SUB", &request).await;
        assert_eq!(answer["error"]["code"], json!(400), "{request}: {answer}");
        let description = answer["error"]["description"].as_str().unwrap_or_default();
        assert!(description.starts_with(reason), "{request}: expected {reason:?}, got {description:?}");
    }
    let reply = within(client.request("$EL.SUB", "not json".into())).await.expect("a reply");
    let answer: Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert!(answer["error"]["description"].as_str().is_some_and(|d| d.starts_with("invalid request: ")), "{answer}");
}

/// `$EL.FETCH` delivers its results and the `204` end status on the requester's
/// subscription to the reply subject.
#[tokio::test]
async fn el_fetch_delivers_results_then_the_end_status() {
    let server = TestServer::start().await;
    let client = client_with_orders(&server).await;
    let inbox = client.new_inbox();
    let mut sub = subscribe(&client, &inbox).await;
    let query = json!({"filters": ["orders.1.created", "orders.0.created"], "from_seq": 3, "to_seq": 9, "limit": 4});
    within(client.publish_with_reply("$EL.FETCH", inbox.clone(), query.to_string().into())).await.expect("pub");
    let (events, end) = until_status(&mut sub).await;
    assert_eq!(events.iter().map(seq_of).collect::<Vec<_>>(), [3, 4, 5, 6]);
    assert_eq!(&events[0].payload[..], b"o3");
    assert_eq!((end.status.map(|s| s.as_u16()), end.subject.as_str()), (Some(204), inbox.as_str()));
    assert_eq!((header(&end, "Eventline-Count"), header(&end, "Nats-Last-Sequence")), (Some("4"), Some("6")));

    let time = |seq: usize| header(&events[seq - 3], "Nats-Time-Stamp").expect("time").to_owned();
    let query = json!({"filters": [">"], "since": time(4), "until": time(6)});
    within(client.publish_with_reply("$EL.FETCH", inbox.clone(), query.to_string().into())).await.expect("pub");
    let (events, end) = until_status(&mut sub).await;
    let wanted = (nanos(&time(4)), nanos(&time(6)));
    let got: Vec<u64> = events.iter().map(seq_of).collect();
    assert!(got.contains(&4) && !got.contains(&6), "since is inclusive, until exclusive: {got:?}");
    for event in &events {
        let at = nanos(header(event, "Nats-Time-Stamp").expect("time"));
        assert!(at >= wanted.0 && at < wanted.1, "{event:?}");
    }
    assert_eq!(header(&end, "Eventline-Count"), Some(got.len().to_string().as_str()));

    for (query, reason) in [
        (json!({"filters": ["a..b"]}), "invalid filter a..b"),
        (json!({"filters": []}), "a query needs at least one subject filter"),
        (json!({"filters": [">"], "since": "yesterday"}), "invalid time yesterday"),
        (json!({"filter": ">"}), "invalid request: "),
    ] {
        within(client.publish_with_reply("$EL.FETCH", inbox.clone(), query.to_string().into())).await.expect("pub");
        let reply = next(&mut sub).await;
        let answer: Value = serde_json::from_slice(&reply.payload).expect("a JSON error");
        let description = answer["error"]["description"].as_str().unwrap_or_default();
        assert!(description.starts_with(reason), "{query}: expected {reason:?}, got {answer}");
    }
}

/// `$EL.LAST.<subject>` answers the subject's last event with its headers, on the reply
/// subject, so `request` gets it; an unknown subject answers `404 No Messages`.
#[tokio::test]
async fn el_last_answers_the_last_event_or_404() {
    let server = TestServer::start().await;
    let client = client_with_orders(&server).await;

    let inbox = client.new_inbox();
    let mut sub = subscribe(&client, &inbox).await;
    within(client.publish_with_reply("$EL.LAST.orders.0.created", inbox.clone(), Bytes::new())).await.expect("pub");
    let last = next(&mut sub).await;
    assert_eq!((seq_of(&last), &last.payload[..]), (9, &b"o9"[..]));
    assert_eq!(header(&last, "Eventline-Revision"), Some("5"));

    let missing = within(client.request("$EL.LAST.nothing.here", Bytes::new())).await.expect("a 404 reply");
    assert_eq!(missing.status.map(|s| s.as_u16()), Some(404), "{missing:?}");
    assert_eq!(missing.description.as_deref(), Some("No Messages"));

    let reply = within(client.request("$EL.LAST.orders.1.created", Bytes::new())).await.expect("the last event");
    assert_eq!((seq_of(&reply), &reply.payload[..]), (10, &b"o10"[..]));
    assert_eq!(header(&reply, "Nats-Subject"), Some("orders.1.created"));
}

/// On the wire: `$EL.LAST.<subject>` answers with a message on the request's reply subject
/// (the event's own subject is in `Nats-Subject`), as a request/reply answer must be.
#[tokio::test]
async fn el_last_answers_on_the_reply_subject() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    assert_eq!(raw.apub("orders.1", "x").await, 1);
    raw.send("SUB _INBOX.r.* 1\r\nPUB $EL.LAST.orders.1 _INBOX.r.7 0\r\n\r\n").await;
    let last = raw.hmsg().await;
    assert_eq!((last.subject.as_str(), last.sid.as_str(), last.seq()), ("_INBOX.r.7", "1", 1), "{last:?}");
    assert_eq!(last.header("Nats-Subject"), Some("orders.1"));
}

/// A `$EL.` error answer reaches a reply subscription the requester made just before, even
/// behind its own publishes still being stored (client libraries subscribe, then publish the
/// request at once).
#[tokio::test]
async fn el_error_reaches_a_reply_subscription_made_behind_publishes_in_flight() {
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    let publishes: String = (0..100).map(|_| "PUB orders.2 1\r\ny\r\n").collect();
    let body = r#"{"filter":">","start":"yesterday","deliver":"_INBOX.s.1"}"#;
    raw.send(&format!("{publishes}SUB _INBOX.s.* 2\r\nPUB $EL.SUB _INBOX.s.1 {}\r\n{body}\r\n", body.len())).await;
    let lines = raw.sync().await;
    assert!(lines.first().is_some_and(|l| l.starts_with("MSG _INBOX.s.1 2 ")), "no error reply: {lines:?}");
    assert!(lines.get(1).is_some_and(|l| l.contains("invalid start position yesterday")), "{lines:?}");
}

/// A connection may run 16 queries at once: the 17th, sent while 16 are held up by a
/// client that does not read yet, is refused with 429's text, and once they are done a
/// new one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_runs_at_most_16_queries_at_once() {
    const EVENTS: usize = 40;
    let server = TestServer::start().await;
    let mut raw = Raw::with_headers(server.addr).await;
    // 10 MiB per query: more than the socket and the lagging mark take, so each query
    // waits for the client to read.
    let payload = "x".repeat(256 * 1024);
    for i in 0..EVENTS {
        assert_eq!(raw.apub("big.events", &payload).await, i as u64 + 1);
    }
    let requests: String = (1..=17).map(|sid| format!("FETCH {sid} big.events\r\n")).collect();
    raw.send(&requests).await;
    let (mut events, mut ends, mut refusals) = (0, 0, Vec::new());
    while ends < 16 {
        match raw.incoming().await {
            common::Incoming::Msg(msg) if msg.status().is_some() => ends += 1,
            common::Incoming::Msg(_) => events += 1,
            common::Incoming::Line(line) => refusals.push(line),
        }
    }
    assert_eq!(events, 16 * EVENTS, "16 queries ran whole");
    assert_eq!(refusals, vec!["-NAK 'too many queries on this connection: at most 16'"]);
    let (again, _) = raw.fetch("18", "big.events limit=1").await;
    assert_eq!(again.len(), 1, "a query runs again once the others are done");
}
