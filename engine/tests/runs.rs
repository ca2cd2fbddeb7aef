//! Runs of plain updates (`Room::handle_updates`, one yrs transaction for consecutive updates
//! of a writer) against the same frames handled one by one (`Room::handle`).
//!
//! Each case is driven by one seed, printed; rerun one with
//! `TANDEM_SEED=<seed> cargo test -p tandem-engine --test runs`.

use tandem_engine::protocol::{plain_update, ConnInfo, Limits, Output, Role, Room, To};
use tandem_engine::wire::Writer;
use tandem_engine::{Change, Document, ProtocolError};

mod common;
use common::Rng;

fn info(role: Role, user: &str) -> ConnInfo {
    ConnInfo {
        role,
        user: Some(user.into()),
        extensions: false,
        name: None,
        stateless: false,
    }
}

fn update_frame(update: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.var_u64(0).var_u64(2).var_bytes(update);
    w.finish()
}

/// Frames a writer might send: edits of three replicas (inserts and deletions in two
/// fields), delivered shuffled (some before what they depend on) and with duplicates.
fn frames(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut replicas: Vec<Document> = (1..=3).map(Document::new).collect();
    let mut log = Vec::new();
    for _ in 0..(20 + rng.below(60)) {
        let i = rng.below(3) as usize;
        let field = ["t", "u"][rng.below(2) as usize];
        let r = &mut replicas[i];
        let len = r.text_len(field);
        let update = if len > 0 && rng.below(4) == 0 {
            let at = rng.below(u64::from(len)) as u32;
            let n = 1 + rng.below(u64::from(len - at)) as u32;
            r.delete("w", field, at, n).unwrap()
        } else {
            let at = rng.below(u64::from(len) + 1) as u32;
            r.insert(
                "w",
                field,
                at,
                ["a", "bc", "déf", "🙂"][rng.below(4) as usize],
            )
            .unwrap()
        };
        log.push(update.clone());
        // Replicas sometimes see each other's edits, so edits depend across clients.
        let j = rng.below(3) as usize;
        if j != i && rng.below(2) == 0 {
            replicas[j].apply_update(&update, None).unwrap();
        }
    }
    // Mostly in order, with some swapped neighbours and some repeated.
    let mut order: Vec<usize> = (0..log.len()).collect();
    for k in 1..order.len() {
        if rng.below(6) == 0 {
            order.swap(k - 1, k);
        }
    }
    for _ in 0..log.len() / 5 {
        let at = rng.below(order.len() as u64) as usize;
        let again = order[rng.below(order.len() as u64) as usize];
        order.insert(at, again);
    }
    order.into_iter().map(|k| update_frame(&log[k])).collect()
}

/// What a room produced, in order.
#[derive(Default)]
struct Seen {
    messages: Vec<(To, Vec<u8>)>,
    accepted: Vec<Vec<u8>>,
    changes: Vec<Change>,
    error: Option<ProtocolError>,
}

impl Seen {
    fn add(&mut self, out: Output) {
        self.messages
            .extend(out.messages.into_iter().map(|m| (m.to, m.frame.to_vec())));
        for a in out.accepted {
            self.accepted.push(a.update.to_vec());
            self.changes.extend(a.changes);
        }
        if out.error.is_some() {
            self.error = out.error;
        }
    }
}

fn room(feed: bool, deltas: bool) -> Room {
    let mut doc = Document::new(99);
    doc.set_change_feed(feed);
    doc.set_text_deltas(deltas);
    let mut room = Room::new(doc, Limits::default());
    room.join(1, info(Role::Write, "ada"), 0);
    room.join(2, info(Role::Read, "bo"), 0);
    room
}

/// Text fields a list of changes touched, and whether any says a field grew.
fn touched(changes: &[Change]) -> Vec<(String, Option<String>)> {
    let mut fields: Vec<(String, Option<String>)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Text { field, author, .. } => Some((field.clone(), author.clone())),
            Change::Field { .. } => None,
        })
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// Compares one case; returns how many transactions the runs saved.
fn compare(seed: u64) -> u64 {
    let mut saved = 0;
    let mut rng = Rng::new(seed);
    let frames = frames(&mut rng);
    for (feed, deltas) in [(false, false), (true, false), (true, true)] {
        let mut one = room(feed, deltas);
        let mut runs = room(feed, deltas);
        let mut single = Seen::default();
        for f in &frames {
            single.add(one.handle(1, f, 0));
        }
        let mut together = Seen::default();
        let mut rest: &[Vec<u8>] = &frames;
        while !rest.is_empty() {
            let n = (1 + rng.below(20) as usize).min(rest.len());
            together.add(runs.handle_updates(1, &rest[..n], 0));
            rest = &rest[n..];
        }
        let case = format!("seed {seed}, feed {feed}, deltas {deltas}");
        assert!(single.error.is_none(), "{case}: {:?}", single.error);
        assert!(together.error.is_none(), "{case}: {:?}", together.error);
        assert_eq!(single.accepted, together.accepted, "{case}: stored updates");
        assert_eq!(single.messages, together.messages, "{case}: frames sent");
        for field in ["t", "u"] {
            assert_eq!(
                one.document().text(field),
                runs.document().text(field),
                "{case}: text of {field}"
            );
        }
        assert_eq!(
            one.document().pending_len(),
            runs.document().pending_len(),
            "{case}: waiting"
        );
        let (revisions, fewer) = (one.document().revision(), runs.document().revision());
        if deltas {
            // Subscribers get every update's own delta: no runs.
            assert_eq!(single.changes, together.changes, "{case}: changes");
            assert_eq!(revisions, fewer, "{case}: a transaction per update");
        } else {
            saved += revisions - fewer;
            assert_eq!(
                touched(&single.changes),
                touched(&together.changes),
                "{case}: fields changed"
            );
        }
    }
    saved
}

#[test]
fn runs_store_and_send_what_one_by_one_does() {
    let seeds: Vec<u64> = match std::env::var("TANDEM_SEED") {
        Ok(s) => vec![s.parse().expect("TANDEM_SEED is a number")],
        Err(_) => {
            let first = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..64).map(|i| first.wrapping_add(i * 7_919)).collect()
        }
    };
    let mut saved = 0;
    for seed in seeds {
        println!("seed {seed}");
        saved += compare(seed);
    }
    assert!(saved > 0, "some updates went in runs");
}

fn typed(n: usize) -> Vec<Vec<u8>> {
    let mut doc = Document::new(5);
    (0..n)
        .map(|i| update_frame(&doc.insert("w", "t", i as u32, "x").unwrap()))
        .collect()
}

#[test]
fn a_run_is_one_transaction_with_its_changes_on_its_last_update() {
    let frames = typed(5);
    let mut room = room(true, false);
    let revision = room.document().revision();
    let out = room.handle_updates(1, &frames, 0);
    assert!(out.error.is_none());
    assert_eq!(out.accepted.len(), 5, "every update is stored");
    assert_eq!(out.messages.len(), 5, "and sent on");
    assert_eq!(room.document().revision(), revision + 1, "one transaction");
    assert!(out.accepted[..4].iter().all(|a| a.changes.is_empty()));
    match out.accepted[4].changes.as_slice() {
        [Change::Text {
            field,
            grew,
            author,
            ..
        }] => {
            assert_eq!(field, "t");
            assert!(grew);
            assert_eq!(author.as_deref(), Some("ada"));
        }
        other => panic!("one text change expected, got {other:?}"),
    }
    assert_eq!(room.document().text("t").as_deref(), Some("xxxxx"));
}

#[test]
fn a_duplicate_inside_a_run_is_stored_but_not_sent() {
    let frames = typed(3);
    let chunk = [&frames[0], &frames[1], &frames[0], &frames[2]];
    let mut room = room(false, false);
    let out = room.handle_updates(1, &chunk, 0);
    assert_eq!(out.accepted.len(), 4, "the ack count stays aligned");
    assert_eq!(out.messages.len(), 3, "the duplicate goes to nobody");
    // A deletion seen twice: the second changes nothing.
    let mut doc = Document::new(5);
    doc.apply_update(&room.document().encode_state(), None)
        .unwrap();
    let deleted = update_frame(&doc.delete("w", "t", 0, 2).unwrap());
    let out = room.handle_updates(1, &[&deleted, &deleted], 0);
    assert_eq!(out.accepted.len(), 2);
    assert_eq!(out.messages.len(), 1);
    assert_eq!(room.document().text("t").as_deref(), Some("x"));
}

#[test]
fn a_run_stops_at_a_malformed_update_and_keeps_what_came_before() {
    let frames = typed(3);
    let bad = update_frame(&[1, 1, 5, 0, 4, 1]);
    let chunk = [&frames[0], &frames[1], &bad, &frames[2]];
    let mut room = room(false, false);
    let out = room.handle_updates(1, &chunk, 0);
    assert!(out.error.is_some(), "the connection closes on it");
    assert_eq!(out.accepted.len(), 2);
    assert_eq!(room.document().text("t").as_deref(), Some("xx"));
}

#[test]
fn a_viewers_updates_are_refused_one_by_one() {
    let frames = typed(2);
    let mut room = room(false, false);
    let out = room.handle_updates(2, &frames, 0);
    assert!(out.error.is_none());
    assert!(out.accepted.is_empty());
    assert_eq!(out.messages.len(), 2, "a permission-denied answer each");
    assert!(out.messages.iter().all(|m| m.to == To::One(2)));
    assert_eq!(room.document().text("t"), None);
}

#[test]
fn plain_updates_are_told_from_other_frames() {
    let frame = update_frame(&[0, 0]);
    assert_eq!(plain_update(&frame), Some(&[0u8, 0][..]));
    let mut two = frame.clone();
    two.extend_from_slice(&frame);
    assert_eq!(plain_update(&two), None, "two messages");
    assert_eq!(plain_update(&[0, 1, 2, 0, 0]), None, "a step 2");
    assert_eq!(plain_update(&[0, 0, 1, 0]), None, "a step 1");
    assert_eq!(plain_update(&[0, 2, 5, 0]), None, "cut short");
    assert_eq!(plain_update(&[1, 0]), None, "awareness");
}
