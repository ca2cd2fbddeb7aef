//! [`Registry`]: the loaded documents, one owner task each.
//!
//! [`Registry::join`] finds the document's task or starts one. A new task first loads the
//! document from the store; commands sent meanwhile wait in its bounded queue, so concurrent
//! first connections share one load. A failed load refuses every waiting connection and never
//! stores anything. When the last connection has left and every accepted update is durable,
//! the task removes itself from the registry and ends (the document unloads); a join racing
//! with that is retried against a fresh task.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use tandem_engine::protocol::{ConnId, ConnInfo};
use tokio::sync::{mpsc, oneshot, Notify};

use super::command::{Command, JoinReply, Reply};
use super::notifier::Notifier;
use super::queue;
use super::task::{self, Context};
use super::{
    Answered, ConnSink, DocError, DocState, JoinError, Subscription, WriteRequest, SUBSCRIBER_QUEUE,
};
use crate::infra::bus::{Bus, Replicated};
use crate::infra::config::Config;
use crate::infra::metrics::Metrics;
use crate::infra::store::{Sid, Store};

/// Commands a document task queues before senders wait (backpressure on readers).
const COMMAND_QUEUE: usize = 1024;

#[derive(Clone)]
struct DocHandle {
    id: u64,
    tx: queue::Sender<Command>,
}

/// The loaded documents. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("loaded", &self.shared.docs.len())
            .finish()
    }
}

struct Shared {
    docs: DashMap<String, DocHandle>,
    context: Context,
    next_id: AtomicU64,
    /// Document tasks still running, and a wake-up when one ends.
    live: AtomicUsize,
    ended: Notify,
    closing: AtomicBool,
}

/// A connection attached to a document. Leaves the document when dropped.
#[derive(Debug)]
pub struct Attached {
    conn: ConnId,
    tx: queue::Sender<Command>,
    left: bool,
}

impl Attached {
    /// This connection's id within the document.
    pub fn id(&self) -> ConnId {
        self.conn
    }

    /// Hands a received frame to the document; waits when the document is busy. Returns
    /// `false` when the document is gone (the connection should close).
    pub async fn frame(&self, frame: Bytes) -> bool {
        let cmd = Command::Frame {
            conn: self.conn,
            frame,
            received: Instant::now(),
        };
        match self.tx.try_send(cmd) {
            Ok(()) => true,
            Err(queue::TrySendError::Closed(_)) => false,
            // Boxed: the waiting send is rare, and its future would otherwise be part of every
            // connection's future for the connection's whole life.
            Err(queue::TrySendError::Full(cmd)) => Box::pin(self.tx.send(cmd)).await.is_ok(),
        }
    }

    /// Leaves the document.
    pub async fn leave(mut self) {
        self.left = true;
        let _ = self.tx.send(Command::Leave { conn: self.conn }).await;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if !self.left {
            let tx = self.tx.clone();
            let conn = self.conn;
            if tx.try_send(Command::Leave { conn }).is_err() {
                tokio::spawn(async move {
                    let _ = tx.send(Command::Leave { conn }).await;
                });
            }
        }
    }
}

impl Registry {
    /// An empty registry over `store`; `bus` links it to the other nodes sharing the store.
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Metrics,
        config: Arc<Config>,
        bus: Option<Arc<dyn Bus>>,
    ) -> Self {
        Self::with_notifier(store, metrics, config, bus, None)
    }

    /// [`Registry::new`], with the notifier documents hand their notifications (and webhook
    /// configuration) to.
    pub fn with_notifier(
        store: Arc<dyn Store>,
        metrics: Metrics,
        config: Arc<Config>,
        bus: Option<Arc<dyn Bus>>,
        notifier: Option<Notifier>,
    ) -> Self {
        Registry {
            shared: Arc::new(Shared {
                docs: DashMap::new(),
                context: Context {
                    store,
                    metrics,
                    config,
                    bus,
                    notifier,
                },
                next_id: AtomicU64::new(1),
                live: AtomicUsize::new(0),
                ended: Notify::new(),
                closing: AtomicBool::new(false),
            }),
        }
    }

    /// Number of documents loaded (or loading) now.
    pub fn loaded(&self) -> usize {
        self.shared.docs.len()
    }

    /// Whether `doc` is loaded now.
    pub fn is_loaded(&self, doc: &str) -> bool {
        self.shared.docs.contains_key(doc)
    }

    fn handle(&self, doc: &str) -> DocHandle {
        if let Some(h) = self.shared.docs.get(doc) {
            return h.clone();
        }
        self.shared
            .docs
            .entry(doc.to_owned())
            .or_insert_with(|| {
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = queue::channel(COMMAND_QUEUE);
                let forget = {
                    let registry = self.clone();
                    let doc = doc.to_owned();
                    Box::new(move || registry.forget(&doc, id))
                };
                let task =
                    task::DocTask::new(self.shared.context.clone(), doc.to_owned(), rx, forget);
                self.shared.live.fetch_add(1, Ordering::AcqRel);
                let registry = self.clone();
                tokio::spawn(async move {
                    task.run().await;
                    registry.shared.live.fetch_sub(1, Ordering::AcqRel);
                    registry.shared.ended.notify_waiters();
                });
                DocHandle { id, tx }
            })
            .clone()
    }

    /// Attaches a connection to `doc`, loading the document if needed. Returns once the
    /// connection is in the room (its greeting is queued on `sink`).
    pub async fn join(
        &self,
        doc: &str,
        info: ConnInfo,
        sink: ConnSink,
    ) -> Result<Attached, JoinError> {
        let conn = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sink = Some(sink);
        loop {
            if self.shared.closing.load(Ordering::Acquire) {
                return Err(JoinError::ShuttingDown);
            }
            let handle = self.handle(doc);
            let (reply, answer) = oneshot::channel();
            let cmd = Command::Join {
                conn,
                info: Box::new(info.clone()),
                sink: sink.take().expect("sink is put back before retrying"),
                reply,
            };
            match handle.tx.send(cmd).await {
                Ok(()) => match answer.await {
                    Ok(JoinReply::Joined) => {
                        return Ok(Attached {
                            conn,
                            tx: handle.tx,
                            left: false,
                        })
                    }
                    Ok(JoinReply::Failed(e)) => return Err(e),
                    Ok(JoinReply::Retry(s)) => {
                        self.shared.docs.remove_if(doc, |_, h| h.id == handle.id);
                        sink = Some(s);
                    }
                    // The task panicked without answering.
                    Err(_) => return Err(JoinError::LoadFailed),
                },
                Err(queue::SendError(Command::Join { sink: s, .. })) => {
                    // The task is unloading; it has left the registry or is about to.
                    self.shared.docs.remove_if(doc, |_, h| h.id == handle.id);
                    sink = Some(s);
                }
                Err(_) => unreachable!("only a join was sent"),
            }
        }
    }

    /// Stops accepting joins, asks every document to close its connections and store what it
    /// holds, and waits for all of them to finish.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let handles: Vec<DocHandle> = self.shared.docs.iter().map(|e| e.value().clone()).collect();
        for h in handles {
            let _ = h.tx.send(Command::Shutdown).await;
        }
        loop {
            let ended = self.shared.ended.notified();
            if self.shared.live.load(Ordering::Acquire) == 0 {
                break;
            }
            ended.await;
        }
    }

    /// Sends a command to `doc`'s task (loading the document if needed) and waits for the
    /// answer; retried when the task was unloading.
    async fn ask<T>(&self, doc: &str, make: impl Fn(Reply<T>) -> Command) -> Result<T, DocError> {
        for _ in 0..8 {
            if self.shared.closing.load(Ordering::Acquire) {
                return Err(JoinError::ShuttingDown.into());
            }
            let handle = self.handle(doc);
            let (reply, answer) = oneshot::channel();
            if handle.tx.send(make(reply)).await.is_err() {
                self.shared.docs.remove_if(doc, |_, h| h.id == handle.id);
                continue;
            }
            match answer.await {
                Ok(result) => return result,
                // Dropped unanswered: the task was unloading or failed to load.
                Err(_) => {
                    self.shared.docs.remove_if(doc, |_, h| h.id == handle.id);
                    continue;
                }
            }
        }
        Err(JoinError::LoadFailed.into())
    }

    /// Runs `f` on `doc`'s room inside its task (tests only).
    #[cfg(test)]
    pub(crate) async fn run_in(
        &self,
        doc: &str,
        f: Box<dyn FnOnce(&mut tandem_engine::protocol::Room) + Send>,
    ) {
        let _ = self.handle(doc).tx.send(Command::Run(f)).await;
    }

    /// The document's current state; [`DocError::NotFound`] if it was never written.
    pub async fn read(&self, doc: &str, with_update: bool) -> Result<DocState, DocError> {
        self.ask(doc, |reply| Command::Read { with_update, reply })
            .await
    }

    /// Subscribes to the document's durable changes and presence, from its current state (with
    /// the whole document as one update when `with_update`). A document never written can be
    /// subscribed to: it starts empty at sid 0, and nothing is stored by subscribing.
    pub async fn subscribe(&self, doc: &str, with_update: bool) -> Result<Subscription, DocError> {
        let (tx, feed) = mpsc::channel(SUBSCRIBER_QUEUE);
        let (state, presence) = self
            .ask(doc, |reply| Command::Subscribe {
                feed: tx.clone(),
                with_update,
                reply,
            })
            .await?;
        Ok(Subscription {
            state,
            feed,
            presence,
        })
    }

    /// Carries out a write (see [`WriteRequest`]); answers once what it did is durable. With
    /// an idempotency key, at most once per key: a retry gets the first answer, `replayed`.
    pub async fn write(&self, doc: &str, request: WriteRequest) -> Result<Answered, DocError> {
        self.ask(doc, |reply| Command::Write {
            request: Box::new(request.clone()),
            reply,
        })
        .await
    }

    /// Hands `doc` updates another node stored at sids `first`, `first + 1`, …, when `doc` is
    /// loaded here: they are applied and broadcast to this node's connections and subscribers,
    /// not stored again. A document not loaded here has nothing to update (it loads from the
    /// store, which has the updates). A sid the document already has is ignored; one that
    /// comes early waits for its turn.
    pub async fn apply_replicated(&self, doc: &str, first: Sid, updates: Vec<Replicated>) {
        self.tell(doc, Command::Replicated { first, updates }).await;
    }

    /// The names of the documents loaded now.
    pub fn loaded_names(&self) -> Vec<String> {
        self.shared.docs.iter().map(|e| e.key().clone()).collect()
    }

    /// Sends `cmd` to `doc`'s task when it is loaded here (nothing otherwise: a document
    /// loads everything from the store).
    async fn tell(&self, doc: &str, cmd: Command) {
        let Some(handle) = self.shared.docs.get(doc).map(|h| h.clone()) else {
            return;
        };
        let _ = handle.tx.send(cmd).await;
    }

    /// Tells `doc`, when loaded here, that the store holds its updates up to `sid`: a document
    /// that has not taken them all reads what it misses (after `--gap-timeout`).
    pub async fn stored_up_to(&self, doc: &str, sid: Sid) {
        self.tell(doc, Command::Behind { sid }).await;
    }

    /// Hands `doc`, when loaded here, the presence of another node's connections (an
    /// awareness update payload); `origin` names that node.
    pub async fn remote_presence(&self, doc: &str, origin: u64, payload: Bytes) {
        self.tell(doc, Command::RemoteAwareness { origin, payload })
            .await;
    }

    /// Another node stopped: every loaded document drops its connections' presence.
    pub async fn origin_gone(&self, origin: u64) {
        for doc in self.loaded_names() {
            self.tell(&doc, Command::OriginGone { origin }).await;
        }
    }

    /// Asks `doc` (another node asked for it) to publish this node's presence to the other
    /// nodes.
    pub async fn republish(&self, doc: &str) {
        self.tell(doc, Command::Republish { ask: false }).await;
    }

    /// Every loaded document publishes this node's presence and asks the other nodes for
    /// theirs (the bus came back: whichever node reconnects last, every state crosses).
    pub async fn republish_all(&self) {
        for doc in self.loaded_names() {
            self.tell(&doc, Command::Republish { ask: true }).await;
        }
    }

    /// Removes `doc` from the registry if it is still the task `id`.
    fn forget(&self, doc: &str, id: u64) {
        self.shared.docs.remove_if(doc, |_, h| h.id == id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::outbox;
    use crate::documents::FeedItem;
    use crate::documents::{CONNECTION_QUEUE, CONNECTION_QUEUE_BYTES};
    use crate::infra::store::sqlite::{SqliteOptions, SqliteStore};
    use tandem_engine::protocol::{sync_frame, Role};

    fn writer() -> ConnInfo {
        ConnInfo {
            role: Role::Write,
            user: Some("alice".into()),
            extensions: false,
            name: None,
            stateless: false,
        }
    }

    fn sink() -> (ConnSink, outbox::Receiver) {
        outbox::outbox(CONNECTION_QUEUE, CONNECTION_QUEUE_BYTES)
    }

    /// A panic inside one document's engine call closes that document's connections (1011),
    /// unloads it, and the next connection reloads it from storage intact; other documents
    /// are not touched.
    #[tokio::test]
    async fn a_panicking_document_is_reloaded_and_others_keep_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let config = Arc::new(Config::default_for(dir.path()));
        let metrics = Metrics::new();
        let registry = Registry::new(Arc::new(store), metrics.clone(), config, None);

        let (s, mut victim_rx) = sink();
        let victim = registry.join("victim", writer(), s).await.unwrap();
        let mut replica = tandem_engine::Document::new(7);
        let update = replica.insert("alice", "t", 0, "kept").unwrap();
        assert!(victim.frame(sync_frame(2, &update)).await);
        let (s, other_rx) = sink();
        let bystander = registry.join("bystander", writer(), s).await.unwrap();
        let update = tandem_engine::Document::new(8)
            .insert("alice", "u", 0, "fine")
            .unwrap();
        assert!(bystander.frame(sync_frame(2, &update)).await);
        // Durable once a read sees its sid.
        while registry.read("victim", false).await.unwrap().sid == 0 {
            tokio::task::yield_now().await;
        }

        registry
            .run_in("victim", Box::new(|_| panic!("injected panic")))
            .await;
        let close = victim_rx.closed().await.expect("closed with a reason");
        assert_eq!(close.code, 1011);
        assert_eq!(metrics.document_panics.get(), 1);
        while registry.is_loaded("victim") {
            tokio::task::yield_now().await;
        }
        // The other document still serves its connection.
        assert!(!other_rx.is_closed());
        let state = registry.read("bystander", false).await.unwrap();
        assert_eq!(state.texts.get("u").map(String::as_str), Some("fine"));
        // Reloaded from storage with its text.
        let (s, _rx) = sink();
        let _again = registry.join("victim", writer(), s).await.unwrap();
        let state = registry.read("victim", false).await.unwrap();
        assert_eq!(state.texts.get("t").map(String::as_str), Some("kept"));
        drop(victim);
    }

    fn replicated(update: &[u8]) -> Replicated {
        Replicated {
            author: "bob".into(),
            update: Bytes::copy_from_slice(update),
        }
    }

    /// An update another node stored reaches this node's connections and subscribers at its
    /// sid, is not stored again here, and a repeated delivery is ignored.
    #[tokio::test]
    async fn a_replicated_update_is_broadcast_published_and_not_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap());
        let config = Arc::new(Config::default_for(dir.path()));
        let registry = Registry::new(store.clone(), Metrics::new(), config, None);
        // Not loaded: nothing to do (the document loads from the store).
        let remote = tandem_engine::Document::new(9)
            .insert("bob", "t", 0, "hi")
            .unwrap();
        registry
            .apply_replicated("d", 1, vec![replicated(&remote)])
            .await;
        assert!(!registry.is_loaded("d"));

        let (s, mut rx) = sink();
        let _conn = registry.join("d", writer(), s).await.unwrap();
        let mut sub = registry.subscribe("d", false).await.unwrap();
        assert_eq!(sub.state.sid, 0);
        while rx.try_recv().is_some() {}
        registry
            .apply_replicated("d", 1, vec![replicated(&remote)])
            .await;
        registry
            .apply_replicated("d", 1, vec![replicated(&remote)])
            .await;
        match sub.feed.recv().await.unwrap() {
            FeedItem::Update(p) => {
                assert_eq!((p.sid, p.author.as_str()), (1, "bob"));
                assert!(!p.changes.is_empty());
            }
            other => panic!("expected the update, got {other:?}"),
        }
        let frame = rx.recv().await.unwrap();
        assert_eq!(&frame[..2], &[0, 2], "a sync update frame");
        let state = registry.read("d", false).await.unwrap();
        assert_eq!(
            (state.sid, state.texts.get("t").map(String::as_str)),
            (1, Some("hi"))
        );
        // Applied once: the duplicate changed nothing and produced no second event.
        assert!(sub.feed.try_recv().is_err());
        assert!(rx.try_recv().is_none());
        // Not stored here: the other node's store has it.
        assert_eq!(store.load("d").await.unwrap(), None);
    }

    /// A batch another node committed is published update by update, but reaches each
    /// connection as one merged frame.
    #[tokio::test]
    async fn a_replicated_batch_reaches_a_connection_as_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap());
        let config = Arc::new(Config::default_for(dir.path()));
        let registry = Registry::new(store, Metrics::new(), config, None);
        let mut other = tandem_engine::Document::new(9);
        let batch: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, s)| replicated(&other.insert("bob", "t", i as u32, s).unwrap()))
            .collect();

        let (s, mut rx) = sink();
        let _conn = registry.join("d", writer(), s).await.unwrap();
        let mut sub = registry.subscribe("d", false).await.unwrap();
        while rx.try_recv().is_some() {}
        registry.apply_replicated("d", 1, batch).await;
        for sid in 1..=3 {
            match sub.feed.recv().await.unwrap() {
                FeedItem::Update(p) => assert_eq!(p.sid, sid),
                other => panic!("expected update {sid}, got {other:?}"),
            }
        }
        let frame = rx.recv().await.unwrap();
        assert_eq!(&frame[..2], &[0, 2], "a sync update frame");
        assert!(rx.try_recv().is_none(), "one frame for the batch");
        let mut replica = tandem_engine::Document::new(5);
        // After the message and sync kinds, a one-byte length (the update is short).
        replica.apply_update(&frame[3..], None).unwrap();
        assert_eq!(replica.text("t").as_deref(), Some("abc"));
        let state = registry.read("d", false).await.unwrap();
        assert_eq!(state.sid, 3);
    }
}
