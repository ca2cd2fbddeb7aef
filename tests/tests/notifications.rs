//! Notifications and webhooks against the real binary: a mention typed by a stock Yjs client
//! reaches the mentioned user's stream within 100 ms and not the author's; assignments,
//! replies, reading, paging and resuming; a revoked user gets nothing; a due date is reminded
//! with a short `--remind-before`; a local receiver gets signed webhook events in order,
//! misses nothing while it is down, and nothing is lost to a `kill -9` between commit and
//! delivery.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tandem_tests::{
    http, metric, mint_token, revoke, temp_dir, unix_now, NodeClient, Server, SseClient, SseEvent,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET: &str = "end-to-end notification secret, 32 bytes or more";
const HOOK_SECRET: &str = "webhook secret";

fn token(user: &str, doc: &str, role: &str) -> String {
    mint_token(SECRET, user, None, doc, role, unix_now() - 1, 3600).expect("mint")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Opens `token`'s notification stream and reads its first `unread` event.
async fn inbox(
    server: &Server,
    token: &str,
    last: Option<&str>,
) -> anyhow::Result<(SseClient, u64)> {
    let auth = bearer(token);
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(last) = last {
        headers.push(("Last-Event-ID", last));
    }
    let mut s = SseClient::connect(server.addr, "/me/notifications/events", &headers).await?;
    anyhow::ensure!(s.status == 200, "stream answered {}", s.status);
    let mut backlog = Vec::new();
    loop {
        let e = s.next().await?;
        if e.event == "unread" {
            let n = e.data["unread"].as_u64().context("unread count")?;
            anyhow::ensure!(backlog.is_empty() || last.is_some(), "{backlog:?}");
            return Ok((s, n));
        }
        backlog.push(e);
    }
}

/// The next `notification` event (an `unread` event in between is an error).
async fn next_notification(s: &mut SseClient) -> anyhow::Result<SseEvent> {
    let e = s.next().await?;
    anyhow::ensure!(
        e.event == "notification",
        "expected a notification, got {e:?}"
    );
    Ok(e)
}

async fn edit(
    server: &Server,
    token: &str,
    doc: &str,
    field: &str,
    text: &str,
) -> anyhow::Result<()> {
    let body = json!({"index": 0, "insert": text}).to_string();
    let r = http(
        server.addr,
        "POST",
        &format!("/docs/{doc}/texts/{field}"),
        &[
            ("Authorization", &bearer(token)),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await?;
    anyhow::ensure!(
        r.status == 200,
        "edit answered {}: {:?}",
        r.status,
        r.json()
    );
    Ok(())
}

async fn put(
    server: &Server,
    token: &str,
    doc: &str,
    name: &str,
    value: Value,
) -> anyhow::Result<()> {
    let r = http(
        server.addr,
        "PUT",
        &format!("/docs/{doc}/fields/{name}"),
        &[
            ("Authorization", &bearer(token)),
            ("Content-Type", "application/json"),
        ],
        value.to_string().as_bytes(),
    )
    .await?;
    anyhow::ensure!(r.status == 200, "put answered {}: {:?}", r.status, r.json());
    Ok(())
}

async fn get_json(server: &Server, token: &str, path: &str) -> anyhow::Result<Value> {
    let r = http(
        server.addr,
        "GET",
        path,
        &[("Authorization", &bearer(token))],
        b"",
    )
    .await?;
    anyhow::ensure!(
        r.status == 200,
        "{path} answered {}: {:?}",
        r.status,
        r.json()
    );
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_reaches_the_mentioned_user_within_100_ms_and_not_the_author(
) -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("notify-mention"), &["--auth-secret", SECRET]).await?;
    let alice = token("alice", "task-*", "write");
    let bob = token("bob", "task-*", "write");
    let carol = token("carol", "other-*", "write");
    let (mut alice_inbox, _) = inbox(&server, &alice, None).await?;
    let (mut bob_inbox, unread) = inbox(&server, &bob, None).await?;
    let (mut carol_inbox, _) = inbox(&server, &carol, None).await?;
    assert_eq!(unread, 0);

    let mut writer =
        NodeClient::connect_with_token(&server.ws_base(), "task-1", "alice", Some(&alice)).await?;
    // Typed by a stock y-websocket client: bob, carol (whose token does not reach task-1) and
    // alice herself.
    let started = Instant::now();
    writer
        .insert(
            "comment:1",
            0,
            "Hey @[Bob B](bob), @[Carol](carol) and @[Me](alice): look",
        )
        .await?;
    let e = next_notification(&mut bob_inbox).await?;
    let took = started.elapsed();
    println!("mention delivered to the mentioned user's stream {took:?} after it was typed");
    assert!(took < Duration::from_millis(100), "took {took:?}");
    assert_eq!(e.data["type"], "mention");
    assert_eq!(e.data["doc"], "task-1");
    assert_eq!(e.data["field"], "comment:1");
    assert_eq!(e.data["from"], "alice");
    assert_eq!(e.data["read"], false);
    assert!(
        e.data["excerpt"].as_str().unwrap().contains("Hey @Bob B"),
        "{e:?}"
    );
    assert_eq!(e.id.as_deref(), Some("1"));

    // Editing around it does not repeat it; bob's next notification is the next mention.
    writer.insert("comment:1", 0, "(edit) ").await?;
    let mut bob_writer =
        NodeClient::connect_with_token(&server.ws_base(), "task-1", "bob", Some(&bob)).await?;
    bob_writer
        .wait_text("comment:1", &writer.text("comment:1").await?)
        .await?;
    bob_writer
        .insert("comment:2", 0, "thanks @[Alice](alice)")
        .await?;
    bob_writer.insert("comment:1", 0, "@[Bob B](bob) ").await?;
    // Alice's first notification is bob's mention: never her own.
    let a = next_notification(&mut alice_inbox).await?;
    assert_eq!(
        (a.data["type"].as_str(), a.data["from"].as_str()),
        (Some("mention"), Some("bob"))
    );
    // Bob mentioning himself is not a notification either: his stream stays quiet until the
    // next mention of him by someone else.
    writer.insert("comment:3", 0, "again @[Bob B](bob)").await?;
    let again = next_notification(&mut bob_inbox).await?;
    assert_eq!(
        (again.data["field"].as_str(), again.id.as_deref()),
        (Some("comment:3"), Some("2"))
    );
    // (alice's new comment also replies to bob's earlier one)
    let reply = next_notification(&mut bob_inbox).await?;
    assert_eq!(
        (reply.data["field"].as_str(), reply.data["type"].as_str()),
        (Some("comment:3"), Some("reply"))
    );
    // Rich editors: an embed and a formatting attribute, each one new mention.
    writer
        .call(json!({"op": "insert-embed", "field": "description", "index": 0, "embed": {"mention": "bob"}}))
        .await?;
    let embed = next_notification(&mut bob_inbox).await?;
    assert_eq!(
        (embed.data["field"].as_str(), embed.data["type"].as_str()),
        (Some("description"), Some("mention"))
    );
    writer
        .call(
            json!({"op": "insert-formatted", "field": "notes", "index": 0, "text": "@Bob",
                     "attributes": {"mention": "bob"}}),
        )
        .await?;
    let attr = next_notification(&mut bob_inbox).await?;
    assert_eq!(attr.data["field"], "notes");
    // Carol was never notified of task-1; her first notification is about a document she reaches.
    let mut other = NodeClient::connect_with_token(
        &server.ws_base(),
        "other-1",
        "alice",
        Some(&token("alice", "*", "write")),
    )
    .await?;
    other.insert("notes", 0, "cc @[Carol](carol)").await?;
    let c = next_notification(&mut carol_inbox).await?;
    assert_eq!(c.data["doc"], "other-1");
    writer.close().await?;
    bob_writer.close().await?;
    other.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_replies_reading_paging_resuming_and_revocation() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("notify-inbox"), &["--auth-secret", SECRET]).await?;
    let alice = token("alice", "task-*", "write");
    let bob = token("bob", "task-*", "write");
    let dave = token("dave", "task-*", "write");
    let (mut bob_inbox, _) = inbox(&server, &bob, None).await?;
    let (mut dave_inbox, _) = inbox(&server, &dave, None).await?;

    edit(&server, &bob, "task-2", "comment:1", "first!").await?;
    edit(&server, &dave, "task-2", "comment:2", "second").await?;
    put(&server, &alice, "task-2", "assignee", json!("bob")).await?;
    // dave's new comment replies to bob's; then alice assigns bob.
    let e = next_notification(&mut bob_inbox).await?;
    assert_eq!(
        (e.data["type"].as_str(), e.data["from"].as_str()),
        (Some("reply"), Some("dave"))
    );
    assert_eq!(e.data["field"], "comment:2");
    assert_eq!(e.data["excerpt"], "second");
    let e = next_notification(&mut bob_inbox).await?;
    assert_eq!(
        (e.data["type"].as_str(), e.data["field"].as_str()),
        (Some("assigned"), Some("assignee"))
    );
    assert_eq!(e.data["from"], "alice");

    // dave is revoked: his stream ends, and he is notified of nothing any more.
    revoke(&server, SECRET, "dave").await?;
    loop {
        let e = dave_inbox.next().await?;
        assert_ne!(e.event, "notification", "{e:?}");
        if e.event == "close" {
            assert_eq!(e.data["reason"], "token revoked");
            break;
        }
    }
    edit(
        &server,
        &alice,
        "task-2",
        "comment:3",
        "@[Dave](dave) @[Bob](bob) see above",
    )
    .await?;
    // bob hears of alice's mention, then of her reply (he commented before); dave of nothing.
    let e = next_notification(&mut bob_inbox).await?;
    assert_eq!(
        (e.data["type"].as_str(), e.id.as_deref()),
        (Some("mention"), Some("3"))
    );
    let e = next_notification(&mut bob_inbox).await?;
    assert_eq!(
        (e.data["type"].as_str(), e.id.as_deref()),
        (Some("reply"), Some("4"))
    );
    assert_eq!(
        metric(&server, "tandem_notifications_total").await?,
        4,
        "none for dave"
    );

    let ids = |page: &Value| -> Vec<u64> {
        page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_u64().unwrap())
            .collect()
    };
    let page = get_json(&server, &bob, "/me/notifications?limit=2").await?;
    assert_eq!(ids(&page), [4, 3], "newest first");
    assert_eq!(
        (page["unread"].as_u64(), page["next"].as_u64()),
        (Some(4), Some(3))
    );
    let rest = get_json(&server, &bob, "/me/notifications?limit=2&before=3").await?;
    assert_eq!(ids(&rest), [2, 1]);
    assert_eq!(rest["next"], Value::Null);

    // Reading: the answer and bob's stream both tell the new unread count.
    let r = http(
        server.addr,
        "POST",
        "/me/notifications/read",
        &[
            ("Authorization", &bearer(&bob)),
            ("Content-Type", "application/json"),
        ],
        br#"{"ids": [4, 1]}"#,
    )
    .await?;
    assert_eq!(r.json()?, json!({"unread": 2}));
    let u = bob_inbox.next().await?;
    assert_eq!(
        (u.event.as_str(), u.data.clone()),
        ("unread", json!({"unread": 2}))
    );
    // Resuming after id 2: exactly 3 and 4, then the unread count.
    let (_resumed, unread) = {
        let auth = bearer(&bob);
        let mut s = SseClient::connect(
            server.addr,
            "/me/notifications/events",
            &[("Authorization", auth.as_str()), ("Last-Event-ID", "2")],
        )
        .await?;
        let a = next_notification(&mut s).await?;
        let b = next_notification(&mut s).await?;
        assert_eq!((a.id.as_deref(), b.id.as_deref()), (Some("3"), Some("4")));
        assert_eq!(b.data["read"], true);
        let u = s.next().await?;
        assert_eq!(u.event, "unread");
        (s, u.data["unread"].as_u64())
    };
    assert_eq!(unread, Some(2));
    // The old token of dave is refused; what dave had is not shown to it.
    let r = http(
        server.addr,
        "GET",
        "/me/notifications",
        &[("Authorization", &bearer(&dave))],
        b"",
    )
    .await?;
    assert_eq!(r.status, 401);
    Ok(())
}

/// An RFC 3339 date-time (UTC) for a unix time in seconds.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_date_is_reminded_to_the_assignee_within_remind_before() -> anyhow::Result<()> {
    let server = Server::start(
        &temp_dir("notify-due"),
        &["--auth-secret", SECRET, "--remind-before", "2s"],
    )
    .await?;
    let alice = token("alice", "task-*", "write");
    let bob = token("bob", "task-*", "write");
    let (mut bob_inbox, _) = inbox(&server, &bob, None).await?;
    // Due in 3 s: the reminder is due 1 s from now (2 s ahead of the date).
    let due_at = unix_now() + 3;
    let value = rfc3339(due_at);
    put(&server, &bob, "task-9", "assignee", json!("bob")).await?;
    put(&server, &alice, "task-9", "due", json!(value)).await?;
    let e = next_notification(&mut bob_inbox).await?;
    let at = unix_now();
    println!("reminded at {at} for a due date at {due_at} ({value})");
    assert_eq!(e.data["type"], "due");
    assert_eq!(e.data["from"], Value::Null);
    assert_eq!(e.data["field"], "due");
    assert!(at + 2 >= due_at, "reminded too early: {at} for {due_at}");
    assert!(at < due_at, "reminded late: {at} for {due_at}");
    Ok(())
}

/// A webhook request as received.
#[derive(Debug)]
struct Hook {
    signature: String,
    body: Vec<u8>,
}

/// A local HTTP receiver on `addr` (port 0: any), answering 200 to everything.
async fn receiver(
    addr: &str,
) -> anyhow::Result<(
    SocketAddr,
    mpsc::UnboundedReceiver<Hook>,
    tokio::task::JoinHandle<()>,
)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut signature = String::new();
                    let mut length = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            match k.trim().to_ascii_lowercase().as_str() {
                                "content-length" => length = v.trim().parse().unwrap_or(0),
                                "tandem-signature" => signature = v.trim().to_owned(),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let _ = tx.send(Hook { signature, body });
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((local, rx, task))
}

/// Checks a delivery's signature the way the README shows, and returns its event.
fn verified(hook: &Hook) -> Value {
    let (t, v1) = hook.signature.split_once(",v1=").expect("t=…,v1=…");
    let t = t.strip_prefix("t=").expect("t=");
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&hook.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        v1,
        expected,
        "signature of {}",
        String::from_utf8_lossy(&hook.body)
    );
    let age = unix_now().abs_diff(t.parse::<u64>().unwrap());
    assert!(age < 60, "signed {age} s ago");
    serde_json::from_slice(&hook.body).unwrap()
}

/// Receives until every `field.updated` value in `want` arrived (duplicates, which at-least-
/// once allows, are dropped by event id); checks they came in order.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Hook>,
    seen: &mut HashSet<String>,
    want: &[&str],
) -> anyhow::Result<Vec<Value>> {
    let mut values = Vec::new();
    let mut events = Vec::new();
    while values.len() < want.len() {
        let hook = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .context("no webhook delivery in time")?
            .context("receiver gone")?;
        let event = verified(&hook);
        let id = event["id"].as_str().unwrap().to_owned();
        if !seen.insert(id) {
            continue;
        }
        assert_eq!(event["doc"], "w");
        if event["type"] == "field.updated" {
            assert_eq!(event["name"], "status");
            values.push(event["value"].as_str().unwrap().to_owned());
        }
        events.push(event);
    }
    assert_eq!(values, want, "in order");
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_in_order_and_survive_a_down_receiver_and_kill_9() -> anyhow::Result<()>
{
    let (hook_addr, mut rx, hook_task) = receiver("127.0.0.1:0").await?;
    let url = format!("http://{hook_addr}/hooks/tandem");
    let mut server = Server::start(
        &temp_dir("notify-webhooks"),
        &[
            "--auth-secret",
            SECRET,
            "--webhook-url",
            &url,
            "--webhook-secret",
            HOOK_SECRET,
        ],
    )
    .await?;
    let alice = token("alice", "*", "write");
    let admin = token("root", "*", "admin");
    let mut seen = HashSet::new();

    for v in ["1", "2", "3"] {
        put(&server, &alice, "w", "status", json!(v)).await?;
    }
    let events = collect(&mut rx, &mut seen, &["1", "2", "3"]).await?;
    let updated = events
        .iter()
        .find(|e| e["type"] == "document.updated")
        .unwrap();
    assert_eq!(updated["authors"], json!(["alice"]));
    assert!(updated["fields"]
        .as_array()
        .unwrap()
        .contains(&json!("status")));
    assert!(updated["first_sid"].as_u64().unwrap() >= 1);

    // The receiver goes down: editing is not slowed, events wait.
    hook_task.abort();
    let _ = hook_task.await;
    drop(rx);
    let started = Instant::now();
    for v in ["4", "5", "6"] {
        put(&server, &alice, "w", "status", json!(v)).await?;
    }
    println!(
        "3 writes with the receiver down took {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Wait until a failed attempt is visible to admins (and in the metrics).
    let pending = loop {
        let list = get_json(&server, &admin, "/admin/webhooks/deliveries?state=pending").await?;
        let rows = list["deliveries"].as_array().cloned().unwrap_or_default();
        if rows.iter().any(|r| r["attempts"].as_u64() >= Some(1)) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(pending[0]["last_error"].as_str().is_some(), "{pending:?}");
    assert!(metric(&server, "tandem_webhook_failed_attempts_total").await? >= 1);
    // Back up on the same address: every missed event arrives, in order.
    let (_, mut rx, hook_task) = receiver(&hook_addr.to_string()).await?;
    collect(&mut rx, &mut seen, &["4", "5", "6"]).await?;

    // Committed, then killed before delivery: the receiver is down while it happens.
    hook_task.abort();
    let _ = hook_task.await;
    drop(rx);
    for v in ["7", "8"] {
        put(&server, &alice, "w", "status", json!(v)).await?;
    }
    server.kill9().await?;
    let (_, mut rx, _hook_task) = receiver(&hook_addr.to_string()).await?;
    server.restart().await?;
    collect(&mut rx, &mut seen, &["7", "8"]).await?;
    assert!(metric(&server, "tandem_webhook_delivered_total").await? >= 2);
    Ok(())
}

/// Receives until an event of type `kind` arrives; returns it and the types seen before it.
async fn until_type(
    rx: &mut mpsc::UnboundedReceiver<Hook>,
    kind: &str,
) -> anyhow::Result<(Value, Vec<String>)> {
    let mut before = Vec::new();
    loop {
        let hook = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .with_context(|| format!("no {kind} event in time (saw {before:?})"))?
            .context("receiver gone")?;
        let event = verified(&hook);
        let t = event["type"].as_str().unwrap_or_default().to_owned();
        if t == kind {
            return Ok((event, before));
        }
        before.push(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_and_opt_in_presence_events_reach_the_receiver() -> anyhow::Result<()> {
    let (hook_addr, mut rx, _hook_task) = receiver("127.0.0.1:0").await?;
    let url = format!("http://{hook_addr}/");
    let server = Server::start(
        &temp_dir("notify-webhook-events"),
        &[
            "--auth-secret",
            SECRET,
            "--webhook-url",
            &url,
            "--webhook-secret",
            HOOK_SECRET,
            "--webhook-presence",
        ],
    )
    .await?;
    let alice = token("alice", "p*", "write");
    let (_bob_inbox, _) = inbox(&server, &token("bob", "p*", "read"), None).await?;
    let mut writer =
        NodeClient::connect_with_token(&server.ws_base(), "p1", "alice", Some(&alice)).await?;
    let (joined, _) = until_type(&mut rx, "presence.joined").await?;
    assert_eq!(
        (joined["doc"].as_str(), joined["user"].as_str()),
        (Some("p1"), Some("alice"))
    );
    writer.insert("comment:1", 0, "hi @[Bob](bob)").await?;
    let (created, _) = until_type(&mut rx, "notification.created").await?;
    assert_eq!(created["doc"], "p1");
    let n = &created["notification"];
    assert_eq!(
        (n["user"].as_str(), n["type"].as_str(), n["from"].as_str()),
        (Some("bob"), Some("mention"), Some("alice"))
    );
    writer.close().await?;
    let (left, _) = until_type(&mut rx, "presence.left").await?;
    assert_eq!(left["user"], "alice");
    Ok(())
}

/// Two nodes on one PostgreSQL database both run a delivery worker over the shared outbox:
/// writes to one document alternate between them, and the receiver still gets every
/// `field.updated` once per id and in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_one_documents_events_in_order() -> anyhow::Result<()> {
    use tandem_tests::cluster::Nodes;
    let (hook_addr, mut rx, _hook_task) = receiver("127.0.0.1:0").await?;
    let url = format!("http://{hook_addr}/");
    let c = Nodes::start(
        2,
        &[
            "--auth-secret",
            SECRET,
            "--webhook-url",
            &url,
            "--webhook-secret",
            HOOK_SECRET,
        ],
    )
    .await?;
    let alice = token("alice", "*", "write");
    let want: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    for (i, v) in want.iter().enumerate() {
        put(&c.nodes[i % 2], &alice, "w", "status", json!(v)).await?;
    }
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    collect(&mut rx, &mut HashSet::new(), &want).await?;
    Ok(())
}

/// With two nodes, a mention written on one reaches the mentioned user's stream on the other
/// (read from the shared store within a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_made_on_one_node_reaches_a_stream_on_another() -> anyhow::Result<()> {
    use tandem_tests::cluster::Nodes;
    let c = Nodes::start(2, &["--auth-secret", SECRET]).await?;
    let (mut bob_inbox, _) = inbox(&c.nodes[1], &token("bob", "task-*", "read"), None).await?;
    let started = Instant::now();
    edit(
        &c.nodes[0],
        &token("alice", "task-*", "write"),
        "task-5",
        "description",
        "ask @[Bob](bob)",
    )
    .await?;
    let e = next_notification(&mut bob_inbox).await?;
    println!("mention crossed nodes in {:?}", started.elapsed());
    assert_eq!(
        (e.data["type"].as_str(), e.data["doc"].as_str()),
        (Some("mention"), Some("task-5"))
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    Ok(())
}
