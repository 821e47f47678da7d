//! The NATS client protocol: parsing what clients send and encoding what the server sends.
//!
//! Pure code, no I/O. [`parse::parse_client_op`] is a function over `&[u8]` that returns
//! `Ok(None)` on incomplete input; [`codec::ClientCodec`] is the thin tokio-util `Decoder`
//! around it that turns the borrowed parse into owned [`ClientOp`]s: subjects and payloads
//! are `Bytes` slices of the read buffer (no copy), extension arguments typed values or a
//! [`Refusal`], and `$EL.` requests an [`ApiRequest`]. [`encode`] writes [`ServerOp`]s and
//! message heads. [`client`] is the other direction (parsing server ops) for eventline's own
//! load tool and command-line client.

pub mod api;
pub mod client;
pub mod codec;
pub mod encode;
mod error;
mod extension;
pub mod headers;
pub mod parse;
mod refusal;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use api::{ApiRead, ApiRequest};
pub use error::{ProtocolError, Usage};
pub use extension::{CatchUp, PublishOptions, Query, Start, Subscribe, Unchanged};
pub use refusal::Refusal;

/// Longest control line (the op line without its payload), as nats-server's `MAX_CONTROL_LINE_SIZE`.
pub const MAX_CONTROL_LINE: usize = 4096;

/// An op sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    Connect(Box<Connect>),
    Pub(Pub),
    Sub {
        subject: Bytes,
        queue: Option<Bytes>,
        sid: Bytes,
    },
    Unsub {
        sid: Bytes,
        max: Option<u64>,
    },
    Ping,
    Pong,
    /// `APUB`: a publish answered with its sequence once durable (an extension), with its
    /// conditions (from the line and the header block), or why they do not parse.
    Apub(Pub, Result<PublishOptions, Refusal>),
    /// `SUB <filter> <sid> FROM <start>`: a catch-up subscription (an extension).
    CatchUp {
        sid: Bytes,
        catch_up: Result<CatchUp, Refusal>,
    },
    /// `FETCH <sid> <filters> [option=value ...]`: a one-shot query (an extension).
    Fetch {
        sid: Bytes,
        query: Result<Query, Refusal>,
    },
    /// A `PUB` or `HPUB` (`headers`) on a `$EL.` request subject (see [`api`]).
    Request {
        request: ApiRequest,
        headers: bool,
    },
}

/// A `PUB` or `HPUB`: `headers` is the raw `NATS/1.0` block (with its final blank line),
/// kept exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pub {
    pub subject: Bytes,
    pub reply: Option<Bytes>,
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

impl Pub {
    /// The publish conditions in the message's header block (none without one), for a
    /// message that is stored.
    ///
    /// # Errors
    /// The [`Refusal`] naming the header that does not parse.
    pub fn publish_options(&self) -> Result<PublishOptions, Refusal> {
        self.headers.as_deref().map_or(Ok(PublishOptions::default()), PublishOptions::from_headers)
    }
}

/// The `CONNECT` options eventline acts on; unknown fields are ignored, missing ones take
/// nats-server's defaults. Note that those make `verbose` and `pedantic` true until a
/// `CONNECT` says otherwise: a telnet user sees `+OK` after each op, as with nats-server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Connect {
    pub verbose: bool,
    pub pedantic: bool,
    pub echo: bool,
    pub headers: bool,
    pub no_responders: bool,
    pub name: Option<String>,
    pub lang: Option<String>,
    pub version: Option<String>,
    pub protocol: Option<u32>,
}

impl Default for Connect {
    fn default() -> Self {
        Connect {
            verbose: true,
            pedantic: true,
            echo: true,
            headers: false,
            no_responders: false,
            name: None,
            lang: None,
            version: None,
            protocol: None,
        }
    }
}

/// The `INFO` document sent on connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: u32,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    pub max_payload: usize,
    pub client_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// What eventline adds to NATS; extension-aware clients look for this field.
    pub eventline: Extensions,
}

/// The `eventline` field of `INFO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Extensions {
    /// Extension features this server speaks (see protocol.md, "Extensions").
    pub features: Vec<String>,
}

/// An op sent by the server, other than message deliveries (which fan-out encodes straight
/// into a subscriber's queue, see [`encode::msg_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    Info(Box<Info>),
    Ok,
    Err(&'static str),
    Ping,
    Pong,
    /// `+ACK seq=<seq> rev=<revision>[ duplicate]`: an `APUB` is durable.
    Ack {
        seq: u64,
        revision: u64,
        duplicate: bool,
    },
    /// `-NAK '<reason>'`: an extension request was refused; for an `APUB`, nothing was stored.
    Nak(Refusal),
}

#[cfg(test)]
mod tests;
