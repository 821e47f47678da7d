//! The client-op parser: a pure function over the read buffer.
//!
//! [`parse_client_op`] looks at the bytes received so far and returns `Ok(None)` until one
//! whole op (control line and, for `PUB`/`HPUB`, its payload) is there. Limits are checked
//! before anything is buffered: a control line longer than [`MAX_CONTROL_LINE`] fails even
//! when its newline has not arrived, and a payload size over `max_payload` fails as soon as
//! the control line is read. The result holds byte ranges into the buffer, so the codec can
//! hand the payload on as a `Bytes` slice without copying it.

use std::ops::Range;

use nom::bytes::complete::{take_till1, take_while1};
use nom::character::complete::space1;
use nom::combinator::rest;
use nom::sequence::preceded;
use nom::{IResult, Offset, Parser};

use super::{MAX_CONTROL_LINE, ProtocolError, Usage};

/// One parsed op, as ranges into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawOp {
    Connect(Range<usize>),
    Pub {
        subject: Range<usize>,
        reply: Option<Range<usize>>,
        headers: Option<Range<usize>>,
        payload: Range<usize>,
    },
    Sub {
        subject: Range<usize>,
        queue: Option<Range<usize>>,
        sid: Range<usize>,
    },
    Unsub {
        sid: Range<usize>,
        max: Option<u64>,
    },
    Ping,
    Pong,
    /// `SUB <filter> <sid> FROM <start>`: replay from `start`, then live.
    CatchUp {
        filter: Range<usize>,
        sid: Range<usize>,
        start: Range<usize>,
    },
    /// `FETCH <sid> <filters> [option=value ...]`: a one-shot query.
    Fetch {
        sid: Range<usize>,
        filters: Range<usize>,
        options: Range<usize>,
    },
    /// `APUB`: a publish with its options text (`key=value ...`), parsed by the codec into
    /// a result, so a bad option is a `-NAK`, not a closed connection.
    Apub {
        subject: Range<usize>,
        headers: Option<Range<usize>>,
        payload: Range<usize>,
        options: Range<usize>,
    },
}

/// A whole op and how many bytes of the buffer it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub op: RawOp,
    pub len: usize,
}

/// Parses one client op from the start of `buf`.
///
/// # Errors
/// A [`ProtocolError`] when the bytes can never become a valid op; the caller must close
/// the connection after sending its text, since the stream can no longer be framed.
pub fn parse_client_op(buf: &[u8], max_payload: usize) -> Result<Option<Parsed>, ProtocolError> {
    let Some((line, after_line)) = control_line(buf, MAX_CONTROL_LINE)? else { return Ok(None) };
    let range = |s: &[u8]| {
        let start = buf.offset(s);
        start..start + s.len()
    };

    let (args, verb) = verb(line).map_err(|_| ProtocolError::UnknownOperation)?;
    let verb = Verb::of(verb);
    // A verb runs to a blank or the line end: `PUB2 x` is an unknown op, not PUB's args.
    let separated = args.first().is_none_or(|&b| is_blank(b));
    let op = match verb.filter(|v| separated || matches!(v, Verb::Ping | Verb::Pong)) {
        // nats-server ignores whatever follows PING or PONG up to the newline.
        Some(Verb::Ping) => RawOp::Ping,
        Some(Verb::Pong) => RawOp::Pong,
        Some(Verb::Connect) => {
            let json: IResult<&[u8], &[u8]> = preceded(space1, rest).parse(args);
            let (_, json) = json.map_err(|_| ProtocolError::InvalidConnect)?;
            RawOp::Connect(range(json))
        }
        Some(Verb::Sub) => match split_args(args) {
            Some(Args { n: 2, a }) => RawOp::Sub { subject: range(a[0]), queue: None, sid: range(a[1]) },
            Some(Args { n: 3, a }) => RawOp::Sub { subject: range(a[0]), queue: Some(range(a[1])), sid: range(a[2]) },
            // The catch-up form, an extension: four arguments are no NATS SUB.
            Some(Args { n: 4, a }) if a[2].eq_ignore_ascii_case(b"FROM") => {
                RawOp::CatchUp { filter: range(a[0]), sid: range(a[1]), start: range(a[3]) }
            }
            _ => return Err(ProtocolError::InvalidArguments(Usage::Sub)),
        },
        Some(Verb::Unsub) => match split_args(args) {
            Some(Args { n: 1, a }) => RawOp::Unsub { sid: range(a[0]), max: None },
            // nats-server reads a max that is not a number as "unsubscribe now".
            Some(Args { n: 2, a }) => RawOp::Unsub { sid: range(a[0]), max: Some(number(a[1]).unwrap_or(0)) },
            _ => return Err(ProtocolError::InvalidArguments(Usage::Unsub)),
        },
        Some(Verb::Pub) => {
            let (subject, reply, size) = match split_args(args) {
                Some(Args { n: 2, a }) => (a[0], None, a[1]),
                Some(Args { n: 3, a }) => (a[0], Some(a[1]), a[2]),
                _ => return Err(ProtocolError::InvalidArguments(Usage::Pub)),
            };
            let Some((payload, len)) = message_body(buf, after_line, None, size, max_payload, Usage::Pub)? else {
                return Ok(None);
            };
            let op = RawOp::Pub { subject: range(subject), reply: reply.map(range), headers: None, payload };
            return Ok(Some(Parsed { op, len }));
        }
        Some(Verb::Hpub) => {
            let (subject, reply, header_size, total_size) = match split_args(args) {
                Some(Args { n: 3, a }) => (a[0], None, a[1], a[2]),
                Some(Args { n: 4, a }) => (a[0], Some(a[1]), a[2], a[3]),
                _ => return Err(ProtocolError::InvalidArguments(Usage::Hpub)),
            };
            let Some((whole, len)) =
                message_body(buf, after_line, Some(header_size), total_size, max_payload, Usage::Hpub)?
            else {
                return Ok(None);
            };
            let header_end = whole.start + header_len(header_size);
            let op = RawOp::Pub {
                subject: range(subject),
                reply: reply.map(range),
                headers: Some(whole.start..header_end),
                payload: header_end..whole.end,
            };
            return Ok(Some(Parsed { op, len }));
        }
        Some(Verb::Fetch) => {
            // FETCH <sid> <filter>[,<filter>...] [option=value ...]
            let (sid, rest) = first_arg(args).ok_or(ProtocolError::InvalidArguments(Usage::Fetch))?;
            let (filters, options) = first_arg(rest).ok_or(ProtocolError::InvalidArguments(Usage::Fetch))?;
            RawOp::Fetch { sid: range(sid), filters: range(filters), options: range(options.trim_ascii()) }
        }
        Some(Verb::Apub) => {
            // APUB <subject> [#header bytes] <#total bytes> [option=value ...]
            let (subject, rest) = first_arg(args).ok_or(ProtocolError::InvalidArguments(Usage::Apub))?;
            let (first, rest) = first_arg(rest).ok_or(ProtocolError::InvalidArguments(Usage::Apub))?;
            let (header_size, total_size, options) = match first_arg(rest) {
                Some((second, options)) if second.iter().all(u8::is_ascii_digit) => (Some(first), second, options),
                _ => (None, first, rest),
            };
            let Some((whole, len)) = message_body(buf, after_line, header_size, total_size, max_payload, Usage::Apub)?
            else {
                return Ok(None);
            };
            let header_end = whole.start + header_size.map_or(0, header_len);
            let op = RawOp::Apub {
                subject: range(subject),
                headers: header_size.map(|_| whole.start..header_end),
                payload: header_end..whole.end,
                options: range(options.trim_ascii()),
            };
            return Ok(Some(Parsed { op, len }));
        }
        None => return Err(ProtocolError::UnknownOperation),
    };
    Ok(Some(Parsed { op, len: after_line }))
}

/// Checks a message's sizes against each other and `max_payload` (before any of the body
/// is buffered), then finds the body: its range and the op's total length once complete.
fn message_body(
    buf: &[u8],
    start: usize,
    header_size: Option<&[u8]>,
    total_size: &[u8],
    max_payload: usize,
    usage: Usage,
) -> Result<Option<(Range<usize>, usize)>, ProtocolError> {
    let invalid = ProtocolError::InvalidArguments(usage);
    let total = number(total_size).ok_or(invalid)?;
    let headers = match header_size {
        Some(digits) => number(digits).ok_or(ProtocolError::InvalidArguments(usage))?,
        None => 0,
    };
    if headers > total {
        return Err(ProtocolError::InvalidArguments(usage));
    }
    match usize::try_from(total) {
        Ok(total) if total <= max_payload => payload_at(buf, start, total),
        _ => Err(ProtocolError::MaxPayload),
    }
}

/// The header length of an `HPUB` whose sizes [`message_body`] has already checked.
fn header_len(digits: &[u8]) -> usize {
    number(digits).and_then(|n| usize::try_from(n).ok()).unwrap_or(0)
}

#[derive(Clone, Copy)]
enum Verb {
    Apub,
    Connect,
    Fetch,
    Pub,
    Hpub,
    Sub,
    Unsub,
    Ping,
    Pong,
}

impl Verb {
    /// Case-insensitive, without allocating: this runs once per op.
    fn of(word: &[u8]) -> Option<Verb> {
        const VERBS: [(&[u8], Verb); 7] = [
            (b"APUB", Verb::Apub),
            (b"FETCH", Verb::Fetch),
            (b"PUB", Verb::Pub),
            (b"HPUB", Verb::Hpub),
            (b"SUB", Verb::Sub),
            (b"UNSUB", Verb::Unsub),
            (b"CONNECT", Verb::Connect),
        ];
        let starts_with =
            |prefix: &[u8]| word.len() >= prefix.len() && word[..prefix.len()].eq_ignore_ascii_case(prefix);
        if starts_with(b"PING") {
            return Some(Verb::Ping);
        }
        if starts_with(b"PONG") {
            return Some(Verb::Pong);
        }
        VERBS.iter().find(|(name, _)| word.eq_ignore_ascii_case(name)).map(|&(_, verb)| verb)
    }
}

/// The control line at the start of `buf` (without its CRLF or LF) and the offset just
/// past its newline; `Ok(None)` while the newline has not arrived.
///
/// # Errors
/// [`ProtocolError::MaxControlLine`] once the arguments (from the first one, as
/// nats-server counts) run past `limit` bytes ([`MAX_CONTROL_LINE`] for what a client
/// sends) before the newline, even before it arrives, so a peer cannot make the reader
/// buffer without bound. The verb and the blanks after it count towards the limit too once
/// they pass it, so the whole line never exceeds twice the limit.
pub(super) fn control_line(buf: &[u8], limit: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let allowed = limit + arguments_offset(&buf[..buf.len().min(limit)]);
    let scan = &buf[..buf.len().min(allowed + 2)];
    let Some(newline) = scan.iter().position(|&b| b == b'\n') else {
        // A CR already read may belong to a line of exactly the limit whose LF is coming.
        let pending = buf.len() - usize::from(buf.last() == Some(&b'\r'));
        return if pending > allowed { Err(ProtocolError::MaxControlLine) } else { Ok(None) };
    };
    let line_end = if newline > 0 && buf[newline - 1] == b'\r' { newline - 1 } else { newline };
    if line_end > allowed {
        return Err(ProtocolError::MaxControlLine);
    }
    Ok(Some((&buf[..line_end], newline + 1)))
}

/// Where the first argument starts in a line beginning with `start` (past the verb and the
/// blanks after it), or `start`'s length if it has not been seen yet.
fn arguments_offset(start: &[u8]) -> usize {
    let verb = start.iter().position(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')).unwrap_or(start.len());
    verb + start[verb..].iter().take_while(|&&b| matches!(b, b' ' | b'\t')).count()
}

/// Up to five blank-separated arguments (`HMSG` with a reply has five); more is an error.
pub(super) struct Args<'a> {
    pub(super) n: usize,
    pub(super) a: [&'a [u8]; 5],
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn verb(line: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while1(|b: u8| b.is_ascii_alphabetic()).parse(line)
}

/// The first blank-separated argument and what follows it.
fn first_arg(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let result: IResult<&[u8], &[u8]> = preceded(space1, take_till1(is_blank)).parse(input);
    result.ok().map(|(rest, arg)| (arg, rest))
}

pub(super) fn split_args(mut input: &[u8]) -> Option<Args<'_>> {
    let mut args = Args { n: 0, a: [&[]; 5] };
    loop {
        let next: IResult<&[u8], &[u8]> = preceded(space1, take_till1(is_blank)).parse(input);
        match next {
            Ok((remaining, arg)) => {
                *args.a.get_mut(args.n)? = arg;
                args.n += 1;
                input = remaining;
            }
            Err(_) if input.iter().all(|&b| is_blank(b)) => return Some(args),
            Err(_) => return None,
        }
    }
}

pub(super) fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The payload of `size` bytes at `start` and the op's total length, once its terminator
/// (CRLF, or a bare LF so `nc` users can type it) has arrived.
pub(super) fn payload_at(
    buf: &[u8],
    start: usize,
    size: usize,
) -> Result<Option<(Range<usize>, usize)>, ProtocolError> {
    let end = start + size;
    match buf.get(end) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((start..end, end + 1))),
        Some(b'\r') => match buf.get(end + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((start..end, end + 2))),
            Some(_) => Err(ProtocolError::UnknownOperation),
        },
        Some(_) => Err(ProtocolError::UnknownOperation),
    }
}
