//! W5 concurrent: friendsforever (two authors) replayed by two writers over the network. Each
//! transaction's update is built up front on its author's document holding exactly the merge
//! of the transaction's parents; at run time a writer sends a transaction only after the
//! server has processed every transaction of the other author it depends on (each writer
//! follows every update with an awareness update whose clock counts its transactions, and
//! waits to see the other writer's clock reach the dependency), so updates reach the server in
//! an order that respects `parents` while the two writers really run concurrently.
//!
//! Correctness: every reader (each applies every update to its own yrs document) converges to
//! the merge of all transactions. Latency: per update, writer send to reader receive.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{
    account_missing, check_connections, log, ClientSpec, Env, Fleet, Workload, WorkloadResult,
};
use crate::peer::{Expected, Pace, PaceSlot, PaceSource, PeerOpts, Watched};
use crate::protocol::awareness_update;
use crate::stats::LatencyRecorder;
use crate::trace::{load_concurrent, replay_concurrent, Editor};
use crate::tracker::{now_ns, TrackerBuilder};

const BASE_CLIENT: u64 = 5_000_000;

fn marker_json(agent: usize, sent: usize) -> String {
    format!("{{\"user\":{{\"name\":\"writer-{agent}\"}},\"sent\":{sent}}}")
}

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let mut r = WorkloadResult::new(Workload::W5);
    let s = &env.sizes;
    let trace = load_concurrent(&env.traces.join("friendsforever.json.gz"))?;
    let replay = replay_concurrent(&trace, BASE_CLIENT, s.w5_txns)?;
    let agents = trace.num_agents;
    let n = replay.updates.len();
    // The merged final state every reader must reach.
    let merged = Editor::new(BASE_CLIENT + 999);
    for u in &replay.updates {
        merged.apply_update(u)?;
    }
    let expected = Arc::new(Expected {
        state_vector: merged.state_vector(),
        text: replay.final_text.clone(),
    });
    r.metric("updates", n as f64);
    r.metric("readers", s.w5_readers as f64);
    r.metric("writers", agents as f64);
    r.note(format!(
        "friendsforever, {n} transactions by {agents} writers respecting parents, {} readers \
         that each apply every update; writer window {} updates; the yrs merge {} the trace's \
         endContent",
        s.w5_readers,
        s.w5_window,
        if replay.matches_end_content {
            "equals"
        } else if s.w5_txns.is_some() {
            "(of a prefix) is not compared with"
        } else {
            "differs from (concurrent inserts are ordered by each CRDT's own rule)"
        }
    ));

    let mut tb = TrackerBuilder::default();
    let mut seqs = Vec::with_capacity(n);
    for (u, a) in replay.updates.iter().zip(&replay.agent) {
        seqs.push(tb.add_update(*a as u32, u).context("scanning an update")?);
    }
    let tracker = Arc::new(tb.build());
    let latency = Arc::new(LatencyRecorder::new(64));
    // Lane a = writer a's marker clock as each reader sees it: a writer keeps the slowest
    // reader within its window.
    let pace = Arc::new(Pace::new(s.w5_readers, agents));
    let writer_clients: Vec<u64> = (0..agents).map(|a| BASE_CLIENT + a as u64).collect();

    let doc = env.doc("w5");
    let mut fleet = Fleet::new();
    let specs = (0..s.w5_readers)
        .map(|i| ClientSpec {
            doc: doc.clone(),
            awareness: None,
            opts: PeerOpts {
                doc_track: Some(tracker.clone()),
                doc_latency: Some(latency.clone()),
                full_check: true,
                expected: Some(expected.clone()),
                pace: Some(PaceSlot {
                    pace: pace.clone(),
                    reader: i,
                    source: PaceSource::AwarenessClocks(writer_clients.clone()),
                }),
                shard: i,
                ..Default::default()
            },
        })
        .collect();
    fleet
        .connect_all(&env.target, specs, s.connect_concurrency)
        .await;
    let readers = fleet.tasks.len();
    let progress = fleet.progress.clone();
    if !progress
        .wait("readers to sync", s.phase_timeout(), |p| {
            p.synced.load(Ordering::Acquire) >= readers
        })
        .await
    {
        r.fail("readers did not all sync");
    }

    // Writers: each sees the other writers' markers on its own socket.
    let mut writers = Vec::with_capacity(agents);
    let mut seen: Vec<Vec<Arc<Watched>>> = Vec::with_capacity(agents);
    for a in 0..agents {
        let mine: Vec<Arc<Watched>> = (0..agents).map(|_| Arc::new(Watched::default())).collect();
        let client = BASE_CLIENT + a as u64;
        let c = fleet
            .connect_one(
                &env.target,
                ClientSpec {
                    doc: doc.clone(),
                    awareness: Some(awareness_update(client, 1, &marker_json(a, 0))),
                    opts: PeerOpts {
                        me: Some(a as u32),
                        my_client: Some(client),
                        watch: (0..agents)
                            .filter(|b| *b != a)
                            .map(|b| (BASE_CLIENT + b as u64, mine[b].clone()))
                            .collect(),
                        shard: usize::MAX - a,
                        ..Default::default()
                    },
                },
            )
            .await
            .context("connecting a writer")?;
        fleet.tasks.push(c.task);
        writers.push(c.sender);
        seen.push(mine);
    }

    let before = env.server_sample();
    let peak = env.peak_rss();
    let start = now_ns();
    // Position of each transaction within its author's sequence.
    let mut pos = vec![0usize; n];
    let mut count = vec![0usize; agents];
    for (i, a) in replay.agent.iter().enumerate() {
        pos[i] = count[*a];
        count[*a] += 1;
    }
    let replay = Arc::new(replay);
    let pos = Arc::new(pos);
    let seqs = Arc::new(seqs);
    let mut tasks = Vec::with_capacity(agents);
    for (a, (mut sender, mine)) in writers.into_iter().zip(seen).enumerate() {
        let replay = replay.clone();
        let pos = pos.clone();
        let seqs = seqs.clone();
        let tracker = tracker.clone();
        let pace = pace.clone();
        let timeout = s.phase_timeout();
        let window = s.w5_window.max(1);
        let client = BASE_CLIENT + a as u64;
        tasks.push(tokio::spawn(async move {
            let mut sent = 0usize;
            for i in (0..replay.updates.len()).filter(|i| replay.agent[*i] == a) {
                for (b, dep) in replay.deps[i].iter().enumerate() {
                    if let Some(j) = dep {
                        // Marker clock of writer b after its transaction j.
                        let need = (pos[*j] + 2) as u32;
                        anyhow::ensure!(
                            mine[b].wait_for(need, timeout).await,
                            "writer {a} waited too long for writer {b}'s transaction {j}"
                        );
                    }
                }
                if sent >= window {
                    anyhow::ensure!(
                        pace.wait(a, (sent + 2 - window) as u32, timeout).await,
                        "writer {a}'s updates stopped reaching the slowest reader"
                    );
                }
                if let Some(seq) = seqs[i] {
                    tracker.mark_sent(seq);
                }
                sender
                    .send(sender.dialect.update(&replay.updates[i]))
                    .await?;
                sent += 1;
                let marker = awareness_update(client, sent as u32 + 1, &marker_json(a, sent));
                sender.send(sender.dialect.awareness(&marker)).await?;
            }
            anyhow::Ok(sender)
        }));
    }
    let mut senders = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => senders.push(s),
            Ok(Err(e)) => r.fail(format!("{e:#}")),
            Err(e) => r.fail(format!("a writer task failed: {e}")),
        }
    }
    let sent_done = now_ns();
    let all = progress
        .wait("readers to converge", s.phase_timeout(), |p| {
            p.complete.load(Ordering::Acquire) >= readers
        })
        .await;
    let after = env.server_sample();
    let peers = fleet.stop().await;
    drop(senders);
    check_connections(&mut r, &fleet.failed, &peers);
    let reader_peers = &peers[..readers.min(peers.len())];
    if !all {
        account_missing(&mut r, reader_peers, (now_ns() - sent_done) as f64 / 1e9);
    }
    let converged = reader_peers.iter().filter(|(p, _)| p.is_complete()).count();
    r.metric("converged_readers", converged as f64);
    if !all || converged < s.w5_readers {
        r.fail(format!(
            "{converged} of {} readers converged to the merged document",
            s.w5_readers
        ));
    }
    let end = reader_peers
        .iter()
        .filter_map(|(p, _)| p.completed_at)
        .max()
        .unwrap_or(sent_done);
    let secs = end.saturating_sub(start) as f64 / 1e9;
    r.metric("total_s", secs);
    r.metric("updates_per_s", n as f64 / secs.max(1e-9));
    r.latency("latency", &latency.summary());
    r.server_usage(before, after, peak);
    log(&format!(
        "w5: {converged}/{} readers converged",
        s.w5_readers
    ));
    Ok(r)
}
