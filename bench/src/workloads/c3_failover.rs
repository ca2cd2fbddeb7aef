//! C3 failover: clients on one document spread over every node round robin, a few typists (on
//! the nodes that stay up) typing at a steady rate. Then node 0 is killed with SIGKILL; each of
//! its clients notices its connection end and at once reconnects to another node's URL (the
//! next surviving node in turn, as a load balancer would send it), opening like a fresh
//! provider (step 1 with an empty state vector). Right after the kill every typist sends one
//! keystroke (the marker: an edit that cannot have reached the killed node's clients through
//! it).
//!
//! Failover time of a client = from the kill to the later of (sync step 2 received on the new
//! connection) and (every typist's marker received). Reported as p50/p99/max over the killed
//! node's clients, with the time to notice the loss and the time to the new step 2.
//!
//! Checks: every client, the moved ones included, ends up with every keystroke of every
//! typist (before, at and after the kill); a missing one is a lost delivery.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::time::{interval_at, sleep, Instant, MissedTickBehavior};

use super::{
    account_missing, check_connections, log, none_missing, ClientSpec, Env, Fleet, Workload,
    WorkloadResult,
};
use crate::peer::{Markers, PeerOpts};
use crate::stats::{LatencyRecorder, LatencySummary};
use crate::trace::{Editor, Patch};
use crate::tracker::{now_ns, TrackerBuilder};

/// Client ids are `BASE_CLIENT + index`.
const BASE_CLIENT: u64 = 4_000_000;

/// The node that is killed.
const KILLED: usize = 0;

/// Connection attempts of a moved client before it gives up (each to the next surviving node).
const ATTEMPTS: usize = 50;

const TYPING: &str = "a node goes away and its readers carry on somewhere else ";

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let mut r = WorkloadResult::new(Workload::C3);
    let s = &env.sizes;
    let nodes = env.targets.len();
    if nodes < 2 {
        bail!("failover needs at least two nodes (got {nodes})");
    }
    if env.pids.len() != nodes {
        bail!("failover needs the pid of every node (--pid, one per --addr)");
    }
    let clients = s.c3_clients.max(nodes);
    // Typists: the first clients that are not on the killed node.
    let typist_clients: Vec<usize> = (0..clients)
        .filter(|i| i % nodes != KILLED)
        .take(s.c3_typists.max(1))
        .collect();
    let typists = typist_clients.len();
    let per_phase = (s.c3_rate_hz * s.c3_seconds).round().max(1.0) as usize;
    // Before the kill, the marker, after the kill.
    let keystrokes = 2 * per_phase + 1;
    r.metric("nodes", nodes as f64);
    r.metric("clients", clients as f64);
    r.metric("typists", typists as f64);
    r.note(format!(
        "{clients} clients on one document spread over the nodes round robin; {typists} \
         typists on the nodes that stay up type {} keystrokes/s; after {} s node {KILLED} is \
         killed (SIGKILL) and each of its clients reconnects at once to the next surviving node \
         (step 1 with an empty state vector); each typist sends one keystroke right after the \
         kill; failover time = kill to (new step 2 received and every typist's post-kill \
         keystroke received); typing goes on {} s after the kill",
        s.c3_rate_hz, s.c3_seconds, s.c3_seconds
    ));

    let mut tb = TrackerBuilder::default();
    let mut scripts = Vec::with_capacity(typists);
    for (t, &i) in typist_clients.iter().enumerate() {
        let ed = Editor::new(BASE_CLIENT + i as u64).ascii_only(true);
        let mut keys = Vec::with_capacity(keystrokes);
        for k in 0..keystrokes {
            let at = k % TYPING.len();
            let u = ed.apply(&[Patch(k, 0, TYPING[at..at + 1].to_string())])?;
            let seq = tb
                .add_update(t as u32, &u)
                .context("scanning a keystroke")?
                .context("a keystroke changes the document")?;
            keys.push((seq, u));
        }
        scripts.push(keys);
    }
    let track = Arc::new(tb.build());
    let markers = Arc::new(Markers::new(typists));
    let latency = Arc::new(LatencyRecorder::new(64));

    let doc = env.doc("c3");
    let mut fleet = Fleet::new();
    let specs = (0..clients)
        .map(|i| {
            let node = i % nodes;
            let spec = ClientSpec {
                doc: doc.clone(),
                awareness: None,
                opts: PeerOpts {
                    doc_track: Some(track.clone()),
                    doc_latency: Some(latency.clone()),
                    me: typist_clients
                        .iter()
                        .position(|c| *c == i)
                        .map(|t| t as u32),
                    markers: Some(markers.clone()),
                    shard: i,
                    node,
                    ..Default::default()
                },
            };
            (env.targets[node].clone(), spec)
        })
        .collect();
    fleet.connect_each(specs, s.connect_concurrency).await;
    if !fleet.failed.is_empty() {
        check_connections(&mut r, &fleet.failed, &[]);
        fleet.stop().await;
        return Ok(r);
    }
    let progress = fleet.progress.clone();
    if !progress
        .wait("clients to sync", s.phase_timeout(), |p| {
            p.synced.load(Ordering::Acquire) >= clients
        })
        .await
    {
        r.fail("not every client synced");
    }

    // Typing; a watch flips at the kill so each typist sends its marker at once.
    let (kill_tx, kill_rx) = watch::channel(false);
    let period = Duration::from_secs_f64(1.0 / s.c3_rate_hz.max(0.001));
    let mut senders: Vec<Option<_>> = fleet.senders.drain(..).map(Some).collect();
    let mut typing = Vec::new();
    for (t, keys) in scripts.into_iter().enumerate() {
        let mut sender = senders[typist_clients[t]]
            .take()
            .context("typist connected")?;
        let track = track.clone();
        let markers = markers.clone();
        let mut kill_rx = kill_rx.clone();
        let offset = period.mul_f64(t as f64 / typists as f64);
        typing.push(tokio::spawn(async move {
            let mut tick = interval_at(Instant::now() + offset, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut marked = false;
            for (seq, u) in &keys {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = kill_rx.changed(), if !marked => { r.ok(); }
                }
                if !marked && *kill_rx.borrow() {
                    markers.seqs[t].store(*seq, Ordering::Release);
                    marked = true;
                }
                track.mark_sent(*seq);
                sender.send(sender.dialect.update(u)).await?;
            }
            anyhow::Ok(sender)
        }));
    }
    sleep(Duration::from_secs_f64(s.c3_seconds)).await;

    // Kill node 0. The moved clients' tasks are taken out of the fleet and replaced by the
    // tasks of their new connections.
    let killed_idx: Vec<usize> = (0..clients).filter(|i| i % nodes == KILLED).collect();
    let survivors: Vec<usize> = (0..nodes).filter(|n| *n != KILLED).collect();
    let mut tasks: Vec<Option<_>> = fleet.tasks.drain(..).map(Some).collect();
    let handle = fleet.handle();
    let pid = env.pids[KILLED];
    let killed_at = now_ns();
    let _ = kill_tx.send(true);
    kill(pid)?;
    log(&format!("c3: node {KILLED} (pid {pid}) killed"));
    let mut moving = Vec::new();
    for (j, &i) in killed_idx.iter().enumerate() {
        let old = tasks[i].take().context("client task")?;
        let handle = handle.clone();
        let targets: Vec<_> = (0..ATTEMPTS)
            .map(|a| env.targets[survivors[(j + a) % survivors.len()]].clone())
            .collect();
        let doc = doc.clone();
        moving.push(tokio::spawn(async move {
            let (mut peer, _ended) = old.await.context("client task")?;
            let noticed = now_ns();
            let mut last = None;
            for target in &targets {
                match handle.resume(target, &doc, peer).await {
                    Ok(client) => return anyhow::Ok((i, client, noticed)),
                    Err(e) => {
                        let (err, p) = *e;
                        peer = p;
                        last = Some(err);
                        sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            bail!(
                "client {i} could not reconnect: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            )
        }));
    }
    let mut noticed = vec![None; clients];
    let mut moved_senders = Vec::new();
    let mut move_errors = Vec::new();
    for m in moving {
        match m.await {
            Ok(Ok((i, client, at))) => {
                tasks[i] = Some(client.task);
                moved_senders.push(client.sender);
                noticed[i] = Some(at);
            }
            Ok(Err(e)) => move_errors.push(format!("{e:#}")),
            Err(e) => move_errors.push(e.to_string()),
        }
    }
    fleet.tasks = tasks.into_iter().flatten().collect();
    if let Some(first) = move_errors.first() {
        r.fail(format!(
            "{} of {} clients of the killed node did not reconnect (first: {first})",
            move_errors.len(),
            killed_idx.len()
        ));
    }

    let mut typist_errors = Vec::new();
    let mut typist_senders = Vec::new();
    for t in typing {
        match t.await {
            Ok(Ok(sender)) => typist_senders.push(sender),
            Ok(Err(e)) => typist_errors.push(format!("{e:#}")),
            Err(e) => typist_errors.push(e.to_string()),
        }
    }
    if let Some(first) = typist_errors.first() {
        r.fail(format!(
            "{} of {typists} typists could not send every keystroke (first: {first})",
            typist_errors.len()
        ));
    }
    let typed = now_ns();
    let n = fleet.tasks.len();
    let all = progress
        .wait(
            "every keystroke to reach every client",
            Duration::from_secs_f64(s.c2_drain_seconds.max(10.0)),
            |p| p.complete.load(Ordering::Acquire) >= n,
        )
        .await;
    let drained = now_ns();
    let peers = fleet.stop().await;
    drop(typist_senders);
    drop(moved_senders);
    check_connections(&mut r, &[], &peers);
    if all {
        none_missing(&mut r);
    } else {
        account_missing(&mut r, &peers, (drained - typed) as f64 / 1e9);
    }

    // Failover times of the moved clients (peers come back in connection order, minus
    // those that could not reconnect).
    let mut failover = Vec::new();
    let mut noticed_ns = Vec::new();
    let mut resynced = Vec::new();
    let mut not_caught_up = 0;
    for (p, _) in &peers {
        if p.node() != KILLED {
            continue;
        }
        match (p.synced_at, p.caught_up_at) {
            (Some(synced), Some(caught)) => {
                resynced.push(synced.saturating_sub(killed_at));
                failover.push(synced.max(caught).saturating_sub(killed_at));
            }
            _ => not_caught_up += 1,
        }
    }
    for at in noticed.iter().flatten() {
        noticed_ns.push(at.saturating_sub(killed_at));
    }
    if not_caught_up > 0 {
        r.fail(format!(
            "{not_caught_up} clients of the killed node never synced again with every typist's \
             post-kill keystroke"
        ));
    }
    r.metric("moved_clients", failover.len() as f64);
    r.latency("failover", &LatencySummary::of_samples_ns(failover));
    r.latency("noticed", &LatencySummary::of_samples_ns(noticed_ns));
    r.latency("resynced", &LatencySummary::of_samples_ns(resynced));
    r.latency("keystroke", &latency.summary());
    log(&format!(
        "c3: {} clients moved, failover p50 {:.1} ms max {:.1} ms",
        r.metrics.get("moved_clients").copied().unwrap_or(0.0),
        r.metrics.get("failover_p50_ms").copied().unwrap_or(0.0),
        r.metrics.get("failover_max_ms").copied().unwrap_or(0.0)
    ));
    Ok(r)
}

/// Sends SIGKILL to `pid`.
fn kill(pid: u32) -> Result<()> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("pid {pid}"))?;
    rustix::process::kill_process(p, rustix::process::Signal::KILL)
        .with_context(|| format!("killing pid {pid}"))?;
    Ok(())
}
