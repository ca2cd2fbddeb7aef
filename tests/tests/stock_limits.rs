//! The stock y-websocket 3.x provider driven into each limit, the way a real app would hit it.
//! A limit a retry cannot fix (a revoked token) must be reported by the provider; every other
//! one must never strand an edit: the provider is never closed with a code it treats as
//! permanent (4400-4499), and every edit reaches the server.

use serde_json::{json, Value};
use tandem_tests::{
    limit_breaches, mint_token, revoke, temp_dir, unix_now, NodeClient, RawClient, Server,
};

async fn closes(client: &mut NodeClient) -> anyhow::Result<Value> {
    client.call(json!({"op": "closes"})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_writer_over_the_message_rate_is_slowed_and_loses_nothing() -> anyhow::Result<()> {
    let server = Server::start(
        &temp_dir("stock-rate"),
        &["--message-rate", "200", "--message-burst", "200"],
    )
    .await?;
    let mut writer = NodeClient::connect(&server.ws_base(), "d", "writer").await?;
    // 600 keystrokes, one update each, unpaced: three times the rate for a second.
    let text: String = (0..600)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    writer
        .call(json!({"op": "type", "field": "body", "text": text}))
        .await?;
    let mut reader = RawClient::connect(&format!("{}/d", server.ws_base())).await?;
    reader.sync().await?;
    tokio::time::timeout(tandem_tests::TIMEOUT, reader.wait_text("body", &text))
        .await
        .map_err(|_| anyhow::anyhow!("not every keystroke reached the server"))??;
    let seen = closes(&mut writer).await?;
    assert_eq!(seen["closes"], json!([]), "{seen}");
    assert!(limit_breaches(&server, "message_rate").await? > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_client_with_an_oversized_awareness_state_keeps_syncing() -> anyhow::Result<()> {
    let server = Server::start(
        &temp_dir("stock-awareness"),
        &["--max-awareness-size", "1KiB"],
    )
    .await?;
    let mut client = NodeClient::connect(&server.ws_base(), "d", "big").await?;
    let state = json!({"user": {"name": "x".repeat(4000)}});
    client
        .call(json!({"op": "set-awareness", "state": state}))
        .await?;
    client
        .insert("body", 0, "typed after a big presence state")
        .await?;
    let mut reader = RawClient::connect(&format!("{}/d", server.ws_base())).await?;
    reader.sync().await?;
    reader
        .wait_text("body", "typed after a big presence state")
        .await?;
    // Typed again later, still arriving: the connection was never given up.
    client.insert("body", 0, ">").await?;
    reader
        .wait_text("body", ">typed after a big presence state")
        .await?;
    let seen = closes(&mut client).await?;
    assert_eq!(seen["closes"], json!([]), "{seen}");
    assert!(limit_breaches(&server, "awareness_size").await? > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_client_whose_user_is_revoked_reports_it_and_stops() -> anyhow::Result<()> {
    const SECRET: &str = "stock client limits secret, 32 bytes";
    let server = Server::start(&temp_dir("stock-revoked"), &["--auth-secret", SECRET]).await?;
    let token = mint_token(SECRET, "mallory", None, "*", "write", unix_now() - 1, 3600)?;
    let mut client =
        NodeClient::connect_with_token(&server.ws_base(), "d", "mallory", Some(&token)).await?;
    revoke(&server, SECRET, "mallory").await?;
    // The provider reports a permanent close and stops (a retry with this token cannot work).
    let closed = client.call(json!({"op": "wait-closed"})).await?;
    assert_eq!(closed["closed"]["code"], 4401, "{closed}");
    assert_eq!(closed["closed"]["reason"], "token revoked");
    Ok(())
}
