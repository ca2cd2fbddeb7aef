//! W4 join storm: a document holding seph-blog1's final text (with its whole editing history,
//! as a real document has) is loaded by an author who stays connected; then many clients join
//! it, their starts spread evenly over a short interval. Each joiner sends step1 and its
//! presence, like a stock provider.
//!
//! Measured: time from a joiner's TCP connect to its step2 (synced). Correctness: every
//! joiner syncs, and every distinct step2 payload, applied to a fresh document, yields the
//! expected text.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{
    check_connections, log, presence_json, ClientSpec, Env, Fleet, Workload, WorkloadResult,
};
use crate::peer::{Expected, PeerOpts};
use crate::protocol::awareness_update;
use crate::stats::LatencySummary;
use crate::trace::{load_sequential, replay_sequential_cached, Editor};
use crate::tracker::now_ns;

/// The same client id as W1's writer, so both workloads share the cached replay.
const AUTHOR_CLIENT: u64 = 1_000_001;
const BASE_CLIENT: u64 = 4_100_000;

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let mut r = WorkloadResult::new(Workload::W4);
    let s = &env.sizes;
    let trace = load_sequential(&env.traces.join("seph-blog1.json.gz"))?;
    let replay = replay_sequential_cached(
        &trace,
        "seph-blog1",
        AUTHOR_CLIENT,
        s.w4_txns,
        env.cache.as_deref(),
    )?;
    let full = replay.editor.full_update();
    let expected = Arc::new(Expected {
        state_vector: replay.editor.state_vector(),
        text: replay.final_text.clone(),
    });
    let chars = expected.text.chars().count();
    r.metric("document_chars", chars as f64);
    r.metric("document_update_bytes", full.len() as f64);
    r.metric("joiners", s.w4_joiners as f64);
    r.note(format!(
        "document = seph-blog1 after {} transactions ({chars} chars, {} bytes as one update, \
         history included); {} joiners, starts spread over {} ms, each sending step1 and a \
         presence state; time to synced = from TCP connect to step2",
        replay.updates.len(),
        full.len(),
        s.w4_joiners,
        s.w4_spread_ms
    ));

    // Load the document; the author stays connected, as its writer would.
    let doc = env.doc("w4");
    let mut fleet = Fleet::new();
    let progress = fleet.progress.clone();
    let mut author = fleet
        .connect_one(
            &env.target,
            ClientSpec {
                doc: doc.clone(),
                awareness: None,
                opts: PeerOpts::default(),
            },
        )
        .await
        .context("connecting the author")?;
    author
        .sender
        .send(author.sender.dialect.update(&full))
        .await?;
    fleet.tasks.push(author.task);
    fleet.senders.push(author.sender);
    // A checker follows the document until it holds the whole text: then so does the server.
    let checker = fleet
        .connect_one(
            &env.target,
            ClientSpec {
                doc: doc.clone(),
                awareness: None,
                opts: PeerOpts {
                    full_check: true,
                    expected: Some(expected.clone()),
                    ..Default::default()
                },
            },
        )
        .await
        .context("connecting the checker")?;
    fleet.tasks.push(checker.task);
    fleet.senders.push(checker.sender);
    if !progress
        .wait("the loaded document", s.phase_timeout(), |p| {
            p.complete.load(Ordering::Acquire) >= 1
        })
        .await
    {
        r.fail("the server did not hold the loaded document");
    }
    // The author and the checker both count as synced before the joiners start: otherwise a
    // late author step 2 would be taken for a joiner's, and the last joiner go unmeasured.
    if !progress
        .wait(
            "the author and the checker to sync",
            s.phase_timeout(),
            |p| p.synced.load(Ordering::Acquire) >= 2,
        )
        .await
    {
        r.fail("the author or the checker did not sync");
    }
    let synced_before = progress.synced.load(Ordering::Acquire);

    let before = env.server_sample();
    let peak = env.peak_rss();
    let n = s.w4_joiners;
    let spread = Duration::from_millis(s.w4_spread_ms);
    let start = tokio::time::Instant::now();
    let mut joins = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + spread.mul_f64(i as f64 / n.max(1) as f64);
        let target = env.target.clone();
        let handle = fleet.handle();
        let spec = ClientSpec {
            doc: doc.clone(),
            awareness: Some(awareness_update(
                BASE_CLIENT + i as u64,
                1,
                &presence_json(&format!("joiner-{i}")),
            )),
            opts: PeerOpts {
                keep_step2: true,
                my_client: Some(BASE_CLIENT + i as u64),
                shard: i,
                ..Default::default()
            },
        };
        joins.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let t0 = now_ns();
            (t0, handle.connect(&target, spec).await)
        }));
    }
    let mut starts = Vec::with_capacity(n);
    for (i, j) in joins.into_iter().enumerate() {
        let (t0, c) = j.await.context("a joiner task failed")?;
        match c {
            Ok(c) => {
                fleet.tasks.push(c.task);
                fleet.senders.push(c.sender);
                starts.push(t0);
            }
            Err(e) => fleet.failed.push((i, e)),
        }
    }
    let joined = starts.len();
    let all = progress
        .wait("joiners to sync", s.phase_timeout(), |p| {
            p.synced.load(Ordering::Acquire) >= synced_before + joined
        })
        .await;
    let after = env.server_sample();
    let peers = fleet.stop().await;
    check_connections(&mut r, &fleet.failed, &peers);
    if !all || joined < n {
        r.fail(format!(
            "{} of {n} joiners synced in time",
            progress.synced.load(Ordering::Acquire) - synced_before
        ));
    }
    let mut times = Vec::with_capacity(n);
    let mut payloads: HashMap<u64, usize> = HashMap::new();
    for ((p, _), t0) in peers.iter().skip(2).zip(&starts) {
        if let Some(synced) = p.synced_at {
            times.push(synced.saturating_sub(*t0));
        }
        if let Some(step2) = &p.step2 {
            let mut h = DefaultHasher::new();
            step2.hash(&mut h);
            if let Entry::Vacant(e) = payloads.entry(h.finish()) {
                let ed = Editor::new(BASE_CLIENT - 1);
                if ed.apply_update(step2).is_err() || ed.text() != expected.text {
                    r.fail(format!(
                        "a joiner's step2 ({} bytes) did not hold the document",
                        step2.len()
                    ));
                }
                e.insert(step2.len());
            }
        }
    }
    if times.len() < joined {
        r.fail(format!("{} of {joined} joiners were measured", times.len()));
    }
    r.metric("distinct_step2_payloads", payloads.len() as f64);
    let summary = LatencySummary::of_samples_ns(times);
    r.latency("synced", &summary);
    r.server_usage(before, after, peak);
    log(&format!("w4: {n} joiners, p99 {:.1} ms", summary.p99_ms));
    Ok(r)
}
