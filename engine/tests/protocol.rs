//! The sans-IO room, checked byte for byte against hand-decoded y-websocket frames.

use tandem_engine::protocol::{
    holds_conditional_write, stateless_frame, ConnInfo, FieldWrite, Limits, Outgoing, Role, Room,
    To, MSG_TANDEM, NOTICE_AWARENESS_TOO_LARGE, NOTICE_NOTHING_NEW, TANDEM_NOTICE,
    TANDEM_SET_FIELD,
};
use tandem_engine::wire::{Reader, Writer};
use tandem_engine::{Document, ProtocolError};

fn writer(user: &str) -> ConnInfo {
    ConnInfo {
        role: Role::Write,
        user: Some(user.into()),
        extensions: false,
        name: None,
        stateless: false,
    }
}

fn reader(user: &str) -> ConnInfo {
    ConnInfo {
        role: Role::Read,
        ..writer(user)
    }
}

fn room() -> Room {
    Room::new(Document::new(99), Limits::default())
}

fn out(to: To, frame: &[u8]) -> Outgoing {
    Outgoing {
        to,
        frame: frame.to_vec().into(),
    }
}

/// Update inserting "a" at the start of top-level text "t", by client 5 at clock 0:
/// 1 client, 1 struct, client 5, clock 0; item info 4 (string content, parent by name);
/// parent info 1, name "t"; content "a"; empty delete set.
const INSERT_A: [u8; 11] = [1, 1, 5, 0, 4, 1, 1, b't', 1, b'a', 0];

#[test]
fn stock_client_session_byte_for_byte() {
    let mut room = room();
    // Server greeting: sync step 1 with the empty state vector [0].
    let hello = room.join(1, writer("alice"), 0);
    assert_eq!(hello.messages, vec![out(To::One(1), &[0, 0, 1, 0])]);
    room.join(2, writer("bob"), 0);

    // Client step 1 (empty state vector) -> step 2 holding the empty update [0, 0].
    let o = room.handle(1, &[0, 0, 1, 0], 0);
    assert_eq!(o.messages, vec![out(To::One(1), &[0, 1, 2, 0, 0])]);
    assert!(o.error.is_none());

    // An update is broadcast to the others, unchanged, and handed over for storage.
    let mut frame = vec![0, 2, INSERT_A.len() as u8];
    frame.extend_from_slice(&INSERT_A);
    let o = room.handle(1, &frame, 0);
    assert_eq!(o.messages, vec![out(To::AllExcept(1), &frame)]);
    assert_eq!(o.accepted.len(), 1);
    assert_eq!(&o.accepted[0].update[..], &INSERT_A);
    assert_eq!(o.accepted[0].author.as_deref(), Some("alice"));
    assert_eq!(room.document().text("t").as_deref(), Some("a"));

    // A late joiner's step 1 gets the whole document back.
    room.join(3, writer("carol"), 0);
    let o = room.handle(3, &[0, 0, 1, 0], 0);
    let mut step2 = vec![0, 1, INSERT_A.len() as u8];
    step2.extend_from_slice(&INSERT_A);
    assert_eq!(o.messages, vec![out(To::One(3), &step2)]);

    // Awareness join: echoed to everyone, the sender included.
    let aw = [1, 11, 1, 5, 1, 7, b'{', b'"', b'a', b'"', b':', b'1', b'}'];
    let o = room.handle(1, &aw, 1_000);
    assert_eq!(o.messages, vec![out(To::All, &aw)]);
    assert!(o.presence_changed);

    // A new connection is greeted with step 1 and the current awareness states.
    let hello = room.join(4, writer("dave"), 2_000);
    assert_eq!(hello.messages[1], out(To::One(4), &aw));

    // Leave: the state is broadcast as removed with clock + 1 and JSON null.
    let o = room.leave(1, 3_000);
    assert_eq!(
        o.messages,
        vec![out(To::All, &[1, 8, 1, 5, 2, 4, b'n', b'u', b'l', b'l'])]
    );
    let hello = room.join(5, writer("erin"), 4_000);
    assert_eq!(hello.messages.len(), 1, "no awareness state left");
}

#[test]
fn several_messages_in_one_frame_are_all_handled() {
    let mut room = room();
    room.join(1, writer("a"), 0);
    let mut frame = vec![0, 0, 1, 0]; // step 1
    frame.extend_from_slice(&[0, 2, INSERT_A.len() as u8]);
    frame.extend_from_slice(&INSERT_A);
    frame.extend_from_slice(&[3]); // query awareness (no states: no answer)
    let o = room.handle(1, &frame, 0);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.messages.len(), 2);
    assert_eq!(o.accepted.len(), 1);
}

#[test]
fn read_only_connections_sync_but_cannot_write() {
    let mut room = room();
    room.join(1, reader("viewer"), 0);
    let o = room.handle(1, &[0, 0, 1, 0], 0);
    assert_eq!(o.messages.len(), 1, "step 1 is answered");
    let mut frame = vec![0, 2, INSERT_A.len() as u8];
    frame.extend_from_slice(&INSERT_A);
    let o = room.handle(1, &frame, 0);
    assert!(o.error.is_none(), "the connection stays open");
    assert!(o.accepted.is_empty());
    // [2, 0, reason]: permission denied.
    assert_eq!(&o.messages[0].frame[..2], &[2, 0]);
    assert_eq!(o.messages[0].to, To::One(1));
    assert_eq!(room.document().text("t"), None);
}

#[test]
fn a_viewers_step_2_with_nothing_new_is_not_refused() {
    let mut room = room();
    room.join(1, writer("ada"), 0);
    let mut frame = vec![0, 2, INSERT_A.len() as u8];
    frame.extend_from_slice(&INSERT_A);
    room.handle(1, &frame, 0);
    // A stock viewer that holds the document already: its step 2 gets no answer at all.
    room.join(2, reader("viewer"), 0);
    let mut step2 = vec![0, 1, INSERT_A.len() as u8];
    step2.extend_from_slice(&INSERT_A);
    let o = room.handle(2, &step2, 0);
    assert!(o.error.is_none() && o.accepted.is_empty());
    assert!(o.messages.is_empty(), "{:?}", o.messages);
    // One that speaks tandem's extensions is told nothing was refused.
    let tandem = ConnInfo {
        extensions: true,
        ..reader("viewer")
    };
    room.join(3, tandem, 0);
    let o = room.handle(3, &[0, 1, 2, 0, 0], 0);
    assert_eq!(o.messages.len(), 1);
    assert_eq!(o.messages[0].to, To::One(3));
    let mut r = Reader::new(&o.messages[0].frame);
    let head: Vec<u64> = (0..3).map(|_| r.var_u64().unwrap()).collect();
    assert_eq!(head, [MSG_TANDEM, TANDEM_NOTICE, NOTICE_NOTHING_NEW]);
    // What it does not hold is still refused.
    let other: [u8; 11] = [1, 1, 6, 0, 4, 1, 1, b't', 1, b'b', 0];
    let mut frame = vec![0, 2, other.len() as u8];
    frame.extend_from_slice(&other);
    let o = room.handle(3, &frame, 0);
    assert_eq!(&o.messages[0].frame[..2], &[2, 0], "permission denied");
    assert_eq!(room.document().text("t").as_deref(), Some("a"));
}

#[test]
fn stateless_messages_reach_the_other_connections_that_receive_them() {
    let mut room = room();
    let receives = |user: &str| ConnInfo {
        extensions: true,
        stateless: true,
        ..reader(user)
    };
    room.join(1, receives("ada"), 0);
    room.join(2, receives("bob"), 0);
    room.join(3, writer("stock"), 0);
    room.join(4, receives("cy"), 0);
    let frame = stateless_frame("{\"ping\":1}");
    assert_eq!(&frame[..3], &[100, 4, 10]);
    let o = room.handle(1, &frame, 0);
    assert!(o.error.is_none() && o.accepted.is_empty() && !o.presence_changed);
    let mut to: Vec<To> = o.messages.iter().map(|m| m.to).collect();
    to.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(
        to,
        [To::One(2), To::One(4)],
        "not the sender, not a stock client"
    );
    assert!(o.messages.iter().all(|m| m.frame == frame));
    // A stock client may send one too; truncated ones are errors.
    assert_eq!(room.handle(3, &frame, 0).messages.len(), 3);
    assert!(matches!(
        error_of(&mut room, 1, &frame[..frame.len() - 1]),
        ProtocolError::Decode(_)
    ));
}

fn error_of(room: &mut Room, conn: u64, frame: &[u8]) -> ProtocolError {
    let o = room.handle(conn, frame, 0);
    o.error.unwrap_or_else(|| panic!("no error for {frame:?}"))
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    let mut room = room();
    room.join(1, writer("a"), 0);
    room.join(2, writer("b"), 0);
    // truncated varint
    assert!(matches!(
        error_of(&mut room, 1, &[0x80]),
        ProtocolError::Decode(_)
    ));
    // a length larger than the frame
    assert!(matches!(
        error_of(&mut room, 1, &[0, 2, 50, 1, 2]),
        ProtocolError::Decode(_)
    ));
    // a 2^60 length
    let mut w = Writer::new();
    w.var_u64(0).var_u64(2).var_u64(1 << 60);
    assert!(matches!(
        error_of(&mut room, 1, &w.finish()),
        ProtocolError::Decode(_)
    ));
    // a client id above 2^53 in an update and in awareness
    let mut w = Writer::new();
    w.var_u64(1).var_u64(1).var_u64(1 << 53).var_u64(0);
    let update = w.finish();
    let mut w = Writer::new();
    w.var_u64(0).var_u64(2).var_bytes(&update);
    assert!(matches!(
        error_of(&mut room, 1, &w.finish()),
        ProtocolError::Decode(_)
    ));
    let mut inner = Writer::new();
    inner.var_u64(1).var_u64(1 << 60).var_u64(1).var_str("{}");
    let mut w = Writer::new();
    w.var_u64(1).var_bytes(&inner.finish());
    assert!(matches!(
        error_of(&mut room, 1, &w.finish()),
        ProtocolError::Decode(_)
    ));
    // awareness JSON that is not JSON
    let mut inner = Writer::new();
    inner.var_u64(1).var_u64(7).var_u64(1).var_str("{nope");
    let mut w = Writer::new();
    w.var_u64(1).var_bytes(&inner.finish());
    assert_eq!(
        error_of(&mut room, 1, &w.finish()),
        ProtocolError::AwarenessNotJson
    );
    // awareness for another connection's id
    let claim = |state: &str| {
        let mut inner = Writer::new();
        inner.var_u64(1).var_u64(7).var_u64(1).var_str(state);
        let mut w = Writer::new();
        w.var_u64(1).var_bytes(&inner.finish());
        w.finish()
    };
    assert!(room.handle(1, &claim("{}"), 0).error.is_none());
    // A stock client relaying the state it saw (same clock) is not an error, and changes nothing.
    let relay = room.handle(2, &claim("{}"), 0);
    assert!(relay.error.is_none() && relay.messages.is_empty());
    // A newer state for that id from another connection is impersonation.
    let mut inner = Writer::new();
    inner
        .var_u64(1)
        .var_u64(7)
        .var_u64(2)
        .var_str("{\"evil\":1}");
    let mut w = Writer::new();
    w.var_u64(1).var_bytes(&inner.finish());
    assert_eq!(
        error_of(&mut room, 2, &w.finish()),
        ProtocolError::AwarenessNotOwned(7)
    );
    // unknown message types
    assert_eq!(
        error_of(&mut room, 1, &[42]),
        ProtocolError::UnknownMessage(42)
    );
    assert_eq!(
        error_of(&mut room, 1, &[0, 9, 0]),
        ProtocolError::UnknownSyncMessage(9)
    );
    // oversized frames
    let big = vec![0u8; Limits::default().max_frame + 1];
    assert!(matches!(
        error_of(&mut room, 1, &big),
        ProtocolError::FrameTooLarge { .. }
    ));
    // The document is still healthy and the room still works.
    let mut frame = vec![0, 2, INSERT_A.len() as u8];
    frame.extend_from_slice(&INSERT_A);
    assert!(room.handle(2, &frame, 0).error.is_none());
    assert_eq!(room.document().text("t").as_deref(), Some("a"));
}

#[test]
fn awareness_expires_after_30_seconds_without_renewal() {
    let mut room = room();
    room.join(1, writer("a"), 0);
    let aw = [1, 11, 1, 5, 1, 7, b'{', b'"', b'a', b'"', b':', b'1', b'}'];
    room.handle(1, &aw, 1_000);
    assert!(room.tick(30_999).messages.is_empty());
    let o = room.tick(31_000);
    // Expiry keeps the state's clock (clients accept a null at an equal clock), so the
    // client's next renewal, one clock later, is accepted again at once.
    assert_eq!(
        o.messages,
        vec![out(To::All, &[1, 8, 1, 5, 1, 4, b'n', b'u', b'l', b'l'])]
    );
    let renewal = [1, 11, 1, 5, 2, 7, b'{', b'"', b'a', b'"', b':', b'1', b'}'];
    let o = room.handle(1, &renewal, 32_000);
    assert!(o.presence_changed);
    assert_eq!(room.presence().states().len(), 1);
}

fn set_field_frame(request: u64, flags: u64, name: &str, expected: &str, value: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.var_u64(MSG_TANDEM)
        .var_u64(TANDEM_SET_FIELD)
        .var_u64(request)
        .var_u64(flags)
        .var_str(name)
        .var_str(expected)
        .var_str(value);
    w.finish()
}

#[test]
fn conditional_field_writes_are_decided_by_the_room() {
    let mut room = room();
    let (first, _) = room
        .set_field("alice", "status", Some("todo".into()), Some(""), 1_000)
        .unwrap();
    let FieldWrite::Accepted(Some(v1)) = first else {
        panic!("{first:?}")
    };
    let (second, _) = room
        .set_field("bob", "status", Some("done".into()), Some(""), 1_001)
        .unwrap();
    assert_eq!(second, FieldWrite::Rejected(Some(v1.clone())));

    room.join(1, writer("carol"), 2_000);
    // Stale expected version over the WebSocket extension: rejected with the current value.
    let o = room.handle(1, &set_field_frame(7, 1, "status", "0-0-1", "\"x\""), 2_000);
    assert!(o.error.is_none());
    let mut expect = Writer::new();
    expect
        .var_u64(MSG_TANDEM)
        .var_u64(2)
        .var_u64(7)
        .var_u64(0)
        .var_str(&v1.version)
        .var_str("\"todo\"");
    assert_eq!(o.messages, vec![out(To::One(1), &expect.finish())]);
    // Current version: accepted, broadcast to everyone, stored.
    let o = room.handle(
        1,
        &set_field_frame(8, 1, "status", &v1.version, "\"doing\""),
        3_000,
    );
    assert_eq!(o.accepted.len(), 1);
    assert_eq!(o.messages[0].to, To::All);
    assert_eq!(room.document().field("status").unwrap().value, "doing");
}

/// Joiners with an empty state vector share one encoded step 2 until the document changes;
/// any change, a deletion alone included, makes the next joiner get the new state.
#[test]
fn joiners_share_one_encoded_step2_per_revision() {
    let mut room = room();
    room.join(1, writer("alice"), 0);
    let mut frame = vec![0, 2, INSERT_A.len() as u8];
    frame.extend_from_slice(&INSERT_A);
    room.handle(1, &frame, 0);
    let step2 = |room: &mut Room, conn| {
        room.join(conn, writer("joiner"), 0);
        let o = room.handle(conn, &[0, 0, 1, 0], 0);
        assert_eq!(o.messages.len(), 1);
        o.messages[0].frame.clone()
    };
    let a = step2(&mut room, 2);
    let b = step2(&mut room, 3);
    assert_eq!(
        a.as_ptr(),
        b.as_ptr(),
        "the second joiner got a fresh encoding"
    );

    // Alice deletes the "a": no new item, only a delete set.
    let delete = {
        let mut replica = Document::new(5);
        replica.apply_update(&INSERT_A, None).unwrap();
        let d = replica.delete("alice", "t", 0, 1).unwrap();
        let mut f = vec![0, 2];
        let mut w = Writer::new();
        w.var_bytes(&d);
        f.extend_from_slice(&w.finish());
        f
    };
    assert!(room.handle(1, &delete, 0).error.is_none());
    let c = step2(&mut room, 4);
    assert_ne!(c, a);
    let mut fresh = Document::new(77);
    let payload = &c[3..];
    fresh.apply_update(payload, None).unwrap();
    assert_eq!(fresh.text("t").unwrap_or_default(), "");
}

/// A sync update message carrying `update`.
fn update_frame(update: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.var_u64(0).var_u64(2).var_bytes(update);
    w.finish()
}

/// A stored document (as the server loads one) and a client replica of it.
fn stored_and_client() -> (Vec<u8>, Document) {
    let mut stored = Document::new(7);
    stored.insert("seed", "t", 0, "stored text").unwrap();
    let state = stored.encode_state();
    let mut client = Document::new(5);
    client.apply_update(&state, None).unwrap();
    (state, client)
}

fn loaded_room(state: &[u8], max_document: u64) -> Room {
    let mut doc = Document::new(99);
    doc.apply_update(state, None).unwrap();
    let limits = Limits {
        max_document,
        ..Limits::default()
    };
    Room::new(doc, limits)
}

#[test]
fn updates_are_checked_against_the_document_size_limit_before_they_apply() {
    let (state, mut client) = stored_and_client();
    let update = client.insert("alice", "t", 0, "new ").unwrap();
    let base = loaded_room(&state, u64::MAX).size_estimate();
    let len = update.len() as u64;
    for (limit, fits) in [
        (base + len, true),
        (base + len + 1, true),
        (base + len - 1, false),
    ] {
        let mut room = loaded_room(&state, limit);
        room.join(1, writer("alice"), 0);
        room.join(2, reader("viewer"), 0);
        let o = room.handle(1, &update_frame(&update), 0);
        if fits {
            assert!(o.error.is_none(), "limit {limit}: {:?}", o.error);
            assert_eq!(o.accepted.len(), 1);
            assert_eq!(
                room.document().text("t").as_deref(),
                Some("new stored text")
            );
            assert_eq!(room.size_estimate(), base + len);
        } else {
            let error = o.error.expect("refused");
            assert_eq!(error, ProtocolError::DocumentTooLarge(limit));
            assert_eq!(error.close_code(), 4507);
            assert!(o.accepted.is_empty() && o.messages.is_empty());
            assert_eq!(room.document().text("t").as_deref(), Some("stored text"));
            assert_eq!(room.size_estimate(), base);
        }
        // At or near the limit: empty updates (sent on every reconnect) still pass, and a
        // read-only connection is answered as always, whatever the size.
        let o = room.handle(1, &update_frame(&[0, 0]), 0);
        assert!(o.error.is_none(), "{:?}", o.error);
        assert_eq!(o.accepted.len(), 1);
        let more = client.insert("alice", "t", 0, "more ").unwrap();
        let o = room.handle(2, &update_frame(&more), 0);
        assert!(o.error.is_none(), "{:?}", o.error);
        assert_eq!(&o.messages[0].frame[..2], &[2, 0], "permission denied");
        // A writer's next update no longer fits.
        if fits {
            let o = room.handle(1, &update_frame(&more), 0);
            assert_eq!(o.error, Some(ProtocolError::DocumentTooLarge(limit)));
        }
    }
}

#[test]
fn messages_before_the_one_over_the_size_limit_stay_applied() {
    let (state, mut client) = stored_and_client();
    let first = client.insert("alice", "t", 0, "one ").unwrap();
    let second = client.insert("alice", "t", 0, "two ").unwrap();
    let base = loaded_room(&state, u64::MAX).size_estimate();
    let limit = base + (first.len() + second.len()) as u64 - 1;
    let mut room = loaded_room(&state, limit);
    room.join(1, writer("alice"), 0);
    let mut frame = update_frame(&first);
    frame.extend_from_slice(&update_frame(&second));
    let o = room.handle(1, &frame, 0);
    assert_eq!(o.error, Some(ProtocolError::DocumentTooLarge(limit)));
    assert_eq!(o.accepted.len(), 1);
    assert_eq!(&o.accepted[0].update[..], &first[..]);
    assert_eq!(
        room.document().text("t").as_deref(),
        Some("one stored text")
    );
}

#[test]
fn compaction_resets_the_size_estimate() {
    let (state, mut client) = stored_and_client();
    let update = client
        .insert("alice", "t", 0, "hello world, hello ")
        .unwrap();
    let small = client.insert("alice", "t", 0, "!").unwrap();
    let base = loaded_room(&state, u64::MAX).size_estimate();
    let limit = base + 2 * update.len() as u64;
    let mut room = loaded_room(&state, limit);
    room.join(1, writer("alice"), 0);
    // The same update twice: stored twice, so counted twice, though the document holds it once.
    for _ in 0..2 {
        assert!(room.handle(1, &update_frame(&update), 0).error.is_none());
    }
    assert_eq!(room.size_estimate(), limit);
    let o = room.handle(1, &update_frame(&small), 0);
    assert_eq!(o.error, Some(ProtocolError::DocumentTooLarge(limit)));

    // The transport compacted the log into one snapshot: the estimate is the encoded state.
    room.compacted();
    let compacted = room.size_estimate();
    assert_eq!(compacted, room.document().encode_state().len() as u64);
    assert!(compacted < limit);
    room.join(2, writer("alice"), 0);
    let o = room.handle(2, &update_frame(&small), 0);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(room.size_estimate(), compacted + small.len() as u64);
}

#[test]
fn server_side_writes_are_checked_against_the_document_size_limit() {
    let (state, mut client) = stored_and_client();
    let base = loaded_room(&state, u64::MAX).size_estimate();
    let limit = base + 400;
    let mut room = loaded_room(&state, limit);
    let big = "x".repeat(500);
    let too_large = Err(ProtocolError::DocumentTooLarge(limit));

    assert_eq!(
        room.edit_text("bob", "t", 0, 0, &big, 0).map(|_| ()),
        too_large
    );
    let value = serde_json::Value::from(big.as_str());
    assert_eq!(
        room.set_field("bob", "status", Some(value), None, 0)
            .map(|_| ()),
        too_large
    );
    let update = client.insert("alice", "t", 0, &big).unwrap();
    assert_eq!(room.apply_update(&update, None, 0).map(|_| ()), too_large);
    assert_eq!(room.document().text("t").as_deref(), Some("stored text"));
    assert_eq!(room.document().field("status"), None);
    assert_eq!(room.size_estimate(), base);

    // Small ones fit, and count what they stored.
    let o = room.edit_text("bob", "t", 0, 0, "hi ", 0).unwrap();
    let (_, p) = room
        .set_field("bob", "status", Some("done".into()), None, 0)
        .unwrap();
    let stored: usize = o
        .accepted
        .iter()
        .chain(&p.accepted)
        .map(|a| a.update.len())
        .sum();
    assert_eq!(room.size_estimate(), base + stored as u64);
    assert_eq!(room.document().text("t").as_deref(), Some("hi stored text"));
}

/// An awareness message with `(client id, clock, state)` entries.
fn awareness(entries: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut inner = Writer::new();
    inner.var_u64(entries.len() as u64);
    for (id, clock, state) in entries {
        inner.var_u64(*id).var_u64(*clock).var_str(state);
    }
    let mut w = Writer::new();
    w.var_u64(1).var_bytes(&inner.finish());
    w.finish()
}

#[test]
fn oversized_awareness_states_are_dropped_and_the_connection_stays_open() {
    let mut room = room();
    let tandem = ConnInfo {
        extensions: true,
        ..writer("alice")
    };
    room.join(1, tandem, 0);
    room.join(2, writer("bob"), 0);
    let huge = format!("{{\"x\":\"{}\"}}", "y".repeat(9_000));

    // One entry fits, one does not: the first is stored and relayed, the second dropped, and
    // the connection that speaks tandem's extensions is told why.
    let o = room.handle(1, &awareness(&[(7, 1, "{}"), (8, 1, &huge)]), 0);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.dropped_awareness, 1);
    assert!(o.presence_changed);
    assert_eq!(o.messages.len(), 2);
    assert_eq!(o.messages[1], out(To::All, &awareness(&[(7, 1, "{}")])));
    assert_eq!(o.messages[0].to, To::One(1));
    let mut r = Reader::new(&o.messages[0].frame);
    let head: Vec<u64> = (0..3).map(|_| r.var_u64().unwrap()).collect();
    assert_eq!(
        head,
        [MSG_TANDEM, TANDEM_NOTICE, NOTICE_AWARENESS_TOO_LARGE]
    );
    let reason = r.var_str().unwrap();
    assert!(
        reason.contains("client 8") && reason.contains("8192"),
        "{reason}"
    );
    assert!(r.is_empty());
    let clients: Vec<u64> = room
        .presence()
        .states()
        .iter()
        .map(|(c, _)| c.get())
        .collect();
    assert_eq!(clients, [7]);

    // A stock client gets no notice (it would not understand it), and nothing is relayed.
    let o = room.handle(2, &awareness(&[(9, 1, &huge)]), 0);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.dropped_awareness, 1);
    assert!(o.messages.is_empty() && !o.presence_changed);
    // It keeps syncing text.
    let mut frame = vec![0, 2, INSERT_A.len() as u8];
    frame.extend_from_slice(&INSERT_A);
    let o = room.handle(2, &frame, 0);
    assert!(o.error.is_none());
    assert_eq!(o.accepted.len(), 1);
    assert_eq!(room.document().text("t").as_deref(), Some("a"));
    // The dropped id was not claimed: the client may publish a state that fits.
    let o = room.handle(2, &awareness(&[(9, 2, "{}")]), 0);
    assert!(o.error.is_none() && o.presence_changed);
}

/// The payload of a sync message (`[0, kind, varBytes(payload)]`) of kind `kind`, if `frame` is one.
fn sync_payload(frame: &[u8], kind: u64) -> Option<Vec<u8>> {
    let mut r = Reader::new(frame);
    (r.var_u64().ok()? == 0 && r.var_u64().ok()? == kind).then(|| r.var_bytes().unwrap().to_vec())
}

/// The notice codes among `messages` sent to `conn`.
fn notices(messages: &[Outgoing], conn: u64) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m.to == To::One(conn))
        .filter_map(|m| {
            let mut r = Reader::new(&m.frame);
            let head = [r.var_u64().ok()?, r.var_u64().ok()?];
            (head == [MSG_TANDEM, TANDEM_NOTICE]).then(|| r.var_u64().unwrap())
        })
        .collect()
}

fn pending_room(max_pending: usize) -> Room {
    let limits = Limits {
        max_pending,
        ..Limits::default()
    };
    Room::new(Document::new(99), limits)
}

/// A document loaded from what the room handed over for storage.
fn reloaded(stored: &[Vec<u8>]) -> Document {
    let mut doc = Document::new(98);
    for update in stored {
        doc.apply_update(update, None).unwrap();
    }
    doc
}

#[test]
fn an_update_that_does_not_fit_among_the_waiting_resyncs_its_sender_in_place() {
    let mut room = pending_room(100);
    let tandem = ConnInfo {
        extensions: true,
        ..writer("alice")
    };
    room.join(1, tandem, 0);
    room.join(2, writer("bob"), 0);
    let mut client = Document::new(5);
    let mut peer = Document::new(6);
    let mut stored = Vec::new();
    // The first update is lost on the way: everything after it waits for it.
    client.insert("alice", "t", 0, "lost ").unwrap();
    let mut step1 = None;
    for i in 0..20 {
        let len = client.text_len("t");
        let update = client
            .insert("alice", "t", len, &format!("then {i}, "))
            .unwrap();
        let o = room.handle(1, &update_frame(&update), 0);
        assert!(o.error.is_none(), "{:?}", o.error);
        assert_eq!(
            o.accepted.len(),
            1,
            "one stored update per update sent (acks)"
        );
        stored.extend(o.accepted.iter().map(|a| a.update.to_vec()));
        for m in o.messages.iter().filter(|m| m.to == To::AllExcept(1)) {
            peer.apply_update(&sync_payload(&m.frame, 2).unwrap(), None)
                .unwrap();
        }
        assert!(room.document().pending_len() <= 100);
        if o.dropped_updates > 0 {
            assert_eq!(o.dropped_updates, 1);
            // Nothing of it was ready: the empty update is stored in its place.
            assert_eq!(&o.accepted[0].update[..], &[0, 0]);
            assert_eq!(notices(&o.messages, 1), [2]);
            let sv = o
                .messages
                .iter()
                .filter(|m| m.to == To::One(1))
                .find_map(|m| sync_payload(&m.frame, 0))
                .expect("a sync step 1 to the sender");
            step1 = Some(sv);
            break;
        }
    }
    let sv = step1.expect("the bound was reached");
    assert!(room.document().pending_len() > 0);
    assert_eq!(room.document().text("t"), None, "nothing integrated yet");

    // The client answers as stock clients do, with a step 2 against the room's state vector.
    let step2 = client.diff(&sv).unwrap();
    let mut frame = Writer::new();
    frame.var_u64(0).var_u64(1).var_bytes(&step2);
    let o = room.handle(1, &frame.finish(), 0);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.dropped_updates, 0);
    stored.extend(o.accepted.iter().map(|a| a.update.to_vec()));
    for m in o.messages.iter().filter(|m| m.to == To::AllExcept(1)) {
        peer.apply_update(&sync_payload(&m.frame, 2).unwrap(), None)
            .unwrap();
    }

    // Converged, nothing waiting, and what was stored loads the same document.
    let doc = room.document();
    assert_eq!(doc.pending_len(), 0);
    assert_eq!(doc.text("t"), client.text("t"));
    assert_eq!(doc.state_vector(), client.state_vector());
    assert_eq!(peer.text("t"), client.text("t"));
    assert_eq!(reloaded(&stored).text("t"), client.text("t"));
}

#[test]
fn a_step2_whose_waiting_part_does_not_fit_keeps_its_ready_part_and_gets_no_step1() {
    let mut room = pending_room(100);
    let tandem = ConnInfo {
        extensions: true,
        ..writer("alice")
    };
    room.join(1, tandem, 0);
    // What the sender has and the room lacks, next to a run of edits whose start neither has.
    let mut ready = Document::new(5);
    let ready_update = ready.insert("alice", "t", 0, "ready").unwrap();
    let mut other = Document::new(6);
    other.insert("carol", "u", 0, "missing start ").unwrap();
    let waiting = other
        .insert("carol", "u", 14, &"waits ".repeat(30))
        .unwrap();
    assert!(waiting.len() > 100);
    let step2 = tandem_engine::merge_updates(&[&ready_update, &waiting]).unwrap();
    let mut frame = Writer::new();
    frame.var_u64(0).var_u64(1).var_bytes(&step2);
    let o = room.handle(1, &frame.finish(), 0);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.dropped_updates, 1);
    assert_eq!(notices(&o.messages, 1), [2]);
    assert!(
        o.messages
            .iter()
            .all(|m| sync_payload(&m.frame, 0).is_none()),
        "no step 1: the answer would be this step 2 again"
    );
    assert_eq!(room.document().text("t").as_deref(), Some("ready"));
    assert_eq!(room.document().pending_len(), 0);
    // The ready part is what is stored.
    let stored: Vec<Vec<u8>> = o.accepted.iter().map(|a| a.update.to_vec()).collect();
    assert_eq!(stored.len(), 1);
    let doc = reloaded(&stored);
    assert_eq!(doc.text("t").as_deref(), Some("ready"));
    assert_eq!(doc.pending_len(), 0);
}

#[test]
fn a_server_side_update_that_does_not_fit_among_the_waiting_is_refused_whole() {
    let mut room = pending_room(100);
    let mut other = Document::new(6);
    other.insert("carol", "u", 0, "missing start ").unwrap();
    let small = other.insert("carol", "u", 14, "waits").unwrap();
    let large = other
        .insert("carol", "u", 19, &"waits ".repeat(30))
        .unwrap();
    let o = room.apply_update(&small, Some("carol"), 0).unwrap();
    assert_eq!(o.accepted.len(), 1);
    let waiting = room.document().pending_len();
    assert!(waiting > 0);
    let refused = room.apply_update(&large, Some("carol"), 0);
    assert!(
        matches!(refused, Err(ProtocolError::TooManyPending(n)) if n > 100),
        "{refused:?}"
    );
    assert_eq!(room.document().pending_len(), waiting);
}

/// A server whose nodes share a document finds conditional register writes before handling a
/// frame: alone, behind other messages, and not mistaken for unconditional ones or garbage.
#[test]
fn conditional_writes_are_found_in_frames() {
    let conditional = set_field_frame(1, 1, "status", "v1", "\"done\"");
    let plain = set_field_frame(2, 0, "status", "", "\"done\"");
    assert!(holds_conditional_write(&conditional));
    assert!(!holds_conditional_write(&plain));
    let mut several = awareness(&[(7, 1, "{}")]);
    several.extend_from_slice(&plain);
    several.extend_from_slice(&conditional);
    assert!(holds_conditional_write(&several));
    assert!(!holds_conditional_write(&update_frame(&[0, 0])));
    assert!(!holds_conditional_write(&[]));
    assert!(!holds_conditional_write(&conditional[..3]));
    assert!(!holds_conditional_write(&[0xff, 0xff]));
}
