//! The extensions' arguments: publish conditions, catch-up start positions and queries,
//! from a typed line (`key=value` options) or from a `$`-API JSON request. Both faces
//! produce the same types, so the broker has one implementation behind them.

use bytes::Bytes;
use serde::Deserialize;

use super::headers;

/// Conditions and identity of a stored publish, from `APUB` options or from headers
/// (JetStream's names where JetStream has one; see [`headers`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishOptions {
    /// Deduplicates within the dedup window.
    pub msg_id: Option<Bytes>,
    /// The log's last sequence must be this.
    pub expected_last_seq: Option<u64>,
    /// The subject's last event must have this sequence (0: no event yet).
    pub expected_last_subject_seq: Option<u64>,
    /// The subject's last event must have this revision (0: no event yet).
    pub expected_revision: Option<u64>,
    /// No event matching any of these filters may have been appended after a sequence.
    pub unchanged_since: Option<Unchanged>,
}

impl PublishOptions {
    /// These options with every condition `other` sets taking precedence.
    pub fn overridden_by(self, other: PublishOptions) -> PublishOptions {
        PublishOptions {
            msg_id: other.msg_id.or(self.msg_id),
            expected_last_seq: other.expected_last_seq.or(self.expected_last_seq),
            expected_last_subject_seq: other.expected_last_subject_seq.or(self.expected_last_subject_seq),
            expected_revision: other.expected_revision.or(self.expected_revision),
            unchanged_since: other.unchanged_since.or(self.unchanged_since),
        }
    }
}

/// The options of an `APUB` line (`msg-id=ID expect-seq=N expect-subject-seq=N
/// expect-rev=N unchanged-since=SEQ:FILTER[,FILTER...]`) on top of the conditions in its
/// header block, if it has one.
///
/// # Errors
/// A one-line reason naming the bad option or header.
pub fn publish_options(text: &[u8], header_block: Option<&[u8]>) -> Result<PublishOptions, String> {
    let from_headers = header_block.map(headers::publish_options).transpose().map_err(|e| e.to_string())?;
    let mut options = PublishOptions::default();
    for word in text.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty()) {
        let text = String::from_utf8_lossy(word);
        let (key, value) = text.split_once('=').ok_or_else(|| format!("option {text} is not key=value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("option {key} needs a non-negative integer"));
        match key {
            "msg-id" if !value.is_empty() => options.msg_id = Some(Bytes::copy_from_slice(value.as_bytes())),
            "expect-seq" => options.expected_last_seq = Some(number()?),
            "expect-subject-seq" => options.expected_last_subject_seq = Some(number()?),
            "expect-rev" => options.expected_revision = Some(number()?),
            "unchanged-since" => {
                let spec = value.replacen(':', " ", 1);
                options.unchanged_since = Some(
                    headers::unchanged(spec.as_bytes())
                        .map_err(|_| "option unchanged-since needs SEQ:FILTER[,FILTER...]".to_owned())?,
                );
            }
            _ => return Err(format!("unknown option {key}")),
        }
    }
    Ok(from_headers.unwrap_or_default().overridden_by(options))
}

/// "Reject if any event matching one of `filters` was appended after sequence `after`":
/// one decision guarded by several streams (a dynamic consistency boundary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchanged {
    pub after: u64,
    pub filters: Vec<Bytes>,
}

/// Where a catch-up subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From this sequence (0 and 1 both mean the beginning).
    Seq(u64),
    /// From the first event at or after this time (unix nanoseconds).
    Time(u64),
    /// From the last event of each matching subject.
    LastPerSubject,
    /// Only events appended from now on.
    New,
}

/// Parses a start position: a sequence number, an RFC 3339 time, `last` or `new`.
///
/// # Errors
/// A one-line reason.
pub fn start(text: &[u8]) -> Result<Start, String> {
    let text = std::str::from_utf8(text).map_err(|_| "start position is not UTF-8".to_owned())?;
    if text.eq_ignore_ascii_case("last") {
        return Ok(Start::LastPerSubject);
    }
    if text.eq_ignore_ascii_case("new") {
        return Ok(Start::New);
    }
    if let Ok(seq) = text.parse::<u64>() {
        return Ok(Start::Seq(seq));
    }
    time(text)
        .map(Start::Time)
        .map_err(|_| format!("invalid start position {text}: expected a sequence, an RFC 3339 time, last or new"))
}

/// An RFC 3339 time as unix nanoseconds (times before 1970 are refused).
fn time(text: &str) -> Result<u64, String> {
    let timestamp: jiff::Timestamp = text.parse().map_err(|e| format!("invalid time {text}: {e}"))?;
    u64::try_from(timestamp.as_nanosecond()).map_err(|_| format!("time {text} is outside the years 1970 to 2554"))
}

/// A one-shot read of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub filters: Vec<Bytes>,
    pub from_seq: u64,
    pub to_seq: u64,
    /// Unix nanoseconds, inclusive.
    pub since: Option<u64>,
    /// Unix nanoseconds, exclusive.
    pub until: Option<u64>,
    pub limit: u64,
}

/// Results a query returns at most when it names no limit.
pub const DEFAULT_QUERY_LIMIT: u64 = 10_000;

/// Parses `FETCH` arguments: comma-separated filters and `from-seq=A to-seq=B since=T
/// until=T limit=N` options.
///
/// # Errors
/// A one-line reason naming the bad option.
pub fn query(filters: &[u8], options: &[u8]) -> Result<Query, String> {
    let mut query = Query {
        filters: filters.split(|&b| b == b',').filter(|f| !f.is_empty()).map(Bytes::copy_from_slice).collect(),
        from_seq: 1,
        to_seq: u64::MAX,
        since: None,
        until: None,
        limit: DEFAULT_QUERY_LIMIT,
    };
    for word in options.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty()) {
        let text = String::from_utf8_lossy(word);
        let (key, value) = text.split_once('=').ok_or_else(|| format!("option {text} is not key=value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("option {key} needs a non-negative integer"));
        match key {
            "from-seq" => query.from_seq = number()?,
            "to-seq" => query.to_seq = number()?,
            "since" => query.since = Some(time(value)?),
            "until" => query.until = Some(time(value)?),
            "limit" => query.limit = number()?,
            _ => return Err(format!("unknown option {key}")),
        }
    }
    Ok(query)
}

/// The JSON body of a `$EL.SUB` request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub filter: String,
    /// As [`start`] takes it: `"1"`, `"2026-01-01T00:00:00Z"`, `"last"`, `"new"`; or a number.
    pub start: serde_json::Value,
    /// A subject the requester subscribed to; events are delivered on that subscription.
    pub deliver: String,
}

impl SubscribeRequest {
    /// The start position.
    ///
    /// # Errors
    /// A one-line reason.
    pub fn start(&self) -> Result<Start, String> {
        match &self.start {
            serde_json::Value::Number(n) => n.as_u64().map(Start::Seq).ok_or_else(|| "start must be >= 0".to_owned()),
            serde_json::Value::String(s) => start(s.as_bytes()),
            _ => Err("start must be a sequence number or a string".to_owned()),
        }
    }
}

/// The JSON body of a `$EL.FETCH` request; results go to the request's reply subject.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    pub filters: Vec<String>,
    #[serde(default)]
    pub from_seq: Option<u64>,
    #[serde(default)]
    pub to_seq: Option<u64>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
}

impl FetchRequest {
    /// The query it asks for.
    ///
    /// # Errors
    /// A one-line reason (a bad time).
    pub fn query(&self) -> Result<Query, String> {
        Ok(Query {
            filters: self.filters.iter().map(|f| Bytes::copy_from_slice(f.as_bytes())).collect(),
            from_seq: self.from_seq.unwrap_or(1),
            to_seq: self.to_seq.unwrap_or(u64::MAX),
            since: self.since.as_deref().map(time).transpose()?,
            until: self.until.as_deref().map(time).transpose()?,
            limit: self.limit.unwrap_or(DEFAULT_QUERY_LIMIT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        assert_eq!(start(b"0"), Ok(Start::Seq(0)));
        assert_eq!(start(b"42"), Ok(Start::Seq(42)));
        assert_eq!(start(b"LAST"), Ok(Start::LastPerSubject));
        assert_eq!(start(b"new"), Ok(Start::New));
        assert_eq!(start(b"1970-01-01T00:00:01.5Z"), Ok(Start::Time(1_500_000_000)));
        assert!(start(b"yesterday").is_err());
        assert!(start(b"1969-12-31T23:59:59Z").is_err());
    }

    #[test]
    fn query_options() {
        let q = query(b"a.>,b.*", b"from-seq=3 to-seq=9 limit=2 since=1970-01-01T00:00:00Z").expect("valid");
        assert_eq!(q.filters, [Bytes::from_static(b"a.>"), Bytes::from_static(b"b.*")]);
        assert_eq!((q.from_seq, q.to_seq, q.limit, q.since, q.until), (3, 9, 2, Some(0), None));
        assert!(query(b"a", b"limit=x").is_err());
        assert!(query(b"a", b"colour=red").is_err());
    }

    #[test]
    fn publish_options_from_a_line_override_headers() {
        let block = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 4\r\nNats-Msg-Id: h\r\n\r\n";
        let options = publish_options(b"expect-subject-seq=5 unchanged-since=7:a.>,b.*", Some(block)).expect("valid");
        assert_eq!(options.expected_last_subject_seq, Some(5));
        assert_eq!(options.msg_id.as_deref(), Some(&b"h"[..]));
        let unchanged = options.unchanged_since.expect("present");
        assert_eq!((unchanged.after, unchanged.filters.len()), (7, 2));
        assert!(publish_options(b"expect-rev=x", None).is_err());
        assert!(publish_options(b"colour=red", None).is_err());
    }
}
