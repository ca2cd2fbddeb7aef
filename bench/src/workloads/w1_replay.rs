//! W1 trace replay: one writer sends seph-blog1 one update per transaction (as fast as a
//! bounded window allows) to a document that N readers follow. W6 (ingest) is the same replay
//! followed by a single checking reader: the rate at which a server takes in one writer's
//! updates (durably, for tandem) rather than the rate at which it fans them out.
//!
//! Correctness: every reader must receive every update (matched by id, so merged deliveries
//! count), and the full-check readers (the first `w1_full_check`) keep every update and, once
//! the clock has stopped, apply them to their own yrs document, whose text must equal the
//! replayed text (`endContent` for the whole trace).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{
    account_missing, check_connections, log, ClientSpec, Env, Fleet, Workload, WorkloadResult,
};
use crate::peer::{Pace, PaceSlot, PaceSource, PeerOpts};
use crate::stats::LatencyRecorder;
use crate::trace::{load_sequential, replay_sequential_cached};
use crate::tracker::{now_ns, TrackerBuilder};

/// How often the writer logs its progress.
const LOG_EVERY_NS: u64 = 5_000_000_000;

/// Client id of the writer's document.
const WRITER_CLIENT: u64 = 1_000_001;

/// The writer hands its socket this many updates per write (each still one WebSocket message
/// and one Yjs transaction), and writes what it has before it waits for the readers. One
/// `send` per update made the generator's writer, not the server, the limit of W6.
const WRITE_EVERY: usize = 32;

/// Why the writer stopped before the end of the trace.
enum Halt {
    /// Its connection failed.
    Failed(crate::client::ClientError),
    /// The slowest reader stopped receiving.
    Stalled,
}

/// Readers, full-check readers and writer window of a replay.
struct Shape {
    readers: usize,
    full_check: usize,
    window: usize,
}

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let s = &env.sizes;
    let shape = Shape {
        readers: s.w1_readers,
        full_check: s.w1_full_check,
        window: s.w1_window,
    };
    replay(env, Workload::W1, shape).await
}

/// W6: one writer, one full-check reader.
pub(super) async fn run_ingest(env: &Env) -> Result<WorkloadResult> {
    let shape = Shape {
        readers: 1,
        full_check: 1,
        window: env.sizes.w6_window,
    };
    replay(env, Workload::W6, shape).await
}

async fn replay(env: &Env, workload: Workload, shape: Shape) -> Result<WorkloadResult> {
    let mut r = WorkloadResult::new(workload);
    let s = &env.sizes;
    let t0 = Instant::now();
    let trace = load_sequential(&env.traces.join("seph-blog1.json.gz"))?;
    let replay = replay_sequential_cached(
        &trace,
        "seph-blog1",
        WRITER_CLIENT,
        s.w1_txns,
        env.cache.as_deref(),
    )?;
    let mut tb = TrackerBuilder::default();
    let mut seqs = Vec::with_capacity(replay.updates.len());
    for u in &replay.updates {
        seqs.push(tb.add_update(0, u).context("scanning a writer update")?);
    }
    let tracker = Arc::new(tb.build());
    let n = replay.updates.len();
    r.metric("updates", n as f64);
    r.metric("readers", shape.readers as f64);
    r.metric("prepare_s", t0.elapsed().as_secs_f64());
    r.note(format!(
        "seph-blog1, {n} transactions, one update each; {} readers, the first {} of them full-check \
         (keep every update and, after the clock, apply them to a yrs document and compare the \
         text), all check by id that every update arrived; the writer writes {WRITE_EVERY} \
         updates per socket write, window {} updates",
        shape.readers,
        shape.full_check.min(shape.readers),
        shape.window
    ));

    let doc = env.doc("w1");
    let latency = Arc::new(LatencyRecorder::new(64));
    // The writer keeps every reader within its window.
    let pace = Arc::new(Pace::new(shape.readers, 1));
    let mut fleet = Fleet::new();
    let specs = (0..shape.readers)
        .map(|i| ClientSpec {
            doc: doc.clone(),
            awareness: None,
            opts: PeerOpts {
                doc_track: Some(tracker.clone()),
                doc_latency: Some(latency.clone()),
                full_check: i < shape.full_check,
                check_after: true,
                pace: Some(PaceSlot {
                    pace: pace.clone(),
                    reader: i,
                    source: PaceSource::DocEdits,
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
    let writer = fleet
        .connect_one(
            &env.target,
            ClientSpec {
                doc: doc.clone(),
                awareness: None,
                opts: PeerOpts {
                    me: Some(0),
                    shard: usize::MAX,
                    ..Default::default()
                },
            },
        )
        .await
        .context("connecting the writer")?;
    let mut sender = writer.sender;
    fleet.tasks.push(writer.task);

    let before = env.server_sample();
    let peak = env.peak_rss();
    let start = now_ns();
    let window = shape.window.max(1) as u32;
    let mut tracked_sent = 0u32;
    let mut next_log = now_ns() + LOG_EVERY_NS;
    let sent: Result<(), Halt> = async {
        for (i, (u, seq)) in replay.updates.iter().zip(&seqs).enumerate() {
            if now_ns() >= next_log {
                log(&format!(
                    "w1: {tracked_sent}/{n} updates sent, slowest reader at {}; {}",
                    pace.min(0),
                    progress.summary()
                ));
                next_log = now_ns() + LOG_EVERY_NS;
            }
            if let Some(seq) = seq {
                // What is written waits for the readers only when it must.
                if tracked_sent >= window && pace.min(0) < tracked_sent + 1 - window {
                    sender.flush().await.map_err(Halt::Failed)?;
                    if !pace
                        .wait(0, tracked_sent + 1 - window, s.phase_timeout())
                        .await
                    {
                        return Err(Halt::Stalled);
                    }
                }
                tracker.mark_sent(*seq);
                tracked_sent += 1;
            }
            sender
                .feed(sender.dialect.update(u))
                .await
                .map_err(Halt::Failed)?;
            if (i + 1).is_multiple_of(WRITE_EVERY) {
                sender.flush().await.map_err(Halt::Failed)?;
            }
        }
        sender.flush().await.map_err(Halt::Failed)
    }
    .await;
    match sent {
        Ok(()) => {}
        Err(Halt::Failed(e)) => r.fail(format!("the writer's connection failed: {e}")),
        Err(Halt::Stalled) => r.fail(format!(
            "the slowest reader stopped receiving after {tracked_sent} of {n} updates were sent"
        )),
    }
    let sent_done = now_ns();
    let all = progress
        .wait(
            "readers to receive every update",
            Duration::from_secs_f64(s.phase_timeout_seconds),
            |p| p.complete.load(Ordering::Acquire) >= readers,
        )
        .await;
    let waited = now_ns();
    let after = env.server_sample();
    let peers = fleet.stop().await;
    sender.close().await;
    check_connections(&mut r, &fleet.failed, &peers);
    let readers_peers = &peers[..readers.min(peers.len())];
    if !all {
        account_missing(&mut r, readers_peers, (waited - sent_done) as f64 / 1e9);
    }
    for (i, (p, _)) in readers_peers.iter().enumerate() {
        // A reader that missed updates is already reported; a complete one must hold the text.
        if !p.is_complete() {
            continue;
        }
        if let Some(ed) = &p.editor {
            if ed.text() != replay.final_text {
                r.fail(format!("full-check reader {i} ended with a different text"));
            }
        }
    }
    let end = if all {
        readers_peers
            .iter()
            .filter_map(|(p, _)| p.completed_at)
            .max()
            .unwrap_or(sent_done)
    } else {
        waited
    };
    let secs = (end.saturating_sub(start)) as f64 / 1e9;
    r.metric("updates_per_s", n as f64 / secs.max(1e-9));
    r.metric("send_s", (sent_done - start) as f64 / 1e9);
    r.metric("total_s", secs);
    r.latency("latency", &latency.summary());
    r.metric(
        "deliveries",
        readers_peers.iter().map(|(p, _)| p.delivered).sum::<u64>() as f64,
    );
    r.server_usage(before, after, peak);
    log(&format!("w1: {n} updates in {secs:.2}s"));
    Ok(r)
}
