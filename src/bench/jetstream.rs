//! Requests to a server's `$`-APIs on a connection of their own: nats-server's JetStream API
//! (streams, consumers) and eventline's `$EL.LAST.<subject>`. A request is a `PUB` with a
//! reply subject under this connection's inbox; its answer is the message on that subject.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

use super::BenchError;
use crate::client::{Client, Fill};
use eventline::protocol::client::{Delivery, Received};

/// With `no_responders`, a request nobody answers gets a 503 status at once, not a timeout.
pub(super) const CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"echo\":false}\r\n";

/// How often [`Api::wait_stored`] asks for the stream's message count.
const POLL: Duration = Duration::from_millis(10);

/// A fresh inbox prefix: replies go to `<inbox>.<n>`, to a subscription on `<inbox>.*`.
pub(super) fn inbox() -> String {
    format!("_INBOX.bench{:016x}", rand::random::<u64>())
}

/// The status code of a header block (`NATS/1.0 503` -> 503), if it has one.
pub(super) fn status(headers: Option<&[u8]>) -> Option<u16> {
    let line = headers?.split(|&b| b == b'\n').next()?;
    let code = line.strip_prefix(b"NATS/1.0")?.trim_ascii().get(..3)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// The `error` member of a JetStream API reply.
#[derive(Debug, Deserialize)]
pub(super) struct ApiError {
    #[serde(default)]
    pub code: u64,
    #[serde(default)]
    pub description: String,
}

/// A JetStream publish acknowledgement: `{"stream":"S","seq":7}`, `"duplicate":true` for
/// a repeated `Nats-Msg-Id`, or `{"error":{...}}`.
#[derive(Debug, Deserialize)]
pub(super) struct PubAck {
    pub seq: Option<u64>,
    #[serde(default)]
    pub duplicate: bool,
    pub error: Option<ApiError>,
}

/// A connection for `$`-API requests.
pub(super) struct Api {
    conn: Client,
    inbox: String,
    next: u64,
}

impl Api {
    pub(super) async fn open(server: &str, wait: Duration) -> Result<Api, BenchError> {
        let inbox = inbox();
        let conn = Client::open(server, wait, CONNECT, format!("SUB {inbox}.* 1\r\n").as_bytes()).await?;
        Ok(Api { conn, inbox, next: 0 })
    }

    pub(super) fn conn(&self) -> &Client {
        &self.conn
    }

    /// Sends a request and returns the message that answers it. A 503 status (nobody
    /// listens on `subject`) is an error. Answers to earlier requests are skipped.
    pub(super) async fn request(&mut self, subject: &str, body: &[u8]) -> Result<Delivery, BenchError> {
        self.next += 1;
        let reply = format!("{}.{}", self.inbox, self.next);
        let mut frame = BytesMut::with_capacity(subject.len() + reply.len() + body.len() + 32);
        frame.put_slice(format!("PUB {subject} {reply} {}\r\n", body.len()).as_bytes());
        frame.put_slice(body);
        frame.put_slice(b"\r\n");
        self.conn.write(&frame).await?;
        let deadline = self.conn.deadline();
        let prefix = self.inbox.as_bytes();
        loop {
            while let Some(op) = self.conn.try_next()? {
                match op {
                    // Answers come on the reply subject, but eventline's `$EL.LAST` answers
                    // with the event itself, on its own subject; both reach our inbox's sid.
                    Received::Msg(msg)
                        if msg.sid == "1" && (msg.subject == reply.as_bytes() || !msg.subject.starts_with(prefix)) =>
                    {
                        if status(msg.headers.as_deref()) == Some(503) {
                            return Err(
                                self.failed(format!("nobody answers requests on {subject} (503 no responders)"))
                            );
                        }
                        return Ok(msg);
                    }
                    Received::Err(text) => return Err(self.conn.server_error(&text).into()),
                    Received::Nak(text) => return Err(BenchError::nak(&self.conn, &text)),
                    _ => {}
                }
            }
            match self.conn.fill(Some(deadline)).await? {
                Fill::Data => {}
                Fill::Idle => return Err(self.conn.timed_out("waiting for the answer to an API request").into()),
                Fill::Closed => return Err(self.conn.closed("before answering an API request").into()),
            }
        }
    }

    /// A JetStream API call: its JSON reply, or the `error` it carries as [`BenchError::JetStream`].
    async fn call(&mut self, subject: &str, body: &Value) -> Result<Value, BenchError> {
        let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(body)? };
        let msg = self.request(subject, &body).await?;
        let reply: Value = serde_json::from_slice(&msg.payload).map_err(|e| {
            self.failed(format!("{subject} answered with something other than JSON ({e}): {:?}", msg.payload))
        })?;
        if let Some(error) = reply.get("error") {
            let error = ApiError::deserialize(error).unwrap_or(ApiError { code: 0, description: error.to_string() });
            return Err(BenchError::JetStream {
                server: self.conn.server().to_owned(),
                request: subject.to_owned(),
                code: error.code,
                description: error.description,
            });
        }
        Ok(reply)
    }

    /// Deletes `stream` if it exists, then creates it afresh: file storage, capturing just
    /// `subject`, so every run starts from an empty stream.
    pub(super) async fn recreate_stream(&mut self, stream: &str, subject: &str) -> Result<(), BenchError> {
        super::check_jetstream(&self.conn)?;
        match self.call(&format!("$JS.API.STREAM.DELETE.{stream}"), &Value::Null).await {
            Ok(_) | Err(BenchError::JetStream { code: 404, .. }) => {}
            Err(error) => return Err(error),
        }
        let config = json!({
            "name": stream,
            "subjects": [subject],
            "storage": "file",
            "retention": "limits",
            "discard": "old",
        });
        self.call(&format!("$JS.API.STREAM.CREATE.{stream}"), &config).await?;
        Ok(())
    }

    /// How many messages `stream` holds.
    pub(super) async fn stream_messages(&mut self, stream: &str) -> Result<u64, BenchError> {
        let info = self.call(&format!("$JS.API.STREAM.INFO.{stream}"), &Value::Null).await?;
        info.pointer("/state/messages")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.failed(format!("the info of stream {stream} has no state.messages: {info}")))
    }

    /// Waits until `stream` holds `count` messages; fails if its count stops growing for
    /// the connection's timeout.
    pub(super) async fn wait_stored(&mut self, stream: &str, count: u64) -> Result<(), BenchError> {
        let (mut seen, mut grew) = (0, Instant::now());
        loop {
            let held = self.stream_messages(stream).await?;
            if held >= count {
                return Ok(());
            }
            if held > seen {
                (seen, grew) = (held, Instant::now());
            } else if grew.elapsed() >= self.conn.timeout() {
                return Err(self.failed(format!(
                    "stream {stream} holds {held} of {count} messages and has not grown for {} s",
                    self.conn.timeout().as_secs_f64()
                )));
            }
            sleep(POLL).await;
        }
    }

    /// Creates an ephemeral push consumer on `stream` delivering everything, unacknowledged
    /// and as fast as it can, to `deliver` (subscribe to it first).
    pub(super) async fn create_consumer(&mut self, stream: &str, deliver: &str) -> Result<(), BenchError> {
        let request = json!({
            "stream_name": stream,
            "config": {
                "deliver_subject": deliver,
                "deliver_policy": "all",
                "ack_policy": "none",
                "replay_policy": "instant",
                "flow_control": false,
            },
        });
        self.call(&format!("$JS.API.CONSUMER.CREATE.{stream}"), &request).await?;
        Ok(())
    }

    fn failed(&self, what: String) -> BenchError {
        BenchError::failed(&self.conn, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(status(Some(b"NATS/1.0 503\r\n\r\n")), Some(503));
        assert_eq!(status(Some(b"NATS/1.0 100 Caught Up\r\nNats-Last-Sequence: 5\r\n\r\n")), Some(100));
        assert_eq!(status(Some(b"NATS/1.0\r\nNats-Sequence: 1\r\n\r\n")), None);
        assert_eq!(status(None), None);
    }

    #[test]
    fn pub_acks() {
        let ack: PubAck = serde_json::from_slice(br#"{"stream":"S","seq":7}"#).expect("ack");
        assert_eq!((ack.seq, ack.duplicate, ack.error.is_none()), (Some(7), false, true));
        let nak: PubAck =
            serde_json::from_slice(br#"{"error":{"code":503,"err_code":10077,"description":"no space"}}"#)
                .expect("nak");
        let error = nak.error.expect("error");
        assert_eq!((nak.seq, error.code, error.description.as_str()), (None, 503, "no space"));
    }

    #[test]
    fn inboxes_differ() {
        assert_ne!(inbox(), inbox());
        assert!(inbox().starts_with("_INBOX."));
    }
}
