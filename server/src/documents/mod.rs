//! The document layer: the documents loaded in memory, each with one owner task, and what
//! they answer.
//!
//! - [`registry`]: [`Registry`], the loaded documents by name. [`Registry::join`] attaches a
//!   connection; the HTTP operations (`read`, `subscribe`, `write`) are commands to the owner
//!   task.
//! - `task`: the owner task of one document: loads it, runs its command loop over the engine's
//!   `Room`, unloads it when idle.
//! - `fanout`: the document's connections and the frames for them: one push per connection per
//!   batch, slow readers resynced then closed.
//! - `commit`: the commit pipeline: accepted updates queued, stored one batch in flight at a
//!   time, acknowledged once durable.
//! - `feed`: event-stream subscribers: durable changes and presence, in sid order.
//! - `compaction`: when the log is folded into a snapshot, and the checkpoint bookkeeping.
//! - `keys`: idempotency keys whose first request is still being carried out (looked up in the
//!   store, or applied and waiting to be durable with its record).
//! - [`notify`]: what durable changes mean for people (new mentions, assignments, new
//!   comments, due dates), derived per document after a short settle window.
//! - [`notifier`]: [`notifier::Notifier`]: who may get a notification (recorded grants), the
//!   store, live streams, due-date reminders.
//! - [`outbox`]: a connection's bounded outbound frame queue.
//! - [`refusal`]: how an engine refusal is answered (close code, limit counted).
//!
//! Architecture invariant: a document is mutated only by its owner task; nothing here holds a
//! lock across `.await`, and nothing here speaks HTTP or authenticates.

mod command;
mod commit;
mod compaction;
mod fanout;
mod feed;
mod keys;
pub mod notifier;
pub mod notify;
pub mod outbox;
mod queue;
pub mod refusal;
mod registry;
mod sequence;
mod task;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tandem_engine::{Change, FieldValue};
use tokio::sync::mpsc;

pub use registry::{Attached, Registry};

use crate::infra::store::{Answer, Fingerprint, Sid};

/// Frames a document task may queue for one connection before the connection counts as a
/// slow reader (resynced, then closed if it falls behind again). Frames are shared among the
/// document's connections, so a queue costs a slot (32 bytes) per frame plus what only it holds.
pub const CONNECTION_QUEUE: usize = 4096;
/// Bytes of frames one connection's queue may hold (the same slow-reader rule).
pub const CONNECTION_QUEUE_BYTES: usize = 4 << 20;
/// Feed items queued for one event-stream subscriber before it is dropped as too slow (it
/// resumes from its last event id, with no gap).
pub const SUBSCRIBER_QUEUE: usize = 1024;

/// Where a document task sends a connection's frames, and the close that ends it
/// ([`outbox::Sender::close`]).
pub type ConnSink = outbox::Sender;

/// Why a connection could not join a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Loading the document from storage failed; nothing was created.
    #[error("the document could not be loaded")]
    LoadFailed,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Storage is out of reach; try again.
    #[error("storage is unavailable; try again")]
    Unavailable,
}

/// A document's current state as the HTTP API shows it.
#[derive(Debug, Clone)]
pub struct DocState {
    /// Whether the document exists (has ever been written).
    pub exists: bool,
    /// Sequence number of the last durable update.
    pub sid: Sid,
    /// Text fields.
    pub texts: BTreeMap<String, String>,
    /// Registers.
    pub fields: BTreeMap<String, FieldValue>,
    /// The whole document as one Yjs update (only when asked for).
    pub update: Option<Bytes>,
}

/// A durable update as subscribers see it.
#[derive(Debug)]
pub struct Published {
    /// Its sequence number.
    pub sid: Sid,
    /// The update, v1 encoding.
    pub update: Bytes,
    /// Its author.
    pub author: String,
    /// What it changed (text deltas, register changes).
    pub changes: Vec<Change>,
}

/// One user's presence as subscribers see it (the engine's one rule for presence).
pub use tandem_engine::presence::UserPresence as PresenceView;
/// A presence change: `join`, `leave` or `update` with the user's presence.
pub use tandem_engine::presence::{PresenceAction, PresenceChange};

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// An update became durable.
    Update(Arc<Published>),
    /// Presence changed; the sid is the document's current one.
    Presence(Sid, Arc<Vec<PresenceChange>>),
}

/// Subscription handed to an event stream: the state at `state.sid` and every later change.
#[derive(Debug)]
pub struct Subscription {
    /// The state when the subscription started.
    pub state: DocState,
    /// Later changes, in order. Closes if the subscriber falls too far behind (it then
    /// resumes from its last sid).
    pub feed: mpsc::Receiver<FeedItem>,
    /// Current presence, for a first `presence` listing.
    pub presence: Vec<PresenceView>,
}

/// Why an HTTP operation on a document failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocError {
    /// The document does not exist.
    #[error("no such document")]
    NotFound,
    /// The document could not be loaded or is shutting down.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The request was refused by the document (malformed update, bad field name, range).
    #[error("{0}")]
    Invalid(String),
    /// A limit was reached.
    #[error("{0}")]
    Limit(String),
    /// Storing the change failed; it was not applied durably.
    #[error("storage failure")]
    Storage,
    /// Storage is out of reach: nothing was stored; try again.
    #[error("storage unavailable")]
    Unavailable,
    /// The request's idempotency key was first used by a different request (another method,
    /// path or body); nothing was done.
    #[error("the idempotency key was already used with a different request")]
    KeyReused,
}

impl DocError {
    /// The error a failed storage operation answers: [`DocError::Unavailable`] when the store
    /// is out of reach (retry), else [`DocError::Storage`].
    pub fn storage(e: &crate::infra::store::StoreError) -> DocError {
        match e {
            crate::infra::store::StoreError::Unavailable { .. } => DocError::Unavailable,
            _ => DocError::Storage,
        }
    }
}

/// A write through the HTTP API, carried out by the document's owner task.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Apply a binary Yjs update (v1).
    Update(Bytes),
    /// Set (`Some`) or delete (`None`) a register; with `expected`, only while its version is
    /// still that one (`""`: only while it is unset).
    Field {
        /// The register.
        name: String,
        /// The new value.
        value: Option<serde_json::Value>,
        /// The version the writer expects.
        expected: Option<String>,
    },
    /// Edit a text field (UTF-16 offsets).
    Text {
        /// The text field.
        field: String,
        /// Where the edit starts.
        index: u32,
        /// Code units deleted there.
        delete: u32,
        /// Text inserted there.
        insert: String,
    },
}

/// What a write did: what its answer is rendered from (the sid comes once it is durable).
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// The update was applied.
    Update,
    /// The register was written; its new state (`None` after a delete).
    Field {
        /// The register.
        name: String,
        /// Its new state.
        state: Option<FieldValue>,
    },
    /// The conditional write lost: the register's version was not the expected one. Nothing
    /// was written; its current state.
    Stale {
        /// The register's current state.
        current: Option<FieldValue>,
    },
    /// The text field was edited; its new text.
    Text {
        /// The text field.
        field: String,
        /// Its text after the edit.
        text: String,
    },
}

/// Renders a write's answer. Supplied by the caller (the HTTP edge); the document layer stores
/// what it renders with an idempotency key and never looks inside.
pub type Render = fn(&Written) -> Answer;

/// A write request: who writes what, with which idempotency key, answered how.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// The writer (the author of what it changes).
    pub user: String,
    /// The write.
    pub write: Write,
    /// The request's idempotency key: then the write is carried out at most once per key
    /// (of this user, on this document) and every request with the key gets the first answer.
    pub key: Option<RequestKey>,
    /// How its answer looks.
    pub render: Render,
}

/// An idempotency key and the fingerprint of the request that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// The key, as the client sent it.
    pub key: String,
    /// What makes two requests with this key the same request.
    pub fingerprint: Fingerprint,
}

/// A write's answer, once what it did is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    /// The answer, as [`WriteRequest::render`] made it (for a replay: for the first request).
    pub answer: Answer,
    /// The write's sid: the sid of the update it made, or the document's last sid when it
    /// made none.
    pub sid: Sid,
    /// Whether an earlier request with the same key made this answer (nothing was done now).
    pub replayed: bool,
}
