//! The framework-independent half of every web adapter's middleware and extractors: the
//! error they refuse a request with ([`AuthError`], its status, `WWW-Authenticate` and
//! body), the checks their middleware runs ([`Guard`], implemented by [`BearerAuth`] and
//! [`RequiredScopes`]), and the mapping from the verified token an adapter stored in the
//! request to what a handler asks for ([`verified_token`], [`verified_claims`]).
//!
//! An adapter keeps only the glue its framework forces on it: reading its request
//! extensions, one middleware type generic over [`Guard`], the extractor types, and the
//! conversion of [`HttpResponse`] into its own response type.

use super::{AuthRejection, BearerAuth, HeaderSource, HttpResponse, OptionalBearerAuth, require_scopes};
use keyrot_core::Verified;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;

/// Why an adapter's middleware or extractor refused a request. It renders its own
/// response ([`AuthError::to_response`]): `401`/`403` with `WWW-Authenticate`, or `500`
/// when the verifying middleware is not installed in front of the route (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token was refused (missing, invalid, or without a required scope).
    #[error(transparent)]
    Rejected(#[from] AuthRejection),
    /// No verified token in the request: the verifying middleware (keyrot-axum's
    /// `BearerAuthLayer`, keyrot-actix's `BearerAuthMiddleware`) is not installed in
    /// front of the route. A bug in the application, answered `500`.
    #[error(
        "no verified token in the request: the bearer-auth middleware (BearerAuthLayer, BearerAuthMiddleware) \
         is not installed in front of this route; wrap the route (or its scope) in it"
    )]
    MissingMiddleware,
}

impl AuthError {
    /// The status code: `401`, `403`, or `500` for [`AuthError::MissingMiddleware`].
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Rejected(r) => r.status(),
            AuthError::MissingMiddleware => HttpResponse::missing_middleware().status,
        }
    }

    /// The response: [`AuthRejection::to_response`], or
    /// [`HttpResponse::missing_middleware`] (logged as an error: the router is wrong).
    pub fn to_response(&self) -> HttpResponse {
        match self {
            AuthError::Rejected(r) => r.to_response(),
            AuthError::MissingMiddleware => {
                tracing::error!("a keyrot extractor ran on a route without the bearer-auth middleware");
                HttpResponse::missing_middleware()
            }
        }
    }
}

/// The verified token the adapter's middleware stored in the request (`found`), or
/// [`AuthError::MissingMiddleware`] when there is none.
pub fn verified_token(found: Option<&Verified>) -> Result<&Verified, AuthError> {
    found.ok_or(AuthError::MissingMiddleware)
}

/// The verified claims deserialized into `T`. Claims that do not fit `T` are
/// `401 invalid_token` ([`TokenError::ClaimsShape`](keyrot_core::TokenError::ClaimsShape)); no token is
/// [`AuthError::MissingMiddleware`].
pub fn verified_claims<T: DeserializeOwned>(found: Option<&Verified>) -> Result<T, AuthError> {
    verified_token(found)?
        .claims_as::<T>()
        .map_err(|e| AuthRejection::InvalidToken(Some(e)).into())
}

/// Calls `f` with each header value in `values`: the body of an adapter's
/// [`HeaderSource::for_each_value`] over its framework's header map.
pub fn each_header_value<'s, V>(values: impl IntoIterator<Item = &'s V>, f: &mut dyn FnMut(&'s [u8]))
where
    V: AsRef<[u8]> + ?Sized + 's,
{
    for v in values {
        f(v.as_ref());
    }
}

/// Scopes a route requires of the token verified before it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequiredScopes(Arc<[String]>);

impl RequiredScopes {
    /// Every scope in `scopes` is required.
    pub fn new<I, T>(scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self(scopes.into_iter().map(Into::into).collect())
    }

    /// The scopes.
    pub fn scopes(&self) -> &[String] {
        &self.0
    }

    /// `Ok` when the verified token (`found`) grants every scope; `403
    /// insufficient_scope` when it lacks one; [`AuthError::MissingMiddleware`] when
    /// there is no verified token.
    pub fn check(&self, found: Option<&Verified>) -> Result<(), AuthError> {
        Ok(require_scopes(verified_token(found)?, &self.0)?)
    }
}

/// The marker an adapter stores in a request that an optional guard
/// ([`OptionalBearerAuth`]) let through without a token: the route serves it as
/// anonymous. Without it (and without a verified token), the extractors answer `500`
/// (the middleware is missing) instead of `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anonymous;

/// What the middleware in front of a route stored in the request: the adapter reads its
/// request extensions into this ([`Stored::new`]).
#[derive(Debug, Clone, Copy)]
pub enum Stored<'a> {
    /// Nothing: no keyrot middleware ran.
    Nothing,
    /// A verified token.
    Verified(&'a Verified),
    /// No token, admitted by an optional guard.
    Anonymous,
}

impl<'a> Stored<'a> {
    /// From the request's extensions: the verified token if there is one, else the
    /// [`Anonymous`] marker if there is one.
    pub fn new(verified: Option<&'a Verified>, anonymous: Option<&Anonymous>) -> Self {
        match (verified, anonymous) {
            (Some(v), _) => Stored::Verified(v),
            (None, Some(_)) => Stored::Anonymous,
            (None, None) => Stored::Nothing,
        }
    }

    /// The verified token; `401` (a token is required) for an anonymous request,
    /// [`AuthError::MissingMiddleware`] when no middleware ran.
    pub fn token(self) -> Result<&'a Verified, AuthError> {
        match self {
            Stored::Verified(v) => Ok(v),
            Stored::Anonymous => Err(AuthRejection::MissingToken.into()),
            Stored::Nothing => Err(AuthError::MissingMiddleware),
        }
    }

    /// The verified claims deserialized into `T` (as [`verified_claims`]); `401` for an
    /// anonymous request.
    pub fn claims<T: DeserializeOwned>(self) -> Result<T, AuthError> {
        verified_claims(Some(self.token()?))
    }

    /// The claims of a route that serves anonymous users too: `None` for an anonymous
    /// request, the claims (`401` when they do not fit `T`) for a verified one, and
    /// [`AuthError::MissingMiddleware`] when no middleware ran (never a silent `None`).
    pub fn optional_claims<T: DeserializeOwned>(self) -> Result<Option<T>, AuthError> {
        match self {
            Stored::Anonymous => Ok(None),
            other => other.claims().map(Some),
        }
    }
}

/// What a [`Guard`] lets through.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Store this verified token in the request.
    Verified(Verified),
    /// Store the [`Anonymous`] marker: no token, and the route serves anonymous users.
    Anonymous,
    /// Leave the request as it is.
    Unchanged,
}

/// What an adapter's middleware runs before the route. The adapter calls
/// [`Guard::admit`] with the request's headers and what is already stored in it
/// ([`Stored`]); on `Ok` it stores what the [`Admission`] says, and on `Err` it answers
/// [`AuthError::to_response`] without running the route.
pub trait Guard: Clone + Send + Sync + 'static {
    /// Whether the request may reach the route, and what to store in it.
    fn admit(
        &self,
        headers: &dyn HeaderSource,
        stored: Stored<'_>,
    ) -> impl Future<Output = Result<Admission, AuthError>> + Send;
}

/// Verifies the bearer token ([`BearerAuth::authenticate`]) and stores it.
impl Guard for BearerAuth {
    async fn admit(&self, headers: &dyn HeaderSource, _: Stored<'_>) -> Result<Admission, AuthError> {
        Ok(Admission::Verified(self.authenticate(headers).await?))
    }
}

/// Verifies a token if one is sent ([`OptionalBearerAuth::authenticate`]); marks the
/// request [`Anonymous`] if none is.
impl Guard for OptionalBearerAuth {
    async fn admit(&self, headers: &dyn HeaderSource, _: Stored<'_>) -> Result<Admission, AuthError> {
        Ok(match self.authenticate(headers).await? {
            Some(v) => Admission::Verified(v),
            None => Admission::Anonymous,
        })
    }
}

/// Checks the token stored by a guard in front ([`RequiredScopes::check`]); an anonymous
/// request is `401` (a token is required).
impl Guard for RequiredScopes {
    async fn admit(&self, _: &dyn HeaderSource, stored: Stored<'_>) -> Result<Admission, AuthError> {
        self.check(Some(stored.token()?)).map(|()| Admission::Unchanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyrot_core::TokenError;
    use serde_json::json;

    fn token(claims: serde_json::Value) -> Verified {
        let serde_json::Value::Object(claims) = claims else {
            panic!("claims are an object");
        };
        keyrot_core::testing::verified("k1", keyrot_core::Algorithm::EdDsa, claims)
    }

    #[test]
    fn errors_render_their_responses() {
        let missing = AuthError::MissingMiddleware;
        assert_eq!(missing.status(), 500);
        assert_eq!(missing.to_response(), HttpResponse::missing_middleware());
        for r in [
            AuthRejection::MissingToken,
            AuthRejection::InvalidToken(None),
            AuthRejection::InsufficientScope,
        ] {
            let e = AuthError::from(r.clone());
            assert_eq!(e.status(), r.status());
            assert_eq!(e.to_response(), r.to_response());
            assert_eq!(e.to_string(), r.to_string());
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let e = AuthError::from(AuthRejection::InvalidToken(Some(TokenError::ClaimsShape)));
        let mut chain = vec![e.to_string()];
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        let all = chain.join(": ");
        let cause = TokenError::ClaimsShape.to_string();
        assert_eq!(all.matches(&cause).count(), 1, "{all}");
    }

    #[test]
    fn claims_and_scopes_map_to_the_errors() {
        let v = token(json!({"sub": "alice", "scope": "a b"}));
        #[derive(serde::Deserialize)]
        struct Sub {
            sub: String,
        }
        #[derive(Debug, serde::Deserialize)]
        struct NeedsAge {
            #[allow(dead_code)]
            age: u32,
        }
        assert_eq!(verified_claims::<Sub>(Some(&v)).map(|s| s.sub), Ok("alice".to_owned()));
        assert_eq!(
            verified_claims::<NeedsAge>(Some(&v)).err(),
            Some(AuthError::Rejected(AuthRejection::InvalidToken(Some(
                TokenError::ClaimsShape
            ))))
        );
        assert_eq!(verified_claims::<Sub>(None).err(), Some(AuthError::MissingMiddleware));
        assert_eq!(RequiredScopes::new(["a", "b"]).check(Some(&v)), Ok(()));
        assert_eq!(
            RequiredScopes::new(["c"]).check(Some(&v)),
            Err(AuthError::Rejected(AuthRejection::InsufficientScope))
        );
        assert_eq!(
            RequiredScopes::new(["a"]).check(None),
            Err(AuthError::MissingMiddleware)
        );
    }
}
