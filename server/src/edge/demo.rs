//! The demo page: `GET /` serves the task card of `wasm/demo/`, with the browser package built
//! by `wasm/build.sh` under `/pkg/`.
//!
//! The files are read from disk at request time, from the first `wasm/` directory found above
//! the running binary or the working directory (so `cargo run` and `target/*/tandem` from a
//! checkout find it). A binary without a checkout answers 404 JSON saying what is missing.
//!
//! When the package is not built yet, the first request for it starts `wasm/build.sh` in open
//! development mode (the newcomer's `cargo run -- serve`; a server with a secret never runs a
//! build on a request): `/pkg/*` answers 503 with `Retry-After` while it runs, and
//! `/demo/status` says what is happening (`ready`, `building`, `failed` with the end of the
//! build's output, or `missing` with the command to run), which the page shows instead of a
//! greyed-out card.

use std::path::{Component, Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::error::{ApiError, ErrorCode};
use super::state::AppState;

/// The demo routes: `/`, `/sw.js`, `/demo/status`, `/demo/{file}`, `/pkg/{file}`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| serve_file("demo", "index.html")))
        .route("/sw.js", get(|| serve_file("demo", "sw.js")))
        .route("/demo/status", get(status))
        .route(
            "/demo/{*file}",
            get(|UrlPath(file): UrlPath<String>| serve_file("demo", file)),
        )
        .route("/pkg/{*file}", get(package_file))
}

/// `GET /demo/status`: the package's state, for the page.
async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let wasm = checkout()?;
    Ok(Json(state.demo.check(&wasm, state.auth.is_open())))
}

/// `GET /pkg/{file}`: a file of the browser package; 503 with what is happening while it is
/// missing.
async fn package_file(
    State(state): State<AppState>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, ApiError> {
    let wasm = checkout()?;
    let status = state.demo.check(&wasm, state.auth.is_open());
    if status["package"] != "ready" {
        let message = status["message"].as_str().unwrap_or_default().to_owned();
        let mut error = ApiError::new(ErrorCode::Unavailable, message)
            .with_field("package", status["package"].clone());
        if let Some(output) = status.get("output") {
            error = error.with_field("output", output.clone());
        }
        return Ok(([(header::RETRY_AFTER, "5")], error).into_response());
    }
    serve_file("pkg", file).await
}

fn checkout() -> Result<PathBuf, ApiError> {
    wasm_dir().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "the demo is not available: run tandem from a checkout that has wasm/demo/",
        )
    })
}

/// The `wasm/` directory of the checkout the server runs from, if any.
fn wasm_dir() -> Option<PathBuf> {
    let mut starts = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    starts.iter().find_map(|start| {
        start
            .ancestors()
            .map(|dir| dir.join("wasm"))
            .find(|wasm| wasm.join("demo").join("index.html").is_file())
    })
}

/// A relative path of plain components only (no `..`, no root, no hidden files).
fn safe_relative(file: &str) -> Option<PathBuf> {
    let path = Path::new(file);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str()?;
                if part.starts_with('.') || part.contains('\\') {
                    return None;
                }
                out.push(part);
            }
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn serve_file(area: &'static str, file: impl AsRef<str>) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such file");
    let relative = safe_relative(file.as_ref()).ok_or_else(not_found)?;
    let wasm = checkout()?;
    let path = wasm.join(area).join(relative);
    let bytes = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&path)),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_served() {
        assert_eq!(
            safe_relative("a/b.js"),
            Some(PathBuf::from("a").join("b.js"))
        );
        for bad in ["../secret", "/etc/passwd", ".git/config", "a/../../b", ""] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }
}
