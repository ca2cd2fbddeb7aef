//! W2 classroom: many clients on one document, each announcing its presence on join; a few of
//! them type at a steady rate, every keystroke a document update followed by an awareness
//! update (the cursor), as a stock editor binding sends them.
//!
//! Measured: keystroke-to-reader latency at every other client, awareness latency, server CPU
//! seconds per million deliveries, server memory. Correctness: every client receives every
//! other client's keystrokes and cursor updates.
//!
//! [`classroom`] runs it on any number of server nodes (C2 spreads the clients over them round
//! robin and splits keystroke latency into same-node and cross-node deliveries) and on any
//! number of documents at once (W8: many small classrooms, each with its own typist).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::{
    account_missing, check_connections, log, none_missing, presence_json, ClientSpec, Env, Fleet,
    Workload, WorkloadResult,
};
use crate::peer::{NodeSplit, PeerOpts};
use crate::procstat::Proc;
use crate::protocol::awareness_update;
use crate::stats::LatencyRecorder;
use crate::target::Target;
use crate::trace::{Editor, Patch};
use crate::tracker::{now_ns, TrackerBuilder};

/// Client ids are `BASE_CLIENT + index`; typists are the first clients.
const BASE_CLIENT: u64 = 2_000_000;

/// tandem's SQLite writer thread as /proc names it (`comm` holds 15 bytes).
const WRITER_THREAD: &str = "tandem-store-wr";

const TYPING: &str = "the quick brown fox jumps over the lazy dog while the class takes notes ";

fn cursor_json(typist: usize, client: u64, clock: u32) -> String {
    format!(
        "{{\"user\":{{\"name\":\"typist-{typist}\",\"color\":\"#ee6352\"}},\
         \"cursor\":{{\"anchor\":{{\"type\":null,\"tname\":\"text\",\"item\":{{\"client\":{client},\"clock\":{clock}}},\"assoc\":0}},\
         \"head\":{{\"type\":null,\"tname\":\"text\",\"item\":{{\"client\":{client},\"clock\":{clock}}},\"assoc\":0}}}}}}"
    )
}

/// One typist's precomputed keystrokes.
struct Script {
    /// Per keystroke: (doc seq, doc update, awareness seq, awareness update).
    keys: Vec<(u32, Vec<u8>, u32, Vec<u8>)>,
}

/// The size of a classroom run and the nodes its clients connect to.
pub(super) struct Classroom {
    pub clients: usize,
    pub typists: usize,
    pub rate_hz: f64,
    pub seconds: f64,
    pub drain_seconds: f64,
    /// Documents, each with `clients` clients of which `typists` type (W2, W7, C2: one).
    pub docs: usize,
    /// Client i connects to `targets[i % targets.len()]`.
    pub targets: Vec<Target>,
    /// The document's name (before the run's nonce); default: the workload's name.
    pub doc_name: Option<String>,
    /// Wait for the server's CPU to go nearly idle between joining and typing (W9: the join's
    /// presence storm must not spill into the measured window).
    pub settle: bool,
    /// Every client announces its presence on join and waits to see everyone's (W2); without,
    /// clients join silent and only the typists' cursor updates are awareness traffic (W9: the
    /// join's n² presence deliveries would take longer than the measured typing).
    pub presence: bool,
    /// Receive times are the kernel's (see [`crate::client::Stamped`]): W9, whose one generator
    /// thread reads a thousand sockets, measures the server and not its own queue.
    pub kernel_stamps: bool,
}

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let s = &env.sizes;
    let shape = Classroom {
        clients: s.w2_clients,
        typists: s.w2_typists,
        rate_hz: s.w2_rate_hz,
        seconds: s.w2_seconds,
        drain_seconds: s.w2_drain_seconds,
        docs: 1,
        targets: vec![env.target.clone()],
        doc_name: None,
        settle: false,
        presence: true,
        kernel_stamps: false,
    };
    classroom(env, Workload::W2, shape).await
}

/// W7, everyday editing of one document: one writer, many readers, each with presence.
pub(super) async fn run_everyday(env: &Env) -> Result<WorkloadResult> {
    let s = &env.sizes;
    let shape = Classroom {
        clients: s.w7_readers + 1,
        typists: 1,
        rate_hz: s.w7_rate_hz,
        seconds: s.w7_seconds,
        drain_seconds: s.w2_drain_seconds,
        docs: 1,
        targets: vec![env.target.clone()],
        doc_name: None,
        settle: false,
        presence: true,
        kernel_stamps: false,
    };
    classroom(env, Workload::W7, shape).await
}

/// W8, many documents: each with one writer and a few readers, all at once.
pub(super) async fn run_many(env: &Env) -> Result<WorkloadResult> {
    let s = &env.sizes;
    let shape = Classroom {
        clients: s.w8_readers + 1,
        typists: 1,
        rate_hz: s.w8_rate_hz,
        seconds: s.w8_seconds,
        drain_seconds: s.w2_drain_seconds,
        docs: s.w8_docs.max(1),
        targets: vec![env.target.clone()],
        doc_name: None,
        settle: false,
        presence: true,
        kernel_stamps: false,
    };
    classroom(env, Workload::W8, shape).await
}

pub(super) async fn classroom(env: &Env, w: Workload, c: Classroom) -> Result<WorkloadResult> {
    let mut r = WorkloadResult::new(w);
    let s = &env.sizes;
    let nodes = c.targets.len().max(1);
    let docs = c.docs.max(1);
    let typists = c.typists.min(c.clients);
    let keystrokes = (c.rate_hz * c.seconds).round().max(1.0) as usize;
    r.metric("clients", c.clients as f64);
    r.metric("typists", typists as f64);
    r.metric("keystrokes_per_typist", keystrokes as f64);
    r.metric("nodes", nodes as f64);
    r.metric("docs", docs as f64);
    let spread = if nodes > 1 {
        ", spread over the nodes round robin (client i on node i mod nodes)".to_string()
    } else {
        String::new()
    };
    let on = if docs > 1 {
        format!("each of {docs} documents at once")
    } else {
        "one document".to_string()
    };
    r.note(format!(
        "{} clients on {on}{spread}, each sending its presence on join; {typists} type {} \
         keystrokes/s for {} s, each keystroke one update plus one awareness update; a delivery \
         is one keystroke or awareness update received by a client other than its sender",
        c.clients, c.rate_hz, c.seconds
    ));

    // Each typist types at the end of its own paragraph, on its own document. Every document
    // has its own trackers: a client expects its own document's edits only.
    let mut doc_tracks = Vec::with_capacity(docs);
    let mut aw_tracks = Vec::with_capacity(docs);
    let mut scripts = Vec::with_capacity(typists * docs);
    for d in 0..docs {
        let mut doc_b = TrackerBuilder::default();
        let mut aw_b = TrackerBuilder::default();
        for t in 0..typists {
            let client = BASE_CLIENT + (d * c.clients + t) as u64;
            let ed = Editor::new(client).ascii_only(true);
            let mut keys = Vec::with_capacity(keystrokes);
            for k in 0..keystrokes {
                let ch = &TYPING[k % TYPING.len()..k % TYPING.len() + 1];
                let u = ed.apply(&[Patch(k, 0, ch.to_string())])?;
                let dseq = doc_b
                    .add_update(t as u32, &u)
                    .context("scanning a keystroke")?
                    .context("a keystroke changes the document")?;
                // Clock 1 is the presence sent on join.
                let clock = k as u32 + 2;
                let aseq = aw_b.add_awareness(t as u32, client, clock);
                let aw = awareness_update(client, clock, &cursor_json(t, client, k as u32));
                keys.push((dseq, u, aseq, aw));
            }
            scripts.push(Script { keys });
        }
        doc_tracks.push(Arc::new(doc_b.build()));
        aw_tracks.push(Arc::new(aw_b.build()));
    }
    let doc_lat = Arc::new(LatencyRecorder::new(64));
    let aw_lat = Arc::new(LatencyRecorder::new(64));
    let split = (nodes > 1).then(|| {
        Arc::new(NodeSplit {
            owner_node: (0..typists).map(|t| t % nodes).collect(),
            same: LatencyRecorder::new(64),
            cross: LatencyRecorder::new(64),
        })
    });

    let mut fleet = Fleet::new();
    let doc_name = c.doc_name.clone().unwrap_or_else(|| w.to_string());
    let specs = (0..c.clients * docs)
        .map(|i| {
            let (d, j) = (i / c.clients, i % c.clients);
            let doc = if docs > 1 {
                env.doc(&format!("{doc_name}-{d}"))
            } else {
                env.doc(&doc_name)
            };
            let client = BASE_CLIENT + i as u64;
            let name = if j < typists {
                format!("typist-{i}")
            } else {
                format!("reader-{i}")
            };
            let spec = ClientSpec {
                doc,
                awareness: c
                    .presence
                    .then(|| awareness_update(client, 1, &presence_json(&name))),
                opts: PeerOpts {
                    doc_track: Some(doc_tracks[d].clone()),
                    aw_track: Some(aw_tracks[d].clone()),
                    doc_latency: Some(doc_lat.clone()),
                    aw_latency: Some(aw_lat.clone()),
                    me: (j < typists).then_some(j as u32),
                    my_client: Some(client),
                    presence_target: c.presence.then_some(c.clients - 1),
                    shard: i,
                    node: i % nodes,
                    split: split.clone(),
                    kernel_stamps: c.kernel_stamps,
                    ..Default::default()
                },
            };
            (c.targets[i % nodes].clone(), spec)
        })
        .collect();
    let join_start = now_ns();
    fleet.connect_each(specs, s.connect_concurrency).await;
    let n = fleet.tasks.len();
    let progress = fleet.progress.clone();
    let synced = progress
        .wait("clients to sync", s.phase_timeout(), |p| {
            p.synced.load(Ordering::Acquire) >= n
        })
        .await;
    let presence = !c.presence
        || progress
            .wait("presence to converge", s.phase_timeout(), |p| {
                p.presence.load(Ordering::Acquire) >= n
            })
            .await;
    r.metric("join_s", (now_ns() - join_start) as f64 / 1e9);
    if !synced {
        r.fail("not every client synced");
    }
    if !presence {
        r.fail(format!(
            "presence did not converge: {} of {n} clients saw everyone",
            progress.presence.load(Ordering::Acquire)
        ));
    }

    // Typing. (The line marks the start of the measured window for a profiler attached from
    // outside: `bench/profile-capacity.sh`.)
    if c.settle {
        env.settle().await;
    }
    log(&format!("{w}: typing"));
    let before = env.server_sample();
    let writer_before = env.server_thread_cpu(WRITER_THREAD);
    let peak = env.peak_rss();
    let cluster_before = env.nodes_sample();
    let messages_before = progress.messages.load(Ordering::Relaxed);
    let generator = Proc::current();
    let generator_before = generator.cpu_seconds().ok();
    let wait_before = env.server.as_ref().and_then(|p| p.run_delay_seconds());
    let start = now_ns();
    let period = Duration::from_secs_f64(1.0 / c.rate_hz.max(0.001));
    let mut typing = Vec::with_capacity(typists * docs);
    // The typists are the first `typists` clients of each document; with every client
    // connected, the senders are in that order.
    let mut senders = Vec::with_capacity(typists * docs);
    if fleet.failed.is_empty() {
        for (i, sender) in std::mem::take(&mut fleet.senders).into_iter().enumerate() {
            if i % c.clients < typists {
                senders.push(sender);
            }
        }
    }
    let all_typists = typists * docs;
    for (t, (mut sender, script)) in senders.into_iter().zip(scripts).enumerate() {
        let doc_track = doc_tracks[t / typists].clone();
        let aw_track = aw_tracks[t / typists].clone();
        // Stagger the typists evenly over one period.
        let offset = period.mul_f64(t as f64 / all_typists as f64);
        typing.push(tokio::spawn(async move {
            let mut tick = interval_at(Instant::now() + offset, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for (dseq, u, aseq, aw) in &script.keys {
                tick.tick().await;
                doc_track.mark_sent(*dseq);
                sender.send(sender.dialect.update(u)).await?;
                aw_track.mark_sent(*aseq);
                sender.send(sender.dialect.awareness(aw)).await?;
            }
            anyhow::Ok(sender)
        }));
    }
    let mut typist_senders = Vec::new();
    let mut typist_errors = Vec::new();
    for t in typing {
        match t.await {
            Ok(Ok(sender)) => typist_senders.push(sender),
            Ok(Err(e)) => typist_errors.push(format!("{e:#}")),
            Err(e) => typist_errors.push(e.to_string()),
        }
    }
    if typist_senders.len() + typist_errors.len() < all_typists {
        r.fail("not every typist connected");
    }
    if let Some(first) = typist_errors.first() {
        r.fail(format!(
            "{} of {all_typists} typists could not send every keystroke (first: {first})",
            typist_errors.len()
        ));
    }
    let typed = now_ns();
    let all = progress
        .wait(
            "every keystroke to be delivered",
            Duration::from_secs_f64(c.drain_seconds),
            |p| p.complete.load(Ordering::Acquire) >= n,
        )
        .await;
    let drained = now_ns();
    let generator_after = generator.cpu_seconds().ok();
    let wait_after = env.server.as_ref().and_then(|p| p.run_delay_seconds());
    let after = env.server_sample();
    let writer_after = env.server_thread_cpu(WRITER_THREAD);
    let cluster_after = env.nodes_sample();
    let peers = fleet.stop().await;
    // Exact counts from every client (the shared totals are batched). Tracked edits only
    // start with the typing, so every delivery falls inside the measured window.
    let deliveries = peers.iter().map(|(p, _)| p.delivered).sum::<u64>();
    let messages = progress.messages.load(Ordering::Relaxed) - messages_before;
    drop(typist_senders);
    check_connections(&mut r, &fleet.failed, &peers);
    if all {
        none_missing(&mut r);
    } else {
        account_missing(&mut r, &peers, (drained - typed) as f64 / 1e9);
    }
    let typed_s = (typed - start) as f64 / 1e9;
    r.metric("typing_s", typed_s);
    r.metric("drain_s", (drained - typed) as f64 / 1e9);
    if let (Some(b), Some(a)) = (wait_before, wait_after) {
        // Time the server was ready to run but another process had its CPU (a busy machine).
        r.metric("server_run_wait_s", a - b);
    }
    if let (Some(b), Some(a)) = (generator_before, generator_after) {
        // The generator's CPU from the first keystroke to the last delivery, in cores.
        r.metric(
            "generator_load",
            (a - b) / ((drained - start) as f64 / 1e9).max(1e-9),
        );
    }
    r.metric(
        "keystrokes_per_s",
        (keystrokes * all_typists) as f64 / typed_s.max(1e-9),
    );
    r.metric("updates", (keystrokes * all_typists) as f64);
    r.metric("deliveries", deliveries as f64);
    r.metric("messages_received", messages as f64);
    r.latency("keystroke", &doc_lat.summary());
    r.latency("awareness", &aw_lat.summary());
    if let Some(sp) = &split {
        // Absent rather than 0 when nothing was delivered that way.
        for (name, rec) in [
            ("keystroke_same_node", &sp.same),
            ("keystroke_cross_node", &sp.cross),
        ] {
            let summary = rec.summary();
            if summary.count > 0 {
                r.latency(name, &summary);
            }
        }
    }
    if env.pids.len() > 1 || w == Workload::C2 {
        r.cluster_usage(&cluster_before, &cluster_after);
    } else {
        r.server_usage(before, after, peak);
    }
    if let Some(cpu) = r.metrics.get("server_cpu_s").copied() {
        if deliveries > 0 {
            r.metric(
                "server_cpu_s_per_1m_deliveries",
                cpu / (deliveries as f64 / 1e6),
            );
        }
        // Per document update (each stored durably by tandem; the peers keep them in memory).
        r.metric(
            "server_cpu_us_per_update",
            cpu * 1e6 / (keystrokes * all_typists).max(1) as f64,
        );
    }
    if let (Some(b), Some(a)) = (writer_before, writer_after) {
        r.metric("writer_cpu_s", a - b);
        r.metric(
            "writer_cpu_us_per_update",
            (a - b) * 1e6 / (keystrokes * all_typists).max(1) as f64,
        );
    }
    log(&format!("{w}: {deliveries} deliveries"));
    Ok(r)
}
