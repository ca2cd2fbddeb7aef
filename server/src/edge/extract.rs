//! How every route learns who is asking: [`authenticate`] reads the request's token
//! (`Authorization: Bearer`, then `?token=`), checks it and counts refusals in the metrics;
//! [`Authorized`] is the axum extractor built on it that also checks the access the route
//! needs on its `{doc}` path parameter. The WebSocket routes use [`authenticate`] (or
//! [`authenticate_token`]) and [`document_role`] directly, because they answer refusals after
//! the upgrade: as close codes browsers can see, or per document in the Hocuspocus dialect.
//!
//! ```text
//! async fn snapshot(who: Authorized<ReadAccess>, State(state): State<AppState>) -> ... {
//!     let doc = who.doc();            // the checked `{doc}` path parameter
//!     let user = &who.identity.user;  // the authenticated user
//! }
//! async fn revoke(_: Authorized<AdminAccess>, ...) -> ... { ... }
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use tandem_engine::protocol::{ConnInfo, Role};

use super::error::{ApiError, ErrorCode};
use super::state::AppState;
use crate::access::token::{AuthError, Identity};
use crate::base::clock::unix_now;
use crate::base::name::DocName;
use crate::base::role::Access;
use crate::infra::store::Sid;

/// Finds a request's token: `Authorization: Bearer <token>` first, then `?token=` in the query.
pub fn token_from_request<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<Cow<'a, str>> {
    if let Some(value) = authorization {
        let mut parts = value.splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some(Cow::Borrowed(token.trim()));
            }
        }
    }
    let query = query?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Authenticates a request from its headers and query: finds its token, verifies it (and
/// that it is not revoked) now, and counts a refusal in `tandem_auth_unauthorized_total`.
pub fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Identity, AuthError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token_from_request(authorization, query);
    authenticate_token(state, token.as_deref())
}

/// Authenticates `token` now (a token that came another way than with the request, such as
/// the Hocuspocus dialect's Auth message), counting a refusal like [`authenticate`].
pub fn authenticate_token(state: &AppState, token: Option<&str>) -> Result<Identity, AuthError> {
    let identity = state
        .auth
        .authenticate(token, unix_now())
        .inspect_err(|e| count_refusal(state, e))?;
    // Remembered for notifications: who holds a token reaching which documents.
    state.notifier.seen(&identity);
    Ok(identity)
}

/// The role `identity` joins `doc` with over a WebSocket: [`Role::Write`] when it may change
/// the document, [`Role::Read`] when it may only read it (it syncs and sets presence; its
/// updates are refused), or the refusal (counted) when it may not even read it.
pub fn document_role(
    state: &AppState,
    identity: &Identity,
    doc: &DocName,
) -> Result<Role, AuthError> {
    if identity.check(doc, Access::Write).is_ok() {
        return Ok(Role::Write);
    }
    identity
        .check(doc, Access::Read)
        .map(|()| Role::Read)
        .inspect_err(|e| count_refusal(state, e))
}

/// Who a WebSocket connection of `identity` is, for the document it joins with `role`.
/// `extensions`: it receives tandem's extension messages; `stateless`: it receives stateless
/// messages (see `tandem_engine::protocol`).
pub fn conn_info(
    state: &AppState,
    identity: &Identity,
    role: Role,
    extensions: bool,
    stateless: bool,
) -> ConnInfo {
    ConnInfo {
        role,
        user: Some(identity.user.clone()),
        extensions,
        // Open development mode has no real identities: presence is relayed as sent.
        name: (!state.auth.is_open()).then(|| identity.name.clone()),
        stateless,
    }
}

/// Counts a refusal in `tandem_auth_unauthorized_total` or `tandem_auth_forbidden_total`.
pub fn count_refusal(state: &AppState, e: &AuthError) {
    if e.is_forbidden() {
        state.metrics.auth_forbidden.inc();
    } else {
        state.metrics.auth_unauthorized.inc();
    }
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
    doc: Option<DocName>,
    access: PhantomData<fn() -> A>,
}

impl<A: RequiredAccess> Authorized<A> {
    /// The checked document name (empty for admin routes).
    pub fn doc(&self) -> &str {
        self.doc.as_deref().unwrap_or_default()
    }

    /// The checked document name; `None` for admin routes.
    pub fn doc_name(&self) -> Option<&DocName> {
        self.doc.as_ref()
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
                let doc = params.get("doc").ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("route has no {{doc}} parameter"))
                })?;
                let doc = DocName::parse(doc)
                    .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
                Some(doc)
            }
        };
        let identity = authenticate(state, &parts.headers, parts.uri.query())?;
        if let Err(e) = identity.check(doc.as_deref().unwrap_or_default(), A::ACCESS) {
            count_refusal(state, &e);
            return Err(e.into());
        }
        Ok(Authorized {
            identity,
            doc,
            access: PhantomData,
        })
    }
}

/// Reads `?since=SID`.
pub fn parse_since(query: Option<&str>) -> Result<Option<Sid>, ApiError> {
    let Some(q) = query else { return Ok(None) };
    let Some(raw) = url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "since")
        .map(|(_, v)| v.into_owned())
    else {
        return Ok(None);
    };
    raw.parse::<Sid>()
        .map(Some)
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "since must be a sequence number"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
