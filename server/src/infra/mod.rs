//! Infrastructure: what the server runs on, known to every layer above and knowing none of
//! them.
//!
//! - [`bus`]: the live channel between tandem nodes (Redis pub/sub): updates, presence,
//!   revocations, node liveness; best-effort, reconnecting, honest about its health.
//! - [`cli`]: the command line as typed (`tandem serve`, `tandem token`) with clap; every flag
//!   also reads a `TANDEM_*` environment variable. Raw values and their defaults only.
//! - [`config`]: turns the raw `serve` flags into a validated [`config::Config`].
//! - [`metrics`]: a fixed set of atomic counters, gauges and histograms, rendered in the
//!   Prometheus text format.
//! - [`shutdown`]: a cloneable shutdown signal every long-lived task selects on.
//! - [`store`]: the [`store::Store`] trait and its embedded SQLite implementation.
//! - [`webhook`]: webhook outbox rows, event rendering, signatures, and the delivery worker.

pub mod bus;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod shutdown;
pub mod store;
pub mod webhook;
