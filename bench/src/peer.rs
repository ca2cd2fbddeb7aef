//! What one simulated client does with the messages it receives: note when it is synced, match
//! updates and awareness to tracked edits (latency, completeness), optionally apply every
//! update to its own yrs document (full check), and count presence.
//!
//! Progress that the workload orchestrator waits on (synced, presence seen, all edits
//! received) is published through [`Progress`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::Bytes;
use yrs::StateVector;

use crate::client::{ClientError, Receiver};
use crate::protocol::{awareness_entries, Dialect, Incoming};
use crate::stats::LatencyRecorder;
use crate::trace::Editor;
use crate::tracker::{Coverage, Tracker};

/// A client adds its message counts to the shared totals every this many messages.
const FLUSH_EVERY: u64 = 256;

/// How often a waiting phase logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Client id of the documents readers keep for full checks (they never write).
const READER_CLIENT: u64 = 1;

/// Counters shared by every client of a workload; the orchestrator waits on them.
#[derive(Debug, Default)]
pub struct Progress {
    /// Clients that received step2.
    pub synced: AtomicUsize,
    /// Clients that have seen every presence they expect.
    pub presence: AtomicUsize,
    /// Clients that received every tracked edit (or converged to the expected state).
    pub complete: AtomicUsize,
    /// Clients whose connection ended (closed or failed).
    pub ended: AtomicUsize,
    /// Tracked edits delivered to clients other than their sender.
    pub deliveries: AtomicU64,
    /// Messages (sync and awareness) received, any kind.
    pub messages: AtomicU64,
    /// Woken whenever a counter above (except the two totals) moves.
    pub notify: Notify,
}

impl Progress {
    fn bump(&self, c: &AtomicUsize) {
        c.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Waits until `cond` holds, re-checking whenever a counter moves; false on timeout.
    /// Logs the counters every few seconds while waiting, naming the phase `what`.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Progress) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_log = tokio::time::Instant::now() + LOG_EVERY;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return cond(self);
            }
            if now >= next_log {
                eprintln!("[tandem-bench] waiting for {what}: {}", self.summary());
                next_log = now + LOG_EVERY;
            }
            let _ = tokio::time::timeout_at(deadline.min(next_log), notified).await;
        }
    }

    /// The counters, for progress lines.
    pub fn summary(&self) -> String {
        format!(
            "synced {}, presence {}, complete {}, ended {}, messages {}, deliveries {}",
            self.synced.load(Ordering::Relaxed),
            self.presence.load(Ordering::Relaxed),
            self.complete.load(Ordering::Relaxed),
            self.ended.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
            self.deliveries.load(Ordering::Relaxed),
        )
    }
}

/// The latest awareness clock seen from one client; writers use it to learn that the server
/// has processed a peer's edits (each edit is followed by an awareness update).
#[derive(Debug, Default)]
pub struct Watched {
    /// Highest clock seen.
    pub clock: AtomicU32,
    /// Woken when `clock` grows.
    pub notify: Notify,
}

impl Watched {
    /// Waits until the clock reaches `at_least`; false on timeout.
    pub async fn wait_for(&self, at_least: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.clock.load(Ordering::Acquire) >= at_least {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.clock.load(Ordering::Acquire) >= at_least;
            }
        }
    }
}

/// What the server acknowledged of one writer connection's updates: tandem's durability acks
/// (`?tandem=1`, cumulative count plus the sid of the last stored update) or Hocuspocus's
/// SyncStatus (one per update it applied in memory; no sid).
#[derive(Debug, Default)]
pub struct Acks {
    /// Updates acknowledged so far.
    pub count: AtomicU64,
    /// The sid of the last acknowledged update (tandem; 0 for Hocuspocus).
    pub sid: AtomicU64,
    /// Updates refused (SyncStatus(false)).
    pub refused: AtomicU64,
    /// When the last ack arrived (ns since the epoch).
    pub last_at: AtomicU64,
    /// Set when the connection ended: no more acks will come.
    pub ended: AtomicBool,
    /// Woken when `count` grows or the connection ends.
    pub notify: Notify,
}

impl Acks {
    fn on_ack(&self, count: Option<u64>, sid: u64, now: u64) {
        match count {
            Some(c) => {
                self.count.fetch_max(c, Ordering::AcqRel);
            }
            None => {
                self.count.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.sid.fetch_max(sid, Ordering::AcqRel);
        self.last_at.fetch_max(now, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Waits until at least `at_least` updates are acknowledged; false on timeout or when the
    /// connection ended first.
    pub async fn wait(&self, at_least: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) >= at_least {
                return true;
            }
            if self.ended.load(Ordering::Acquire) {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count.load(Ordering::Acquire) >= at_least;
            }
        }
    }
}

/// Latency of tracked document edits split by whether reader and writer are connected to the
/// same server node (several-node workloads).
#[derive(Debug)]
pub struct NodeSplit {
    /// The node of each writer (indexed by tracker owner).
    pub owner_node: Vec<usize>,
    /// Reader on the writer's node.
    pub same: LatencyRecorder,
    /// Reader on another node.
    pub cross: LatencyRecorder,
}

/// Edits a client must hold to count as caught up after an event (failover): per writer, the
/// sequence number of its first edit sent after the event, `u32::MAX` while not sent yet.
#[derive(Debug)]
pub struct Markers {
    /// One slot per writer.
    pub seqs: Vec<AtomicU32>,
}

impl Markers {
    /// `writers` unset markers.
    pub fn new(writers: usize) -> Self {
        Markers {
            seqs: (0..writers).map(|_| AtomicU32::new(u32::MAX)).collect(),
        }
    }
}

/// Flow control for writers: every reader publishes its progress per lane (a lane is a writer),
/// and a writer waits until the slowest reader is within its window. Readers only wake the
/// writer while it is waiting, so the hot path is one relaxed store.
#[derive(Debug)]
pub struct Pace {
    lanes: usize,
    slots: Vec<AtomicU32>,
    waiting: AtomicBool,
    notify: Notify,
}

impl Pace {
    /// Progress slots for `readers` readers and `lanes` lanes.
    pub fn new(readers: usize, lanes: usize) -> Self {
        Pace {
            lanes: lanes.max(1),
            slots: (0..readers * lanes.max(1))
                .map(|_| AtomicU32::new(0))
                .collect(),
            waiting: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Reader `reader` has reached `value` on `lane`.
    pub fn publish(&self, reader: usize, lane: usize, value: u32) {
        let slot = &self.slots[reader * self.lanes + lane];
        if value > slot.load(Ordering::Relaxed) {
            slot.store(value, Ordering::Release);
            if self.waiting.load(Ordering::Acquire) {
                self.notify.notify_one();
            }
        }
    }

    /// The slowest reader's progress on `lane` (0 with no readers).
    pub fn min(&self, lane: usize) -> u32 {
        self.slots
            .iter()
            .skip(lane)
            .step_by(self.lanes)
            .map(|s| s.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Waits until every reader reached `at_least` on `lane`; false on timeout.
    pub async fn wait(&self, lane: usize, at_least: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::Release);
            if self.min(lane) >= at_least {
                self.waiting.store(false, Ordering::Release);
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.waiting.store(false, Ordering::Release);
                return self.min(lane) >= at_least;
            }
        }
    }
}

/// What a reader publishes into a [`Pace`].
#[derive(Debug, Clone)]
pub enum PaceSource {
    /// Lane 0: the number of tracked document edits received.
    DocEdits,
    /// Lane i: the latest awareness clock of the i-th client id.
    AwarenessClocks(Vec<u64>),
}

/// A reader's place in a [`Pace`].
#[derive(Debug, Clone)]
pub struct PaceSlot {
    /// The shared flow-control state.
    pub pace: Arc<Pace>,
    /// This reader's index.
    pub reader: usize,
    /// What it publishes.
    pub source: PaceSource,
}

/// The state every full-check client must reach.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The final state vector.
    pub state_vector: StateVector,
    /// The final text.
    pub text: String,
}

/// How one client treats what it receives.
#[derive(Clone, Default)]
pub struct PeerOpts {
    /// Tracked document edits.
    pub doc_track: Option<Arc<Tracker>>,
    /// Tracked awareness updates.
    pub aw_track: Option<Arc<Tracker>>,
    /// Latency of document edits.
    pub doc_latency: Option<Arc<LatencyRecorder>>,
    /// Latency of awareness updates.
    pub aw_latency: Option<Arc<LatencyRecorder>>,
    /// This client's writer index, when it writes (its own edits are not expected back).
    pub me: Option<u32>,
    /// This client's own awareness client id.
    pub my_client: Option<u64>,
    /// Apply every received update to a yrs document.
    pub full_check: bool,
    /// With `full_check`: complete once the document reaches this state.
    pub expected: Option<Arc<Expected>>,
    /// With `full_check` and no `expected`: keep what arrives and apply it to the client's
    /// document when the client stops, so the check's cost falls after the workload's clock
    /// (completion is by the tracked ids alone; the text is checked just the same).
    pub check_after: bool,
    /// Keep the step2 payload.
    pub keep_step2: bool,
    /// Count distinct other clients' awareness states until this many were seen.
    pub presence_target: Option<usize>,
    /// Publish the awareness clocks of these clients.
    pub watch: Vec<(u64, Arc<Watched>)>,
    /// Publish this client's progress for writers' flow control.
    pub pace: Option<PaceSlot>,
    /// Shard index for the latency recorders.
    pub shard: usize,
    /// Count the server's acks of this client's updates here.
    pub acks: Option<Arc<Acks>>,
    /// With `acks`: record each update's send-to-ack latency here; the client's n-th update is
    /// edit `first seq + n` of the tracker (which holds the send times).
    pub ack_latency: Option<(Arc<LatencyRecorder>, Arc<Tracker>, u32)>,
    /// The server node this client is connected to (several-node workloads).
    pub node: usize,
    /// Record document-edit latency by same node / other node as well.
    pub split: Option<Arc<NodeSplit>>,
    /// Note when every marker edit has arrived ([`Peer::caught_up_at`]).
    pub markers: Option<Arc<Markers>>,
    /// Open the connection with the kernel's receive timestamps and time deliveries by them
    /// ([`crate::client::Receiver::received_at`]).
    pub kernel_stamps: bool,
}

/// One client's receive-side state.
pub struct Peer {
    opts: PeerOpts,
    progress: Arc<Progress>,
    /// When step2 arrived (ns since the epoch).
    pub synced_at: Option<u64>,
    /// The step2 payload, when kept.
    pub step2: Option<Bytes>,
    /// The client's document, when full-checking.
    pub editor: Option<Editor>,
    /// When the check waits for the end ([`PeerOpts::check_after`]): every update received,
    /// each after its length (u32 LE), to apply to `editor` when the client stops.
    deferred: Option<Vec<u8>>,
    presence: HashSet<u64>,
    presence_done: bool,
    doc_cov: Option<Coverage>,
    aw_cov: Option<Coverage>,
    complete: bool,
    /// When the client completed (all tracked edits received or converged), ns since epoch.
    pub completed_at: Option<u64>,
    /// Sync and awareness messages received.
    pub messages: u64,
    /// Tracked edits received from other clients (first copies only).
    pub delivered: u64,
    /// `messages` and `delivered` as last added to the shared [`Progress`] totals (they are
    /// added in batches: one shared counter bumped per message costs more than the message).
    flushed: (u64, u64),
    /// Bytes of frames received.
    pub bytes: u64,
    /// Messages that failed to decode or apply.
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// A permission-denied reason, if the server refused the client.
    pub denied: Option<String>,
    /// When every marker edit ([`PeerOpts::markers`]) had arrived, ns since the epoch.
    pub caught_up_at: Option<u64>,
}

impl Peer {
    /// A client with these options reporting to `progress`.
    pub fn new(opts: PeerOpts, progress: Arc<Progress>) -> Self {
        let doc_cov = opts.doc_track.as_ref().map(|t| Coverage::new(t, opts.me));
        let aw_cov = opts.aw_track.as_ref().map(|t| Coverage::new(t, opts.me));
        let editor = opts.full_check.then(|| Editor::new(READER_CLIENT));
        let deferred =
            (opts.full_check && opts.check_after && opts.expected.is_none()).then(Vec::new);
        Peer {
            opts,
            progress,
            synced_at: None,
            step2: None,
            editor,
            deferred,
            presence: HashSet::new(),
            presence_done: false,
            doc_cov,
            aw_cov,
            complete: false,
            completed_at: None,
            messages: 0,
            delivered: 0,
            flushed: (0, 0),
            bytes: 0,
            errors: 0,
            first_error: None,
            denied: None,
            caught_up_at: None,
        }
    }

    /// Prepares the client for a new connection (after its server went away): the next step 2
    /// sets [`Peer::synced_at`] again, and markers are checked anew.
    pub fn reconnecting(&mut self) {
        self.synced_at = None;
        self.caught_up_at = None;
    }

    /// Which node this client is on.
    pub fn node(&self) -> usize {
        self.opts.node
    }

    /// Document edits received and expected.
    pub fn doc_coverage(&self) -> Option<(u32, u32)> {
        self.doc_cov.as_ref().map(|c| (c.got(), c.want()))
    }

    /// Awareness updates received and expected.
    pub fn aw_coverage(&self) -> Option<(u32, u32)> {
        self.aw_cov.as_ref().map(|c| (c.got(), c.want()))
    }

    /// Records, for every tracked edit this client never received although it was sent, the
    /// time waited so far (now minus the send time) as its latency: a lower bound, so that
    /// percentiles stay honest when a server falls behind. Returns how many were missing.
    /// (Edits never sent, because their writer's connection failed, are not deliveries.)
    pub fn record_missing(&self, now: u64) -> u64 {
        let mut missing = 0;
        let pairs = [
            (&self.opts.doc_track, &self.doc_cov, &self.opts.doc_latency),
            (&self.opts.aw_track, &self.aw_cov, &self.opts.aw_latency),
        ];
        for (track, cov, lat) in pairs {
            if let (Some(track), Some(cov)) = (track, cov) {
                for seq in cov.missing(track) {
                    if let Some(sent) = track.sent_at(seq) {
                        missing += 1;
                        if let Some(l) = lat {
                            l.record_ns(self.opts.shard, now.saturating_sub(sent));
                        }
                    }
                }
            }
        }
        missing
    }

    /// Whether tracked document edit `seq` arrived.
    pub fn has_doc_edit(&self, seq: u32) -> bool {
        self.doc_cov.as_ref().is_some_and(|c| c.has(seq))
    }

    /// Tracked document edits and awareness updates sent but not received, counted apart.
    pub fn missing_counts(&self) -> (u64, u64) {
        let count = |track: &Option<Arc<Tracker>>, cov: &Option<Coverage>| match (track, cov) {
            (Some(t), Some(c)) => c.missing(t).filter(|s| t.sent_at(*s).is_some()).count() as u64,
            _ => 0,
        };
        (
            count(&self.opts.doc_track, &self.doc_cov),
            count(&self.opts.aw_track, &self.aw_cov),
        )
    }

    /// The first edit this client misses, described (for failure lines).
    pub fn first_missing(&self) -> Option<String> {
        let first = |track: &Option<Arc<Tracker>>, cov: &Option<Coverage>| match (track, cov) {
            (Some(t), Some(c)) => c
                .missing(t)
                .find(|s| t.sent_at(*s).is_some())
                .map(|seq| (seq, t.owner(seq), t.count_of(t.owner(seq)))),
            _ => None,
        };
        if let Some((seq, owner, n)) = first(&self.opts.doc_track, &self.doc_cov) {
            return Some(format!(
                "document edit {seq} (writer {owner}, which sent {n})"
            ));
        }
        first(&self.opts.aw_track, &self.aw_cov).map(|(seq, owner, n)| {
            format!("awareness update {seq} (writer {owner}, which sent {n})")
        })
    }

    /// Whether its connections time deliveries by the kernel's receive timestamps.
    pub fn kernel_stamps(&self) -> bool {
        self.opts.kernel_stamps
    }

    /// Whether the client completed.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what.to_string());
        }
    }

    /// Handles one frame received at `now` ([`crate::tracker::now_ns`] nanoseconds).
    pub fn on_frame(&mut self, dialect: &Dialect, frame: &Bytes, now: u64) {
        self.bytes += frame.len() as u64;
        let parsed = dialect.for_each(frame, |m| self.on_message(m, frame, now));
        if let Err(e) = parsed {
            self.error(format!("frame: {e}"));
        }
        if self.messages - self.flushed.0 >= FLUSH_EVERY {
            self.flush();
        }
        if let (Some(slot), Some(c)) = (&self.opts.pace, &self.doc_cov) {
            if let PaceSource::DocEdits = slot.source {
                slot.pace.publish(slot.reader, 0, c.got());
            }
        }
        self.check_complete(now);
    }

    fn on_message(&mut self, m: Incoming<'_>, frame: &Bytes, now: u64) {
        match m {
            Incoming::Step2(update) => {
                self.messages += 1;
                if self.synced_at.is_none() {
                    self.synced_at = Some(now);
                    if self.opts.keep_step2 {
                        self.step2 = Some(frame.slice_ref(update));
                    }
                    self.progress.bump(&self.progress.synced);
                }
                self.on_update(update, now);
            }
            Incoming::Update(update) => {
                self.messages += 1;
                self.on_update(update, now);
            }
            Incoming::Awareness(update) => {
                self.messages += 1;
                self.on_awareness(update, now);
            }
            Incoming::Denied(reason) => self.denied = Some(reason.to_string()),
            Incoming::Ack { count, sid } => {
                if let Some(a) = &self.opts.acks {
                    self.ack_latency(a.count.load(Ordering::Acquire), count, now);
                    a.on_ack(Some(count), sid, now);
                }
            }
            Incoming::SyncStatus(applied) => {
                if let Some(a) = &self.opts.acks {
                    if applied {
                        let before = a.count.load(Ordering::Acquire);
                        self.ack_latency(before, before + 1, now);
                        a.on_ack(None, 0, now);
                    } else {
                        a.refused.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
            Incoming::Step1(_) | Incoming::Authenticated(_) | Incoming::Other(_) => {}
        }
    }

    /// Records the send-to-ack latency of this client's updates `from..to` (0-based).
    fn ack_latency(&self, from: u64, to: u64, now: u64) {
        if let Some((lat, track, first)) = &self.opts.ack_latency {
            for n in from..to {
                let seq = first.saturating_add(n as u32);
                if (seq as usize) < track.len() {
                    if let Some(sent) = track.sent_at(seq) {
                        lat.record_ns(self.opts.shard, now.saturating_sub(sent));
                    }
                }
            }
        }
    }

    fn on_update(&mut self, update: &[u8], now: u64) {
        if let (Some(track), Some(cov)) = (&self.opts.doc_track, &mut self.doc_cov) {
            let mut delivered = 0;
            let lat = &self.opts.doc_latency;
            let shard = self.opts.shard;
            let (split, node) = (&self.opts.split, self.opts.node);
            let r = track.match_update(update, |seq| {
                if cov.mark(track, seq) {
                    delivered += 1;
                    if let Some(sent) = track.sent_at(seq) {
                        let ns = now.saturating_sub(sent);
                        if let Some(l) = lat {
                            l.record_ns(shard, ns);
                        }
                        if let Some(sp) = split {
                            let owner = track.owner(seq) as usize;
                            if sp.owner_node.get(owner) == Some(&node) {
                                sp.same.record_ns(shard, ns);
                            } else {
                                sp.cross.record_ns(shard, ns);
                            }
                        }
                    }
                }
            });
            self.delivered += delivered;
            if let Err(e) = r {
                self.error(format!("update scan: {e}"));
            }
        }
        if let Some(kept) = &mut self.deferred {
            kept.extend_from_slice(&(update.len() as u32).to_le_bytes());
            kept.extend_from_slice(update);
        } else if let Some(ed) = &self.editor {
            if let Err(e) = ed.apply_update(update) {
                self.error(format!("{e:#}"));
            }
        }
        if self.caught_up_at.is_none() {
            if let (Some(m), Some(cov)) = (&self.opts.markers, &self.doc_cov) {
                let all = m.seqs.iter().all(|s| {
                    let s = s.load(Ordering::Acquire);
                    s != u32::MAX && cov.has(s)
                });
                if all {
                    self.caught_up_at = Some(now);
                }
            }
        }
    }

    fn on_awareness(&mut self, update: &[u8], now: u64) {
        if let (Some(track), Some(cov)) = (&self.opts.aw_track, &mut self.aw_cov) {
            let mut delivered = 0;
            let lat = &self.opts.aw_latency;
            let shard = self.opts.shard;
            let r = track.match_awareness(update, |seq| {
                if cov.mark(track, seq) {
                    delivered += 1;
                    if let (Some(l), Some(sent)) = (lat, track.sent_at(seq)) {
                        l.record_ns(shard, now.saturating_sub(sent));
                    }
                }
            });
            self.delivered += delivered;
            if let Err(e) = r {
                self.error(format!("awareness: {e}"));
            }
        }
        if let Some(PaceSlot {
            pace,
            reader,
            source: PaceSource::AwarenessClocks(clients),
        }) = &self.opts.pace
        {
            let r = awareness_entries(update, |client, clock, _| {
                if let Some(lane) = clients.iter().position(|c| *c == client) {
                    pace.publish(*reader, lane, clock);
                }
            });
            if let Err(e) = r {
                self.error(format!("awareness: {e}"));
            }
        }
        let want_presence = !self.presence_done && self.opts.presence_target.is_some();
        if want_presence || !self.opts.watch.is_empty() {
            let me = self.opts.my_client;
            let presence = &mut self.presence;
            let watch = &self.opts.watch;
            let r = awareness_entries(update, |client, clock, removed| {
                if want_presence && !removed && Some(client) != me {
                    presence.insert(client);
                }
                for (c, w) in watch {
                    if *c == client && clock > w.clock.load(Ordering::Relaxed) {
                        w.clock.fetch_max(clock, Ordering::AcqRel);
                        w.notify.notify_waiters();
                    }
                }
            });
            if let Err(e) = r {
                self.error(format!("awareness: {e}"));
            }
            if let Some(target) = self.opts.presence_target {
                if want_presence && self.presence.len() >= target {
                    self.presence_done = true;
                    self.presence = HashSet::new();
                    self.progress.bump(&self.progress.presence);
                }
            }
        }
    }

    /// Applies the updates kept by [`PeerOpts::check_after`] to the client's document, in the
    /// order they arrived.
    fn apply_deferred(&mut self) {
        let Some(kept) = self.deferred.take() else {
            return;
        };
        let mut rest = &kept[..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let (update, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
            rest = tail;
            if let Some(ed) = &self.editor {
                if let Err(e) = ed.apply_update(update) {
                    self.error(format!("{e:#}"));
                }
            }
        }
    }

    /// Adds this client's counts to the shared totals.
    pub fn flush(&mut self) {
        let (m, d) = self.flushed;
        self.progress
            .messages
            .fetch_add(self.messages - m, Ordering::Relaxed);
        self.progress
            .deliveries
            .fetch_add(self.delivered - d, Ordering::Relaxed);
        self.flushed = (self.messages, self.delivered);
    }

    fn check_complete(&mut self, now: u64) {
        if self.complete {
            return;
        }
        let covered = |c: &Option<Coverage>| c.as_ref().map(|c| c.complete());
        let done = match (&self.opts.expected, &self.editor) {
            (Some(exp), Some(ed)) => ed.state_vector() == exp.state_vector && ed.text() == exp.text,
            _ => {
                let d = covered(&self.doc_cov);
                let a = covered(&self.aw_cov);
                match (d, a) {
                    (None, None) => false,
                    (d, a) => d.unwrap_or(true) && a.unwrap_or(true),
                }
            }
        };
        if done {
            self.flush();
            self.complete = true;
            self.completed_at = Some(now);
            self.progress.bump(&self.progress.complete);
        }
    }
}

/// How a client's read loop ended.
#[derive(Debug)]
pub enum Ended {
    /// The workload asked it to stop.
    Stopped,
    /// The server closed the connection.
    Closed,
    /// The connection failed.
    Failed(ClientError),
}

/// Reads frames into `peer` until `stop` turns true or the connection ends.
pub async fn read_loop(
    mut rx: Receiver,
    mut peer: Peer,
    dialect: Dialect,
    mut stop: watch::Receiver<bool>,
) -> (Peer, Ended) {
    // One stop future for the whole loop (creating one per frame costs more than the frame's
    // own processing), plus a cheap flag check so a flood of frames cannot hide the stop.
    let flag = stop.clone();
    let stopped = async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(stopped);
    let ended = loop {
        if *flag.borrow() {
            break Ended::Stopped;
        }
        tokio::select! {
            biased;
            r = rx.next_frame() => match r {
                Ok(Some(frame)) => peer.on_frame(&dialect, &frame, rx.received_at()),
                Ok(None) => break Ended::Closed,
                Err(e) => break Ended::Failed(e),
            },
            () = &mut stopped => break Ended::Stopped,
        }
    };
    peer.flush();
    peer.apply_deferred();
    if let Some(a) = &peer.opts.acks {
        a.ended.store(true, Ordering::Release);
        a.notify.notify_waiters();
    }
    if !matches!(ended, Ended::Stopped) {
        peer.progress.bump(&peer.progress.ended);
    }
    (peer, ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pace_waits_for_the_slowest_reader() {
        let pace = Arc::new(Pace::new(2, 2));
        pace.publish(0, 1, 5);
        assert_eq!(pace.min(1), 0);
        assert!(!pace.wait(1, 5, Duration::from_millis(10)).await);
        let p = pace.clone();
        let waiter = tokio::spawn(async move { p.wait(1, 5, Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        pace.publish(1, 1, 7);
        assert!(waiter.await.expect("joins"));
        assert_eq!(pace.min(1), 5);
        assert_eq!(pace.min(0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_wait_sees_counters_move() {
        let progress = Arc::new(Progress::default());
        let p = progress.clone();
        let waiter = tokio::spawn(async move {
            p.wait("test", Duration::from_secs(60), |p| {
                p.synced.load(Ordering::Acquire) >= 2
            })
            .await
        });
        tokio::task::yield_now().await;
        progress.bump(&progress.synced);
        progress.bump(&progress.synced);
        assert!(waiter.await.expect("joins"));
        assert!(
            !progress
                .wait("test", Duration::from_millis(5), |p| p
                    .complete
                    .load(Ordering::Acquire)
                    > 0)
                .await
        );
    }
}
