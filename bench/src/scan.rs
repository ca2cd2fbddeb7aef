//! A lightweight scanner for Yjs v1 updates: it reports which ids an update inserts (per client,
//! a clock range) and which ids it deletes, without building a document. Readers use it to
//! match every received update to the edits the writers sent, even when a server merges
//! several edits into one message.
//!
//! Content kinds understood: GC, skip, deleted, string, JSON, binary, embed and format. The
//! workloads only produce strings; a kind it cannot skip ends the scan with an error.

use crate::lib0::{Cursor, DecodeError};

const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;

/// A run of ids `client:[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The client id.
    pub client: u64,
    /// First clock in the run.
    pub start: u32,
    /// One past the last clock in the run.
    pub end: u32,
}

/// What a scanned update holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// A struct group: the ids one client's blocks occupy.
    Inserted(IdRange),
    /// A range of the delete set.
    Deleted(IdRange),
}

/// Calls `f` for every struct group of the update (one per client) and then for every range
/// of its delete set.
pub fn scan_update(update: &[u8], mut f: impl FnMut(Ids)) -> Result<(), DecodeError> {
    let mut c = Cursor::new(update);
    let groups = c.var_u64()?;
    for _ in 0..groups {
        let blocks = c.var_u64()?;
        let client = c.var_u64()?;
        let start = c.var_u32()?;
        let mut clock = start;
        for _ in 0..blocks {
            clock = clock.saturating_add(block_len(&mut c)?);
        }
        if clock > start {
            f(Ids::Inserted(IdRange {
                client,
                start,
                end: clock,
            }));
        }
    }
    let clients = c.var_u64()?;
    for _ in 0..clients {
        let client = c.var_u64()?;
        let ranges = c.var_u64()?;
        for _ in 0..ranges {
            let start = c.var_u32()?;
            let len = c.var_u32()?;
            f(Ids::Deleted(IdRange {
                client,
                start,
                end: start.saturating_add(len),
            }));
        }
    }
    Ok(())
}

/// Reads one block and returns its length in clock units.
fn block_len(c: &mut Cursor<'_>) -> Result<u32, DecodeError> {
    let info = c.u8()?;
    match info {
        // GC and skip: just a length.
        0 | 10 => return c.var_u32(),
        _ => {}
    }
    if info & HAS_ORIGIN != 0 {
        c.var_u64()?;
        c.var_u64()?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        c.var_u64()?;
        c.var_u64()?;
    }
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        if c.var_u64()? == 1 {
            c.var_bytes()?;
        } else {
            c.var_u64()?;
            c.var_u64()?;
        }
        if info & HAS_PARENT_SUB != 0 {
            c.var_bytes()?;
        }
    }
    match info & 0b1_1111 {
        // Deleted content: a length.
        1 => c.var_u32(),
        // JSON: a count of strings.
        2 => {
            let n = c.var_u32()?;
            for _ in 0..n {
                c.var_bytes()?;
            }
            Ok(n)
        }
        // Binary: one buffer.
        3 => c.var_bytes().map(|_| 1),
        // String: its length counts UTF-16 code units.
        4 => Ok(utf16_len(c.var_str()?)),
        // Embed: one JSON string.
        5 => c.var_bytes().map(|_| 1),
        // Format: key and JSON value.
        6 => {
            c.var_bytes()?;
            c.var_bytes()?;
            Ok(1)
        }
        other => Err(DecodeError::Content(other)),
    }
}

fn utf16_len(s: &str) -> u32 {
    if s.is_ascii() {
        return s.len() as u32;
    }
    s.chars().map(|ch| ch.len_utf16() as u32).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    fn scan(update: &[u8]) -> (Vec<IdRange>, Vec<IdRange>) {
        let (mut ins, mut del) = (Vec::new(), Vec::new());
        scan_update(update, |ids| match ids {
            Ids::Inserted(r) => ins.push(r),
            Ids::Deleted(r) => del.push(r),
        })
        .expect("scans");
        (ins, del)
    }

    #[test]
    fn reports_inserted_and_deleted_ids_of_yrs_updates() {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("text");
        let first = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "héllo 😀");
            txn.encode_update_v1()
        };
        // "héllo 😀" is 8 UTF-16 units.
        let r = IdRange {
            client: 7,
            start: 0,
            end: 8,
        };
        assert_eq!(scan(&first), (vec![r], vec![]));
        let second = {
            let mut txn = doc.transact_mut();
            // Offsets count UTF-8 bytes here: this removes "é", one id.
            text.remove_range(&mut txn, 1, 2);
            text.insert(&mut txn, 0, "ab");
            txn.encode_update_v1()
        };
        let (ins, del) = scan(&second);
        assert_eq!(
            ins,
            vec![IdRange {
                client: 7,
                start: 8,
                end: 10
            }]
        );
        assert_eq!(
            del,
            vec![IdRange {
                client: 7,
                start: 1,
                end: 2
            }]
        );
        let third = {
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 0, 1);
            txn.encode_update_v1()
        };
        let (ins, del) = scan(&third);
        assert!(ins.is_empty());
        assert_eq!(del.len(), 1);
        assert_eq!(text.get_string(&doc.transact()), "bhllo 😀");
    }

    #[test]
    fn merged_updates_cover_every_edit() {
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text("text");
        let mut updates = Vec::new();
        for i in 0..5u32 {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, i, "x");
            updates.push(txn.encode_update_v1());
        }
        let merged = yrs::merge_updates_v1(&updates).expect("merges");
        let (ins, _) = scan(&merged);
        assert_eq!(
            ins,
            vec![IdRange {
                client: 3,
                start: 0,
                end: 5
            }]
        );
    }

    #[test]
    fn full_state_of_a_remote_doc_scans() {
        let a = Doc::with_client_id(1);
        let b = Doc::with_client_id(2);
        let ta = a.get_or_insert_text("text");
        let tb = b.get_or_insert_text("text");
        ta.insert(&mut a.transact_mut(), 0, "aaa");
        tb.insert(&mut b.transact_mut(), 0, "bb");
        let ua = a
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        {
            let mut txn = b.transact_mut();
            txn.apply_update(yrs::Update::decode_v1(&ua).expect("decodes"))
                .expect("applies");
        }
        tb.remove_range(&mut b.transact_mut(), 0, 4);
        let full = b
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let (mut ins, del) = scan(&full);
        ins.sort_by_key(|r| r.client);
        assert_eq!(ins.iter().map(|r| r.end).collect::<Vec<_>>(), vec![3, 2]);
        assert!(!del.is_empty());
    }

    use yrs::updates::decoder::Decode;
}
