//! Admin routes (admin role only).
//!
//! `POST /admin/revoke` with `{"user": "<id>"}`: refuses every token of that user issued up to
//! now and closes the user's open WebSockets (close 4401, reason "token revoked") and event
//! streams. Answers `{"user": id, "revoked_at": unix seconds, "closed": connections closed}`.
//! Tokens minted from the next second on are accepted again. Takes an `Idempotency-Key`: a
//! retry with the key gets the first answer and revokes nothing more (the key lives in memory
//! with the revocation; see [`super::idempotency`]).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ErrorCode};
use super::extract::{AdminAccess, Authorized};
use super::idempotency::{json_answer, respond, Keyed};
use super::state::AppState;
use crate::base::clock::{now_ms, unix_now};

/// The admin routes (merged into [`crate::http::app`]).
pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/revoke", post(revoke))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    user: String,
}

/// `POST /admin/revoke`.
async fn revoke(
    who: Authorized<AdminAccess>,
    State(state): State<AppState>,
    keyed: Keyed,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = keyed.request_key(&body);
    let admin = &who.identity.user;
    let mut made = None;
    let (answer, replayed) = state.local_keys.once(admin, key, now_ms(), || {
        let request: RevokeRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("expected {{\"user\": \"<id>\"}}: {e}"),
            )
        })?;
        if request.user.is_empty() {
            return Err(ApiError::new(ErrorCode::BadRequest, "user is empty"));
        }
        let at = unix_now();
        let closed = state.auth.revoke(&request.user, at);
        tracing::info!(admin = %admin, user = %request.user, closed, "revoked a user's tokens");
        let body = json!({"user": request.user, "revoked_at": at, "closed": closed});
        made = Some((request.user, at));
        Ok(json_answer(StatusCode::OK, Vec::new(), &body))
    })?;
    // With several nodes: the others hear of it on the bus at once, and the store keeps it for
    // nodes that start later (and for delivery while the bus is down).
    if let (Some(cluster), Some((user, at))) = (&state.cluster, made) {
        cluster.revoked(&user, at).await.map_err(|e| {
            ApiError::new(
                ErrorCode::Unavailable,
                "revoked on this node and announced to the others, but not recorded in storage; \
                 retry with a new Idempotency-Key",
            )
            .with_cause(e)
        })?;
    }
    Ok(respond(answer, None, replayed))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt;

    use serde_json::Value;

    use super::*;
    use crate::access::token::{mint, AuthError, Claims};
    use crate::base::role::Role;
    use crate::edge::router;
    use crate::infra::config::{AuthMode, Config, Secret};
    use crate::infra::metrics::Metrics;
    use crate::infra::{shutdown, store};

    const SECRET: &str = "admin route test secret";

    fn state(dir: &std::path::Path) -> (AppState, shutdown::ShutdownTrigger) {
        let mut config = Config::default_for(dir);
        config.auth = AuthMode::Secret(Secret::new(SECRET).unwrap());
        let metrics = Metrics::new();
        let store = store::open_embedded(&config.data_dir, &metrics).unwrap();
        let (trigger, signal) = shutdown::channel();
        (AppState::new(config, store, metrics, signal), trigger)
    }

    fn token(user: &str, role: Role) -> String {
        let now = unix_now();
        let claims = Claims {
            sub: user.into(),
            name: None,
            doc: "*".into(),
            role,
            exp: now + 60,
            iat: now - 1,
        };
        mint(&Secret::new(SECRET).unwrap(), &claims).unwrap()
    }

    async fn post(state: &AppState, token: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut request = Request::post("/admin/revoke");
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let response = router::app(state.clone())
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn only_admins_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _trigger) = state(dir.path());
        let body = r#"{"user":"mallory"}"#;
        let (status, v) = post(&state, None, body).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
        let (status, v) = post(&state, Some(&token("w", Role::Write)), body).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
        assert_eq!(state.metrics.auth_unauthorized.get(), 1);
        assert_eq!(state.metrics.auth_forbidden.get(), 1);

        let mallory = token("mallory", Role::Write);
        let now = unix_now();
        assert!(state.auth.authenticate(Some(&mallory), now).is_ok());
        let (status, v) = post(&state, Some(&token("root", Role::Admin)), body).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["user"], "mallory");
        assert_eq!(v["closed"], 0);
        assert_eq!(
            state.auth.authenticate(Some(&mallory), now),
            Err(AuthError::Revoked)
        );
    }

    #[tokio::test]
    async fn bad_bodies_are_json_400() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _trigger) = state(dir.path());
        let admin = token("root", Role::Admin);
        for body in [
            "",
            "{}",
            r#"{"user":""}"#,
            r#"{"user":1}"#,
            r#"{"user":"a","x":1}"#,
        ] {
            let (status, v) = post(&state, Some(&admin), body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
            assert_eq!(v["error"], "bad_request");
        }
    }
}
