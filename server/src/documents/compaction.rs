//! When a document's log is folded into a snapshot, and when that keeps a version-history
//! checkpoint: the policies live here, above the store, which only keeps what it is given.
//!
//! The owner task counts what the log holds since the last snapshot ([`Log`]) and, with nothing
//! in flight (so the encoded state is exactly the state at the last durable sid), compacts when
//! `--compact-after` / `--compact-after-bytes` say so. [`History`] remembers the last
//! checkpoint and who wrote since; a compaction keeps a checkpoint when `--checkpoint-every` /
//! `--checkpoint-interval` say so, crediting those authors. One task owns a document on this
//! node, so no two compactions of it run at once here.

use std::collections::BTreeSet;

use bytes::Bytes;
use tandem_engine::protocol::Room;

use crate::infra::config::History as HistoryConfig;
use crate::infra::store::{Compaction, Loaded, Sid, StoreError};

/// What the log holds since the last snapshot.
#[derive(Debug, Default, Clone, Copy)]
struct Log {
    entries: u64,
    bytes: u64,
}

/// Version history since the last checkpoint.
#[derive(Debug, Default)]
struct History {
    /// The last checkpoint's sid and time (unix milliseconds).
    last_checkpoint: Option<(Sid, u64)>,
    /// Users whose durable updates went in since it.
    authors: BTreeSet<String>,
}

/// One document's compaction bookkeeping and policies.
#[derive(Debug)]
pub(super) struct Compactor {
    log: Log,
    history: History,
    policies: HistoryConfig,
}

impl Compactor {
    /// A document that was never stored.
    pub(super) fn new(policies: HistoryConfig) -> Self {
        Compactor {
            log: Log::default(),
            history: History::default(),
            policies,
        }
    }

    /// A document as loaded: its log since the snapshot, and the store's history mark plus
    /// the authors of that log.
    pub(super) fn loaded(policies: HistoryConfig, stored: &Loaded) -> Self {
        let mark = &stored.history;
        let mut authors: BTreeSet<String> = mark.authors.iter().cloned().collect();
        authors.extend(stored.updates.iter().map(|e| e.author.clone()));
        Compactor {
            log: Log {
                entries: stored.updates.len() as u64,
                bytes: stored.log_bytes(),
            },
            history: History {
                last_checkpoint: mark.last_checkpoint,
                authors,
            },
            policies,
        }
    }

    /// Counts the bytes of a batch sent to the store.
    pub(super) fn submitted(&mut self, bytes: u64) {
        self.log.bytes += bytes;
    }

    /// Counts a durable update by `author`.
    pub(super) fn stored(&mut self, author: &str) {
        self.log.entries += 1;
        self.credit(author);
    }

    /// Credits `author` of an update another node stored (sharing the store). Only this
    /// node's own writes count toward the compaction policy: every node serving a document
    /// sees every update, and counting them all would make each node compact it, one after
    /// the other, for the same updates.
    pub(super) fn replicated(&mut self, author: &str) {
        self.credit(author);
    }

    fn credit(&mut self, author: &str) {
        if !self.history.authors.contains(author) {
            self.history.authors.insert(author.to_owned());
        }
    }

    /// Whether the compaction policy says to compact now.
    pub(super) fn is_due(&self) -> bool {
        self.policies
            .compaction
            .is_due(self.log.entries, self.log.bytes)
    }

    /// The compaction to store now: the room's document as the snapshot at `sid`, with a
    /// checkpoint when the policy says so at `now_ms`. Only call it with nothing of the
    /// document in flight, so the state is exactly the state at `sid`. The log count restarts
    /// here, so a failure waits for another policy's worth of updates instead of retrying on
    /// every turn; hand the store's answer to [`Compactor::finished`].
    pub(super) fn begin(&mut self, room: &Room, sid: Sid, now_ms: u64) -> Compaction {
        let checkpoint =
            self.policies
                .checkpoints
                .is_due(self.history.last_checkpoint, sid, now_ms);
        self.log = Log::default();
        Compaction {
            upto: sid,
            state: Bytes::from(room.document().encode_state()),
            authors: self.history.authors.iter().cloned().collect(),
            checkpoint_at: checkpoint.then_some(now_ms),
        }
    }

    /// Takes the store's answer to a compaction: on success the sid it folded the log up to
    /// and when the checkpoint it kept was made, if it kept one. Returns whether it was stored.
    pub(super) fn finished(
        &mut self,
        doc: &str,
        result: Result<(Sid, Option<u64>), StoreError>,
    ) -> bool {
        match result {
            Ok((upto, checkpoint_at)) => {
                if let Some(at) = checkpoint_at {
                    self.history.last_checkpoint = Some((upto, at));
                    self.history.authors.clear();
                }
                true
            }
            // Another node sharing the store compacted further first: nothing to do.
            Err(e @ StoreError::CompactBehindSnapshot { .. }) => {
                tracing::debug!(doc = %doc, cause = %e, "another node compacted first");
                false
            }
            Err(e) => {
                tracing::warn!(doc = %doc, cause = %e, "compaction failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::config::Config;
    use crate::infra::store::{HistoryMark, LogEntry};

    #[test]
    fn history_starts_from_the_stored_mark_and_the_log() {
        let entry = |sid, author: &str| LogEntry {
            sid,
            update: Bytes::from_static(b"abc"),
            author: author.to_owned(),
            at: 0,
        };
        let policies = Config::default_for("/unused").history;
        let stored = Loaded {
            snapshot: None,
            updates: vec![entry(5, "bob"), entry(6, "ada")],
            last_sid: 6,
            history: HistoryMark {
                last_checkpoint: Some((4, 99)),
                authors: vec!["ada".into()],
            },
        };
        let mut c = Compactor::loaded(policies, &stored);
        c.stored("cy");
        assert_eq!(c.history.last_checkpoint, Some((4, 99)));
        let authors: Vec<&str> = c.history.authors.iter().map(String::as_str).collect();
        assert_eq!(authors, ["ada", "bob", "cy"]);
        assert_eq!((c.log.entries, c.log.bytes), (3, 6));
    }

    #[test]
    fn only_this_nodes_writes_make_a_compaction_due_and_every_author_is_credited() {
        let mut policies = Config::default_for("/unused").history;
        policies.compaction.after_updates = 3;
        let mut c = Compactor::new(policies);
        for author in ["ada", "bob", "cy", "ada"] {
            c.replicated(author);
        }
        assert!(!c.is_due(), "other nodes' updates are theirs to compact");
        c.stored("dan");
        c.stored("dan");
        assert!(!c.is_due());
        c.stored("dan");
        assert!(c.is_due());
        let authors: Vec<&str> = c.history.authors.iter().map(String::as_str).collect();
        assert_eq!(authors, ["ada", "bob", "cy", "dan"]);
    }
}
