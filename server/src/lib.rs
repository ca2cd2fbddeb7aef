//! The tandem server: the library behind the `tandem` binary.
//!
//! tandem serves Yjs documents over the y-websocket protocol, stores every accepted update
//! durably before acknowledging it, and guards access with signed tokens. This crate holds the
//! I/O around the sans-IO `tandem-engine`: sockets, storage, auth, limits and observability.
//!
//! # Quick start
//!
//! ```no_run
//! use tandem_server::{run, Config};
//!
//! # async fn start() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::default_for("./tandem-data"); // open development mode, 127.0.0.1:0
//! let listener = tokio::net::TcpListener::bind(config.addr).await?;
//! run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layers
//!
//! The modules form layers; a module imports only from its own layer or the layers below
//! (checked by `server/tests/layers.rs`, which also refuses import cycles):
//!
//! 1. [`edge`]: HTTP, WebSocket and SSE routes, the router, `run`.
//! 2. [`documents`]: the loaded documents, each with one owner task: command loop, fan-out,
//!    commit pipeline, event feed, compaction.
//! 3. [`access`]: tokens, authentication and revocation, admission, rate limiters.
//! 4. [`infra`]: command line, configuration, metrics, shutdown, storage.
//! 5. [`base`]: small shared types: close codes, document names, roles, limits, clock.
//!
//! Architecture invariant: nothing here interprets Yjs bytes except through the engine; the
//! store treats updates and snapshots as opaque bytes.

pub mod access;
pub mod base;
pub mod documents;
pub mod edge;
pub mod infra;

pub use edge::serve::run;
pub use infra::config::Config;
