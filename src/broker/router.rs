//! Routing: the subscription table and fan-out of one message to its subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rand::Rng;

use super::outbound::{Outbound, Pushed, Wakes};
use crate::protocol::Pub;
use crate::subject::{Filter, Matches, Sublist};

/// The subscription table. Fan-out only pushes onto subscribers' outbound queues, so it
/// can run on any task or thread (connection readers, the write path's threads).
pub struct Router {
    pub(super) subscriptions: Sublist<Arc<Subscription>>,
    next_subscription_id: AtomicU64,
}

/// One `SUB` of one client. Compared by identity: two `SUB`s with the same subject are
/// two subscriptions.
pub struct Subscription {
    id: u64,
    pub(super) client_id: u64,
    pub(super) sid: Bytes,
    pub(super) filter: Filter,
    pub(super) queue: Option<Bytes>,
    /// Whether the subscriber's client negotiated headers; if not, they are stripped.
    pub(super) headers: bool,
    pub(super) outbound: Arc<Outbound>,
    /// Deliveries after which the subscription ends (`UNSUB <sid> <max>`); `u64::MAX` = none.
    pub(super) max: AtomicU64,
    delivered: AtomicU64,
}

impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Subscription {
    /// Counts one delivery against the `UNSUB` limit; false once the limit is used up.
    fn take_delivery(&self) -> bool {
        self.delivered.fetch_add(1, Ordering::Relaxed) < self.max.load(Ordering::Relaxed)
    }

    pub(super) fn is_exhausted(&self) -> bool {
        self.delivered.load(Ordering::Relaxed) >= self.max.load(Ordering::Relaxed)
    }
}

/// What routing one message did: how many subscriptions took it, and a subscriber that is
/// lagging (see `LAGGING_AT_MOST`), which the publisher should give a moment to drain.
#[derive(Default)]
pub(crate) struct Routed {
    pub(super) delivered: usize,
    pub(super) lagging: Option<Arc<Outbound>>,
}

impl Routed {
    fn note(&mut self, sub: &Subscription, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.delivered += 1,
            Pushed::Lagging => {
                self.delivered += 1;
                self.lagging = Some(Arc::clone(&sub.outbound));
            }
            Pushed::Dropped => {}
        }
    }
}

impl Router {
    pub(super) fn new() -> Self {
        Router { subscriptions: Sublist::new(), next_subscription_id: AtomicU64::new(1) }
    }

    /// A new subscription for a client; it receives messages once [`Router::activate`]d.
    pub(super) fn subscription(
        &self,
        client_id: u64,
        sid: Bytes,
        filter: Filter,
        queue: Option<Bytes>,
        headers: bool,
        outbound: Arc<Outbound>,
    ) -> Arc<Subscription> {
        Arc::new(Subscription {
            id: self.next_subscription_id.fetch_add(1, Ordering::Relaxed),
            client_id,
            sid,
            filter,
            queue,
            headers,
            outbound,
            max: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(0),
        })
    }

    /// Puts a subscription in the routing table: it receives messages routed from now on.
    pub(super) fn activate(&self, subscription: &Arc<Subscription>) {
        self.subscriptions.insert(&subscription.filter, subscription.queue.as_ref(), Arc::clone(subscription));
    }

    pub(super) fn unsubscribe(&self, subscription: &Arc<Subscription>) {
        self.subscriptions.remove(&subscription.filter, subscription.queue.as_ref(), subscription);
    }

    /// `UNSUB <sid> [max]`: with `max`, the subscription ends after `max` deliveries in all
    /// (at once if it already had them, as nats-server does); without, it ends now.
    pub(super) fn unsubscribe_after(&self, subscription: &Arc<Subscription>, max: Option<u64>) {
        if let Some(max) = max.filter(|&max| max > 0) {
            subscription.max.store(max, Ordering::Relaxed);
            if !subscription.is_exhausted() {
                return;
            }
        }
        self.unsubscribe(subscription);
    }

    /// Delivers a message to every matching subscription but those of the client `skips`
    /// (a publisher with echo off). Never waits: each subscriber's queue goes into `wakes`.
    pub(super) fn route(&self, message: &Pub, skips: Option<u64>, wakes: &mut Wakes) -> Routed {
        let matches = self.matches(&message.subject);
        let deliverable = |sub: &Subscription| skips != Some(sub.client_id);
        let mut routed = Routed::default();
        for sub in matches.plain.iter().filter(|s| deliverable(s)) {
            routed.note(sub, self.deliver(sub, message, wakes));
        }
        for group in &matches.groups {
            if let Some((sub, pushed)) = self.deliver_to_one(&group.members, message, &deliverable, wakes) {
                routed.note(sub, pushed);
            }
        }
        routed
    }

    /// Picks a random member of a queue group (as nats-server does), moving on to the next
    /// one if that member can't take it.
    fn deliver_to_one<'a>(
        &self,
        members: &'a [Arc<Subscription>],
        message: &Pub,
        deliverable: &dyn Fn(&Subscription) -> bool,
        wakes: &mut Wakes,
    ) -> Option<(&'a Arc<Subscription>, Pushed)> {
        let start = rand::rng().random_range(0..members.len().max(1));
        (0..members.len())
            .map(|i| &members[(start + i) % members.len()])
            .filter(|sub| deliverable(sub))
            .map(|sub| (sub, self.deliver(sub, message, wakes)))
            .find(|(_, pushed)| *pushed != Pushed::Dropped)
    }

    /// Pushes `message` to one subscriber.
    fn deliver(&self, sub: &Arc<Subscription>, message: &Pub, wakes: &mut Wakes) -> Pushed {
        if !sub.take_delivery() {
            return Pushed::Dropped;
        }
        let headers = if sub.headers { message.headers.as_deref() } else { None };
        let (subject, reply, payload) = (&message.subject, message.reply.as_deref(), &message.payload);
        let pushed = sub.outbound.push_msg(subject, &sub.sid, reply, headers, payload, wakes);
        if sub.is_exhausted() {
            self.subscriptions.remove(&sub.filter, sub.queue.as_ref(), sub);
        }
        pushed
    }

    /// The subscriptions matching `subject`.
    pub(super) fn matches(&self, subject: &[u8]) -> Arc<Matches<Arc<Subscription>>> {
        self.subscriptions.matches(subject)
    }
}
