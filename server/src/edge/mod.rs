//! The HTTP edge: everything that speaks HTTP, WebSocket or SSE, above the document layer.
//!
//! - [`state`]: [`state::AppState`], the handles every route reaches.
//! - [`error`]: [`error::ApiError`], the one error type every route answers with (`{"error":
//!   code, "message": text}`, the cause logged, never sent).
//! - [`extract`]: [`extract::Authorized`], the one way every route authenticates.
//! - [`json`]: how documents and registers look in JSON.
//! - [`idempotency`]: the `Idempotency-Key` header, request fingerprints, answers and replays.
//! - [`router`]: [`router::app`], every route, `/healthz`, `/metrics`.
//! - [`serve`]: [`serve::run`], what `tandem serve` calls.
//! - [`cluster`]: [`cluster::Cluster`], a node among several: the bus's events to the
//!   documents, position checks against the shared store, revocations, readiness.
//! - [`socket`]: WebSocket plumbing both dialects share (upgrade, batched writes, closes,
//!   pacing), over [`wsio`] (the byte stream under the codec, with buffers held only while
//!   bytes wait in them) and [`wire`] (every accepted TCP connection, which a y-websocket
//!   connection's document writes small frames to itself); [`live`]: [`live::Live`], the admission, revocation and expiry of every
//!   long-lived response.
//! - Routes: [`ws`] (`/ws/{doc}`, y-websocket), [`hocuspocus`] (`/ws`, the Hocuspocus
//!   dialect), [`sse`] (`/docs/{doc}/events`), [`documents`] (the other document routes),
//!   [`inbox`] (`/me/notifications…`, the token's user's notifications and their stream),
//!   [`webhooks`] (`/admin/webhooks/deliveries…`), [`admin`], [`demo`] (with [`package`], the browser package and its build), [`openapi`].

pub mod admin;
pub mod cluster;
pub mod deflate;
pub mod demo;
pub mod documents;
pub mod error;
pub mod extract;
pub mod hocuspocus;
pub mod idempotency;
pub mod inbox;
pub mod json;
pub mod live;
pub mod openapi;
pub mod package;
pub mod router;
pub mod serve;
pub mod socket;
pub mod sse;
pub mod state;
pub mod webhooks;
pub mod wire;
pub mod ws;
pub mod wsio;
