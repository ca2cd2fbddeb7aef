//! The server's authentication handle: [`Auth`] knows the mode (open development mode, or a
//! secret), authenticates tokens into identities, records revocations and closes the
//! connections they reach.
//!
//! Every function takes time as unix seconds from the caller, so tests never depend on the
//! clock. Token times are whole seconds, so a revocation at second `t` also refuses tokens
//! minted during second `t` after it; mint replacement tokens from the next second on.
//!
//! # Live connections and revocation
//!
//! Long-lived connections (WebSockets, event streams) are admitted with [`Auth::admit`] (the
//! per-IP connection rate and `--max-connections`) and filed under their user with
//! [`Auth::register`], which takes the close handle the connection's loop selects on.
//! [`Auth::revoke`] refuses the user's tokens issued up to a time and fires the close handles
//! of their open connections (code 4401, reason [`REVOKED_REASON`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::conns::{Admission, Connections, Registration};
use super::revocation::{LocalRevocations, Revocations};
use super::token::{verify, AuthError, Identity};
use crate::base::close::{code, Close};
use crate::base::limit::LimitKind;
use crate::base::role::Access;
use crate::infra::config::{AuthMode, Limits};

/// Close reason (with code 4401) of connections closed by a revocation.
pub const REVOKED_REASON: &str = "token revoked";

/// The server's authentication handle: cheap to clone, shared by every route.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

#[derive(Debug)]
struct AuthInner {
    mode: AuthMode,
    /// Who was revoked, and up to when.
    revocations: Arc<dyn Revocations>,
    /// Open WebSockets and event streams, by user.
    connections: Connections,
}

impl Auth {
    /// Creates the handle for `mode`, with revocations kept in this process.
    pub fn new(mode: AuthMode) -> Self {
        Self::with_revocations(mode, Arc::new(LocalRevocations::default()))
    }

    /// Creates the handle for `mode` over a revocation record (shared by several nodes).
    pub fn with_revocations(mode: AuthMode, revocations: Arc<dyn Revocations>) -> Self {
        Auth {
            inner: Arc::new(AuthInner {
                mode,
                revocations,
                connections: Connections::new(),
            }),
        }
    }

    /// The mode this handle was created with.
    pub fn mode(&self) -> &AuthMode {
        &self.inner.mode
    }

    /// Whether the server runs in open development mode.
    pub fn is_open(&self) -> bool {
        matches!(self.inner.mode, AuthMode::Open)
    }

    /// Authenticates a request's token at `now` (unix seconds).
    ///
    /// In open mode every request, with or without a token, is [`Identity::development`].
    pub fn authenticate(&self, token: Option<&str>, now: u64) -> Result<Identity, AuthError> {
        let secret = match &self.inner.mode {
            AuthMode::Open => return Ok(Identity::development()),
            AuthMode::Secret(secret) => secret,
        };
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingToken)?;
        let claims = verify(secret, token, now)?;
        if self.is_revoked(&claims.sub, claims.iat) {
            return Err(AuthError::Revoked);
        }
        Identity::from_claims(claims)
    }

    /// Authenticates and checks access to `doc` in one step.
    pub fn authorize(
        &self,
        token: Option<&str>,
        doc: &str,
        access: Access,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let identity = self.authenticate(token, now)?;
        identity.check(doc, access)?;
        Ok(identity)
    }

    /// Refuses every token of `user` issued at or before `at` (unix seconds), and closes the
    /// user's open connections made with such tokens (code 4401, reason
    /// [`REVOKED_REASON`]). Returns how many connections were told to close.
    pub fn revoke(&self, user: &str, at: u64) -> usize {
        // Recorded before the registry is scanned; `register` files before it checks. Whichever
        // of the two runs second sees the other, so no connection slips between them.
        self.inner.revocations.revoke(user, at);
        self.close_revoked(user, at)
    }

    /// Closes this node's connections of `user` made with tokens issued at or before `at`,
    /// for a revocation already recorded (by this node or, with a shared record, another).
    pub fn close_revoked(&self, user: &str, at: u64) -> usize {
        self.inner
            .connections
            .close_user(user, at, &Close::new(code::UNAUTHORIZED, REVOKED_REASON))
    }

    /// The server's live connections.
    pub fn connections(&self) -> &Connections {
        &self.inner.connections
    }

    /// Admits a new long-lived connection from `ip` (see [`Connections::admit`]); hold the
    /// [`Admission`] while the connection is open. A refusal names the limit: count it with
    /// `metrics.limit_breached(kind)` and answer `ApiError::from(kind)`.
    pub fn admit(&self, ip: IpAddr, limits: &Limits, now: Instant) -> Result<Admission, LimitKind> {
        self.inner.connections.admit(ip, limits, now)
    }

    /// Files an open connection of `identity` under a close handle, fired (at most once) when
    /// the user is revoked; drop the [`Registration`] when the connection ends. A revocation
    /// that raced with the connection's authentication fires the handle at once.
    pub fn register(&self, identity: &Identity, close: oneshot::Sender<Close>) -> Registration {
        let registration =
            self.inner
                .connections
                .register(&identity.user, identity.issued_at, close);
        // Open mode never refuses a token, so it does not close new connections either.
        if !self.is_open() {
            if let Some(at) = self.inner.revocations.revoked_at(&identity.user) {
                if identity.issued_at <= at {
                    self.inner.connections.close_user(
                        &identity.user,
                        at,
                        &Close::new(code::UNAUTHORIZED, REVOKED_REASON),
                    );
                }
            }
        }
        registration
    }

    /// The latest revocation time of `user` (unix seconds), if any.
    pub fn revoked_at(&self, user: &str) -> Option<u64> {
        self.inner.revocations.revoked_at(user)
    }

    /// Whether a token of `user` issued at `issued_at` has been revoked.
    pub fn is_revoked(&self, user: &str, issued_at: u64) -> bool {
        self.inner
            .revocations
            .revoked_at(user)
            .is_some_and(|at| issued_at <= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::token::fixtures::{claims, secret, NOW};
    use crate::access::token::{mint, Claims};
    use crate::base::role::Role;

    #[test]
    fn open_mode_admits_everyone() {
        let auth = Auth::new(AuthMode::Open);
        let id = auth.authorize(None, "any", Access::Write, NOW).unwrap();
        assert_eq!(id, Identity::development());
    }

    #[test]
    fn secret_mode_requires_a_valid_token() {
        let auth = Auth::new(AuthMode::Secret(secret()));
        assert_eq!(auth.authenticate(None, NOW), Err(AuthError::MissingToken));
        assert_eq!(
            auth.authenticate(Some(""), NOW),
            Err(AuthError::MissingToken)
        );
        let token = mint(&secret(), &claims("doc", Role::Write)).unwrap();
        let id = auth
            .authorize(Some(&token), "doc", Access::Write, NOW)
            .unwrap();
        assert_eq!((id.user.as_str(), id.expires_at), ("u1", Some(NOW + 3600)));
        assert_eq!(
            auth.authorize(Some(&token), "doc2", Access::Read, NOW),
            Err(AuthError::WrongDocument)
        );
    }

    #[test]
    fn revocation_refuses_older_tokens_only() {
        let auth = Auth::new(AuthMode::Secret(secret()));
        let old = mint(&secret(), &claims("d", Role::Write)).unwrap();
        auth.revoke("u1", NOW + 5);
        assert_eq!(
            auth.authenticate(Some(&old), NOW + 6),
            Err(AuthError::Revoked)
        );
        // An earlier revocation time never overrides a later one.
        auth.revoke("u1", NOW);
        assert!(auth.is_revoked("u1", NOW + 5));
        let fresh = mint(
            &secret(),
            &Claims {
                iat: NOW + 6,
                ..claims("d", Role::Write)
            },
        )
        .unwrap();
        assert!(auth.authenticate(Some(&fresh), NOW + 6).is_ok());
        assert!(!auth.is_revoked("u2", NOW));
    }

    #[test]
    fn revocation_closes_open_connections_and_late_registrations() {
        let auth = Auth::new(AuthMode::Secret(secret()));
        let token = mint(&secret(), &claims("d", Role::Write)).unwrap();
        let id = auth.authenticate(Some(&token), NOW).unwrap();
        let (tx, mut rx) = oneshot::channel();
        let _live = auth.register(&id, tx);
        assert_eq!(auth.revoke("u1", NOW + 1), 1);
        let close = rx.try_recv().unwrap();
        assert_eq!((close.code, close.reason.as_str()), (4401, REVOKED_REASON));
        // A connection authenticated before the revocation but registered after it is closed
        // as it registers.
        let (tx, mut rx) = oneshot::channel();
        let _late = auth.register(&id, tx);
        assert_eq!(rx.try_recv().unwrap().code, 4401);
        // A token issued after the revocation is unaffected.
        let fresh = Identity {
            issued_at: NOW + 2,
            ..id
        };
        let (tx, mut rx) = oneshot::channel();
        let _fresh = auth.register(&fresh, tx);
        assert!(rx.try_recv().is_err());
        assert_eq!(auth.connections().of_user("u1"), 1);
    }

    #[test]
    fn open_mode_does_not_close_new_connections_after_a_revocation() {
        let auth = Auth::new(AuthMode::Open);
        let dev = Identity::development();
        let (tx, mut rx) = oneshot::channel();
        let _old = auth.register(&dev, tx);
        assert_eq!(auth.revoke("dev", NOW), 1);
        assert!(rx.try_recv().is_ok());
        let (tx, mut rx) = oneshot::channel();
        let _new = auth.register(&dev, tx);
        assert!(rx.try_recv().is_err());
    }
}
