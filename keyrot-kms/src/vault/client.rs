//! A thin HTTP client for Vault/OpenBao: the token (or AppRole login), the namespace, the
//! timeouts, and bodies that may hold key material kept in zeroised buffers.

use super::config::{Credential, Settings};
use keyrot_core::custody::CustodyError;
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Every request's deadline, connection included.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) const BACKEND: &str = "vault-transit";

/// A response: its status and its body, zeroised on drop (a decrypt answer holds a key).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Zeroizing<Vec<u8>>,
}

impl Reply {
    /// The `errors` strings Vault puts in a non-2xx answer, joined and cut short. Only
    /// error answers are read this way; they never hold key material.
    pub fn errors(&self) -> String {
        #[derive(Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<String>,
        }
        if self.status.is_success() {
            return String::new();
        }
        let mut s = serde_json::from_slice::<Errors>(&self.body)
            .map(|e| e.errors.join("; "))
            .unwrap_or_default();
        if s.len() > 200 {
            let cut = (0..=200).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            s.truncate(cut);
            s.push('…');
        }
        s
    }
}

struct Session {
    token: Zeroizing<String>,
    /// When an AppRole token should be replaced by a new login (80 % of its TTL).
    renew_at: Option<Instant>,
}

/// The HTTP client, authenticated.
pub(crate) struct Client {
    http: reqwest::Client,
    addr: String,
    namespace: Option<HeaderValue>,
    credential: Credential,
    session: tokio::sync::Mutex<Option<Session>>,
    location: String,
}

impl Client {
    /// A client for `settings`; `location` names it in errors. No request is made.
    pub fn new(settings: &Settings, location: String) -> Result<Self, CustodyError> {
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                CustodyError::Config(format!(
                    "VAULT_CACERT/BAO_CACERT {} cannot be read: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                CustodyError::Config(format!(
                    "VAULT_CACERT/BAO_CACERT {} holds no PEM certificate",
                    path.display()
                ))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| CustodyError::Config(format!("the HTTP client cannot be built: {e}")))?;
        let namespace = match &settings.namespace {
            None => None,
            Some(ns) => Some(HeaderValue::from_str(ns).map_err(|_| {
                CustodyError::Config("VAULT_NAMESPACE/BAO_NAMESPACE is not a valid header value".into())
            })?),
        };
        let credential = match &settings.credential {
            Credential::Token(t) => Credential::Token(t.clone()),
            Credential::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => Credential::AppRole {
                mount: mount.clone(),
                role_id: role_id.clone(),
                secret_id_file: secret_id_file.clone(),
            },
        };
        Ok(Self {
            http,
            addr: settings.addr.clone(),
            namespace,
            credential,
            session: Default::default(),
            location,
        })
    }

    /// `token` or `approle`.
    pub fn credential_kind(&self) -> &'static str {
        self.credential.kind()
    }

    /// What to check when the credential is refused.
    pub fn credential_hint(&self) -> &'static str {
        self.credential.hint()
    }

    pub fn unavailable(&self, detail: impl Into<String>) -> CustodyError {
        CustodyError::Unavailable {
            backend: BACKEND,
            location: self.location.clone(),
            detail: detail.into(),
        }
    }

    pub fn denied(&self, detail: impl Into<String>) -> CustodyError {
        CustodyError::Denied {
            backend: BACKEND,
            location: self.location.clone(),
            detail: detail.into(),
        }
    }

    /// Sends `method /v1/{path}` with the current token; an AppRole client that is refused
    /// (403) logs in again once and retries.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Reply, CustodyError> {
        let body = body.map(bytes::Bytes::from_owner);
        let token = self.token().await?;
        let reply = self.send(method.clone(), path, body.clone(), Some(&token)).await?;
        if reply.status != StatusCode::FORBIDDEN || !matches!(self.credential, Credential::AppRole { .. }) {
            return Ok(reply);
        }
        let token = self.relogin(&token).await?;
        self.send(method, path, body, Some(&token)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<bytes::Bytes>,
        token: Option<&str>,
    ) -> Result<Reply, CustodyError> {
        let mut req = self.http.request(method, format!("{}/v1/{path}", self.addr));
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token)
                .map_err(|_| CustodyError::Config("the Vault token is not a valid header value".into()))?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns.clone());
        }
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(body);
        }
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        let reply = Reply {
            status,
            body: Zeroizing::new(Vec::from(body)),
        };
        if status.is_redirection() {
            return Err(self.unavailable(format!(
                "the server redirected ({status}); keyrot does not follow redirects with a token: set VAULT_ADDR to the active node"
            )));
        }
        Ok(reply)
    }

    fn transport(&self, e: &reqwest::Error) -> CustodyError {
        let what = if e.is_timeout() {
            format!("no answer within {} s", TIMEOUT.as_secs())
        } else if e.is_connect() {
            "cannot connect".to_owned()
        } else {
            "the request failed".to_owned()
        };
        let mut cause = String::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        let cause = if cause.is_empty() {
            String::new()
        } else {
            format!(" ({cause})")
        };
        self.unavailable(format!(
            "{what}{cause}: check VAULT_ADDR/BAO_ADDR and that the server is up and unsealed"
        ))
    }

    /// The token to send: the configured one, or an AppRole login's (logging in first
    /// when there is none or it is near its end).
    pub async fn token(&self) -> Result<Zeroizing<String>, CustodyError> {
        if let Credential::Token(t) = &self.credential {
            return Ok(t.clone());
        }
        let mut session = self.session.lock().await;
        if let Some(s) = session
            .as_ref()
            .filter(|s| s.renew_at.is_none_or(|at| Instant::now() < at))
        {
            return Ok(s.token.clone());
        }
        let fresh = self.login().await?;
        let token = fresh.token.clone();
        *session = Some(fresh);
        Ok(token)
    }

    /// Logs in again unless another task already replaced `stale`.
    async fn relogin(&self, stale: &str) -> Result<Zeroizing<String>, CustodyError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref().filter(|s| s.token.as_str() != stale) {
            return Ok(s.token.clone());
        }
        tracing::info!(location = %self.location, "vault-transit: the token was refused, logging in again with AppRole");
        let fresh = self.login().await?;
        let token = fresh.token.clone();
        *session = Some(fresh);
        Ok(token)
    }

    async fn login(&self) -> Result<Session, CustodyError> {
        let Credential::AppRole {
            mount,
            role_id,
            secret_id_file,
        } = &self.credential
        else {
            return Err(CustodyError::Config("login without AppRole settings".into()));
        };
        let secret = std::fs::read_to_string(secret_id_file)
            .map(Zeroizing::new)
            .map_err(|e| {
                CustodyError::Config(format!(
                    "VAULT_SECRET_ID_FILE {} cannot be read: {}",
                    secret_id_file.display(),
                    e.kind()
                ))
            })?;
        #[derive(serde::Serialize)]
        struct Login<'a> {
            role_id: &'a str,
            secret_id: &'a str,
        }
        let body = serde_json::to_vec(&Login {
            role_id: role_id.trim(),
            secret_id: secret.trim(),
        })
        .map_err(|_| CustodyError::Config("the AppRole login cannot be encoded".into()))?;
        let reply = self
            .send(
                Method::POST,
                &format!("auth/{mount}/login"),
                Some(bytes::Bytes::from_owner(Zeroizing::new(body))),
                None,
            )
            .await?;
        match reply.status.as_u16() {
            200 => {}
            400 | 401 | 403 => {
                return Err(self.denied(format!(
                    "the AppRole login at auth/{mount} was refused ({}): check VAULT_ROLE_ID and the secret id in VAULT_SECRET_ID_FILE (expired, used up or revoked?)",
                    reply.status
                )));
            }
            404 => {
                return Err(self.denied(format!(
                    "no AppRole auth method at auth/{mount}: check VAULT_APPROLE_MOUNT"
                )));
            }
            _ => return Err(self.unavailable(format!("the AppRole login answered {}", reply.status))),
        }
        #[derive(Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
        struct Auth {
            client_token: String,
            #[serde(default)]
            lease_duration: u64,
        }
        #[derive(Deserialize)]
        struct LoginReply {
            auth: Auth,
        }
        let mut auth = serde_json::from_slice::<LoginReply>(&reply.body)
            .map_err(|_| self.unavailable("the AppRole login answer has no token"))?
            .auth;
        let lease = auth.lease_duration;
        let renew_at = (lease > 0).then(|| Instant::now() + Duration::from_secs(lease.saturating_mul(4) / 5));
        Ok(Session {
            token: Zeroizing::new(std::mem::take(&mut auth.client_token)),
            renew_at,
        })
    }
}
