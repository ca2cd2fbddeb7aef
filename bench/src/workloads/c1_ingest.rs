//! C1 ingest on several nodes: writers connected to every node send one-character updates as
//! fast as their window of unacknowledged updates allows, and an update counts only once the
//! server acknowledged it (tandem: `?tandem=1` durability acks, sent once the update is
//! committed to PostgreSQL, carrying its sid; Hocuspocus: its SyncStatus, sent once the update
//! is applied in memory).
//!
//! Two parts, each on fresh documents: **one** document written from every node at once
//! (`c1_writers` writers spread over the nodes), then **many** documents at once (`c1_docs`, one
//! writer each, writers spread over the nodes round robin).
//!
//! Checks:
//! - readers (one on every node for the shared document; one per document, on the node after
//!   its writer's, for the many) must receive every update: what never arrives within the time
//!   allowed is a lost delivery;
//! - tandem only: every node's `GET /docs/{doc}` answers a sid of at least the number of
//!   updates acknowledged for that document (never less);
//! - a client that joins after the writers are done (one per node for the shared document, one
//!   per document otherwise) syncs, and its document must hold every acknowledged update: for
//!   each writer, a state-vector clock of at least its acknowledged count (each update is one
//!   character, so one clock).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    account_missing, check_connections, log, ClientSpec, Env, Fleet, Workload, WorkloadResult,
};
use crate::peer::{Acks, PeerOpts};
use crate::stats::LatencyRecorder;
use crate::target::{Server, Target};
use crate::trace::{Editor, Patch};
use crate::tracker::{now_ns, TrackerBuilder};

/// Writer client ids are `BASE_CLIENT + global writer index`.
const BASE_CLIENT: u64 = 3_000_000;

/// Messages a writer queues before flushing its socket.
const FLUSH_EVERY: usize = 32;

const TYPING: &str = "several nodes take in one document's keystrokes and store every one ";

/// One part of the workload.
struct Part {
    /// Metric prefix.
    name: &'static str,
    docs: usize,
    writers_per_doc: usize,
    updates: usize,
    window: usize,
}

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let mut r = WorkloadResult::new(Workload::C1);
    let s = &env.sizes;
    let nodes = env.targets.len().max(1);
    r.metric("nodes", nodes as f64);
    let acks = match env.target.server {
        Server::Tandem if !env.target.tandem_hocuspocus => {
            "tandem's durability acks (`?tandem=1`: sent once the update is committed, with its sid)"
        }
        Server::Tandem => "tandem's SyncStatus (Hocuspocus dialect: sent once the update is committed)",
        _ => "the server's SyncStatus (Hocuspocus: sent once the update is applied in memory; nothing is stored)",
    };
    r.note(format!(
        "Writers send one-character updates (each its own transaction) as fast as a window of \
         {} unacknowledged updates allows. One document: {} writers spread over the nodes round \
         robin, {} updates each, a reader on every node. Many documents: {} documents at once, \
         one writer each ({} updates), writers spread over the nodes, one reader per document \
         on another node",
        s.c1_window, s.c1_writers, s.c1_updates_per_writer, s.c1_docs, s.c1_doc_updates
    ));
    r.note(format!("An update counts once acknowledged by {acks}"));
    let one = Part {
        name: "one",
        docs: 1,
        writers_per_doc: s.c1_writers.max(1),
        updates: s.c1_updates_per_writer,
        window: s.c1_window,
    };
    ingest(env, &mut r, one).await?;
    if s.c1_docs > 0 {
        let many = Part {
            name: "many",
            docs: s.c1_docs,
            writers_per_doc: 1,
            updates: s.c1_doc_updates,
            window: s.c1_window,
        };
        ingest(env, &mut r, many).await?;
    }
    Ok(r)
}

/// One writer's precomputed updates.
struct Script {
    doc: usize,
    node: usize,
    client: u64,
    /// Tracked edit of the first update (the rest follow in order).
    first_seq: u32,
    updates: Vec<Vec<u8>>,
}

async fn ingest(env: &Env, r: &mut WorkloadResult, part: Part) -> Result<()> {
    let s = &env.sizes;
    let p = part.name;
    let nodes = env.targets.len().max(1);
    let targets = &env.targets;

    // Updates, and one tracker per document (readers match what they get by id).
    let prepare = now_ns();
    let mut builders: Vec<TrackerBuilder> =
        (0..part.docs).map(|_| TrackerBuilder::default()).collect();
    let mut scripts = Vec::new();
    for (d, builder) in builders.iter_mut().enumerate() {
        for k in 0..part.writers_per_doc {
            let g = d * part.writers_per_doc + k;
            let client = BASE_CLIENT + g as u64;
            let ed = Editor::new(client).ascii_only(true);
            let mut updates = Vec::with_capacity(part.updates);
            let mut first_seq = None;
            for i in 0..part.updates {
                let at = i % TYPING.len();
                let u = ed.apply(&[Patch(i, 0, TYPING[at..at + 1].to_string())])?;
                let seq = builder
                    .add_update(k as u32, &u)
                    .context("scanning an update")?
                    .context("an update changes the document")?;
                first_seq.get_or_insert(seq);
                updates.push(u);
            }
            scripts.push(Script {
                doc: d,
                node: g % nodes,
                client,
                first_seq: first_seq.unwrap_or(0),
                updates,
            });
        }
    }
    let trackers: Vec<_> = builders.into_iter().map(|b| Arc::new(b.build())).collect();
    r.metric(&format!("{p}_prepare_s"), (now_ns() - prepare) as f64 / 1e9);
    let total: usize = scripts.iter().map(|w| w.updates.len()).sum();
    r.metric(&format!("{p}_updates"), total as f64);
    r.metric(&format!("{p}_docs"), part.docs as f64);
    r.metric(&format!("{p}_writers"), scripts.len() as f64);
    let docs: Vec<String> = (0..part.docs)
        .map(|d| env.doc(&format!("c1-{p}-{d}")))
        .collect();

    // Readers: on every node for one document, on the node after the writer's for many.
    let deliver_lat = Arc::new(LatencyRecorder::new(64));
    let mut readers = Fleet::new();
    let mut specs = Vec::new();
    let mut reader_doc = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        let on: Vec<usize> = if part.docs == 1 {
            (0..nodes).collect()
        } else {
            vec![(d + 1) % nodes]
        };
        for node in on {
            let spec = ClientSpec {
                doc: doc.clone(),
                awareness: None,
                opts: PeerOpts {
                    doc_track: Some(trackers[d].clone()),
                    doc_latency: Some(deliver_lat.clone()),
                    shard: specs.len(),
                    node,
                    ..Default::default()
                },
            };
            specs.push((targets[node].clone(), spec));
            reader_doc.push(d);
        }
    }
    let n_readers = specs.len();
    readers.connect_each(specs, s.connect_concurrency).await;
    let rp = readers.progress.clone();
    if !rp
        .wait("readers to sync", s.phase_timeout(), |p| {
            p.synced.load(Ordering::Acquire) >= readers.tasks.len()
        })
        .await
    {
        r.fail(format!("{p}: readers did not all sync"));
    }

    // Writers: acks counted by their read tasks.
    let ack_lat = Arc::new(LatencyRecorder::new(64));
    let mut writers = Fleet::new();
    let acks: Vec<Arc<Acks>> = scripts.iter().map(|_| Arc::new(Acks::default())).collect();
    let specs = scripts
        .iter()
        .zip(&acks)
        .enumerate()
        .map(|(i, (w, a))| {
            let spec = ClientSpec {
                doc: docs[w.doc].clone(),
                awareness: None,
                opts: PeerOpts {
                    acks: Some(a.clone()),
                    ack_latency: Some((ack_lat.clone(), trackers[w.doc].clone(), w.first_seq)),
                    shard: i,
                    node: w.node,
                    ..Default::default()
                },
            };
            (targets[w.node].with_acks(), spec)
        })
        .collect();
    writers.connect_each(specs, s.connect_concurrency).await;
    if !writers.failed.is_empty() {
        check_connections(r, &writers.failed, &[]);
        readers.stop().await;
        writers.stop().await;
        bail!("{p}: writers could not connect");
    }
    let wp = writers.progress.clone();
    let n_writers = writers.tasks.len();
    if !wp
        .wait("writers to sync", s.phase_timeout(), |p| {
            p.synced.load(Ordering::Acquire) >= n_writers
        })
        .await
    {
        r.fail(format!("{p}: writers did not all sync"));
    }

    let firsts: Vec<(usize, u32)> = scripts.iter().map(|w| (w.doc, w.first_seq)).collect();
    let before = env.nodes_sample();
    let start = now_ns();
    let timeout = s.phase_timeout();
    let mut tasks = Vec::new();
    let senders: Vec<_> = writers.senders.drain(..).collect();
    for ((mut sender, w), a) in senders.into_iter().zip(scripts).zip(acks.iter().cloned()) {
        let track = trackers[w.doc].clone();
        let window = part.window.max(1) as u64;
        tasks.push(tokio::spawn(async move {
            let mut queued = 0usize;
            for (i, u) in w.updates.iter().enumerate() {
                let i = i as u64;
                if i >= window + a.count.load(Ordering::Acquire) {
                    if queued > 0 {
                        sender.flush().await?;
                        queued = 0;
                    }
                    if !a.wait(i + 1 - window, timeout).await {
                        bail!(
                            "{}: {} of {} acknowledged",
                            stall(&a, timeout),
                            a.count.load(Ordering::Acquire),
                            w.updates.len()
                        );
                    }
                }
                track.mark_sent(w.first_seq + i as u32);
                sender.feed(sender.dialect.update(u)).await?;
                queued += 1;
                if queued >= FLUSH_EVERY {
                    sender.flush().await?;
                    queued = 0;
                }
            }
            sender.flush().await?;
            let n = w.updates.len() as u64;
            if !a.wait(n, timeout).await {
                bail!(
                    "{}: {} of {n} acknowledged",
                    stall(&a, timeout),
                    a.count.load(Ordering::Acquire)
                );
            }
            anyhow::Ok((sender, w.client, w.doc))
        }));
    }
    let mut writer_errors = Vec::new();
    let mut done = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(x)) => done.push(x),
            Ok(Err(e)) => writer_errors.push(format!("{e:#}")),
            Err(e) => writer_errors.push(e.to_string()),
        }
    }
    let acked_at = acks
        .iter()
        .map(|a| a.last_at.load(Ordering::Acquire))
        .max()
        .unwrap_or(start);
    let after = env.nodes_sample();
    let acked: Vec<u64> = acks
        .iter()
        .map(|a| a.count.load(Ordering::Acquire))
        .collect();
    let acked_total: u64 = acked.iter().sum();
    let refused: u64 = acks.iter().map(|a| a.refused.load(Ordering::Acquire)).sum();
    if let Some(first) = writer_errors.first() {
        r.fail(format!(
            "{p}: {} of {n_writers} writers did not get every update acknowledged (first: {first})",
            writer_errors.len()
        ));
    }
    if refused > 0 {
        r.fail(format!("{p}: the server refused {refused} updates"));
    }
    let secs = acked_at.saturating_sub(start) as f64 / 1e9;
    r.metric(&format!("{p}_acked"), acked_total as f64);
    r.metric(
        &format!("{p}_acked_per_s"),
        acked_total as f64 / secs.max(1e-9),
    );
    r.metric(&format!("{p}_ingest_s"), secs);
    r.latency(&format!("{p}_ack"), &ack_lat.summary());
    log(&format!(
        "c1 {p}: {acked_total} of {total} updates acknowledged in {secs:.2} s ({:.0}/s)",
        acked_total as f64 / secs.max(1e-9)
    ));

    // Every reader must get every update.
    let all = rp
        .wait(
            "readers to receive every update",
            Duration::from_secs_f64(s.c1_drain_seconds),
            |p| p.complete.load(Ordering::Acquire) >= n_readers,
        )
        .await;
    let drained = now_ns();
    let reader_peers = readers.stop().await;
    let writer_peers = writers.stop().await;
    for (mut sender, _, _) in done {
        sender.close().await;
    }
    check_connections(r, &readers.failed, &reader_peers);
    check_connections(r, &[], &writer_peers);
    // Lost: an acknowledged update that a reader did not receive.
    let mut lost = 0u64;
    let mut lost_readers = 0usize;
    for ((peer, _), d) in reader_peers.iter().zip(&reader_doc) {
        let mut mine = 0u64;
        for (w, a) in firsts.iter().zip(&acks) {
            if w.0 != *d {
                continue;
            }
            let acked = a.count.load(Ordering::Acquire) as u32;
            mine += (0..acked).filter(|i| !peer.has_doc_edit(w.1 + i)).count() as u64;
        }
        lost += mine;
        lost_readers += usize::from(mine > 0);
    }
    if lost > 0 {
        // Also recorded as latencies (the time waited: a lower bound).
        let mut censored = WorkloadResult::new(Workload::C1);
        account_missing(
            &mut censored,
            &reader_peers,
            (drained.saturating_sub(acked_at)) as f64 / 1e9,
        );
        r.fail(format!(
            "{p}: {lost} acknowledged updates never reached a reader ({lost_readers} readers) \
             within {:.0} s of the last ack",
            (drained.saturating_sub(acked_at)) as f64 / 1e9
        ));
    } else if !all {
        r.fail(format!(
            "{p}: not every reader completed, although no acknowledged update is missing"
        ));
    }
    r.metric(&format!("{p}_undelivered"), lost as f64);
    r.metric(
        &format!("{p}_deliveries"),
        reader_peers.iter().map(|(p, _)| p.delivered).sum::<u64>() as f64,
    );
    let last_delivery = reader_peers
        .iter()
        .filter_map(|(p, _)| p.completed_at)
        .max()
        .unwrap_or(drained);
    r.metric(
        &format!("{p}_all_delivered_s"),
        last_delivery.saturating_sub(start) as f64 / 1e9,
    );
    r.latency(&format!("{p}_delivery"), &deliver_lat.summary());
    let mut usage = WorkloadResult::new(Workload::C1);
    usage.cluster_usage(&before, &after);
    for (k, v) in usage.metrics {
        r.metric(&format!("{p}_{k}"), v);
    }

    // Per document: acknowledged counts per writer.
    let mut per_doc: Vec<Vec<(u64, u64)>> = vec![Vec::new(); part.docs];
    for (g, a) in acked.iter().enumerate() {
        let d = g / part.writers_per_doc;
        per_doc[d].push((BASE_CLIENT + g as u64, *a));
    }

    // tandem: every node's sid of every document is at least what was acknowledged.
    if env.target.server == Server::Tandem {
        let mut low = Vec::new();
        let mut min_margin = i64::MAX;
        let mut max_margin = i64::MIN;
        for (d, doc) in docs.iter().enumerate() {
            let want: u64 = per_doc[d].iter().map(|(_, a)| a).sum();
            for t in targets {
                match sid_at_least(t, doc, want, Duration::from_secs(10)).await {
                    Ok(sid) => {
                        let m = sid as i64 - want as i64;
                        min_margin = min_margin.min(m);
                        max_margin = max_margin.max(m);
                        if sid < want {
                            low.push(format!("{doc} on {}: sid {sid} < {want} acked", t.addr));
                        }
                    }
                    Err(e) => low.push(format!("{doc} on {}: {e:#}", t.addr)),
                }
            }
        }
        if min_margin != i64::MAX {
            r.metric(&format!("{p}_sid_minus_acked_min"), min_margin as f64);
            r.metric(&format!("{p}_sid_minus_acked_max"), max_margin as f64);
        }
        if let Some(first) = low.first() {
            r.fail(format!(
                "{p}: {} document sids below the acknowledged count (first: {first})",
                low.len()
            ));
        }
    }

    // A client joining now must hold every acknowledged update.
    let mut checkers = Fleet::new();
    let mut specs = Vec::new();
    let mut checked = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        let on: Vec<usize> = if part.docs == 1 {
            (0..nodes).collect()
        } else {
            vec![(d + 2) % nodes]
        };
        for node in on {
            checked.push(d);
            specs.push((
                targets[node].clone(),
                ClientSpec {
                    doc: doc.clone(),
                    awareness: None,
                    opts: PeerOpts {
                        full_check: true,
                        node,
                        ..Default::default()
                    },
                },
            ));
        }
    }
    let n_checkers = specs.len();
    checkers.connect_each(specs, s.connect_concurrency).await;
    let synced = checkers
        .progress
        .wait("late joiners to sync", s.phase_timeout(), |p| {
            p.synced.load(Ordering::Acquire) >= n_checkers
        })
        .await;
    let checker_peers = checkers.stop().await;
    check_connections(r, &checkers.failed, &checker_peers);
    if !synced {
        r.fail(format!("{p}: late joiners did not all sync"));
    }
    let mut missing = 0u64;
    for ((peer, _), d) in checker_peers.iter().zip(&checked) {
        let Some(ed) = &peer.editor else { continue };
        let sv = ed.state_vector();
        for (client, a) in &per_doc[*d] {
            let have = u64::from(sv.get(&yrs::block::ClientID::new(*client)));
            missing += a.saturating_sub(have);
        }
    }
    r.metric(&format!("{p}_acked_missing"), missing as f64);
    if missing > 0 {
        r.fail(format!(
            "{p}: late joiners lack {missing} acknowledged updates (summed over joiners)"
        ));
    }
    Ok(())
}

/// Why a writer stopped waiting for acks.
fn stall(a: &Acks, timeout: Duration) -> String {
    if a.ended.load(Ordering::Acquire) {
        "the connection ended".into()
    } else {
        format!("no ack for {} s", timeout.as_secs())
    }
}

/// Polls `GET /docs/{doc}` on `t` until its sid reaches `want` (a node may still be catching
/// up) or `within` passes; returns the last sid read.
async fn sid_at_least(t: &Target, doc: &str, want: u64, within: Duration) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let sid = doc_sid(t, doc).await?;
        if sid >= want || tokio::time::Instant::now() >= deadline {
            return Ok(sid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sid in tandem's `GET /docs/{doc}` snapshot.
async fn doc_sid(t: &Target, doc: &str) -> Result<u64> {
    let path = match &t.token {
        Some(tok) => format!("/docs/{doc}?token={tok}"),
        None => format!("/docs/{doc}"),
    };
    let body = http_get(t, &path).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).context("snapshot JSON")?;
    v.get("sid")
        .and_then(|s| s.as_u64())
        .context("snapshot without a sid")
}

/// A minimal HTTP/1.1 GET over loopback (no client library needed for two routes).
async fn http_get(t: &Target, path: &str) -> Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(t.addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n\r\n",
        t.addr
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .context("HTTP answer timed out")??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP answer without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!(
            "GET {path}: HTTP {status}: {}",
            String::from_utf8_lossy(body)
                .chars()
                .take(200)
                .collect::<String>()
        );
    }
    if head.contains("transfer-encoding: chunked") {
        return dechunk(body);
    }
    Ok(body.to_vec())
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_join() {
        let body = b"4\r\n{\"si\r\n6\r\nd\":12}\r\n0\r\n\r\n";
        assert_eq!(dechunk(body).expect("decodes"), b"{\"sid\":12}");
    }
}
