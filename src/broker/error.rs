use thiserror::Error;

/// A client request the broker refuses. The texts are nats-server's, because stock clients
/// close the connection on any `-ERR` text they don't know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BrokerError {
    /// `SUB` with an invalid subject; the connection stays open.
    #[error("{}", self.wire_text())]
    InvalidSubject,
    /// A publish subject with wildcards or empty tokens, reported in pedantic mode only;
    /// the connection stays open.
    #[error("{}", self.wire_text())]
    InvalidPublishSubject,
    /// `HPUB` from a client whose `CONNECT` did not say `headers: true`; closes.
    #[error("{}", self.wire_text())]
    HeadersNotSupported,
    /// `CONNECT` asking for no_responders without headers; closes.
    #[error("{}", self.wire_text())]
    NoRespondersNeedsHeaders,
    /// `CONNECT` with a protocol version other than 0 or 1; closes.
    #[error("{}", self.wire_text())]
    InvalidClientProtocol,
}

impl BrokerError {
    /// The text sent as `-ERR '<text>'`.
    pub fn wire_text(self) -> &'static str {
        match self {
            BrokerError::InvalidSubject => "Invalid Subject",
            BrokerError::InvalidPublishSubject => "Invalid Publish Subject",
            BrokerError::HeadersNotSupported => "message headers not supported",
            BrokerError::NoRespondersNeedsHeaders => "no responders requires headers support",
            BrokerError::InvalidClientProtocol => "invalid client protocol",
        }
    }

    /// Whether the connection closes after the error, as nats-server closes it.
    pub fn closes_connection(self) -> bool {
        !matches!(self, BrokerError::InvalidSubject | BrokerError::InvalidPublishSubject)
    }
}
