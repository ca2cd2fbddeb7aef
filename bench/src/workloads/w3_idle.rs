//! W3 idle: many connections spread over many documents, each synced and showing its
//! presence, then idle. Measured: server memory per connection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;

use super::{
    check_connections, log, presence_json, ClientSpec, Env, Fleet, Workload, WorkloadResult,
};
use crate::peer::PeerOpts;
use crate::protocol::awareness_update;
use crate::tracker::now_ns;

const BASE_CLIENT: u64 = 3_000_000;

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let mut r = WorkloadResult::new(Workload::W3);
    let s = &env.sizes;
    let docs = s.w3_docs.max(1);
    let conns = s.w3_conns;
    r.metric("connections", conns as f64);
    r.metric("documents", docs as f64);
    r.note(format!(
        "{conns} connections over {docs} documents (connection i on document i mod {docs}); \
         each syncs and sends a presence state, then stays idle; memory per connection = \
         (server RSS after {}s idle - RSS before connecting) / connections",
        s.w3_hold_seconds
    ));
    let per_doc = |d: usize| conns / docs + usize::from(d < conns % docs);

    let base = env.server_sample();
    let mut fleet = Fleet::new();
    let specs = (0..conns)
        .map(|i| {
            let d = i % docs;
            let client = BASE_CLIENT + i as u64;
            ClientSpec {
                doc: env.doc(&format!("w3-{d}")),
                awareness: Some(awareness_update(
                    client,
                    1,
                    &presence_json(&format!("idle-{i}")),
                )),
                opts: PeerOpts {
                    my_client: Some(client),
                    presence_target: Some(per_doc(d).saturating_sub(1)),
                    shard: i,
                    ..Default::default()
                },
            }
        })
        .collect();
    let start = now_ns();
    fleet
        .connect_all(&env.target, specs, s.connect_concurrency)
        .await;
    let n = fleet.tasks.len();
    let progress = fleet.progress.clone();
    let synced = progress
        .wait("connections to sync", s.phase_timeout(), |p| {
            p.synced.load(Ordering::Acquire) >= n
        })
        .await;
    let presence = progress
        .wait("presence to converge", s.phase_timeout(), |p| {
            p.presence.load(Ordering::Acquire) >= n
        })
        .await;
    r.metric("connect_s", (now_ns() - start) as f64 / 1e9);
    if !synced {
        r.fail(format!(
            "{} of {n} connections synced",
            progress.synced.load(Ordering::Acquire)
        ));
    }
    if !presence {
        r.fail(format!(
            "presence did not converge on {} of {n} connections",
            n - progress.presence.load(Ordering::Acquire)
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(s.w3_hold_seconds)).await;
    let held = env.server_sample();
    let peers = fleet.stop().await;
    check_connections(&mut r, &fleet.failed, &peers);
    if let (Some(b), Some(h)) = (base, held) {
        let delta_kib = h.rss_kib.saturating_sub(b.rss_kib);
        r.metric("server_rss_before_mib", b.rss_kib as f64 / 1024.0);
        r.metric("server_rss_mib", h.rss_kib as f64 / 1024.0);
        r.metric(
            "server_bytes_per_connection",
            delta_kib as f64 * 1024.0 / n.max(1) as f64,
        );
        r.metric("server_cpu_s", h.cpu_s - b.cpu_s);
    }
    log(&format!("w3: {n} idle connections"));
    Ok(r)
}
