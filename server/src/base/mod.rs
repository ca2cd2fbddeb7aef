//! The bottom layer: small value types every other layer speaks, with no server state and no
//! imports from the rest of the crate.
//!
//! - [`close`]: [`close::Close`] and every WebSocket close code the server sends, with what a
//!   stock client does on each.
//! - [`name`]: [`name::DocName`], a checked document name, and [`name::DocPattern`], the
//!   document patterns tokens carry.
//! - [`role`]: token roles and the access a request needs.
//! - [`limit`]: [`limit::LimitKind`], every limit a client can breach with its label, close
//!   code, HTTP status and reason.
//! - [`clock`]: wall-clock readings in the two units the server uses.

pub mod clock;
pub mod close;
pub mod limit;
pub mod name;
pub mod role;
