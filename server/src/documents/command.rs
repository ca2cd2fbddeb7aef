//! The commands a document's owner task takes, and their replies.

use std::time::Instant;

use bytes::Bytes;
use tandem_engine::protocol::{ConnId, ConnInfo};
use tokio::sync::{mpsc, oneshot};

use super::{
    Answered, ConnSink, DocError, DocState, FeedItem, JoinError, PresenceView, WriteRequest,
};
use crate::infra::bus::Replicated;
use crate::infra::store::Sid;

/// A document task's answer to a join.
pub(super) enum JoinReply {
    Joined,
    /// The task is unloading: try again with a fresh task.
    Retry(ConnSink),
    Failed(JoinError),
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, DocError>>;

/// Every slot of a document's command queue is the size of the largest variant, and the queue
/// allocates its slots in blocks of 32 per document (5.5 KiB when a write request was inline):
/// the rare large payloads (joins, HTTP writes) are boxed so that a slot is the size of a frame.
pub(super) enum Command {
    Read {
        with_update: bool,
        reply: Reply<DocState>,
    },
    Subscribe {
        feed: mpsc::Sender<FeedItem>,
        with_update: bool,
        reply: Reply<(DocState, Vec<PresenceView>)>,
    },
    /// An HTTP write (see [`super::keys`] for one with an idempotency key).
    Write {
        request: Box<WriteRequest>,
        reply: Reply<Answered>,
    },
    Join {
        conn: ConnId,
        info: Box<ConnInfo>,
        sink: ConnSink,
        reply: oneshot::Sender<JoinReply>,
    },
    Frame {
        conn: ConnId,
        frame: Bytes,
        received: Instant,
    },
    Leave {
        conn: ConnId,
    },
    /// Updates another node stored at sids `first`, `first + 1`, … (see
    /// `Registry::apply_replicated`).
    Replicated {
        first: Sid,
        updates: Vec<Replicated>,
    },
    /// The store holds the document's updates up to `sid` (a position check).
    Behind {
        sid: Sid,
    },
    /// Presence of another node's connections (an awareness update payload).
    RemoteAwareness {
        origin: u64,
        payload: Bytes,
    },
    /// Another node stopped: its connections' presence goes.
    OriginGone {
        origin: u64,
    },
    /// Publish this node's connections' presence to the other nodes; with `ask`, also ask
    /// them to publish theirs.
    Republish {
        ask: bool,
    },
    Shutdown,
    /// Runs a closure on the room as the document task would run an engine call (tests only:
    /// makes the document panic).
    #[cfg(test)]
    Run(Box<dyn FnOnce(&mut tandem_engine::protocol::Room) + Send>),
}
