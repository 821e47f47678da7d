//! Client compatibility: the real server on a port-0 listener, driven by async-nats exactly as
//! a microservice would drive nats-server. Every network wait is under [`TIMEOUT`].
//!
//! Ordering across connections uses [`sync`], a round trip through the server. async-nats's
//! `flush()` only writes the client's buffer to the socket (no PING/PONG), so a `SUB` followed
//! by `flush()` can still reach the server after another client's `PUB`.

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::time::Instant;

use async_nats::client::PublishErrorKind;
use async_nats::{Client, ConnectOptions, HeaderMap, Message, RequestErrorKind, Subscriber};
use bytes::Bytes;
use common::{Raw, TIMEOUT, TestServer};
use eventline::config::{Config, Limits};
use futures::{FutureExt, StreamExt};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Awaits `future`, failing the test if it takes longer than [`TIMEOUT`].
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future).await.expect("network wait exceeded TIMEOUT")
}

async fn connect(server: &TestServer) -> Client {
    connect_with(server, ConnectOptions::new()).await
}

async fn connect_with(server: &TestServer, options: ConnectOptions) -> Client {
    within(options.connect(server.url())).await.expect("async-nats connects")
}

async fn subscribe(client: &Client, subject: &str) -> Subscriber {
    within(client.subscribe(subject.to_owned())).await.expect("subscribe")
}

async fn publish(client: &Client, subject: &str, payload: impl Into<Bytes>) {
    within(client.publish(subject.to_owned(), payload.into())).await.expect("publish");
}

/// A round trip through the server on `client`'s connection: once it returns, every op the
/// client sent before (`SUB`, `UNSUB`, `PUB`) has been applied, and every message routed to it
/// before is buffered client-side. It is a request nobody answers, so the server's 503
/// status (the no-responders reply, queued behind all earlier output) ends it; it works with
/// `no_echo` too.
async fn sync(client: &Client) {
    let subject = format!("{}.sync", client.new_inbox());
    let error = within(client.request(subject, Bytes::new())).await.expect_err("nobody answers a sync request");
    assert_eq!(error.kind(), RequestErrorKind::NoResponders, "sync round trip: {error}");
}

/// The next message; fails if the subscription ends or nothing arrives in time.
async fn next(sub: &mut Subscriber) -> Message {
    within(sub.next()).await.expect("subscription ended while a message was expected")
}

fn text(message: &Message) -> &str {
    std::str::from_utf8(&message.payload).expect("utf-8 payload")
}

/// Asserts nothing is buffered for `sub` right now (call after a [`sync`] that orders it).
fn assert_nothing_buffered(sub: &mut Subscriber) {
    if let Some(Some(message)) = sub.next().now_or_never() {
        panic!("unexpected message on {}: {:?}", message.subject, message.payload);
    }
}

// ---------------------------------------------------------------------------------------------
// 1-2. Routing

#[tokio::test]
async fn exact_subject_pub_sub() {
    let server = TestServer::start().await;
    let subscriber = connect(&server).await;
    let publisher = connect(&server).await;
    let mut sub = subscribe(&subscriber, "greet.joe").await;
    sync(&subscriber).await;

    publish(&publisher, "greet.joe", "hello").await;
    publish(&publisher, "greet.ann", "not for joe").await;
    publish(&publisher, "greet.joe", "again").await;

    let first = next(&mut sub).await;
    assert_eq!(first.subject.as_str(), "greet.joe");
    assert_eq!(text(&first), "hello");
    assert!(first.reply.is_none());
    assert_eq!(text(&next(&mut sub).await), "again");
    server.stop().await;
}

#[tokio::test]
async fn wildcard_subscriptions_match_only_their_subjects() {
    let server = TestServer::start().await;
    let subscriber = connect(&server).await;
    let publisher = connect(&server).await;
    let mut star = subscribe(&subscriber, "orders.*").await;
    let mut tail = subscribe(&subscriber, "orders.>").await;
    let mut middle = subscribe(&subscriber, "orders.*.new").await;
    sync(&subscriber).await;

    for subject in ["orders.new", "orders.eu.new", "orders", "other.new", "orders.eu.old", "orders.sentinel"] {
        publish(&publisher, subject, subject.to_owned()).await;
    }

    // One publisher, so each subscription sees its matches in publish order; the next
    // message after a non-matching one being the following match proves it was skipped.
    for (sub, expected) in [
        (&mut star, &["orders.new", "orders.sentinel"][..]),
        (&mut tail, &["orders.new", "orders.eu.new", "orders.eu.old", "orders.sentinel"][..]),
        (&mut middle, &["orders.eu.new"][..]),
    ] {
        for subject in expected {
            let message = next(sub).await;
            assert_eq!(message.subject.as_str(), *subject);
            assert_eq!(text(&message), *subject);
        }
    }
    // `orders.*.new` has had its only match; a sentinel for it proves nothing else is queued.
    publish(&publisher, "orders.zz.new", "sentinel").await;
    assert_eq!(text(&next(&mut middle).await), "sentinel");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Queue groups

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_group_delivers_each_message_to_exactly_one_member() {
    const MESSAGES: usize = 300;
    const MEMBERS: usize = 3;
    let server = TestServer::start().await;
    let mut member_clients = Vec::new();
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let client = connect(&server).await;
        members.push(within(client.queue_subscribe("jobs", "workers".to_owned())).await.expect("queue subscribe"));
        sync(&client).await;
        member_clients.push(client);
    }
    let plain_client = connect(&server).await;
    let mut plain = subscribe(&plain_client, "jobs").await;
    sync(&plain_client).await;

    let publisher = connect(&server).await;
    for i in 0..MESSAGES {
        publish(&publisher, "jobs", i.to_string()).await;
    }
    sync(&publisher).await;

    let mut merged = futures::stream::select_all(
        members.into_iter().enumerate().map(|(member, sub)| sub.map(move |message| (member, message))),
    );
    let mut per_member = [0usize; MEMBERS];
    let mut seen = HashSet::new();
    for _ in 0..MESSAGES {
        let (member, message) = within(merged.next()).await.expect("queue members' streams ended");
        assert!(seen.insert(message.payload.clone()), "delivered twice: {:?}", message.payload);
        per_member[member] += 1;
    }
    // The publisher's sync means every message was routed; each member's sync means
    // whatever was routed to it is now buffered client-side. Nothing more may be there.
    for client in &member_clients {
        sync(client).await;
    }
    if let Some(Some((member, message))) = merged.next().now_or_never() {
        panic!("extra delivery to member {member}: {:?}", message.payload);
    }
    assert_eq!(per_member.iter().sum::<usize>(), MESSAGES);
    assert!(per_member.iter().all(|&n| n > 0), "a member got nothing: {per_member:?}");

    for i in 0..MESSAGES {
        assert_eq!(text(&next(&mut plain).await), i.to_string());
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4, 6. Request/reply

/// Answers every request on `subject` with `re: <payload>` until the task is aborted.
async fn spawn_responder(server: &TestServer, subject: &str) -> (Client, tokio::task::JoinHandle<()>) {
    let client = connect(server).await;
    let mut requests = subscribe(&client, subject).await;
    sync(&client).await;
    let responder = client.clone();
    let task = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let reply = request.reply.expect("a request has a reply subject");
            let mut answer = b"re: ".to_vec();
            answer.extend_from_slice(&request.payload);
            responder.publish(reply, answer.into()).await.expect("respond");
        }
    });
    (client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_reply_single_and_concurrent() {
    let server = TestServer::start().await;
    let (_service, responder) = spawn_responder(&server, "svc.echo").await;
    let requester = connect(&server).await;

    let answer = within(requester.request("svc.echo", "ping".into())).await.expect("request");
    assert_eq!(text(&answer), "re: ping");

    let mut requests = tokio::task::JoinSet::new();
    for i in 0..500 {
        let requester = requester.clone();
        requests.spawn(async move {
            let answer = requester.request("svc.echo", i.to_string().into()).await.expect("request");
            assert_eq!(text(&answer), format!("re: {i}"));
        });
    }
    while let Some(done) = within(requests.join_next()).await {
        done.expect("request task");
    }
    responder.abort();
    server.stop().await;
}

#[tokio::test]
async fn request_without_responders_fails_fast() {
    let server = TestServer::start().await;
    let requester = connect(&server).await;
    let started = Instant::now();
    let error = within(requester.request("nobody.home", "anyone?".into())).await.expect_err("no responders");
    assert_eq!(error.kind(), RequestErrorKind::NoResponders, "{error}");
    // The default request timeout is 10 s; a 503 status comes back in one round trip.
    assert!(started.elapsed() < TIMEOUT / 5, "took {:?}", started.elapsed());
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Headers

#[tokio::test]
async fn headers_round_trip_in_order() {
    let server = TestServer::start().await;
    let subscriber = connect(&server).await;
    let publisher = connect(&server).await;
    let mut sub = subscribe(&subscriber, "hdr").await;
    sync(&subscriber).await;

    let mut headers = HeaderMap::new();
    headers.insert("Trace-Id", "abc-123");
    headers.append("Accept", "text/plain");
    headers.append("Accept", "application/json");
    headers.append("Hop", "one");
    headers.append("Hop", "two");
    headers.append("Hop", "three");
    within(publisher.publish_with_headers("hdr", headers, "body".into())).await.expect("publish with headers");

    let mut only = HeaderMap::new();
    only.insert("Kind", "empty");
    within(publisher.publish_with_headers("hdr", only, Bytes::new())).await.expect("publish, empty payload");

    let message = next(&mut sub).await;
    assert_eq!(text(&message), "body");
    let got = message.headers.expect("headers delivered");
    let all = |key: &str| got.get_all(key).map(|v| v.as_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(all("Trace-Id"), ["abc-123"]);
    assert_eq!(all("Accept"), ["text/plain", "application/json"]);
    assert_eq!(all("Hop"), ["one", "two", "three"]);

    let empty = next(&mut sub).await;
    assert!(empty.payload.is_empty(), "payload {:?}", empty.payload);
    let got = empty.headers.expect("headers delivered with an empty payload");
    assert_eq!(got.get("Kind").map(|v| v.as_str()), Some("empty"));
    assert!(empty.status.is_none());
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7, 13. Subscription lifecycle

#[tokio::test]
async fn unsubscribe_after_max_ends_the_stream() {
    let server = TestServer::start().await;
    let subscriber = connect(&server).await;
    let publisher = connect(&server).await;
    let mut sub = subscribe(&subscriber, "limited").await;
    within(sub.unsubscribe_after(3)).await.expect("unsub with max");
    sync(&subscriber).await;

    for i in 0..10 {
        publish(&publisher, "limited", i.to_string()).await;
    }
    sync(&publisher).await;
    for i in 0..3 {
        assert_eq!(text(&next(&mut sub).await), i.to_string());
    }
    assert!(within(sub.next()).await.is_none(), "the stream ends after 3 messages");

    // The server dropped the subscription too: a new one on the subject sees only new messages.
    let mut again = subscribe(&subscriber, "limited").await;
    sync(&subscriber).await;
    publish(&publisher, "limited", "fresh").await;
    assert_eq!(text(&next(&mut again).await), "fresh");
    server.stop().await;
}

#[tokio::test]
async fn subscribe_unsubscribe_cycles_deliver_correctly() {
    let server = TestServer::start().await;
    let subscriber = connect(&server).await;
    let publisher = connect(&server).await;
    // A long-lived neighbour whose matches must survive every change to the trie.
    let mut watcher = subscribe(&subscriber, "cycle.>").await;
    sync(&subscriber).await;
    let filters = ["cycle.a", "cycle.*", "cycle.>", "cycle.a"];
    for round in 0..60 {
        let filter = filters[round % filters.len()];
        // A publish with nobody (but the watcher) on the filter warms any match cache.
        publish(&publisher, "cycle.a", format!("miss {round}")).await;
        sync(&publisher).await;
        let mut sub = subscribe(&subscriber, filter).await;
        sync(&subscriber).await;
        publish(&publisher, "cycle.a", format!("hit {round}")).await;
        let message = next(&mut sub).await;
        assert_eq!(text(&message), format!("hit {round}"), "filter {filter}");
        within(sub.unsubscribe()).await.expect("unsubscribe");
        sync(&subscriber).await;

        assert_eq!(text(&next(&mut watcher).await), format!("miss {round}"));
        assert_eq!(text(&next(&mut watcher).await), format!("hit {round}"));
    }
    // After the last UNSUB only the watcher is left.
    let mut last = subscribe(&subscriber, "cycle.b").await;
    sync(&subscriber).await;
    publish(&publisher, "cycle.a", "after").await;
    publish(&publisher, "cycle.b", "sentinel").await;
    assert_eq!(text(&next(&mut watcher).await), "after");
    assert_eq!(text(&next(&mut watcher).await), "sentinel");
    assert_eq!(text(&next(&mut last).await), "sentinel");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8, 10. Volume

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_arrive_in_order() {
    const MESSAGES: usize = 10_000;
    let server = TestServer::start().await;
    let subscriber = connect(&server).await;
    let publisher = connect(&server).await;
    let mut sub = subscribe(&subscriber, "seq").await;
    sync(&subscriber).await;

    let publishing = tokio::spawn(async move {
        for i in 0..MESSAGES {
            publish(&publisher, "seq", i.to_string()).await;
        }
        sync(&publisher).await;
    });
    for i in 0..MESSAGES {
        assert_eq!(text(&next(&mut sub).await), i.to_string());
    }
    within(publishing).await.expect("publisher task");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_subscriptions_on_one_connection() {
    const SUBJECTS: usize = 5_000;
    let server = TestServer::start().await;
    let subscriber = connect(&server).await;
    let mut subs = Vec::with_capacity(SUBJECTS);
    for i in 0..SUBJECTS {
        subs.push(subscribe(&subscriber, &format!("s.{i}")).await);
    }
    sync(&subscriber).await;
    let watcher_client = connect(&server).await;
    let mut watcher = subscribe(&watcher_client, "s.>").await;
    sync(&watcher_client).await;

    let publisher = connect(&server).await;
    for i in 0..SUBJECTS {
        publish(&publisher, &format!("s.{i}"), i.to_string()).await;
    }
    sync(&publisher).await;

    for (i, sub) in subs.iter_mut().enumerate() {
        let message = next(sub).await;
        assert_eq!(message.subject.as_str(), format!("s.{i}"));
        assert_eq!(text(&message), i.to_string());
    }
    sync(&subscriber).await;
    for sub in &mut subs {
        assert_nothing_buffered(sub);
    }
    for i in 0..SUBJECTS {
        assert_eq!(text(&next(&mut watcher).await), i.to_string());
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. max_payload

#[tokio::test]
async fn max_payload_is_delivered_and_one_byte_over_is_refused() {
    const MAX: usize = 64 * 1024;
    let server = TestServer::with_config(Config {
        limits: Limits { max_payload: MAX, ..Limits::default() },
        ..Config::default()
    })
    .await;
    let subscriber = connect(&server).await;
    let publisher = connect(&server).await;
    assert_eq!(publisher.server_info().max_payload, MAX, "async-nats reads max_payload from INFO");
    let mut sub = subscribe(&subscriber, "big").await;
    sync(&subscriber).await;

    publish(&publisher, "big", vec![b'x'; MAX]).await;
    let message = next(&mut sub).await;
    assert_eq!(message.payload.len(), MAX);
    assert!(message.payload.iter().all(|&b| b == b'x'));

    // async-nats checks the size against INFO and never sends it.
    let error = within(publisher.publish("big", vec![b'x'; MAX + 1].into())).await.expect_err("over max_payload");
    assert_eq!(error.kind(), PublishErrorKind::MaxPayloadExceeded, "{error}");
    sync(&publisher).await;
    assert_eq!(publisher.statistics().connects.load(std::sync::atomic::Ordering::Relaxed), 1);

    // A client that does send it is told before any payload byte is read, then closed.
    let mut raw = Raw::quiet(server.addr).await;
    raw.send(&format!("PUB big {}\r\n", MAX + 1)).await;
    raw.expect("-ERR 'Maximum Payload Violation'").await;
    raw.expect_closed().await;

    publish(&publisher, "big", "still here").await;
    assert_eq!(text(&next(&mut sub).await), "still here");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 11. Slow consumers

/// A reader that keeps up within `window` messages: the publisher waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_cut_while_a_rate_matched_reader_keeps_up() {
    slow_consumer_scenario(Some(256)).await;
}

/// A reader that reads all the time but is momentarily behind a publisher's burst. nats-server
/// stalls the fast producer (a few ms per read) instead of cutting that reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_cut_while_a_reader_behind_a_fast_producer_is_not() {
    slow_consumer_scenario(None).await;
}

/// A raw subscriber that never reads, an async-nats one that reads everything, and ~30 MiB
/// published through a server whose `max_pending` is 512 KiB. With `window`, the publisher
/// stays at most that many messages ahead of the reader.
async fn slow_consumer_scenario(window: Option<usize>) {
    const MESSAGES: usize = 30_000;
    const SIZE: usize = 1024;
    let server = TestServer::with_config(Config {
        limits: Limits { max_pending: 512 * 1024, ..Limits::default() },
        ..Config::default()
    })
    .await;

    let mut stalled = Raw::quiet(server.addr).await;
    stalled.send("SUB bulk 1\r\n").await;
    assert!(stalled.sync().await.is_empty());

    let subscriber = connect(&server).await;
    let mut sub = subscribe(&subscriber, "bulk").await;
    sync(&subscriber).await;
    let publisher = connect(&server).await;

    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reading = tokio::spawn(async move {
        for i in 0..MESSAGES {
            let message = next(&mut sub).await;
            assert_eq!(message.payload.len(), SIZE);
            let index = String::from_utf8_lossy(&message.payload[..8]).into_owned();
            assert_eq!(index, format!("{i:08}"), "the reading subscriber lost messages");
            progress_tx.send_replace(i + 1);
        }
        sub
    });
    for i in 0..MESSAGES {
        if let Some(window) = window {
            within(progress.wait_for(|&received| received + window > i))
                .await
                .expect("the reader stopped; see its panic");
        }
        let mut payload = format!("{i:08}").into_bytes();
        payload.resize(SIZE, b'.');
        publish(&publisher, "bulk", payload).await;
    }
    sync(&publisher).await;
    let mut sub = within(reading).await.expect("the reading subscriber got every message in order");

    // The stalled reader gets what the kernel buffered, then the close: far less than sent.
    let received = stalled.read_to_close().await;
    assert!(received < MESSAGES * SIZE / 2, "stalled subscriber read {received} bytes; it was never cut");

    // Neither the publisher nor the reading subscriber was disconnected along the way.
    let connects = |client: &Client| client.statistics().connects.load(std::sync::atomic::Ordering::Relaxed);
    sync(&publisher).await;
    sync(&subscriber).await;
    assert_eq!(connects(&publisher), 1, "publisher reconnected");
    assert_eq!(connects(&subscriber), 1, "subscriber reconnected");
    publish(&publisher, "bulk", "after").await;
    assert_eq!(text(&next(&mut sub).await), "after");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 12. echo

#[tokio::test]
async fn no_echo_skips_only_the_publishers_own_subscription() {
    let server = TestServer::start().await;
    let quiet = connect_with(&server, ConnectOptions::new().no_echo()).await;
    let other = connect(&server).await;
    let mut own = subscribe(&quiet, "chat").await;
    let mut theirs = subscribe(&other, "chat").await;
    sync(&quiet).await;
    sync(&other).await;

    publish(&quiet, "chat", "from quiet").await;
    sync(&quiet).await;
    assert_eq!(text(&next(&mut theirs).await), "from quiet");

    publish(&other, "chat", "from other").await;
    // The first thing the no-echo client sees is the other client's message, not its own.
    assert_eq!(text(&next(&mut own).await), "from other");
    assert_eq!(text(&next(&mut theirs).await), "from other");
    server.stop().await;
}
