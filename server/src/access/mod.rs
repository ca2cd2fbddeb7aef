//! Who may do what: tokens and identities ([`token`]), the authentication handle with
//! revocation ([`auth`], [`revocation`]), admission and the registry of live connections
//! ([`conns`]), and the rate limiters ([`limits`]).
//!
//! Architecture invariant: nothing here knows HTTP, documents or the engine. The edge turns
//! requests into calls of these types; the document layer never authenticates.

pub mod auth;
pub mod conns;
pub mod limits;
pub mod revocation;
pub mod token;
