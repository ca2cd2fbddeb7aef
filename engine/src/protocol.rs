//! The y-websocket protocol, plus tandem's extensions, as a sans-IO state machine.
//!
//! A [`Room`] holds one document, its awareness (presence) states and the connections attached
//! to it. The transport feeds it frames ([`Room::handle`]) and connection events
//! ([`Room::join`], [`Room::leave`], [`Room::tick`]) and sends the [`Outgoing`] frames it gets
//! back. Each broadcast frame is encoded once and shared (`Bytes`).
//!
//! # Messages (lib0 encoding, several may follow each other in one frame)
//!
//! | type | payload |
//! | --- | --- |
//! | 0 sync | 0 step1 `varBytes(state vector)`, 1 step2 `varBytes(update)`, 2 update `varBytes(update)` |
//! | 1 awareness | `varBytes(awareness update)` |
//! | 2 auth | 0 permission denied `varString(reason)` (server to client only) |
//! | 3 query awareness | — |
//! | 100 tandem | see below; only exchanged with connections that asked for extensions |
//!
//! tandem extension messages (`100`, then a `varUint` sub-type):
//!
//! | sub-type | direction | payload |
//! | --- | --- | --- |
//! | 0 ack | server → client | `varUint(count)`, `varUint(sid)`: the first `count` updates this connection sent are durable, the last of them at sequence number `sid` |
//! | 1 set field | client → server | `varUint(request)`, `varUint(flags)` (bit 0: conditional, bit 1: delete), `varString(name)`, `varString(expected version, "" = unset)`, `varString(value JSON)` |
//! | 2 field result | server → client | `varUint(request)`, `varUint(accepted 0/1)`, `varString(version)`, `varString(current value JSON, "null" when unset)` |
//! | 3 notice | server → client | `varUint(code)`, `varString(reason)`: the server set aside something this connection sent, without closing it; codes below |
//! | 4 stateless | both | `varString(payload)`: an application message, not part of the document; relayed to every other connection that receives them (see below) |
//!
//! Notice codes: [`NOTICE_AWARENESS_TOO_LARGE`] (1), an awareness state over the room's size
//! limit was dropped, neither stored nor relayed; [`NOTICE_PENDING_FULL`] (2), the part of an
//! update that would wait for missing dependencies was dropped because too many bytes wait
//! already (see [`Room::handle`]); [`NOTICE_NOTHING_NEW`] (3), an update from a read-only
//! connection held nothing the document lacks, so nothing was refused (nor stored). Clients
//! should ignore codes they do not know.
//!
//! # Stateless messages
//!
//! A stateless message (tandem message 4) is relayed as it came, to every other connection of
//! the room whose [`ConnInfo::stateless`] is set (clients that said they understand it: the
//! Hocuspocus dialect's connections); nothing of it is stored. Any connection may send one, a
//! read-only one too (it changes nothing). Stock y-websocket clients have no such message and
//! never receive one.
//!
//! # Limits without closing
//!
//! Stock y-websocket clients treat close codes 4400–4499 as permanent and never reconnect, so
//! the limits an honest client can reach do not close its connection: an awareness state over
//! [`Limits::max_awareness_state`] is dropped ([`Output::dropped_awareness`] counts it), and
//! an update that does not fit in [`Limits::max_pending`] is resynced in place
//! ([`Output::dropped_updates`]; see [`Room::handle`]).
//!
//! # Presence identity
//!
//! A connection whose [`ConnInfo`] has both a `user` and a `name` (an authenticated one) cannot
//! appear as anyone else: before its awareness states are stored or relayed,
//! [`stamp_identity`] sets `user.id` and `user.name` of each state to its own, keeping every
//! other member (`user.color`, cursors, …). A state that is not a JSON object is wrapped as
//! `{"user": {...}, "value": <the state>}`, so every state names its real author; `null`
//! (removal) is left alone. Connections without a name (open development mode) are not
//! stamped: their states are relayed as sent.
//!
//! # Several nodes
//!
//! Several server nodes may serve one document, each with its own `Room` holding its own
//! (local) connections; presence crosses nodes through the transport. Every input's
//! [`Output::awareness_out`] holds the awareness entries of local connections it changed (as
//! an awareness update payload), which the transport publishes to the other nodes; what
//! another node publishes comes in through [`Room::remote_awareness`], tagged with an `origin`
//! id naming that node. Remote states are stored and shown like local ones (views, joiners'
//! greeting, expiry) and relayed to every local connection, but never appear in
//! `awareness_out`, so nodes do not echo each other. Neither side of a node can change the
//! other's states: entries of another node for an id a local connection owns are ignored, and
//! a newer state from a local connection for an id another node holds takes it over (the
//! client moved here; its state is stamped with this connection's identity), while relays and
//! removals of it are skipped. When a node is gone, [`Room::remove_origin`] drops its states;
//! [`Room::local_awareness`] gives the local states to publish again (after the transport
//! reconnects, or to a node that asks). Remote states are not stamped again: the node that
//! owns the connection stamped them.

use crate::document::{self, Bounded, Change, Document, WhenFull, EMPTY_UPDATE};
use crate::error::{DecodeError, ProtocolError};
use crate::presence::Presence;
use crate::register::FieldValue;
use crate::wire::{Reader, Writer};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::ClientID;

/// Top-level message: document sync.
pub const MSG_SYNC: u64 = 0;
/// Top-level message: awareness update.
pub const MSG_AWARENESS: u64 = 1;
/// Top-level message: authentication.
pub const MSG_AUTH: u64 = 2;
/// Top-level message: request for every awareness state.
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Top-level message: tandem extension.
pub const MSG_TANDEM: u64 = 100;
/// Sync sub-message: state vector.
pub const SYNC_STEP1: u64 = 0;
/// Sync sub-message: reply to step 1.
pub const SYNC_STEP2: u64 = 1;
/// Sync sub-message: incremental update.
pub const SYNC_UPDATE: u64 = 2;
/// tandem sub-message: durability acknowledgement.
pub const TANDEM_ACK: u64 = 0;
/// tandem sub-message: register write request.
pub const TANDEM_SET_FIELD: u64 = 1;
/// tandem sub-message: register write result.
pub const TANDEM_FIELD_RESULT: u64 = 2;
/// tandem sub-message: notice of something set aside without closing the connection.
pub const TANDEM_NOTICE: u64 = 3;
/// tandem sub-message: a stateless application message, relayed to the room's other
/// connections that receive them.
pub const TANDEM_STATELESS: u64 = 4;
/// Notice code: an awareness state over [`Limits::max_awareness_state`] was dropped.
pub const NOTICE_AWARENESS_TOO_LARGE: u64 = 1;
/// Notice code: the part of an update that would wait for missing dependencies was dropped,
/// as [`Limits::max_pending`] bytes wait already; after a sync update, a sync step 1 follows.
pub const NOTICE_PENDING_FULL: u64 = 2;
/// Notice code: an update from a read-only connection held nothing the document lacks (a
/// reconnecting viewer's step 2): nothing was refused, and nothing stored.
pub const NOTICE_NOTHING_NEW: u64 = 3;

/// Identifies a connection within a room; chosen by the transport.
pub type ConnId = u64;

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sync and presence only; updates are refused.
    Read,
    /// Full access to the document.
    Write,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Access level.
    pub role: Role,
    /// Authenticated user id, used as the author of this connection's changes.
    pub user: Option<String>,
    /// Whether the client asked for tandem's extension messages.
    pub extensions: bool,
    /// Authenticated display name. With `user`, it is stamped on this connection's awareness
    /// states (see [`stamp_identity`]); `None` relays states as sent.
    pub name: Option<String>,
    /// Whether the client receives the stateless messages other connections send (tandem
    /// message 4; see the module docs). Only for clients that understand that message.
    pub stateless: bool,
}

/// Bounds the room enforces on what clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, bytes.
    pub max_frame: usize,
    /// Largest awareness state (JSON) accepted, bytes; a larger one is dropped.
    pub max_awareness_state: usize,
    /// Most awareness client ids one connection may own.
    pub max_client_ids: usize,
    /// Most bytes of updates waiting for missing dependencies (see [`Room::handle`] for what
    /// happens to an update that does not fit).
    pub max_pending: usize,
    /// Largest estimated stored size of the document, bytes (see [`Room::size_estimate`]).
    pub max_document: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 1 << 20,
            max_awareness_state: 8 << 10,
            max_client_ids: 16,
            max_pending: 1 << 20,
            max_document: 64 << 20,
        }
    }
}

/// Recipients of an outgoing frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// One connection.
    One(ConnId),
    /// Every connection in the room.
    All,
    /// Every connection but one.
    AllExcept(ConnId),
}

/// A frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Who gets it.
    pub to: To,
    /// The encoded frame, shared among recipients.
    pub frame: Bytes,
}

/// A document update the room accepted; the transport stores it and later acks it.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The connection it came from (`None` for server-side edits).
    pub conn: Option<ConnId>,
    /// Author of the update.
    pub author: Option<String>,
    /// The update, v1 encoding.
    pub update: Bytes,
    /// What it changed, when the document's change feed is on (see
    /// [`Document::set_change_feed`]); empty otherwise.
    pub changes: Vec<Change>,
}

/// Everything one input produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Frames to send.
    pub messages: Vec<Outgoing>,
    /// Updates to store, in order.
    pub accepted: Vec<Accepted>,
    /// Set when the connection must be closed; messages before the error were still handled.
    pub error: Option<ProtocolError>,
    /// Whether any awareness state changed.
    pub presence_changed: bool,
    /// Awareness states dropped for being over [`Limits::max_awareness_state`] (the
    /// connection stays open; one that asked for extensions got a notice).
    pub dropped_awareness: usize,
    /// Updates whose part waiting for missing dependencies was dropped, not queued nor
    /// stored, because it did not fit in [`Limits::max_pending`] (see [`Room::handle`]).
    pub dropped_updates: usize,
    /// The awareness entries of this room's own (local) connections that this input changed,
    /// as one awareness update payload (`varUint(count)`, then per entry `varUint(client id)`,
    /// `varUint(clock)`, `varString(state JSON)`: an awareness message without its type), for
    /// the transport to publish to the other nodes serving the document (see "Several nodes"
    /// in the module docs). It holds the entries [`Room::handle`] accepted (after identity
    /// stamping), the removals [`Room::leave`] broadcast and the local states [`Room::tick`]
    /// expired, exactly as broadcast to the connections; `None` when no local state changed.
    /// States of other nodes never appear in it.
    pub awareness_out: Option<Bytes>,
}

/// Outcome of a register write request.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldWrite {
    /// The write happened; the new state (`None` after a delete).
    Accepted(Option<FieldValue>),
    /// The expected version was stale; the current state.
    Rejected(Option<FieldValue>),
}

#[derive(Debug)]
struct Conn {
    info: ConnInfo,
    client_ids: Vec<u64>,
}

/// One document with its connections and presence.
pub struct Room {
    doc: Document,
    presence: Presence,
    now: u64,
    conns: HashMap<ConnId, Conn>,
    /// Awareness client ids claimed by a local connection.
    owners: HashMap<u64, ConnId>,
    /// Awareness client ids with a present state another node published, by that node's
    /// origin id (see [`Room::remote_awareness`]).
    remote: HashMap<u64, u64>,
    limits: Limits,
    /// Frames every joiner gets, encoded once per document revision.
    greeting: Greeting,
    /// The document's estimated stored size; `None` until first needed after the room was
    /// made or the document compacted (see [`Room::size_estimate`]).
    stored: Option<u64>,
    /// Whether [`Output::awareness_out`] is filled (see [`Room::set_publishing`]).
    publishing: bool,
}

/// The server's step 1 and the whole document as step 2, valid while the document's
/// revision is `revision`: a join storm encodes them once, not once per joiner.
#[derive(Default)]
struct Greeting {
    revision: Option<u64>,
    step1: Option<Bytes>,
    full: Option<Bytes>,
}

impl Greeting {
    fn check(&mut self, doc: &Document) {
        let revision = doc.revision();
        if self.revision != Some(revision) {
            *self = Greeting {
                revision: Some(revision),
                ..Greeting::default()
            };
        }
    }

    fn step1(&mut self, doc: &Document) -> Bytes {
        self.check(doc);
        self.step1
            .get_or_insert_with(|| sync_frame(SYNC_STEP1, &doc.state_vector()))
            .clone()
    }

    fn full(&mut self, doc: &Document) -> Bytes {
        self.check(doc);
        self.full
            .get_or_insert_with(|| sync_frame(SYNC_STEP2, &doc.encode_state()))
            .clone()
    }
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("doc", &self.doc)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Room {
    /// A room around `doc`.
    pub fn new(doc: Document, limits: Limits) -> Self {
        let presence =
            Presence::new(doc.doc().clone()).expect("Document always uses UTF-16 offsets");
        Room {
            doc,
            presence,
            now: 0,
            conns: HashMap::new(),
            owners: HashMap::new(),
            remote: HashMap::new(),
            limits,
            greeting: Greeting::default(),
            stored: None,
            publishing: true,
        }
    }

    /// Whether local presence changes are encoded into [`Output::awareness_out`] (on by
    /// default). A server with no other node to tell turns it off: nothing would read them.
    pub fn set_publishing(&mut self, on: bool) {
        self.publishing = on;
    }

    /// The document.
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// The document, for server-side reads that need `&mut` (change feed).
    pub fn document_mut(&mut self) -> &mut Document {
        &mut self.doc
    }

    /// The presence (awareness) states.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no connection is attached.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The room's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The document's estimated stored size in bytes, what [`Limits::max_document`] bounds: its
    /// encoded state when the room was made or last [compacted](Room::compacted) (encoded on
    /// first need, not before), plus the bytes of every update accepted since, empty updates
    /// aside. Between compactions it overestimates (deleted content and duplicates count), as
    /// an append-only log does.
    pub fn size_estimate(&mut self) -> u64 {
        let doc = &self.doc;
        *self
            .stored
            .get_or_insert_with(|| doc.encode_state().len() as u64)
    }

    /// Tells the room that the transport has replaced the stored updates by one snapshot of
    /// the document: the size estimate restarts from the encoded state, encoded on next need.
    pub fn compacted(&mut self) {
        self.stored = None;
    }

    /// Refuses a write of up to `incoming` bytes that would take the size estimate above
    /// [`Limits::max_document`]. Empty updates always pass (clients send one on every
    /// reconnect).
    fn admit(&mut self, incoming: usize) -> Result<(), ProtocolError> {
        if incoming <= EMPTY_UPDATE.len() {
            return Ok(());
        }
        let limit = self.limits.max_document;
        if self.size_estimate().saturating_add(incoming as u64) > limit {
            return Err(ProtocolError::DocumentTooLarge(limit));
        }
        Ok(())
    }

    /// Hands an accepted update over for storage and counts it in the size estimate.
    fn accept(&mut self, out: &mut Output, accepted: Accepted) {
        let bytes = accepted.update.len();
        if bytes > EMPTY_UPDATE.len() {
            if let Some(size) = &mut self.stored {
                *size = size.saturating_add(bytes as u64);
            }
        }
        out.accepted.push(accepted);
    }

    fn set_time(&mut self, now_ms: u64) {
        self.now = now_ms;
        self.doc.set_time(now_ms);
    }

    /// Attaches a connection. Returns the server's greeting to it: sync step 1 and every
    /// current awareness state.
    pub fn join(&mut self, conn: ConnId, info: ConnInfo, now_ms: u64) -> Output {
        self.set_time(now_ms);
        self.conns.insert(
            conn,
            Conn {
                info,
                client_ids: Vec::new(),
            },
        );
        let mut out = Output::default();
        out.messages.push(Outgoing {
            to: To::One(conn),
            frame: self.greeting.step1(&self.doc),
        });
        if let Some(frame) = self.full_awareness() {
            out.messages.push(Outgoing {
                to: To::One(conn),
                frame,
            });
        }
        out
    }

    /// Frames that bring a connection that missed messages back in sync: the whole document,
    /// the server's state vector and every awareness state.
    pub fn resync(&mut self, conn: ConnId) -> Vec<Outgoing> {
        let mut frames = vec![
            self.greeting.full(&self.doc),
            self.greeting.step1(&self.doc),
        ];
        frames.extend(self.full_awareness());
        frames
            .into_iter()
            .map(|frame| Outgoing {
                to: To::One(conn),
                frame,
            })
            .collect()
    }

    /// Detaches a connection; its awareness states are broadcast as removed.
    pub fn leave(&mut self, conn: ConnId, now_ms: u64) -> Output {
        self.set_time(now_ms);
        let mut out = Output::default();
        let Some(c) = self.conns.remove(&conn) else {
            return out;
        };
        for id in &c.client_ids {
            self.owners.remove(id);
        }
        let ids: Vec<ClientID> = c.client_ids.iter().map(|id| ClientID::new(*id)).collect();
        if let Ok(update) = self.presence.remove_clients(&ids, now_ms) {
            if !update.clients.is_empty() {
                let entries = sorted_entries(&update);
                out.presence_changed = true;
                out.messages.push(Outgoing {
                    to: To::All,
                    frame: awareness_frame(&entries),
                });
                if self.publishing {
                    out.awareness_out = Some(awareness_payload(&entries));
                }
            }
        }
        out
    }

    /// Periodic housekeeping: removes awareness states not renewed for
    /// [`PRESENCE_TIMEOUT_MS`](crate::presence::PRESENCE_TIMEOUT_MS), local and remote alike,
    /// and broadcasts their removal; the removals of local states are also in
    /// [`Output::awareness_out`]. A connection keeps the ids it claimed: its next renewal is
    /// accepted at once. A remote id is no longer counted as its node's.
    pub fn tick(&mut self, now_ms: u64) -> Output {
        self.set_time(now_ms);
        let mut out = Output::default();
        let expired = self.presence.expire(now_ms);
        for id in &expired {
            self.remote.remove(&id.get());
        }
        self.removed(&expired, &mut out);
        out
    }

    /// Broadcasts the removal of the awareness states of `ids` (already removed from the
    /// presence), and puts those of local connections in [`Output::awareness_out`].
    fn removed(&self, ids: &[ClientID], out: &mut Output) {
        if ids.is_empty() {
            return;
        }
        let Ok(update) = self.presence.update_for(ids) else {
            return;
        };
        let entries = sorted_entries(&update);
        out.presence_changed = true;
        out.messages.push(Outgoing {
            to: To::All,
            frame: awareness_frame(&entries),
        });
        let local: Vec<(u64, AwarenessUpdateEntry)> = entries
            .into_iter()
            .filter(|(id, _)| self.owners.contains_key(id))
            .collect();
        if self.publishing && !local.is_empty() {
            out.awareness_out = Some(awareness_payload(&local));
        }
    }

    /// Applies an awareness update payload (as in [`Output::awareness_out`]) that another node
    /// serving the document published; `origin` names that node (the transport maps node ids
    /// to numbers). See "Several nodes" in the module docs.
    ///
    /// Checked like a connection's awareness message: a payload over [`Limits::max_frame`] is
    /// refused with [`ProtocolError::FrameTooLarge`], one that does not decode with
    /// [`ProtocolError::Decode`] and one holding a state that is not JSON with
    /// [`ProtocolError::AwarenessNotJson`], and then nothing of it applies; a state over
    /// [`Limits::max_awareness_state`] is dropped ([`Output::dropped_awareness`]). Should the
    /// payload name a client id twice, its last entry counts.
    ///
    /// Entries follow the y-protocols clock rules (a state applies with a newer clock than the
    /// room knows; a removal also at the same clock), except that the room's own connections
    /// are out of reach: an entry for a client id a local connection claimed is ignored. A
    /// removal counts only from the node whose state it removes. An applied state makes its
    /// client id `origin`'s (until it is removed, expires, or [`Room::remove_origin`]), even if
    /// another node published it before (the client moved). Applied entries are broadcast to
    /// every local connection and set [`Output::presence_changed`] when they change a state;
    /// [`Output::awareness_out`] stays `None`.
    pub fn remote_awareness(
        &mut self,
        origin: u64,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Output, ProtocolError> {
        self.set_time(now_ms);
        if payload.len() > self.limits.max_frame {
            return Err(ProtocolError::FrameTooLarge {
                size: payload.len(),
                limit: self.limits.max_frame,
            });
        }
        let (entries, too_large) = decode_awareness(payload, self.limits.max_awareness_state)?;
        let mut out = Output {
            dropped_awareness: too_large.len(),
            ..Output::default()
        };
        let entries: BTreeMap<u64, AwarenessUpdateEntry> = entries.into_iter().collect();
        let me = self.presence.client_id().get();
        let mut accepted: Vec<(u64, AwarenessUpdateEntry)> = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            if id == me || self.owners.contains_key(&id) {
                continue;
            }
            let known = self
                .presence
                .awareness()
                .meta(ClientID::new(id))
                .map(|(c, _)| c);
            let newer = entry.clock > known.unwrap_or(0);
            let applies = if entry.json.trim() == "null" {
                self.remote.get(&id) == Some(&origin) && (newer || known == Some(entry.clock))
            } else {
                newer
            };
            if applies {
                accepted.push((id, entry));
            }
        }
        if accepted.is_empty() {
            return Ok(out);
        }
        let update = AwarenessUpdate {
            clients: accepted
                .iter()
                .map(|(id, e)| (ClientID::new(*id), e.clone()))
                .collect(),
        };
        let summary = self
            .presence
            .apply_update(update, now_ms)
            .map_err(|_| ProtocolError::AwarenessNotJson)?;
        for (id, entry) in &accepted {
            if entry.json.trim() == "null" {
                self.remote.remove(id);
            } else {
                self.remote.insert(*id, origin);
            }
        }
        out.presence_changed = summary.is_some();
        out.messages.push(Outgoing {
            to: To::All,
            frame: awareness_frame(&accepted),
        });
        Ok(out)
    }

    /// Removes every awareness state the node `origin` published (it died or left) and
    /// broadcasts the removal to every local connection, setting [`Output::presence_changed`].
    /// Unlike [`Room::leave`], the removal keeps each state's clock, as expiry does
    /// ([`Presence::expire_clients`](crate::presence::Presence::expire_clients)): the clients
    /// may be alive and come back through another node, and their very next renewal is then
    /// accepted. Nothing goes in [`Output::awareness_out`].
    pub fn remove_origin(&mut self, origin: u64, now_ms: u64) -> Output {
        self.set_time(now_ms);
        let mut out = Output::default();
        let ids: Vec<ClientID> = self
            .remote
            .iter()
            .filter(|(_, o)| **o == origin)
            .map(|(id, _)| ClientID::new(*id))
            .collect();
        self.remote.retain(|_, o| *o != origin);
        let removed = self.presence.expire_clients(&ids, now_ms);
        self.removed(&removed, &mut out);
        out
    }

    /// The present awareness states of local connections as one awareness update payload (as
    /// in [`Output::awareness_out`]), at their current clocks: what to publish again after the
    /// transport reconnects, or to a node that asks. `None` when there are none. A node that
    /// holds a state at that clock already ignores it.
    pub fn local_awareness(&self) -> Option<Bytes> {
        let ids: Vec<ClientID> = self
            .owners
            .keys()
            .map(|id| ClientID::new(*id))
            .filter(|id| self.presence.state(*id).is_some())
            .collect();
        if ids.is_empty() {
            return None;
        }
        let update = self.presence.update_for(&ids).ok()?;
        Some(awareness_payload(&sorted_entries(&update)))
    }

    /// Handles one frame from `conn` (which may hold several messages), in order. The first
    /// error ends the frame and is returned in [`Output::error`]; the messages before it stay
    /// applied.
    ///
    /// A sync step 2 or update that would take the document above [`Limits::max_document`]
    /// (see [`Room::size_estimate`]) is refused with [`ProtocolError::DocumentTooLarge`] before
    /// anything of it is applied; empty updates always pass. A read-only connection's updates
    /// are answered with "permission denied", whatever their size.
    ///
    /// # Updates waiting for missing dependencies
    ///
    /// An update whose dependencies have not all arrived waits in the document, up to
    /// [`Limits::max_pending`] bytes in all. When the part of a sync update or step 2 that
    /// would wait does not fit, the connection is resynced in place rather than closed: that
    /// part is dropped (neither queued nor stored), the part that is ready is applied and
    /// stored in the update's place (the empty update when none is, so the connection's ack
    /// count stays aligned), [`Output::dropped_updates`] counts it and a connection that asked
    /// for extensions gets a [`NOTICE_PENDING_FULL`] notice. After a sync update the sender
    /// also gets the room's sync step 1, which it answers with a step 2 holding everything the
    /// room lacks: the dropped part and the dependencies it waited for. A step 2 gets no step
    /// 1: it already holds everything its sender has beyond the room's state vector, so what
    /// of it waits depends on what its sender lacks too, and another round would only repeat
    /// it.
    pub fn handle(&mut self, conn: ConnId, frame: &[u8], now_ms: u64) -> Output {
        self.set_time(now_ms);
        let mut out = Output::default();
        self.handle_into(conn, frame, &mut out);
        out
    }

    fn handle_into(&mut self, conn: ConnId, frame: &[u8], out: &mut Output) {
        if frame.len() > self.limits.max_frame {
            out.error = Some(ProtocolError::FrameTooLarge {
                size: frame.len(),
                limit: self.limits.max_frame,
            });
            return;
        }
        if !self.conns.contains_key(&conn) {
            out.error = Some(ProtocolError::UnknownConnection);
            return;
        }
        let mut r = Reader::new(frame);
        // This connection's accepted awareness entries, the latest per client id.
        let mut published = BTreeMap::new();
        while !r.is_empty() {
            if let Err(e) = self.message(conn, &mut r, out, &mut published) {
                out.error = Some(e);
                break;
            }
        }
        if self.publishing && !published.is_empty() {
            let entries: Vec<(u64, AwarenessUpdateEntry)> = published.into_iter().collect();
            out.awareness_out = Some(awareness_payload(&entries));
        }
    }

    /// [`Room::handle`] for several frames of one connection, in order: what they produce is
    /// what handling them one by one produces, except that consecutive frames that are each
    /// one sync update ([`plain_update`]) from a writer are integrated in one transaction
    /// when the document allows it ([`Document::apply_run`]), and their changes then come
    /// with the run's last update. Stops at the first error, as the connection closes on it.
    pub fn handle_updates<F: AsRef<[u8]>>(
        &mut self,
        conn: ConnId,
        frames: &[F],
        now_ms: u64,
    ) -> Output {
        self.set_time(now_ms);
        let mut out = Output::default();
        // The author of a writer's runs, when runs can be made at all.
        let runs = match frames.len() > 1 && self.doc.takes_runs() {
            true => self.conns.get(&conn).filter(|c| c.info.role != Role::Read),
            false => None,
        }
        .map(|c| c.info.user.clone());
        let mut rest = frames;
        while let Some((first, tail)) = rest.split_first() {
            let done = match &runs {
                Some(author) => self.run(conn, author, rest, &mut out),
                None => 0,
            };
            if done == 0 {
                self.handle_into(conn, first.as_ref(), &mut out);
                rest = tail;
            } else {
                rest = &rest[done..];
            }
            if out.error.is_some() {
                break;
            }
        }
        out
    }

    /// Integrates as many of `frames` (plain updates from writer `conn`) as go in one run;
    /// returns how many frames it took, including one yrs refused (0: the first must go
    /// through [`Room::handle_into`]).
    fn run<F: AsRef<[u8]>>(
        &mut self,
        conn: ConnId,
        author: &Option<String>,
        frames: &[F],
        out: &mut Output,
    ) -> usize {
        let mut updates = Vec::with_capacity(frames.len());
        let mut incoming = 0usize;
        for frame in frames {
            let frame = frame.as_ref();
            let Some(update) = plain_update(frame).filter(|_| frame.len() <= self.limits.max_frame)
            else {
                break;
            };
            // Admitted together as they would be one by one (each counts in the estimate).
            if self.admit(incoming.saturating_add(update.len())).is_err() {
                break;
            }
            if update.len() > EMPTY_UPDATE.len() {
                incoming += update.len();
            }
            updates.push(update);
        }
        if updates.len() < 2 {
            return 0;
        }
        let run = self.doc.apply_run(&updates, author.as_deref());
        let done = run.changed.len();
        for (update, changed) in updates.iter().zip(run.changed) {
            self.take_update(out, conn, author.clone(), update, changed, Vec::new());
        }
        if let Some(last) = out.accepted.last_mut().filter(|_| done > 0) {
            last.changes = self.doc.take_changes();
        }
        match run.error {
            Some(e) => {
                out.error = Some(e.into());
                done + 1
            }
            None => done,
        }
    }

    /// An update from `conn` that went in: a changing one goes to the others, and every one
    /// is handed over for storage.
    fn take_update(
        &mut self,
        out: &mut Output,
        conn: ConnId,
        author: Option<String>,
        update: &[u8],
        changed: bool,
        changes: Vec<Change>,
    ) {
        // A changing update goes to the others in a frame made once; what is stored is the
        // update inside it (one copy of the bytes, not two).
        let update = if changed {
            let frame = sync_frame(SYNC_UPDATE, update);
            let stored = frame.slice(frame.len() - update.len()..);
            out.messages.push(Outgoing {
                to: To::AllExcept(conn),
                frame,
            });
            stored
        } else {
            Bytes::copy_from_slice(update)
        };
        // Stored even when it changed nothing, so the connection's ack count stays aligned
        // with the updates it sent.
        self.accept(
            out,
            Accepted {
                conn: Some(conn),
                author,
                update,
                changes,
            },
        );
    }

    fn message(
        &mut self,
        conn: ConnId,
        r: &mut Reader<'_>,
        out: &mut Output,
        published: &mut BTreeMap<u64, AwarenessUpdateEntry>,
    ) -> Result<(), ProtocolError> {
        match r.var_u64()? {
            MSG_SYNC => self.sync(conn, r, out),
            MSG_AWARENESS => {
                let payload = r.var_bytes()?;
                self.awareness_update(conn, payload, out, published)
            }
            MSG_AUTH => {
                // Clients have nothing to say here; read and ignore.
                r.var_u64()?;
                r.var_str()?;
                Ok(())
            }
            MSG_QUERY_AWARENESS => {
                if let Some(frame) = self.full_awareness() {
                    out.messages.push(Outgoing {
                        to: To::One(conn),
                        frame,
                    });
                }
                Ok(())
            }
            MSG_TANDEM => self.tandem(conn, r, out),
            other => Err(ProtocolError::UnknownMessage(other)),
        }
    }

    fn sync(
        &mut self,
        conn: ConnId,
        r: &mut Reader<'_>,
        out: &mut Output,
    ) -> Result<(), ProtocolError> {
        let kind = r.var_u64()?;
        match kind {
            SYNC_STEP1 => {
                let sv = r.var_bytes()?;
                // A new client's empty state vector gets the shared whole-document frame.
                let frame = if sv == [0] {
                    self.greeting.full(&self.doc)
                } else {
                    sync_frame(SYNC_STEP2, &self.doc.diff(sv)?)
                };
                out.messages.push(Outgoing {
                    to: To::One(conn),
                    frame,
                });
                Ok(())
            }
            SYNC_STEP2 | SYNC_UPDATE => {
                let update = r.var_bytes()?;
                let c = self
                    .conns
                    .get(&conn)
                    .ok_or(ProtocolError::UnknownConnection)?;
                if c.info.role == Role::Read {
                    // Validated too, so garbage is reported as such.
                    if self.doc.holds(update)? {
                        // Nothing refused: a viewer's step 2 after (re)connecting.
                        if c.info.extensions {
                            out.messages.push(Outgoing {
                                to: To::One(conn),
                                frame: notice_frame(
                                    NOTICE_NOTHING_NEW,
                                    "read-only access: the update held nothing new",
                                ),
                            });
                        }
                        return Ok(());
                    }
                    out.messages.push(Outgoing {
                        to: To::One(conn),
                        frame: permission_denied_frame("read-only access: updates are not applied"),
                    });
                    return Ok(());
                }
                let (author, extensions) = (c.info.user.clone(), c.info.extensions);
                self.admit(update.len())?;
                let bound = Some((self.limits.max_pending, WhenFull::DropWaiting));
                let bounded = self.doc.apply_bounded(update, author.as_deref(), bound)?;
                let trimmed: Option<Vec<u8>>;
                let (update, changed): (&[u8], bool) = match bounded {
                    Bounded::Applied(applied) => (update, applied.changed),
                    Bounded::Trimmed { ready, changed, .. } => {
                        self.resync_in_place(conn, kind, extensions, out);
                        trimmed = ready;
                        (trimmed.as_deref().unwrap_or(&EMPTY_UPDATE), changed)
                    }
                    // Not with `DropWaiting`; nothing was applied.
                    Bounded::Refused { .. } => {
                        self.resync_in_place(conn, kind, extensions, out);
                        (&EMPTY_UPDATE, false)
                    }
                };
                let changes = self.doc.take_changes();
                self.take_update(out, conn, author, update, changed, changes);
                Ok(())
            }
            other => Err(ProtocolError::UnknownSyncMessage(other)),
        }
    }

    /// Answers an update whose waiting part was dropped (see [`Room::handle`]).
    fn resync_in_place(&mut self, conn: ConnId, kind: u64, extensions: bool, out: &mut Output) {
        out.dropped_updates += 1;
        let step1 = kind == SYNC_UPDATE;
        if extensions {
            let reason = format!(
                "part of an update dropped: it waits for missing dependencies, and more than {} \
                 bytes would wait{}",
                self.limits.max_pending,
                if step1 {
                    "; answer the sync step 1 that follows"
                } else {
                    ""
                }
            );
            out.messages.push(Outgoing {
                to: To::One(conn),
                frame: notice_frame(NOTICE_PENDING_FULL, &reason),
            });
        }
        if step1 {
            out.messages.push(Outgoing {
                to: To::One(conn),
                frame: self.greeting.step1(&self.doc),
            });
        }
    }

    fn awareness_update(
        &mut self,
        conn: ConnId,
        payload: &[u8],
        out: &mut Output,
        published: &mut BTreeMap<u64, AwarenessUpdateEntry>,
    ) -> Result<(), ProtocolError> {
        let (entries, too_large) = decode_awareness(payload, self.limits.max_awareness_state)?;
        out.dropped_awareness += too_large.len();
        if self.conns.get(&conn).is_some_and(|c| c.info.extensions) {
            for (id, size) in too_large {
                let reason = format!(
                    "awareness state of client {id} dropped: {size} bytes exceed the limit of {}",
                    self.limits.max_awareness_state
                );
                out.messages.push(Outgoing {
                    to: To::One(conn),
                    frame: notice_frame(NOTICE_AWARENESS_TOO_LARGE, &reason),
                });
            }
        }
        // Ownership. Stock clients relay every awareness change they see, peers' states
        // included, so entries for ids this connection does not own are skipped when they
        // are relays (not newer than what the room knows, or removals). A newer state for an
        // id another connection, or another node, owns is an attempt to impersonate it: an
        // error. A newer state for an unowned id claims it.
        let mut accepted: Vec<(u64, AwarenessUpdateEntry)> = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            let is_null = entry.json.trim() == "null";
            let known = self
                .presence
                .awareness()
                .meta(ClientID::new(id))
                .map(|(c, _)| c);
            // An unknown client counts as clock 0 (y-protocols): its clock-0 state, which
            // stock clients ignore, is ignored here too.
            let newer = entry.clock > known.unwrap_or(0);
            // What every replica applies (y-protocols): a newer clock, or a removal at the
            // same clock. Relaying anything else would let a replica that never saw the
            // newer state (a late joiner) show a state the room has dropped.
            let applies = newer || (is_null && known == Some(entry.clock));
            // Whose the id is: this connection's (`Some(true)`), another connection's
            // (`Some(false)`), or no local connection's (`None`). An id another node holds is
            // taken over by a newer state from here: the client moved to this node (its old
            // node's removal may not have arrived yet), and its state is stamped with this
            // connection's identity all the same.
            let mine = self.owners.get(&id).map(|owner| *owner == conn);
            if mine.is_none() && newer && !is_null {
                self.remote.remove(&id);
            }
            match mine {
                Some(true) if applies => accepted.push((id, entry)),
                Some(true) => {}
                Some(false) if newer && !is_null => {
                    return Err(ProtocolError::AwarenessNotOwned(id))
                }
                Some(false) => {}
                None if newer && !is_null => {
                    let c = self
                        .conns
                        .get_mut(&conn)
                        .ok_or(ProtocolError::UnknownConnection)?;
                    if c.client_ids.len() >= self.limits.max_client_ids {
                        return Err(ProtocolError::TooManyClientIds);
                    }
                    c.client_ids.push(id);
                    self.owners.insert(id, conn);
                    accepted.push((id, entry));
                }
                None => {}
            }
        }
        if accepted.is_empty() {
            return Ok(());
        }
        if let Some(Conn {
            info:
                ConnInfo {
                    user: Some(user),
                    name: Some(name),
                    ..
                },
            ..
        }) = self.conns.get(&conn)
        {
            for (_, entry) in &mut accepted {
                if let Some(stamped) = stamp_identity(&entry.json, user, name) {
                    entry.json = Arc::from(stamped);
                }
            }
        }
        let update = AwarenessUpdate {
            clients: accepted
                .iter()
                .map(|(id, e)| (ClientID::new(*id), e.clone()))
                .collect(),
        };
        let summary = self
            .presence
            .apply_update(update, self.now)
            .map_err(|_| ProtocolError::AwarenessNotJson)?;
        out.presence_changed |= summary.is_some();
        // Echo to everyone, the sender included: stock clients count the echo as liveness.
        out.messages.push(Outgoing {
            to: To::All,
            frame: awareness_frame(&accepted),
        });
        published.extend(accepted);
        Ok(())
    }

    fn tandem(
        &mut self,
        conn: ConnId,
        r: &mut Reader<'_>,
        out: &mut Output,
    ) -> Result<(), ProtocolError> {
        match r.var_u64()? {
            TANDEM_SET_FIELD => {
                let request = r.var_u64()?;
                let flags = r.var_u64()?;
                let name = r.var_str()?;
                let expected = r.var_str()?;
                let value = r.var_str()?;
                let value: serde_json::Value =
                    serde_json::from_str(value).map_err(|_| DecodeError::InvalidJson)?;
                let c = self
                    .conns
                    .get(&conn)
                    .ok_or(ProtocolError::UnknownConnection)?;
                if c.info.role == Role::Read {
                    out.messages.push(Outgoing {
                        to: To::One(conn),
                        frame: permission_denied_frame(
                            "read-only access: field writes are refused",
                        ),
                    });
                    return Ok(());
                }
                let user = c.info.user.clone().unwrap_or_default();
                let expected = (flags & 1 != 0).then_some(expected);
                let value = (flags & 2 == 0).then_some(value);
                let now = self.now;
                let (result, more) = self.set_field(&user, name, value, expected, now)?;
                out.messages.extend(more.messages);
                out.accepted.extend(more.accepted);
                out.messages.push(Outgoing {
                    to: To::One(conn),
                    frame: field_result_frame(request, &result),
                });
                Ok(())
            }
            TANDEM_STATELESS => {
                let frame = stateless_frame(r.var_str()?);
                let to = self
                    .conns
                    .iter()
                    .filter(|(id, c)| **id != conn && c.info.stateless);
                out.messages.extend(to.map(|(id, _)| Outgoing {
                    to: To::One(*id),
                    frame: frame.clone(),
                }));
                Ok(())
            }
            other => Err(ProtocolError::UnknownTandemMessage(other)),
        }
    }

    /// Writes register `name` as `user` (`None` deletes it). With `expected`, the write only
    /// happens when the register's current version equals it (`""` expects the register to be
    /// unset); otherwise it is rejected with the current state. Decided here, by the server.
    /// A write whose update could take the document above [`Limits::max_document`] (counted at
    /// its largest encoding) is refused with [`ProtocolError::DocumentTooLarge`] before it is
    /// made.
    pub fn set_field(
        &mut self,
        user: &str,
        name: &str,
        value: Option<serde_json::Value>,
        expected: Option<&str>,
        now_ms: u64,
    ) -> Result<(FieldWrite, Output), ProtocolError> {
        self.set_time(now_ms);
        let current = self.doc.field(name);
        if let Some(expected) = expected {
            let current_version = current.as_ref().map(|f| f.version.as_str()).unwrap_or("");
            if expected != current_version {
                return Ok((FieldWrite::Rejected(current), Output::default()));
            }
        }
        let bound = self.doc.set_field_bound(user, name, value.as_ref())?;
        self.admit(bound)?;
        let (state, update) = self.doc.set_field(user, name, value)?;
        Ok((
            FieldWrite::Accepted(state),
            self.local_update(update, Some(user)),
        ))
    }

    /// Applies an update that arrived outside any connection (an HTTP write) by `author`:
    /// validated, applied, broadcast to every connection and handed over for storage. One that
    /// would take the document above [`Limits::max_document`] is refused with
    /// [`ProtocolError::DocumentTooLarge`], and one whose part waiting for missing dependencies
    /// would take them above [`Limits::max_pending`] with [`ProtocolError::TooManyPending`],
    /// before anything of it is applied.
    pub fn apply_update(
        &mut self,
        update: &[u8],
        author: Option<&str>,
        now_ms: u64,
    ) -> Result<Output, ProtocolError> {
        self.set_time(now_ms);
        self.admit(update.len())?;
        let bound = Some((self.limits.max_pending, WhenFull::Refuse));
        let applied = match self.doc.apply_bounded(update, author, bound)? {
            Bounded::Applied(applied) => applied,
            Bounded::Refused { pending } | Bounded::Trimmed { pending, .. } => {
                return Err(ProtocolError::TooManyPending(pending))
            }
        };
        Ok(self.hand_over(Bytes::copy_from_slice(update), author, applied.changed))
    }

    /// Applies an update that is already stored (committed by another server node sharing
    /// the document): it was checked and admitted where it was accepted, so no limit applies
    /// here (each node's size estimate is its own, and refusing a stored update would leave
    /// this replica behind the store). It is broadcast to every connection when it changed
    /// anything, and counts in the size estimate; [`Output::accepted`] holds it with the
    /// changes it made (not to be stored again).
    pub fn apply_stored(
        &mut self,
        update: &[u8],
        author: Option<&str>,
        now_ms: u64,
    ) -> Result<Output, ProtocolError> {
        self.set_time(now_ms);
        let applied = self.doc.apply_update(update, author)?;
        Ok(self.hand_over(Bytes::copy_from_slice(update), author, applied.changed))
    }

    /// Edits a text field on the server's replica as `user` (`index`/`delete` in UTF-16 units)
    /// and broadcasts the result. An edit whose update could take the document above
    /// [`Limits::max_document`] (counted at its largest encoding) is refused with
    /// [`ProtocolError::DocumentTooLarge`] before it is made.
    pub fn edit_text(
        &mut self,
        user: &str,
        field: &str,
        index: u32,
        delete: u32,
        insert: &str,
        now_ms: u64,
    ) -> Result<Output, ProtocolError> {
        self.set_time(now_ms);
        self.admit(document::edit_bound(field, delete, insert))?;
        let update = self.doc.edit(user, field, index, delete, insert)?;
        Ok(self.local_update(update, Some(user)))
    }

    /// Broadcasts and hands over for storage an update made on the server's own replica (it
    /// counts in the size estimate; being made already, it is not checked against the limit).
    pub fn local_update(&mut self, update: Vec<u8>, author: Option<&str>) -> Output {
        self.hand_over(Bytes::from(update), author, true)
    }

    /// An update applied outside any connection: broadcast to every connection (when it
    /// `changed` anything) and handed over for storage with the changes it made.
    fn hand_over(&mut self, update: Bytes, author: Option<&str>, changed: bool) -> Output {
        let mut out = Output::default();
        if changed {
            out.messages.push(Outgoing {
                to: To::All,
                frame: sync_frame(SYNC_UPDATE, &update),
            });
        }
        let changes = self.doc.take_changes();
        self.accept(
            &mut out,
            Accepted {
                conn: None,
                author: author.map(str::to_owned),
                update,
                changes,
            },
        );
        out
    }

    /// Every live awareness state as one frame, or `None` when there are none.
    fn full_awareness(&self) -> Option<Bytes> {
        let update = self.presence.full_update().ok()?;
        (!update.clients.is_empty()).then(|| awareness_update_frame(&update))
    }
}

/// The update a frame carries when the frame is exactly one sync update message (what a
/// client sends for each local transaction), for [`Room::handle_updates`].
pub fn plain_update(frame: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(frame);
    if r.var_u64().ok()? != MSG_SYNC || r.var_u64().ok()? != SYNC_UPDATE {
        return None;
    }
    let update = r.var_bytes().ok()?;
    r.is_empty().then_some(update)
}

/// Whether `frame` holds a conditional register write (tandem's set-field message with an
/// expected version). A server whose nodes share a document decides such a write under the
/// document's write lock, so it looks before handing the frame to [`Room::handle`]. A frame
/// that does not parse answers `false` (the room reports it).
pub fn holds_conditional_write(frame: &[u8]) -> bool {
    fn scan(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
        while !r.is_empty() {
            match r.var_u64()? {
                MSG_SYNC => {
                    r.var_u64()?;
                    r.var_bytes()?;
                }
                MSG_AWARENESS => {
                    r.var_bytes()?;
                }
                MSG_AUTH => {
                    r.var_u64()?;
                    r.var_str()?;
                }
                MSG_QUERY_AWARENESS => {}
                MSG_TANDEM => match r.var_u64()? {
                    TANDEM_SET_FIELD => {
                        r.var_u64()?;
                        if r.var_u64()? & 1 != 0 {
                            return Ok(true);
                        }
                        r.var_str()?;
                        r.var_str()?;
                        r.var_str()?;
                    }
                    TANDEM_STATELESS => {
                        r.var_str()?;
                    }
                    _ => return Ok(false),
                },
                _ => return Ok(false),
            }
        }
        Ok(false)
    }
    scan(&mut Reader::new(frame)).unwrap_or(false)
}

/// Encodes the answer to a register write request.
pub fn field_result_frame(request: u64, result: &FieldWrite) -> Bytes {
    let (accepted, state) = match result {
        FieldWrite::Accepted(s) => (1, s),
        FieldWrite::Rejected(s) => (0, s),
    };
    let (version, value) = match state {
        Some(f) => (f.version.as_str(), f.value.to_string()),
        None => ("", "null".to_owned()),
    };
    let mut w = Writer::new();
    w.var_u64(MSG_TANDEM)
        .var_u64(TANDEM_FIELD_RESULT)
        .var_u64(request)
        .var_u64(accepted)
        .var_str(version)
        .var_str(&value);
    Bytes::from(w.finish())
}

/// Stamps an awareness state (JSON) with its author: `user.id` = `user`, `user.name` = `name`,
/// other members kept. Returns `None` when the state needs no change: `null` (a removal), or
/// already carrying exactly this identity. A `user` member that is not an object is replaced;
/// a state that is not an object is wrapped as `{"user": {...}, "value": <state>}`. Input that
/// is not JSON is returned unchanged as `None` (the room refuses it before stamping).
pub fn stamp_identity(state: &str, user: &str, name: &str) -> Option<String> {
    use serde_json::{Map, Value};
    let mut value: Value = serde_json::from_str(state).ok()?;
    let identity = |m: &mut Map<String, Value>| {
        m.insert("id".to_owned(), Value::from(user));
        m.insert("name".to_owned(), Value::from(name));
    };
    match &mut value {
        Value::Null => return None,
        Value::Object(members) => match members.get_mut("user") {
            Some(Value::Object(u))
                if u.get("id").and_then(Value::as_str) == Some(user)
                    && u.get("name").and_then(Value::as_str) == Some(name) =>
            {
                return None
            }
            Some(Value::Object(u)) => identity(u),
            _ => {
                let mut u = Map::new();
                identity(&mut u);
                members.insert("user".to_owned(), Value::Object(u));
            }
        },
        other => {
            let mut u = Map::new();
            identity(&mut u);
            let mut wrapped = Map::new();
            wrapped.insert("user".to_owned(), Value::Object(u));
            wrapped.insert("value".to_owned(), other.take());
            value = Value::Object(wrapped);
        }
    }
    Some(value.to_string())
}

/// Encodes a sync message.
pub fn sync_frame(kind: u64, payload: &[u8]) -> Bytes {
    let mut w = Writer::with_capacity(payload.len() + 8);
    w.var_u64(MSG_SYNC).var_u64(kind).var_bytes(payload);
    Bytes::from(w.finish())
}

/// Encodes an awareness message from a yrs awareness update, entries sorted by client id.
pub fn awareness_update_frame(update: &AwarenessUpdate) -> Bytes {
    awareness_frame(&sorted_entries(update))
}

/// The entries of a yrs awareness update as `(client id, entry)` pairs, by client id.
fn sorted_entries(update: &AwarenessUpdate) -> Vec<(u64, AwarenessUpdateEntry)> {
    let mut entries: Vec<(u64, AwarenessUpdateEntry)> = update
        .clients
        .iter()
        .map(|(id, e)| (id.get(), e.clone()))
        .collect();
    entries.sort_unstable_by_key(|(id, _)| *id);
    entries
}

/// Encodes an awareness message from `(client id, entry)` pairs.
pub fn awareness_frame(entries: &[(u64, AwarenessUpdateEntry)]) -> Bytes {
    let inner = awareness_payload(entries);
    let mut w = Writer::with_capacity(inner.len() + 6);
    w.var_u64(MSG_AWARENESS).var_bytes(&inner);
    Bytes::from(w.finish())
}

/// Encodes an awareness update payload (an awareness message without its type, as in
/// [`Output::awareness_out`]) from `(client id, entry)` pairs.
pub fn awareness_payload(entries: &[(u64, AwarenessUpdateEntry)]) -> Bytes {
    let mut w = Writer::new();
    w.var_u64(entries.len() as u64);
    for (id, e) in entries {
        w.var_u64(*id).var_u64(u64::from(e.clock)).var_str(&e.json);
    }
    Bytes::from(w.finish())
}

/// A checked awareness update payload: its entries whose state fits in `max_state` bytes, in
/// order, and the client ids and sizes of those dropped for being larger.
type DecodedAwareness = (Vec<(u64, AwarenessUpdateEntry)>, Vec<(u64, usize)>);

/// Decodes an awareness update payload: bounded counts, client ids of at most 53 bits, no
/// trailing bytes, and every state that fits JSON (else [`ProtocolError::AwarenessNotJson`]).
/// A state over `max_state` is set aside, not an error: stock clients never reconnect after a
/// 44xx close.
fn decode_awareness(payload: &[u8], max_state: usize) -> Result<DecodedAwareness, ProtocolError> {
    let mut r = Reader::new(payload);
    let n = r.len_prefix(3)?;
    let mut entries: Vec<(u64, AwarenessUpdateEntry)> = Vec::with_capacity(n);
    let mut too_large = Vec::new();
    for _ in 0..n {
        let id = r.client_id()?;
        let clock = r.var_u32()?;
        let json = r.var_str()?;
        if json.len() > max_state {
            too_large.push((id, json.len()));
            continue;
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
            return Err(ProtocolError::AwarenessNotJson);
        }
        entries.push((
            id,
            AwarenessUpdateEntry {
                clock,
                json: Arc::from(json),
            },
        ));
    }
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes(r.remaining()).into());
    }
    Ok((entries, too_large))
}

/// Encodes the auth "permission denied" message.
pub fn permission_denied_frame(reason: &str) -> Bytes {
    let mut w = Writer::new();
    w.var_u64(MSG_AUTH).var_u64(0).var_str(reason);
    Bytes::from(w.finish())
}

/// Encodes a tandem notice (`code` one of the `NOTICE_*` constants).
pub fn notice_frame(code: u64, reason: &str) -> Bytes {
    let mut w = Writer::with_capacity(reason.len() + 8);
    w.var_u64(MSG_TANDEM)
        .var_u64(TANDEM_NOTICE)
        .var_u64(code)
        .var_str(reason);
    Bytes::from(w.finish())
}

/// Encodes a tandem stateless message (relayed to the room's other connections that receive
/// them; see the module docs).
pub fn stateless_frame(payload: &str) -> Bytes {
    let mut w = Writer::with_capacity(payload.len() + 8);
    w.var_u64(MSG_TANDEM)
        .var_u64(TANDEM_STATELESS)
        .var_str(payload);
    Bytes::from(w.finish())
}

/// Encodes a tandem durability ack: the first `count` updates of the connection are stored,
/// the last at sequence number `sid`.
pub fn ack_frame(count: u64, sid: u64) -> Bytes {
    let mut w = Writer::new();
    w.var_u64(MSG_TANDEM)
        .var_u64(TANDEM_ACK)
        .var_u64(count)
        .var_u64(sid);
    Bytes::from(w.finish())
}

#[cfg(test)]
mod stamp_tests {
    use super::stamp_identity;
    use serde_json::{json, Value};

    fn stamp(state: &str) -> Option<Value> {
        stamp_identity(state, "u1", "Ada").map(|s| serde_json::from_str(&s).unwrap())
    }

    #[test]
    fn identity_replaces_claims_and_keeps_the_rest() {
        assert_eq!(
            stamp(r##"{"user":{"id":"u2","name":"Bob","color":"#f00"},"typing":"t"}"##),
            Some(json!({"user": {"id": "u1", "name": "Ada", "color": "#f00"}, "typing": "t"}))
        );
        assert_eq!(
            stamp(r#"{"cursor":null}"#),
            Some(json!({"user": {"id": "u1", "name": "Ada"}, "cursor": null}))
        );
        assert_eq!(
            stamp(r#"{"user":"Bob"}"#),
            Some(json!({"user": {"id": "u1", "name": "Ada"}}))
        );
    }

    #[test]
    fn removals_and_correct_states_are_left_alone() {
        assert_eq!(stamp("null"), None);
        assert_eq!(
            stamp(r#"{"user":{"name":"Ada","id":"u1","color":"x"}}"#),
            None
        );
        assert_eq!(stamp("not json"), None);
    }

    #[test]
    fn other_values_are_wrapped() {
        assert_eq!(
            stamp(r#""Bob""#),
            Some(json!({"user": {"id": "u1", "name": "Ada"}, "value": "Bob"}))
        );
        assert_eq!(
            stamp("[1,2]"),
            Some(json!({"user": {"id": "u1", "name": "Ada"}, "value": [1, 2]}))
        );
    }
}
