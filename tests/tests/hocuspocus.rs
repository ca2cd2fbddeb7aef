//! Stock Hocuspocus providers (`@hocuspocus/provider` 3.x under Node, `tests/node/hocuspocus.mjs`)
//! against the real binary, on the y-websocket port: `ws://addr/ws` speaks their dialect.

use serde_json::{json, Value};
use tandem_engine::hocuspocus::{self, Reply, Scope};
use tandem_tests::{
    http, metric, mint_token, revoke, temp_dir, unix_now, NodeClient, RawClient, Server,
};

const SECRET: &str = "end-to-end hocuspocus secret, 32 bytes or more";

async fn secured(name: &str) -> anyhow::Result<Server> {
    Server::start(&temp_dir(name), &["--auth-secret", SECRET]).await
}

/// A token valid for an hour, issued a second ago (so a revocation in this second covers it).
fn token(user: &str, doc: &str, role: &str) -> String {
    mint_token(SECRET, user, None, doc, role, unix_now() - 1, 3600).expect("mint")
}

/// Hocuspocus providers in one Node process, sharing one `HocuspocusProviderWebsocket`.
struct Providers(NodeClient);

impl Providers {
    fn start(server: &Server) -> anyhow::Result<Providers> {
        Ok(Providers(NodeClient::hocuspocus(&server.ws_base())?))
    }

    /// Runs `op` on `doc` with the other arguments in `args` (a JSON object).
    async fn on(&mut self, op: &str, doc: &str, args: Value) -> anyhow::Result<Value> {
        let mut cmd = json!({"op": op, "doc": doc});
        if let (Some(cmd), Value::Object(args)) = (cmd.as_object_mut(), args) {
            cmd.extend(args);
        }
        self.0.call(cmd).await
    }

    /// Opens `doc` with `token`: the reply has `scope` once authenticated, `failed` once refused.
    async fn open(&mut self, doc: &str, token: &str) -> anyhow::Result<Value> {
        self.on("open", doc, json!({"token": token})).await
    }

    /// Opens `doc`, expects `scope`, and waits for the first sync.
    async fn open_synced(&mut self, doc: &str, token: &str, scope: &str) -> anyhow::Result<()> {
        let opened = self.open(doc, token).await?;
        anyhow::ensure!(opened["scope"] == scope, "{doc}: {opened}");
        self.on("wait-synced", doc, json!({})).await.map(drop)
    }

    async fn insert(
        &mut self,
        doc: &str,
        field: &str,
        index: u32,
        text: &str,
    ) -> anyhow::Result<()> {
        let args = json!({"field": field, "index": index, "text": text});
        self.on("insert", doc, args).await.map(drop)
    }

    async fn wait_text(&mut self, doc: &str, field: &str, text: &str) -> anyhow::Result<()> {
        let args = json!({"field": field, "text": text});
        self.on("wait-text", doc, args).await.map(drop)
    }

    /// Waits until the provider's `unsyncedChanges` is `count`.
    async fn wait_unsynced(&mut self, doc: &str, count: u64) -> anyhow::Result<()> {
        self.on("wait-unsynced", doc, json!({"count": count}))
            .await
            .map(drop)
    }

    async fn status(&mut self, doc: &str) -> anyhow::Result<Value> {
        self.on("status", doc, json!({})).await
    }

    /// WebSockets the process has opened so far.
    async fn sockets(&mut self) -> anyhow::Result<u64> {
        let r = self.0.call(json!({"op": "sockets"})).await?;
        r["opened"].as_u64().ok_or_else(|| anyhow::anyhow!("{r}"))
    }
}

/// The texts of `doc` through the HTTP API.
async fn texts(server: &Server, doc: &str, token: Option<&str>) -> anyhow::Result<Value> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let r = http(server.addr, "GET", &format!("/docs/{doc}"), &headers, b"").await?;
    anyhow::ensure!(r.status == 200, "GET /docs/{doc}: {}", r.status);
    Ok(r.json()?["texts"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_and_a_stock_client_co_edit_one_document() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("hp-co-edit"), &[]).await?;
    let mut alice = Providers::start(&server)?;
    let mut bob = Providers::start(&server)?;
    // Open development mode: any token (here none) is accepted.
    alice.open_synced("notes", "", "read-write").await?;
    bob.open_synced("notes", "", "read-write").await?;
    let mut carol = NodeClient::connect(&server.ws_base(), "notes", "carol").await?;

    alice.insert("notes", "description", 0, "Hello").await?;
    bob.wait_text("notes", "description", "Hello").await?;
    carol.wait_text("description", "Hello").await?;
    carol.insert("description", 5, " world").await?;
    bob.insert("notes", "description", 0, ">> ").await?;
    for p in [&mut alice, &mut bob] {
        p.wait_text("notes", "description", ">> Hello world")
            .await?;
        // Every update of theirs was acknowledged once stored.
        p.wait_unsynced("notes", 0).await?;
    }
    carol.wait_text("description", ">> Hello world").await?;

    // Presence crosses dialects...
    for (p, name) in [(&mut alice, "Alice"), (&mut bob, "Bob")] {
        let state = json!({"user": {"name": name}});
        p.on("set-awareness", "notes", json!({"state": state}))
            .await?;
    }
    let state = json!({"op": "set-awareness", "state": {"user": {"name": "Carol"}}});
    carol.call(state).await?;
    carol.call(json!({"op": "wait-states", "count": 3})).await?;
    let states = alice
        .on("wait-states", "notes", json!({"count": 3}))
        .await?;
    assert!(states.to_string().contains("Carol"), "{states}");
    // ...and leaves with the provider (a Close message for the document).
    alice.on("leave", "notes", json!({})).await?;
    carol.call(json!({"op": "wait-states", "count": 2})).await?;

    // A stateless message reaches the document's other Hocuspocus connection.
    let mut dave = Providers::start(&server)?;
    dave.open_synced("notes", "", "read-write").await?;
    bob.on("stateless", "notes", json!({"payload": "{\"cursor\":3}"}))
        .await?;
    let got = dave.on("wait-stateless", "notes", json!({})).await?;
    assert_eq!(got["payload"], "{\"cursor\":3}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_on_one_socket_are_authorized_one_by_one() -> anyhow::Result<()> {
    let server = secured("hp-two-docs").await?;
    let mut p = Providers::start(&server)?;
    p.open_synced("plan", &token("ada", "plan", "write"), "read-write")
        .await?;
    p.open_synced("notes", &token("ada", "notes", "write"), "read-write")
        .await?;
    // A token for another document, and a bad token: onAuthenticationFailed, for those alone.
    let other = p.open("secret", &token("ada", "plan", "write")).await?;
    let reason = other["failed"].as_str().unwrap_or_default();
    assert!(reason.contains("does not grant access"), "{other}");
    let bad = p.open("drafts", "not-a-token").await?;
    assert!(
        bad["failed"].as_str().is_some_and(|r| !r.is_empty()),
        "{bad}"
    );

    // The documents it may open go on, over the one socket.
    p.insert("plan", "t", 0, "plan text").await?;
    p.insert("notes", "t", 0, "notes text").await?;
    p.wait_unsynced("plan", 0).await?;
    p.wait_unsynced("notes", 0).await?;
    let admin = token("root", "*", "admin");
    assert_eq!(
        texts(&server, "plan", Some(&admin)).await?["t"],
        "plan text"
    );
    assert_eq!(
        texts(&server, "notes", Some(&admin)).await?["t"],
        "notes text"
    );
    assert_eq!(p.sockets().await?, 1);
    assert_eq!(metric(&server, "tandem_connections").await?, 1);

    // Revoking the user of one document's token refuses that document alone.
    p.open_synced("shared", &token("mallory", "shared", "write"), "read-write")
        .await?;
    revoke(&server, SECRET, "mallory").await?;
    let failed = p.on("wait-failed", "shared", json!({})).await?;
    assert_eq!(failed["reason"], "token revoked");
    p.insert("plan", "t", 0, "> ").await?;
    p.wait_unsynced("plan", 0).await?;
    assert_eq!(
        texts(&server, "plan", Some(&admin)).await?["t"],
        "> plan text"
    );
    assert_eq!(p.sockets().await?, 1, "the socket stayed open");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_providers_edits_are_refused_and_reported() -> anyhow::Result<()> {
    let server = secured("hp-read-only").await?;
    let mut writer = Providers::start(&server)?;
    writer
        .open_synced("notes", &token("ada", "notes", "write"), "read-write")
        .await?;
    writer.insert("notes", "t", 0, "ok").await?;
    writer.wait_unsynced("notes", 0).await?;

    let mut reader = Providers::start(&server)?;
    reader
        .open_synced("notes", &token("rex", "notes", "read"), "readonly")
        .await?;
    reader.wait_text("notes", "t", "ok").await?;
    // Its sync held nothing new: acknowledged, nothing refused.
    reader.wait_unsynced("notes", 0).await?;
    assert_eq!(reader.status("notes").await?["refused"], 0);

    // An edit is answered SyncStatus(false) and stays unsynced.
    reader.insert("notes", "t", 0, "evil ").await?;
    reader
        .on("wait-refused", "notes", json!({"count": 1}))
        .await?;
    let status = reader.status("notes").await?;
    assert_eq!(status["unsynced"], 1, "{status}");
    assert_eq!(status["scope"], "readonly");
    // Nobody else sees it: the writer's next edit arrives, the refused one never does.
    writer.insert("notes", "t", 2, "!").await?;
    reader.wait_text("notes", "t", "evil ok!").await?;
    assert_eq!(
        writer.on("text", "notes", json!({"field": "t"})).await?["text"],
        "ok!"
    );
    let admin = token("root", "*", "admin");
    assert_eq!(texts(&server, "notes", Some(&admin)).await?["t"], "ok!");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unsynced_changes_means_stored_even_after_kill_9() -> anyhow::Result<()> {
    let mut server = Server::start(&temp_dir("hp-kill9"), &[]).await?;
    let mut p = Providers::start(&server)?;
    p.open_synced("log", "", "read-write").await?;
    let mut expected = String::new();
    for i in 0..30u32 {
        let piece = format!("{i},");
        p.insert("log", "t", expected.len() as u32, &piece).await?;
        expected.push_str(&piece);
    }
    p.wait_unsynced("log", 0).await?;
    server.kill9().await?;
    // Gone before it could reconnect and send its edits again.
    drop(p);
    server.restart().await?;
    assert_eq!(texts(&server, "log", None).await?["t"], expected.as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_refuses_its_document_or_closes_the_socket() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("hp-hostile"), &[]).await?;
    let mut c = RawClient::connect(&server.ws_base()).await?;
    c.apply = false;
    let frame = |name: &str, body: &[u8]| {
        let mut w = tandem_engine::wire::Writer::new();
        w.var_str(name).raw(body);
        w.finish()
    };
    c.send(frame("a", &[2, 0, 0])).await?;
    let authenticated = hocuspocus::encode("a", Reply::Authenticated(Scope::ReadWrite));
    c.recv_until(|f| f == authenticated.as_slice()).await?;
    // An unknown sync step in a document's message refuses that document...
    c.send(frame("a", &[0, 9, 0])).await?;
    let denied = c
        .recv_until(|f| f.starts_with(&frame("a", &[2, 1])))
        .await?;
    assert!(String::from_utf8_lossy(&denied).contains("unknown sync message"));
    // ...and bytes that name no document close the socket.
    c.send(vec![0xff]).await?;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(4400), "{closed:?}");
    Ok(())
}
