//! Engine micro-benchmarks; prints numbers (no assertions on time).
//!
//! `cargo bench -p tandem-engine --bench engine` prints:
//! - local keystroke insert time,
//! - time to apply one remote single-keystroke update,
//! - updates/s replaying `seph-blog1.json.gz`, one transaction per update, checked against the
//!   trace's `endContent`, the same replay straight into yrs (what the engine adds), and as
//!   a writer's frames through a room, one per call and in runs of 32;
//! - time to check, and to load, the replayed document's whole encoded state.
//!
//! The traces are read from `$TANDEM_TRACES` or `../shared/traces` beside the repository.

use flate2::read::GzDecoder;
use serde::Deserialize;
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;
use tandem_engine::Document;

#[derive(Deserialize)]
struct Trace {
    #[serde(rename = "startContent", default)]
    start_content: String,
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    patches: Vec<(u32, u32, String)>,
}

fn traces_dir() -> PathBuf {
    match std::env::var_os("TANDEM_TRACES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces"),
    }
}

fn load(name: &str) -> Trace {
    let path = traces_dir().join(name);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut json = String::new();
    GzDecoder::new(file).read_to_string(&mut json).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn per_op(label: &str, n: usize, start: Instant) {
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{label:<44} {:>10.2} µs/op  ({:>10.0} ops/s)",
        ns / 1e3,
        1e9 / ns
    );
}

fn main() {
    // Only run when asked as a benchmark (cargo test runs bench targets with --test? no; but
    // `cargo bench -- --list` style filters are accepted and ignored).
    const N: usize = 20_000;

    // 1. Local keystrokes at the end of a growing text.
    let mut doc = Document::new(1);
    let start = Instant::now();
    for i in 0..N {
        doc.insert("alice", "description", i as u32, "x").unwrap();
    }
    per_op("local keystroke insert (returns update)", N, start);

    // 2. Remote single-keystroke updates.
    let mut writer = Document::new(2);
    let updates: Vec<Vec<u8>> = (0..N)
        .map(|i| writer.insert("bob", "description", i as u32, "y").unwrap())
        .collect();
    let mut reader = Document::new(3);
    let start = Instant::now();
    for u in &updates {
        reader.apply_update(u, Some("bob")).unwrap();
    }
    per_op("apply remote single-keystroke update", N, start);

    // 3. Trace replay, one transaction (and one update) per trace transaction.
    let trace = load("seph-blog1.json.gz");
    assert!(
        trace.end_content.is_ascii(),
        "code point = UTF-16 unit only for ASCII traces"
    );
    let mut writer = Document::new(4);
    if !trace.start_content.is_empty() {
        writer
            .insert("seph", "text", 0, &trace.start_content)
            .unwrap();
    }
    let start = Instant::now();
    let mut updates = Vec::with_capacity(trace.txns.len());
    for txn in &trace.txns {
        let patches: Vec<(u32, u32, &str)> = txn
            .patches
            .iter()
            .map(|(pos, del, ins)| (*pos, *del, ins.as_str()))
            .collect();
        writer.set_time(updates.len() as u64 * 1_000);
        updates.push(writer.edit_many("seph", "text", &patches).unwrap());
    }
    per_op("trace: local transaction -> update", updates.len(), start);
    assert_eq!(writer.text("text").unwrap(), trace.end_content);

    let mut replica = Document::new(5);
    if !trace.start_content.is_empty() {
        replica.apply_update(&writer.encode_state(), None).unwrap();
    }
    let start = Instant::now();
    for u in &updates {
        replica.apply_update(u, Some("seph")).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(replica.text("text").unwrap(), trace.end_content);
    println!(
        "trace replay seph-blog1: {} updates applied in {:.3} s = {:.0} updates/s (ends at endContent: yes)",
        updates.len(),
        secs,
        updates.len() as f64 / secs
    );

    // The same replay straight into yrs (no guard, no dependency check, no observers): what
    // the engine adds per update is the difference.
    let raw = yrs::Doc::with_options(yrs::Options {
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::with_client_id(yrs::ClientID::new(7))
    });
    let start = Instant::now();
    for u in &updates {
        use yrs::updates::decoder::Decode;
        use yrs::Transact;
        let decoded = yrs::Update::decode_v1(u).unwrap();
        raw.transact_mut().apply_update(decoded).unwrap();
    }
    per_op("trace replay straight into yrs", updates.len(), start);

    // The same replay as a writer's frames through a room: one frame at a time, and in runs
    // of 32 (`Room::handle_updates`, one yrs transaction per run), as the server hands over
    // what a connection sent while the document task was busy.
    use tandem_engine::protocol::{ConnInfo, Limits, Role, Room};
    let frames: Vec<Vec<u8>> = updates
        .iter()
        .map(|u| {
            let mut w = tandem_engine::wire::Writer::new();
            w.var_u64(0).var_u64(2).var_bytes(u);
            w.finish()
        })
        .collect();
    for per in [1, 32] {
        let mut room = Room::new(Document::new(8), Limits::default());
        let writer = ConnInfo {
            role: Role::Write,
            user: Some("seph".into()),
            extensions: false,
            name: None,
            stateless: false,
        };
        room.join(1, writer, 0);
        let start = Instant::now();
        for chunk in frames.chunks(per) {
            let out = room.handle_updates(1, chunk, 0);
            assert!(out.error.is_none() && out.accepted.len() == chunk.len());
        }
        per_op(
            &format!("trace replay through a room, {per} frames per call"),
            updates.len(),
            start,
        );
        assert_eq!(room.document().text("text").unwrap(), trace.end_content);
    }

    // 4. A whole document's state, as the server loads it and a joiner's step 2 carries it:
    // the structural check alone (its blocks refer to each other throughout, so the cycle
    // check runs in full), then the whole load.
    let state = replica.encode_state();
    const LOADS: usize = 20;
    let start = Instant::now();
    for _ in 0..LOADS {
        tandem_engine::guard::check_update_v1(&state).unwrap();
    }
    per_op(
        &format!("check seph-blog1's final state ({} KB)", state.len() / 1024),
        LOADS,
        start,
    );
    let start = Instant::now();
    for _ in 0..LOADS {
        let mut fresh = Document::new(6);
        fresh.apply_update(&state, None).unwrap();
        assert_eq!(fresh.text("text").unwrap(), trace.end_content);
    }
    per_op("load seph-blog1's final state", LOADS, start);
}
