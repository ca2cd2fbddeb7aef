//! What a newcomer meets in the first minutes, against the real binary: an event stream opened
//! before anyone wrote the document, a WebSocket URL without a document, and a prompt stop.

use std::time::{Duration, Instant};

use serde_json::json;
use tandem_tests::{http, temp_dir, Server, SseClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_before_the_first_write_gets_it_and_creates_nothing() -> anyhow::Result<()>
{
    let server = Server::start(&temp_dir("early-stream"), &[]).await?;
    // A dashboard follows a flag nobody has set yet: the stream opens (a browser EventSource
    // never retries a 404) with an empty snapshot at sid 0.
    let mut sse = SseClient::connect(server.addr, "/docs/flags/events", &[]).await?;
    assert_eq!(sse.status, 200);
    let first = sse.next().await?;
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.id.as_deref(), Some("0"));
    assert_eq!(
        first.data,
        json!({"doc": "flags", "sid": 0, "texts": {}, "fields": {}})
    );
    // Reading created nothing.
    let r = http(server.addr, "GET", "/docs/flags", &[], b"").await?;
    assert_eq!(r.status, 404);
    // The first write arrives as an event.
    let r = http(
        server.addr,
        "PUT",
        "/docs/flags/fields/dark-mode",
        &[],
        b"true",
    )
    .await?;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let event = loop {
        let e = sse.next().await?;
        if e.event == "field" {
            break e;
        }
    };
    assert_eq!(event.id.as_deref(), Some("1"));
    assert_eq!(event.data["name"], "dark-mode");
    assert_eq!(event.data["value"], true);
    // The CRDT form of the stream works the same way.
    let mut yjs = SseClient::connect(server.addr, "/docs/empty/events?format=yjs", &[]).await?;
    let first = yjs.next().await?;
    assert_eq!(
        (first.event.as_str(), first.data["sid"].as_u64()),
        ("snapshot", Some(0))
    );
    assert!(first.data["update"].as_str().is_some_and(|u| !u.is_empty()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_urls_without_a_document_say_where_it_goes() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("ws-hint"), &[]).await?;
    let r = http(server.addr, "GET", "/ws/", &[], b"").await?;
    assert_eq!(r.status, 404);
    let body = r.json()?;
    assert_eq!(body["route"], "/ws/{doc}", "{body}");
    // `/ws` itself is the Hocuspocus dialect's WebSocket route: a plain request is told both.
    let r = http(server.addr, "GET", "/ws?room=abc", &[], b"").await?;
    assert_eq!(r.status, 400);
    let message = r.json()?["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("/ws/{doc}") && message.contains("HocuspocusProvider"),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_promptly_with_streams_open_and_keeps_what_was_acknowledged(
) -> anyhow::Result<()> {
    let mut server = Server::start(&temp_dir("prompt-stop"), &[]).await?;
    let r = http(
        server.addr,
        "PUT",
        "/docs/d/fields/state",
        &[],
        b"\"saved\"",
    )
    .await?;
    assert_eq!(r.status, 200);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = SseClient::connect(server.addr, "/docs/d/events", &[]).await?;
        assert_eq!(s.next().await?.event, "snapshot");
        streams.push(s);
    }
    let started = Instant::now();
    assert!(server.terminate().await?, "tandem exited with an error");
    let took = started.elapsed();
    println!("stopped {took:?} after SIGTERM with 3 event streams open");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    drop(streams);
    server.restart().await?;
    let r = http(server.addr, "GET", "/docs/d", &[], b"").await?;
    assert_eq!(r.json()?["fields"]["state"]["value"], "saved");
    Ok(())
}

/// A directory that looks like a checkout without a built browser package: `wasm/demo/` from
/// this repository, and a `wasm/build.sh` with the given body; plus a copy of the tandem binary
/// (so the server finds this `wasm/`, not the repository's).
fn checkout_without_package(name: &str, build_sh: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = temp_dir(name);
    let demo = dir.join("wasm").join("demo");
    std::fs::create_dir_all(&demo)?;
    let repo = tandem_tests::repo_root();
    for file in ["index.html", "demo.js", "demo.css"] {
        std::fs::copy(repo.join("wasm/demo").join(file), demo.join(file))?;
    }
    std::fs::write(dir.join("wasm").join("build.sh"), build_sh)?;
    std::fs::create_dir_all(dir.join("bin"))?;
    let bin = dir.join("bin").join("tandem");
    if std::fs::hard_link(tandem_tests::tandem_bin(), &bin).is_err() {
        std::fs::copy(tandem_tests::tandem_bin(), &bin)?;
    }
    Ok(dir)
}

async fn demo_status(server: &Server) -> anyhow::Result<serde_json::Value> {
    http(server.addr, "GET", "/demo/status", &[], b"")
        .await?
        .json()
}

/// Polls `/demo/status` until the package leaves `building` (the build runs in its own
/// process; there is nothing to wait on but its outcome).
async fn after_build(server: &Server) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = demo_status(server).await?;
        if status["package"] != "building" || Instant::now() > deadline {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_builds_its_missing_package_and_says_why_when_it_cannot() -> anyhow::Result<()> {
    // A toolchain that works: the package appears and is served.
    let dir = checkout_without_package(
        "demo-build-ok",
        "mkdir -p pkg && echo 'export function open () {}' > pkg/index.js\n",
    )?;
    let server = Server::start_from(&dir.join("bin/tandem"), &dir, &dir.join("data"), &[]).await?;
    let r = http(server.addr, "GET", "/pkg/index.js", &[], b"").await?;
    assert_eq!(r.status, 503, "the first request starts the build");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(after_build(&server).await?["package"], "ready");
    let r = http(server.addr, "GET", "/pkg/index.js", &[], b"").await?;
    assert_eq!(r.status, 200);

    // No toolchain: the page is told what failed and what to run.
    let dir = checkout_without_package(
        "demo-build-fails",
        "echo 'error: no wasm32 toolchain found' >&2\nexit 1\n",
    )?;
    let server = Server::start_from(&dir.join("bin/tandem"), &dir, &dir.join("data"), &[]).await?;
    assert_eq!(demo_status(&server).await?["package"], "building");
    let status = after_build(&server).await?;
    assert_eq!(status["package"], "failed", "{status}");
    assert!(status["output"]
        .as_str()
        .unwrap_or_default()
        .contains("no wasm32 toolchain"));
    assert!(status["message"]
        .as_str()
        .unwrap_or_default()
        .contains("wasm/build.sh"));
    let r = http(server.addr, "GET", "/pkg/index.js", &[], b"").await?;
    assert_eq!(r.status, 503);
    let body = r.json()?;
    assert_eq!(body["package"], "failed", "{body}");
    assert!(body["output"]
        .as_str()
        .unwrap_or_default()
        .contains("no wasm32 toolchain"));

    // A server with a secret never runs a build on a request: it says what to run.
    let dir = checkout_without_package("demo-secured", "touch built\n")?;
    let server = Server::start_from(
        &dir.join("bin/tandem"),
        &dir,
        &dir.join("data"),
        &["--auth-secret", "a secret long enough for the demo test"],
    )
    .await?;
    let status = demo_status(&server).await?;
    assert_eq!(status["package"], "missing", "{status}");
    assert!(!dir.join("wasm/built").exists());
    Ok(())
}
