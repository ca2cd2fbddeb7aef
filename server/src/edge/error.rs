//! [`ApiError`]: the one error type of the HTTP API. Every error a client sees is
//! `{"error": code, "message": text}` with a stable [`ErrorCode`] and a matching status; the
//! cause is logged, never sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

use crate::access::token::AuthError;
use crate::base::limit::LimitKind;
use crate::documents::DocError;
use crate::infra::store::StoreError;

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

    /// The JSON body the client sees: `{"error": code, "message": text, ...extra}`.
    pub fn body(&self) -> Value {
        let mut body = self.extra.clone();
        body.insert("error".to_owned(), Value::from(self.code.as_str()));
        body.insert("message".to_owned(), Value::from(self.message.as_str()));
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let code = self.code.as_str();
        let retry = status == StatusCode::SERVICE_UNAVAILABLE;
        match (&self.cause, status.is_server_error()) {
            (Some(cause), true) => tracing::error!(code, cause = ?cause, "request failed"),
            (None, true) => tracing::warn!(code, message = %self.message, "request failed"),
            (Some(cause), false) => tracing::debug!(code, cause = ?cause, "request refused"),
            (None, false) => tracing::debug!(code, message = %self.message, "request refused"),
        }
        if retry {
            // Every 503 is worth retrying: storage out of reach, a document loading or the
            // server stopping (another node answers).
            return (status, [(header::RETRY_AFTER, "1")], Json(self.body())).into_response();
        }
        (status, Json(self.body())).into_response()
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
            413 => ErrorCode::PayloadTooLarge,
            429 => ErrorCode::TooManyRequests,
            507 => ErrorCode::InsufficientStorage,
            422 => ErrorCode::Unprocessable,
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
            StoreError::Unavailable { .. } => {
                ApiError::new(ErrorCode::Unavailable, "storage is unavailable; try again")
                    .with_cause(e)
            }
            other => ApiError::internal(other),
        }
    }
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
            DocError::Unavailable => ApiError::new(
                ErrorCode::Unavailable,
                "storage is unavailable: nothing was stored; try again",
            ),
            DocError::KeyReused => ApiError::new(
                ErrorCode::Unprocessable,
                "this Idempotency-Key was already used with a different request (method, path \
                 or body): send a new key for a new request",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
            assert_eq!(status.as_u16(), kind.http_status(), "{kind:?}");
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
}
