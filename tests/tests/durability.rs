//! Storage: a graceful restart keeps every document; after `kill -9` every acknowledged
//! update is still there.

use tandem_tests::{temp_dir, NodeClient, RawClient, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_every_document() -> anyhow::Result<()> {
    let mut server = Server::start(&temp_dir("restart"), &[]).await?;
    let mut a = RawClient::connect(&format!("{}/doc-a?tandem=1", server.ws_base())).await?;
    a.sync().await?;
    a.insert("description", 0, "alpha").await?;
    let mut b = RawClient::connect(&format!("{}/doc-b?tandem=1", server.ws_base())).await?;
    b.sync().await?;
    b.insert("comment:1", 0, "beta ☃").await?;
    let mut node = NodeClient::connect(&server.ws_base(), "doc-c", "carol").await?;
    node.insert("description", 0, "gamma").await?;
    a.wait_acked(1).await?;
    b.wait_acked(1).await?;
    // The stock client's edit reached the server once a raw reader sees it.
    let mut watch = RawClient::connect(&format!("{}/doc-c", server.ws_base())).await?;
    watch.sync().await?;
    watch.wait_text("description", "gamma").await?;

    // Graceful stop: clients are told the server is going away.
    let stopping = tokio::spawn(async move {
        let closed = a.closed().await;
        closed.code
    });
    assert!(server.terminate().await?, "tandem exited with an error");
    assert_eq!(stopping.await?, Some(1001));
    drop((b, node, watch));

    server.restart().await?;
    for (doc, field, text) in [
        ("doc-a", "description", "alpha"),
        ("doc-b", "comment:1", "beta ☃"),
        ("doc-c", "description", "gamma"),
    ] {
        let mut c = RawClient::connect(&format!("{}/{doc}", server.ws_base())).await?;
        c.sync().await?;
        assert_eq!(c.doc.text(field).as_deref(), Some(text), "{doc}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_update() -> anyhow::Result<()> {
    const ROUNDS: usize = 4;
    const N: u32 = 150;
    let mut server = Server::start(&temp_dir("crash"), &[]).await?;
    let mut expected = String::new();
    for round in 0..ROUNDS {
        let mut c = RawClient::connect(&format!("{}/crash?tandem=1", server.ws_base())).await?;
        c.sync().await?;
        assert_eq!(
            c.doc.text("log").unwrap_or_default(),
            expected,
            "round {round}: text after restart"
        );
        let letter = char::from(b'a' + round as u8).to_string();
        for _ in 0..N {
            let at = c.doc.text_len("log");
            c.insert("log", at, &letter).await?;
            expected.push_str(&letter);
        }
        let sid = c.wait_acked(u64::from(N)).await?;
        assert!(sid >= u64::from(N) * (round as u64 + 1), "sid {sid}");
        server.kill9().await?;
        drop(c);
        server.restart().await?;
    }
    let mut c = RawClient::connect(&format!("{}/crash", server.ws_base())).await?;
    c.sync().await?;
    assert_eq!(c.doc.text("log").unwrap_or_default(), expected);
    Ok(())
}
