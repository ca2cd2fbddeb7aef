//! `protocol`: frames from many connections (writers and read-only) into one `Room`.
//!
//! Two input forms, chosen by the first byte:
//! - `0x00`: a frame script, `[op|conn: u8][len: u16 LE][len bytes]...` (see [`frame_script`]);
//!   the captured y-websocket sessions in the corpus use it, so libFuzzer mutates real frames.
//! - anything else: the rest is decoded with `arbitrary` into [`Action`]s: joins, leaves,
//!   ticks and frames built from valid message shapes (edits made on a real client replica,
//!   state vectors, awareness entries, register writes) with fuzzed payloads, optionally with
//!   one byte corrupted, sent a frame at a time or as a burst of frames handled together
//!   (`Room::handle_updates`, whose consecutive updates integrate in one transaction).
//!
//! Each connection has a client replica (a `Document`) and a stock client's view of presence
//! ([`Mirror`]); every frame the room sends is delivered to them. A connection may speak the
//! Hocuspocus dialect (`tandem_engine::hocuspocus`): its messages go out one per frame under
//! the document's name and through the dialect's codec before the room sees them, and what the
//! room sends it goes through its `Outbound` (script op 5 feeds raw bytes to the codec).
//!
//! Properties, checked after every step:
//! - nothing panics;
//! - memory: the bytes held in allocations the room made never exceed
//!   `ALLOC_PER_INPUT_BYTE × input length + ALLOC_CONSTANT` (a counting global allocator);
//! - the document encodes, and that encoding applied to a fresh `Document` gives the same texts,
//!   registers and state vector;
//! - every frame the room sends is exactly one well-formed message; replies go only to the
//!   sender; tandem extension messages only to the connection that spoke the extension;
//! - awareness ownership: a client id's state changes only through the connection that first
//!   claimed it (until that connection leaves); leaving removes every state it owned;
//! - read-only connections never change the document;
//! - Hocuspocus dialect: the codec never panics; what a stock provider sends is never refused,
//!   and the room gets exactly the y-websocket message under the name (a stateless message as
//!   tandem's); every room frame has a Hocuspocus form, exactly the expected one (sync and
//!   awareness under the name, a refused update SyncStatus(false), a viewer's update with
//!   nothing new SyncStatus(true), stateless as Stateless, other notices nothing); acks give
//!   one SyncStatus(true) per update acknowledged for the first time; stateless messages reach
//!   only the other connections that receive them;
//! - an accepted register write is the register's current state right after;
//! - every update the room accepted or sent applies cleanly on a client replica;
//! - with the change feed on (as when SSE streams follow the document), the text deltas and
//!   register changes of the accepted updates, applied in order, give the room's texts and
//!   registers;
//! - storage: a document rebuilt the way the server loads one (the last compaction snapshot,
//!   which is `encode_state()`, then every update accepted since) equals the room's.
//!
//! At the end of the input, every connection still open that synced (got a step 2) and whose
//! replica holds nothing the room refused has the room's texts and registers, and its view of
//! presence equals the room's.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tandem_engine::error::ProtocolError;
use tandem_engine::hocuspocus::{self, ClientFrame, Message, Outbound, Reply};
use tandem_engine::protocol::{ack_frame, MSG_TANDEM, NOTICE_NOTHING_NEW, TANDEM_STATELESS};
use tandem_engine::protocol::{ConnId, ConnInfo, Limits, Output, Role, Room, To};
use tandem_engine::protocol::{SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE};
use tandem_engine::wire::Writer;
use tandem_engine::{Change, DeltaOp, Document, DocumentError, FieldValue};
use tandem_fuzz::alloc::{self, TaggingAllocator};
use tandem_fuzz::awareness::Mirror;
use tandem_fuzz::frames::{self, AwarenessEntry, ServerMessage};
use yrs::{Map, Text, Transact};

#[global_allocator]
static ALLOC: TaggingAllocator = TaggingAllocator;

/// Memory bound, per byte of fuzz input. Everything the room holds (document, awareness
/// states, frames not yet dropped) comes from the input, and a yrs item costs a few hundred
/// bytes for the few input bytes that create it.
const ALLOC_PER_INPUT_BYTE: usize = 64;
/// Memory bound, constant part: an empty room with its document, awareness and maps.
const ALLOC_CONSTANT: usize = 256 << 10;

/// The room's own Yjs client id.
const SERVER_CLIENT: u64 = 0x1F_DEAD_BEEF;
/// Connection ids are `0..CONNS`.
const CONNS: u8 = 6;
/// Most actions taken from one input, to keep executions fast.
const MAX_ACTIONS: usize = 96;

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
/// The room's document name, as Hocuspocus connections write it.
const DOC: &str = "notes";
const FIELDS: [&str; 3] = ["description", "comment:42", "title"];
const MAP_ROOTS: [&str; 2] = ["meta", "tandem:registers"];
const REGISTERS: [&str; 5] = ["status", "assignee", "due", "tandem:reserved", ""];

#[derive(Debug, Arbitrary)]
enum Action {
    Join {
        conn: u8,
        writer: bool,
        extensions: bool,
        user: u8,
        /// Authenticated with a display name: the room stamps its awareness states.
        named: bool,
        /// Speaks the Hocuspocus dialect (extensions and stateless messages on).
        hocuspocus: bool,
    },
    /// The server acknowledges `forward` more updates of a Hocuspocus connection (0: an ack
    /// repeated after a resync).
    Ack {
        conn: u8,
        forward: u8,
    },
    /// A text edit through the HTTP API (`Room::edit_text`), at any offset.
    HttpEdit {
        field: u8,
        index: u16,
        delete: u8,
        text: String,
        anywhere: bool,
    },
    /// A binary update through the HTTP API (`Room::apply_update`): one a connection's replica
    /// holds back, or arbitrary bytes.
    HttpUpdate {
        conn: u8,
        pick: u8,
        raw: Option<Vec<u8>>,
    },
    /// The server compacts: the log is replaced by a snapshot (`encode_state()`).
    Compact,
    /// SSE streams start or stop following the document.
    Feed(bool),
    Leave {
        conn: u8,
    },
    Tick {
        advance_ms: u16,
    },
    Send {
        conn: u8,
        msgs: Vec<Msg>,
        corrupt: Option<(u16, u8)>,
    },
    /// Each message in a frame of its own, handed to the room together
    /// (`Room::handle_updates`), as the server does with what a connection sent while the
    /// document was busy: consecutive edits go in one transaction.
    Burst {
        conn: u8,
        msgs: Vec<Msg>,
    },
}

#[derive(Debug, Arbitrary)]
enum Msg {
    /// Sync step 1 with the replica's state vector.
    Step1,
    /// Sync step 1 with arbitrary bytes.
    Step1Raw(Vec<u8>),
    /// Sync step 2 answering the room's last step 1 (as a stock client does).
    Step2Reply,
    /// A text edit made on the replica, sent as an update (or step 2), or held back (an
    /// offline client, or a tab that shares edits with another before its socket sends them).
    Edit {
        field: u8,
        index: u16,
        delete: u8,
        text: String,
        as_step2: bool,
        hold: bool,
    },
    /// Sends one of the updates held back, in any order.
    ReleaseHeld(u8),
    /// An embedded object (`Y.Text.insertEmbed`) in a text field.
    Embed {
        field: u8,
        index: u16,
    },
    /// A `Y.Map` write made on the replica (plain Yjs apps use maps too; one root is tandem's
    /// register map, so this also forges register entries).
    MapSet {
        root: u8,
        key: MapKey,
        value: MapValue,
    },
    /// An update with arbitrary bytes.
    UpdateRaw {
        as_step2: bool,
        bytes: Vec<u8>,
    },
    /// The client's own awareness state, with the next clock (as a stock client publishes it).
    OwnState(AwState),
    /// What a stock y-websocket client does after applying awareness it received: it re-sends
    /// the entries of those clients, as it knows them (picked from what it knows).
    Forward(Vec<u8>),
    /// A stock client's outdated check: it drops a peer it has not heard from for 30 s and
    /// tells everyone (`clock + 1`, `null`).
    TimeoutRemoval(u8),
    /// An awareness update built from entries.
    Awareness(Vec<AwEntry>),
    /// An awareness message with arbitrary payload.
    AwarenessRaw(Vec<u8>),
    QueryAwareness,
    /// A stateless message (Hocuspocus `sendStateless`, tandem message 4).
    Stateless(String),
    Auth {
        kind: u8,
        reason: String,
    },
    /// A tandem register write request.
    SetField {
        conditional: bool,
        delete: bool,
        name: u8,
        expected: Expected,
        value: JsonValue,
    },
    /// Arbitrary bytes.
    Raw(Vec<u8>),
}

impl Msg {
    /// Whether a stock Yjs client (y-websocket provider or, with `hocuspocus`, Hocuspocus
    /// provider; any Yjs app) sends this message in the normal course of things; such frames
    /// must never get a connection closed.
    fn is_stock(&self, hocuspocus: bool) -> bool {
        match self {
            Msg::Stateless(_) => hocuspocus,
            Msg::Step1
            | Msg::Step2Reply
            | Msg::Edit { .. }
            | Msg::ReleaseHeld(_)
            | Msg::Embed { .. }
            | Msg::MapSet { .. }
            | Msg::Forward(_)
            | Msg::TimeoutRemoval(_)
            | Msg::QueryAwareness => true,
            Msg::OwnState(state) => !matches!(state, AwState::Json(_)),
            _ => false,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum MapKey {
    /// `"<register>#<wall>-<counter>-<client>"`, as register entries are keyed.
    Register {
        name: u8,
        wall: u64,
        counter: u32,
        client: u64,
    },
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum MapValue {
    /// A register entry's JSON.
    Entry {
        name: u8,
        value: JsonValue,
        deleted: bool,
        wall: u64,
        counter: u32,
        client: u64,
    },
    Raw(String),
    Number(f64),
}

#[derive(Debug, Arbitrary)]
struct AwEntry {
    client: AwClient,
    clock: AwClock,
    state: AwState,
}

#[derive(Debug, Arbitrary)]
enum AwClient {
    /// The replica's own Yjs client id, as stock clients use.
    Own,
    /// One of a few small ids, so connections compete for them.
    Small(u8),
    Any(u64),
}

#[derive(Debug, Arbitrary)]
enum AwClock {
    /// One more than the sender knows.
    Next,
    /// What the sender knows.
    Same,
    Raw(u32),
}

#[derive(Debug, Arbitrary)]
enum AwState {
    Null,
    Presence {
        user: u8,
        typing: Option<u8>,
        viewing: bool,
        cursor: Option<(u32, u32)>,
    },
    Json(String),
}

#[derive(Debug, Arbitrary)]
enum Expected {
    /// The register's current version.
    Current,
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum JsonValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Raw(String),
}

impl JsonValue {
    fn to_json(&self) -> String {
        match self {
            JsonValue::Null => "null".to_owned(),
            JsonValue::Bool(b) => b.to_string(),
            JsonValue::Int(i) => i.to_string(),
            JsonValue::Float(f) => serde_json::Value::from(*f).to_string(),
            JsonValue::Str(s) => serde_json::Value::from(s.as_str()).to_string(),
            JsonValue::Raw(s) => s.clone(),
        }
    }
}

/// A frame built from messages.
struct Built {
    frame: Vec<u8>,
    /// The register each set-field request id names.
    requests: Vec<String>,
    /// The replica now holds something the room may refuse.
    taint: bool,
    /// The client's own awareness id is owned by another connection.
    squatted: bool,
}

/// One connection as the client side sees it.
struct Client {
    info: ConnInfo,
    replica: Document,
    /// Got a step 2 (or joined an empty room), so it holds the room's state.
    synced: bool,
    /// Holds changes the room did not take (refused, or a corrupted frame): not comparable.
    tainted: bool,
    /// Its presence view was changed locally (a timeout removal): not comparable.
    presence_tainted: bool,
    /// The room's last step 1 state vector.
    server_sv: Option<Vec<u8>>,
    /// The Hocuspocus side of a connection that speaks that dialect, and the updates the
    /// server acknowledged to it.
    outbound: Option<(Outbound, u64)>,
    /// Updates made on the replica and not sent yet.
    held: Vec<Vec<u8>>,
    mirror: Mirror,
}

type PresenceMap = BTreeMap<u64, (u32, Option<Arc<str>>)>;

struct Harness {
    room: Room,
    clients: BTreeMap<ConnId, Client>,
    /// First claimer of each awareness client id, until it leaves.
    owners: HashMap<u64, ConnId>,
    now: u64,
    next_replica: u64,
    baseline: usize,
    budget: usize,
    /// What the server stores: the last snapshot and the updates accepted since.
    snapshot: Option<Vec<u8>>,
    log: Vec<bytes::Bytes>,
    /// Texts (UTF-16) and registers as a change-feed consumer sees them; `None` while off.
    feed: Option<FeedModel>,
}

/// A change-feed consumer: starts from the room's state and applies every change.
struct FeedModel {
    texts: BTreeMap<String, Vec<u16>>,
    fields: BTreeMap<String, FieldValue>,
}

impl FeedModel {
    fn of(doc: &Document) -> Self {
        FeedModel {
            texts: doc
                .texts()
                .into_iter()
                .map(|(k, v)| (k, v.encode_utf16().collect()))
                .collect(),
            fields: doc.fields(),
        }
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Text { field, delta, .. } => {
                let text = self.texts.entry(field.clone()).or_default();
                let mut pos = 0usize;
                for op in delta {
                    match op {
                        DeltaOp::Retain(n) => {
                            pos += *n as usize;
                            assert!(pos <= text.len(), "{field}: delta retains past the end");
                        }
                        DeltaOp::Insert(s) => {
                            let units: Vec<u16> = s.encode_utf16().collect();
                            assert!(pos <= text.len(), "{field}: delta inserts past the end");
                            let n = units.len();
                            text.splice(pos..pos, units);
                            pos += n;
                        }
                        DeltaOp::Delete(n) => {
                            let end = pos + *n as usize;
                            assert!(end <= text.len(), "{field}: delta deletes past the end");
                            text.drain(pos..end);
                        }
                    }
                }
            }
            Change::Field { name, value, .. } => match value {
                Some(v) => {
                    self.fields.insert(name.clone(), v.clone());
                }
                None => {
                    self.fields.remove(name);
                }
            },
        }
    }

    fn check(&self, doc: &Document) {
        let texts: BTreeMap<String, String> = self
            .texts
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf16_lossy(v)))
            .collect();
        assert_eq!(
            nonempty(texts),
            nonempty(doc.texts()),
            "the change feed's deltas do not give the document's texts"
        );
        assert_eq!(
            self.fields,
            doc.fields(),
            "the change feed's register changes do not give the document's registers"
        );
    }
}

fn presence(room: &Room) -> PresenceMap {
    room.presence()
        .awareness()
        .iter()
        .map(|(id, s)| (id.get(), (s.clock, s.data)))
        .collect()
}

fn nonempty(texts: BTreeMap<String, String>) -> BTreeMap<String, String> {
    texts.into_iter().filter(|(_, t)| !t.is_empty()).collect()
}

fn decoded_sv(doc: &Document) -> BTreeMap<u64, u32> {
    tandem_fuzz::clocks(&doc.state_vector())
}

/// The document's full state applied to a fresh document gives the same content.
fn check_round_trip(doc: &Document) {
    let state = doc.encode_state();
    if trace() {
        eprintln!("state {state:?}");
    }
    let mut fresh = Document::new(tandem_fuzz::unused_client(&[&state], 1));
    if let Err(e) = fresh.apply_update(&state, None) {
        panic!("the room's own state does not apply to a fresh document: {e}");
    }
    assert_eq!(
        nonempty(fresh.texts()),
        nonempty(doc.texts()),
        "texts differ after encode/decode (pending {} bytes)",
        doc.pending_len()
    );
    assert_eq!(
        fresh.fields(),
        doc.fields(),
        "registers differ after encode/decode"
    );
    assert_eq!(
        decoded_sv(&fresh),
        decoded_sv(doc),
        "state vectors differ after encode/decode"
    );
}

impl Harness {
    fn new(input_len: usize) -> Self {
        let baseline = alloc::room_live();
        let room = alloc::in_room(|| Room::new(Document::new(SERVER_CLIENT), Limits::default()));
        alloc::reset_peak();
        Harness {
            room,
            clients: BTreeMap::new(),
            owners: HashMap::new(),
            now: 1_700_000_000_000,
            next_replica: 100,
            baseline,
            budget: ALLOC_PER_INPUT_BYTE * input_len + ALLOC_CONSTANT,
            snapshot: None,
            log: Vec::new(),
            feed: None,
        }
    }

    /// Records what the room accepted (storage and change feed) and checks the feed.
    fn accepted(&mut self, out: &Output) {
        for a in &out.accepted {
            self.log.push(a.update.clone());
            if let Some(feed) = &mut self.feed {
                for c in &a.changes {
                    feed.apply(c);
                }
            } else {
                assert!(a.changes.is_empty(), "changes reported with the feed off");
            }
        }
        if let Some(feed) = &self.feed {
            feed.check(self.room.document());
        }
    }

    fn set_feed(&mut self, on: bool) {
        alloc::in_room(|| self.room.document_mut().set_change_feed(on));
        self.feed = on.then(|| FeedModel::of(self.room.document()));
    }

    fn compact(&mut self) {
        self.check_storage();
        self.snapshot = Some(self.room.document().encode_state());
        self.log.clear();
    }

    /// The document as the server would load it equals the room's.
    fn check_storage(&self) {
        let mut stored: Vec<&[u8]> = self.snapshot.iter().map(|s| &s[..]).collect();
        stored.extend(self.log.iter().map(|u| &u[..]));
        let mut loaded = Document::new(tandem_fuzz::unused_client(&stored, 3));
        if let Some(s) = &self.snapshot {
            loaded.apply_update(s, None).expect("the snapshot applies");
        }
        for u in &self.log {
            if let Err(e) = loaded.apply_update(u, None) {
                panic!("a stored update does not apply on reload: {e}");
            }
        }
        let doc = self.room.document();
        assert_eq!(
            nonempty(loaded.texts()),
            nonempty(doc.texts()),
            "the document reloaded from storage has other texts"
        );
        assert_eq!(loaded.fields(), doc.fields(), "reloaded registers differ");
        assert_eq!(
            decoded_sv(&loaded),
            decoded_sv(doc),
            "the document reloaded from storage has another state vector"
        );
    }

    /// An HTTP-side write: `Err` must leave the document as it was.
    fn http(&mut self, f: impl FnOnce(&mut Room, u64) -> Result<Output, ProtocolError>) {
        let before = {
            let d = self.room.document();
            (decoded_sv(d), nonempty(d.texts()), d.fields())
        };
        let now = self.now;
        let result = alloc::in_room(|| f(&mut self.room, now));
        self.check_memory("http");
        match result {
            Err(_) => {
                let d = self.room.document();
                assert_eq!(
                    (decoded_sv(d), nonempty(d.texts()), d.fields()),
                    before,
                    "a refused HTTP write changed the document"
                );
            }
            Ok(out) => {
                for m in &out.messages {
                    assert_eq!(m.to, To::All);
                    frames::parse_server_frame(&m.frame).expect("well-formed frame");
                }
                for a in &out.accepted {
                    assert_eq!(a.conn, None);
                }
                self.accepted(&out);
                self.deliver(&out, None);
            }
        }
        check_round_trip(self.room.document());
    }

    fn check_memory(&self, what: &str) {
        let used = alloc::room_peak().saturating_sub(self.baseline);
        assert!(
            used <= self.budget,
            "{what}: the room held {used} bytes, over the bound of {} bytes",
            self.budget
        );
    }

    fn join(
        &mut self,
        conn: ConnId,
        writer: bool,
        extensions: bool,
        user: u8,
        named: bool,
        hocuspocus: bool,
    ) {
        if self.clients.contains_key(&conn) {
            // The transport never reuses a live connection id.
            return;
        }
        let info = ConnInfo {
            role: if writer { Role::Write } else { Role::Read },
            user: Some(USERS[usize::from(user) % USERS.len()].to_owned()),
            extensions: extensions || hocuspocus,
            name: named.then(|| format!("Name {user}")),
            stateless: hocuspocus,
        };
        let empty_room = self.room.document().encode_state() == Document::new(2).encode_state();
        let out = alloc::in_room(|| self.room.join(conn, info.clone(), self.now));
        self.next_replica += 1;
        self.clients.insert(
            conn,
            Client {
                info,
                replica: Document::new(self.next_replica),
                synced: empty_room,
                tainted: false,
                presence_tainted: false,
                server_sv: None,
                outbound: hocuspocus.then(|| (Outbound::new(DOC), 0)),
                held: Vec::new(),
                mirror: Mirror::default(),
            },
        );
        assert!(out.error.is_none() && out.accepted.is_empty() && !out.presence_changed);
        for m in &out.messages {
            assert_eq!(m.to, To::One(conn), "a join greets only the new connection");
        }
        self.deliver(&out, Some(conn));
        self.check_memory("join");
    }

    fn leave(&mut self, conn: ConnId) {
        let before = presence(&self.room);
        let out = alloc::in_room(|| self.room.leave(conn, self.now));
        let Some(_) = self.clients.remove(&conn) else {
            assert!(out.messages.is_empty() && !out.presence_changed);
            return;
        };
        let owned: Vec<u64> = self
            .owners
            .iter()
            .filter(|(_, c)| **c == conn)
            .map(|(id, _)| *id)
            .collect();
        let after = presence(&self.room);
        for id in &owned {
            self.owners.remove(id);
            if let Some((_, data)) = after.get(id) {
                assert!(
                    data.is_none(),
                    "client {id} still present after its owner left"
                );
            }
        }
        for (id, state) in &after {
            if before.get(id) != Some(state) {
                assert!(owned.contains(id), "leave of {conn} changed client {id}");
            }
        }
        for m in &out.messages {
            assert_eq!(m.to, To::All);
            let msg = frames::parse_server_frame(&m.frame).expect("well-formed frame");
            let ServerMessage::Awareness(entries) = msg else {
                panic!("leave sent {msg:?}");
            };
            for e in &entries {
                assert!(
                    owned.contains(&e.client),
                    "leave announced client {}",
                    e.client
                );
                assert_eq!(e.json, "null");
            }
        }
        self.deliver(&out, None);
        check_round_trip(self.room.document());
        self.check_memory("leave");
    }

    fn tick(&mut self, advance_ms: u64) {
        self.now += advance_ms;
        let before = presence(&self.room);
        let out = alloc::in_room(|| self.room.tick(self.now));
        let after = presence(&self.room);
        for (id, state) in &after {
            if before.get(id) != Some(state) {
                assert!(state.1.is_none(), "a tick set a state for client {id}");
            }
        }
        for m in &out.messages {
            assert_eq!(m.to, To::All);
            let msg = frames::parse_server_frame(&m.frame).expect("well-formed frame");
            assert!(
                matches!(msg, ServerMessage::Awareness(_)),
                "tick sent {msg:?}"
            );
        }
        self.deliver(&out, None);
        self.check_memory("tick");
    }

    /// Sends `frames` from `conn` (one: `Room::handle`; several: `Room::handle_updates`).
    /// `requests` names the register each set-field request id in the frames writes (in
    /// order); `tainted` marks the replica as no longer comparable.
    fn send(
        &mut self,
        conn: ConnId,
        frames: &[&[u8]],
        requests: &[String],
        tainted: bool,
        stock: bool,
    ) {
        let joined = self.clients.contains_key(&conn);
        let read_only = self
            .clients
            .get(&conn)
            .is_some_and(|c| c.info.role == Role::Read);
        let before = presence(&self.room);
        let doc_before = read_only.then(|| {
            let d = self.room.document();
            (decoded_sv(d), d.texts(), d.fields(), d.pending_len())
        });
        let out = match frames {
            [frame] => alloc::in_room(|| self.room.handle(conn, frame, self.now)),
            _ => alloc::in_room(|| self.room.handle_updates(conn, frames, self.now)),
        };
        self.check_memory("handle");
        if !joined {
            assert!(
                matches!(
                    out.error,
                    Some(ProtocolError::UnknownConnection | ProtocolError::FrameTooLarge { .. })
                ),
                "frame from an unknown connection: {:?}",
                out.error
            );
            assert!(out.messages.is_empty() && out.accepted.is_empty());
            assert_eq!(presence(&self.room), before);
            return;
        }
        if tainted {
            if let Some(c) = self.clients.get_mut(&conn) {
                c.tainted = true;
            }
        }
        if stock {
            assert!(
                out.error.is_none(),
                "a frame a stock client sends closed connection {conn}: {:?}",
                out.error
            );
        }
        let user = self.clients[&conn].info.user.clone();
        let mut field_results = Vec::new();
        for m in &out.messages {
            let msg = match frames::parse_server_frame(&m.frame) {
                Ok(msg) => msg,
                Err(e) => panic!("the room sent a malformed frame ({e:?}): {:?}", m.frame),
            };
            match m.to {
                To::One(c) if matches!(msg, ServerMessage::Stateless(_)) => {
                    assert_ne!(c, conn, "a stateless message went back to its sender");
                    assert!(
                        self.clients[&c].info.stateless,
                        "a stateless message went to {c}, which does not receive them"
                    );
                }
                To::One(c) => assert_eq!(c, conn, "a reply to {conn} went to {c}"),
                To::AllExcept(c) => assert_eq!(c, conn),
                To::All => {}
            }
            match &msg {
                ServerMessage::Awareness(entries) if m.to == To::All => {
                    // An echo of an accepted awareness message: the sender now owns its ids.
                    for e in entries {
                        match self.owners.get(&e.client) {
                            None => {
                                self.owners.insert(e.client, conn);
                            }
                            Some(owner) => assert_eq!(
                                *owner, conn,
                                "{conn} set client {} owned by {owner}",
                                e.client
                            ),
                        }
                    }
                }
                ServerMessage::Ack { .. } => panic!("the room sent an ack itself"),
                ServerMessage::FieldResult { .. } => {
                    assert_eq!(m.to, To::One(conn));
                    field_results.push(msg.clone());
                }
                ServerMessage::Step1(_) => panic!("the room sent step 1 in reply"),
                _ => {}
            }
        }
        // Ownership: every state that changed belongs to the sender.
        let after = presence(&self.room);
        for (id, state) in &after {
            if before.get(id) != Some(state) {
                assert_eq!(
                    self.owners.get(id),
                    Some(&conn),
                    "client {id} changed through connection {conn}, which does not own it"
                );
            }
        }
        for id in before.keys() {
            assert!(after.contains_key(id), "client {id} vanished");
        }
        if let Some((sv, texts, fields, pending)) = doc_before {
            let d = self.room.document();
            assert!(
                out.accepted.is_empty(),
                "a read-only connection's update was accepted"
            );
            assert_eq!(
                decoded_sv(d),
                sv,
                "a read-only connection changed the document"
            );
            assert_eq!(
                nonempty(d.texts()),
                nonempty(texts),
                "a read-only connection changed a text"
            );
            assert_eq!(
                d.fields(),
                fields,
                "a read-only connection changed a register"
            );
            assert_eq!(
                d.pending_len(),
                pending,
                "a read-only connection added pending data"
            );
        }
        for a in &out.accepted {
            assert_eq!(a.author, user, "accepted update with the wrong author");
            if let Err(e) = tandem_engine::guard::check_update_v1(&a.update) {
                panic!("the room accepted an update that does not validate: {e}");
            }
            if a.conn == Some(conn) {
                // The sender has its own update already (a real client made it).
                if let Some(c) = self.clients.get_mut(&conn) {
                    if c.replica.apply_update(&a.update, None).is_err() {
                        c.tainted = true;
                    }
                }
            } else {
                assert_eq!(a.conn, None);
            }
        }
        // An accepted register write is the current state until a later write in this frame.
        let mut last_write: BTreeMap<&str, Option<String>> = BTreeMap::new();
        for r in &field_results {
            if let ServerMessage::FieldResult {
                request,
                accepted: true,
                version,
                ..
            } = r
            {
                if let Some(name) = requests.get(*request as usize) {
                    let v = (!version.is_empty()).then(|| version.clone());
                    last_write.insert(name.as_str(), v);
                }
            }
        }
        for (name, version) in last_write {
            let now = self.room.document().field(name).map(|f| f.version);
            if version.is_some() {
                assert_eq!(
                    now, version,
                    "register {name}: an accepted write is not current"
                );
            }
        }
        self.accepted(&out);
        self.deliver(&out, Some(conn));
        if out.error.is_some() {
            // The transport closes the connection.
            self.leave(conn);
        }
        check_round_trip(self.room.document());
        self.check_memory("handle");
    }

    /// Delivers the frames of `out` to the client replicas and presence mirrors.
    fn deliver(&mut self, out: &Output, sender: Option<ConnId>) {
        for m in &out.messages {
            let msg = frames::parse_server_frame(&m.frame).expect("well-formed frame");
            for (id, c) in self.clients.iter_mut() {
                let to_me = match m.to {
                    To::One(x) => x == *id,
                    To::All => true,
                    To::AllExcept(x) => x != *id,
                };
                if !to_me {
                    continue;
                }
                if matches!(
                    msg,
                    ServerMessage::Notice { .. } | ServerMessage::Stateless(_)
                ) {
                    assert!(c.info.extensions, "a tandem message to a stock client");
                }
                if let Some((outbound, _)) = &mut c.outbound {
                    check_hocuspocus(outbound, &m.frame, &msg);
                }
                match &msg {
                    ServerMessage::Step1(sv) => c.server_sv = Some(sv.clone()),
                    ServerMessage::Step2(update) | ServerMessage::Update(update) => {
                        match c.replica.apply_update(update, None) {
                            Ok(_) => {}
                            // Another connection's update claimed this replica's client id
                            // (real ids are random): the replica cannot follow the room.
                            Err(DocumentError::OwnClientId(_)) => c.tainted = true,
                            // It holds what the room did not take (a corrupted frame sent its
                            // own blocks with other content): the room's copy may conflict.
                            Err(_) if c.tainted => {}
                            Err(e) => {
                                panic!("a client replica refused an update the room sent: {e}")
                            }
                        }
                        if matches!(msg, ServerMessage::Step2(_)) {
                            c.synced = true;
                        }
                    }
                    ServerMessage::Awareness(entries) => c.mirror.apply(entries),
                    _ => {}
                }
                let _ = sender;
            }
        }
    }

    fn check_final(&self) {
        let room_doc = self.room.document();
        let room_texts = nonempty(room_doc.texts());
        let room_fields = room_doc.fields();
        let room_presence: BTreeMap<u64, (u32, String)> = presence(&self.room)
            .into_iter()
            .filter(|(id, _)| *id != SERVER_CLIENT)
            .filter_map(|(id, (clock, data))| data.map(|d| (id, (clock, d.to_string()))))
            .collect();
        self.check_storage();
        for (conn, c) in &self.clients {
            // A client's own state is what it set, before the room stamped it.
            let own = c.replica.client_id();
            let mut seen = c.mirror.present();
            seen.remove(&SERVER_CLIENT);
            seen.remove(&own);
            let mut expected = room_presence.clone();
            expected.remove(&own);
            if !c.presence_tainted {
                assert_eq!(
                    seen, expected,
                    "connection {conn} sees other presence than the room"
                );
            }
            if !c.synced || c.tainted || !c.held.is_empty() {
                continue;
            }
            assert_eq!(
                nonempty(c.replica.texts()),
                room_texts,
                "connection {conn}'s replica has other texts than the room"
            );
            assert_eq!(
                c.replica.fields(),
                room_fields,
                "connection {conn}'s replica has other registers than the room"
            );
        }
    }

    /// A Hocuspocus connection sends `msgs`, one frame each (as the provider does), the first
    /// one corrupted by `corrupt`.
    fn send_hocuspocus(&mut self, conn: ConnId, msgs: &[Msg], corrupt: Option<(u16, u8)>) {
        for (i, msg) in msgs.iter().enumerate() {
            if !self.clients.contains_key(&conn) {
                // Refused meanwhile: the transport drops the document's messages.
                return;
            }
            let built = self.build(conn, std::slice::from_ref(msg));
            if built.frame.is_empty() {
                continue;
            }
            // The document's name, then the y-websocket message (a stateless message in the
            // dialect's own form).
            let mut w = Writer::new();
            w.var_str(DOC);
            match (
                msg,
                built
                    .frame
                    .strip_prefix(&[MSG_TANDEM as u8, TANDEM_STATELESS as u8]),
            ) {
                (Msg::Stateless(_), Some(payload)) => w.var_u64(hocuspocus::STATELESS).raw(payload),
                _ => w.raw(&built.frame),
            };
            let mut frame = w.finish();
            let mut corrupted = false;
            if let (0, Some((pos, x))) = (i, corrupt) {
                let at = usize::from(pos) % frame.len();
                frame[at] ^= x | 1;
                corrupted = true;
            }
            let stock = !corrupted && !built.squatted && msg.is_stock(true);
            let expect = (!corrupted).then_some(&built.frame[..]);
            let taint = built.taint || corrupted;
            self.hocuspocus_frame(conn, &frame, expect, &built.requests, taint);
            if stock {
                assert!(
                    self.clients.contains_key(&conn),
                    "a message a stock provider sends got its document refused: {msg:?}"
                );
            }
        }
    }

    /// A frame in the Hocuspocus dialect from `conn`, through the codec as the transport does;
    /// `expect` is the y-websocket message it carries, when known.
    fn hocuspocus_frame(
        &mut self,
        conn: ConnId,
        frame: &[u8],
        expect: Option<&[u8]>,
        requests: &[String],
        taint: bool,
    ) {
        // The replica made its edit whether or not the frame reaches the room (a corrupted
        // name sends it to another document).
        if taint {
            if let Some(c) = self.clients.get_mut(&conn) {
                c.tainted = true;
            }
        }
        let body = match ClientFrame::parse(frame) {
            Ok(ClientFrame::Document { name, body }) if name == DOC => body,
            // A pong, or another document (its messages wait for its Auth).
            Ok(_) => return,
            // No document to charge it to: the socket closes.
            Err(_) => return self.leave(conn),
        };
        let message = match Message::parse(body) {
            Ok(message) => message,
            // The document is refused on this socket.
            Err(_) => return self.leave(conn),
        };
        let Some(room) = message.room_frame() else {
            if message == Message::Close {
                self.leave(conn);
            }
            return;
        };
        if let Some(sent) = expect {
            let sent: Vec<u8> = match sent.split_first() {
                // A SyncReply reaches the room as a Sync.
                Some((&t, rest)) if u64::from(t) == hocuspocus::SYNC_REPLY => {
                    [&[hocuspocus::SYNC as u8][..], rest].concat()
                }
                _ => sent.to_vec(),
            };
            assert_eq!(
                &room[..],
                &sent[..],
                "the room got another message than was sent"
            );
        }
        let room = room.into_owned();
        // Whether a stock provider sent it is checked by the caller (the document stays open).
        self.send(conn, &[&room], requests, taint, false);
    }

    /// The server acknowledges `forward` more updates of Hocuspocus connection `conn`.
    fn ack(&mut self, conn: ConnId, forward: u64) {
        let Some((outbound, acked)) = self
            .clients
            .get_mut(&conn)
            .and_then(|c| c.outbound.as_mut())
        else {
            return;
        };
        let count = *acked + forward;
        let mut out = Vec::new();
        outbound
            .translate(&ack_frame(count, 1 + count), &mut out)
            .expect("an ack translates");
        *acked = count;
        let saved = hocuspocus::encode(DOC, Reply::SyncStatus(true));
        assert_eq!(
            out.len() as u64,
            forward,
            "one SyncStatus per update acknowledged"
        );
        assert!(out.iter().all(|f| *f == saved));
    }

    /// Builds the frame for `msgs` from `conn`.
    fn build(&mut self, conn: ConnId, msgs: &[Msg]) -> Built {
        let mut w = Writer::new();
        let mut requests = Vec::new();
        let mut taint = false;
        let mut squatted = false;
        let current_version = |room: &Room, name: &str| -> String {
            room.document()
                .field(name)
                .map(|f: FieldValue| f.version)
                .unwrap_or_default()
        };
        for msg in msgs {
            let Some(c) = self.clients.get_mut(&conn) else {
                // Not joined: any shape will do, the room must refuse it.
                frames::query_awareness_msg(&mut w);
                continue;
            };
            let read_only = c.info.role == Role::Read;
            match msg {
                Msg::Step1 => frames::sync_msg(&mut w, SYNC_STEP1, &c.replica.state_vector()),
                Msg::Step1Raw(b) => frames::sync_msg(&mut w, SYNC_STEP1, b),
                Msg::Step2Reply => {
                    if let Some(sv) = &c.server_sv {
                        if let Ok(diff) = c.replica.diff(sv) {
                            frames::sync_msg(&mut w, SYNC_STEP2, &diff);
                        }
                    }
                }
                Msg::Edit {
                    field,
                    index,
                    delete,
                    text,
                    as_step2,
                    hold,
                } => {
                    let field = FIELDS[usize::from(*field) % FIELDS.len()];
                    let len = c.replica.text_len(field);
                    let index = u32::from(*index) % (len + 1);
                    let delete = u32::from(*delete) % (len - index + 1);
                    let user = c.info.user.clone().unwrap_or_default();
                    if let Ok(update) = c.replica.edit(&user, field, index, delete, text) {
                        if *hold {
                            c.held.push(update);
                        } else {
                            let kind = if *as_step2 { SYNC_STEP2 } else { SYNC_UPDATE };
                            frames::sync_msg(&mut w, kind, &update);
                            taint |= read_only;
                        }
                    }
                }
                Msg::ReleaseHeld(pick) => {
                    if !c.held.is_empty() {
                        let update = c.held.remove(usize::from(*pick) % c.held.len());
                        frames::sync_msg(&mut w, SYNC_UPDATE, &update);
                        taint |= read_only;
                    }
                }
                Msg::Embed { field, index } => {
                    let field = FIELDS[usize::from(*field) % FIELDS.len()];
                    let doc = c.replica.doc().clone();
                    let text = doc.get_or_insert_text(field);
                    let update = {
                        let mut txn = doc.transact_mut();
                        let len = text.len(&txn);
                        let mut embed = std::collections::HashMap::new();
                        embed.insert("image".to_owned(), yrs::Any::from("x.png"));
                        text.insert_embed(&mut txn, u32::from(*index) % (len + 1), embed);
                        txn.encode_update_v1()
                    };
                    frames::sync_msg(&mut w, SYNC_UPDATE, &update);
                    taint |= read_only;
                }
                Msg::MapSet { root, key, value } => {
                    let root = MAP_ROOTS[usize::from(*root) % MAP_ROOTS.len()];
                    let key = match key {
                        MapKey::Register {
                            name,
                            wall,
                            counter,
                            client,
                        } => format!(
                            "{}#{wall}-{counter}-{client}",
                            REGISTERS[usize::from(*name) % REGISTERS.len()]
                        ),
                        MapKey::Raw(k) => k.clone(),
                    };
                    let value: yrs::Any = match value {
                        MapValue::Entry {
                            name,
                            value,
                            deleted,
                            wall,
                            counter,
                            client,
                        } => {
                            let v: serde_json::Value =
                                serde_json::from_str(&value.to_json()).unwrap_or_default();
                            serde_json::json!({
                                "name": REGISTERS[usize::from(*name) % REGISTERS.len()],
                                "value": v,
                                "deleted": deleted,
                                "wall": wall,
                                "counter": counter,
                                "client": client,
                                "author": c.info.user,
                            })
                            .to_string()
                            .into()
                        }
                        MapValue::Raw(s) => s.as_str().into(),
                        MapValue::Number(n) => (*n).into(),
                    };
                    let doc = c.replica.doc().clone();
                    let map = doc.get_or_insert_map(root);
                    let update = {
                        let mut txn = doc.transact_mut();
                        map.insert(&mut txn, key, value);
                        txn.encode_update_v1()
                    };
                    frames::sync_msg(&mut w, SYNC_UPDATE, &update);
                    taint |= read_only;
                }
                Msg::UpdateRaw { as_step2, bytes } => {
                    let kind = if *as_step2 { SYNC_STEP2 } else { SYNC_UPDATE };
                    frames::sync_msg(&mut w, kind, bytes);
                }
                Msg::OwnState(state) => {
                    let own = c.replica.client_id();
                    // Another connection took this id first (it guessed it): refusing is right.
                    squatted |= self.owners.get(&own).is_some_and(|o| *o != conn);
                    let clock = c.mirror.clock_of(own).saturating_add(1);
                    let entry = AwarenessEntry {
                        client: own,
                        clock,
                        json: state_json(state),
                    };
                    // A stock client's own state is in its own view at once.
                    c.mirror.apply(std::slice::from_ref(&entry));
                    frames::awareness_msg(&mut w, &[entry]);
                }
                Msg::Forward(picks) => {
                    let known = c.mirror.entries();
                    if !known.is_empty() {
                        let entries: Vec<AwarenessEntry> = picks
                            .iter()
                            .map(|p| known[usize::from(*p) % known.len()].clone())
                            .collect();
                        frames::awareness_msg(&mut w, &entries);
                    }
                }
                Msg::TimeoutRemoval(pick) => {
                    let known = c.mirror.present();
                    if let Some((&client, &(clock, _))) =
                        known.iter().nth(usize::from(*pick) % known.len().max(1))
                    {
                        let entry = AwarenessEntry {
                            client,
                            clock: clock.saturating_add(1),
                            json: "null".to_owned(),
                        };
                        c.mirror.apply(std::slice::from_ref(&entry));
                        c.presence_tainted = true;
                        frames::awareness_msg(&mut w, &[entry]);
                    }
                }
                Msg::Awareness(entries) => {
                    let own = c.replica.client_id();
                    let known = c.mirror.present();
                    let entries: Vec<AwarenessEntry> = entries
                        .iter()
                        .map(|e| {
                            let client = match e.client {
                                AwClient::Own => own,
                                AwClient::Small(n) => 1 + u64::from(n % 8),
                                AwClient::Any(n) => n,
                            };
                            let clock_known = known.get(&client).map(|(c, _)| *c).unwrap_or(0);
                            let clock = match e.clock {
                                AwClock::Next => clock_known.saturating_add(1),
                                AwClock::Same => clock_known,
                                AwClock::Raw(n) => n,
                            };
                            let json = state_json(&e.state);
                            AwarenessEntry {
                                client,
                                clock,
                                json,
                            }
                        })
                        .collect();
                    frames::awareness_msg(&mut w, &entries);
                }
                Msg::AwarenessRaw(b) => {
                    w.var_u64(tandem_engine::protocol::MSG_AWARENESS)
                        .var_bytes(b);
                }
                Msg::QueryAwareness => frames::query_awareness_msg(&mut w),
                Msg::Stateless(payload) => frames::stateless_msg(&mut w, payload),
                Msg::Auth { kind, reason } => frames::auth_msg(&mut w, u64::from(*kind), reason),
                Msg::SetField {
                    conditional,
                    delete,
                    name,
                    expected,
                    value,
                } => {
                    let name = REGISTERS[usize::from(*name) % REGISTERS.len()];
                    let expected = match expected {
                        Expected::Current => current_version(&self.room, name),
                        Expected::Raw(s) => s.clone(),
                    };
                    let flags = u64::from(*conditional) | (u64::from(*delete) << 1);
                    frames::set_field_msg(
                        &mut w,
                        requests.len() as u64,
                        flags,
                        name,
                        &expected,
                        &value.to_json(),
                    );
                    requests.push(name.to_owned());
                }
                Msg::Raw(b) => {
                    w.raw(b);
                }
            }
        }
        Built {
            frame: w.finish(),
            requests,
            taint,
            squatted,
        }
    }
}

/// What a Hocuspocus connection gets for a room frame (`msg`, decoded) is exactly what the
/// dialect says.
fn check_hocuspocus(outbound: &mut Outbound, frame: &[u8], msg: &ServerMessage) {
    let mut out = Vec::new();
    if let Err(e) = outbound.translate(frame, &mut out) {
        panic!("a room frame has no Hocuspocus form ({e}): {frame:?}");
    }
    let reply = |r: Reply<'_>| hocuspocus::encode(DOC, r);
    let expected = match msg {
        ServerMessage::Step1(_)
        | ServerMessage::Step2(_)
        | ServerMessage::Update(_)
        | ServerMessage::Awareness(_) => {
            let mut w = Writer::new();
            w.var_str(DOC).raw(frame);
            vec![w.finish()]
        }
        ServerMessage::Denied(_) => vec![reply(Reply::SyncStatus(false))],
        ServerMessage::Notice { code, .. } if *code == NOTICE_NOTHING_NEW => {
            vec![reply(Reply::SyncStatus(true))]
        }
        ServerMessage::Stateless(payload) => vec![reply(Reply::Stateless(payload))],
        ServerMessage::Notice { .. } | ServerMessage::FieldResult { .. } => Vec::new(),
        ServerMessage::Ack { .. } => panic!("the room sent an ack itself"),
    };
    assert_eq!(out, expected, "the Hocuspocus form of {msg:?}");
}

/// The JSON text of an awareness state spec.
fn state_json(state: &AwState) -> String {
    match state {
        AwState::Null => "null".to_owned(),
        AwState::Presence {
            user,
            typing,
            viewing,
            cursor,
        } => {
            let mut s = serde_json::json!({
                "user": {"id": USERS[usize::from(*user) % USERS.len()],
                         "name": "N", "color": "#30bced"},
                "viewing": viewing,
                "lastActive": 1_700_000_000_000u64,
                "typing": typing.map(|t| FIELDS[usize::from(t) % FIELDS.len()]),
            });
            if let Some((client, clock)) = cursor {
                let pos = serde_json::json!({
                    "tname": "description",
                    "item": {"client": client, "clock": clock},
                    "assoc": 0,
                });
                s["cursors"] = serde_json::json!({
                    "description": {"anchor": pos, "head": pos}
                });
            }
            s.to_string()
        }
        AwState::Json(s) => s.clone(),
    }
}

/// `FUZZ_TRACE=1` prints every action (to turn a crash into a regression test).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn conn_id(n: u8) -> ConnId {
    ConnId::from(n % CONNS)
}

/// Frame script: records `[op << 4 | conn][len: u16 LE][len bytes]` until the input ends.
/// Ops: 0 frame (joining as a writer first if needed), 1 frame (joining read-only first),
/// 2 leave, 3 tick by `len` ms, 4 join with extensions (writer), 5 a Hocuspocus frame (joining
/// as a Hocuspocus writer first).
fn frame_script(h: &mut Harness, mut data: &[u8]) {
    while data.len() >= 3 {
        let op = data[0] >> 4;
        let conn = conn_id(data[0] & 0x0f);
        let len = usize::from(u16::from_le_bytes([data[1], data[2]]));
        data = &data[3..];
        if trace() {
            eprintln!(
                "op {op} conn {conn} len {len}: {:?}",
                &data[..len.min(data.len())]
            );
        }
        match op {
            0 | 1 => {
                let len = len.min(data.len());
                let (frame, rest) = data.split_at(len);
                data = rest;
                h.join(conn, op == 0, false, conn as u8, false, false);
                h.send(conn, &[frame], &[], false, false);
            }
            2 => h.leave(conn),
            3 => h.tick(len as u64),
            5 => {
                let len = len.min(data.len());
                let (frame, rest) = data.split_at(len);
                data = rest;
                h.join(conn, true, false, conn as u8, false, true);
                h.hocuspocus_frame(conn, frame, None, &[], false);
            }
            _ => h.join(conn, true, true, conn as u8, true, false),
        }
    }
}

fn structured(h: &mut Harness, data: &[u8]) {
    let mut u = Unstructured::new(data);
    for _ in 0..MAX_ACTIONS {
        if u.is_empty() {
            break;
        }
        let Ok(action) = Action::arbitrary(&mut u) else {
            break;
        };
        if trace() {
            eprintln!("{action:?}");
        }
        match action {
            Action::Join {
                conn,
                writer,
                extensions,
                user,
                named,
                hocuspocus,
            } => h.join(conn_id(conn), writer, extensions, user, named, hocuspocus),
            Action::Ack { conn, forward } => h.ack(conn_id(conn), u64::from(forward)),
            Action::HttpEdit {
                field,
                index,
                delete,
                text,
                anywhere,
            } => {
                let field = FIELDS[usize::from(field) % FIELDS.len()];
                let len = h.room.document().text_len(field);
                let (index, delete) = if anywhere {
                    (u32::from(index), u32::from(delete))
                } else {
                    let index = u32::from(index) % (len + 1);
                    (index, u32::from(delete) % (len - index + 1))
                };
                h.http(|room, now| room.edit_text("http", field, index, delete, &text, now));
            }
            Action::HttpUpdate { conn, pick, raw } => {
                let update = match raw {
                    Some(bytes) => Some(bytes),
                    None => h.clients.get_mut(&conn_id(conn)).and_then(|c| {
                        (!c.held.is_empty())
                            .then(|| c.held.remove(usize::from(pick) % c.held.len()))
                    }),
                };
                if let Some(update) = update {
                    h.http(|room, now| room.apply_update(&update, Some("http"), now));
                }
            }
            Action::Compact => h.compact(),
            Action::Feed(on) => h.set_feed(on),
            Action::Leave { conn } => h.leave(conn_id(conn)),
            Action::Tick { advance_ms } => h.tick(u64::from(advance_ms)),
            Action::Send {
                conn,
                msgs,
                corrupt,
            } if h
                .clients
                .get(&conn_id(conn))
                .is_some_and(|c| c.outbound.is_some()) =>
            {
                h.send_hocuspocus(conn_id(conn), &msgs, corrupt);
            }
            Action::Send {
                conn,
                msgs,
                corrupt,
            } => {
                let conn = conn_id(conn);
                let Built {
                    mut frame,
                    mut requests,
                    mut taint,
                    squatted,
                } = h.build(conn, &msgs);
                let mut stock = !squatted && msgs.iter().all(|m| m.is_stock(false));
                if let Some((pos, x)) = corrupt {
                    if !frame.is_empty() {
                        let i = usize::from(pos) % frame.len();
                        frame[i] ^= x | 1;
                        taint = true;
                        stock = false;
                        // Names and request ids may be corrupted too.
                        requests.clear();
                    }
                }
                if trace() {
                    eprintln!("frame {frame:?}");
                }
                h.send(conn, &[&frame], &requests, taint, stock);
            }
            Action::Burst { conn, msgs } => {
                let conn = conn_id(conn);
                let mut frames = Vec::new();
                let (mut taint, mut stock) = (false, true);
                for msg in &msgs {
                    let built = h.build(conn, std::slice::from_ref(msg));
                    taint |= built.taint;
                    stock &= !built.squatted && msg.is_stock(false);
                    // Request ids count within a frame: register writes are not checked here.
                    if !built.frame.is_empty() {
                        frames.push(built.frame);
                    }
                }
                if !frames.is_empty() {
                    let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
                    h.send(conn, &frames, &[], taint, stock);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(data.len());
    // The server turns the change feed on while SSE streams follow the document.
    h.set_feed(mode & 2 == 0);
    if mode == 0 {
        frame_script(&mut h, rest);
    } else {
        structured(&mut h, rest);
    }
    h.check_final();
    // Everything the room held goes away with it.
    drop(h);
});
