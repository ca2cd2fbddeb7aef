//! `Idempotency-Key`: a retry of a write gets the first answer and is not applied again, on
//! every write route, while the first request is still running, and across a `kill -9`.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tandem_tests::{http, temp_dir, HttpResponse, Server};

const KEY: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(key) = key {
        headers.push((KEY, key));
    }
    http(addr, method, path, &headers, body).await
}

async fn snapshot(addr: SocketAddr, doc: &str) -> anyhow::Result<Value> {
    let r = http(addr, "GET", &format!("/docs/{doc}"), &[], b"").await?;
    anyhow::ensure!(r.status == 200, "snapshot of {doc}: {}", r.status);
    r.json()
}

/// Sends the same request twice with one key: both 200, the second replayed with the first
/// one's body and ETag.
async fn twice(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Value> {
    let first = send(addr, method, path, Some(key), extra, body).await?;
    assert_eq!(first.status, 200, "{method} {path}: {:?}", first.json());
    assert_eq!(first.header(REPLAYED), None);
    let again = send(addr, method, path, Some(key), extra, body).await?;
    assert_eq!(again.status, 200, "{method} {path} again");
    assert_eq!(again.header(REPLAYED), Some("true"), "{method} {path}");
    assert_eq!(again.json()?, first.json()?, "{method} {path}");
    assert_eq!(
        again.header("etag"),
        first.header("etag"),
        "{method} {path}"
    );
    first.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_route_runs_once_per_key() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("idem-routes"), &[]).await?;
    let addr = server.addr;

    // A text insert applied once.
    let edit = json!({"index": 0, "insert": "hello "}).to_string();
    let first = twice(
        addr,
        "POST",
        "/docs/d/texts/t",
        "text-1",
        &[],
        edit.as_bytes(),
    )
    .await?;
    assert_eq!(first["text"], "hello ");
    assert_eq!(snapshot(addr, "d").await?["texts"]["t"], "hello ");

    // A register write: the retry does not write again (the version stays the first one's).
    let put = twice(addr, "PUT", "/docs/d/fields/f", "put-1", &[], b"1").await?;
    let version = put["version"].as_str().unwrap().to_owned();
    assert_eq!(
        snapshot(addr, "d").await?["fields"]["f"]["version"],
        version
    );
    // A conditional write that won: its retry gets the 200, not the 412 a second attempt
    // against the changed register would get.
    let etag = format!("\"{version}\"");
    let cas = [("If-Match", etag.as_str())];
    let won = twice(addr, "PUT", "/docs/d/fields/f", "cas-1", &cas, b"2").await?;
    assert_eq!(won["value"], 2);
    // One that lost is replayed as the same 412.
    let stale = send(addr, "PUT", "/docs/d/fields/f", Some("cas-2"), &cas, b"3").await?;
    assert_eq!(stale.status, 412);
    let stale_again = send(addr, "PUT", "/docs/d/fields/f", Some("cas-2"), &cas, b"3").await?;
    assert_eq!(stale_again.status, 412);
    assert_eq!(stale_again.header(REPLAYED), Some("true"));
    assert_eq!(stale_again.json()?, stale.json()?);
    let deleted = twice(addr, "DELETE", "/docs/d/fields/f", "del-1", &[], b"").await?;
    assert_eq!(deleted["deleted"], true);

    // A binary update: the retry answers the first sid, though the document moved on.
    let mut replica = tandem_engine::Document::new(77);
    let update = replica.insert("dev", "bin", 0, "binary")?;
    let first = twice(addr, "POST", "/docs/d/update", "upd-1", &[], &update).await?;
    let more = json!({"index": 0, "insert": "x"}).to_string();
    send(addr, "POST", "/docs/d/texts/t", None, &[], more.as_bytes()).await?;
    let again = send(addr, "POST", "/docs/d/update", Some("upd-1"), &[], &update).await?;
    assert_eq!(again.json()?["sid"], first["sid"]);
    assert_eq!(snapshot(addr, "d").await?["texts"]["bin"], "binary");

    // The admin route: one revocation, the same answer.
    let revoke = json!({"user": "mallory"}).to_string();
    twice(
        addr,
        "POST",
        "/admin/revoke",
        "rev-1",
        &[],
        revoke.as_bytes(),
    )
    .await?;

    // The same key with another request: 422, and nothing is done.
    let other = json!({"index": 0, "insert": "other "}).to_string();
    for (method, path, body) in [
        ("POST", "/docs/d/texts/t", other.as_bytes()),
        ("POST", "/docs/d/texts/u", edit.as_bytes()),
        ("PUT", "/docs/d/fields/t", b"1".as_slice()),
    ] {
        let r = send(addr, method, path, Some("text-1"), &[], body).await?;
        assert_eq!(r.status, 422, "{method} {path}");
        assert_eq!(r.json()?["error"], "unprocessable");
    }
    let r = send(
        addr,
        "POST",
        "/admin/revoke",
        Some("rev-1"),
        &[],
        b"{\"user\":\"x\"}",
    )
    .await?;
    assert_eq!(
        (r.status, r.json()?["error"].clone()),
        (422, json!("unprocessable"))
    );
    let texts = snapshot(addr, "d").await?["texts"].clone();
    assert_eq!(texts["t"], "xhello ");
    assert_eq!(texts.get("u"), None);

    // Keys are bounded: 255 printable ASCII characters.
    let longest = "k".repeat(255);
    let r = send(
        addr,
        "POST",
        "/docs/d/texts/t",
        Some(&longest),
        &[],
        edit.as_bytes(),
    )
    .await?;
    assert_eq!(r.status, 200);
    let too_long = "k".repeat(256);
    let r = send(
        addr,
        "POST",
        "/docs/d/texts/t",
        Some(&too_long),
        &[],
        edit.as_bytes(),
    )
    .await?;
    assert_eq!(
        (r.status, r.json()?["error"].clone()),
        (400, json!("bad_request"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_wait_for_the_first_answer() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("idem-concurrent"), &[]).await?;
    let addr = server.addr;
    let edit = json!({"index": 0, "insert": "once"}).to_string();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let edit = edit.clone();
            tokio::spawn(async move {
                send(
                    addr,
                    "POST",
                    "/docs/c/texts/t",
                    Some("k"),
                    &[],
                    edit.as_bytes(),
                )
                .await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    let mut fresh = 0;
    for task in tasks {
        let r = task.await??;
        assert_eq!(r.status, 200);
        if r.header(REPLAYED).is_none() {
            fresh += 1;
        }
        bodies.push(r.json()?);
    }
    assert_eq!(fresh, 1, "exactly one request ran");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(snapshot(addr, "c").await?["texts"]["t"], "once");
    Ok(())
}

/// Writes with keys, `kill -9` once some are answered (others are then committed but not
/// answered, or not committed), restart, retry every one: each insert is there exactly once,
/// and a retry of an answered write gets that answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_kill_9_apply_exactly_once() -> anyhow::Result<()> {
    const ROUNDS: usize = 3;
    const N: usize = 40;
    let mut server = Server::start(&temp_dir("idem-crash"), &[]).await?;
    let path = "/docs/crash/texts/log";
    let request = |round: usize, i: usize| {
        let key = format!("r{round}-{i}");
        let body = json!({"index": 0, "insert": format!("<{round}.{i}>")}).to_string();
        (key, body)
    };
    let mut replayed_unanswered = 0;
    for round in 0..ROUNDS {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..N {
            let (key, body) = request(round, i);
            let (tx, addr) = (tx.clone(), server.addr);
            tokio::spawn(async move {
                let r = send(addr, "POST", path, Some(&key), &[], body.as_bytes()).await;
                let _ = tx.send((i, r.ok().filter(|r| r.status == 200)));
            });
        }
        drop(tx);
        let mut first: Vec<Option<HttpResponse>> = vec![None; N];
        let mut answered = 0;
        while answered < N / 4 {
            let (i, r) = rx.recv().await.expect("every request reports");
            if let Some(r) = r {
                first[i] = Some(r);
                answered += 1;
            }
        }
        server.kill9().await?;
        while let Some((i, r)) = rx.recv().await {
            first[i] = first[i].take().or(r);
        }
        server.restart().await?;
        for (i, first) in first.iter().enumerate() {
            let (key, body) = request(round, i);
            let retry = send(server.addr, "POST", path, Some(&key), &[], body.as_bytes()).await?;
            assert_eq!(retry.status, 200, "round {round} request {i}");
            match first {
                Some(first) => {
                    assert_eq!(retry.header(REPLAYED), Some("true"), "round {round} #{i}");
                    assert_eq!(retry.json()?, first.json()?, "round {round} #{i}");
                }
                None if retry.header(REPLAYED).is_some() => replayed_unanswered += 1,
                None => {}
            }
        }
        let text = snapshot(server.addr, "crash").await?["texts"]["log"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for r in 0..=round {
            for i in 0..N {
                let marker = format!("<{r}.{i}>");
                assert_eq!(text.matches(&marker).count(), 1, "{marker} in {text}");
            }
        }
    }
    println!(
        "{replayed_unanswered} writes were committed but unanswered at the kill, and replayed"
    );
    Ok(())
}
