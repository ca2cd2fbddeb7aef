//! The commit pipeline of one document: accepted updates wait in a queue, are stored one batch
//! in flight at a time (so a burst is committed together), and are answered once durable.
//!
//! Who waits for what is explicit: a connection's updates are acknowledged by count
//! ([`Durable::conn`], [`Durable::seq`]); an HTTP request registers a [`Waiter`] with
//! [`Commit::when_durable`], answered once every update queued before it is durable (its own
//! update, queued by the command that registers it, is the last of those).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tandem_engine::protocol::ConnId;
use tandem_engine::Change;

use super::DocError;
use crate::infra::metrics::Metrics;
use crate::infra::store::{NewUpdate, Sid, SidRange, Store, StoreError};

/// Called with the sid up to which everything it waited for is durable (or with the failure).
pub(super) type Waiter = Box<dyn FnOnce(Result<Sid, DocError>) + Send>;

/// An accepted update waiting to be stored.
struct Pending {
    conn: Option<ConnId>,
    /// The connection's update count including this one.
    seq: u64,
    update: NewUpdate,
    /// What it changed, for event-stream subscribers.
    changes: Vec<Change>,
    /// Requests answered once this update (and every one before it) is durable.
    waiters: Vec<Waiter>,
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
}

impl Commit {
    pub(super) fn new(store: Arc<dyn Store>, metrics: Metrics, last_sid: Sid) -> Self {
        Commit {
            store,
            metrics,
            queue: VecDeque::new(),
            inflight: None,
            inflight_batch: Vec::new(),
            last_sid,
        }
    }

    /// The sid of the last durable update.
    pub(super) fn last_sid(&self) -> Sid {
        self.last_sid
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
            update,
            changes,
            waiters: Vec::new(),
        });
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
        let batch: Vec<Pending> = self.queue.drain(..).collect();
        let bytes = batch.iter().map(|p| p.update.update.len() as u64).sum();
        let updates: Vec<NewUpdate> = batch.iter().map(|p| p.update.clone()).collect();
        self.inflight_batch = batch;
        let store = Arc::clone(&self.store);
        let metrics = self.metrics.clone();
        let doc = doc.to_owned();
        let started = Instant::now();
        self.inflight = Some(Box::pin(async move {
            let r = store.append_batch(&doc, updates).await;
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
    /// with their sids. On failure every waiter (of the batch and of the queue) gets
    /// [`DocError::Storage`] and nothing is returned.
    pub(super) fn finish(&mut self, result: Result<SidRange, StoreError>) -> Vec<Durable> {
        let batch = std::mem::take(&mut self.inflight_batch);
        match result {
            Ok(range) => {
                self.last_sid = range.last;
                let mut out = Vec::with_capacity(batch.len());
                for (i, p) in batch.into_iter().enumerate() {
                    let sid = range.first + i as u64;
                    for waiter in p.waiters {
                        waiter(Ok(sid));
                    }
                    out.push(Durable {
                        sid,
                        conn: p.conn.map(|c| (c, p.seq)),
                        update: p.update,
                        changes: p.changes,
                    });
                }
                out
            }
            Err(_) => {
                for p in batch {
                    for waiter in p.waiters {
                        waiter(Err(DocError::Storage));
                    }
                }
                self.drop_queue();
                Vec::new()
            }
        }
    }

    /// Drops what is queued, answering its waiters with [`DocError::Storage`]. Those updates
    /// were never acknowledged; their senders still hold them and send them again after
    /// reconnecting.
    pub(super) fn drop_queue(&mut self) {
        for p in self.queue.drain(..) {
            for waiter in p.waiters {
                waiter(Err(DocError::Storage));
            }
        }
    }

    /// Takes an update that is already durable elsewhere (stored by another node) at `sid`:
    /// it becomes the last durable sid. Only called with nothing queued or in flight.
    pub(super) fn advance(&mut self, sid: Sid) {
        self.last_sid = self.last_sid.max(sid);
    }
}
