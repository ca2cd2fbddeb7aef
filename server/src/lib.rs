//! The tandem server: the library behind the `tandem` binary.
//!
//! tandem serves Yjs documents over the y-websocket protocol, stores every accepted update
//! durably before acknowledging it, and guards access with signed tokens. This crate holds the
//! I/O around the sans-IO `tandem-engine`: sockets, storage, auth, limits and observability.
//!
//! # Quick start
//!
//! ```no_run
//! use tandem_server::{config::Config, http};
//!
//! # async fn start() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::default_for("./tandem-data"); // open development mode, 127.0.0.1:0
//! let listener = tokio::net::TcpListener::bind(config.addr).await?;
//! http::run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//!
//! - [`cli`]: the command line as typed (`tandem serve`, `tandem token`), with clap; every flag
//!   also reads a `TANDEM_*` environment variable. Raw values only; nothing else uses them.
//! - [`config`]: turns the raw `serve` flags into a validated [`config::Config`]: the address,
//!   open development mode (loopback only) or a secret, storage and Redis URLs, the
//!   [`config::Limits`] and the compaction/checkpoint [`config::History`]. Defaults live in
//!   [`config::defaults`].
//! - [`auth`]: HS256 tokens (`mint`, `verify`), document patterns (exact or `prefix*`), roles
//!   `read`/`write`/`admin`, and the [`auth::Auth`] handle that authenticates a request into an
//!   [`auth::Identity`] and remembers revocations. Close codes 4401/4403 are defined here.
//! - [`limits`]: [`limits::LimitKind`] names every limit with its close code, HTTP status and
//!   metrics label; [`limits::TokenBucket`] and [`limits::IpRateLimiter`] enforce the rates.
//! - [`metrics`]: a fixed set of atomic counters, gauges and histograms behind a cheap-`Clone`
//!   [`metrics::Metrics`] handle, rendered in the Prometheus text format.
//! - [`store`]: the [`store::Store`] trait (append-only log with per-document sids, snapshots
//!   by compaction, `updates_since`, version-history checkpoints) and its embedded SQLite
//!   implementation [`store::sqlite::SqliteStore`], whose single writer thread group-commits
//!   many appends per fsync'd transaction and answers each only once durable.
//! - [`shutdown`]: a cloneable shutdown signal every long-lived task selects on.
//! - [`docs`]: the registry of loaded documents. Each document has one owner task that loads
//!   it (concurrent first connections share the load; a failed load stores nothing), runs the
//!   engine's room, fans frames out to bounded per-connection queues, stores accepted updates
//!   and acks them once durable, and unloads when the last connection has left.
//! - [`conns`]: live connections: admission (per-IP connection rate, `--max-connections`)
//!   and a registry by user with a close handle each, so a revocation closes them.
//! - [`outbox`]: a connection's bounded outbound frame queue, holding no allocation while
//!   empty (most connections are idle).
//! - [`admin`]: `POST /admin/revoke` (admin role).
//! - [`ws`]: `GET /ws/{doc}`, the y-websocket protocol over a WebSocket: authenticate, upgrade,
//!   attach to the document's owner task, then a reader loop and a writer loop per connection
//!   with ping/pong liveness.
//! - [`http`]: the router ([`http::app`]), the JSON [`http::ApiError`], and [`http::run`]: open
//!   the store, serve with graceful shutdown, close every document, then flush and close the
//!   store.
//!
//! Architecture invariant: nothing here interprets Yjs bytes except through the engine; the
//! store treats updates and snapshots as opaque bytes.

pub mod admin;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod conns;
pub mod demo;
pub mod docs;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod shutdown;
pub mod sse;
pub mod store;
pub mod ws;
