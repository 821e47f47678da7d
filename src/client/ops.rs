//! The client ops the command-line client sends, built and checked before anything is sent:
//! subjects and filters by [`eventline::subject`]'s rules, extension options by the same parsers
//! the server uses, so an op that leaves here is one the server can read.

use bytes::{BufMut, BytesMut};

use super::ClientError;
use eventline::protocol::{PublishOptions, Query, Refusal, Start};
use eventline::subject::{is_valid_filter, is_valid_subject};

/// The conditions and identity of an acknowledged publish (`APUB` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Refused unless the subject's last event has this sequence (0: the subject is new).
    pub expect_last_subject_seq: Option<u64>,
    /// Deduplicated against earlier publishes with the same id within the dedup window.
    pub msg_id: Option<String>,
}

/// Which events a `FETCH` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    pub limit: Option<u64>,
}

/// `PUB <subject> <#bytes>` and the payload or, when `conditions` is given,
/// `APUB <subject> <#bytes> [expect-subject-seq=N] [msg-id=ID]` and the payload.
///
/// # Errors
/// [`ClientError::Usage`] for an invalid subject or message id.
pub fn publish(subject: &str, payload: &[u8], conditions: Option<&Conditions>) -> Result<BytesMut, ClientError> {
    if !is_valid_subject(subject.as_bytes()) {
        return Err(usage(format!(
            "`{subject}` is not a subject one can publish to (no wildcards, empty tokens or blanks)"
        )));
    }
    let mut options = Vec::new();
    if let Some(conditions) = conditions {
        if let Some(seq) = conditions.expect_last_subject_seq {
            options.push(format!("expect-subject-seq={seq}"));
        }
        if let Some(id) = &conditions.msg_id {
            if id.is_empty() || id.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
                return Err(usage(format!(
                    "message id `{id}` must be non-empty, without blanks or control characters"
                )));
            }
            options.push(format!("msg-id={id}"));
        }
    }
    let options = options.join(" ");
    PublishOptions::parse(options.as_bytes(), None).map_err(unsendable)?;
    let verb = if conditions.is_some() { "APUB" } else { "PUB" };
    let mut op = BytesMut::with_capacity(payload.len() + subject.len() + options.len() + 32);
    op.put_slice(format!("{verb} {subject} {}", payload.len()).as_bytes());
    if !options.is_empty() {
        op.put_u8(b' ');
        op.put_slice(options.as_bytes());
    }
    op.put_slice(b"\r\n");
    op.put_slice(payload);
    op.put_slice(b"\r\n");
    Ok(op)
}

/// `SUB <filter> <sid>` or, with a start position, the catch-up `SUB <filter> <sid> FROM
/// <start>` (a sequence, an RFC 3339 time, `last` or `new`).
///
/// # Errors
/// [`ClientError::Usage`] for an invalid filter or start position.
pub fn subscribe(filter: &str, sid: u64, from: Option<&str>) -> Result<String, ClientError> {
    check_filter(filter)?;
    match from {
        None => Ok(format!("SUB {filter} {sid}\r\n")),
        Some(from) => {
            if from.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(usage(format!("start position `{from}` contains blanks")));
            }
            Start::parse(from.as_bytes()).map_err(unsendable)?;
            Ok(format!("SUB {filter} {sid} FROM {from}\r\n"))
        }
    }
}

/// `FETCH <sid> <filter>[,<filter>...] [from-seq=A] [to-seq=B] [since=T] [until=T] [limit=N]`.
///
/// # Errors
/// [`ClientError::Usage`] for no filter, an invalid filter or time.
pub fn fetch(sid: u64, filters: &[String], range: &Range) -> Result<String, ClientError> {
    if filters.is_empty() {
        return Err(usage("a fetch needs at least one subject filter".to_owned()));
    }
    for filter in filters {
        check_filter(filter)?;
        if filter.contains(',') {
            return Err(usage(format!("filter `{filter}` contains a comma, which separates filters on the wire")));
        }
    }
    let mut options = Vec::new();
    let numbers = [("from-seq", range.from_seq), ("to-seq", range.to_seq), ("limit", range.limit)];
    let times = [("since", &range.since), ("until", &range.until)];
    for (key, value) in numbers {
        if let Some(value) = value {
            options.push(format!("{key}={value}"));
        }
    }
    for (key, value) in times {
        if let Some(value) = value {
            if value.is_empty() || value.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(usage(format!("--{key} `{value}` is not an RFC 3339 time without blanks")));
            }
            options.push(format!("{key}={value}"));
        }
    }
    let (filters, options) = (filters.join(","), options.join(" "));
    Query::parse(filters.as_bytes(), options.as_bytes()).map_err(unsendable)?;
    Ok(if options.is_empty() {
        format!("FETCH {sid} {filters}\r\n")
    } else {
        format!("FETCH {sid} {filters} {options}\r\n")
    })
}

fn check_filter(filter: &str) -> Result<(), ClientError> {
    if is_valid_filter(filter.as_bytes()) {
        Ok(())
    } else {
        Err(usage(format!("`{filter}` is not a valid subject filter")))
    }
}

fn usage(reason: String) -> ClientError {
    ClientError::Usage(reason)
}

/// An op the server would refuse, caught as a usage error before it is sent.
fn unsendable(refusal: Refusal) -> ClientError {
    usage(refusal.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(op: Result<BytesMut, ClientError>) -> String {
        String::from_utf8(op.expect("valid").to_vec()).expect("utf-8")
    }

    #[test]
    fn plain_and_acknowledged_publishes() {
        assert_eq!(text(publish("a.b", b"hi", None)), "PUB a.b 2\r\nhi\r\n");
        assert_eq!(text(publish("a.b", b"", Some(&Conditions::default()))), "APUB a.b 0\r\n\r\n");
        let conditions = Conditions { expect_last_subject_seq: Some(0), msg_id: Some("order-7".to_owned()) };
        assert_eq!(
            text(publish("a.b", b"x\r\ny", Some(&conditions))),
            "APUB a.b 4 expect-subject-seq=0 msg-id=order-7\r\nx\r\ny\r\n"
        );
    }

    #[test]
    fn bad_publishes_are_usage_errors() {
        for subject in ["", "a.*", "a.>", "a..b", "a b"] {
            assert!(matches!(publish(subject, b"", None), Err(ClientError::Usage(_))), "{subject:?}");
        }
        for id in ["", "a b", "a\u{7}"] {
            let conditions = Conditions { msg_id: Some(id.to_owned()), ..Conditions::default() };
            assert!(matches!(publish("a", b"", Some(&conditions)), Err(ClientError::Usage(_))), "{id:?}");
        }
    }

    #[test]
    fn live_and_catch_up_subscriptions() {
        assert_eq!(subscribe("orders.>", 1, None).expect("valid"), "SUB orders.> 1\r\n");
        assert_eq!(subscribe("a.*", 1, Some("last")).expect("valid"), "SUB a.* 1 FROM last\r\n");
        assert_eq!(
            subscribe("a", 1, Some("2026-01-01T00:00:00Z")).expect("valid"),
            "SUB a 1 FROM 2026-01-01T00:00:00Z\r\n"
        );
        for (filter, from) in [("a..b", None), ("a", Some("yesterday")), ("a", Some("1 2")), ("a", Some(""))] {
            assert!(matches!(subscribe(filter, 1, from), Err(ClientError::Usage(_))), "{filter:?} {from:?}");
        }
    }

    #[test]
    fn fetches_join_filters_and_options() {
        let filters = ["a.>".to_owned(), "b.*".to_owned()];
        assert_eq!(fetch(1, &filters[..1], &Range::default()).expect("valid"), "FETCH 1 a.>\r\n");
        let range = Range {
            from_seq: Some(2),
            to_seq: Some(9),
            since: Some("2026-01-01T00:00:00Z".to_owned()),
            until: None,
            limit: Some(3),
        };
        assert_eq!(
            fetch(1, &filters, &range).expect("valid"),
            "FETCH 1 a.>,b.* from-seq=2 to-seq=9 limit=3 since=2026-01-01T00:00:00Z\r\n"
        );
    }

    #[test]
    fn bad_fetches_are_usage_errors() {
        let bad_time = Range { until: Some("tomorrow".to_owned()), ..Range::default() };
        let blank_time = Range { since: Some("2026-01-01 00:00:00Z".to_owned()), ..Range::default() };
        let cases: [(&[&str], &Range); 5] = [
            (&[], &Range::default()),
            (&["a..b"], &Range::default()),
            (&["a,b"], &Range::default()),
            (&["a"], &bad_time),
            (&["a"], &blank_time),
        ];
        for (filters, range) in cases {
            let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
            assert!(matches!(fetch(1, &filters, range), Err(ClientError::Usage(_))), "{filters:?} {range:?}");
        }
    }
}
