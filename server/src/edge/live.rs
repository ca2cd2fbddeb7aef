//! Long-lived responses (WebSockets, event streams) hold a place on the server for as long as
//! they stay open, and must end when their token stops being valid.
//!
//! [`admit`] asks for one of the `--max-connections` slots within the per-IP connection rate
//! before anything is opened; a refusal is HTTP 429 or 503 with `Retry-After: 1`. [`Live`]
//! then files the connection under its user, so `POST /admin/revoke` reaches it, and knows when
//! its token expires. Every long-lived route goes through both.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use super::error::ApiError;
use super::state::AppState;
use crate::access::conns::{Admission, Registration};
use crate::access::token::Identity;
use crate::base::clock::now_ms;
use crate::base::close::{code, Close};

/// Close reason of a connection whose token expired.
pub const EXPIRED_REASON: &str = "token expired";

/// Admits a long-lived connection from `ip`, or answers the refusal (counted in
/// `tandem_limit_breaches_total`).
#[allow(clippy::result_large_err)]
pub fn admit(state: &AppState, ip: IpAddr) -> Result<Admission, Response> {
    state
        .auth
        .admit(ip, &state.config.limits, Instant::now())
        .map_err(|kind| {
            state.metrics.limit_breached(kind);
            tracing::debug!(%ip, limit = kind.as_str(), "refusing a long-lived connection");
            ([(header::RETRY_AFTER, "1")], ApiError::from(kind)).into_response()
        })
}

/// An open long-lived connection's hold: its admission slot, its registration for revocation,
/// and its token's expiry. Dropping it gives both back.
#[derive(Debug)]
pub struct Live {
    _admission: Admission,
    _registration: Registration,
    revoked: oneshot::Receiver<Close>,
    expires_at: Option<tokio::time::Instant>,
}

impl Live {
    /// Files the connection of `identity` (admitted with `admission`) under its user.
    pub fn register(state: &AppState, admission: Admission, identity: &Identity) -> Live {
        let (tx, revoked) = oneshot::channel();
        let registration = state.auth.register(identity, tx);
        let expires_at = identity.expires_at.map(|exp| {
            let left = exp.saturating_mul(1000).saturating_sub(now_ms());
            tokio::time::Instant::now() + Duration::from_millis(left)
        });
        Live {
            _admission: admission,
            _registration: registration,
            revoked,
            expires_at,
        }
    }

    /// When the token expires (`None` in open development mode).
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.expires_at
    }

    /// Completes when the user is revoked, with the close that says so.
    pub async fn revoked(&mut self) -> Close {
        match (&mut self.revoked).await {
            Ok(close) => close,
            // The registry dropped the handle without firing it: nothing will.
            Err(_) => std::future::pending().await,
        }
    }

    /// Completes when the connection must end: revoked, or its token expired.
    pub async fn ended(&mut self) -> Close {
        let expiry = self.expires_at;
        let expired = async move {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            close = self.revoked() => close,
            () = expired => Close::new(code::UNAUTHORIZED, EXPIRED_REASON),
        }
    }
}
