//! The extensions' arguments as typed values: publish conditions, catch-up starts and
//! queries, from a typed line (`key=value` options) or from a `$EL.` JSON request. Both
//! faces produce the same types, so the broker has one implementation behind them, and
//! every argument that does not parse is a [`Refusal`] the client is told about.

use bytes::Bytes;

use super::Refusal;
use super::headers;
use crate::config::DEFAULT_QUERY_LIMIT;
use crate::subject::Filter;

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
    /// The publish conditions carried in the header block of an event to be stored.
    ///
    /// # Errors
    /// [`Refusal::BadHeaderBlock`] for a block that does not start `NATS/1.0` or carries a
    /// status (replayed, it could pass for a `100 Caught Up` or `204 End Of Results`
    /// marker); [`Refusal::BadHeader`] (or [`Refusal::InvalidFilter`]) if a condition header
    /// does not parse.
    pub fn from_headers(block: &[u8]) -> Result<PublishOptions, Refusal> {
        let version_line = block.split(|&b| b == b'\n').next().unwrap_or_default();
        match version_line.strip_prefix(b"NATS/1.0") {
            None => return Err(Refusal::BadHeaderBlock("it must start with NATS/1.0")),
            Some(status) if !status.trim_ascii().is_empty() => {
                return Err(Refusal::BadHeaderBlock("a stored event cannot carry a status"));
            }
            Some(_) => {}
        }
        let number = |header: &'static str| -> Result<Option<u64>, Refusal> {
            headers::value(block, header)
                .map(|v| {
                    headers::parse_u64(v).ok_or(Refusal::BadHeader { header, reason: "not a non-negative integer" })
                })
                .transpose()
        };
        Ok(PublishOptions {
            msg_id: headers::value(block, headers::MSG_ID).filter(|v| !v.is_empty()).map(msg_id).transpose()?,
            expected_last_seq: number(headers::EXPECTED_LAST_SEQUENCE)?,
            expected_last_subject_seq: number(headers::EXPECTED_LAST_SUBJECT_SEQUENCE)?,
            expected_revision: number(headers::EXPECTED_REVISION)?,
            unchanged_since: headers::value(block, headers::UNCHANGED_SINCE).map(unchanged_header).transpose()?,
        })
    }

    /// The options of an `APUB` line (`msg-id=ID expect-seq=N expect-subject-seq=N
    /// expect-rev=N unchanged-since=SEQ:FILTER[,FILTER...]`) on top of the conditions in
    /// its header block, if it has one: the line's take precedence.
    ///
    /// # Errors
    /// The [`Refusal`] naming the bad option or header.
    pub fn parse(line: &[u8], header_block: Option<&[u8]>) -> Result<PublishOptions, Refusal> {
        let mut options = header_block.map(PublishOptions::from_headers).transpose()?.unwrap_or_default();
        for pair in key_values(line) {
            let (key, value) = pair?;
            let number = || value.parse::<u64>().map_err(|_| Refusal::NotANumber(key.to_owned()));
            match key {
                "msg-id" if !value.is_empty() => options.msg_id = Some(msg_id(value.as_bytes())?),
                "expect-seq" => options.expected_last_seq = Some(number()?),
                "expect-subject-seq" => options.expected_last_subject_seq = Some(number()?),
                "expect-rev" => options.expected_revision = Some(number()?),
                "unchanged-since" => {
                    let (after, filters) = value.split_once(':').ok_or(Refusal::BadUnchangedSince)?;
                    let after = after.parse().map_err(|_| Refusal::BadUnchangedSince)?;
                    let filters = self::filters(filters.as_bytes().split(|&b| b == b','))?;
                    if filters.is_empty() {
                        return Err(Refusal::BadUnchangedSince);
                    }
                    options.unchanged_since = Some(Unchanged { after, filters });
                }
                _ => return Err(Refusal::UnknownOption(key.to_owned())),
            }
        }
        Ok(options)
    }
}

/// "Reject if any event matching one of `filters` was appended after sequence `after`":
/// Longest message id: ids are kept in memory for the dedup window and are keys of the
/// store, whose keys are bounded.
pub const MAX_MSG_ID_BYTES: usize = 1024;

/// A message id, copied out of the frame it arrived in.
fn msg_id(value: &[u8]) -> Result<Bytes, Refusal> {
    if value.len() > MAX_MSG_ID_BYTES {
        return Err(Refusal::MsgIdTooLong);
    }
    Ok(Bytes::copy_from_slice(value))
}

/// one decision guarded by several streams (a dynamic consistency boundary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchanged {
    pub after: u64,
    pub filters: Vec<Filter>,
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

impl Start {
    /// A start position: a sequence number, an RFC 3339 time, `last` or `new`.
    ///
    /// # Errors
    /// [`Refusal::InvalidStart`].
    pub fn parse(text: &[u8]) -> Result<Start, Refusal> {
        let text = String::from_utf8_lossy(text);
        if text.eq_ignore_ascii_case("last") {
            return Ok(Start::LastPerSubject);
        }
        if text.eq_ignore_ascii_case("new") {
            return Ok(Start::New);
        }
        if let Ok(seq) = text.parse::<u64>() {
            return Ok(Start::Seq(seq));
        }
        time(&text).map(Start::Time).map_err(|_| Refusal::InvalidStart(text.into_owned()))
    }

    /// A start position in a JSON request: a number, or a string as [`Start::parse`] takes it.
    fn from_json(value: &serde_json::Value) -> Result<Start, Refusal> {
        match value {
            serde_json::Value::Number(n) => {
                n.as_u64().map(Start::Seq).ok_or_else(|| Refusal::InvalidStart(n.to_string()))
            }
            serde_json::Value::String(s) => Start::parse(s.as_bytes()),
            other => Err(Refusal::InvalidStart(other.to_string())),
        }
    }
}

/// `SUB <filter> <sid> FROM <start>`: what a catch-up subscription replays, then follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    pub filter: Filter,
    pub start: Start,
}

impl CatchUp {
    /// The arguments of the catch-up `SUB`.
    ///
    /// # Errors
    /// [`Refusal::InvalidFilter`] or [`Refusal::InvalidStart`].
    pub fn parse(filter: Bytes, start: &[u8]) -> Result<CatchUp, Refusal> {
        let filter = Filter::new(filter.clone()).map_err(|reason| Refusal::invalid_filter(&filter, reason))?;
        Ok(CatchUp { filter, start: Start::parse(start)? })
    }
}

/// A one-shot read of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// At least one.
    pub filters: Vec<Filter>,
    pub from_seq: u64,
    pub to_seq: u64,
    /// Unix nanoseconds, inclusive.
    pub since: Option<u64>,
    /// Unix nanoseconds, exclusive.
    pub until: Option<u64>,
    pub limit: u64,
}

impl Query {
    /// `FETCH` arguments: comma-separated filters and `from-seq=A to-seq=B since=T until=T
    /// limit=N` options.
    ///
    /// # Errors
    /// The [`Refusal`] naming the bad filter or option.
    pub fn parse(filters: &[u8], options: &[u8]) -> Result<Query, Refusal> {
        let mut query = Query::over(self::filters(filters.split(|&b| b == b','))?)?;
        for pair in key_values(options) {
            let (key, value) = pair?;
            let number = || value.parse::<u64>().map_err(|_| Refusal::NotANumber(key.to_owned()));
            match key {
                "from-seq" => query.from_seq = number()?,
                "to-seq" => query.to_seq = number()?,
                "since" => query.since = Some(time(value)?),
                "until" => query.until = Some(time(value)?),
                "limit" => query.limit = number()?,
                _ => return Err(Refusal::UnknownOption(key.to_owned())),
            }
        }
        Ok(query)
    }

    /// Everything matching `filters`, up to the default limit.
    fn over(filters: Vec<Filter>) -> Result<Query, Refusal> {
        if filters.is_empty() {
            return Err(Refusal::NoFilter);
        }
        Ok(Query { filters, from_seq: 1, to_seq: u64::MAX, since: None, until: None, limit: DEFAULT_QUERY_LIMIT })
    }
}

/// Parses `<seq> <filter> [<filter> ...]` (filters may also be comma-separated).
fn unchanged_header(text: &[u8]) -> Result<Unchanged, Refusal> {
    let bad = |reason| Refusal::BadHeader { header: headers::UNCHANGED_SINCE, reason };
    let mut words = text.split(|&b| b == b' ' || b == b'\t' || b == b',').filter(|w| !w.is_empty());
    let after = words.next().and_then(headers::parse_u64).ok_or(bad("expected <seq> <filter> [<filter> ...]"))?;
    let filters = filters(words)?;
    if filters.is_empty() {
        return Err(bad("expected at least one subject filter after the sequence"));
    }
    Ok(Unchanged { after, filters })
}

/// The JSON body of a `$EL.SUB` request.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    filter: String,
    /// As [`Start::parse`] takes it: `"1"`, `"2026-01-01T00:00:00Z"`, `"last"`, `"new"`; or a number.
    start: serde_json::Value,
    /// A subject the requester subscribed to; events are delivered on that subscription.
    deliver: String,
}

/// A `$EL.SUB` request: a catch-up subscription delivering on the requester's own
/// subscription to `deliver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub catch_up: CatchUp,
    pub deliver: Bytes,
}

impl Subscribe {
    /// Decodes a `$EL.SUB` JSON body.
    ///
    /// # Errors
    /// [`Refusal::InvalidRequest`] for JSON of the wrong shape, or the catch-up's refusal.
    pub fn from_json(body: &[u8]) -> Result<Subscribe, Refusal> {
        let body: SubscribeBody = json(body)?;
        let filter = Bytes::from(body.filter.into_bytes());
        let filter = Filter::new(filter.clone()).map_err(|reason| Refusal::invalid_filter(&filter, reason))?;
        let catch_up = CatchUp { filter, start: Start::from_json(&body.start)? };
        Ok(Subscribe { catch_up, deliver: Bytes::from(body.deliver.into_bytes()) })
    }
}

/// The JSON body of a `$EL.FETCH` request; results go to the request's reply subject.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchBody {
    filters: Vec<String>,
    #[serde(default)]
    from_seq: Option<u64>,
    #[serde(default)]
    to_seq: Option<u64>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
}

impl Query {
    /// Decodes a `$EL.FETCH` JSON body.
    ///
    /// # Errors
    /// [`Refusal::InvalidRequest`] for JSON of the wrong shape, or the bad filter or time.
    pub fn from_json(body: &[u8]) -> Result<Query, Refusal> {
        let body: FetchBody = json(body)?;
        let mut query = Query::over(filters(body.filters.iter().map(String::as_bytes))?)?;
        query.from_seq = body.from_seq.unwrap_or(query.from_seq);
        query.to_seq = body.to_seq.unwrap_or(query.to_seq);
        query.since = body.since.as_deref().map(time).transpose()?;
        query.until = body.until.as_deref().map(time).transpose()?;
        query.limit = body.limit.unwrap_or(query.limit);
        Ok(query)
    }
}

fn json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| Refusal::InvalidRequest(e.to_string()))
}

/// The non-empty words of `words` as filters.
fn filters<'a>(words: impl Iterator<Item = &'a [u8]>) -> Result<Vec<Filter>, Refusal> {
    words
        .filter(|word| !word.is_empty())
        .map(|word| Filter::new(Bytes::copy_from_slice(word)).map_err(|reason| Refusal::invalid_filter(word, reason)))
        .collect()
}

/// The blank-separated `key=value` words of an options text, without allocating for the
/// usual empty or short text (this runs for every `APUB`).
fn key_values(text: &[u8]) -> impl Iterator<Item = Result<(&str, &str), Refusal>> {
    let (words, not_utf8) = match std::str::from_utf8(text) {
        Ok(words) => (words, None),
        Err(_) => ("", Some(Refusal::NotKeyValue(String::from_utf8_lossy(text).into_owned()))),
    };
    let pairs = words
        .split([' ', '\t'])
        .filter(|word| !word.is_empty())
        .map(|word| word.split_once('=').ok_or_else(|| Refusal::NotKeyValue(word.to_owned())));
    not_utf8.map(Err).into_iter().chain(pairs)
}

/// An RFC 3339 time as unix nanoseconds (times before 1970 are refused).
fn time(text: &str) -> Result<u64, Refusal> {
    let timestamp: jiff::Timestamp =
        text.parse().map_err(|e: jiff::Error| Refusal::InvalidTime { time: text.to_owned(), reason: e.to_string() })?;
    u64::try_from(timestamp.as_nanosecond()).map_err(|_| Refusal::TimeOutOfRange(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(text: &'static str) -> Filter {
        Filter::new(Bytes::from_static(text.as_bytes())).expect("valid filter")
    }

    #[test]
    fn start_positions() {
        assert_eq!(Start::parse(b"0"), Ok(Start::Seq(0)));
        assert_eq!(Start::parse(b"42"), Ok(Start::Seq(42)));
        assert_eq!(Start::parse(b"LAST"), Ok(Start::LastPerSubject));
        assert_eq!(Start::parse(b"new"), Ok(Start::New));
        assert_eq!(Start::parse(b"1970-01-01T00:00:01.5Z"), Ok(Start::Time(1_500_000_000)));
        assert_eq!(Start::parse(b"yesterday"), Err(Refusal::InvalidStart("yesterday".to_owned())));
        assert!(Start::parse(b"1969-12-31T23:59:59Z").is_err());
    }

    #[test]
    fn query_options() {
        let q = Query::parse(b"a.>,b.*", b"from-seq=3 to-seq=9 limit=2 since=1970-01-01T00:00:00Z").expect("valid");
        assert_eq!(q.filters, [filter("a.>"), filter("b.*")]);
        assert_eq!((q.from_seq, q.to_seq, q.limit, q.since, q.until), (3, 9, 2, Some(0), None));
        assert_eq!(Query::parse(b"a", b"limit=x"), Err(Refusal::NotANumber("limit".to_owned())));
        assert_eq!(Query::parse(b"a", b"colour=red"), Err(Refusal::UnknownOption("colour".to_owned())));
        assert_eq!(Query::parse(b",", b""), Err(Refusal::NoFilter));
        assert!(matches!(Query::parse(b"a..b", b""), Err(Refusal::InvalidFilter { .. })));
    }

    #[test]
    fn publish_options_from_a_line_override_headers() {
        let block = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 4\r\nNats-Msg-Id: h\r\n\r\n";
        let options =
            PublishOptions::parse(b"expect-subject-seq=5 unchanged-since=7:a.>,b.*", Some(block)).expect("valid");
        assert_eq!(options.expected_last_subject_seq, Some(5));
        assert_eq!(options.msg_id.as_deref(), Some(&b"h"[..]));
        let unchanged = options.unchanged_since.expect("present");
        assert_eq!((unchanged.after, unchanged.filters), (7, vec![filter("a.>"), filter("b.*")]));
        assert_eq!(PublishOptions::parse(b"expect-rev=x", None), Err(Refusal::NotANumber("expect-rev".to_owned())));
        assert_eq!(PublishOptions::parse(b"colour", None), Err(Refusal::NotKeyValue("colour".to_owned())));
        assert_eq!(PublishOptions::parse(b"unchanged-since=7", None), Err(Refusal::BadUnchangedSince));
        assert!(matches!(PublishOptions::parse(b"unchanged-since=7:a..b", None), Err(Refusal::InvalidFilter { .. })));
    }

    #[test]
    fn json_requests() {
        let subscribe = Subscribe::from_json(br#"{"filter":"a.>","start":"new","deliver":"in.1"}"#).expect("valid");
        assert_eq!(subscribe.catch_up, CatchUp { filter: filter("a.>"), start: Start::New });
        assert_eq!(&subscribe.deliver[..], b"in.1");
        assert_eq!(
            Subscribe::from_json(br#"{"filter":"a","start":7,"deliver":"i"}"#).map(|s| s.catch_up.start),
            Ok(Start::Seq(7))
        );
        assert!(matches!(Subscribe::from_json(br#"{"filter":"a"}"#), Err(Refusal::InvalidRequest(_))));
        assert!(matches!(
            Subscribe::from_json(br#"{"filter":"a","start":-1,"deliver":"i"}"#),
            Err(Refusal::InvalidStart(_))
        ));
        let query = Query::from_json(br#"{"filters":["a","b.>"],"limit":3}"#).expect("valid");
        assert_eq!((query.filters.len(), query.limit, query.from_seq), (2, 3, 1));
        assert_eq!(Query::from_json(br#"{"filters":[]}"#), Err(Refusal::NoFilter));
    }

    const BLOCK: &[u8] = b"NATS/1.0\r\nNats-Msg-Id: abc\r\nnats-expected-last-subject-sequence:  12 \r\nX: 1\r\nX: 2\r\nEventline-Unchanged-Since: 7 orders.42.>, customers.*\r\n\r\n";

    #[test]
    fn reads_publish_conditions() {
        let options = PublishOptions::from_headers(BLOCK).expect("valid");
        assert_eq!(options.msg_id.as_deref(), Some(&b"abc"[..]));
        assert_eq!(options.expected_last_subject_seq, Some(12));
        assert_eq!(options.expected_last_seq, None);
        let unchanged = options.unchanged_since.expect("present");
        assert_eq!(unchanged.after, 7);
        let filters: Vec<&[u8]> = unchanged.filters.iter().map(|f| f.as_bytes()).collect();
        assert_eq!(filters, [&b"orders.42.>"[..], b"customers.*"]);
    }

    #[test]
    fn bad_conditions_name_their_header() {
        let bad =
            PublishOptions::from_headers(b"NATS/1.0\r\nNats-Expected-Last-Sequence: x\r\n\r\n").expect_err("invalid");
        assert!(matches!(bad, Refusal::BadHeader { header: headers::EXPECTED_LAST_SEQUENCE, .. }));
        assert!(PublishOptions::from_headers(b"NATS/1.0\r\nEventline-Unchanged-Since: 5\r\n\r\n").is_err());
        let long_id = "i".repeat(MAX_MSG_ID_BYTES + 1);
        let block = format!("NATS/1.0\r\nNats-Msg-Id: {long_id}\r\n\r\n");
        assert_eq!(PublishOptions::from_headers(block.as_bytes()), Err(Refusal::MsgIdTooLong));
        assert_eq!(PublishOptions::parse(format!("msg-id={long_id}").as_bytes(), None), Err(Refusal::MsgIdTooLong));
        for (block, reason) in [
            (&b"NATS/1.0 100 Caught Up\r\nNats-Last-Sequence: 3\r\n\r\n"[..], "a stored event cannot carry a status"),
            (b"NATS/1.0 204\r\n\r\n", "a stored event cannot carry a status"),
            (b"HTTP/1.1\r\nA: b\r\n\r\n", "it must start with NATS/1.0"),
        ] {
            assert_eq!(PublishOptions::from_headers(block), Err(Refusal::BadHeaderBlock(reason)));
        }
        assert_eq!(PublishOptions::from_headers(b"NATS/1.0 \r\n\r\n"), Ok(PublishOptions::default()));
    }
}
