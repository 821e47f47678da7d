//! The tokio-util `Decoder` over [`parse_client_op`]: it only moves bytes.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::parse::{Parsed, RawOp, parse_client_op};
use super::{ClientOp, Connect, ProtocolError, Pub};

/// Decodes [`ClientOp`]s; payloads leave as slices of the read buffer (`split_to(..).freeze()`).
#[derive(Debug, Clone)]
pub struct ClientCodec {
    max_payload: usize,
}

impl ClientCodec {
    pub fn new(max_payload: usize) -> Self {
        ClientCodec { max_payload }
    }
}

impl Decoder for ClientCodec {
    type Item = ClientOp;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ClientOp>, ProtocolError> {
        let Some(Parsed { op, len }) = parse_client_op(src, self.max_payload)? else {
            return Ok(None);
        };
        let frame: Bytes = src.split_to(len).freeze();
        Ok(Some(match op {
            RawOp::Connect(json) => {
                let connect: Connect =
                    serde_json::from_slice(&frame[json]).map_err(|_| ProtocolError::InvalidConnect)?;
                ClientOp::Connect(Box::new(connect))
            }
            RawOp::Pub { subject, reply, headers, payload } => ClientOp::Pub(Pub {
                subject: frame.slice(subject),
                reply: reply.map(|r| frame.slice(r)),
                headers: headers.map(|h| frame.slice(h)),
                payload: frame.slice(payload),
            }),
            RawOp::Sub { subject, queue, sid } => ClientOp::Sub {
                subject: frame.slice(subject),
                queue: queue.map(|q| frame.slice(q)),
                sid: frame.slice(sid),
            },
            RawOp::CatchUp { filter, sid, start } => {
                ClientOp::CatchUp { filter: frame.slice(filter), sid: frame.slice(sid), start: frame.slice(start) }
            }
            RawOp::Fetch { sid, filters, options } => {
                ClientOp::Fetch { sid: frame.slice(sid), filters: frame.slice(filters), options: frame.slice(options) }
            }
            RawOp::Unsub { sid, max } => ClientOp::Unsub { sid: frame.slice(sid), max },
            RawOp::Apub { subject, headers, payload, options } => ClientOp::Apub(
                Pub {
                    subject: frame.slice(subject),
                    reply: None,
                    headers: headers.map(|h| frame.slice(h)),
                    payload: frame.slice(payload),
                },
                frame.slice(options),
            ),
            RawOp::Ping => ClientOp::Ping,
            RawOp::Pong => ClientOp::Pong,
        }))
    }
}
