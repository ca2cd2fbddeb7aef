//! `GET /ws/{doc}`: the y-websocket protocol over a WebSocket.
//!
//! The handler authenticates (token in `?token=` or `Authorization: Bearer`), upgrades, and
//! attaches the connection to the document's owner task. One `select!` loop then serves the
//! connection: it hands received frames to the document (waiting when it is busy), drains the
//! connection's bounded queue (several frames per flush), pings every 15 s and closes after 30 s
//! without hearing from the client. `?tandem=1` asks for tandem's extension
//! messages (durability acks, conditional field writes).
//!
//! # Refusals and closes
//!
//! - Before the upgrade, over the per-IP connection rate or `--max-connections`: HTTP 429 or
//!   503 with a JSON reason and `Retry-After: 1` (see [`crate::limits`] for why).
//! - After the upgrade, as close codes browsers can see: 4400 invalid document name, 4401
//!   missing/invalid/expired/revoked token, 4403 a token that does not reach the document.
//! - While open: 4401 "token expired" at the token's expiry, 4401 "token revoked" within
//!   moments of `POST /admin/revoke`, 1009 a frame over `--max-frame-size`, and whatever the
//!   document task decides (document size 4507, slow reader 4008, document failure 1011,
//!   shutdown 1001). Over the message rate (one token per message) the connection is slowed,
//!   not closed: its socket is not read until the bucket refills.
//!
//! A read-only token (role `read`, or a pattern that covers the document for reading only)
//! joins as an engine `Role::Read`: it syncs and sets presence; its updates are answered with
//! a permission-denied message and the connection stays open.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tandem_engine::protocol::{ConnInfo, Role};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::error::{ApiError, ErrorCode};
use super::extract::{authenticate, count_refusal};
use super::live::{self, Live, EXPIRED_REASON};
use super::state::AppState;
use crate::access::conns::Admission;
use crate::access::limits::TokenBucket;
use crate::access::token::Identity;
use crate::base::close::{code, Close};
use crate::base::limit::LimitKind;
use crate::base::name::DocName;
use crate::base::role::Access;
use crate::documents::outbox;
use crate::documents::{ConnSink, JoinError, Registry, CONNECTION_QUEUE, CONNECTION_QUEUE_BYTES};

/// Ping interval.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A connection silent for this long is closed.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;
/// How long a closed connection waits for the client to answer its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Larger outgoing messages are sent as fragments of this size. The WebSocket codec keeps its
/// write buffer at the largest size it ever held, so without fragments every connection that
/// received a large document's sync step 2 would hold a buffer that size until it closed.
const FRAGMENT: usize = 32 * 1024;

/// A WebSocket over an upgraded HTTP connection.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The `Sec-WebSocket-Key` of a well-formed WebSocket upgrade request (RFC 6455 §4.2.1).
fn websocket_key(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    (method == Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && version_13)
        .then(|| headers.get(header::SEC_WEBSOCKET_KEY).cloned())
        .flatten()
}

fn wants_extensions(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "tandem" && v != "0")
    })
}

/// Who the request is and the role it joins `doc` with, or the close that refuses it: 4400
/// for an invalid document name, 4401 for a missing, invalid, expired or revoked token, 4403
/// for a token that does not reach the document.
fn admit_to_document(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    doc: &str,
) -> Result<(Identity, Role), Close> {
    let doc = DocName::parse(doc).map_err(|e| Close::new(code::BAD_REQUEST, e.to_string()))?;
    let refused = |e: crate::access::token::AuthError| Close::new(e.close_code(), e.to_string());
    let identity = authenticate(state, headers, query).map_err(refused)?;
    if identity.check(&doc, Access::Write).is_ok() {
        return Ok((identity, Role::Write));
    }
    match identity.check(&doc, Access::Read) {
        Ok(()) => Ok((identity, Role::Read)),
        Err(e) => {
            count_refusal(state, &e);
            Err(refused(e))
        }
    }
}

/// The upgrade handler.
pub async fn handler(
    Path(doc): Path<String>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let (Some(key), Some(on_upgrade)) = (
        websocket_key(request.method(), headers),
        request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>(),
    ) else {
        return ApiError::new(
            ErrorCode::BadRequest,
            "expected a WebSocket upgrade (GET, Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)",
        )
        .into_response();
    };
    let headers = request.headers();
    let admission = match live::admit(&state, peer.ip()) {
        Ok(admission) => admission,
        Err(refused) => return refused,
    };
    let limits = &state.config.limits;
    let config = WebSocketConfig::default()
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_message_size(Some(limits.max_frame_bytes))
        // Small: every connection keeps this buffer for its whole life, and most are idle. A
        // larger frame grows it while it is read.
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024);
    // Errors are told after the upgrade, as close codes, which browsers can see.
    let verdict = admit_to_document(&state, headers, query.as_deref(), &doc);
    let extensions = wants_extensions(query.as_deref());
    let setup = Box::new(Setup {
        socket: None,
        admission,
        verdict,
        state,
        doc,
        extensions,
        peer,
    });
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, Some(config))
                .await;
        let mut setup = setup;
        setup.socket = Some(socket);
        serve(setup).await
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(Body::empty())
        .unwrap_or_default()
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
        code: close.code.into(),
        reason: Utf8Bytes::from(reason),
    }))
}

async fn refuse(mut socket: Socket, close: Close) {
    let _ = socket.send(close_message(close)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// What a connection starts with. Boxed: an async fn keeps room for its arguments as long as
/// it runs, and this future lives as long as the connection.
struct Setup {
    socket: Option<Socket>,
    /// The connection slot, held until the connection ends (refused ones included).
    admission: Admission,
    /// Who it is and what it may do, or why it is refused (told after the upgrade, as close
    /// codes, which browsers can see).
    verdict: Result<(Identity, Role), Close>,
    state: AppState,
    doc: String,
    extensions: bool,
    peer: SocketAddr,
}

impl Setup {
    fn unbox(setup: Box<Setup>) -> Setup {
        *setup
    }
}

async fn serve(setup: Box<Setup>) {
    // Unboxed by a call, so the box is freed now rather than when this future ends.
    let Setup {
        socket,
        admission,
        verdict,
        state,
        doc,
        extensions,
        peer,
    } = Setup::unbox(setup);
    let Some(socket) = socket else { return };
    let (identity, role) = match verdict {
        Ok(v) => v,
        Err(close) => {
            tracing::debug!(%peer, %doc, code = close.code, "refusing a WebSocket");
            return Box::pin(refuse(socket, close)).await;
        }
    };
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_accepted.inc();
    let (frames_tx, mut frames_rx) = outbox::outbox(CONNECTION_QUEUE, CONNECTION_QUEUE_BYTES);
    let (close_tx, mut close_rx) = oneshot::channel::<Close>();
    // Filed under the user, so a revocation closes this connection.
    let mut live = Live::register(&state, admission, &identity);
    let mut bucket = TokenBucket::new(state.config.limits.message_rate, Instant::now());
    let info = ConnInfo {
        role,
        user: Some(identity.user.clone()),
        extensions,
        // Open development mode has no real identities: presence is relayed as sent.
        name: (!state.auth.is_open()).then(|| identity.name.clone()),
        stateless: false,
    };
    let registry: &Registry = &state.registry;
    let (mut sink, mut stream) = socket.split();
    // Boxed here and below: futures of rare steps would otherwise be part of the connection's
    // future, which lives as long as the connection (idle connections cost its size each).
    let attached = match Box::pin(registry.join(
        &doc,
        info,
        ConnSink {
            frames: frames_tx,
            close: close_tx,
        },
    ))
    .await
    {
        Ok(a) => a,
        Err(e) => {
            let code = match e {
                JoinError::LoadFailed => code::DOCUMENT_FAILED,
                JoinError::ShuttingDown => code::GOING_AWAY,
            };
            let _ = Box::pin(sink.send(close_message(Close::new(code, e.to_string())))).await;
            metrics.connections.dec();
            return;
        }
    };
    tracing::debug!(%peer, %doc, user = %identity.user, conn = attached.id(), "connected");

    let start = tokio::time::Instant::now();
    let mut last_heard = start;
    // One timer for both the next ping and the token's expiry.
    let expires_at = live.expires_at();
    drop(identity);
    let mut next_ping = start + PING_EVERY;
    // Over the message rate, the socket is not read until the bucket refills: TCP pushes back
    // on the sender, whose burst arrives late but whole (never a close: stock clients would
    // not come back, and a paced sender cannot exceed the rate).
    let mut paused_until: Option<tokio::time::Instant> = None;
    let deadline = |next_ping: tokio::time::Instant, paused: Option<tokio::time::Instant>| {
        [expires_at, paused]
            .into_iter()
            .flatten()
            .fold(next_ping, tokio::time::Instant::min)
    };
    let mut timer = Box::pin(tokio::time::sleep_until(deadline(next_ping, None)));

    let close: Option<Close> = loop {
        tokio::select! {
            biased;
            close = &mut close_rx => break close.ok(),
            close = live.revoked() => break Some(close),
            frame = frames_rx.recv() => {
                let Some(frame) = frame else { break None };
                // Everything queued now goes out in one flush (up to WRITE_BATCH frames).
                let mut next = Some(frame);
                let mut fed = 0;
                let mut ok = true;
                while let Some(f) = next.take() {
                    if f.len() <= FRAGMENT {
                        ok = sink.feed(Message::Binary(f)).await.is_ok();
                    } else {
                        let last = (f.len() - 1) / FRAGMENT;
                        for (i, chunk) in f.chunks(FRAGMENT).enumerate() {
                            let opcode = if i == 0 { Data::Binary } else { Data::Continue };
                            let frame =
                                Frame::message(f.slice_ref(chunk), OpCode::Data(opcode), i == last);
                            ok = sink.feed(Message::Frame(frame)).await.is_ok();
                            if !ok {
                                break;
                            }
                        }
                    }
                    if !ok {
                        break;
                    }
                    fed += 1;
                    if fed < WRITE_BATCH {
                        next = frames_rx.try_recv();
                    }
                }
                if !ok || sink.flush().await.is_err() {
                    break None;
                }
            }
            msg = stream.next(), if paused_until.is_none() => {
                last_heard = tokio::time::Instant::now();
                let counted = matches!(&msg, Some(Ok(m)) if !matches!(m, Message::Close(_)));
                if counted {
                    let wait = bucket.take(Instant::now());
                    if !wait.is_zero() {
                        metrics.limit_breached(LimitKind::MessageRate);
                        paused_until = Some(last_heard + wait);
                        timer.as_mut().reset(deadline(next_ping, paused_until));
                    }
                }
                match msg {
                    Some(Ok(Message::Binary(data))) => {
                        if !attached.frame(data).await {
                            break Some(Close::new(code::DOCUMENT_FAILED, "document closed"));
                        }
                    }
                    Some(Ok(Message::Text(_))) => {
                        break Some(Close::new(code::TEXT_FRAME, "binary frames only"));
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => {} // ping/pong: liveness only
                    Some(Err(WsError::Capacity(_))) => {
                        metrics.limit_breached(LimitKind::FrameSize);
                        break Some(Close::new(code::FRAME_TOO_LARGE, LimitKind::FrameSize.reason()));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(%peer, cause = %e, "WebSocket read error");
                        break Some(Close::new(code::MALFORMED_FRAME, "malformed WebSocket frame"));
                    }
                }
            }
            _ = timer.as_mut() => {
                let now = tokio::time::Instant::now();
                if paused_until.is_some_and(|p| now >= p) {
                    paused_until = None;
                }
                if expires_at.is_some_and(|e| now >= e) {
                    break Some(Close::new(code::UNAUTHORIZED, EXPIRED_REASON));
                }
                if now >= next_ping {
                    if last_heard.elapsed() >= SILENCE_LIMIT {
                        break Some(Close::new(code::GOING_AWAY, "no pong within 30 s"));
                    }
                    if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                        break None;
                    }
                    next_ping = now + PING_EVERY;
                }
                timer.as_mut().reset(deadline(next_ping, paused_until));
            }
        }
    };
    Box::pin(attached.leave()).await;
    if let Some(close) = &close {
        if Box::pin(sink.send(close_message(close.clone())))
            .await
            .is_ok()
        {
            // Wait for the client's answer before dropping the socket: dropping it with input
            // still unread makes the kernel reset the connection, and a client that has not
            // read our close frame yet loses it (and its code) to the reset.
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(_)) = stream.next().await {}
            }))
            .await;
        }
    }
    let _ = Box::pin(sink.close()).await;
    drop(live);
    metrics.connections.dec();
    tracing::debug!(%peer, %doc, ?close, "disconnected");
}
