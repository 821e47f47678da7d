//! The NATS client protocol's error paths, as a telnet user meets them: the exact `-ERR`
//! line, then either the close or proof (PING/PONG) that the connection stays open.
//! The happy paths are in `protocol_raw.rs`.

mod common;

use std::net::SocketAddr;

use common::{Raw, TestServer};
use eventline::config::{Config, Limits};

/// Connects (sending `connect_json` first if given), sends `input`, and asserts the server
/// answers `-ERR '<text>'` and closes the connection.
async fn assert_refused_and_closed(addr: SocketAddr, connect_json: Option<&str>, input: &[u8], text: &str) {
    let mut client = match connect_json {
        Some(json) => Raw::connect_with(addr, json).await,
        None => Raw::connect(addr).await,
    };
    client.send_bytes(input).await;
    let line = client.line().await;
    assert_eq!(line, format!("-ERR '{text}'"), "after {:?}", String::from_utf8_lossy(input));
    client.expect_closed().await;
}

const QUIET: Option<&str> = Some(r#"{"verbose":false,"pedantic":false}"#);
const QUIET_HEADERS: Option<&str> = Some(r#"{"verbose":false,"headers":true}"#);

// ---------------------------------------------------------------------------------------
// Errors that close the connection: framing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_verbs_empty_lines_leading_blanks_and_client_msg_are_unknown_operations() {
    let server = TestServer::start().await;
    for input in [
        "FOO bar\r\n",
        "PUBX foo 2\r\nhi\r\n",
        "\r\n",
        "\n",
        " PING\r\n",
        "\tPING\r\n",
        "MSG foo 1 2\r\nhi\r\n",
        "+OK\r\n",
    ] {
        assert_refused_and_closed(server.addr, None, input.as_bytes(), "Unknown Protocol Operation").await;
    }
}

#[tokio::test]
async fn payload_not_followed_by_its_line_end_is_an_unknown_operation() {
    let server = TestServer::start().await;
    for input in [
        // Longer than announced.
        "PUB foo 2\r\nhello\r\n",
        // Shorter than announced: the next op is read as payload, and what follows it is no line end.
        "PUB foo 5\r\nhi\r\nPING\r\n",
        "HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhello\r\n",
    ] {
        assert_refused_and_closed(server.addr, QUIET_HEADERS, input.as_bytes(), "Unknown Protocol Operation").await;
    }
}

#[tokio::test]
async fn control_line_over_4096_bytes_is_refused_before_its_newline_arrives() {
    let server = TestServer::start().await;
    let mut line = b"PUB ".to_vec();
    line.resize(5000, b'a');
    assert_refused_and_closed(server.addr, QUIET, &line, "maximum control line exceeded").await;
}

#[tokio::test]
async fn control_line_arguments_of_4096_bytes_are_accepted_and_4097_are_refused() {
    let server = TestServer::start().await;
    // As nats-server, the limit counts from the first argument.
    let sub_line = |len: usize| format!("SUB {} 1", "a".repeat(len - " 1".len()));
    let mut client = Raw::quiet(server.addr).await;
    client.send(&format!("{}\r\n", sub_line(4096))).await;
    assert_eq!(client.sync().await, Vec::<String>::new(), "4096 bytes of arguments are fine");

    let input = format!("{}\r\n", sub_line(4097));
    assert_refused_and_closed(server.addr, QUIET, input.as_bytes(), "maximum control line exceeded").await;
}

// ---------------------------------------------------------------------------------------
// Errors that close the connection: arguments and sizes
// ---------------------------------------------------------------------------------------

const PUB_USAGE: &str = "Invalid Arguments, expected PUB <subject> [reply] <#bytes>";
const HPUB_USAGE: &str = "Invalid Arguments, expected HPUB <subject> [reply] <#header bytes> <#total bytes>";
const SUB_USAGE: &str = "Invalid Arguments, expected SUB <subject> [queue] <sid> or SUB <filter> <sid> FROM <start>";
const UNSUB_USAGE: &str = "Invalid Arguments, expected UNSUB <sid> [max]";

#[tokio::test]
async fn wrong_argument_counts_are_invalid_arguments() {
    let server = TestServer::start().await;
    for (input, usage) in [
        ("PUB\r\n", PUB_USAGE),
        ("PUB foo\r\n", PUB_USAGE),
        ("PUB foo bar baz 2\r\nhi\r\n", PUB_USAGE),
        ("HPUB foo 2\r\nhi\r\n", HPUB_USAGE),
        ("HPUB foo bar baz 2 2\r\nhi\r\n", HPUB_USAGE),
        ("SUB\r\n", SUB_USAGE),
        ("SUB foo\r\n", SUB_USAGE),
        ("SUB foo q 1 extra\r\n", SUB_USAGE),
        ("UNSUB\r\n", UNSUB_USAGE),
        ("UNSUB 1 2 3\r\n", UNSUB_USAGE),
    ] {
        assert_refused_and_closed(server.addr, QUIET_HEADERS, input.as_bytes(), usage).await;
    }
}

#[tokio::test]
async fn non_numeric_sizes_are_invalid_arguments() {
    let server = TestServer::start().await;
    for (input, usage) in [
        ("PUB foo two\r\nhi\r\n", PUB_USAGE),
        ("PUB foo -1\r\n", PUB_USAGE),
        ("PUB foo reply 2x\r\nhi\r\n", PUB_USAGE),
        ("HPUB foo x 14\r\n", HPUB_USAGE),
        ("HPUB foo 12 y\r\n", HPUB_USAGE),
        // A header block larger than the whole message.
        ("HPUB foo 14 12\r\n", HPUB_USAGE),
    ] {
        assert_refused_and_closed(server.addr, QUIET_HEADERS, input.as_bytes(), usage).await;
    }
}

#[tokio::test]
async fn size_over_max_payload_is_refused_as_soon_as_the_control_line_arrives() {
    let server = TestServer::with_config(Config {
        limits: Limits { max_payload: 1024, ..Limits::default() },
        ..Config::default()
    })
    .await;
    // Only the control lines are sent: the error must not wait for the payload.
    for input in ["PUB foo 1025\r\n", "PUB foo reply 99999999\r\n", "HPUB foo 12 1025\r\n"] {
        assert_refused_and_closed(server.addr, QUIET_HEADERS, input.as_bytes(), "Maximum Payload Violation").await;
    }

    let mut client = Raw::quiet(server.addr).await;
    client.send(&format!("PUB foo 1024\r\n{}\r\n", "x".repeat(1024))).await;
    assert_eq!(client.sync().await, Vec::<String>::new(), "exactly max_payload is fine");
}

#[tokio::test]
async fn default_max_payload_is_one_mebibyte() {
    let server = TestServer::start().await;
    let input = format!("PUB foo {}\r\n", 1024 * 1024 + 1);
    assert_refused_and_closed(server.addr, QUIET, input.as_bytes(), "Maximum Payload Violation").await;
}

// ---------------------------------------------------------------------------------------
// Errors that close the connection: CONNECT and headers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_with_invalid_json_is_refused() {
    let server = TestServer::start().await;
    for input in ["CONNECT {bad\r\n", "CONNECT {\"verbose\":\"yes\"}\r\n", "CONNECT \"verbose\"\r\n"] {
        assert_refused_and_closed(server.addr, None, input.as_bytes(), "Invalid CONNECT JSON").await;
    }
}

#[tokio::test]
async fn connect_with_protocol_2_is_refused() {
    let server = TestServer::start().await;
    let input = b"CONNECT {\"verbose\":false,\"protocol\":2}\r\n";
    assert_refused_and_closed(server.addr, None, input, "invalid client protocol").await;
}

#[tokio::test]
async fn connect_with_no_responders_but_without_headers_is_refused() {
    let server = TestServer::start().await;
    let input = b"CONNECT {\"verbose\":false,\"no_responders\":true}\r\n";
    assert_refused_and_closed(server.addr, None, input, "no responders requires headers support").await;
}

#[tokio::test]
async fn hpub_without_headers_in_connect_is_refused() {
    let server = TestServer::start().await;
    let input = b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
    // Before any CONNECT, and after one that does not ask for headers.
    assert_refused_and_closed(server.addr, None, input, "message headers not supported").await;
    assert_refused_and_closed(server.addr, QUIET, input, "message headers not supported").await;
    // `$EL.` requests are HPUBs like any other, whichever request the subject names.
    for subject in ["$EL.PUB.orders.1 _INBOX.r", "$EL.SUB _INBOX.r", "$EL.LAST.orders.1 _INBOX.r"] {
        let input = format!("HPUB {subject} 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
        assert_refused_and_closed(server.addr, QUIET, input.as_bytes(), "message headers not supported").await;
    }
}

// ---------------------------------------------------------------------------------------
// Errors that leave the connection open
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sub_with_invalid_subject_is_refused_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut client = Raw::quiet(server.addr).await;
    for subject in [".a", "a.", "a..b", ">.a", "a.>.b"] {
        client.send(&format!("SUB {subject} 1\r\n")).await;
        let line = client.line().await;
        assert_eq!(line, "-ERR 'Invalid Subject'", "after SUB {subject} 1");
        assert_eq!(client.sync().await, Vec::<String>::new(), "still open after SUB {subject} 1");
    }
}

/// A client subscribed to everything, to show what was (not) delivered.
async fn tap(addr: SocketAddr) -> Raw {
    let mut tap = Raw::quiet(addr).await;
    tap.send("SUB > 1\r\n").await;
    tap.sync().await;
    tap
}

const INVALID_PUBLISH_SUBJECTS: [&str; 5] = ["foo.*", "a..b", ">", "foo.>", ".a"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pedantic_pub_to_invalid_subject_is_refused_not_delivered_and_stays_open() {
    let server = TestServer::start().await;
    let mut tap = tap(server.addr).await;
    let mut client = Raw::connect_with(server.addr, r#"{"verbose":false,"pedantic":true}"#).await;

    for subject in INVALID_PUBLISH_SUBJECTS {
        client.send(&format!("PUB {subject} 2\r\nhi\r\n")).await;
        let line = client.line().await;
        assert_eq!(line, "-ERR 'Invalid Publish Subject'", "after PUB {subject}");
        assert_eq!(client.sync().await, Vec::<String>::new(), "still open after PUB {subject}");
    }
    client.send("PUB ok 2\r\nhi\r\n").await;
    client.sync().await;
    assert_eq!(tap.sync().await, ["MSG ok 1 2", "hi"], "only the valid publish reaches `>`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pub_to_invalid_subject_before_connect_is_refused_as_pedantic() {
    let server = TestServer::start().await;
    let mut tap = tap(server.addr).await;
    let mut client = Raw::connect(server.addr).await;

    client.send("PUB foo.* 2\r\nhi\r\n").await;
    client.expect("-ERR 'Invalid Publish Subject'").await;
    // nats-server would add +OK here (it warns, then routes); eventline drops the message.
    let rest = client.sync().await;
    assert!(rest.iter().all(|line| line == "+OK"), "still open, nothing else: {rest:?}");
    assert_eq!(tap.sync().await, Vec::<String>::new(), "not delivered to `>`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_pedantic_pub_to_invalid_subject_is_dropped_silently() {
    let server = TestServer::start().await;
    let mut tap = tap(server.addr).await;
    let mut client = Raw::quiet(server.addr).await;

    for subject in INVALID_PUBLISH_SUBJECTS {
        client.send(&format!("PUB {subject} 2\r\nhi\r\n")).await;
    }
    assert_eq!(client.sync().await, Vec::<String>::new(), "no error, still open");
    assert_eq!(tap.sync().await, Vec::<String>::new(), "nothing delivered to `>`");
}

#[tokio::test]
async fn unsub_of_unknown_sid_is_ignored() {
    let server = TestServer::start().await;
    let mut verbose = Raw::connect(server.addr).await;
    verbose.send("UNSUB 99\r\nUNSUB 98 5\r\n").await;
    verbose.expect_lines(&["+OK", "+OK"]).await;
    assert_eq!(verbose.sync().await, Vec::<String>::new());

    let mut quiet = Raw::quiet(server.addr).await;
    quiet.send("UNSUB 99\r\n").await;
    assert_eq!(quiet.sync().await, Vec::<String>::new());
}
