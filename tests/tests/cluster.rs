//! Several tandem nodes on one PostgreSQL database and one Redis: each test starts its own
//! nodes on a fresh database and a `redis-server` of its own (see `tandem_tests::cluster`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_tests::cluster::{Nodes, Redis, Relay, TestDb};
use tandem_tests::{http, mint_token, revoke, RawClient, Server, SseClient, TIMEOUT};

const SECRET: &str = "cluster-test-secret-0123456789abcdef";

async fn raw(node: &Server, doc: &str) -> anyhow::Result<RawClient> {
    let mut c = RawClient::connect(&format!("{}/{doc}?tandem=1", node.ws_base())).await?;
    c.sync().await?;
    Ok(c)
}

async fn get_json(node: &Server, path: &str) -> anyhow::Result<(u16, Value)> {
    let r = http(node.addr, "GET", path, &[], b"").await?;
    let status = r.status;
    Ok((status, r.json().unwrap_or(Value::Null)))
}

/// Waits until `node` shows `text` in `doc`'s field `t` (through HTTP), returns its sid.
async fn wait_http_text(node: &Server, doc: &str, text: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, v) = get_json(node, &format!("/docs/{doc}")).await?;
        if status == 200 && v["texts"]["t"] == json!(text) {
            return Ok(v["sid"].as_u64().unwrap_or(0));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{doc} never showed {text:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writers on three nodes at once: every update acknowledged, every sid from 1 to the total
/// given exactly once and in commit order (an event stream on a fourth view sees them without
/// gap), and every node converges on the same text and sid.
#[tokio::test]
async fn writers_on_every_node_share_one_order_without_gaps() -> anyhow::Result<()> {
    let c = Nodes::start(3, &[]).await?;
    let doc = "storm";
    let mut watch = SseClient::connect(
        c.nodes[2].addr,
        &format!("/docs/{doc}/events?format=yjs"),
        &[],
    )
    .await?;
    assert_eq!(watch.next().await?.event, "snapshot");
    let per_writer = 60u64;
    let mut writers = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        let url = format!("{}/{doc}?tandem=1", node.ws_base());
        writers.push(tokio::spawn(async move {
            let mut w = RawClient::connect(&url).await?;
            w.sync().await?;
            for k in 0..per_writer {
                w.insert("t", 0, &format!("{}", (b'a' + i as u8) as char))
                    .await?;
                if k % 10 == 9 {
                    w.wait_acked(k + 1).await?;
                }
            }
            w.wait_acked(per_writer).await?;
            anyhow::Ok(w.acked)
        }));
    }
    for w in writers {
        let (count, sid) = w.await??;
        assert_eq!(count, per_writer);
        assert!(sid >= per_writer);
    }
    let total = 3 * per_writer;
    let mut sids = Vec::new();
    while sids.len() < total as usize {
        let e = watch.next().await?;
        if e.event == "update" {
            sids.push(e.id.as_deref().unwrap_or("").parse::<u64>()?);
        }
    }
    let expected: Vec<u64> = (1..=total).collect();
    assert_eq!(sids, expected, "every sid once, in order");
    let mut texts = Vec::new();
    for node in &c.nodes {
        let (_, v) = get_json(node, &format!("/docs/{doc}")).await?;
        assert_eq!(v["sid"], json!(total));
        texts.push(v["texts"]["t"].clone());
    }
    assert_eq!(texts[0].as_str().map(str::len), Some(total as usize));
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    Ok(())
}

/// Clients of one document on different nodes co-edit live, and presence crosses nodes: a
/// client's awareness on one node reaches a client on another, and its removal too when it
/// leaves.
#[tokio::test]
async fn clients_on_different_nodes_co_edit_and_see_each_other() -> anyhow::Result<()> {
    let c = Nodes::start(2, &[]).await?;
    let mut a = raw(&c.nodes[0], "live").await?;
    let mut b = raw(&c.nodes[1], "live").await?;
    a.insert("t", 0, "hello").await?;
    b.wait_text("t", "hello").await?;
    b.insert("t", 5, " world").await?;
    a.wait_text("t", "hello world").await?;

    a.send(tandem_tests::awareness_message(
        4242,
        1,
        r#"{"user":{"name":"Ada"}}"#,
    ))
    .await?;
    wait_awareness(&mut b, 4242, |s| s.contains("Ada")).await?;
    drop(a);
    wait_awareness(&mut b, 4242, |s| s == "null").await?;
    Ok(())
}

async fn wait_awareness(
    c: &mut RawClient,
    client: u64,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    loop {
        let frame = c
            .recv()
            .await
            .map_err(|e| anyhow::anyhow!("closed while waiting for presence: {e:?}"))?;
        if frame.first() == Some(&1) {
            let hit = tandem_tests::awareness_entries(&frame)
                .into_iter()
                .any(|(id, _, state)| id == client && want(&state));
            if hit {
                return Ok(());
            }
        }
    }
}

/// A node killed with -9: its clients' presence disappears from the other nodes within 10 s.
#[tokio::test]
async fn a_dead_nodes_presence_is_removed_within_ten_seconds() -> anyhow::Result<()> {
    let mut c = Nodes::start(2, &[]).await?;
    let mut a = raw(&c.nodes[0], "gone").await?;
    let mut b = raw(&c.nodes[1], "gone").await?;
    a.send(tandem_tests::awareness_message(
        777,
        1,
        r#"{"user":{"name":"Kim"}}"#,
    ))
    .await?;
    wait_awareness(&mut b, 777, |s| s.contains("Kim")).await?;
    let killed = Instant::now();
    c.nodes[0].kill9().await?;
    wait_awareness(&mut b, 777, |s| s == "null").await?;
    let took = killed.elapsed();
    println!("presence of the killed node removed after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(a);
    Ok(())
}

/// An event stream resumed on another node with `Last-Event-ID` continues without gap or
/// duplicate, and `/updates?since=` answers the same on every node.
#[tokio::test]
async fn event_streams_resume_on_any_node() -> anyhow::Result<()> {
    let c = Nodes::start(2, &[]).await?;
    let mut w = raw(&c.nodes[0], "resume").await?;
    let mut first =
        SseClient::connect(c.nodes[0].addr, "/docs/resume/events?format=yjs", &[]).await?;
    assert_eq!(first.next().await?.event, "snapshot");
    for k in 0..5u64 {
        w.insert("t", k as u32, "x").await?;
    }
    w.wait_acked(5).await?;
    let mut last = 0;
    while last < 3 {
        let e = first.next().await?;
        if e.event == "update" {
            last = e.id.as_deref().unwrap_or("").parse()?;
        }
    }
    drop(first);
    let mut second = SseClient::connect(
        c.nodes[1].addr,
        "/docs/resume/events?format=yjs",
        &[("Last-Event-ID", &last.to_string())],
    )
    .await?;
    for k in 5..8u64 {
        w.insert("t", k as u32, "y").await?;
    }
    w.wait_acked(8).await?;
    let mut ids = Vec::new();
    while ids.len() < 5 {
        let e = second.next().await?;
        assert_ne!(e.event, "snapshot", "resumed, not reset");
        if e.event == "update" {
            ids.push(e.id.as_deref().unwrap_or("").parse::<u64>()?);
        }
    }
    assert_eq!(ids, vec![4, 5, 6, 7, 8]);
    for node in &c.nodes {
        let r = http(node.addr, "GET", "/docs/resume/updates?since=3", &[], b"").await?;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-tandem-sid"), Some("8"));
    }
    Ok(())
}

/// Conditional register writes racing on two nodes with the same expected version: exactly
/// one wins, and every node shows the winner with the same version.
#[tokio::test]
async fn a_conditional_write_has_one_winner_across_nodes() -> anyhow::Result<()> {
    let c = Nodes::start(2, &[]).await?;
    let put = |node: &Server, body: Value, etag: Option<String>| {
        let addr = node.addr;
        async move {
            let mut headers = vec![("Content-Type", "application/json".to_owned())];
            if let Some(e) = etag {
                headers.push(("If-Match", e));
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(
                addr,
                "PUT",
                "/docs/race/fields/status",
                &h,
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    let r = put(&c.nodes[0], json!("open"), None).await?;
    assert_eq!(r.status, 200);
    let mut etag = r.header("etag").map(str::to_owned);
    assert!(etag.is_some());
    for round in 0..5 {
        let (a, b) = tokio::join!(
            put(&c.nodes[0], json!(format!("a{round}")), etag.clone()),
            put(&c.nodes[1], json!(format!("b{round}")), etag.clone()),
        );
        let (a, b) = (a?, b?);
        let statuses = [a.status, b.status];
        assert!(
            statuses == [200, 412] || statuses == [412, 200],
            "round {round}: {statuses:?}"
        );
        let winner = if a.status == 200 { a } else { b };
        let version = winner.header("etag").map(str::to_owned);
        let value = winner.json()?["value"].clone();
        for node in &c.nodes {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let (_, v) = get_json(node, "/docs/race").await?;
                if v["fields"]["status"]["value"] == value {
                    assert_eq!(
                        v["fields"]["status"]["version"]
                            .as_str()
                            .map(|s| format!("\"{s}\"")),
                        version
                    );
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node never showed the winner: {v}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // The next round races on the winner's version, from the node that lost.
        etag = version;
    }
    Ok(())
}

/// A revocation on one node closes the user's sockets and streams on every node within 100 ms.
#[tokio::test]
async fn revocation_reaches_every_node_at_once() -> anyhow::Result<()> {
    let c = Nodes::start(3, &["--auth-secret", SECRET]).await?;
    let token = mint_token(
        SECRET,
        "mallory",
        None,
        "*",
        "write",
        tandem_tests::unix_now() - 1,
        3600,
    )?;
    let mut sockets = Vec::new();
    for node in &c.nodes[1..] {
        let mut s =
            RawClient::connect(&format!("{}/r?tandem=1&token={token}", node.ws_base())).await?;
        s.sync().await?;
        sockets.push(s);
    }
    let mut stream = SseClient::connect(
        c.nodes[2].addr,
        "/docs/r/events",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await?;
    assert_eq!(stream.next().await?.event, "snapshot");
    let started = Instant::now();
    revoke(&c.nodes[0], SECRET, "mallory").await?;
    for s in &mut sockets {
        let closed = s.closed().await;
        assert_eq!(closed.code, Some(4401), "{closed:?}");
    }
    loop {
        let e = stream.next().await?;
        if e.event == "close" {
            break;
        }
    }
    let took = started.elapsed();
    println!("revocation closed sockets and a stream on two other nodes in {took:?}");
    assert!(took < Duration::from_millis(100), "{took:?}");
    // A node started later knows it too (the store keeps revocations).
    let r = http(
        c.nodes[1].addr,
        "GET",
        "/docs/r",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await?;
    assert_eq!(r.status, 401);
    Ok(())
}

/// Redis stops: writes and acks go on, updates still cross nodes (through the store) within
/// about a second, `/readyz` says degraded; Redis comes back empty: presence is rebuilt and
/// the node is ready again.
#[tokio::test]
async fn losing_redis_degrades_delivery_but_loses_nothing() -> anyhow::Result<()> {
    let mut c = Nodes::start(2, &[]).await?;
    let mut a = raw(&c.nodes[0], "fallback").await?;
    let mut b = raw(&c.nodes[1], "fallback").await?;
    a.send(tandem_tests::awareness_message(
        99,
        1,
        r#"{"user":{"name":"Lu"}}"#,
    ))
    .await?;
    wait_awareness(&mut b, 99, |s| s.contains("Lu")).await?;
    c.redis.stop().await?;
    wait_ready(&c.nodes[0], 503, "degraded").await?;
    let written = Instant::now();
    a.insert("t", 0, "still here").await?;
    a.wait_acked(1).await?;
    b.wait_text("t", "still here").await?;
    let took = written.elapsed();
    println!("with Redis down an update crossed nodes in {took:?}");
    assert!(took < Duration::from_millis(2_000), "{took:?}");
    let metrics = tandem_tests::metrics_text(&c.nodes[1]).await?;
    assert!(metrics.contains("tandem_bus_up 0"), "{metrics}");

    // Presence changed while Redis was away does not cross...
    a.send(tandem_tests::awareness_message(
        99,
        2,
        r#"{"user":{"name":"Lu2"}}"#,
    ))
    .await?;
    c.redis.resume().await?;
    wait_ready(&c.nodes[0], 200, "ok").await?;
    wait_ready(&c.nodes[1], 200, "ok").await?;
    // ...until Redis is back (empty): every node republishes, and b sees it without a sending
    // anything more.
    wait_awareness(&mut b, 99, |s| s.contains("Lu2")).await?;
    Ok(())
}

/// Redis out of reach when a node starts: it serves (writes are acknowledged), and says it is
/// degraded.
#[tokio::test]
async fn a_node_starts_degraded_without_redis() -> anyhow::Result<()> {
    let db = TestDb::create()?;
    let mut redis = Redis::start().await?;
    redis.stop().await?;
    let url = db.url();
    let c = Nodes::start_on(1, db, redis, &url, &[]).await?;
    wait_ready(&c.nodes[0], 503, "degraded").await?;
    let (_, v) = get_json(&c.nodes[0], "/readyz").await?;
    assert_eq!(v["bus"], json!("down"));
    let mut w = raw(&c.nodes[0], "alone").await?;
    w.insert("t", 0, "ok").await?;
    w.wait_acked(1).await?;
    Ok(())
}

/// A database that cannot be reached at start: a clear error naming host and database, and
/// the password in no line the process prints.
#[tokio::test]
async fn an_unreachable_database_at_start_is_named_without_its_password() -> anyhow::Result<()> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let url = format!("postgres://tandem:s3cret-pw@127.0.0.1:{port}/ordersdb");
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--database-url", &url])
        .env("RUST_LOG", "debug")
        .output()?;
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("127.0.0.1") && all.contains("ordersdb"),
        "{all}"
    );
    assert!(!all.contains("s3cret-pw"), "{all}");
    Ok(())
}

/// Stock y-websocket clients (Node, the npm package) on two nodes co-edit.
#[tokio::test]
async fn stock_clients_on_two_nodes_co_edit() -> anyhow::Result<()> {
    let c = Nodes::start(2, &[]).await?;
    let mut a = tandem_tests::NodeClient::connect(&c.nodes[0].ws_base(), "stock", "a").await?;
    let mut b = tandem_tests::NodeClient::connect(&c.nodes[1].ws_base(), "stock", "b").await?;
    a.insert("t", 0, "from a").await?;
    b.wait_text("t", "from a").await?;
    b.insert("t", 6, ", from b").await?;
    a.wait_text("t", "from a, from b").await?;
    a.close().await?;
    b.close().await?;
    Ok(())
}

async fn wait_ready(node: &Server, status: u16, says: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (s, v) = get_json(node, "/readyz").await?;
        if s == status && v["status"] == json!(says) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "/readyz stayed {s} {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PostgreSQL out of reach: no acknowledgement without a commit; an HTTP write gets 503 with
/// Retry-After, a socket the "try again" close; once it is back, writes go on and nothing is
/// lost or applied twice.
#[tokio::test]
async fn an_unreachable_database_refuses_writes_until_it_is_back() -> anyhow::Result<()> {
    let db = TestDb::create()?;
    let relay = Relay::start().await?;
    let redis = Redis::start().await?;
    let url = db.url_at(&relay.addr.to_string());
    let c = Nodes::start_on(1, db, redis, &url, &[]).await?;
    let node = &c.nodes[0];
    let mut w = raw(node, "outage").await?;
    w.insert("t", 0, "a").await?;
    w.wait_acked(1).await?;
    let mut watcher = raw(node, "outage").await?;
    relay.cut();
    w.insert("t", 1, "b").await?;
    let closed = w.closed().await;
    assert_eq!(closed.code, Some(4503), "{closed:?}");
    assert_eq!(w.acked.0, 1, "nothing acknowledged without a commit");
    // Nothing reached another client before its commit (which never came).
    let closed = watcher.closed().await;
    assert_eq!(closed.code, Some(4503), "{closed:?}");
    assert_eq!(watcher.doc.text("t").as_deref(), Some("a"));
    let r = http(
        node.addr,
        "PUT",
        "/docs/outage/fields/status",
        &[("Content-Type", "application/json")],
        b"\"x\"",
    )
    .await?;
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.header("retry-after"), Some("1"));
    relay.mend();
    // The client reconnects and sends what was not acknowledged (a stock client does so
    // through sync step 2).
    let deadline = Instant::now() + TIMEOUT;
    let mut again = loop {
        match RawClient::connect(&format!("{}/outage?tandem=1", node.ws_base())).await {
            Ok(mut c) => {
                c.doc = std::mem::replace(&mut w.doc, tandem_engine::Document::new(1));
                if c.sync().await.is_ok() {
                    break c;
                }
                w.doc = std::mem::replace(&mut c.doc, tandem_engine::Document::new(1));
            }
            Err(e) => anyhow::ensure!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let update = again.doc.encode_state();
    again
        .send(tandem_engine::protocol::sync_frame(1, &update))
        .await?;
    again.wait_acked(1).await?;
    let sid = wait_http_text(node, "outage", "ab").await?;
    assert!(sid >= 2);
    Ok(())
}

/// kill -9 of a node in a write storm spread over all nodes: every acknowledged update
/// survives, no sid is given twice, the killed node's writer resumes on another node and
/// everyone converges.
#[tokio::test]
async fn killing_a_node_mid_storm_loses_no_acknowledged_update() -> anyhow::Result<()> {
    let mut c = Nodes::start(3, &[]).await?;
    let doc = "crash";
    let mut writers = Vec::new();
    for node in &c.nodes {
        writers.push(raw(node, doc).await?);
    }
    for round in 0..20u32 {
        for (i, w) in writers.iter_mut().enumerate() {
            if i == 1 && round > 10 {
                // Its node is gone: the client keeps editing offline.
                w.doc.insert("raw", "f1", round, "x")?;
            } else {
                w.insert(&format!("f{i}"), round, "x").await?;
            }
        }
        if round == 10 {
            c.nodes[1].kill9().await?;
        }
    }
    // The killed node's writer: what was acknowledged is durable; it resumes on node 0 with
    // everything it has (a stock client's step 2 after reconnecting).
    let victim = writers.remove(1);
    let acked_before = victim.acked.0;
    println!("the killed node had acknowledged {acked_before} of 20 updates");
    let mut resumed = raw(&c.nodes[0], doc).await?;
    let update = victim.doc.encode_state();
    resumed
        .send(tandem_engine::protocol::sync_frame(1, &update))
        .await?;
    resumed.wait_acked(1).await?;
    for w in &mut writers {
        w.wait_acked(20).await?;
    }
    let expected = "x".repeat(20);
    let alive = [&c.nodes[0], &c.nodes[2]];
    for node in alive {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (_, v) = get_json(node, &format!("/docs/{doc}")).await?;
            let all = (0..3).all(|i| v["texts"][format!("f{i}")] == json!(expected));
            if all {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "never converged: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Sids: no duplicate, no gap, in the stored log.
    let mut s = SseClient::connect(
        c.nodes[2].addr,
        &format!("/docs/{doc}/events?format=yjs&since=0"),
        &[],
    )
    .await?;
    let (_, v) = get_json(&c.nodes[2], &format!("/docs/{doc}")).await?;
    let last = v["sid"].as_u64().unwrap_or(0);
    let mut seen = Vec::new();
    while seen.len() < last as usize {
        let e = s.next().await?;
        if e.event == "update" {
            seen.push(e.id.as_deref().unwrap_or("").parse::<u64>()?);
        }
    }
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());
    Ok(())
}

/// A retried keyed write after a lost answer, sent to another node, is not applied twice.
#[tokio::test]
async fn an_idempotency_key_holds_across_nodes() -> anyhow::Result<()> {
    let c = Nodes::start(2, &[]).await?;
    let send = |node: &Server| {
        let addr = node.addr;
        async move {
            http(
                addr,
                "POST",
                "/docs/keyed/texts/t",
                &[
                    ("Content-Type", "application/json"),
                    ("Idempotency-Key", "k-1"),
                ],
                br#"{"index":0,"insert":"once "}"#,
            )
            .await
        }
    };
    let first = send(&c.nodes[0]).await?;
    assert_eq!(first.status, 200, "{:?}", first.json());
    let again = send(&c.nodes[1]).await?;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    let (_, v) = get_json(&c.nodes[1], "/docs/keyed").await?;
    assert_eq!(v["texts"]["t"], json!("once "));
    Ok(())
}

/// Compaction with writers on several nodes: the document each node and a fresh node load is
/// whole (nothing dropped by a snapshot), however the compactions interleaved.
#[tokio::test]
async fn compaction_with_several_writers_drops_nothing() -> anyhow::Result<()> {
    let c = Nodes::start(2, &["--compact-after", "10"]).await?;
    let mut a = raw(&c.nodes[0], "compact").await?;
    let mut b = raw(&c.nodes[1], "compact").await?;
    for k in 0..40u32 {
        a.insert("a", k, "x").await?;
        b.insert("b", k, "y").await?;
    }
    a.wait_acked(40).await?;
    b.wait_acked(40).await?;
    drop((a, b));
    for node in &c.nodes {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (_, v) = get_json(node, "/docs/compact").await?;
            if v["texts"]["a"] == json!("x".repeat(40)) && v["texts"]["b"] == json!("y".repeat(40))
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A client that connects fresh to either node gets the whole document (loaded from the
    // snapshot and the log after it).
    let fresh = raw(&c.nodes[1], "compact").await?;
    assert_eq!(
        fresh.doc.text("a").as_deref(),
        Some("x".repeat(40).as_str())
    );
    assert_eq!(
        fresh.doc.text("b").as_deref(),
        Some("y".repeat(40).as_str())
    );
    Ok(())
}

/// `--redis-url` alone is refused with the reason.
#[tokio::test]
async fn redis_without_a_database_is_refused() -> anyhow::Result<()> {
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--database-url"), "{err}");
    Ok(())
}

/// A node whose replica is behind a snapshot another node made (the log it would read is
/// compacted away) merges the snapshot and carries on: its clients converge, nothing is lost.
#[tokio::test]
async fn a_node_behind_another_nodes_snapshot_catches_up() -> anyhow::Result<()> {
    let mut c = Nodes::start(
        2,
        &["--compact-after", "10", "--catch-up-interval", "300ms"],
    )
    .await?;
    let mut b = raw(&c.nodes[1], "rebase").await?;
    // Without Redis, node 1 learns of node 0's writes only from the store, a moment later.
    c.redis.stop().await?;
    wait_ready(&c.nodes[1], 503, "degraded").await?;
    let mut a = raw(&c.nodes[0], "rebase").await?;
    for k in 0..40u32 {
        a.insert("t", k, "x").await?;
        a.wait_acked(u64::from(k) + 1).await?;
    }
    b.wait_text("t", &"x".repeat(40)).await?;
    let rebases = tandem_tests::metric(&c.nodes[1], "tandem_replication_rebases_total").await?;
    println!("node 1 merged {rebases} snapshot(s) of node 0");
    assert!(rebases >= 1, "node 1 should have taken node 0's snapshot");
    // And it keeps taking writes of its own.
    b.insert("t", 0, "b").await?;
    b.wait_acked(1).await?;
    a.wait_text("t", &format!("b{}", "x".repeat(40))).await?;
    Ok(())
}
