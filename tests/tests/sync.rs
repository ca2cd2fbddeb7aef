//! Stock y-websocket clients (Node) co-editing through the real `tandem` binary.

use serde_json::json;
use tandem_tests::{temp_dir, NodeClient, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_co_edit_and_see_presence() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("co-edit"), &[]).await?;
    let base = server.ws_base();
    let mut alice = NodeClient::connect(&base, "task-1", "alice").await?;
    let mut bob = NodeClient::connect(&base, "task-1", "bob").await?;

    alice.insert("description", 0, "Hello").await?;
    bob.wait_text("description", "Hello").await?;
    bob.insert("description", 5, " world").await?;
    alice.insert("description", 0, ">> ").await?;
    alice.wait_text("description", ">> Hello world").await?;
    bob.wait_text("description", ">> Hello world").await?;

    // A late joiner receives the full text.
    let mut carol = NodeClient::connect(&base, "task-1", "carol").await?;
    assert_eq!(carol.text("description").await?, ">> Hello world");

    // Presence appears (Yjs clients ignore a peer's initial clock-0 state, so each sets one)...
    for (client, name) in [
        (&mut alice, "Alice"),
        (&mut bob, "Bob"),
        (&mut carol, "Carol"),
    ] {
        client
            .call(json!({"op": "set-awareness", "state": {"user": {"name": name}}}))
            .await?;
    }
    let states = carol.call(json!({"op": "wait-states", "count": 3})).await?;
    let names: Vec<String> = states["states"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|s| s["user"]["name"].as_str().map(str::to_owned))
        .collect();
    assert!(names.contains(&"Alice".to_owned()), "{states}");
    // ...and disappears when its client closes.
    alice.close().await?;
    carol.call(json!({"op": "wait-states", "count": 2})).await?;
    bob.call(json!({"op": "wait-states", "count": 2})).await?;

    // Another document is independent.
    let mut other = NodeClient::connect(&base, "task-2", "dave").await?;
    assert_eq!(other.text("description").await?, "");
    Ok(())
}

/// A document larger than one WebSocket fragment (the server sends large messages in 32 KiB
/// fragments) reaches a stock client whole: its sync step 2 and a large update alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_document_reaches_a_stock_client_in_fragments() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("large-doc"), &[]).await?;
    let base = server.ws_base();
    let mut alice = NodeClient::connect(&base, "big", "alice").await?;
    let mut bob = NodeClient::connect(&base, "big", "bob").await?;
    let big: String = (0..150_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    // One update of 150 KB, broadcast to Bob in fragments.
    alice.insert("description", 0, &big).await?;
    bob.wait_text("description", &big).await?;
    // A late joiner's step 2 holds the whole document.
    let mut carol = NodeClient::connect(&base, "big", "carol").await?;
    assert_eq!(carol.text("description").await?.len(), big.len());
    Ok(())
}
