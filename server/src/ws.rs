//! `GET /ws/{doc}`: the y-websocket protocol over a WebSocket.
//!
//! The handler authenticates (token in `?token=` or `Authorization: Bearer`), upgrades, and
//! attaches the connection to the document's owner task. Two loops then run per connection:
//! the reader hands frames to the document (waiting when it is busy), the writer drains the
//! connection's bounded queue, several frames per flush. The connection is pinged every 15 s and
//! closed after 30 s without hearing from the client. `?tandem=1` asks for tandem's extension
//! messages (durability acks, conditional field writes).
//!
//! # Refusals and closes
//!
//! - Before the upgrade, over the per-IP connection rate or `--max-connections`: HTTP 429 or
//!   503 with a JSON reason and `Retry-After: 1` (see [`crate::limits`] for why).
//! - After the upgrade, as close codes browsers can see: 4400 invalid document name, 4401
//!   missing/invalid/expired/revoked token, 4403 a token that does not reach the document.
//! - While open: 4401 "token expired" at the token's expiry, 4401 "token revoked" within
//!   moments of `POST /admin/revoke`, 4429 over the message rate (one token per message),
//!   1009 a frame over `--max-frame-size`, and whatever the document task decides (limits in
//!   the room, slow reader 4008, document failure 1011, shutdown 1001).
//!
//! A read-only token (role `read`, or a pattern that covers the document for reading only)
//! joins as an engine `Role::Read`: it syncs and sets presence; its updates are answered with
//! a permission-denied message and the connection stays open.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tandem_engine::protocol::{ConnInfo, Role};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, Access, AuthError, Identity};
use crate::conns::Admission;
use crate::docs::{Close, ConnSink, Registry, CONNECTION_QUEUE};
use crate::http::{ApiError, AppState};
use crate::limits::{LimitKind, TokenBucket};

/// Ping interval.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A connection silent for this long is closed.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;
/// How long a closed connection waits for the client to answer its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Checks a document name taken from a URL: 1 to 256 characters, no control characters.
pub fn valid_doc_name(doc: &str) -> bool {
    !doc.is_empty()
        && doc.len() <= 1024
        && doc.chars().count() <= 256
        && !doc.chars().any(char::is_control)
}

fn wants_extensions(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "tandem" && v != "0")
    })
}

/// The upgrade handler.
pub async fn handler(
    ws: WebSocketUpgrade,
    Path(doc): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
) -> Response {
    let admission = match state
        .auth
        .admit(peer.ip(), &state.config.limits, Instant::now())
    {
        Ok(admission) => admission,
        Err(kind) => {
            state.metrics.limit_breached(kind);
            tracing::debug!(%peer, limit = kind.as_str(), "refusing a WebSocket handshake");
            return ([(header::RETRY_AFTER, "1")], ApiError::from(kind)).into_response();
        }
    };
    let limits = &state.config.limits;
    let ws = ws
        .max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024);
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = auth::token_from_request(authorization, query.as_deref()).map(|t| t.into_owned());
    let now = auth::unix_now();
    // Errors are told after the upgrade, as close codes, which browsers can see.
    let verdict: Result<(Identity, Role), Close> = if !valid_doc_name(&doc) {
        Err(Close::new(4400, "invalid document name"))
    } else {
        let refused = |e: AuthError| {
            if e.is_forbidden() {
                state.metrics.auth_forbidden.inc();
            } else {
                state.metrics.auth_unauthorized.inc();
            }
            Close::new(e.close_code(), e.to_string())
        };
        match state.auth.authenticate(token.as_deref(), now) {
            Err(e) => Err(refused(e)),
            Ok(identity) => {
                if identity.check(&doc, Access::Write).is_ok() {
                    Ok((identity, Role::Write))
                } else {
                    match identity.check(&doc, Access::Read) {
                        Ok(()) => Ok((identity, Role::Read)),
                        Err(e) => Err(refused(e)),
                    }
                }
            }
        }
    };
    let extensions = wants_extensions(query.as_deref());
    ws.on_upgrade(move |socket| async move {
        // The slot is held until the connection ends, refused ones included.
        let _admission: Admission = admission;
        match verdict {
            Err(close) => {
                tracing::debug!(%peer, %doc, code = close.code, "refusing a WebSocket");
                refuse(socket, close).await
            }
            Ok((identity, role)) => {
                serve(socket, state, doc, identity, role, extensions, peer).await
            }
        }
    })
}

fn close_message(close: Close) -> Message {
    let mut reason = close.reason;
    if reason.len() > 120 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Message::Close(Some(CloseFrame {
        code: close.code,
        reason: Utf8Bytes::from(reason),
    }))
}

async fn refuse(mut socket: WebSocket, close: Close) {
    let _ = socket.send(close_message(close)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

async fn serve(
    socket: WebSocket,
    state: AppState,
    doc: String,
    identity: Identity,
    role: Role,
    extensions: bool,
    peer: SocketAddr,
) {
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_accepted.inc();
    let (frames_tx, mut frames_rx) = mpsc::channel::<Bytes>(CONNECTION_QUEUE);
    let (close_tx, mut close_rx) = oneshot::channel::<Close>();
    // Filed under the user, so a revocation closes this connection.
    let (revoked_tx, revoked_rx) = oneshot::channel::<Close>();
    let _registration = state.auth.register(&identity, revoked_tx);
    let revoked = async move {
        match revoked_rx.await {
            Ok(close) => close,
            // The registry dropped the handle without firing it: nothing will.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::pin!(revoked);
    let mut bucket = TokenBucket::new(state.config.limits.message_rate, Instant::now());
    let info = ConnInfo {
        role,
        user: Some(identity.user.clone()),
        extensions,
        // Open development mode has no real identities: presence is relayed as sent.
        name: (!state.auth.is_open()).then(|| identity.name.clone()),
    };
    let registry: &Registry = &state.registry;
    let (mut sink, mut stream) = socket.split();
    let attached = match registry
        .join(
            &doc,
            info,
            ConnSink {
                frames: frames_tx,
                close: close_tx,
            },
        )
        .await
    {
        Ok(a) => a,
        Err(e) => {
            let code = match e {
                crate::docs::JoinError::LoadFailed => 1011,
                crate::docs::JoinError::ShuttingDown => 1001,
            };
            let _ = sink
                .send(close_message(Close::new(code, e.to_string())))
                .await;
            metrics.connections.dec();
            return;
        }
    };
    tracing::debug!(%peer, %doc, user = %identity.user, conn = attached.id(), "connected");

    let shutdown = state.shutdown.wait();
    tokio::pin!(shutdown);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = tokio::time::Instant::now();
    let expires_in = identity.expires_at.map(|exp| {
        Duration::from_millis(
            exp.saturating_mul(1000)
                .saturating_sub(crate::docs::now_ms()),
        )
    });
    let token_expired = async move {
        match expires_in {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(token_expired);
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);

    let close: Option<Close> = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break Some(Close::new(1001, "server shutting down")),
            close = &mut close_rx => break close.ok(),
            close = &mut revoked => break Some(close),
            _ = &mut token_expired => break Some(Close::new(auth::CLOSE_UNAUTHORIZED, "token expired")),
            frame = frames_rx.recv() => {
                let Some(frame) = frame else { break None };
                batch.push(frame);
                while batch.len() < WRITE_BATCH {
                    match frames_rx.try_recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                let mut ok = true;
                for f in batch.drain(..) {
                    if sink.feed(Message::Binary(f)).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok || sink.flush().await.is_err() {
                    batch.clear();
                    break None;
                }
            }
            msg = stream.next() => {
                last_heard = tokio::time::Instant::now();
                let counted = matches!(&msg, Some(Ok(m)) if !matches!(m, Message::Close(_)));
                if counted && !bucket.try_take(Instant::now()) {
                    metrics.limit_breached(LimitKind::MessageRate);
                    break Some(LimitKind::MessageRate.close());
                }
                match msg {
                    Some(Ok(Message::Binary(data))) => {
                        if !attached.frame(data).await {
                            break Some(Close::new(1011, "document closed"));
                        }
                    }
                    Some(Ok(Message::Text(_))) => {
                        break Some(Close::new(1003, "binary frames only"));
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => {} // ping/pong: liveness only
                    Some(Err(e)) => {
                        // The codec's capacity error (`--max-frame-size`) is only told apart
                        // by its text: axum does not expose tungstenite's error type.
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("too big") {
                            metrics.limit_breached(LimitKind::FrameSize);
                            break Some(LimitKind::FrameSize.close());
                        }
                        break Some(Close::new(1002, "malformed WebSocket frame"));
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= SILENCE_LIMIT {
                    break Some(Close::new(1001, "no pong within 30 s"));
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
        }
    };
    attached.leave().await;
    if let Some(close) = &close {
        if sink.send(close_message(close.clone())).await.is_ok() {
            // Wait for the client's answer before dropping the socket: dropping it with input
            // still unread makes the kernel reset the connection, and a client that has not
            // read our close frame yet loses it (and its code) to the reset.
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
    }
    let _ = sink.close().await;
    metrics.connections.dec();
    tracing::debug!(%peer, %doc, ?close, "disconnected");
}
