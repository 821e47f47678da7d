//! Every answer the broker sends a client about its requests: `+ACK`/`-NAK` lines, `$EL.`
//! JSON, and the no-responders status. Answers leave from here whether the session sends
//! them at once (a refusal) or the write path sends them once an append is stored, through
//! the session's [`Replies`], the [`Publisher`] its appends carry.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::append::{Answer, Outcome, Publisher, Stored};
use super::outbound::{Outbound, Wakes};
use super::router::Router;
use crate::protocol::{Pub, Refusal, ServerOp, api};
use crate::subject::Filter;

/// The status header nats-server sends to a requester when nobody listens on the subject.
const NO_RESPONDERS_HEADER: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// The part of a session that its appends carry into the write path, and that the
/// session's own ops answer through.
pub(super) struct Replies {
    router: Arc<Router>,
    outbound: Arc<Outbound>,
    client_id: u64,
    /// Whether the client receives its own messages (`CONNECT`'s `echo`).
    echo: AtomicBool,
    /// A subscriber this client's messages pushed lagging (see `LAGGING_AT_MOST`), for the
    /// connection to pause on before it reads more.
    lagging: Mutex<Option<Arc<Outbound>>>,
    /// Appends and calls handed to the timeline writer and not yet answered or run.
    in_flight: AtomicUsize,
}

impl Replies {
    pub(super) fn new(router: Arc<Router>, outbound: Arc<Outbound>, client_id: u64) -> Replies {
        Replies {
            router,
            outbound,
            client_id,
            echo: AtomicBool::new(true),
            lagging: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub(super) fn set_echo(&self, echo: bool) {
        self.echo.store(echo, Ordering::Relaxed);
    }

    /// Counts an append (or a call) handed to the writer; [`Publisher::done`] counts it
    /// answered (or run).
    pub(super) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether everything handed to the writer is answered or run.
    pub(super) fn settled(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// The subscriber to pause for, if any was pushed lagging since the last call.
    pub(super) fn take_lagging(&self) -> Option<Arc<Outbound>> {
        self.lagging.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Routes a volatile message now. With `no_responders` (the requester's reply sid), a
    /// request nobody took is answered `503`.
    pub(super) fn route_live(&self, message: &Pub, no_responders: Option<&Bytes>, wakes: &mut Wakes) {
        let routed = self.router.route(message, self.skips(), wakes);
        if let Some(subscriber) = routed.lagging {
            self.paced_by(subscriber);
        }
        if let (0, Some(sid), Some(reply)) = (routed.delivered, no_responders, &message.reply) {
            self.push_no_responders(reply, sid, wakes);
        }
    }

    /// A refused extension verb: `-NAK '<reason>'`.
    pub(super) fn nak(&self, refusal: &Refusal, wakes: &mut Wakes) {
        self.outbound.push_op(&ServerOp::Nak(refusal.clone()), wakes);
    }

    /// A refused `$EL.` request: JSON on its reply subject.
    pub(super) fn refuse_json(&self, reply: &Bytes, refusal: &Refusal, wakes: &mut Wakes) {
        self.json(reply, api::refused(refusal), wakes);
    }

    /// A started `$EL.SUB`: JSON on its reply subject; the events follow on the deliver
    /// subscription.
    pub(super) fn subscribed(&self, reply: &Bytes, filter: &Filter, head: u64, wakes: &mut Wakes) {
        self.json(reply, api::subscribed(filter, head), wakes);
    }

    /// A `$EL.` answer: JSON published on the request's reply subject.
    fn json(&self, reply: &Bytes, body: Bytes, wakes: &mut Wakes) {
        let answer = Pub { subject: reply.clone(), reply: None, headers: None, payload: body };
        self.router.route(&answer, None, wakes);
    }

    /// The status nats-server sends a requester whose request reached nobody.
    fn push_no_responders(&self, reply: &[u8], sid: &[u8], wakes: &mut Wakes) {
        self.outbound.push_msg(reply, sid, None, Some(NO_RESPONDERS_HEADER), &Bytes::new(), wakes);
    }
}

impl Publisher for Replies {
    fn skips(&self) -> Option<u64> {
        (!self.echo.load(Ordering::Relaxed)).then_some(self.client_id)
    }

    fn answer(&self, answer: &Answer, message: &Pub, outcome: &Outcome, delivered: usize, wakes: &mut Wakes) {
        match answer {
            Answer::Nothing => {}
            Answer::NoResponders { sid } => {
                if let (0, Some(reply)) = (delivered, &message.reply) {
                    self.push_no_responders(reply, sid, wakes);
                }
            }
            Answer::Line => match outcome {
                Ok(Stored { seq, revision, duplicate }) => {
                    let ack = ServerOp::Ack { seq: *seq, revision: *revision, duplicate: *duplicate };
                    self.outbound.push_op(&ack, wakes);
                }
                Err(refusal) => self.nak(refusal, wakes),
            },
            Answer::Json(reply) => {
                let body = match outcome {
                    Ok(Stored { seq, revision, duplicate }) => api::published(*seq, *revision, *duplicate),
                    Err(refusal) => api::refused(refusal),
                };
                self.json(reply, body, wakes);
            }
        }
    }

    fn paced_by(&self, subscriber: Arc<Outbound>) {
        *self.lagging.lock().unwrap_or_else(PoisonError::into_inner) = Some(subscriber);
    }

    fn done(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
