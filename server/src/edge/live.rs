//! Long-lived responses (WebSockets, event streams) hold a place on the server for as long as
//! they stay open, and must end when their token stops being valid.
//!
//! [`admit`] asks for one of the `--max-connections` slots within the per-IP connection rate
//! before anything is opened; a refusal is HTTP 429 or 503 with `Retry-After: 1`. [`Live`]
//! then files the connection under its user, so `POST /admin/revoke` reaches it, and knows when
//! its token expires. Every long-lived route goes through both. A Hocuspocus socket, whose
//! documents are each authorized with a token of their own, holds its admission and one
//! [`Grant`] (registration and expiry) per document instead.

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

/// An open long-lived connection's hold: its admission slot and the [`Grant`] of its token.
/// Dropping it gives both back.
#[derive(Debug)]
pub struct Live {
    _admission: Admission,
    grant: Grant,
}

impl Live {
    /// Files the connection of `identity` (admitted with `admission`) under its user.
    pub fn register(state: &AppState, admission: Admission, identity: &Identity) -> Live {
        Live {
            _admission: admission,
            grant: Grant::register(state, identity),
        }
    }

    /// When the token expires (`None` in open development mode).
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.grant.expires_at()
    }

    /// Completes when the user is revoked, with the close that says so.
    pub async fn revoked(&mut self) -> Close {
        self.grant.revoked().await
    }

    /// Completes when the connection must end: revoked, or its token expired.
    pub async fn ended(&mut self) -> Close {
        self.grant.ended().await
    }
}

/// What one token grants a live connection, for as long as it lasts: its registration for
/// revocation and its expiry. A connection holds one per token it was authorized with (a
/// Hocuspocus socket, one per document). Dropping it unregisters.
#[derive(Debug)]
pub struct Grant {
    _registration: Registration,
    revoked: oneshot::Receiver<Close>,
    expires_at: Option<tokio::time::Instant>,
}

impl Grant {
    /// Files `identity` under its user, so a revocation reaches it.
    pub fn register(state: &AppState, identity: &Identity) -> Grant {
        let (tx, revoked) = oneshot::channel();
        let registration = state.auth.register(identity, tx);
        let expires_at = identity.expires_at.map(|exp| {
            let left = exp.saturating_mul(1000).saturating_sub(now_ms());
            tokio::time::Instant::now() + Duration::from_millis(left)
        });
        Grant {
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

    /// Completes when the grant ends: revoked, or the token expired.
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
