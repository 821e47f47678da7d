//! The timeline as a client sees it: `APUB` acknowledgements, sequences and revisions,
//! publish conditions, deduplication, volatile subjects, the `$EL.PUB` API, restarts on the
//! same data directory, and op order within a connection. Each test runs the real server on
//! port 0 and reads like a telnet transcript; every network wait is under [`TIMEOUT`].
//!
//! Messages a test expects NOT to be delivered are checked with a subscriber's `sync()`
//! after the publisher's `+ACK`/`-NAK`/`PONG`: the writer fans an event out before it
//! answers, so anything delivered is already queued ahead of the subscriber's `PONG`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use common::{Raw, TIMEOUT, TestServer, nanos, parse_ack};
use eventline::config::{BrokerConfig, Config, FsyncPolicy, ListenerConfig, StoreConfig};
use eventline::subject::Filter;
use futures::{FutureExt, StreamExt};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `CONNECT` for publishers: quiet, and allowed to send header blocks.
const WITH_HEADERS: &str = r#"{"verbose":false,"pedantic":false,"headers":true}"#;

async fn publisher(server: &TestServer) -> Raw {
    Raw::connect_with(server.addr, WITH_HEADERS).await
}

/// A quiet subscriber that negotiated headers (so a plain `MSG` shows that nothing was
/// added to a stored event), subscribed to each `(subject, sid)` and synced so the
/// subscriptions are active.
async fn subscriber(server: &TestServer, subscriptions: &[(&str, &str)]) -> Raw {
    let mut client = Raw::connect_with(server.addr, WITH_HEADERS).await;
    for (subject, sid) in subscriptions {
        client.send(&format!("SUB {subject} {sid}\r\n")).await;
    }
    assert_eq!(client.sync().await, Vec::<String>::new());
    client
}

/// `APUB <subject> <#bytes> [options]` and its payload.
fn apub(subject: &str, options: &str, payload: &str) -> String {
    format!("APUB {subject} {}{}\r\n{payload}\r\n", payload.len(), with_space(options))
}

/// `APUB <subject> <#header bytes> <#total bytes> [options]`, a header block and a payload.
fn apub_headers(subject: &str, headers: &[(&str, &str)], options: &str, payload: &str) -> String {
    let block = header_block(headers);
    let total = block.len() + payload.len();
    format!("APUB {subject} {} {total}{}\r\n{block}{payload}\r\n", block.len(), with_space(options))
}

/// `HPUB <subject> <#header bytes> <#total bytes>`, a header block and a payload.
fn hpub(subject: &str, headers: &[(&str, &str)], payload: &str) -> String {
    let block = header_block(headers);
    format!("HPUB {subject} {} {}\r\n{block}{payload}\r\n", block.len(), block.len() + payload.len())
}

fn pub_(subject: &str, payload: &str) -> String {
    format!("PUB {subject} {}\r\n{payload}\r\n", payload.len())
}

fn header_block(headers: &[(&str, &str)]) -> String {
    let mut block = String::from("NATS/1.0\r\n");
    for (name, value) in headers {
        block.push_str(&format!("{name}: {value}\r\n"));
    }
    block.push_str("\r\n");
    block
}

fn with_space(options: &str) -> String {
    if options.is_empty() { String::new() } else { format!(" {options}") }
}

fn ack(seq: u64, rev: u64) -> String {
    format!("+ACK seq={seq} rev={rev}")
}

fn duplicate(seq: u64, rev: u64) -> String {
    format!("+ACK seq={seq} rev={rev} duplicate")
}

fn nak(reason: &str) -> String {
    format!("-NAK '{reason}'")
}

/// The two lines of a plain `MSG` delivery.
fn msg(subject: &str, sid: &str, payload: &str) -> [String; 2] {
    [format!("MSG {subject} {sid} {}", payload.len()), payload.to_owned()]
}

/// The lines of an `HMSG` delivery of a message published with `headers`, read line by line.
fn hmsg(subject: &str, sid: &str, headers: &[(&str, &str)], payload: &str) -> Vec<String> {
    let block = header_block(headers);
    let mut lines = vec![format!("HMSG {subject} {sid} {} {}", block.len(), block.len() + payload.len())];
    lines.extend(block.split("\r\n").take(headers.len() + 2).map(str::to_owned));
    lines.push(payload.to_owned());
    lines
}

fn msgs<const N: usize>(deliveries: [[String; 2]; N]) -> Vec<String> {
    deliveries.into_iter().flatten().collect()
}

/// Sends one `APUB` (as built by [`apub`]) and returns the answer line.
async fn request(client: &mut Raw, apub_text: &str) -> String {
    client.send(apub_text).await;
    client.line().await
}

/// A round trip through the server on an async-nats connection: a request nobody answers
/// ends with the no-responders status, queued behind everything routed to the client
/// before. Its subject is a fresh inbox, so it is volatile and takes no sequence.
async fn sync_nats(client: &async_nats::Client) {
    let error = within(client.request(client.new_inbox(), Bytes::new())).await.expect_err("nobody answers");
    assert_eq!(error.kind(), async_nats::RequestErrorKind::NoResponders, "sync round trip: {error}");
}

/// Awaits `future`, failing the test if it takes longer than [`TIMEOUT`].
async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future).await.expect("network wait exceeded TIMEOUT")
}

// ---------------------------------------------------------------------------------------
// 1. APUB acknowledgements
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn apub_acks_gapless_sequences_across_subjects_and_revisions_per_subject() {
    let server = TestServer::start().await;
    let mut sub = subscriber(&server, &[("orders.>", "1")]).await;
    let mut client = publisher(&server).await;

    // >> APUB orders.1 5 / first   << +ACK seq=1 rev=1
    assert_eq!(request(&mut client, &apub("orders.1", "", "first")).await, ack(1, 1));
    assert_eq!(request(&mut client, &apub("orders.2", "", "second")).await, ack(2, 1));
    assert_eq!(request(&mut client, &apub("orders.1", "", "third")).await, ack(3, 2));
    assert_eq!(request(&mut client, &apub("customers.9", "", "fourth")).await, ack(4, 1));
    assert_eq!(request(&mut client, &apub("orders.2", "", "fifth")).await, ack(5, 2));
    assert_eq!(request(&mut client, &apub("orders.1", "", "")).await, ack(6, 3), "an empty payload is an event");

    // The subscriber sees plain NATS deliveries, in sequence order, and nothing else.
    let expected = msgs([
        msg("orders.1", "1", "first"),
        msg("orders.2", "1", "second"),
        msg("orders.1", "1", "third"),
        msg("orders.2", "1", "fifth"),
        msg("orders.1", "1", ""),
    ]);
    assert_eq!(sub.sync().await, expected);
}

#[tokio::test]
async fn apub_pipelined_in_one_write_is_acked_in_order() {
    let server = TestServer::start().await;
    let mut client = publisher(&server).await;

    let mut burst = String::new();
    for i in 0..100 {
        burst.push_str(&apub(&format!("burst.{}", i % 3), "", &format!("event {i}")));
    }
    client.send(&burst).await;
    for i in 0..100u64 {
        assert_eq!(client.line().await, ack(i + 1, i / 3 + 1), "ack of event {i}");
    }
}

#[tokio::test]
async fn a_refused_apub_is_answered_after_the_acks_of_the_apubs_before_it() {
    let server = TestServer::start().await;
    let mut client = publisher(&server).await;

    // One write: the refusals are decided on the spot, the acks only once stored.
    let burst = [
        apub("order.a", "", "one"),
        apub("_INBOX.x", "", "volatile"),
        apub("order.a", "", "two"),
        apub("order.*", "", "wildcard"),
        apub("order.a", "expect-rev=x", "bad option"),
        apub("order.a", "", "three"),
    ];
    client.send(&burst.concat()).await;
    client
        .expect_lines(&[
            &ack(1, 1),
            &nak("subject _INBOX.x is volatile: it is delivered but never stored"),
            &ack(2, 2),
            &nak("invalid subject: wildcard not allowed"),
            &nak("option expect-rev needs a non-negative integer"),
            &ack(3, 3),
        ])
        .await;
}

#[tokio::test]
async fn acks_to_a_publisher_that_reads_late_are_all_there_in_order() {
    let server = TestServer::start().await;
    let mut client = publisher(&server).await;

    // Enough acks to fill the socket buffers while the client does not read, so they are
    // written in pieces, partly by the writer task.
    let count = 60_000u64;
    let burst: String = (0..count).map(|i| apub("late.reader", "", &i.to_string())).collect();
    client.send(&burst).await;
    for seq in 1..=count {
        assert_eq!(client.line().await, ack(seq, seq), "ack {seq}");
    }
    assert_eq!(client.sync().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_publisher_subscribed_to_its_own_subject_gets_the_msg_before_the_ack() {
    let server = TestServer::start().await;
    let mut client = publisher(&server).await;

    client.send("SUB echo.x 9\r\n").await;
    client.send(&apub("echo.x", "", "hi")).await;
    // The writer delivers an event live before it acknowledges it. (The publisher
    // negotiated headers; nothing was published with any, so this is still a MSG.)
    client.expect_lines(&["MSG echo.x 9 2", "hi", &ack(1, 1)]).await;
}

// ---------------------------------------------------------------------------------------
// 2. Restart on the same data directory
// ---------------------------------------------------------------------------------------

/// Publishes on a fresh log, stops, restarts on the same directory with `fsync` (and the
/// rest of `config`), and checks sequences, revisions and the dedup window carried over.
async fn restart_continues_the_log(fsync: FsyncPolicy, config: Config) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config { store: StoreConfig { fsync, ..StoreConfig::default() }, ..config };

    let server = TestServer::start_in(dir.path(), config.clone()).await;
    let mut client = publisher(&server).await;
    assert_eq!(request(&mut client, &apub("a.1", "", "one")).await, ack(1, 1));
    assert_eq!(request(&mut client, &apub("a.2", "msg-id=m1", "two")).await, ack(2, 1));
    // Plain PUBs are stored too; PONG comes once they are.
    client.send(&pub_("a.1", "three")).await;
    client.send(&pub_("b.1", "four")).await;
    client.send(&hpub("b.2", &[("Nats-Msg-Id", "m2")], "five")).await;
    assert_eq!(client.sync().await, Vec::<String>::new());
    drop(client);
    server.stop().await;

    let server = TestServer::start_in(dir.path(), config).await;
    let mut sub = subscriber(&server, &[(">", "1")]).await;
    let mut client = publisher(&server).await;
    // Message ids from before the restart are still in the window, with their sequences.
    assert_eq!(request(&mut client, &apub("a.2", "msg-id=m1", "two again")).await, duplicate(2, 1));
    assert_eq!(request(&mut client, &apub("b.2", "msg-id=m2", "five again")).await, duplicate(5, 1));
    // The log goes on from seq 5 (a.1 at rev 2 and b.1 at rev 1 came from plain PUBs).
    assert_eq!(request(&mut client, &apub("a.1", "", "six")).await, ack(6, 3));
    assert_eq!(request(&mut client, &apub("b.1", "", "seven")).await, ack(7, 2));
    assert_eq!(request(&mut client, &apub("c.1", "", "eight")).await, ack(8, 1));
    assert_eq!(request(&mut client, &apub("a.2", "", "nine")).await, ack(9, 2));
    // Conditions see the log from before the restart.
    assert_eq!(request(&mut client, &apub("a.1", "expect-subject-seq=6", "ten")).await, ack(10, 4));
    assert_eq!(
        request(&mut client, &apub("b.2", "expect-rev=0", "x")).await,
        nak("wrong revision: expected 0, actual 1")
    );
    let expected = msgs([
        msg("a.1", "1", "six"),
        msg("b.1", "1", "seven"),
        msg("c.1", "1", "eight"),
        msg("a.2", "1", "nine"),
        msg("a.1", "1", "ten"),
    ]);
    assert_eq!(sub.sync().await, expected, "duplicates and rejections are not delivered");
    drop((client, sub));
    server.stop().await;
}

#[tokio::test]
async fn restart_continues_sequences_revisions_and_dedup_fsync_always() {
    restart_continues_the_log(FsyncPolicy::Always, Config::default()).await;
}

/// The write path answers and delivers the same without either of its wake-up savings (the
/// writer's look before parking, direct socket writes), as it must for TLS connections.
#[tokio::test]
async fn restart_continues_the_log_without_writer_spin_or_direct_writes() {
    let config = Config {
        listener: ListenerConfig { direct_writes: false, ..ListenerConfig::default() },
        broker: BrokerConfig { writer_spin: Duration::ZERO, ..BrokerConfig::default() },
        ..Config::default()
    };
    restart_continues_the_log(FsyncPolicy::Always, config).await;
}

#[tokio::test]
async fn restart_continues_sequences_revisions_and_dedup_fsync_never() {
    restart_continues_the_log(FsyncPolicy::Never, Config::default()).await;
}

#[tokio::test]
async fn restart_continues_sequences_revisions_and_dedup_fsync_interval() {
    restart_continues_the_log(FsyncPolicy::Interval(Duration::from_millis(20)), Config::default()).await;
}

// ---------------------------------------------------------------------------------------
// 3. Conditions, one kind at a time
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn each_condition_accepts_when_it_holds_and_naks_with_the_actual_value() {
    let server = TestServer::start().await;
    let mut sub = subscriber(&server, &[("x.>", "1")]).await;
    let mut client = publisher(&server).await;

    // (options, subject, expected answer); payloads are numbered so deliveries can be told apart.
    let transcript: &[(&str, &str, String)] = &[
        // expect-seq: the log's last sequence.
        ("expect-seq=0", "x.a", ack(1, 1)),
        ("expect-seq=0", "x.b", nak("wrong last sequence: expected 0, actual 1")),
        ("expect-seq=5", "x.b", nak("wrong last sequence: expected 5, actual 1")),
        ("expect-seq=1", "x.b", ack(2, 1)),
        // expect-subject-seq: the subject's last sequence, 0 for a new subject.
        ("expect-subject-seq=1", "x.a", ack(3, 2)),
        ("expect-subject-seq=1", "x.a", nak("wrong last subject sequence: expected 1, actual 3")),
        ("expect-subject-seq=0", "x.a", nak("wrong last subject sequence: expected 0, actual 3")),
        ("expect-subject-seq=0", "x.c", ack(4, 1)),
        ("expect-subject-seq=9", "x.new", nak("wrong last subject sequence: expected 9, actual 0")),
        // expect-rev: the subject's last revision, 0 for a new subject.
        ("expect-rev=2", "x.a", ack(5, 3)),
        ("expect-rev=2", "x.a", nak("wrong revision: expected 2, actual 3")),
        ("expect-rev=0", "x.a", nak("wrong revision: expected 0, actual 3")),
        ("expect-rev=0", "x.d", ack(6, 1)),
        ("expect-rev=1", "x.new", nak("wrong revision: expected 1, actual 0")),
        // unchanged-since: nothing matching the filter after the sequence.
        ("unchanged-since=5:x.a", "x.e", ack(7, 1)),
        ("unchanged-since=4:x.a", "x.e", nak("x.a changed after 4: sequence 5")),
        ("unchanged-since=0:x.a", "x.a", nak("x.a changed after 0: sequence 5")),
        ("unchanged-since=7:x.a", "x.a", ack(8, 4)),
        // Several conditions at once: all must hold.
        ("expect-subject-seq=8 expect-rev=4", "x.a", ack(9, 5)),
        ("expect-subject-seq=9 expect-rev=4", "x.a", nak("wrong revision: expected 4, actual 5")),
    ];
    let mut delivered = Vec::new();
    for (i, (options, subject, expected)) in transcript.iter().enumerate() {
        let payload = format!("p{i}");
        let answer = request(&mut client, &apub(subject, options, &payload)).await;
        assert_eq!(&answer, expected, "APUB {subject} {options}");
        if answer.starts_with("+ACK") {
            delivered.extend(msg(subject, "1", &payload));
        }
    }
    // Rejected events were not delivered, and took no sequence (the acks above are gapless).
    assert_eq!(sub.sync().await, delivered);
    assert_eq!(request(&mut client, &apub("x.z", "", "last")).await, ack(10, 1));
}

#[tokio::test]
async fn conditions_in_an_apub_header_block_work_like_options() {
    let server = TestServer::start().await;
    let mut sub = subscriber(&server, &[("h.>", "1")]).await;
    let mut client = publisher(&server).await;

    let transcript: &[(&str, &str, &str, String)] = &[
        ("Nats-Expected-Last-Sequence", "0", "h.a", ack(1, 1)),
        ("Nats-Expected-Last-Sequence", "0", "h.a", nak("wrong last sequence: expected 0, actual 1")),
        ("Nats-Expected-Last-Subject-Sequence", "1", "h.a", ack(2, 2)),
        ("Nats-Expected-Last-Subject-Sequence", "1", "h.a", nak("wrong last subject sequence: expected 1, actual 2")),
        ("Eventline-Expected-Revision", "2", "h.a", ack(3, 3)),
        ("Eventline-Expected-Revision", "2", "h.a", nak("wrong revision: expected 2, actual 3")),
        ("Eventline-Unchanged-Since", "3 h.a", "h.b", ack(4, 1)),
        ("Eventline-Unchanged-Since", "2 h.a", "h.b", nak("h.a changed after 2: sequence 3")),
        ("Nats-Msg-Id", "id-1", "h.c", ack(5, 1)),
        ("Nats-Msg-Id", "id-1", "h.c", duplicate(5, 1)),
    ];
    let mut delivered = Vec::new();
    for (i, (name, value, subject, expected)) in transcript.iter().enumerate() {
        let payload = format!("p{i}");
        let answer = request(&mut client, &apub_headers(subject, &[(name, value)], "", &payload)).await;
        assert_eq!(&answer, expected, "APUB {subject} with {name}: {value}");
        if answer.starts_with("+ACK") && !answer.ends_with("duplicate") {
            // Delivered with its header block exactly as published.
            delivered.extend(hmsg(subject, "1", &[(name, value)], &payload));
        }
    }
    assert_eq!(sub.sync().await, delivered);
}

#[tokio::test]
async fn a_plain_hpub_with_condition_headers_is_conditional_and_silent() {
    let server = TestServer::start().await;
    let mut sub = subscriber(&server, &[("acct.>", "1")]).await;
    let mut client = publisher(&server).await;
    assert_eq!(request(&mut client, &apub("acct.1", "", "opened")).await, ack(1, 1));

    // Each of these fails its condition: nothing comes back, nothing is stored or delivered.
    client.send(&hpub("acct.1", &[("Nats-Expected-Last-Subject-Sequence", "0")], "bad-1")).await;
    client.send(&hpub("acct.1", &[("Eventline-Expected-Revision", "7")], "bad-2")).await;
    client.send(&hpub("acct.2", &[("Nats-Expected-Last-Sequence", "0")], "bad-3")).await;
    client.send(&hpub("acct.2", &[("Eventline-Unchanged-Since", "0 acct.>")], "bad-4")).await;
    assert_eq!(client.sync().await, Vec::<String>::new(), "a plain publish gets no -NAK");
    // These hold.
    client.send(&hpub("acct.1", &[("Nats-Expected-Last-Subject-Sequence", "1")], "good-1")).await;
    client.send(&hpub("acct.1", &[("Eventline-Expected-Revision", "2")], "good-2")).await;
    client.send(&hpub("acct.2", &[("Eventline-Unchanged-Since", "3 acct.2 acct.3")], "good-3")).await;
    assert_eq!(client.sync().await, Vec::<String>::new());

    let mut expected = msg("acct.1", "1", "opened").to_vec();
    expected.extend(hmsg("acct.1", "1", &[("Nats-Expected-Last-Subject-Sequence", "1")], "good-1"));
    expected.extend(hmsg("acct.1", "1", &[("Eventline-Expected-Revision", "2")], "good-2"));
    expected.extend(hmsg("acct.2", "1", &[("Eventline-Unchanged-Since", "3 acct.2 acct.3")], "good-3"));
    assert_eq!(sub.sync().await, expected);
    assert_eq!(request(&mut client, &apub("acct.1", "", "next")).await, ack(5, 4), "rejections took no sequence");
}

#[tokio::test]
async fn subjects_of_more_than_256_tokens_are_refused_and_256_are_stored() {
    let server = TestServer::start().await;
    let mut client = publisher(&server).await;
    let deep = |tokens: usize| vec!["t"; tokens].join(".");
    assert_eq!(request(&mut client, &apub(&deep(256), "", "deepest")).await, ack(1, 1));
    assert_eq!(
        request(&mut client, &apub(&deep(257), "", "deeper")).await,
        nak("invalid subject: more than 256 tokens")
    );
    client.send(&format!("SUB {}.> 1\r\n", deep(256))).await;
    assert_eq!(client.sync().await, vec!["-ERR 'Invalid Subject'"]);
    let mut reader = Raw::with_headers(server.addr).await;
    let (events, _) = reader.fetch("1", &format!("{}.>", deep(200))).await;
    assert_eq!(events.iter().map(common::Hmsg::seq).collect::<Vec<_>>(), vec![1], "read through the index prefix");
}

/// Keys the store could not hold: a 70,000-byte message id once killed the writer thread,
/// and a 70,000-byte filter in a `$EL.` body a reader.
#[tokio::test]
async fn over_long_message_ids_and_filters_are_refused_and_the_server_goes_on() {
    let server = TestServer::start().await;
    let mut client = publisher(&server).await;
    let id = "i".repeat(70_000);
    let long = apub_headers("long.id", &[("Nats-Msg-Id", &id)], "", "x");
    assert_eq!(request(&mut client, &long).await, nak("message id longer than 1024 bytes"));
    let filter = format!("{}.>", "f".repeat(70_000));
    let body = format!(r#"{{"filters":["{filter}"]}}"#);
    client.send("SUB _INBOX.fetch 9\r\n").await;
    client.send(&format!("PUB $EL.FETCH _INBOX.fetch {}\r\n{body}\r\n", body.len())).await;
    let answer = client.sync().await;
    assert_eq!(
        answer.len(),
        2,
        "one JSON error: {:?}",
        answer.iter().map(|l| &l[..l.len().min(80)]).collect::<Vec<_>>()
    );
    assert!(answer[1].contains("longer than 4096 bytes"), "{}", &answer[1][answer[1].len() - 80..]);
    assert_eq!(request(&mut client, &apub("long.id", "msg-id=short", "ok")).await, ack(1, 1), "the writer is alive");
}

#[tokio::test]
async fn a_stored_header_block_with_a_status_is_refused_so_no_event_can_pass_for_a_marker() {
    let server = TestServer::start().await;
    let mut sub = subscriber(&server, &[("fake.>", "1")]).await;
    let mut client = publisher(&server).await;
    let caught_up = "NATS/1.0 100 Caught Up\r\nNats-Last-Sequence: 9\r\n\r\n";
    let end = "NATS/1.0 204 End Of Results\r\n\r\n";
    for block in [caught_up, end] {
        let marker = format!("APUB fake.marker {} {}\r\n{block}\r\n", block.len(), block.len());
        assert_eq!(
            request(&mut client, &marker).await,
            nak("invalid header block: a stored event cannot carry a status")
        );
        // A plain HPUB is refused the same way, silently as every refused plain publish.
        client.send(&format!("HPUB fake.marker {} {}\r\n{block}\r\n", block.len(), block.len())).await;
    }
    let not_nats = "HTTP/1.1 200 OK\r\n\r\n";
    let http = format!("APUB fake.marker {} {}\r\n{not_nats}\r\n", not_nats.len(), not_nats.len());
    assert_eq!(request(&mut client, &http).await, nak("invalid header block: it must start with NATS/1.0"));
    assert_eq!(client.sync().await, Vec::<String>::new());
    assert_eq!(sub.sync().await, Vec::<String>::new(), "nothing was delivered");
    assert_eq!(request(&mut client, &apub("fake.marker", "", "real")).await, ack(1, 1), "nothing was stored");
}

// ---------------------------------------------------------------------------------------
// 4. unchanged-since with several filters (a dynamic consistency boundary)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unchanged_since_with_several_wildcard_filters() {
    let server = TestServer::start().await;
    let mut sub = subscriber(&server, &[(">", "1")]).await;
    let mut client = publisher(&server).await;

    assert_eq!(request(&mut client, &apub("orders.42.created", "", "o42")).await, ack(1, 1));
    assert_eq!(request(&mut client, &apub("customers.7.address", "", "c7a")).await, ack(2, 1));
    assert_eq!(request(&mut client, &apub("orders.43.created", "", "o43")).await, ack(3, 1));
    assert_eq!(request(&mut client, &apub("customers.7.name", "", "c7n")).await, ack(4, 1));
    assert_eq!(request(&mut client, &apub("orders.42", "", "bare")).await, ack(5, 1));

    let guard = |after: u64| format!("unchanged-since={after}:orders.42.>,customers.*.address");
    // After 2 came orders.43.created, customers.7.name and orders.42, none of which match
    // (`orders.42.>` needs a token after `orders.42`).
    assert_eq!(request(&mut client, &apub("orders.42.shipped", &guard(2), "ship")).await, ack(6, 1));
    // Now orders.42.shipped (6) matches the first filter.
    assert_eq!(
        request(&mut client, &apub("orders.42.paid", &guard(5), "pay")).await,
        nak("orders.42.> changed after 5: sequence 6")
    );
    assert_eq!(request(&mut client, &apub("customers.9.address", &guard(6), "c9a")).await, ack(7, 1));
    // The second filter names the conflict when only it matches.
    assert_eq!(
        request(&mut client, &apub("orders.42.paid", &guard(6), "pay")).await,
        nak("customers.*.address changed after 6: sequence 7")
    );
    // The conflict reported is the newest matching event.
    assert_eq!(request(&mut client, &apub("orders.42.shipped", "", "again")).await, ack(8, 2));
    assert_eq!(
        request(&mut client, &apub("orders.42.paid", &guard(0), "pay")).await,
        nak("orders.42.> changed after 0: sequence 8")
    );
    // A filter with a leading wildcard, and `>` alone.
    assert_eq!(
        request(&mut client, &apub("x.1", "unchanged-since=3:*.*.name", "x")).await,
        nak("*.*.name changed after 3: sequence 4")
    );
    assert_eq!(request(&mut client, &apub("x.1", "unchanged-since=4:*.*.name", "x1")).await, ack(9, 1));
    assert_eq!(request(&mut client, &apub("x.2", "unchanged-since=9:>", "x2")).await, ack(10, 1));
    assert_eq!(
        request(&mut client, &apub("x.3", "unchanged-since=9:>", "x3")).await,
        nak("> changed after 9: sequence 10")
    );
    // The same guard as a header, filters separated by spaces.
    let paid = [("Eventline-Unchanged-Since", "8 orders.42.> customers.*.address")];
    assert_eq!(request(&mut client, &apub_headers("orders.42.paid", &paid, "", "pay")).await, ack(11, 1));
    let header = [("Eventline-Unchanged-Since", "7 orders.42.> customers.*.address")];
    assert_eq!(
        request(&mut client, &apub_headers("orders.42.refunded", &header, "", "refund")).await,
        nak("orders.42.> changed after 7: sequence 11")
    );

    let mut expected = msgs([
        msg("orders.42.created", "1", "o42"),
        msg("customers.7.address", "1", "c7a"),
        msg("orders.43.created", "1", "o43"),
        msg("customers.7.name", "1", "c7n"),
        msg("orders.42", "1", "bare"),
        msg("orders.42.shipped", "1", "ship"),
        msg("customers.9.address", "1", "c9a"),
        msg("orders.42.shipped", "1", "again"),
        msg("x.1", "1", "x1"),
        msg("x.2", "1", "x2"),
    ]);
    expected.extend(hmsg("orders.42.paid", "1", &paid, "pay"));
    assert_eq!(sub.sync().await, expected);
}

#[tokio::test]
async fn a_condition_sees_an_earlier_event_of_the_same_writer_batch() {
    let server = TestServer::start().await;
    let mut sub = subscriber(&server, &[(">", "1")]).await;
    let mut client = publisher(&server).await;
    assert_eq!(request(&mut client, &apub("seed", "", "seed")).await, ack(1, 1));

    // Pairs sent back to back in ONE write, so the writer drains most of them as one batch:
    // the second of each pair is guarded by the state before the first and must fail.
    // Pairs alternate over the kinds of condition.
    const PAIRS: u64 = 60;
    let mut burst = String::new();
    for i in 0..PAIRS {
        let head = 1 + i; // the log's head before pair i (every first is accepted)
        let first = format!("acct.{i}.opened");
        burst.push_str(&apub(&first, "", &format!("first {i}")));
        let (subject, options) = match i % 5 {
            0 => (format!("acct.{i}.closed"), format!("unchanged-since={head}:acct.{i}.>,other.*")),
            1 => (format!("acct.{i}.closed"), format!("unchanged-since={head}:other.*,acct.*.opened")),
            2 => (first.clone(), "expect-subject-seq=0".to_owned()),
            3 => (first.clone(), "expect-rev=0".to_owned()),
            _ => (format!("acct.{i}.closed"), format!("expect-seq={head}")),
        };
        burst.push_str(&apub(&subject, &options, &format!("second {i}")));
    }
    client.send(&burst).await;

    let mut delivered = Vec::new();
    for i in 0..PAIRS {
        let seq = 2 + i;
        assert_eq!(client.line().await, ack(seq, 1), "first of pair {i}");
        let expected = match i % 5 {
            0 => nak(&format!("acct.{i}.> changed after {}: sequence {seq}", seq - 1)),
            1 => nak(&format!("acct.*.opened changed after {}: sequence {seq}", seq - 1)),
            2 => nak(&format!("wrong last subject sequence: expected 0, actual {seq}")),
            3 => nak("wrong revision: expected 0, actual 1"),
            _ => nak(&format!("wrong last sequence: expected {}, actual {seq}", seq - 1)),
        };
        assert_eq!(client.line().await, expected, "second of pair {i}");
        delivered.extend(msg(&format!("acct.{i}.opened"), "1", &format!("first {i}")));
    }
    let mut expected = msg("seed", "1", "seed").to_vec();
    expected.extend(delivered);
    assert_eq!(sub.sync().await, expected, "no second of a pair was delivered");
    assert_eq!(request(&mut client, &apub("after", "", "after")).await, ack(PAIRS + 2, 1));
}

// ---------------------------------------------------------------------------------------
// 5. The race: one winner among concurrent conditional writers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_with_the_same_expected_sequence_have_exactly_one_winner() {
    const WRITERS: usize = 8;
    const ROUNDS: usize = 20;
    let server = TestServer::start().await;
    let mut setup = publisher(&server).await;
    assert_eq!(request(&mut setup, &apub("account.7", "", "opened")).await, ack(1, 1));

    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(publisher(&server).await);
    }
    let mut expected_seq = 1;
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for (writer, mut client) in clients.drain(..).enumerate() {
            let barrier = Arc::clone(&barrier);
            let text = apub("account.7", &format!("expect-subject-seq={expected_seq}"), &format!("r{round} w{writer}"));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let answer = request(&mut client, &text).await;
                (client, answer)
            }));
        }
        let mut answers = Vec::new();
        for task in tasks {
            let (client, answer) = within(task).await.expect("writer task");
            clients.push(client);
            answers.push(answer);
        }
        let winners: Vec<&String> = answers.iter().filter(|a| a.starts_with("+ACK")).collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        let (seq, rev, dup) = parse_ack(winners[0]);
        assert_eq!((seq, rev, dup), (expected_seq + 1, round as u64 + 2, false), "round {round}");
        let loser = nak(&format!("wrong last subject sequence: expected {expected_seq}, actual {seq}"));
        assert_eq!(answers.iter().filter(|a| **a == loser).count(), WRITERS - 1, "round {round}: {answers:?}");
        expected_seq = seq;
    }
}

// ---------------------------------------------------------------------------------------
// 6. Deduplication by message id
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_repeated_msg_id_is_a_duplicate_until_the_window_passes() {
    let window = Duration::from_millis(300);
    // No fsync: the checks before the window passes must fit in it even on a slow disk.
    let config = Config {
        store: StoreConfig { fsync: FsyncPolicy::Never, ..StoreConfig::default() },
        broker: BrokerConfig { dedup_window: window, ..BrokerConfig::default() },
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut sub = subscriber(&server, &[("pay.>", "1")]).await;
    let mut client = publisher(&server).await;

    let started = Instant::now();
    assert_eq!(request(&mut client, &apub("pay.1", "msg-id=abc", "first")).await, ack(1, 1));
    assert_eq!(request(&mut client, &apub("pay.1", "msg-id=abc", "retry")).await, duplicate(1, 1));
    // The id is the whole key: another subject with the same id is still a duplicate.
    assert_eq!(request(&mut client, &apub("pay.2", "msg-id=abc", "elsewhere")).await, duplicate(1, 1));
    // A plain HPUB with the id is dropped silently.
    client.send(&hpub("pay.1", &[("Nats-Msg-Id", "abc")], "hpub retry")).await;
    assert_eq!(client.sync().await, Vec::<String>::new());
    // Two copies in one write: the second is a duplicate of the first, in the same batch.
    client.send(&format!("{}{}", apub("pay.3", "msg-id=twin", "twin"), apub("pay.3", "msg-id=twin", "twin"))).await;
    client.expect_lines(&[&ack(2, 1), &duplicate(2, 1)]).await;
    // Dedup comes before conditions: the retry of a conditional publish whose ack was lost
    // is a duplicate, although its own first copy made the condition false.
    let once = apub("pay.4", "msg-id=once expect-subject-seq=0", "once");
    assert_eq!(request(&mut client, &once).await, ack(3, 1));
    assert_eq!(request(&mut client, &once).await, duplicate(3, 1));
    let expected = msgs([msg("pay.1", "1", "first"), msg("pay.3", "1", "twin"), msg("pay.4", "1", "once")]);
    assert_eq!(sub.sync().await, expected);

    // Wait for the window to pass on the server's clock: its timestamps only move when
    // something is stored, so keep storing ticks until the id is accepted again.
    let deadline = started + TIMEOUT;
    let mut ticks = 0u64;
    let (seq, rev) = loop {
        assert!(Instant::now() < deadline, "the dedup window of {window:?} never passed");
        ticks += 1;
        assert_eq!(request(&mut client, &apub("tick", "", "t")).await, ack(3 + ticks, ticks));
        let answer = request(&mut client, &apub("pay.1", "msg-id=abc", "later")).await;
        let (seq, rev, dup) = parse_ack(&answer);
        if !dup {
            break (seq, rev);
        }
        assert_eq!((seq, rev), (1, 1), "a duplicate names the first occurrence");
    };
    assert_eq!((seq, rev), (ticks + 4, 2), "stored as a new event");
    // The window is measured on the server's clock: the id was forgotten while the last
    // tick was stored, which must be a whole window after the id's first occurrence.
    let mut reader = Raw::with_headers(server.addr).await;
    let (events, _) = reader.fetch("9", &format!("pay.1,tick to-seq={}", ticks + 3)).await;
    let time = |event: Option<&common::Hmsg>| nanos(event.and_then(|e| e.header("Nats-Time-Stamp")).expect("a time"));
    let (first, last_tick) = (time(events.first()), time(events.last()));
    assert!(
        last_tick - first >= window.as_nanos() as i128,
        "forgotten {} ns after, before the window",
        last_tick - first
    );
    // The new occurrence is the one now remembered.
    assert_eq!(request(&mut client, &apub("pay.1", "msg-id=abc", "again")).await, duplicate(seq, 2));
    let lines = sub.sync().await;
    assert_eq!(lines, msg("pay.1", "1", "later"), "only the re-stored event was delivered");
}

// ---------------------------------------------------------------------------------------
// 7. Volatile subjects
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn volatile_subjects_are_delivered_but_take_no_sequence() {
    let mut volatile = BrokerConfig::default().volatile;
    volatile.push(Filter::new(Bytes::from_static(b"telemetry.>")).expect("filter"));
    let server = TestServer::with_config(Config {
        broker: BrokerConfig { volatile, ..BrokerConfig::default() },
        ..Config::default()
    })
    .await;
    let mut sub =
        subscriber(&server, &[("_INBOX.x", "1"), ("$SYS.x", "2"), ("telemetry.cpu", "3"), ("stored", "4")]).await;
    let mut client = publisher(&server).await;

    assert_eq!(request(&mut client, &apub("stored", "", "one")).await, ack(1, 1));
    client.send(&pub_("_INBOX.x", "reply")).await;
    client.send(&pub_("$SYS.x", "system")).await;
    client.send(&pub_("telemetry.cpu", "42%")).await;
    assert_eq!(client.sync().await, Vec::<String>::new());
    assert_eq!(request(&mut client, &apub("stored", "", "two")).await, ack(2, 2), "volatile messages took no sequence");

    for subject in ["_INBOX.x", "$SYS.x", "telemetry.cpu"] {
        assert_eq!(
            request(&mut client, &apub(subject, "", "refused")).await,
            nak(&format!("subject {subject} is volatile: it is delivered but never stored"))
        );
    }
    assert_eq!(request(&mut client, &apub("stored", "", "three")).await, ack(3, 3));

    let expected = msgs([
        msg("stored", "4", "one"),
        msg("_INBOX.x", "1", "reply"),
        msg("$SYS.x", "2", "system"),
        msg("telemetry.cpu", "3", "42%"),
        msg("stored", "4", "two"),
        msg("stored", "4", "three"),
    ]);
    assert_eq!(sub.sync().await, expected, "refused APUBs are not delivered");
}

// ---------------------------------------------------------------------------------------
// 8. The $EL.PUB API from a NATS client
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn el_pub_requests_from_async_nats_store_and_answer_json() {
    let server = TestServer::start().await;
    let client = within(async_nats::connect(server.url())).await.expect("async-nats connects");
    let listener = within(async_nats::connect(server.url())).await.expect("async-nats connects");
    let mut live = within(listener.subscribe("orders.1")).await.expect("subscribe");
    // Order the SUB before the first request: a round trip on the listener's connection.
    sync_nats(&listener).await;

    let reply_json = |message: async_nats::Message| -> serde_json::Value {
        serde_json::from_slice(&message.payload).expect("JSON reply")
    };

    let reply = within(client.request("$EL.PUB.orders.1", Bytes::from_static(b"created"))).await.expect("request");
    assert_eq!(reply_json(reply), serde_json::json!({"seq": 1, "revision": 1, "duplicate": false}));
    let reply = within(client.request("$EL.PUB.orders.2", Bytes::from_static(b"other"))).await.expect("request");
    assert_eq!(reply_json(reply), serde_json::json!({"seq": 2, "revision": 1, "duplicate": false}));

    let mut expect_one = HeaderMap::new();
    expect_one.insert("Nats-Expected-Last-Subject-Sequence", "1");
    let reply =
        within(client.request_with_headers("$EL.PUB.orders.1", expect_one.clone(), Bytes::from_static(b"paid")))
            .await
            .expect("request");
    assert_eq!(reply_json(reply), serde_json::json!({"seq": 3, "revision": 2, "duplicate": false}));
    let reply = within(client.request_with_headers("$EL.PUB.orders.1", expect_one, Bytes::from_static(b"conflict")))
        .await
        .expect("request");
    assert_eq!(
        reply_json(reply),
        serde_json::json!({
            "error": {"code": 409, "description": "wrong last subject sequence: expected 1, actual 3"},
            "actual": 3
        })
    );

    let mut with_id = HeaderMap::new();
    with_id.insert("Nats-Msg-Id", "order-1-shipped");
    for (payload, expected) in [
        ("shipped", serde_json::json!({"seq": 4, "revision": 3, "duplicate": false})),
        ("shipped again", serde_json::json!({"seq": 4, "revision": 3, "duplicate": true})),
    ] {
        let reply = within(client.request_with_headers("$EL.PUB.orders.1", with_id.clone(), Bytes::from(payload)))
            .await
            .expect("request");
        assert_eq!(reply_json(reply), expected);
    }

    // The live subscriber got each stored event once, with its headers, and nothing else.
    for (payload, msg_id) in [("created", None), ("paid", None), ("shipped", Some("order-1-shipped"))] {
        let message = within(live.next()).await.expect("a live message");
        assert_eq!(message.subject.as_str(), "orders.1");
        assert_eq!(&message.payload[..], payload.as_bytes());
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned());
        assert_eq!(id.as_deref(), msg_id);
    }
    sync_nats(&listener).await;
    if let Some(Some(message)) = live.next().now_or_never() {
        panic!("unexpected delivery: {:?}", message.payload);
    }

    // And a raw APUB agrees on the head.
    let mut raw = publisher(&server).await;
    assert_eq!(request(&mut raw, &apub("orders.1", "", "raw")).await, ack(5, 4));
}

// ---------------------------------------------------------------------------------------
// 9. Op order within one connection
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pub_then_unsub_delivers_and_pub_then_sub_does_not() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    // All in one write: the stored PUB is still in the writer when UNSUB arrives.
    client.send(&format!("SUB foo 1\r\n{}UNSUB 1\r\n{}", pub_("foo", "first"), pub_("foo", "second"))).await;
    assert_eq!(client.sync().await, msg("foo", "1", "first"));

    client.send(&format!("{}SUB foo 2\r\n{}", pub_("foo", "before"), pub_("foo", "after"))).await;
    assert_eq!(client.sync().await, msg("foo", "2", "after"), "a SUB does not see an earlier PUB");
}

#[tokio::test]
async fn sub_and_unsub_keep_their_place_among_many_stored_publishes() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    // Many rounds in one write, so some SUB/UNSUB ops find publishes in flight.
    let mut burst = String::new();
    let mut expected = Vec::new();
    for round in 0..100 {
        let sid = round + 10;
        burst.push_str(&pub_("bar", &format!("unseen {round}")));
        burst.push_str(&format!("SUB bar {sid}\r\n"));
        burst.push_str(&pub_("bar", &format!("seen {round}")));
        burst.push_str(&format!("UNSUB {sid}\r\n"));
        expected.extend(msg("bar", &sid.to_string(), &format!("seen {round}")));
    }
    burst.push_str(&pub_("bar", "after all"));
    client.send(&burst).await;
    assert_eq!(client.sync().await, expected);
}

#[tokio::test]
async fn a_volatile_publish_does_not_overtake_an_earlier_stored_one() {
    // NATS delivers one publisher's messages in the order it sent them; a reply on an inbox
    // must not arrive before the event published just before it.
    let server = TestServer::start().await;
    let mut sub = subscriber(&server, &[("events.>", "1"), ("_INBOX.>", "2")]).await;
    let mut client = Raw::quiet(server.addr).await;

    let mut burst = String::new();
    let mut expected = Vec::new();
    for i in 0..3 {
        burst.push_str(&pub_("events.x", &format!("event {i}")));
        burst.push_str(&pub_("_INBOX.r", &format!("reply {i}")));
        expected.extend(msg("events.x", "1", &format!("event {i}")));
        expected.extend(msg("_INBOX.r", "2", &format!("reply {i}")));
    }
    client.send(&burst).await;
    assert_eq!(client.sync().await, Vec::<String>::new());
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(sub.line().await);
    }
    assert_eq!(got, expected);
}
