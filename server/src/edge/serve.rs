//! [`run`]: what `tandem serve` calls. Opens the store named by the config, serves until the
//! given shutdown future completes, waits for connections to finish, then flushes and closes
//! the store.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::TcpListener;
use tower::Service;

use super::cluster::Cluster;
use super::router::app;
use super::state::AppState;
use super::wire::{WireHandle, WireListener};
use crate::infra::bus::{self, BusError, BusOptions};
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
    /// `--redis-url` could not be used (a malformed URL; an unreachable Redis is not an
    /// error: the node serves, degraded).
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then stops accepting and waits
/// for open connections to finish. Handlers see the peer address through
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Connections { router: app(state) };
    axum::serve(WireListener::new(listener), connections)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Makes the service of each accepted connection: the router, with the peer's address
/// (`ConnectInfo<SocketAddr>`) and the connection ([`WireHandle`]) in every request's
/// extensions.
#[derive(Clone)]
struct Connections {
    router: Router,
}

impl<'a> Service<IncomingStream<'a, WireListener>> for Connections {
    type Response = OnConnection;
    type Error = Infallible;
    type Future = std::future::Ready<Result<OnConnection, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: IncomingStream<'a, WireListener>) -> Self::Future {
        // Small frames (keystrokes, cursors) go out at once: without TCP_NODELAY, Nagle's
        // algorithm holds a frame written behind an unacknowledged one until the peer's
        // delayed ACK (~40 ms).
        if let Err(e) = incoming.io().set_nodelay() {
            tracing::debug!(cause = %e, "could not set TCP_NODELAY");
        }
        std::future::ready(Ok(OnConnection {
            router: self.router.clone(),
            peer: *incoming.remote_addr(),
            wire: WireHandle(incoming.io().wire().clone()),
        }))
    }
}

/// The router, serving one connection.
#[derive(Clone)]
struct OnConnection {
    router: Router,
    peer: SocketAddr,
    wire: WireHandle,
}

impl Service<Request> for OnConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        request.extensions_mut().insert(self.wire.clone());
        self.router.call(request)
    }
}

/// Runs `tandem serve` on a bound listener until `shutdown` completes: opens the store, serves,
/// then waits for connections to close and flushes and closes the store.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
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
    let cluster = if store.is_shared() {
        let bus = match &config.redis_url {
            Some(url) => {
                let node = config.cluster.node_id.clone();
                let options = BusOptions::default();
                Some(bus::connect(url.as_str(), node, metrics.clone(), options).await?)
            }
            None => {
                tracing::warn!(
                    "--database-url without --redis-url: other nodes' updates arrive through \
                     the store every --catch-up-interval, and presence does not cross nodes"
                );
                None
            }
        };
        tracing::info!(node = %config.cluster.node_id, bus = bus.is_some(), "serving as a node among several");
        Some(Cluster::new(&config, Arc::clone(&store), bus))
    } else {
        None
    };
    // A shared store's reachability is checked every interval (edge::cluster); the embedded
    // one is up while the process is.
    metrics.store_up.set(1);
    let interval = config.cluster.catch_up_interval;
    let state = AppState::with_cluster(config, Arc::clone(&store), metrics, signal, cluster);
    if let Some(cluster) = &state.cluster {
        cluster
            .start(
                state.registry.clone(),
                state.auth.clone(),
                state.metrics.clone(),
                interval,
                state.shutdown.clone(),
            )
            .await?;
    }
    let registry = state.registry.clone();
    let bus = state.cluster.as_ref().and_then(Cluster::bus);
    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; closing open ones");
        trigger.trigger();
    };
    println!("tandem listening on {local}");
    let served = serve(listener, state, stop).await;
    // Every document stores what it holds before the store closes.
    registry.close().await;
    if let Some(bus) = bus {
        // The other nodes drop this node's presence at once.
        bus.close().await;
    }
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

    /// An unreachable database at start is a clear error that names where it looked, never
    /// the password.
    #[tokio::test]
    async fn an_unreachable_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default_for(dir.path());
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        config.database_url = Some(
            format!("postgres://tandem:hunter2@127.0.0.1:{port}/cluster")
                .parse()
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = run(listener, config, std::future::pending())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("127.0.0.1") && err.contains("cluster"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
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
