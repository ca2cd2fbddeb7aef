//! A document's connections and the frames for them.
//!
//! The room's output waits in [`Fanout::queue`] until [`Fanout::flush`] hands it out: each
//! connection gets all of its frames in one push (one wake-up of its socket loop, one write to
//! its socket where they fit). Under load a batch holds the output of many inputs, so the cost
//! per delivered frame falls as the load rises; an idle document flushes after every input.
//!
//! A connection whose queue cannot take its frames missed some. The first time (and again after
//! [`RESYNC_AFTER`]) its queue is replaced by a resync: the whole document as step 2, the
//! server's step 1 (so it sends back what the server lacks), every awareness state and its last
//! ack. A reader that falls behind again sooner is closed with [`code::SLOW_READER`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_engine::protocol::{self, ConnId, ConnInfo, Outgoing, To};

use super::outbox;
use super::ConnSink;
use crate::base::close::{code, Close};
use crate::infra::metrics::Metrics;
use crate::infra::store::Sid;

/// A reader that falls behind again within this time of its last resync is closed.
pub(super) const RESYNC_AFTER: Duration = Duration::from_secs(30);

/// One connection of the document.
struct Member {
    /// Whether it speaks tandem's extensions (acks). The rest of its `ConnInfo` is the room's.
    extensions: bool,
    /// Its frames, and the close that ends it.
    frames: outbox::Sender,
    /// Updates received from this connection so far (the count its acks carry).
    sent: u64,
    /// The last ack sent to it (`count`, `sid`), repeated after a resync.
    acked: Option<(u64, Sid)>,
    /// When it was last resynced for falling behind.
    resynced: Option<Instant>,
}

/// What to do with a connection whose queue overflowed.
pub(super) enum Behind {
    /// Replace its queue with a resync; append this ack (for extension clients).
    Resync(Option<(u64, Sid)>),
    /// It fell behind again too soon: close it.
    Close,
}

/// The connections of one document and the frames waiting for them.
#[derive(Default)]
pub(super) struct Fanout {
    members: HashMap<ConnId, Member>,
    /// Frames produced since the last flush, in order.
    outgoing: Vec<Outgoing>,
    /// When the earliest input behind `outgoing` arrived (fan-out latency).
    received: Option<Instant>,
}

impl Fanout {
    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(super) fn contains(&self, conn: ConnId) -> bool {
        self.members.contains_key(&conn)
    }

    pub(super) fn ids(&self) -> Vec<ConnId> {
        self.members.keys().copied().collect()
    }

    pub(super) fn add(&mut self, conn: ConnId, info: &ConnInfo, sink: ConnSink) {
        self.members.insert(
            conn,
            Member {
                extensions: info.extensions,
                frames: sink,
                sent: 0,
                acked: None,
                resynced: None,
            },
        );
    }

    /// Forgets a connection that left; `false` if it was not there.
    pub(super) fn remove(&mut self, conn: ConnId) -> bool {
        self.members.remove(&conn).is_some()
    }

    /// Forgets a connection and tells it why it is closed; `false` if it was not there.
    pub(super) fn close(&mut self, conn: ConnId, close: Close) -> bool {
        match self.members.remove(&conn) {
            Some(m) => {
                m.frames.close(close);
                true
            }
            None => false,
        }
    }

    /// Queues frames for the next flush; `received` is when the input behind them arrived.
    pub(super) fn queue(&mut self, messages: Vec<Outgoing>, received: Option<Instant>) {
        if messages.is_empty() {
            return;
        }
        if let Some(at) = received {
            self.received.get_or_insert(at);
        }
        self.outgoing.extend(messages);
    }

    pub(super) fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Counts one more update from `conn`; the count its ack will carry (0 for no connection).
    pub(super) fn count_update(&mut self, conn: Option<ConnId>) -> u64 {
        match conn.and_then(|id| self.members.get_mut(&id)) {
            Some(m) => {
                m.sent += 1;
                m.sent
            }
            None => 0,
        }
    }

    /// `conn`'s updates up to `count` are durable at `sid`: remembered, and queued as an ack
    /// frame for a connection that speaks tandem's extensions.
    pub(super) fn ack(&mut self, conn: ConnId, count: u64, sid: Sid) {
        let Some(m) = self.members.get_mut(&conn) else {
            return;
        };
        m.acked = Some((count, sid));
        if m.extensions {
            self.outgoing.push(Outgoing {
                to: To::One(conn),
                frame: protocol::ack_frame(count, sid),
            });
        }
    }

    /// Hands every queued frame to its connections. Returns the connections whose queues were
    /// full (they missed frames: see [`Fanout::behind`]).
    pub(super) fn flush(&mut self, metrics: &Metrics) -> Vec<ConnId> {
        let messages = std::mem::take(&mut self.outgoing);
        let mut frames: Vec<Bytes> = Vec::new();
        let mut slow = Vec::new();
        for (id, m) in &self.members {
            frames.clear();
            frames.extend(
                messages
                    .iter()
                    .filter(|o| match o.to {
                        To::One(x) => x == *id,
                        To::All => true,
                        To::AllExcept(x) => x != *id,
                    })
                    .map(|o| o.frame.clone()),
            );
            if frames.is_empty() {
                continue;
            }
            match m.frames.try_send_all(&mut frames) {
                Ok(bytes) => metrics.bytes_sent.add(bytes as u64),
                Err(outbox::TrySendError::Full) => slow.push(*id),
                Err(outbox::TrySendError::Closed) => {}
            }
        }
        if let Some(received) = self.received.take() {
            metrics.fanout_latency.observe(received.elapsed());
        }
        slow
    }

    /// Decides what happens to `conn`, whose queue overflowed at `now`.
    pub(super) fn behind(&self, conn: ConnId, now: Instant) -> Option<Behind> {
        let m = self.members.get(&conn)?;
        if m.resynced
            .is_some_and(|at| now.duration_since(at) < RESYNC_AFTER)
        {
            return Some(Behind::Close);
        }
        Some(Behind::Resync(m.acked.filter(|_| m.extensions)))
    }

    /// Replaces `conn`'s queue with `frames` (a resync) at `now`.
    pub(super) fn resync(&mut self, conn: ConnId, frames: Vec<Bytes>, now: Instant) {
        if let Some(m) = self.members.get_mut(&conn) {
            m.resynced = Some(now);
            m.frames.replace_all(frames);
        }
    }
}

/// The close a slow reader gets.
pub(super) fn slow_reader_close() -> Close {
    Close::new(
        code::SLOW_READER,
        "slow reader: too far behind, reconnect to resync",
    )
}
