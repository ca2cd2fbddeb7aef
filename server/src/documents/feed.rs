//! Event-stream subscribers of one document: durable changes in sid order, and presence.
//!
//! A subscriber gets a bounded queue; one that falls too far behind is dropped (its stream ends
//! and the client resumes from its last event id, from the stored log, with no gap). While
//! anyone subscribes, the document's change feed is on (text deltas and register changes with
//! their authors; with notifications it stays on without subscribers, but without text
//! deltas) and presence is summarised per user by the engine's rule (`Presence::users`, the
//! same one that derives viewers and typing users for browsers) and published as changes. Presence is re-read on every awareness change and on every sweep, so
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
            room.document_mut().set_text_deltas(true);
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
    /// change, subscribers or not), with text deltas only while someone subscribes: the watch
    /// needs only which fields changed and whether they grew, and a delta costs a walk over
    /// its field.
    pub(super) fn keep_on(&mut self, room: &mut Room) {
        self.always = true;
        room.document_mut().set_change_feed(true);
        room.document_mut().set_text_deltas(!self.subs.is_empty());
    }

    fn turn_off_if_unused(&mut self, room: &mut Room) {
        if self.subs.is_empty() {
            if self.always {
                room.document_mut().set_text_deltas(false);
            } else {
                room.document_mut().set_change_feed(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_engine::protocol::Limits;
    use tandem_engine::{Change, Document};

    fn deltas(room: &mut Room, at: u32) -> Vec<tandem_engine::DeltaOp> {
        let doc = room.document_mut();
        doc.insert("ada", "f", at, "x").unwrap();
        match doc.take_changes().as_slice() {
            [Change::Text { delta, grew, .. }] => {
                assert!(grew);
                delta.clone()
            }
            other => panic!("one text change expected, got {other:?}"),
        }
    }

    #[test]
    fn text_deltas_are_computed_only_while_someone_subscribes() {
        let mut room = Room::new(Document::new(1), Limits::default());
        let mut feed = Feed::default();
        feed.keep_on(&mut room);
        assert!(
            deltas(&mut room, 0).is_empty(),
            "notifications alone need no deltas"
        );
        let (tx, rx) = mpsc::channel(4);
        feed.subscribe(tx, &mut room, 0);
        assert_eq!(
            deltas(&mut room, 1).len(),
            2,
            "a subscriber gets retain + insert"
        );
        drop(rx);
        feed.sweep(&mut room);
        assert!(
            deltas(&mut room, 2).is_empty(),
            "back to no deltas once it left"
        );
    }
}
