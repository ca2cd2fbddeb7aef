//! The order in which a document takes its durable updates: sid by sid, without gap.
//!
//! On one node every update is this node's own and arrives in order. With several nodes
//! sharing a store, the sids of one document are handed out by the store to every node's
//! appends, so a node sees its own batch at sids 10–12 while 8–9 (another node's) are still on
//! their way over the bus, or were lost by it. [`Sequence`] holds what arrived early and hands
//! it on only at its turn, so event streams publish in sid order and acknowledgements never
//! name a sid whose predecessors this node has not published. What is known to exist but has
//! not arrived (a gap) is read from the store by the document task after a short wait
//! ([`Sequence::gap`]).
//!
//! This node's own updates are already in its replica when they become durable (they were
//! applied when accepted); other nodes' updates are applied when their turn comes.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::infra::store::Sid;

/// An update another node stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Remote {
    pub sid: Sid,
    pub update: Bytes,
    pub author: String,
}

/// What comes next, in sid order.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next<L> {
    /// Another node's update: apply it, then publish it.
    Remote(Remote),
    /// This node's batch whose sids run up to `last`: publish its updates after `after` (the
    /// ones before were already taken, read back from the store), then acknowledge it.
    Local {
        /// The batch.
        batch: L,
        /// Its sids up to here were already published.
        after: Sid,
    },
}

/// A document's durable updates, put in sid order. `L` is what the task keeps of one of its
/// own committed batches.
#[derive(Debug)]
pub(super) struct Sequence<L> {
    /// Every sid up to this one has been taken (applied and published).
    taken: Sid,
    /// The highest sid known to be stored.
    known: Sid,
    remote: BTreeMap<Sid, Remote>,
    /// This node's committed batches by their first sid, with their last.
    local: BTreeMap<Sid, (Sid, L)>,
}

impl<L> Sequence<L> {
    /// A document loaded at `sid`.
    pub(super) fn new(sid: Sid) -> Self {
        Sequence {
            taken: sid,
            known: sid,
            remote: BTreeMap::new(),
            local: BTreeMap::new(),
        }
    }

    /// Every sid up to this one has been taken.
    pub(super) fn taken(&self) -> Sid {
        self.taken
    }

    /// Another node's update arrived (over the bus, or read from the store). Ignored when
    /// already taken.
    pub(super) fn remote(&mut self, remote: Remote) {
        self.saw(remote.sid);
        if remote.sid > self.taken {
            self.remote.entry(remote.sid).or_insert(remote);
        }
    }

    /// This node's batch became durable at `first..=last`.
    pub(super) fn local(&mut self, first: Sid, last: Sid, batch: L) {
        self.saw(last);
        self.local.insert(first, (last, batch));
    }

    /// The store holds updates up to `sid`.
    pub(super) fn saw(&mut self, sid: Sid) {
        self.known = self.known.max(sid);
    }

    /// The next thing to take, when it is at its turn. A local batch goes first: an update
    /// read back from the store may be one of this node's own, already in the replica.
    pub(super) fn next(&mut self) -> Option<Next<L>> {
        let after = self.taken;
        if let Some(entry) = self.local.first_entry() {
            if *entry.key() <= after + 1 {
                let (last, batch) = entry.remove();
                self.taken = self.taken.max(last);
                self.drop_taken();
                return Some(Next::Local { batch, after });
            }
        }
        let entry = self.remote.first_entry()?;
        if *entry.key() != after + 1 {
            return None;
        }
        let remote = entry.remove();
        self.taken = remote.sid;
        Some(Next::Remote(remote))
    }

    fn drop_taken(&mut self) {
        while let Some(entry) = self.remote.first_entry() {
            if *entry.key() > self.taken {
                break;
            }
            entry.remove();
        }
    }

    /// Whether an update known to exist has not been taken: nothing more can be taken until
    /// it arrives.
    pub(super) fn gap(&self) -> bool {
        self.known > self.taken
    }

    /// The replica now holds everything up to `sid` (a snapshot was merged into it): what
    /// waits up to there is skipped, this node's batches up to there come out of
    /// [`Sequence::next`] only to be acknowledged.
    pub(super) fn skip_to(&mut self, sid: Sid) {
        self.saw(sid);
        self.taken = self.taken.max(sid);
        self.drop_taken();
    }

    /// Forgets what waits (the document failed).
    pub(super) fn clear(&mut self) {
        self.remote.clear();
        self.local.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(sid: Sid) -> Remote {
        Remote {
            sid,
            update: Bytes::from(vec![sid as u8]),
            author: "bob".into(),
        }
    }

    fn drain(s: &mut Sequence<&'static str>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(next) = s.next() {
            out.push(match next {
                Next::Remote(r) => format!("r{}", r.sid),
                Next::Local { batch, after } => format!("{batch}>{after}"),
            });
        }
        out
    }

    #[test]
    fn in_order_updates_pass_straight_through() {
        let mut s = Sequence::new(4);
        s.local(5, 6, "a");
        assert_eq!(drain(&mut s), ["a>4"]);
        s.remote(remote(7));
        assert_eq!(drain(&mut s), ["r7"]);
        assert_eq!((s.taken(), s.gap()), (7, false));
    }

    /// This node's batch at 3..=4 waits for another node's 2, which arrives late; then both go
    /// in sid order.
    #[test]
    fn a_local_batch_waits_for_the_gap_before_it() {
        let mut s = Sequence::new(1);
        s.local(3, 4, "mine");
        assert!(drain(&mut s).is_empty());
        assert!(s.gap());
        s.remote(remote(5));
        s.remote(remote(2));
        assert_eq!(drain(&mut s), ["r2", "mine>2", "r5"]);
        assert!(!s.gap());
    }

    /// Read back from the store, this node's own updates come as "remote" too: whichever came
    /// first is taken, the other is skipped or only acknowledged.
    #[test]
    fn own_updates_read_back_from_the_store_are_not_taken_twice() {
        let mut s = Sequence::new(0);
        s.saw(3);
        s.remote(remote(1));
        s.remote(remote(2));
        assert_eq!(drain(&mut s), ["r1", "r2"]);
        // The batch 2..=3 is this node's; 2 was read back already.
        s.local(2, 3, "mine");
        s.remote(remote(3));
        assert_eq!(drain(&mut s), ["mine>2"]);
        assert_eq!(s.taken(), 3);
        // A late duplicate of a taken sid is ignored.
        s.remote(remote(3));
        assert!(drain(&mut s).is_empty());
        // A batch entirely read back already is only acknowledged.
        s.remote(remote(4));
        assert_eq!(drain(&mut s), ["r4"]);
        s.local(4, 4, "late");
        assert_eq!(drain(&mut s), ["late>4"]);
    }

    /// Behind the store's snapshot: the replica takes the snapshot; what waited up to it is
    /// skipped, this node's batches up to it are only acknowledged, later ones go on.
    #[test]
    fn skipping_to_a_snapshot_keeps_what_comes_after() {
        let mut s = Sequence::new(2);
        s.local(5, 6, "mine");
        s.remote(remote(4));
        s.remote(remote(9));
        s.skip_to(7);
        assert_eq!(drain(&mut s), ["mine>7"]);
        s.remote(remote(8));
        assert_eq!(drain(&mut s), ["r8", "r9"]);
        assert!(!s.gap());
    }

    #[test]
    fn a_known_sid_not_yet_arrived_is_a_gap() {
        let mut s: Sequence<&str> = Sequence::new(10);
        assert!(!s.gap());
        s.saw(12);
        assert!(s.gap());
        s.remote(remote(12));
        assert!(drain(&mut s).is_empty());
        s.remote(remote(11));
        assert_eq!(drain(&mut s), ["r11", "r12"]);
        assert!(!s.gap());
    }
}
