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
//!   503 with a JSON reason and `Retry-After: 1` (see [`crate::access::limits`] for why).
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
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tandem_engine::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

use super::extract::{authenticate, document_role};
use super::live::Live;
use super::socket::{self, Pace, Received, Socket, Tick};
use super::state::AppState;
use super::wire::{DirectWs, Wire, WireHandle};
use crate::access::conns::Admission;
use crate::access::token::Identity;
use crate::base::close::{code, Close};
use crate::base::name::DocName;
use crate::documents::outbox;
use crate::documents::{Attached, JoinError, Registry, CONNECTION_QUEUE, CONNECTION_QUEUE_BYTES};
use crate::infra::metrics::Metrics;

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
    let role = document_role(state, &identity, &doc).map_err(refused)?;
    Ok((identity, role))
}

/// The upgrade handler.
pub async fn handler(
    Path(doc): Path<String>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
    mut request: Request,
) -> Response {
    let (upgrade, admission) = match socket::admit(&state, peer, &mut request) {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    // Errors are told after the upgrade, as close codes, which browsers can see.
    let verdict = admit_to_document(&state, request.headers(), query.as_deref(), &doc);
    let extensions = wants_extensions(query.as_deref());
    let limits = state.config.limits.clone();
    let wire = request
        .extensions()
        .get::<WireHandle>()
        .map(|w| w.0.clone());
    let setup = Box::new(Setup {
        socket: None,
        wire,
        deflate: upgrade.deflate(),
        admission,
        verdict,
        state,
        doc,
        extensions,
        peer,
    });
    upgrade.accept(&limits, move |socket| {
        let mut setup = setup;
        setup.socket = Some(socket);
        serve(setup)
    })
}

async fn refuse(mut socket: Socket, close: Close) {
    let _ = socket.send(socket::close_message(close)).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// What a connection starts with. Boxed: an async fn keeps room for its arguments as long as
/// it runs, and this future lives as long as the connection.
struct Setup {
    socket: Option<Socket>,
    /// The TCP connection under the socket, which the document writes small frames to itself
    /// (absent when the router is served without [`super::serve`]).
    wire: Option<Arc<Wire>>,
    /// Whether permessage-deflate was negotiated.
    deflate: bool,
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
    // Two futures: the setup's, boxed and freed once the connection is attached, and the
    // loop's, which lives as long as the connection and holds only what the loop uses (a
    // single async fn keeps room for every local it ever borrowed, for as long as it runs).
    let Some(conn) = Box::pin(attach(setup)).await else {
        return;
    };
    run(conn).await
}

/// An attached connection: what its loop uses.
struct Conn {
    socket: Socket,
    /// Frames from the document, and its close.
    frames_rx: outbox::Receiver,
    live: Live,
    attached: Attached,
    pace: Pace,
    metrics: Metrics,
    peer: SocketAddr,
    /// Whether permessage-deflate was negotiated.
    deflate: bool,
}

impl Conn {
    fn unbox(conn: Box<Conn>) -> Conn {
        *conn
    }
}

/// Refuses the connection, or attaches it to its document.
async fn attach(setup: Box<Setup>) -> Option<Box<Conn>> {
    // Unboxed by a call, so the box is freed now rather than when this future ends.
    let Setup {
        socket,
        wire,
        deflate,
        admission,
        verdict,
        state,
        doc,
        extensions,
        peer,
    } = Setup::unbox(setup);
    let socket = socket?;
    let (identity, role) = match verdict {
        Ok(v) => v,
        Err(close) => {
            tracing::debug!(%peer, %doc, code = close.code, "refusing a WebSocket");
            refuse(socket, close).await;
            return None;
        }
    };
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_accepted.inc();
    let (frames_tx, frames_rx) = outbox::outbox(CONNECTION_QUEUE, CONNECTION_QUEUE_BYTES);
    let frames_tx = match wire {
        Some(wire) => {
            frames_tx.with_direct(Box::new(DirectWs::new(wire, socket::direct_limit(deflate))))
        }
        None => frames_tx,
    };
    // Filed under the user, so a revocation closes this connection.
    let live = Live::register(&state, admission, &identity);
    let info = super::extract::conn_info(&state, &identity, role, extensions, false);
    let registry: &Registry = &state.registry;
    let mut socket = socket;
    let attached = match registry.join(&doc, info, frames_tx).await {
        Ok(a) => a,
        Err(e) => {
            let code = match e {
                JoinError::LoadFailed => code::DOCUMENT_FAILED,
                JoinError::Unavailable => code::STORAGE_UNAVAILABLE,
                JoinError::ShuttingDown => code::GOING_AWAY,
            };
            let close = socket::close_message(Close::new(code, e.to_string()));
            let _ = socket.send(close).await;
            metrics.connections.dec();
            return None;
        }
    };
    tracing::debug!(%peer, %doc, user = %identity.user, conn = attached.id(), "connected");
    // One timer for the next ping, the token's expiry and the end of a pause.
    let pace = Pace::new(state.config.limits.message_rate, live.expires_at());
    Some(Box::new(Conn {
        socket,
        frames_rx,
        live,
        attached,
        pace,
        metrics,
        peer,
        deflate,
    }))
}

/// The connection's loop: frames in to the document, queued frames out, the timer,
/// revocation; then leaving and closing.
async fn run(conn: Box<Conn>) {
    let Conn {
        mut socket,
        mut frames_rx,
        live,
        attached,
        mut pace,
        metrics,
        peer,
        deflate,
    } = Conn::unbox(conn);
    let mut live = live;
    let close: Option<Close> = loop {
        tokio::select! {
            biased;
            close = live.revoked() => break Some(close),
            next = frames_rx.next() => {
                let frame = match next {
                    outbox::Next::Frame(frame) => frame,
                    // The document wrote frames the socket took only in part.
                    outbox::Next::Flush => {
                        if socket.flush().await.is_err() {
                            break None;
                        }
                        continue;
                    }
                    outbox::Next::Closed(close) => break close,
                };
                // Everything queued now goes out in one flush (up to WRITE_BATCH frames).
                let more = std::iter::from_fn(|| frames_rx.try_recv());
                // Boxed: one allocation per flush (next to a system call), and the future
                // would otherwise be part of the loop's, which every idle connection keeps.
                let batch = std::iter::once(frame).chain(more);
                if !Box::pin(socket::send_batch(&mut socket, batch, deflate, &metrics)).await {
                    break None;
                }
                // Written: the document may write to the socket itself again.
                frames_rx.sent();
            }
            msg = socket.next(), if pace.reading() => {
                pace.heard(&msg, &metrics);
                match Received::of(msg, &metrics, peer) {
                    Received::Frame(data) => {
                        if !attached.frame(data).await {
                            break Some(Close::new(code::DOCUMENT_FAILED, "document closed"));
                        }
                    }
                    Received::Liveness => {}
                    Received::End(close) => break close,
                }
            }
            () = pace.tick() => match pace.fired() {
                Tick::Idle => {}
                Tick::Ping => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break None;
                    }
                }
                Tick::Close(close) => break Some(close),
            },
        }
    };
    // From here the document writes nothing more to the socket itself: no data frame may
    // follow the close frame `finish` sends (or answers with).
    drop(frames_rx);
    // Boxed: leaving and closing happen once, at the end.
    Box::pin(async move {
        let conn = attached.id();
        attached.leave().await;
        socket::finish(&mut socket, close.clone()).await;
        drop(live);
        metrics.connections.dec();
        tracing::debug!(%peer, conn, ?close, "disconnected");
    })
    .await
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn returns.
    fn future_size<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection keeps its task's future: the loop's locals and whatever its
    /// `select!` holds, not the setup's (688 bytes in a debug build when this was written,
    /// against 1,608 for the setup's future alone).
    #[test]
    fn an_idle_connection_keeps_a_small_future() {
        let serve = future_size(super::serve);
        let attach = future_size(super::attach);
        assert!(
            serve <= 1024,
            "the connection's future grew to {serve} bytes"
        );
        assert!(
            serve < attach,
            "the connection's future ({serve} bytes) holds the setup's ({attach} bytes)"
        );
    }
}
