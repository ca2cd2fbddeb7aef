//! WebSocket plumbing both dialects share ([`super::ws`], y-websocket, and
//! [`super::hocuspocus`]): the upgrade on hyper's upgraded connection with tokio-tungstenite,
//! the codec's limits, permessage-deflate (see [`super::deflate`]), batched writes (large
//! messages compressed when it was negotiated, and as fragments), close frames, what a read
//! means, and [`Pace`], the timers and message rate of one connection's loop.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::deflate::{self, Inflow, COMPRESS_OVER};
use super::error::{ApiError, ErrorCode};
use super::live::{self, EXPIRED_REASON};
use super::state::AppState;
use super::wire::frame_header;
use super::wsio::LeanIo;
use crate::access::conns::Admission;
use crate::access::limits::TokenBucket;
use crate::base::close::{code, Close};
use crate::base::limit::LimitKind;
use crate::infra::config::{Limits, Rate};
use crate::infra::metrics::Metrics;

/// Ping interval.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A connection silent for this long is closed.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// Frames written per flush at most.
pub const WRITE_BATCH: usize = 64;
/// The codec's initial read buffer, and the most it asks of the socket layer per read.
/// Frames larger than this grow the buffer (to their size, for as long as the connection
/// lasts); presence and keystroke frames fit.
const CODEC_READ_BUFFER: usize = 256;
/// How long a closed connection waits for the client to answer its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Larger outgoing messages are sent as fragments of this size. The WebSocket codec keeps its
/// write buffer at the largest size it ever held, so without fragments every connection that
/// received a large document's sync step 2 would hold a buffer that size until it closed.
const FRAGMENT: usize = 32 * 1024;

/// A WebSocket over an upgraded HTTP connection.
pub type Socket = WebSocketStream<LeanIo<TokioIo<hyper::upgrade::Upgraded>>>;
/// The longest header of a frame the server sends (unmasked, 64-bit length).
const MAX_SERVER_HEADER: usize = 10;

/// The largest frame a document may write to a connection's socket itself (see
/// [`super::wire::DirectWs`]): larger ones go through [`send_batch`], which compresses them
/// (with `deflate`) or sends them as fragments.
pub fn direct_limit(deflate: bool) -> usize {
    if deflate {
        COMPRESS_OVER
    } else {
        FRAGMENT
    }
}

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

/// Takes a WebSocket upgrade out of `request` and admits the connection from `peer` (see
/// [`live::admit`]), or answers the refusal: 400 for a request that is no upgrade, 429 or 503
/// over the admission limits.
#[allow(clippy::result_large_err)]
pub fn admit(
    state: &AppState,
    peer: SocketAddr,
    request: &mut Request,
) -> Result<(Upgrade, Admission), Response> {
    let upgrade = Upgrade::from_request(request)?;
    let admission = live::admit(state, peer.ip())?;
    Ok((upgrade, admission))
}

/// A well-formed WebSocket upgrade request, not answered yet.
pub struct Upgrade {
    key: HeaderValue,
    /// The `Sec-WebSocket-Extensions` answer when the client offered permessage-deflate.
    deflate: Option<&'static str>,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

impl Upgrade {
    /// Takes the upgrade out of `request`, or answers 400 when it is not a WebSocket upgrade.
    #[allow(clippy::result_large_err)]
    pub fn from_request(request: &mut Request) -> Result<Upgrade, Response> {
        let key = websocket_key(request.method(), request.headers());
        let deflate = deflate::negotiate(
            request
                .headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let on_upgrade = request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>();
        match (key, on_upgrade) {
            (Some(key), Some(on_upgrade)) => Ok(Upgrade {
                key,
                deflate,
                on_upgrade,
            }),
            _ => Err(ApiError::new(
                ErrorCode::BadRequest,
                "expected a WebSocket upgrade (GET, Connection: Upgrade, Upgrade: websocket, \
                 Sec-WebSocket-Version: 13). The WebSocket routes are /ws/{doc} for y-websocket \
                 (new WebsocketProvider('ws://host:8787/ws', 'doc-name', ydoc)) and /ws for \
                 Hocuspocus (new HocuspocusProvider({ url: 'ws://host:8787/ws', name }))",
            )
            .into_response()),
        }
    }

    /// Answers 101 Switching Protocols and, once the connection is upgraded, runs `serve` on
    /// the socket in a task of its own. The codec refuses frames and messages over
    /// `--max-frame-size`. Its buffers last as long as the connection and never shrink, and
    /// most connections are idle: its read buffer starts at [`CODEC_READ_BUFFER`] (a larger
    /// frame grows it) and it writes every frame through at once, so its write buffer holds
    /// one frame; [`LeanIo`] underneath reads in large chunks and batches writes until a flush,
    /// in buffers it frees once empty. With permessage-deflate negotiated (see
    /// [`Upgrade::deflate`]), [`LeanIo`] inflates the client's compressed messages, within the
    /// same limit, before the codec reads them.
    pub fn accept<S, F>(self, limits: &Limits, serve: S) -> Response
    where
        S: FnOnce(Socket) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .max_frame_size(Some(limits.max_frame_bytes))
            .max_message_size(Some(limits.max_frame_bytes))
            .read_buffer_size(CODEC_READ_BUFFER)
            .write_buffer_size(0);
        let on_upgrade = self.on_upgrade;
        let inflow = self.deflate.map(|_| Inflow::new(limits.max_frame_bytes));
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = TokioIo::new(upgraded);
            let io = match inflow {
                Some(inflow) => LeanIo::inflating(io, inflow),
                None => LeanIo::new(io),
            };
            let socket = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(config)).await;
            serve(socket).await
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                derive_accept_key(self.key.as_bytes()),
            );
        if let Some(extensions) = self.deflate {
            response = response.header(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
        }
        response.body(Body::empty()).unwrap_or_default()
    }

    /// Whether the connection will speak permessage-deflate (the client offered it): pass it
    /// to [`send_batch`].
    pub fn deflate(&self) -> bool {
        self.deflate.is_some()
    }
}

/// The close frame of `close` (its reason cut to 120 bytes, within the 123 a frame allows).
pub fn close_message(close: Close) -> Message {
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

/// Writes `frames` (at most [`WRITE_BATCH`] of them) as binary messages and flushes once.
/// With `deflate` (permessage-deflate negotiated), a message over [`COMPRESS_OVER`] bytes is
/// compressed when that makes it smaller, by a compressor that lives for that message only (no
/// context takeover; a message that goes to many connections is compressed once, see
/// [`deflate::compress_shared`]), and counted in `metrics`. A message over 32 KiB on the wire goes out
/// as fragments. `false` when the socket is gone.
///
/// The frames go straight to [`LeanIo`]'s buffer, freed after the flush: through the codec,
/// each would pass through its write buffer, which never shrinks, so every idle connection
/// would keep one the size of the largest frame it was ever sent (a joiner's presence frame
/// holds every state of the document).
pub async fn send_batch(
    socket: &mut Socket,
    frames: impl Iterator<Item = Bytes>,
    deflate: bool,
    metrics: &Metrics,
) -> bool {
    for f in frames.take(WRITE_BATCH) {
        let compressed = (deflate && f.len() > COMPRESS_OVER)
            .then(|| deflate::compress_shared(&f))
            .flatten();
        let (f, compressed) = match compressed {
            Some(c) => {
                metrics.ws_compressed_messages.inc();
                metrics
                    .ws_compression_saved_bytes
                    .add((f.len() - c.len()) as u64);
                (c, true)
            }
            None => (f, false),
        };
        let fragments = f.len().div_ceil(FRAGMENT).max(1);
        for i in 0..fragments {
            let chunk = &f[(i * FRAGMENT).min(f.len())..((i + 1) * FRAGMENT).min(f.len())];
            let header = frame_header(i == 0, i + 1 == fragments, compressed);
            let mut head = [0u8; MAX_SERVER_HEADER];
            let mut rest = &mut head[..];
            if header.format(chunk.len() as u64, &mut rest).is_err() {
                return false;
            }
            let used = MAX_SERVER_HEADER - rest.len();
            if poll_fn(|cx| socket.get_mut().poll_room(cx)).await.is_err() {
                return false;
            }
            socket.get_mut().put(&head[..used], chunk);
        }
    }
    socket.flush().await.is_ok()
}

/// Ends a connection: sends `close` when there is one, waits for the client's answer, closes.
pub async fn finish(socket: &mut Socket, close: Option<Close>) {
    if let Some(close) = close {
        if Box::pin(socket.send(close_message(close))).await.is_ok() {
            // Wait for the client's answer before dropping the socket: dropping it with input
            // still unread makes the kernel reset the connection, and a client that has not
            // read our close frame yet loses it (and its code) to the reset.
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(_)) = socket.next().await {}
            }))
            .await;
        }
    }
    let _ = Box::pin(SinkExt::close(socket)).await;
}

/// What a read from the socket means.
#[derive(Debug)]
pub enum Received {
    /// A binary message.
    Frame(Bytes),
    /// A ping or pong: liveness only.
    Liveness,
    /// The connection ends, with the close to send (`None`: the client closed it or it is
    /// gone).
    End(Option<Close>),
}

impl Received {
    /// Classifies a read: a text frame closes with 1003, an oversized one with 1009 (counted
    /// as a frame-size breach), a malformed one with 1002.
    pub fn of(
        msg: Option<Result<Message, WsError>>,
        metrics: &Metrics,
        peer: SocketAddr,
    ) -> Received {
        match msg {
            Some(Ok(Message::Binary(data))) => Received::Frame(data),
            Some(Ok(Message::Text(_))) => {
                Received::End(Some(Close::new(code::TEXT_FRAME, "binary frames only")))
            }
            Some(Ok(Message::Close(_))) | None => Received::End(None),
            Some(Ok(_)) => Received::Liveness,
            Some(Err(WsError::Capacity(_))) => {
                metrics.limit_breached(LimitKind::FrameSize);
                Received::End(LimitKind::FrameSize.close())
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, cause = %e, "WebSocket read error");
                Received::End(Some(Close::new(
                    code::MALFORMED_FRAME,
                    "malformed WebSocket frame",
                )))
            }
        }
    }
}

/// What [`Pace`]'s timer firing asks of the loop.
#[derive(Debug)]
pub enum Tick {
    /// Nothing to do (reads resume if they were paused).
    Idle,
    /// Send a ping.
    Ping,
    /// Close the connection: the token expired, or the client was silent too long.
    Close(Close),
}

/// The timers and message rate of one connection's loop, on one timer: a ping every
/// [`PING_EVERY`], a close after [`SILENCE_LIMIT`] without hearing from the client, the token's
/// expiry, and the end of a pause. Over the message rate (one token per message) the socket is
/// not read until the bucket refills: TCP pushes back on the sender, whose burst arrives late
/// but whole (never a close: stock clients would not come back, and a paced sender cannot
/// exceed the rate).
pub struct Pace {
    bucket: TokenBucket,
    last_heard: tokio::time::Instant,
    next_ping: tokio::time::Instant,
    paused_until: Option<tokio::time::Instant>,
    expires_at: Option<tokio::time::Instant>,
    // Boxed: the connection's future, which lives as long as the connection, stays small.
    timer: Pin<Box<Sleep>>,
}

impl Pace {
    /// Starts pacing now, at `rate`; `expires_at` is the token's expiry, if the connection
    /// closes at one.
    pub fn new(rate: Rate, expires_at: Option<tokio::time::Instant>) -> Pace {
        let start = tokio::time::Instant::now();
        let mut pace = Pace {
            bucket: TokenBucket::new(rate, Instant::now()),
            last_heard: start,
            next_ping: start + PING_EVERY,
            paused_until: None,
            expires_at,
            timer: Box::pin(tokio::time::sleep_until(start)),
        };
        pace.reset();
        pace
    }

    fn reset(&mut self) {
        let at = [self.expires_at, self.paused_until]
            .into_iter()
            .flatten()
            .fold(self.next_ping, tokio::time::Instant::min);
        self.timer.as_mut().reset(at);
    }

    /// Whether the socket may be read now (reads pause over the message rate).
    pub fn reading(&self) -> bool {
        self.paused_until.is_none()
    }

    /// Records a read: the client was heard, and every message but a close takes a token;
    /// over the rate, reads pause (counted as a message-rate breach).
    pub fn heard(&mut self, msg: &Option<Result<Message, WsError>>, metrics: &Metrics) {
        self.last_heard = tokio::time::Instant::now();
        if !matches!(msg, Some(Ok(m)) if !matches!(m, Message::Close(_))) {
            return;
        }
        let wait = self.bucket.take(Instant::now());
        if !wait.is_zero() {
            metrics.limit_breached(LimitKind::MessageRate);
            self.paused_until = Some(self.last_heard + wait);
            self.reset();
        }
    }

    /// Completes when the timer fires; then call [`Pace::fired`].
    pub async fn tick(&mut self) {
        self.timer.as_mut().await
    }

    /// What the timer firing means now; the timer is set again.
    pub fn fired(&mut self) -> Tick {
        let now = tokio::time::Instant::now();
        if self.paused_until.is_some_and(|p| now >= p) {
            self.paused_until = None;
        }
        if self.expires_at.is_some_and(|e| now >= e) {
            return Tick::Close(Close::new(code::UNAUTHORIZED, EXPIRED_REASON));
        }
        let mut tick = Tick::Idle;
        if now >= self.next_ping {
            if self.last_heard.elapsed() >= SILENCE_LIMIT {
                return Tick::Close(Close::new(code::GOING_AWAY, "no pong within 30 s"));
            }
            self.next_ping = now + PING_EVERY;
            tick = Tick::Ping;
        }
        self.reset();
        tick
    }
}
