//! `GET /docs/{doc}/events`: a document's changes as Server-Sent Events.
//!
//! The stream starts with a `retry:` hint and a `snapshot` event, then carries `text` (field,
//! UTF-16 delta, author), `field` (name, value, version, author, at) and `presence` (join,
//! leave or update) events. Every event's `id:` is the document's sequence number (sid) it
//! belongs to. Resuming with `Last-Event-ID` or `?since=SID` replays exactly the events after
//! that sid, from the stored log; when the log no longer reaches back that far, the stream
//! starts with a fresh `snapshot` carrying `"reset": true`. `?format=yjs` carries base64 Yjs
//! updates (`update` events) instead of JSON deltas, for CRDT clients without a WebSocket.
//! A comment line is sent every 15 s so proxies keep the stream open. A document nobody has
//! written yet can be followed too (a dashboard or bot that subscribes before the first write):
//! its stream starts with an empty snapshot at sid 0, and reading creates nothing.
//!
//! A stream is a long-lived connection like a WebSocket: admitted within the per-IP connection
//! rate and `--max-connections`, filed under its user so `POST /admin/revoke` ends it at once,
//! and ended at its token's expiry. It then ends with a last `close` event,
//! `{"code": 4401, "reason": "token revoked" | "token expired"}`, so a client knows not to
//! reconnect with the same token (a browser EventSource that does gets a 401 and stops).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};
use tandem_engine::{Change, Document};
use tokio::sync::mpsc;

use super::error::{ApiError, ErrorCode};
use super::extract::parse_since;
use super::extract::{Authorized, ReadAccess};
use super::json::{field_json, snapshot_json};
use super::live::{self, Live};
use super::state::AppState;
use crate::documents::{FeedItem, PresenceAction, PresenceChange, PresenceView, Published};
use crate::infra::store::{Sid, Since, Store};

/// Heartbeat comment interval.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Reconnection delay suggested to clients.
const RETRY: Duration = Duration::from_secs(2);
/// How long a stream ended by the server waits to queue its last event.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Events buffered between the stream's producer and the HTTP body.
const STREAM_QUEUE: usize = 256;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yjs,
}

fn event(kind: &str, sid: Sid, data: &Value) -> Event {
    Event::default()
        .event(kind)
        .id(sid.to_string())
        .data(data.to_string())
}

fn change_events(sid: Sid, changes: &[Change], out: &mut Vec<Event>) {
    for change in changes {
        match change {
            Change::Text {
                field,
                delta,
                author,
                ..
            } => out.push(event(
                "text",
                sid,
                &json!({"field": field, "delta": delta, "author": author}),
            )),
            Change::Field {
                name,
                value,
                author,
            } => {
                let data = match value {
                    Some(v) => {
                        let mut d = field_json(v);
                        d["name"] = json!(name);
                        d
                    }
                    None => json!({"name": name, "value": null, "version": null,
                                   "deleted": true, "author": author}),
                };
                out.push(event("field", sid, &data));
            }
        }
    }
}

fn presence_event(sid: Sid, change: &PresenceChange) -> Event {
    event(
        "presence",
        sid,
        &serde_json::to_value(change).unwrap_or(Value::Null),
    )
}

fn published_events(format: Format, p: &Published, out: &mut Vec<Event>) {
    match format {
        Format::Json => change_events(p.sid, &p.changes, out),
        Format::Yjs => out.push(event(
            "update",
            p.sid,
            &json!({"update": b64(&p.update), "author": p.author}),
        )),
    }
}

/// Where a stream starts.
enum Start {
    /// A full snapshot (first connection, or `reset` when the log cannot cover the gap).
    Snapshot { reset: bool },
    /// These events, then live ones.
    Events(Vec<Event>),
}

/// The events after `since` up to `upto`, rebuilt from the stored log.
async fn catch_up(
    store: &dyn Store,
    doc: &str,
    since: Sid,
    upto: Sid,
    format: Format,
) -> Result<Start, ApiError> {
    if since > upto {
        return Ok(Start::Snapshot { reset: true });
    }
    if since == upto {
        return Ok(Start::Events(Vec::new()));
    }
    let mut out = Vec::new();
    match format {
        Format::Yjs => match store.updates_since(doc, since).await? {
            Since::Updates { entries, .. } => {
                for e in entries.iter().filter(|e| e.sid <= upto) {
                    out.push(event(
                        "update",
                        e.sid,
                        &json!({"update": b64(&e.update), "author": e.author}),
                    ));
                }
            }
            Since::Compacted { .. } | Since::Ahead { .. } => {
                return Ok(Start::Snapshot { reset: true })
            }
        },
        Format::Json => {
            // Deltas need the document as it was at `since`: replay the log up to there.
            let Some(loaded) = store.load(doc).await? else {
                return Ok(Start::Snapshot { reset: true });
            };
            let base = loaded.snapshot.as_ref().map(|s| s.sid).unwrap_or(0);
            if since < base {
                return Ok(Start::Snapshot { reset: true });
            }
            let mut replica = Document::new(1);
            let corrupt = |e: tandem_engine::DocumentError| {
                ApiError::internal(anyhow::anyhow!("replaying {doc}: {e}"))
            };
            if let Some(s) = &loaded.snapshot {
                replica.apply_update(&s.state, None).map_err(corrupt)?;
            }
            for e in loaded.updates.iter().filter(|e| e.sid <= since) {
                replica.apply_update(&e.update, None).map_err(corrupt)?;
            }
            replica.set_change_feed(true);
            for e in loaded
                .updates
                .iter()
                .filter(|e| e.sid > since && e.sid <= upto)
            {
                let author = (!e.author.is_empty()).then_some(e.author.as_str());
                replica.apply_update(&e.update, author).map_err(corrupt)?;
                change_events(e.sid, &replica.take_changes(), &mut out);
            }
        }
    }
    Ok(Start::Events(out))
}

/// Reads `?format=json|yjs`.
fn parse_format(query: Option<&str>) -> Result<Format, ApiError> {
    let format = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "format")
            .map(|(_, v)| v.into_owned())
    });
    match format.as_deref() {
        None | Some("json") => Ok(Format::Json),
        Some("yjs") => Ok(Format::Yjs),
        Some(_) => Err(ApiError::new(
            ErrorCode::BadRequest,
            "format must be json or yjs",
        )),
    }
}

/// Reads `Last-Event-ID` (a sid), which wins over `?since=`.
fn parse_resume(headers: &HeaderMap, query: Option<&str>) -> Result<Option<Sid>, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<Sid>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "Last-Event-ID must be a sid")),
        None => parse_since(query),
    }
}

/// The event that ends a stream closed by the server for `close`.
fn close_event(close: &crate::base::close::Close) -> Event {
    Event::default()
        .event("close")
        .data(json!({"code": close.code, "reason": close.reason}).to_string())
}

/// The event-stream handler.
pub async fn events(
    who: Authorized<ReadAccess>,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = parse_format(query.as_deref())?;
    let since = parse_resume(&headers, query.as_deref())?;
    let admission = match live::admit(&state, peer.ip()) {
        Ok(admission) => admission,
        Err(refused) => return Ok(refused),
    };
    let mut live = Live::register(&state, admission, &who.identity);
    let doc = who.doc().to_owned();
    let sub = state
        .registry
        .subscribe(&doc, format == Format::Yjs && since.is_none())
        .await?;
    let upto = sub.state.sid;
    // Events up to `seen` are not sent from the live feed (the client has them).
    let mut seen = upto;
    let start = match since {
        None => Start::Snapshot { reset: false },
        // With several nodes, a client resuming here may have seen sids this node has not
        // taken yet (another node's): when the store has them, they are on their way, so the
        // stream starts empty and skips what the client has.
        Some(since) if since > upto && state.cluster.is_some() => {
            let stored = state.store.last_sids(std::slice::from_ref(&doc)).await?;
            let stored = stored.first().copied().unwrap_or(0);
            if since <= stored {
                state.registry.stored_up_to(&doc, stored).await;
                seen = since;
                Start::Events(Vec::new())
            } else {
                Start::Snapshot { reset: true }
            }
        }
        Some(since) => catch_up(state.store.as_ref(), &doc, since, upto, format).await?,
    };
    let (tx, rx) = mpsc::channel::<Event>(STREAM_QUEUE);
    let metrics = state.metrics.clone();
    let shutdown = state.shutdown.wait();
    tokio::spawn(async move {
        metrics.sse_streams.inc();
        let mut first = vec![Event::default().retry(RETRY)];
        match start {
            Start::Snapshot { reset } => {
                let mut data = match format {
                    Format::Json => snapshot_json(&doc, upto, &sub.state.texts, &sub.state.fields),
                    Format::Yjs => {
                        let update = sub.state.update.as_deref().unwrap_or_default();
                        json!({"doc": doc, "sid": upto, "update": b64(update)})
                    }
                };
                if reset {
                    data["reset"] = json!(true);
                }
                first.push(event("snapshot", upto, &data));
            }
            Start::Events(events) => first.extend(events),
        }
        for view in &sub.presence {
            first.push(presence_event(
                seen,
                &PresenceChange {
                    action: PresenceAction::Join,
                    view: PresenceView::clone(view),
                },
            ));
        }
        let mut feed = sub.feed;
        let forward = async {
            for e in first {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            while let Some(item) = feed.recv().await {
                let mut out = Vec::new();
                match item {
                    FeedItem::Update(p) => {
                        if p.sid <= seen {
                            continue;
                        }
                        published_events(format, &p, &mut out);
                    }
                    // Never an id below what the client has seen (it resumes from the last).
                    FeedItem::Presence(sid, changes) => {
                        out.extend(changes.iter().map(|c| presence_event(sid.max(seen), c)))
                    }
                }
                for e in out {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
            // The feed closed: this stream fell too far behind, or the document failed. The
            // client reconnects with Last-Event-ID and catches up from the log.
        };
        let ended = tokio::select! {
            () = forward => None,
            () = shutdown => None,
            close = live.ended() => Some(close),
        };
        if let Some(close) = ended {
            tracing::debug!(%doc, code = close.code, reason = %close.reason, "ending an event stream");
            // A stream whose client stopped reading is ended all the same.
            let _ = tokio::time::timeout(CLOSE_GRACE, tx.send(close_event(&close))).await;
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
