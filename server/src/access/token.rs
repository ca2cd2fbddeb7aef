//! Tokens and identities: the claims a tandem token carries, [`mint`] and [`verify`] (HS256,
//! time as a parameter), the [`Identity`] a verified token gives, and [`AuthError`], why a
//! token or an access was refused.
//!
//! A token is a JWT signed with the server secret. Its claims name the user, the documents it
//! opens (an exact name, or a prefix ending in `*`) and a role.

use std::time::Duration;

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::base::close::code;
use crate::base::name::{DocPattern, EmptyPattern};
use crate::base::role::{Access, Role};
use crate::infra::config::Secret;

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
    /// An empty document pattern.
    #[error(transparent)]
    EmptyPattern(#[from] EmptyPattern),
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
            AuthError::WrongDocument | AuthError::InsufficientRole { .. } => code::FORBIDDEN,
            _ => code::UNAUTHORIZED,
        }
    }

    /// Whether this is a refusal of access (HTTP 403) rather than of identity (HTTP 401).
    pub fn is_forbidden(&self) -> bool {
        self.close_code() == code::FORBIDDEN
    }
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
        &EncodingKey::from_secret(secret.expose()),
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
        &DecodingKey::from_secret(secret.expose()),
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

/// A secret and claims for the unit tests of this layer.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Claims, Role, Secret};

    /// The time the fixtures' tokens are issued at.
    pub const NOW: u64 = 1_700_000_000;

    pub fn secret() -> Secret {
        Secret::new("a test secret that is long enough!").unwrap()
    }

    /// User `u1` ("Ada") on `doc` with `role`, issued at [`NOW`], valid for an hour.
    pub fn claims(doc: &str, role: Role) -> Claims {
        Claims {
            sub: "u1".into(),
            name: Some("Ada".into()),
            doc: doc.into(),
            role,
            exp: NOW + 3600,
            iat: NOW,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{claims, secret, NOW};
    use super::*;

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
            &EncodingKey::from_secret(secret().expose()),
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
            &EncodingKey::from_secret(secret().expose()),
        )
        .unwrap();
        assert_eq!(verify(&secret(), &token, NOW), Err(AuthError::Malformed));
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
}
