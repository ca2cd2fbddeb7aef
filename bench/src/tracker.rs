//! Matching what readers receive to what writers sent, for latency and completeness.
//!
//! Every edit a writer will send gets a sequence number up front, and a key: for a document
//! update, the first id it inserts (or, for a delete-only update, the first id it deletes); for
//! an awareness update, the (client id, clock) pair. A reader scans each message it receives
//! for ids, finds the sequence numbers whose keys fall inside (so a server that merges several
//! updates into one message still gets every edit matched) and takes the latency as the
//! reader's receive time minus the writer's send time, both from one process clock.

use std::collections::HashMap as StdHashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::lib0::DecodeError;
use crate::protocol::awareness_entries;
use crate::scan::{scan_update, IdRange, Ids};

/// Client ids are chosen by the workloads, not by an adversary: a multiplicative hash is
/// enough, and SipHash showed up in profiles of the reader hot path.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<IdHasher>>;

/// The process-wide epoch, and the wall clock's reading then (Unix nanoseconds).
static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();

fn epoch() -> &'static (Instant, u64) {
    EPOCH.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (Instant::now(), wall)
    })
}

/// Nanoseconds since the process-wide epoch (the first call). Every send and receive timestamp
/// comes from this one clock.
pub fn now_ns() -> u64 {
    epoch().0.elapsed().as_nanos() as u64
}

/// A wall-clock time (Unix nanoseconds, as the kernel stamps received data) on the clock of
/// [`now_ns`]: both clocks advance together while nobody steps the wall clock during a run.
pub fn from_realtime_ns(unix_ns: u64) -> u64 {
    unix_ns.saturating_sub(epoch().1).max(1)
}

/// Builds a [`Tracker`]: register every edit, then [`TrackerBuilder::build`].
#[derive(Debug, Default)]
pub struct TrackerBuilder {
    inserts: HashMap<u64, Vec<(u32, u32)>>,
    deletes: HashMap<u64, Vec<(u32, u32)>>,
    owner: Vec<u32>,
}

impl TrackerBuilder {
    /// Registers a document update sent by writer `owner`; returns its sequence number, or
    /// `None` when the update changes nothing (no key, nothing to wait for).
    pub fn add_update(&mut self, owner: u32, update: &[u8]) -> Result<Option<u32>, DecodeError> {
        let mut first_insert: Option<IdRange> = None;
        let mut first_delete: Option<IdRange> = None;
        scan_update(update, |ids| match ids {
            Ids::Inserted(r) => {
                first_insert.get_or_insert(r);
            }
            Ids::Deleted(r) => {
                first_delete.get_or_insert(r);
            }
        })?;
        let seq = self.owner.len() as u32;
        if let Some(r) = first_insert {
            self.inserts
                .entry(r.client)
                .or_default()
                .push((r.start, seq));
        } else if let Some(r) = first_delete {
            self.deletes
                .entry(r.client)
                .or_default()
                .push((r.start, seq));
        } else {
            return Ok(None);
        }
        self.owner.push(owner);
        Ok(Some(seq))
    }

    /// Registers an awareness update `(client, clock)` sent by writer `owner`.
    pub fn add_awareness(&mut self, owner: u32, client: u64, clock: u32) -> u32 {
        let seq = self.owner.len() as u32;
        self.inserts.entry(client).or_default().push((clock, seq));
        self.owner.push(owner);
        seq
    }

    /// Freezes the index.
    pub fn build(mut self) -> Tracker {
        for v in self.inserts.values_mut().chain(self.deletes.values_mut()) {
            v.sort_unstable();
        }
        let writers = self
            .owner
            .iter()
            .map(|o| *o as usize + 1)
            .max()
            .unwrap_or(0);
        let mut per_owner = vec![0u32; writers];
        for o in &self.owner {
            per_owner[*o as usize] += 1;
        }
        Tracker {
            sent: (0..self.owner.len()).map(|_| AtomicU64::new(0)).collect(),
            inserts: self.inserts,
            deletes: self.deletes,
            owner: self.owner,
            per_owner,
        }
    }
}

/// The frozen index of tracked edits plus their send times. Shared by every client task.
#[derive(Debug)]
pub struct Tracker {
    /// Send time of each edit in ns since the epoch, plus one; 0 while unsent.
    sent: Vec<AtomicU64>,
    inserts: HashMap<u64, Vec<(u32, u32)>>,
    deletes: HashMap<u64, Vec<(u32, u32)>>,
    owner: Vec<u32>,
    per_owner: Vec<u32>,
}

fn in_range(index: &HashMap<u64, Vec<(u32, u32)>>, r: IdRange, f: &mut impl FnMut(u32)) {
    if let Some(v) = index.get(&r.client) {
        let from = v.partition_point(|(k, _)| *k < r.start);
        for (k, seq) in &v[from..] {
            if *k >= r.end {
                break;
            }
            f(*seq);
        }
    }
}

impl Tracker {
    /// Number of tracked edits.
    pub fn len(&self) -> usize {
        self.owner.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }

    /// The writer that sends edit `seq`.
    pub fn owner(&self, seq: u32) -> u32 {
        self.owner[seq as usize]
    }

    /// How many edits writer `owner` sends.
    pub fn count_of(&self, owner: u32) -> u32 {
        self.per_owner.get(owner as usize).copied().unwrap_or(0)
    }

    /// Records that edit `seq` is being sent now.
    pub fn mark_sent(&self, seq: u32) {
        self.sent[seq as usize].store(now_ns() + 1, Ordering::Release);
    }

    /// When edit `seq` was sent, in ns since the epoch.
    pub fn sent_at(&self, seq: u32) -> Option<u64> {
        match self.sent[seq as usize].load(Ordering::Acquire) {
            0 => None,
            t => Some(t - 1),
        }
    }

    /// Calls `f` with the sequence number of every tracked edit a document update carries.
    pub fn match_update(&self, update: &[u8], mut f: impl FnMut(u32)) -> Result<(), DecodeError> {
        scan_update(update, |ids| match ids {
            Ids::Inserted(r) => in_range(&self.inserts, r, &mut f),
            Ids::Deleted(r) => in_range(&self.deletes, r, &mut f),
        })
    }

    /// Calls `f` with the sequence number of every tracked awareness entry in an update.
    pub fn match_awareness(
        &self,
        update: &[u8],
        mut f: impl FnMut(u32),
    ) -> Result<(), DecodeError> {
        awareness_entries(update, |client, clock, _| {
            in_range(
                &self.inserts,
                IdRange {
                    client,
                    start: clock,
                    end: clock + 1,
                },
                &mut f,
            )
        })
    }
}

/// Which tracked edits one reader has received.
#[derive(Debug, Clone)]
pub struct Coverage {
    bits: Vec<u64>,
    /// Edits received, the reader's own excluded.
    got: u32,
    /// Edits expected: all tracked ones except the reader's own.
    want: u32,
    /// The writer index of the reader itself, if it writes.
    me: Option<u32>,
}

impl Coverage {
    /// Coverage for a reader that is writer `me` (or no writer).
    pub fn new(tracker: &Tracker, me: Option<u32>) -> Self {
        let own = me.map(|m| tracker.count_of(m)).unwrap_or(0);
        Coverage {
            bits: vec![0; tracker.len().div_ceil(64)],
            got: 0,
            want: tracker.len() as u32 - own,
            me,
        }
    }

    /// Marks `seq` received; true the first time, for edits not the reader's own.
    pub fn mark(&mut self, tracker: &Tracker, seq: u32) -> bool {
        if Some(tracker.owner(seq)) == self.me {
            return false;
        }
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.bits[w] & (1 << b) != 0 {
            return false;
        }
        self.bits[w] |= 1 << b;
        self.got += 1;
        true
    }

    /// Whether edit `seq` has arrived (always false for the reader's own edits).
    pub fn has(&self, seq: u32) -> bool {
        self.bits
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Whether every expected edit has arrived.
    pub fn complete(&self) -> bool {
        self.got >= self.want
    }

    /// Expected edits not received yet.
    pub fn missing<'a>(&'a self, tracker: &'a Tracker) -> impl Iterator<Item = u32> + 'a {
        (0..tracker.len() as u32).filter(move |seq| {
            Some(tracker.owner(*seq)) != self.me
                && self.bits[(seq / 64) as usize] & (1 << (seq % 64)) == 0
        })
    }

    /// Edits received so far.
    pub fn got(&self) -> u32 {
        self.got
    }

    /// Edits expected.
    pub fn want(&self) -> u32 {
        self.want
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Editor, Patch};

    #[test]
    fn matches_single_and_merged_updates_including_deletes() {
        let w = Editor::new(5).ascii_only(true);
        let edits = [
            vec![Patch(0, 0, "hello".into())],
            vec![Patch(5, 0, "!".into())],
            vec![Patch(0, 1, "".into())],
            vec![Patch(0, 1, "".into())],
            vec![Patch(3, 0, "xy".into())],
        ];
        let updates: Vec<Vec<u8>> = edits.iter().map(|p| w.apply(p).expect("applies")).collect();
        let mut b = TrackerBuilder::default();
        for u in &updates {
            b.add_update(0, u).expect("scans").expect("has a key");
        }
        let t = b.build();
        assert_eq!(t.len(), 5);
        for (i, u) in updates.iter().enumerate() {
            let mut got = Vec::new();
            t.match_update(u, |s| got.push(s)).expect("scans");
            assert_eq!(got, vec![i as u32], "update {i}");
        }
        let merged = yrs::merge_updates_v1(&updates).expect("merges");
        let mut got = Vec::new();
        t.match_update(&merged, |s| got.push(s)).expect("scans");
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);

        let mut reader = Coverage::new(&t, None);
        let mut writer = Coverage::new(&t, Some(0));
        for s in got {
            assert!(reader.mark(&t, s));
            assert!(!reader.mark(&t, s));
            assert!(!writer.mark(&t, s));
        }
        assert!(reader.complete());
        assert!(writer.complete());
        assert_eq!(reader.missing(&t).count(), 0);
        let fresh = Coverage::new(&t, None);
        assert_eq!(fresh.missing(&t).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn awareness_and_send_times() {
        let mut b = TrackerBuilder::default();
        let s0 = b.add_awareness(0, 77, 2);
        let s1 = b.add_awareness(1, 78, 2);
        let t = b.build();
        assert_eq!(t.sent_at(s0), None);
        t.mark_sent(s0);
        assert!(t.sent_at(s0).is_some());
        let u = crate::protocol::awareness_update(78, 2, "{}");
        let mut got = Vec::new();
        t.match_awareness(&u, |s| got.push(s)).expect("decodes");
        assert_eq!(got, vec![s1]);
        assert_eq!(t.count_of(1), 1);
    }
}
