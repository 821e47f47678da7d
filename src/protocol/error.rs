use thiserror::Error;

/// Why a client's byte stream cannot go on. Every variant closes the connection, as in
/// nats-server, because the stream can no longer be framed; each knows the one line sent
/// before the close.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// Unknown verb (also an empty line, leading blanks or a client-sent `MSG`), or a
    /// payload not followed by its line end: the byte count was wrong.
    #[error("{}", self.wire_text())]
    UnknownOperation,
    /// A control line longer than [`super::MAX_CONTROL_LINE`], with or without its newline.
    #[error("{}", self.wire_text())]
    MaxControlLine,
    /// A `PUB`/`HPUB` announcing more bytes than `max_payload`; checked before buffering.
    #[error("{}", self.wire_text())]
    MaxPayload,
    /// A known verb with the wrong arguments. nats-server closes without a word here; we
    /// say what was expected, since a person at a telnet prompt is the likely sender.
    #[error("{}", self.wire_text())]
    InvalidArguments(Usage),
    /// `CONNECT` whose JSON does not parse (nats-server also closes without a word).
    #[error("{}", self.wire_text())]
    InvalidConnect,
    /// The socket failed while reading.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The op whose arguments were wrong; its wire text quotes the expected syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Pub,
    Hpub,
    Sub,
    Unsub,
    Apub,
    Fetch,
}

impl ProtocolError {
    /// The text sent as `-ERR '<text>'` before the connection closes.
    pub fn wire_text(&self) -> &'static str {
        match self {
            ProtocolError::UnknownOperation => "Unknown Protocol Operation",
            ProtocolError::MaxControlLine => "maximum control line exceeded",
            ProtocolError::MaxPayload => "Maximum Payload Violation",
            ProtocolError::InvalidArguments(Usage::Pub) => "Invalid Arguments, expected PUB <subject> [reply] <#bytes>",
            ProtocolError::InvalidArguments(Usage::Hpub) => {
                "Invalid Arguments, expected HPUB <subject> [reply] <#header bytes> <#total bytes>"
            }
            ProtocolError::InvalidArguments(Usage::Sub) => {
                "Invalid Arguments, expected SUB <subject> [queue] <sid> or SUB <filter> <sid> FROM <start>"
            }
            ProtocolError::InvalidArguments(Usage::Unsub) => "Invalid Arguments, expected UNSUB <sid> [max]",
            ProtocolError::InvalidArguments(Usage::Apub) => {
                "Invalid Arguments, expected APUB <subject> [#header bytes] <#total bytes> [option=value ...]"
            }
            ProtocolError::InvalidArguments(Usage::Fetch) => {
                "Invalid Arguments, expected FETCH <sid> <filter>[,<filter>...] [option=value ...]"
            }
            ProtocolError::InvalidConnect => "Invalid CONNECT JSON",
            ProtocolError::Io(_) => "Read Error",
        }
    }
}
