//! tandem-bench: a load generator whose simulated clients speak the y-websocket protocol (and
//! Hocuspocus's dialect of it), used to benchmark tandem side by side with Hocuspocus and the
//! y-websocket reference server. `bench/run.sh` starts each server, runs the workloads with the
//! `tandem-bench` binary and writes `bench/RESULTS.md`.
//!
//! # Code map
//! - [`lib0`]: varUint / varByteArray / varString codec.
//! - [`protocol`]: y-websocket messages (sync step1/step2/update, awareness, auth) in both
//!   dialects: stock (document named by the URL) and Hocuspocus (document name before every
//!   message, Auth(Token) first).
//! - [`scan`]: reads which ids a Yjs v1 update inserts and deletes, without a document.
//! - [`tracker`]: every edit a writer sends gets a sequence number and a key (its first id, or
//!   an awareness client/clock); readers match what they receive to those keys, even when a
//!   server merges updates, and take latency from one process clock.
//! - [`trace`]: editing traces and their replay into one yrs update per transaction.
//! - [`client`]: one socket (connect, open like a stock provider, split into halves).
//! - [`peer`]: what a client does with received frames (synced, presence, latency, full
//!   checks) and the shared [`peer::Progress`] counters workloads wait on.
//! - [`workloads`]: W1–W6, the several-node workloads C1–C3 (ingest with acknowledged updates
//!   only, cross-node fan-out, failover after `kill -9`), and the harness that connects fleets
//!   of clients (to one node or spread over several).
//! - [`capacity`]: W9's ladder of typing loads and what one step measured.
//! - [`floor`]: the floor relay (`tandem-bench floor`): the same fan-out without CRDT or
//!   protocol, for CPU per delivery ratios.
//! - [`stats`], [`procstat`]: latency histograms; CPU and memory from /proc.
//! - [`report`]: RESULTS.md from result files; [`report::nodes`] its "Several nodes" section
//!   (`bench/cluster.sh`).
//!
//! Architecture invariant: the generator knows servers only through [`target::Target`] (a URL
//! scheme and a dialect); nothing here depends on tandem's own crates, so the same client code
//! measures every server.
//!
//! # Quick start
//! ```
//! use tandem_bench::protocol::{awareness_update, Dialect, Incoming, EMPTY_STATE_VECTOR};
//!
//! // What a Hocuspocus client sends first, and how a reply is read.
//! let d = Dialect::Hocuspocus { doc: "notes".into() };
//! let auth = d.auth_token("any-token").expect("Hocuspocus has an auth message");
//! let step1 = d.step1(EMPTY_STATE_VECTOR);
//! assert!(auth.len() > 2 && step1.len() > 2);
//! let presence = d.awareness(&awareness_update(7, 1, r#"{"user":{"name":"ada"}}"#));
//! let mut seen = Vec::new();
//! d.for_each(&presence, |m| seen.push(matches!(m, Incoming::Awareness(_))))
//!     .expect("decodes");
//! assert_eq!(seen, vec![true]);
//! ```
//!
//! Running a workload needs a server: `bench/run.sh --quick --servers ywebsocket`.

pub mod capacity;
pub mod client;
pub mod floor;
pub mod lib0;
pub mod peer;
pub mod procstat;
pub mod protocol;
pub mod report;
pub mod scan;
pub mod stats;
pub mod target;
pub mod trace;
pub mod tracker;
pub mod workloads;
