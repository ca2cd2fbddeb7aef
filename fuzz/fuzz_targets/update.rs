//! `update`: arbitrary bytes as a Yjs update (`Document::apply_update`) and as a state vector
//! (`Document::diff`), on an empty document and on one with content.
//!
//! Properties:
//! - the result is `Ok` or `Err`, never a panic (run it in release builds too, where yrs's
//!   `debug_assert!`s are gone and only real checks stand: `scripts/fuzz-smoke.sh` does);
//! - a refused update leaves the document exactly as it was;
//! - an accepted update leaves a document that encodes, and whose encoding applied to a fresh
//!   document gives the same texts, registers and state vector;
//! - applying an accepted update a second time changes nothing;
//! - a diff computed for any accepted state vector is itself an update a fresh document accepts;
//! - what the guard accepts, yrs decodes (the guard is at least as strict as yrs);
//! - updates waiting for their dependencies are part of the encoded state (a snapshot or a
//!   step 2 must not drop them).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use tandem_engine::{Document, FieldValue};
use yrs::updates::decoder::Decode;
use yrs::StateVector;

/// The state of a small document with texts, deletions, registers and two writers.
fn base_state() -> &'static [u8] {
    static STATE: OnceLock<Vec<u8>> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut a = Document::new(11);
        let mut b = Document::new(22);
        a.set_time(1_000);
        b.set_time(2_000);
        let u1 = a
            .insert("alice", "description", 0, "Hello wörld 👋")
            .unwrap();
        b.apply_update(&u1, Some("alice")).unwrap();
        let u2 = b.edit("bob", "description", 6, 5, "there").unwrap();
        let u3 = b.insert("bob", "comment:1", 0, "first").unwrap();
        let (_, u4) = a.set_field("alice", "status", Some("open".into())).unwrap();
        for u in [&u2, &u3] {
            a.apply_update(u, Some("bob")).unwrap();
        }
        b.apply_update(&u4, Some("alice")).unwrap();
        let (_, _) = b.set_field("bob", "status", Some("done".into())).unwrap();
        let _ = a.undo("alice");
        let merged = a.diff(&b.state_vector()).unwrap();
        b.apply_update(&merged, Some("alice")).unwrap();
        b.encode_state()
    })
}

fn base() -> Document {
    let mut d = Document::new(33);
    d.apply_update(base_state(), None).unwrap();
    d
}

type Shape = (
    BTreeMap<String, String>,
    BTreeMap<String, FieldValue>,
    BTreeMap<u64, u32>,
    usize,
);

fn nonempty(texts: BTreeMap<String, String>) -> BTreeMap<String, String> {
    texts.into_iter().filter(|(_, t)| !t.is_empty()).collect()
}

fn shape(d: &Document) -> Shape {
    (
        nonempty(d.texts()),
        d.fields(),
        tandem_fuzz::clocks(&d.state_vector()),
        d.pending_len(),
    )
}

fn check_round_trip(d: &Document) {
    let state = d.encode_state();
    let mut fresh = Document::new(tandem_fuzz::unused_client(&[&state], 1));
    if let Err(e) = fresh.apply_update(&state, None) {
        panic!("a document's own state does not apply to a fresh document: {e}");
    }

    let (texts, fields, sv, _) = shape(d);
    let (f_texts, f_fields, f_sv, _) = shape(&fresh);
    assert_eq!(f_texts, texts, "texts differ after encode/decode");
    assert_eq!(f_fields, fields, "registers differ after encode/decode");
    assert_eq!(f_sv, sv, "state vectors differ after encode/decode");
}

fn as_update(mut doc: Document, data: &[u8]) {
    let before = shape(&doc);
    match doc.apply_update(data, Some("fuzz")) {
        Err(_) => assert_eq!(shape(&doc), before, "a refused update changed the document"),
        Ok(_) => {
            check_round_trip(&doc);
            let once = shape(&doc);
            if let Err(e) = doc.apply_update(data, Some("fuzz")) {
                panic!("an update that applied once is refused the second time: {e}");
            }
            assert_eq!(
                shape(&doc),
                once,
                "applying an update twice changed the document"
            );
            check_snapshot_complete(doc);
        }
    }
}

/// The encoded state is complete, updates still waiting for dependencies included: whatever
/// arrives next (here the base document, which fuzzed updates often build on), a document
/// loaded from it ends where the original ends.
fn check_snapshot_complete(mut doc: Document) {
    let state = doc.encode_state();
    let mut loaded = Document::new(tandem_fuzz::unused_client(&[&state, base_state()], 1));
    if let Err(e) = loaded.apply_update(&state, None) {
        panic!("a document's own state does not apply: {e}");
    }
    let a = doc.apply_update(base_state(), None).is_ok();
    let b = loaded.apply_update(base_state(), None).is_ok();
    assert_eq!(a, b, "the base applies to one and not the other");
    let (texts, fields, sv, _) = shape(&doc);
    let (l_texts, l_fields, l_sv, _) = shape(&loaded);
    assert_eq!(
        l_texts, texts,
        "a document loaded from the encoded state ends with other texts"
    );
    assert_eq!(
        l_fields, fields,
        "a document loaded from the encoded state ends with other registers"
    );
    assert_eq!(
        l_sv, sv,
        "a document loaded from the encoded state ends with another state vector"
    );
}

fn as_state_vector(doc: &Document, data: &[u8]) {
    if let Ok(diff) = doc.diff(data) {
        let mut fresh = Document::new(tandem_fuzz::unused_client(&[&diff], 1));
        if let Err(e) = fresh.apply_update(&diff, None) {
            panic!("a diff the document computed is refused: {e}");
        }
    }
}

fn guard_implies_decode(data: &[u8]) {
    if tandem_engine::guard::check_update_v1(data).is_ok() {
        if let Err(e) = yrs::Update::decode_v1(data) {
            panic!("the guard accepted an update yrs does not decode: {e}");
        }
    }
    if tandem_engine::guard::check_state_vector(data).is_ok() {
        if let Err(e) = StateVector::decode_v1(data) {
            panic!("the guard accepted a state vector yrs does not decode: {e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    guard_implies_decode(data);
    as_update(Document::new(1), data);
    as_update(base(), data);
    as_state_vector(&Document::new(1), data);
    as_state_vector(&base(), data);
});
