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
    /// Made on the first lookup: an empty `FuturesUnordered` already holds two allocations,
    /// and most documents never see an idempotency key.
    lookups: Option<FuturesUnordered<Lookup>>,
}

impl Keys {
    /// No key is live: nothing waits on this table.
    pub(super) fn is_idle(&self) -> bool {
        self.live.is_empty()
    }

    /// Whether a lookup is in flight (guard for [`Keys::looked_up`]).
    pub(super) fn looking_up(&self) -> bool {
        self.lookups.as_ref().is_some_and(|l| !l.is_empty())
    }

    /// Completes when a lookup has answered (never, when none is in flight).
    pub(super) async fn looked_up(&mut self) -> (KeyId, Result<Option<KeyRecord>, StoreError>) {
        match self.lookups.as_mut() {
            Some(lookups) => match lookups.next().await {
                Some(done) => done,
                None => std::future::pending().await,
            },
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
                self.lookups
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(Box::pin(async move {
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
                let error = DocError::storage(&e);
                for p in parked {
                    let _ = p.reply.send(Err(error.clone()));
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

    /// The document failed: every live key's requests get `error`.
    pub(super) fn fail(&mut self, error: DocError) {
        self.lookups = None;
        for (_, live) in self.live.drain() {
            match live {
                Live::LookingUp(parked) => {
                    for p in parked {
                        let _ = p.reply.send(Err(error.clone()));
                    }
                }
                Live::Pending { waiters, .. } => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures_util::future::join;
    use serde_json::json;

    use super::*;
    use crate::documents::{Registry, RequestKey, Write, Written};
    use crate::infra::config::Config;
    use crate::infra::metrics::Metrics;
    use crate::infra::store::sqlite::{SqliteOptions, SqliteStore};

    fn render(written: &Written) -> Answer {
        Answer {
            status: if matches!(written, Written::Stale { .. }) {
                412
            } else {
                200
            },
            headers: Vec::new(),
            body: format!("{written:?}").into(),
        }
    }

    fn setup(dir: &Path) -> (Registry, SqliteStore) {
        let store = SqliteStore::open(dir, SqliteOptions::default()).unwrap();
        let config = Arc::new(Config::default_for(dir));
        let registry = Registry::new(Arc::new(store.clone()), Metrics::new(), config, None);
        (registry, store)
    }

    fn insert(user: &str, key: &str, text: &str) -> WriteRequest {
        WriteRequest {
            user: user.into(),
            write: Write::Text {
                field: "t".into(),
                index: 0,
                delete: 0,
                insert: text.into(),
            },
            key: Some(RequestKey {
                key: key.into(),
                fingerprint: [text.len() as u8; 32],
            }),
            render,
        }
    }

    async fn text(registry: &Registry) -> String {
        let state = registry.read("doc", false).await.unwrap();
        state.texts.get("t").cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_keyed_write_runs_once_and_its_retries_get_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, _store) = setup(dir.path());
        let first = registry
            .write("doc", insert("ann", "k", "a"))
            .await
            .unwrap();
        assert!(!first.replayed);
        let again = registry
            .write("doc", insert("ann", "k", "a"))
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!((again.answer, again.sid), (first.answer, first.sid));
        assert_eq!(text(&registry).await, "a");
        // Another request with the key: refused, not run.
        let other = registry.write("doc", insert("ann", "k", "bb")).await;
        assert_eq!(other, Err(DocError::KeyReused));
        // Another user's key of the same name is another key; a request without a key runs
        // every time.
        registry
            .write("doc", insert("bob", "k", "c"))
            .await
            .unwrap();
        let mut plain = insert("ann", "", "d");
        plain.key = None;
        registry.write("doc", plain.clone()).await.unwrap();
        registry.write("doc", plain).await.unwrap();
        assert_eq!(text(&registry).await, "ddca");
    }

    #[tokio::test]
    async fn retries_arriving_while_the_first_runs_wait_for_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, store) = setup(dir.path());
        registry
            .write("doc", insert("ann", "x", "x"))
            .await
            .unwrap();
        let release = store.hold_writer().await;
        // Three requests with one key reach the task together: two wait behind the first's
        // lookup. The writer is held, so the first one's commit waits too.
        let three = futures_util::future::join3(
            registry.write("doc", insert("ann", "k", "a")),
            registry.write("doc", insert("ann", "k", "a")),
            registry.write("doc", insert("ann", "k", "bb")),
        );
        let fourth = async {
            while store.queued() < 1 {
                tokio::task::yield_now().await;
            }
            // The first one's batch is queued. A retry arriving now finds the key pending; a
            // read sent after it is answered once the task has taken it.
            let retry = registry.write("doc", insert("ann", "k", "a"));
            let barrier = async {
                registry.read("doc", false).await.unwrap();
                release.send(()).unwrap();
            };
            join(retry, barrier).await.0
        };
        let ((a, b, c), d) = join(three, fourth).await;
        let (a, b, d) = (a.unwrap(), b.unwrap(), d.unwrap());
        assert_eq!(c, Err(DocError::KeyReused));
        assert!(!a.replayed && b.replayed && d.replayed);
        assert_eq!((&b.answer, b.sid), (&a.answer, a.sid));
        assert_eq!((&d.answer, d.sid), (&a.answer, a.sid));
        assert_eq!(a.sid, 2);
        assert_eq!(text(&registry).await, "ax");
    }

    #[tokio::test]
    async fn a_key_outlives_its_document_task_and_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let (registry, store) = setup(dir.path());
            let first = registry
                .write("doc", insert("ann", "k", "a"))
                .await
                .unwrap();
            registry.close().await;
            store.close().await.unwrap();
            first
        };
        let (registry, _store) = setup(dir.path());
        let again = registry
            .write("doc", insert("ann", "k", "a"))
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!((again.answer, again.sid), (first.answer, first.sid));
        assert_eq!(text(&registry).await, "a");
    }

    #[tokio::test]
    async fn a_stale_conditional_write_is_remembered_and_a_refused_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, _store) = setup(dir.path());
        let field = |value: i64, expected: Option<&str>, key: &str| WriteRequest {
            user: "ann".into(),
            write: Write::Field {
                name: "f".into(),
                value: Some(json!(value)),
                expected: expected.map(str::to_owned),
            },
            key: Some(RequestKey {
                key: key.into(),
                fingerprint: [value as u8; 32],
            }),
            render,
        };
        let stale = registry
            .write("doc", field(1, Some("nope"), "s"))
            .await
            .unwrap();
        assert_eq!(stale.answer.status, 412);
        registry.write("doc", field(2, None, "w")).await.unwrap();
        // The retry gets the first answer, though the register changed meanwhile.
        let retry = registry
            .write("doc", field(1, Some("nope"), "s"))
            .await
            .unwrap();
        assert!(retry.replayed);
        assert_eq!(retry.answer, stale.answer);
        // A refused request (a bad offset) did nothing, so its key is still free.
        let mut bad = insert("ann", "r", "a");
        bad.write = Write::Text {
            field: "t".into(),
            index: 99,
            delete: 0,
            insert: "a".into(),
        };
        assert!(matches!(
            registry.write("doc", bad).await,
            Err(DocError::Invalid(_))
        ));
        let ok = registry
            .write("doc", insert("ann", "r", "ok"))
            .await
            .unwrap();
        assert!(!ok.replayed);
        assert_eq!(text(&registry).await, "ok");
    }
}
