//! Admin routes for webhook deliveries (admin role):
//! `GET /admin/webhooks/deliveries?state=pending|dead&limit=N` lists outbox rows (oldest
//! first) with the events each stands for, its attempts and last error;
//! `POST /admin/webhooks/deliveries/{id}/replay` makes a row pending again, due now, its
//! attempts reset (a dead one gets another 24 h of retries).

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::{ApiError, ErrorCode};
use super::extract::{AdminAccess, Authorized};
use super::state::AppState;
use crate::base::clock::now_ms;
use crate::infra::store::{DeliveryState, OutboxRow};
use crate::infra::webhook::render;

/// The routes (merged into [`super::router::app`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/webhooks/deliveries", get(list))
        .route("/admin/webhooks/deliveries/{id}/replay", post(replay))
}

fn delivery_json(row: &OutboxRow) -> Value {
    json!({
        "id": row.id, "endpoint": row.endpoint, "doc": row.doc, "kind": row.kind,
        "first_sid": row.first_sid, "last_sid": row.last_sid, "attempts": row.attempts,
        "created_at": row.created_at, "next_at": row.next_at, "state": row.state.as_str(),
        "last_error": row.last_error, "events": render(row),
    })
}

/// `GET /admin/webhooks/deliveries`.
async fn list(
    _: Authorized<AdminAccess>,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let param = |key: &str| {
        query.as_deref().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        })
    };
    let wanted = match param("state") {
        None => DeliveryState::Pending,
        Some(s) => DeliveryState::parse(&s)
            .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "state must be pending or dead"))?,
    };
    let limit = match param("limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .map_err(|_| ApiError::new(ErrorCode::BadRequest, "limit must be a number"))?
            .clamp(1, 1000),
    };
    let rows = state.store.outbox_list(wanted, limit).await?;
    let deliveries: Vec<Value> = rows.iter().map(delivery_json).collect();
    Ok(Json(
        json!({"state": wanted.as_str(), "deliveries": deliveries}),
    ))
}

/// `POST /admin/webhooks/deliveries/{id}/replay`.
async fn replay(
    _: Authorized<AdminAccess>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the delivery id is a number"))?;
    if id > i64::MAX as u64 || !state.store.outbox_replay(id, now_ms()).await? {
        return Err(ApiError::new(ErrorCode::NotFound, "no such delivery"));
    }
    Ok(Json(json!({"id": id, "state": "pending"})))
}
