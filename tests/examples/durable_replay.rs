//! Benchmark: durable updates/s replaying `seph-blog1.json.gz`, one update per transaction,
//! from one writer to 10 readers, through the real `tandem` binary with durable storage on.
//!
//! `cargo run --release -p tandem-tests --example durable-replay [-- READERS]` (READERS 0:
//! ingest alone, checked by a late joiner's sync)
//!
//! The writer connects with tandem's extensions and counts an update as done only when the
//! server's ack says it is durable (committed to SQLite). It keeps at most `WINDOW` updates
//! unacknowledged. Every reader must receive every update; reader 0 applies them and must end
//! at the trace's `endContent`.

use std::path::PathBuf;
use std::time::Instant;

use tandem_tests::{repo_root, temp_dir, RawClient, Server};

const WINDOW: u64 = 1024;
/// Updates the writer may be ahead of the slowest reader (below the server's per-connection
/// queue, so a reader that keeps reading is never resynced).
const READER_WINDOW: u64 = 256;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let readers: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10);
    let traces = std::env::var_os("TANDEM_TRACES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/traces"));
    let trace = tandem_bench::trace::load_sequential(&traces.join("seph-blog1.json.gz"))?;
    let cache = repo_root().join("bench/results/cache");
    std::fs::create_dir_all(&cache)?;
    let started = Instant::now();
    let replay =
        tandem_bench::trace::replay_sequential_cached(&trace, "seph-blog1", 1, None, Some(&cache))?;
    println!(
        "prepared {} updates in {:.1} s",
        replay.updates.len(),
        started.elapsed().as_secs_f64()
    );
    let n = replay.updates.len() as u64;

    let server = Server::start(
        &temp_dir("durable-replay"),
        &["--message-rate", "10000000", "--message-burst", "10000000"],
    )
    .await?;
    let url = format!("{}/seph", server.ws_base());
    let mut tasks = Vec::new();
    // Updates each reader has received: the writer keeps within WINDOW of the slowest one, as
    // a real editor would be paced by its slowest reader's connection.
    let progress: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>> =
        std::sync::Arc::new((0..readers).map(|_| Default::default()).collect());
    for i in 0..readers {
        let progress = progress.clone();
        let mut r = RawClient::connect(&url).await?;
        r.sync().await?;
        // Readers only count while the replay runs (reader 0 keeps the frames and applies them
        // afterwards), so they keep up the way a browser's socket buffer does.
        r.apply = false;
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut kept = Vec::new();
            while got < n {
                let frame = r
                    .recv()
                    .await
                    .map_err(|c| anyhow::anyhow!("reader {i}: {c:?}"))?;
                if frame.starts_with(&[0, 2]) {
                    got += 1;
                    progress[i].store(got, std::sync::atomic::Ordering::Relaxed);
                    if i == 0 {
                        kept.push(frame);
                    }
                }
            }
            let at = Instant::now();
            let mut replica = tandem_engine::Document::new(99);
            for frame in &kept {
                let mut reader = tandem_engine::wire::Reader::new(&frame[2..]);
                replica.apply_update(reader.var_bytes()?, None)?;
            }
            anyhow::Ok((at, replica.text("text")))
        }));
    }
    let mut writer = RawClient::connect(&format!("{url}?tandem=1")).await?;
    writer.sync().await?;
    writer.apply = false;
    let start = Instant::now();
    let mut sent = 0u64;
    for update in &replay.updates {
        writer
            .send(tandem_engine::protocol::sync_frame(2, update))
            .await?;
        sent += 1;
        loop {
            let slowest = progress
                .iter()
                .map(|p| p.load(std::sync::atomic::Ordering::Relaxed))
                .min()
                .unwrap_or(sent);
            if sent - slowest <= READER_WINDOW {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_micros(100)).await;
        }
        while sent - writer.acked.0 > WINDOW {
            writer
                .recv()
                .await
                .map_err(|c| anyhow::anyhow!("writer: {c:?}"))?;
        }
    }
    let last_sid = writer.wait_acked(n).await?;
    let durable = start.elapsed();
    let mut last_delivery = start;
    let mut text = None;
    for (i, t) in tasks.into_iter().enumerate() {
        let (at, t) = t.await??;
        last_delivery = last_delivery.max(at);
        if i == 0 {
            text = t;
        }
    }
    let delivered = last_delivery - start;
    if readers == 0 {
        // Nobody followed the replay: a late joiner's sync checks what was stored.
        let mut late = RawClient::connect(&url).await?;
        late.sync().await?;
        text = late.doc.text("text");
    }
    let ok = text.as_deref() == Some(trace.end_content.as_str());
    println!(
        "durable replay: {n} updates acked durable in {:.2} s = {:.0} durable updates/s (last sid {last_sid})",
        durable.as_secs_f64(),
        n as f64 / durable.as_secs_f64()
    );
    if readers == 0 {
        println!(
            "late joiner at endContent: {}",
            if ok { "yes" } else { "NO" }
        );
    } else {
        println!(
            "fan-out: {readers} readers received all {n} updates in {:.2} s ({:.0} deliveries/s); reader 0 at endContent: {}",
            delivered.as_secs_f64(),
            (n as f64 * readers as f64) / delivered.as_secs_f64(),
            if ok { "yes" } else { "NO" }
        );
    }
    anyhow::ensure!(ok, "reader 0 did not end at endContent");
    Ok(())
}
