//! Structural validation of untrusted Yjs binary data before yrs decodes it.
//!
//! yrs trusts the lengths it reads; a hostile peer can declare huge counts, client ids that
//! JavaScript cannot represent (yrs asserts on those), clocks that overflow, or `Any` values
//! nested deep enough to exhaust the stack. [`check_update_v1`] and [`check_state_vector`] walk
//! the same grammar yrs decodes (lib0 v1 update encoding) with a bounded [`Reader`] and refuse
//! anything out of bounds, so yrs only ever sees input whose every length fits in the bytes
//! present. They also refuse structure no honest client writes and yrs mishandles (see
//! [`check_update_v1`]'s helpers: origins, struct groups, reference cycles).

use crate::error::DecodeError;
use crate::wire::{Reader, Writer};

/// Deepest nesting of `Any` arrays and maps accepted in an update.
pub const MAX_ANY_DEPTH: usize = 32;

const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
const BLOCK_GC: u8 = 0;
const CONTENT_DELETED: u8 = 1;
const CONTENT_TYPE: u8 = 7;
const BLOCK_SKIP: u8 = 10;

/// Checks an encoded state vector (sync step 1 payload).
pub fn check_state_vector(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(bytes);
    let n = r.len_prefix(2)?;
    for _ in 0..n {
        r.client_id()?;
        r.var_u32()?;
    }
    trailing(&r)
}

/// What [`check_update_v1`] learned about a valid update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    /// Names of the top-level types the update's items are placed in directly.
    pub roots: Vec<String>,
    /// Clock ranges `(client, start, end)` of the blocks the update carries.
    pub provides: Vec<(u64, u32, u32)>,
    /// Ids `(client, clock)` its items refer to (origins, parents): they must exist first.
    pub needs: Vec<(u64, u32)>,
    /// Ends `(client, end)` of the ranges its delete set removes.
    pub deletes: Vec<(u64, u32)>,
    /// Ids `(client, clock)` named as an item's parent (also in `needs`). yrs refuses, midway
    /// through integrating, a parent that is neither a type nor deleted content, so
    /// `Document` checks those it already holds before handing the update over.
    pub parents: Vec<(u64, u32)>,
}

impl UpdateSummary {
    /// Whether a replica whose state vector is `known` (client → next clock) holds everything
    /// this update depends on, so it integrates completely instead of waiting as pending.
    pub fn dependencies_met(&self, known: impl Fn(u64) -> u32) -> bool {
        // What the replica would know after integrating the update's contiguous blocks.
        let mut effective: Vec<(u64, u32)> = Vec::new();
        for &(client, start, end) in &self.provides {
            let have = known(client);
            if start > have {
                return false;
            }
            match effective.iter_mut().find(|(c, _)| *c == client) {
                Some((_, e)) => *e = (*e).max(end),
                None => effective.push((client, have.max(end))),
            }
        }
        let reach = |client: u64| {
            effective
                .iter()
                .find(|(c, _)| *c == client)
                .map(|(_, e)| *e)
                .unwrap_or_else(|| known(client))
        };
        self.needs.iter().all(|&(c, k)| k < reach(c))
            && self.deletes.iter().all(|&(c, end)| end <= reach(c))
    }
}

/// Checks a Yjs update in the v1 encoding (sync step 2 and update payloads).
pub fn check_update_v1(bytes: &[u8]) -> Result<UpdateSummary, DecodeError> {
    let mut summary = UpdateSummary::default();
    let mut r = Reader::new(bytes);
    let clients = r.len_prefix(3)?;
    let mut seen = std::collections::HashSet::with_capacity(clients.min(64));
    let mut items = Vec::new();
    for _ in 0..clients {
        let blocks = r.len_prefix(1)?;
        let client = r.client_id()?;
        // Yjs writes each client's structs as one group. yrs accepts a client twice, with
        // overlapping clock ranges, and then encodes a state no decoder accepts.
        if !seen.insert(client) {
            return Err(DecodeError::Malformed(
                "a client's structs appear in two groups",
            ));
        }
        let mut clock = u64::from(r.var_u32()?);
        for _ in 0..blocks {
            let needs_from = summary.needs.len();
            let parents_from = summary.parents.len();
            let info = bytes.get(r.position()).copied().unwrap_or(0);
            let (len, skip) = block(&mut r, &mut summary, (client, clock))?;
            if !skip {
                let end = clock + len;
                if end > u64::from(u32::MAX) {
                    return Err(DecodeError::ClockOverflow);
                }
                items.push(ItemSpan {
                    client,
                    start: clock as u32,
                    end: end as u32,
                    needs: needs_from..summary.needs.len(),
                    kind: content_kind(info),
                    parent: summary.parents.get(parents_from).copied(),
                });
                match summary.provides.last_mut() {
                    Some((c, _, e)) if *c == client && u64::from(*e) == clock => *e = end as u32,
                    _ => summary.provides.push((client, clock as u32, end as u32)),
                }
            }
            clock += len;
            if clock > u64::from(u32::MAX) {
                return Err(DecodeError::ClockOverflow);
            }
        }
    }
    delete_set(&mut r, &mut summary)?;
    trailing(&r)?;
    // Only a reference to an id the update itself carries can close a cycle or name one of its
    // blocks as a parent; an update with none (a keystroke) skips the check.
    let carried = |&(client, clock): &(u64, u32)| {
        summary
            .provides
            .iter()
            .any(|&(c, start, end)| c == client && start <= clock && clock < end)
    };
    if summary.needs.iter().any(carried) {
        check_references(&items, &summary)?;
    }
    Ok(summary)
}

/// The clock range a non-skip block of an update covers, and its references
/// (`UpdateSummary::needs[needs]`).
struct ItemSpan {
    client: u64,
    start: u32,
    end: u32,
    needs: std::ops::Range<usize>,
    /// Content kind (`BLOCK_GC` for a GC block).
    kind: u8,
    /// The id named as its parent, if any.
    parent: Option<(u64, u32)>,
}

/// Content kinds yrs takes as a parent: a type, or (after garbage collection) deleted content.
pub(crate) fn can_parent(kind: u8) -> bool {
    matches!(kind, BLOCK_GC | CONTENT_DELETED | CONTENT_TYPE)
}

/// Refuses an update whose blocks depend on each other in a cycle: a block that refers (by
/// origin or parent) to an id carried by a block that, through such references or the order of
/// its client's clocks, refers back to it. Every id an item refers to was made before the item,
/// so no honest update has one. yrs cannot integrate such blocks and keeps them as pending
/// forever, growing that queue each time the update is sent again.
///
/// `items` is in the update's order: each client's blocks together, by clock.
///
/// Also refuses an item whose parent is a block of the update that is neither a type nor
/// deleted content (see `UpdateSummary::parents`).
fn check_references(items: &[ItemSpan], summary: &UpdateSummary) -> Result<(), DecodeError> {
    const CYCLE: DecodeError =
        DecodeError::Malformed("the update's items refer to each other in a cycle");
    // Each client's blocks, as a range of `items`, sorted by client for lookup.
    let mut runs: Vec<(u64, usize, usize)> = Vec::new();
    for (i, b) in items.iter().enumerate() {
        match runs.last_mut() {
            Some((c, _, hi)) if *c == b.client => *hi = i + 1,
            _ => runs.push((b.client, i, i + 1)),
        }
    }
    runs.sort_unstable_by_key(|r| r.0);
    let carrier = |(client, clock): (u64, u32)| -> Option<usize> {
        let r = runs.binary_search_by_key(&client, |r| r.0).ok()?;
        let (_, lo, hi) = runs[r];
        let run = &items[lo..hi];
        let i = run.partition_point(|b| b.end <= clock);
        (i < run.len() && run[i].start <= clock).then_some(lo + i)
    };
    // (dependency, dependent) pairs: a block needs its carriers first.
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for (i, b) in items.iter().enumerate() {
        if let Some(a) = b.parent.and_then(carrier) {
            if !can_parent(items[a].kind) {
                return Err(DecodeError::Malformed(
                    "an item's parent is neither a type nor deleted",
                ));
            }
        }
        for &need in &summary.needs[b.needs.clone()] {
            match carrier(need) {
                Some(a) if a == i => return Err(CYCLE),
                Some(a) => edges.push((a as u32, i as u32)),
                None => {}
            }
        }
    }
    if edges.is_empty() {
        // Only the order of each client's clocks remains: a chain per client.
        return Ok(());
    }
    // Kahn's algorithm over both kinds of edges; the order of a client's clocks is the edge
    // from each block to the next block of the same client.
    let n = items.len();
    for i in 1..n {
        if items[i].client == items[i - 1].client {
            edges.push(((i - 1) as u32, i as u32));
        }
    }
    // Dependents of block a: dependents[first[a]..first[a + 1]].
    let mut first = vec![0u32; n + 1];
    let mut waiting_on = vec![0u32; n];
    for &(from, to) in &edges {
        first[from as usize + 1] += 1;
        waiting_on[to as usize] += 1;
    }
    for i in 0..n {
        first[i + 1] += first[i];
    }
    let mut fill = first.clone();
    let mut dependents = vec![0u32; edges.len()];
    for &(from, to) in &edges {
        dependents[fill[from as usize] as usize] = to;
        fill[from as usize] += 1;
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting_on[i] == 0).collect();
    let mut done = 0;
    while let Some(a) = ready.pop() {
        done += 1;
        for &to in &dependents[first[a] as usize..first[a + 1] as usize] {
            let to = to as usize;
            waiting_on[to] -= 1;
            if waiting_on[to] == 0 {
                ready.push(to);
            }
        }
    }
    if done == n {
        Ok(())
    } else {
        Err(CYCLE)
    }
}

/// The content kind of the first block of a v1 update yrs encoded (`BLOCK_GC` for a GC
/// block), if it has a block.
pub(crate) fn first_block_kind(bytes: &[u8]) -> Option<u8> {
    let mut r = Reader::new(bytes);
    if r.var_u32().ok()? == 0 {
        return None;
    }
    r.var_u32().ok()?;
    r.client_id().ok()?;
    r.var_u32().ok()?;
    Some(content_kind(r.u8().ok()?))
}

/// The content kind a block's info byte names (`BLOCK_GC` for a GC block).
fn content_kind(info: u8) -> u8 {
    if info == BLOCK_GC {
        BLOCK_GC
    } else {
        info & 0b1111
    }
}

/// An update cut in two by [`split_ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// Everything it depends on is known: integrate it as it is.
    Ready,
    /// Nothing of it can be integrated yet.
    Waiting,
    /// A part can be integrated now (`ready`), the rest (`rest`) must wait. Both are v1
    /// updates made of the original's block bytes.
    Parts {
        /// Blocks and deletions whose dependencies are known.
        ready: Vec<u8>,
        /// The others.
        rest: Vec<u8>,
        /// `(client, clock)`: how far `ready` takes each client it carries blocks of.
        reach: Vec<(u64, u32)>,
    },
}

/// One block of an update, as [`split_ready`] sees it.
struct Block {
    span: std::ops::Range<usize>,
    clock: u32,
    len: u32,
    skip: bool,
    needs: Vec<(u64, u32)>,
}

/// Splits a valid v1 update (checked by [`check_update_v1`]) into the part a replica whose
/// state vector is `known` can integrate now and the rest. A client's blocks are ready in
/// order while each starts at or below what is known of that client and everything it refers
/// to is known (blocks made ready earlier in the update count); a deletion is ready when
/// everything it removes is known.
///
/// A document that keeps updates with missing dependencies in its own queue needs this for
/// updates that carry both kinds: a snapshot or step 2 holding a document next to the updates
/// that were waiting in it. yrs is never handed blocks past a gap.
pub fn split_ready(bytes: &[u8], known: impl Fn(u64) -> u32) -> Result<Split, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut runs: Vec<(u64, Vec<Block>)> = Vec::new();
    let clients = r.len_prefix(3)?;
    for _ in 0..clients {
        let n = r.len_prefix(1)?;
        let client = r.client_id()?;
        let mut clock = r.var_u32()?;
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let start = r.position();
            let mut summary = UpdateSummary::default();
            let (len, skip) = block(&mut r, &mut summary, (client, u64::from(clock)))?;
            let len = u32::try_from(len).map_err(|_| DecodeError::ClockOverflow)?;
            blocks.push(Block {
                span: start..r.position(),
                clock,
                len,
                skip,
                needs: summary.needs,
            });
            clock = clock.checked_add(len).ok_or(DecodeError::ClockOverflow)?;
        }
        runs.push((client, blocks));
    }
    let mut deletes: Vec<(u64, Vec<(u32, u32)>)> = Vec::new();
    let ds_clients = r.len_prefix(2)?;
    for _ in 0..ds_clients {
        let client = r.client_id()?;
        let n = r.len_prefix(2)?;
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            ranges.push((r.var_u32()?, r.var_u32()?));
        }
        deletes.push((client, ranges));
    }
    trailing(&r)?;

    // What is known, growing as blocks are found ready.
    let mut effective: Vec<(u64, u32)> = Vec::new();
    let reach = |effective: &Vec<(u64, u32)>, client: u64| {
        effective
            .iter()
            .find(|(c, _)| *c == client)
            .map(|(_, e)| *e)
            .unwrap_or_else(|| known(client))
    };
    let mut ready_blocks = vec![0usize; runs.len()];
    loop {
        let mut progress = false;
        for (i, (client, blocks)) in runs.iter().enumerate() {
            while let Some(b) = blocks.get(ready_blocks[i]) {
                let have = reach(&effective, *client);
                let end = b.clock + b.len;
                let ok = if b.skip {
                    // A gap: passable only over clocks already known.
                    end <= have
                } else {
                    b.clock <= have && b.needs.iter().all(|&(c, k)| k < reach(&effective, c))
                };
                if !ok {
                    break;
                }
                if !b.skip && end > have {
                    match effective.iter_mut().find(|(c, _)| c == client) {
                        Some((_, e)) => *e = end,
                        None => effective.push((*client, end)),
                    }
                }
                ready_blocks[i] += 1;
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    let mut ready_ds: Vec<(u64, Vec<(u32, u32)>)> = Vec::new();
    let mut rest_ds: Vec<(u64, Vec<(u32, u32)>)> = Vec::new();
    for (client, ranges) in deletes {
        let have = reach(&effective, client);
        // A range reaching past what is known is cut there, as Yjs applies a delete set: the
        // known part now, the rest when its ids arrive. Kept whole, a deletion already applied
        // and merged with a waiting one into a single range (a snapshot) came back as waiting
        // only, and a document loaded from the snapshot showed the deleted text (found by the
        // `protocol` fuzz target; engine/tests/fuzz_regressions.rs).
        let mut now = Vec::new();
        let mut later = Vec::new();
        for (clock, len) in ranges {
            let end = u64::from(clock) + u64::from(len);
            if len == 0 || end <= u64::from(have) {
                now.push((clock, len));
            } else if clock < have {
                now.push((clock, have - clock));
                later.push((have, (end - u64::from(have)) as u32));
            } else {
                later.push((clock, len));
            }
        }
        if !now.is_empty() {
            ready_ds.push((client, now));
        }
        if !later.is_empty() {
            rest_ds.push((client, later));
        }
    }

    let encode = |parts: Vec<(u64, u32, Vec<&Block>)>, ds: &[(u64, Vec<(u32, u32)>)]| {
        let mut w = Writer::with_capacity(bytes.len());
        w.var_u64(parts.len() as u64);
        for (client, clock, blocks) in &parts {
            w.var_u64(blocks.len() as u64)
                .var_u64(*client)
                .var_u64(u64::from(*clock));
            for b in blocks {
                w.raw(&bytes[b.span.clone()]);
            }
        }
        w.var_u64(ds.len() as u64);
        for (client, ranges) in ds {
            w.var_u64(*client).var_u64(ranges.len() as u64);
            for (clock, len) in ranges {
                w.var_u64(u64::from(*clock)).var_u64(u64::from(*len));
            }
        }
        w.finish()
    };
    let mut ready = Vec::new();
    let mut rest = Vec::new();
    for ((client, blocks), n) in runs.iter().zip(&ready_blocks) {
        let (now, later) = blocks.split_at(*n);
        let now = trim_skips(now);
        let later = trim_skips(later);
        if let Some(first) = now.first() {
            ready.push((*client, first.clock, now));
        }
        if let Some(first) = later.first() {
            rest.push((*client, first.clock, later));
        }
    }
    if rest.is_empty() && rest_ds.is_empty() {
        return Ok(Split::Ready);
    }
    if ready.is_empty() && ready_ds.is_empty() {
        return Ok(Split::Waiting);
    }
    Ok(Split::Parts {
        ready: encode(ready, &ready_ds),
        rest: encode(rest, &rest_ds),
        reach: effective,
    })
}

/// Joins valid v1 updates (each checked by [`check_update_v1`]) into one by concatenation, when
/// each client's blocks follow on from that client's blocks in the earlier updates (the next
/// starts where the last ended): the result carries the same blocks as the updates, and the
/// union of their delete sets. `None` when some client's blocks do not follow on (overlap,
/// gap, or out of order); merge those by decoding them instead.
///
/// A run of updates in sid order (keystrokes, a batch another node committed) nearly always
/// follows on per client, and joining them this way costs a walk over their bytes, where a
/// decoding merge sorts and re-encodes every block.
pub fn concat_updates(updates: &[&[u8]]) -> Option<Vec<u8>> {
    struct Group {
        client: u64,
        clock: u32,
        end: u32,
        blocks: u64,
        /// (update, byte span of its blocks of this client)
        spans: Vec<(usize, std::ops::Range<usize>)>,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut index: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut deletes: Vec<(u64, Vec<(u32, u32)>)> = Vec::new();
    let mut scratch = UpdateSummary::default();
    for (u, bytes) in updates.iter().enumerate() {
        let mut r = Reader::new(bytes);
        let clients = r.len_prefix(3).ok()?;
        for _ in 0..clients {
            let n = r.len_prefix(1).ok()?;
            let client = r.client_id().ok()?;
            let clock = r.var_u32().ok()?;
            let start = r.position();
            let mut end = u64::from(clock);
            for _ in 0..n {
                scratch.needs.clear();
                scratch.parents.clear();
                scratch.roots.clear();
                let (len, _) = block(&mut r, &mut scratch, (client, end)).ok()?;
                end += len;
            }
            let end = u32::try_from(end).ok()?;
            let span = (u, start..r.position());
            match index.get(&client) {
                Some(&g) => {
                    let g = &mut groups[g];
                    if g.end != clock {
                        return None;
                    }
                    g.end = end;
                    g.blocks += n as u64;
                    g.spans.push(span);
                }
                None => {
                    index.insert(client, groups.len());
                    groups.push(Group {
                        client,
                        clock,
                        end,
                        blocks: n as u64,
                        spans: vec![span],
                    });
                }
            }
        }
        let ds_clients = r.len_prefix(2).ok()?;
        for _ in 0..ds_clients {
            let client = r.client_id().ok()?;
            let n = r.len_prefix(2).ok()?;
            let at = match deletes.iter().position(|(c, _)| *c == client) {
                Some(i) => i,
                None => {
                    deletes.push((client, Vec::new()));
                    deletes.len() - 1
                }
            };
            for _ in 0..n {
                let range = (r.var_u32().ok()?, r.var_u32().ok()?);
                deletes[at].1.push(range);
            }
        }
        if !r.is_empty() {
            return None;
        }
    }
    let total: usize = updates.iter().map(|u| u.len()).sum();
    let mut w = Writer::with_capacity(total);
    w.var_u64(groups.len() as u64);
    for g in &groups {
        w.var_u64(g.blocks)
            .var_u64(g.client)
            .var_u64(u64::from(g.clock));
        for (u, span) in &g.spans {
            w.raw(&updates[*u][span.clone()]);
        }
    }
    w.var_u64(deletes.len() as u64);
    for (client, ranges) in &mut deletes {
        // Sorted and joined where they touch or overlap, as Yjs writes a delete set.
        ranges.sort_unstable();
        let mut joined: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for &(clock, len) in ranges.iter() {
            let end = u64::from(clock) + u64::from(len);
            match joined.last_mut() {
                Some((c, l)) if u64::from(clock) <= u64::from(*c) + u64::from(*l) => {
                    let e = (u64::from(*c) + u64::from(*l)).max(end);
                    *l = u32::try_from(e - u64::from(*c)).ok()?;
                }
                _ => joined.push((clock, len)),
            }
        }
        w.var_u64(*client).var_u64(joined.len() as u64);
        for (clock, len) in joined {
            w.var_u64(u64::from(clock)).var_u64(u64::from(len));
        }
    }
    Some(w.finish())
}

/// The blocks of `part` without leading and trailing skips (they carry nothing).
fn trim_skips(part: &[Block]) -> Vec<&Block> {
    let start = part.iter().position(|b| !b.skip).unwrap_or(part.len());
    let end = part.iter().rposition(|b| !b.skip).map_or(start, |i| i + 1);
    part[start..end].iter().collect()
}

fn trailing(r: &Reader<'_>) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes(r.remaining()))
    }
}

fn id(r: &mut Reader<'_>) -> Result<(u64, u32), DecodeError> {
    Ok((r.client_id()?, r.var_u32()?))
}

/// Validates one block; returns the number of clock ticks it covers and whether it is a skip
/// (a gap the update does not carry).
/// An origin of the item at `at` (client, clock) must be an earlier id when it is the item's
/// own client's.
fn check_origin(origin: (u64, u32), at: (u64, u64)) -> Result<(), DecodeError> {
    if origin.0 == at.0 && u64::from(origin.1) >= at.1 {
        return Err(DecodeError::Malformed(
            "an item's origin is not older than the item",
        ));
    }
    Ok(())
}

fn block(
    r: &mut Reader<'_>,
    summary: &mut UpdateSummary,
    at: (u64, u64),
) -> Result<(u64, bool), DecodeError> {
    let info = r.u8()?;
    match info {
        BLOCK_GC | BLOCK_SKIP => {
            let len = r.var_u32()?;
            if len == 0 {
                return Err(DecodeError::Malformed("empty block"));
            }
            Ok((u64::from(len), info == BLOCK_SKIP))
        }
        _ => {
            let cant_copy_parent = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
            // An item's origins are characters that existed when it was made: never the same
            // character on both sides, never itself or a later id of its own client. yrs
            // integrates such an item differently depending on how its neighbours happen to
            // be split, so replicas would disagree about where it is.
            let mut left = None;
            if info & HAS_ORIGIN != 0 {
                let origin = id(r)?;
                check_origin(origin, at)?;
                left = Some(origin);
                summary.needs.push(origin);
            }
            if info & HAS_RIGHT_ORIGIN != 0 {
                let origin = id(r)?;
                check_origin(origin, at)?;
                if left == Some(origin) {
                    return Err(DecodeError::Malformed("an item's two origins are one id"));
                }
                summary.needs.push(origin);
            }
            if cant_copy_parent {
                if r.var_u32()? == 1 {
                    let root = r.var_str()?;
                    if !summary.roots.iter().any(|n| n == root) {
                        summary.roots.push(root.to_owned());
                    }
                } else {
                    let parent = id(r)?;
                    summary.needs.push(parent);
                    summary.parents.push(parent);
                }
                if info & HAS_PARENT_SUB != 0 {
                    r.var_str()?;
                }
            }
            Ok((content(r, content_kind(info))?, false))
        }
    }
}

fn content(r: &mut Reader<'_>, kind: u8) -> Result<u64, DecodeError> {
    match kind {
        // Deleted
        1 => {
            let len = r.var_u32()?;
            if len == 0 {
                return Err(DecodeError::Malformed("empty deleted content"));
            }
            Ok(u64::from(len))
        }
        // Binary
        3 => r.var_bytes().map(|_| 1),
        // String: its length counts UTF-16 code units.
        4 => {
            let s = r.var_str()?;
            let units = s.encode_utf16().count() as u64;
            if units == 0 {
                return Err(DecodeError::Malformed("empty string content"));
            }
            Ok(units)
        }
        // Embed: one JSON value encoded as a string.
        5 => json_string(r).map(|_| 1),
        // Format: key, JSON value.
        6 => {
            r.var_str()?;
            json_string(r).map(|_| 1)
        }
        // Type
        7 => {
            match r.u8()? {
                0 | 1 | 2 | 4 | 6 | 9 | 15 => {}
                3 => {
                    r.var_str()?;
                }
                // XmlHook: Yjs writes its hook name after the type reference, yrs reads none,
                // so yrs would take the name for the next struct.
                5 => return Err(DecodeError::UnsupportedTypeRef(5)),
                other => return Err(DecodeError::UnknownTypeRef(other)),
            }
            Ok(1)
        }
        // Any
        8 => {
            let n = r.len_prefix(1)?;
            if n == 0 {
                return Err(DecodeError::Malformed("empty any content"));
            }
            for _ in 0..n {
                any(r, 0)?;
            }
            Ok(n as u64)
        }
        // Sub-document: guid, options.
        9 => {
            r.var_str()?;
            any(r, 0)?;
            Ok(1)
        }
        // 2 is the legacy ContentJSON, which current Yjs never writes; others are unknown.
        other => Err(DecodeError::UnsupportedContent(other)),
    }
}

fn json_string(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    let s = r.var_str()?;
    serde_json::from_str::<serde::de::IgnoredAny>(s)
        .map(drop)
        .map_err(|_| DecodeError::InvalidJson)
}

/// Skips one lib0 `Any` value, bounding its nesting depth.
fn any(r: &mut Reader<'_>, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_ANY_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    match r.u8()? {
        // undefined, null, false, true
        127 | 126 | 121 | 120 => Ok(()),
        125 => r.skip_var_i64(),
        124 => r.bytes(4).map(drop),
        123 | 122 => r.bytes(8).map(drop),
        119 => r.var_str().map(drop),
        118 => {
            let n = r.len_prefix(2)?;
            for _ in 0..n {
                r.var_str()?;
                any(r, depth + 1)?;
            }
            Ok(())
        }
        117 => {
            let n = r.len_prefix(1)?;
            for _ in 0..n {
                any(r, depth + 1)?;
            }
            Ok(())
        }
        116 => r.var_bytes().map(drop),
        other => Err(DecodeError::UnknownAnyTag(other)),
    }
}

fn delete_set(r: &mut Reader<'_>, summary: &mut UpdateSummary) -> Result<(), DecodeError> {
    let clients = r.len_prefix(2)?;
    for _ in 0..clients {
        let client = r.client_id()?;
        let ranges = r.len_prefix(2)?;
        let mut end = 0u32;
        for _ in 0..ranges {
            let clock = r.var_u32()?;
            let len = r.var_u32()?;
            let e = u64::from(clock) + u64::from(len);
            if e > u64::from(u32::MAX) {
                return Err(DecodeError::ClockOverflow);
            }
            end = end.max(e as u32);
        }
        if end > 0 {
            summary.deletes.push((client, end));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Writer;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, Map, ReadTxn, StateVector, Text, Transact};

    fn sample_update() -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("description");
        let map = doc.get_or_insert_map("m");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "héllo 👋 world");
            text.remove_range(&mut txn, 1, 3);
            map.insert(&mut txn, "k", vec![1i64, 2, 3]);
            map.insert(&mut txn, "n", 1.5f64);
            map.insert(&mut txn, "s", "str");
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        update
    }

    #[test]
    fn accepts_real_updates_and_state_vectors() {
        let s = check_update_v1(&sample_update()).unwrap();
        assert_eq!(s.roots, vec!["description".to_owned(), "m".to_owned()]);
        assert!(s.dependencies_met(|_| 0), "a full state depends on nothing");
        let doc = Doc::with_client_id(9);
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "x");
        check_state_vector(&doc.transact().state_vector().encode_v1()).unwrap();
        // The empty update Yjs clients send.
        check_update_v1(&[0, 0]).unwrap();
    }

    #[test]
    fn every_truncation_is_an_error_without_panic() {
        let good = sample_update();
        for len in 0..good.len() {
            assert!(check_update_v1(&good[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn refuses_huge_counts_and_large_client_ids() {
        let mut w = Writer::new();
        w.var_u64(1 << 60);
        assert!(check_update_v1(&w.finish()).is_err());

        let mut w = Writer::new();
        w.var_u64(1).var_u64(1 << 53).var_u64(0);
        assert_eq!(
            check_state_vector(&w.finish()),
            Err(DecodeError::ClientIdTooLarge(1 << 53))
        );
    }

    #[test]
    fn refuses_deep_any_nesting() {
        let mut w = Writer::new();
        // one client, one block, client 1, clock 0, item with parent by name, Any content
        w.var_u64(1).var_u64(1).var_u64(1).var_u64(0);
        w.u8(8).var_u64(1).var_str("m").var_u64(1);
        for _ in 0..1000 {
            w.u8(117).var_u64(1);
        }
        w.u8(126);
        w.var_u64(0);
        assert_eq!(check_update_v1(&w.finish()), Err(DecodeError::TooDeep));
    }

    /// An update whose one item holds a single integer, written with `int` as its varInt bytes.
    fn update_with_integer(int: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        // one client, one block, client 1, clock 0, item with parent by name, Any content
        w.var_u64(1).var_u64(1).var_u64(1).var_u64(0);
        w.u8(8).var_u64(1).var_str("m").var_u64(1);
        w.u8(125);
        for &b in int {
            w.u8(b);
        }
        w.var_u64(0);
        w.finish()
    }

    #[test]
    fn refuses_integers_yrs_would_shift_past_64_bits() {
        // Ten bytes: the last starts at bit 62, inside 64 bits. yrs decodes it.
        let mut ten = [0xaau8; 10];
        ten[9] = 0x01;
        let update = update_with_integer(&ten);
        check_update_v1(&update).unwrap();
        <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(&update).unwrap();
        // Eleven bytes: the last would start at bit 69, which overflows yrs's shift.
        let mut eleven = [0xaau8; 11];
        eleven[10] = 0x01;
        assert_eq!(
            check_update_v1(&update_with_integer(&eleven)),
            Err(DecodeError::VarIntOverflow)
        );
    }

    #[test]
    fn single_byte_corruptions_never_panic() {
        let good = sample_update();
        for i in 0..good.len() {
            for x in [0x01u8, 0x40, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= x;
                let _ = check_update_v1(&bad);
            }
        }
    }
}
