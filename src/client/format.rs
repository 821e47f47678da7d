//! What the command-line client prints: one line per message or event on stdout, status
//! messages told apart from events. Pure functions over decoded deliveries.

use std::fmt::Write as _;

use eventline::protocol::client::Delivery;
use eventline::protocol::headers::{self, LAST_SEQUENCE, SEQUENCE, TIME_STAMP};

/// A status message (`NATS/1.0 <code> <description>`, no payload) on a catch-up
/// subscription or a query: `100 Caught Up`, `204 End Of Results`, `500 Storage Failure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub description: String,
    /// `Nats-Last-Sequence`: the last sequence the server delivered or considered.
    pub last_seq: Option<u64>,
    /// `Eventline-Count`: how many events a query returned.
    pub count: Option<u64>,
}

/// The status a delivery carries, if it is a status message rather than an event. An event
/// always has a `Nats-Sequence` header, even if its own header block had a status line.
pub fn status(delivery: &Delivery) -> Option<Status> {
    let block = delivery.headers.as_deref()?;
    if !delivery.payload.is_empty() || headers::value(block, SEQUENCE).is_some() {
        return None;
    }
    let first = block.split(|&b| b == b'\n').next()?;
    let rest = std::str::from_utf8(first.strip_prefix(b"NATS/1.0")?).ok()?.trim();
    let (code, description) = rest.split_once(' ').unwrap_or((rest, ""));
    let number = |name| headers::value(block, name).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    Some(Status {
        code: code.parse().ok()?,
        description: description.trim().to_owned(),
        last_seq: number(LAST_SEQUENCE),
        count: number("Eventline-Count"),
    })
}

/// `<seq> <time> <subject> <payload>` for an event from the log: sequence and time from its
/// `Nats-Sequence` and `Nats-Time-Stamp` headers (`-` if missing), the payload [`escape`]d.
pub fn event_line(delivery: &Delivery) -> String {
    let header = |name| {
        delivery
            .headers
            .as_deref()
            .and_then(|block| headers::value(block, name))
            .map_or_else(|| "-".to_owned(), |v| String::from_utf8_lossy(v).into_owned())
    };
    format!(
        "{} {} {} {}",
        header(SEQUENCE),
        header(TIME_STAMP),
        String::from_utf8_lossy(&delivery.subject),
        escape(&delivery.payload)
    )
}

/// `<subject> <payload>` for a live message, the payload [`escape`]d.
pub fn live_line(delivery: &Delivery) -> String {
    format!("{} {}", String::from_utf8_lossy(&delivery.subject), escape(&delivery.payload))
}

/// The payload on one line: lossy UTF-8 with `\` written `\\`, line ends and tabs as `\n`,
/// `\r`, `\t`, and other control characters as `\xHH`, so every message is exactly one line
/// and the escaping can be undone.
pub fn escape(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// `seq=N rev=R`, plus ` duplicate` when the publish was deduplicated.
pub fn ack_line(ack: &super::Ack) -> String {
    let duplicate = if ack.duplicate { " duplicate" } else { "" };
    format!("seq={} rev={}{duplicate}", ack.seq, ack.revision)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::client::Ack;

    fn delivery(headers: Option<&'static [u8]>, payload: &'static [u8]) -> Delivery {
        Delivery {
            subject: Bytes::from_static(b"orders.42"),
            sid: Bytes::from_static(b"1"),
            reply: None,
            headers: headers.map(Bytes::from_static),
            payload: Bytes::from_static(payload),
        }
    }

    const EVENT: &[u8] = b"NATS/1.0\r\nNats-Sequence: 7\r\nNats-Time-Stamp: 2026-01-01T00:00:00.5Z\r\nNats-Subject: orders.42\r\nEventline-Revision: 2\r\n\r\n";

    #[test]
    fn escapes_to_one_reversible_line() {
        assert_eq!(escape(b"plain text"), "plain text");
        assert_eq!(escape(b"a\nb\r\nc\td"), "a\\nb\\r\\nc\\td");
        assert_eq!(escape(b"back\\slash \\n"), "back\\\\slash \\\\n");
        assert_eq!(escape(b"\x00\x1b\x7f"), "\\x00\\x1b\\x7f");
        assert_eq!(escape("é ✓".as_bytes()), "é ✓");
        assert_eq!(escape(b"bad \xff utf-8"), "bad \u{fffd} utf-8");
        assert_eq!(escape(b""), "");
    }

    #[test]
    fn event_lines_take_seq_and_time_from_headers() {
        assert_eq!(
            event_line(&delivery(Some(EVENT), b"hello\nworld")),
            "7 2026-01-01T00:00:00.5Z orders.42 hello\\nworld"
        );
        assert_eq!(event_line(&delivery(None, b"x")), "- - orders.42 x");
        assert_eq!(live_line(&delivery(Some(EVENT), b"a b")), "orders.42 a b");
    }

    #[test]
    fn status_messages_are_told_apart_from_events() {
        let caught_up = delivery(Some(b"NATS/1.0 100 Caught Up\r\nNats-Last-Sequence: 12\r\n\r\n"), b"");
        let want = Status { code: 100, description: "Caught Up".to_owned(), last_seq: Some(12), count: None };
        assert_eq!(status(&caught_up), Some(want));
        let end =
            delivery(Some(b"NATS/1.0 204 End Of Results\r\nEventline-Count: 3\r\nNats-Last-Sequence: 9\r\n\r\n"), b"");
        assert_eq!(status(&end).map(|s| (s.code, s.count, s.last_seq)), Some((204, Some(3), Some(9))));
        let bare = delivery(Some(b"NATS/1.0 500\r\n\r\n"), b"");
        assert_eq!(status(&bare).map(|s| (s.code, s.description)), Some((500, String::new())));
        // Events, including one whose own headers had a status line, and plain messages.
        assert_eq!(status(&delivery(Some(EVENT), b"")), None);
        assert_eq!(status(&delivery(Some(b"NATS/1.0 100 X\r\nNats-Sequence: 1\r\n\r\n"), b"")), None);
        assert_eq!(status(&delivery(Some(b"NATS/1.0\r\n\r\n"), b"")), None);
        assert_eq!(status(&delivery(None, b"")), None);
    }

    #[test]
    fn ack_lines() {
        assert_eq!(ack_line(&Ack { seq: 1, revision: 1, duplicate: false }), "seq=1 rev=1");
        assert_eq!(ack_line(&Ack { seq: 9, revision: 3, duplicate: true }), "seq=9 rev=3 duplicate");
    }
}
