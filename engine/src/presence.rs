//! Presence: who is viewing a document, who is typing in which field, and where their cursors
//! are.
//!
//! [`Presence`] wraps a yrs [`Awareness`] (the y-protocols awareness CRDT) for one replica of a
//! document. Each client id carries one JSON state; tandem writes states in the shape below and
//! reads any client's state leniently, so stock Yjs clients (y-codemirror, y-monaco, plain
//! `provider.awareness.setLocalStateField('user', …)`) interoperate in both directions.
//!
//! # State shape
//!
//! ```json
//! {
//!   "user": {"id": "u-17", "name": "Alice", "color": "#30bced"},
//!   "cursors": {"description": {"anchor": <relpos>, "head": <relpos>}},
//!   "typing": "description",
//!   "viewing": true,
//!   "lastActive": 1700000000000
//! }
//! ```
//!
//! Reading is lenient ([`PresenceState::from_json`]): any JSON value is a state. Missing or
//! ill-typed members take defaults: no user id/name/colour, no cursors, not typing,
//! `viewing: true` (a connected stock client is looking at the document), no `lastActive`. A
//! numeric `user.id` is read as its decimal text. Cursors whose positions cannot be read are
//! dropped one by one. A stock client's single `cursor` or `selection` member
//! (`{anchor, head}`, as y-codemirror and y-monaco publish it) becomes the cursor of the field
//! named by its anchor's `tname`, unless `cursors` already has one for that field.
//!
//! # Relative positions
//!
//! Cursor ends are yrs [`StickyIndex`]es encoded as Yjs's `Y.relativePositionToJSON` does, so
//! `Y.createRelativePositionFromJSON` reads them unchanged:
//!
//! ```json
//! {"tname": "description", "item": {"client": 17, "clock": 4}, "assoc": 0}
//! ```
//!
//! * `item`: the id of the character the position sticks to (yrs `IndexScope::Relative`).
//!   `tname` names the field it lives in, as Yjs writes it for root types.
//! * `tname` without `item`: the start (`assoc < 0`) or end (`assoc >= 0`) of a root text
//!   (`IndexScope::Root`), used for an empty field or the very end of a field.
//! * `type: {client, clock}` without `item`: the same for a nested type (`IndexScope::Nested`).
//! * `assoc`: `0` sticks to the character after the position (yrs `Assoc::After`), `-1` to the
//!   one before (`Assoc::Before`); missing means `0`, as in Yjs.
//!
//! yrs's own serde for `StickyIndex` writes only one of `item`/`tname`/`type` (no `tname` next
//! to `item`), fails on any other member, and hands client ids above 2^53 to `ClientID::new`,
//! which asserts against them in debug builds. So this module reads and writes the Yjs form
//! itself ([`relative_position_to_json`], [`relative_position_from_json`]); reading checks that
//! client ids fit in 53 bits and clocks in 32 bits, and ignores a position that does not.
//!
//! # Time
//!
//! Nothing here reads a clock: every operation that stamps or judges time takes `now_ms`, and
//! the awareness timestamps (`Awareness::meta`) are the `now_ms` of the call that set them. All
//! ages are measured on this replica's clock, never by comparing with another machine's clock:
//!
//! * A remote state not renewed for [`PRESENCE_TIMEOUT_MS`] is no longer listed by the views
//!   and is removed by [`Presence::expire`]. The local state never expires.
//! * A typing flag counts for [`TYPING_TIMEOUT_MS`] after this replica first saw the current
//!   pair of (`lastActive`, `typing`) values of that client. Clients publish a new `lastActive`
//!   with each keystroke, so the flag stays on while they type and fades out when they stop or
//!   vanish without clearing it. The client-written `lastActive` is not compared with `now_ms`
//!   directly, so a client whose clock is off by minutes still shows as typing.
//! * Clients renew their state every [`RENEW_INTERVAL_MS`] ([`Presence::renewal_due`],
//!   [`Presence::renew`]).
//!
//! Text offsets are UTF-16 code units: a [`Presence`] requires a `Doc` created with
//! `OffsetKind::Utf16`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use yrs::sync::awareness::{AwarenessUpdateEntry, AwarenessUpdateSummary};
use yrs::sync::{Awareness, AwarenessUpdate, Clock, Timestamp};
use yrs::updates::encoder::Encode;
use yrs::{
    Assoc, BranchID, ClientID, Doc, IndexScope, IndexedSequence, OffsetKind, ReadTxn, StickyIndex,
    Text, Transact, ID,
};

/// A remote state not renewed for this long (milliseconds) is expired, as in y-protocols.
pub const PRESENCE_TIMEOUT_MS: u64 = 30_000;

/// A typing flag counts for this long (milliseconds) after this replica saw the client's
/// activity (`lastActive`/`typing`) change.
pub const TYPING_TIMEOUT_MS: u64 = 5_000;

/// Clients renew their state this often (milliseconds), half of [`PRESENCE_TIMEOUT_MS`].
pub const RENEW_INTERVAL_MS: u64 = 15_000;

/// The largest client id a JavaScript number holds exactly (2^53 - 1).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// The JSON text y-protocols uses for a removed state.
const NULL_STATE: &str = "null";

/// Errors of the presence layer.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The document counts text offsets in another unit than UTF-16 code units.
    #[error("presence needs a document whose text offsets are UTF-16 code units")]
    NotUtf16,
    /// The operation changes the local state, but no local state has been set.
    #[error("no local presence state has been set")]
    NoLocalState,
    /// A cursor offset lies past the end of the field's text.
    #[error("offset {offset} is past the end of field `{field}` ({len} UTF-16 code units)")]
    OffsetOutOfRange {
        /// The field the cursor was set in.
        field: String,
        /// The offending offset.
        offset: u32,
        /// The field's length in UTF-16 code units.
        len: u32,
    },
    /// A remote awareness entry carries a state that is not valid JSON.
    #[error("awareness state of client {client} is not valid JSON")]
    InvalidStateJson {
        /// The client id of the entry.
        client: u64,
        /// The JSON parser's complaint.
        source: serde_json::Error,
    },
    /// A read-write transaction is open on the document, so positions cannot be read now.
    #[error("the document is locked by an open read-write transaction")]
    DocumentBusy,
    /// The underlying yrs awareness refused the operation (for example an unknown client id).
    #[error(transparent)]
    Awareness(#[from] yrs::sync::awareness::Error),
}

/// Who a presence state belongs to. Every member is optional because stock clients send any
/// subset of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// The application's user id; one user in several tabs has one id and several client ids.
    pub id: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Display colour, as CSS text (`"#30bced"`).
    pub color: Option<String>,
}

impl User {
    /// A user with all three members set.
    pub fn new(id: impl Into<String>, name: impl Into<String>, color: impl Into<String>) -> Self {
        User {
            id: Some(id.into()),
            name: Some(name.into()),
            color: Some(color.into()),
        }
    }
}

/// A selection in one text field as two relative positions; `anchor == head` is a caret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRange {
    /// Where the selection started.
    pub anchor: StickyIndex,
    /// Where the selection ends (the caret).
    pub head: StickyIndex,
}

/// One client's presence, as published in its awareness state (see the module docs for the
/// JSON shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceState {
    /// Who this client is.
    pub user: User,
    /// The client's selection per text field.
    pub cursors: BTreeMap<String, CursorRange>,
    /// The field the client is typing in, if any.
    pub typing: Option<String>,
    /// Whether the client has the document on screen.
    pub viewing: bool,
    /// The client's last activity, in milliseconds on the client's own clock.
    pub last_active: Option<u64>,
}

impl PresenceState {
    /// A state for `user`, viewing, not typing, without cursors, active at `now_ms`.
    pub fn new(user: User, now_ms: u64) -> Self {
        PresenceState {
            user,
            cursors: BTreeMap::new(),
            typing: None,
            viewing: true,
            last_active: Some(now_ms),
        }
    }

    /// The awareness JSON of this state. Absent user members and an absent `lastActive` are
    /// left out rather than written as `null`, so stock clients apply their own defaults.
    pub fn to_json(&self) -> Value {
        let mut user = Map::new();
        for (key, value) in [
            ("id", &self.user.id),
            ("name", &self.user.name),
            ("color", &self.user.color),
        ] {
            if let Some(value) = value {
                user.insert(key.to_owned(), Value::String(value.clone()));
            }
        }
        let mut cursors = Map::new();
        for (field, range) in &self.cursors {
            let mut cursor = Map::new();
            cursor.insert(
                "anchor".to_owned(),
                relative_position_to_json(&range.anchor, field),
            );
            cursor.insert(
                "head".to_owned(),
                relative_position_to_json(&range.head, field),
            );
            cursors.insert(field.clone(), Value::Object(cursor));
        }
        let mut state = Map::new();
        state.insert("user".to_owned(), Value::Object(user));
        state.insert("cursors".to_owned(), Value::Object(cursors));
        state.insert(
            "typing".to_owned(),
            self.typing.clone().map_or(Value::Null, Value::String),
        );
        state.insert("viewing".to_owned(), Value::Bool(self.viewing));
        if let Some(at) = self.last_active {
            state.insert("lastActive".to_owned(), Value::from(at));
        }
        Value::Object(state)
    }

    /// Reads any client's awareness state leniently (see the module docs); never fails.
    pub fn from_json(value: &Value) -> Self {
        let Some(state) = value.as_object() else {
            return PresenceState::default_for_foreign_state();
        };
        let user = match state.get("user").and_then(Value::as_object) {
            Some(user) => User {
                id: user.get("id").and_then(|id| match id {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }),
                name: string_member(user, "name"),
                color: string_member(user, "color"),
            },
            None => User::default(),
        };
        let mut cursors = BTreeMap::new();
        if let Some(map) = state.get("cursors").and_then(Value::as_object) {
            for (field, cursor) in map {
                if let Some(range) = cursor_from_json(cursor) {
                    cursors.insert(field.clone(), range);
                }
            }
        }
        for key in ["cursor", "selection"] {
            let Some(cursor) = state.get(key) else {
                continue;
            };
            let field = cursor
                .get("anchor")
                .and_then(|anchor| anchor.get("tname"))
                .and_then(Value::as_str);
            if let (Some(field), Some(range)) = (field, cursor_from_json(cursor)) {
                cursors.entry(field.to_owned()).or_insert(range);
            }
        }
        let last_active = state.get("lastActive").and_then(|at| {
            at.as_u64().or_else(|| {
                at.as_f64()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .map(|ms| ms as u64)
            })
        });
        PresenceState {
            user,
            cursors,
            typing: string_member(state, "typing").filter(|field| !field.is_empty()),
            viewing: state
                .get("viewing")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            last_active,
        }
    }

    /// Parses a state from its JSON text; fails only when the text is not JSON.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        let value: Value = serde_json::from_str(json)?;
        Ok(PresenceState::from_json(&value))
    }

    fn default_for_foreign_state() -> Self {
        PresenceState {
            user: User::default(),
            cursors: BTreeMap::new(),
            typing: None,
            viewing: true,
            last_active: None,
        }
    }
}

impl Serialize for PresenceState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PresenceState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(PresenceState::from_json(&value))
    }
}

fn string_member(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn cursor_from_json(cursor: &Value) -> Option<CursorRange> {
    let anchor = relative_position_from_json(cursor.get("anchor")?)?;
    let head = match cursor.get("head") {
        Some(head) => relative_position_from_json(head)?,
        None => anchor.clone(),
    };
    Some(CursorRange { anchor, head })
}

/// Encodes a relative position in text field `field` as Yjs's `relativePositionToJSON` does
/// (see the module docs). `field` becomes the `tname` of positions relative to a character.
pub fn relative_position_to_json(index: &StickyIndex, field: &str) -> Value {
    let mut json = Map::new();
    match index.scope() {
        IndexScope::Relative(id) => {
            json.insert("tname".to_owned(), Value::String(field.to_owned()));
            json.insert("item".to_owned(), id_to_json(id));
        }
        IndexScope::Root(name) => {
            json.insert("tname".to_owned(), Value::String(name.to_string()));
        }
        IndexScope::Nested(id) => {
            json.insert("type".to_owned(), id_to_json(id));
        }
    }
    let assoc = match index.assoc {
        Assoc::After => 0,
        Assoc::Before => -1,
    };
    json.insert("assoc".to_owned(), Value::from(assoc));
    Value::Object(json)
}

/// Decodes a relative position from Yjs's JSON form (see the module docs). Returns `None` for
/// anything that is not a readable position, including client ids above 2^53 - 1 and clocks
/// above 2^32 - 1.
pub fn relative_position_from_json(value: &Value) -> Option<StickyIndex> {
    let json = value.as_object()?;
    let present = |key: &str| json.get(key).filter(|v| !v.is_null());
    let scope = if let Some(item) = present("item") {
        IndexScope::Relative(id_from_json(item)?)
    } else if let Some(name) = present("tname") {
        IndexScope::Root(name.as_str()?.into())
    } else if let Some(ty) = present("type") {
        IndexScope::Nested(id_from_json(ty)?)
    } else {
        return None;
    };
    let assoc = match json.get("assoc").and_then(Value::as_f64) {
        Some(assoc) if assoc < 0.0 => Assoc::Before,
        _ => Assoc::After,
    };
    Some(StickyIndex::new(scope, assoc))
}

fn id_to_json(id: &ID) -> Value {
    let mut json = Map::new();
    json.insert("client".to_owned(), Value::from(id.client.get()));
    json.insert("clock".to_owned(), Value::from(id.clock));
    Value::Object(json)
}

fn id_from_json(value: &Value) -> Option<ID> {
    let client = value
        .get("client")?
        .as_u64()
        .filter(|client| *client <= MAX_CLIENT_ID)?;
    let clock = u32::try_from(value.get("clock")?.as_u64()?).ok()?;
    Some(ID::new(ClientID::new(client), clock))
}

/// A viewer of the document: one user, however many tabs (client ids) they have open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The user's id; `None` for a client that sends none (it is then its own viewer).
    pub user_id: Option<String>,
    /// Display name, from the user's most recently active client.
    pub name: Option<String>,
    /// Display colour, from the user's most recently active client.
    pub color: Option<String>,
    /// The user's client ids that are viewing, ascending.
    pub clients: Vec<ClientID>,
    /// When this replica last saw activity from any of them (`now_ms` units of this replica).
    pub last_active_ms: u64,
}

/// A user typing in a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypingUser {
    /// The user's id; `None` for a client that sends none.
    pub user_id: Option<String>,
    /// Display name, from the user's most recently active typing client.
    pub name: Option<String>,
    /// Display colour, from the user's most recently active typing client.
    pub color: Option<String>,
    /// The field being typed in.
    pub field: String,
    /// The user's client ids typing in that field, ascending.
    pub clients: Vec<ClientID>,
}

/// A remote client's selection in one field, mapped to the field's current text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCursor {
    /// The client the cursor belongs to.
    pub client_id: ClientID,
    /// Who the client is.
    pub user: User,
    /// Selection start, in UTF-16 code units.
    pub anchor: u32,
    /// Selection end (the caret), in UTF-16 code units.
    pub head: u32,
}

/// The awareness clock: reads the `now_ms` of the current call, set by [`Presence`].
#[derive(Debug, Clone, Default)]
struct CallClock(Arc<AtomicU64>);

impl Clock for CallClock {
    fn now(&self) -> Timestamp {
        self.0.load(Ordering::Relaxed)
    }
}

/// A live state as this replica understands it.
#[derive(Debug, Clone)]
struct Tracked {
    state: PresenceState,
    /// When this replica first saw the state's current (`lastActive`, `typing`) pair.
    activity_seen_ms: u64,
}

/// The presence of everyone on one document replica, over a yrs [`Awareness`].
///
/// The local client is the document's client id. On a server replica it usually has no state;
/// in a browser it is the user's own tab. All changes go through this type, which keeps a parsed
/// copy of every live state so the views never re-parse JSON.
#[derive(Debug)]
pub struct Presence {
    awareness: Awareness,
    now: Arc<AtomicU64>,
    local: Option<PresenceState>,
    /// Boxed: a slot of this table is then a pointer, not a whole parsed state (a table
    /// keeps about one empty slot per full one).
    tracked: HashMap<ClientID, Box<Tracked>>,
}

impl Presence {
    /// Presence for the replica of `doc` (a clone of the document's `Doc`, which must count
    /// offsets in UTF-16 code units).
    pub fn new(doc: Doc) -> Result<Self, PresenceError> {
        if doc.offset_kind() != OffsetKind::Utf16 {
            return Err(PresenceError::NotUtf16);
        }
        let clock = CallClock::default();
        let now = clock.0.clone();
        Ok(Presence {
            awareness: Awareness::with_clock(doc, clock),
            now,
            local: None,
            tracked: HashMap::new(),
        })
    }

    /// The local client id (the document's).
    pub fn client_id(&self) -> ClientID {
        self.awareness.client_id()
    }

    /// The document the cursors refer to.
    pub fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    /// The underlying awareness, read-only: change it through this type only.
    pub fn awareness(&self) -> &Awareness {
        &self.awareness
    }

    /// The local state, if one has been set.
    pub fn local_state(&self) -> Option<&PresenceState> {
        self.local.as_ref()
    }

    /// Sets the whole local state as given (its `last_active` included).
    pub fn set_state(&mut self, state: PresenceState, now_ms: u64) {
        self.publish(state, now_ms);
    }

    /// Sets the local selection in `field` from absolute UTF-16 offsets, stored as relative
    /// positions, and marks activity. Do not call it while holding a read-write transaction on
    /// the document.
    pub fn set_cursor(
        &mut self,
        field: &str,
        anchor: u32,
        head: u32,
        now_ms: u64,
    ) -> Result<(), PresenceError> {
        if self.local.is_none() {
            return Err(PresenceError::NoLocalState);
        }
        let range = {
            let txn = self
                .doc()
                .try_transact()
                .map_err(|_| PresenceError::DocumentBusy)?;
            CursorRange {
                anchor: sticky_index_at(&txn, field, anchor)?,
                head: sticky_index_at(&txn, field, head)?,
            }
        };
        self.change_local(now_ms, |state| {
            state.cursors.insert(field.to_owned(), range);
        })
    }

    /// Removes the local selection in `field` (the field lost focus) and marks activity.
    pub fn clear_cursor(&mut self, field: &str, now_ms: u64) -> Result<(), PresenceError> {
        self.change_local(now_ms, |state| {
            state.cursors.remove(field);
        })
    }

    /// Sets the field the local user is typing in (`None`: not typing) and marks activity.
    pub fn set_typing(&mut self, field: Option<&str>, now_ms: u64) -> Result<(), PresenceError> {
        self.change_local(now_ms, |state| state.typing = field.map(str::to_owned))
    }

    /// Sets whether the local user has the document on screen and marks activity.
    pub fn set_viewing(&mut self, viewing: bool, now_ms: u64) -> Result<(), PresenceError> {
        self.change_local(now_ms, |state| state.viewing = viewing)
    }

    /// Marks local activity: `lastActive` becomes `now_ms` and the state is republished.
    pub fn touch(&mut self, now_ms: u64) -> Result<(), PresenceError> {
        self.change_local(now_ms, |_| ())
    }

    /// Whether the local state is due for renewal ([`RENEW_INTERVAL_MS`] since it was last
    /// published). False when there is no local state.
    pub fn renewal_due(&self, now_ms: u64) -> bool {
        self.local.is_some()
            && self
                .awareness
                .meta(self.client_id())
                .is_some_and(|(_, at)| now_ms.saturating_sub(at) >= RENEW_INTERVAL_MS)
    }

    /// Republishes the local state unchanged (new awareness clock, same `lastActive`), as
    /// y-protocols clients do to stay alive. Send [`Presence::local_update`] afterwards.
    pub fn renew(&mut self, now_ms: u64) -> Result<(), PresenceError> {
        let state = self.local.clone().ok_or(PresenceError::NoLocalState)?;
        self.publish(state, now_ms);
        Ok(())
    }

    /// Removes the local state (the user leaves) and returns the update announcing it.
    pub fn leave(&mut self, now_ms: u64) -> Result<AwarenessUpdate, PresenceError> {
        if self.local.take().is_none() {
            return Err(PresenceError::NoLocalState);
        }
        let me = self.client_id();
        self.set_now(now_ms);
        self.awareness.clean_local_state();
        self.tracked.remove(&me);
        Ok(self.awareness.update_with_clients([me])?)
    }

    /// The local state as an awareness update, to send to peers.
    pub fn local_update(&self) -> Result<AwarenessUpdate, PresenceError> {
        if self.local.is_none() {
            return Err(PresenceError::NoLocalState);
        }
        Ok(self.awareness.update_with_clients([self.client_id()])?)
    }

    /// The local state as an encoded (lib0 v1) awareness update: the payload of a y-websocket
    /// awareness message.
    pub fn encode_local_update(&self) -> Result<Vec<u8>, PresenceError> {
        Ok(self.local_update()?.encode_v1())
    }

    /// Every present state (removed ones left out), e.g. for a connection that just joined.
    pub fn full_update(&self) -> Result<AwarenessUpdate, PresenceError> {
        Ok(self.awareness.update()?)
    }

    /// The current entries of `clients` (removed ones as `null`), e.g. to broadcast what
    /// [`Presence::expire`] removed. Fails if a client id was never seen.
    pub fn update_for(&self, clients: &[ClientID]) -> Result<AwarenessUpdate, PresenceError> {
        Ok(self
            .awareness
            .update_with_clients(clients.iter().copied())?)
    }

    /// Applies a remote awareness update at `now_ms` and returns what changed (`None`: nothing).
    ///
    /// Every entry's JSON is checked first: if one is not JSON the whole update is refused and
    /// nothing changes. Entries for the local client id are ignored: a peer never changes this
    /// replica's own state. Entries apply under the y-protocols rule (newer clock, or a `null`
    /// at the same clock).
    pub fn apply_update(
        &mut self,
        update: AwarenessUpdate,
        now_ms: u64,
    ) -> Result<Option<AwarenessUpdateSummary>, PresenceError> {
        let me = self.client_id();
        let mut entries = HashMap::with_capacity(update.clients.len());
        let mut parsed = HashMap::with_capacity(update.clients.len());
        for (client, entry) in update.clients {
            if client == me {
                continue;
            }
            let value: Value = serde_json::from_str(&entry.json).map_err(|source| {
                PresenceError::InvalidStateJson {
                    client: client.get(),
                    source,
                }
            })?;
            let entry = if value.is_null() {
                AwarenessUpdateEntry {
                    clock: entry.clock,
                    json: Arc::from(NULL_STATE),
                }
            } else {
                parsed.insert(client, PresenceState::from_json(&value));
                entry
            };
            entries.insert(client, entry);
        }
        self.set_now(now_ms);
        let summary = self
            .awareness
            .apply_update_summary(AwarenessUpdate { clients: entries })?;
        if let Some(summary) = &summary {
            for client in summary.added.iter().chain(&summary.updated) {
                if let Some(state) = parsed.remove(client) {
                    self.track(*client, state, now_ms);
                }
            }
            for client in &summary.removed {
                self.tracked.remove(client);
            }
        }
        Ok(summary)
    }

    /// Removes the states of `clients` (their connection closed) and returns the update that
    /// announces it: each entry is `null` with the client's clock + 1, which every y-protocols
    /// version accepts. Clients without a present state, and the local client, are skipped.
    pub fn remove_clients(
        &mut self,
        clients: &[ClientID],
        now_ms: u64,
    ) -> Result<AwarenessUpdate, PresenceError> {
        let me = self.client_id();
        let mut removed = Vec::new();
        self.set_now(now_ms);
        for &client in clients {
            if client != me && self.tracked.remove(&client).is_some() {
                self.awareness.remove_state(client);
                removed.push(client);
            }
        }
        Ok(self.awareness.update_with_clients(removed)?)
    }

    /// Removes every remote state not renewed for [`PRESENCE_TIMEOUT_MS`] at `now_ms` and
    /// returns their client ids, ascending, for the caller to broadcast
    /// ([`Presence::update_for`]). The local state is never removed.
    ///
    /// The removal keeps each state's clock (y-protocols and yrs accept a `null` at the same
    /// clock), so a client that comes back, for example after its laptop slept, is accepted
    /// again with its very next renewal.
    pub fn expire(&mut self, now_ms: u64) -> Vec<ClientID> {
        let me = self.client_id();
        let stale: Vec<ClientID> = self
            .tracked
            .keys()
            .filter(|client| **client != me)
            .filter(|client| {
                self.awareness
                    .meta(**client)
                    .is_some_and(|(_, at)| now_ms.saturating_sub(at) >= PRESENCE_TIMEOUT_MS)
            })
            .copied()
            .collect();
        self.expire_clients(&stale, now_ms)
    }

    /// Removes the present states of `clients` as [`Presence::expire`] does, keeping each
    /// state's clock, whatever their age: for states this replica stops trusting without a
    /// word from their client (the peer that relayed them is gone), so that the client's very
    /// next renewal is accepted again if it is in fact alive. Returns the removed client ids,
    /// ascending, for the caller to broadcast ([`Presence::update_for`]); clients without a
    /// present state, and the local client, are skipped.
    pub fn expire_clients(&mut self, clients: &[ClientID], now_ms: u64) -> Vec<ClientID> {
        let me = self.client_id();
        let mut expired: Vec<(ClientID, u32)> = clients
            .iter()
            .filter(|client| **client != me && self.tracked.contains_key(client))
            .filter_map(|client| Some((*client, self.awareness.meta(*client)?.0)))
            .collect();
        expired.sort_unstable();
        expired.dedup();
        let clients: HashMap<ClientID, AwarenessUpdateEntry> = expired
            .iter()
            .map(|(client, clock)| {
                let entry = AwarenessUpdateEntry {
                    clock: *clock,
                    json: Arc::from(NULL_STATE),
                };
                (*client, entry)
            })
            .collect();
        self.set_now(now_ms);
        // yrs's apply returns no error (its `Result` is for API symmetry), and these entries
        // are well-formed removals of known clients, so there is nothing to report.
        let _ = self
            .awareness
            .apply_update_summary(AwarenessUpdate { clients });
        expired
            .into_iter()
            .map(|(client, _)| {
                self.tracked.remove(&client);
                client
            })
            .collect()
    }

    /// The present state of `client`, as parsed when it arrived.
    pub fn state(&self, client: ClientID) -> Option<&PresenceState> {
        self.tracked.get(&client).map(|tracked| &tracked.state)
    }

    /// Every present state, local included, by ascending client id.
    pub fn states(&self) -> Vec<(ClientID, &PresenceState)> {
        let mut states: Vec<_> = self
            .tracked
            .iter()
            .map(|(client, tracked)| (*client, &tracked.state))
            .collect();
        states.sort_unstable_by_key(|(client, _)| *client);
        states
    }

    /// The users viewing the document at `now_ms` (local user included), one entry per user id
    /// however many clients they have; clients without a user id are one viewer each. Ordered
    /// by user id, then anonymous clients by client id.
    pub fn viewers(&self, now_ms: u64) -> Vec<Viewer> {
        let clients = self.client_views(now_ms);
        let groups = group(clients.iter().filter(|c| c.viewing), |c| {
            Some(c.key.clone())
        });
        groups
            .into_values()
            .map(|g| Viewer {
                user_id: g.user.id.clone(),
                name: g.user.name.clone(),
                color: g.user.color.clone(),
                clients: g.clients,
                last_active_ms: g.seen,
            })
            .collect()
    }

    /// Who is typing in which field at `now_ms` (local user included): one entry per user and
    /// field, for flags seen to change within [`TYPING_TIMEOUT_MS`]. Ordered by user, then field.
    pub fn typing(&self, now_ms: u64) -> Vec<TypingUser> {
        let clients = self.client_views(now_ms);
        let groups = group(clients.iter(), |c| {
            Some((c.key.clone(), c.typing?.to_owned()))
        });
        groups
            .into_iter()
            .map(|((_, field), g)| TypingUser {
                user_id: g.user.id.clone(),
                name: g.user.name.clone(),
                color: g.user.color.clone(),
                field,
                clients: g.clients,
            })
            .collect()
    }

    /// Every user present at `now_ms` (local user included), keyed by user id, or by
    /// `client:<client id>` for a client whose state names no user; the rules are those of
    /// [`Presence::viewers`] and [`Presence::typing`] (one code decides both). A user with
    /// several clients (tabs) is viewing if any of them is, and typing in the field of the most
    /// recently active of those typing; `user` holds the id, name and colour (`null` when
    /// absent) of their most recently active client.
    pub fn users(&self, now_ms: u64) -> BTreeMap<String, UserPresence> {
        let clients = self.client_views(now_ms);
        let everyone = group(clients.iter(), |c| Some(c.key.clone()));
        let typists = group(clients.iter().filter(|c| c.typing.is_some()), |c| {
            Some(c.key.clone())
        });
        everyone
            .into_iter()
            .map(|(key, g)| {
                let typing = typists.get(&key).and_then(|t| t.typing).map(str::to_owned);
                let view = UserPresence {
                    user: serde_json::json!({
                        "id": g.user.id,
                        "name": g.user.name,
                        "color": g.user.color,
                    }),
                    typing,
                    viewing: g.viewing,
                };
                (key.to_string(), view)
            })
            .collect()
    }

    /// Every live client at `now_ms` as the views see it, by ascending client id.
    fn client_views(&self, now_ms: u64) -> Vec<ClientView<'_>> {
        let mut clients: Vec<ClientView<'_>> = self
            .live(now_ms)
            .map(|(client, tracked)| {
                let state = &tracked.state;
                let fresh = now_ms.saturating_sub(tracked.activity_seen_ms) <= TYPING_TIMEOUT_MS;
                ClientView {
                    client,
                    key: UserKey::of(client, &state.user),
                    user: &state.user,
                    seen: tracked.activity_seen_ms,
                    viewing: state.viewing,
                    typing: state.typing.as_deref().filter(|_| fresh),
                }
            })
            .collect();
        clients.sort_unstable_by_key(|c| c.client);
        clients
    }

    /// Every remote client's selection in `field`, mapped to UTF-16 offsets in the field's
    /// current text, by ascending client id. A selection that refers to text this replica has
    /// not received yet, or to another field, is left out. Do not call it while holding a
    /// read-write transaction on the document.
    pub fn cursors(&self, field: &str) -> Result<Vec<RemoteCursor>, PresenceError> {
        let me = self.client_id();
        let txn = self
            .doc()
            .try_transact()
            .map_err(|_| PresenceError::DocumentBusy)?;
        let mut cursors = Vec::new();
        for (client, state) in self.states() {
            if client == me {
                continue;
            }
            let Some(range) = state.cursors.get(field) else {
                continue;
            };
            if let (Some(anchor), Some(head)) = (
                resolve(&txn, field, &range.anchor),
                resolve(&txn, field, &range.head),
            ) {
                cursors.push(RemoteCursor {
                    client_id: client,
                    user: state.user.clone(),
                    anchor,
                    head,
                });
            }
        }
        Ok(cursors)
    }

    /// The local selection in `field` as UTF-16 offsets `(anchor, head)` in its current text.
    pub fn local_cursor(&self, field: &str) -> Result<Option<(u32, u32)>, PresenceError> {
        let Some(range) = self
            .local
            .as_ref()
            .and_then(|state| state.cursors.get(field))
        else {
            return Ok(None);
        };
        let txn = self
            .doc()
            .try_transact()
            .map_err(|_| PresenceError::DocumentBusy)?;
        Ok(resolve(&txn, field, &range.anchor).zip(resolve(&txn, field, &range.head)))
    }

    fn set_now(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::Relaxed);
    }

    fn change_local(
        &mut self,
        now_ms: u64,
        change: impl FnOnce(&mut PresenceState),
    ) -> Result<(), PresenceError> {
        let mut state = self.local.clone().ok_or(PresenceError::NoLocalState)?;
        change(&mut state);
        state.last_active = Some(now_ms);
        self.publish(state, now_ms);
        Ok(())
    }

    fn publish(&mut self, state: PresenceState, now_ms: u64) {
        self.set_now(now_ms);
        // Writing a JSON value cannot fail. `to_string` shares its writer with the register
        // writes; `Value`'s `Display` would be a second copy of it in the browser module.
        let json = serde_json::to_string(&state.to_json()).unwrap_or_default();
        self.awareness.set_local_state_raw(json);
        self.track(self.client_id(), state.clone(), now_ms);
        self.local = Some(state);
    }

    fn track(&mut self, client: ClientID, state: PresenceState, now_ms: u64) {
        let activity_seen_ms = match self.tracked.get(&client) {
            Some(old)
                if old.state.last_active == state.last_active
                    && old.state.typing == state.typing =>
            {
                old.activity_seen_ms
            }
            _ => now_ms,
        };
        self.tracked.insert(
            client,
            Box::new(Tracked {
                state,
                activity_seen_ms,
            }),
        );
    }

    /// Present states renewed within [`PRESENCE_TIMEOUT_MS`] at `now_ms`, plus the local one.
    fn live(&self, now_ms: u64) -> impl Iterator<Item = (ClientID, &Tracked)> + '_ {
        let me = self.client_id();
        self.tracked.iter().filter_map(move |(client, tracked)| {
            let fresh = *client == me
                || self
                    .awareness
                    .meta(*client)
                    .is_some_and(|(_, at)| now_ms.saturating_sub(at) < PRESENCE_TIMEOUT_MS);
            fresh.then_some((*client, &**tracked))
        })
    }
}

/// How viewers and typists are told apart: by user id, or by client id when there is none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum UserKey {
    User(String),
    Client(ClientID),
}

impl UserKey {
    fn of(client: ClientID, user: &User) -> Self {
        match &user.id {
            Some(id) if !id.is_empty() => UserKey::User(id.clone()),
            _ => UserKey::Client(client),
        }
    }
}

impl std::fmt::Display for UserKey {
    /// The user id, or `client:<client id>` for a client that names no user.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserKey::User(id) => f.write_str(id),
            UserKey::Client(client) => write!(f, "client:{}", client.get()),
        }
    }
}

/// One live client as every view sees it: the rules [`Presence::viewers`],
/// [`Presence::typing`] and [`Presence::users`] share.
struct ClientView<'a> {
    client: ClientID,
    key: UserKey,
    user: &'a User,
    /// When this replica last saw the client's activity change.
    seen: u64,
    viewing: bool,
    /// The field it is typing in, if the flag changed within [`TYPING_TIMEOUT_MS`].
    typing: Option<&'a str>,
}

/// Clients folded into one entry of a view.
struct Group<'a> {
    /// The most recently active client's user (the lowest client id among equals).
    user: &'a User,
    seen: u64,
    /// That client's typing field.
    typing: Option<&'a str>,
    /// Whether any of the clients is viewing.
    viewing: bool,
    /// Ascending.
    clients: Vec<ClientID>,
}

/// Folds `clients` (ascending client ids) into groups by `key`; `None` leaves a client out.
fn group<'a, 'c, K: Ord>(
    clients: impl Iterator<Item = &'c ClientView<'a>>,
    key: impl Fn(&ClientView<'a>) -> Option<K>,
) -> BTreeMap<K, Group<'a>>
where
    'a: 'c,
{
    let mut groups: BTreeMap<K, Group<'a>> = BTreeMap::new();
    for c in clients {
        let Some(k) = key(c) else {
            continue;
        };
        let g = groups.entry(k).or_insert_with(|| Group {
            user: c.user,
            seen: c.seen,
            typing: c.typing,
            viewing: false,
            clients: Vec::new(),
        });
        if c.seen > g.seen {
            g.user = c.user;
            g.seen = c.seen;
            g.typing = c.typing;
        }
        g.viewing |= c.viewing;
        g.clients.push(c.client);
    }
    groups
}

/// One user's presence, as event-stream subscribers see it ([`Presence::users`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserPresence {
    /// `{"id", "name", "color"}` of the user's most recently active client (`null` members when
    /// the state has none).
    pub user: Value,
    /// The field the user is typing in.
    pub typing: Option<String>,
    /// Whether the user has the document on screen.
    pub viewing: bool,
}

/// What happened to a user's presence between two [`Presence::users`] views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceAction {
    /// The user appeared.
    Join,
    /// The user is gone.
    Leave,
    /// The user's presence changed.
    Update,
}

impl PresenceAction {
    /// `"join"`, `"leave"` or `"update"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceAction::Join => "join",
            PresenceAction::Leave => "leave",
            PresenceAction::Update => "update",
        }
    }
}

/// One change of [`presence_changes`]; serializes as `{"action": "join", "user": …,
/// "typing": …, "viewing": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceChange {
    /// What happened.
    pub action: PresenceAction,
    /// The user's presence now (the last known one for a leave).
    #[serde(flatten)]
    pub view: UserPresence,
}

/// The changes from `old` to `new` (two [`Presence::users`] views): joins and updates in key
/// order, then leaves in key order. Empty when nothing changed.
pub fn presence_changes(
    old: &BTreeMap<String, UserPresence>,
    new: &BTreeMap<String, UserPresence>,
) -> Vec<PresenceChange> {
    let mut changes = Vec::new();
    for (key, view) in new {
        let action = match old.get(key) {
            None => PresenceAction::Join,
            Some(before) if before != view => PresenceAction::Update,
            Some(_) => continue,
        };
        changes.push(PresenceChange {
            action,
            view: view.clone(),
        });
    }
    for (key, view) in old {
        if !new.contains_key(key) {
            changes.push(PresenceChange {
                action: PresenceAction::Leave,
                view: view.clone(),
            });
        }
    }
    changes
}

/// A relative position for UTF-16 `offset` in root text `field`, sticking to the character
/// after it (as Yjs's `createRelativePositionFromTypeIndex` with `assoc = 0`).
fn sticky_index_at<T: ReadTxn>(
    txn: &T,
    field: &str,
    offset: u32,
) -> Result<StickyIndex, PresenceError> {
    let out_of_range = |len| PresenceError::OffsetOutOfRange {
        field: field.to_owned(),
        offset,
        len,
    };
    let Some(text) = txn.get_text(field) else {
        // The field was never written here: it is empty, and only its start exists.
        return if offset == 0 {
            Ok(StickyIndex::new(
                IndexScope::Root(field.into()),
                Assoc::After,
            ))
        } else {
            Err(out_of_range(0))
        };
    };
    let len = text.len(txn);
    if offset > len {
        return Err(out_of_range(len));
    }
    // At the very end there is no character to stick to: Yjs then refers to the end of the
    // type, which yrs's `sticky_index` leaves to the caller.
    Ok(text
        .sticky_index(txn, offset, Assoc::After)
        .unwrap_or_else(|| StickyIndex::new(IndexScope::Root(field.into()), Assoc::After)))
}

/// The UTF-16 offset of `index` in root text `field`, if it points into that field.
fn resolve<T: ReadTxn>(txn: &T, field: &str, index: &StickyIndex) -> Option<u32> {
    match index.get_offset(txn) {
        Some(offset) => match offset.branch.id() {
            BranchID::Root(name) if &*name == field => Some(offset.index),
            _ => None,
        },
        // A root scope of a field this replica never saw: the field is empty here.
        None => match index.scope() {
            IndexScope::Root(name) if &**name == field => Some(0),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Options, StateVector, Update};

    const FIELD: &str = "description";

    fn doc(client: u64) -> Doc {
        let mut options = Options::with_client_id(ClientID::new(client));
        options.offset_kind = OffsetKind::Utf16;
        Doc::with_options(options)
    }

    fn presence(client: u64) -> Presence {
        Presence::new(doc(client)).expect("UTF-16 document")
    }

    fn joined(client: u64, user: User, now_ms: u64) -> Presence {
        let mut p = presence(client);
        p.set_state(PresenceState::new(user, now_ms), now_ms);
        p
    }

    fn alice() -> User {
        User::new("alice", "Alice", "#f00")
    }

    fn bob() -> User {
        User::new("bob", "Bob", "#00f")
    }

    fn insert(doc: &Doc, index: u32, chunk: &str) {
        let text = doc.get_or_insert_text(FIELD);
        text.insert(&mut doc.transact_mut(), index, chunk);
    }

    fn text_of(doc: &Doc) -> String {
        doc.get_or_insert_text(FIELD).get_string(&doc.transact())
    }

    /// Sends `from` everything `to` lacks.
    fn sync(from: &Doc, to: &Doc) {
        let sv = to.transact().state_vector().encode_v1();
        let sv = StateVector::decode_v1(&sv).expect("state vector");
        let update = from.transact().encode_state_as_update_v1(&sv);
        let update = Update::decode_v1(&update).expect("update");
        to.transact_mut()
            .apply_update(update)
            .expect("apply update");
    }

    /// Delivers `from`'s local state to `to` at `now_ms`, through the wire encoding.
    fn deliver(from: &Presence, to: &mut Presence, now_ms: u64) {
        let bytes = from.encode_local_update().expect("local update");
        let update = AwarenessUpdate::decode_v1(&bytes).expect("decode");
        to.apply_update(update, now_ms).expect("apply");
    }

    fn raw_update(client: u64, clock: u32, json: &str) -> AwarenessUpdate {
        let mut clients = HashMap::new();
        clients.insert(
            ClientID::new(client),
            AwarenessUpdateEntry {
                clock,
                json: Arc::from(json),
            },
        );
        AwarenessUpdate { clients }
    }

    /// The UTF-16 code unit at `offset` of `text`, as a string.
    fn char_at(text: &str, offset: u32) -> String {
        let units: Vec<u16> = text.encode_utf16().collect();
        let offset = offset as usize;
        let end = if (0xD800..0xDC00).contains(&units[offset]) {
            offset + 2
        } else {
            offset + 1
        };
        String::from_utf16(&units[offset..end]).expect("whole character")
    }

    #[test]
    fn state_json_round_trips_in_our_shape() {
        let mut p = joined(1, alice(), 1_000);
        insert(p.doc(), 0, "hello");
        p.set_cursor(FIELD, 1, 3, 2_000).unwrap();
        p.set_cursor("empty", 0, 0, 2_000).unwrap();
        p.set_typing(Some(FIELD), 2_500).unwrap();
        let state = p.local_state().unwrap().clone();

        let json = state.to_json();
        assert_eq!(
            json,
            json!({
                "user": {"id": "alice", "name": "Alice", "color": "#f00"},
                "cursors": {
                    "description": {
                        "anchor": {"tname": "description", "item": {"client": 1, "clock": 1}, "assoc": 0},
                        "head": {"tname": "description", "item": {"client": 1, "clock": 3}, "assoc": 0}
                    },
                    "empty": {
                        "anchor": {"tname": "empty", "assoc": 0},
                        "head": {"tname": "empty", "assoc": 0}
                    }
                },
                "typing": "description",
                "viewing": true,
                "lastActive": 2_500
            })
        );
        assert_eq!(PresenceState::from_json(&json), state);
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<PresenceState>(&text).unwrap(), state);
        assert_eq!(PresenceState::parse(&text).unwrap(), state);
        // What the awareness carries is exactly this JSON.
        let carried: Value =
            serde_json::from_str(&p.awareness().local_state_raw().unwrap()).unwrap();
        assert_eq!(carried, json);
    }

    #[test]
    fn relative_positions_read_yjs_json() {
        let yjs = json!({"type": null, "tname": "description", "item": {"client": 7, "clock": 2}, "assoc": -1});
        let index = relative_position_from_json(&yjs).unwrap();
        assert_eq!(
            index,
            StickyIndex::new(
                IndexScope::Relative(ID::new(ClientID::new(7), 2)),
                Assoc::Before
            )
        );
        // No assoc means 0, as in Yjs; a nested type is named by its id.
        let nested = json!({"type": {"client": 3, "clock": 9}});
        assert_eq!(
            relative_position_from_json(&nested).unwrap(),
            StickyIndex::new(
                IndexScope::Nested(ID::new(ClientID::new(3), 9)),
                Assoc::After
            )
        );
        assert_eq!(
            relative_position_to_json(&relative_position_from_json(&nested).unwrap(), FIELD),
            json!({"type": {"client": 3, "clock": 9}, "assoc": 0})
        );
        for bad in [
            json!(null),
            json!("x"),
            json!({}),
            json!({"assoc": 0}),
            json!({"item": {"client": 1u64 << 53, "clock": 0}}),
            json!({"item": {"client": 1, "clock": 1u64 << 32}}),
            json!({"item": {"client": -1, "clock": 0}}),
            json!({"item": {"client": 1.5, "clock": 0}}),
            json!({"item": {"clock": 0}}),
            json!({"tname": 5}),
        ] {
            assert_eq!(relative_position_from_json(&bad), None, "{bad}");
        }
    }

    #[test]
    fn stock_client_states_are_read_leniently() {
        // What y-codemirror.next publishes.
        let codemirror = json!({
            "user": {"name": "Anonymous 12", "color": "#30bced", "colorLight": "#30bced33"},
            "cursor": {
                "anchor": {"type": null, "tname": "description", "item": {"client": 7, "clock": 2}, "assoc": 0},
                "head": {"type": null, "tname": "description", "item": {"client": 7, "clock": 4}, "assoc": 0}
            }
        });
        let state = PresenceState::from_json(&codemirror);
        assert_eq!(
            state.user,
            User {
                id: None,
                name: Some("Anonymous 12".into()),
                color: Some("#30bced".into())
            }
        );
        assert!(state.viewing);
        assert_eq!(state.typing, None);
        assert_eq!(state.last_active, None);
        let range = &state.cursors[FIELD];
        assert_eq!(range.anchor.id(), Some(&ID::new(ClientID::new(7), 2)));
        assert_eq!(range.head.id(), Some(&ID::new(ClientID::new(7), 4)));

        // Ill-typed members fall back to defaults one by one.
        let odd = json!({
            "user": {"id": 42, "name": ["x"], "color": null},
            "cursors": {
                "bad": {"anchor": {"item": {"client": 1u64 << 60, "clock": 1}}},
                "caret": {"anchor": {"tname": "caret", "assoc": 0}}
            },
            "typing": 3,
            "viewing": "yes",
            "lastActive": 12.0
        });
        let state = PresenceState::from_json(&odd);
        assert_eq!(state.user.id.as_deref(), Some("42"));
        assert_eq!(state.user.name, None);
        assert_eq!(state.user.color, None);
        assert_eq!(state.cursors.keys().collect::<Vec<_>>(), ["caret"]);
        assert_eq!(state.cursors["caret"].head, state.cursors["caret"].anchor);
        assert_eq!(state.typing, None);
        assert!(state.viewing);
        assert_eq!(state.last_active, Some(12));

        for anything in [json!({}), json!(42), json!("hi"), json!([1, 2])] {
            let state = PresenceState::from_json(&anything);
            assert_eq!(state.user, User::default());
            assert!(state.viewing);
        }
        assert!(PresenceState::parse("{not json").is_err());

        // Such a client counts as a viewer and shows its cursor.
        let mut server = presence(1);
        insert(server.doc(), 0, "hello world");
        let stock = json!({
            "user": {"name": "Anonymous 12", "color": "#30bced"},
            "cursor": {
                "anchor": {"tname": "description", "item": {"client": 1, "clock": 6}, "assoc": 0},
                "head": {"tname": "description", "assoc": 0}
            }
        });
        server
            .apply_update(raw_update(7, 1, &stock.to_string()), 1_000)
            .unwrap();
        let viewers = server.viewers(1_000);
        assert_eq!(viewers.len(), 1);
        assert_eq!(viewers[0].user_id, None);
        assert_eq!(viewers[0].name.as_deref(), Some("Anonymous 12"));
        assert_eq!(viewers[0].color.as_deref(), Some("#30bced"));
        assert_eq!(viewers[0].clients, [ClientID::new(7)]);
        let cursors = server.cursors(FIELD).unwrap();
        assert_eq!(cursors.len(), 1);
        assert_eq!((cursors[0].anchor, cursors[0].head), (6, 11));
    }

    #[test]
    fn two_tabs_of_one_user_are_one_viewer() {
        let mut server = presence(1);
        let tab1 = joined(10, alice(), 1_000);
        let mut tab2 = joined(11, User::new("alice", "Alice B.", "#f00"), 1_000);
        let bob = joined(12, bob(), 1_000);
        deliver(&tab1, &mut server, 1_000);
        deliver(&tab2, &mut server, 1_100);
        deliver(&bob, &mut server, 1_200);
        // Two anonymous stock clients are two viewers.
        server.apply_update(raw_update(20, 1, "{}"), 1_300).unwrap();
        server
            .apply_update(raw_update(21, 1, r#"{"user":{"name":"Guest"}}"#), 1_300)
            .unwrap();

        let viewers = server.viewers(2_000);
        let summary: Vec<_> = viewers
            .iter()
            .map(|v| (v.user_id.as_deref(), v.name.as_deref(), v.clients.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    Some("alice"),
                    Some("Alice B."),
                    vec![ClientID::new(10), ClientID::new(11)]
                ),
                (Some("bob"), Some("Bob"), vec![ClientID::new(12)]),
                (None, None, vec![ClientID::new(20)]),
                (None, Some("Guest"), vec![ClientID::new(21)]),
            ]
        );
        assert_eq!(viewers[0].last_active_ms, 1_100);

        // A tab that is hidden does not view; the user still does through the other tab.
        tab2.set_viewing(false, 3_000).unwrap();
        deliver(&tab2, &mut server, 3_000);
        let alice = &server.viewers(3_000)[0];
        assert_eq!(alice.clients, [ClientID::new(10)]);
        assert_eq!(alice.name.as_deref(), Some("Alice"));

        // The local user is a viewer of their own replica.
        let me = tab1.viewers(3_000);
        assert_eq!(me.len(), 1);
        assert_eq!(me[0].clients, [ClientID::new(10)]);
    }

    #[test]
    fn typing_shows_then_clears() {
        let mut server = presence(1);
        // Alice's clock runs an hour ahead of the server's: it must not matter.
        let skew = 3_600_000;
        let mut alice = joined(10, alice(), 1_000 + skew);
        deliver(&alice, &mut server, 1_000);
        assert!(server.typing(1_000).is_empty());

        alice.set_typing(Some(FIELD), 2_000 + skew).unwrap();
        deliver(&alice, &mut server, 2_000);
        let typing = server.typing(2_000);
        assert_eq!(typing.len(), 1);
        assert_eq!(typing[0].user_id.as_deref(), Some("alice"));
        assert_eq!(typing[0].name.as_deref(), Some("Alice"));
        assert_eq!(typing[0].field, FIELD);
        assert_eq!(typing[0].clients, [ClientID::new(10)]);

        // Keystrokes keep it on; a renewal without activity does not.
        alice.touch(5_000 + skew).unwrap();
        deliver(&alice, &mut server, 5_000);
        assert_eq!(
            server.typing(10_000).len(),
            1,
            "5 s after the last keystroke"
        );
        alice.renew(9_000 + skew).unwrap();
        deliver(&alice, &mut server, 9_000);
        assert!(server.typing(10_001).is_empty(), "stale flag fades out");

        // Typing again, then an explicit stop.
        alice.set_typing(Some(FIELD), 11_000 + skew).unwrap();
        deliver(&alice, &mut server, 11_000);
        assert_eq!(server.typing(11_000).len(), 1);
        alice.set_typing(None, 12_000 + skew).unwrap();
        deliver(&alice, &mut server, 12_000);
        assert!(server.typing(12_000).is_empty());

        // Two tabs of one user typing in the same field are one entry.
        let mut tab2 = joined(11, User::new("alice", "Alice", "#f00"), 13_000);
        alice.set_typing(Some(FIELD), 13_000 + skew).unwrap();
        tab2.set_typing(Some(FIELD), 13_000).unwrap();
        deliver(&alice, &mut server, 13_000);
        deliver(&tab2, &mut server, 13_000);
        let typing = server.typing(13_000);
        assert_eq!(typing.len(), 1);
        assert_eq!(typing[0].clients, [ClientID::new(10), ClientID::new(11)]);
    }

    #[test]
    fn relative_cursor_stays_on_its_character_after_remote_inserts_before_it() {
        let mut a = joined(1, alice(), 0);
        let mut b = joined(2, bob(), 0);
        insert(a.doc(), 0, "hello world");
        sync(a.doc(), b.doc());

        // Bob selects "worl" (UTF-16 6..10): anchor on 'w', head on 'd'.
        b.set_cursor(FIELD, 6, 10, 1_000).unwrap();
        deliver(&b, &mut a, 1_000);
        let cursors = a.cursors(FIELD).unwrap();
        assert_eq!(cursors.len(), 1);
        assert_eq!(cursors[0].client_id, ClientID::new(2));
        assert_eq!(cursors[0].user, bob());
        assert_eq!((cursors[0].anchor, cursors[0].head), (6, 10));
        assert_eq!(char_at(&text_of(a.doc()), cursors[0].anchor), "w");

        // Alice inserts before it (an emoji is two UTF-16 code units), and after it.
        insert(a.doc(), 0, "😀 big ");
        insert(a.doc(), 7, "!");
        let len = text_of(a.doc()).encode_utf16().count() as u32;
        insert(a.doc(), len, " again");
        sync(a.doc(), b.doc());
        // Bob concurrently inserts before his own cursor too; then they exchange updates.
        insert(b.doc(), 0, ">");
        sync(b.doc(), a.doc());
        sync(a.doc(), b.doc());
        assert_eq!(text_of(a.doc()), text_of(b.doc()));
        let text = text_of(a.doc());
        assert_eq!(text, ">😀 big !hello world again");

        let cursors = a.cursors(FIELD).unwrap();
        let shift = ">😀 big !".encode_utf16().count() as u32;
        assert_eq!(
            (cursors[0].anchor, cursors[0].head),
            (6 + shift, 10 + shift)
        );
        assert_eq!(char_at(&text, cursors[0].anchor), "w");
        assert_eq!(char_at(&text, cursors[0].head), "d");
        assert_eq!(
            b.local_cursor(FIELD).unwrap(),
            Some((6 + shift, 10 + shift))
        );
        // A cursor does not list the local client's own selection.
        assert!(b.cursors(FIELD).unwrap().is_empty());
        // Other fields have no cursors.
        assert!(a.cursors("comment:42").unwrap().is_empty());

        // A caret at the very end stays at the end as text is appended there.
        b.set_cursor(FIELD, len_of(&b), len_of(&b), 2_000).unwrap();
        deliver(&b, &mut a, 2_000);
        insert(a.doc(), len_of(&a), "!");
        let end = len_of(&a);
        assert_eq!(a.cursors(FIELD).unwrap()[0].head, end);
    }

    fn len_of(p: &Presence) -> u32 {
        text_of(p.doc()).encode_utf16().count() as u32
    }

    #[test]
    fn cursors_wait_for_text_not_yet_received() {
        let mut a = joined(1, alice(), 0);
        let b = {
            let mut b = joined(2, bob(), 0);
            insert(b.doc(), 0, "abc");
            b.set_cursor(FIELD, 1, 1, 1_000).unwrap();
            b
        };
        deliver(&b, &mut a, 1_000);
        assert!(a.cursors(FIELD).unwrap().is_empty(), "text not synced yet");
        sync(b.doc(), a.doc());
        let cursors = a.cursors(FIELD).unwrap();
        assert_eq!((cursors[0].anchor, cursors[0].head), (1, 1));
    }

    #[test]
    fn set_cursor_checks_its_offsets() {
        let mut p = joined(1, alice(), 0);
        insert(p.doc(), 0, "a😀");
        assert!(p.set_cursor(FIELD, 3, 3, 1).is_ok(), "3 UTF-16 code units");
        assert!(matches!(
            p.set_cursor(FIELD, 0, 4, 1),
            Err(PresenceError::OffsetOutOfRange {
                offset: 4,
                len: 3,
                ..
            })
        ));
        assert!(matches!(
            p.set_cursor("never-written", 1, 1, 1),
            Err(PresenceError::OffsetOutOfRange { len: 0, .. })
        ));
        let mut nobody = presence(2);
        assert!(matches!(
            nobody.set_cursor(FIELD, 0, 0, 1),
            Err(PresenceError::NoLocalState)
        ));
        assert!(matches!(
            Presence::new(Doc::with_client_id(3)),
            Err(PresenceError::NotUtf16)
        ));
        let txn = p.doc().transact_mut();
        assert!(matches!(p.cursors(FIELD), Err(PresenceError::DocumentBusy)));
        drop(txn);
    }

    #[test]
    fn expiry_removes_unrenewed_states_after_30s_but_never_the_local_one() {
        let mut server = joined(1, User::new("server", "Server", "#000"), 0);
        let mut alice = joined(10, alice(), 1_000);
        let bob = joined(12, bob(), 1_000);
        deliver(&alice, &mut server, 1_000);
        deliver(&bob, &mut server, 1_000);

        // Alice renews at 20 s; Bob does not.
        alice.renew(20_000).unwrap();
        deliver(&alice, &mut server, 20_000);

        assert!(server.expire(30_999).is_empty(), "not before 30 s");
        assert_eq!(server.viewers(30_999).len(), 3);
        assert_eq!(server.viewers(31_000).len(), 2, "views skip stale states");
        assert_eq!(server.expire(31_000), [ClientID::new(12)]);
        assert!(server.state(ClientID::new(12)).is_none());
        assert!(server.state(ClientID::new(1)).is_some(), "local state kept");

        // The removal is announced as null at Bob's clock; it decodes as stock clients see it.
        let update = server.update_for(&[ClientID::new(12)]).unwrap();
        let entry = &update.clients[&ClientID::new(12)];
        assert_eq!((entry.clock, &*entry.json), (1, "null"));
        let mut peer = presence(30);
        deliver(&bob, &mut peer, 1_000);
        let summary = peer
            .apply_update(
                AwarenessUpdate::decode_v1(&update.encode_v1()).unwrap(),
                31_000,
            )
            .unwrap()
            .unwrap();
        assert_eq!(summary.removed, [ClientID::new(12)]);

        assert!(server.expire(49_999).is_empty());
        assert_eq!(server.expire(50_000), [ClientID::new(10)]);
        assert!(
            server.expire(1_000_000).is_empty(),
            "local state never expires"
        );
        let viewers = server.viewers(1_000_000);
        assert_eq!(viewers.len(), 1);
        assert_eq!(viewers[0].user_id.as_deref(), Some("server"));

        // Alice comes back after sleeping: her next renewal is accepted at once.
        alice.renew(60_000).unwrap();
        deliver(&alice, &mut server, 60_000);
        assert!(server.state(ClientID::new(10)).is_some());
    }

    #[test]
    fn closed_connections_are_removed_with_clock_plus_one() {
        let mut server = presence(1);
        let mut alice = joined(10, alice(), 0);
        alice.touch(5).unwrap();
        deliver(&alice, &mut server, 5);
        let update = server
            .remove_clients(
                &[ClientID::new(10), ClientID::new(99), ClientID::new(1)],
                10,
            )
            .unwrap();
        assert_eq!(update.clients.len(), 1);
        let entry = &update.clients[&ClientID::new(10)];
        assert_eq!((entry.clock, &*entry.json), (3, "null"));
        assert!(server.viewers(10).is_empty());

        // A peer that knew Alice drops her on this message.
        let mut peer = presence(2);
        deliver(&alice, &mut peer, 5);
        let summary = peer.apply_update(update, 10).unwrap().unwrap();
        assert_eq!(summary.removed, [ClientID::new(10)]);
        assert!(peer.viewers(10).is_empty());

        // Leaving announces the local removal the same way.
        let update = alice.leave(20).unwrap();
        let entry = &update.clients[&ClientID::new(10)];
        assert_eq!((entry.clock, &*entry.json), (3, "null"));
        assert!(alice.local_state().is_none());
        assert!(matches!(
            alice.local_update(),
            Err(PresenceError::NoLocalState)
        ));
    }

    #[test]
    fn states_expired_on_demand_keep_their_clock_whatever_their_age() {
        let mut server = joined(1, User::new("server", "Server", "#000"), 0);
        let mut alice = joined(10, alice(), 0);
        alice.touch(5).unwrap();
        deliver(&alice, &mut server, 5);
        deliver(&joined(12, bob(), 0), &mut server, 5);
        let removed = server.expire_clients(
            &[ClientID::new(12), ClientID::new(10), ClientID::new(99)],
            6,
        );
        assert_eq!(removed, [ClientID::new(10), ClientID::new(12)]);
        assert_eq!(server.expire_clients(&[ClientID::new(1)], 6), []);
        assert!(server.state(ClientID::new(1)).is_some(), "local state kept");
        let update = server.update_for(&removed).unwrap();
        let entry = &update.clients[&ClientID::new(10)];
        assert_eq!((entry.clock, &*entry.json), (2, "null"));
        assert_eq!(server.users(6).len(), 1);
        // Alice's next renewal is accepted at once.
        alice.renew(7).unwrap();
        deliver(&alice, &mut server, 7);
        assert!(server.state(ClientID::new(10)).is_some());
    }

    #[test]
    fn remote_updates_are_checked_and_cannot_touch_the_local_state() {
        let mut me = joined(1, alice(), 0);
        let mut clients = HashMap::new();
        clients.insert(
            ClientID::new(5),
            AwarenessUpdateEntry {
                clock: 1,
                json: Arc::from(r#"{"user":{"id":"eve"}}"#),
            },
        );
        clients.insert(
            ClientID::new(6),
            AwarenessUpdateEntry {
                clock: 1,
                json: Arc::from("{not json"),
            },
        );
        let err = me
            .apply_update(AwarenessUpdate { clients }, 10)
            .unwrap_err();
        assert!(matches!(
            err,
            PresenceError::InvalidStateJson { client: 6, .. }
        ));
        assert!(me.state(ClientID::new(5)).is_none(), "nothing applied");

        // An entry claiming the local client id is ignored.
        let summary = me
            .apply_update(raw_update(1, 100, r#"{"user":{"id":"mallory"}}"#), 10)
            .unwrap();
        assert_eq!(summary, None);
        assert_eq!(me.local_state().unwrap().user, alice());
        assert_eq!(
            me.state(ClientID::new(1)).unwrap().user.id.as_deref(),
            Some("alice")
        );
        let removal = me.apply_update(raw_update(1, 100, "null"), 10).unwrap();
        assert_eq!(removal, None);
        assert!(me.local_state().is_some());

        // A padded `null` is a removal too, not a state.
        me.apply_update(raw_update(7, 1, "{}"), 10).unwrap();
        let summary = me
            .apply_update(raw_update(7, 2, " null "), 11)
            .unwrap()
            .unwrap();
        assert_eq!(summary.removed, [ClientID::new(7)]);
        assert!(me.state(ClientID::new(7)).is_none());
    }

    /// Whether `users` and `typing` agree on who types at `now_ms`.
    fn typing_agrees(p: &Presence, now_ms: u64) -> bool {
        let typing: Vec<String> = p
            .typing(now_ms)
            .iter()
            .map(|t| t.user_id.clone().unwrap_or_default())
            .collect();
        let users: Vec<String> = p
            .users(now_ms)
            .into_iter()
            .filter(|(_, u)| u.typing.is_some())
            .map(|(key, _)| key)
            .collect();
        typing == users
    }

    #[test]
    fn a_typing_flag_older_than_the_timeout_counts_in_no_view() {
        let mut server = presence(1);
        let mut alice = joined(10, alice(), 1_000);
        alice.set_typing(Some(FIELD), 2_000).unwrap();
        deliver(&alice, &mut server, 2_000);
        let at_timeout = 2_000 + TYPING_TIMEOUT_MS;
        assert_eq!(
            server.users(at_timeout)["alice"].typing.as_deref(),
            Some(FIELD)
        );
        assert_eq!(server.typing(at_timeout).len(), 1);
        // The flag is still set in the state, but too old: neither view shows it.
        let user = &server.users(at_timeout + 1)["alice"];
        assert_eq!(user.typing, None);
        assert!(user.viewing, "the user is still there");
        assert!(server.typing(at_timeout + 1).is_empty());
        for now in [2_000, at_timeout, at_timeout + 1, 29_000, 40_000] {
            assert!(typing_agrees(&server, now), "at {now}");
        }
    }

    #[test]
    fn users_fold_tabs_and_key_clients_without_a_user() {
        let mut server = presence(1);
        let tab1 = joined(10, alice(), 1_000);
        let mut tab2 = joined(11, User::new("alice", "Alice B.", "#0f0"), 1_000);
        let mut bob = joined(12, bob(), 1_000);
        deliver(&tab1, &mut server, 1_000);
        tab2.set_viewing(false, 1_500).unwrap();
        tab2.set_typing(Some(FIELD), 1_500).unwrap();
        deliver(&tab2, &mut server, 1_500);
        bob.set_viewing(false, 1_000).unwrap();
        deliver(&bob, &mut server, 1_000);
        server.apply_update(raw_update(20, 1, "{}"), 1_000).unwrap();

        let users = server.users(2_000);
        assert_eq!(
            users.keys().collect::<Vec<_>>(),
            ["alice", "bob", "client:20"]
        );
        // Viewing through one tab, typing through the other, named after the latest.
        assert_eq!(
            users["alice"],
            UserPresence {
                user: serde_json::json!({"id": "alice", "name": "Alice B.", "color": "#0f0"}),
                typing: Some(FIELD.to_owned()),
                viewing: true,
            }
        );
        assert!(!users["bob"].viewing);
        assert_eq!(
            users["client:20"].user,
            serde_json::json!({"id": null, "name": null, "color": null})
        );
        // The viewers are exactly the users who view.
        let viewing: Vec<String> = users
            .iter()
            .filter(|(_, u)| u.viewing)
            .map(|(k, _)| k.clone())
            .collect();
        let viewers: Vec<String> = server
            .viewers(2_000)
            .iter()
            .map(|v| match &v.user_id {
                Some(id) => id.clone(),
                None => format!("client:{}", v.clients[0].get()),
            })
            .collect();
        assert_eq!(viewing, viewers);
        assert!(typing_agrees(&server, 2_000));
        // States not renewed for the presence timeout are gone from every view.
        assert!(server.users(1_500 + PRESENCE_TIMEOUT_MS).is_empty());
        assert!(server.viewers(1_500 + PRESENCE_TIMEOUT_MS).is_empty());
    }

    #[test]
    fn presence_changes_list_joins_updates_and_leaves() {
        let view = |typing: Option<&str>| UserPresence {
            user: serde_json::json!({"id": "a", "name": "A", "color": null}),
            typing: typing.map(str::to_owned),
            viewing: true,
        };
        let old: BTreeMap<String, UserPresence> = [
            ("a".to_owned(), view(None)),
            ("b".to_owned(), view(None)),
            ("c".to_owned(), view(None)),
        ]
        .into();
        let new: BTreeMap<String, UserPresence> = [
            ("a".to_owned(), view(None)),
            ("c".to_owned(), view(Some(FIELD))),
            ("d".to_owned(), view(None)),
        ]
        .into();
        let changes = presence_changes(&old, &new);
        let actions: Vec<&str> = changes.iter().map(|c| c.action.as_str()).collect();
        assert_eq!(actions, ["update", "join", "leave"]);
        assert_eq!(changes[0].view, new["c"]);
        assert_eq!(changes[2].view, old["b"]);
        assert!(presence_changes(&new, &new).is_empty());
        assert_eq!(
            serde_json::to_value(&changes[0]).unwrap(),
            serde_json::json!({
                "action": "update",
                "user": {"id": "a", "name": "A", "color": null},
                "typing": FIELD,
                "viewing": true,
            })
        );
    }

    #[test]
    fn renewal_is_due_every_15s() {
        let mut p = presence(1);
        assert!(!p.renewal_due(100_000), "no local state");
        p.set_state(PresenceState::new(alice(), 0), 0);
        assert!(!p.renewal_due(14_999));
        assert!(p.renewal_due(15_000));
        p.renew(15_000).unwrap();
        assert!(!p.renewal_due(15_001));
        assert_eq!(
            p.local_state().unwrap().last_active,
            Some(0),
            "renewal is not activity"
        );
        assert_eq!(p.awareness().meta(p.client_id()).unwrap(), (2, 15_000));
        let full = p.full_update().unwrap();
        assert_eq!(full.clients.len(), 1);
    }
}
