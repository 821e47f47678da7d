//! The `$EL.` request API: the extensions reached with a plain NATS request, so that an
//! unmodified client library can use them. A request is a `PUB` on a reserved subject with
//! a reply subject; the codec decodes it into an [`ApiRequest`] and its answers are JSON
//! (or, for reads, the events themselves and an end status).

use bytes::Bytes;
use serde_json::json;

use super::extension::{Query, Subscribe};
use super::{Pub, Refusal};
use crate::subject::Filter;

/// `$EL.PUB.<subject>`: store the message on `<subject>`; its headers carry the conditions.
pub const PUBLISH: &[u8] = b"$EL.PUB.";
/// `$EL.SUB`: start a catch-up subscription (JSON body, see [`Subscribe::from_json`]).
pub const SUBSCRIBE: &[u8] = b"$EL.SUB";
/// `$EL.FETCH`: a one-shot query (JSON body, see [`Query::from_json`]).
pub const FETCH: &[u8] = b"$EL.FETCH";
/// `$EL.LAST.<subject>`: the last event of a subject.
pub const LAST: &[u8] = b"$EL.LAST.";

/// A decoded `$EL.` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// Store `message` (its subject is the one after `$EL.PUB.`); the answer goes to
    /// `reply`, if there is one.
    Publish { message: Pub, reply: Option<Bytes> },
    /// Read the log; the answers go to `reply`.
    Read { read: ApiRead, reply: Bytes },
}

/// The `$EL.` requests that read the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRead {
    Subscribe(Result<Subscribe, Refusal>),
    Fetch(Result<Query, Refusal>),
    /// The last event of this subject.
    Last(Bytes),
}

impl ApiRequest {
    /// The request a message on a `$EL.` subject makes, if it is one: `$EL.PUB.` stores
    /// even without a reply subject (nobody hears the answer, as with a plain `PUB`); the
    /// others are requests only with one, and otherwise plain messages.
    pub fn decode(message: &Pub) -> Option<ApiRequest> {
        let subject = &message.subject;
        if let Some(stored) = subject.strip_prefix(PUBLISH) {
            let stored = Pub { subject: subject.slice_ref(stored), reply: None, ..message.clone() };
            return Some(ApiRequest::Publish { message: stored, reply: message.reply.clone() });
        }
        let reply = message.reply.clone()?;
        let read = match &subject[..] {
            SUBSCRIBE => ApiRead::Subscribe(Subscribe::from_json(&message.payload)),
            FETCH => ApiRead::Fetch(Query::from_json(&message.payload)),
            _ => ApiRead::Last(subject.slice_ref(subject.strip_prefix(LAST)?)),
        };
        Some(ApiRequest::Read { read, reply })
    }
}

/// The answer to a stored `$EL.PUB`, shaped like JetStream's PubAck.
pub fn published(seq: u64, revision: u64, duplicate: bool) -> Bytes {
    body(&json!({"seq": seq, "revision": revision, "duplicate": duplicate}))
}

/// The answer to a refused request, shaped like JetStream's errors; a failed publish
/// condition also says what the log actually held.
pub fn refused(refusal: &Refusal) -> Bytes {
    let error = json!({"code": refusal.code(), "description": refusal.to_string()});
    match refusal.actual() {
        Some(actual) => body(&json!({"error": error, "actual": actual})),
        None => body(&json!({"error": error})),
    }
}

/// The answer to a `$EL.SUB` that started: the events follow on the deliver subscription.
pub fn subscribed(filter: &Filter, head: u64) -> Bytes {
    body(&json!({"ok": true, "filter": filter.to_string(), "head": head}))
}

fn body(value: &serde_json::Value) -> Bytes {
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(subject: &'static str, reply: Option<&'static str>, payload: &'static str) -> Option<ApiRequest> {
        ApiRequest::decode(&Pub {
            subject: Bytes::from_static(subject.as_bytes()),
            reply: reply.map(|r| Bytes::from_static(r.as_bytes())),
            headers: None,
            payload: Bytes::from_static(payload.as_bytes()),
        })
    }

    #[test]
    fn decodes_each_request_and_leaves_other_subjects_alone() {
        let Some(ApiRequest::Publish { message, reply: None }) = request("$EL.PUB.orders.1", None, "x") else {
            panic!("a publish")
        };
        assert_eq!((&message.subject[..], message.reply), (&b"orders.1"[..], None));
        let read = |subject, payload| match request(subject, Some("r"), payload) {
            Some(ApiRequest::Read { read, reply }) if reply == "r" => Some(read),
            _ => None,
        };
        assert!(matches!(read("$EL.SUB", "{}"), Some(ApiRead::Subscribe(Err(_)))));
        assert!(matches!(read("$EL.FETCH", r#"{"filters":["a"]}"#), Some(ApiRead::Fetch(Ok(_)))));
        assert_eq!(read("$EL.LAST.a.b", ""), Some(ApiRead::Last(Bytes::from_static(b"a.b"))));
        assert_eq!(request("$EL.SUB", None, "{}"), None, "no reply: a plain message");
        assert_eq!(request("$EL.OTHER", Some("r"), ""), None);
    }

    #[test]
    fn answers_are_jetstream_shaped() {
        assert_eq!(&published(3, 1, false)[..], br#"{"duplicate":false,"revision":1,"seq":3}"#);
        let conflict = Refusal::LastSubjectSequence { expected: 1, actual: 3 };
        let answer: serde_json::Value = serde_json::from_slice(&refused(&conflict)).expect("json");
        assert_eq!(answer, json!({"error": {"code": 409, "description": conflict.to_string()}, "actual": 3}));
        let answer: serde_json::Value = serde_json::from_slice(&refused(&Refusal::NoFilter)).expect("json");
        assert_eq!(answer["error"]["code"], 400);
        assert!(answer.get("actual").is_none());
    }
}
