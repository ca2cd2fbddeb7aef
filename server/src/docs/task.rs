//! The owner task of one loaded document: loads it, runs its [`Room`], fans frames out to the
//! connections' bounded queues, stores accepted updates (one batch in flight at a time, so a
//! burst is committed together) and acks them once durable.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_engine::protocol::{self, ConnId, ConnInfo, Limits, Output, Room, To};
use tandem_engine::Document;
use tokio::sync::{mpsc, oneshot};

use super::{
    Close, Command, ConnSink, DocError, DocState, FeedItem, FieldOutcome, JoinError, JoinReply,
    PresenceChange, PresenceView, Published, Registry,
};
use crate::store::{NewUpdate, Sid, SidRange, StoreError};
use std::collections::BTreeMap;
use tandem_engine::protocol::FieldWrite;
use tandem_engine::{Change, ProtocolError};

/// A reader that falls behind again within this time of its last resync is closed.
const RESYNC_AFTER: Duration = Duration::from_secs(30);
/// Commands handled before the produced frames are flushed to the connections.
const COMMAND_BATCH: usize = 64;
/// How often awareness states are swept for expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Close code sent to a reader that fell too far behind.
pub const CLOSE_SLOW_READER: u16 = 4008;
/// Close code when the document failed (storage error or a panic); reconnecting reloads it.
pub const CLOSE_DOCUMENT_FAILED: u16 = 1011;
/// Close code on server shutdown.
pub const CLOSE_GOING_AWAY: u16 = 1001;

struct Conn {
    info: ConnInfo,
    frames: crate::outbox::Sender,
    close: Option<oneshot::Sender<Close>>,
    /// Updates received from this connection so far.
    sent: u64,
    /// The last ack sent to it (`count`, `sid`), repeated after a resync.
    acked: Option<(u64, Sid)>,
    /// When it was last resynced for falling behind.
    resynced: Option<Instant>,
}

/// Called with an update's sid once it is durable (or with the failure).
type Waiter = Box<dyn FnOnce(Result<Sid, DocError>) + Send>;

/// An accepted update waiting to be stored.
struct Pending {
    conn: Option<ConnId>,
    /// The connection's update count including this one.
    seq: u64,
    update: NewUpdate,
    /// What it changed, for event-stream subscribers.
    changes: Vec<Change>,
    /// An HTTP request waiting for it to be durable.
    waiter: Option<Waiter>,
}

type Inflight = Pin<Box<dyn std::future::Future<Output = Result<SidRange, StoreError>> + Send>>;

pub(super) struct DocTask {
    registry: Registry,
    name: String,
    id: u64,
    rx: mpsc::Receiver<Command>,
}

struct Loaded {
    /// Whether the store had the document.
    exists: bool,
    room: Room,
    last_sid: Sid,
    /// Log entries (and their bytes) since the last snapshot, for the compaction policy.
    log_entries: u64,
    log_bytes: u64,
}

impl DocTask {
    pub(super) fn new(
        registry: Registry,
        name: String,
        id: u64,
        rx: mpsc::Receiver<Command>,
    ) -> Self {
        DocTask {
            registry,
            name,
            id,
            rx,
        }
    }

    fn limits(&self) -> Limits {
        let l = &self.registry.shared.config.limits;
        Limits {
            max_frame: l.max_frame_bytes,
            max_awareness_state: l.max_awareness_bytes,
            max_pending: l.max_pending_updates,
            ..Limits::default()
        }
    }

    async fn load(&self) -> Result<Loaded, StoreError> {
        let store = &self.registry.shared.store;
        let stored = store.load(&self.name).await?;
        let mut doc = Document::new(fastrand::u64(1..tandem_engine::wire::MAX_SAFE_INTEGER));
        let Some(stored) = stored else {
            return Ok(Loaded {
                exists: false,
                room: Room::new(doc, self.limits()),
                last_sid: 0,
                log_entries: 0,
                log_bytes: 0,
            });
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
        Ok(Loaded {
            exists: true,
            room: Room::new(doc, self.limits()),
            last_sid: stored.last_sid,
            log_entries: stored.updates.len() as u64,
            log_bytes: stored.log_bytes(),
        })
    }

    pub(super) async fn run(mut self) {
        let metrics = self.registry.shared.metrics.clone();
        let loaded = self.load().await;
        let loaded = match loaded {
            Ok(l) => {
                metrics.document_loads.inc();
                l
            }
            Err(e) => {
                metrics.document_load_failures.inc();
                tracing::error!(doc = %self.name, cause = %e, "document load failed");
                self.registry.forget(&self.name, self.id);
                self.refuse_all(JoinReply::Failed(JoinError::LoadFailed))
                    .await;
                return;
            }
        };
        metrics.documents_loaded.inc();
        let mut state = Running {
            name: self.name.clone(),
            registry: self.registry.clone(),
            room: loaded.room,
            conns: HashMap::new(),
            last_sid: loaded.last_sid,
            log_entries: loaded.log_entries,
            log_bytes: loaded.log_bytes,
            queue: VecDeque::new(),
            inflight: None,
            inflight_batch: Vec::new(),
            failed: false,
            shutting_down: false,
            stored_bytes: None,
            exists: loaded.exists,
            subs: Vec::new(),
            presence: BTreeMap::new(),
            outgoing: Vec::new(),
            received: None,
        };
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        state.command(cmd);
                        // Whatever else is already waiting joins this batch (bounded, so
                        // storage and timers still get their turn).
                        for _ in 1..COMMAND_BATCH {
                            match self.rx.try_recv() {
                                Ok(cmd) => state.command(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                result = async { state.inflight.as_mut().expect("guarded").await }, if state.inflight.is_some() => {
                    state.inflight = None;
                    state.stored(result);
                }
                _ = sweep.tick() => state.sweep(),
            }
            state.flush();
            if state.inflight.is_none() {
                state.submit();
                if state.inflight.is_none() {
                    state.compact_if_due().await;
                }
            }
            let idle = state.conns.is_empty()
                && state.subs.is_empty()
                && state.inflight.is_none()
                && state.queue.is_empty();
            if idle || (state.failed && state.inflight.is_none()) {
                // Unload: leave the registry, then answer whatever is still queued.
                state.compact_if_due().await;
                break;
            }
        }
        self.registry.forget(&self.name, self.id);
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

    async fn refuse_all(&mut self, reply: JoinReply) {
        self.rx.close();
        let error = match reply {
            JoinReply::Failed(e) => e,
            _ => JoinError::LoadFailed,
        };
        while let Some(cmd) = self.rx.recv().await {
            let failed = DocError::Join(error.clone());
            match cmd {
                Command::Join { reply, .. } => {
                    let _ = reply.send(JoinReply::Failed(error.clone()));
                }
                Command::Read { reply, .. } => drop(reply.send(Err(failed))),
                Command::Subscribe { reply, .. } => drop(reply.send(Err(failed))),
                Command::ApplyUpdate { reply, .. } => drop(reply.send(Err(failed))),
                Command::SetField { reply, .. } => drop(reply.send(Err(failed))),
                Command::EditText { reply, .. } => drop(reply.send(Err(failed))),
                Command::Frame { .. } | Command::Leave { .. } | Command::Shutdown => {}
                #[cfg(test)]
                Command::Run(_) => {}
            }
        }
    }
}

struct Running {
    name: String,
    registry: Registry,
    room: Room,
    conns: HashMap<ConnId, Conn>,
    last_sid: Sid,
    log_entries: u64,
    log_bytes: u64,
    queue: VecDeque<Pending>,
    inflight: Option<Inflight>,
    inflight_batch: Vec<Pending>,
    /// Set after a storage failure or a panic: the document stops serving and unloads.
    failed: bool,
    shutting_down: bool,
    /// Estimated stored size of the document, for `--max-document-size`; computed on first
    /// need after a load or a compaction (see `Running::has_room_for`).
    stored_bytes: Option<u64>,
    /// Whether the document has ever been written.
    exists: bool,
    /// Event-stream subscribers.
    subs: Vec<mpsc::Sender<FeedItem>>,
    /// Presence as last published to subscribers, by user key.
    presence: BTreeMap<String, PresenceView>,
    /// Frames produced since the last [`Running::flush`], in order.
    outgoing: Vec<protocol::Outgoing>,
    /// When the earliest input behind `outgoing` arrived (fan-out latency).
    received: Option<Instant>,
}

impl Running {
    fn command(&mut self, cmd: Command) {
        let now = super::now_ms();
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
                let ConnSink { frames, close } = sink;
                self.conns.insert(
                    conn,
                    Conn {
                        info: info.clone(),
                        frames,
                        close: Some(close),
                        sent: 0,
                        acked: None,
                        resynced: None,
                    },
                );
                let out = self.guarded(|room| room.join(conn, info, now));
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
                if !self.conns.contains_key(&conn) {
                    return;
                }
                self.registry
                    .shared
                    .metrics
                    .bytes_received
                    .add(frame.len() as u64);
                if !self.document_size_allows(conn, &frame) {
                    return;
                }
                if let Some(out) = self.guarded(|room| room.handle(conn, &frame, now)) {
                    self.dispatch(out, Some((conn, received)));
                }
            }
            Command::Leave { conn } => {
                if self.conns.remove(&conn).is_some() {
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
            Command::Subscribe { feed, reply } => {
                if !self.exists {
                    let _ = reply.send(Err(DocError::NotFound));
                    return;
                }
                if self.subs.is_empty() {
                    self.room.document_mut().set_change_feed(true);
                    self.presence = self.presence_views();
                }
                self.subs.push(feed);
                let presence = self.presence.values().cloned().collect();
                let _ = reply.send(Ok((self.state(false), presence)));
            }
            Command::ApplyUpdate {
                author,
                update,
                reply,
            } => {
                let result = self.guarded(|room| room.apply_update(&update, Some(&author), now));
                match result {
                    None => drop(reply.send(Err(DocError::Storage))),
                    Some(Err(e)) => drop(reply.send(Err(refused(e)))),
                    Some(Ok(mut out)) => {
                        if let Some(e) = out.error.take() {
                            let _ = reply.send(Err(refused(e)));
                            self.dispatch(out, None);
                        } else {
                            self.dispatch(out, None);
                            self.wait_last(Box::new(move |r| drop(reply.send(r))));
                        }
                    }
                }
            }
            Command::SetField {
                user,
                name,
                value,
                expected,
                reply,
            } => {
                if let Err(e) = tandem_engine::document::check_name(&name) {
                    let _ = reply.send(Err(DocError::Invalid(e.to_string())));
                    return;
                }
                let result = self
                    .guarded(|room| room.set_field(&user, &name, value, expected.as_deref(), now));
                match result {
                    None => drop(reply.send(Err(DocError::Storage))),
                    Some(Err(e)) => drop(reply.send(Err(refused(e)))),
                    Some(Ok((FieldWrite::Rejected(current), _))) => {
                        let _ = reply.send(Ok(FieldOutcome::Stale(current)));
                    }
                    Some(Ok((FieldWrite::Accepted(state), out))) => {
                        self.dispatch(out, None);
                        self.wait_last(Box::new(move |r| {
                            drop(reply.send(r.map(|sid| FieldOutcome::Written(sid, state))))
                        }));
                    }
                }
            }
            Command::EditText {
                user,
                field,
                index,
                delete,
                insert,
                reply,
            } => {
                let result =
                    self.guarded(|room| room.edit_text(&user, &field, index, delete, &insert, now));
                match result {
                    None => drop(reply.send(Err(DocError::Storage))),
                    Some(Err(e)) => drop(reply.send(Err(refused(e)))),
                    Some(Ok(out)) => {
                        self.dispatch(out, None);
                        let text = self.room.document().text(&field).unwrap_or_default();
                        self.wait_last(Box::new(move |r| {
                            drop(reply.send(r.map(|sid| (sid, text))))
                        }));
                    }
                }
            }
            #[cfg(test)]
            Command::Run(f) => {
                self.guarded(f);
            }
            Command::Shutdown => {
                self.shutting_down = true;
                let ids: Vec<ConnId> = self.conns.keys().copied().collect();
                for id in ids {
                    self.close(id, Close::new(CLOSE_GOING_AWAY, "server shutting down"));
                }
            }
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
                self.registry.shared.metrics.document_panics.inc();
                self.fail("document failed; reconnect to reload it");
                None
            }
        }
    }

    fn fail(&mut self, reason: &str) {
        self.failed = true;
        // Updates not yet stored are dropped: they were never acknowledged, and their
        // senders still hold them and send them again after reconnecting.
        for p in self.queue.drain(..) {
            if let Some(waiter) = p.waiter {
                waiter(Err(DocError::Storage));
            }
        }
        self.subs.clear();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, Close::new(CLOSE_DOCUMENT_FAILED, reason));
        }
    }

    fn close(&mut self, conn: ConnId, close: Close) {
        if let Some(mut c) = self.conns.remove(&conn) {
            if let Some(tx) = c.close.take() {
                let _ = tx.send(close);
            }
            let now = super::now_ms();
            if !self.failed {
                if let Some(out) = self.guarded(|room| room.leave(conn, now)) {
                    self.dispatch(out, None);
                }
            }
        }
    }

    /// Takes what the room produced: frames wait in `outgoing` until [`Running::flush`] hands
    /// them out, accepted updates are queued for storage.
    fn dispatch(&mut self, out: Output, from: Option<(ConnId, Instant)>) {
        let metrics = self.registry.shared.metrics.clone();
        if !out.messages.is_empty() {
            if let Some((_, received)) = from {
                self.received.get_or_insert(received);
            }
            self.outgoing.extend(out.messages);
        }
        for accepted in out.accepted {
            self.note_stored(accepted.update.len());
            metrics.updates.inc();
            let seq = match accepted.conn.and_then(|id| self.conns.get_mut(&id)) {
                Some(c) => {
                    c.sent += 1;
                    c.sent
                }
                None => 0,
            };
            self.exists = true;
            self.queue.push_back(Pending {
                conn: accepted.conn,
                seq,
                update: NewUpdate {
                    update: accepted.update,
                    author: accepted.author.unwrap_or_default(),
                },
                changes: accepted.changes,
                waiter: None,
            });
        }
        if out.presence_changed && !self.subs.is_empty() {
            self.publish_presence();
        }
        if let Some(err) = out.error {
            if let Some((conn, _)) = from {
                tracing::info!(doc = %self.name, conn, cause = %err, "closing a connection after a protocol error");
                self.close(conn, crate::limits::protocol_error_close(&err, &metrics));
            }
        }
    }

    /// Hands every frame produced since the last flush to its connections: each connection
    /// gets all of its frames in one push (one wake-up of its writer, one write to its socket
    /// where they fit). Under load a batch holds the output of many inputs, so the cost per
    /// delivered frame falls as the load rises; an idle document flushes after every input.
    /// A connection whose queue cannot take its frames is closed as a slow reader.
    fn flush(&mut self) {
        let metrics = self.registry.shared.metrics.clone();
        let mut frames: Vec<Bytes> = Vec::new();
        // Closing a slow reader broadcasts its presence removal: flush again for that.
        while !self.outgoing.is_empty() {
            let messages = std::mem::take(&mut self.outgoing);
            let mut slow = Vec::new();
            for (id, c) in &self.conns {
                frames.clear();
                frames.extend(
                    messages
                        .iter()
                        .filter(|m| match m.to {
                            To::One(x) => x == *id,
                            To::All => true,
                            To::AllExcept(x) => x != *id,
                        })
                        .map(|m| m.frame.clone()),
                );
                if frames.is_empty() {
                    continue;
                }
                match c.frames.try_send_all(&mut frames) {
                    Ok(bytes) => metrics.bytes_sent.add(bytes as u64),
                    Err(crate::outbox::TrySendError::Full) => slow.push(*id),
                    Err(crate::outbox::TrySendError::Closed) => {}
                }
            }
            if let Some(received) = self.received.take() {
                metrics.fanout_latency.observe(received.elapsed());
            }
            for id in slow {
                self.behind(id);
            }
        }
    }

    /// `id`'s queue is full: it missed frames. The first time (and again after
    /// [`RESYNC_AFTER`]) its queue is replaced by a resync: the whole document as step 2, the
    /// server's step 1 (so it sends back what the server lacks), every awareness state and its
    /// last ack. A reader that falls behind again sooner is closed with a reason.
    fn behind(&mut self, id: ConnId) {
        let metrics = self.registry.shared.metrics.clone();
        let now = Instant::now();
        let Some(c) = self.conns.get(&id) else { return };
        if c.resynced
            .is_some_and(|at| now.duration_since(at) < RESYNC_AFTER)
        {
            metrics.slow_reader_closes.inc();
            tracing::info!(doc = %self.name, conn = id, "closing a slow reader");
            self.close(
                id,
                Close::new(
                    CLOSE_SLOW_READER,
                    "slow reader: too far behind, reconnect to resync",
                ),
            );
            return;
        }
        let ack = c.acked.filter(|_| c.info.extensions);
        let mut frames: Vec<Bytes> = match self.guarded(|room| room.resync(id)) {
            Some(out) => out.into_iter().map(|o| o.frame).collect(),
            None => return,
        };
        if let Some((count, sid)) = ack {
            frames.push(protocol::ack_frame(count, sid));
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.resynced = Some(now);
        metrics.slow_reader_resyncs.inc();
        tracing::info!(doc = %self.name, conn = id, "resyncing a slow reader");
        c.frames.replace_all(frames);
    }

    /// Starts storing the queued updates as one batch, when none is in flight.
    fn submit(&mut self) {
        if self.inflight.is_some() || self.queue.is_empty() || self.failed {
            return;
        }
        let batch: Vec<Pending> = self.queue.drain(..).collect();
        self.log_bytes += batch
            .iter()
            .map(|p| p.update.update.len() as u64)
            .sum::<u64>();
        let updates: Vec<NewUpdate> = batch.iter().map(|p| p.update.clone()).collect();
        self.inflight_batch = batch;
        let store = self.registry.shared.store.clone();
        let name = self.name.clone();
        let started = Instant::now();
        let metrics = self.registry.shared.metrics.clone();
        self.inflight = Some(Box::pin(async move {
            let r = store.append_batch(&name, updates).await;
            metrics.commit_latency.observe(started.elapsed());
            r
        }));
    }

    /// A batch finished storing: ack its senders, or fail the document.
    fn stored(&mut self, result: Result<SidRange, StoreError>) {
        let batch = std::mem::take(&mut self.inflight_batch);
        match result {
            Ok(range) => {
                self.last_sid = range.last;
                self.log_entries += batch.len() as u64;
                // The last update of each connection in the batch, with its sid.
                let mut acks: HashMap<ConnId, (u64, Sid)> = HashMap::new();
                for (i, p) in batch.into_iter().enumerate() {
                    let sid = range.first + i as u64;
                    if let Some(conn) = p.conn {
                        acks.insert(conn, (p.seq, sid));
                    }
                    if let Some(waiter) = p.waiter {
                        waiter(Ok(sid));
                    }
                    if !self.subs.is_empty() {
                        self.publish(FeedItem::Update(Arc::new(Published {
                            sid,
                            update: p.update.update,
                            author: p.update.author,
                            changes: p.changes,
                        })));
                    }
                }
                for (conn, (count, sid)) in acks {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.acked = Some((count, sid));
                    }
                    if self.conns.get(&conn).is_some_and(|c| c.info.extensions) {
                        self.outgoing.push(protocol::Outgoing {
                            to: To::One(conn),
                            frame: protocol::ack_frame(count, sid),
                        });
                    }
                }
            }
            Err(e) => {
                tracing::error!(doc = %self.name, cause = %e, "storing updates failed");
                for p in batch {
                    if let Some(waiter) = p.waiter {
                        waiter(Err(DocError::Storage));
                    }
                }
                self.fail("storage failure; reconnect to resync");
            }
        }
    }

    fn sweep(&mut self) {
        let now = super::now_ms();
        self.subs.retain(|s| !s.is_closed());
        if self.subs.is_empty() {
            self.room.document_mut().set_change_feed(false);
        }
        if let Some(out) = self.guarded(|room| room.tick(now)) {
            self.dispatch(out, None);
        }
    }

    /// Attaches an HTTP request to the update just queued: it is answered once that is durable.
    fn wait_last(&mut self, waiter: Waiter) {
        match self.queue.back_mut() {
            Some(p) if p.waiter.is_none() => p.waiter = Some(waiter),
            // Nothing was queued (the document failed meanwhile).
            _ => waiter(Err(DocError::Storage)),
        }
    }

    fn state(&self, with_update: bool) -> DocState {
        let doc = self.room.document();
        DocState {
            exists: self.exists,
            sid: self.last_sid,
            texts: doc.texts(),
            fields: doc.fields(),
            update: with_update.then(|| Bytes::from(doc.encode_state())),
        }
    }

    /// Sends a feed item to every subscriber; one that is too far behind is dropped (its stream
    /// ends and the client resumes from its last event id).
    fn publish(&mut self, item: FeedItem) {
        self.subs.retain(|s| s.try_send(item.clone()).is_ok());
        if self.subs.is_empty() {
            self.room.document_mut().set_change_feed(false);
        }
    }

    fn presence_views(&self) -> BTreeMap<String, PresenceView> {
        let mut views = BTreeMap::new();
        for (client, state) in self.room.presence().states() {
            let key = state
                .user
                .id
                .clone()
                .unwrap_or_else(|| format!("client:{}", client.get()));
            let view = PresenceView {
                user: serde_json::json!({
                    "id": state.user.id,
                    "name": state.user.name,
                    "color": state.user.color,
                }),
                typing: state.typing.clone(),
                viewing: state.viewing,
            };
            // One user in several tabs: viewing if any tab views, typing if any types.
            views
                .entry(key)
                .and_modify(|v: &mut PresenceView| {
                    v.viewing |= view.viewing;
                    if v.typing.is_none() {
                        v.typing = view.typing.clone();
                    }
                })
                .or_insert(view);
        }
        views
    }

    fn publish_presence(&mut self) {
        let now = self.presence_views();
        let mut changes = Vec::new();
        for (key, view) in &now {
            match self.presence.get(key) {
                None => changes.push(PresenceChange {
                    action: "join",
                    view: view.clone(),
                }),
                Some(old) if old != view => changes.push(PresenceChange {
                    action: "update",
                    view: view.clone(),
                }),
                Some(_) => {}
            }
        }
        for (key, view) in &self.presence {
            if !now.contains_key(key) {
                changes.push(PresenceChange {
                    action: "leave",
                    view: view.clone(),
                });
            }
        }
        self.presence = now;
        if !changes.is_empty() {
            self.publish(FeedItem::Presence(self.last_sid, Arc::new(changes)));
        }
    }

    /// Folds the log into a snapshot when the policy says so. Only called with nothing in
    /// flight, so the snapshot is exactly the state at `last_sid`.
    async fn compact_if_due(&mut self) {
        let policy = self.registry.shared.config.history.compaction;
        if self.failed || self.last_sid == 0 || !policy.is_due(self.log_entries, self.log_bytes) {
            return;
        }
        let state = Bytes::from(self.room.document().encode_state());
        let store: Arc<dyn crate::store::Store> = self.registry.shared.store.clone();
        match store.compact(&self.name, self.last_sid, state).await {
            Ok(_) => {
                self.stored_bytes = None;
                self.log_entries = 0;
                self.log_bytes = 0;
            }
            Err(e) => {
                // Try again after another policy's worth of updates, not on every turn.
                tracing::warn!(doc = %self.name, cause = %e, "compaction failed");
                self.log_entries = 0;
                self.log_bytes = 0;
            }
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

/// The document-size limit (`--max-document-size`).
impl Running {
    /// Whether `conn` may send `frame` without growing the document above the limit. A frame
    /// that would is not applied: its sender is closed with [`LimitKind::DocumentSize`] and the
    /// breach counted; readers and every other connection go on as before.
    ///
    /// [`LimitKind::DocumentSize`]: crate::limits::LimitKind::DocumentSize
    fn document_size_allows(&mut self, conn: ConnId, frame: &[u8]) -> bool {
        let incoming = crate::limits::update_bytes(frame) as u64;
        let reader = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.info.role == protocol::Role::Read);
        // A reader's updates are refused by the room whatever their size.
        if incoming == 0 || reader || self.has_room_for(incoming) {
            return true;
        }
        self.close(conn, crate::limits::LimitKind::DocumentSize.close());
        false
    }

    /// Whether `incoming` more bytes of updates fit under `--max-document-size`; a breach is
    /// counted when they do not. The size is the encoded document as loaded or last compacted,
    /// plus every update accepted since: what storage holds, an overestimate between
    /// compactions (deleted content still counts) that the next compaction corrects.
    fn has_room_for(&mut self, incoming: u64) -> bool {
        let limit = self.registry.shared.config.limits.max_document_bytes;
        let room = &self.room;
        let size = *self
            .stored_bytes
            .get_or_insert_with(|| room.document().encode_state().len() as u64);
        if size.saturating_add(incoming) <= limit {
            return true;
        }
        self.registry
            .shared
            .metrics
            .limit_breached(crate::limits::LimitKind::DocumentSize);
        false
    }

    /// Counts an accepted update towards the document's size.
    fn note_stored(&mut self, bytes: usize) {
        if let Some(size) = &mut self.stored_bytes {
            *size = size.saturating_add(bytes as u64);
        }
    }
}
