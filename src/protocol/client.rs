//! The client's side of the protocol: decoding what a server sends. eventline's load tool
//! uses it to talk to any NATS server, and its command-line client (`crate::client`) to talk
//! to eventline, extensions included (`+ACK`, `-NAK`); it shares the argument and payload
//! rules of [`super::parse`].

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::parse::{control_line, number, payload_at, split_args};
use super::{MAX_CONTROL_LINE, ProtocolError};

/// Longest line a server may send: a `MSG` line carries a subject and a reply subject from
/// one client's `PUB` line and a sid from another's `SUB` line, so it can be longer than
/// any line a client may send.
const MAX_RECEIVED_LINE: usize = 2 * MAX_CONTROL_LINE + 64;

/// A message delivered by `MSG` or `HMSG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub subject: Bytes,
    pub sid: Bytes,
    pub reply: Option<Bytes>,
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

/// An op as a client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Msg(Delivery),
    Info(Bytes),
    Ok,
    Err(Bytes),
    Ping,
    Pong,
    /// `+ACK seq=<seq> rev=<revision>[ duplicate]`: an `APUB` is durable (an extension).
    /// Words it does not know are ignored, so a server may add fields.
    Ack {
        seq: u64,
        revision: u64,
        duplicate: bool,
    },
    /// `-NAK '<reason>'`: an extension request was refused; the reason without its quotes.
    Nak(Bytes),
}

/// Decodes [`Received`] ops; the payload limit is the client's own guard.
#[derive(Debug, Clone)]
pub struct ServerCodec {
    max_payload: usize,
}

impl ServerCodec {
    pub fn new(max_payload: usize) -> Self {
        ServerCodec { max_payload }
    }
}

impl Decoder for ServerCodec {
    type Item = Received;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Received>, ProtocolError> {
        let Some((line, after_line)) = control_line(src, MAX_RECEIVED_LINE)? else { return Ok(None) };
        let (verb, args) = line.split_at(line.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(line.len()));
        let simple = |op| Ok((op, after_line));
        let (op, len) = match verb {
            b"PING" => simple(RawReceived::Ping),
            b"PONG" => simple(RawReceived::Pong),
            b"+OK" => simple(RawReceived::Ok),
            b"-ERR" | b"INFO" => {
                let text = (verb.len() + 1).min(line.len())..line.len();
                simple(RawReceived::Text(verb == b"INFO", text))
            }
            b"+ACK" => {
                let (seq, revision, duplicate) = ack(args).ok_or(ProtocolError::UnknownOperation)?;
                simple(RawReceived::Ack { seq, revision, duplicate })
            }
            b"-NAK" => {
                let text = args.trim_ascii();
                let text = text.strip_prefix(b"'").and_then(|t| t.strip_suffix(b"'")).unwrap_or(text);
                let start = text.as_ptr() as usize - line.as_ptr() as usize;
                simple(RawReceived::Nak(start..start + text.len()))
            }
            b"MSG" | b"HMSG" => {
                let a = split_args(args).ok_or(ProtocolError::UnknownOperation)?;
                let with_headers = verb == b"HMSG";
                let fixed = if with_headers { 4 } else { 3 };
                if a.n != fixed && a.n != fixed + 1 {
                    return Err(ProtocolError::UnknownOperation);
                }
                let reply = (a.n == fixed + 1).then(|| a.a[2]);
                let size = |digits| {
                    number(digits).and_then(|n| usize::try_from(n).ok()).ok_or(ProtocolError::UnknownOperation)
                };
                let total = size(a.a[a.n - 1])?;
                if total > self.max_payload {
                    return Err(ProtocolError::MaxPayload);
                }
                let header_len = if with_headers { size(a.a[a.n - 2])? } else { 0 };
                if header_len > total {
                    return Err(ProtocolError::UnknownOperation);
                }
                let Some((payload, len)) = payload_at(src, after_line, total)? else {
                    src.reserve(after_line + total + 2 - src.len());
                    return Ok(None);
                };
                let offset = |s: &[u8]| s.as_ptr() as usize - src.as_ptr() as usize;
                let range = |s: &[u8]| offset(s)..offset(s) + s.len();
                Ok((
                    RawReceived::Msg {
                        subject: range(a.a[0]),
                        sid: range(a.a[1]),
                        reply: reply.map(range),
                        split: payload.start + header_len,
                        payload,
                        with_headers,
                    },
                    len,
                ))
            }
            _ => Err(ProtocolError::UnknownOperation),
        }?;
        let frame = src.split_to(len).freeze();
        Ok(Some(match op {
            RawReceived::Ping => Received::Ping,
            RawReceived::Pong => Received::Pong,
            RawReceived::Ok => Received::Ok,
            RawReceived::Text(true, text) => Received::Info(frame.slice(text)),
            RawReceived::Text(false, text) => Received::Err(frame.slice(text)),
            RawReceived::Nak(text) => Received::Nak(frame.slice(text)),
            RawReceived::Ack { seq, revision, duplicate } => Received::Ack { seq, revision, duplicate },
            RawReceived::Msg { subject, sid, reply, split, payload, with_headers } => Received::Msg(Delivery {
                subject: frame.slice(subject),
                sid: frame.slice(sid),
                reply: reply.map(|r| frame.slice(r)),
                headers: with_headers.then(|| frame.slice(payload.start..split)),
                payload: frame.slice(split..payload.end),
            }),
        }))
    }
}

/// A received op as ranges, before the frame is split off the buffer.
enum RawReceived {
    Msg {
        subject: std::ops::Range<usize>,
        sid: std::ops::Range<usize>,
        reply: Option<std::ops::Range<usize>>,
        split: usize,
        payload: std::ops::Range<usize>,
        with_headers: bool,
    },
    /// `INFO` (true) or `-ERR` (false) and the range of the text after the verb.
    Text(bool, std::ops::Range<usize>),
    /// `-NAK` and the range of its reason, quotes stripped.
    Nak(std::ops::Range<usize>),
    Ack {
        seq: u64,
        revision: u64,
        duplicate: bool,
    },
    Ok,
    Ping,
    Pong,
}

/// The words of a `+ACK` line: `seq=<n>` and `rev=<n>` (both required) and an optional
/// `duplicate`; other words are skipped.
fn ack(args: &[u8]) -> Option<(u64, u64, bool)> {
    let (mut seq, mut revision, mut duplicate) = (None, None, false);
    for word in args.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty()) {
        if word == b"duplicate" {
            duplicate = true;
        } else if let Some(digits) = word.strip_prefix(b"seq=") {
            seq = Some(number(digits)?);
        } else if let Some(digits) = word.strip_prefix(b"rev=") {
            revision = Some(number(digits)?);
        }
    }
    Some((seq?, revision?, duplicate))
}
