//! `resume`: the sid log of the real store (`tandem_server::infra::store::sqlite::SqliteStore`, on a
//! tmpfs directory) and SSE-style consumers that are cut off at arbitrary points and resume
//! from the last sid they saw, the way `GET /docs/{doc}/events` resumes with `Last-Event-ID`
//! and `GET /docs/{doc}/updates?since=SID` answers.
//!
//! A consumer starts from a snapshot (`load`: snapshot + log, `last_sid` as the snapshot
//! event's id), then repeatedly asks `updates_since(last seen sid)` and takes only the first
//! `cut` entries before its connection "drops". Writers append real Yjs updates (one by one,
//! as batches, or several concurrently so group commit batches them), compaction cuts the log
//! at arbitrary sids with a snapshot of the document at that sid, the store is closed and
//! reopened (a restart), and reads race concurrent appends.
//!
//! Properties, against a model of everything appended:
//! - sids are 1, 2, 3… per document: an append gets the next sid, a batch a contiguous range,
//!   concurrent appends exactly the next range between them; never reused, also across
//!   compaction and restarts;
//! - a resume from sid S returns exactly the entries S+1..=last, each with the bytes and author
//!   appended under that sid: no gap, no duplicate (also while appends race the read: then a
//!   contiguous prefix up to the `last_sid` it reports);
//! - a resume from a sid older than the snapshot is answered `Compacted` with the snapshot's
//!   sid (the consumer must reset), never with a log that silently skips;
//!   a resume from beyond the last sid is `Ahead`;
//! - compaction is refused beyond the log or behind the snapshot, and allowed otherwise;
//! - `load` returns the snapshot and the log after it, matching the model;
//! - every consumer, once caught up, has the producer's texts (resets included).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use tandem_engine::Document;
use tandem_server::infra::store::sqlite::{SqliteOptions, SqliteStore};
use tandem_server::infra::store::{Compaction, NewUpdate, Sid, Since, Store, StoreError};

/// Documents per input.
const DOCS: usize = 2;
/// Consumers per input.
const CONSUMERS: usize = 3;
/// Most operations taken from one input.
const MAX_OPS: usize = 48;
/// The store directory is recreated after this many inputs, so it stays small.
const INPUTS_PER_STORE: u64 = 2_000;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Appends `n` updates: one by one, as one batch, or concurrently.
    Write {
        doc: u8,
        n: u8,
        how: How,
        text: String,
    },
    /// Compacts up to `last_sid - back` (may be behind the snapshot).
    Compact { doc: u8, back: u8 },
    /// Compacts beyond the log.
    CompactAhead { doc: u8, ahead: u8 },
    /// A consumer resumes and takes `cut` entries before it is cut off.
    Read { consumer: u8, cut: u8 },
    /// A consumer resumes while `n` appends race its read.
    ReadDuringWrite {
        consumer: u8,
        cut: u8,
        n: u8,
        text: String,
    },
    /// A consumer (re)subscribes from scratch.
    Subscribe { consumer: u8, doc: u8 },
    /// A resume from an arbitrary sid.
    Forged { doc: u8, sid: u64 },
    /// Close and reopen the store (a restart).
    Reopen,
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum How {
    OneByOne,
    Batch,
    Concurrent,
}

struct Shared {
    rt: tokio::runtime::Runtime,
    store: SqliteStore,
    dir: PathBuf,
    inputs: u64,
}

static SHARED: Mutex<Option<Shared>> = Mutex::new(None);

fn base_dir() -> PathBuf {
    let root = std::env::var_os("TANDEM_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        })
        .join("tandem-fuzz-resume");
    // Remove directories of fuzz processes that are gone.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !PathBuf::from("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    root.join(std::process::id().to_string())
}

fn open(dir: &PathBuf) -> SqliteStore {
    SqliteStore::open(dir, SqliteOptions::default()).expect("store opens")
}

fn fresh_shared() -> Shared {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = base_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let store = open(&dir);
    Shared {
        rt,
        store,
        dir,
        inputs: 0,
    }
}

struct ModelDoc {
    name: String,
    /// Every update ever appended, by sid.
    log: BTreeMap<Sid, (Bytes, String)>,
    last_sid: Sid,
    snapshot_sid: Sid,
    /// The replica that makes the updates.
    producer: Document,
    edits: u32,
}

impl ModelDoc {
    /// A new update from the producer.
    fn make_update(&mut self, text: &str) -> Bytes {
        self.edits += 1;
        let len = self.producer.text_len("description");
        let at = self.edits % (len + 1);
        let chunk = if text.is_empty() { "x" } else { text };
        let update = self
            .producer
            .edit("writer", "description", at, 0, chunk)
            .expect("insert in range");
        Bytes::from(update)
    }

    /// The document's state at `sid`: every update up to it, applied in sid order.
    fn state_at(&self, sid: Sid) -> Bytes {
        let mut d = Document::new(9);
        for (_, (u, _)) in self.log.range(..=sid) {
            d.apply_update(u, None).expect("logged update applies");
        }
        Bytes::from(d.encode_state())
    }
}

struct Consumer {
    doc: usize,
    /// Last sid seen; `None` before the first subscribe.
    last_seen: Option<Sid>,
    replica: Document,
}

struct Run<'a> {
    shared: &'a mut Shared,
    docs: Vec<ModelDoc>,
    consumers: Vec<Consumer>,
    author: usize,
}

fn texts(d: &Document) -> BTreeMap<String, String> {
    d.texts()
        .into_iter()
        .filter(|(_, t)| !t.is_empty())
        .collect()
}

impl Run<'_> {
    fn author(&mut self) -> String {
        self.author += 1;
        format!("user-{}", self.author % 3)
    }

    fn record(&mut self, doc: usize, sid: Sid, update: Bytes, author: String) {
        let m = &mut self.docs[doc];
        assert!(
            m.log.insert(sid, (update, author)).is_none(),
            "sid {sid} of {} given twice",
            m.name
        );
        m.last_sid = m.last_sid.max(sid);
    }

    /// Appends `n` updates to `doc` and checks the sids they got.
    fn write(&mut self, doc: usize, n: usize, how: How, text: &str) {
        let first = self.docs[doc].last_sid + 1;
        let updates: Vec<(Bytes, String)> = (0..n)
            .map(|_| {
                let u = self.docs[doc].make_update(text);
                (u, self.author())
            })
            .collect();
        let name = self.docs[doc].name.clone();
        let store = self.shared.store.clone();
        let sids: Vec<Sid> = match how {
            How::OneByOne => updates
                .iter()
                .map(|(u, a)| {
                    self.shared
                        .rt
                        .block_on(store.append(&name, u.clone(), a))
                        .expect("append")
                })
                .collect(),
            How::Batch => {
                let batch = updates
                    .iter()
                    .map(|(u, a)| NewUpdate {
                        update: u.clone(),
                        author: a.clone(),
                    })
                    .collect();
                let range = self
                    .shared
                    .rt
                    .block_on(store.append_batch(&name, batch))
                    .expect("append batch");
                (range.first..=range.last).collect()
            }
            How::Concurrent => self.shared.rt.block_on(async {
                let tasks: Vec<_> = updates
                    .iter()
                    .map(|(u, a)| {
                        let (store, name, u, a) =
                            (store.clone(), name.clone(), u.clone(), a.clone());
                        tokio::spawn(async move { store.append(&name, u, &a).await })
                    })
                    .collect();
                let mut sids = Vec::new();
                for t in tasks {
                    sids.push(t.await.expect("append task").expect("append"));
                }
                sids
            }),
        };
        let mut sorted = sids.clone();
        sorted.sort_unstable();
        let expected: Vec<Sid> = (first..first + n as u64).collect();
        assert_eq!(sorted, expected, "{name}: appends got sids {sids:?}");
        if matches!(how, How::OneByOne | How::Batch) {
            assert_eq!(sids, expected, "{name}: sids out of append order");
        }
        for (sid, (u, a)) in sids.into_iter().zip(updates) {
            self.record(doc, sid, u, a);
        }
    }

    fn compact(&mut self, doc: usize, upto: Sid) {
        let m = &self.docs[doc];
        let snapshot = m.state_at(upto);
        let compaction = Compaction {
            upto,
            state: snapshot,
            authors: Vec::new(),
            checkpoint_at: None,
        };
        let result = self
            .shared
            .rt
            .block_on(self.shared.store.compact(&m.name, compaction));
        let m = &mut self.docs[doc];
        match result {
            Ok(done) => {
                assert!(
                    m.last_sid > 0 && upto > 0 && upto >= m.snapshot_sid && upto <= m.last_sid,
                    "{}: compaction to {upto} allowed with snapshot {} and last sid {}",
                    m.name,
                    m.snapshot_sid,
                    m.last_sid
                );
                // Compacting again to the snapshot's own sid removes nothing.
                let expected_removed = if upto > m.snapshot_sid {
                    m.log.range(m.snapshot_sid + 1..=upto).count() as u64
                } else {
                    0
                };
                assert_eq!(
                    done.removed, expected_removed,
                    "{}: entries removed",
                    m.name
                );
                m.snapshot_sid = upto;
            }
            Err(StoreError::UnknownDocument(_)) => {
                assert_eq!(m.last_sid, 0, "{}: a written document is unknown", m.name)
            }
            Err(StoreError::CompactBeyondLog { last_sid, .. }) => {
                assert_eq!(last_sid, m.last_sid);
                assert!(
                    upto > m.last_sid,
                    "{}: refused compaction to {upto}",
                    m.name
                );
            }
            Err(StoreError::CompactBehindSnapshot { snapshot_sid, .. }) => {
                assert_eq!(snapshot_sid, m.snapshot_sid);
                assert!(upto == 0 || upto < m.snapshot_sid);
            }
            Err(e) => panic!("{}: compaction failed: {e}", m.name),
        }
    }

    /// A consumer subscribes from scratch: the snapshot event, then the log after it.
    fn subscribe(&mut self, c: usize, doc: usize) {
        let name = self.docs[doc].name.clone();
        let loaded = self
            .shared
            .rt
            .block_on(self.shared.store.load(&name))
            .expect("load");
        let m = &self.docs[doc];
        let mut replica = Document::new(500 + c as u64);
        let last_seen = match loaded {
            None => {
                assert_eq!(m.last_sid, 0, "{name}: a written document loads as none");
                0
            }
            Some(l) => {
                assert_eq!(l.last_sid, m.last_sid, "{name}: loaded last sid");
                match &l.snapshot {
                    None => assert_eq!(m.snapshot_sid, 0, "{name}: snapshot missing"),
                    Some(s) => {
                        assert_eq!(s.sid, m.snapshot_sid, "{name}: snapshot sid");
                        assert_eq!(s.state, m.state_at(s.sid), "{name}: snapshot content");
                        replica
                            .apply_update(&s.state, None)
                            .expect("snapshot applies");
                    }
                }
                let sids: Vec<Sid> = l.updates.iter().map(|e| e.sid).collect();
                let expected: Vec<Sid> = (m.snapshot_sid + 1..=m.last_sid).collect();
                assert_eq!(sids, expected, "{name}: loaded log has a gap or duplicate");
                for e in &l.updates {
                    let (u, a) = &m.log[&e.sid];
                    assert_eq!(
                        (&e.update, &e.author),
                        (u, a),
                        "{name}: sid {} content",
                        e.sid
                    );
                    replica
                        .apply_update(&e.update, None)
                        .expect("logged update applies");
                }
                l.last_sid
            }
        };
        self.consumers[c] = Consumer {
            doc,
            last_seen: Some(last_seen),
            replica,
        };
    }

    /// Checks an `updates_since(since)` answer against the model; `last_range` bounds the
    /// `last_sid` a read racing appends may report. Returns the entries to deliver, or `None`
    /// when the consumer must reset.
    fn check_since(
        &self,
        doc: usize,
        since: Sid,
        answer: Since,
        last_range: (Sid, Sid),
        snapshot_sid: Sid,
    ) -> Option<Vec<(Sid, Bytes)>> {
        let m = &self.docs[doc];
        match answer {
            Since::Updates { entries, last_sid } => {
                assert!(
                    since >= snapshot_sid,
                    "{}: resume from {since} behind the snapshot at {snapshot_sid} answered with a log",
                    m.name
                );
                assert!(
                    last_sid >= last_range.0 && last_sid <= last_range.1,
                    "{}: last sid {last_sid} outside {last_range:?}",
                    m.name
                );
                let sids: Vec<Sid> = entries.iter().map(|e| e.sid).collect();
                let expected: Vec<Sid> = (since + 1..=last_sid).collect();
                assert_eq!(
                    sids, expected,
                    "{}: resume from {since}: gap or duplicate",
                    m.name
                );
                for e in &entries {
                    let (u, a) = &m.log[&e.sid];
                    assert_eq!(
                        (&e.update, &e.author),
                        (u, a),
                        "{}: sid {} content",
                        m.name,
                        e.sid
                    );
                }
                Some(entries.into_iter().map(|e| (e.sid, e.update)).collect())
            }
            Since::Compacted { snapshot_sid: s } => {
                assert_eq!(
                    s, snapshot_sid,
                    "{}: compacted answer's snapshot sid",
                    m.name
                );
                assert!(
                    since < s,
                    "{}: resume from {since} told compacted at {s}",
                    m.name
                );
                None
            }
            Since::Ahead { last_sid } => {
                assert!(
                    since > last_sid && last_sid >= last_range.0 && last_sid <= last_range.1,
                    "{}: resume from {since} told ahead of {last_sid}",
                    m.name
                );
                None
            }
        }
    }

    /// Consumer `c` resumes; takes the first `cut` entries (all when `None`). Returns how many
    /// entries it took.
    fn read(&mut self, c: usize, cut: Option<usize>, race: Option<(usize, &str)>) -> usize {
        let doc = self.consumers[c].doc;
        let Some(since) = self.consumers[c].last_seen else {
            self.subscribe(c, doc);
            return 0;
        };
        let name = self.docs[doc].name.clone();
        let store = self.shared.store.clone();
        let last_before = self.docs[doc].last_sid;
        let snapshot_sid = self.docs[doc].snapshot_sid;
        let answer = match race {
            None => self
                .shared
                .rt
                .block_on(store.updates_since(&name, since))
                .expect("updates_since"),
            Some((n, text)) => {
                let updates: Vec<(Bytes, String)> = (0..n)
                    .map(|_| {
                        let u = self.docs[doc].make_update(text);
                        (u, self.author())
                    })
                    .collect();
                let (answer, sids) = self.shared.rt.block_on(async {
                    let appends: Vec<_> = updates
                        .iter()
                        .map(|(u, a)| {
                            let (store, name, u, a) =
                                (store.clone(), name.clone(), u.clone(), a.clone());
                            tokio::spawn(async move { store.append(&name, u, &a).await })
                        })
                        .collect();
                    let answer = store.updates_since(&name, since).await;
                    let mut sids = Vec::new();
                    for t in appends {
                        sids.push(t.await.expect("append task").expect("append"));
                    }
                    (answer.expect("updates_since"), sids)
                });
                let mut sorted = sids.clone();
                sorted.sort_unstable();
                let expected: Vec<Sid> = (last_before + 1..=last_before + n as u64).collect();
                assert_eq!(sorted, expected, "{name}: racing appends got sids {sids:?}");
                for (sid, (u, a)) in sids.into_iter().zip(updates) {
                    self.record(doc, sid, u, a);
                }
                answer
            }
        };
        let last_after = self.docs[doc].last_sid;
        match self.check_since(doc, since, answer, (last_before, last_after), snapshot_sid) {
            Some(entries) => {
                let take = cut.unwrap_or(entries.len()).min(entries.len());
                let consumer = &mut self.consumers[c];
                for (sid, update) in &entries[..take] {
                    assert_eq!(Some(sid - 1), consumer.last_seen, "delivered out of order");
                    consumer
                        .replica
                        .apply_update(update, None)
                        .expect("logged update applies");
                    consumer.last_seen = Some(*sid);
                }
                take
            }
            None => {
                // Told to reset: start again from a snapshot.
                self.subscribe(c, doc);
                1
            }
        }
    }

    fn forged(&mut self, doc: usize, sid: Sid) {
        let m = &self.docs[doc];
        let answer = self
            .shared
            .rt
            .block_on(self.shared.store.updates_since(&m.name, sid))
            .expect("updates_since");
        let expect_ahead = sid > m.last_sid;
        let is_ahead = matches!(answer, Since::Ahead { .. });
        assert_eq!(
            is_ahead, expect_ahead,
            "{}: resume from {sid}: {answer:?}",
            m.name
        );
        self.check_since(doc, sid, answer, (m.last_sid, m.last_sid), m.snapshot_sid);
    }

    fn reopen(&mut self) {
        let s = &mut *self.shared;
        s.rt.block_on(s.store.close()).expect("close");
        s.store = open(&s.dir);
    }

    fn finish(&mut self) {
        for c in 0..self.consumers.len() {
            // Catch up completely.
            let mut rounds = 0;
            while self.read(c, None, None) > 0 {
                rounds += 1;
                assert!(rounds < 8, "consumer {c} never catches up");
            }
            let consumer = &self.consumers[c];
            let m = &self.docs[consumer.doc];
            assert_eq!(
                consumer.last_seen,
                Some(m.last_sid),
                "consumer {c} caught up"
            );
            assert_eq!(
                texts(&consumer.replica),
                texts(&m.producer),
                "consumer {c} of {} has other texts than the producer",
                m.name
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut guard = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_none_or(|s| s.inputs >= INPUTS_PER_STORE) {
        if let Some(old) = guard.take() {
            let _ = old.rt.block_on(old.store.close());
            let _ = std::fs::remove_dir_all(&old.dir);
        }
        *guard = Some(fresh_shared());
    }
    let shared = guard.as_mut().expect("store is open");
    shared.inputs += 1;
    let input = shared.inputs;
    let docs = (0..DOCS)
        .map(|i| ModelDoc {
            name: format!("doc-{input}-{i}"),
            log: BTreeMap::new(),
            last_sid: 0,
            snapshot_sid: 0,
            producer: Document::new(100 + i as u64),
            edits: 0,
        })
        .collect();
    let consumers = (0..CONSUMERS)
        .map(|c| Consumer {
            doc: c % DOCS,
            last_seen: None,
            replica: Document::new(500 + c as u64),
        })
        .collect();
    let mut run = Run {
        shared,
        docs,
        consumers,
        author: 0,
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Write { doc, n, how, text } => {
                let n = 1 + usize::from(n % 4);
                run.write(usize::from(doc) % DOCS, n, how, &text)
            }
            Op::Compact { doc, back } => {
                let doc = usize::from(doc) % DOCS;
                let upto = run.docs[doc].last_sid.saturating_sub(u64::from(back % 8));
                run.compact(doc, upto);
            }
            Op::CompactAhead { doc, ahead } => {
                let doc = usize::from(doc) % DOCS;
                let upto = run.docs[doc].last_sid + 1 + u64::from(ahead);
                run.compact(doc, upto);
            }
            Op::Read { consumer, cut } => {
                run.read(
                    usize::from(consumer) % CONSUMERS,
                    Some(usize::from(cut % 8)),
                    None,
                );
            }
            Op::ReadDuringWrite {
                consumer,
                cut,
                n,
                text,
            } => {
                let n = 1 + usize::from(n % 4);
                let c = usize::from(consumer) % CONSUMERS;
                run.read(c, Some(usize::from(cut % 8)), Some((n, &text)));
            }
            Op::Subscribe { consumer, doc } => {
                run.subscribe(usize::from(consumer) % CONSUMERS, usize::from(doc) % DOCS)
            }
            Op::Forged { doc, sid } => run.forged(usize::from(doc) % DOCS, sid),
            Op::Reopen => run.reopen(),
        }
    }
    run.finish();
});
