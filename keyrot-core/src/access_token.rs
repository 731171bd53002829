//! OAuth 2.0 access tokens in the JWT profile (RFC 9068): what an authorization server
//! built on a [`KeyRing`](crate::KeyRing) issues so that resource servers of every stack
//! accept them as they are.
//!
//! [`AccessToken`] gathers the members the profile requires (`iss`, `sub`, `aud`,
//! `client_id`, and `scope` when scopes were granted); [`KeyRing::issue_access_token`]
//! adds `iat`, `exp` (bounded by the policy's `max_token_ttl`) and a random `jti`, and
//! signs with the header `typ` `at+jwt` whatever the ring's own token type is. Resource
//! servers require the profile with [`Validation::require_access_token_profile`].
//!
//! [`KeyRing::issue_access_token`]: crate::KeyRing::issue_access_token
//! [`Validation::require_access_token_profile`]: crate::Validation::require_access_token_profile

use crate::key::KeyError;
use crate::token::SignError;
use chrono::TimeDelta;
use serde::Serialize;
use serde_json::{Map, Value};

/// The header `typ` of an access token in the JWT profile (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The claims [`AccessToken`] sets itself; [`AccessToken::with_claim`] cannot replace them.
pub const ACCESS_TOKEN_CLAIMS: [&str; 8] = ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"];

/// The longest `iss`, `sub`, `client_id` or audience accepted: a bound on what one token
/// carries, far above any real identifier.
const MAX_IDENTIFIER_BYTES: usize = 1024;

/// An access token to issue (RFC 9068 §2.2): who issues it, whom it is about, which
/// client asked for it, which resource servers may accept it, and what it grants.
///
/// ```
/// use keyrot_core::AccessToken;
/// let request = AccessToken::new("https://auth.example.com", "alice", "web-app", "https://api.example.com")
///     .with_scopes(["profile", "read"])
///     .with_lifetime(chrono::TimeDelta::minutes(10));
/// assert_eq!(request.scope(), "profile read");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AccessToken {
    issuer: String,
    subject: String,
    client_id: String,
    audiences: Vec<String>,
    scopes: Vec<String>,
    lifetime: Option<TimeDelta>,
    extra: Map<String, Value>,
}

impl AccessToken {
    /// A token with `iss = issuer`, `sub = subject`, `client_id` and `aud = audience`.
    /// For a token a client obtained for itself (client credentials), `subject` is the
    /// client id (RFC 9068 §2.2).
    pub fn new(
        issuer: impl Into<String>,
        subject: impl Into<String>,
        client_id: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            subject: subject.into(),
            client_id: client_id.into(),
            audiences: vec![audience.into()],
            scopes: Vec::new(),
            lifetime: None,
            extra: Map::new(),
        }
    }

    /// Another resource server that may accept the token (`aud` becomes an array).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Grants `scopes` (added to those already granted, each once; `scope` is their
    /// space-separated list, omitted when there are none).
    pub fn with_scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        for s in scopes {
            let s = s.into();
            if !self.scopes.contains(&s) {
                self.scopes.push(s);
            }
        }
        self
    }

    /// How long the token lives (default: the policy's `max_token_ttl`, which it may not
    /// exceed).
    pub fn with_lifetime(mut self, lifetime: TimeDelta) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// Another claim, such as `auth_time`, `acr`, `amr` or `groups` (RFC 9068 §2.2.2
    /// and §2.2.3). The members in [`ACCESS_TOKEN_CLAIMS`] are refused when the token
    /// is issued.
    pub fn with_claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// The granted scopes, space-separated.
    pub fn scope(&self) -> String {
        self.scopes.join(" ")
    }

    /// The claims as of `now`, with a new `jti`, living at most `max_ttl`.
    pub(crate) fn payload(&self, now: i64, max_ttl: TimeDelta) -> Result<(Payload<'_>, i64), SignError> {
        let lifetime = self.lifetime.unwrap_or(max_ttl);
        let secs = lifetime.num_seconds();
        if secs < 1 {
            return Err(invalid(format!(
                "the lifetime must be at least one second, not {secs}s"
            )));
        }
        if lifetime > max_ttl {
            return Err(SignError::TtlTooLong {
                requested_secs: secs,
                max_secs: max_ttl.num_seconds(),
            });
        }
        identifier("iss", &self.issuer)?;
        identifier("sub", &self.subject)?;
        identifier("client_id", &self.client_id)?;
        for a in &self.audiences {
            identifier("aud", a)?;
        }
        for s in &self.scopes {
            scope_token(s)?;
        }
        if let Some(name) = self.extra.keys().find(|k| ACCESS_TOKEN_CLAIMS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "claim {name:?} is set by the access token itself and cannot be given with with_claim"
            )));
        }
        let payload = Payload {
            iss: &self.issuer,
            sub: &self.subject,
            aud: match self.audiences.as_slice() {
                [one] => Audience::One(one),
                many => Audience::Many(many),
            },
            exp: now.saturating_add(secs),
            iat: now,
            jti: new_jti()?,
            client_id: &self.client_id,
            scope: (!self.scopes.is_empty()).then(|| self.scope()),
            extra: &self.extra,
        };
        Ok((payload, secs))
    }
}

fn invalid(reason: String) -> SignError {
    SignError::InvalidAccessToken(reason)
}

/// `iss`, `sub`, `client_id` or an audience: non-empty, bounded, without control
/// characters.
fn identifier(name: &str, value: &str) -> Result<(), SignError> {
    if value.is_empty() {
        return Err(invalid(format!("{name} must not be empty")));
    }
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(invalid(format!("{name} is longer than {MAX_IDENTIFIER_BYTES} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("{name} contains a control character")));
    }
    Ok(())
}

/// A scope token as RFC 6749 §3.3 defines it: printable ASCII without space, `"` and `\`.
fn scope_token(s: &str) -> Result<(), SignError> {
    let valid = !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "scope {:?} is not a scope token (RFC 6749 §3.3: printable ASCII without space, '\"' or '\\\\')",
            s.chars().take(64).collect::<String>()
        )))
    }
}

/// 128 random bits, base64url: unique without coordination between instances.
fn new_jti() -> Result<String, SignError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| SignError::Key(KeyError::Rng))?;
    Ok(crate::b64::encode(&bytes))
}

/// The signed claims.
#[derive(Serialize)]
pub(crate) struct Payload<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: Audience<'a>,
    exp: i64,
    iat: i64,
    pub(crate) jti: String,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

/// `aud`: a string for one audience, an array for several.
#[derive(Serialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(&'a str),
    Many(&'a [String]),
}

/// An issued access token with what a token response reports about it (RFC 6749 §5.1).
/// `Debug` shows everything but the token.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedAccessToken {
    token: String,
    jti: String,
    expires_in: i64,
    scope: String,
}

impl std::fmt::Debug for IssuedAccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedAccessToken")
            .field("token", &"<redacted>")
            .field("jti", &self.jti)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

impl IssuedAccessToken {
    pub(crate) fn new(token: String, jti: String, expires_in: i64, scope: String) -> Self {
        Self {
            token,
            jti,
            expires_in,
            scope,
        }
    }

    /// The compact JWT (the response's `access_token`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The compact JWT, by value.
    pub fn into_token(self) -> String {
        self.token
    }

    /// Its `jti`.
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// Its lifetime in seconds (the response's `expires_in`).
    pub fn expires_in(&self) -> i64 {
        self.expires_in
    }

    /// The granted scopes, space-separated (the response's `scope`; empty for none).
    pub fn scope(&self) -> &str {
        &self.scope
    }
}
