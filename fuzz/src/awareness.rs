//! What a stock client believes about everyone's presence: y-protocols' `applyAwarenessUpdate`
//! (`y-protocols/awareness.js`), entry by entry, for an observer that has no state of its own.

use crate::frames::AwarenessEntry;
use std::collections::BTreeMap;

/// One client's entry as the observer keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The entry's clock.
    pub clock: u32,
    /// The state's JSON text; `None` once removed.
    pub json: Option<String>,
}

/// An observer's view of the awareness states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirror {
    meta: BTreeMap<u64, Seen>,
}

impl Mirror {
    /// Applies the entries of one awareness message in order, as y-protocols does: an entry wins
    /// when its clock is newer than the known one (0 when the client is unknown), or equal with
    /// a `null` state while a state is present.
    pub fn apply(&mut self, entries: &[AwarenessEntry]) {
        for e in entries {
            let is_null = serde_json::from_str::<serde_json::Value>(&e.json)
                .map(|v| v.is_null())
                .unwrap_or(false);
            let (current_clock, present) = match self.meta.get(&e.client) {
                Some(s) => (s.clock, s.json.is_some()),
                None => (0, false),
            };
            if current_clock < e.clock || (current_clock == e.clock && is_null && present) {
                self.meta.insert(
                    e.client,
                    Seen {
                        clock: e.clock,
                        json: (!is_null).then(|| e.json.clone()),
                    },
                );
            }
        }
    }

    /// The clock this observer knows for `client` (0 when unknown).
    pub fn clock_of(&self, client: u64) -> u32 {
        self.meta.get(&client).map(|s| s.clock).unwrap_or(0)
    }

    /// Every client this observer knows, as entries (removed ones with a `null` state), in
    /// client id order: what a stock client re-sends when their states change.
    pub fn entries(&self) -> Vec<AwarenessEntry> {
        self.meta
            .iter()
            .map(|(id, s)| AwarenessEntry {
                client: *id,
                clock: s.clock,
                json: s.json.clone().unwrap_or_else(|| "null".to_owned()),
            })
            .collect()
    }

    /// The present states, by client id: `(clock, json)`.
    pub fn present(&self) -> BTreeMap<u64, (u32, String)> {
        self.meta
            .iter()
            .filter_map(|(id, s)| s.json.as_ref().map(|j| (*id, (s.clock, j.clone()))))
            .collect()
    }
}
