//! Harness for tandem's end-to-end tests: starts the real `tandem` binary on a free loopback
//! port and drives it with real clients — stock Yjs clients under Node (`node/client.mjs`) and
//! raw WebSocket connections.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub mod cluster;

/// How long any single wait in a test may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `tandem` binary of this build, built on first use if missing.
pub fn tandem_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>/tandem
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = profile_dir.join("tandem");
        let release = profile_dir.ends_with("release");
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "tandem-server", "--bin", "tandem"])
            .current_dir(repo_root());
        if release {
            cmd.arg("--release");
        }
        // Always ask cargo: it is quick when nothing changed, and never runs a stale binary.
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the tandem binary failed");
        bin
    })
    .clone()
}

/// A running `tandem serve` process.
pub struct Server {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts `tandem serve` on a free port with `data_dir` and extra arguments.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Result<Server> {
        Self::start_at(data_dir, "127.0.0.1:0", extra).await
    }

    async fn start_at(data_dir: &Path, addr: &str, extra: &[&str]) -> Result<Server> {
        Self::start_as(&tandem_bin(), None, data_dir, addr, extra).await
    }

    /// Starts the binary at `bin` (a copy of tandem, say) in working directory `cwd`, on a free
    /// port: for what depends on where the binary runs from (the demo's files).
    pub async fn start_from(
        bin: &Path,
        cwd: &Path,
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<Server> {
        Self::start_as(bin, Some(cwd), data_dir, "127.0.0.1:0", extra).await
    }

    async fn start_as(
        bin: &Path,
        cwd: Option<&Path>,
        data_dir: &Path,
        addr: &str,
        extra: &[&str],
    ) -> Result<Server> {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut command = Command::new(bin);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .arg("serve")
            .arg("--addr")
            .arg(addr)
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn tandem")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.trim().trim_start_matches("http://");
                    return addr
                        .parse::<SocketAddr>()
                        .map_err(|e| anyhow!("{line}: {e}"));
                }
            }
            bail!("tandem exited before listening")
        })
        .await
        .context("tandem did not start listening in time")??;
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            args,
        })
    }

    /// Restarts on the same address and data directory (after a stop or a kill).
    pub async fn restart(&mut self) -> Result<()> {
        let extra: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let addr = self.addr.to_string();
        *self = Self::start_at(&self.data_dir.clone(), &addr, &extra).await?;
        Ok(())
    }

    /// `ws://addr/ws`, the base URL a `WebsocketProvider` takes.
    pub fn ws_base(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://addr`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Sends SIGTERM and waits for a graceful exit; returns whether it exited successfully.
    pub async fn terminate(&mut self) -> Result<bool> {
        let pid = self.child.id().context("already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let exit = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .context("server did not stop in time")??;
        Ok(exit.success())
    }

    /// Resident memory of the server process, from /proc, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")
    }
}

/// Makes sure `tests/node` has its npm dependencies (installed from the registry lock file).
pub fn node_deps() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("tests/node");
        let installed = ["y-websocket", "@hocuspocus/provider"]
            .iter()
            .all(|package| dir.join("node_modules").join(package).exists());
        if !installed {
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .expect("run npm ci");
            assert!(status.success(), "npm ci in tests/node failed");
        }
        dir
    })
    .clone()
}

/// A stock Yjs client under Node, driven by JSON commands: a y-websocket provider
/// (`tests/node/client.mjs`, [`NodeClient::connect`]) or Hocuspocus providers sharing one
/// socket (`tests/node/hocuspocus.mjs`, [`NodeClient::hocuspocus`]).
pub struct NodeClient {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl NodeClient {
    fn spawn(script: &str, args: &[&str]) -> Result<NodeClient> {
        let dir = node_deps();
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn node")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(NodeClient {
            child,
            stdin,
            stdout,
        })
    }

    /// Connects a `WebsocketProvider(base, doc)`.
    pub async fn connect(base: &str, doc: &str, name: &str) -> Result<NodeClient> {
        Self::connect_with_token(base, doc, name, None).await
    }

    /// Connects a `WebsocketProvider(base, doc, { params: { token } })`.
    pub async fn connect_with_token(
        base: &str,
        doc: &str,
        name: &str,
        token: Option<&str>,
    ) -> Result<NodeClient> {
        let mut args = vec![base, doc, name];
        args.extend(token);
        let mut client = Self::spawn("client.mjs", &args)?;
        client
            .call(serde_json::json!({"op": "wait-synced"}))
            .await
            .context("client did not sync")?;
        Ok(client)
    }

    /// Starts a `HocuspocusProviderWebsocket` on `url` (`ws://addr/ws`) for providers to share;
    /// open documents on it with `{"op": "open", "doc": ..., "token": ...}` (see the script).
    pub fn hocuspocus(url: &str) -> Result<NodeClient> {
        Self::spawn("hocuspocus.mjs", &[url])
    }

    /// Sends one command and returns its reply; a reply with `ok: false` is an error.
    pub async fn call(&mut self, cmd: Value) -> Result<Value> {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let reply = tokio::time::timeout(TIMEOUT, self.stdout.next_line())
            .await
            .with_context(|| format!("no reply to {cmd}"))??
            .with_context(|| format!("client exited during {cmd}"))?;
        let reply: Value = serde_json::from_str(&reply)?;
        if reply["ok"] != Value::Bool(true) {
            bail!("{cmd} failed: {reply}");
        }
        Ok(reply)
    }

    /// Inserts text into a field.
    pub async fn insert(&mut self, field: &str, index: u32, text: &str) -> Result<()> {
        self.call(serde_json::json!({"op": "insert", "field": field, "index": index, "text": text}))
            .await
            .map(drop)
    }

    /// Waits until a field holds exactly `text`.
    pub async fn wait_text(&mut self, field: &str, text: &str) -> Result<()> {
        self.call(serde_json::json!({"op": "wait-text", "field": field, "text": text}))
            .await
            .map(drop)
    }

    /// The current text of a field.
    pub async fn text(&mut self, field: &str) -> Result<String> {
        let r = self
            .call(serde_json::json!({"op": "text", "field": field}))
            .await?;
        Ok(r["text"].as_str().unwrap_or_default().to_owned())
    }

    /// Closes the provider and waits for the process to exit.
    pub async fn close(mut self) -> Result<()> {
        self.call(serde_json::json!({"op": "close"})).await?;
        tokio::time::timeout(TIMEOUT, self.child.wait()).await??;
        Ok(())
    }
}

/// A fresh temporary directory under the target dir, removed by the caller's drop of nothing:
/// test data stays for inspection after a failure.
pub fn temp_dir(name: &str) -> PathBuf {
    let base = repo_root()
        .join("target")
        .join("e2e")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("create temp dir");
    base
}

/// A WebSocket client speaking the y-websocket protocol by hand, for tests that need exact
/// control: tandem's extension messages (acks), malformed frames, not reading at all.
pub struct RawClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// A replica fed with every update received.
    pub doc: tandem_engine::Document,
    /// Highest `(count, sid)` ack received.
    pub acked: (u64, u64),
    /// Whether received updates are applied to `doc` (off for readers that only count).
    pub apply: bool,
}

/// What a [`RawClient`] saw when its connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Close code, if a close frame arrived.
    pub code: Option<u16>,
    /// Close reason.
    pub reason: String,
}

impl RawClient {
    /// Connects to `url` (a full `ws://…/ws/doc?…` URL).
    pub async fn connect(url: &str) -> Result<RawClient> {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .context("connect timed out")??;
        Ok(RawClient {
            ws,
            doc: tandem_engine::Document::new(fastrand_id()),
            acked: (0, 0),
            apply: true,
        })
    }

    /// Sends one binary frame.
    pub async fn send(&mut self, frame: impl Into<bytes::Bytes>) -> Result<()> {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                frame.into(),
            ))
            .await?;
        Ok(())
    }

    /// Receives the next binary frame, applying sync payloads to `doc` and recording acks.
    /// Returns `Err` with the close details when the connection ends.
    pub async fn recv(&mut self) -> std::result::Result<bytes::Bytes, Closed> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = match tokio::time::timeout(TIMEOUT, self.ws.next()).await {
                Err(_) => {
                    return Err(Closed {
                        code: None,
                        reason: "timeout".into(),
                    })
                }
                Ok(m) => m,
            };
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    self.observe(&b);
                    return Ok(b);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(Closed {
                        code: None,
                        reason: e.to_string(),
                    })
                }
                None => {
                    return Err(Closed {
                        code: None,
                        reason: "connection ended".into(),
                    })
                }
            }
        }
    }

    fn observe(&mut self, frame: &[u8]) {
        use tandem_engine::wire::Reader;
        let mut r = Reader::new(frame);
        while !r.is_empty() {
            let Ok(kind) = r.var_u64() else { return };
            match kind {
                0 => {
                    let (Ok(sub), Ok(payload)) = (r.var_u64(), r.var_bytes()) else {
                        return;
                    };
                    if self.apply && (sub == 1 || sub == 2) {
                        let _ = self.doc.apply_update(payload, None);
                    }
                }
                1 => {
                    if r.var_bytes().is_err() {
                        return;
                    }
                }
                2 => {
                    let _ = (r.var_u64(), r.var_str());
                }
                100 => {
                    let Ok(sub) = r.var_u64() else { return };
                    if sub == 0 {
                        let (Ok(count), Ok(sid)) = (r.var_u64(), r.var_u64()) else {
                            return;
                        };
                        self.acked = self.acked.max((count, sid));
                    } else {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Performs the client side of the sync handshake and waits until the server's step 2
    /// has arrived.
    pub async fn sync(&mut self) -> Result<()> {
        let sv = self.doc.state_vector();
        self.send(tandem_engine::protocol::sync_frame(0, &sv))
            .await?;
        loop {
            let frame = self
                .recv()
                .await
                .map_err(|c| anyhow!("closed while syncing: {c:?}"))?;
            if frame.starts_with(&[0, 1]) {
                return Ok(());
            }
        }
    }

    /// Inserts into a text field locally and sends the update.
    pub async fn insert(&mut self, field: &str, index: u32, text: &str) -> Result<()> {
        let update = self.doc.insert("raw", field, index, text)?;
        self.send(tandem_engine::protocol::sync_frame(2, &update))
            .await
    }

    /// Reads frames until at least `count` of this connection's updates are acked.
    pub async fn wait_acked(&mut self, count: u64) -> Result<u64> {
        while self.acked.0 < count {
            self.recv()
                .await
                .map_err(|c| anyhow!("closed while waiting for acks: {c:?}"))?;
        }
        Ok(self.acked.1)
    }

    /// Reads (and applies) frames until `field` equals `text`.
    pub async fn wait_text(&mut self, field: &str, text: &str) -> Result<()> {
        while self.doc.text(field).as_deref().unwrap_or("") != text {
            self.recv()
                .await
                .map_err(|c| anyhow!("closed while waiting for text: {c:?}"))?;
        }
        Ok(())
    }

    /// Reads frames until the server closes the connection; returns how.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(c) = self.recv().await {
                return c;
            }
        }
    }
}

fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u64::from(std::process::id()) << 20) + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A plain HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_head(
    reader: &mut BufReader<tokio::net::TcpStream>,
) -> Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

/// Sends one HTTP request (`Connection: close`) and reads the whole response.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    use tokio::io::AsyncReadExt;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let mut reader = BufReader::new(stream);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    reader.get_mut().write_all(req.as_bytes()).await?;
    reader.get_mut().write_all(body).await?;
    let (status, headers) = tokio::time::timeout(TIMEOUT, read_head(&mut reader)).await??;
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, reader.read_to_end(&mut raw)).await??;
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(&raw)? } else { raw };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..end])?.trim(), 16)?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// `POST /admin/revoke {"user": user}` with an admin token minted with `secret`; returns the
/// answer (`{user, revoked_at, closed}`) after checking it is a 200.
pub async fn revoke(server: &Server, secret: &str, user: &str) -> Result<Value> {
    let admin = mint_token(secret, "root", None, "*", "admin", unix_now() - 1, 3600)?;
    let body = serde_json::json!({ "user": user }).to_string();
    let r = http(
        server.addr,
        "POST",
        "/admin/revoke",
        &[
            ("Authorization", &format!("Bearer {admin}")),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await?;
    if r.status != 200 {
        bail!("revoke answered {}: {:?}", r.status, r.json());
    }
    r.json()
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// `event:` (default `message`).
    pub event: String,
    /// `id:`.
    pub id: Option<String>,
    /// `data:` parsed as JSON (`Null` when absent or not JSON).
    pub data: Value,
}

/// A Server-Sent Events consumer over a raw HTTP/1.1 connection.
pub struct SseClient {
    reader: BufReader<tokio::net::TcpStream>,
    chunked: bool,
    chunk_left: usize,
    buf: String,
    /// The response status.
    pub status: u16,
}

impl SseClient {
    /// Opens `path` with extra request headers (e.g. `Last-Event-ID`).
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseClient> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let mut reader = BufReader::new(stream);
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        reader.get_mut().write_all(req.as_bytes()).await?;
        let (status, headers) = tokio::time::timeout(TIMEOUT, read_head(&mut reader)).await??;
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        Ok(SseClient {
            reader,
            chunked,
            chunk_left: 0,
            buf: String::new(),
            status,
        })
    }

    async fn read_more(&mut self) -> Result<()> {
        use tokio::io::AsyncReadExt;
        if self.chunked && self.chunk_left == 0 {
            let mut line = String::new();
            loop {
                line.clear();
                if self.reader.read_line(&mut line).await? == 0 {
                    bail!("stream ended");
                }
                if !line.trim().is_empty() {
                    break;
                }
            }
            self.chunk_left = usize::from_str_radix(line.trim(), 16)?;
            if self.chunk_left == 0 {
                bail!("stream ended");
            }
        }
        let want = if self.chunked {
            self.chunk_left.min(8192)
        } else {
            8192
        };
        let mut tmp = vec![0u8; want];
        let n = self.reader.read(&mut tmp).await?;
        if n == 0 {
            bail!("stream ended");
        }
        if self.chunked {
            self.chunk_left -= n;
        }
        self.buf.push_str(&String::from_utf8_lossy(&tmp[..n]));
        Ok(())
    }

    /// The next event (comments and retry-only blocks are skipped).
    pub async fn next(&mut self) -> Result<SseEvent> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                while let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut event = SseEvent {
                        event: "message".into(),
                        id: None,
                        data: Value::Null,
                    };
                    let mut data = String::new();
                    let mut any = false;
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            event.event = v.trim().to_owned();
                            any = true;
                        } else if let Some(v) = line.strip_prefix("id:") {
                            event.id = Some(v.trim().to_owned());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.strip_prefix(' ').unwrap_or(v));
                            any = true;
                        }
                    }
                    if any {
                        event.data = serde_json::from_str(&data).unwrap_or(Value::Null);
                        return Ok(event);
                    }
                }
                self.read_more().await?;
            }
        })
        .await
        .context("no SSE event in time")?
    }
}

impl RawClient {
    /// Writes a register locally (clock = now) and sends the update.
    pub async fn set_field(&mut self, name: &str, value: Value) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        self.doc.set_time(now);
        let (_, update) = self.doc.set_field("raw", name, Some(value))?;
        self.send(tandem_engine::protocol::sync_frame(2, &update))
            .await
    }

    /// Sends a tandem conditional register write and waits for its result:
    /// `(accepted, version, current value)`.
    pub async fn set_field_if(
        &mut self,
        request: u64,
        name: &str,
        expected: &str,
        value: &Value,
    ) -> Result<(bool, String, Value)> {
        use tandem_engine::wire::{Reader, Writer};
        let mut w = Writer::new();
        w.var_u64(100)
            .var_u64(1)
            .var_u64(request)
            .var_u64(1)
            .var_str(name)
            .var_str(expected)
            .var_str(&value.to_string());
        self.send(w.finish()).await?;
        loop {
            let frame = self
                .recv()
                .await
                .map_err(|c| anyhow!("closed while waiting for a field result: {c:?}"))?;
            if !frame.starts_with(&[100, 2]) {
                continue;
            }
            let mut r = Reader::new(&frame[2..]);
            let req = r.var_u64()?;
            if req != request {
                continue;
            }
            let accepted = r.var_u64()? == 1;
            let version = r.var_str()?.to_owned();
            let value: Value = serde_json::from_str(r.var_str()?)?;
            return Ok((accepted, version, value));
        }
    }
}

// --- Auth, limits and hostile-input helpers -------------------------------------------------

/// Signs a token with `secret` for `user` (display name `name`) on `doc` with `role`
/// (`read`, `write` or `admin`), issued at unix second `iat` and valid for `ttl_secs`.
pub fn mint_token(
    secret: &str,
    user: &str,
    name: Option<&str>,
    doc: &str,
    role: &str,
    iat: u64,
    ttl_secs: u64,
) -> Result<String> {
    use tandem_server::access::token::{mint, Claims};
    use tandem_server::infra::config::Secret;
    let claims = Claims {
        sub: user.to_owned(),
        name: name.map(str::to_owned),
        doc: doc.to_owned(),
        role: role.parse()?,
        exp: iat + ttl_secs,
        iat,
    };
    Ok(mint(&Secret::new(secret)?, &claims)?)
}

/// Runs `tandem token` and returns the token it prints.
pub fn cli_token(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(tandem_bin())
        .arg("token")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "tandem token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The current time as unix seconds.
pub fn unix_now() -> u64 {
    tandem_server::base::clock::unix_now()
}

/// The server's `/metrics` text.
pub async fn metrics_text(server: &Server) -> Result<String> {
    let r = http(server.addr, "GET", "/metrics", &[], b"").await?;
    Ok(String::from_utf8(r.body)?)
}

/// A counter or gauge from `/metrics` (`name` with its labels, e.g.
/// `tandem_limit_breaches_total{limit="frame_size"}`); 0 when absent.
pub async fn metric(server: &Server, name: &str) -> Result<u64> {
    let text = metrics_text(server).await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0))
}

/// `tandem_limit_breaches_total{limit="<label>"}`.
pub async fn limit_breaches(server: &Server, label: &str) -> Result<u64> {
    metric(
        server,
        &format!("tandem_limit_breaches_total{{limit=\"{label}\"}}"),
    )
    .await
}

/// How a WebSocket handshake to `url` was refused before the upgrade: the HTTP status and the
/// body. `Err` when the upgrade succeeded.
pub async fn handshake_refusal(url: &str) -> Result<(u16, Vec<u8>)> {
    use tokio_tungstenite::tungstenite::Error;
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .context("connect timed out")?
    {
        Ok(_) => bail!("the handshake was accepted"),
        Err(Error::Http(response)) => Ok((
            response.status().as_u16(),
            response.body().clone().unwrap_or_default(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The entries `(client id, clock, state JSON)` of every awareness message in `frame`.
pub fn awareness_entries(frame: &[u8]) -> Vec<(u64, u32, String)> {
    use tandem_engine::wire::Reader;
    let mut out = Vec::new();
    let mut r = Reader::new(frame);
    while !r.is_empty() {
        let Ok(kind) = r.var_u64() else { break };
        match kind {
            0 => {
                if r.var_u64().is_err() || r.var_bytes().is_err() {
                    break;
                }
            }
            1 => {
                let Ok(payload) = r.var_bytes() else { break };
                let mut p = Reader::new(payload);
                let Ok(n) = p.var_u64() else { break };
                for _ in 0..n {
                    let (Ok(id), Ok(clock), Ok(json)) = (p.var_u64(), p.var_u32(), p.var_str())
                    else {
                        break;
                    };
                    out.push((id, clock, json.to_owned()));
                }
            }
            2 => {
                let _ = (r.var_u64(), r.var_str());
            }
            _ => break,
        }
    }
    out
}

/// An awareness message setting `state` (JSON) for `client` at `clock`.
pub fn awareness_message(client: u64, clock: u32, state: &str) -> bytes::Bytes {
    tandem_engine::protocol::awareness_frame(&[(
        client,
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock,
            json: state.into(),
        },
    )])
}

/// The reason of the first permission-denied message (`[2, 0, reason]`) in `frame`.
pub fn permission_denied(frame: &[u8]) -> Option<String> {
    use tandem_engine::wire::Reader;
    let mut r = Reader::new(frame);
    while !r.is_empty() {
        match r.var_u64().ok()? {
            0 => {
                r.var_u64().ok()?;
                r.var_bytes().ok()?;
            }
            1 => {
                r.var_bytes().ok()?;
            }
            2 => {
                let sub = r.var_u64().ok()?;
                let reason = r.var_str().ok()?;
                if sub == 0 {
                    return Some(reason.to_owned());
                }
            }
            _ => return None,
        }
    }
    None
}

impl RawClient {
    /// Reads frames until one satisfies `pred`; returns it.
    pub async fn recv_until(
        &mut self,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> Result<bytes::Bytes> {
        loop {
            let frame = self
                .recv()
                .await
                .map_err(|c| anyhow!("closed while waiting: {c:?}"))?;
            if pred(&frame) {
                return Ok(frame);
            }
        }
    }
}
