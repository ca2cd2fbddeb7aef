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
use std::sync::Arc;

use bytes::Bytes;
use tandem_engine::protocol::Room;

use crate::infra::config::{CheckpointPolicy, CompactionPolicy};
use crate::infra::store::{Compaction, HistoryMark, LogEntry, Sid, Store};

/// What the log holds since the last snapshot.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Log {
    pub entries: u64,
    pub bytes: u64,
}

impl Log {
    /// Whether the policy says to compact now.
    pub(super) fn is_due(&self, policy: &CompactionPolicy) -> bool {
        policy.is_due(self.entries, self.bytes)
    }
}

/// Version history since the last checkpoint.
#[derive(Debug, Default)]
pub(super) struct History {
    /// The last checkpoint's sid and time (unix milliseconds).
    last_checkpoint: Option<(Sid, u64)>,
    /// Users whose durable updates went in since it.
    authors: BTreeSet<String>,
}

impl History {
    /// Where history stood when the document was loaded: the store's mark, plus the authors of
    /// the log entries not yet compacted.
    pub(super) fn loaded(mark: HistoryMark, log: &[LogEntry]) -> Self {
        let mut authors: BTreeSet<String> = mark.authors.into_iter().collect();
        authors.extend(log.iter().map(|e| e.author.clone()));
        History {
            last_checkpoint: mark.last_checkpoint,
            authors,
        }
    }

    /// Counts a durable update by `author`.
    pub(super) fn wrote(&mut self, author: &str) {
        if !self.authors.contains(author) {
            self.authors.insert(author.to_owned());
        }
    }
}

/// Stores the room's document as the snapshot at `sid` (keeping a checkpoint when `policy`
/// says so at `now_ms`) and drops the log up to it. Returns whether it did; a failure is
/// logged and the counters reset anyway, so the next try waits for another policy's worth of
/// updates instead of running on every turn.
#[allow(clippy::too_many_arguments)]
pub(super) async fn compact(
    store: &Arc<dyn Store>,
    doc: &str,
    room: &Room,
    sid: Sid,
    log: &mut Log,
    history: &mut History,
    policy: &CheckpointPolicy,
    now_ms: u64,
) -> bool {
    let checkpoint = policy.is_due(history.last_checkpoint, sid, now_ms);
    let compaction = Compaction {
        upto: sid,
        state: Bytes::from(room.document().encode_state()),
        authors: history.authors.iter().cloned().collect(),
        checkpoint_at: checkpoint.then_some(now_ms),
    };
    *log = Log::default();
    match store.compact(doc, compaction).await {
        Ok(_) => {
            if checkpoint {
                history.last_checkpoint = Some((sid, now_ms));
                history.authors.clear();
            }
            true
        }
        Err(e) => {
            tracing::warn!(doc = %doc, cause = %e, "compaction failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_starts_from_the_stored_mark_and_the_log() {
        let entry = |sid, author: &str| LogEntry {
            sid,
            update: Bytes::new(),
            author: author.to_owned(),
            at: 0,
        };
        let mut h = History::loaded(
            HistoryMark {
                last_checkpoint: Some((4, 99)),
                authors: vec!["ada".into()],
            },
            &[entry(5, "bob"), entry(6, "ada")],
        );
        h.wrote("cy");
        assert_eq!(h.last_checkpoint, Some((4, 99)));
        let authors: Vec<&str> = h.authors.iter().map(String::as_str).collect();
        assert_eq!(authors, ["ada", "bob", "cy"]);
    }
}
