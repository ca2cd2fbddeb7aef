//! Presence across server nodes: rooms of one document, one per node, wired by hand: each
//! room's `awareness_out` is fed to the others' `remote_awareness`, as the transport would.

use tandem_engine::protocol::{ConnInfo, Limits, Outgoing, Output, Role, Room, To};
use tandem_engine::wire::{Reader, Writer};
use tandem_engine::{Document, ProtocolError};

/// Origin ids the nodes are known by.
const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;

/// A node's room; `doc_client` is the server replica's own client id.
fn node(doc_client: u64) -> Room {
    Room::new(Document::new(doc_client), Limits::default())
}

fn stock(user: &str) -> ConnInfo {
    ConnInfo {
        role: Role::Write,
        user: Some(user.into()),
        extensions: false,
        name: None,
        stateless: false,
    }
}

/// An authenticated connection: its states are stamped with its identity.
fn signed_in(user: &str, name: &str) -> ConnInfo {
    ConnInfo {
        name: Some(name.into()),
        ..stock(user)
    }
}

/// An awareness update payload with `(client id, clock, state)` entries.
fn payload(entries: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut w = Writer::new();
    w.var_u64(entries.len() as u64);
    for (id, clock, state) in entries {
        w.var_u64(*id).var_u64(*clock).var_str(state);
    }
    w.finish()
}

/// An awareness message (what a client sends) with `(client id, clock, state)` entries.
fn awareness(entries: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut w = Writer::new();
    w.var_u64(1).var_bytes(&payload(entries));
    w.finish()
}

/// The `(client id, clock, state)` entries of an awareness update payload.
fn entries(payload: &[u8]) -> Vec<(u64, u64, String)> {
    let mut r = Reader::new(payload);
    let n = r.var_u64().unwrap();
    let entries = (0..n)
        .map(|_| {
            let id = r.var_u64().unwrap();
            let clock = r.var_u64().unwrap();
            (id, clock, r.var_str().unwrap().to_owned())
        })
        .collect();
    assert!(r.is_empty());
    entries
}

/// The entries of every awareness message among `messages` sent to everyone.
fn broadcast(messages: &[Outgoing]) -> Vec<(u64, u64, String)> {
    messages
        .iter()
        .filter(|m| m.to == To::All)
        .flat_map(|m| {
            let mut r = Reader::new(&m.frame);
            assert_eq!(r.var_u64().unwrap(), 1, "an awareness message");
            entries(r.var_bytes().unwrap())
        })
        .collect()
}

/// The entries of `o`'s `awareness_out`.
fn published(o: &Output) -> Vec<(u64, u64, String)> {
    entries(o.awareness_out.as_ref().expect("local states changed"))
}

/// Delivers what `from` published (if anything) to `to` as coming from node `origin`.
fn relay(o: &Output, to: &mut Room, origin: u64, now_ms: u64) -> Output {
    let payload = o.awareness_out.as_ref().expect("local states changed");
    to.remote_awareness(origin, payload, now_ms).unwrap()
}

/// The client ids with a present state, ascending.
fn clients(room: &Room) -> Vec<u64> {
    room.presence()
        .states()
        .iter()
        .map(|(c, _)| c.get())
        .collect()
}

fn users(room: &Room, now_ms: u64) -> Vec<String> {
    room.presence().users(now_ms).into_keys().collect()
}

#[test]
fn a_state_set_on_one_node_reaches_the_other_nodes_connections_and_presence() {
    let (mut a, mut b) = (node(1_001), node(1_002));
    a.join(1, signed_in("alice", "Alice"), 0);
    b.join(2, stock("bob"), 0);

    // Alice claims to be Mallory: stamped on A, and published to the other nodes stamped.
    let o = a.handle(
        1,
        &awareness(&[(10, 1, r#"{"user":{"id":"mallory"}}"#)]),
        1_000,
    );
    assert!(o.error.is_none(), "{:?}", o.error);
    let stamped = r#"{"user":{"id":"alice","name":"Alice"}}"#;
    assert_eq!(published(&o), [(10, 1, stamped.to_owned())]);
    assert_eq!(broadcast(&o.messages), published(&o), "as broadcast on A");

    let r = relay(&o, &mut b, A, 1_000);
    assert!(r.presence_changed && r.error.is_none());
    assert_eq!(broadcast(&r.messages), [(10, 1, stamped.to_owned())]);
    assert_eq!(r.messages.len(), 1, "to every local connection");
    assert!(
        r.awareness_out.is_none(),
        "a remote state is not published again"
    );
    assert_eq!(users(&b, 1_000), ["alice"]);
    assert_eq!(b.presence().viewers(1_000).len(), 1);

    // Bob's state on B travels the other way; B publishes only its own connection's state.
    let o = b.handle(2, &awareness(&[(20, 1, r#"{"user":{"id":"bob"}}"#)]), 2_000);
    assert_eq!(
        published(&o),
        [(20, 1, r#"{"user":{"id":"bob"}}"#.to_owned())]
    );
    relay(&o, &mut a, B, 2_000);
    assert_eq!(users(&a, 2_000), ["alice", "bob"]);
    assert_eq!(users(&b, 2_000), ["alice", "bob"]);

    // A joiner on B is greeted with every state, remote ones included.
    let hello = b.join(3, stock("carol"), 2_500);
    assert_eq!(hello.messages.len(), 2);
    let mut r = Reader::new(&hello.messages[1].frame);
    assert_eq!(r.var_u64().unwrap(), 1);
    let greeting: Vec<u64> = entries(r.var_bytes().unwrap())
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(greeting, [10, 20]);

    // Alice leaves A: the removal (clock + 1, as broadcast on A) reaches B's connections.
    let o = a.leave(1, 3_000);
    assert_eq!(published(&o), [(10, 2, "null".to_owned())]);
    let r = relay(&o, &mut b, A, 3_000);
    assert!(r.presence_changed && r.awareness_out.is_none());
    assert_eq!(broadcast(&r.messages), [(10, 2, "null".to_owned())]);
    assert_eq!(clients(&b), [20]);
    assert_eq!(users(&b, 3_000), ["bob"]);
    // Nothing of A is left to remove.
    let gone = b.remove_origin(A, 3_500);
    assert!(gone.messages.is_empty() && !gone.presence_changed);
}

#[test]
fn only_local_changes_are_published() {
    let (mut a, mut b) = (node(1_001), node(1_002));
    a.join(1, stock("alice"), 0);
    b.join(2, stock("bob"), 0);
    let o = a.handle(1, &awareness(&[(10, 1, "{}")]), 0);
    relay(&o, &mut b, A, 0);

    // A stock client on B relays the remote state it saw: skipped, nothing published.
    let o = b.handle(2, &awareness(&[(10, 1, "{}")]), 10);
    assert!(o.error.is_none() && o.messages.is_empty() && o.awareness_out.is_none());
    // Or its removal, when its own timer dropped it: skipped too, the state stays.
    let o = b.handle(2, &awareness(&[(10, 2, "null")]), 10);
    assert!(o.error.is_none() && o.messages.is_empty() && o.awareness_out.is_none());
    assert_eq!(clients(&b), [10]);
    // A newer state for it takes it over: the client moved to this node before its old
    // node's removal arrived. It is published as this node's from now on, and the old node's
    // later entries for it are ignored.
    let o = b.handle(2, &awareness(&[(10, 3, r#"{"moved":1}"#)]), 10);
    assert!(o.error.is_none());
    assert_eq!(published(&o), [(10, 3, r#"{"moved":1}"#.to_owned())]);
    let late = a.leave(1, 11);
    relay(&late, &mut b, A, 11);
    assert_eq!(
        clients(&b),
        [10],
        "the old node's removal does not remove the moved client"
    );
    // Another local connection still cannot claim it.
    b.join(3, stock("eve"), 12);
    let o = b.handle(3, &awareness(&[(10, 9, r#"{"evil":1}"#)]), 12);
    assert_eq!(o.error, Some(ProtocolError::AwarenessNotOwned(10)));

    // Bob's own state, then more of it in one frame: the latest entry per id is published,
    // the messages before an error included.
    let mut frame = awareness(&[(20, 1, "{}")]);
    frame.extend(awareness(&[(20, 2, r#"{"x":1}"#), (21, 1, "{}")]));
    frame.push(42);
    let o = b.handle(2, &frame, 20);
    assert_eq!(o.error, Some(ProtocolError::UnknownMessage(42)));
    assert_eq!(
        published(&o),
        [(20, 2, r#"{"x":1}"#.to_owned()), (21, 1, "{}".to_owned())]
    );
    // Neither the sync protocol nor a query publishes anything.
    assert!(b.handle(2, &[0, 0, 1, 0, 3], 30).awareness_out.is_none());

    // B's local states (the moved client's included), never a remote one.
    let local = b.local_awareness().unwrap();
    assert_eq!(
        entries(&local),
        [
            (10, 3, r#"{"moved":1}"#.to_owned()),
            (20, 2, r#"{"x":1}"#.to_owned()),
            (21, 1, "{}".to_owned())
        ]
    );
    assert_eq!(clients(&b), [10, 20, 21]);
}

#[test]
fn a_remote_node_cannot_touch_a_local_connections_state() {
    let mut b = node(1_002);
    b.join(2, stock("bob"), 0);
    b.handle(2, &awareness(&[(20, 1, r#"{"user":{"id":"bob"}}"#)]), 0);
    for entry in [
        (20, 5, r#"{"user":{"id":"eve"}}"#),
        (20, 1, "null"),
        (20, 9, "null"),
    ] {
        let o = b.remote_awareness(A, &payload(&[entry]), 10).unwrap();
        assert!(o.messages.is_empty() && !o.presence_changed, "{entry:?}");
    }
    // Nor the server replica's own client id.
    let o = b
        .remote_awareness(A, &payload(&[(1_002, 1, "{}")]), 10)
        .unwrap();
    assert!(o.messages.is_empty() && !o.presence_changed);
    assert_eq!(clients(&b), [20]);
    assert_eq!(users(&b, 10), ["bob"]);
    // Bob renews as usual, and his entries beside A's are applied.
    let o = b
        .remote_awareness(A, &payload(&[(20, 6, "{}"), (10, 1, "{}")]), 10)
        .unwrap();
    assert_eq!(broadcast(&o.messages), [(10, 1, "{}".to_owned())]);
    let o = b.handle(2, &awareness(&[(20, 2, r#"{"user":{"id":"bob"}}"#)]), 20);
    assert!(o.error.is_none() && o.awareness_out.is_some());
}

#[test]
fn remove_origin_drops_every_state_of_a_node_that_is_gone() {
    let (mut a, mut b, mut c) = (node(1_001), node(1_002), node(1_003));
    a.join(1, stock("alice"), 0);
    a.join(2, stock("anna"), 0);
    b.join(3, stock("bob"), 0);
    c.join(4, stock("carl"), 0);
    let o = a.handle(1, &awareness(&[(10, 1, r#"{"user":{"id":"alice"}}"#)]), 0);
    relay(&o, &mut b, A, 0);
    let o = a.handle(2, &awareness(&[(11, 4, r#"{"user":{"id":"anna"}}"#)]), 0);
    relay(&o, &mut b, A, 0);
    let o = c.handle(4, &awareness(&[(30, 1, r#"{"user":{"id":"carl"}}"#)]), 0);
    relay(&o, &mut b, C, 0);
    let o = b.handle(3, &awareness(&[(20, 1, r#"{"user":{"id":"bob"}}"#)]), 0);
    assert_eq!(published(&o).len(), 1);
    assert_eq!(users(&b, 0), ["alice", "anna", "bob", "carl"]);

    // A removal from a node that does not own the state is ignored.
    let o = b
        .remote_awareness(C, &payload(&[(10, 2, "null")]), 5)
        .unwrap();
    assert!(o.messages.is_empty() && !o.presence_changed);

    // A dies: its states go, their removal reaches B's connections, at the states' clocks.
    let o = b.remove_origin(A, 10);
    assert!(o.presence_changed && o.awareness_out.is_none());
    assert_eq!(
        broadcast(&o.messages),
        [(10, 1, "null".to_owned()), (11, 4, "null".to_owned())]
    );
    assert_eq!(users(&b, 10), ["bob", "carl"]);
    assert!(b.remove_origin(A, 11).messages.is_empty(), "done once");

    // Alice's client, alive, comes back through C: its next renewal is accepted at once.
    let o = b
        .remote_awareness(C, &payload(&[(10, 2, r#"{"user":{"id":"alice"}}"#)]), 20)
        .unwrap();
    assert!(o.presence_changed);
    assert_eq!(users(&b, 20), ["alice", "bob", "carl"]);
    // It is C's now: A's stale removal is ignored, and C going drops it.
    let o = b
        .remote_awareness(A, &payload(&[(10, 3, "null")]), 25)
        .unwrap();
    assert!(o.messages.is_empty());
    let o = b.remove_origin(C, 30);
    assert_eq!(
        broadcast(&o.messages),
        [(10, 2, "null".to_owned()), (30, 1, "null".to_owned())]
    );
    assert_eq!(users(&b, 30), ["bob"]);
}

#[test]
fn local_awareness_round_trips_into_another_room() {
    let mut a = node(1_001);
    assert!(a.local_awareness().is_none(), "no connection");
    a.join(1, signed_in("alice", "Alice"), 0);
    a.join(2, stock("anna"), 0);
    assert!(a.local_awareness().is_none(), "no state yet");
    a.handle(1, &awareness(&[(10, 3, r#"{"typing":"t"}"#)]), 0);
    a.handle(2, &awareness(&[(11, 1, r#"{"user":{"id":"anna"}}"#)]), 0);
    let a_states = a.presence().states();

    // A node that starts (or reconnects) gets every local state of A at once.
    let mut fresh = node(1_009);
    fresh.join(5, stock("zed"), 0);
    let local = a.local_awareness().unwrap();
    let o = fresh.remote_awareness(A, &local, 100).unwrap();
    assert!(o.presence_changed);
    assert_eq!(broadcast(&o.messages), entries(&local));
    assert_eq!(fresh.presence().states(), a_states);
    assert_eq!(users(&fresh, 100), users(&a, 100));
    // Published again, they change nothing where they are known.
    let o = fresh.remote_awareness(A, &local, 200).unwrap();
    assert!(o.messages.is_empty() && !o.presence_changed);

    a.leave(1, 300);
    a.leave(2, 300);
    assert!(a.local_awareness().is_none(), "everyone left");
}

#[test]
fn malformed_or_oversized_remote_payloads_are_refused_without_panicking() {
    let mut b = node(1_002);
    b.join(2, stock("bob"), 0);
    let limits = b.limits();
    let refused = |b: &mut Room, payload: &[u8]| {
        let err = b.remote_awareness(A, payload, 0).unwrap_err();
        assert!(b.presence().states().is_empty(), "nothing applied: {err:?}");
        err
    };
    // Over the frame limit.
    let huge = vec![0u8; limits.max_frame + 1];
    assert!(matches!(
        refused(&mut b, &huge),
        ProtocolError::FrameTooLarge { .. }
    ));
    // A state that is not JSON refuses the whole payload.
    assert_eq!(
        refused(&mut b, &payload(&[(10, 1, "{}"), (11, 1, "{nope")])),
        ProtocolError::AwarenessNotJson
    );
    // Malformed bytes: truncated, trailing, a count beyond the payload, a 2^53 client id.
    let good = payload(&[(10, 1, "{}")]);
    for bad in [
        good[..good.len() - 1].to_vec(),
        [good.clone(), vec![0]].concat(),
        payload(&[]).into_iter().chain([0]).collect(),
        {
            let mut w = Writer::new();
            w.var_u64(1 << 40);
            w.finish()
        },
        {
            let mut w = Writer::new();
            w.var_u64(1).var_u64(1 << 53).var_u64(1).var_str("{}");
            w.finish()
        },
        vec![0x80],
    ] {
        assert!(
            matches!(refused(&mut b, &bad), ProtocolError::Decode(_)),
            "{bad:?}"
        );
    }
    // A state over the size limit is dropped; the rest applies.
    let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(limits.max_awareness_state));
    let o = b
        .remote_awareness(A, &payload(&[(10, 1, &big), (11, 1, "{}")]), 0)
        .unwrap();
    assert_eq!(o.dropped_awareness, 1);
    assert_eq!(clients(&b), [11]);
    // Arbitrary bytes never panic.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in 0..2_000 {
        let bytes: Vec<u8> = (0..len % 40)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = b.remote_awareness(len as u64 % 3, &bytes, 0);
    }
    // The room still works.
    let o = b.handle(2, &awareness(&[(20, 1, "{}")]), 0);
    assert!(o.error.is_none() && o.awareness_out.is_some());
}

#[test]
fn remote_states_expire_unless_renewed_and_local_expiry_is_published() {
    let (mut a, mut b) = (node(1_001), node(1_002));
    a.join(1, stock("alice"), 0);
    a.join(2, stock("anna"), 0);
    b.join(3, stock("bob"), 0);
    let o = a.handle(
        1,
        &awareness(&[(10, 1, r#"{"user":{"id":"alice"}}"#)]),
        1_000,
    );
    relay(&o, &mut b, A, 1_000);
    let o = a.handle(
        2,
        &awareness(&[(11, 1, r#"{"user":{"id":"anna"}}"#)]),
        1_000,
    );
    relay(&o, &mut b, A, 1_000);
    let o = b.handle(3, &awareness(&[(20, 1, r#"{"user":{"id":"bob"}}"#)]), 1_000);
    relay(&o, &mut a, B, 1_000);

    // Alice renews (stock clients do every 15 s) and the renewal is relayed; Anna does not.
    let o = a.handle(
        1,
        &awareness(&[(10, 2, r#"{"user":{"id":"alice"}}"#)]),
        16_000,
    );
    assert_eq!(published(&o).len(), 1, "a renewal is published");
    relay(&o, &mut b, A, 16_000);

    let o = b.tick(30_999);
    assert!(o.messages.is_empty() && o.awareness_out.is_none());
    // At 30 s, B expires Anna's remote state and Bob's own: only Bob's is published.
    let o = b.tick(31_000);
    assert!(o.presence_changed);
    assert_eq!(
        broadcast(&o.messages),
        [(11, 1, "null".to_owned()), (20, 1, "null".to_owned())]
    );
    assert_eq!(published(&o), [(20, 1, "null".to_owned())]);
    assert_eq!(clients(&b), [10]);
    // A applies Bob's removal, at the state's clock, from the node that owns it.
    let r = relay(&o, &mut a, B, 31_000);
    assert_eq!(broadcast(&r.messages), [(20, 1, "null".to_owned())]);
    assert_eq!(clients(&a), [10, 11]);

    // Anna's id is no longer counted as A's: removing A drops Alice only.
    let o = b.remove_origin(A, 32_000);
    assert_eq!(broadcast(&o.messages), [(10, 2, "null".to_owned())]);

    // A expires Anna's local state and publishes it; B knows it gone already.
    let o = a.tick(31_000);
    assert_eq!(published(&o), [(11, 1, "null".to_owned())]);
    let r = relay(&o, &mut b, A, 33_000);
    assert!(r.messages.is_empty() && !r.presence_changed);
    // Her next renewal comes through again on both nodes.
    let o = a.handle(
        2,
        &awareness(&[(11, 2, r#"{"user":{"id":"anna"}}"#)]),
        34_000,
    );
    assert!(o.error.is_none());
    relay(&o, &mut b, A, 34_000);
    assert_eq!(users(&b, 34_000), ["anna"]);
}

/// An update another node stored is applied whatever this node's own size estimate says (it
/// was admitted where it was accepted), broadcast to the local connections, and handed over
/// with its changes.
#[test]
fn stored_updates_apply_past_this_nodes_limits() {
    let limits = Limits {
        max_document: 16,
        ..Limits::default()
    };
    let mut b = Room::new(Document::new(1_002), limits);
    b.join(2, stock("bob"), 0);
    let update = Document::new(77)
        .insert("alice", "t", 0, &"long text ".repeat(10))
        .unwrap();
    assert!(matches!(
        b.apply_update(&update, Some("alice"), 0),
        Err(ProtocolError::DocumentTooLarge(16))
    ));
    let out = b.apply_stored(&update, Some("alice"), 1).unwrap();
    assert_eq!(b.document().text("t").map(|t| t.len()), Some(100));
    assert!(out.messages.iter().any(|m| m.to == To::All));
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(out.accepted[0].author.as_deref(), Some("alice"));
    // Applying it again changes nothing and broadcasts nothing.
    let again = b.apply_stored(&update, Some("alice"), 2).unwrap();
    assert!(again.messages.is_empty());
}

/// A room with no other node to tell encodes no presence for them; its clients see the same.
#[test]
fn a_room_that_does_not_publish_encodes_nothing_for_other_nodes() {
    let mut a = node(1_001);
    a.set_publishing(false);
    a.join(1, stock("alice"), 0);
    let o = a.handle(1, &awareness(&[(10, 1, "{}")]), 0);
    assert!(o.awareness_out.is_none());
    assert!(o.messages.iter().any(|m| m.to == To::All));
    assert!(a.leave(1, 1).awareness_out.is_none());
}
