//! Writing server ops into a connection's pending buffer.
//!
//! Fan-out encodes each delivery's control line here, straight into the subscriber's
//! pending bytes; the payload follows it there (copied when small) or is sent in place
//! from the publisher's buffer (when large, see the broker's outbound queue).

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::{MAX_CONTROL_LINE, ServerOp};

/// Appends one non-message op.
pub fn server_op(op: &ServerOp, dst: &mut BytesMut) {
    match op {
        ServerOp::Info(info) => {
            dst.put_slice(b"INFO ");
            // Serialising a plain struct of strings and numbers cannot fail.
            let json = serde_json::to_vec(info).unwrap_or_default();
            dst.put_slice(&json);
            // nats-server ends INFO with a space before the CRLF; kept byte for byte.
            dst.put_slice(b" \r\n");
        }
        ServerOp::Ok => dst.put_slice(b"+OK\r\n"),
        ServerOp::Err(text) => {
            dst.put_slice(b"-ERR '");
            dst.put_slice(text.as_bytes());
            dst.put_slice(b"'\r\n");
        }
        ServerOp::Ping => dst.put_slice(b"PING\r\n"),
        ServerOp::Pong => dst.put_slice(b"PONG\r\n"),
        ServerOp::Ack { seq, revision, duplicate } => {
            let mut numbers = itoa::Buffer::new();
            dst.put_slice(b"+ACK seq=");
            dst.put_slice(numbers.format(*seq).as_bytes());
            dst.put_slice(b" rev=");
            dst.put_slice(numbers.format(*revision).as_bytes());
            if *duplicate {
                dst.put_slice(b" duplicate");
            }
            dst.put_slice(b"\r\n");
        }
        ServerOp::Nak(reason) => {
            dst.put_slice(b"-NAK '");
            nak_text(dst, &reason.to_string());
            dst.put_slice(b"'\r\n");
        }
    }
}

/// The longest text a `-NAK '<text>'` line carries: the line must fit a control line, the
/// longest line a client's decoder reads.
const MAX_NAK_TEXT: usize = MAX_CONTROL_LINE - "-NAK ''".len();

/// Appends a refusal's text as one `-NAK` line can carry it. The text may quote what the
/// client sent (a filter, a start, an option word, each up to a control line long): a CR or
/// LF in it is written `\r` or `\n`, since it would end the line early and the rest would
/// read as another op; and a text too long for the line keeps its start and its end (which
/// says why) around `...`.
fn nak_text(dst: &mut BytesMut, text: &str) {
    let text: Cow<'_, str> = if text.contains(['\r', '\n']) {
        Cow::Owned(text.replace('\r', "\\r").replace('\n', "\\n"))
    } else {
        Cow::Borrowed(text)
    };
    if text.len() <= MAX_NAK_TEXT {
        dst.put_slice(text.as_bytes());
        return;
    }
    let half = (MAX_NAK_TEXT - "...".len()) / 2;
    let head = (0..=half).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let tail = (text.len() - half..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    dst.put_slice(text[..head].as_bytes());
    dst.put_slice(b"...");
    dst.put_slice(text[tail..].as_bytes());
}

/// Appends `MSG <subject> <sid> [reply] <size>` or, when `headers` is present,
/// `HMSG <subject> <sid> [reply] <header size> <total size>`, then the payload.
pub fn msg(
    dst: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    dst.reserve(headers.map_or(0, <[u8]>::len) + payload.len() + 2);
    msg_head(dst, subject, sid, reply, headers.map(<[u8]>::len), payload.len());
    if let Some(headers) = headers {
        dst.put_slice(headers);
    }
    dst.put_slice(payload);
    dst.put_slice(b"\r\n");
}

/// Appends just the control line of a `MSG` (or `HMSG` when `header_len` is given), for a
/// caller that sends the body separately.
pub fn msg_head(
    dst: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    header_len: Option<usize>,
    payload_len: usize,
) {
    let mut numbers = itoa::Buffer::new();
    dst.reserve(subject.len() + sid.len() + reply.map_or(0, <[u8]>::len) + 48);
    dst.put_slice(if header_len.is_some() { b"HMSG " } else { b"MSG " });
    dst.put_slice(subject);
    dst.put_u8(b' ');
    dst.put_slice(sid);
    dst.put_u8(b' ');
    if let Some(reply) = reply {
        dst.put_slice(reply);
        dst.put_u8(b' ');
    }
    if let Some(header_len) = header_len {
        dst.put_slice(numbers.format(header_len).as_bytes());
        dst.put_u8(b' ');
    }
    dst.put_slice(numbers.format(header_len.unwrap_or(0) + payload_len).as_bytes());
    dst.put_slice(b"\r\n");
}
