//! protocol.md is the contract: its limits and error texts must be the code's.

use eventline::broker::BrokerError;
use eventline::config::{DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PENDING, DEFAULT_PING_INTERVAL, MAX_PINGS_OUT};
use eventline::protocol::{MAX_CONTROL_LINE, ProtocolError, Refusal, Usage};
use eventline::subject::SubjectError;

fn protocol_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md")).expect("protocol.md exists")
}

#[test]
fn every_error_text_is_documented() {
    let doc = protocol_md();
    let protocol_errors = [
        ProtocolError::UnknownOperation,
        ProtocolError::MaxControlLine,
        ProtocolError::MaxPayload,
        ProtocolError::InvalidArguments(Usage::Pub),
        ProtocolError::InvalidArguments(Usage::Hpub),
        ProtocolError::InvalidArguments(Usage::Sub),
        ProtocolError::InvalidArguments(Usage::Unsub),
        ProtocolError::InvalidArguments(Usage::Apub),
        ProtocolError::InvalidArguments(Usage::Fetch),
        ProtocolError::InvalidConnect,
    ];
    for error in &protocol_errors {
        assert!(doc.contains(&format!("`{}`", error.wire_text())), "protocol.md lacks {:?}", error.wire_text());
    }
    let broker_errors = [
        BrokerError::InvalidSubject,
        BrokerError::InvalidPublishSubject,
        BrokerError::HeadersNotSupported,
        BrokerError::NoRespondersNeedsHeaders,
        BrokerError::InvalidClientProtocol,
    ];
    for error in broker_errors {
        assert!(doc.contains(&format!("`{}`", error.wire_text())), "protocol.md lacks {:?}", error.wire_text());
    }
    assert!(doc.contains("`Stale Connection`"));
}

/// Every refusal, with the placeholder each of its values stands for in protocol.md's table.
fn every_refusal() -> Vec<(Refusal, Vec<(&'static str, &'static str)>)> {
    let text = |s: &str| s.to_owned();
    let ea = vec![("9001", "E"), ("9002", "A")];
    let all = vec![
        (Refusal::NotKeyValue(text("K")), vec![]),
        (Refusal::UnknownOption(text("K")), vec![]),
        (Refusal::MsgIdTooLong, vec![]),
        (Refusal::NotANumber(text("K")), vec![]),
        (Refusal::BadUnchangedSince, vec![]),
        (Refusal::BadHeader { header: "H", reason: "R" }, vec![]),
        (Refusal::BadHeaderBlock("it must start with NATS/1.0"), vec![]),
        (Refusal::BadHeaderBlock("a stored event cannot carry a status"), vec![]),
        (Refusal::InvalidTime { time: text("T"), reason: text("R") }, vec![]),
        (Refusal::TimeOutOfRange(text("T")), vec![]),
        (Refusal::InvalidStart(text("S")), vec![]),
        (Refusal::StartBeyondHead { start: 9001, head: 9002 }, vec![("9001", "N"), ("9002", "H")]),
        (Refusal::InvalidFilter { filter: text("F"), reason: SubjectError::EmptyToken }, vec![("empty token", "R")]),
        (Refusal::NoFilter, vec![]),
        (Refusal::InvalidRequest(text("R")), vec![]),
        (Refusal::SidInUse(text("S")), vec![]),
        (Refusal::TooManyReaders { kind: "queries", limit: 16 }, vec![]),
        (Refusal::TooManyReaders { kind: "catch-up subscriptions", limit: 1024 }, vec![]),
        (Refusal::InvalidSubject(SubjectError::WildcardNotAllowed), vec![("wildcard not allowed", "R")]),
        (Refusal::Volatile(text("S")), vec![]),
        (Refusal::NoSubscription(text("S")), vec![]),
        (Refusal::LastSequence { expected: 9001, actual: 9002 }, ea.clone()),
        (Refusal::LastSubjectSequence { expected: 9001, actual: 9002 }, ea.clone()),
        (Refusal::Revision { expected: 9001, actual: 9002 }, ea),
        (Refusal::Changed { filter: text("F"), after: 9001, actual: 9002 }, vec![("9001", "P"), ("9002", "A")]),
        (Refusal::InsufficientStorage, vec![]),
        (Refusal::StorageFailure, vec![]),
        (Refusal::MaybeStored, vec![]),
        (Refusal::ReadFailed(text("R")), vec![]),
    ];
    // Does not compile when a refusal is added without a line above.
    for (refusal, _) in &all {
        match refusal {
            Refusal::NotKeyValue(_)
            | Refusal::UnknownOption(_)
            | Refusal::MsgIdTooLong
            | Refusal::NotANumber(_)
            | Refusal::BadUnchangedSince
            | Refusal::BadHeader { .. }
            | Refusal::BadHeaderBlock(_)
            | Refusal::InvalidTime { .. }
            | Refusal::TimeOutOfRange(_)
            | Refusal::InvalidStart(_)
            | Refusal::StartBeyondHead { .. }
            | Refusal::InvalidFilter { .. }
            | Refusal::NoFilter
            | Refusal::InvalidRequest(_)
            | Refusal::SidInUse(_)
            | Refusal::TooManyReaders { .. }
            | Refusal::InvalidSubject(_)
            | Refusal::Volatile(_)
            | Refusal::NoSubscription(_)
            | Refusal::LastSequence { .. }
            | Refusal::LastSubjectSequence { .. }
            | Refusal::Revision { .. }
            | Refusal::Changed { .. }
            | Refusal::InsufficientStorage
            | Refusal::StorageFailure
            | Refusal::MaybeStored
            | Refusal::ReadFailed(_) => {}
        }
    }
    all
}

/// Each `-NAK` text, with its values as protocol.md's placeholders, is a row of the
/// refusals table, with its JSON code.
#[test]
fn every_refusal_is_documented_with_its_code() {
    let doc = protocol_md();
    for (refusal, placeholders) in every_refusal() {
        let text = placeholders.iter().fold(refusal.to_string(), |text, (value, name)| text.replace(value, name));
        let row = doc
            .lines()
            .find(|line| line.starts_with(&format!("| `{text}` |")))
            .unwrap_or_else(|| panic!("protocol.md has no refusals row for `{text}`"));
        assert!(row.ends_with(&format!("| {} |", refusal.code())), "{row}: expected code {}", refusal.code());
    }
}

#[test]
fn limits_table_matches_the_constants() {
    let doc = protocol_md();
    let row = |name: &str| {
        doc.lines()
            .find(|line| line.starts_with('|') && line.contains(name))
            .unwrap_or_else(|| panic!("no row for {name}"))
            .to_owned()
    };
    assert!(row("MAX_CONTROL_LINE").contains(&format!("{MAX_CONTROL_LINE} bytes")));
    assert!(row("DEFAULT_MAX_PAYLOAD").contains(&format!("{DEFAULT_MAX_PAYLOAD} bytes")));
    assert!(row("DEFAULT_MAX_PENDING").contains(&format!("{DEFAULT_MAX_PENDING} bytes")));
    assert!(row("--ping-interval").contains(&format!("{} seconds", DEFAULT_PING_INTERVAL.as_secs())));
    assert!(row("MAX_PINGS_OUT").contains(&format!("| {MAX_PINGS_OUT} |")));
}
