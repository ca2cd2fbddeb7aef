//! The owner task of one loaded document: loads it, then runs the command loop over its
//! engine [`Room`] until the document unloads.
//!
//! Each turn handles up to [`COMMAND_BATCH`] waiting commands, then flushes what they produced
//! to the connections ([`super::fanout`]), starts storing what was accepted
//! ([`super::commit`]), and compacts when due ([`super::compaction`]). Durable updates are
//! acknowledged and published to event streams ([`super::feed`]). HTTP writes with an
//! idempotency key go through [`super::keys`] first. A panic inside an engine call
//! fails only this document: its connections are closed (1011) and the next one reloads it.
//!
//! With several nodes sharing the store ([`Context::bus`], [`Store::is_shared`]): the document
//! follows the bus before it loads; durable updates are taken in sid order ([`super::sequence`]),
//! others' as they arrive over the bus, a gap read from the store after `--gap-timeout`; frames
//! carrying an accepted update wait for its commit ([`Commit::hold`]); this node's committed
//! updates and its connections' presence go out on the bus; and a conditional register write
//! is decided under the document's write lock in the store, against every update committed
//! before it ([`Store::lock`]), so every node sees the same winner.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_engine::protocol::{self, ConnId, FieldWrite, Limits, Outgoing, Output, Room, To};
use tandem_engine::{Document, ProtocolError};

use super::command::{Command, JoinReply, Reply};
use super::commit::{Commit, Durable, Held, PendingKey, Waiter};
use super::compaction::Compactor;
use super::fanout::{self, Behind, Fanout};
use super::feed::Feed;
use super::keys::{KeyId, Keys, Parked};
use super::notifier::{Job, Notifier};
use super::notify::{Watch, SETTLE};
use super::queue;
use super::refusal::protocol_error_close;
use super::sequence::{Next, Remote, Sequence};
use super::{
    Answered, DocError, DocState, FeedItem, JoinError, Published, Write, WriteRequest, Written,
};
use crate::base::clock::now_ms;
use crate::base::close::{code, Close};
use crate::base::limit::LimitKind;
use crate::infra::bus::{Bus, DocMessage, Replicated};
use crate::infra::config::Config;
use crate::infra::metrics::Metrics;
use crate::infra::store::{KeyRecord, Locked, NewUpdate, Sid, Since, Store, StoreError};

/// Commands handled before the produced frames are flushed to the connections.
const COMMAND_BATCH: usize = 64;
/// How often awareness states are swept for expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// What a document task needs from the server.
#[derive(Clone)]
pub(super) struct Context {
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub config: Arc<Config>,
    /// The bus to the other nodes sharing the store, when there are any.
    pub bus: Option<Arc<dyn Bus>>,
    /// Where notifications go (none in tests that do not need them).
    pub notifier: Option<Notifier>,
}

type Pending<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// What a read of a gap found: the updates after the document's last taken sid, or, when the
/// log no longer reaches back there (another node compacted it), the whole stored document.
enum Fetched {
    Since(Since),
    Reload(Option<crate::infra::store::Loaded>),
}

/// This node's committed batch, waiting for its turn in sid order.
struct LocalBatch {
    updates: Vec<Durable>,
    held: Vec<Held>,
}

/// A write decided under the document's write lock (several nodes, conditional writes).
enum Exclusive {
    /// An HTTP write.
    Write(WriteRequest, Reply<Answered>),
    /// A connection's frame (one with a conditional register write, or any frame of a
    /// connection that has one waiting, so its frames keep their order).
    Frame(ConnId, Bytes, Instant),
}

/// Takes the document out of the registry (called once, when it stops taking commands).
pub(super) type Forget = Box<dyn FnOnce() + Send + Sync>;

pub(super) struct DocTask {
    ctx: Context,
    name: String,
    rx: queue::Receiver<Command>,
    forget: Option<Forget>,
}

/// A document as loaded from the store.
struct Loaded {
    /// Whether the store had the document.
    exists: bool,
    room: Room,
    last_sid: Sid,
    /// Compaction bookkeeping: the log since the snapshot, history since the checkpoint.
    compactor: Compactor,
}

impl DocTask {
    pub(super) fn new(
        ctx: Context,
        name: String,
        rx: queue::Receiver<Command>,
        forget: Forget,
    ) -> Self {
        DocTask {
            ctx,
            name,
            rx,
            forget: Some(forget),
        }
    }

    /// Leaves the registry: commands sent from now on go to a fresh task.
    fn forget(&mut self) {
        if let Some(forget) = self.forget.take() {
            forget();
        }
    }

    fn limits(config: &Config) -> Limits {
        let l = &config.limits;
        Limits {
            max_frame: l.max_frame_bytes,
            max_awareness_state: l.max_awareness_bytes,
            max_pending: l.max_pending_updates,
            max_document: l.max_document_bytes,
            ..Limits::default()
        }
    }

    /// Boxed, like the running document: the task's future keeps room for whatever a load
    /// or start hands over, for the document's whole life.
    async fn load(&self, ctx: &Context) -> Result<Box<Loaded>, StoreError> {
        let stored = ctx.store.load(&self.name).await?;
        let mut doc = Document::new(fastrand::u64(1..tandem_engine::wire::MAX_SAFE_INTEGER));
        let limits = Self::limits(&ctx.config);
        let Some(stored) = stored else {
            return Ok(Box::new(Loaded {
                exists: false,
                room: Room::new(doc, limits),
                last_sid: 0,
                compactor: Compactor::new(ctx.config.history.clone()),
            }));
        };
        let corrupt = |detail: String| StoreError::Corrupt {
            doc: self.name.clone(),
            detail,
        };
        if let Some(snapshot) = &stored.snapshot {
            doc.apply_update(&snapshot.state, None)
                .map_err(|e| corrupt(format!("snapshot at sid {}: {e}", snapshot.sid)))?;
        }
        for entry in &stored.updates {
            doc.apply_update(&entry.update, None)
                .map_err(|e| corrupt(format!("update at sid {}: {e}", entry.sid)))?;
        }
        Ok(Box::new(Loaded {
            exists: true,
            room: Room::new(doc, limits),
            last_sid: stored.last_sid,
            compactor: Compactor::loaded(ctx.config.history.clone(), &stored),
        }))
    }

    /// The running document around what was loaded. Not async: what it takes apart would
    /// otherwise keep its room in the task's future next to the running document's. Boxed:
    /// the task's future then holds a pointer, not a copy of the document's state beside
    /// the room its `select!` and the load's result take.
    fn start(&self, ctx: Context, loaded: Box<Loaded>) -> Box<Running> {
        let mut loaded = *loaded;
        let shared = ctx.store.is_shared();
        // Local presence changes are encoded for the other nodes only when there are some.
        loaded.room.set_publishing(ctx.bus.is_some());
        if let Some(bus) = &ctx.bus {
            // Other nodes serving the document republish their connections' presence.
            bus.publish(&self.name, DocMessage::Query);
        }
        let mut doc = Box::new(Running {
            name: self.name.clone(),
            commit: Commit::new(
                Arc::clone(&ctx.store),
                ctx.metrics.clone(),
                loaded.last_sid,
                ctx.notifier
                    .as_ref()
                    .map(|n| n.webhooks().clone())
                    .unwrap_or_default(),
            ),
            watch: ctx
                .notifier
                .as_ref()
                .map(|n| Watch::new(loaded.room.document(), n.config())),
            settle_at: None,
            present: HashMap::new(),
            sequence: Sequence::new(loaded.last_sid),
            shared,
            gap_deadline: None,
            fetching: None,
            compacting: None,
            locking: None,
            exclusive: VecDeque::new(),
            parked: HashSet::new(),
            under_lock: false,
            ctx,
            room: loaded.room,
            exists: loaded.exists,
            compactor: loaded.compactor,
            fanout: Fanout::default(),
            feed: Feed::default(),
            keys: Keys::default(),
            failed: false,
            shutting_down: false,
        });
        if doc.watch.is_some() {
            doc.feed.keep_on(&mut doc.room);
        }
        doc
    }

    pub(super) async fn run(mut self) {
        let ctx = self.ctx.clone();
        let metrics = ctx.metrics.clone();
        // Followed before loading: what another node commits after the load arrives.
        if let Some(bus) = &ctx.bus {
            Box::pin(bus.follow(&self.name)).await;
        }
        // Boxed: the load runs once, and its future would otherwise be part of the task's
        // future for the document's whole life.
        let loaded = match Box::pin(self.load(&ctx)).await {
            Ok(l) => {
                metrics.document_loads.inc();
                l
            }
            Err(e) => {
                metrics.document_load_failures.inc();
                tracing::error!(doc = %self.name, cause = %e, "document load failed");
                if let Some(bus) = &ctx.bus {
                    bus.unfollow(&self.name);
                }
                self.forget();
                let error = match e {
                    StoreError::Unavailable { .. } => JoinError::Unavailable,
                    _ => JoinError::LoadFailed,
                };
                Box::pin(self.refuse_all(error)).await;
                return;
            }
        };
        metrics.documents_loaded.inc();
        let mut doc = self.start(ctx, loaded);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        // Whatever else is already waiting joins this batch (bounded, so
                        // storage and timers still get their turn). Made per turn: an idle
                        // document keeps no room for commands.
                        let mut batch = Vec::with_capacity(COMMAND_BATCH);
                        batch.push(cmd);
                        while batch.len() < COMMAND_BATCH {
                            match self.rx.try_recv() {
                                Some(cmd) => batch.push(cmd),
                                None => break,
                            }
                        }
                        doc.commands(batch);
                    }
                    None => break,
                },
                result = doc.commit.stored(), if doc.commit.in_flight() => doc.stored(result),
                result = pending(&mut doc.locking), if doc.locking.is_some() => {
                    doc.locking = None;
                    doc.locked(result);
                }
                result = pending(&mut doc.fetching), if doc.fetching.is_some() => {
                    doc.fetching = None;
                    doc.fetched(result);
                }
                result = pending(&mut doc.compacting), if doc.compacting.is_some() => {
                    doc.compacting = None;
                    doc.compacted(result);
                }
                _ = sleep_until(doc.gap_deadline), if doc.gap_deadline.is_some() => doc.fetch(),
                _ = sleep_until(doc.settle_at), if doc.settle_at.is_some() => doc.settle(),
                (id, found) = doc.keys.looked_up(), if doc.keys.looking_up() => {
                    doc.key_looked_up(id, found);
                }
                _ = sweep.tick() => doc.sweep(),
            }
            doc.flush();
            if !doc.commit.in_flight() && doc.locking.is_none() {
                if doc.exclusive.is_empty() || doc.fetching.is_some() {
                    doc.submit();
                } else {
                    doc.lock();
                }
                if !doc.commit.in_flight() && doc.locking.is_none() {
                    if doc.shared {
                        // Beside the task: other nodes' appends keep coming.
                        doc.compact_if_due();
                    } else {
                        // One node: stored before the task goes on, so a read of the history
                        // after a write's answer finds the checkpoint that write made due.
                        doc.compact_now().await;
                    }
                }
            }
            let idle = doc.fanout.is_empty()
                && doc.feed.is_empty()
                && doc.commit.is_idle()
                && doc.keys.is_idle()
                && doc.exclusive.is_empty()
                && doc.locking.is_none()
                && doc.fetching.is_none()
                && doc.compacting.is_none()
                && doc.settle_at.is_none();
            if idle || (doc.failed && !doc.commit.in_flight()) {
                doc.compact_now().await;
                break;
            }
        }
        // Unload: leave the registry, then send whatever is still queued to a fresh task.
        if let Some(bus) = &self.ctx.bus {
            bus.unfollow(&self.name);
        }
        self.forget();
        self.rx.close();
        while let Some(cmd) = self.rx.recv().await {
            if let Command::Join { sink, reply, .. } = cmd {
                let _ = reply.send(JoinReply::Retry(sink));
            }
        }
        metrics.documents_loaded.dec();
        metrics.document_unloads.inc();
        tracing::debug!(doc = %self.name, "document unloaded");
    }

    /// The load failed: answers every queued command with `error`.
    async fn refuse_all(&mut self, error: JoinError) {
        self.rx.close();
        while let Some(cmd) = self.rx.recv().await {
            let failed = DocError::Join(error.clone());
            match cmd {
                Command::Join { reply, .. } => {
                    let _ = reply.send(JoinReply::Failed(error.clone()));
                }
                Command::Read { reply, .. } => drop(reply.send(Err(failed))),
                Command::Subscribe { reply, .. } => drop(reply.send(Err(failed))),
                Command::Write { reply, .. } => drop(reply.send(Err(failed))),
                Command::Replicated { .. }
                | Command::Behind { .. }
                | Command::RemoteAwareness { .. }
                | Command::OriginGone { .. }
                | Command::Republish { .. }
                | Command::Frame { .. }
                | Command::Leave { .. }
                | Command::Shutdown => {}
                #[cfg(test)]
                Command::Run(_) => {}
            }
        }
    }
}

/// A loaded document and everything its owner task keeps for it.
struct Running {
    name: String,
    ctx: Context,
    room: Room,
    /// Whether the document has ever been written.
    exists: bool,
    fanout: Fanout,
    commit: Commit,
    feed: Feed,
    compactor: Compactor,
    /// Idempotency keys whose first request is being carried out.
    keys: Keys,
    /// Set after a storage failure or a panic: the document stops serving and unloads.
    failed: bool,
    shutting_down: bool,
    /// Durable updates in sid order (this node's and, with several nodes, others').
    sequence: Sequence<LocalBatch>,
    /// Whether other nodes share the store.
    shared: bool,
    /// When a gap in the sequence is read from the store.
    gap_deadline: Option<tokio::time::Instant>,
    /// A read of a gap from the store.
    fetching: Option<Pending<Fetched>>,
    /// A compaction being stored: the sid it folds the log up to, and when the checkpoint it
    /// keeps was made (see [`Running::compact_if_due`]).
    compacting: Option<Pending<(Sid, Option<u64>)>>,
    /// Taking the document's write lock, for the writes in `exclusive`.
    locking: Option<Pending<Box<dyn Locked>>>,
    /// Writes waiting to be decided under the write lock.
    exclusive: VecDeque<Exclusive>,
    /// Connections with a frame in `exclusive`.
    parked: HashSet<ConnId>,
    /// Set while the writes in `exclusive` are carried out under the lock.
    under_lock: bool,
    /// Notification bookkeeping, when there is a notifier.
    watch: Option<Watch>,
    /// When the changes the watch collected are settled.
    settle_at: Option<tokio::time::Instant>,
    /// Users with connections open here, and how many (presence webhooks).
    present: HashMap<String, (usize, Vec<ConnId>)>,
}

/// Waits for an optional operation (guard the `select!` branch with `is_some`).
async fn pending<T>(op: &mut Option<Pending<T>>) -> Result<T, StoreError> {
    match op.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Running {
    /// Handles a batch of commands in order. Consecutive frames of one connection that are
    /// plain updates go to the room together ([`Room::handle_updates`]).
    fn commands(&mut self, batch: Vec<Command>) {
        let mut cmds = batch.into_iter().peekable();
        while let Some(cmd) = cmds.next() {
            match cmd {
                Command::Frame {
                    conn,
                    frame,
                    received,
                } if self.takes_updates(conn, &frame) => {
                    let mut frames = vec![frame];
                    while let Some(Command::Frame { frame, .. }) = cmds.next_if(|next| {
                        matches!(next, Command::Frame { conn: c, frame, .. }
                            if *c == conn && protocol::plain_update(frame).is_some())
                    }) {
                        frames.push(frame);
                    }
                    self.frames(conn, &frames, received);
                }
                cmd => self.command(cmd),
            }
        }
    }

    /// Whether `frame` from `conn` is a plain update the room takes now.
    fn takes_updates(&self, conn: ConnId, frame: &[u8]) -> bool {
        self.fanout.contains(conn)
            && protocol::plain_update(frame).is_some()
            && !self.waits_for_lock(conn, frame)
    }

    /// Whether `frame` from `conn` waits for an exclusive turn under the document's write
    /// lock (several nodes: a conditional register write, and what its connection sends
    /// after it).
    fn waits_for_lock(&self, conn: ConnId, frame: &[u8]) -> bool {
        self.shared
            && !self.under_lock
            && (self.parked.contains(&conn) || protocol::holds_conditional_write(frame))
    }

    /// Frames from `conn` for the room, the first received at `received`.
    fn frames(&mut self, conn: ConnId, frames: &[Bytes], received: Instant) {
        let now = now_ms();
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        self.ctx.metrics.bytes_received.add(bytes as u64);
        if let Some(out) = self.guarded(|room| room.handle_updates(conn, frames, now)) {
            self.dispatch(out, Some((conn, received)));
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = now_ms();
        match cmd {
            Command::Join {
                conn,
                info,
                sink,
                reply,
            } => {
                if self.failed || self.shutting_down {
                    let _ = reply.send(JoinReply::Retry(sink));
                    return;
                }
                if let Some(user) = &info.user {
                    self.presence(conn, user, true);
                }
                self.fanout.add(conn, &info, sink);
                let out = self.guarded(|room| room.join(conn, *info, now));
                let _ = reply.send(JoinReply::Joined);
                if let Some(out) = out {
                    self.dispatch(out, None);
                }
            }
            Command::Frame {
                conn,
                frame,
                received,
            } => {
                if !self.fanout.contains(conn) {
                    return;
                }
                if self.waits_for_lock(conn, &frame) {
                    self.parked.insert(conn);
                    self.exclusive
                        .push_back(Exclusive::Frame(conn, frame, received));
                    return;
                }
                self.frames(conn, &[frame], received);
            }
            Command::Leave { conn } => {
                self.left(conn);
                if self.fanout.remove(conn) {
                    if let Some(out) = self.guarded(|room| room.leave(conn, now)) {
                        self.dispatch(out, None);
                    }
                }
            }
            Command::Read { with_update, reply } => {
                let result = if self.exists {
                    Ok(self.state(with_update))
                } else {
                    Err(DocError::NotFound)
                };
                let _ = reply.send(result);
            }
            Command::Subscribe {
                feed,
                with_update,
                reply,
            } => {
                // A document nobody has written yet can be followed (its first write arrives
                // as an event); following it stores nothing.
                let presence = self.feed.subscribe(feed, &mut self.room, now);
                let _ = reply.send(Ok((self.state(with_update), presence)));
            }
            Command::Write { request, reply } => self.write(*request, reply, now),
            Command::Replicated { first, updates } => {
                for (sid, Replicated { author, update }) in (first..).zip(updates) {
                    self.sequence.remote(Remote {
                        sid,
                        update,
                        author,
                    });
                }
                self.take();
            }
            Command::Behind { sid } => {
                self.sequence.saw(sid);
                self.take();
            }
            Command::RemoteAwareness { origin, payload } => {
                match self.guarded(|room| room.remote_awareness(origin, &payload, now)) {
                    Some(Ok(out)) => self.dispatch(out, None),
                    Some(Err(e)) => {
                        tracing::warn!(doc = %self.name, cause = %e, "presence from another node refused");
                    }
                    None => {}
                }
            }
            Command::OriginGone { origin } => {
                if let Some(out) = self.guarded(|room| room.remove_origin(origin, now)) {
                    self.dispatch(out, None);
                }
            }
            Command::Republish { ask } => {
                self.republish();
                if let (true, Some(bus)) = (ask, &self.ctx.bus) {
                    bus.publish(&self.name, DocMessage::Query);
                }
            }
            #[cfg(test)]
            Command::Run(f) => {
                self.guarded(f);
            }
            Command::Shutdown => {
                self.shutting_down = true;
                // Event streams end now (their clients resume elsewhere), so the document
                // unloads as soon as what it holds is stored.
                self.feed.clear();
                for id in self.fanout.ids() {
                    self.close(id, Close::new(code::GOING_AWAY, "server shutting down"));
                }
            }
        }
    }

    /// An HTTP write: at once without a key; with one, through [`super::keys`].
    fn write(&mut self, request: WriteRequest, reply: Reply<Answered>, now: u64) {
        match &request.key {
            None => self.write_now(request, reply, now),
            Some(key) => {
                let id: KeyId = (request.user.clone(), key.key.clone());
                let parked = Parked {
                    fingerprint: key.fingerprint,
                    request,
                    reply,
                };
                let store = Arc::clone(&self.ctx.store);
                if let Some(p) = self.keys.admit(id, parked, false, &store, &self.name) {
                    self.write_now(p.request, p.reply, now);
                }
            }
        }
    }

    /// A key's lookup answered: runs the requests that waited for it when the key is unused.
    fn key_looked_up(&mut self, id: KeyId, found: Result<Option<KeyRecord>, StoreError>) {
        let now = now_ms();
        let store = Arc::clone(&self.ctx.store);
        for parked in self.keys.lookup_done(&id, found) {
            if let Some(p) = self
                .keys
                .admit(id.clone(), parked, true, &store, &self.name)
            {
                self.write_now(p.request, p.reply, now);
            }
        }
    }

    /// Carries out a write and answers it once durable. With a key, the answer is stored with
    /// the write (see [`super::keys`]). With several nodes, a conditional register write waits
    /// for the document's write lock.
    fn write_now(&mut self, request: WriteRequest, reply: Reply<Answered>, now: u64) {
        let conditional = matches!(
            request.write,
            Write::Field {
                expected: Some(_),
                ..
            }
        );
        if self.shared && conditional && !self.under_lock {
            self.exclusive.push_back(Exclusive::Write(request, reply));
            return;
        }
        let WriteRequest {
            user,
            write,
            key,
            render,
        } = request;
        let written = match self.perform(&user, write, now) {
            Ok(written) if !self.failed => written,
            Ok(_) => {
                let _ = reply.send(Err(DocError::Storage));
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let answer = render(&written);
        match key {
            Some(key) => {
                let id: KeyId = (user, key.key);
                self.commit.push_key(PendingKey {
                    id: id.clone(),
                    fingerprint: key.fingerprint,
                    answer: answer.clone(),
                });
                self.keys.pending(id, key.fingerprint, answer, reply);
            }
            // Nothing was written: nothing to wait for.
            None if matches!(written, Written::Stale { .. }) => {
                let sid = self.sequence.taken();
                let _ = reply.send(Ok(Answered {
                    answer,
                    sid,
                    replayed: false,
                }));
            }
            None => self.when_durable(Box::new(move |r| {
                drop(reply.send(r.map(|sid| Answered {
                    answer,
                    sid,
                    replayed: false,
                })))
            })),
        }
    }

    /// Applies a write to the room; what it changed is queued for storage.
    fn perform(&mut self, user: &str, write: Write, now: u64) -> Result<Written, DocError> {
        match write {
            Write::Update(update) => {
                let mut out = self
                    .guarded(|room| room.apply_update(&update, Some(user), now))
                    .ok_or(DocError::Storage)?
                    .map_err(refused)?;
                let error = out.error.take();
                self.dispatch(out, None);
                match error {
                    Some(e) => Err(refused(e)),
                    None => Ok(Written::Update),
                }
            }
            Write::Field {
                name,
                value,
                expected,
            } => {
                tandem_engine::document::check_name(&name)
                    .map_err(|e| DocError::Invalid(e.to_string()))?;
                let (write, out) = self
                    .guarded(|room| room.set_field(user, &name, value, expected.as_deref(), now))
                    .ok_or(DocError::Storage)?
                    .map_err(refused)?;
                match write {
                    FieldWrite::Rejected(current) => Ok(Written::Stale { current }),
                    FieldWrite::Accepted(state) => {
                        self.dispatch(out, None);
                        Ok(Written::Field { name, state })
                    }
                }
            }
            Write::Text {
                field,
                index,
                delete,
                insert,
            } => {
                let out = self
                    .guarded(|room| room.edit_text(user, &field, index, delete, &insert, now))
                    .ok_or(DocError::Storage)?
                    .map_err(refused)?;
                self.dispatch(out, None);
                let text = self.room.document().text(&field).unwrap_or_default();
                Ok(Written::Text { field, text })
            }
        }
    }

    /// Takes what is at its turn in the sequence: others' updates are applied and published,
    /// this node's batches published and acknowledged. A gap left behind is read from the
    /// store after `--gap-timeout`.
    fn take(&mut self) {
        let mut run = Vec::new();
        while let Some(next) = self.sequence.next() {
            match next {
                Next::Remote(remote) => self.apply_remote(remote, &mut run),
                Next::Local { batch, after } => {
                    self.broadcast_run(&mut run);
                    self.local_durable(batch, after);
                }
            }
        }
        self.broadcast_run(&mut run);
        self.commit.saw(self.sequence.taken());
        if self.sequence.gap() {
            if self.gap_deadline.is_none() && self.fetching.is_none() {
                let wait = self.ctx.config.cluster.gap_timeout;
                self.gap_deadline = Some(tokio::time::Instant::now() + wait);
            }
        } else {
            self.gap_deadline = None;
        }
    }

    /// Broadcasts the updates of a run of other nodes' updates taken together as one merged
    /// update frame: a batch committed elsewhere reaches each connection as one frame, not one
    /// per update (so a burst from another node costs a connection's queue one slot).
    fn broadcast_run(&mut self, run: &mut Vec<Bytes>) {
        let merged = match run.len() {
            0 => return,
            1 => None,
            _ => {
                let parts: Vec<&[u8]> = run.iter().map(|u| u.as_ref()).collect();
                tandem_engine::merge_updates(&parts)
                    .inspect_err(|e| {
                        // Each was applied on its own, so each can go on its own.
                        tracing::warn!(doc = %self.name, cause = %e, "other nodes' updates not merged");
                    })
                    .ok()
            }
        };
        let frame = |update: &[u8]| Outgoing {
            to: To::All,
            frame: protocol::sync_frame(protocol::SYNC_UPDATE, update),
        };
        let frames = match merged {
            Some(update) => vec![frame(&update)],
            None => run.iter().map(|u| frame(u)).collect(),
        };
        run.clear();
        self.fanout.queue(frames, None);
    }

    /// An update another node stored: applied and broadcast to this document's connections and
    /// subscribers, not stored again. Its broadcast joins `run` (see
    /// [`Running::broadcast_run`]) when it is the one update frame applying it made.
    fn apply_remote(&mut self, remote: Remote, run: &mut Vec<Bytes>) {
        let Remote {
            sid,
            update,
            author,
        } = remote;
        let now = now_ms();
        self.ctx.metrics.replicated_updates.inc();
        let author_ref = (!author.is_empty()).then_some(author.as_str());
        let Some(result) = self.guarded(|room| room.apply_stored(&update, author_ref, now)) else {
            return;
        };
        let mut out = match result {
            Ok(out) => out,
            Err(e) => {
                // The replica cannot follow the store: reload it rather than serve it behind.
                tracing::error!(doc = %self.name, sid, cause = %e, "a stored update could not be applied");
                return self.fail(
                    code::DOCUMENT_FAILED,
                    "document failed; reconnect to reload it",
                );
            }
        };
        match out.messages.as_slice() {
            [] => {}
            [Outgoing { to: To::All, .. }] => run.push(update.clone()),
            _ => {
                self.broadcast_run(run);
                self.fanout.queue(std::mem::take(&mut out.messages), None);
            }
        }
        self.exists = true;
        self.compactor.replicated(&author);
        let changes: Vec<_> = out.accepted.into_iter().flat_map(|a| a.changes).collect();
        self.watch_changes(&changes, &author, false);
        if !self.feed.is_empty() {
            let item = FeedItem::Update(Arc::new(Published {
                sid,
                update,
                author,
                changes,
            }));
            self.feed.publish(item, &mut self.room);
        }
    }

    /// Reads the gap in the sequence from the store.
    fn fetch(&mut self) {
        self.gap_deadline = None;
        if self.failed || !self.sequence.gap() || self.fetching.is_some() {
            return;
        }
        self.ctx.metrics.replication_gap_reads.inc();
        let store = Arc::clone(&self.ctx.store);
        let name = self.name.clone();
        let after = self.sequence.taken();
        self.fetching = Some(Box::pin(async move {
            match store.updates_since(&name, after).await? {
                Since::Compacted { .. } => Ok(Fetched::Reload(store.load(&name).await?)),
                since => Ok(Fetched::Since(since)),
            }
        }));
    }

    /// Reads the whole stored document (the log no longer reaches back to what this replica
    /// has taken).
    fn reload(&mut self) {
        let store = Arc::clone(&self.ctx.store);
        let name = self.name.clone();
        self.fetching = Some(Box::pin(async move {
            Ok(Fetched::Reload(store.load(&name).await?))
        }));
    }

    fn fetched(&mut self, result: Result<Fetched, StoreError>) {
        let result = match result {
            Ok(Fetched::Reload(loaded)) => return self.rebase(loaded),
            Ok(Fetched::Since(since)) => Ok(since),
            Err(e) => Err(e),
        };
        match result {
            Ok(Since::Updates { entries, last_sid }) => self.stored_entries(entries, last_sid),
            // Nothing after what was asked for: the sid that was seen is not committed yet.
            Ok(Since::Ahead { .. }) => self.take(),
            // Answered by the reload above.
            Ok(Since::Compacted { .. }) => {}
            Err(e) => self.storage_failed(&e),
        }
    }

    /// Brings the replica past a snapshot another node made: the snapshot's state is merged
    /// into it (Yjs updates merge whatever the replica already holds), the log after it taken
    /// in order. Event streams of this document end (they resume from the store, which gives
    /// them a fresh snapshot), since the events up to the snapshot are gone from the log.
    fn rebase(&mut self, loaded: Option<crate::infra::store::Loaded>) {
        let Some(loaded) = loaded else {
            return self.fail(
                code::DOCUMENT_FAILED,
                "document failed; reconnect to reload it",
            );
        };
        if let Some(snapshot) = &loaded.snapshot {
            if snapshot.sid > self.sequence.taken() {
                let now = now_ms();
                self.ctx.metrics.replication_rebases.inc();
                tracing::info!(doc = %self.name, sid = snapshot.sid, "taking a snapshot another node made");
                let state = snapshot.state.clone();
                match self.guarded(|room| room.apply_stored(&state, None, now)) {
                    Some(Ok(mut out)) => {
                        self.fanout.queue(std::mem::take(&mut out.messages), None);
                    }
                    Some(Err(e)) => {
                        tracing::error!(doc = %self.name, cause = %e, "a stored snapshot could not be applied");
                        return self.fail(
                            code::DOCUMENT_FAILED,
                            "document failed; reconnect to reload it",
                        );
                    }
                    None => return,
                }
                self.room.compacted();
                self.exists = true;
                self.feed.clear();
                self.sequence.skip_to(snapshot.sid);
                self.compactor = Compactor::loaded(self.ctx.config.history.clone(), &loaded);
            }
        }
        self.stored_entries(loaded.updates, loaded.last_sid);
    }

    /// Log entries read from the store (up to `last_sid`) take their turn in the sequence.
    fn stored_entries(&mut self, entries: Vec<crate::infra::store::LogEntry>, last_sid: Sid) {
        self.sequence.saw(last_sid);
        for e in entries {
            self.sequence.remote(Remote {
                sid: e.sid,
                update: e.update,
                author: e.author,
            });
        }
        self.take();
    }

    /// Takes the document's write lock for the writes waiting in `exclusive`.
    fn lock(&mut self) {
        if self.failed {
            return;
        }
        let store = Arc::clone(&self.ctx.store);
        let name = self.name.clone();
        let after = self.sequence.taken();
        self.locking = Some(Box::pin(async move { store.lock(&name, after).await }));
    }

    /// Holding the write lock: takes what other nodes committed before it, decides the
    /// waiting writes against that, and stores them through the lock (which releases it).
    fn locked(&mut self, result: Result<Box<dyn Locked>, StoreError>) {
        let lock = match result {
            Ok(lock) => lock,
            Err(e) => return self.storage_failed(&e),
        };
        match lock.since().clone() {
            Since::Updates { entries, last_sid } => self.stored_entries(entries, last_sid),
            Since::Ahead { .. } => {}
            Since::Compacted { .. } => {
                // Released; taken again once the replica is past the snapshot.
                drop(lock);
                return self.reload();
            }
        }
        self.under_lock = true;
        let now = now_ms();
        for item in std::mem::take(&mut self.exclusive) {
            match item {
                Exclusive::Write(request, reply) => self.write_now(request, reply, now),
                Exclusive::Frame(conn, frame, received) => self.command(Command::Frame {
                    conn,
                    frame,
                    received,
                }),
            }
        }
        self.parked.clear();
        self.under_lock = false;
        if self.failed {
            return;
        }
        let bytes = self.commit.submit_locked(&self.name, lock);
        if bytes > 0 {
            self.compactor.submitted(bytes);
        }
    }

    /// Publishes this node's connections' presence of the document to the other nodes.
    fn republish(&mut self) {
        if let (Some(bus), Some(payload)) = (&self.ctx.bus, self.room.local_awareness()) {
            bus.publish(&self.name, DocMessage::Awareness { payload });
        }
    }

    /// A storage operation failed: the document stops serving (its connections reconnect and
    /// reload it); a database out of reach gets the "try again" close.
    fn storage_failed(&mut self, e: &StoreError) {
        tracing::error!(doc = %self.name, cause = %e, "storage failed");
        match e {
            StoreError::Unavailable { .. } => {
                self.fail(code::STORAGE_UNAVAILABLE, "storage unavailable; try again")
            }
            _ => self.fail(
                code::DOCUMENT_FAILED,
                "storage failure; reconnect to resync",
            ),
        }
    }

    /// Runs an engine call, isolating a panic: the document is then dropped (its connections
    /// closed) and reloaded from storage by the next connection.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Room) -> T) -> Option<T> {
        if self.failed {
            return None;
        }
        match catch_unwind(AssertUnwindSafe(|| f(&mut self.room))) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::error!(doc = %self.name, "document panicked; unloading it");
                self.ctx.metrics.document_panics.inc();
                self.fail(
                    code::DOCUMENT_FAILED,
                    "document failed; reconnect to reload it",
                );
                None
            }
        }
    }

    fn fail(&mut self, code: u16, reason: &str) {
        self.failed = true;
        let error = if code == code::STORAGE_UNAVAILABLE {
            DocError::Unavailable
        } else {
            DocError::Storage
        };
        self.commit.drop_queue(error.clone());
        self.keys.fail(error.clone());
        for item in std::mem::take(&mut self.exclusive) {
            if let Exclusive::Write(_, reply) = item {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.sequence.clear();
        self.gap_deadline = None;
        self.feed.clear();
        for id in self.fanout.ids() {
            self.close(id, Close::new(code, reason));
        }
    }

    fn close(&mut self, conn: ConnId, close: Close) {
        self.left(conn);
        if self.fanout.close(conn, close) && !self.failed {
            let now = now_ms();
            if let Some(out) = self.guarded(|room| room.leave(conn, now)) {
                self.dispatch(out, None);
            }
        }
    }

    /// Takes what the room produced: frames wait in the fan-out until [`Running::flush`],
    /// accepted updates are queued for storage, presence changes go to subscribers.
    fn dispatch(&mut self, mut out: Output, from: Option<(ConnId, Instant)>) {
        // Limits the room enforces without closing anyone: counted here.
        for _ in 0..out.dropped_awareness {
            self.ctx.metrics.limit_breached(LimitKind::AwarenessSize);
        }
        for _ in 0..out.dropped_updates {
            self.ctx.metrics.limit_breached(LimitKind::PendingUpdates);
        }
        if let (Some(bus), Some(payload)) = (&self.ctx.bus, out.awareness_out.take()) {
            bus.publish(&self.name, DocMessage::Awareness { payload });
        }
        // With several nodes, what carries an accepted update waits for its commit.
        let hold = self.shared && !out.accepted.is_empty();
        let messages = std::mem::take(&mut out.messages);
        let held = if hold {
            Some(messages)
        } else {
            self.fanout.queue(messages, from.map(|(_, at)| at));
            None
        };
        for accepted in out.accepted {
            self.ctx.metrics.updates.inc();
            let seq = self.fanout.count_update(accepted.conn);
            self.exists = true;
            let update = NewUpdate {
                update: accepted.update,
                author: accepted.author.unwrap_or_default(),
            };
            self.commit
                .push(accepted.conn, seq, update, accepted.changes);
        }
        if let Some(messages) = held {
            self.commit.hold(messages, from.map(|(_, at)| at));
        }
        if out.presence_changed {
            let sid = self.sequence.taken();
            self.feed.presence_changed(&mut self.room, sid, now_ms());
        }
        if let (Some(err), Some((conn, _))) = (out.error, from) {
            tracing::info!(doc = %self.name, conn, cause = %err, "closing a connection after a protocol error");
            let close = protocol_error_close(&err, &self.ctx.metrics);
            self.close(conn, close);
        }
    }

    /// Hands every frame produced since the last flush to its connections; connections whose
    /// queues were full are resynced or closed ([`super::fanout`]).
    fn flush(&mut self) {
        // Closing a slow reader broadcasts its presence removal: flush again for that.
        while self.fanout.has_outgoing() {
            for id in self.fanout.flush(&self.ctx.metrics) {
                self.behind(id);
            }
        }
    }

    fn behind(&mut self, id: ConnId) {
        let now = Instant::now();
        match self.fanout.behind(id, now) {
            None => {}
            Some(Behind::Close) => {
                self.ctx.metrics.slow_reader_closes.inc();
                tracing::info!(doc = %self.name, conn = id, "closing a slow reader");
                self.close(id, fanout::slow_reader_close());
            }
            Some(Behind::Resync(ack)) => {
                let Some(out) = self.guarded(|room| room.resync(id)) else {
                    return;
                };
                let mut frames: Vec<Bytes> = out.into_iter().map(|o| o.frame).collect();
                if let Some((count, sid)) = ack {
                    frames.push(protocol::ack_frame(count, sid));
                }
                self.ctx.metrics.slow_reader_resyncs.inc();
                tracing::info!(doc = %self.name, conn = id, "resyncing a slow reader");
                self.fanout.resync(id, frames, now);
            }
        }
    }

    /// Starts storing the queued updates as one batch, when none is in flight.
    fn submit(&mut self) {
        if !self.failed {
            let bytes = self.commit.submit(&self.name);
            if bytes > 0 {
                self.compactor.submitted(bytes);
            }
        }
    }

    /// A batch finished storing: it goes out on the bus at once and takes its turn in the
    /// sequence; or the document fails.
    fn stored(&mut self, result: Result<crate::infra::store::SidRange, StoreError>) {
        let error = result.as_ref().err().cloned();
        let finished = self.commit.finish(result);
        if let Some(e) = error {
            return self.storage_failed(&e);
        }
        for (id, sid) in &finished.keys {
            self.keys.durable(id, *sid);
        }
        self.commit.wake_webhooks();
        if let (Some(bus), Some(first)) = (&self.ctx.bus, finished.updates.first()) {
            // One message for the batch: its sids are consecutive.
            debug_assert!((first.sid..)
                .zip(&finished.updates)
                .all(|(s, d)| d.sid == s));
            let updates = finished
                .updates
                .iter()
                .map(|d| Replicated {
                    author: d.update.author.clone(),
                    update: d.update.update.clone(),
                })
                .collect();
            bus.publish(
                &self.name,
                DocMessage::Updates {
                    first: first.sid,
                    updates,
                },
            );
        }
        let batch = LocalBatch {
            updates: finished.updates,
            held: finished.held,
        };
        if batch.updates.is_empty() {
            return self.local_durable(batch, self.sequence.taken());
        }
        let range = finished.range;
        self.sequence.local(range.first, range.last, batch);
        self.take();
    }

    /// This node's batch at its turn: its held frames go out, its updates after `after` are
    /// published to event streams, and its senders are acknowledged.
    fn local_durable(&mut self, batch: LocalBatch, after: Sid) {
        for (frames, received) in batch.held {
            self.fanout.queue(frames, received);
        }
        // The last update of each connection in the batch is acked (acks count updates).
        let mut last_of: Vec<(ConnId, u64, Sid)> = Vec::new();
        for d in batch.updates {
            self.compactor.stored(&d.update.author);
            self.watch_changes(&d.changes, &d.update.author, true);
            if let Some((conn, seq)) = d.conn {
                match last_of.iter_mut().find(|(c, _, _)| *c == conn) {
                    Some(entry) => *entry = (conn, seq, d.sid),
                    None => last_of.push((conn, seq, d.sid)),
                }
            }
            if d.sid > after && !self.feed.is_empty() {
                let item = FeedItem::Update(Arc::new(Published {
                    sid: d.sid,
                    update: d.update.update,
                    author: d.update.author,
                    changes: d.changes,
                }));
                self.feed.publish(item, &mut self.room);
            }
        }
        for (conn, count, sid) in last_of {
            self.fanout.ack(conn, count, sid);
        }
    }

    /// Takes a durable update's changes into the notification watch; starts the settle
    /// window when something waits.
    fn watch_changes(&mut self, changes: &[tandem_engine::Change], author: &str, local: bool) {
        if let Some(watch) = &mut self.watch {
            if watch.changed(changes, author, local) && self.settle_at.is_none() {
                self.settle_at = Some(tokio::time::Instant::now() + SETTLE);
            }
        }
    }

    /// The settle window ended: what the changes mean goes to the notifier.
    fn settle(&mut self) {
        self.settle_at = None;
        let (Some(watch), Some(notifier)) = (&mut self.watch, &self.ctx.notifier) else {
            return;
        };
        if self.failed {
            return;
        }
        let settled = watch.settle(self.room.document(), &self.name);
        if !settled.candidates.is_empty() {
            notifier.send(Job::Candidates(settled.candidates));
        }
        if let Some(entry) = settled.due {
            notifier.send(Job::Due {
                doc: self.name.clone(),
                entry,
            });
        }
    }

    /// A connection of `user` opened (`joined`) here; the user's first one is announced to
    /// presence webhooks.
    fn presence(&mut self, conn: ConnId, user: &str, joined: bool) {
        let Some(notifier) = &self.ctx.notifier else {
            return;
        };
        if !joined || !notifier.webhooks().wants_presence() {
            return;
        }
        let entry = self.present.entry(user.to_owned()).or_default();
        entry.0 += 1;
        entry.1.push(conn);
        if entry.0 == 1 {
            notifier.send(Job::Presence {
                doc: self.name.clone(),
                what: "joined",
                user: user.to_owned(),
            });
        }
    }

    /// A connection left; its user's last one is announced to presence webhooks.
    fn left(&mut self, conn: ConnId) {
        let Some(user) = self
            .present
            .iter()
            .find(|(_, (_, conns))| conns.contains(&conn))
            .map(|(u, _)| u.clone())
        else {
            return;
        };
        let gone = match self.present.get_mut(&user) {
            Some(entry) => {
                entry.1.retain(|c| *c != conn);
                entry.0 = entry.0.saturating_sub(1);
                entry.0 == 0
            }
            None => false,
        };
        if gone {
            self.present.remove(&user);
            if let Some(notifier) = &self.ctx.notifier {
                notifier.send(Job::Presence {
                    doc: self.name.clone(),
                    what: "left",
                    user,
                });
            }
        }
    }

    fn sweep(&mut self) {
        let now = now_ms();
        self.feed.sweep(&mut self.room);
        if let Some(out) = self.guarded(|room| room.tick(now)) {
            self.dispatch(out, None);
        }
        // Typing states time out without a message: publish what that changed.
        let sid = self.sequence.taken();
        self.feed.presence_changed(&mut self.room, sid, now);
    }

    /// Answers `waiter` once the update the current command queued (and all before it) is
    /// durable.
    fn when_durable(&mut self, waiter: Waiter) {
        if self.failed {
            waiter(Err(DocError::Storage));
        } else {
            self.commit.when_durable(waiter);
        }
    }

    fn state(&self, with_update: bool) -> DocState {
        let doc = self.room.document();
        DocState {
            exists: self.exists,
            sid: self.sequence.taken(),
            texts: doc.texts(),
            fields: doc.fields(),
            update: with_update.then(|| Bytes::from(doc.encode_state())),
        }
    }

    /// Starts a compaction when the policy says so and the replica is exactly the state at
    /// its last taken sid. It can run beside the task's other work: the state is encoded
    /// here, and updates accepted meanwhile go to the log after it.
    fn compact_if_due(&mut self) {
        let sid = self.sequence.taken();
        // The replica holds exactly the updates up to `sid`: nothing of this node's in flight
        // or queued, nothing of others' waiting for its turn.
        let exact = self.commit.is_idle() && !self.sequence.gap() && self.exclusive.is_empty();
        if self.failed
            || sid == 0
            || !exact
            || self.compacting.is_some()
            || !self.compactor.is_due()
        {
            return;
        }
        let compaction = self.compactor.begin(&self.room, sid, now_ms());
        let checkpoint_at = compaction.checkpoint_at;
        let store = Arc::clone(&self.ctx.store);
        let name = self.name.clone();
        self.compacting = Some(Box::pin(async move {
            store
                .compact(&name, compaction)
                .await
                .map(|_| (sid, checkpoint_at))
        }));
    }

    /// Takes the end of the compaction that was running.
    fn compacted(&mut self, result: Result<(Sid, Option<u64>), StoreError>) {
        if self.compactor.finished(&self.name, result) {
            self.room.compacted();
        }
    }

    /// Stores the compaction that is due, if any, and waits for any running one to end
    /// (before unloading, and on one node after every turn).
    async fn compact_now(&mut self) {
        self.compact_if_due();
        if let Some(running) = self.compacting.take() {
            let result = running.await;
            self.compacted(result);
        }
    }
}

/// Maps an engine refusal to the HTTP-facing error.
fn refused(e: ProtocolError) -> DocError {
    match e {
        ProtocolError::TooManyPending(_) | ProtocolError::DocumentTooLarge(_) => {
            DocError::Limit(e.to_string())
        }
        other => DocError::Invalid(other.to_string()),
    }
}
