//! Regression tests for what the fuzz targets in `fuzz/` found. Each test names the target,
//! the property that failed, and checks the fixed behaviour.
//!
//! `cargo test -p tandem-engine --test fuzz_regressions`

use tandem_engine::{Document, DocumentError};
use yrs::{Map, Transact};

/// `protocol` target (a client replica applying a broadcast update): an application made the
/// root `meta` a map through `Document::doc`; when a peer's update touched that root, the
/// document registered it as a text field and yrs panicked in the text observer ("subscribed
/// callback expected TextRef collection"). A root of another type is not a text field.
#[test]
fn a_root_the_application_made_a_map_is_not_taken_for_a_text() {
    let mut app = Document::new(1);
    app.set_change_feed(true);
    let meta = app.doc().get_or_insert_map("meta");
    meta.insert(&mut app.doc().transact_mut(), "status", "open");

    let peer = yrs::Doc::with_client_id(2);
    let peer_meta = peer.get_or_insert_map("meta");
    let update = {
        let mut txn = peer.transact_mut();
        peer_meta.insert(&mut txn, "owner", "bob");
        txn.encode_update_v1()
    };
    app.apply_update(&update, Some("bob")).unwrap();

    let owner = meta
        .get(&app.doc().transact(), "owner")
        .map(|v| v.to_string(&app.doc().transact()));
    assert_eq!(owner.as_deref(), Some("bob"));
    assert_eq!(app.text("meta"), None);
    assert!(app.take_changes().is_empty());
    assert!(matches!(
        app.edit("alice", "meta", 0, 0, "x"),
        Err(DocumentError::InvalidFieldName(name)) if name == "meta"
    ));
    // Text fields still work next to it.
    app.insert("alice", "description", 0, "hi").unwrap();
    assert_eq!(app.text("description").as_deref(), Some("hi"));
}

/// Three edits by one writer; the server gets the first and the third, the second is late.
fn out_of_order() -> (Document, [Vec<u8>; 3]) {
    let mut writer = Document::new(1);
    let a = writer.insert("w", "description", 0, "A").unwrap();
    let b = writer.insert("w", "description", 1, "B").unwrap();
    let c = writer.insert("w", "description", 2, "C").unwrap();
    let mut server = Document::new(9);
    server.apply_update(&a, Some("w")).unwrap();
    server.apply_update(&c, Some("w")).unwrap();
    assert!(server.pending_len() > 0, "C waits for B");
    (server, [a, b, c])
}

/// `protocol` target (storage model): an update waiting for its dependencies was missing from
/// `encode_state`, so a compaction snapshot taken meanwhile lost it: the document reloaded
/// from the snapshot and the later log never showed it. The snapshot now carries it, and a
/// reload integrates the ready part and keeps the rest waiting.
#[test]
fn a_snapshot_keeps_updates_that_wait_for_their_dependencies() {
    let (mut server, [_, b, _]) = out_of_order();
    let snapshot = server.encode_state();
    server.apply_update(&b, Some("w")).unwrap();
    assert_eq!(server.text("description").as_deref(), Some("ABC"));

    let mut reloaded = Document::new(9);
    reloaded.apply_update(&snapshot, None).unwrap();
    assert_eq!(reloaded.text("description").as_deref(), Some("A"));
    assert!(reloaded.pending_len() > 0);
    // Loading the same snapshot again adds nothing.
    let pending = reloaded.pending_len();
    reloaded.apply_update(&snapshot, None).unwrap();
    assert_eq!(reloaded.pending_len(), pending);
    reloaded.apply_update(&b, None).unwrap();
    assert_eq!(reloaded.text("description").as_deref(), Some("ABC"));
    assert_eq!(reloaded.pending_len(), 0);
}

/// `protocol` target (late joiner): a client that synced while an update waited in the room
/// got a step 2 without it, then only the late dependency's broadcast: it never saw the
/// waiting edit. Step 2 (`diff`) now carries waiting updates too.
#[test]
fn a_joiner_gets_the_updates_waiting_in_the_room() {
    let (mut server, [_, b, _]) = out_of_order();
    let mut joiner = Document::new(5);
    let step2 = server.diff(&joiner.state_vector()).unwrap();
    joiner.apply_update(&step2, None).unwrap();
    assert_eq!(joiner.text("description").as_deref(), Some("A"));
    server.apply_update(&b, Some("w")).unwrap();
    joiner.apply_update(&b, None).unwrap();
    assert_eq!(joiner.text("description"), server.text("description"));
    assert_eq!(joiner.text("description").as_deref(), Some("ABC"));
}

/// `update` target: an update whose delete set holds an empty range (`clock 6, len 0`) of a
/// client the document has never seen waited whole for that client's clock 6, which may never
/// come: its insertions never showed. The ready part of an update is integrated now, and only
/// what really depends on something missing waits.
#[test]
fn an_empty_deletion_range_does_not_hold_an_update_back() {
    let mut writer = Document::new(1);
    let insert = writer.insert("w", "description", 0, "hi").unwrap();
    // The same update with a delete set of one empty range for client 6 at clock 6.
    assert_eq!(
        insert.last(),
        Some(&0),
        "an empty delete set ends the update"
    );
    let mut update = insert[..insert.len() - 1].to_vec();
    update.extend_from_slice(&[1, 6, 1, 6, 0]);
    let mut doc = Document::new(2);
    doc.apply_update(&update, None).unwrap();
    assert_eq!(doc.text("description").as_deref(), Some("hi"));
}

/// `protocol` target (change feed vs. texts), with the captured y-websocket session: a stock
/// client put a nested type into a root the room reads as text. The change feed's delta
/// inserted U+FFFC for it and every later offset counted it, but `text()` left it out, so a
/// reader starting from the text and following deltas went out of step. Embedded values now
/// show as U+FFFC in the text too.
#[test]
fn an_embedded_value_shows_in_the_text_as_in_the_deltas() {
    use tandem_engine::{Change, DeltaOp};
    use yrs::Text;
    let client = yrs::Doc::with_client_id(3);
    let text = client.get_or_insert_text("description");
    let first = {
        let mut txn = client.transact_mut();
        text.insert(&mut txn, 0, "ab");
        txn.encode_update_v1()
    };
    let second = {
        let mut txn = client.transact_mut();
        let embed: std::collections::HashMap<String, yrs::Any> =
            [("image".to_owned(), yrs::Any::from("x.png"))].into();
        text.insert_embed(&mut txn, 1, embed);
        txn.encode_update_v1()
    };
    let mut doc = Document::new(9);
    doc.apply_update(&first, None).unwrap();
    doc.set_change_feed(true);
    doc.apply_update(&second, None).unwrap();
    let changes = doc.take_changes();
    assert!(matches!(
        &changes[..],
        [Change::Text { delta, .. }]
            if delta == &[DeltaOp::Retain(1), DeltaOp::Insert("\u{fffc}".to_owned())]
    ));
    assert_eq!(doc.text("description").as_deref(), Some("a\u{fffc}b"));
    assert_eq!(doc.text_len("description"), 3);
}

/// `protocol` target (change feed against the document): a client wrote a register entry under
/// a key that does not match its JSON (key `note#1-0-7`, JSON naming `status` at `0-0-0`).
/// `fields()` read the JSON's name and showed `status`; the change feed read the key's name and
/// reported nothing. An entry now counts only under its own key, for every reader.
#[test]
fn a_register_entry_under_a_foreign_key_is_ignored_by_every_reader() {
    let mut app = Document::new(1);
    app.set_change_feed(true);
    let peer = yrs::Doc::with_client_id(2);
    let map = peer.get_or_insert_map("tandem:registers");
    let forged =
        r#"{"name":"status","value":null,"wall":0,"counter":0,"client":0,"author":"carol"}"#;
    let honest = r#"{"name":"owner","value":"bob","wall":5,"counter":0,"client":2,"author":"bob"}"#;
    let update = {
        let mut txn = peer.transact_mut();
        map.insert(&mut txn, "note#1-0-7", forged);
        map.insert(&mut txn, "owner#5-0-2", honest);
        txn.encode_update_v1()
    };
    app.apply_update(&update, Some("carol")).unwrap();
    let fields = app.fields();
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["owner"]);
    assert_eq!(app.field("status"), None);
    assert_eq!(app.field("note"), None);
    let changes = app.take_changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(matches!(&changes[0], tandem_engine::Change::Field { name, .. } if name == "owner"));
}

/// `update` target (release round trip): an update with an `XmlHook` type passed the guard and
/// yrs, but yrs does not read the hook name Yjs writes after the type reference: it took the
/// name for the next struct, and merging it with the document's state produced bytes no
/// decoder accepts ("string is not valid UTF-8"). `XmlHook` is refused before yrs sees it.
#[test]
fn an_xml_hook_is_refused_before_yrs_misreads_it() {
    let update = [
        1u8, 1, 214, 252, 199, 191, 14, 50, 7, 1, 0, 5, 1, 0, 1, 0, 0,
    ];
    let mut doc = Document::new(33);
    doc.insert("alice", "description", 0, "kept").unwrap();
    let before = doc.encode_state();
    assert!(matches!(
        doc.apply_update(&update, Some("fuzz")),
        Err(DocumentError::Decode(
            tandem_engine::DecodeError::UnsupportedTypeRef(5)
        ))
    ));
    assert_eq!(doc.encode_state(), before);
    assert_eq!(doc.pending_len(), 0);
}

/// `convergence` target (yrs undo): Alice types, Bob types after her on the same replica (one
/// Yjs client id), Alice types again within the capture timeout. Her step held two runs of
/// clocks that yrs had squashed into one block with Bob's between them, and yrs's undo split
/// the block at the first run, then read the second through a stale slice: an arithmetic
/// overflow in yrs (a panic in debug builds, a corrupt item in release). Another user's change
/// now ends a user's current step, and undo takes back the last one.
#[test]
fn undo_after_another_local_user_typed_between_takes_back_one_run() {
    let mut doc = Document::new(1);
    doc.set_time(1_700_000_000_000);
    doc.edit("alice", "description", 0, 0, "a").unwrap();
    doc.edit("bob", "description", 1, 0, "/").unwrap();
    doc.edit("alice", "description", 2, 0, "%").unwrap();
    assert!(doc.undo("alice").is_some());
    assert_eq!(doc.text("description").as_deref(), Some("a/"));
    assert!(doc.undo("alice").is_some());
    assert_eq!(doc.text("description").as_deref(), Some("/"));
    assert!(doc.redo("alice").is_some());
    assert_eq!(doc.text("description").as_deref(), Some("a/"));
}

/// `update` target (release round trip): an update listing client 1 in two struct groups with
/// overlapping clock ranges (GC 79..5697 and GC 0..1149). yrs integrated both, and the document
/// then encoded a negative skip that no decoder accepts ("clock range overflows"): a snapshot
/// of it would not load. A client in two groups is refused; Yjs never writes one.
#[test]
fn a_client_in_two_struct_groups_is_refused() {
    let update = [2u8, 1, 1, 207, 0, 0, 241, 43, 1, 1, 0, 0, 252, 8, 0];
    let mut doc = Document::new(33);
    doc.insert("alice", "description", 0, "Hello").unwrap();
    let before = doc.encode_state();
    assert!(matches!(
        doc.apply_update(&update, Some("fuzz")),
        Err(DocumentError::Decode(
            tandem_engine::DecodeError::Malformed(_)
        ))
    ));
    assert_eq!(doc.encode_state(), before);
    let mut fresh = Document::new(1);
    fresh.apply_update(&doc.encode_state(), None).unwrap();
    assert_eq!(fresh.text("description").as_deref(), Some("Hello"));
}

/// `update` target (round trip): an update re-used ids the document had integrated (client
/// 11, clocks 0..33, where 0..14 are known) for a block whose parent is unknown. The block
/// waited; a snapshot merged it with the state, which cut it at the known clock and gave the
/// cut an origin instead of its missing parent, so the snapshot held clocks 14..33 that the
/// document did not (state vectors differed after a reload). Such an update is refused.
#[test]
fn a_waiting_block_over_integrated_ids_is_refused() {
    let mut writer = Document::new(11);
    let u = writer
        .insert("alice", "description", 0, "Hello wörld 👋")
        .unwrap();
    let mut doc = Document::new(33);
    doc.apply_update(&u, None).unwrap();
    let before = doc.encode_state();
    let forged = [2u8, 0, 0, 199, 10, 1, 11, 0, 1, 8, 0, 149, 1, 33, 0];
    assert!(matches!(
        doc.apply_update(&forged, Some("fuzz")),
        Err(DocumentError::Apply(_))
    ));
    assert_eq!(doc.pending_len(), 0);
    assert_eq!(doc.encode_state(), before);
}

/// A write connection of user Bob, and a room holding none yet.
fn bobs_room() -> (
    tandem_engine::protocol::Room,
    tandem_engine::protocol::ConnInfo,
) {
    use tandem_engine::protocol::{ConnInfo, Limits, Role, Room};
    let info = ConnInfo {
        role: Role::Write,
        user: Some("bob".into()),
        extensions: false,
        name: None,
        stateless: false,
    };
    (Room::new(Document::new(99), Limits::default()), info)
}

/// An awareness message setting Bob's state (client 7) at `clock`.
fn bob_state(clock: u32) -> bytes::Bytes {
    use yrs::sync::awareness::AwarenessUpdateEntry;
    tandem_engine::protocol::awareness_frame(&[(
        7,
        AwarenessUpdateEntry {
            clock,
            json: std::sync::Arc::from(r#"{"user":{"name":"Bob"}}"#),
        },
    )])
}

/// `protocol` target (presence seen by each connection): Bob's state expired in the room, then
/// his connection sent the same state again at the same clock. The room ignored it but still
/// relayed it to everyone, so a connection that joined after the expiry showed Bob while the
/// room did not. Only entries every replica applies (newer, or a removal at the same clock)
/// are relayed now.
#[test]
fn a_stale_awareness_resend_is_not_relayed() {
    let (mut room, writer) = bobs_room();
    room.join(1, writer.clone(), 0);
    let first = room.handle(1, &bob_state(1), 0);
    assert_eq!(first.messages.len(), 1, "a new state is relayed");
    // Not renewed for 30 s: expired and its removal broadcast.
    let expired = room.tick(31_000);
    assert!(expired.presence_changed);
    room.join(2, writer, 31_000);
    let stale = room.handle(1, &bob_state(1), 31_001);
    assert!(stale.error.is_none());
    assert!(stale.messages.is_empty(), "{:?}", stale.messages);
    // A renewal (newer clock) is relayed again.
    assert_eq!(room.handle(1, &bob_state(2), 31_002).messages.len(), 1);
}

/// `protocol` target (room state round trip): a client sent an item whose left and right
/// origins were the same character. yrs placed it before that character in the room, and after
/// it in a replica built from the room's encoded state: replicas disagreed about the text. An
/// item whose origins are one id, or an id of its own client not older than itself, is refused.
#[test]
fn an_item_with_impossible_origins_is_refused() {
    let mut doc = Document::new(1);
    doc.insert("alice", "t", 0, "ab").unwrap();
    // Client 104, clock 0: a string item "x" with origin (1, 0) and right origin (1, 0).
    let same_origins = [1u8, 1, 104, 0, 196, 1, 0, 1, 0, 1, b'x', 0];
    // Client 104, clock 0: origin (104, 0), itself.
    let own_origin = [1u8, 1, 104, 0, 132, 104, 0, 1, b'x', 0];
    for forged in [&same_origins[..], &own_origin[..]] {
        assert!(matches!(
            doc.apply_update(forged, Some("mallory")),
            Err(DocumentError::Decode(
                tandem_engine::DecodeError::Malformed(_)
            ))
        ));
    }
    assert_eq!(doc.text("t").as_deref(), Some("ab"));
    // A legitimate item between the two characters still applies.
    let legit = [1u8, 1, 104, 0, 196, 1, 0, 1, 1, 1, b'x', 0];
    doc.apply_update(&legit, Some("bob")).unwrap();
    assert_eq!(doc.text("t").as_deref(), Some("axb"));
}

/// `protocol` target (presence seen by each connection): a client's first state came at clock
/// 0. The room stored and relayed it, but y-protocols counts an unknown client as clock 0 and
/// applies only newer clocks, so stock clients ignored it: the room showed a user its clients
/// did not. The room follows the same rule now.
#[test]
fn a_clock_zero_state_of_an_unknown_client_is_ignored_like_stock_clients_do() {
    let (mut room, info) = bobs_room();
    room.join(1, info, 0);
    let zero = room.handle(1, &bob_state(0), 0);
    assert!(zero.error.is_none());
    assert!(zero.messages.is_empty());
    assert!(!zero.presence_changed);
    assert_eq!(room.presence().states().len(), 0);
    let one = room.handle(1, &bob_state(1), 0);
    assert_eq!(one.messages.len(), 1);
    assert_eq!(room.presence().states().len(), 1);
}

/// `protocol` target (document encodes and decodes): an update carrying blocks of the room's
/// own client id beyond the room's clock waited; the room's own edits then reached that clock,
/// and a snapshot (which carries waiting updates) integrated the waiting block where the room's
/// document had not, so the two showed different texts. Only a replica using the same client
/// id makes such an update; it is refused, and so is one that depends on such ids.
#[test]
fn an_update_waiting_for_this_replicas_own_future_edits_is_refused() {
    let mut room = Document::new(7);
    room.insert("srv", "description", 0, &"a".repeat(15))
        .unwrap();

    // A replica with the same client id that has made more under it.
    let mut twin = Document::new(7);
    twin.insert("x", "description", 0, &"b".repeat(99)).unwrap();
    let late = twin.insert("x", "comment", 0, "zzz").unwrap();
    let err = room.apply_update(&late, Some("mallory")).unwrap_err();
    assert!(matches!(err, DocumentError::OwnClientId(7)), "{err:?}");

    // Another replica's edit placed after one of the twin's characters needs that id.
    let mut peer = Document::new(3);
    peer.apply_update(&twin.encode_state(), None).unwrap();
    let after_twin = peer.insert("bob", "description", 50, "!").unwrap();
    let err = room.apply_update(&after_twin, Some("bob")).unwrap_err();
    assert!(matches!(err, DocumentError::OwnClientId(7)), "{err:?}");
    assert_eq!(room.pending_len(), 0);

    // `update` target: a state holding such a waiting update loads into any document whose
    // client id it does not mention, and is refused by one whose id it does.
    let mut holder = Document::new(8);
    holder.apply_update(&after_twin, Some("bob")).unwrap();
    assert!(holder.pending_len() > 0);
    let state = holder.encode_state();
    let mut loaded = Document::new(9);
    loaded.apply_update(&state, None).unwrap();
    assert!(loaded.pending_len() > 0);
    assert!(matches!(
        Document::new(7).apply_update(&state, None),
        Err(DocumentError::OwnClientId(7))
    ));

    // The room's own edits reach clock 99 and go past it; every snapshot decodes to its texts.
    for chunk in [84, 1, 20] {
        room.insert("srv", "title", 0, &"t".repeat(chunk)).unwrap();
        let mut fresh = Document::new(1);
        fresh.apply_update(&room.encode_state(), None).unwrap();
        assert_eq!(fresh.texts(), room.texts());
        assert_eq!(fresh.state_vector(), room.state_vector());
    }
    assert_eq!(room.text("comment"), None);
}

/// `convergence` target (a replica restarts from its saved state): the check above took the
/// replica's own clock from before the state's ready part, so a replica reloading its own
/// state, with a waiting update that refers to the replica's own text, was refused.
#[test]
fn a_replica_reloads_its_state_with_an_update_that_waits_on_its_own_text() {
    let mut alice = Document::new(21);
    alice.insert("alice", "description", 0, "hello").unwrap();
    let mut bob = Document::new(22);
    bob.apply_update(&alice.encode_state(), None).unwrap();
    let first = bob.insert("bob", "description", 5, " there").unwrap();
    // Placed before Alice's "h", after Bob's first edit, which Alice has not received.
    let second = bob.insert("bob", "description", 0, "¡").unwrap();
    alice.apply_update(&second, Some("bob")).unwrap();
    assert!(alice.pending_len() > 0);

    let mut again = Document::new(21);
    again.apply_update(&alice.encode_state(), None).unwrap();
    assert_eq!(again.texts(), alice.texts());
    again.apply_update(&first, Some("bob")).unwrap();
    assert_eq!(again.text("description").as_deref(), Some("¡hello there"));
    assert_eq!(again.pending_len(), 0);
}

/// `protocol` target (document encodes and decodes): a delete-set range reaching past a
/// client's known clock waited whole while a covered range of the same update applied; the
/// snapshot merged both into one range, which a document loading it kept waiting whole, so the
/// loaded document showed text the room had deleted. A range is now cut at the known clock,
/// as Yjs applies delete sets: the known part at once, the rest when its ids arrive.
#[test]
fn a_deletion_reaching_past_known_ids_applies_its_known_part() {
    let mut writer = Document::new(5);
    let first = writer.insert("w", "comment", 0, "abcdefghij").unwrap();
    let mut room = Document::new(9);
    room.apply_update(&first, Some("w")).unwrap();

    // No blocks; a delete set for client 5: clocks 2..22 (only 0..10 exist) and 6..8.
    let deletion = [0u8, 1, 5, 2, 2, 20, 6, 2];
    room.apply_update(&deletion, Some("mallory")).unwrap();
    assert_eq!(room.text("comment").as_deref(), Some("ab"));
    assert!(room.pending_len() > 0, "clocks 10..22 wait for their items");

    let mut loaded = Document::new(1);
    loaded.apply_update(&room.encode_state(), None).unwrap();
    assert_eq!(loaded.texts(), room.texts());

    // The rest applies when the ids it names arrive.
    let later = writer.insert("w", "comment", 10, "klmnopqrstuvwx").unwrap();
    room.apply_update(&later, Some("w")).unwrap();
    loaded.apply_update(&later, Some("w")).unwrap();
    assert_eq!(room.text("comment").as_deref(), Some("abwx"));
    assert_eq!(loaded.texts(), room.texts());
    assert_eq!(room.pending_len(), 0);
}

/// Applies `forged` and checks it is refused as malformed with the document left as it was
/// (texts, state vector, waiting bytes).
fn refused_as_malformed_without_change(doc: &mut Document, forged: &[u8]) {
    let before = (doc.texts(), doc.state_vector(), doc.pending_len());
    let result = doc.apply_update(forged, Some("mallory"));
    assert!(
        matches!(
            result,
            Err(DocumentError::Decode(
                tandem_engine::DecodeError::Malformed(_)
            ))
        ),
        "{forged:?}: {result:?}"
    );
    assert_eq!((doc.texts(), doc.state_vector(), doc.pending_len()), before);
}

/// `update` target (an update applied twice changes nothing): an item whose parent was its own
/// id. Its dependencies looked met (the update carries that id), so it went to yrs, which
/// cannot integrate it and kept it pending; every resend grew that queue. Items that refer to
/// each other in a cycle, within one client or across clients, are refused; honest items only
/// ever refer to ids made before them.
#[test]
fn items_that_refer_to_each_other_in_a_cycle_are_refused() {
    // As found: client 1, clock 0, deleted content of length 5 whose parent is (1, 0).
    let own_parent = [1u8, 0x81, 0, 1, 0, 1, 0x2c, 1, 0, 5, 1, 1, 1, 1, 0];
    // Client 10's "x" has origin (20, 0); client 20's "y" has origin (10, 0).
    let crossed = [
        2u8, 1, 10, 0, 0x84, 20, 0, 1, b'x', 1, 20, 0, 0x84, 10, 0, 1, b'y', 0,
    ];
    // Client 10's first block is "a" (after a root), its second "b" after client 20's "y",
    // whose origin is client 10's "b": a cycle through the order of client 10's clocks.
    let through_clocks = [
        2u8, 2, 10, 0, 4, 1, 1, b't', 1, b'a', 0x84, 20, 0, 1, b'b', 1, 20, 0, 0x84, 10, 1, 1,
        b'y', 0,
    ];
    for forged in [&own_parent[..], &crossed[..], &through_clocks[..]] {
        let mut doc = Document::new(1);
        doc.insert("alice", "t", 0, "ab").unwrap();
        for _ in 0..2 {
            refused_as_malformed_without_change(&mut doc, forged);
        }
    }

    // Honest updates whose items refer to other items they carry still apply: two users
    // interleaving in one text, sent as one state.
    let a = yrs::Doc::with_client_id(10);
    let b = yrs::Doc::with_client_id(20);
    let (ta, tb) = (a.get_or_insert_text("t"), b.get_or_insert_text("t"));
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, ReadTxn, StateVector, Text, Update};
    for i in 0..20u32 {
        let (from, to, text) = if i % 2 == 0 {
            (&a, &b, &ta)
        } else {
            (&b, &a, &tb)
        };
        let update = {
            let mut txn = from.transact_mut();
            let len = text.len(&txn);
            text.insert(
                &mut txn,
                (i * 7) % (len + 1),
                if i % 2 == 0 { "ab" } else { "xy" },
            );
            txn.encode_update_v1()
        };
        to.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
    }
    let state = a
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let mut doc = Document::new(1);
    doc.apply_update(&state, Some("bob")).unwrap();
    assert_eq!(doc.text("t"), Some(ta.get_string(&a.transact())));
    assert_eq!(doc.pending_len(), 0);
}

/// `update` target, release build (a refused update leaves the document as it was): an item
/// named as its parent a character the document held. yrs refused the update only on reaching
/// that item, after integrating the blocks before it, so a refused update changed the
/// document (and the room's copy would differ from what it stored). A parent that is neither a
/// type nor deleted content is refused before yrs sees the update, whether the document holds
/// it or the update carries it; a type deleted and collected still takes late children.
#[test]
fn an_item_parented_to_a_character_is_refused_before_anything_changes() {
    let mut doc = Document::new(1);
    let writer = yrs::Doc::with_client_id(22);
    let text = writer.get_or_insert_text("t");
    use yrs::updates::decoder::Decode;
    use yrs::{Map, MapPrelim, ReadTxn, StateVector, Text, Update};
    let ab = {
        let mut txn = writer.transact_mut();
        text.insert(&mut txn, 0, "ab");
        txn.encode_update_v1()
    };
    doc.apply_update(&ab, Some("bob")).unwrap();
    // As found: client 5's deleted content in root "\x01", then one under (22, 1) (the "b"),
    // then one under (5, 1).
    let held_parent = [
        1u8, 3, 5, 0, 1, 1, 1, 1, 1, 1, 84, 22, 1, 1, 1, 3, 5, 1, 1, 0,
    ];
    // Client 5's "x" in root "t", then deleted content under it.
    let carried_parent = [1u8, 2, 5, 0, 4, 1, 1, b't', 1, b'x', 1, 3, 5, 0, 1, 0];
    for forged in [&held_parent[..], &carried_parent[..]] {
        refused_as_malformed_without_change(&mut doc, forged);
    }

    // A child made in a nested map before another user deleted the map (collected since)
    // still applies.
    let mut app = Document::new(2);
    app.doc().get_or_insert_map("m");
    let a = yrs::Doc::with_client_id(10);
    let b = yrs::Doc::with_client_id(20);
    let (ma, mb) = (a.get_or_insert_map("m"), b.get_or_insert_map("m"));
    let made = {
        let mut txn = a.transact_mut();
        ma.insert(&mut txn, "inner", MapPrelim::default());
        txn.encode_update_v1()
    };
    b.transact_mut()
        .apply_update(Update::decode_v1(&made).unwrap())
        .unwrap();
    let child = {
        let mut txn = b.transact_mut();
        let inner: yrs::MapRef = mb.get(&txn, "inner").unwrap().cast().unwrap();
        inner.insert(&mut txn, "k", "v");
        txn.encode_update_v1()
    };
    {
        let mut txn = a.transact_mut();
        ma.remove(&mut txn, "inner");
    }
    let state = a
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    app.apply_update(&state, None).unwrap();
    app.apply_update(&child, Some("bob")).unwrap();
    assert_eq!(app.pending_len(), 0);
}
