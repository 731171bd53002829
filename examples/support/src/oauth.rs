//! The demo OAuth 2.0 token endpoint (RFC 6749 §4.4 client credentials) and the demo user
//! login, framework-neutral: both quickstarts convert requests into these calls.
//!
//! Two provisioned clients: a scheduler client holding the normal rotation scope and a
//! break-glass client holding the force scope. Service tokens have `sub == client_id`
//! (RFC 9068), which is what the rotation endpoint's service-token rule checks. User tokens
//! can never carry a rotation scope: the login refuses them at issuance.
//!
//! Both issue OAuth access tokens in the JWT profile (RFC 9068, through
//! [`KeyRing::issue_access_token`]): `typ` `at+jwt`, `iss`, `sub`, `aud` (`KEYROT_AUDIENCE`,
//! default the issuer URL), `exp`, `iat`, `jti`, `client_id` and `scope`.

use crate::SetupError;
use crate::form::{basic_credentials, parse_form};
use keyrot_core::{AccessToken, KeyRing};
use keyrot_http::{DEFAULT_FORCE_SCOPE, DEFAULT_ROTATE_SCOPE, HttpResponse, ResponseBody};
use serde::Serialize;
use serde_json::json;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

/// Lifetime of service tokens (the rotation endpoint accepts at most 15 minutes).
pub const SERVICE_TOKEN_TTL_SECS: i64 = 600;
/// Lifetime of demo user tokens.
pub const USER_TOKEN_TTL_SECS: i64 = 900;
/// Scopes a demo user may ask for.
pub const USER_SCOPES: [&str; 2] = ["profile", "read"];
/// The client id user tokens carry (never equal to their `sub`).
pub const USER_CLIENT_ID: &str = "demo-web";

/// A provisioned client. The secret is kept only as its SHA-256.
pub struct Client {
    id: String,
    secret_sha256: [u8; 32],
    scopes: Vec<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with `secret` and the scopes it may be granted.
    pub fn new(id: impl Into<String>, secret: &str, scopes: &[&str]) -> Self {
        Self {
            id: id.into(),
            secret_sha256: sha2::Sha256::digest(secret.as_bytes()).into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn secret_matches(&self, secret: &str) -> bool {
        let h: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
        bool::from(h.ct_eq(&self.secret_sha256))
    }
}

/// Issues tokens from a key ring.
#[derive(Debug)]
pub struct TokenService {
    keyring: KeyRing,
    clients: Vec<Client>,
    issuer: String,
    audience: String,
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: String,
    token_type: &'a str,
    expires_in: i64,
    scope: String,
}

fn json_response(status: u16, value: &serde_json::Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
            ("pragma", "no-cache".to_owned()),
        ],
        body: ResponseBody::Owned(serde_json::to_vec(value).unwrap_or_default()),
    }
}

fn oauth_error(status: u16, code: &str, description: &str) -> HttpResponse {
    json_response(status, &json!({ "error": code, "error_description": description }))
}

/// A random secret for generated client credentials (URL-safe, 32 bytes of entropy).
pub fn random_secret() -> Result<String, SetupError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(SetupError::Random)?;
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        b,
    ))
}

impl TokenService {
    /// Access tokens signed by `keyring`, with `iss = issuer` and `aud = audience`.
    pub fn new(keyring: KeyRing, issuer: impl Into<String>, audience: impl Into<String>, clients: Vec<Client>) -> Self {
        Self {
            keyring,
            clients,
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// The scheduler client (normal rotation) and the break-glass client (forced rotation).
    pub fn rotation_clients(scheduler_secret: &str, breakglass_secret: &str) -> Vec<Client> {
        vec![
            Client::new("scheduler", scheduler_secret, &[DEFAULT_ROTATE_SCOPE]),
            Client::new(
                "breakglass",
                breakglass_secret,
                &[DEFAULT_FORCE_SCOPE, DEFAULT_ROTATE_SCOPE],
            ),
        ]
    }

    /// `POST /oauth/token` with `grant_type=client_credentials`.
    pub async fn client_credentials(&self, authorization: Option<&str>, body: &[u8]) -> HttpResponse {
        let form = match parse_form(body) {
            Ok(f) => f,
            Err(e) => return oauth_error(400, "invalid_request", e),
        };
        let param = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        match param("grant_type") {
            Some("client_credentials") => {}
            Some(_) => return oauth_error(400, "unsupported_grant_type", "only client_credentials is supported"),
            None => return oauth_error(400, "invalid_request", "grant_type is required"),
        }
        let basic = authorization.and_then(basic_credentials);
        let (id, secret) = match (&basic, param("client_id"), param("client_secret")) {
            (Some((id, secret)), None, None) => (id.clone(), secret.clone()),
            (None, Some(id), Some(secret)) => (id.to_owned(), secret.to_owned()),
            (Some(_), _, _) => return oauth_error(400, "invalid_request", "use one client authentication method"),
            _ => return self.invalid_client(),
        };
        let Some(client) = self.clients.iter().find(|c| c.id == id && c.secret_matches(&secret)) else {
            tracing::info!(client_id = ?id.chars().take(64).collect::<String>(), "token request: client authentication failed");
            return self.invalid_client();
        };
        let requested: Vec<&str> = match param("scope") {
            Some(s) => s.split(' ').filter(|s| !s.is_empty()).collect(),
            None => client.scopes.iter().map(String::as_str).collect(),
        };
        if let Some(bad) = requested.iter().find(|s| !client.scopes.iter().any(|c| c == *s)) {
            return oauth_error(
                400,
                "invalid_scope",
                &format!("scope {bad:?} is not granted to this client"),
            );
        }
        // A client acting for itself: `sub` is its client id (RFC 9068 §2.2).
        let token = AccessToken::new(&self.issuer, &client.id, &client.id, &self.audience)
            .with_scopes(requested)
            .with_lifetime(chrono::TimeDelta::seconds(SERVICE_TOKEN_TTL_SECS));
        self.issue(&token).await
    }

    fn invalid_client(&self) -> HttpResponse {
        let mut r = oauth_error(401, "invalid_client", "client authentication failed");
        r.headers
            .push(("www-authenticate", "Basic realm=\"keyrot\"".to_owned()));
        r
    }

    /// Issues through [`KeyRing::issue_access_token`], which signs in this process or through
    /// the HSM or KMS holding the key; a backend that does not sign is a 503 with
    /// `Retry-After`, a member the profile refuses (a username with control characters) a
    /// 400.
    async fn issue(&self, token: &AccessToken) -> HttpResponse {
        match self.keyring.issue_access_token(token).await {
            Ok(issued) => {
                let (expires_in, scope) = (issued.expires_in(), issued.scope().to_owned());
                json_response(
                    200,
                    &serde_json::to_value(TokenResponse {
                        access_token: issued.into_token(),
                        token_type: "Bearer",
                        expires_in,
                        scope,
                    })
                    .unwrap_or_default(),
                )
            }
            Err(keyrot_core::SignError::Custody(e)) => {
                tracing::error!(error = %e, "the HSM or KMS holding the signing key did not sign");
                let mut r = oauth_error(
                    503,
                    "temporarily_unavailable",
                    "the signing key's HSM or KMS does not answer; retry later",
                );
                r.headers.push(("retry-after", "5".to_owned()));
                r
            }
            Err(keyrot_core::SignError::InvalidAccessToken(reason)) => oauth_error(400, "invalid_request", &reason),
            Err(e) => {
                tracing::error!(error = %e, "token signing failed");
                oauth_error(503, "temporarily_unavailable", "no signing key is available yet")
            }
        }
    }

    /// `POST /demo/login` with `{"username": "...", "scope": "profile read"}`: a user token.
    /// Rotation scopes are refused at issuance.
    pub async fn demo_login(&self, body: &[u8]) -> HttpResponse {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Login {
            username: String,
            #[serde(default)]
            scope: Option<String>,
        }
        let Ok(login) = serde_json::from_slice::<Login>(body) else {
            return oauth_error(
                400,
                "invalid_request",
                "expected {\"username\": \"…\", \"scope\": \"…\"}",
            );
        };
        let username = login.username.trim();
        if username.is_empty() || username.len() > 64 || username == USER_CLIENT_ID {
            return oauth_error(400, "invalid_request", "username must be 1-64 characters");
        }
        let scope = login.scope.unwrap_or_else(|| "profile".to_owned());
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            if s == DEFAULT_ROTATE_SCOPE || s == DEFAULT_FORCE_SCOPE {
                return oauth_error(400, "invalid_scope", "rotation scopes are never issued to user tokens");
            }
            if !USER_SCOPES.contains(&s) {
                return oauth_error(
                    400,
                    "invalid_scope",
                    &format!("unknown scope {s:?}: users may ask for profile, read"),
                );
            }
        }
        let token = AccessToken::new(&self.issuer, username, USER_CLIENT_ID, &self.audience)
            .with_scopes(scope.split(' ').filter(|s| !s.is_empty()))
            .with_lifetime(chrono::TimeDelta::seconds(USER_TOKEN_TTL_SECS));
        self.issue(&token).await
    }
}
