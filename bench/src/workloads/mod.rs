//! The benchmark workloads (W1–W9, C1–C3) and the harness they share: sizes per mode, connecting many
//! clients, stopping them, and the result record each workload returns.

mod c1_ingest;
mod c2_fanout;
mod c3_failover;
mod w1_replay;
mod w2_classroom;
mod w3_idle;
mod w4_join;
mod w5_concurrent;
mod w9_capacity;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{connect_with, ClientError, Sender};
use crate::peer::{read_loop, Ended, Peer, PeerOpts, Progress};
use crate::procstat::{PeakRss, Proc, Sample};
use crate::target::Target;

/// A workload.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Trace replay: one writer, many readers.
    W1,
    /// Classroom: many clients on one document, a few typing with presence.
    W2,
    /// Idle connections spread over many documents.
    W3,
    /// Join storm on a large document.
    W4,
    /// Concurrent trace replay by two writers.
    W5,
    /// Ingest: one writer replays the trace, one reader checks it.
    W6,
    /// Everyday editing of one document: one writer, many readers.
    W7,
    /// Many documents at once, each with one writer and a few readers.
    W8,
    /// Capacity: the highest typing load on one document at the latency target (W2 stepped
    /// up), and CPU per delivery at a fixed load.
    W9,
    /// Several nodes, ingest: writers on every node, acked updates/s (one document, then many).
    C1,
    /// Several nodes, fan-out: the W2 classroom with its clients spread over the nodes.
    C2,
    /// Several nodes, failover: one node killed, its clients reconnect to the others.
    C3,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format!("{self:?}").to_lowercase())
    }
}

/// Quick (smoke test, seconds) or full (the published numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Small sizes.
    Quick,
    /// The sizes of the benchmark table.
    Full,
}

/// Every size a workload uses. Any field can be overridden with `--size key=value`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sizes {
    /// W1: transactions replayed (`null` = the whole trace).
    pub w1_txns: Option<usize>,
    /// W1: readers.
    pub w1_readers: usize,
    /// W1: readers that apply every update to their own document and compare the text.
    pub w1_full_check: usize,
    /// W1: most updates in flight (sent, not yet received by the slowest reader).
    pub w1_window: usize,
    /// W2: clients on the document (typists included).
    pub w2_clients: usize,
    /// W2: typists.
    pub w2_typists: usize,
    /// W2: keystrokes per second per typist.
    pub w2_rate_hz: f64,
    /// W2: typing duration in seconds.
    pub w2_seconds: f64,
    /// W2: seconds allowed after the last keystroke for every delivery to arrive.
    pub w2_drain_seconds: f64,
    /// W3: connections.
    pub w3_conns: usize,
    /// W3: documents.
    pub w3_docs: usize,
    /// W3: seconds to hold the connections before reading memory.
    pub w3_hold_seconds: f64,
    /// W4: joining clients.
    pub w4_joiners: usize,
    /// W4: the joins are spread evenly over this many milliseconds.
    pub w4_spread_ms: u64,
    /// W4: transactions of the trace in the document (`null` = the whole trace).
    pub w4_txns: Option<usize>,
    /// W5: transactions replayed (`null` = the whole trace).
    pub w5_txns: Option<usize>,
    /// W5: readers (each applies every update and must converge).
    pub w5_readers: usize,
    /// W5: most updates a writer has in flight (sent, not yet seen by the slowest reader).
    pub w5_window: usize,
    /// W6: most updates the writer has in flight (sent, not yet seen by the reader): 4,096,
    /// about 15 ms of ingest at 270,000 updates/s. At 1,024 the writer waited on its reader
    /// so often that every server took its updates in small batches.
    #[serde(default = "default_w6_window")]
    pub w6_window: usize,
    /// W7: readers of the one document (besides its writer).
    #[serde(default)]
    pub w7_readers: usize,
    /// W7: the writer's keystrokes per second.
    #[serde(default)]
    pub w7_rate_hz: f64,
    /// W7: typing duration in seconds.
    #[serde(default)]
    pub w7_seconds: f64,
    /// W8: documents.
    #[serde(default)]
    pub w8_docs: usize,
    /// W8: readers of each document (besides its writer).
    #[serde(default)]
    pub w8_readers: usize,
    /// W8: each writer's keystrokes per second.
    #[serde(default)]
    pub w8_rate_hz: f64,
    /// W8: typing duration in seconds.
    #[serde(default)]
    pub w8_seconds: f64,
    /// C1: writers of the one shared document, spread over the nodes round robin (the same
    /// number whatever the number of nodes, so setups take the same load).
    #[serde(default)]
    pub c1_writers: usize,
    /// C1: updates each writer of the shared document sends.
    #[serde(default)]
    pub c1_updates_per_writer: usize,
    /// C1: most unacknowledged updates per writer. Every connection of the shared document
    /// receives every writer's updates, so writers × window stays below tandem's per-connection
    /// queue (4,096 frames; a reader that falls further behind twice is closed as slow).
    #[serde(default)]
    pub c1_window: usize,
    /// C1: documents written at once in the second part (one writer each, spread over the
    /// nodes).
    #[serde(default)]
    pub c1_docs: usize,
    /// C1: updates each writer of the many-document part sends.
    #[serde(default)]
    pub c1_doc_updates: usize,
    /// C1: seconds allowed after the last ack for every reader to receive every update.
    #[serde(default)]
    pub c1_drain_seconds: f64,
    /// C2: clients on the document, spread over the nodes round robin (typists included).
    #[serde(default)]
    pub c2_clients: usize,
    /// C2: typists.
    #[serde(default)]
    pub c2_typists: usize,
    /// C2: keystrokes per second per typist.
    #[serde(default)]
    pub c2_rate_hz: f64,
    /// C2: typing duration in seconds.
    #[serde(default)]
    pub c2_seconds: f64,
    /// C2: seconds allowed after the last keystroke for every delivery to arrive.
    #[serde(default)]
    pub c2_drain_seconds: f64,
    /// C3: clients on the document, spread over the nodes round robin.
    #[serde(default)]
    pub c3_clients: usize,
    /// C3: typists (on the nodes that stay up).
    #[serde(default)]
    pub c3_typists: usize,
    /// C3: keystrokes per second per typist.
    #[serde(default)]
    pub c3_rate_hz: f64,
    /// C3: seconds of typing before the kill, and again after it.
    #[serde(default)]
    pub c3_seconds: f64,
    /// W9: clients on the document of each step (typists included).
    #[serde(default)]
    pub w9_clients: usize,
    /// W9: keystrokes per second per typist.
    #[serde(default)]
    pub w9_rate_hz: f64,
    /// W9: seconds of typing per ladder step.
    #[serde(default)]
    pub w9_seconds: f64,
    /// W9: seconds allowed after a step's last keystroke for every delivery to arrive.
    #[serde(default)]
    pub w9_drain_seconds: f64,
    /// W9: a step passes when keystroke p99 is under this many ms (and nothing is missing).
    #[serde(default)]
    pub w9_p99_ms: f64,
    /// W9: the ladder's top (typists).
    #[serde(default)]
    pub w9_max_typists: usize,
    /// W9: bisections of the gap between the highest passing and the first failing step.
    #[serde(default)]
    pub w9_refine: usize,
    /// W9: typists of the fixed load (CPU per delivery compared across servers).
    #[serde(default)]
    pub w9_fixed_typists: usize,
    /// W9: keystrokes per second per typist at the fixed load.
    #[serde(default)]
    pub w9_fixed_rate_hz: f64,
    /// W9: runs of the fixed load (the one with the median CPU per delivery is reported).
    #[serde(default)]
    pub w9_fixed_runs: usize,
    /// W9: seconds of typing at the fixed load.
    #[serde(default)]
    pub w9_fixed_seconds: f64,
    /// Handshakes in flight while connecting many clients.
    pub connect_concurrency: usize,
    /// Seconds to wait for a phase (sync, presence, delivery) before failing it.
    pub phase_timeout_seconds: f64,
}

impl Sizes {
    /// The sizes of a mode.
    pub fn of(mode: Mode) -> Self {
        match mode {
            Mode::Quick => Sizes {
                w1_txns: Some(3_000),
                w1_readers: 10,
                w1_full_check: 10,
                w1_window: 256,
                w2_clients: 50,
                w2_typists: 3,
                w2_rate_hz: 20.0,
                w2_seconds: 2.0,
                w2_drain_seconds: 30.0,
                w3_conns: 500,
                w3_docs: 50,
                w3_hold_seconds: 0.5,
                w4_joiners: 50,
                w4_spread_ms: 200,
                w4_txns: Some(20_000),
                w5_txns: Some(3_000),
                w5_readers: 5,
                w5_window: 256,
                w6_window: 4096,
                w7_readers: 200,
                w7_rate_hz: 30.0,
                w7_seconds: 5.0,
                w8_docs: 50,
                w8_readers: 4,
                w8_rate_hz: 20.0,
                w8_seconds: 5.0,
                c1_writers: 6,
                c1_updates_per_writer: 2_000,
                c1_window: 512,
                c1_docs: 100,
                c1_doc_updates: 100,
                c1_drain_seconds: 20.0,
                c2_clients: 60,
                c2_typists: 3,
                c2_rate_hz: 20.0,
                c2_seconds: 2.0,
                c2_drain_seconds: 30.0,
                c3_clients: 30,
                c3_typists: 2,
                c3_rate_hz: 20.0,
                c3_seconds: 1.0,
                w9_clients: 200,
                w9_rate_hz: 20.0,
                w9_seconds: 1.0,
                w9_drain_seconds: 10.0,
                w9_p99_ms: 10.0,
                w9_max_typists: 4,
                w9_refine: 0,
                w9_fixed_typists: 1,
                w9_fixed_rate_hz: 20.0,
                w9_fixed_runs: 1,
                w9_fixed_seconds: 1.0,
                connect_concurrency: 64,
                phase_timeout_seconds: 30.0,
            },
            Mode::Full => Sizes {
                w1_txns: None,
                w1_readers: 100,
                w1_full_check: 2,
                w1_window: 256,
                w2_clients: 1_000,
                w2_typists: 10,
                w2_rate_hz: 20.0,
                w2_seconds: 60.0,
                w2_drain_seconds: 120.0,
                w3_conns: 10_000,
                w3_docs: 1_000,
                w3_hold_seconds: 3.0,
                w4_joiners: 500,
                w4_spread_ms: 1_000,
                w4_txns: None,
                w5_txns: None,
                w5_readers: 50,
                w5_window: 256,
                w6_window: 4096,
                w7_readers: 500,
                w7_rate_hz: 30.0,
                w7_seconds: 30.0,
                w8_docs: 50,
                w8_readers: 4,
                w8_rate_hz: 20.0,
                w8_seconds: 30.0,
                c1_writers: 12,
                c1_updates_per_writer: 12_500,
                c1_window: 256,
                c1_docs: 100,
                c1_doc_updates: 1_000,
                c1_drain_seconds: 60.0,
                c2_clients: 1_000,
                c2_typists: 10,
                c2_rate_hz: 20.0,
                c2_seconds: 30.0,
                c2_drain_seconds: 60.0,
                c3_clients: 300,
                c3_typists: 4,
                c3_rate_hz: 20.0,
                c3_seconds: 3.0,
                w9_clients: 1_000,
                w9_rate_hz: 20.0,
                w9_seconds: 4.0,
                w9_drain_seconds: 5.0,
                w9_p99_ms: 10.0,
                w9_max_typists: 256,
                w9_refine: 2,
                w9_fixed_typists: 1,
                w9_fixed_rate_hz: 5.0,
                w9_fixed_runs: 3,
                w9_fixed_seconds: 10.0,
                connect_concurrency: 128,
                phase_timeout_seconds: 300.0,
            },
        }
    }

    /// Applies `key=value` overrides (values in JSON syntax; bare words are strings).
    pub fn with_overrides(self, overrides: &[String]) -> Result<Self> {
        let mut v = serde_json::to_value(&self)?;
        let map = v.as_object_mut().context("sizes serialize to an object")?;
        for o in overrides {
            let (k, val) = o
                .split_once('=')
                .with_context(|| format!("--size {o}: expected key=value"))?;
            if !map.contains_key(k) {
                bail!("--size {o}: unknown size {k:?}");
            }
            let parsed = serde_json::from_str(val)
                .unwrap_or_else(|_| serde_json::Value::String(val.to_string()));
            map.insert(k.to_string(), parsed);
        }
        serde_json::from_value(v).context("--size values")
    }

    fn phase_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.phase_timeout_seconds)
    }
}

/// Everything a workload needs.
pub struct Env {
    /// The server under test (its first node when it runs several).
    pub target: Target,
    /// Every node of the server under test, in `--addr` order (one for a single server).
    pub targets: Vec<Target>,
    /// The server's process, for CPU and memory (absent: not measured).
    pub server: Option<Proc>,
    /// The pid of each node, in `targets` order (empty: not known; failover needs them).
    pub pids: Vec<u32>,
    /// Services the nodes share (Redis), for their CPU time.
    pub aux: Vec<Proc>,
    /// The PostgreSQL database the nodes share: its backends' CPU time is measured.
    pub db_name: Option<String>,
    /// Sizes.
    pub sizes: Sizes,
    /// Folder holding the editing traces.
    pub traces: PathBuf,
    /// Suffix making this run's document names unique.
    pub nonce: String,
    /// Folder caching replayed traces between runs.
    pub cache: Option<PathBuf>,
}

impl Env {
    fn doc(&self, name: &str) -> String {
        format!("{name}-{}", self.nonce)
    }

    /// Waits until the server's CPU has been nearly idle for a moment (what earlier clients set
    /// off is done), at most [`SETTLE_MAX`].
    pub async fn settle(&self) {
        let Some(p) = &self.server else { return };
        let deadline = tokio::time::Instant::now() + SETTLE_MAX;
        let mut last = p.cpu_seconds().ok();
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(SETTLE_WINDOW).await;
            let now = p.cpu_seconds().ok();
            if let (Some(a), Some(b)) = (last, now) {
                if (b - a) / SETTLE_WINDOW.as_secs_f64() < SETTLE_LOAD {
                    return;
                }
            }
            last = now;
        }
    }

    fn server_sample(&self) -> Option<Sample> {
        self.server.as_ref().and_then(|p| p.sample().ok())
    }

    /// CPU seconds of the server's threads named `comm` (absent: no such thread).
    fn server_thread_cpu(&self, comm: &str) -> Option<f64> {
        self.server
            .as_ref()
            .and_then(|p| p.thread_cpu_seconds(comm))
    }

    /// CPU and memory of every node together (those still running), plus the shared services'
    /// CPU (Redis) and the database backends' CPU, each in its own field.
    fn nodes_sample(&self) -> ClusterSample {
        let mut s = ClusterSample::default();
        for pid in &self.pids {
            if let Ok(x) = Proc::pid(*pid).sample() {
                s.nodes.cpu_s += x.cpu_s;
                s.nodes.rss_kib += x.rss_kib;
                s.nodes.hwm_kib += x.hwm_kib;
            }
        }
        s.aux_cpu_s = self.aux.iter().filter_map(|p| p.cpu_seconds().ok()).sum();
        s.db = self
            .db_name
            .as_deref()
            .map(crate::procstat::postgres_backends);
        s
    }

    fn peak_rss(&self) -> Option<PeakRss> {
        self.server
            .clone()
            .map(|p| PeakRss::start(p, Duration::from_millis(50)))
    }
}

/// How long the server's CPU must stay nearly idle for [`Env::settle`].
const SETTLE_WINDOW: Duration = Duration::from_millis(250);
/// "Nearly idle": below this share of a core over [`SETTLE_WINDOW`].
const SETTLE_LOAD: f64 = 0.05;
/// The longest wait for the server to settle.
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// CPU and memory of the nodes of a several-node server and what they share.
#[derive(Debug, Clone, Default)]
struct ClusterSample {
    nodes: Sample,
    aux_cpu_s: f64,
    db: Option<crate::procstat::Backends>,
}

/// What a workload measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkloadResult {
    /// Which workload.
    pub workload: String,
    /// Whether its correctness checks passed.
    pub ok: bool,
    /// Failed checks, one line each.
    pub failures: Vec<String>,
    /// Named numbers (see the report for units: the name ends with one).
    pub metrics: BTreeMap<String, f64>,
    /// Facts about how it ran.
    pub notes: Vec<String>,
    /// The steps of a stepped workload (W9), in the order run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::capacity::Step>,
}

/// All workloads run against one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The server.
    pub server: crate::target::Server,
    /// How the server was set up (several-node runs: `tandem-3`, `tandem-1`,
    /// `hocuspocus-2`, …); absent for single-server runs.
    #[serde(default)]
    pub setup: Option<String>,
    /// How many nodes served the run.
    #[serde(default = "one")]
    pub nodes: usize,
    /// The mode.
    pub mode: Mode,
    /// The sizes used.
    pub sizes: Sizes,
    /// One result per workload.
    pub workloads: Vec<WorkloadResult>,
}

impl WorkloadResult {
    /// CPU of every node between two samples (`server_cpu_s`), their RSS at the end
    /// (`server_rss_mib`, summed), Redis's CPU (`redis_cpu_s`) and the database backends'
    /// (`db_cpu_s`), when measured.
    fn cluster_usage(&mut self, before: &ClusterSample, after: &ClusterSample) {
        self.metric("server_cpu_s", after.nodes.cpu_s - before.nodes.cpu_s);
        self.metric("server_rss_mib", after.nodes.rss_kib as f64 / 1024.0);
        self.metric("server_rss_peak_mib", after.nodes.hwm_kib as f64 / 1024.0);
        if after.aux_cpu_s > 0.0 {
            self.metric("redis_cpu_s", after.aux_cpu_s - before.aux_cpu_s);
        }
        if let (Some(b), Some(a)) = (&before.db, &after.db) {
            if !a.is_empty() {
                self.metric("db_cpu_s", a.cpu_since(b));
            }
        }
    }

    /// A workload that could not run at all.
    pub fn errored(w: Workload, e: &anyhow::Error) -> Self {
        let mut r = WorkloadResult::new(w);
        r.fail(format!("did not run: {e:#}"));
        r
    }

    fn new(w: Workload) -> Self {
        WorkloadResult {
            workload: w.to_string(),
            ok: true,
            ..Default::default()
        }
    }

    fn metric(&mut self, k: &str, v: f64) {
        self.metrics.insert(k.to_string(), v);
    }

    fn fail(&mut self, why: impl Into<String>) {
        self.ok = false;
        self.failures.push(why.into());
    }

    fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    fn latency(&mut self, prefix: &str, s: &crate::stats::LatencySummary) {
        self.metric(&format!("{prefix}_count"), s.count as f64);
        self.metric(&format!("{prefix}_p50_ms"), s.p50_ms);
        self.metric(&format!("{prefix}_p99_ms"), s.p99_ms);
        self.metric(&format!("{prefix}_p999_ms"), s.p999_ms);
        self.metric(&format!("{prefix}_max_ms"), s.max_ms);
        self.metric(&format!("{prefix}_mean_ms"), s.mean_ms);
    }

    fn server_usage(
        &mut self,
        before: Option<Sample>,
        after: Option<Sample>,
        peak: Option<PeakRss>,
    ) {
        if let (Some(b), Some(a)) = (before, after) {
            self.metric("server_cpu_s", a.cpu_s - b.cpu_s);
            self.metric("server_rss_mib", a.rss_kib as f64 / 1024.0);
        }
        if let Some(p) = peak {
            let last = after.map(|a| a.rss_kib).unwrap_or(0);
            self.metric(
                "server_rss_peak_mib",
                p.peak_kib().max(last) as f64 / 1024.0,
            );
        }
    }
}

fn one() -> usize {
    1
}

fn default_w6_window() -> usize {
    4096
}

/// Runs one workload.
pub async fn run(w: Workload, env: &Env) -> Result<WorkloadResult> {
    let me = Proc::current();
    let gen_before = me.cpu_seconds().ok();
    let started = std::time::Instant::now();
    let mut r = match w {
        Workload::W1 => w1_replay::run(env).await?,
        Workload::W2 => w2_classroom::run(env).await?,
        Workload::W3 => w3_idle::run(env).await?,
        Workload::W4 => w4_join::run(env).await?,
        Workload::W5 => w5_concurrent::run(env).await?,
        Workload::W6 => w1_replay::run_ingest(env).await?,
        Workload::W7 => w2_classroom::run_everyday(env).await?,
        Workload::W8 => w2_classroom::run_many(env).await?,
        Workload::W9 => w9_capacity::run(env).await?,
        Workload::C1 => c1_ingest::run(env).await?,
        Workload::C2 => c2_fanout::run(env).await?,
        Workload::C3 => c3_failover::run(env).await?,
    };
    r.metric("wall_s", started.elapsed().as_secs_f64());
    if let (Some(b), Ok(a)) = (gen_before, me.cpu_seconds()) {
        r.metric("generator_cpu_s", a - b);
    }
    Ok(r)
}

/// One client to connect.
pub struct ClientSpec {
    /// Document name.
    pub doc: String,
    /// Awareness update sent on open.
    pub awareness: Option<Vec<u8>>,
    /// How it treats what it receives.
    pub opts: PeerOpts,
}

/// A connected client: its sending half and its read task.
pub struct Client {
    /// Sending half.
    pub sender: Sender,
    /// The read task.
    pub task: JoinHandle<(Peer, Ended)>,
}

/// A group of clients that stop together.
pub struct Fleet {
    /// Counters the clients publish.
    pub progress: Arc<Progress>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    /// Read tasks, in connection order.
    pub tasks: Vec<JoinHandle<(Peer, Ended)>>,
    /// Sending halves of the clients connected by [`Fleet::connect_all`], in the same order.
    pub senders: Vec<Sender>,
    /// Clients that could not connect, with the reason.
    pub failed: Vec<(usize, ClientError)>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new() -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        Fleet {
            progress: Arc::new(Progress::default()),
            stop_tx,
            stop_rx,
            tasks: Vec::new(),
            senders: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Connects one client, opens its session and starts its read task; the caller keeps
    /// both (push the task into [`Fleet::tasks`] to have it stopped with the others).
    pub async fn connect_one(
        &self,
        target: &Target,
        spec: ClientSpec,
    ) -> Result<Client, ClientError> {
        self.handle().connect(target, spec).await
    }

    /// What a task needs to connect clients into this fleet.
    pub fn handle(&self) -> FleetHandle {
        FleetHandle {
            progress: self.progress.clone(),
            stop_rx: self.stop_rx.clone(),
        }
    }

    /// Connects many clients, at most `concurrency` handshakes at a time.
    pub async fn connect_all(
        &mut self,
        target: &Target,
        specs: Vec<ClientSpec>,
        concurrency: usize,
    ) {
        let results: Vec<Result<Client, ClientError>> = futures_util::stream::iter(specs)
            .map(|spec| self.connect_one(target, spec))
            .buffered(concurrency.max(1))
            .collect()
            .await;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(c) => {
                    self.senders.push(c.sender);
                    self.tasks.push(c.task);
                }
                Err(e) => self.failed.push((i, e)),
            }
        }
    }

    /// Connects each client to its own target (several nodes), at most `concurrency`
    /// handshakes at a time; like [`Fleet::connect_all`] otherwise.
    pub async fn connect_each(&mut self, specs: Vec<(Target, ClientSpec)>, concurrency: usize) {
        let results: Vec<Result<Client, ClientError>> = futures_util::stream::iter(specs)
            .map(|(target, spec)| {
                let h = self.handle();
                async move { h.connect(&target, spec).await }
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(c) => {
                    self.senders.push(c.sender);
                    self.tasks.push(c.task);
                }
                Err(e) => self.failed.push((i, e)),
            }
        }
    }

    /// Stops every read task and returns the clients' final states, in task order.
    pub async fn stop(&mut self) -> Vec<(Peer, Ended)> {
        let _ = self.stop_tx.send(true);
        let mut out = Vec::with_capacity(self.tasks.len());
        for t in self.tasks.drain(..) {
            match t.await {
                Ok(p) => out.push(p),
                Err(e) => log(&format!("client task failed: {e}")),
            }
        }
        self.senders.clear();
        out
    }
}

/// A cloneable handle that connects clients reporting to a [`Fleet`]'s progress and stopping
/// with it.
#[derive(Clone)]
pub struct FleetHandle {
    progress: Arc<Progress>,
    stop_rx: watch::Receiver<bool>,
}

impl FleetHandle {
    /// Connects one client, opens its session and starts its read task.
    pub async fn connect(&self, target: &Target, spec: ClientSpec) -> Result<Client, ClientError> {
        let mut conn = connect_with(target, &spec.doc, spec.opts.kernel_stamps).await?;
        conn.open(target, spec.awareness.as_deref()).await?;
        let dialect = conn.dialect.clone();
        let (sender, rx) = conn.split();
        let peer = Peer::new(spec.opts, self.progress.clone());
        let task = tokio::spawn(read_loop(rx, peer, dialect, self.stop_rx.clone()));
        Ok(Client { sender, task })
    }
}

impl FleetHandle {
    /// Connects a client whose connection ended to `target` again, keeping what it received
    /// (coverage, latencies); opens like a fresh provider (step 1 with an empty state vector).
    /// On failure the client comes back with the error.
    pub async fn resume(
        &self,
        target: &Target,
        doc: &str,
        mut peer: Peer,
    ) -> Result<Client, Box<(ClientError, Peer)>> {
        let mut conn = match connect_with(target, doc, peer.kernel_stamps()).await {
            Ok(c) => c,
            Err(e) => return Err(Box::new((e, peer))),
        };
        if let Err(e) = conn.open(target, None).await {
            return Err(Box::new((e, peer)));
        }
        peer.reconnecting();
        let dialect = conn.dialect.clone();
        let (sender, rx) = conn.split();
        let task = tokio::spawn(read_loop(rx, peer, dialect, self.stop_rx.clone()));
        Ok(Client { sender, task })
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

/// Progress lines go to stderr; stdout stays for results.
pub fn log(msg: &str) {
    eprintln!("[tandem-bench] {msg}");
}

/// Adds failures for clients that could not connect or whose connection ended early.
fn check_connections(
    r: &mut WorkloadResult,
    failed: &[(usize, ClientError)],
    peers: &[(Peer, Ended)],
) {
    if !failed.is_empty() {
        r.fail(format!(
            "{} clients could not connect (first: client {}: {})",
            failed.len(),
            failed[0].0,
            failed[0].1
        ));
    }
    let ended: Vec<String> = peers
        .iter()
        .filter_map(|(_, e)| match e {
            Ended::Stopped => None,
            Ended::Closed => Some("the connection ended without a close frame".to_string()),
            Ended::Failed(err) => Some(err.to_string()),
        })
        .collect();
    if !ended.is_empty() {
        r.fail(format!(
            "{} connections ended before the workload did (first: {})",
            ended.len(),
            ended[0]
        ));
    }
    let denied = peers.iter().filter(|(p, _)| p.denied.is_some()).count();
    if denied > 0 {
        r.fail(format!("{denied} clients were refused by the server"));
    }
    let errors: u64 = peers.iter().map(|(p, _)| p.errors).sum();
    if errors > 0 {
        let first = peers
            .iter()
            .find_map(|(p, _)| p.first_error.clone())
            .unwrap_or_default();
        r.fail(format!(
            "{errors} received messages failed to decode or apply (first: {first})"
        ));
    }
}

/// Records that every tracked delivery arrived (the metrics [`account_missing`] sets otherwise).
fn none_missing(r: &mut WorkloadResult) {
    for k in [
        "undelivered",
        "undelivered_updates",
        "undelivered_awareness",
    ] {
        r.metric(k, 0.0);
    }
}

/// Counts deliveries that never arrived and records them as censored latencies (see
/// [`Peer::record_missing`]); adds a failure line when there are any.
fn account_missing(r: &mut WorkloadResult, peers: &[(Peer, Ended)], waited_s: f64) {
    let now = crate::tracker::now_ns();
    let missing: u64 = peers.iter().map(|(p, _)| p.record_missing(now)).sum();
    let (updates, awareness) = peers
        .iter()
        .map(|(p, _)| p.missing_counts())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    r.metric("undelivered", missing as f64);
    r.metric("undelivered_updates", updates as f64);
    r.metric("undelivered_awareness", awareness as f64);
    if missing > 0 {
        let clients = peers.iter().filter(|(p, _)| !p.is_complete()).count();
        let first = peers
            .iter()
            .find_map(|(p, _)| p.first_missing())
            .unwrap_or_default();
        r.fail(format!(
            "{missing} deliveries ({updates} document updates, {awareness} awareness updates; to \
             {clients} clients) had not arrived {waited_s:.0} s after the last send; they count in \
             the latency percentiles with the time waited (a lower bound); first missing: {first}"
        ));
    }
}

/// The presence state a simulated client announces.
fn presence_json(name: &str) -> String {
    format!("{{\"user\":{{\"name\":\"{name}\",\"color\":\"#30bced\"}}}}")
}
