//! The document routes of the HTTP API, for consumers that do not run a CRDT: snapshots,
//! catch-up and binary writes, conditional register writes, text edits and version history.
//! The event stream is in [`crate::sse`]. Text offsets are UTF-16 code units.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tandem_engine::{Document, FieldValue};

use crate::auth::{self, Access, Identity};
use crate::docs::{DocError, DocState, FieldOutcome};
use crate::http::{ApiError, AppState, ErrorCode};
use crate::store::{Sid, Since};
use crate::ws::valid_doc_name;

/// The document routes (merged into [`crate::http::app`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/docs/{doc}", get(snapshot))
        .route("/docs/{doc}/events", get(crate::sse::events))
        .route("/docs/{doc}/updates", get(updates_since))
        .route("/docs/{doc}/update", post(apply_update))
        .route(
            "/docs/{doc}/fields/{name}",
            put(set_field).delete(delete_field),
        )
        .route("/docs/{doc}/texts/{field}", post(edit_text))
        .route("/docs/{doc}/history", get(history))
        .route("/docs/{doc}/history/{sid}", get(history_at))
        .route("/openapi.json", get(crate::openapi::document))
}

/// Authenticates the request and checks `access` to `doc` (also validates the name).
pub fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    doc: &str,
    access: Access,
) -> Result<Identity, ApiError> {
    if !valid_doc_name(doc) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "invalid document name",
        ));
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = auth::token_from_request(authorization, query);
    let identity = state
        .auth
        .authorize(token.as_deref(), doc, access, auth::unix_now())
        .map_err(|e| {
            if e.is_forbidden() {
                state.metrics.auth_forbidden.inc();
            } else {
                state.metrics.auth_unauthorized.inc();
            }
            ApiError::from(e)
        })?;
    Ok(identity)
}

impl From<DocError> for ApiError {
    fn from(e: DocError) -> Self {
        match e {
            DocError::NotFound => ApiError::new(ErrorCode::NotFound, "no such document"),
            DocError::Join(j) => ApiError::new(ErrorCode::Unavailable, j.to_string()),
            DocError::Invalid(m) => ApiError::new(ErrorCode::BadRequest, m),
            DocError::Limit(m) => ApiError::new(ErrorCode::Unprocessable, m),
            DocError::Storage => {
                ApiError::new(ErrorCode::Internal, "the change could not be stored")
            }
        }
    }
}

/// `{value, version, author, at}` as every API shows a register.
pub fn field_json(f: &FieldValue) -> Value {
    json!({"value": f.value, "version": f.version, "author": f.author, "at": f.at})
}

/// The snapshot body: `{doc, sid, texts, fields}`.
pub fn snapshot_json(
    doc: &str,
    sid: Sid,
    texts: &std::collections::BTreeMap<String, String>,
    fields: &std::collections::BTreeMap<String, FieldValue>,
) -> Value {
    let fields: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), field_json(v)))
        .collect();
    json!({"doc": doc, "sid": sid, "texts": texts, "fields": fields})
}

fn state_json(doc: &str, s: &DocState) -> Value {
    snapshot_json(doc, s.sid, &s.texts, &s.fields)
}

/// `GET /docs/{doc}`: the document's texts and registers. 404 for an unknown document, which
/// is never created by reading it.
async fn snapshot(
    State(state): State<AppState>,
    Path(doc): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, query.as_deref(), &doc, Access::Read)?;
    let s = state.registry.read(&doc, false).await?;
    Ok(Json(state_json(&doc, &s)))
}

/// `GET /docs/{doc}/updates?since=SID`: one binary Yjs update holding every change after
/// `SID` (all of them without `since`); 410 when that part of the log was compacted away.
async fn updates_since(
    State(state): State<AppState>,
    Path(doc): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, query.as_deref(), &doc, Access::Read)?;
    let since = parse_since(query.as_deref())?;
    let current = state.registry.read(&doc, since.is_none()).await?;
    let (update, last) = match since {
        None => (current.update.unwrap_or_default(), current.sid),
        Some(sid) => match state.store.updates_since(&doc, sid).await? {
            Since::Updates { entries, last_sid } => {
                let parts: Vec<&[u8]> = entries.iter().map(|e| e.update.as_ref()).collect();
                let merged = if parts.is_empty() {
                    vec![0, 0]
                } else {
                    yrs::merge_updates_v1(&parts)
                        .map_err(|e| ApiError::internal(anyhow::anyhow!("merging updates: {e}")))?
                };
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

pub fn parse_since(query: Option<&str>) -> Result<Option<Sid>, ApiError> {
    let Some(q) = query else { return Ok(None) };
    let Some(raw) = url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "since")
        .map(|(_, v)| v.into_owned())
    else {
        return Ok(None);
    };
    raw.parse::<Sid>()
        .map(Some)
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "since must be a sequence number"))
}

/// `POST /docs/{doc}/update`: applies a binary Yjs update (v1); answers `{sid}` once durable.
async fn apply_update(
    State(state): State<AppState>,
    Path(doc): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = authorize(&state, &headers, query.as_deref(), &doc, Access::Write)?;
    if body.len() > state.config.limits.max_frame_bytes {
        state
            .metrics
            .limit_breached(crate::limits::LimitKind::FrameSize);
        return Err(crate::limits::LimitKind::FrameSize.into());
    }
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "empty body: expected a Yjs update",
        ));
    }
    let sid = state.registry.apply_update(&doc, &who.user, body).await?;
    Ok(Json(json!({ "sid": sid })))
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

fn field_result(name: &str, outcome: FieldOutcome) -> Response {
    match outcome {
        FieldOutcome::Written(sid, Some(f)) => {
            let mut body = field_json(&f);
            body["name"] = json!(name);
            body["sid"] = json!(sid);
            ([(header::ETAG, format!("\"{}\"", f.version))], Json(body)).into_response()
        }
        FieldOutcome::Written(sid, None) => {
            Json(json!({"name": name, "deleted": true, "sid": sid})).into_response()
        }
        FieldOutcome::Stale(current) => ApiError::new(
            ErrorCode::PreconditionFailed,
            "the register changed since that version",
        )
        .with_field(
            "current",
            current.as_ref().map(field_json).unwrap_or(Value::Null),
        )
        .into_response(),
    }
}

/// `PUT /docs/{doc}/fields/{name}`: sets a register to the JSON body. With `If-Match`, only
/// when its version is still the given one (else 412 with the current value).
async fn set_field(
    State(state): State<AppState>,
    Path((doc, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = authorize(&state, &headers, query.as_deref(), &doc, Access::Write)?;
    let expected = expected_version(&headers)?;
    if body.len() > state.config.limits.max_frame_bytes {
        return Err(crate::limits::LimitKind::FrameSize.into());
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("body is not JSON: {e}")))?;
    let outcome = state
        .registry
        .set_field(&doc, &who.user, &name, Some(value), expected)
        .await?;
    Ok(field_result(&name, outcome))
}

/// `DELETE /docs/{doc}/fields/{name}`: deletes a register (conditional with `If-Match`).
async fn delete_field(
    State(state): State<AppState>,
    Path((doc, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authorize(&state, &headers, query.as_deref(), &doc, Access::Write)?;
    let expected = expected_version(&headers)?;
    let outcome = state
        .registry
        .set_field(&doc, &who.user, &name, None, expected)
        .await?;
    Ok(field_result(&name, outcome))
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
    State(state): State<AppState>,
    Path((doc, field)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = authorize(&state, &headers, query.as_deref(), &doc, Access::Write)?;
    if body.len() > state.config.limits.max_frame_bytes {
        return Err(crate::limits::LimitKind::FrameSize.into());
    }
    let edit: TextEdit = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("expected {{index, delete, insert}}: {e}"),
        )
    })?;
    let (sid, text) = state
        .registry
        .edit_text(
            &doc,
            &who.user,
            &field,
            edit.index,
            edit.delete,
            &edit.insert,
        )
        .await?;
    Ok(Json(json!({"sid": sid, "field": field, "text": text})))
}

/// `GET /docs/{doc}/history`: the retained checkpoints, oldest first.
async fn history(
    State(state): State<AppState>,
    Path(doc): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, query.as_deref(), &doc, Access::Read)?;
    // Through the document first: 404 for an unknown one, and a compaction (which keeps
    // checkpoints) started by an earlier write has finished once this answers.
    state.registry.read(&doc, false).await?;
    let checkpoints = state.store.checkpoints(&doc).await?;
    let list: Vec<Value> = checkpoints
        .iter()
        .map(|c| json!({"sid": c.sid, "at": c.at, "authors": c.authors}))
        .collect();
    Ok(Json(json!({"doc": doc, "checkpoints": list})))
}

/// `GET /docs/{doc}/history/{sid}`: the document as it was at that checkpoint.
async fn history_at(
    State(state): State<AppState>,
    Path((doc, sid)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, query.as_deref(), &doc, Access::Read)?;
    let sid: Sid = sid
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "sid must be a sequence number"))?;
    let Some(bytes) = state.store.checkpoint(&doc, sid).await? else {
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
        &doc,
        sid,
        &replica.texts(),
        &replica.fields(),
    )))
}
