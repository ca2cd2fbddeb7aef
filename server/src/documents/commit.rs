//! The commit pipeline of one document: accepted updates wait in a queue, are stored one batch
//! in flight at a time (so a burst is committed together), and are answered once durable.
//!
//! Who waits for what is explicit: a connection's updates are acknowledged by count
//! ([`Durable::conn`], [`Durable::seq`]); an HTTP request registers a [`Waiter`] with
//! [`Commit::when_durable`], answered once every update queued before it is durable (its own
//! update, queued by the command that registers it, is the last of those).
//!
//! Idempotency keys ride with the updates: [`Commit::push_key`] attaches a key's record to the
//! last queued entry (the update its request just queued, or, for a request that changed
//! nothing, whatever is queued last, else an entry of its own that holds no update), and the
//! batch stores updates and records in one transaction ([`Store::append_with_keys`]).
//! [`Finished::keys`] says which became durable, with the sid of their write.
//!
//! With several nodes sharing the store, the frames that carry an accepted update to this
//! node's other connections are held with it ([`Commit::hold`]) and sent only once it is
//! stored: nothing reaches another client before its commit. A batch can also be stored
//! through the document's write lock ([`Commit::submit_locked`]), for conditional writes.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tandem_engine::protocol::{ConnId, Outgoing};
use tandem_engine::Change;

use super::keys::KeyId;
use super::DocError;
use crate::infra::metrics::Metrics;
use crate::infra::store::{
    Answer, Fingerprint, Locked, NewKey, NewUpdate, Sid, SidRange, Store, StoreError,
};
use crate::infra::webhook::{BatchSummary, RegisterChange, Webhooks};

/// Called with the sid up to which everything it waited for is durable (or with the failure).
pub(super) type Waiter = Box<dyn FnOnce(Result<Sid, DocError>) + Send>;

/// An accepted update waiting to be stored, or (without one) idempotency records of requests
/// that changed nothing.
struct Pending {
    conn: Option<ConnId>,
    /// The connection's update count including this one.
    seq: u64,
    update: Option<NewUpdate>,
    /// What it changed, for event-stream subscribers.
    changes: Vec<Change>,
    /// Requests answered once this update (and every one before it) is durable.
    waiters: Vec<Waiter>,
    /// Idempotency records stored with it; their write's sid is this entry's.
    keys: Vec<PendingKey>,
    /// Frames sent once it is stored (see [`Commit::hold`]).
    held: Vec<Held>,
}

/// Frames held until the update they carry is stored, and when their cause was received.
pub(super) type Held = (Vec<Outgoing>, Option<Instant>);

/// The idempotency record of a request, to store with its write.
pub(super) struct PendingKey {
    pub id: KeyId,
    pub fingerprint: Fingerprint,
    pub answer: Answer,
}

/// What a stored batch made durable.
pub(super) struct Finished {
    /// Its updates, with their sids.
    pub updates: Vec<Durable>,
    /// Its idempotency records, with the sid of their write.
    pub keys: Vec<(KeyId, Sid)>,
    /// The frames held until it was stored, in order.
    pub held: Vec<Held>,
    /// Its sids (for a batch without updates, `first = last + 1`).
    pub range: SidRange,
}

/// An update that became durable.
pub(super) struct Durable {
    pub sid: Sid,
    /// The connection it came from, and that connection's update count including it.
    pub conn: Option<(ConnId, u64)>,
    pub update: NewUpdate,
    pub changes: Vec<Change>,
}

type Inflight = Pin<Box<dyn Future<Output = Result<SidRange, StoreError>> + Send>>;

/// The commit pipeline.
pub(super) struct Commit {
    store: Arc<dyn Store>,
    metrics: Metrics,
    queue: VecDeque<Pending>,
    inflight: Option<Inflight>,
    inflight_batch: Vec<Pending>,
    /// The sid of the last durable update.
    last_sid: Sid,
    /// Webhook endpoints: each batch carries its outbox rows into its transaction.
    webhooks: Webhooks,
}

impl Commit {
    pub(super) fn new(
        store: Arc<dyn Store>,
        metrics: Metrics,
        last_sid: Sid,
        webhooks: Webhooks,
    ) -> Self {
        Commit {
            store,
            metrics,
            queue: VecDeque::new(),
            inflight: None,
            inflight_batch: Vec::new(),
            last_sid,
            webhooks,
        }
    }

    /// Tells the webhook worker a batch was stored (nothing without endpoints).
    pub(super) fn wake_webhooks(&self) {
        self.webhooks.wake();
    }

    /// Nothing queued and nothing in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_none()
    }

    pub(super) fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Queues an accepted update; `seq` is its connection's update count including it.
    pub(super) fn push(
        &mut self,
        conn: Option<ConnId>,
        seq: u64,
        update: NewUpdate,
        changes: Vec<Change>,
    ) {
        self.queue.push_back(Pending {
            conn,
            seq,
            update: Some(update),
            changes,
            waiters: Vec::new(),
            keys: Vec::new(),
            held: Vec::new(),
        });
    }

    /// Holds `frames` until the last queued update is stored (they are dropped if it is not).
    /// Only called right after queueing the update they carry.
    pub(super) fn hold(&mut self, frames: Vec<Outgoing>, received: Option<Instant>) {
        if let Some(p) = self.queue.back_mut() {
            p.held.push((frames, received));
        }
    }

    /// Stores `key` with the last queued entry (so its sid is that entry's: the update the
    /// current command queued, or the last one queued before it), or, when nothing is queued,
    /// in an entry of its own holding no update (its sid is then the last update's before it).
    pub(super) fn push_key(&mut self, key: PendingKey) {
        match self.queue.back_mut() {
            Some(p) => p.keys.push(key),
            None => self.queue.push_back(Pending {
                conn: None,
                seq: 0,
                update: None,
                changes: Vec::new(),
                waiters: Vec::new(),
                keys: vec![key],
                held: Vec::new(),
            }),
        }
    }

    /// Answers `waiter` once every update queued so far is durable, with the sid of the last of
    /// them; at once when nothing is queued or in flight.
    pub(super) fn when_durable(&mut self, waiter: Waiter) {
        match self
            .queue
            .back_mut()
            .or_else(|| self.inflight_batch.last_mut())
        {
            Some(p) => p.waiters.push(waiter),
            None => waiter(Ok(self.last_sid)),
        }
    }

    /// Starts storing the queued updates of `doc` as one batch, when none is in flight.
    /// Returns the bytes submitted.
    pub(super) fn submit(&mut self, doc: &str) -> u64 {
        if self.inflight.is_some() || self.queue.is_empty() {
            return 0;
        }
        self.start(doc, None)
    }

    /// Stores what is queued (possibly nothing) through `lock`, which it then releases. Only
    /// called with nothing in flight.
    pub(super) fn submit_locked(&mut self, doc: &str, lock: Box<dyn Locked>) -> u64 {
        self.start(doc, Some(lock))
    }

    fn start(&mut self, doc: &str, lock: Option<Box<dyn Locked>>) -> u64 {
        let batch: Vec<Pending> = self.queue.drain(..).collect();
        let mut updates: Vec<NewUpdate> = Vec::with_capacity(batch.len());
        let mut keys: Vec<NewKey> = Vec::new();
        for p in &batch {
            if let Some(update) = &p.update {
                updates.push(update.clone());
            }
            keys.extend(p.keys.iter().map(|k| NewKey {
                user: k.id.0.clone(),
                key: k.id.1.clone(),
                fingerprint: k.fingerprint,
                answer: k.answer.clone(),
                after: updates.len(),
            }));
        }
        let bytes = updates.iter().map(|u| u.update.len() as u64).sum();
        let events = if self.webhooks.is_enabled() && !updates.is_empty() {
            self.webhooks.batch_events(&summary(&batch))
        } else {
            Vec::new()
        };
        self.inflight_batch = batch;
        let store = Arc::clone(&self.store);
        let metrics = self.metrics.clone();
        let doc = doc.to_owned();
        let started = Instant::now();
        self.inflight = Some(Box::pin(async move {
            let r = match lock {
                Some(lock) => lock.append_full(updates, keys, events).await,
                None => store.append_full(&doc, updates, keys, events).await,
            };
            metrics.commit_latency.observe(started.elapsed());
            r
        }));
        bytes
    }

    /// Completes when the batch in flight is stored (never, when none is: guard with
    /// [`Commit::in_flight`]).
    pub(super) async fn stored(&mut self) -> Result<SidRange, StoreError> {
        match self.inflight.as_mut() {
            Some(f) => {
                let r = f.await;
                self.inflight = None;
                r
            }
            None => std::future::pending().await,
        }
    }

    /// Takes the result of the batch in flight: answers its waiters and returns its updates
    /// and idempotency records with their sids. On failure every waiter (of the batch and of
    /// the queue) gets [`DocError::Storage`] and nothing is returned.
    pub(super) fn finish(&mut self, result: Result<SidRange, StoreError>) -> Finished {
        let batch = std::mem::take(&mut self.inflight_batch);
        let mut out = Finished {
            updates: Vec::with_capacity(batch.len()),
            keys: Vec::new(),
            held: Vec::new(),
            range: SidRange {
                first: self.last_sid + 1,
                last: self.last_sid,
            },
        };
        match result {
            Ok(range) => {
                out.range = range;
                self.last_sid = range.last;
                // The sid of the last update so far (the last one before the batch at first).
                let mut sid = range.first - 1;
                for p in batch {
                    if p.update.is_some() {
                        sid += 1;
                    }
                    for waiter in p.waiters {
                        waiter(Ok(sid));
                    }
                    out.keys.extend(p.keys.into_iter().map(|k| (k.id, sid)));
                    out.held.extend(p.held);
                    if let Some(update) = p.update {
                        out.updates.push(Durable {
                            sid,
                            conn: p.conn.map(|c| (c, p.seq)),
                            update,
                            changes: p.changes,
                        });
                    }
                }
                out
            }
            Err(e) => {
                let error = DocError::storage(&e);
                for p in batch {
                    for waiter in p.waiters {
                        waiter(Err(error.clone()));
                    }
                }
                self.drop_queue(error);
                out
            }
        }
    }

    /// Drops what is queued, answering its waiters with `error`. Those updates were never
    /// acknowledged; their senders still hold them and send them again after reconnecting.
    pub(super) fn drop_queue(&mut self, error: DocError) {
        for p in self.queue.drain(..) {
            for waiter in p.waiters {
                waiter(Err(error.clone()));
            }
        }
    }

    /// Takes a sid stored by another node and taken by the document: the last durable sid is
    /// at least that.
    pub(super) fn saw(&mut self, sid: Sid) {
        self.last_sid = self.last_sid.max(sid);
    }
}

/// What a batch did, for its webhook rows: authors, fields touched, register changes.
fn summary(batch: &[Pending]) -> BatchSummary {
    let mut out = BatchSummary::default();
    let add = |list: &mut Vec<String>, v: &str| {
        if !list.iter().any(|x| x == v) {
            list.push(v.to_owned());
        }
    };
    for p in batch {
        let Some(update) = &p.update else { continue };
        add(&mut out.authors, &update.author);
        for change in &p.changes {
            match change {
                Change::Text { field, .. } => add(&mut out.fields, field),
                Change::Field {
                    name,
                    value,
                    author,
                } => {
                    add(&mut out.fields, name);
                    out.registers.push(RegisterChange {
                        name: name.clone(),
                        value: value
                            .as_ref()
                            .map_or(serde_json::Value::Null, |v| v.value.clone()),
                        version: value.as_ref().map(|v| v.version.clone()),
                        author: author.clone().or_else(|| Some(update.author.clone())),
                    });
                }
            }
        }
    }
    out
}
