//! Misbehaving clients: only the offender is closed, with a reason; everyone else keeps
//! working and the server's memory stays bounded.

use tandem_tests::{temp_dir, RawClient, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_close_only_their_sender() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("malformed"), &[]).await?;
    let url = format!("{}/shared", server.ws_base());
    let mut alice = RawClient::connect(&url).await?;
    alice.sync().await?;
    let mut bob = RawClient::connect(&url).await?;
    bob.sync().await?;

    let mut rng = fastrand::Rng::with_seed(7);
    println!("seed 7");
    let bad_frames: Vec<Vec<u8>> = vec![
        vec![0x80],                                     // truncated varint
        vec![0, 2, 50, 1, 2],                           // length beyond the frame
        vec![0, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // a huge length
        vec![42, 1, 2, 3],                              // unknown message type
        (0..200).map(|_| rng.u8(..)).collect(),         // random bytes
        vec![0; 2 << 20],                               // larger than the 1 MiB frame limit
    ];
    for (i, frame) in bad_frames.into_iter().enumerate() {
        let mut evil = RawClient::connect(&url).await?;
        evil.sync().await?;
        let oversized = frame.len() > 1 << 20;
        match evil.send(frame).await {
            Err(e) => {
                // The server may close an oversized frame's connection before the client has
                // finished sending it; the refusal then shows in the metrics.
                assert!(oversized, "frame {i}: send failed: {e}");
                let metrics = reqwest_metrics(&server).await?;
                assert!(
                    metrics
                        .lines()
                        .any(|l| l.contains("limit=\"frame_size\"") && !l.ends_with(" 0")),
                    "frame {i}: no frame-size breach counted"
                );
            }
            Ok(()) => {
                let closed = evil.closed().await;
                let code = closed.code.unwrap_or(0);
                assert!(
                    [4400, 1009, 1002].contains(&code),
                    "frame {i}: closed with {closed:?}"
                );
                assert!(!closed.reason.is_empty(), "frame {i}: a reason is given");
            }
        }
        // The others keep co-editing.
        let at = alice.doc.text_len("t");
        alice.insert("t", at, &i.to_string()).await?;
        let want = alice.doc.text("t").unwrap();
        bob.wait_text("t", &want).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_resynced_and_memory_stays_bounded() -> anyhow::Result<()> {
    // The writer sends as fast as it can: lift the per-connection message rate limit.
    let server = Server::start(
        &temp_dir("slow-reader"),
        &["--message-rate", "1000000", "--message-burst", "1000000"],
    )
    .await?;
    let url = format!("{}/busy", server.ws_base());
    let mut writer = RawClient::connect(&format!("{url}?tandem=1")).await?;
    writer.sync().await?;
    let mut reader = RawClient::connect(&url).await?;
    reader.sync().await?;
    // A healthy reader reads continuously until the writer's final marker arrives.
    // It only looks for the marker's bytes, so a debug build keeps up with the writer.
    reader.apply = false;
    let reader = tokio::spawn(async move {
        loop {
            let frame = reader.recv().await.map_err(|c| anyhow::anyhow!("{c:?}"))?;
            if frame.windows(4).any(|w| w == b"done") {
                return anyhow::Ok(());
            }
        }
    });
    // This one syncs, then never reads again.
    let mut stalled = RawClient::connect(&url).await?;
    stalled.sync().await?;

    let chunk = "x".repeat(2_000);
    let rss_before = server.rss_kib()?;
    let mut max_rss = rss_before;
    // Insert a chunk and delete it again: the document stays small (deleted text is garbage
    // collected), so memory growth could only come from buffering frames.
    for i in 0..12_000u32 {
        writer.insert("t", 0, &chunk).await?;
        let update = writer.doc.delete("raw", "t", 0, 2_000)?;
        writer
            .send(tandem_engine::protocol::sync_frame(2, &update))
            .await?;
        if i % 250 == 0 {
            // Pace the writer by durability, as a real client would.
            writer.wait_acked(u64::from(i) * 2).await?;
            max_rss = max_rss.max(server.rss_kib()?);
        }
    }
    // The insert frames alone (the deletions are a few bytes each).
    let total_kib = 12_000 * 2_000 / 1024;
    writer.insert("t", 0, "done").await?;
    reader.await??;
    writer.apply = true;
    let want = writer.doc.text("t").unwrap_or_default();
    // The stalled reader's queue was replaced by a resync instead of growing without end. When
    // it reads again it catches up from the resync (or, had it fallen behind twice within
    // 30 s, it was closed with a reason).
    let metrics = reqwest_metrics(&server).await?;
    assert!(
        !metrics.contains("tandem_slow_reader_resyncs_total 0"),
        "metrics: {metrics}"
    );
    if metrics.contains("tandem_slow_reader_closes_total 0") {
        stalled.wait_text("t", &want).await?;
    } else {
        assert_eq!(stalled.closed().await.code, Some(4008));
    }
    println!("rss before {rss_before} KiB, max {max_rss} KiB, sent {total_kib} KiB");
    // Unbounded buffering for the stalled reader would hold every frame: > 23 MiB.
    assert!(
        max_rss < rss_before + (total_kib as u64) / 2,
        "rss grew from {rss_before} to {max_rss} KiB"
    );
    Ok(())
}

async fn reqwest_metrics(server: &Server) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}
