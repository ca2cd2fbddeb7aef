//! The router: every route, `GET /healthz`, `GET /metrics`, and a JSON 404 for anything else.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::{ApiError, ErrorCode};
use super::state::AppState;
use crate::infra::metrics;

/// The router: `GET /healthz`, `GET /metrics`, and a JSON 404 for anything else.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/ws", get(super::hocuspocus::handler))
        .route("/ws/{doc}", get(super::ws::handler))
        .route("/ws/", get(ws_without_document))
        .route("/docs/{doc}/events", get(super::sse::events))
        .route("/openapi.json", get(super::openapi::document))
        .merge(super::documents::routes())
        .merge(super::admin::routes())
        .merge(super::inbox::routes())
        .merge(super::webhooks::routes())
        .merge(super::demo::routes())
        .fallback(not_found)
        .with_state(state)
}

/// `GET /healthz`: 200 `{"status":"ok"}` while serving, 503 once shutdown has begun (so load
/// balancers drain this node).
async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.shutdown.is_triggered() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is shutting down",
        ));
    }
    Ok(Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": if state.auth.is_open() { "development" } else { "secured" },
    })))
}

/// `GET /readyz`: 200 while this node can serve everything it promises; 503 when it is
/// shutting down, its shared store does not answer, or (several nodes) its bus to the other
/// nodes is down ("degraded": it serves, but other nodes' updates reach it only through the
/// store's catch-up, and presence does not cross nodes). The body says which.
async fn readyz(State(state): State<AppState>) -> Response {
    let (ready, mut body) = match &state.cluster {
        Some(cluster) => cluster.readiness(),
        None => (
            true,
            json!({"status": "ok", "store": "embedded", "bus": "none"}),
        ),
    };
    let ready = ready && !state.shutdown.is_triggered();
    if state.shutdown.is_triggered() {
        body["status"] = json!("shutting_down");
    }
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// What `/ws`, `/ws/` and `/ws?room=…` answer: the document goes in the path.
pub const WS_ROUTE_HINT: &str = "the WebSocket route is /ws/{doc}: name the document in the \
     path (y-websocket: new WebsocketProvider('ws://host:8787/ws', 'doc-name', ydoc))";

async fn ws_without_document() -> ApiError {
    ApiError::new(ErrorCode::NotFound, WS_ROUTE_HINT).with_field("route", "/ws/{doc}")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use axum::http::StatusCode;

    use super::*;
    use crate::infra::config::Config;
    use crate::infra::metrics::Metrics;
    use crate::infra::{shutdown, store};

    struct Fixture {
        _dir: tempfile::TempDir,
        state: AppState,
        trigger: shutdown::ShutdownTrigger,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default_for(dir.path());
        let metrics = Metrics::new();
        let store = store::open_embedded(&config.data_dir, &metrics).unwrap();
        let (trigger, signal) = shutdown::channel();
        Fixture {
            state: AppState::new(config, store, metrics, signal),
            trigger,
            _dir: dir,
        }
    }

    async fn get(state: &AppState, uri: &str) -> (StatusCode, String, Option<String>) {
        let response = app(state.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            String::from_utf8(body.to_vec()).unwrap(),
            content_type,
        )
    }

    #[tokio::test]
    async fn healthz_is_ok_until_shutdown() {
        let f = fixture();
        let (status, body, _) = get(&f.state, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["mode"], "development");
        f.trigger.trigger();
        let (status, body, _) = get(&f.state, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "unavailable");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let f = fixture();
        f.state.metrics.updates.add(3);
        f.state
            .metrics
            .limit_breached(crate::base::limit::LimitKind::MessageRate);
        let (status, body, content_type) = get(&f.state, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(metrics::CONTENT_TYPE));
        assert!(body.contains("\ntandem_updates_total 3\n"), "{body}");
        assert!(body.contains("tandem_limit_breaches_total{limit=\"message_rate\"} 1\n"));
        assert!(body.contains("# TYPE tandem_commit_latency_seconds histogram\n"));
    }

    #[tokio::test]
    async fn websocket_paths_without_a_document_say_where_it_goes() {
        let f = fixture();
        for uri in ["/ws/"] {
            let (status, body, _) = get(&f.state, uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["route"], "/ws/{doc}", "{uri}: {v}");
            assert!(
                v["message"].as_str().unwrap().contains("WebsocketProvider"),
                "{v}"
            );
        }
    }

    #[tokio::test]
    async fn both_websocket_routes_want_an_upgrade() {
        let f = fixture();
        // `/ws` is the Hocuspocus dialect's route, `/ws/{doc}` the y-websocket one.
        for uri in ["/ws", "/ws/notes"] {
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 4000));
            let request = Request::get(uri)
                .extension(axum::extract::ConnectInfo(peer))
                .body(Body::empty())
                .unwrap();
            let response = app(f.state.clone()).oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            let body = String::from_utf8(body.to_vec()).unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "bad_request", "{uri}");
            assert!(v["message"].as_str().unwrap().contains("/ws/{doc}"), "{v}");
        }
    }

    #[tokio::test]
    async fn unknown_routes_are_json_404() {
        let f = fixture();
        let (status, body, _) = get(&f.state, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, json!({"error": "not_found", "message": "no such route"}));
    }
}
