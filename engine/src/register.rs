//! Last-write-wins registers stored inside the Yjs document.
//!
//! # Encoding
//!
//! All registers live in one top-level `Y.Map` named [`REGISTERS_MAP`]. Every write is its own
//! entry: the key is `"<name>#<version>"` and the value is a string holding a JSON object
//!
//! ```json
//! {"name": "status", "value": "done", "deleted": false,
//!  "wall": 1732270000000, "counter": 0, "client": 1234, "author": "alice"}
//! ```
//!
//! `wall`/`counter` form the write's hybrid logical clock; `client` is the writer's Yjs client
//! id. A register's value is the entry with the greatest `(wall, counter, client)` among the
//! entries named after it; `deleted: true` means the register was deleted by that write. Its
//! `version` is `"<wall>-<counter>-<client>"`, the same on every replica. An entry counts only
//! when its key is exactly `"<name>#<version>"` of its own JSON; anything else in the map is
//! ignored by every reader.
//!
//! A writer removes the entries it has seen for that register when it adds its own, which is
//! greater than all of them: the greatest write ever made is never removed, so every replica that
//! has seen the same updates picks the same winner, whatever the delivery order.
//!
//! The clock rule: a new write takes `wall = max(now, greatest wall seen)`; the counter restarts
//! at 0 when `wall` moved forward and otherwise counts up. So a write made later in real time
//! wins even when it arrives earlier, and a write made after seeing another always beats it.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Name of the top-level `Y.Map` holding register writes.
pub const REGISTERS_MAP: &str = "tandem:registers";

/// A hybrid logical timestamp naming one register write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch (as the writer's clock saw it, or later).
    pub wall: u64,
    /// Tie counter within one `wall` millisecond.
    pub counter: u32,
    /// Yjs client id of the writer; breaks remaining ties.
    pub client: u64,
}

impl Stamp {
    /// The opaque version token naming this write.
    pub fn version(&self) -> String {
        format!("{}-{}-{}", self.wall, self.counter, self.client)
    }

    /// The next stamp for a write by `client` at `now_ms`, after every stamp in `seen`.
    pub fn next(now_ms: u64, client: u64, seen: impl IntoIterator<Item = Stamp>) -> Stamp {
        let mut wall = 0;
        let mut counter = 0;
        for s in seen {
            if (s.wall, s.counter) > (wall, counter) {
                wall = s.wall;
                counter = s.counter;
            }
        }
        if now_ms > wall {
            Stamp {
                wall: now_ms,
                counter: 0,
                client,
            }
        } else {
            Stamp {
                wall,
                counter: counter.saturating_add(1),
                client,
            }
        }
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.wall, self.counter, self.client).cmp(&(other.wall, other.counter, other.client))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One register write as stored in the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Register name.
    pub name: String,
    /// The value written (`null` when deleted).
    #[serde(default)]
    pub value: serde_json::Value,
    /// True when this write deleted the register.
    #[serde(default)]
    pub deleted: bool,
    /// Hybrid clock wall time, ms.
    pub wall: u64,
    /// Hybrid clock counter.
    pub counter: u32,
    /// Writer's Yjs client id.
    pub client: u64,
    /// Who wrote it (user id), if known.
    #[serde(default)]
    pub author: Option<String>,
}

impl Entry {
    /// The write's stamp.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            wall: self.wall,
            counter: self.counter,
            client: self.client,
        }
    }

    /// The map key this entry is stored under.
    pub fn key(&self) -> String {
        format!("{}#{}", self.name, self.stamp().version())
    }

    /// Parses a stored entry; entries that do not parse are ignored by readers.
    pub fn parse(json: &str) -> Option<Entry> {
        serde_json::from_str(json).ok()
    }
}

/// The current state of a register, as every API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// Current value.
    pub value: serde_json::Value,
    /// Opaque token naming the winning write.
    pub version: String,
    /// Who made the winning write.
    pub author: Option<String>,
    /// When the winning write was made (hybrid clock wall time, ms).
    pub at: u64,
}

impl From<&Entry> for FieldValue {
    fn from(e: &Entry) -> Self {
        FieldValue {
            value: e.value.clone(),
            version: e.stamp().version(),
            author: e.author.clone(),
            at: e.wall,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_wall_time_wins_and_ties_break_by_client() {
        let a = Stamp {
            wall: 10,
            counter: 0,
            client: 9,
        };
        let b = Stamp {
            wall: 11,
            counter: 0,
            client: 1,
        };
        assert!(b > a);
        let c = Stamp {
            wall: 11,
            counter: 0,
            client: 2,
        };
        assert!(c > b);
    }

    #[test]
    fn next_stamp_follows_what_was_seen_even_with_a_slow_clock() {
        let seen = Stamp {
            wall: 1_000,
            counter: 3,
            client: 5,
        };
        let n = Stamp::next(500, 1, [seen]);
        assert_eq!((n.wall, n.counter, n.client), (1_000, 4, 1));
        assert!(n > seen);
        let n = Stamp::next(2_000, 1, [seen]);
        assert_eq!((n.wall, n.counter), (2_000, 0));
    }
}
