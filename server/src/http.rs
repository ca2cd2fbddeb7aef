//! The HTTP edge: the router, the JSON error type, and the serve loop with graceful shutdown.
//!
//! [`app`] builds the router from an [`AppState`]; tests drive it with `oneshot`. [`run`] is
//! what `tandem serve` calls: it opens the store named by the config, serves until the given
//! shutdown future completes, waits for connections to finish, then flushes and closes the
//! store. Every error a client sees is an [`ApiError`]: `{"error": code, "message": text}` with
//! a stable code; its cause is logged, never sent.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::auth::{Auth, AuthError};
use crate::config::{Config, StorageConfig};
use crate::docs::Registry;
use crate::limits::LimitKind;
use crate::metrics::{self, Metrics};
use crate::shutdown::{self, Shutdown};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Store, StoreError};

/// What every route handler can reach. Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Token verification and revocation.
    pub auth: Auth,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// Fires when the server begins shutting down; long-lived connections select on it.
    pub shutdown: Shutdown,
    /// The loaded documents.
    pub registry: Registry,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Assembles the state; the auth mode comes from the config.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Self {
        let auth = Auth::new(config.auth.clone());
        let config = Arc::new(config);
        let registry = Registry::new(Arc::clone(&store), metrics.clone(), Arc::clone(&config));
        AppState {
            config,
            auth,
            metrics,
            store,
            shutdown,
            registry,
        }
    }
}

/// The router: `GET /healthz`, `GET /metrics`, and a JSON 404 for anything else.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/ws/{doc}", get(crate::ws::handler))
        .merge(crate::api::routes())
        .merge(crate::admin::routes())
        .merge(crate::demo::routes())
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

/// The stable error codes of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the request is malformed.
    BadRequest,
    /// 401: no valid token.
    Unauthorized,
    /// 403: the token does not grant this access.
    Forbidden,
    /// 404: no such route or document.
    NotFound,
    /// 410: the requested history was compacted away; do a full sync.
    Gone,
    /// 412: a conditional write lost (`If-Match` is stale).
    PreconditionFailed,
    /// 413: the body is over a size limit.
    PayloadTooLarge,
    /// 422: the body is well-formed but cannot be applied.
    Unprocessable,
    /// 429: over a rate limit.
    TooManyRequests,
    /// 500: a failure inside the server.
    Internal,
    /// 503: shutting down, or over the connection limit.
    Unavailable,
    /// 507: a document is over its size limit.
    InsufficientStorage,
}

impl ErrorCode {
    /// The code as it appears in the `error` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Gone => "gone",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unprocessable => "unprocessable",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InsufficientStorage => "insufficient_storage",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Gone => StatusCode::GONE,
            ErrorCode::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        }
    }
}

/// An error answered to an HTTP client as `{"error": code, "message": text, ...extra}`.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    extra: Map<String, Value>,
    cause: Option<anyhow::Error>,
}

impl ApiError {
    /// An error with a client-facing message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            extra: Map::new(),
            cause: None,
        }
    }

    /// A 500 whose cause is logged and whose message says nothing about it.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        ApiError::new(ErrorCode::Internal, "internal server error").with_cause(cause)
    }

    /// Attaches a cause to log (never sent to the client).
    pub fn with_cause(mut self, cause: impl Into<anyhow::Error>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// Adds a field to the JSON body (e.g. `current` on a 412). `error` and `message` cannot
    /// be overridden.
    pub fn with_field(mut self, key: &str, value: impl Into<Value>) -> Self {
        if key != "error" && key != "message" {
            self.extra.insert(key.to_owned(), value.into());
        }
        self
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The client-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let code = self.code.as_str();
        match (&self.cause, status.is_server_error()) {
            (Some(cause), true) => tracing::error!(code, cause = ?cause, "request failed"),
            (None, true) => tracing::warn!(code, message = %self.message, "request failed"),
            (Some(cause), false) => tracing::debug!(code, cause = ?cause, "request refused"),
            (None, false) => tracing::debug!(code, message = %self.message, "request refused"),
        }
        let mut body = self.extra;
        body.insert("error".to_owned(), Value::from(code));
        body.insert("message".to_owned(), Value::from(self.message));
        (status, Json(Value::Object(body))).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = if e.is_forbidden() {
            ErrorCode::Forbidden
        } else {
            ErrorCode::Unauthorized
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<LimitKind> for ApiError {
    fn from(kind: LimitKind) -> Self {
        let code = match kind.http_status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::TOO_MANY_REQUESTS => ErrorCode::TooManyRequests,
            StatusCode::INSUFFICIENT_STORAGE => ErrorCode::InsufficientStorage,
            StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::Unprocessable,
            _ => ErrorCode::Unavailable,
        };
        ApiError::new(code, kind.reason()).with_field("limit", kind.as_str())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => {
                ApiError::new(ErrorCode::Unavailable, "the server is shutting down").with_cause(e)
            }
            other => ApiError::internal(other),
        }
    }
}

/// Why `tandem serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened or closed cleanly.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Serving failed on the listening socket.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration names a backend this build does not drive yet.
    #[error("{flag} is set, but this build of tandem cannot use it yet: {what}")]
    BackendUnavailable {
        /// The flag that asked for it.
        flag: &'static str,
        /// What is missing.
        what: &'static str,
    },
}

/// Opens the store the configuration names. Blocking (SQLite opens files): call it from
/// `spawn_blocking` inside a runtime.
pub fn open_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Store>, ServeError> {
    match config.storage() {
        StorageConfig::Embedded { data_dir } => {
            let options = SqliteOptions {
                checkpoints: config.history.checkpoints,
                metrics: metrics.clone(),
                ..SqliteOptions::default()
            };
            Ok(Arc::new(SqliteStore::open(&data_dir, options)?))
        }
        StorageConfig::Postgres { .. } => Err(ServeError::BackendUnavailable {
            flag: "--database-url",
            what: "PostgreSQL storage",
        }),
    }
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then stops accepting and waits
/// for open connections to finish. Handlers see the peer address through
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small frames (keystrokes, cursors) go out at once: without TCP_NODELAY, Nagle's algorithm
    // holds a frame written behind an unacknowledged one until the peer's delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Runs `tandem serve` on a bound listener until `shutdown` completes: opens the store, serves,
/// then waits for connections to close and flushes and closes the store.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if config.redis_url.is_some() {
        return Err(ServeError::BackendUnavailable {
            flag: "--redis-url",
            what: "cross-node fan-out over Redis",
        });
    }
    let metrics = Metrics::new();
    let store = {
        let config = config.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || open_store(&config, &metrics))
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))??
    };
    let local = listener.local_addr()?;
    if config.is_open() {
        tracing::warn!("==============================================================");
        tracing::warn!("OPEN DEVELOPMENT MODE: no --auth-secret is set.");
        tracing::warn!("Every request is accepted as an admin, without a token.");
        tracing::warn!("Only loopback connections can reach {local}.");
        tracing::warn!("Set --auth-secret (TANDEM_AUTH_SECRET) before exposing tandem.");
        tracing::warn!("==============================================================");
    }
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), "tandem listening on {local}");

    let (trigger, signal) = shutdown::channel();
    let state = AppState::new(config, Arc::clone(&store), metrics, signal);
    let registry = state.registry.clone();
    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; closing open ones");
        trigger.trigger();
    };
    println!("tandem listening on {local}");
    let served = serve(listener, state, stop).await;
    // Every document stores what it holds before the store closes.
    registry.close().await;
    // Flush and close even if serving failed: acknowledged writes are already durable, and this
    // commits whatever is still queued.
    let closed = store.close().await;
    served?;
    closed?;
    tracing::info!("tandem stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        state: AppState,
        trigger: shutdown::ShutdownTrigger,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default_for(dir.path());
        let metrics = Metrics::new();
        let store = open_store(&config, &metrics).unwrap();
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
        f.state.metrics.limit_breached(LimitKind::MessageRate);
        let (status, body, content_type) = get(&f.state, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(metrics::CONTENT_TYPE));
        assert!(body.contains("\ntandem_updates_total 3\n"), "{body}");
        assert!(body.contains("tandem_limit_breaches_total{limit=\"message_rate\"} 1\n"));
        assert!(body.contains("# TYPE tandem_commit_latency_seconds histogram\n"));
    }

    #[tokio::test]
    async fn unknown_routes_are_json_404() {
        let f = fixture();
        let (status, body, _) = get(&f.state, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, json!({"error": "not_found", "message": "no such route"}));
    }

    async fn body_of(e: ApiError) -> (StatusCode, Value) {
        let response = e.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn errors_have_stable_codes_and_hide_causes() {
        let (status, v) = body_of(ApiError::internal(std::io::Error::other(
            "disk /secret/path failed",
        )))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            v,
            json!({"error": "internal", "message": "internal server error"})
        );

        let (status, v) = body_of(AuthError::MissingToken.into()).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
        let (status, v) = body_of(AuthError::WrongDocument.into()).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );

        let (status, v) = body_of(LimitKind::FrameSize.into()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(v["limit"], "frame_size");
        for kind in LimitKind::ALL {
            let (status, _) = body_of(kind.into()).await;
            assert_eq!(status, kind.http_status(), "{kind:?}");
        }

        let (status, v) = body_of(
            ApiError::new(ErrorCode::PreconditionFailed, "stale version")
                .with_field("current", json!({"value": 1}))
                .with_field("error", "overridden?"),
        )
        .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            v,
            json!({"error": "precondition_failed", "message": "stale version", "current": {"value": 1}})
        );

        let (status, _) = body_of(StoreError::Closed.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn run_serves_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, Config::default_for(dir.path()), async {
            let _ = stopped.await;
        }));

        let response = raw_get(addr, "/healthz").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("\"status\":\"ok\""), "{response}");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        assert!(dir.path().join(crate::store::sqlite::DB_FILE).exists());
    }

    #[tokio::test]
    async fn run_refuses_backends_it_cannot_drive() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default_for(dir.path());
        config.redis_url = Some("redis://cache".parse().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = run(listener, config.clone(), std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--redis-url"), "{err}");

        config.redis_url = None;
        config.database_url = Some("postgres://db/x".parse().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = run(listener, config, std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--database-url"), "{err}");
    }

    async fn raw_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }
}
