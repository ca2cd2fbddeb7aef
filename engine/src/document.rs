//! A tandem document: a yrs `Doc` with named text fields, registers and per-user undo.
//!
//! Every text field is a top-level `Y.Text` named after the field, so plain Yjs clients can
//! co-edit it; offsets are UTF-16 code units, as in JavaScript. Registers live in the top-level
//! map described in [`crate::register`]. Names starting with `tandem:` are reserved.
//!
//! Every mutating method returns the Yjs update (v1 encoding) its transaction produced, ready to
//! be sent to peers and stored. Changes — local or remote — are collected as [`Change`]s carrying
//! their author, drained with [`Document::take_changes`].

use crate::error::{DecodeError, DocumentError};
use crate::guard::{self, Split};
use crate::register::{Entry, FieldValue, Stamp, REGISTERS_MAP};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use yrs::types::map::MapEvent;
use yrs::types::text::{TextEvent, YChange};
use yrs::types::Delta;
use yrs::undo::UndoManager;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Doc, Map, MapRef, Observable, OffsetKind, Options, Origin, Out, ReadTxn, StateVector,
    Text, TextRef, Transact, TransactionMut, Update,
};

/// Longest accepted field or register name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Prefix of names tandem reserves for its own top-level types.
pub const RESERVED_PREFIX: &str = "tandem:";
/// Keystrokes closer together than this form one undo step.
pub const UNDO_CAPTURE_MS: u64 = 500;

/// One step of a text delta, in UTF-16 code units (Quill-style JSON: `{"retain": 3}`,
/// `{"insert": "x"}`, `{"delete": 1}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaOp {
    /// Keep this many units.
    Retain(u32),
    /// Insert this text.
    Insert(String),
    /// Remove this many units.
    Delete(u32),
}

/// A change to the document, local or remote, with its author when known.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A text field changed.
    Text {
        /// Field name.
        field: String,
        /// What changed, relative to the text before the change; empty while deltas are off
        /// (see [`Document::set_text_deltas`]).
        delta: Vec<DeltaOp>,
        /// Whether the text is longer than before the change.
        grew: bool,
        /// Who made the change.
        author: Option<String>,
    },
    /// A register's winning value changed.
    Field {
        /// Register name.
        name: String,
        /// The new state; `None` when the register was deleted.
        value: Option<FieldValue>,
        /// Who caused the change.
        author: Option<String>,
    },
}

/// What applying a remote update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// False when the update held nothing new (a duplicate).
    pub changed: bool,
}

/// What [`Document::apply_bounded`] does with an update whose waiting part does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Refuse the whole update: nothing of it is applied.
    Refuse,
    /// Integrate the part that is ready and drop the part that would wait.
    DropWaiting,
}

/// What [`Document::apply_bounded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bounded {
    /// Applied as [`Document::apply_update`] applies it.
    Applied(Applied),
    /// [`WhenFull::Refuse`]: nothing was applied; waiting would have reached `pending` bytes.
    Refused {
        /// The bytes that would have been waiting.
        pending: usize,
    },
    /// [`WhenFull::DropWaiting`]: the part that would wait (taking the bytes waiting to
    /// `pending`) was dropped; `ready`, the part integrated, is what to store in its place.
    Trimmed {
        /// The update's part that was integrated, if any.
        ready: Option<Vec<u8>>,
        /// Whether the document changed.
        changed: bool,
        /// The bytes that would have been waiting.
        pending: usize,
    },
}

/// What [`Document::apply_run`] did.
#[derive(Debug, Default)]
pub(crate) struct Run {
    /// Whether each integrated update changed the document: the run's first updates, in order.
    pub changed: Vec<bool>,
    /// Why yrs refused the update after them; the document may hold part of it.
    pub error: Option<DocumentError>,
}

/// State shared with yrs observers (which run inside a transaction's commit).
#[derive(Default)]
struct Feed {
    /// Record changes at all (off when nobody listens).
    enabled: bool,
    /// Skip text deltas (only which field changed and whether it grew): a delta's positions
    /// take a walk over the text from its start, every change.
    no_deltas: bool,
    changes: Vec<Change>,
    /// Current winning stamp of each register, to report only real changes.
    winners: HashMap<String, Stamp>,
    /// Undo managers' transaction origins, mapped to their users.
    undo_origins: HashMap<Origin, String>,
}

fn lock(feed: &Mutex<Feed>) -> MutexGuard<'_, Feed> {
    // A panic inside an observer poisons the lock; the feed's data stays usable.
    feed.lock().unwrap_or_else(|p| p.into_inner())
}

fn author_of(feed: &Feed, origin: Option<&Origin>) -> Option<String> {
    let origin = origin?;
    if let Some(user) = feed.undo_origins.get(origin) {
        return Some(user.clone());
    }
    std::str::from_utf8(origin.as_ref()).ok().map(str::to_owned)
}

/// A replica of one document.
pub struct Document {
    doc: Doc,
    registers: MapRef,
    texts: HashMap<String, TextRef>,
    feed: Arc<Mutex<Feed>>,
    now: Arc<AtomicU64>,
    undo: HashMap<String, UndoManager<()>>,
    capture: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Counts transactions that changed the document (see [`Document::revision`]).
    revision: Arc<AtomicU64>,
    /// Updates waiting for their dependencies, and their total size.
    waiting: Vec<Waiting>,
    waiting_bytes: usize,
}

/// A remote update whose dependencies have not all arrived.
struct Waiting {
    update: Vec<u8>,
    author: Option<String>,
    summary: guard::UpdateSummary,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("client_id", &self.client_id())
            .field("fields", &self.texts.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Checks a field or register name.
pub fn check_name(name: &str) -> Result<(), DocumentError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.starts_with(RESERVED_PREFIX) {
        return Err(DocumentError::InvalidFieldName(name.to_owned()));
    }
    Ok(())
}

impl Document {
    /// A new, empty replica whose local edits carry Yjs client id `client_id` (below 2^53).
    pub fn new(client_id: u64) -> Self {
        let mut options = Options::with_client_id(yrs::ClientID::new(
            client_id & crate::wire::MAX_SAFE_INTEGER,
        ));
        options.offset_kind = OffsetKind::Utf16;
        let doc = Doc::with_options(options);
        let registers = doc.get_or_insert_map(REGISTERS_MAP);
        let feed = Arc::new(Mutex::new(Feed::default()));
        let f = feed.clone();
        let reg = registers.clone();
        registers.observe("tandem", move |txn: &TransactionMut, e: &MapEvent| {
            let mut names: Vec<&str> = e
                .keys(txn)
                .keys()
                .filter_map(|k| k.rsplit_once('#').map(|(n, _)| n))
                .collect();
            names.sort_unstable();
            names.dedup();
            let mut feed = lock(&f);
            let author = author_of(&feed, txn.origin());
            for name in names {
                let winner = winner(&reg, txn, name);
                let stamp = winner.as_ref().map(Entry::stamp);
                let before = feed.winners.get(name).copied();
                if stamp == before {
                    continue;
                }
                match stamp {
                    Some(s) => feed.winners.insert(name.to_owned(), s),
                    None => feed.winners.remove(name),
                };
                if feed.enabled {
                    let value = winner.filter(|e| !e.deleted).map(|e| FieldValue::from(&e));
                    feed.changes.push(Change::Field {
                        name: name.to_owned(),
                        value,
                        author: author.clone(),
                    });
                }
            }
        });
        let capture: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let revision: Arc<AtomicU64> = Arc::default();
        let rev = revision.clone();
        // Counts every transaction that inserted or deleted something, without encoding its
        // update (and without building state vectors, which cost a step per client): an update observer makes yrs encode every
        // transaction's update at commit, which costs time in the length of the blocks it
        // touches (a long run of one client's typing is one block, re-scanned per keystroke).
        // Updates are recorded only while an undo or redo runs (`undo_redo`).
        let _ = doc.observe_after_transaction("tandem-revision", move |txn| {
            if txn.has_changes() {
                rev.fetch_add(1, Ordering::Relaxed);
            }
        });
        Document {
            doc,
            registers,
            texts: HashMap::new(),
            feed,
            now: Arc::new(AtomicU64::new(0)),
            undo: HashMap::new(),
            capture,
            revision,
            waiting: Vec::new(),
            waiting_bytes: 0,
        }
    }

    /// The underlying yrs document (for presence and bindings).
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// This replica's Yjs client id.
    pub fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    /// Sets the current time (ms since the Unix epoch); used for undo grouping and register
    /// clocks. The engine never reads a clock itself.
    pub fn set_time(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// Turns the change feed on or off. Off by default; while off, [`Document::take_changes`]
    /// returns nothing and no deltas are computed.
    pub fn set_change_feed(&mut self, on: bool) {
        let mut feed = lock(&self.feed);
        feed.enabled = on;
        if !on {
            feed.changes.clear();
        }
    }

    /// Whether the change feed computes text deltas (on by default). Without them a text
    /// change says only which field changed and whether it grew: computing a delta walks the
    /// field from its start, so on a long text every keystroke costs time in its length.
    pub fn set_text_deltas(&mut self, on: bool) {
        lock(&self.feed).no_deltas = !on;
    }

    /// Drains the changes recorded since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut lock(&self.feed).changes)
    }

    /// The text field `field`, registered with an observer the first time it is seen. `None`
    /// when a root of that name already exists as another shared type (an application made it
    /// a map or an array through [`Document::doc`]): it is not a text field.
    fn text_ref(&mut self, field: &str) -> Option<TextRef> {
        if let Some(t) = self.texts.get(field) {
            return Some(t.clone());
        }
        // Observing a map or array root as a text makes yrs panic on its next change
        // ("subscribed callback expected TextRef collection"). Found by the `protocol` fuzz
        // target; see engine/tests/fuzz_regressions.rs.
        if let Some(root) = self.doc.transact().get(field) {
            if !matches!(root, Out::YText(_) | Out::UndefinedRef(_)) {
                return None;
            }
        }
        let text = self.doc.get_or_insert_text(field);
        let f = self.feed.clone();
        let name = field.to_owned();
        // The field's length after its last change (kept whether or not anyone listens).
        let length = AtomicU32::new(text.len(&self.doc.transact()));
        text.observe("tandem", move |txn: &TransactionMut, e: &TextEvent| {
            let now = e.target().len(txn);
            let before = length.swap(now, Ordering::Relaxed);
            let mut feed = lock(&f);
            if !feed.enabled {
                return;
            }
            let delta = if feed.no_deltas {
                Vec::new()
            } else {
                e.delta(txn).iter().filter_map(delta_op).collect()
            };
            let author = author_of(&feed, txn.origin());
            feed.changes.push(Change::Text {
                field: name.clone(),
                delta,
                grew: now > before,
                author,
            });
        });
        self.texts.insert(field.to_owned(), text.clone());
        Some(text)
    }

    /// Names of the text fields this replica knows, sorted.
    pub fn field_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.texts.keys().cloned().collect();
        names.sort();
        names
    }

    /// The current text of `field`, or `None` if the field does not exist. An embedded value
    /// (`Y.Text.insertEmbed`, a nested type) shows as U+FFFC, one UTF-16 unit, as in the
    /// change feed's deltas and in every offset.
    pub fn text(&self, field: &str) -> Option<String> {
        let text = self.texts.get(field)?;
        Some(text_content(text, &self.doc.transact()))
    }

    /// The users `field` mentions now, one entry per mention (a multiset, in text order):
    /// plain-text markup `@[Name](user)`, embeds `{"mention": user}` and text formatted with
    /// the attribute `{"mention": user}` (a formatted run counts once). See [`crate::mention`].
    pub fn mentions(&self, field: &str) -> Vec<String> {
        let Some(text) = self.texts.get(field) else {
            return Vec::new();
        };
        let txn = self.doc.transact();
        let mut out = Vec::new();
        let mut plain = String::new();
        let flush = |plain: &mut String, out: &mut Vec<String>| {
            out.extend(
                crate::mention::parse_markup(plain)
                    .into_iter()
                    .map(|m| m.user),
            );
            plain.clear();
        };
        let mut last_attr: Option<String> = None;
        for chunk in text.diff(&txn, YChange::identity) {
            let attr = chunk
                .attributes
                .as_ref()
                .and_then(|a| a.get("mention"))
                .and_then(mention_id);
            if attr.is_some() && attr != last_attr {
                out.extend(attr.clone());
            }
            last_attr = attr;
            match &chunk.insert {
                Out::Any(Any::String(s)) => plain.push_str(s),
                Out::Any(embed) => {
                    flush(&mut plain, &mut out);
                    if let Any::Map(m) = embed {
                        out.extend(m.get("mention").and_then(mention_id));
                    }
                }
                _ => flush(&mut plain, &mut out),
            }
        }
        flush(&mut plain, &mut out);
        out
    }

    /// Every text field with its content (embedded values as in [`Document::text`]).
    pub fn texts(&self) -> BTreeMap<String, String> {
        let txn = self.doc.transact();
        self.texts
            .iter()
            .map(|(k, t)| (k.clone(), text_content(t, &txn)))
            .collect()
    }

    /// Length of `field` in UTF-16 units (0 when it does not exist).
    pub fn text_len(&self, field: &str) -> u32 {
        self.texts
            .get(field)
            .map(|t| t.len(&self.doc.transact()))
            .unwrap_or(0)
    }

    /// Replaces `delete` units at `index` of `field` with `insert`, as `user`.
    pub fn edit(
        &mut self,
        user: &str,
        field: &str,
        index: u32,
        delete: u32,
        insert: &str,
    ) -> Result<Vec<u8>, DocumentError> {
        self.edit_many(user, field, &[(index, delete, insert)])
    }

    /// Applies several `(index, delete, insert)` patches to `field` in one transaction, each
    /// relative to the text the previous one left. Nothing changes if any patch is out of range.
    pub fn edit_many(
        &mut self,
        user: &str,
        field: &str,
        patches: &[(u32, u32, &str)],
    ) -> Result<Vec<u8>, DocumentError> {
        check_name(field)?;
        let text = self
            .text_ref(field)
            .ok_or_else(|| DocumentError::InvalidFieldName(field.to_owned()))?;
        self.track(user, &text);
        let mut txn = self
            .doc
            .try_transact_mut_with(user)
            .map_err(|_| DocumentError::Busy)?;
        // Check the whole batch first so a failure leaves the document untouched.
        let mut len = u64::from(text.len(&txn));
        for &(index, delete, insert) in patches {
            let end = u64::from(index) + u64::from(delete);
            if end > len {
                return Err(DocumentError::OutOfRange {
                    index,
                    end,
                    len: len as u32,
                });
            }
            len = len - u64::from(delete) + insert.encode_utf16().count() as u64;
        }
        for &(index, delete, insert) in patches {
            if delete > 0 {
                text.remove_range(&mut txn, index, delete);
            }
            if !insert.is_empty() {
                text.insert(&mut txn, index, insert);
            }
        }
        Ok(txn.encode_update_v1())
    }

    /// Inserts `chunk` at UTF-16 offset `index` of `field`, as `user`.
    pub fn insert(
        &mut self,
        user: &str,
        field: &str,
        index: u32,
        chunk: &str,
    ) -> Result<Vec<u8>, DocumentError> {
        self.edit(user, field, index, 0, chunk)
    }

    /// Deletes `len` UTF-16 units at `index` of `field`, as `user`.
    pub fn delete(
        &mut self,
        user: &str,
        field: &str,
        index: u32,
        len: u32,
    ) -> Result<Vec<u8>, DocumentError> {
        self.edit(user, field, index, len, "")
    }

    /// The current state of register `name`, `None` when unset or deleted.
    pub fn field(&self, name: &str) -> Option<FieldValue> {
        let txn = self.doc.transact();
        winner(&self.registers, &txn, name)
            .filter(|e| !e.deleted)
            .map(|e| FieldValue::from(&e))
    }

    /// Every register that has a value.
    pub fn fields(&self) -> BTreeMap<String, FieldValue> {
        let txn = self.doc.transact();
        let mut best: BTreeMap<String, Entry> = BTreeMap::new();
        for entry in entries(&self.registers, &txn) {
            match best.get(&entry.name) {
                Some(b) if b.stamp() >= entry.stamp() => {}
                _ => {
                    best.insert(entry.name.clone(), entry);
                }
            }
        }
        // Inserted one by one: `collect` into a BTreeMap sorts first, a sort instantiated for
        // this one call.
        let mut fields = BTreeMap::new();
        for (name, entry) in best {
            if !entry.deleted {
                fields.insert(name, FieldValue::from(&entry));
            }
        }
        fields
    }

    /// Writes register `name` as `user`; `None` deletes it. Returns the new state and the update.
    pub fn set_field(
        &mut self,
        user: &str,
        name: &str,
        value: Option<serde_json::Value>,
    ) -> Result<(Option<FieldValue>, Vec<u8>), DocumentError> {
        check_name(name)?;
        let registers = self.registers.clone();
        self.track(user, &registers);
        let mut txn = self
            .doc
            .try_transact_mut_with(user)
            .map_err(|_| DocumentError::Busy)?;
        let (seen, entry) = self.next_entry(&txn, user, name, value);
        for old in &seen {
            registers.remove(&mut txn, &old.key());
        }
        let json = serde_json::to_string(&entry).map_err(|_| DocumentError::Busy)?;
        registers.insert(&mut txn, entry.key(), json);
        let update = txn.encode_update_v1();
        let state = (!entry.deleted).then(|| FieldValue::from(&entry));
        Ok((state, update))
    }

    /// The entries of register `name` a write by `user` now replaces, and the entry it writes.
    fn next_entry<T: ReadTxn>(
        &self,
        txn: &T,
        user: &str,
        name: &str,
        value: Option<serde_json::Value>,
    ) -> (Vec<Entry>, Entry) {
        let seen: Vec<Entry> = entries(&self.registers, txn)
            .filter(|e| e.name == name)
            .collect();
        let stamp = Stamp::next(self.now(), self.client_id(), seen.iter().map(Entry::stamp));
        let entry = Entry {
            name: name.to_owned(),
            deleted: value.is_none(),
            value: value.unwrap_or(serde_json::Value::Null),
            wall: stamp.wall,
            counter: stamp.counter,
            client: stamp.client,
            author: Some(user.to_owned()),
        };
        (seen, entry)
    }

    /// The most bytes the update of [`Document::set_field`] with these arguments, made now,
    /// can take (its entry exactly, every other part at its largest encoding).
    pub(crate) fn set_field_bound(
        &self,
        user: &str,
        name: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<usize, DocumentError> {
        check_name(name)?;
        let txn = self.doc.try_transact().map_err(|_| DocumentError::Busy)?;
        let (seen, entry) = self.next_entry(&txn, user, name, value.cloned());
        let json = serde_json::to_string(&entry).map_err(|_| DocumentError::Busy)?;
        // The entry's key, then its content: one `Any` string.
        let content = VARINT_MAX + entry.key().len() + VARINT_MAX + 1 + VARINT_MAX + json.len();
        Ok(item_bound(REGISTERS_MAP) + content + delete_set_bound(seen.len()))
    }

    fn manager(&mut self, user: &str) -> &mut UndoManager<()> {
        let doc = &self.doc;
        let now = self.now.clone();
        let feed = &self.feed;
        let registers = &self.registers;
        self.undo.entry(user.to_owned()).or_insert_with(|| {
            let options = yrs::undo::Options {
                capture_timeout_millis: UNDO_CAPTURE_MS,
                tracked_origins: [Origin::from(user)].into_iter().collect(),
                capture_transaction: None,
                timestamp: Arc::new(move || now.load(Ordering::Relaxed)),
                init_undo_stack: Vec::new(),
                init_redo_stack: Vec::new(),
            };
            let mut mgr = UndoManager::with_options(options);
            mgr.expand_scope(doc, registers);
            lock(feed)
                .undo_origins
                .insert(mgr.as_origin(), user.to_owned());
            mgr
        })
    }

    fn track<T: AsRef<yrs::branch::Branch>>(&mut self, user: &str, scope: &T) {
        let doc = self.doc.clone();
        self.manager(user).expand_scope(&doc, scope);
        self.others_stop_capturing(user);
    }

    /// A local change by `user` ends every other local user's current undo step. One replica's
    /// users share its Yjs client id, so without this one user's step could capture two runs
    /// of clocks with another user's insertion between them, which yrs may squash into one
    /// block; yrs's undo then splits that block at the first run and reads the second through
    /// a stale slice (an arithmetic overflow; the `convergence` fuzz target found it). With it,
    /// each step's insertions are one run of clocks.
    fn others_stop_capturing(&mut self, user: &str) {
        for (other, mgr) in self.undo.iter_mut() {
            if other != user {
                mgr.reset();
            }
        }
    }

    /// Undoes `user`'s last step (never anyone else's). Returns the update, or `None` when
    /// there was nothing to undo.
    pub fn undo(&mut self, user: &str) -> Option<Vec<u8>> {
        self.undo_redo(user, true)
    }

    /// Redoes `user`'s last undone step.
    pub fn redo(&mut self, user: &str) -> Option<Vec<u8>> {
        self.undo_redo(user, false)
    }

    /// Whether `user` has a step to undo.
    pub fn can_undo(&self, user: &str) -> bool {
        self.undo.get(user).is_some_and(|m| m.can_undo())
    }

    /// Whether `user` has a step to redo.
    pub fn can_redo(&self, user: &str) -> bool {
        self.undo.get(user).is_some_and(|m| m.can_redo())
    }

    /// Ends `user`'s current undo step, so the next edit starts a new one.
    pub fn stop_capturing(&mut self, user: &str) {
        if let Some(m) = self.undo.get_mut(user) {
            m.reset();
        }
    }

    fn undo_redo(&mut self, user: &str, undo: bool) -> Option<Vec<u8>> {
        if !self.undo.contains_key(user) {
            return None;
        }
        self.others_stop_capturing(user);
        let capture = self.capture.clone();
        let c = capture.clone();
        let _ = self.doc.observe_update_v1("tandem-capture", move |_, e| {
            let mut buf = c.lock().unwrap_or_else(|p| p.into_inner());
            buf.push(e.update.clone());
        });
        let done = match self.undo.get_mut(user) {
            Some(mgr) if undo => mgr.undo_blocking(),
            Some(mgr) => mgr.redo_blocking(),
            None => false,
        };
        let _ = self.doc.unobserve_update_v1("tandem-capture");
        // An undo may commit more than one transaction: hand out all of them as one update.
        let updates = std::mem::take(&mut *capture.lock().unwrap_or_else(|p| p.into_inner()));
        let update = match updates.len() {
            0 => return None,
            1 => updates.into_iter().next().unwrap_or_default(),
            _ => {
                let parts: Vec<&[u8]> = updates.iter().map(Vec::as_slice).collect();
                yrs::merge_updates_v1(&parts).ok()?
            }
        };
        done.then_some(update)
    }

    /// A number that changes whenever the document's content does (any transaction that
    /// produced an update, deletions included, or an update set waiting for its
    /// dependencies). Equal revisions mean equal encoded state, so encodings can be cached.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// This replica's state vector (sync step 1 payload).
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// The update a peer with state vector `sv` is missing (sync step 2 payload).
    pub fn diff(&self, sv: &[u8]) -> Result<Vec<u8>, DocumentError> {
        guard::check_state_vector(sv)?;
        let sv = StateVector::decode_v1(sv).map_err(|e| DocumentError::Apply(e.to_string()))?;
        let diff = self.doc.transact().encode_diff_v1(&sv);
        Ok(self.with_waiting(diff))
    }

    /// Whether the document already holds everything `update` (v1) carries: every block below
    /// its state vector and every deletion already made, so applying it would change nothing.
    /// What a replica sends back in its step 2 when it has made no edit of its own (the delete
    /// set of a Yjs step 2 is the replica's whole delete set). The bytes are validated first;
    /// blocks that wait for missing dependencies count as not held.
    pub fn holds(&self, update: &[u8]) -> Result<bool, DocumentError> {
        let summary = guard::check_update_v1(update)?;
        let txn = self.doc.transact();
        let sv = txn.state_vector();
        let beyond =
            |&(client, _, end): &(u64, u32, u32)| end > sv.get(&yrs::ClientID::new(client));
        if summary.provides.iter().any(beyond) {
            return Ok(false);
        }
        if summary.deletes.is_empty() {
            return Ok(true);
        }
        let update = Update::decode_v1(update).map_err(|e| DocumentError::Apply(e.to_string()))?;
        let deleted = txn.snapshot().delete_set;
        Ok(update.delete_set().diff(&deleted).is_empty())
    }

    /// The whole document as one update, updates still waiting for their dependencies
    /// included (as Yjs's `encodeStateAsUpdate` includes its pending structs).
    pub fn encode_state(&self) -> Vec<u8> {
        let state = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        self.with_waiting(state)
    }

    /// `update` merged with every waiting update. Without them, a snapshot (`encode_state`,
    /// what compaction stores) or a joiner's step 2 (`diff`) silently lacked updates the
    /// document had accepted and integrates later: the `protocol` fuzz target found the
    /// reloaded document and late joiners missing text (engine/tests/fuzz_regressions.rs).
    fn with_waiting(&self, update: Vec<u8>) -> Vec<u8> {
        if self.waiting.is_empty() {
            return update;
        }
        let mut parts: Vec<&[u8]> = vec![&update];
        parts.extend(self.waiting.iter().map(|w| w.update.as_slice()));
        // Every part is a valid update (validated on arrival or encoded by yrs).
        yrs::merge_updates_v1(&parts).unwrap_or(update)
    }

    /// Applies a remote update (v1) made by `author`. The bytes are validated first.
    ///
    /// An update whose dependencies (earlier blocks, the items it refers to, what it deletes)
    /// are not all here yet waits in the document, and is integrated as soon as they arrive.
    /// tandem keeps this queue itself rather than relying on yrs's pending updates, which
    /// were seen to diverge under out-of-order delivery.
    pub fn apply_update(
        &mut self,
        update: &[u8],
        author: Option<&str>,
    ) -> Result<Applied, DocumentError> {
        Ok(match self.apply_bounded(update, author, None)? {
            Bounded::Applied(applied) => applied,
            // Without a bound nothing is ever refused or trimmed.
            Bounded::Refused { .. } => Applied { changed: false },
            Bounded::Trimmed { changed, .. } => Applied { changed },
        })
    }

    /// [`Document::apply_update`] with a bound on the bytes waiting for missing dependencies
    /// ([`Document::pending_len`]): when the part of `update` that would wait (one not waiting
    /// already) would take them above `max_pending`, `when_full` decides, before anything of
    /// the update is applied, whether it is refused whole or integrated without that part.
    pub(crate) fn apply_bounded(
        &mut self,
        update: &[u8],
        author: Option<&str>,
        bound: Option<(usize, WhenFull)>,
    ) -> Result<Bounded, DocumentError> {
        let summary = guard::check_update_v1(update)?;
        self.check_parents(&summary.parents)?;
        if !self.dependencies_met(&summary) {
            if self.waiting.iter().any(|w| w.update == update) {
                return Ok(Bounded::Applied(Applied { changed: false }));
            }
            // Part of it may be ready: a snapshot or step 2 carries the document next to the
            // updates that were waiting in it (see `with_waiting`). That part is integrated
            // now and only the rest waits; yrs never sees blocks past a gap.
            let roots = summary.roots.clone();
            let sv = self.doc.transact().state_vector();
            let (ready, mut rest, reach) =
                match guard::split_ready(update, |c| sv.get(&yrs::ClientID::new(c)))? {
                    Split::Ready => (Some(update.to_vec()), None, Vec::new()),
                    Split::Waiting => (None, Some((update.to_vec(), summary)), Vec::new()),
                    Split::Parts { ready, rest, reach } => {
                        let rest_summary = guard::check_update_v1(&rest)?;
                        (Some(ready), Some((rest, rest_summary)), reach)
                    }
                };
            // A block that waits although its clocks start inside what is already integrated
            // names known ids with unknown dependencies: a rewrite of history, never a resend
            // (a resent block's dependencies were known when it was first integrated). Merged
            // into a snapshot it would be cut at the known clock and lose its dependencies.
            if let Some((_, rest_summary)) = &rest {
                if conflicts_with(rest_summary, &sv) {
                    return Err(DocumentError::Apply(
                        "the update rewrites integrated content".to_owned(),
                    ));
                }
                // What this replica holds of its own ids once the ready part is in (a state
                // it saved and loads again carries its own blocks there).
                let own = self.client_id();
                let own_clock = reach
                    .iter()
                    .find(|(c, _)| *c == own)
                    .map_or_else(|| sv.get(&yrs::ClientID::new(own)), |&(_, e)| e);
                if waits_for_own_edits(rest_summary, own, own_clock) {
                    return Err(DocumentError::OwnClientId(own));
                }
            }
            // The rest is cut the same way every time, so a resend is recognised.
            let mut trimmed = None;
            if let (Some((rest_bytes, _)), Some((max_pending, when_full))) = (&rest, bound) {
                let pending = self.pending_len() + rest_bytes.len();
                let new = !self.waiting.iter().any(|w| &w.update == rest_bytes);
                if new && pending > max_pending {
                    match when_full {
                        WhenFull::Refuse => return Ok(Bounded::Refused { pending }),
                        WhenFull::DropWaiting => {
                            rest = None;
                            trimmed = Some(pending);
                        }
                    }
                }
            }
            self.register_roots(&roots);
            let mut changed = false;
            if let Some(ready) = &ready {
                changed = self.integrate(ready, author)?;
            }
            if let Some((rest, summary)) = rest {
                if !self.waiting.iter().any(|w| w.update == rest) {
                    self.waiting_bytes += rest.len();
                    self.revision.fetch_add(1, Ordering::Relaxed);
                    self.waiting.push(Waiting {
                        update: rest,
                        author: author.map(str::to_owned),
                        summary,
                    });
                    changed = true;
                }
            }
            if ready.is_some() && !self.waiting.is_empty() {
                self.integrate_waiting();
            }
            return Ok(match trimmed {
                Some(pending) => Bounded::Trimmed {
                    ready,
                    changed,
                    pending,
                },
                None => Bounded::Applied(Applied { changed }),
            });
        }
        self.register_roots(&summary.roots);
        let changed = self.integrate(update, author)?;
        if changed && !self.waiting.is_empty() {
            self.integrate_waiting();
        }
        Ok(Bounded::Applied(Applied { changed }))
    }

    /// Makes the update's top-level texts known before it integrates, so their changes are
    /// observed.
    fn register_roots(&mut self, roots: &[String]) {
        for root in roots {
            if !root.starts_with(RESERVED_PREFIX) && !self.texts.contains_key(root.as_str()) {
                self.text_ref(root);
            }
        }
    }

    fn dependencies_met(&self, summary: &guard::UpdateSummary) -> bool {
        let sv = self.doc.transact().state_vector();
        summary.dependencies_met(|client| sv.get(&yrs::ClientID::new(client)))
    }

    /// Hands an update whose dependencies are met to yrs; returns whether anything changed.
    fn integrate(&mut self, update: &[u8], author: Option<&str>) -> Result<bool, DocumentError> {
        let decoded = Update::decode_v1(update).map_err(|e| DocumentError::Apply(e.to_string()))?;
        let mut txn = match author {
            Some(a) => self.doc.try_transact_mut_with(a),
            None => self.doc.try_transact_mut(),
        }
        .map_err(|_| DocumentError::Busy)?;
        txn.apply_update(decoded)
            .map_err(|e| DocumentError::Apply(e.to_string()))?;
        // Blocks integrated or content deleted (what also counts a revision), without building
        // and comparing state vectors. Only updates whose dependencies are met come here, so
        // none carries a gap (a skip) that would count as a change.
        Ok(txn.has_changes())
    }

    /// Whether remote updates can be integrated in runs ([`Document::apply_run`]): not while
    /// the change feed computes text deltas, which subscribers receive update by update.
    pub(crate) fn takes_runs(&self) -> bool {
        let feed = lock(&self.feed);
        !feed.enabled || feed.no_deltas
    }

    /// Integrates remote updates by one author in one transaction, as [`Document::apply_update`]
    /// would one by one, and stops before the first that cannot go this way: one the guard
    /// refuses, one whose dependencies are missing (it would wait) or one that yrs refuses;
    /// while updates wait, none goes this way.
    /// The caller applies that one with [`Document::apply_bounded`]. A transaction per update
    /// costs about as much as integrating it (observers, squashing, the after-transaction
    /// work); a run pays that once.
    ///
    /// The change feed records the run as one change per field ([`Document::takes_runs`]
    /// says when runs are allowed), and the revision counts it once.
    pub(crate) fn apply_run(&mut self, updates: &[&[u8]], author: Option<&str>) -> Run {
        // While updates wait, each one that integrates may release them (in its turn, as
        // `apply_bounded` does): one by one.
        if !self.waiting.is_empty() {
            return Run::default();
        }
        let mut summaries = Vec::with_capacity(updates.len());
        for update in updates {
            match guard::check_update_v1(update) {
                Ok(summary) => summaries.push(summary),
                Err(_) => break,
            }
        }
        for summary in &summaries {
            self.register_roots(&summary.roots);
        }
        let mut changed = Vec::with_capacity(summaries.len());
        let Ok(mut txn) = (match author {
            Some(a) => self.doc.try_transact_mut_with(a),
            None => self.doc.try_transact_mut(),
        }) else {
            return Run {
                changed,
                error: None,
            };
        };
        // The transaction's state vector, advanced by each update's blocks as it goes in
        // (with its dependencies met, a client's clock becomes the furthest end it provides).
        let mut sv = txn.state_vector();
        for (update, summary) in updates.iter().zip(&summaries) {
            if !summary.dependencies_met(|client| sv.get(&yrs::ClientID::new(client))) {
                break;
            }
            if !summary.parents.is_empty() && parents_ok(&txn, &summary.parents).is_err() {
                break;
            }
            let Ok(decoded) = Update::decode_v1(update) else {
                break;
            };
            // Blocks past the state vector are new (the dependencies are met, so none leaves a
            // gap); a deletion is new when the transaction's delete set grows.
            let inserts = summary
                .provides
                .iter()
                .any(|&(client, _, end)| end > sv.get(&yrs::ClientID::new(client)));
            let deleted = if summary.deletes.is_empty() {
                None
            } else {
                Some(deleted_units(txn.delete_set()))
            };
            if let Err(e) = txn.apply_update(decoded) {
                return Run {
                    changed,
                    error: Some(DocumentError::Apply(e.to_string())),
                };
            }
            let deletes = deleted.is_some_and(|before| deleted_units(txn.delete_set()) > before);
            changed.push(inserts || deletes);
            for &(client, _, end) in &summary.provides {
                sv.set_max(yrs::ClientID::new(client), end);
            }
            debug_assert_eq!(sv, txn.state_vector());
        }
        Run {
            changed,
            error: None,
        }
    }

    /// Refuses an update naming as a parent an item this document holds that is neither a type
    /// nor deleted content. yrs refuses it too, but only when it reaches that item, with the
    /// update's earlier blocks already integrated; the check keeps a refused update from
    /// changing the document. Parents the update itself carries are checked by the guard.
    fn check_parents(&self, parents: &[(u64, u32)]) -> Result<(), DocumentError> {
        if parents.is_empty() {
            return Ok(());
        }
        let txn = self.doc.try_transact().map_err(|_| DocumentError::Busy)?;
        parents_ok(&txn, parents)
    }

    /// Integrates waiting updates whose dependencies have arrived, until none is left that can;
    /// then drops those that the integrated content has overtaken (see `conflicts_with`).
    fn integrate_waiting(&mut self) {
        loop {
            let ready = self
                .waiting
                .iter()
                .position(|w| self.dependencies_met(&w.summary));
            let Some(i) = ready else {
                let sv = self.doc.transact().state_vector();
                let before = self.waiting.len();
                let mut dropped = 0;
                self.waiting.retain(|w| {
                    let keep = !conflicts_with(&w.summary, &sv);
                    if !keep {
                        dropped += w.update.len();
                    }
                    keep
                });
                if self.waiting.len() != before {
                    self.waiting_bytes -= dropped;
                    self.revision.fetch_add(1, Ordering::Relaxed);
                }
                return;
            };
            let w = self.waiting.swap_remove(i);
            self.waiting_bytes -= w.update.len();
            self.revision.fetch_add(1, Ordering::Relaxed);
            // It was validated on arrival; an error here leaves the document as it was.
            // A parent that arrived since may not be able to take its items (`check_parents`).
            if self.check_parents(&w.summary.parents).is_ok() {
                let _ = self.integrate(&w.update, w.author.as_deref());
            }
        }
    }

    /// Bytes of updates waiting for missing dependencies.
    pub fn pending_len(&self) -> usize {
        self.waiting_bytes + pending_len(&self.doc.transact())
    }
}

/// [`Document::check_parents`] against `txn`'s state.
fn parents_ok<T: ReadTxn>(txn: &T, parents: &[(u64, u32)]) -> Result<(), DocumentError> {
    let sv = txn.state_vector();
    for &(client, clock) in parents {
        let client = yrs::ClientID::new(client);
        if clock >= sv.get(&client) {
            continue;
        }
        let id = yrs::ID::new(client, clock);
        if yrs::BranchID::get_nested(txn, &id).is_some() {
            continue;
        }
        // Not a type (rare: a type deleted and collected, or a forged parent). The block
        // holding the id leads this client's part of a diff from that clock.
        let mut from = sv.clone();
        from.set_min(client, clock);
        let kind = guard::first_block_kind(&txn.encode_diff_v1(&from));
        if !kind.is_some_and(guard::can_parent) {
            return Err(DocumentError::Decode(DecodeError::Malformed(
                "an item's parent is neither a type nor deleted",
            )));
        }
    }
    Ok(())
}

/// Clock units a transaction's delete set holds.
fn deleted_units(set: &yrs::IdSet) -> u64 {
    set.iter()
        .flat_map(|(_, ranges)| ranges.iter().map(|r| u64::from(r.end - r.start)))
        .sum()
}

/// The most bytes a lib0 varint of a client id (below 2^53) takes; 32-bit values take 5.
const VARINT_MAX: usize = 8;

/// The most bytes one client's section holding one item takes, without the item's content or
/// parent key: client and struct counts, client id and clock, the item's info byte, both
/// origins and its parent named by `root`.
fn item_bound(root: &str) -> usize {
    let id = VARINT_MAX + 5;
    1 + 1 + id + 1 + 2 * id + 1 + VARINT_MAX + root.len()
}

/// The most bytes a delete set of `ranges` ranges takes (each range of its own client).
fn delete_set_bound(ranges: usize) -> usize {
    5 + ranges * (VARINT_MAX + 5 + 5 + 5)
}

/// The most bytes the update of [`Document::edit`]`(_, field, _, delete, insert)` can take:
/// the inserted text exactly, and every deleted unit as a delete-set range of its own. (A
/// deletion also removes formatting markers that no longer format anything and the content of
/// an embedded type it deletes; those ranges are not foreseen.)
pub(crate) fn edit_bound(field: &str, delete: u32, insert: &str) -> usize {
    let inserted = if insert.is_empty() {
        0
    } else {
        item_bound(field) + VARINT_MAX + insert.len()
    };
    1 + inserted + delete_set_bound(delete as usize)
}

/// The empty update: no structs, an empty delete set.
pub const EMPTY_UPDATE: [u8; 2] = [0, 0];

/// Merges v1 updates (for example a stretch of a document's stored log) into one update that
/// does to any document what applying each of them does. Every input is checked by
/// [`guard::check_update_v1`] first, whatever its origin; no input gives [`EMPTY_UPDATE`].
pub fn merge_updates(updates: &[&[u8]]) -> Result<Vec<u8>, DocumentError> {
    for update in updates {
        guard::check_update_v1(update)?;
    }
    match updates {
        [] => Ok(EMPTY_UPDATE.to_vec()),
        [one] => Ok(one.to_vec()),
        _ => match guard::concat_updates(updates) {
            Some(joined) => Ok(joined),
            None => yrs::merge_updates_v1(updates).map_err(|e| DocumentError::Apply(e.to_string())),
        },
    }
}

/// Whether a waiting update carries a block starting below what `known` already holds of its
/// client: such a block can only be a conflicting rewrite of integrated ids.
fn conflicts_with(summary: &guard::UpdateSummary, known: &StateVector) -> bool {
    summary
        .provides
        .iter()
        .any(|&(client, start, _)| start < known.get(&yrs::ClientID::new(client)))
}

/// Whether a waiting update carries or depends on ids of this replica's own client beyond what
/// it has made (`own_clock`). Only this replica makes those ids, so such an update comes from a
/// replica using the same client id. Kept waiting, it would meet this replica's next local
/// edits under the same ids: the `protocol` fuzz target found a snapshot that integrated the
/// waiting block where the document had not.
fn waits_for_own_edits(summary: &guard::UpdateSummary, own: u64, own_clock: u32) -> bool {
    summary.provides.iter().any(|&(client, _, _)| client == own)
        || summary
            .needs
            .iter()
            .any(|&(client, clock)| client == own && clock >= own_clock)
        || summary
            .deletes
            .iter()
            .any(|&(client, end)| client == own && end > own_clock)
}

fn pending_len<T: ReadTxn>(txn: &T) -> usize {
    let store = txn.store();
    let blocks = store
        .pending_update()
        .map(|p| p.update.encode_v1().len())
        .unwrap_or(0);
    let ds = store
        .pending_ds()
        .filter(|d| !d.is_empty())
        .map(|d| d.encode_v1().len())
        .unwrap_or(0);
    blocks + ds
}

/// A text's content with every embedded value as U+FFFC. yrs's `get_string` leaves embeds
/// out while its lengths, offsets and deltas count each as one unit, so a reader starting
/// from the text and following the change feed went wrong after an embed (found by the
/// `protocol` fuzz target with a captured y-websocket session; fuzz_regressions.rs).
fn text_content<T: ReadTxn>(text: &TextRef, txn: &T) -> String {
    let mut content = String::new();
    for chunk in text.diff(txn, YChange::identity) {
        match chunk.insert {
            Out::Any(Any::String(s)) => content.push_str(&s),
            _ => content.push('\u{fffc}'),
        }
    }
    content
}

/// The user id of a `mention` attribute or embed value: a string, or an object's `"id"`.
fn mention_id(v: &Any) -> Option<String> {
    match v {
        Any::String(s) if !s.is_empty() => Some(s.to_string()),
        Any::Map(m) => match m.get("id") {
            Some(Any::String(s)) if !s.is_empty() => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn delta_op(d: &Delta) -> Option<DeltaOp> {
    Some(match d {
        Delta::Retain(n, _) => DeltaOp::Retain(*n),
        Delta::Deleted(n) => DeltaOp::Delete(*n),
        Delta::Inserted(Out::Any(Any::String(s)), _) => DeltaOp::Insert(s.to_string()),
        // Embedded values count as one unit; shown as the object replacement character.
        Delta::Inserted(_, _) => DeltaOp::Insert("\u{fffc}".to_owned()),
    })
}

fn entries<'a, T: ReadTxn>(map: &'a MapRef, txn: &'a T) -> impl Iterator<Item = Entry> + 'a {
    map.iter(txn).filter_map(|(k, v)| entry_at(k, v))
}

/// The register write stored under `key`, if it is one: a JSON entry whose own name and stamp
/// give back `key`. Anything else in the map (written by a foreign or hostile client) is
/// ignored by every reader alike, so the change feed, `field` and `fields` always agree.
fn entry_at(key: &str, value: Out) -> Option<Entry> {
    let Out::Any(Any::String(s)) = value else {
        return None;
    };
    let entry = Entry::parse(&s)?;
    (entry.key() == key).then_some(entry)
}

fn winner<T: ReadTxn>(map: &MapRef, txn: &T, name: &str) -> Option<Entry> {
    let prefix_len = name.len() + 1;
    map.iter(txn)
        .filter(|(k, _)| {
            k.len() > prefix_len && k.starts_with(name) && k.as_bytes()[name.len()] == b'#'
        })
        .filter_map(|(k, v)| entry_at(k, v))
        .max_by_key(Entry::stamp)
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    fn sync(from: &Document, to: &mut Document) {
        let update = from.diff(&to.state_vector()).unwrap();
        to.apply_update(&update, None).unwrap();
    }

    /// A replica with the largest client id (largest varints) holding a text of one-unit items
    /// from many clients, interleaved so that no two neighbours merge.
    fn fragmented() -> Document {
        let mut d = Document::new(crate::wire::MAX_SAFE_INTEGER);
        let mut others: Vec<Document> = (0..12).map(|i| Document::new((1 << 52) + i)).collect();
        for round in 0..4 {
            for o in others.iter_mut() {
                sync(&d, o);
                let len = o.text_len("a field");
                let update = o.insert("u", "a field", len, &round.to_string()).unwrap();
                d.apply_update(&update, None).unwrap();
            }
        }
        assert_eq!(d.text_len("a field"), 48);
        d
    }

    #[test]
    fn edit_bounds_hold_what_edits_produce() {
        for (index, delete, insert) in [
            (0, 48, ""),
            (0, 48, "replaced 😀 text"),
            (13, 1, ""),
            (5, 30, "x"),
            (0, 0, "at the start"),
            (48, 0, "at the end, ünïcödé 😀😀"),
        ] {
            let mut d = fragmented();
            let update = d.edit("user", "a field", index, delete, insert).unwrap();
            let bound = edit_bound("a field", delete, insert);
            assert!(
                update.len() <= bound,
                "edit({index}, {delete}, {insert:?}): {} bytes, bound {bound}",
                update.len()
            );
        }
    }

    #[test]
    fn holds_tells_a_step_2_with_nothing_new_from_one_with_edits() {
        let mut server = Document::new(1);
        let mut viewer = Document::new(2);
        let typed = server.insert("a", "t", 0, "hello").unwrap();
        viewer.apply_update(&typed, None).unwrap();
        // The viewer's step 2 holds nothing the server lacks...
        let step2 = viewer.diff(&server.state_vector()).unwrap();
        assert!(server.holds(&step2).unwrap());
        assert!(server.holds(&EMPTY_UPDATE).unwrap());
        // ...including once deletions exist: a Yjs step 2 carries the whole delete set.
        let deleted = server.delete("a", "t", 1, 2).unwrap();
        viewer.apply_update(&deleted, None).unwrap();
        let step2 = viewer.diff(&server.state_vector()).unwrap();
        assert!(server.holds(&step2).unwrap());
        // A new block, or a deletion the server has not made, is not held.
        let mut edited = Document::new(3);
        edited.apply_update(&server.encode_state(), None).unwrap();
        let insert = edited.insert("b", "t", 0, "x").unwrap();
        assert!(!server.holds(&insert).unwrap());
        let delete = edited.delete("b", "t", 1, 1).unwrap();
        assert!(!server.holds(&delete).unwrap());
        // Garbage is an error, not an answer.
        assert!(server.holds(&[1, 2, 3]).is_err());
    }

    #[test]
    fn set_field_bounds_hold_what_writes_produce() {
        // Concurrent writes from three replicas: a write replaces all three entries.
        let mut d = Document::new(crate::wire::MAX_SAFE_INTEGER);
        for client in [1 << 52, (1 << 52) + 1, (1 << 52) + 2] {
            let mut other = Document::new(client);
            other.set_time(1_700_000_000_000 + client);
            let (_, update) = other
                .set_field("someone", "status", Some("x".into()))
                .unwrap();
            d.apply_update(&update, None).unwrap();
        }
        d.set_time(1_800_000_000_000);
        for value in [
            Some(serde_json::json!({"nested": ["a", 1, 2.5, null], "text": "ünï 😀"})),
            None,
            Some(serde_json::json!("done")),
        ] {
            let bound = d
                .set_field_bound("a user", "status", value.as_ref())
                .unwrap();
            let (_, update) = d.set_field("a user", "status", value).unwrap();
            assert!(
                update.len() <= bound,
                "{} bytes, bound {bound}",
                update.len()
            );
        }
        assert!(matches!(
            d.set_field_bound("u", "", None),
            Err(DocumentError::InvalidFieldName(_))
        ));
    }
}
