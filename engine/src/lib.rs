//! tandem's engine: everything tandem knows about a document, with no I/O.
//!
//! - [`document`]: a yrs document with named text fields (UTF-16 offsets), last-write-wins
//!   registers ([`register`]) and per-user undo; [`merge_updates`] for stored logs.
//! - [`presence`]: typed awareness states — viewers, typing, cursors, per-user summaries and
//!   their changes — and their expiry.
//! - [`protocol`]: the y-websocket protocol (plus tandem's extensions) as a sans-IO state
//!   machine: frames in, frames out, addressed to connections.
//! - [`hocuspocus`]: the Hocuspocus dialect (every message prefixed by its document's name) as
//!   a pure codec, translating to and from what a [`protocol::Room`] speaks.
//! - [`wire`] and [`guard`]: bounded decoding of untrusted bytes.
//!
//! The engine never reads a clock: times are passed in as milliseconds since the Unix epoch.
//!
//! ```
//! use tandem_engine::Document;
//!
//! let mut alice = Document::new(1);
//! let mut bob = Document::new(2);
//! let update = alice.insert("alice", "description", 0, "Hello").unwrap();
//! bob.apply_update(&update, Some("alice")).unwrap();
//! assert_eq!(bob.text("description").as_deref(), Some("Hello"));
//!
//! alice.set_time(1_000);
//! let (_, update) = alice.set_field("alice", "status", Some("done".into())).unwrap();
//! bob.apply_update(&update, Some("alice")).unwrap();
//! assert_eq!(bob.field("status").unwrap().value, "done");
//! ```

pub mod document;
pub mod error;
pub mod guard;
pub mod hocuspocus;
pub mod mention;
pub mod presence;
pub mod protocol;
pub mod register;
pub mod wire;

pub use document::{merge_updates, Applied, Change, DeltaOp, Document};
pub use error::{DecodeError, DocumentError, ProtocolError};
pub use register::FieldValue;
