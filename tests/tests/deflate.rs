//! permessage-deflate with stock clients: Node's `ws` (under y-websocket 3.x and
//! `@hocuspocus/provider` 3.x) offers it by default and compresses its messages over 1 KiB once
//! it is negotiated. The server must accept the offer, compress large messages it sends (a
//! joiner's first sync), inflate the client's compressed ones, and keep clients that do not
//! offer it (tokio-tungstenite here) uncompressed.

use serde_json::json;
use tandem_tests::{limit_breaches, metric, temp_dir, NodeClient, RawClient, Server};

/// A 56,000-character document: prose-like, as typed.
fn document() -> String {
    let words = [
        "collaborative ",
        "editing ",
        "keeps ",
        "every ",
        "replica ",
        "in ",
        "step, ",
        "offline ",
        "or ",
        "online. ",
    ];
    let mut rng = fastrand::Rng::with_seed(56);
    let mut text = String::new();
    while text.len() < 56_000 {
        text.push_str(words[rng.usize(..words.len())]);
    }
    text.truncate(56_000);
    text
}

async fn extensions(client: &mut NodeClient) -> anyhow::Result<String> {
    let reply = client.call(json!({"op": "extensions"})).await?;
    Ok(reply["extensions"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_y_websocket_clients_negotiate_deflate_both_ways() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("deflate-stock"), &[]).await?;
    let text = document();

    // The writer's one insert is a 56 KB update, which `ws` sends compressed: the server
    // inflates it (the codec alone would refuse its RSV1 bit and close the connection).
    let mut writer = NodeClient::connect(&server.ws_base(), "big", "writer").await?;
    assert!(
        extensions(&mut writer)
            .await?
            .contains("permessage-deflate"),
        "the server accepted the offer"
    );
    writer.insert("body", 0, &text).await?;

    // A client that offers no extension gets it uncompressed (tokio-tungstenite refuses
    // frames with RSV1 set).
    let mut plain = RawClient::connect(&format!("{}/big", server.ws_base())).await?;
    plain.sync().await?;
    plain.wait_text("body", &text).await?;

    // A joiner's first sync is compressed, and decodes.
    let mut joiner = NodeClient::connect(&server.ws_base(), "big", "joiner").await?;
    assert!(extensions(&mut joiner)
        .await?
        .contains("permessage-deflate"));
    assert_eq!(joiner.text("body").await?, text);
    let compressed = metric(&server, "tandem_ws_compressed_messages_total").await?;
    let saved = metric(&server, "tandem_ws_compression_saved_bytes_total").await?;
    // The sync step 2 to the joiner at least.
    assert!(compressed >= 1, "{compressed}");
    assert!(saved > 30_000, "saved {saved} bytes of a 56 KB sync");

    // Keystrokes keep flowing both ways after the large messages.
    joiner.insert("body", 0, "> ").await?;
    writer.wait_text("body", &format!("> {text}")).await?;
    writer.insert("body", 0, "!").await?;
    joiner.wait_text("body", &format!("!> {text}")).await?;
    plain.wait_text("body", &format!("!> {text}")).await?;

    let seen = writer.call(json!({"op": "closes"})).await?;
    assert_eq!(seen["closes"], json!([]), "{seen}");
    writer.close().await?;
    joiner.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_message_that_inflates_over_the_frame_limit_closes_with_1009(
) -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("deflate-limit"), &["--max-frame-size", "64KiB"]).await?;
    let mut client = NodeClient::connect(&server.ws_base(), "d", "zip").await?;
    assert!(extensions(&mut client)
        .await?
        .contains("permessage-deflate"));
    // 100,000 repeated characters compress to a few hundred bytes, under the limit; inflated
    // they are over it.
    client.insert("body", 0, &"a".repeat(100_000)).await?;
    let seen = client
        .call(json!({"op": "wait-closes", "count": 1}))
        .await?;
    assert_eq!(seen["closes"][0]["code"], 1009, "{seen}");
    assert!(limit_breaches(&server, "frame_size").await? >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_hocuspocus_providers_negotiate_deflate() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("deflate-hocuspocus"), &[]).await?;
    let text = document();
    let mut writer = NodeClient::hocuspocus(&server.ws_base())?;
    let opened = writer
        .call(json!({"op": "open", "doc": "notes", "token": ""}))
        .await?;
    assert_eq!(opened["scope"], "read-write", "{opened}");
    writer
        .call(json!({"op": "wait-synced", "doc": "notes"}))
        .await?;
    let sockets = writer.call(json!({"op": "sockets"})).await?;
    assert!(
        sockets["extensions"]
            .as_str()
            .is_some_and(|e| e.contains("permessage-deflate")),
        "{sockets}"
    );
    writer
        .call(json!({"op": "insert", "doc": "notes", "field": "body", "index": 0, "text": text}))
        .await?;

    let mut plain = RawClient::connect(&format!("{}/notes", server.ws_base())).await?;
    plain.sync().await?;
    plain.wait_text("body", &text).await?;

    let mut joiner = NodeClient::hocuspocus(&server.ws_base())?;
    joiner
        .call(json!({"op": "open", "doc": "notes", "token": ""}))
        .await?;
    joiner
        .call(json!({"op": "wait-text", "doc": "notes", "field": "body", "text": text}))
        .await?;
    assert!(metric(&server, "tandem_ws_compressed_messages_total").await? >= 1);
    let sockets = joiner.call(json!({"op": "sockets"})).await?;
    assert_eq!(
        sockets["opened"], 1,
        "one socket, never reconnected: {sockets}"
    );
    Ok(())
}
