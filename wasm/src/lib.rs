//! tandem's browser bindings: the engine's [`Document`](document::WasmDocument) (texts,
//! registers, per-user undo), [`Presence`](presence::WasmPresence) (viewers, typing, cursors) and
//! the client side of the wire protocol ([`protocol`]), exported to JavaScript with
//! wasm-bindgen.
//!
//! The bindings are thin newtypes over `tandem-engine` types with camelCase names. Everything
//! that touches the network, storage, timers or other tabs lives in the JavaScript provider
//! (`wasm/js/`), which calls these bindings; they read no clock (times are parameters, as in
//! the engine).
//!
//! ```
//! use tandem_wasm::document::WasmDocument;
//!
//! let mut alice = WasmDocument::new(1.0);
//! let update = alice.insert("alice", "description", 0, "Hello").unwrap();
//! let mut bob = WasmDocument::new(2.0);
//! bob.apply_update(&update, None).unwrap();
//! assert_eq!(bob.text("description").as_deref(), Some("Hello"));
//! ```

pub mod author;
pub mod convert;
pub mod document;
pub mod error;
pub mod presence;
pub mod protocol;
