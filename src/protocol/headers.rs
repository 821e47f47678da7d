//! NATS header blocks (`NATS/1.0[ status]\r\nKey: value\r\n...\r\n`): reading the values a
//! client put there, and writing the headers eventline adds to deliveries.

use bytes::{BufMut, BytesMut};

/// JetStream's name: the publish is refused unless the log's last sequence is this.
pub const EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";
/// JetStream's name: refused unless the subject's last event has this sequence (0: none).
pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// Refused unless the subject's last event has this revision (0: the subject is new).
pub const EXPECTED_REVISION: &str = "Eventline-Expected-Revision";
/// `<seq> <filter> [<filter> ...]`: refused if any event matching a filter came after seq.
pub const UNCHANGED_SINCE: &str = "Eventline-Unchanged-Since";
/// JetStream's name: the message id deduplicated within the dedup window.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// JetStream's names for where a delivered event sits in the log.
pub const SEQUENCE: &str = "Nats-Sequence";
pub const TIME_STAMP: &str = "Nats-Time-Stamp";
pub const SUBJECT: &str = "Nats-Subject";
/// The event's position among the events of its subject.
pub const REVISION: &str = "Eventline-Revision";
/// On a status message: the last sequence the server has delivered or considered.
pub const LAST_SEQUENCE: &str = "Nats-Last-Sequence";

/// The values of every `name:` line in a header block, in order; names compare
/// case-insensitively, values are trimmed.
pub fn values<'a>(block: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    block.split(|&b| b == b'\n').skip(1).filter_map(move |line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (key, value) = line.split_at(colon);
        key.trim_ascii().eq_ignore_ascii_case(name.as_bytes()).then(|| value[1..].trim_ascii())
    })
}

/// The first value of `name`, if present.
pub fn value<'a>(block: &'a [u8], name: &'a str) -> Option<&'a [u8]> {
    values(block, name).next()
}

/// A non-negative decimal integer.
pub(super) fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Writes a header block: the version line (with an optional status such as `100 Caught
/// Up`), then each `name: value` line, then the blank line that ends the block.
pub fn write(dst: &mut BytesMut, status: Option<&str>, fields: &[(&str, &[u8])]) {
    dst.put_slice(b"NATS/1.0");
    if let Some(status) = status {
        dst.put_u8(b' ');
        dst.put_slice(status.as_bytes());
    }
    dst.put_slice(b"\r\n");
    for (name, value) in fields {
        dst.put_slice(name.as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value);
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
}

/// The header block of a delivered event: the event's own headers (if any) followed by
/// where it sits in the log, so a replayed event carries its sequence, time and revision.
pub fn event_block(dst: &mut BytesMut, own: Option<&[u8]>, seq: u64, timestamp: u64, subject: &[u8], revision: u64) {
    let mut numbers = itoa::Buffer::new();
    match own.and_then(|block| block.strip_suffix(b"\r\n")).filter(|block| block.ends_with(b"\r\n")) {
        Some(lines) => dst.put_slice(lines),
        None => dst.put_slice(b"NATS/1.0\r\n"),
    }
    let mut field = |name: &str, value: &[u8]| {
        dst.put_slice(name.as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value);
        dst.put_slice(b"\r\n");
    };
    field(SEQUENCE, numbers.format(seq).as_bytes());
    let mut time = [0u8; 40];
    field(TIME_STAMP, rfc3339_into(timestamp, &mut time));
    field(SUBJECT, subject);
    field(REVISION, numbers.format(revision).as_bytes());
    dst.put_slice(b"\r\n");
}

/// Unix nanoseconds as an RFC 3339 UTC time with nanoseconds, as JetStream writes it.
pub fn rfc3339(nanos: u64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(nanos)).map_or_else(|_| nanos.to_string(), |t| t.to_string())
}

thread_local! {
    /// The last whole second formatted, `YYYY-MM-DDTHH:MM:SS`: a replay formats thousands
    /// of timestamps within the same second, so only the fraction changes.
    static LAST_SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// [`rfc3339`] written into `buf` without allocating: the date and time part is cached
/// per second, the fraction (trailing zeros trimmed, none if zero) is written here.
fn rfc3339_into(nanos: u64, buf: &mut [u8; 40]) -> &[u8] {
    const NANOS: u64 = 1_000_000_000;
    let (second, fraction) = (nanos / NANOS, nanos % NANOS);
    let mut len = LAST_SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            let whole = rfc3339(second * NANOS);
            *cache = (second, whole.trim_end_matches('Z').to_owned());
        }
        let prefix = cache.1.as_bytes();
        buf[..prefix.len()].copy_from_slice(prefix);
        prefix.len()
    });
    if fraction > 0 {
        let digits = format_fraction(fraction);
        let trimmed = digits.iter().rposition(|&d| d != b'0').map_or(0, |last| last + 1);
        buf[len] = b'.';
        buf[len + 1..len + 1 + trimmed].copy_from_slice(&digits[..trimmed]);
        len += 1 + trimmed;
    }
    buf[len] = b'Z';
    &buf[..len + 1]
}

/// Nine zero-padded digits.
fn format_fraction(mut fraction: u64) -> [u8; 9] {
    let mut digits = [b'0'; 9];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &[u8] = b"NATS/1.0\r\nNats-Msg-Id: abc\r\nnats-expected-last-subject-sequence:  12 \r\nX: 1\r\nX: 2\r\nEventline-Unchanged-Since: 7 orders.42.>, customers.*\r\n\r\n";

    #[test]
    fn reads_values_case_insensitively_in_order() {
        assert_eq!(values(BLOCK, "x").collect::<Vec<_>>(), [&b"1"[..], b"2"]);
        assert_eq!(value(BLOCK, MSG_ID), Some(&b"abc"[..]));
        assert_eq!(value(BLOCK, "missing"), None);
    }

    #[test]
    fn event_blocks_keep_the_events_own_headers() {
        let mut dst = BytesMut::new();
        event_block(&mut dst, Some(b"NATS/1.0\r\nA: 1\r\n\r\n"), 7, 1_500_000_000, b"a.b", 2);
        assert_eq!(
            &dst[..],
            &b"NATS/1.0\r\nA: 1\r\nNats-Sequence: 7\r\nNats-Time-Stamp: 1970-01-01T00:00:01.5Z\r\nNats-Subject: a.b\r\nEventline-Revision: 2\r\n\r\n"[..]
        );
        let mut plain = BytesMut::new();
        event_block(&mut plain, None, 1, 0, b"x", 1);
        assert!(plain.starts_with(b"NATS/1.0\r\nNats-Sequence: 1\r\n"));
    }

    #[test]
    fn cached_timestamps_format_as_jiff_does() {
        for nanos in
            [0, 1, 1_500_000_000, 1_763_870_610_869_914_784, 1_763_870_610_000_000_000, 1_763_870_610_100_000_000]
        {
            let mut buf = [0u8; 40];
            assert_eq!(std::str::from_utf8(rfc3339_into(nanos, &mut buf)).expect("ascii"), rfc3339(nanos), "{nanos}");
        }
    }

    #[test]
    fn writes_a_block_that_reads_back() {
        let mut dst = BytesMut::new();
        write(&mut dst, Some("100 Caught Up"), &[(SEQUENCE, b"5"), (SUBJECT, b"a.b")]);
        assert_eq!(&dst[..], b"NATS/1.0 100 Caught Up\r\nNats-Sequence: 5\r\nNats-Subject: a.b\r\n\r\n");
        assert_eq!(value(&dst, SEQUENCE), Some(&b"5"[..]));
    }
}
