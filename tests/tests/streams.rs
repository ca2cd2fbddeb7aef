//! Event streams (`GET /docs/{doc}/events`) are long-lived connections like WebSockets: a
//! revocation ends them within 100 ms, a token's expiry ends them on time, each with a last
//! `close` event saying why, and they count against `--max-connections`. Against the real
//! binary, next to the WebSocket tests in `auth.rs`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_tests::{
    cli_token, http, mint_token, revoke, temp_dir, unix_now, Server, SseClient, SseEvent,
};

const SECRET: &str = "end-to-end stream secret, 32 bytes or more";

/// A token valid for an hour, issued a second ago (so a revocation in this second covers it).
fn token(user: &str, doc: &str, role: &str) -> String {
    mint_token(SECRET, user, None, doc, role, unix_now() - 1, 3600).expect("mint")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Writes register `n` of `doc` as `token`'s user.
async fn put(server: &Server, token: &str, doc: &str, n: &str, value: Value) -> anyhow::Result<()> {
    let r = http(
        server.addr,
        "PUT",
        &format!("/docs/{doc}/fields/{n}"),
        &[
            ("Authorization", &bearer(token)),
            ("Content-Type", "application/json"),
        ],
        value.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(r.status, 200, "{:?}", r.json());
    Ok(())
}

/// Opens `doc`'s event stream with `token` and reads its snapshot.
async fn stream(server: &Server, doc: &str, token: &str) -> anyhow::Result<SseClient> {
    let mut s = SseClient::connect(
        server.addr,
        &format!("/docs/{doc}/events"),
        &[("Authorization", &bearer(token))],
    )
    .await?;
    assert_eq!(s.status, 200);
    assert_eq!(s.next().await?.event, "snapshot");
    Ok(s)
}

/// Reads events until the server's `close` event, then checks that the stream ends there.
async fn until_closed(s: &mut SseClient) -> anyhow::Result<SseEvent> {
    loop {
        let e = s.next().await?;
        if e.event == "close" {
            let after = s.next().await;
            let ended = after
                .as_ref()
                .is_err_and(|e| format!("{e:#}").contains("stream ended"));
            assert!(ended, "the stream did not end after its close: {after:?}");
            return Ok(e);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_the_users_event_streams_within_100_ms() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("stream-revoke"), &["--auth-secret", SECRET]).await?;
    let alice = token("alice", "*", "write");
    for doc in ["a", "b"] {
        put(&server, &alice, doc, "status", json!("open")).await?;
    }
    let old = token("mallory", "*", "read");
    let mut victims = Vec::new();
    for doc in ["a", "b"] {
        victims.push(stream(&server, doc, &old).await?);
    }
    let mut bystander = stream(&server, "a", &alice).await?;

    let waiters: Vec<_> = victims
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let e = until_closed(&mut s).await;
                (e, Instant::now())
            })
        })
        .collect();
    let started = Instant::now();
    let answer = revoke(&server, SECRET, "mallory").await?;
    assert_eq!(answer["closed"], 2, "both streams were registered");
    for waiter in waiters {
        let (event, at) = waiter.await?;
        let event = event?;
        let took = at - started;
        println!("event stream ended {took:?} after the revocation was sent: {event:?}");
        assert_eq!(event.data, json!({"code": 4401, "reason": "token revoked"}));
        assert!(took < Duration::from_millis(100), "took {took:?}");
    }
    // The old token opens no stream any more (a browser EventSource stops on a 401).
    let again = SseClient::connect(
        server.addr,
        "/docs/a/events",
        &[("Authorization", &bearer(&old))],
    )
    .await?;
    assert_eq!(again.status, 401);
    // Other users' streams go on.
    put(&server, &alice, "a", "status", json!("done")).await?;
    loop {
        let e = bystander.next().await?;
        if e.event == "field" {
            assert_eq!(e.data["value"], "done");
            break;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_at_its_tokens_expiry() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("stream-expiry"), &["--auth-secret", SECRET]).await?;
    put(
        &server,
        &token("alice", "d", "write"),
        "d",
        "flag",
        json!(true),
    )
    .await?;
    let short = cli_token(&[
        "--secret", SECRET, "--user", "eve", "--doc", "d", "--role", "read", "--ttl", "2s",
    ])?;
    let claims = tandem_server::access::token::verify(
        &tandem_server::infra::config::Secret::new(SECRET)?,
        &short,
        unix_now(),
    )?;
    let mut s = stream(&server, "d", &short).await?;
    let event = until_closed(&mut s).await?;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    assert_eq!(event.data, json!({"code": 4401, "reason": "token expired"}));
    let exp_ms = claims.exp * 1000;
    println!("expiry at {exp_ms} ms, stream ended at {at_ms} ms");
    assert!(at_ms >= exp_ms, "ended {} ms early", exp_ms - at_ms);
    assert!(at_ms < exp_ms + 1000, "ended {} ms late", at_ms - exp_ms);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_count_against_max_connections() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("stream-admission"), &["--max-connections", "2"]).await?;
    let r = http(server.addr, "PUT", "/docs/d/fields/x", &[], b"1").await?;
    assert_eq!(r.status, 200);
    let _first = stream(&server, "d", "dev").await?;
    let _second = stream(&server, "d", "dev").await?;
    let third = SseClient::connect(server.addr, "/docs/d/events", &[]).await?;
    assert_eq!(third.status, 503);
    // WebSockets share the same slots.
    let ws = tandem_tests::handshake_refusal(&format!("{}/d", server.ws_base())).await?;
    assert_eq!(ws.0, 503);
    Ok(())
}
