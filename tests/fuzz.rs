//! Fuzz targets for everything a client's bytes reach in `eventline::protocol`: the op decoder
//! (`ClientCodec`), the extension arguments (`APUB` and `FETCH` options, catch-up starts), header
//! blocks (`headers::values`, publish conditions) and the `$EL.` JSON request bodies.
//! Each target is one checking function (nothing panics; the decoder gives the same ops however the
//! bytes arrive, and holds no more than one control line and one payload while it waits; errors and
//! refusals are values that survive their wire encoding; what the crate can write back out, it
//! reads back the same) fed two ways: by proptest, from structure-aware strategies (valid ops and
//! bodies with odd spacing, line ends and case, wrong, huge and negative counts, deep subjects,
//! long tokens, non-UTF-8, then random byte mutations), and by the raw inputs kept in
//! `tests/fuzz-corpus/<target>/`, replayed on every `cargo test`. A failing input proptest finds is
//! shrunk and written there as `found-<hash>`, so it stays a regression test once fixed (proptest's
//! own persistence file is off: its seeds replay only while the strategies stay unchanged).
//! `cargo test` runs a thousand cases per target; for a longer run:
//! `FUZZ_CASES=100000 cargo test --release --test fuzz`.

use std::panic;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use eventline::protocol::client::{Received, ServerCodec};
use eventline::protocol::codec::ClientCodec;
use eventline::protocol::{
    ApiRead, ApiRequest, CatchUp, ClientOp, MAX_CONTROL_LINE, ProtocolError, Pub, PublishOptions, Query, Refusal,
    ServerOp, Start, Subscribe, api, encode, headers,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{Map, Value};
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------------
// Targets: proptest and the corpus drive the same checking function
// ---------------------------------------------------------------------------------------------

/// Cases per target in a plain `cargo test`; `FUZZ_CASES` overrides it.
const DEFAULT_CASES: u32 = 1000;

/// One fuzz target: its corpus directory's name and its checking function.
struct Target {
    name: &'static str,
    check: fn(&[u8]) -> Result<(), TestCaseError>,
}

impl Target {
    /// Runs the check on generated inputs; a failure is shrunk, saved to the corpus, reported.
    fn fuzz(&self, inputs: impl Strategy<Value = Vec<u8>>) {
        let cases = std::env::var("FUZZ_CASES").map_or(DEFAULT_CASES, |n| n.parse().expect("FUZZ_CASES is a number"));
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        match runner.run(&inputs, |input| (self.check)(&input)) {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => {
                let saved = self.dir().join(format!("found-{:016x}", fnv(&input)));
                std::fs::write(&saved, &input).unwrap_or_else(|e| panic!("saving {}: {e}", saved.display()));
                let shown = input[..input.len().min(300)].escape_ascii();
                panic!(
                    "{}: {reason}\ninput ({} bytes): b\"{shown}\"\nsaved as {}",
                    self.name,
                    input.len(),
                    saved.display()
                );
            }
            Err(error) => panic!("{}: {error}", self.name),
        }
    }

    /// Runs the check on every file of the target's corpus.
    fn replay(&self) {
        let dir = self.dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.map(|e| e.path()).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus in {}", dir.display());
        for file in files {
            let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            match panic::catch_unwind(|| (self.check)(&input)) {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => panic!("{}: {failure}", file.display()),
                Err(_) => panic!("{}: panicked (message above)", file.display()),
            }
        }
    }

    fn dir(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(self.name)
    }
}

/// FNV-1a: names saved inputs and seeds the decoder's piece sizes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

const DECODER: Target = Target { name: "decoder", check: check_decoder };
const OPTIONS: Target = Target { name: "options", check: check_options };
const HEADERS: Target = Target { name: "headers", check: check_headers };
const JSON: Target = Target { name: "json", check: check_json };

#[test]
fn decoder() {
    DECODER.fuzz(stream());
}

#[test]
fn decoder_corpus() {
    DECODER.replay();
}

#[test]
fn options() {
    OPTIONS.fuzz(extension_args());
}

#[test]
fn options_corpus() {
    OPTIONS.replay();
}

#[test]
fn headers() {
    HEADERS.fuzz(header_block());
}

#[test]
fn headers_corpus() {
    HEADERS.replay();
}

#[test]
fn json() {
    JSON.fuzz(json_body());
}

#[test]
fn json_corpus() {
    JSON.replay();
}

// ---------------------------------------------------------------------------------------------
// The decoder
// ---------------------------------------------------------------------------------------------

/// The codec's payload limit here: small, so generated byte counts fall on both sides of it.
const MAX_PAYLOAD: usize = 8 * 1024;

/// The most the decoder may hold while it waits for more bytes: a whole control line with its
/// CRLF, a whole payload and the CR of its line end. More would let a peer make the server
/// buffer without bound.
const MAX_HELD: usize = MAX_CONTROL_LINE + 2 + MAX_PAYLOAD + 1;

/// Inputs up to this size are also fed byte by byte (the control-line scan makes that
/// quadratic, too slow for the longest inputs).
const BYTEWISE_MAX: usize = 2048;

/// The ops a stream decodes to, and how it ends.
#[derive(Debug, PartialEq)]
struct Outcome {
    ops: Vec<ClientOp>,
    end: End,
}

#[derive(Debug, PartialEq)]
enum End {
    /// Waiting for more, holding this many bytes.
    Waiting(usize),
    /// Closed after `-ERR '<text>'`.
    Failed(&'static str),
}

/// The decoder gives the same ops, and the same error after them, whether the bytes arrive
/// whole or in pieces; every op passes [`check_op`].
fn check_decoder(input: &[u8]) -> Result<(), TestCaseError> {
    let whole = decode(&[input])?;
    for pieces in feeds(input) {
        let outcome = decode(&pieces)?;
        prop_assert_eq!(&outcome, &whole, "fed in {} pieces", pieces.len());
    }
    whole.ops.iter().try_for_each(check_op)
}

/// Feeds `pieces` to one codec as the server's read loop does: after each read, decode until
/// the codec wants more; the first error closes the connection, so nothing after it is parsed.
fn decode(pieces: &[&[u8]]) -> Result<Outcome, TestCaseError> {
    let mut codec = ClientCodec::new(MAX_PAYLOAD);
    let mut buffer = BytesMut::new();
    let mut ops = Vec::new();
    for piece in pieces {
        buffer.extend_from_slice(piece);
        loop {
            let capacity = buffer.capacity();
            let decoded = codec.decode(&mut buffer);
            prop_assert!(buffer.capacity() <= capacity, "decode grew the buffer");
            match decoded {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => {
                    prop_assert!(buffer.len() <= MAX_HELD, "waits for more holding {} bytes", buffer.len());
                    break;
                }
                Err(error) => {
                    prop_assert!(!matches!(error, ProtocolError::Io(_)), "the decoder does no I/O");
                    prop_assert!(is_one_line(error.wire_text().as_bytes()), "{:?}", error.wire_text());
                    return Ok(Outcome { ops, end: End::Failed(error.wire_text()) });
                }
            }
        }
    }
    Ok(Outcome { ops, end: End::Waiting(buffer.len()) })
}

/// The ways one input is fed besides whole: byte by byte when short, and in pieces of
/// pseudo-random sizes seeded by the input itself, so that replaying a corpus file checks
/// exactly the feeds proptest checked.
fn feeds(input: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut feeds = Vec::new();
    if input.len() <= BYTEWISE_MAX {
        feeds.push(input.chunks(1).collect());
    }
    let mut state = fnv(input) | 1;
    let mut rest = input;
    let mut pieces = Vec::new();
    while !rest.is_empty() {
        // xorshift64; mostly small pieces, now and then one of up to a few control lines.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let size =
            if state.is_multiple_of(8) { state % (3 * MAX_CONTROL_LINE as u64) } else { state % 64 } as usize + 1;
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    feeds.push(pieces);
    feeds
}

/// Checks what the server makes of an op: the refusals it would send, the message it would
/// deliver.
fn check_op(op: &ClientOp) -> Result<(), TestCaseError> {
    match op {
        ClientOp::Pub(message) | ClientOp::Request { request: ApiRequest::Publish { message, .. }, .. } => {
            check_message(message)
        }
        ClientOp::Apub(message, options) => {
            check_message(message)?;
            check_publish_options(options)
        }
        ClientOp::CatchUp { catch_up, .. } => check_catch_up(catch_up),
        ClientOp::Fetch { query, .. } => check_query(query),
        ClientOp::Request { request: ApiRequest::Read { read, .. }, .. } => match read {
            ApiRead::Subscribe(subscribe) => check_subscribe(subscribe),
            ApiRead::Fetch(query) => check_query(query),
            ApiRead::Last(_) => Ok(()),
        },
        ClientOp::Connect(_) | ClientOp::Sub { .. } | ClientOp::Unsub { .. } | ClientOp::Ping | ClientOp::Pong => {
            Ok(())
        }
    }
}

/// A published message is within the payload limit; its header conditions parse or are
/// refused; and delivered as `MSG`/`HMSG` (`encode::msg`, as fan-out writes it), a client's
/// decoder reads back exactly what was published, when that line fits a control line. A
/// longer one is beyond the client's decoder, which takes lines as long as the server does:
/// a subject and reply that fill the `PUB` line come out longer by the sid.
fn check_message(message: &Pub) -> Result<(), TestCaseError> {
    let size = message.headers.as_ref().map_or(0, Bytes::len) + message.payload.len();
    prop_assert!(size <= MAX_PAYLOAD, "a message of {} bytes", size);
    check_publish_options(&message.publish_options())?;
    let mut wire = BytesMut::new();
    let (reply, headers) = (message.reply.as_deref(), message.headers.as_deref());
    encode::msg(&mut wire, &message.subject, b"1", reply, headers, &message.payload);
    let line = wire.iter().position(|&b| b == b'\n').map_or(wire.len(), |lf| lf - "\r".len());
    if line > MAX_CONTROL_LINE {
        return Ok(());
    }
    let received = ServerCodec::new(MAX_PAYLOAD).decode(&mut wire);
    let Ok(Some(Received::Msg(delivery))) = received else {
        return Err(TestCaseError::fail(format!("{message:?} reads back from its delivery as {received:?}")));
    };
    prop_assert!(wire.is_empty(), "{} bytes left after the delivery", wire.len());
    prop_assert_eq!(
        (delivery.subject, delivery.reply, delivery.headers, delivery.payload),
        (message.subject.clone(), message.reply.clone(), message.headers.clone(), message.payload.clone())
    );
    Ok(())
}

/// A stream of client ops, valid or nearly, and now and then mutated at random.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let mutations = prop_oneof![Just(Vec::new()), vec(mutation(), 1..4)];
    (vec(client_op(), 1..8), mutations).prop_map(|(ops, mutations)| mutate(ops.concat(), &mutations))
}

/// A random edit of a valid input.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![3 => any::<u8>(), 1 => select(b" \t\r\n.*>:,=0$\x00\xff".to_vec())];
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip(at, 1 << bit)),
        (any::<Index>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        if bytes.is_empty() {
            break;
        }
        match mutation {
            Mutation::Flip(at, bit) => {
                let at = at.index(bytes.len());
                bytes[at] ^= bit;
            }
            Mutation::Insert(at, b) => bytes.insert(at.index(bytes.len() + 1), *b),
            Mutation::Remove(at) => {
                bytes.remove(at.index(bytes.len()));
            }
            Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        }
    }
    bytes
}

/// How one op is written: the verb's letter case, the blanks between arguments, the line end.
#[derive(Debug, Clone)]
struct Style {
    case: u64,
    blank: &'static [u8],
    line_end: &'static [u8],
}

fn style() -> impl Strategy<Value = Style> {
    let blank = select(vec![&b" "[..], b"\t", b"  ", b" \t "]);
    let odd_end = select(vec![&b""[..], b"\r", b"\n\r", b"\r\r\n", b" \r\n"]);
    let line_end = prop_oneof![8 => Just(&b"\r\n"[..]), 2 => Just(&b"\n"[..]), 1 => odd_end];
    (any::<u64>(), blank, line_end).prop_map(|(case, blank, line_end)| Style { case, blank, line_end })
}

impl Style {
    /// A control line: the verb in this style's case, then each argument given after a blank.
    fn line(&self, verb: &str, args: &[Option<&[u8]>]) -> Vec<u8> {
        let mut line = cased(verb, self.case);
        for arg in args.iter().flatten() {
            line.extend_from_slice(self.blank);
            line.extend_from_slice(arg);
        }
        line.extend_from_slice(self.line_end);
        line
    }

    /// A message op: its control line, then the body and its line end.
    fn message(&self, verb: &str, args: &[Option<&[u8]>], body: &[&[u8]]) -> Vec<u8> {
        let mut op = self.line(verb, args);
        body.iter().for_each(|part| op.extend_from_slice(part));
        op.extend_from_slice(self.line_end);
        op
    }
}

/// `word` with the letters whose bit is set in `case` lowered.
fn cased(word: &str, case: u64) -> Vec<u8> {
    let lower = |i: usize, b: u8| if case >> (i % 64) & 1 == 1 { b.to_ascii_lowercase() } else { b };
    word.bytes().enumerate().map(|(i, b)| lower(i, b)).collect()
}

/// A byte count as a client writes it, or gets it wrong.
#[derive(Debug, Clone)]
enum Count {
    Exact,
    Off(i64),
    Number(u64),
    Text(&'static str),
}

fn count() -> impl Strategy<Value = Count> {
    let odd = [
        "-1",
        "-0",
        "+1",
        "0x10",
        "1e3",
        "",
        "00000000000000000001",
        "8193",
        "1048577",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
    ];
    prop_oneof![
        12 => Just(Count::Exact),
        1 => (-3i64..=3).prop_map(Count::Off),
        1 => any::<u64>().prop_map(Count::Number),
        1 => select(odd.to_vec()).prop_map(Count::Text),
    ]
}

impl Count {
    fn of(&self, len: usize) -> Vec<u8> {
        match self {
            Count::Exact => len.to_string().into_bytes(),
            Count::Off(by) => (len as i64 + by).to_string().into_bytes(),
            Count::Number(n) => n.to_string().into_bytes(),
            Count::Text(text) => text.as_bytes().to_vec(),
        }
    }
}

fn client_op() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => (style(), connect_json()).prop_map(|(s, json)| s.line("CONNECT", &[Some(&json)])),
        4 => publish(),
        3 => hpublish(),
        3 => apublish(),
        2 => (style(), subject(), prop::option::of(token()), sid())
            .prop_map(|(s, subject, queue, sid)| s.line("SUB", &[Some(&subject), queue.as_deref(), Some(&sid)])),
        2 => (style(), subject(), sid(), select(&["FROM", "from", "From", "FRUM"][..]), start_text()).prop_map(
            |(s, filter, sid, from, start)| {
                s.line("SUB", &[Some(&filter), Some(&sid), Some(from.as_bytes()), Some(&start)])
            }
        ),
        1 => (style(), sid(), prop::option::of(select(&["0", "5", "-5", "five", "18446744073709551616"][..])))
            .prop_map(|(s, sid, max)| s.line("UNSUB", &[Some(&sid), max.map(str::as_bytes)])),
        2 => (style(), sid(), vec(subject(), 0..4), option_words()).prop_map(|(s, sid, filters, options)| {
            s.line("FETCH", &[Some(&sid), Some(&filters.join(&b","[..])), Some(&options)])
        }),
        2 => (style(), select(&["PING", "PONG"][..]), prop::option::of(token()))
            .prop_map(|(s, verb, junk)| s.line(verb, &[junk.as_deref()])),
        1 => (style(), select(&["MSG", "HMSG", "INFO", "PUBX", "+OK", "SUBSCRIBE", ""][..]), vec(token(), 0..4))
            .prop_map(|(s, verb, args)| s.line(verb, &args.iter().map(|arg| Some(&arg[..])).collect::<Vec<_>>())),
    ]
}

/// `PUB <subject> [reply] <#bytes>`.
fn publish() -> impl Strategy<Value = Vec<u8>> {
    (style(), subject(), prop::option::of(subject()), payload(), count()).prop_map(|(s, subject, reply, payload, n)| {
        s.message("PUB", &[Some(&subject), reply.as_deref(), Some(&n.of(payload.len()))], &[&payload])
    })
}

/// `HPUB <subject> [reply] <#header bytes> <#total bytes>`.
fn hpublish() -> impl Strategy<Value = Vec<u8>> {
    (style(), subject(), prop::option::of(subject()), header_block(), payload(), count(), count()).prop_map(
        |(s, subject, reply, block, payload, h, n)| {
            let (header_size, total) = (h.of(block.len()), n.of(block.len() + payload.len()));
            s.message(
                "HPUB",
                &[Some(&subject), reply.as_deref(), Some(&header_size), Some(&total)],
                &[&block, &payload],
            )
        },
    )
}

/// `APUB <subject> [#header bytes] <#total bytes> [option=value ...]`.
fn apublish() -> impl Strategy<Value = Vec<u8>> {
    (style(), subject(), prop::option::of(header_block()), payload(), option_words(), count(), count()).prop_map(
        |(s, subject, block, payload, options, h, n)| {
            let block = block.unwrap_or_default();
            let header_size = (!block.is_empty()).then(|| h.of(block.len()));
            let total = n.of(block.len() + payload.len());
            let args = [Some(&subject[..]), header_size.as_deref(), Some(&total), Some(&options)];
            s.message("APUB", &args, &[&block, &payload])
        },
    )
}

/// A subject token: mostly plain, sometimes a wildcard, empty, very long, or raw bytes
/// (blanks, CR, NUL, non-UTF-8).
fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => "[a-z0-9_-]{1,8}".prop_map(String::into_bytes),
        1 => select(vec![&b"*"[..], b">", b""]).prop_map(<[u8]>::to_vec),
        1 => (1..6000usize).prop_map(|n| vec![b'x'; n]),
        1 => vec(any::<u8>(), 1..6),
    ]
}

/// A subject or filter: a few tokens, hundreds of them, or a `$EL.` request subject.
fn subject() -> impl Strategy<Value = Vec<u8>> {
    let el = select(vec![&b"$EL.PUB."[..], b"$EL.SUB", b"$EL.FETCH", b"$EL.LAST.", b"$EL."]);
    prop_oneof![
        8 => vec(token(), 1..5).prop_map(|tokens| tokens.join(&b"."[..])),
        1 => vec("[a-z]{1,3}", 100..400).prop_map(|tokens| tokens.join(".").into_bytes()),
        3 => (el, vec(token(), 0..3)).prop_map(|(prefix, tokens)| [prefix, &tokens.join(&b"."[..])].concat()),
    ]
}

fn sid() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![4 => "[0-9]{1,4}".prop_map(String::into_bytes), 1 => token()]
}

/// A payload: raw bytes, a `$EL.` JSON body, or text with line ends in it.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        json_body(),
        vec(select(vec![&b"PUB a 1\r\n"[..], b"\r\n", b"\n", b"x"]), 0..8).prop_map(|parts| parts.concat()),
    ]
}

/// A `CONNECT` JSON object: its known fields, right or wrongly typed, unknown fields, or JSON
/// that is not an object at all.
fn connect_json() -> impl Strategy<Value = Vec<u8>> {
    let fields =
        &["verbose", "pedantic", "echo", "headers", "no_responders", "name", "lang", "version", "protocol"][..];
    json_text(object(fields))
}

// ---------------------------------------------------------------------------------------------
// Extension arguments
// ---------------------------------------------------------------------------------------------

/// Every parser of extension arguments on one text: `APUB` options and a catch-up start on the
/// whole of it; split at its first blank, `FETCH` filters and options, and a catch-up filter
/// and start. Each parser returns a value or a refusal, and the checks below take both.
fn check_options(text: &[u8]) -> Result<(), TestCaseError> {
    let (word, rest) = text.split_at(text.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(text.len()));
    let rest = rest.trim_ascii();
    check_publish_options(&PublishOptions::parse(text, None))?;
    check_start(&Start::parse(text))?;
    check_query(&Query::parse(word, rest))?;
    let catch_up = CatchUp::parse(Bytes::copy_from_slice(word), rest);
    if let Ok(catch_up) = &catch_up {
        prop_assert_eq!(Ok(catch_up.start), Start::parse(rest));
    }
    check_catch_up(&catch_up)
}

/// Conditions that parsed name a message id only if it is not empty, and something to watch in
/// `unchanged-since`.
fn check_publish_options(options: &Result<PublishOptions, Refusal>) -> Result<(), TestCaseError> {
    match options {
        Ok(options) => {
            prop_assert!(options.msg_id.as_ref().is_none_or(|id| !id.is_empty()), "an empty message id");
            let unchanged = options.unchanged_since.as_ref();
            prop_assert!(unchanged.is_none_or(|u| !u.filters.is_empty()), "unchanged-since without a filter");
            Ok(())
        }
        Err(refusal) => check_refusal(refusal),
    }
}

/// A start that is a time reads back from eventline's own writing of it ([`check_time`]).
fn check_start(start: &Result<Start, Refusal>) -> Result<(), TestCaseError> {
    match start {
        Ok(Start::Time(nanos)) => check_time(*nanos),
        Ok(_) => Ok(()),
        Err(refusal) => check_refusal(refusal),
    }
}

/// A catch-up that parsed has a start as [`check_start`] wants it.
fn check_catch_up(catch_up: &Result<CatchUp, Refusal>) -> Result<(), TestCaseError> {
    match catch_up {
        Ok(catch_up) => check_start(&Ok(catch_up.start)),
        Err(refusal) => check_refusal(refusal),
    }
}

/// A query that parsed has a filter, and its times read back as [`check_start`]'s do.
fn check_query(query: &Result<Query, Refusal>) -> Result<(), TestCaseError> {
    match query {
        Ok(query) => {
            prop_assert!(!query.filters.is_empty(), "a query without a filter");
            query.since.into_iter().chain(query.until).try_for_each(check_time)
        }
        Err(refusal) => check_refusal(refusal),
    }
}

/// A time a parser accepted, written as eventline writes times (`headers::rfc3339`, the
/// `Nats-Time-Stamp` of deliveries), parses back to the same nanosecond.
fn check_time(nanos: u64) -> Result<(), TestCaseError> {
    let text = headers::rfc3339(nanos);
    prop_assert_eq!(Start::parse(text.as_bytes()), Ok(Start::Time(nanos)), "{}", text);
    Ok(())
}

/// A refusal reaches the client as a `-NAK '<text>'` line (the extension verbs) or as the
/// `description` of a `$EL.` JSON error, with its code. The `-NAK` must be one line (a CR or LF
/// from the client's bytes would end it early, and the rest would read as another op) that
/// eventline's own client decoder reads back as the text, with a CR or LF in it written `\r`
/// or `\n`, unless the text had to be cut to fit a control line. The JSON carries it exactly.
fn check_refusal(refusal: &Refusal) -> Result<(), TestCaseError> {
    let text = refusal.to_string();
    let mut line = BytesMut::new();
    encode::server_op(&ServerOp::Nak(refusal.clone()), &mut line);
    prop_assert!(is_one_line(&line), "{:?} is not one line", line);
    let nak = match ServerCodec::new(MAX_PAYLOAD).decode(&mut line) {
        Ok(Some(Received::Nak(nak))) if line.is_empty() => nak,
        other => return Err(TestCaseError::fail(format!("-NAK for {refusal:?} reads back as {other:?}"))),
    };
    let escaped = text.replace('\r', "\\r").replace('\n', "\\n");
    if escaped.len() + "-NAK ''".len() <= MAX_CONTROL_LINE {
        prop_assert_eq!(nak, Bytes::from(escaped));
    }
    let answer: Value =
        serde_json::from_slice(&api::refused(refusal)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&answer["error"]["description"], &Value::from(text));
    prop_assert_eq!(&answer["error"]["code"], &Value::from(refusal.code()));
    Ok(())
}

/// Ends with CRLF, with no CR or LF before it.
fn is_one_line(text: &[u8]) -> bool {
    text.strip_suffix(b"\r\n").unwrap_or(text).iter().all(|&b| b != b'\r' && b != b'\n')
}

/// What the parsers of extension arguments take: `APUB` options, `FETCH` filters and options,
/// a catch-up filter and start, or a start alone.
fn extension_args() -> impl Strategy<Value = Vec<u8>> {
    let filters = vec(subject(), 0..4).prop_map(|filters| filters.join(&b","[..]));
    prop_oneof![
        option_words(),
        (filters, option_words()).prop_map(|(filters, options)| [filters, options].join(&b" "[..])),
        (subject(), start_text()).prop_map(|(filter, start)| [filter, start].join(&b" "[..])),
        start_text(),
    ]
}

/// `key=value` words as `APUB` and `FETCH` take them, some of them wrong.
fn option_words() -> impl Strategy<Value = Vec<u8>> {
    let keys = &[
        "msg-id",
        "expect-seq",
        "expect-subject-seq",
        "expect-rev",
        "unchanged-since",
        "from-seq",
        "to-seq",
        "since",
        "until",
        "limit",
    ][..];
    let key = prop_oneof![8 => select(keys).prop_map(String::from), 1 => "[a-z-]{0,10}"];
    let unchanged = (number_text(), vec(subject(), 0..4))
        .prop_map(|(after, filters)| [after, b":".to_vec(), filters.join(&b","[..])].concat());
    let value = prop_oneof![number_text(), time_text(), unchanged, token()];
    let word = prop_oneof![
        6 => (key, value).prop_map(|(key, value)| [key.as_bytes(), b"=", &value].concat()),
        1 => token(),
    ];
    (vec(word, 0..5), select(vec![&b" "[..], b"\t", b"  "])).prop_map(|(words, blank)| words.join(blank))
}

/// A decimal number as a client may write one, or not quite.
fn number_text() -> impl Strategy<Value = Vec<u8>> {
    let odd = &["-1", "+5", " 5", "5 ", "0x10", "1_000", "1e3", "", "00", "18446744073709551616", "\u{663}"][..];
    prop_oneof![4 => any::<u64>().prop_map(|n| n.to_string().into_bytes()), 1 => select(odd).prop_map(Vec::from)]
}

/// An RFC 3339 time: built from parts that may each be out of range, a known edge, or any
/// time eventline itself writes.
fn time_text() -> impl Strategy<Value = Vec<u8>> {
    let zone = select(&["Z", "z", "+01:00", "-23:59", "+24:00", "", " UTC", "[UTC]"][..]);
    let parts = (0..10_000u32, 0..14u32, 0..33u32, 0..25u32, 0..62u32, 0..62u32, "(\\.[0-9]{1,10})?", zone);
    let edges = &[
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999999Z",
        "2554-07-21T23:34:33.709551615Z",
        "2554-07-21T23:34:33.709551616Z",
        "9999-12-31T23:59:59Z",
        "-000001-01-01T00:00:00Z",
        "2026-01-01 00:00:00Z",
        "2026-01-01",
    ][..];
    prop_oneof![
        4 => parts.prop_map(|(y, mo, d, h, mi, s, fraction, zone)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{zone}").into_bytes()
        }),
        1 => select(edges).prop_map(Vec::from),
        1 => any::<u64>().prop_map(|nanos| headers::rfc3339(nanos).into_bytes()),
    ]
}

/// A catch-up start: a sequence, a time, `last`, `new`, or something else.
fn start_text() -> impl Strategy<Value = Vec<u8>> {
    let words = &["0", "1", "last", "LAST", "new", "New", "-1", "18446744073709551616", ""][..];
    prop_oneof![select(words).prop_map(Vec::from), number_text(), time_text(), token()]
}

// ---------------------------------------------------------------------------------------------
// Header blocks
// ---------------------------------------------------------------------------------------------

/// The condition headers a publish may carry.
const CONDITIONS: [&str; 5] = [
    headers::MSG_ID,
    headers::EXPECTED_LAST_SEQUENCE,
    headers::EXPECTED_LAST_SUBJECT_SEQUENCE,
    headers::EXPECTED_REVISION,
    headers::UNCHANGED_SINCE,
];

/// Reading a header block: every value found is trimmed and within one line, `value` is the
/// first of `values`, names compare case-insensitively; its publish conditions parse or are
/// refused, the same from `APUB` without options; and the condition values found, written out
/// again with `headers::write`, give the same conditions.
fn check_headers(block: &[u8]) -> Result<(), TestCaseError> {
    for name in CONDITIONS.into_iter().chain(["X", ""]) {
        let values: Vec<&[u8]> = headers::values(block, name).collect();
        prop_assert_eq!(headers::value(block, name), values.first().copied());
        for value in &values {
            prop_assert!(!value.contains(&b'\n') && value.trim_ascii() == *value, "value {:?}", value);
        }
        let upper = name.to_ascii_uppercase();
        prop_assert_eq!(headers::values(block, &upper).collect::<Vec<_>>(), values);
    }
    let options = PublishOptions::from_headers(block);
    check_publish_options(&options)?;
    prop_assert_eq!(PublishOptions::parse(b"", Some(block)), options.clone());
    let found: Vec<(&str, &[u8])> =
        CONDITIONS.into_iter().filter_map(|name| headers::value(block, name).map(|v| (name, v))).collect();
    let mut rewritten = BytesMut::new();
    headers::write(&mut rewritten, None, &found);
    prop_assert_eq!(PublishOptions::from_headers(&rewritten), options);
    Ok(())
}

/// A header block: usually `NATS/1.0` and `Name: value` lines, from none to hundreds of them;
/// sometimes without the version line, odd separators and line ends, raw bytes.
fn header_block() -> impl Strategy<Value = Vec<u8>> {
    let odd_version = &["", "NATS/1.0 100 Caught Up", "NATS/1.0 503", "nats/1.0", "NATS/2.0", "Nats-Msg-Id: 1"][..];
    let version = prop_oneof![8 => Just("NATS/1.0"), 1 => select(odd_version)];
    // Hundreds of headers, with any others before and after them.
    let many = (vec(header_line(), 0..3), 100..600usize, vec(header_line(), 0..3))
        .prop_map(|(before, n, after)| vec![before.concat(), b"X: 1\r\n".repeat(n), after.concat()]);
    let lines = prop_oneof![8 => vec(header_line(), 0..6), 1 => many];
    let end = prop_oneof![8 => Just(&b"\r\n"[..]), 1 => select(vec![&b""[..], b"\n", b"\r"])];
    (version, lines, end).prop_map(|(version, lines, end)| [version.as_bytes(), b"\r\n", &lines.concat(), end].concat())
}

fn header_line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        4 => (select(CONDITIONS.to_vec()), any::<u64>()).prop_map(|(name, case)| cased(name, case)),
        1 => select(&["X", "", " Nats-Msg-Id", "Nats-Msg-Id "][..]).prop_map(Vec::from),
        1 => vec(any::<u8>(), 0..8),
    ];
    let separator = select(vec![&b": "[..], b":", b" : ", b"", b"::", b":\t"]);
    let unchanged = (number_text(), select(vec![&b" "[..], b",", b", ", b"\t"]), vec(subject(), 0..4))
        .prop_map(|(after, blank, filters)| [after, blank.to_vec(), filters.join(blank)].concat());
    let value = prop_oneof![number_text(), unchanged, token(), "[ -~]{0,16}".prop_map(String::into_bytes)];
    let end = prop_oneof![8 => Just(&b"\r\n"[..]), 1 => select(vec![&b"\n"[..], b"\r", b""])];
    (name, separator, value, end).prop_map(|(name, separator, value, end)| [&name[..], separator, &value, end].concat())
}

// ---------------------------------------------------------------------------------------------
// `$EL.` JSON bodies
// ---------------------------------------------------------------------------------------------

/// A body sent to `$EL.SUB` and to `$EL.FETCH`, decoded as the codec decodes requests
/// (`ApiRequest::decode`): a request or a refusal (see [`check_subscribe`], [`check_query`]).
fn check_json(body: &[u8]) -> Result<(), TestCaseError> {
    for subject in [api::SUBSCRIBE, api::FETCH] {
        let request = Pub {
            subject: Bytes::from_static(subject),
            reply: Some(Bytes::from_static(b"reply")),
            headers: None,
            payload: Bytes::copy_from_slice(body),
        };
        match ApiRequest::decode(&request) {
            Some(ApiRequest::Read { read: ApiRead::Subscribe(subscribe), .. }) => check_subscribe(&subscribe)?,
            Some(ApiRequest::Read { read: ApiRead::Fetch(query), .. }) => check_query(&query)?,
            other => return Err(TestCaseError::fail(format!("{request:?} decodes as {other:?}"))),
        }
    }
    Ok(())
}

/// A `$EL.SUB` request that parsed has a start as [`check_start`] wants it.
fn check_subscribe(subscribe: &Result<Subscribe, Refusal>) -> Result<(), TestCaseError> {
    match subscribe {
        Ok(subscribe) => check_start(&Ok(subscribe.catch_up.start)),
        Err(refusal) => check_refusal(refusal),
    }
}

/// A `$EL.SUB` or `$EL.FETCH` body, or JSON (or not JSON) that is neither.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => json_text(object(&["filter", "start", "deliver"])),
        3 => json_text(object(&["filters", "from_seq", "to_seq", "since", "until", "limit"])),
        1 => json_value().prop_map(|value| value.to_string().into_bytes()),
    ]
}

/// JSON text of `objects`, sometimes mutated, truncated or nested deep, or not JSON at all.
fn json_text(objects: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Vec<u8>> {
    let objects = objects.prop_map(|object| object.to_string().into_bytes()).boxed();
    prop_oneof![
        8 => objects.clone(),
        2 => (objects, vec(mutation(), 1..4)).prop_map(|(text, mutations)| mutate(text, &mutations)),
        1 => (1..3000usize).prop_map(|depth| ["[".repeat(depth), "]".repeat(depth)].concat().into_bytes()),
        1 => vec(any::<u8>(), 0..32),
    ]
}

/// A JSON object with each of `fields` there or not, valued as the field wants (see
/// [`field_value`]), and now and then a field nobody expects.
fn object(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let values: Vec<_> = fields.iter().map(|&name| prop::option::weighted(0.85, field_value(name))).collect();
    let unexpected = prop::option::weighted(0.1, ("\\PC{0,8}", json_value()));
    (values, unexpected).prop_map(move |(values, unexpected)| {
        let mut object: Map<String, Value> =
            fields.iter().zip(values).filter_map(|(&name, value)| Some((name.to_owned(), value?))).collect();
        object.extend(unexpected);
        Value::Object(object)
    })
}

/// A value for the field `name` of a `CONNECT` or `$EL.` body: usually of the type it takes
/// (with contents that may not parse), now and then any JSON.
fn field_value(name: &str) -> BoxedStrategy<Value> {
    let string = |text: BoxedStrategy<Vec<u8>>| text.prop_map(|t| Value::from(String::from_utf8_lossy(&t))).boxed();
    let typed = match name {
        "filter" | "deliver" => string(subject().boxed()),
        "filters" => vec(string(subject().boxed()), 0..4).prop_map(Value::Array).boxed(),
        "start" => prop_oneof![any::<u64>().prop_map(Value::from), string(start_text().boxed())].boxed(),
        "since" | "until" => string(time_text().boxed()),
        "from_seq" | "to_seq" | "limit" => any::<u64>().prop_map(Value::from).boxed(),
        "protocol" => prop_oneof![4 => 0..2u64, 1 => any::<u64>()].prop_map(Value::from).boxed(),
        "name" | "lang" | "version" => json_string().prop_map(Value::from).boxed(),
        _ => any::<bool>().prop_map(Value::from).boxed(),
    };
    prop_oneof![16 => typed, 1 => json_value()].boxed()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        json_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("\\PC{0,8}", inner), 0..4).prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A string with what breaks texts: line ends, NUL, a line separator, non-ASCII.
fn json_string() -> impl Strategy<Value = String> {
    let odd = &["a\r\nb", "a\nb", "\r", "\u{0}", "\u{2028}", "é", "'", ""][..];
    prop_oneof![4 => "\\PC{0,12}", 1 => select(odd).prop_map(String::from)]
}
