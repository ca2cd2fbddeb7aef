//! Tokens, roles, live enforcement and presence identity, against the real binary.
//!
//! Every test starts its own server with `--auth-secret` and mints its tokens with the same
//! secret (through the library, or through `tandem token` where the command line is the point).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_tests::{
    awareness_entries, awareness_message, cli_token, http, metric, mint_token, permission_denied,
    revoke, temp_dir, unix_now, RawClient, Server,
};

const SECRET: &str = "end-to-end auth secret, 32 bytes or more";

async fn secured(name: &str) -> anyhow::Result<Server> {
    Server::start(&temp_dir(name), &["--auth-secret", SECRET]).await
}

/// A token valid for an hour, issued a second ago (so a revocation in this second covers it).
fn token(user: &str, doc: &str, role: &str) -> String {
    mint_token(SECRET, user, None, doc, role, unix_now() - 1, 3600).expect("mint")
}

fn ws_url(server: &Server, doc: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{}/{doc}?token={t}", server.ws_base()),
        None => format!("{}/{doc}", server.ws_base()),
    }
}

async fn writer(server: &Server, user: &str, doc: &str) -> anyhow::Result<RawClient> {
    let mut c = RawClient::connect(&ws_url(server, doc, Some(&token(user, doc, "write")))).await?;
    c.sync().await?;
    Ok(c)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_refused_with_4401_and_http_401() -> anyhow::Result<()> {
    let server = secured("auth-no-token").await?;
    for token in [None, Some("garbage"), Some("a.b.c")] {
        let mut c = RawClient::connect(&ws_url(&server, "doc", token)).await?;
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(4401), "{token:?}: {closed:?}");
        assert!(!closed.reason.is_empty());
    }
    // A token signed with another secret is no better.
    let forged = mint_token("not the secret", "u", None, "*", "admin", unix_now(), 60)?;
    let mut c = RawClient::connect(&ws_url(&server, "doc", Some(&forged))).await?;
    assert_eq!(c.closed().await.code, Some(4401));

    for (method, path) in [
        ("GET", "/docs/doc"),
        ("GET", "/docs/doc/events"),
        ("POST", "/docs/doc/update"),
        ("POST", "/admin/revoke"),
    ] {
        let r = http(server.addr, method, path, &[], b"{}").await?;
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(r.json()?["error"], "unauthorized", "{method} {path}");
    }
    let r = http(
        server.addr,
        "GET",
        "/docs/doc",
        &[("Authorization", &bearer(&forged))],
        b"",
    )
    .await?;
    assert_eq!(r.status, 401);
    assert!(metric(&server, "tandem_auth_unauthorized_total").await? >= 9);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_document_is_refused_with_4403_and_http_403() -> anyhow::Result<()> {
    let server = secured("auth-wrong-doc").await?;
    let team = token("ada", "team:*", "write");
    let mut c = RawClient::connect(&ws_url(&server, "private", Some(&team))).await?;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(4403), "{closed:?}");

    let auth = bearer(&team);
    for (method, path) in [
        ("GET", "/docs/private"),
        ("GET", "/docs/private/events"),
        ("POST", "/docs/private/update"),
        ("POST", "/admin/revoke"),
    ] {
        let r = http(
            server.addr,
            method,
            path,
            &[("Authorization", &auth)],
            b"{}",
        )
        .await?;
        assert_eq!(r.status, 403, "{method} {path}");
        assert_eq!(r.json()?["error"], "forbidden", "{method} {path}");
    }
    // The same token opens the documents its pattern matches.
    let mut ok = RawClient::connect(&ws_url(&server, "team:1", Some(&team))).await?;
    ok.sync().await?;
    assert!(metric(&server, "tandem_auth_forbidden_total").await? >= 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_sent_with_a_read_token_are_refused_and_the_sender_told() -> anyhow::Result<()> {
    let server = secured("auth-read-only").await?;
    let doc = "notes";
    let mut w = writer(&server, "ada", doc).await?;
    let read = token("rex", doc, "read");
    let mut r = RawClient::connect(&ws_url(&server, doc, Some(&read))).await?;
    r.sync().await?;

    r.insert("t", 0, "evil").await?;
    let frame = r.recv_until(|f| permission_denied(f).is_some()).await?;
    let reason = permission_denied(&frame).unwrap_or_default();
    assert!(reason.contains("read-only"), "{reason}");
    // Still open: it receives what a writer sends.
    w.insert("t", 0, "ok").await?;
    r.recv_until(|f| f.starts_with(&[0, 2])).await?;
    // And the refused text is nowhere: a fresh replica syncs to exactly the writer's text.
    let mut fresh = RawClient::connect(&ws_url(&server, doc, Some(&read))).await?;
    fresh.sync().await?;
    fresh.wait_text("t", "ok").await?;
    let snapshot = http(
        server.addr,
        "GET",
        &format!("/docs/{doc}"),
        &[("Authorization", &bearer(&read))],
        b"",
    )
    .await?;
    assert_eq!(snapshot.status, 200);
    assert_eq!(snapshot.json()?["texts"]["t"], "ok");

    // Over HTTP a read token cannot write either.
    let update = tandem_engine::Document::new(5).insert("x", "t", 0, "evil")?;
    let r2 = http(
        server.addr,
        "POST",
        &format!("/docs/{doc}/update"),
        &[("Authorization", &bearer(&read))],
        &update,
    )
    .await?;
    assert_eq!(r2.status, 403);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_closes_its_connection_at_expiry() -> anyhow::Result<()> {
    let server = secured("auth-expiry").await?;
    let token = cli_token(&[
        "--secret", SECRET, "--user", "eve", "--doc", "d", "--role", "write", "--ttl", "2s",
    ])?;
    let claims = tandem_server::access::token::verify(
        &tandem_server::infra::config::Secret::new(SECRET)?,
        &token,
        unix_now(),
    )?;
    assert_eq!(claims.exp - claims.iat, 2);
    let mut c = RawClient::connect(&ws_url(&server, "d", Some(&token))).await?;
    c.sync().await?;
    let closed = c.closed().await;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    assert_eq!(closed.code, Some(4401), "{closed:?}");
    assert_eq!(closed.reason, "token expired");
    let exp_ms = claims.exp * 1000;
    println!("expiry at {exp_ms} ms, closed at {at_ms} ms");
    assert!(at_ms >= exp_ms, "closed {} ms early", exp_ms - at_ms);
    assert!(at_ms < exp_ms + 1000, "closed {} ms late", at_ms - exp_ms);
    // And it cannot come back.
    let mut again = RawClient::connect(&ws_url(&server, "d", Some(&token))).await?;
    assert_eq!(again.closed().await.code, Some(4401));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_the_users_connections_within_100_ms() -> anyhow::Result<()> {
    let server = secured("auth-revoke").await?;
    let old = token("mallory", "*", "write");
    let mut victims = Vec::new();
    for doc in ["a", "b"] {
        let mut c = RawClient::connect(&ws_url(&server, doc, Some(&old))).await?;
        c.sync().await?;
        victims.push(c);
    }
    let mut alice = writer(&server, "alice", "a").await?;
    let mut bob = writer(&server, "bob", "a").await?;

    // Each victim waits for its close in its own task and notes when it arrived.
    let waiters: Vec<_> = victims
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let closed = c.closed().await;
                (closed, Instant::now())
            })
        })
        .collect();
    let started = Instant::now();
    let body = revoke(&server, SECRET, "mallory").await?;
    assert_eq!(body["user"], "mallory");
    for waiter in waiters {
        let (closed, at) = waiter.await?;
        let took = at - started;
        println!("websocket closed {took:?} after the revocation was sent: {closed:?}");
        assert_eq!(closed.code, Some(4401), "{closed:?}");
        assert_eq!(closed.reason, "token revoked");
        assert!(took < Duration::from_millis(100), "took {took:?}");
    }
    assert_eq!(body["closed"], 2);

    // The old token is refused from now on, everywhere.
    let mut back = RawClient::connect(&ws_url(&server, "a", Some(&old))).await?;
    let closed = back.closed().await;
    assert_eq!(closed.code, Some(4401));
    let r = http(
        server.addr,
        "GET",
        "/docs/a",
        &[("Authorization", &bearer(&old))],
        b"",
    )
    .await?;
    assert_eq!(r.status, 401);
    // A token issued after the revocation works.
    let revoked_at = body["revoked_at"].as_u64().unwrap_or_default();
    let fresh = mint_token(SECRET, "mallory", None, "*", "write", revoked_at + 1, 3600)?;
    let mut c = RawClient::connect(&ws_url(&server, "a", Some(&fresh))).await?;
    c.sync().await?;
    // Everyone else kept working throughout.
    alice.insert("t", 0, "still here").await?;
    bob.wait_text("t", "still here").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awareness_state_claiming_another_user_is_corrected() -> anyhow::Result<()> {
    let server = secured("auth-presence").await?;
    let doc = "room";
    let alice_token = mint_token(
        SECRET,
        "alice",
        Some("Alice"),
        doc,
        "write",
        unix_now(),
        3600,
    )?;
    let mut alice = RawClient::connect(&ws_url(&server, doc, Some(&alice_token))).await?;
    alice.sync().await?;
    let mut observer = writer(&server, "olga", doc).await?;

    let claim = json!({"user": {"id": "bob", "name": "Bob", "color": "#ff0000"}, "typing": "t"});
    alice
        .send(awareness_message(4242, 1, &claim.to_string()))
        .await?;
    let expected =
        json!({"user": {"id": "alice", "name": "Alice", "color": "#ff0000"}, "typing": "t"});
    let state_of = |frame: &[u8], clock: u32| -> Option<Value> {
        awareness_entries(frame)
            .into_iter()
            .find(|(id, c, _)| *id == 4242 && *c == clock)
            .and_then(|(_, _, json)| serde_json::from_str(&json).ok())
    };
    let frame = observer.recv_until(|f| state_of(f, 1).is_some()).await?;
    assert_eq!(state_of(&frame, 1), Some(expected.clone()));
    // The sender's own echo carries the corrected state too.
    let frame = alice.recv_until(|f| state_of(f, 1).is_some()).await?;
    assert_eq!(state_of(&frame, 1), Some(expected.clone()));
    // So does the greeting of someone joining later.
    let mut late =
        RawClient::connect(&ws_url(&server, doc, Some(&token("lee", doc, "read")))).await?;
    let frame = late.recv_until(|f| state_of(f, 1).is_some()).await?;
    assert_eq!(state_of(&frame, 1), Some(expected));

    // A state that is not an object is wrapped under the real identity.
    alice.send(awareness_message(4242, 2, "\"Bob\"")).await?;
    let frame = observer.recv_until(|f| state_of(f, 2).is_some()).await?;
    assert_eq!(
        state_of(&frame, 2),
        Some(json!({"user": {"id": "alice", "name": "Alice"}, "value": "Bob"}))
    );
    // Without a name in the token, the name is the user id.
    let mut plain = writer(&server, "pat", doc).await?;
    plain
        .send(awareness_message(5151, 1, r#"{"user":{"name":"Alice"}}"#))
        .await?;
    let frame = observer
        .recv_until(|f| awareness_entries(f).iter().any(|(id, _, _)| *id == 5151))
        .await?;
    let (_, _, json) = awareness_entries(&frame)
        .into_iter()
        .find(|(id, _, _)| *id == 5151)
        .expect("entry");
    let state: Value = serde_json::from_str(&json)?;
    assert_eq!(state["user"], json!({"id": "pat", "name": "pat"}));
    Ok(())
}
