//! Event-stream subscribers of one document: durable changes in sid order, and presence.
//!
//! A subscriber gets a bounded queue; one that falls too far behind is dropped (its stream ends
//! and the client resumes from its last event id, from the stored log, with no gap). While
//! anyone subscribes, the document's change feed is on (text deltas and register changes with
//! their authors) and presence is summarised per user by the engine's rule
//! (`Presence::users`, the same one that derives viewers and typing users for browsers) and
//! published as changes. Presence is re-read on every awareness change and on every sweep, so
//! a typing state that times out is published without a new message.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use tandem_engine::presence::presence_changes;

use super::{FeedItem, PresenceView};
use crate::infra::store::Sid;
use tandem_engine::protocol::Room;

/// The subscribers of one document.
#[derive(Default)]
pub(super) struct Feed {
    subs: Vec<mpsc::Sender<FeedItem>>,
    /// Presence as last published, by user key.
    presence: BTreeMap<String, PresenceView>,
    /// The document's change feed stays on without subscribers (notifications read it).
    always: bool,
}

impl Feed {
    pub(super) fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Adds a subscriber; returns the current presence for its first listing.
    pub(super) fn subscribe(
        &mut self,
        sub: mpsc::Sender<FeedItem>,
        room: &mut Room,
        now_ms: u64,
    ) -> Vec<PresenceView> {
        if self.subs.is_empty() {
            room.document_mut().set_change_feed(true);
            self.presence = room.presence().users(now_ms);
        }
        self.subs.push(sub);
        self.presence.values().cloned().collect()
    }

    /// Sends an item to every subscriber; one that is too far behind is dropped.
    pub(super) fn publish(&mut self, item: FeedItem, room: &mut Room) {
        self.subs.retain(|s| s.try_send(item.clone()).is_ok());
        self.turn_off_if_unused(room);
    }

    /// Publishes what changed in presence since the last call (at the document's `sid`).
    pub(super) fn presence_changed(&mut self, room: &mut Room, sid: Sid, now_ms: u64) {
        if self.subs.is_empty() {
            return;
        }
        let now = room.presence().users(now_ms);
        let changes = presence_changes(&self.presence, &now);
        self.presence = now;
        if !changes.is_empty() {
            self.publish(FeedItem::Presence(sid, Arc::new(changes)), room);
        }
    }

    /// Forgets subscribers whose streams ended.
    pub(super) fn sweep(&mut self, room: &mut Room) {
        self.subs.retain(|s| !s.is_closed());
        self.turn_off_if_unused(room);
    }

    /// Ends every subscription (their streams end; clients resume from their last event id).
    pub(super) fn clear(&mut self) {
        self.subs.clear();
    }

    /// Keeps the document's change feed on for good (the notification watch needs every
    /// change, subscribers or not).
    pub(super) fn keep_on(&mut self, room: &mut Room) {
        self.always = true;
        room.document_mut().set_change_feed(true);
    }

    fn turn_off_if_unused(&mut self, room: &mut Room) {
        if self.subs.is_empty() && !self.always {
            room.document_mut().set_change_feed(false);
        }
    }
}
