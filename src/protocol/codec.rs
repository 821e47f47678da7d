//! The tokio-util `Decoder` over [`parse_client_op`]: it slices the frame into owned ops and
//! turns extension arguments into typed values (a bad one is an item, not an error: the
//! client gets a `-NAK` and the connection stays open).

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::parse::{Parsed, RawOp, parse_client_op};
use super::{ApiRequest, CatchUp, ClientOp, Connect, ProtocolError, Pub, PublishOptions, Query};
use crate::subject::is_valid_subject;

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
            RawOp::Pub { subject, reply, headers, payload } => {
                let message = Pub {
                    subject: frame.slice(subject),
                    reply: reply.map(|r| frame.slice(r)),
                    headers: headers.map(|h| frame.slice(h)),
                    payload: frame.slice(payload),
                };
                // An invalid subject stays a plain message, which the broker drops.
                let request = (message.subject.starts_with(b"$EL.") && is_valid_subject(&message.subject))
                    .then(|| ApiRequest::decode(&message))
                    .flatten();
                match request {
                    Some(request) => ClientOp::Request { request, headers: message.headers.is_some() },
                    None => ClientOp::Pub(message),
                }
            }
            RawOp::Sub { subject, queue, sid } => ClientOp::Sub {
                subject: frame.slice(subject),
                queue: queue.map(|q| frame.slice(q)),
                sid: frame.slice(sid),
            },
            RawOp::CatchUp { filter, sid, start } => ClientOp::CatchUp {
                sid: frame.slice(sid),
                catch_up: CatchUp::parse(frame.slice(filter), &frame[start]),
            },
            RawOp::Fetch { sid, filters, options } => {
                ClientOp::Fetch { sid: frame.slice(sid), query: Query::parse(&frame[filters], &frame[options]) }
            }
            RawOp::Unsub { sid, max } => ClientOp::Unsub { sid: frame.slice(sid), max },
            RawOp::Apub { subject, headers, payload, options } => {
                let headers = headers.map(|h| frame.slice(h));
                let options = PublishOptions::parse(&frame[options], headers.as_deref());
                ClientOp::Apub(
                    Pub { subject: frame.slice(subject), reply: None, headers, payload: frame.slice(payload) },
                    options,
                )
            }
            RawOp::Ping => ClientOp::Ping,
            RawOp::Pong => ClientOp::Pong,
        }))
    }
}
