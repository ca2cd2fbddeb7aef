//! The HTTP and SSE API against the real binary.

use serde_json::json;
use tandem_tests::{http, temp_dir, RawClient, Server, SseClient, SseEvent};

async fn events(sse: &mut SseClient, n: usize) -> anyhow::Result<Vec<SseEvent>> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = sse.next().await?;
        if e.event != "presence" {
            out.push(e);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_carries_every_change_in_order_and_resumes_without_gap_or_duplicate(
) -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("sse"), &[]).await?;
    // Unknown documents are 404 and are not created by reading them.
    let r = http(server.addr, "GET", "/docs/task-9", &[], b"").await?;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()?["error"], "not_found");

    let mut writer = RawClient::connect(&format!("{}/task-9?tandem=1", server.ws_base())).await?;
    writer.sync().await?;
    writer.insert("description", 0, "Hi").await?;
    writer.wait_acked(1).await?;

    let mut sse = SseClient::connect(server.addr, "/docs/task-9/events", &[]).await?;
    assert_eq!(sse.status, 200);
    let first = sse.next().await?;
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.data["texts"]["description"], "Hi");
    assert_eq!(first.id.as_deref(), Some("1"));

    // Text edits and register writes from the WebSocket writer, in order.
    writer.insert("description", 2, " there").await?;
    writer.set_field("status", json!("doing")).await?;
    writer.insert("description", 0, "😀").await?;
    writer.wait_acked(4).await?;
    let got = events(&mut sse, 3).await?;
    assert_eq!(got[0].event, "text");
    assert_eq!(got[0].id.as_deref(), Some("2"));
    assert_eq!(got[0].data["field"], "description");
    assert_eq!(
        got[0].data["delta"],
        json!([{"retain": 2}, {"insert": " there"}])
    );
    assert_eq!(got[0].data["author"], "dev");
    assert_eq!(got[1].event, "field");
    assert_eq!(got[1].id.as_deref(), Some("3"));
    assert_eq!(got[1].data["name"], "status");
    assert_eq!(got[1].data["value"], "doing");
    assert!(got[1].data["version"].is_string());
    assert_eq!(got[2].data["delta"], json!([{"insert": "😀"}]));
    assert_eq!(got[2].id.as_deref(), Some("4"));

    // Disconnect after sid 3; more happens; resuming from 3 gives exactly what was missed.
    drop(sse);
    writer.insert("description", 0, "A").await?;
    writer.set_field("status", json!("done")).await?;
    writer.wait_acked(6).await?;
    let mut resumed = SseClient::connect(
        server.addr,
        "/docs/task-9/events",
        &[("Last-Event-ID", "3")],
    )
    .await?;
    let got = events(&mut resumed, 3).await?;
    let ids: Vec<_> = got.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ids, ["4", "5", "6"], "{got:?}");
    assert_eq!(got[0].data["delta"], json!([{"insert": "😀"}]));
    assert_eq!(got[1].data["delta"], json!([{"insert": "A"}]));
    assert_eq!(got[2].data["value"], "done");
    // ... and then live events continue with no duplicate.
    writer.insert("description", 0, "B").await?;
    let next = events(&mut resumed, 1).await?;
    assert_eq!(next[0].id.as_deref(), Some("7"));

    // ?since= works the same way; the yjs format carries base64 updates.
    let mut yjs =
        SseClient::connect(server.addr, "/docs/task-9/events?since=5&format=yjs", &[]).await?;
    let got = events(&mut yjs, 2).await?;
    assert_eq!(got[0].event, "update");
    assert_eq!(got[0].id.as_deref(), Some("6"));
    assert!(got[0].data["update"].is_string());
    assert_eq!(got[1].id.as_deref(), Some("7"));

    // The snapshot route shows the same state.
    let r = http(server.addr, "GET", "/docs/task-9", &[], b"").await?;
    let snap = r.json()?;
    assert_eq!(snap["texts"]["description"], "BA😀Hi there");
    assert_eq!(snap["fields"]["status"]["value"], "done");
    assert_eq!(snap["sid"], 7);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_compacted_sid_gets_a_reset_snapshot_and_catch_up_410() -> anyhow::Result<()>
{
    let server = Server::start(
        &temp_dir("reset"),
        &["--compact-after", "3", "--checkpoint-every", "1"],
    )
    .await?;
    let mut w = RawClient::connect(&format!("{}/log?tandem=1", server.ws_base())).await?;
    w.sync().await?;
    for i in 0..8u32 {
        w.insert("t", i, "x").await?;
        w.wait_acked(u64::from(i) + 1).await?;
    }
    // Catch-up from a compacted sid is refused with 410; a recent one works.
    let r = http(server.addr, "GET", "/docs/log/updates?since=1", &[], b"").await?;
    assert_eq!(r.status, 410, "{}", String::from_utf8_lossy(&r.body));
    let r = http(server.addr, "GET", "/docs/log/updates?since=7", &[], b"").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tandem-sid"), Some("8"));
    let mut replica = tandem_engine::Document::new(77);
    let full = http(server.addr, "GET", "/docs/log/updates", &[], b"").await?;
    replica.apply_update(&full.body, None)?;
    assert_eq!(replica.text("t").as_deref(), Some("xxxxxxxx"));

    let mut sse =
        SseClient::connect(server.addr, "/docs/log/events", &[("Last-Event-ID", "1")]).await?;
    let first = sse.next().await?;
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.data["reset"], true);
    assert_eq!(first.data["texts"]["t"], "xxxxxxxx");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_one_wins_and_stale_ones_get_the_current_value() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("occ"), &[]).await?;
    let put = |body: &'static str, if_match: Option<String>| {
        let addr = server.addr;
        async move {
            let mut headers = vec![("Content-Type", "application/json".to_owned())];
            if let Some(v) = if_match {
                headers.push(("If-Match", format!("\"{v}\"")));
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(addr, "PUT", "/docs/card/fields/status", &h, body.as_bytes()).await
        }
    };
    let r = put("\"todo\"", None).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v1 = r.json()?["version"].as_str().unwrap().to_owned();
    // Two writers holding the same version: exactly one wins.
    let (a, b) = tokio::join!(
        put("\"doing\"", Some(v1.clone())),
        put("\"done\"", Some(v1.clone()))
    );
    let (a, b) = (a?, b?);
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{a:?} {b:?}");
    let (winner, loser) = if a.status == 200 { (a, b) } else { (b, a) };
    let current = loser.json()?;
    assert_eq!(current["error"], "precondition_failed");
    assert_eq!(current["current"]["version"], winner.json()?["version"]);

    // Over the WebSocket extension, a stale version is rejected with the current value.
    let mut ws = RawClient::connect(&format!("{}/card?tandem=1", server.ws_base())).await?;
    ws.sync().await?;
    let (accepted, version, value) = ws.set_field_if(1, "status", &v1, &json!("x")).await?;
    assert!(!accepted);
    assert_eq!(version, winner.json()?["version"].as_str().unwrap());
    assert_eq!(value, winner.json()?["value"]);
    let (accepted, _, value) = ws.set_field_if(2, "status", &version, &json!("y")).await?;
    assert!(accepted);
    assert_eq!(value, "y");

    // Text edits for bots, in UTF-16 units.
    let r = http(
        server.addr,
        "POST",
        "/docs/card/texts/description",
        &[("Content-Type", "application/json")],
        br#"{"index": 0, "insert": "a\u00e9\ud83d\ude00b"}"#,
    )
    .await?;
    assert_eq!(r.status, 200);
    let r = http(
        server.addr,
        "POST",
        "/docs/card/texts/description",
        &[("Content-Type", "application/json")],
        br#"{"index": 2, "delete": 2}"#,
    )
    .await?;
    assert_eq!(r.json()?["text"], "aéb");
    let r = http(
        server.addr,
        "POST",
        "/docs/card/texts/description",
        &[],
        br#"{"index": 99, "delete": 1}"#,
    )
    .await?;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()?["error"], "bad_request");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_returns_older_text_after_later_edits() -> anyhow::Result<()> {
    let server = Server::start(
        &temp_dir("history"),
        &["--compact-after", "2", "--checkpoint-every", "1"],
    )
    .await?;
    let edit = |index: u32, delete: u32, insert: &'static str| {
        let addr = server.addr;
        async move {
            let body = json!({"index": index, "delete": delete, "insert": insert}).to_string();
            http(addr, "POST", "/docs/story/texts/body", &[], body.as_bytes()).await
        }
    };
    edit(0, 0, "first").await?;
    edit(5, 0, " draft").await?;
    let r = http(server.addr, "GET", "/docs/story/history", &[], b"").await?;
    let list = r.json()?;
    let first_sid = list["checkpoints"][0]["sid"]
        .as_u64()
        .expect("a checkpoint");
    assert_eq!(list["checkpoints"][0]["authors"], json!(["dev"]));
    edit(0, 11, "second").await?;
    edit(6, 0, " version").await?;
    let r = http(
        server.addr,
        "GET",
        &format!("/docs/story/history/{first_sid}"),
        &[],
        b"",
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()?["texts"]["body"], "first draft");
    let now = http(server.addr, "GET", "/docs/story", &[], b"").await?;
    assert_eq!(now.json()?["texts"]["body"], "second version");
    let r = http(server.addr, "GET", "/docs/story/history/999", &[], b"").await?;
    assert_eq!(r.status, 404);
    Ok(())
}
