//! Tokens, document patterns, roles and revocation.
//!
//! A token is a JWT signed with HS256 and the server secret. Its claims name the user, the
//! documents it opens (an exact name, or a prefix ending in `*`) and a role. [`mint`] signs one,
//! [`verify`] checks one against an explicit `now`, and [`Auth`] is the server-side handle that
//! also knows whether the server runs in open development mode and which users were revoked.
//!
//! Every function takes time as unix seconds from the caller, so tests never depend on the clock.
//!
//! # Checking requests
//!
//! HTTP routes take an [`Authorized`] extractor (or call [`authorize_request`]): it reads the
//! token (`Authorization: Bearer`, then `?token=`), checks it and the access the route needs on
//! the `{doc}` path parameter, counts refusals in the metrics and answers them as JSON 401/403.
//!
//! ```text
//! async fn snapshot(who: Authorized<ReadAccess>, State(state): State<AppState>) -> ... {
//!     let doc = who.doc();            // the checked `{doc}` path parameter
//!     let user = &who.identity.user;  // the authenticated user
//! }
//! async fn revoke(_: Authorized<AdminAccess>, ...) -> ... { ... }
//! ```
//!
//! # Live connections and revocation
//!
//! Long-lived connections (WebSockets, event streams) are admitted with [`Auth::admit`] (the
//! per-IP connection rate and `--max-connections`) and filed under their user with
//! [`Auth::register`], which takes the close handle the connection's loop selects on.
//! [`Auth::revoke`] refuses the user's tokens issued up to a time and fires the close handles
//! of their open connections ([`CLOSE_UNAUTHORIZED`], [`REVOKED_REASON`]). Revocations live in
//! memory: they are forgotten on restart and are not shared between nodes.
//!
//! Token times are whole seconds, so a revocation at second `t` also refuses tokens minted
//! during second `t` after it; mint replacement tokens from the next second on.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use dashmap::DashMap;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::conns::{Admission, Connections, Registration};
use crate::docs::Close;
use crate::http::{ApiError, AppState, ErrorCode};
use crate::limits::LimitKind;

/// WebSocket close code for a missing, invalid, expired or revoked token.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// WebSocket close code for a valid token that does not grant the requested access.
pub const CLOSE_FORBIDDEN: u16 = 4403;
/// Close reason (with [`CLOSE_UNAUTHORIZED`]) of connections closed by a revocation.
pub const REVOKED_REASON: &str = "token revoked";

/// What a token allows, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sync and presence on the matching documents; updates are refused.
    Read,
    /// Everything on the matching documents.
    Write,
    /// Every document, plus the admin routes.
    Admin,
}

impl Role {
    /// The lowercase name used in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(AuthError::UnknownRole(s.to_owned())),
        }
    }
}

/// What a request wants to do; checked with [`Identity::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read a document: sync, snapshot, SSE, presence.
    Read,
    /// Change a document.
    Write,
    /// Use an admin route.
    Admin,
}

impl Access {
    fn required_role(self) -> Role {
        match self {
            Access::Read => Role::Read,
            Access::Write => Role::Write,
            Access::Admin => Role::Admin,
        }
    }
}

/// Which documents a token opens: an exact name, or every name starting with a prefix
/// (written with a trailing `*`; a lone `*` matches every document).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DocPattern {
    /// Exactly this document.
    Exact(String),
    /// Every document whose name starts with this prefix.
    Prefix(String),
}

impl DocPattern {
    /// Parses `name` or `prefix*`. Only a trailing `*` is special; an empty pattern is refused.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        if s.is_empty() {
            return Err(AuthError::EmptyPattern);
        }
        match s.strip_suffix('*') {
            Some(prefix) => Ok(DocPattern::Prefix(prefix.to_owned())),
            None => Ok(DocPattern::Exact(s.to_owned())),
        }
    }

    /// Whether `doc` is covered by this pattern.
    pub fn matches(&self, doc: &str) -> bool {
        match self {
            DocPattern::Exact(name) => name == doc,
            DocPattern::Prefix(prefix) => doc.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for DocPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocPattern::Exact(name) => f.write_str(name),
            DocPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl FromStr for DocPattern {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocPattern::parse(s)
    }
}

/// The claims a tandem token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The display name, when the issuer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The document pattern: exact, or a prefix ending in `*`.
    pub doc: String,
    /// The role on the matching documents.
    pub role: Role,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issue time, unix seconds.
    pub iat: u64,
}

/// Why a token or an access was refused, or a token could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The request carried no token while the server requires one.
    #[error("a token is required")]
    MissingToken,
    /// The token is not a well-formed JWT with tandem's claims.
    #[error("the token is malformed")]
    Malformed,
    /// The token was not signed with this server's secret (or not with HS256).
    #[error("the token signature is invalid")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("the token expired at {exp}")]
    Expired {
        /// The expiry claim, unix seconds.
        exp: u64,
    },
    /// The token's user was revoked after the token was issued.
    #[error("the token was revoked")]
    Revoked,
    /// The token's document pattern does not cover the requested document.
    #[error("the token does not grant access to this document")]
    WrongDocument,
    /// The token's role is too low for the requested access.
    #[error("role {have} cannot {want:?}")]
    InsufficientRole {
        /// The token's role.
        have: Role,
        /// The requested access.
        want: Access,
    },
    /// A role name other than `read`, `write` or `admin`.
    #[error("unknown role {0:?} (expected read, write or admin)")]
    UnknownRole(String),
    /// An empty document pattern.
    #[error("the document pattern is empty")]
    EmptyPattern,
    /// An empty secret cannot sign or verify tokens.
    #[error("the secret is empty")]
    EmptySecret,
    /// Signing failed inside the JWT library.
    #[error("could not sign the token: {0}")]
    Signing(String),
}

impl AuthError {
    /// The WebSocket close code for this refusal: 4401 for token problems, 4403 for access.
    pub fn close_code(&self) -> u16 {
        match self {
            AuthError::WrongDocument | AuthError::InsufficientRole { .. } => CLOSE_FORBIDDEN,
            _ => CLOSE_UNAUTHORIZED,
        }
    }

    /// Whether this is a refusal of access (HTTP 403) rather than of identity (HTTP 401).
    pub fn is_forbidden(&self) -> bool {
        self.close_code() == CLOSE_FORBIDDEN
    }
}

/// The server secret. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wraps a secret; empty secrets are refused.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, AuthError> {
        let bytes = bytes.as_ref();
        if bytes.is_empty() {
            return Err(AuthError::EmptySecret);
        }
        Ok(Secret(bytes.into()))
    }

    /// The secret's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty secret cannot be constructed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// The current time as unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What `tandem token` needs to sign a token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The user id (`sub`).
    pub user: String,
    /// The display name.
    pub name: Option<String>,
    /// The document pattern.
    pub doc: DocPattern,
    /// The role.
    pub role: Role,
    /// How long the token is valid.
    pub ttl: Duration,
}

impl TokenRequest {
    /// The claims this request produces when issued at `now` (unix seconds).
    pub fn claims(&self, now: u64) -> Claims {
        Claims {
            sub: self.user.clone(),
            name: self.name.clone(),
            doc: self.doc.to_string(),
            role: self.role,
            exp: now.saturating_add(self.ttl.as_secs()),
            iat: now,
        }
    }
}

/// Signs `claims` with HS256.
pub fn mint(secret: &Secret, claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.bytes()),
    )
    .map_err(|e| AuthError::Signing(e.to_string()))
}

/// Checks the signature, shape and expiry of `token` at `now` (unix seconds).
///
/// A token is valid while `now < exp`. Only HS256 is accepted.
pub fn verify(secret: &Secret, token: &str, now: u64) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the caller's clock, not the library's.
    validation.validate_exp = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iat", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
        _ => AuthError::Malformed,
    })?;
    let claims = data.claims;
    if now >= claims.exp {
        return Err(AuthError::Expired { exp: claims.exp });
    }
    if claims.doc.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(claims)
}

/// Who is behind a request, after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub user: String,
    /// The display name (the user id when the token named none).
    pub name: String,
    /// The documents this identity may open.
    pub pattern: DocPattern,
    /// The role on those documents.
    pub role: Role,
    /// When the identity stops being valid (unix seconds); `None` in open development mode.
    pub expires_at: Option<u64>,
    /// When the token was issued (unix seconds); 0 in open development mode.
    pub issued_at: u64,
}

impl Identity {
    /// The identity of every request in open development mode: an admin on every document.
    pub fn development() -> Self {
        Identity {
            user: "dev".to_owned(),
            name: "dev".to_owned(),
            pattern: DocPattern::Prefix(String::new()),
            role: Role::Admin,
            expires_at: None,
            issued_at: 0,
        }
    }

    /// Builds the identity carried by verified claims.
    pub fn from_claims(claims: Claims) -> Result<Self, AuthError> {
        let pattern = DocPattern::parse(&claims.doc)?;
        Ok(Identity {
            name: claims.name.unwrap_or_else(|| claims.sub.clone()),
            user: claims.sub,
            pattern,
            role: claims.role,
            expires_at: Some(claims.exp),
            issued_at: claims.iat,
        })
    }

    /// Whether this identity may perform `access` on `doc`. Admins reach every document;
    /// other roles only the documents their pattern matches. For [`Access::Admin`] `doc` is
    /// ignored.
    pub fn check(&self, doc: &str, access: Access) -> Result<(), AuthError> {
        let reaches_doc = self.role == Role::Admin || self.pattern.matches(doc);
        if access != Access::Admin && !reaches_doc {
            return Err(AuthError::WrongDocument);
        }
        if self.role < access.required_role() {
            return Err(AuthError::InsufficientRole {
                have: self.role,
                want: access,
            });
        }
        Ok(())
    }

    /// Whether this identity may change `doc` (a read role on a matching document may not).
    pub fn can_write(&self, doc: &str) -> bool {
        self.check(doc, Access::Write).is_ok()
    }
}

/// How the server authenticates requests.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// No secret: every request is [`Identity::development`]. Only allowed on loopback.
    Open,
    /// Tokens signed with this secret are required.
    Secret(Secret),
}

/// The server's authentication handle: cheap to clone, shared by every route.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

#[derive(Debug)]
struct AuthInner {
    mode: AuthMode,
    /// user id -> revocation time (unix seconds). Tokens of that user issued at or before it
    /// are refused.
    revoked: DashMap<String, u64>,
    /// Open WebSockets and event streams, by user.
    connections: Connections,
}

impl Auth {
    /// Creates the handle for `mode`.
    pub fn new(mode: AuthMode) -> Self {
        Auth {
            inner: Arc::new(AuthInner {
                mode,
                revoked: DashMap::new(),
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
    /// user's open connections made with such tokens (code [`CLOSE_UNAUTHORIZED`], reason
    /// [`REVOKED_REASON`]). Returns how many connections were told to close.
    pub fn revoke(&self, user: &str, at: u64) -> usize {
        // Recorded before the registry is scanned; `register` files before it checks. Whichever
        // of the two runs second sees the other, so no connection slips between them.
        self.inner
            .revoked
            .entry(user.to_owned())
            .and_modify(|t| *t = (*t).max(at))
            .or_insert(at);
        self.inner
            .connections
            .close_user(user, at, &Close::new(CLOSE_UNAUTHORIZED, REVOKED_REASON))
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
            if let Some(at) = self.inner.revoked.get(&identity.user).map(|at| *at) {
                if identity.issued_at <= at {
                    self.inner.connections.close_user(
                        &identity.user,
                        at,
                        &Close::new(CLOSE_UNAUTHORIZED, REVOKED_REASON),
                    );
                }
            }
        }
        registration
    }

    /// Whether a token of `user` issued at `issued_at` has been revoked.
    pub fn is_revoked(&self, user: &str, issued_at: u64) -> bool {
        self.inner
            .revoked
            .get(user)
            .is_some_and(|at| issued_at <= *at)
    }
}

/// Finds a request's token: `Authorization: Bearer <token>` first, then `?token=` in the query.
pub fn token_from_request<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(value) = authorization {
        let mut parts = value.splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some(std::borrow::Cow::Borrowed(token.trim()));
            }
        }
    }
    let query = query?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The access a route needs, as a type: the parameter of [`Authorized`].
pub trait RequiredAccess: Send + Sync + 'static {
    /// The access checked.
    const ACCESS: Access;
}

/// [`Authorized`] parameter: read the `{doc}` of the route.
#[derive(Debug)]
pub enum ReadAccess {}
/// [`Authorized`] parameter: change the `{doc}` of the route.
#[derive(Debug)]
pub enum WriteAccess {}
/// [`Authorized`] parameter: an admin route (no document).
#[derive(Debug)]
pub enum AdminAccess {}

impl RequiredAccess for ReadAccess {
    const ACCESS: Access = Access::Read;
}
impl RequiredAccess for WriteAccess {
    const ACCESS: Access = Access::Write;
}
impl RequiredAccess for AdminAccess {
    const ACCESS: Access = Access::Admin;
}

/// An axum extractor: the request carries a token granting `A` (on the route's `{doc}` path
/// parameter, for [`ReadAccess`] and [`WriteAccess`]). Rejects with a JSON [`ApiError`]: 400
/// for an invalid document name, 401 for a missing, invalid, expired or revoked token, 403 for
/// a token that does not reach the document or has too low a role.
#[derive(Debug)]
pub struct Authorized<A: RequiredAccess> {
    /// Who made the request.
    pub identity: Identity,
    doc: Option<String>,
    access: PhantomData<fn() -> A>,
}

impl<A: RequiredAccess> Authorized<A> {
    /// The checked document name (empty for admin routes).
    pub fn doc(&self) -> &str {
        self.doc.as_deref().unwrap_or_default()
    }
}

impl<A: RequiredAccess> FromRequestParts<AppState> for Authorized<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let doc = match A::ACCESS {
            Access::Admin => None,
            Access::Read | Access::Write => {
                let Path(params) =
                    Path::<HashMap<String, String>>::from_request_parts(parts, state)
                        .await
                        .map_err(|e| {
                            ApiError::new(ErrorCode::BadRequest, "invalid path").with_cause(e)
                        })?;
                let doc = params.get("doc").cloned().ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("route has no {{doc}} parameter"))
                })?;
                Some(doc)
            }
        };
        let identity = authorize_request(
            state,
            &parts.headers,
            parts.uri.query(),
            doc.as_deref(),
            A::ACCESS,
        )?;
        Ok(Authorized {
            identity,
            doc,
            access: PhantomData,
        })
    }
}

/// What [`Authorized`] does, for handlers that find the document elsewhere: validates `doc`
/// (when given), authenticates the request's token and checks `access`, counting refusals in
/// `tandem_auth_unauthorized_total` / `tandem_auth_forbidden_total`.
pub fn authorize_request(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    doc: Option<&str>,
    access: Access,
) -> Result<Identity, ApiError> {
    if let Some(doc) = doc {
        if !crate::ws::valid_doc_name(doc) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "invalid document name",
            ));
        }
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token_from_request(authorization, query);
    let checked = state
        .auth
        .authenticate(token.as_deref(), unix_now())
        .and_then(|identity| {
            identity.check(doc.unwrap_or_default(), access)?;
            Ok(identity)
        });
    checked.map_err(|e| {
        if e.is_forbidden() {
            state.metrics.auth_forbidden.inc();
        } else {
            state.metrics.auth_unauthorized.inc();
        }
        ApiError::from(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn secret() -> Secret {
        Secret::new("a test secret that is long enough!").unwrap()
    }

    fn claims(doc: &str, role: Role) -> Claims {
        Claims {
            sub: "u1".into(),
            name: Some("Ada".into()),
            doc: doc.into(),
            role,
            exp: NOW + 3600,
            iat: NOW,
        }
    }

    #[test]
    fn mint_then_verify_round_trips() {
        let c = claims("notes:*", Role::Write);
        let token = mint(&secret(), &c).unwrap();
        assert_eq!(verify(&secret(), &token, NOW).unwrap(), c);
    }

    #[test]
    fn token_request_sets_iat_and_exp() {
        let req = TokenRequest {
            user: "u7".into(),
            name: None,
            doc: DocPattern::parse("a").unwrap(),
            role: Role::Read,
            ttl: Duration::from_secs(90),
        };
        let c = req.claims(NOW);
        assert_eq!((c.iat, c.exp, c.doc.as_str()), (NOW, NOW + 90, "a"));
        let token = mint(&secret(), &c).unwrap();
        let back = verify(&secret(), &token, NOW + 89).unwrap();
        assert_eq!(back.name, None);
    }

    #[test]
    fn expiry_is_exclusive() {
        let token = mint(&secret(), &claims("d", Role::Read)).unwrap();
        assert!(verify(&secret(), &token, NOW + 3599).is_ok());
        assert_eq!(
            verify(&secret(), &token, NOW + 3600),
            Err(AuthError::Expired { exp: NOW + 3600 })
        );
    }

    #[test]
    fn wrong_secret_and_garbage_are_refused() {
        let token = mint(&secret(), &claims("d", Role::Read)).unwrap();
        let other = Secret::new("another secret").unwrap();
        assert_eq!(verify(&other, &token, NOW), Err(AuthError::BadSignature));
        assert_eq!(
            verify(&secret(), "not.a.jwt", NOW),
            Err(AuthError::Malformed)
        );
        assert_eq!(verify(&secret(), "", NOW), Err(AuthError::Malformed));
        // A tampered payload no longer matches its signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = mint(&other, &claims("*", Role::Admin)).unwrap();
        let forged_payload = forged.split('.').nth(1).unwrap().to_owned();
        parts[1] = &forged_payload;
        assert_eq!(
            verify(&secret(), &parts.join("."), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims("d", Role::Read),
            &EncodingKey::from_secret(secret().bytes()),
        )
        .unwrap();
        assert_eq!(verify(&secret(), &token, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn missing_claims_are_malformed() {
        #[derive(Serialize)]
        struct NoRole {
            sub: &'static str,
            doc: &'static str,
            exp: u64,
            iat: u64,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoRole {
                sub: "u",
                doc: "d",
                exp: NOW + 10,
                iat: NOW,
            },
            &EncodingKey::from_secret(secret().bytes()),
        )
        .unwrap();
        assert_eq!(verify(&secret(), &token, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn patterns_match_exact_and_prefix() {
        let check = |pattern: &str, doc: &str, expected: bool| {
            let p = DocPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(doc), expected, "{pattern} vs {doc}");
            assert_eq!(p.to_string(), pattern);
        };
        check("task:1", "task:1", true);
        check("task:1", "task:10", false);
        check("task:1*", "task:10", true);
        check("task:*", "task:", true);
        check("task:*", "tas", false);
        check("*", "anything", true);
        check("*", "", true);
        check("a*b", "a*b", true);
        check("a*b", "axb", false);
        assert_eq!(DocPattern::parse(""), Err(AuthError::EmptyPattern));
    }

    #[test]
    fn roles_gate_access() {
        let id = |pattern: &str, role| {
            Identity::from_claims(Claims {
                doc: pattern.into(),
                ..claims(pattern, role)
            })
            .unwrap()
        };
        let reader = id("team:*", Role::Read);
        assert_eq!(reader.check("team:1", Access::Read), Ok(()));
        assert_eq!(
            reader.check("team:1", Access::Write),
            Err(AuthError::InsufficientRole {
                have: Role::Read,
                want: Access::Write
            })
        );
        assert_eq!(
            reader.check("other", Access::Read),
            Err(AuthError::WrongDocument)
        );
        assert_eq!(
            reader.check("other", Access::Write),
            Err(AuthError::WrongDocument)
        );
        let writer = id("team:1", Role::Write);
        assert!(writer.can_write("team:1"));
        assert!(!writer.can_write("team:2"));
        assert!(writer.check("team:1", Access::Admin).is_err());
        let admin = id("nothing", Role::Admin);
        assert!(admin.can_write("anything"));
        assert_eq!(admin.check("", Access::Admin), Ok(()));
        assert_eq!(admin.name, "Ada");
    }

    #[test]
    fn close_codes_follow_the_kind_of_refusal() {
        assert_eq!(AuthError::MissingToken.close_code(), 4401);
        assert_eq!(AuthError::Expired { exp: 0 }.close_code(), 4401);
        assert_eq!(AuthError::Revoked.close_code(), 4401);
        assert_eq!(AuthError::WrongDocument.close_code(), 4403);
        assert!(AuthError::InsufficientRole {
            have: Role::Read,
            want: Access::Write
        }
        .is_forbidden());
    }

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

    #[test]
    fn tokens_are_found_in_header_or_query() {
        assert_eq!(
            token_from_request(Some("Bearer abc"), Some("token=zzz")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from_request(Some("bearer  abc "), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from_request(Some("Basic abc"), Some("x=1&token=a%2Eb")).as_deref(),
            Some("a.b")
        );
        assert_eq!(token_from_request(None, Some("token=")), None);
        assert_eq!(token_from_request(None, None), None);
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = format!("{:?}", secret());
        assert!(!s.contains("test secret"), "{s}");
        assert_eq!(Secret::new(""), Err(AuthError::EmptySecret));
    }

    #[test]
    fn roles_parse_and_print() {
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!(matches!(
            "owner".parse::<Role>(),
            Err(AuthError::UnknownRole(_))
        ));
    }
}
