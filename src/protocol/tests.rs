//! Unit tests for the protocol layer: every client op parsed whole, split at every byte, and
//! in a must-fail table with its exact error and wire text; the encoder byte for byte; and
//! the client-side `ServerCodec` round-tripping what the encoder writes.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::client::{Delivery, Received, ServerCodec};
use super::codec::ClientCodec;
use super::parse::parse_client_op;
use super::{
    ApiRead, ApiRequest, CatchUp, ClientOp, Connect, Extensions, Info, MAX_CONTROL_LINE, ProtocolError, Pub,
    PublishOptions, Query, Refusal, ServerOp, Start, Usage, encode,
};
use crate::config::DEFAULT_MAX_PAYLOAD;
use crate::subject::{Filter, SubjectError};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn publish(
    subject: &'static [u8],
    reply: Option<&'static [u8]>,
    headers: Option<&'static [u8]>,
    payload: &'static [u8],
) -> ClientOp {
    ClientOp::Pub(Pub { subject: b(subject), reply: reply.map(b), headers: headers.map(b), payload: b(payload) })
}

fn sub(subject: &'static [u8], queue: Option<&'static [u8]>, sid: &'static [u8]) -> ClientOp {
    ClientOp::Sub { subject: b(subject), queue: queue.map(b), sid: b(sid) }
}

fn unsub(sid: &'static [u8], max: Option<u64>) -> ClientOp {
    ClientOp::Unsub { sid: b(sid), max }
}

fn connect(c: Connect) -> ClientOp {
    ClientOp::Connect(Box::new(c))
}

/// Feeds `chunks` one after another to a fresh `ClientCodec`, decoding after each until
/// `Ok(None)`. Returns the ops and the bytes left undecoded, or the first error.
fn feed(max_payload: usize, chunks: &[&[u8]]) -> Result<(Vec<ClientOp>, usize), ProtocolError> {
    feed_codec(ClientCodec::new(max_payload), chunks)
}

/// [`feed`] for any decoder of this module (the client's or the server's side).
fn feed_codec<D: Decoder<Error = ProtocolError>>(
    mut codec: D,
    chunks: &[&[u8]],
) -> Result<(Vec<D::Item>, usize), ProtocolError> {
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(op) = codec.decode(&mut buf)? {
            ops.push(op);
        }
    }
    Ok((ops, buf.len()))
}

/// Decodes a whole input that must hold only complete ops.
fn decode_whole(input: &[u8]) -> Vec<ClientOp> {
    let (ops, left) = feed(DEFAULT_MAX_PAYLOAD, &[input]).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
    assert_eq!(left, 0, "undecoded bytes left in {input:?}");
    ops
}

fn byte_at_a_time(input: &[u8]) -> Vec<&[u8]> {
    input.chunks(1).collect()
}

/// `ProtocolError` holds an `io::Error`, so it has no `PartialEq`; its Debug text names the
/// variant and the `Usage`, which is what the tables compare.
fn same_error(a: &ProtocolError, b: &ProtocolError) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

// ---------------------------------------------------------------------------------------------
// Every op parsed whole
// ---------------------------------------------------------------------------------------------

const FULL_CONNECT: &[u8] = br#"CONNECT {"verbose":false,"pedantic":false,"echo":false,"headers":true,"no_responders":true,"name":"n","lang":"rust","version":"1.2.3","protocol":1}"#;

/// Each valid input (one op, with its line ends) and the op it must decode to.
fn catalogue() -> Vec<(Vec<u8>, ClientOp)> {
    let full = Connect {
        verbose: false,
        pedantic: false,
        echo: false,
        headers: true,
        no_responders: true,
        name: Some("n".into()),
        lang: Some("rust".into()),
        version: Some("1.2.3".into()),
        protocol: Some(1),
    };
    let hdr: &[u8] = b"NATS/1.0\r\nA: b\r\n\r\n";
    vec![
        ([FULL_CONNECT, b"\r\n"].concat(), connect(full)),
        (b"CONNECT {}\r\n".to_vec(), connect(Connect::default())),
        // JSON with blanks inside is one argument.
        (
            b"CONNECT {\"name\": \"a b\",\t\"verbose\": false}\r\n".to_vec(),
            connect(Connect { verbose: false, name: Some("a b".into()), ..Connect::default() }),
        ),
        (
            [&br#"CONNECT {"verbose":false,"unknown_field":[1,2]}"#[..], b"\r\n"].concat(),
            connect(Connect { verbose: false, ..Connect::default() }),
        ),
        (b"PUB foo 5\r\nhello\r\n".to_vec(), publish(b"foo", None, None, b"hello")),
        (b"PUB foo reply.to 5\r\nhello\r\n".to_vec(), publish(b"foo", Some(b"reply.to"), None, b"hello")),
        (b"PUB foo 7\r\nhe\r\nllo\r\n".to_vec(), publish(b"foo", None, None, b"he\r\nllo")),
        (b"HPUB foo 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n".to_vec(), publish(b"foo", None, Some(hdr), b"hello")),
        (
            b"HPUB foo rep 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n".to_vec(),
            publish(b"foo", Some(b"rep"), Some(hdr), b"hello"),
        ),
        (b"HPUB foo 18 18\r\nNATS/1.0\r\nA: b\r\n\r\n\r\n".to_vec(), publish(b"foo", None, Some(hdr), b"")),
        (b"SUB foo 1\r\n".to_vec(), sub(b"foo", None, b"1")),
        (b"SUB foo.* workers 22\r\n".to_vec(), sub(b"foo.*", Some(b"workers"), b"22")),
        (b"UNSUB 1\r\n".to_vec(), unsub(b"1", None)),
        (b"UNSUB 1 5\r\n".to_vec(), unsub(b"1", Some(5))),
        (b"UNSUB 1 five\r\n".to_vec(), unsub(b"1", Some(0))),
        (b"UNSUB 1 -5\r\n".to_vec(), unsub(b"1", Some(0))),
        (b"PING\r\n".to_vec(), ClientOp::Ping),
        (b"PONG\r\n".to_vec(), ClientOp::Pong),
        // Case-insensitive verbs.
        (b"connect {}\r\n".to_vec(), connect(Connect::default())),
        (b"pub foo 2\r\nhi\r\n".to_vec(), publish(b"foo", None, None, b"hi")),
        (b"hPuB foo 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n".to_vec(), publish(b"foo", None, Some(hdr), b"hi")),
        (b"Sub foo 1\r\n".to_vec(), sub(b"foo", None, b"1")),
        (b"unSUB 1\r\n".to_vec(), unsub(b"1", None)),
        (b"ping\r\n".to_vec(), ClientOp::Ping),
        (b"pOnG\r\n".to_vec(), ClientOp::Pong),
        // Tabs and runs of blanks between arguments, trailing blanks.
        (b"PUB\tfoo \t reply\t\t5\r\nhello\r\n".to_vec(), publish(b"foo", Some(b"reply"), None, b"hello")),
        (b"PUB foo 5 \t \r\nhello\r\n".to_vec(), publish(b"foo", None, None, b"hello")),
        (
            b"HPUB  foo\t18   23\t\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n".to_vec(),
            publish(b"foo", None, Some(hdr), b"hello"),
        ),
        (b"SUB   foo \t q\t1  \r\n".to_vec(), sub(b"foo", Some(b"q"), b"1")),
        (b"UNSUB\t1\t \r\n".to_vec(), unsub(b"1", None)),
        (b"CONNECT \t {} \r\n".to_vec(), connect(Connect::default())),
        // Bare LF line ends, and a payload ended by a bare LF (an eventline extension).
        (b"PUB foo 5\nhello\n".to_vec(), publish(b"foo", None, None, b"hello")),
        (b"PUB foo 5\r\nhello\n".to_vec(), publish(b"foo", None, None, b"hello")),
        (b"SUB foo 1\n".to_vec(), sub(b"foo", None, b"1")),
        (b"UNSUB 1 2\n".to_vec(), unsub(b"1", Some(2))),
        (b"PING\n".to_vec(), ClientOp::Ping),
        (b"CONNECT {}\n".to_vec(), connect(Connect::default())),
        // Zero-length payloads.
        (b"PUB foo 0\r\n\r\n".to_vec(), publish(b"foo", None, None, b"")),
        (b"PUB foo 0\n\n".to_vec(), publish(b"foo", None, None, b"")),
        // nats-server answers these with PONG: they parse as PING.
        (b"PING foo\r\n".to_vec(), ClientOp::Ping),
        (b"PINGX\r\n".to_vec(), ClientOp::Ping),
        (b"PONG foo\r\n".to_vec(), ClientOp::Pong),
        // Extensions: typed arguments, and arguments that do not parse as items (a `-NAK`,
        // the connection stays open), never as errors.
        (b"APUB foo 2 msg-id=a expect-rev=3\r\nhi\r\n".to_vec(), apub(None, Ok(conditions()))),
        (b"APUB foo 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n".to_vec(), apub(Some(hdr), Ok(PublishOptions::default()))),
        (b"APUB foo 2 expect-rev=x\r\nhi\r\n".to_vec(), apub(None, Err(Refusal::NotANumber("expect-rev".into())))),
        (b"SUB a.> 7 FROM new\r\n".to_vec(), catch_up(Ok(CatchUp { filter: filter(b"a.>"), start: Start::New }))),
        (b"SUB a.> 7 from 12\r\n".to_vec(), catch_up(Ok(CatchUp { filter: filter(b"a.>"), start: Start::Seq(12) }))),
        (b"SUB a.> 7 FROM soon\r\n".to_vec(), catch_up(Err(Refusal::InvalidStart("soon".into())))),
        (b"SUB a..b 7 FROM 0\r\n".to_vec(), catch_up(Err(Refusal::invalid_filter(b"a..b", SubjectError::EmptyToken)))),
        (b"FETCH 9 a,b.> limit=2\r\n".to_vec(), fetch(Query::parse(b"a,b.>", b"limit=2"))),
        (b"FETCH 9 a colour=red\r\n".to_vec(), fetch(Err(Refusal::UnknownOption("colour".into())))),
        (
            b"PUB $EL.PUB.orders.1 r 2\r\nhi\r\n".to_vec(),
            ClientOp::Request {
                request: ApiRequest::Publish {
                    message: Pub { subject: b(b"orders.1"), reply: None, headers: None, payload: b(b"hi") },
                    reply: Some(b(b"r")),
                },
                headers: false,
            },
        ),
        (
            b"HPUB $EL.LAST.orders.1 r 12 12\r\nNATS/1.0\r\n\r\n\r\n".to_vec(),
            ClientOp::Request {
                request: ApiRequest::Read { read: ApiRead::Last(b(b"orders.1")), reply: b(b"r") },
                headers: true,
            },
        ),
        // Not a request: no reply subject, or an invalid subject.
        (b"PUB $EL.SUB 0\r\n\r\n".to_vec(), publish(b"$EL.SUB", None, None, b"")),
        (b"PUB $EL.LAST..x r 0\r\n\r\n".to_vec(), publish(b"$EL.LAST..x", Some(b"r"), None, b"")),
    ]
}

fn apub(headers: Option<&'static [u8]>, options: Result<PublishOptions, Refusal>) -> ClientOp {
    let payload = b(b"hi");
    ClientOp::Apub(Pub { subject: b(b"foo"), reply: None, headers: headers.map(b), payload }, options)
}

fn conditions() -> PublishOptions {
    PublishOptions { msg_id: Some(b(b"a")), expected_revision: Some(3), ..PublishOptions::default() }
}

fn filter(text: &'static [u8]) -> Filter {
    Filter::new(b(text)).expect("a valid filter")
}

fn catch_up(catch_up: Result<CatchUp, Refusal>) -> ClientOp {
    ClientOp::CatchUp { sid: b(b"7"), catch_up }
}

fn fetch(query: Result<Query, Refusal>) -> ClientOp {
    ClientOp::Fetch { sid: b(b"9"), query }
}

#[test]
fn every_op_parses_whole() {
    for (input, expected) in catalogue() {
        assert_eq!(decode_whole(&input), vec![expected], "input {:?}", String::from_utf8_lossy(&input));
    }
}

#[test]
fn parse_client_op_reports_the_length_used() {
    for (input, _) in catalogue() {
        let mut with_more = input.clone();
        with_more.extend_from_slice(b"PING\r\n");
        let parsed = parse_client_op(&with_more, DEFAULT_MAX_PAYLOAD).ok().flatten();
        assert_eq!(parsed.map(|p| p.len), Some(input.len()), "input {:?}", String::from_utf8_lossy(&input));
    }
}

#[test]
fn connect_defaults_when_fields_are_missing() {
    let ops = decode_whole(b"CONNECT {}\r\n");
    let [ClientOp::Connect(c)] = ops.as_slice() else { panic!("{ops:?}") };
    assert!(c.verbose, "verbose defaults to true");
    assert!(c.pedantic, "pedantic defaults to true");
    assert!(c.echo, "echo defaults to true");
    assert!(!c.headers, "headers defaults to false");
    assert!(!c.no_responders);
    assert_eq!((c.name.as_deref(), c.lang.as_deref(), c.version.as_deref(), c.protocol), (None, None, None, None));
}

#[test]
fn hpub_splits_headers_and_payload() {
    let ops = decode_whole(b"HPUB foo r 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n");
    let [ClientOp::Pub(p)] = ops.as_slice() else { panic!("{ops:?}") };
    assert_eq!(p.headers.as_deref(), Some(&b"NATS/1.0\r\nA: b\r\n\r\n"[..]));
    assert_eq!(&p.payload[..], b"hello");
    assert_eq!(p.reply.as_deref(), Some(&b"r"[..]));
}

#[test]
fn multiple_ops_in_one_buffer_decode_in_order() {
    let input = b"CONNECT {\"verbose\":false}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\nUNSUB 1\r\nPONG\r\n";
    let expected = vec![
        connect(Connect { verbose: false, ..Connect::default() }),
        sub(b"foo", None, b"1"),
        publish(b"foo", None, None, b"hi"),
        ClientOp::Ping,
        unsub(b"1", None),
        ClientOp::Pong,
    ];
    assert_eq!(decode_whole(input), expected);
}

#[test]
fn ops_before_an_error_are_still_decoded() {
    let mut codec = ClientCodec::new(DEFAULT_MAX_PAYLOAD);
    let mut buf = BytesMut::from(&b"PING\r\nFOO\r\n"[..]);
    assert_eq!(codec.decode(&mut buf).ok().flatten(), Some(ClientOp::Ping));
    assert!(matches!(codec.decode(&mut buf), Err(ProtocolError::UnknownOperation)));
}

// ---------------------------------------------------------------------------------------------
// Split at every byte
// ---------------------------------------------------------------------------------------------

fn all_ops() -> (Vec<u8>, Vec<ClientOp>) {
    catalogue().into_iter().fold((Vec::new(), Vec::new()), |(mut input, mut ops), (i, op)| {
        input.extend_from_slice(&i);
        ops.push(op);
        (input, ops)
    })
}

#[test]
fn all_ops_split_at_every_byte() {
    let (input, expected) = all_ops();
    assert_eq!(decode_whole(&input), expected);
    for cut in 0..=input.len() {
        let (head, tail) = input.split_at(cut);
        // The first piece alone never errors; it yields a prefix of the ops.
        let (ops, _) = feed(DEFAULT_MAX_PAYLOAD, &[head]).unwrap_or_else(|e| panic!("cut {cut}: {e:?}"));
        assert_eq!(ops[..], expected[..ops.len()], "cut {cut}");
        let (ops, left) = feed(DEFAULT_MAX_PAYLOAD, &[head, tail]).unwrap_or_else(|e| panic!("cut {cut}: {e:?}"));
        assert_eq!((ops, left), (expected.clone(), 0), "cut {cut}");
    }
}

#[test]
fn all_ops_byte_at_a_time() {
    let (input, expected) = all_ops();
    let (ops, left) = feed(DEFAULT_MAX_PAYLOAD, &byte_at_a_time(&input)).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((ops, left), (expected, 0));
}

#[test]
fn incomplete_op_is_ok_none_for_every_prefix() {
    for (input, _) in catalogue() {
        for end in 0..input.len() {
            let r = parse_client_op(&input[..end], DEFAULT_MAX_PAYLOAD);
            assert!(matches!(r, Ok(None)), "prefix {:?}: {r:?}", String::from_utf8_lossy(&input[..end]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads are slices of the read buffer
// ---------------------------------------------------------------------------------------------

/// True when `part` lies inside `whole`'s memory, at `offset`.
fn is_slice_at(whole: (usize, usize), part: &[u8], offset: usize) -> bool {
    let (start, len) = whole;
    let p = part.as_ptr() as usize;
    p == start + offset && p + part.len() <= start + len
}

#[test]
fn payloads_are_slices_of_the_read_buffer() {
    let input = b"PUB foo rep 5\r\nhello\r\nHPUB bar 12 15\r\nNATS/1.0\r\n\r\nabc\r\nSUB s q 9\r\n";
    let mut buf = BytesMut::with_capacity(input.len());
    buf.extend_from_slice(input);
    let whole = (buf.as_ptr() as usize, buf.len());
    let mut codec = ClientCodec::new(DEFAULT_MAX_PAYLOAD);
    let Ok(Some(ClientOp::Pub(p))) = codec.decode(&mut buf) else { panic!("first op") };
    assert!(is_slice_at(whole, &p.subject, 4));
    assert!(is_slice_at(whole, p.reply.as_deref().unwrap_or_default(), 8));
    assert!(is_slice_at(whole, &p.payload, 15));
    let Ok(Some(ClientOp::Pub(h))) = codec.decode(&mut buf) else { panic!("second op") };
    assert!(is_slice_at(whole, &h.subject, 27));
    assert!(is_slice_at(whole, h.headers.as_deref().unwrap_or_default(), 38));
    assert!(is_slice_at(whole, &h.payload, 50));
    let Ok(Some(ClientOp::Sub { subject, queue, sid })) = codec.decode(&mut buf) else { panic!("third op") };
    assert!(is_slice_at(whole, &subject, 59));
    assert!(is_slice_at(whole, queue.as_deref().unwrap_or_default(), 61));
    assert!(is_slice_at(whole, &sid, 63));
}

// ---------------------------------------------------------------------------------------------
// Must fail
// ---------------------------------------------------------------------------------------------

const UNKNOWN: &str = "Unknown Protocol Operation";
const PUB_USAGE: &str = "Invalid Arguments, expected PUB <subject> [reply] <#bytes>";
const HPUB_USAGE: &str = "Invalid Arguments, expected HPUB <subject> [reply] <#header bytes> <#total bytes>";
const SUB_USAGE: &str = "Invalid Arguments, expected SUB <subject> [queue] <sid> or SUB <filter> <sid> FROM <start>";
const UNSUB_USAGE: &str = "Invalid Arguments, expected UNSUB <sid> [max]";

fn must_fail() -> Vec<(Vec<u8>, ProtocolError, &'static str)> {
    use ProtocolError::{InvalidArguments as Args, InvalidConnect, MaxControlLine, MaxPayload, UnknownOperation};
    let long_line = vec![b'a'; 2 * MAX_CONTROL_LINE + 1];
    let long_pub = [b"PUB ", &[b'x'; 5000][..], b" 1\r\n"].concat();
    vec![
        (b"FOO\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"FOO bar baz\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"\n".to_vec(), UnknownOperation, UNKNOWN),
        (b" PUB a 1\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"\tPING\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"MSG a 1 1\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"HMSG a 1 0 1\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"PUBX a 1\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"PUB a\r\n".to_vec(), Args(Usage::Pub), PUB_USAGE),
        (b"PUB\r\n".to_vec(), Args(Usage::Pub), PUB_USAGE),
        (b"PUB a b c 1\r\n".to_vec(), Args(Usage::Pub), PUB_USAGE),
        (b"PUB a five\r\n".to_vec(), Args(Usage::Pub), PUB_USAGE),
        (b"PUB a -1\r\n".to_vec(), Args(Usage::Pub), PUB_USAGE),
        (b"PUB a 99999999999999999999\r\n".to_vec(), Args(Usage::Pub), PUB_USAGE),
        // The byte count was wrong: the payload is not followed by its line end.
        (b"PUB a 1\r\nhello\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"PUB a 5\r\nhello\rX".to_vec(), UnknownOperation, UNKNOWN),
        (b"HPUB a 12 14\r\nNATS/1.0\r\n\r\nhello\r\n".to_vec(), UnknownOperation, UNKNOWN),
        (b"HPUB a 20 10\r\n".to_vec(), Args(Usage::Hpub), HPUB_USAGE),
        (b"HPUB a 10\r\n".to_vec(), Args(Usage::Hpub), HPUB_USAGE),
        (b"HPUB a\r\n".to_vec(), Args(Usage::Hpub), HPUB_USAGE),
        (b"HPUB\r\n".to_vec(), Args(Usage::Hpub), HPUB_USAGE),
        (b"HPUB a b c d e\r\n".to_vec(), Args(Usage::Hpub), HPUB_USAGE),
        (b"HPUB a x 10\r\n".to_vec(), Args(Usage::Hpub), HPUB_USAGE),
        (b"HPUB a 2 x\r\n".to_vec(), Args(Usage::Hpub), HPUB_USAGE),
        (b"SUB a\r\n".to_vec(), Args(Usage::Sub), SUB_USAGE),
        (b"SUB\r\n".to_vec(), Args(Usage::Sub), SUB_USAGE),
        (b"SUB a b c d\r\n".to_vec(), Args(Usage::Sub), SUB_USAGE),
        (b"UNSUB\r\n".to_vec(), Args(Usage::Unsub), UNSUB_USAGE),
        (b"UNSUB 1 2 3\r\n".to_vec(), Args(Usage::Unsub), UNSUB_USAGE),
        // Limits, checked before the payload is buffered: no payload bytes are present.
        (b"PUB a 2000000\r\n".to_vec(), MaxPayload, "Maximum Payload Violation"),
        (b"PUB a 1048577\r\n".to_vec(), MaxPayload, "Maximum Payload Violation"),
        (b"HPUB a 12 2000000\r\n".to_vec(), MaxPayload, "Maximum Payload Violation"),
        (long_line, MaxControlLine, "maximum control line exceeded"),
        (long_pub, MaxControlLine, "maximum control line exceeded"),
        (b"CONNECT {not json}\r\n".to_vec(), InvalidConnect, "Invalid CONNECT JSON"),
        ([&br#"CONNECT {"verbose":"yes"}"#[..], b"\r\n"].concat(), InvalidConnect, "Invalid CONNECT JSON"),
        (b"CONNECT\r\n".to_vec(), InvalidConnect, "Invalid CONNECT JSON"),
        (b"CONNECT \r\n".to_vec(), InvalidConnect, "Invalid CONNECT JSON"),
    ]
}

#[test]
fn must_fail_table_whole() {
    for (input, expected, text) in must_fail() {
        let shown = String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned();
        match feed(DEFAULT_MAX_PAYLOAD, &[&input]) {
            Err(e) => {
                assert!(same_error(&e, &expected), "{shown:?}: got {e:?}, want {expected:?}");
                assert_eq!(e.wire_text(), text, "{shown:?}");
                assert_eq!(e.to_string(), text, "{shown:?}: Display is the wire text");
            }
            Ok(ops) => panic!("{shown:?} decoded to {ops:?}"),
        }
    }
}

#[test]
fn must_fail_table_byte_at_a_time() {
    for (input, expected, _) in must_fail() {
        let shown = String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned();
        match feed(DEFAULT_MAX_PAYLOAD, &byte_at_a_time(&input)) {
            Err(e) => assert!(same_error(&e, &expected), "{shown:?}: got {e:?}, want {expected:?}"),
            Ok(ops) => panic!("{shown:?} decoded to {ops:?}"),
        }
    }
}

#[test]
fn max_payload_fails_as_soon_as_the_control_line_is_complete() {
    let r = parse_client_op(b"PUB a 2000000\r\n", DEFAULT_MAX_PAYLOAD);
    assert!(matches!(r, Err(ProtocolError::MaxPayload)), "{r:?}");
    assert!(matches!(parse_client_op(b"PUB a 2000000\r", DEFAULT_MAX_PAYLOAD), Ok(None)));
}

#[test]
fn max_payload_boundary_counts_headers() {
    let at_limit = feed(16, &[b"PUB a 16\r\n0123456789abcdef\r\nHPUB a 12 16\r\nNATS/1.0\r\n\r\nabcd\r\n"]);
    assert!(matches!(at_limit, Ok((ref ops, 0)) if ops.len() == 2), "{at_limit:?}");
    assert!(matches!(feed(16, &[b"PUB a 17\r\n"]), Err(ProtocolError::MaxPayload)));
    assert!(matches!(feed(16, &[b"HPUB a 12 17\r\n"]), Err(ProtocolError::MaxPayload)));
}

#[test]
fn control_line_limit_applies_before_the_newline() {
    let max = [&b"PUB "[..], &vec![b'a'; MAX_CONTROL_LINE]].concat();
    assert!(matches!(parse_client_op(&max, DEFAULT_MAX_PAYLOAD), Ok(None)), "4096 bytes of arguments, no newline yet");
    let over = [&b"PUB "[..], &vec![b'a'; MAX_CONTROL_LINE + 1]].concat();
    assert!(matches!(parse_client_op(&over, DEFAULT_MAX_PAYLOAD), Err(ProtocolError::MaxControlLine)));
    let over_with_lf = [&over[..], b"\r\n"].concat();
    assert!(matches!(parse_client_op(&over_with_lf, DEFAULT_MAX_PAYLOAD), Err(ProtocolError::MaxControlLine)));
    // A line of one endless verb, or of endless blanks, is bounded too.
    let verb = vec![b'a'; 2 * MAX_CONTROL_LINE + 1];
    assert!(matches!(parse_client_op(&verb, DEFAULT_MAX_PAYLOAD), Err(ProtocolError::MaxControlLine)));
    let blanks = [&b"PUB"[..], &vec![b' '; 2 * MAX_CONTROL_LINE]].concat();
    assert!(matches!(parse_client_op(&blanks, DEFAULT_MAX_PAYLOAD), Err(ProtocolError::MaxControlLine)));
}

/// A `SUB` whose arguments are exactly [`MAX_CONTROL_LINE`] bytes (CR and LF not counted),
/// as nats-server counts them: from the first argument.
fn sub_of_max_len() -> Vec<u8> {
    let subject = vec![b'x'; MAX_CONTROL_LINE - b" 1".len()];
    let line = [b"SUB ", &subject[..], b" 1"].concat();
    assert_eq!(line.len() - b"SUB ".len(), MAX_CONTROL_LINE);
    line
}

#[test]
fn control_line_of_exactly_the_limit_is_accepted() {
    let line = sub_of_max_len();
    let lf = [&line[..], b"\n"].concat();
    assert!(matches!(feed(DEFAULT_MAX_PAYLOAD, &[&lf]), Ok((ref ops, 0)) if ops.len() == 1));
    let crlf = [&line[..], b"\r\n"].concat();
    assert!(matches!(feed(DEFAULT_MAX_PAYLOAD, &[&crlf]), Ok((ref ops, 0)) if ops.len() == 1));
}

/// A control line of exactly `MAX_CONTROL_LINE` bytes whose read ends between CR and LF is
/// still incomplete, not over the limit: the pending CR is not counted.
#[test]
fn control_line_of_exactly_the_limit_split_between_cr_and_lf() {
    let crlf = [&sub_of_max_len()[..], b"\r\n"].concat();
    let (head, tail) = crlf.split_at(crlf.len() - 1);
    let r = feed(DEFAULT_MAX_PAYLOAD, &[head, tail]);
    assert!(matches!(r, Ok((ref ops, 0)) if ops.len() == 1), "split after the CR: {r:?}");
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

fn encoded_msg(reply: Option<&[u8]>, headers: Option<&[u8]>, payload: &[u8]) -> BytesMut {
    let mut dst = BytesMut::new();
    encode::msg(&mut dst, b"subj", b"sid", reply, headers, payload);
    dst
}

#[test]
fn encode_msg_exact_bytes() {
    assert_eq!(&encoded_msg(None, None, b"hello")[..], b"MSG subj sid 5\r\nhello\r\n");
    assert_eq!(&encoded_msg(Some(b"reply"), None, b"hello")[..], b"MSG subj sid reply 5\r\nhello\r\n");
    assert_eq!(&encoded_msg(None, None, b"")[..], b"MSG subj sid 0\r\n\r\n");
    let hdr: &[u8] = b"NATS/1.0\r\n\r\n";
    assert_eq!(&encoded_msg(None, Some(hdr), b"hello")[..], b"HMSG subj sid 12 17\r\nNATS/1.0\r\n\r\nhello\r\n");
    assert_eq!(
        &encoded_msg(Some(b"reply"), Some(hdr), b"hello")[..],
        b"HMSG subj sid reply 12 17\r\nNATS/1.0\r\n\r\nhello\r\n"
    );
}

#[test]
fn encode_msg_appends() {
    let mut dst = BytesMut::from(&b"+OK\r\n"[..]);
    encode::msg(&mut dst, b"a", b"1", None, None, b"x");
    assert_eq!(&dst[..], b"+OK\r\nMSG a 1 1\r\nx\r\n");
}

fn sample_info() -> Info {
    Info {
        server_id: "NSERVERID".into(),
        server_name: "eventline-test".into(),
        version: "0.1.0".into(),
        proto: 1,
        host: "0.0.0.0".into(),
        port: 4222,
        headers: true,
        max_payload: DEFAULT_MAX_PAYLOAD,
        client_id: 7,
        client_ip: Some("127.0.0.1".into()),
        eventline: Extensions { features: vec!["replay".into()] },
    }
}

fn encoded_op(op: &ServerOp) -> BytesMut {
    let mut dst = BytesMut::new();
    encode::server_op(op, &mut dst);
    dst
}

#[test]
fn encode_server_ops_exact_bytes() {
    assert_eq!(&encoded_op(&ServerOp::Ok)[..], b"+OK\r\n");
    assert_eq!(&encoded_op(&ServerOp::Err("x"))[..], b"-ERR 'x'\r\n");
    assert_eq!(&encoded_op(&ServerOp::Err(UNKNOWN))[..], b"-ERR 'Unknown Protocol Operation'\r\n");
    assert_eq!(&encoded_op(&ServerOp::Ping)[..], b"PING\r\n");
    assert_eq!(&encoded_op(&ServerOp::Pong)[..], b"PONG\r\n");
}

/// A refusal may quote what the client sent, CRs and all, up to a control line of it; its
/// `-NAK` is still one line that a client's decoder reads.
#[test]
fn encode_nak_is_one_readable_line() {
    let cr = encoded_op(&ServerOp::Nak(Refusal::InvalidStart("0\r\n".into())));
    let reason = "expected a sequence, an RFC 3339 time, last or new";
    assert_eq!(cr, format!("-NAK 'invalid start position 0\\r\\n: {reason}'\r\n").as_bytes());
    for quoted in ["x".repeat(MAX_CONTROL_LINE), "\u{e9}".repeat(MAX_CONTROL_LINE / 2 + 1), "\r".repeat(3000)] {
        let long = encoded_op(&ServerOp::Nak(Refusal::InvalidStart(quoted)));
        assert!(long.len() <= MAX_CONTROL_LINE + 2, "{} bytes", long.len());
        let text = std::str::from_utf8(&long).expect("cut on a character boundary");
        assert!(text.starts_with("-NAK 'invalid start position ") && text.contains("..."), "{text}");
        assert!(text.ends_with(&format!(": {reason}'\r\n")), "{text}");
        let read = feed_server(&[&long]);
        assert!(matches!(read, Ok((ref ops, 0)) if matches!(ops[..], [Received::Nak(_)])), "{read:?}");
    }
}

#[test]
fn encode_info_round_trips_through_serde() {
    for info in [sample_info(), Info { client_ip: None, ..sample_info() }] {
        let out = encoded_op(&ServerOp::Info(Box::new(info.clone())));
        assert!(out.starts_with(b"INFO {"), "{out:?}");
        assert!(out.ends_with(b"} \r\n"), "{out:?}");
        let json = &out[b"INFO ".len()..out.len() - b" \r\n".len()];
        let back: Info = serde_json::from_slice(json).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(back, info);
    }
}

// ---------------------------------------------------------------------------------------------
// client::ServerCodec
// ---------------------------------------------------------------------------------------------

fn delivery(reply: Option<&'static [u8]>, headers: Option<&'static [u8]>, payload: &'static [u8]) -> Received {
    Received::Msg(Delivery {
        subject: b(b"subj"),
        sid: b(b"sid"),
        reply: reply.map(b),
        headers: headers.map(b),
        payload: b(payload),
    })
}

/// A delivery as `encode::msg` takes it: reply, headers, payload.
type MsgCase = (Option<&'static [u8]>, Option<&'static [u8]>, &'static [u8]);

/// Everything the encoder writes, as one stream, and what the client must receive. `INFO`
/// is compared after parsing its JSON, so it is left out of the expected list.
fn server_stream() -> (Vec<u8>, Vec<Received>) {
    let hdr: &'static [u8] = b"NATS/1.0\r\nX: y\r\n\r\n";
    let mut dst = encoded_op(&ServerOp::Info(Box::new(sample_info())));
    let ops = [
        ServerOp::Ok,
        ServerOp::Err(UNKNOWN),
        ServerOp::Ping,
        ServerOp::Pong,
        ServerOp::Ack { seq: 7, revision: 2, duplicate: false },
        ServerOp::Ack { seq: 1_000_000_000_000_000_000, revision: 1, duplicate: true },
        ServerOp::Nak(Refusal::LastSubjectSequence { expected: 5, actual: 0 }),
        ServerOp::Nak(Refusal::UnknownOption(String::new())),
    ];
    for op in ops {
        encode::server_op(&op, &mut dst);
    }
    let msgs: [MsgCase; 6] = [
        (None, None, b"hello"),
        (Some(b"_INBOX.1"), None, b"hello"),
        (None, Some(hdr), b"hello"),
        // HMSG with a reply: see `server_codec_hmsg_with_reply`.
        (None, Some(hdr), b"with\r\ncrlf"),
        (None, None, b""),
        (None, Some(hdr), b""),
    ];
    let mut expected = vec![
        Received::Ok,
        Received::Err(b(b"'Unknown Protocol Operation'")),
        Received::Ping,
        Received::Pong,
        Received::Ack { seq: 7, revision: 2, duplicate: false },
        Received::Ack { seq: 1_000_000_000_000_000_000, revision: 1, duplicate: true },
        Received::Nak(b(b"wrong last subject sequence: expected 5, actual 0")),
        Received::Nak(b(b"unknown option ")),
    ];
    for (reply, headers, payload) in msgs {
        encode::msg(&mut dst, b"subj", b"sid", reply, headers, payload);
        expected.push(delivery(reply, headers, payload));
    }
    (dst.to_vec(), expected)
}

fn feed_server(chunks: &[&[u8]]) -> Result<(Vec<Received>, usize), ProtocolError> {
    feed_codec(ServerCodec::new(DEFAULT_MAX_PAYLOAD), chunks)
}

/// Checks the `INFO` at the head of `received` and returns the rest.
fn after_info(mut received: Vec<Received>) -> Vec<Received> {
    let Received::Info(json) = received.remove(0) else { panic!("first op is not INFO: {received:?}") };
    let info: Info = serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    assert_eq!(info, sample_info());
    received
}

#[test]
fn server_codec_round_trips_the_encoder() {
    let (input, expected) = server_stream();
    let (received, left) = feed_server(&[&input]).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(left, 0);
    assert_eq!(after_info(received), expected);
}

#[test]
fn server_codec_split_at_every_byte() {
    let (input, expected) = server_stream();
    for cut in 0..=input.len() {
        let (head, tail) = input.split_at(cut);
        let (received, left) = feed_server(&[head, tail]).unwrap_or_else(|e| panic!("cut {cut}: {e:?}"));
        assert_eq!(left, 0, "cut {cut}");
        assert_eq!(after_info(received), expected, "cut {cut}");
    }
    let (received, left) = feed_server(&byte_at_a_time(&input)).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(left, 0);
    assert_eq!(after_info(received), expected);
}

#[test]
fn server_codec_rejects_bad_input() {
    let bad: [&[u8]; 6] = [
        b"FOO\r\n",
        b"MSG subj\r\n",
        b"MSG subj sid x\r\n",
        b"HMSG subj sid 10 5\r\n",
        b"MSG subj sid 1\r\nhello\r\n",
        b"MSG a b c d e\r\n",
    ];
    for input in bad {
        let r = feed_server(&[input]);
        assert!(matches!(r, Err(ProtocolError::UnknownOperation)), "{input:?}: {r:?}");
    }
    assert!(matches!(feed_server(&[b"MSG subj sid 2000000\r\n"]), Err(ProtocolError::MaxPayload)));
}

#[test]
fn server_codec_ack_and_nak_lines() {
    let cases: [(&[u8], Received); 5] = [
        (b"+ACK rev=3 seq=9\r\n", Received::Ack { seq: 9, revision: 3, duplicate: false }),
        (b"+ACK seq=9 rev=3 duplicate later=1\n", Received::Ack { seq: 9, revision: 3, duplicate: true }),
        (b"-NAK 'it's refused'\r\n", Received::Nak(b(b"it's refused"))),
        (b"-NAK unquoted reason \r\n", Received::Nak(b(b"unquoted reason"))),
        (b"-NAK\r\n", Received::Nak(b(b""))),
    ];
    for (input, want) in cases {
        let r = feed_server(&[input]);
        assert!(matches!(r, Ok((ref ops, 0)) if *ops == [want.clone()]), "{input:?}: {r:?}");
    }
    let bad: [&[u8]; 5] =
        [b"+ACK\r\n", b"+ACK seq=1\r\n", b"+ACK rev=1\r\n", b"+ACK seq=x rev=1\r\n", b"+ACK seq=1 rev=-1\r\n"];
    for input in bad {
        let r = feed_server(&[input]);
        assert!(matches!(r, Err(ProtocolError::UnknownOperation)), "{input:?}: {r:?}");
    }
}

/// A bare `-ERR` or `INFO` line (no text after the verb) from a misbehaving server must not
/// crash the client: either outcome below is fine, a panic is not.
#[test]
fn server_codec_bare_err_or_info_line_does_not_panic() {
    for input in [&b"-ERR\r\n"[..], b"INFO\r\n"] {
        let r = feed_server(&[input]);
        assert!(r.is_err() || matches!(r, Ok((ref ops, 0)) if ops.len() == 1), "{input:?}: {r:?}");
    }
}

/// `HMSG <subject> <sid> <reply> <#hdr> <#total>` has five arguments, one more than any
/// client op.
#[test]
fn server_codec_hmsg_with_reply() {
    let hdr: &'static [u8] = b"NATS/1.0\r\n\r\n";
    let input = encoded_msg(Some(b"_INBOX.2"), Some(hdr), b"hello");
    assert_eq!(&input[..], b"HMSG subj sid _INBOX.2 12 17\r\nNATS/1.0\r\n\r\nhello\r\n");
    let r = feed_server(&[&input]);
    let want = vec![Received::Msg(Delivery {
        subject: b(b"subj"),
        sid: b(b"sid"),
        reply: Some(b(b"_INBOX.2")),
        headers: Some(b(hdr)),
        payload: b(b"hello"),
    })];
    assert!(matches!(r, Ok((ref ops, 0)) if *ops == want), "{r:?}");
}
