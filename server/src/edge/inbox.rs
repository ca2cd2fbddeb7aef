//! The token's user's notifications: `GET /me/notifications`, `POST /me/notifications/read`
//! and `GET /me/notifications/events` (SSE).
//!
//! Every route authenticates the token (`Authorization: Bearer` or `?token=`; revoked or
//! expired tokens are refused) and shows only notifications about documents the token's own
//! pattern reaches: a token for `task-*` does not reveal a mention in `hr-7`.
//!
//! The stream: after connecting, an `unread` event `{"unread": N}` (no id); then each new
//! notification as an event `notification` with `id: <notification id>` (ids increase per
//! user) and the notification as data; after each read change another `unread`. Resuming
//! with `Last-Event-ID` or `?since=ID` first replays every stored notification after that id
//! (no gap, no duplicate: the live feed is joined before the store is read, and ids at or
//! below the last sent are skipped). It goes through [`super::live`] like document streams:
//! admitted, ended with a `close` event on revocation or at token expiry. With several nodes,
//! notifications made on another node are read from the store every second.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::{ApiError, ErrorCode};
use super::extract::{authenticate, parse_since};
use super::live::{self, Live};
use super::state::AppState;
use crate::access::token::Identity;
use crate::documents::notifier::{notification_json, InboxEvent};
use crate::infra::store::{Notification, ReadMark};

/// Default page size of `GET /me/notifications`.
const DEFAULT_LIMIT: u32 = 50;
/// Largest page.
const MAX_LIMIT: u32 = 200;
/// Most notifications replayed when a stream resumes.
const MAX_REPLAY: u32 = 1000;
/// The largest id the store keeps (a signed 64-bit integer).
const MAX_ID: u64 = i64::MAX as u64;
/// How often a stream reads the store for notifications made on other nodes (shared store).
const POLL_SHARED: Duration = Duration::from_secs(1);
/// Heartbeat comment interval.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a stream ended by the server waits to queue its last event.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The routes (merged into [`super::router::app`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/notifications", get(list))
        .route("/me/notifications/read", post(read))
        .route("/me/notifications/events", get(events))
}

fn identity(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Identity, ApiError> {
    Ok(authenticate(state, headers, query)?)
}

/// Whether the reading token may see `n`.
fn visible(identity: &Identity, n: &Notification) -> bool {
    identity.pattern.matches(&n.new.doc)
}

fn query_u64(query: Option<&str>, key: &str) -> Result<Option<u64>, ApiError> {
    let Some(q) = query else { return Ok(None) };
    match url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("{key} must be a non-negative integer"),
            )
        }),
    }
}

/// `GET /me/notifications?limit=N&before=ID`.
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = identity(&state, &headers, query.as_deref())?;
    let limit = query_u64(query.as_deref(), "limit")?
        .map_or(DEFAULT_LIMIT, |l| l.clamp(1, u64::from(MAX_LIMIT)) as u32);
    // Ids are stored as signed 64-bit integers: anything beyond is "no bound".
    let before = query_u64(query.as_deref(), "before")?.map(|b| b.min(MAX_ID));
    // One more than asked for tells whether there is a next page.
    let mut page = state
        .store
        .notifications(&who.user, before, limit + 1)
        .await?;
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let next = if more {
        page.last().map(|n| n.id)
    } else {
        None
    };
    let notifications: Vec<Value> = page
        .iter()
        .filter(|n| visible(&who, n))
        .map(notification_json)
        .collect();
    let unread = state.store.unread(&who.user).await?;
    Ok(Json(
        json!({"notifications": notifications, "unread": unread, "next": next}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadRequest {
    #[serde(default)]
    ids: Option<Vec<u64>>,
    #[serde(default)]
    all: Option<bool>,
}

/// `POST /me/notifications/read` with `{"ids": [..]}` or `{"all": true}`.
async fn read(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = identity(&state, &headers, query.as_deref())?;
    let bad = || {
        ApiError::new(
            ErrorCode::BadRequest,
            "expected {\"ids\": [17, 16]} or {\"all\": true}",
        )
    };
    let request: ReadRequest = serde_json::from_slice(&body).map_err(|_| bad())?;
    let mark = match (request.ids, request.all) {
        (Some(ids), None | Some(false)) if ids.len() <= 1000 => {
            ReadMark::Ids(ids.into_iter().filter(|id| *id <= MAX_ID).collect())
        }
        (None, Some(true)) => ReadMark::All,
        _ => return Err(bad()),
    };
    let unread = state.store.mark_read(&who.user, mark).await?;
    state.notifier.unread_changed(&who.user, unread);
    Ok(Json(json!({"unread": unread})))
}

fn notification_event(n: &Notification) -> Event {
    Event::default()
        .event("notification")
        .id(n.id.to_string())
        .data(notification_json(n).to_string())
}

fn unread_event(unread: u64) -> Event {
    Event::default()
        .event("unread")
        .data(json!({"unread": unread}).to_string())
}

/// Reads `Last-Event-ID` (a notification id), which wins over `?since=`.
fn parse_resume(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    "Last-Event-ID must be a notification id",
                )
            }),
        None => parse_since(query),
    }
}

/// `GET /me/notifications/events`.
async fn events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = identity(&state, &headers, query.as_deref())?;
    let since = parse_resume(&headers, query.as_deref())?.map(|s| s.min(MAX_ID));
    let admission = match live::admit(&state, peer.ip()) {
        Ok(admission) => admission,
        Err(refused) => return Ok(refused),
    };
    state.notifier.remember(&who).await?;
    let mut live = Live::register(&state, admission, &who);
    // Joined before the store is read: nothing committed after the read is missed.
    let mut feed = state.notifier.subscribe(&who.user);
    let (backlog, mut seen) = match since {
        Some(since) => {
            let rows = state
                .store
                .notifications_after(&who.user, since, MAX_REPLAY)
                .await?;
            let last = rows.last().map_or(since, |n| n.id);
            (rows, last)
        }
        None => {
            let newest = state.store.notifications(&who.user, None, 1).await?;
            (Vec::new(), newest.first().map_or(0, |n| n.id))
        }
    };
    let unread = state.store.unread(&who.user).await?;
    let (tx, rx) = mpsc::channel::<Event>(256);
    let shared = state.store.is_shared();
    let store = Arc::clone(&state.store);
    let metrics = state.metrics.clone();
    let shutdown = state.shutdown.wait();
    tokio::spawn(async move {
        metrics.sse_streams.inc();
        let forward = async {
            let mut first = vec![Event::default().retry(Duration::from_secs(2))];
            first.extend(
                backlog
                    .iter()
                    .filter(|n| visible(&who, n))
                    .map(notification_event),
            );
            first.push(unread_event(unread));
            for e in first {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            // With several nodes, notifications made on another node are read from the
            // store every POLL_SHARED (there is no bus message for inboxes).
            let mut poll = tokio::time::interval(POLL_SHARED);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let items: Vec<InboxEvent> = tokio::select! {
                    item = feed.recv() => match item {
                        Some(item) => vec![item],
                        None => break,
                    },
                    _ = poll.tick(), if shared => {
                        match store.notifications_after(&who.user, seen, MAX_REPLAY).await {
                            Ok(rows) => rows
                                .into_iter()
                                .map(|n| InboxEvent::Notification(Arc::new(n)))
                                .collect(),
                            Err(_) => Vec::new(),
                        }
                    }
                };
                for item in items {
                    let e = match item {
                        InboxEvent::Notification(n) => {
                            if n.id <= seen {
                                continue;
                            }
                            seen = n.id;
                            if !visible(&who, &n) {
                                continue;
                            }
                            notification_event(&n)
                        }
                        InboxEvent::Unread(n) => unread_event(n),
                    };
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
            // The feed ended: this stream fell behind. The client resumes with
            // Last-Event-ID and gets the rest from the store.
        };
        let ended = tokio::select! {
            () = forward => None,
            () = shutdown => None,
            close = live.ended() => Some(close),
        };
        if let Some(close) = ended {
            let event = Event::default()
                .event("close")
                .data(json!({"code": close.code, "reason": close.reason}).to_string());
            let _ = tokio::time::timeout(CLOSE_GRACE, tx.send(event)).await;
        }
        drop(live);
        metrics.sse_streams.dec();
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}
