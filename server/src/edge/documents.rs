//! The document routes of the HTTP API, for consumers that do not run a CRDT: snapshots,
//! catch-up and binary writes, conditional register writes, text edits and version history.
//! The event stream is in [`super::sse`]. Text offsets are UTF-16 code units. Every write takes
//! an `Idempotency-Key` ([`super::idempotency`]); its answer is rendered by [`render`], once,
//! and replayed as is to retries.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tandem_engine::Document;

use super::error::{ApiError, ErrorCode};
use super::extract::parse_since;
use super::extract::{Authorized, ReadAccess, WriteAccess};
use super::idempotency::{error_answer, json_answer, respond_write, Keyed};
use super::json::{field_json, snapshot_json};
use super::state::AppState;
use crate::base::limit::LimitKind;
use crate::documents::{DocState, Write, WriteRequest, Written};
use crate::infra::store::{Answer, Sid, Since};

/// The document routes (merged into [`crate::http::app`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/docs/{doc}", get(snapshot))
        .route("/docs/{doc}/updates", get(updates_since))
        .route("/docs/{doc}/update", post(apply_update))
        .route(
            "/docs/{doc}/fields/{name}",
            put(set_field).delete(delete_field),
        )
        .route("/docs/{doc}/texts/{field}", post(edit_text))
        .route("/docs/{doc}/history", get(history))
        .route("/docs/{doc}/history/{sid}", get(history_at))
}

fn state_json(doc: &str, s: &DocState) -> Value {
    snapshot_json(doc, s.sid, &s.texts, &s.fields)
}

/// `GET /docs/{doc}`: the document's texts and registers. 404 for an unknown document, which
/// is never created by reading it.
async fn snapshot(
    who: Authorized<ReadAccess>,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let doc = who.doc();
    let s = state.registry.read(doc, false).await?;
    Ok(Json(state_json(doc, &s)))
}

/// `GET /docs/{doc}/updates?since=SID`: one binary Yjs update holding every change after
/// `SID` (all of them without `since`); 410 when that part of the log was compacted away.
async fn updates_since(
    who: Authorized<ReadAccess>,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let doc = who.doc();
    let since = parse_since(query.as_deref())?;
    let current = state.registry.read(doc, since.is_none()).await?;
    let (update, last) = match since {
        None => (current.update.unwrap_or_default(), current.sid),
        Some(sid) => match state.store.updates_since(doc, sid).await? {
            Since::Updates { entries, last_sid } => {
                let parts: Vec<&[u8]> = entries.iter().map(|e| e.update.as_ref()).collect();
                let merged = tandem_engine::merge_updates(&parts)
                    .map_err(|e| ApiError::internal(anyhow::anyhow!("merging updates: {e}")))?;
                (Bytes::from(merged), last_sid)
            }
            Since::Compacted { snapshot_sid } => {
                return Err(ApiError::new(
                    ErrorCode::Gone,
                    format!("the log before sid {snapshot_sid} was compacted: do a full sync"),
                )
                .with_field("snapshot_sid", snapshot_sid))
            }
            Since::Ahead { last_sid } => {
                return Err(ApiError::new(
                    ErrorCode::Gone,
                    format!(
                        "sid {sid} is ahead of the document's last sid {last_sid}: do a full sync"
                    ),
                )
                .with_field("last_sid", last_sid))
            }
        },
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::HeaderName::from_static("x-tandem-sid"),
                last.to_string(),
            ),
        ],
        update,
    )
        .into_response())
}

/// The answer to a write, without its sid (added once durable, [`respond_write`]): `{}` for an
/// update, `{name, value, version, author, at}` and its `ETag` for a register (`{name,
/// deleted}` after a delete), the 412 error with `current` for a stale conditional write,
/// `{field, text}` for a text edit.
pub fn render(written: &Written) -> Answer {
    match written {
        Written::Update => json_answer(StatusCode::OK, Vec::new(), &json!({})),
        Written::Field {
            name,
            state: Some(f),
        } => {
            let mut body = field_json(f);
            body["name"] = json!(name);
            let etag = vec![("etag".to_owned(), format!("\"{}\"", f.version))];
            json_answer(StatusCode::OK, etag, &body)
        }
        Written::Field { name, state: None } => json_answer(
            StatusCode::OK,
            Vec::new(),
            &json!({"name": name, "deleted": true}),
        ),
        Written::Stale { current } => error_answer(
            ApiError::new(
                ErrorCode::PreconditionFailed,
                "the register changed since that version",
            )
            .with_field(
                "current",
                current.as_ref().map(field_json).unwrap_or(Value::Null),
            ),
        ),
        Written::Text { field, text } => json_answer(
            StatusCode::OK,
            Vec::new(),
            &json!({"field": field, "text": text}),
        ),
    }
}

/// Runs a write as `who` and answers it (see [`super::idempotency`]).
async fn write(
    state: &AppState,
    who: &Authorized<WriteAccess>,
    keyed: &Keyed,
    body: &[u8],
    write: Write,
) -> Result<Response, ApiError> {
    let request = WriteRequest {
        user: who.identity.user.clone(),
        write,
        key: keyed.request_key(body),
        render,
    };
    let answered = state.registry.write(who.doc(), request).await?;
    Ok(respond_write(answered))
}

/// `POST /docs/{doc}/update`: applies a binary Yjs update (v1); answers `{sid}` once durable.
async fn apply_update(
    who: Authorized<WriteAccess>,
    State(state): State<AppState>,
    keyed: Keyed,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_body_size(&state, &body)?;
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "empty body: expected a Yjs update",
        ));
    }
    write(&state, &who, &keyed, &body, Write::Update(body.clone())).await
}

/// Reads `If-Match: "<version>"` (or `If-None-Match: *`, which expects the register unset).
fn expected_version(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(v) = headers.get(header::IF_MATCH) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::new(ErrorCode::BadRequest, "If-Match is not text"))?
            .trim();
        let v = v.strip_prefix("W/").unwrap_or(v);
        let v = v.trim_matches('"');
        return Ok(Some(v.to_owned()));
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*")
    {
        return Ok(Some(String::new()));
    }
    Ok(None)
}

/// `PUT /docs/{doc}/fields/{name}`: sets a register to the JSON body. With `If-Match`, only
/// when its version is still the given one (else 412 with the current value).
async fn set_field(
    who: Authorized<WriteAccess>,
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    keyed: Keyed,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let expected = expected_version(&headers)?;
    check_body_size(&state, &body)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("body is not JSON: {e}")))?;
    let field = Write::Field {
        name,
        value: Some(value),
        expected,
    };
    write(&state, &who, &keyed, &body, field).await
}

/// `DELETE /docs/{doc}/fields/{name}`: deletes a register (conditional with `If-Match`).
async fn delete_field(
    who: Authorized<WriteAccess>,
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    keyed: Keyed,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let expected = expected_version(&headers)?;
    let field = Write::Field {
        name,
        value: None,
        expected,
    };
    write(&state, &who, &keyed, b"", field).await
}

#[derive(Debug, Deserialize)]
struct TextEdit {
    index: u32,
    #[serde(default)]
    delete: u32,
    #[serde(default)]
    insert: String,
}

/// `POST /docs/{doc}/texts/{field}` `{index, delete, insert}` (UTF-16 units): edits a text
/// field; answers `{sid, field, text}` once durable.
async fn edit_text(
    who: Authorized<WriteAccess>,
    State(state): State<AppState>,
    Path((_, field)): Path<(String, String)>,
    keyed: Keyed,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_body_size(&state, &body)?;
    let edit: TextEdit = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("expected {{index, delete, insert}}: {e}"),
        )
    })?;
    let text = Write::Text {
        field,
        index: edit.index,
        delete: edit.delete,
        insert: edit.insert,
    };
    write(&state, &who, &keyed, &body, text).await
}

/// `GET /docs/{doc}/history`: the retained checkpoints, oldest first.
async fn history(
    who: Authorized<ReadAccess>,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let doc = who.doc();
    // Through the document first: 404 for an unknown one, and a compaction (which keeps
    // checkpoints) started by an earlier write has finished once this answers.
    state.registry.read(doc, false).await?;
    let checkpoints = state.store.checkpoints(doc).await?;
    let list: Vec<Value> = checkpoints
        .iter()
        .map(|c| json!({"sid": c.sid, "at": c.at, "authors": c.authors}))
        .collect();
    Ok(Json(json!({"doc": doc, "checkpoints": list})))
}

/// `GET /docs/{doc}/history/{sid}`: the document as it was at that checkpoint.
async fn history_at(
    who: Authorized<ReadAccess>,
    State(state): State<AppState>,
    Path((_, sid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let doc = who.doc();
    let sid: Sid = sid
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "sid must be a sequence number"))?;
    let Some(bytes) = state.store.checkpoint(doc, sid).await? else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no checkpoint at that sid",
        ));
    };
    let mut replica = Document::new(1);
    replica
        .apply_update(&bytes, None)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("checkpoint {sid} of {doc}: {e}")))?;
    Ok(Json(snapshot_json(
        doc,
        sid,
        &replica.texts(),
        &replica.fields(),
    )))
}

/// Refuses a body over `--max-frame-size` (413), counting the breach.
fn check_body_size(state: &AppState, body: &[u8]) -> Result<(), ApiError> {
    if body.len() > state.config.limits.max_frame_bytes {
        state.metrics.limit_breached(LimitKind::FrameSize);
        return Err(LimitKind::FrameSize.into());
    }
    Ok(())
}
