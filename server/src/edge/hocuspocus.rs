//! `GET /ws`: the Hocuspocus dialect over a WebSocket, for `@hocuspocus/provider` (Tiptap's
//! collaboration provider) pointed at `ws://host/ws`.
//!
//! One socket carries several documents, each named in every message (the codec is
//! [`tandem_engine::hocuspocus`]). Each document is authorized on its own, with the token of
//! its Auth message (an empty one falls back to the upgrade request's `Authorization: Bearer`
//! or `?token=`), and then joins the document's owner task through
//! [`Registry::join`](crate::documents::Registry::join) exactly as a y-websocket connection
//! does: frames are translated here, at the edge (the name stripped on the way in and written
//! on the way out), so the document layer and the engine stay dialect-free. Awareness,
//! presence, registers, event streams and every limit behave as for the other dialect.
//!
//! # A document on a socket
//!
//! - Messages before its Auth wait (at most [`WAITING_FRAMES`] frames and
//!   [`WAITING_BYTES`] bytes for the whole socket; beyond, the socket closes with 4400), as a
//!   provider whose token function is slow may send its step 1 and edits first.
//! - Auth: the token must reach the document (`Role::Write`, answered
//!   `Authenticated("read-write")`, or `Role::Read`, answered `Authenticated("readonly")`: the
//!   provider's `authorizedScope`). Otherwise `PermissionDenied(reason)` (the provider fires
//!   `onAuthenticationFailed`) and the document's messages are dropped until another Auth; the
//!   socket's other documents go on. Another Auth for an open document authorizes it afresh.
//! - Updates are answered with SyncStatus once durable: the engine's durability acks become
//!   one SyncStatus(true) per update, so the provider's `unsyncedChanges` reaching 0 means
//!   stored. A read-only document's updates get SyncStatus(false) (not applied) unless they
//!   hold nothing new (SyncStatus(true), as Hocuspocus answers a viewer's step 2).
//! - Stateless and BroadcastStateless are both relayed, as Stateless, to the document's other
//!   Hocuspocus connections (y-websocket clients have no such message; tandem runs no server
//!   hooks that a plain Stateless would go to).
//! - Close: the document leaves the socket (answered with Close, as Hocuspocus does).
//! - At most [`MAX_DOCUMENTS`] documents per socket; more are refused with PermissionDenied.
//!
//! # Ends
//!
//! The 3.x provider reconnects after any close, whatever the code, and then authorizes and
//! syncs every document again; a document it is refused, it gives up on. So:
//! - What a retry fixes closes the whole socket with the y-websocket close code (document
//!   failure 1011, slow reader 4008, document size 4507, shutdown 1001, silence, frame size
//!   1009): the provider comes back and resyncs.
//! - What it does not (token expired or revoked, a protocol violation in the document's
//!   messages, which would be 4401 or 4400 on `/ws/{doc}`) refuses that document alone with
//!   PermissionDenied(reason).
//! - Bytes that do not start with a document name close the socket with 4400.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tandem_engine::hocuspocus::{self, ClientFrame, Message, Outbound, Reply, Scope};
use tandem_engine::protocol::Role;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::extract::{authenticate_token, conn_info, document_role, token_from_request};
use super::live::Grant;
use super::socket::{self, Pace, Received, Socket, Tick, WRITE_BATCH};
use super::state::AppState;
use crate::access::conns::Admission;
use crate::base::close::{code, Close};
use crate::base::name::DocName;
use crate::documents::refusal::protocol_error_close;
use crate::documents::{outbox, Attached, JoinError, CONNECTION_QUEUE, CONNECTION_QUEUE_BYTES};

/// Documents one socket may have open, waiting or refused at once.
pub const MAX_DOCUMENTS: usize = 64;
/// Frames a socket may send for documents not authorized yet, all documents together.
pub const WAITING_FRAMES: usize = 256;
/// Bytes of those frames, all documents together.
pub const WAITING_BYTES: usize = 1 << 20;

/// The upgrade handler.
pub async fn handler(
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
    mut request: Request,
) -> Response {
    let (upgrade, admission) = match socket::admit(&state, peer, &mut request) {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let fallback = token_from_request(authorization, query.as_deref()).map(|t| t.into_owned());
    let limits = state.config.limits.clone();
    let setup = Box::new((admission, state, fallback, peer, upgrade.deflate()));
    upgrade.accept(&limits, move |socket| serve(setup, socket))
}

/// What the owner task and the token of one open document tell its socket.
enum Event {
    /// A frame the room sent (y-websocket and tandem messages), to translate.
    Frame(Bytes),
    /// The document closed this connection (`None`: it is gone without saying why).
    Closed(Option<Close>),
    /// The document's token expired or was revoked.
    Ended(Close),
}

/// The events of one open document, tagged with its name and the key of this opening.
type DocEvents = Pin<Box<dyn futures_util::Stream<Item = (Arc<str>, u64, Event)> + Send>>;

/// What a document's events come from. The stream ends after its last event, or at once when
/// the document leaves the socket (`left`'s sender is dropped).
struct Source {
    /// Frames from the document, and its close.
    frames: outbox::Receiver,
    grant: Grant,
    left: oneshot::Receiver<()>,
    done: bool,
}

fn doc_events(name: Arc<str>, key: u64, source: Source) -> DocEvents {
    Box::pin(futures_util::stream::unfold(source, move |mut s| {
        let name = name.clone();
        async move {
            if s.done {
                return None;
            }
            let event = loop {
                break tokio::select! {
                    biased;
                    _ = &mut s.left => return None,
                    close = s.grant.ended() => {
                        s.done = true;
                        Event::Ended(close)
                    }
                    next = s.frames.next() => match next {
                        outbox::Next::Frame(frame) => Event::Frame(frame),
                        // Only a connection whose document writes to it asks for flushes.
                        outbox::Next::Flush => continue,
                        outbox::Next::Closed(close) => {
                            s.done = true;
                            Event::Closed(close)
                        }
                    },
                };
            };
            Some(((name, key, event), s))
        }
    }))
}

/// A document named on the socket.
enum Doc {
    /// No Auth yet: the frames for its room that came first, in order.
    Waiting(Vec<Bytes>),
    /// Authorized and joined.
    Open(Open),
    /// Refused (PermissionDenied sent): its messages are dropped until another Auth.
    Refused,
}

struct Open {
    /// Tells this opening's events apart from an earlier opening's.
    key: u64,
    attached: Attached,
    outbound: Outbound,
    /// Dropped when the document leaves the socket: its event stream ends.
    _left: oneshot::Sender<()>,
}

/// One socket's documents and what it has to write.
struct Connection {
    state: AppState,
    /// The upgrade request's token, for Auth messages with an empty one.
    fallback: Option<String>,
    docs: HashMap<String, Doc>,
    events: SelectAll<DocEvents>,
    next_key: u64,
    /// Frames and bytes waiting in [`Doc::Waiting`] queues.
    waiting: (usize, usize),
    /// Frames to write, in order.
    out: Vec<Bytes>,
    /// Whether permessage-deflate was negotiated.
    deflate: bool,
}

impl Connection {
    fn reply(&mut self, name: &str, reply: Reply<'_>) {
        self.out.push(Bytes::from(hocuspocus::encode(name, reply)));
    }

    /// Refuses `name` on this socket: PermissionDenied, and its messages are dropped until
    /// another Auth. The others go on.
    fn deny(&mut self, name: &str, reason: &str) {
        tracing::debug!(doc = %name, reason, "refusing a document on a Hocuspocus socket");
        self.reply(name, Reply::PermissionDenied(reason));
        self.forget(name);
        if self.docs.len() < MAX_DOCUMENTS {
            self.docs.insert(name.to_owned(), Doc::Refused);
        }
    }

    /// Drops what the socket holds for `name` (an open document leaves its room).
    fn forget(&mut self, name: &str) -> Option<Open> {
        match self.docs.remove(name)? {
            Doc::Waiting(queue) => {
                self.waiting.0 -= queue.len();
                self.waiting.1 -= queue.iter().map(Bytes::len).sum::<usize>();
                None
            }
            Doc::Open(open) => Some(open),
            Doc::Refused => None,
        }
    }

    /// Handles one frame from the client. `Err` closes the socket.
    async fn frame(&mut self, frame: Bytes) -> Result<(), Close> {
        let (name, body) = match ClientFrame::parse(&frame) {
            Ok(ClientFrame::Document { name, body }) => (name, body),
            Ok(ClientFrame::Pong) => return Ok(()),
            Err(e) => return Err(Close::new(code::BAD_REQUEST, e.close_reason())),
        };
        let message = match Message::parse(body) {
            Ok(message) => message,
            Err(e) => {
                let close = protocol_error_close(&e, &self.state.metrics);
                if let Some(open) = self.forget(name) {
                    Box::pin(open.attached.leave()).await;
                }
                self.deny(name, &close.reason);
                return Ok(());
            }
        };
        let room = message.room_frame().map(|f| match f {
            std::borrow::Cow::Borrowed(b) => frame.slice_ref(b),
            std::borrow::Cow::Owned(v) => Bytes::from(v),
        });
        match (message, room) {
            (Message::Token(token), _) => {
                // Another Auth for an open document authorizes it afresh.
                if matches!(self.docs.get(name), Some(Doc::Open(_))) {
                    if let Some(open) = self.forget(name) {
                        Box::pin(open.attached.leave()).await;
                    }
                }
                Box::pin(self.authorize(name, token)).await
            }
            (Message::Close, _) => {
                if let Some(open) = self.forget(name) {
                    Box::pin(open.attached.leave()).await;
                    self.reply(name, Reply::Close("provider_initiated"));
                }
                Ok(())
            }
            (_, Some(room)) => self.hand_over(name, room).await,
            (_, None) => Ok(()),
        }
    }

    /// Hands a frame for `name`'s room over, or keeps it until the document's Auth.
    async fn hand_over(&mut self, name: &str, room: Bytes) -> Result<(), Close> {
        if let Some(Doc::Open(open)) = self.docs.get(name) {
            return match open.attached.frame(room).await {
                true => Ok(()),
                false => Err(Close::new(code::DOCUMENT_FAILED, "document closed")),
            };
        }
        let has_room = self.docs.len() < MAX_DOCUMENTS;
        match self.docs.get_mut(name) {
            Some(Doc::Open(_) | Doc::Refused) => {}
            Some(Doc::Waiting(queue)) => {
                self.waiting.0 += 1;
                self.waiting.1 += room.len();
                queue.push(room);
            }
            None if has_room => {
                self.waiting.0 += 1;
                self.waiting.1 += room.len();
                self.docs.insert(name.to_owned(), Doc::Waiting(vec![room]));
            }
            // No room to remember it: dropped (its Auth will be refused too).
            None => {}
        }
        if self.waiting.0 > WAITING_FRAMES || self.waiting.1 > WAITING_BYTES {
            return Err(Close::new(
                code::BAD_REQUEST,
                "too many messages before authentication",
            ));
        }
        Ok(())
    }

    /// Authorizes `name` with `token` and joins its room, then hands over what waited.
    async fn authorize(&mut self, name: &str, token: &str) -> Result<(), Close> {
        let queued = match self.docs.remove(name) {
            Some(Doc::Waiting(queue)) => {
                self.waiting.0 -= queue.len();
                self.waiting.1 -= queue.iter().map(Bytes::len).sum::<usize>();
                queue
            }
            _ => Vec::new(),
        };
        if self.docs.len() >= MAX_DOCUMENTS {
            let reason = format!("at most {MAX_DOCUMENTS} documents on one connection");
            self.reply(name, Reply::PermissionDenied(&reason));
            return Ok(());
        }
        let state = self.state.clone();
        let state = &state;
        let token = Some(token)
            .filter(|t| !t.is_empty())
            .or(self.fallback.as_deref());
        let verdict = DocName::parse(name)
            .map_err(|e| e.to_string())
            .and_then(|doc| {
                let identity = authenticate_token(state, token).map_err(|e| e.to_string())?;
                let role = document_role(state, &identity, &doc).map_err(|e| e.to_string())?;
                Ok((identity, role))
            });
        let (identity, role) = match verdict {
            Ok(v) => v,
            Err(reason) => {
                self.deny(name, &reason);
                return Ok(());
            }
        };
        let scope = match role {
            Role::Write => Scope::ReadWrite,
            Role::Read => Scope::ReadOnly,
        };
        // Before the room's greeting, as Hocuspocus does.
        self.reply(name, Reply::Authenticated(scope));
        let (frames_tx, frames_rx) = outbox::outbox(CONNECTION_QUEUE, CONNECTION_QUEUE_BYTES);
        // Filed under the user before joining, so a revocation reaches it.
        let grant = Grant::register(state, &identity);
        let info = conn_info(state, &identity, role, true, true);
        let attached = match Box::pin(state.registry.join(name, info, frames_tx)).await {
            Ok(attached) => attached,
            Err(e) => {
                let code = match e {
                    JoinError::LoadFailed => code::DOCUMENT_FAILED,
                    JoinError::Unavailable => code::STORAGE_UNAVAILABLE,
                    JoinError::ShuttingDown => code::GOING_AWAY,
                };
                return Err(Close::new(code, e.to_string()));
            }
        };
        tracing::debug!(doc = %name, user = %identity.user, conn = attached.id(), "joined over Hocuspocus");
        for frame in queued {
            if !attached.frame(frame).await {
                return Err(Close::new(code::DOCUMENT_FAILED, "document closed"));
            }
        }
        let (left, left_rx) = oneshot::channel();
        let key = self.next_key;
        self.next_key += 1;
        let source = Source {
            frames: frames_rx,
            grant,
            left: left_rx,
            done: false,
        };
        self.events.push(doc_events(Arc::from(name), key, source));
        self.docs.insert(
            name.to_owned(),
            Doc::Open(Open {
                key,
                attached,
                outbound: Outbound::new(name),
                _left: left,
            }),
        );
        Ok(())
    }

    /// Handles an event of an open document. `Err` closes the socket.
    async fn event(&mut self, name: &str, key: u64, event: Event) -> Result<(), Close> {
        let Some(Doc::Open(open)) = self.docs.get_mut(name) else {
            return Ok(());
        };
        if open.key != key {
            // An earlier opening of the document, which has left since.
            return Ok(());
        }
        match event {
            Event::Frame(frame) => {
                let mut frames = Vec::new();
                if let Err(e) = open.outbound.translate(&frame, &mut frames) {
                    tracing::warn!(doc = %name, cause = %e, "a room frame has no Hocuspocus form");
                }
                self.out.extend(frames.into_iter().map(Bytes::from));
                Ok(())
            }
            Event::Closed(None) => Err(Close::new(code::DOCUMENT_FAILED, "document closed")),
            // A retry fixes it: the provider reconnects and resyncs every document.
            Event::Closed(Some(close)) if close.stock_client_reconnects() => Err(close),
            Event::Closed(Some(close)) | Event::Ended(close) => {
                if let Some(open) = self.forget(name) {
                    Box::pin(open.attached.leave()).await;
                }
                self.deny(name, &close.reason);
                Ok(())
            }
        }
    }

    /// Writes what is waiting. `false` when the socket is gone.
    async fn flush(&mut self, socket: &mut Socket) -> bool {
        while !self.out.is_empty() {
            let n = self.out.len().min(WRITE_BATCH);
            if !socket::send_batch(
                socket,
                self.out.drain(..n),
                self.deflate,
                &self.state.metrics,
            )
            .await
            {
                return false;
            }
        }
        true
    }

    /// Leaves every open document.
    async fn leave_all(&mut self) {
        for (_, doc) in self.docs.drain() {
            if let Doc::Open(open) = doc {
                Box::pin(open.attached.leave()).await;
            }
        }
    }
}

/// The admission, the state, the token of the upgrade request, the peer, and whether
/// permessage-deflate was negotiated.
type Setup = (Admission, AppState, Option<String>, SocketAddr, bool);

async fn serve(setup: Box<Setup>, mut socket: Socket) {
    let (admission, state, fallback, peer, deflate) = *setup;
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_accepted.inc();
    let mut shutdown = Box::pin(state.shutdown.wait());
    // Tokens come per document, each with its own expiry (see `event`).
    let mut pace = Pace::new(state.config.limits.message_rate, None);
    let mut conn = Connection {
        state,
        fallback,
        docs: HashMap::new(),
        events: SelectAll::new(),
        next_key: 0,
        waiting: (0, 0),
        out: Vec::new(),
        deflate,
    };
    tracing::debug!(%peer, "Hocuspocus socket open");

    let close: Option<Close> = loop {
        let step = tokio::select! {
            biased;
            () = &mut shutdown => Err(Some(Close::new(code::GOING_AWAY, "server shutting down"))),
            event = conn.events.next(), if !conn.events.is_empty() => {
                let Some((name, key, event)) = event else { continue };
                let mut result = conn.event(&name, key, event).await;
                // Everything ready now goes out in one flush.
                while result.is_ok() && conn.out.len() < WRITE_BATCH {
                    let Some(Some((name, key, event))) = conn.events.next().now_or_never() else {
                        break;
                    };
                    result = conn.event(&name, key, event).await;
                }
                result.map_err(Some)
            }
            msg = socket.next(), if pace.reading() => {
                pace.heard(&msg, &metrics);
                match Received::of(msg, &metrics, peer) {
                    Received::Frame(frame) => conn.frame(frame).await.map_err(Some),
                    Received::Liveness => Ok(()),
                    Received::End(close) => Err(close),
                }
            }
            () = pace.tick() => match pace.fired() {
                Tick::Idle => Ok(()),
                Tick::Ping => match socket.send(WsMessage::Ping(Bytes::new())).await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(None),
                },
                Tick::Close(close) => Err(Some(close)),
            },
        };
        if !conn.flush(&mut socket).await {
            break None;
        }
        if let Err(close) = step {
            break close;
        }
    };
    conn.leave_all().await;
    socket::finish(&mut socket, close.clone()).await;
    drop(admission);
    metrics.connections.dec();
    tracing::debug!(%peer, ?close, "Hocuspocus socket closed");
}
