//! What the store keeps for notifications and webhooks, beside the documents:
//! - per-user notifications (ids from a per-user counter, so they increase per user in commit
//!   order on every backend), bounded by [`InboxLimits`];
//! - grants: which users were seen with a token reaching which documents (pattern, role,
//!   expiry), so a notification is only made for users who can read the document;
//! - comment authors per document (for replies) and a small index of due dates (for reminders
//!   of documents that are not loaded);
//! - the webhook outbox: rows written in the same transaction as the change they describe
//!   ([`super::Store::append_full`]), claimed per `(endpoint, doc)` head so one document's
//!   events go out in order, even with several nodes.
//!
//! The store keeps payloads as opaque bytes; consecutive never-attempted rows of kind
//! [`BATCH`] of one `(endpoint, doc)` are merged at claim time by joining their payloads with
//! `\n` (the debounce of `document.updated`).

use bytes::Bytes;

use super::Sid;

/// The outbox kind whose rows are merged when claimed (one per committed batch).
pub const BATCH: &str = "batch";

/// A notification to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// Whom it is for.
    pub user: String,
    /// `mention`, `assigned`, `reply` or `due`.
    pub kind: String,
    /// The document.
    pub doc: String,
    /// The field (text field or register) it is about.
    pub field: String,
    /// Who caused it (`None` for reminders).
    pub from: Option<String>,
    /// When it was made, unix milliseconds.
    pub at: u64,
    /// A short excerpt.
    pub excerpt: String,
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Its id, increasing per user.
    pub id: u64,
    /// What it is.
    pub new: NewNotification,
    /// Whether the user marked it read.
    pub read: bool,
}

/// What [`super::Store::mark_read`] marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadMark {
    /// These ids.
    Ids(Vec<u64>),
    /// Every notification of the user.
    All,
}

/// How many notifications are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    /// The newest this many per user (1,000).
    pub per_user: u64,
    /// For at most this long (90 days, milliseconds).
    pub ttl_ms: u64,
}

impl Default for InboxLimits {
    fn default() -> Self {
        InboxLimits {
            per_user: 1000,
            ttl_ms: 90 * 24 * 60 * 60 * 1000,
        }
    }
}

/// A user seen with a token reaching some documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user.
    pub user: String,
    /// The token's document pattern, as written in the token.
    pub pattern: String,
    /// The token's role.
    pub role: String,
    /// When the token expires (unix seconds); `None`: never.
    pub expires_at: Option<u64>,
    /// When it was issued (unix seconds), for revocation checks.
    pub issued_at: u64,
}

/// A webhook event to write to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The receiver's URL.
    pub endpoint: String,
    /// The row's kind ([`BATCH`], `notification`, `presence`).
    pub kind: String,
    /// What the delivery worker renders the events from.
    pub payload: Bytes,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its (next) attempt.
    Pending,
    /// Given up after the retry window; replayable.
    Dead,
}

impl DeliveryState {
    /// How it is stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Dead => "dead",
        }
    }

    /// Parses [`DeliveryState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

/// An outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its id (global order of writing).
    pub id: u64,
    /// The receiver.
    pub endpoint: String,
    /// The document.
    pub doc: String,
    /// Its kind.
    pub kind: String,
    /// The sids of the batches it describes (0 for rows not about a batch).
    pub first_sid: Sid,
    /// See `first_sid`.
    pub last_sid: Sid,
    /// The payload (merged batches joined by `\n`).
    pub payload: Bytes,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it was first written, unix milliseconds.
    pub created_at: u64,
    /// When the next attempt is due, unix milliseconds.
    pub next_at: u64,
    /// Pending or dead.
    pub state: DeliveryState,
    /// The last failure.
    pub last_error: Option<String>,
}

/// A document's due date, as indexed for reminders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    /// The document.
    pub doc: String,
    /// The register's value as written (reminded once per value).
    pub value: String,
    /// The instant it names, unix milliseconds.
    pub due_at: u64,
    /// The document's assignee when it was indexed.
    pub assignee: Option<String>,
}

/// The current time for contract tests (retention is relative to the store's clock).
#[cfg(test)]
pub(crate) fn tests_now() -> u64 {
    crate::base::clock::now_ms()
}
