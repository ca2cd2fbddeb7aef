//! [`run`]: what `tandem serve` calls. Opens the store named by the config, serves until the
//! given shutdown future completes, waits for connections to finish, then flushes and closes
//! the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::router::app;
use super::state::AppState;
use crate::infra::config::Config;
use crate::infra::metrics::Metrics;
use crate::infra::shutdown;
use crate::infra::store::{self, StoreError};

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
    // The store can open PostgreSQL, but the document layer does not yet follow what other
    // nodes write: refused at start until it does.
    if config.database_url.is_some() {
        return Err(ServeError::BackendUnavailable {
            flag: "--database-url",
            what: "several nodes on one PostgreSQL database",
        });
    }
    let metrics = Metrics::new();
    let store = store::open(&config, &metrics).await?;
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
    use super::*;

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
        assert!(dir
            .path()
            .join(crate::infra::store::sqlite::DB_FILE)
            .exists());
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
