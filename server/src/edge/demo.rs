//! The demo page: `GET /` serves the task card of `wasm/demo/`, with the browser package built
//! by `wasm/build.sh` under `/pkg/`.
//!
//! The files are read from disk at request time, from the first `wasm/` directory found above
//! the running binary or the working directory (so `cargo run` and `target/*/tandem` from a
//! checkout find it). A binary without a checkout, or a checkout whose package was not built,
//! answers 404 JSON saying what is missing.

use std::path::{Component, Path, PathBuf};

use axum::extract::Path as UrlPath;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::{ApiError, ErrorCode};
use super::state::AppState;

/// The demo routes: `/`, `/sw.js`, `/demo/{file}`, `/pkg/{file}`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| serve_file("demo", "index.html")))
        .route("/sw.js", get(|| serve_file("demo", "sw.js")))
        .route(
            "/demo/{*file}",
            get(|UrlPath(file): UrlPath<String>| serve_file("demo", file)),
        )
        .route(
            "/pkg/{*file}",
            get(|UrlPath(file): UrlPath<String>| serve_file("pkg", file)),
        )
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
    let Some(wasm) = wasm_dir() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the demo is not available: run tandem from a checkout that has wasm/demo/",
        ));
    };
    if area == "pkg" && !wasm.join("pkg").join("index.js").is_file() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the browser package is not built: run wasm/build.sh",
        ));
    }
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
