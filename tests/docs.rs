//! protocol.md is the contract: its limits and error texts must be the code's.

use eventline::broker::{BrokerError, DEFAULT_MAX_PENDING, DEFAULT_PING_INTERVAL, MAX_PINGS_OUT};
use eventline::protocol::{DEFAULT_MAX_PAYLOAD, MAX_CONTROL_LINE, ProtocolError, Usage};

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
