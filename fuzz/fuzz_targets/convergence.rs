//! `convergence`: operation scripts on 3 to 5 replicas with arbitrary delivery schedules.
//!
//! Each replica is a `Document` with its own `Presence`, a clock skewed by up to ±5 minutes,
//! and several users. Operations: text edits (any UTF-16 offset), register writes and deletes,
//! per-user undo/redo, presence changes (state, cursor, typing). Every update and awareness
//! update a replica produces is put in the inbox of every other replica; the schedule then
//! delivers inbox messages in any order, duplicates them, drops them, and resyncs pairs of
//! replicas the way sync step 1/2 does (a diff against the receiver's state vector). A replica
//! may also restart from its own encoded state.
//!
//! At the end every inbox is delivered, then replicas resync pairwise until nothing changes.
//!
//! Properties:
//! - a register write is the writer's current state right after it (hybrid clock);
//! - every replica ends with identical texts, register values and versions, state vectors,
//!   and no updates pending for missing dependencies;
//! - every replica ends with the same presence states;
//! - the updates the replicas made, merged (`merge_updates`: whole, and in runs of five) and
//!   applied to a new replica, rebuild the same texts and state vector.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use tandem_engine::presence::{Presence, PresenceState, User};
use tandem_engine::Document;
use yrs::sync::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const FIELDS: [&str; 3] = ["description", "comment:1", "title"];
const REGISTERS: [&str; 3] = ["status", "assignee", "due"];
const MAX_OPS: usize = 128;

#[derive(Debug, Arbitrary)]
enum Op {
    Edit {
        r: u8,
        user: u8,
        field: u8,
        index: u16,
        delete: u8,
        text: String,
    },
    SetField {
        r: u8,
        user: u8,
        name: u8,
        value: Option<Value>,
    },
    Undo {
        r: u8,
        user: u8,
    },
    Redo {
        r: u8,
        user: u8,
    },
    StopCapturing {
        r: u8,
        user: u8,
    },
    Presence {
        r: u8,
        change: PresenceChange,
    },
    Advance {
        ms: u16,
    },
    /// Deliver message `pick` of replica `to`'s inbox (any order).
    Deliver {
        to: u8,
        pick: u8,
    },
    /// Deliver it and keep it for a later duplicate.
    Duplicate {
        to: u8,
        pick: u8,
    },
    /// Lose it.
    Drop {
        to: u8,
        pick: u8,
    },
    /// `to` sends its state vector to `from`, which answers with the diff.
    Resync {
        from: u8,
        to: u8,
    },
    /// Replica `r` restarts from its own encoded state (a server reloading a snapshot, a
    /// browser reloading from IndexedDB); updates waiting in it must survive.
    Restart {
        r: u8,
    },
}

#[derive(Debug, Arbitrary)]
enum Value {
    Int(i32),
    Text(String),
    Bool(bool),
}

#[derive(Debug, Arbitrary)]
enum PresenceChange {
    Join { user: u8 },
    Cursor { field: u8, anchor: u16, head: u16 },
    Typing { field: Option<u8> },
    Viewing(bool),
}

#[derive(Debug, Arbitrary)]
struct Script {
    replicas: u8,
    /// Clock skew per replica, in 10 ms steps (±5.5 minutes).
    skews: [i16; 5],
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Message {
    Update { bytes: Vec<u8>, author: String },
    Awareness(Vec<u8>),
}

struct Replica {
    doc: Document,
    presence: Presence,
    skew: i64,
    inbox: Vec<Message>,
}

struct World {
    replicas: Vec<Replica>,
    now: u64,
    /// Every document update any replica made, in the order they were made.
    log: Vec<Vec<u8>>,
}

fn nonempty(texts: BTreeMap<String, String>) -> BTreeMap<String, String> {
    texts.into_iter().filter(|(_, t)| !t.is_empty()).collect()
}

impl World {
    fn time(&self, r: usize) -> u64 {
        self.now.saturating_add_signed(self.replicas[r].skew)
    }

    fn pick(&self, r: u8) -> usize {
        usize::from(r) % self.replicas.len()
    }

    fn broadcast(&mut self, from: usize, msg: Message) {
        if let Message::Update { bytes, .. } = &msg {
            self.log.push(bytes.clone());
        }
        for (i, r) in self.replicas.iter_mut().enumerate() {
            if i != from {
                r.inbox.push(msg.clone());
            }
        }
    }

    fn receive(&mut self, to: usize, msg: &Message) {
        let now = self.time(to);
        let r = &mut self.replicas[to];
        r.doc.set_time(now);
        match msg {
            Message::Update { bytes, author } => {
                if let Err(e) = r.doc.apply_update(bytes, Some(author)) {
                    panic!("replica {to} refused an update another replica made: {e}");
                }
            }
            Message::Awareness(bytes) => {
                let update = AwarenessUpdate::decode_v1(bytes).expect("awareness update decodes");
                if let Err(e) = r.presence.apply_update(update, now) {
                    panic!("replica {to} refused an awareness update: {e}");
                }
            }
        }
    }

    fn resync(&mut self, from: usize, to: usize) -> bool {
        if from == to {
            return false;
        }
        let sv = self.replicas[to].doc.state_vector();
        let diff = self.replicas[from]
            .doc
            .diff(&sv)
            .expect("a replica's own state vector is valid");
        let before = self.replicas[to].doc.state_vector();
        let pending_before = self.replicas[to].doc.pending_len();
        self.receive(
            to,
            &Message::Update {
                bytes: diff,
                author: String::new(),
            },
        );
        let full = self.replicas[from]
            .presence
            .full_update()
            .expect("full awareness update");
        self.receive(to, &Message::Awareness(full.encode_v1()));
        self.replicas[to].doc.state_vector() != before
            || self.replicas[to].doc.pending_len() != pending_before
    }

    fn op(&mut self, op: Op) {
        match op {
            Op::Edit {
                r,
                user,
                field,
                index,
                delete,
                text,
            } => {
                let r = self.pick(r);
                let user = USERS[usize::from(user) % USERS.len()];
                let field = FIELDS[usize::from(field) % FIELDS.len()];
                let now = self.time(r);
                let doc = &mut self.replicas[r].doc;
                doc.set_time(now);
                let len = doc.text_len(field);
                let index = u32::from(index) % (len + 1);
                let delete = u32::from(delete) % (len - index + 1);
                match doc.edit(user, field, index, delete, &text) {
                    Ok(update) => self.broadcast(
                        r,
                        Message::Update {
                            bytes: update,
                            author: user.to_owned(),
                        },
                    ),
                    Err(e) => panic!("an in-range edit failed: {e}"),
                }
            }
            Op::SetField {
                r,
                user,
                name,
                value,
            } => {
                let r = self.pick(r);
                let user = USERS[usize::from(user) % USERS.len()];
                let name = REGISTERS[usize::from(name) % REGISTERS.len()];
                let now = self.time(r);
                let doc = &mut self.replicas[r].doc;
                doc.set_time(now);
                let value = value.map(|v| match v {
                    Value::Int(i) => serde_json::Value::from(i),
                    Value::Text(s) => serde_json::Value::from(s),
                    Value::Bool(b) => serde_json::Value::from(b),
                });
                let (state, update) = doc
                    .set_field(user, name, value)
                    .expect("a register write on a valid name");
                assert_eq!(
                    doc.field(name),
                    state,
                    "a register write is not the writer's current state"
                );
                self.broadcast(
                    r,
                    Message::Update {
                        bytes: update,
                        author: user.to_owned(),
                    },
                );
            }
            Op::Undo { r, user } | Op::Redo { r, user } => {
                let undo = matches!(op, Op::Undo { .. });
                let r = self.pick(r);
                let user = USERS[usize::from(user) % USERS.len()];
                let now = self.time(r);
                let doc = &mut self.replicas[r].doc;
                doc.set_time(now);
                let update = if undo { doc.undo(user) } else { doc.redo(user) };
                if let Some(bytes) = update {
                    self.broadcast(
                        r,
                        Message::Update {
                            bytes,
                            author: user.to_owned(),
                        },
                    );
                }
            }
            Op::StopCapturing { r, user } => {
                let r = self.pick(r);
                self.replicas[r]
                    .doc
                    .stop_capturing(USERS[usize::from(user) % USERS.len()]);
            }
            Op::Presence { r, change } => {
                let r = self.pick(r);
                let now = self.time(r);
                let p = &mut self.replicas[r].presence;
                let result = match change {
                    PresenceChange::Join { user } => {
                        let u = USERS[usize::from(user) % USERS.len()];
                        p.set_state(PresenceState::new(User::new(u, u, "#30bced"), now), now);
                        Ok(())
                    }
                    PresenceChange::Cursor {
                        field,
                        anchor,
                        head,
                    } => {
                        let field = FIELDS[usize::from(field) % FIELDS.len()];
                        p.set_cursor(field, u32::from(anchor), u32::from(head), now)
                    }
                    PresenceChange::Typing { field } => {
                        p.set_typing(field.map(|f| FIELDS[usize::from(f) % FIELDS.len()]), now)
                    }
                    PresenceChange::Viewing(v) => p.set_viewing(v, now),
                };
                // No local state yet, or a cursor past the end: refused, nothing to send.
                if result.is_ok() {
                    if let Ok(bytes) = p.encode_local_update() {
                        self.broadcast(r, Message::Awareness(bytes));
                    }
                }
            }
            Op::Advance { ms } => self.now += u64::from(ms),
            Op::Deliver { to, pick } | Op::Duplicate { to, pick } | Op::Drop { to, pick } => {
                let to = self.pick(to);
                let inbox = &self.replicas[to].inbox;
                if inbox.is_empty() {
                    return;
                }
                let i = usize::from(pick) % inbox.len();
                match op {
                    Op::Deliver { .. } => {
                        let msg = self.replicas[to].inbox.remove(i);
                        self.receive(to, &msg);
                    }
                    Op::Duplicate { .. } => {
                        let msg = self.replicas[to].inbox[i].clone();
                        self.receive(to, &msg);
                    }
                    _ => {
                        self.replicas[to].inbox.remove(i);
                    }
                }
            }
            Op::Restart { r } => {
                let r = self.pick(r);
                let replica = &mut self.replicas[r];
                let state = replica.doc.encode_state();
                let mut doc = Document::new(replica.doc.client_id());
                if let Err(e) = doc.apply_update(&state, None) {
                    panic!("replica {r} cannot load its own state: {e}");
                }
                assert_eq!(
                    nonempty(doc.texts()),
                    nonempty(replica.doc.texts()),
                    "replica {r} reloaded with other texts"
                );
                assert_eq!(
                    doc.fields(),
                    replica.doc.fields(),
                    "replica {r} reloaded with other registers"
                );
                // Presence is not stored; the old one stays (it only reads the document).
                replica.doc = doc;
            }
            Op::Resync { from, to } => {
                let (from, to) = (self.pick(from), self.pick(to));
                self.resync(from, to);
            }
        }
    }

    fn settle(&mut self) {
        for to in 0..self.replicas.len() {
            for msg in std::mem::take(&mut self.replicas[to].inbox) {
                self.receive(to, &msg);
            }
        }
        // Anti-entropy: everyone to replica 0, then replica 0 to everyone, until quiet.
        let n = self.replicas.len();
        for round in 0.. {
            assert!(
                round < 4,
                "replicas do not settle after {round} resync rounds"
            );
            let mut changed = false;
            for i in 1..n {
                changed |= self.resync(i, 0);
            }
            for i in 1..n {
                changed |= self.resync(0, i);
            }
            if !changed {
                break;
            }
        }
    }

    /// The log merged in runs (joined by concatenation where each client's updates follow
    /// on, decoded by yrs otherwise) rebuilds what the replicas converged to.
    fn check_merged_log(&self, run: usize) {
        let mut rebuilt = Document::new(1_000);
        for part in self.log.chunks(run.max(1)) {
            let parts: Vec<&[u8]> = part.iter().map(Vec::as_slice).collect();
            let merged = tandem_engine::merge_updates(&parts).expect("made updates merge");
            rebuilt
                .apply_update(&merged, None)
                .expect("a merged run applies");
        }
        let first = &self.replicas[0];
        assert_eq!(rebuilt.pending_len(), 0, "merged log: pending updates");
        assert_eq!(
            nonempty(rebuilt.texts()),
            nonempty(first.doc.texts()),
            "merged log: texts differ"
        );
        assert_eq!(
            tandem_fuzz::clocks(&rebuilt.state_vector()),
            tandem_fuzz::clocks(&first.doc.state_vector()),
            "merged log: state vectors differ"
        );
    }

    fn check(&self) {
        let first = &self.replicas[0];
        let texts = nonempty(first.doc.texts());
        let fields = first.doc.fields();
        let sv = tandem_fuzz::clocks(&first.doc.state_vector());
        let presence = presence_of(&first.presence);
        for (i, r) in self.replicas.iter().enumerate() {
            assert_eq!(
                r.doc.pending_len(),
                0,
                "replica {i} still has pending updates"
            );
            assert_eq!(nonempty(r.doc.texts()), texts, "replica {i}: texts differ");
            assert_eq!(r.doc.fields(), fields, "replica {i}: registers differ");
            let r_sv = tandem_fuzz::clocks(&r.doc.state_vector());
            assert_eq!(r_sv, sv, "replica {i}: state vectors differ");
            assert_eq!(
                presence_of(&r.presence),
                presence,
                "replica {i}: presence differs"
            );
        }
    }
}

/// Every present awareness state: client id → (clock, JSON).
fn presence_of(p: &Presence) -> BTreeMap<u64, (u32, String)> {
    p.awareness()
        .iter()
        .filter_map(|(id, s)| s.data.map(|d| (id.get(), (s.clock, d.to_string()))))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(script) = Script::arbitrary(&mut u) else {
        return;
    };
    // `FUZZ_TRACE=1 target/fuzz/.../convergence <input>` shows the script an input is.
    if std::env::var_os("FUZZ_TRACE").is_some() {
        eprintln!("{script:#?}");
    }
    let n = 3 + usize::from(script.replicas % 3);
    let replicas = (0..n)
        .map(|i| {
            let doc = Document::new(i as u64 + 1);
            let presence = Presence::new(doc.doc().clone()).expect("UTF-16 document");
            Replica {
                doc,
                presence,
                skew: i64::from(script.skews[i]) * 10,
                inbox: Vec::new(),
            }
        })
        .collect();
    let mut world = World {
        replicas,
        now: 1_700_000_000_000,
        log: Vec::new(),
    };
    for op in script.ops.into_iter().take(MAX_OPS) {
        world.op(op);
    }
    world.settle();
    world.check();
    world.check_merged_log(usize::MAX);
    world.check_merged_log(5);
});
