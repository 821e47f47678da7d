//! The NATS client protocol as a person at a telnet prompt sees it: the happy paths.
//! Each test starts the real server on port 0 and reads like a session transcript
//! (`>>` is what the client types, `<<` what the server answers). The error paths are in
//! `protocol_errors.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Raw, TestServer};
use eventline::config::{Config, Limits};

// ---------------------------------------------------------------------------------------
// Greeting, verbose mode and CONNECT
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn info_is_sent_on_connect_with_a_space_before_crlf() {
    let server = TestServer::start().await;
    let mut client = Raw::connect_keep_info(server.addr).await;

    let line = client.line_bytes().await;
    assert!(line.starts_with(b"INFO {"), "got {:?}", String::from_utf8_lossy(&line));
    assert!(line.ends_with(b"} \r\n"), "got {:?}", String::from_utf8_lossy(&line));
    let json: serde_json::Value = serde_json::from_slice(&line[5..line.len() - 3]).expect("INFO is JSON");
    assert_eq!(json["proto"], 1);
    assert_eq!(json["headers"], true);
    assert_eq!(json["max_payload"], 1024 * 1024);
}

#[tokio::test]
async fn verbose_is_on_before_connect_so_every_op_but_ping_gets_ok() {
    let server = TestServer::start().await;
    let mut client = Raw::connect(server.addr).await;

    client.send("SUB foo 1\r\n").await; // >> SUB foo 1
    client.expect("+OK").await; // << +OK
    client.send("PUB bar 2\r\nhi\r\n").await;
    client.expect("+OK").await;
    client.send("UNSUB 1\r\n").await;
    client.expect("+OK").await;
    client.send("PING\r\n").await;
    client.expect("PONG").await;
    client.send("CONNECT {}\r\n").await;
    client.expect("+OK").await;
    assert_eq!(client.sync().await, Vec::<String>::new(), "PING gets PONG and nothing else");
}

#[tokio::test]
async fn verbose_ok_for_a_pub_comes_before_its_delivery() {
    let server = TestServer::start().await;
    let mut client = Raw::connect(server.addr).await;

    client.send("SUB foo 1\r\n").await;
    client.expect("+OK").await;
    client.send("PUB foo 2\r\nhi\r\n").await;
    // nats-server acknowledges the PUB before routing it (processInboundClientMsg).
    client.expect_lines(&["+OK", "MSG foo 1 2", "hi"]).await;
}

#[tokio::test]
async fn connect_verbose_false_stops_ok() {
    let server = TestServer::start().await;
    let mut client = Raw::connect(server.addr).await;

    client.send("CONNECT {\"verbose\":false}\r\n").await;
    client.send("SUB foo 1\r\nPUB bar 2\r\nhi\r\nUNSUB 1\r\n").await;
    assert_eq!(client.sync().await, Vec::<String>::new(), "no +OK for CONNECT, SUB, PUB or UNSUB");
}

// ---------------------------------------------------------------------------------------
// Lenient parsing: what people type into nc
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn lowercase_ops_and_bare_lf_lines_work() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("sub foo 1\n").await;
    client.send("pub foo 5\nhello\n").await;
    client.send("ping\n").await;
    client.expect_lines(&["MSG foo 1 5", "hello", "PONG"]).await;
}

#[tokio::test]
async fn mixed_case_ops_are_accepted() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SuB foo 1\r\nPuB foo 2\r\nhi\r\npInG\r\n").await;
    client.expect_lines(&["MSG foo 1 2", "hi", "PONG"]).await;
}

#[tokio::test]
async fn arguments_may_be_separated_by_runs_of_spaces_and_tabs() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SUB \t foo\t\t q  \t1\r\n").await;
    client.send("PUB  foo \t reply\t 2\r\nhi\r\n").await;
    assert_eq!(client.sync().await, ["MSG foo 1 reply 2", "hi"]);
}

#[tokio::test]
async fn payload_may_end_in_bare_lf() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SUB foo 1\r\n").await;
    client.send("PUB foo 5\r\nhello\nPUB foo 5\r\nworld\r\n").await;
    assert_eq!(client.sync().await, ["MSG foo 1 5", "hello", "MSG foo 1 5", "world"]);
}

#[tokio::test]
async fn pub_sent_one_byte_per_write_is_delivered_intact() {
    let server = TestServer::start().await;
    let mut subscriber = Raw::quiet(server.addr).await;
    subscriber.send("SUB foo.bar 1\r\n").await;
    subscriber.sync().await;
    let mut publisher = Raw::quiet(server.addr).await;

    publisher.send_byte_by_byte(b"PUB foo.bar reply.to 11\r\nhello world\r\n").await;
    publisher.sync().await;

    subscriber.expect("MSG foo.bar 1 reply.to 11").await;
    assert_eq!(subscriber.read_exact(13).await, b"hello world\r\n");
}

// ---------------------------------------------------------------------------------------
// Delivery: subjects, wildcards, queue groups, request/reply
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn msg_is_framed_as_msg_subject_sid_size_crlf_payload_crlf() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SUB foo 7\r\nPUB foo 5\r\nhello\r\nPUB foo 0\r\n\r\n").await;
    assert_eq!(client.line_bytes().await, b"MSG foo 7 5\r\n");
    assert_eq!(client.read_exact(7).await, b"hello\r\n");
    assert_eq!(client.line_bytes().await, b"MSG foo 7 0\r\n");
    assert_eq!(client.read_exact(2).await, b"\r\n");
}

#[tokio::test]
async fn exact_subject_receives_only_its_own_messages() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SUB foo.bar 1\r\n").await;
    client.send("PUB foo 1\r\na\r\nPUB foo.bar 1\r\nb\r\nPUB foo.bar.baz 1\r\nc\r\nPUB foo.baz 1\r\nd\r\n").await;
    assert_eq!(client.sync().await, ["MSG foo.bar 1 1", "b"]);
}

/// Sends `ops`, syncs, and returns the lines received before PONG, sorted (the order of
/// deliveries to different subscriptions of one client is not specified).
async fn sorted_lines_after(client: &mut Raw, ops: &str) -> Vec<String> {
    client.send(ops).await;
    let mut lines = client.sync().await;
    lines.sort();
    lines
}

#[tokio::test]
async fn star_matches_one_token_and_gt_matches_one_or_more() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;
    client.send("SUB foo.* star\r\nSUB foo.> tail\r\nSUB > all\r\n").await;

    assert_eq!(
        sorted_lines_after(&mut client, "PUB foo.bar 1\r\nx\r\n").await,
        ["MSG foo.bar all 1", "MSG foo.bar star 1", "MSG foo.bar tail 1", "x", "x", "x"]
    );
    assert_eq!(
        sorted_lines_after(&mut client, "PUB foo.bar.baz 1\r\nx\r\n").await,
        ["MSG foo.bar.baz all 1", "MSG foo.bar.baz tail 1", "x", "x"]
    );
    assert_eq!(sorted_lines_after(&mut client, "PUB foo 1\r\nx\r\n").await, ["MSG foo all 1", "x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_group_members_share_messages_and_plain_subscribers_get_all() {
    let server = TestServer::start().await;
    let mut member_a = Raw::quiet(server.addr).await;
    let mut member_b = Raw::quiet(server.addr).await;
    let mut plain = Raw::quiet(server.addr).await;
    member_a.send("SUB work workers 1\r\n").await;
    member_b.send("SUB work workers 1\r\n").await;
    plain.send("SUB work 1\r\n").await;
    for client in [&mut member_a, &mut member_b, &mut plain] {
        client.sync().await;
    }
    let mut publisher = Raw::quiet(server.addr).await;

    let batch: String = (0..100).map(|i| format!("PUB work 3\r\n{i:03}\r\n")).collect();
    publisher.send(&batch).await;
    publisher.sync().await;

    let count = |lines: Vec<String>| lines.iter().filter(|l| l.starts_with("MSG work 1 3")).count();
    let (a, b) = (count(member_a.sync().await), count(member_b.sync().await));
    assert!(a > 0 && b > 0, "each member gets some: a={a} b={b}");
    assert_eq!(a + b, 100, "each message goes to exactly one member");
    assert_eq!(count(plain.sync().await), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_carries_its_reply_subject_and_the_reply_comes_back() {
    let server = TestServer::start().await;
    let mut responder = Raw::quiet(server.addr).await;
    responder.send("SUB svc 1\r\n").await;
    responder.sync().await;
    let mut requester = Raw::quiet(server.addr).await;
    requester.send("SUB _INBOX.r1 2\r\n").await;

    requester.send("PUB svc _INBOX.r1 4\r\nping\r\n").await;
    responder.expect_lines(&["MSG svc 1 _INBOX.r1 4", "ping"]).await;
    responder.send("PUB _INBOX.r1 4\r\npong\r\n").await;
    requester.expect_lines(&["MSG _INBOX.r1 2 4", "pong"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echo_false_suppresses_only_own_messages() {
    let server = TestServer::start().await;
    let mut client = Raw::connect_with(server.addr, r#"{"verbose":false,"echo":false}"#).await;
    client.send("SUB foo 1\r\nPUB foo 4\r\nmine\r\n").await;
    assert_eq!(client.sync().await, Vec::<String>::new(), "own message not echoed");

    let mut other = Raw::quiet(server.addr).await;
    other.send("PUB foo 6\r\nothers\r\n").await;
    other.sync().await;
    assert_eq!(client.sync().await, ["MSG foo 1 6", "others"]);
}

// ---------------------------------------------------------------------------------------
// SUB / UNSUB bookkeeping
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn second_sub_with_the_same_sid_is_ignored() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SUB foo 1\r\nSUB foo 1\r\nSUB bar 1\r\n").await;
    client.send("PUB foo 1\r\na\r\nPUB bar 1\r\nb\r\n").await;
    assert_eq!(client.sync().await, ["MSG foo 1 1", "a"], "one delivery, and nothing on bar");
}

#[tokio::test]
async fn unsub_with_max_delivers_exactly_max_more() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SUB foo 1\r\nUNSUB 1 2\r\n").await;
    client.send(&"PUB foo 1\r\nx\r\n".repeat(5)).await;
    assert_eq!(client.sync().await, ["MSG foo 1 1", "x", "MSG foo 1 1", "x"]);
}

#[tokio::test]
async fn unsub_with_zero_or_non_numeric_max_unsubscribes_now() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SUB foo 1\r\nSUB foo 2\r\nSUB foo 3\r\n").await;
    client.send("UNSUB 1 0\r\nUNSUB 2 many\r\n").await;
    client.send("PUB foo 1\r\nx\r\n").await;
    assert_eq!(client.sync().await, ["MSG foo 3 1", "x"]);
}

#[tokio::test]
async fn unsub_without_max_stops_delivery() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;

    client.send("SUB foo 1\r\nPUB foo 1\r\na\r\nUNSUB 1\r\nPUB foo 1\r\nb\r\n").await;
    assert_eq!(client.sync().await, ["MSG foo 1 1", "a"]);
}

// ---------------------------------------------------------------------------------------
// Headers and no-responders
// ---------------------------------------------------------------------------------------

/// 22 header bytes, then a 5-byte body: `HPUB foo 22 27`.
const HEADERS: &str = "NATS/1.0\r\nFoo: Bar\r\n\r\n";

#[tokio::test]
async fn hpub_is_delivered_as_hmsg_with_the_header_block_as_sent() {
    let server = TestServer::start().await;
    let mut client = Raw::connect_with(server.addr, r#"{"verbose":false,"headers":true}"#).await;

    client.send(&format!("SUB foo 1\r\nHPUB foo reply 22 27\r\n{HEADERS}hello\r\n")).await;
    client.expect("HMSG foo 1 reply 22 27").await;
    assert_eq!(client.read_exact(29).await, format!("{HEADERS}hello\r\n").as_bytes());
    assert_eq!(client.sync().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriber_without_headers_gets_msg_with_headers_stripped() {
    let server = TestServer::start().await;
    let mut plain = Raw::quiet(server.addr).await;
    plain.send("SUB foo 1\r\n").await;
    plain.sync().await;
    let mut publisher = Raw::connect_with(server.addr, r#"{"verbose":false,"headers":true}"#).await;

    publisher.send(&format!("HPUB foo 22 27\r\n{HEADERS}hello\r\n")).await;
    publisher.sync().await;
    plain.expect("MSG foo 1 5").await;
    assert_eq!(plain.read_exact(7).await, b"hello\r\n");
}

#[tokio::test]
async fn request_with_no_responders_gets_a_503_status() {
    let server = TestServer::start().await;
    let mut client = Raw::connect_with(server.addr, r#"{"headers":true,"no_responders":true,"verbose":false}"#).await;

    client.send("SUB _INBOX.x 9\r\nPUB svc _INBOX.x 2\r\nhi\r\n").await;
    client.expect("HMSG _INBOX.x 9 16 16").await;
    assert_eq!(client.read_exact(18).await, b"NATS/1.0 503\r\n\r\n\r\n");
    assert_eq!(client.sync().await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------
// Server PINGs
// ---------------------------------------------------------------------------------------

fn fast_pings() -> Config {
    Config { limits: Limits { ping_interval: Duration::from_millis(200), ..Limits::default() }, ..Config::default() }
}

#[tokio::test]
async fn idle_client_that_answers_pong_stays_connected() {
    let server = TestServer::with_config(fast_pings()).await;
    let mut client = Raw::connect(server.addr).await;

    // More rounds than the stale limit (two unanswered PINGs) allows.
    for _ in 0..3 {
        client.expect("PING").await; // << PING
        client.send("PONG\r\n").await; // >> PONG
    }
    client.send("PING\r\n").await;
    client.expect("PONG").await;
}

#[tokio::test]
async fn idle_client_that_never_answers_is_closed_as_stale() {
    let server = TestServer::with_config(fast_pings()).await;
    let mut client = Raw::connect(server.addr).await;

    client.expect_lines(&["PING", "PING", "-ERR 'Stale Connection'"]).await;
    client.expect_closed().await;
}

// ---------------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------------

const BULK_MESSAGES: usize = 40 * 1024;
const BULK_PAYLOAD: usize = 1024;
/// `MSG bulk 1 1024\r\n`, the payload, `\r\n`.
const BULK_WIRE: usize = 17 + BULK_PAYLOAD + 2;

/// A 1 KiB payload that starts with its sequence number, so order can be checked.
fn bulk_payload(seq: usize) -> Vec<u8> {
    let mut payload = format!("{seq:010}").into_bytes();
    payload.resize(BULK_PAYLOAD, b'.');
    payload
}

/// Reads every bulk message in large exact-size chunks, checking each one and its order;
/// returns the count.
async fn read_bulk(mut reader: Raw, progress: Arc<AtomicUsize>) -> usize {
    const CHUNK: usize = 64;
    let mut seq = 0;
    while seq < BULK_MESSAGES {
        let chunk = reader.read_exact(CHUNK * BULK_WIRE).await;
        for message in chunk.chunks(BULK_WIRE) {
            assert_eq!(&message[..17], b"MSG bulk 1 1024\r\n", "message {seq}");
            assert_eq!(&message[17..17 + BULK_PAYLOAD], bulk_payload(seq), "message {seq} in order");
            assert_eq!(&message[17 + BULK_PAYLOAD..], b"\r\n");
            seq += 1;
        }
        progress.store(seq, Ordering::Relaxed);
    }
    assert_eq!(reader.sync().await, Vec::<String>::new(), "nothing after the last message");
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_cut_while_a_reading_subscriber_gets_everything() {
    let config = Config { limits: Limits { max_pending: 256 * 1024, ..Limits::default() }, ..Config::default() };
    let server = TestServer::with_config(config).await;
    let mut slow = Raw::quiet(server.addr).await;
    slow.send("SUB bulk 1\r\n").await;
    slow.sync().await;
    let mut reader = Raw::quiet(server.addr).await;
    reader.send("SUB bulk 1\r\n").await;
    reader.sync().await;

    // The reading subscriber reads concurrently; `progress` says how far it got if it is cut.
    let progress = Arc::new(AtomicUsize::new(0));
    let reading = tokio::spawn(read_bulk(reader, Arc::clone(&progress)));

    let mut publisher = Raw::quiet(server.addr).await;
    let mut batch = Vec::with_capacity(1024 * 1024 + BULK_WIRE);
    for seq in 0..BULK_MESSAGES {
        batch.extend_from_slice(b"PUB bulk 1024\r\n");
        batch.extend_from_slice(&bulk_payload(seq));
        batch.extend_from_slice(b"\r\n");
        if batch.len() >= 1024 * 1024 {
            publisher.send_bytes(&batch).await;
            batch.clear();
        }
    }
    publisher.send_bytes(&batch).await;
    assert_eq!(publisher.sync().await, Vec::<String>::new(), "the publisher is neither slowed nor refused");

    let read = reading.await.unwrap_or_else(|error| {
        let seq = progress.load(Ordering::Relaxed);
        panic!("the reading subscriber failed after {seq} of {BULK_MESSAGES} messages: {error}")
    });
    assert_eq!(read, BULK_MESSAGES);
    let drained = slow.read_to_close().await;
    assert!(drained < BULK_MESSAGES * BULK_WIRE, "the slow consumer was cut, yet got all {drained} bytes");
    assert_eq!(publisher.sync().await, Vec::<String>::new(), "the publisher is still connected");
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn stopping_the_server_closes_client_connections() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;
    client.send("SUB foo 1\r\n").await;
    client.sync().await;

    server.stop().await;
    client.expect_closed().await;
}
