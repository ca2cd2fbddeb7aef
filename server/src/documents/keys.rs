//! Idempotency keys of one document whose first request is still being carried out.
//!
//! A write that carries a key is done at most once per `(user, key)` on this document, and every
//! request with the key gets the first one's answer. The owner task decides, with no lock and
//! no race, because it is the document's only writer on this node:
//!
//! 1. A keyed write whose key is not live here parks, and the store is asked for the key's
//!    record (a read on the blocking pool; the task keeps serving meanwhile). Further requests
//!    with the key park behind it.
//! 2. A record found: every parked request with the same fingerprint gets its answer
//!    (`replayed`); one with another fingerprint gets [`DocError::KeyReused`]. Nothing runs.
//! 3. No record: the first parked request runs. If it is refused (bad input, a limit), nothing
//!    was done and the key stays free for the next one. Otherwise its answer is rendered at
//!    once and its record queued with the update it made ([`super::commit::Commit::push_key`]):
//!    the store commits both in one transaction. The key is now pending: requests with the key
//!    wait for that commit (they are not refused with 409) and get the same answer.
//! 4. Once the batch is durable, every waiting request is answered and the key leaves this
//!    table: from then on the store has it.
//!
//! Why no request can run twice: a key is either live here (parked or pending), or its record
//! is committed, or no request with it has run. The lookup in step 1 happens with the key live
//! here, so nothing with the key can run or commit on this node until it answers; and an
//! earlier owner task of the document unloaded only with its commits finished. Across a crash,
//! the record and the update are in one transaction: if the process dies after the commit and
//! before the answer reaches the client, the retry finds the record and is replayed; if it dies
//! before the commit, neither exists and the retry runs. Across nodes the store refuses a second
//! record of a live key ([`crate::infra::store::StoreError::KeyInUse`]).
//!
//! A storage failure fails the document: every live key's requests get [`DocError::Storage`],
//! and their retries run against the reloaded document (which has neither their update nor
//! their record).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::command::Reply;
use super::{Answered, DocError, WriteRequest};
use crate::infra::store::{Answer, Fingerprint, KeyRecord, Sid, Store, StoreError};

/// A key of one user: `(user, key)`.
pub(super) type KeyId = (String, String);

/// A keyed write waiting for its key's lookup.
pub(super) struct Parked {
    pub request: WriteRequest,
    pub fingerprint: Fingerprint,
    pub reply: Reply<Answered>,
}

enum Live {
    /// The store is being asked for the key's record; these requests wait for the answer.
    LookingUp(Vec<Parked>),
    /// A request with the key ran; its record is queued or being committed with its write.
    /// The first waiter is that request, the others its retries.
    Pending {
        fingerprint: Fingerprint,
        answer: Answer,
        waiters: Vec<Reply<Answered>>,
    },
}

type Lookup = Pin<Box<dyn Future<Output = (KeyId, Result<Option<KeyRecord>, StoreError>)> + Send>>;

/// The live keys of one document.
#[derive(Default)]
pub(super) struct Keys {
    live: HashMap<KeyId, Live>,
    lookups: FuturesUnordered<Lookup>,
}

impl Keys {
    /// No key is live: nothing waits on this table.
    pub(super) fn is_idle(&self) -> bool {
        self.live.is_empty()
    }

    /// Whether a lookup is in flight (guard for [`Keys::looked_up`]).
    pub(super) fn looking_up(&self) -> bool {
        !self.lookups.is_empty()
    }

    /// Completes when a lookup has answered (never, when none is in flight).
    pub(super) async fn looked_up(&mut self) -> (KeyId, Result<Option<KeyRecord>, StoreError>) {
        match self.lookups.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// Takes a keyed write. Returns it when it should run now: its key was looked up and found
    /// absent, and no request with it is pending. Otherwise it waits (parked behind a lookup,
    /// which this starts if needed, or for a pending answer) or is refused with
    /// [`DocError::KeyReused`].
    pub(super) fn admit(
        &mut self,
        id: KeyId,
        parked: Parked,
        absent: bool,
        store: &Arc<dyn Store>,
        doc: &str,
    ) -> Option<Parked> {
        match self.live.get_mut(&id) {
            Some(Live::LookingUp(queue)) => {
                queue.push(parked);
                None
            }
            Some(Live::Pending {
                fingerprint,
                waiters,
                ..
            }) => {
                if *fingerprint == parked.fingerprint {
                    waiters.push(parked.reply);
                } else {
                    let _ = parked.reply.send(Err(DocError::KeyReused));
                }
                None
            }
            None if absent => Some(parked),
            None => {
                let store = Arc::clone(store);
                let doc = doc.to_owned();
                let key = id.clone();
                self.lookups.push(Box::pin(async move {
                    let found = store.idempotency_key(&doc, &key.0, &key.1).await;
                    (key, found)
                }));
                self.live.insert(id, Live::LookingUp(vec![parked]));
                None
            }
        }
    }

    /// A lookup answered. Returns the parked requests to run, in order, when the key has no
    /// record (each goes through [`Keys::admit`] again with `absent`, so the first to run makes
    /// the key pending for the others); answers them itself otherwise.
    pub(super) fn lookup_done(
        &mut self,
        id: &KeyId,
        found: Result<Option<KeyRecord>, StoreError>,
    ) -> Vec<Parked> {
        let Some(Live::LookingUp(parked)) = self.live.remove(id) else {
            // The document failed meanwhile and answered them.
            return Vec::new();
        };
        match found {
            Ok(None) => parked,
            Ok(Some(record)) => {
                for p in parked {
                    let answer = if p.fingerprint == record.fingerprint {
                        Ok(Answered {
                            answer: record.answer.clone(),
                            sid: record.sid,
                            replayed: true,
                        })
                    } else {
                        Err(DocError::KeyReused)
                    };
                    let _ = p.reply.send(answer);
                }
                Vec::new()
            }
            Err(e) => {
                tracing::error!(user = %id.0, cause = %e, "looking up an idempotency key failed");
                for p in parked {
                    let _ = p.reply.send(Err(DocError::Storage));
                }
                Vec::new()
            }
        }
    }

    /// A keyed write ran: its key is pending until its record is durable.
    pub(super) fn pending(
        &mut self,
        id: KeyId,
        fingerprint: Fingerprint,
        answer: Answer,
        reply: Reply<Answered>,
    ) {
        self.live.insert(
            id,
            Live::Pending {
                fingerprint,
                answer,
                waiters: vec![reply],
            },
        );
    }

    /// The key's record is durable, its write at `sid`: answers everyone waiting on it.
    pub(super) fn durable(&mut self, id: &KeyId, sid: Sid) {
        let Some(Live::Pending {
            answer, waiters, ..
        }) = self.live.remove(id)
        else {
            return;
        };
        for (i, waiter) in waiters.into_iter().enumerate() {
            let _ = waiter.send(Ok(Answered {
                answer: answer.clone(),
                sid,
                replayed: i > 0,
            }));
        }
    }

    /// The document failed: every live key's requests get [`DocError::Storage`].
    pub(super) fn fail(&mut self) {
        self.lookups = FuturesUnordered::new();
        for (_, live) in self.live.drain() {
            match live {
                Live::LookingUp(parked) => {
                    for p in parked {
                        let _ = p.reply.send(Err(DocError::Storage));
                    }
                }
                Live::Pending { waiters, .. } => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(DocError::Storage));
                    }
                }
            }
        }
    }
}
