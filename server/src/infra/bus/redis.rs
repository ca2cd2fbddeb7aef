//! [`RedisBus`]: the bus over Redis pub/sub.
//!
//! Channels and keys:
//! - `tandem:doc:<name>`: one channel per document, subscribed while the document is followed;
//! - `tandem:nodes`: revocations and goodbyes, always subscribed;
//! - `tandem:node:<id>`: each node's heartbeat key, set every `heartbeat` with a `ttl`.
//!
//! Three tasks per bus, aborted when the bus is closed or dropped:
//! - the subscriber owns the pub/sub connection: connects (backoff up to `max_backoff`),
//!   subscribes the nodes channel and every followed document, then reads messages (decoded,
//!   filtered, turned into events), applies follows and unfollows in the order they were made,
//!   and pings so that a connection that went silent counts as lost;
//! - the publisher drains the publish queue in batches, one pipeline of `PUBLISH`es per batch,
//!   over a `ConnectionManager` (which reconnects by itself);
//! - the heartbeat sets this node's key and reads the keys of the nodes heard from (one
//!   pipeline: `SET`, `MGET`); a missing key means that node is gone.
//!
//! A node is declared gone only once this bus has been connected, with heartbeats succeeding,
//! for a whole TTL: after Redis restarts empty, every live node has set its key again by then.
//!
//! Locks (std `Mutex`, never held across `.await`): the followed documents and the nodes heard
//! from, each touched once per message.

use std::collections::HashSet;
use std::iter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use ::redis::{Client, Msg, Value};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};

use super::wire::{self, Body};
use super::{Bus, BusError, BusEvent, BusOptions, DocMessage, NodeId};
use crate::infra::metrics::Metrics;

/// The channel of revocations and goodbyes.
const NODES: &str = "tandem:nodes";
/// Channels per `SUBSCRIBE` when (re)subscribing.
const SUBSCRIBE_CHUNK: usize = 512;
/// Messages per publish pipeline.
const PUBLISH_BATCH: usize = 64;
/// The first wait before reconnecting; doubles up to `max_backoff`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// The prefix of a document's channel, before its name.
const DOC_PREFIX: &str = "tandem:doc:";

fn doc_channel(doc: &str) -> String {
    format!("{DOC_PREFIX}{doc}")
}

fn node_key(node: &str) -> String {
    format!("tandem:node:{node}")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the bus handle and its tasks share.
struct Shared {
    node: NodeId,
    options: BusOptions,
    metrics: Metrics,
    /// Connected and subscribed.
    healthy: AtomicBool,
    /// `close` was called: nothing more is published.
    closed: AtomicBool,
    /// Set once `connect` returned: from then on every connection is announced with
    /// `Reconnected` (messages published before it were dropped).
    announce: AtomicBool,
    /// Bumped on every (re)subscription; the liveness check waits a TTL after each.
    epoch: AtomicU64,
    /// The documents followed. Incoming messages are filtered by it, so nothing about a
    /// document is queued after `unfollow`.
    followed: Mutex<HashSet<String>>,
    /// Other nodes heard from and not known to be gone.
    peers: Mutex<HashSet<NodeId>>,
}

impl Shared {
    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::SeqCst);
        self.metrics.bus_up.set(i64::from(up));
    }

    fn heard(&self, node: &str) {
        let mut peers = lock(&self.peers);
        if !peers.contains(node) {
            peers.insert(node.to_owned());
        }
    }
}

/// The sending end of the event queue, held by the tasks that produce events (so the
/// receiver ends once they stop).
#[derive(Clone)]
struct Events {
    sender: mpsc::Sender<BusEvent>,
    metrics: Metrics,
}

impl Events {
    fn emit(&self, event: BusEvent) {
        if let Err(TrySendError::Full(_)) = self.sender.try_send(event) {
            self.metrics.bus_dropped.slow_consumer.inc();
        }
    }

    fn node_gone(&self, node: NodeId) {
        self.metrics.bus_nodes_gone.inc();
        self.emit(BusEvent::NodeGone { node });
    }
}

/// An item of the publish queue.
enum Outgoing {
    /// Publish `payload` on `channel`.
    Publish { channel: String, payload: Vec<u8> },
    /// Say goodbye and delete the heartbeat key; the sender is dropped once done.
    Goodbye(oneshot::Sender<()>),
}

/// A change of subscriptions, for the subscriber task.
enum Command {
    /// Subscribe the document's channel; the sender (if any) is dropped once subscribed.
    Follow(String, Option<oneshot::Sender<()>>),
    /// Unsubscribe the document's channel.
    Unfollow(String),
}

/// The bus's tasks; aborted on drop.
struct Tasks {
    subscriber: JoinHandle<()>,
    publisher: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.subscriber.abort();
        self.publisher.abort();
        self.heartbeat.abort();
    }
}

/// A bus over Redis pub/sub. Dropping it stops it without a goodbye (as if the node died);
/// [`Bus::close`] says goodbye first.
pub struct RedisBus {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    commands: mpsc::UnboundedSender<Command>,
    events: Mutex<Option<mpsc::Receiver<BusEvent>>>,
    tasks: Tasks,
}

impl RedisBus {
    /// Starts a bus for `node` on the Redis at `url`; see [`super::connect`].
    pub async fn connect(
        url: &str,
        node: NodeId,
        metrics: Metrics,
        options: BusOptions,
    ) -> Result<Self, BusError> {
        if node.is_empty() || node.len() > usize::from(u8::MAX) {
            return Err(BusError::BadNodeId(node.len()));
        }
        let bad_url = |e: ::redis::RedisError| BusError::BadUrl {
            url: redacted(url),
            reason: if url.starts_with("rediss:") {
                "TLS (rediss://) is not supported by this build".to_owned()
            } else {
                // The crate's message names the error kind after a dash: a kind that is always
                // this one says nothing to the reader.
                e.to_string().replacen(" - InvalidClientConfig", "", 1)
            },
        };
        let client = Client::open(url).map_err(bad_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(1)
            .set_max_delay(options.max_backoff);
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(bad_url)?;

        let (event_sender, event_receiver) = mpsc::channel(options.event_queue.max(1));
        let (outgoing, outgoing_receiver) = mpsc::channel(options.publish_queue.max(1));
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let wait = options.timeout * 2;
        metrics.bus_up.set(0);
        let events = Events {
            sender: event_sender,
            metrics: metrics.clone(),
        };
        let shared = Arc::new(Shared {
            node,
            options,
            metrics,
            healthy: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            announce: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            followed: Mutex::new(HashSet::new()),
            peers: Mutex::new(HashSet::new()),
        });
        let (first, first_done) = oneshot::channel();
        let tasks = Tasks {
            subscriber: tokio::spawn(subscriber(
                shared.clone(),
                client,
                command_receiver,
                events.clone(),
                first,
            )),
            publisher: tokio::spawn(publisher(
                shared.clone(),
                manager.clone(),
                outgoing_receiver,
            )),
            heartbeat: tokio::spawn(heartbeat(shared.clone(), manager, events)),
        };
        // The first attempt's outcome, so a reachable Redis gives a healthy bus at once.
        let _ = timeout(wait, first_done).await;
        shared.announce.store(true, Ordering::SeqCst);
        Ok(RedisBus {
            shared,
            outgoing,
            commands,
            events: Mutex::new(Some(event_receiver)),
            tasks,
        })
    }

    fn send(&self, channel: impl FnOnce() -> String, body: Body) {
        if self.shared.closed.load(Ordering::Relaxed) {
            return;
        }
        if !self.shared.healthy() {
            self.shared.metrics.bus_dropped.disconnected.inc();
            return;
        }
        let payload = wire::encode(&self.shared.node, &body);
        let item = Outgoing::Publish {
            channel: channel(),
            payload,
        };
        if self.outgoing.try_send(item).is_err() {
            self.shared.metrics.bus_dropped.queue_full.inc();
        }
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.shared.set_healthy(false);
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn node(&self) -> &str {
        &self.shared.node
    }

    async fn follow(&self, doc: &str) {
        lock(&self.shared.followed).insert(doc.to_owned());
        // While Redis is down the subscriber subscribes every followed document when it
        // reconnects; the command still goes, in case it is connecting right now.
        if self.shared.healthy() {
            let (done, subscribed) = oneshot::channel();
            if self
                .commands
                .send(Command::Follow(doc.to_owned(), Some(done)))
                .is_ok()
            {
                let _ = subscribed.await;
            }
        } else {
            let _ = self.commands.send(Command::Follow(doc.to_owned(), None));
        }
    }

    fn unfollow(&self, doc: &str) {
        lock(&self.shared.followed).remove(doc);
        let _ = self.commands.send(Command::Unfollow(doc.to_owned()));
    }

    fn publish(&self, doc: &str, message: DocMessage) {
        self.send(|| doc_channel(doc), Body::Doc(message));
    }

    fn publish_revocation(&self, user: &str, at: u64) {
        let body = Body::Revoked {
            user: user.to_owned(),
            at,
        };
        self.send(|| NODES.to_owned(), body);
    }

    fn healthy(&self) -> bool {
        self.shared.healthy()
    }

    fn events(&self) -> Option<mpsc::Receiver<BusEvent>> {
        lock(&self.events).take()
    }

    async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // No heartbeat may recreate the key after the goodbye deletes it.
        self.tasks.heartbeat.abort();
        if self.shared.healthy() {
            let wait = self.shared.options.timeout;
            let (done, said) = oneshot::channel();
            if let Ok(Ok(())) = timeout(wait, self.outgoing.send(Outgoing::Goodbye(done))).await {
                let _ = timeout(wait, said).await;
            }
        }
        self.tasks.subscriber.abort();
        self.tasks.publisher.abort();
        self.shared.set_healthy(false);
    }
}

/// `url` with its password hidden; nothing of it when it does not parse.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// The subscriber task: the pub/sub connection, its subscriptions, and incoming messages.
async fn subscriber(
    shared: Arc<Shared>,
    client: Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: Events,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut backoff = MIN_BACKOFF;
    // Down since the last connection was lost, or since the first attempt failed.
    let mut down = false;
    loop {
        let attempt = subscribe_all(&shared, &client).await;
        let Some((sink, stream)) = attempt else {
            if !down {
                tracing::warn!(node = %shared.node, "bus: Redis unreachable, retrying");
                down = true;
            }
            drop(first.take());
            // Wait before the next attempt, answering follows meanwhile: what they follow is
            // subscribed by the next attempt.
            let wake = sleep(backoff);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = &mut wake => break,
                    command = commands.recv() => if command.is_none() { return },
                }
            }
            backoff = (backoff * 2).min(shared.options.max_backoff);
            continue;
        };
        backoff = MIN_BACKOFF;
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        shared.set_healthy(true);
        if down || shared.announce.load(Ordering::SeqCst) {
            tracing::info!(node = %shared.node, "bus: connected to Redis again");
            shared.metrics.bus_reconnects.inc();
            events.emit(BusEvent::Reconnected);
        }
        drop(first.take());

        let stopped = serve(&shared, &events, sink, stream, &mut commands).await;
        shared.set_healthy(false);
        if stopped {
            return;
        }
        tracing::warn!(node = %shared.node, "bus: lost the Redis connection, reconnecting");
        down = true;
    }
}

/// Connects and subscribes the nodes channel and every followed document.
async fn subscribe_all(shared: &Shared, client: &Client) -> Option<(PubSubSink, PubSubStream)> {
    let wait = shared.options.timeout;
    let pubsub = timeout(wait, client.get_async_pubsub()).await.ok()?.ok()?;
    let (mut sink, stream) = pubsub.split();
    let channels: Vec<String> = {
        let followed = lock(&shared.followed);
        iter::once(NODES.to_owned())
            .chain(followed.iter().map(|doc| doc_channel(doc)))
            .collect()
    };
    for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
        timeout(wait, sink.subscribe(chunk)).await.ok()?.ok()?;
    }
    Some((sink, stream))
}

/// Serves one connection until it is lost (`false`) or the bus is dropped (`true`).
async fn serve(
    shared: &Shared,
    events: &Events,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> bool {
    let wait = shared.options.timeout;
    let mut ping = tokio::time::interval(shared.options.heartbeat);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.reset();
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => receive(shared, events, &message),
                None => return false,
            },
            command = commands.recv() => {
                let ok = match command {
                    None => return true,
                    Some(Command::Follow(doc, _done)) => {
                        matches!(timeout(wait, sink.subscribe(doc_channel(&doc))).await, Ok(Ok(())))
                    }
                    Some(Command::Unfollow(doc)) => {
                        matches!(timeout(wait, sink.unsubscribe(doc_channel(&doc))).await, Ok(Ok(())))
                    }
                };
                if !ok {
                    return false;
                }
            }
            _ = ping.tick() => {
                if !matches!(timeout(wait, sink.ping::<Value>()).await, Ok(Ok(_))) {
                    return false;
                }
            }
        }
    }
}

/// One message from Redis: decoded, filtered, and queued as an event.
fn receive(shared: &Shared, events: &Events, message: &Msg) {
    let malformed = || shared.metrics.bus_dropped.malformed.inc();
    let Ok((from, head)) = wire::decode_sender(message.get_payload_bytes()) else {
        return malformed();
    };
    if from == shared.node {
        return;
    }
    let Ok(body) = wire::decode_body(head) else {
        return malformed();
    };
    let channel = message.get_channel_name();
    match (channel.strip_prefix(DOC_PREFIX), body) {
        (Some(doc), Body::Doc(message)) => {
            let followed = lock(&shared.followed);
            if !followed.contains(doc) {
                // Sent before the unsubscribe took effect.
                return;
            }
            shared.metrics.bus_received.inc();
            // Queued under the lock: once `unfollow` returned, nothing more of `doc` is.
            events.emit(BusEvent::Doc {
                doc: doc.to_owned(),
                from: from.to_owned(),
                message,
            });
            drop(followed);
            shared.heard(from);
        }
        (None, Body::Revoked { user, at }) if channel == NODES => {
            shared.metrics.bus_received.inc();
            events.emit(BusEvent::Revoked { user, at });
            shared.heard(from);
        }
        (None, Body::Goodbye) if channel == NODES => {
            shared.metrics.bus_received.inc();
            lock(&shared.peers).remove(from);
            events.node_gone(from.to_owned());
        }
        _ => malformed(),
    }
}

/// The publisher task: the publish queue, in batches.
async fn publisher(
    shared: Arc<Shared>,
    mut conn: ConnectionManager,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    let wait = shared.options.timeout;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = ::redis::pipe();
        let mut messages = 0u64;
        let mut goodbyes = Vec::new();
        for item in batch.drain(..) {
            match item {
                Outgoing::Publish { channel, payload } => {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                    messages += 1;
                }
                Outgoing::Goodbye(done) => {
                    let goodbye = wire::encode(&shared.node, &Body::Goodbye);
                    pipe.cmd("PUBLISH").arg(NODES).arg(goodbye).ignore();
                    pipe.cmd("DEL").arg(node_key(&shared.node)).ignore();
                    goodbyes.push(done);
                }
            }
        }
        // A connection that died since the last batch fails once, and the manager reconnects
        // on that failure: one retry gets through after Redis came back. (A retry may publish
        // twice; receivers tolerate duplicates: updates by sid, awareness by clock.)
        let mut sent = false;
        for _ in 0..2 {
            match timeout(wait, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {
                    sent = true;
                    break;
                }
                Ok(Err(e)) if e.is_unrecoverable_error() || e.is_io_error() => continue,
                _ => break,
            }
        }
        if sent {
            shared.metrics.bus_published.add(messages);
        } else {
            shared.metrics.bus_dropped.failed.add(messages);
        }
        drop(goodbyes);
    }
}

/// The heartbeat task: this node's key, and the liveness of the nodes heard from.
async fn heartbeat(shared: Arc<Shared>, mut conn: ConnectionManager, events: Events) {
    let options = &shared.options;
    let key = node_key(&shared.node);
    let ttl_ms = u64::try_from(options.ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut tick = tokio::time::interval(options.heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Since when heartbeats have succeeded without a break, within which subscription epoch.
    let mut steady: Option<(Instant, u64)> = None;
    loop {
        tick.tick().await;
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let settled = shared.healthy()
            && matches!(steady, Some((since, e)) if e == epoch && since.elapsed() >= options.ttl);
        let peers: Vec<NodeId> = if settled {
            lock(&shared.peers).iter().cloned().collect()
        } else {
            Vec::new()
        };
        let mut pipe = ::redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        if !peers.is_empty() {
            let keys: Vec<String> = peers.iter().map(|p| node_key(p)).collect();
            pipe.cmd("MGET").arg(keys);
        }
        let reply = timeout(
            options.timeout,
            pipe.query_async::<Vec<Vec<Option<Vec<u8>>>>>(&mut conn),
        )
        .await;
        let Ok(Ok(replies)) = reply else {
            steady = None;
            continue;
        };
        if !matches!(steady, Some((_, e)) if e == epoch) {
            steady = Some((Instant::now(), epoch));
        }
        let Some(values) = replies.into_iter().next() else {
            continue;
        };
        if values.len() != peers.len() {
            continue;
        }
        for (peer, value) in peers.into_iter().zip(values) {
            if value.is_none() && lock(&shared.peers).remove(&peer) {
                tracing::info!(node = %shared.node, gone = %peer, "bus: node gone");
                events.node_gone(peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::bus::Replicated;
    use bytes::Bytes;
    use std::process::{Child, Command as Process, Stdio};

    /// A redis-server of a test's own, killed on drop.
    struct Redis {
        port: u16,
        child: Option<Child>,
    }

    impl Redis {
        async fn start() -> Redis {
            Redis::on(free_port()).await
        }

        async fn on(port: u16) -> Redis {
            let child = Process::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("the bus tests need `redis-server` (Redis 7) on PATH: {e}")
                });
            let redis = Redis {
                port,
                child: Some(child),
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(Instant::now() < deadline, "redis-server did not start");
                sleep(Duration::from_millis(10)).await;
            }
            redis
        }

        fn url(&self) -> String {
            url(self.port)
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    fn options() -> BusOptions {
        BusOptions {
            heartbeat: Duration::from_millis(100),
            ttl: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            max_backoff: Duration::from_millis(200),
            ..BusOptions::default()
        }
    }

    struct Node {
        bus: Arc<dyn Bus>,
        events: mpsc::Receiver<BusEvent>,
        metrics: Metrics,
    }

    async fn node(url: &str, id: &str) -> Node {
        let metrics = Metrics::new();
        let bus = super::super::connect(url, id.to_owned(), metrics.clone(), options())
            .await
            .unwrap();
        let events = bus.events().unwrap();
        Node {
            bus,
            events,
            metrics,
        }
    }

    impl Node {
        async fn next(&mut self) -> BusEvent {
            timeout(Duration::from_secs(5), self.events.recv())
                .await
                .expect("no event within 5 s")
                .expect("the event queue ended")
        }
    }

    async fn until(what: &str, within: Duration, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !condition() {
            assert!(Instant::now() < deadline, "not within {within:?}: {what}");
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn doc_event(doc: &str, from: &str, message: DocMessage) -> BusEvent {
        BusEvent::Doc {
            doc: doc.into(),
            from: from.into(),
            message,
        }
    }

    fn update(sid: u64) -> DocMessage {
        DocMessage::Updates {
            first: sid,
            updates: vec![Replicated {
                author: "ada".into(),
                update: Bytes::from(vec![1, 2, sid as u8]),
            }],
        }
    }

    #[tokio::test]
    async fn followers_get_each_others_messages_and_only_those() {
        let redis = Redis::start().await;
        let mut a = node(&redis.url(), "a").await;
        let mut b = node(&redis.url(), "b").await;
        let mut c = node(&redis.url(), "c").await;
        assert!(a.bus.healthy() && b.bus.healthy() && c.bus.healthy());
        a.bus.follow("d").await;
        b.bus.follow("d").await;
        c.bus.follow("e").await;

        let awareness = DocMessage::Awareness {
            payload: Bytes::from_static(b"\x01\x07\x01\x02{}"),
        };
        a.bus.publish("d", update(1));
        a.bus.publish("d", awareness.clone());
        a.bus.publish("d", DocMessage::Query);
        assert_eq!(b.next().await, doc_event("d", "a", update(1)));
        assert_eq!(b.next().await, doc_event("d", "a", awareness));
        assert_eq!(b.next().await, doc_event("d", "a", DocMessage::Query));

        // A's own messages reached A's connection before B's reply: A skipped them.
        b.bus.publish("d", update(2));
        assert_eq!(a.next().await, doc_event("d", "b", update(2)));

        // C follows e only: the first thing it hears is A's message on e.
        a.bus.publish("e", DocMessage::Query);
        assert_eq!(c.next().await, doc_event("e", "a", DocMessage::Query));

        // After B unfollows d (and follows e: commands apply in order), nothing of d reaches it.
        b.bus.unfollow("d");
        b.bus.follow("e").await;
        a.bus.publish("d", update(3));
        a.bus.publish("e", update(4));
        assert_eq!(b.next().await, doc_event("e", "a", update(4)));

        // Counted once Redis answered the pipeline, which may be after B received it.
        until("A's six messages counted", Duration::from_secs(2), || {
            a.metrics.bus_published.get() == 6
        })
        .await;
        assert_eq!(b.metrics.bus_received.get(), 4);
        assert_eq!(b.metrics.bus_dropped.total(), 0);
        assert!(a.events.try_recv().is_err());
        assert_eq!(c.next().await, doc_event("e", "a", update(4)));
        assert_eq!(
            a.metrics
                .render()
                .lines()
                .find(|l| l.starts_with("tandem_bus_up ")),
            Some("tandem_bus_up 1")
        );
    }

    #[tokio::test]
    async fn revocations_reach_the_other_nodes() {
        let redis = Redis::start().await;
        let a = node(&redis.url(), "a").await;
        let mut b = node(&redis.url(), "b").await;
        a.bus.publish_revocation("bob", 1_700_000_000);
        assert_eq!(
            b.next().await,
            BusEvent::Revoked {
                user: "bob".into(),
                at: 1_700_000_000
            }
        );
    }

    #[tokio::test]
    async fn a_node_that_says_goodbye_is_gone_at_once() {
        let redis = Redis::start().await;
        let mut a = node(&redis.url(), "a").await;
        let mut b = node(&redis.url(), "b").await;
        let started = Instant::now();
        a.bus.close().await;
        assert_eq!(b.next().await, BusEvent::NodeGone { node: "a".into() });
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(!a.bus.healthy());
        // A's event queue ends; publishing after close does nothing.
        assert_eq!(
            timeout(Duration::from_secs(5), a.events.recv()).await,
            Ok(None)
        );
        a.bus.publish("d", DocMessage::Query);
        assert_eq!(b.metrics.bus_nodes_gone.get(), 1);
    }

    #[tokio::test]
    async fn a_node_that_dies_is_gone_once_its_key_expires() {
        let redis = Redis::start().await;
        let a = node(&redis.url(), "a").await;
        let mut b = node(&redis.url(), "b").await;
        a.bus.follow("d").await;
        b.bus.follow("d").await;
        a.bus.publish("d", DocMessage::Query);
        assert_eq!(b.next().await, doc_event("d", "a", DocMessage::Query));
        // No goodbye: the tasks stop, the heartbeat with them.
        let died = Instant::now();
        drop(a);
        assert_eq!(b.next().await, BusEvent::NodeGone { node: "a".into() });
        let took = died.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert_eq!(b.metrics.bus_nodes_gone.get(), 1);
        // B's pings kept its connection up all along (a failed ping would have reconnected).
        assert_eq!(b.metrics.bus_reconnects.get(), 0);
        assert!(b.bus.healthy());
    }

    #[tokio::test]
    async fn the_bus_survives_a_redis_restart_empty() {
        let mut redis = Redis::start().await;
        let port = redis.port;
        let mut a = node(&redis.url(), "a").await;
        let mut b = node(&redis.url(), "b").await;
        a.bus.follow("d").await;
        b.bus.follow("d").await;
        // Each knows the other, so each checks the other's key after the restart.
        a.bus.publish("d", update(1));
        assert_eq!(b.next().await, doc_event("d", "a", update(1)));
        b.bus.publish("d", update(2));
        assert_eq!(a.next().await, doc_event("d", "b", update(2)));

        redis.kill();
        let killed = Instant::now();
        until("both unhealthy", Duration::from_secs(2), || {
            !a.bus.healthy() && !b.bus.healthy()
        })
        .await;
        assert!(killed.elapsed() < Duration::from_secs(1));
        assert_eq!(a.metrics.bus_up.get(), 0);
        // Publishing while down returns at once and counts the drop.
        let publishing = Instant::now();
        for sid in 0..1000 {
            a.bus.publish("d", update(sid));
        }
        assert!(publishing.elapsed() < Duration::from_millis(100));
        assert_eq!(a.metrics.bus_dropped.disconnected.get(), 1000);

        let _redis = Redis::on(port).await;
        assert_eq!(a.next().await, BusEvent::Reconnected);
        assert_eq!(b.next().await, BusEvent::Reconnected);
        assert!(a.bus.healthy() && b.bus.healthy());
        a.bus.publish("d", update(7));
        assert_eq!(b.next().await, doc_event("d", "a", update(7)));
        b.bus.publish_revocation("u", 9);
        assert_eq!(
            a.next().await,
            BusEvent::Revoked {
                user: "u".into(),
                at: 9
            }
        );
        assert_eq!(a.metrics.bus_reconnects.get(), 1);

        // The heartbeat keys are back: neither node declares the other gone.
        let mut raw = Client::open(url(port))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys = ["tandem:node:a", "tandem:node:b"];
        let wait = async {
            loop {
                let n: u64 = ::redis::cmd("EXISTS")
                    .arg(&keys)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                if n == 2 {
                    break;
                }
                sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(Duration::from_secs(3), wait)
            .await
            .expect("heartbeat keys not recreated");
        assert!(timeout(Duration::from_millis(1500), b.events.recv())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_bus_started_without_redis_connects_later() {
        let port = free_port();
        let mut a = node(&url(port), "a").await;
        assert!(!a.bus.healthy());
        a.bus.follow("d").await;
        a.bus.publish("d", DocMessage::Query);
        assert_eq!(a.metrics.bus_dropped.disconnected.get(), 1);

        let redis = Redis::on(port).await;
        assert_eq!(a.next().await, BusEvent::Reconnected);
        assert!(a.bus.healthy());
        // The document followed while down was subscribed on connecting.
        let mut b = node(&redis.url(), "b").await;
        b.bus.follow("d").await;
        b.bus.publish("d", update(1));
        assert_eq!(a.next().await, doc_event("d", "b", update(1)));
        let _ = b.events.try_recv();
    }

    #[tokio::test]
    async fn malformed_messages_are_dropped_and_counted() {
        let redis = Redis::start().await;
        let a = node(&redis.url(), "a").await;
        let mut b = node(&redis.url(), "b").await;
        b.bus.follow("d").await;
        let mut raw = Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let goodbye_on_a_doc = wire::encode("x", &Body::Goodbye);
        let query_on_nodes = wire::encode("x", &Body::Doc(DocMessage::Query));
        for (channel, bytes) in [
            ("tandem:doc:d", &b"garbage"[..]),
            ("tandem:doc:d", b"\x01\x01\x01x\x00"),
            ("tandem:doc:d", &goodbye_on_a_doc),
            ("tandem:nodes", &query_on_nodes),
            ("tandem:nodes", b""),
        ] {
            let _: u64 = ::redis::cmd("PUBLISH")
                .arg(channel)
                .arg(bytes)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
        a.bus.publish("d", DocMessage::Query);
        assert_eq!(b.next().await, doc_event("d", "a", DocMessage::Query));
        assert_eq!(b.metrics.bus_dropped.malformed.get(), 5);
        assert_eq!(b.metrics.bus_received.get(), 1);
    }

    #[tokio::test]
    async fn a_slow_consumer_loses_events_counted() {
        let redis = Redis::start().await;
        let a = node(&redis.url(), "a").await;
        let metrics = Metrics::new();
        let options = BusOptions {
            event_queue: 2,
            ..options()
        };
        let b = super::super::connect(&redis.url(), "b".into(), metrics.clone(), options)
            .await
            .unwrap();
        b.follow("d").await;
        for sid in 1..=5 {
            a.bus.publish("d", update(sid));
        }
        until("three dropped", Duration::from_secs(3), || {
            metrics.bus_dropped.slow_consumer.get() == 3
        })
        .await;
        let mut events = b.events().unwrap();
        assert_eq!(events.recv().await, Some(doc_event("d", "a", update(1))));
        assert_eq!(events.recv().await, Some(doc_event("d", "a", update(2))));
    }

    #[tokio::test]
    async fn bad_urls_and_node_ids_are_refused_without_the_password() {
        let metrics = Metrics::new();
        let connect = |url: &'static str, node: &str| {
            super::super::connect(url, node.to_owned(), metrics.clone(), options())
        };
        let err = connect("http://user:hunter2@host", "a")
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(matches!(err, BusError::BadUrl { .. }), "{text}");
        assert!(!text.contains("hunter2") && text.contains("***"), "{text}");
        let err = connect("redis://:hunter2@host/notadb", "a")
            .await
            .err()
            .unwrap();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(
            err.to_string(),
            "--redis-url redis://:***@host/notadb is not usable: Invalid database number"
        );
        let err = connect("rediss://:hunter2@host", "a").await.err().unwrap();
        assert!(err
            .to_string()
            .ends_with("TLS (rediss://) is not supported by this build"));
        let err = connect("not a url hunter2", "a").await.err().unwrap();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(matches!(
            connect("redis://127.0.0.1:1", "").await.err().unwrap(),
            BusError::BadNodeId(0)
        ));
        let long = "n".repeat(256);
        assert!(matches!(
            connect("redis://127.0.0.1:1", &long).await.err().unwrap(),
            BusError::BadNodeId(256)
        ));
    }
}
