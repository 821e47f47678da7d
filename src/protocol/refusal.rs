//! Why an extension request was refused: the one vocabulary of `-NAK '<reason>'` lines and
//! of the `$EL.` API's JSON errors. A refusal leaves the connection open.

use crate::subject::SubjectError;

/// A refused extension request. `Display` is the exact `-NAK` text, and the `description`
/// of the JSON error a `$EL.` request gets; protocol.md lists every one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An option word without `=`.
    #[error("option {0} is not key=value")]
    NotKeyValue(String),
    #[error("message id longer than 1024 bytes")]
    MsgIdTooLong,
    #[error("unknown option {0}")]
    UnknownOption(String),
    /// A numeric option whose value is not a non-negative integer.
    #[error("option {0} needs a non-negative integer")]
    NotANumber(String),
    #[error("option unchanged-since needs SEQ:FILTER[,FILTER...]")]
    BadUnchangedSince,
    /// A publish condition in a header block that does not parse.
    #[error("invalid {header} header: {reason}")]
    BadHeader { header: &'static str, reason: &'static str },
    /// A stored event's header block that could be mistaken for something else on replay.
    #[error("invalid header block: {0}")]
    BadHeaderBlock(&'static str),
    #[error("invalid time {time}: {reason}")]
    InvalidTime { time: String, reason: String },
    #[error("time {0} is outside the years 1970 to 2554")]
    TimeOutOfRange(String),
    #[error("invalid start position {0}: expected a sequence, an RFC 3339 time, last or new")]
    InvalidStart(String),
    #[error("start sequence {start} is beyond the head {head}")]
    StartBeyondHead { start: u64, head: u64 },
    #[error("invalid filter {filter}: {reason}")]
    InvalidFilter { filter: String, reason: SubjectError },
    #[error("a query needs at least one subject filter")]
    NoFilter,
    /// A `$EL.` request whose JSON body does not parse (serde's reason).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("sid {0} is already in use")]
    SidInUse(String),
    /// The connection already runs as many readers of this kind as it may.
    #[error("too many {kind} on this connection: at most {limit}")]
    TooManyReaders { kind: &'static str, limit: usize },
    /// An acknowledged publish to a subject that is not a valid literal subject.
    #[error("invalid subject: {0}")]
    InvalidSubject(SubjectError),
    #[error("subject {0} is volatile: it is delivered but never stored")]
    Volatile(String),
    /// A `$EL.` request whose answers would reach none of the requester's subscriptions.
    #[error("no subscription of this connection matches {0}")]
    NoSubscription(String),
    #[error("wrong last sequence: expected {expected}, actual {actual}")]
    LastSequence { expected: u64, actual: u64 },
    #[error("wrong last subject sequence: expected {expected}, actual {actual}")]
    LastSubjectSequence { expected: u64, actual: u64 },
    #[error("wrong revision: expected {expected}, actual {actual}")]
    Revision { expected: u64, actual: u64 },
    /// An event matching `filter` was appended after `after`; `actual` is the newest.
    #[error("{filter} changed after {after}: sequence {actual}")]
    Changed { filter: String, after: u64, actual: u64 },
    /// The log failed before the event was written anywhere; nothing more is acknowledged.
    #[error("storage failure: the event was not stored")]
    StorageFailure,
    /// The log failed after the event's write-ahead record was written (fjall's write or
    /// the fsync failed): a restart may find it in the log. Nothing more is acknowledged.
    /// The disk is below its free-space reserve; the server goes on and stores events
    /// again once there is room (the HTTP code for it).
    #[error("insufficient storage: the event was not stored")]
    InsufficientStorage,
    #[error("storage failure: the event may have been stored")]
    MaybeStored,
    /// Reading the log failed while starting a reader.
    #[error("reading the log failed: {0}")]
    ReadFailed(String),
}

impl Refusal {
    /// The JSON error's `code`, as JetStream uses them: 409 for a publish condition that
    /// did not hold, 503 when the log failed, 429 for a reader past the connection's
    /// limit (it may succeed once another ends), 400 for a request that can never succeed.
    pub fn code(&self) -> u16 {
        match self {
            Refusal::LastSequence { .. }
            | Refusal::LastSubjectSequence { .. }
            | Refusal::Revision { .. }
            | Refusal::Changed { .. } => 409,
            Refusal::StorageFailure | Refusal::MaybeStored | Refusal::ReadFailed(_) => 503,
            Refusal::TooManyReaders { .. } => 429,
            Refusal::InsufficientStorage => 507,
            _ => 400,
        }
    }

    /// For a failed publish condition, what the log actually held, so a client can retry
    /// against it.
    pub fn actual(&self) -> Option<u64> {
        match self {
            Refusal::LastSequence { actual, .. }
            | Refusal::LastSubjectSequence { actual, .. }
            | Refusal::Revision { actual, .. }
            | Refusal::Changed { actual, .. } => Some(*actual),
            _ => None,
        }
    }

    pub(super) fn invalid_filter(filter: &[u8], reason: SubjectError) -> Refusal {
        Refusal::InvalidFilter { filter: String::from_utf8_lossy(filter).into_owned(), reason }
    }
}
