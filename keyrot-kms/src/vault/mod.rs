//! HashiCorp Vault / OpenBao Transit custody (feature `vault`).
//!
//! `KEYROT_MASTER_KEY_URI=vault-transit:MOUNT/KEYNAME` names a Transit key (the last path
//! segment is the key, the rest the mount, which may nest: `vault-transit:team/transit/keyrot`).
//! The key wraps keyrot's master keys and never leaves the server: a master key is made by
//! `datakey/plaintext`, wrapped by `encrypt`, unwrapped by `decrypt`, and moved to the
//! key's newest version by `rewrap`, which never returns the plaintext.
//!
//! # Environment
//!
//! The variables Vault's and OpenBao's CLIs read. Each may be spelt `VAULT_…` or `BAO_…`;
//! when both spellings are set to different values, [`TransitCustody::open`] refuses to
//! guess ([`CustodyError::Config`]).
//!
//! | variable | meaning |
//! |---|---|
//! | `VAULT_ADDR` / `BAO_ADDR` | the server, default `https://127.0.0.1:8200` (as the CLIs) |
//! | `VAULT_TOKEN` / `BAO_TOKEN` | a token, used as is (not renewed) |
//! | `VAULT_ROLE_ID` / `BAO_ROLE_ID` | AppRole: the role id … |
//! | `VAULT_SECRET_ID_FILE` / `BAO_SECRET_ID_FILE` | … and a file holding the secret id, read at every login |
//! | `VAULT_APPROLE_MOUNT` / `BAO_APPROLE_MOUNT` | AppRole's auth mount, default `approle` |
//! | `VAULT_CACERT` / `BAO_CACERT` | a PEM file of the CA certificates to trust (instead of the system's) |
//! | `VAULT_NAMESPACE` / `BAO_NAMESPACE` | sent as `X-Vault-Namespace` |
//!
//! Exactly one credential: a token, or a role id with a secret id file (both set is
//! refused). An AppRole token is replaced by a new login at 80 % of its TTL, and once more
//! when the server refuses it (403). `VAULT_SKIP_VERIFY` set to true and `VAULT_CAPATH`
//! are refused; redirects are not followed (the token would go with them). Every request
//! has a 10 s deadline. The token, the role id and the secret id appear in no error, log
//! or `Debug` output, and neither do answers that carry key material.
//!
//! # The key and its policy
//!
//! The Transit key must be a *derived* `aes256-gcm96` (or `chacha20-poly1305`) key,
//! neither exportable nor with plaintext backup allowed; [`KeyCustody::ensure_kek`] makes
//! one, or the operator does:
//!
//! ```text
//! bao secrets enable transit
//! bao write transit/keys/keyrot type=aes256-gcm96 derived=true
//! ```
//!
//! A policy for keyrot's instances (add `create` on `keys/keyrot` for `ensure_kek`):
//!
//! ```text
//! path "transit/keys/keyrot"              { capabilities = ["read"] }
//! path "transit/encrypt/keyrot"           { capabilities = ["update"] }
//! path "transit/decrypt/keyrot"           { capabilities = ["update"] }
//! path "transit/rewrap/keyrot"            { capabilities = ["update"] }
//! path "transit/datakey/plaintext/keyrot" { capabilities = ["update"] }
//! ```
//!
//! # Binding
//!
//! Every operation sends `context` = base64([`binding`]`(master key id, "vault-transit:MOUNT/KEY")`):
//! Transit derives a per-context key from it, so a blob moved to another master-key id does
//! not decrypt ([`CustodyError::Refused`]). Transit's `associated_data` would bind the same
//! way for `encrypt`, `decrypt` and `datakey`, but OpenBao's `rewrap` does not take it
//! (tested with 2.7.2: a rewrap of such a ciphertext fails), so a rewrap would have to
//! bring the plaintext out; key derivation works with all four operations. Because a
//! non-derived key silently ignores `context`, a key that is not derived is refused
//! before its first use.
//!
//! A [`WrappedKey`]'s `kek` is `vault-transit:MOUNT/KEY#vN`, `N` the key version of its
//! ciphertext (`vault:vN:…`): no address, no credential. A row whose `kek` names another
//! key or another version than its ciphertext is refused without asking the server.

mod client;
mod config;
mod signing;

pub use signing::TransitSigning;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use client::{BACKEND, Client, Reply};
use keyrot_core::SecretBytes;
use keyrot_core::custody::{CustodyError, KeyCustody, WrappedKey, binding};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// A Transit key holding keyrot's master keys, on Vault or OpenBao.
pub struct TransitCustody {
    client: Client,
    mount: String,
    key: String,
    /// `vault-transit:MOUNT/KEY`, the unversioned KEK name the binding uses.
    kek: String,
    location: String,
    /// Set once the key was seen derived and fit for wrapping.
    fit: tokio::sync::OnceCell<()>,
}

impl fmt::Debug for TransitCustody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitCustody")
            .field("location", &self.location)
            .field("credential", &self.client.credential_kind())
            .finish()
    }
}

/// `GET MOUNT/keys/KEY`'s answer, the parts keyrot checks.
#[derive(Deserialize)]
struct KeyInfo {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    derived: bool,
    #[serde(default)]
    exportable: bool,
    #[serde(default)]
    allow_plaintext_backup: bool,
    #[serde(default)]
    supports_encryption: bool,
    #[serde(default)]
    supports_decryption: bool,
}

/// The `data` of an answer that may carry key material: zeroised on drop.
#[derive(Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct Data {
    #[serde(default)]
    plaintext: String,
    #[serde(default)]
    ciphertext: String,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Serialize)]
struct Request<'a> {
    context: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bits: Option<u32>,
}

/// `N` of a Transit ciphertext `vault:vN:…`.
fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    let (n, body) = rest.split_once(':')?;
    if body.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl TransitCustody {
    /// Opens `vault-transit:MOUNT/KEYNAME` with the address and credential from the
    /// process environment (see the module docs), and authenticates: an AppRole login, or
    /// a `lookup-self` of the token. It does not require the key to exist yet
    /// ([`KeyCustody::check`] does; [`KeyCustody::ensure_kek`] creates it).
    pub async fn open(uri: &str) -> Result<Self, CustodyError> {
        Self::open_with_env(uri, |name| std::env::var(name).ok()).await
    }

    /// [`TransitCustody::open`] with the environment read from `env` (name → value)
    /// instead of the process's: for embedders that keep their settings elsewhere, and
    /// for tests.
    pub async fn open_with_env(uri: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, CustodyError> {
        let settings = config::settings(uri, &env)?;
        let kek = format!("vault-transit:{}/{}", settings.mount, settings.key);
        let mut location = format!("{kek} at {}", settings.addr);
        if let Some(ns) = &settings.namespace {
            location.push_str(&format!(" (namespace {ns})"));
        }
        if settings.addr.starts_with("http://") && !is_loopback(&settings.addr) {
            tracing::warn!(%location, "vault-transit: the server is reached over plain http; use https");
        }
        let client = Client::new(&settings, location.clone())?;
        let custody = Self {
            client,
            mount: settings.mount,
            key: settings.key,
            kek,
            location,
            fit: Default::default(),
        };
        custody.authenticate().await?;
        Ok(custody)
    }

    async fn authenticate(&self) -> Result<(), CustodyError> {
        if self.client.credential_kind() == "approle" {
            return self.client.token().await.map(drop);
        }
        let reply = self.client.call(Method::GET, "auth/token/lookup-self", None).await?;
        match reply.status.as_u16() {
            200 => Ok(()),
            401 | 403 => Err(self.client.denied(
                "the token (VAULT_TOKEN/BAO_TOKEN) is not valid: expired, revoked, or for another server or namespace",
            )),
            _ => Err(self.status_error(&reply, "token lookup", "auth/token/lookup-self")),
        }
    }

    fn path(&self, op: &str) -> String {
        format!("{}/{op}/{}", self.mount, self.key)
    }

    fn missing_key(&self) -> CustodyError {
        self.client.denied(format!(
            "there is no Transit key {} at mount {}: create it with `bao write {}/keys/{} type=aes256-gcm96 derived=true` or `keyrotctl master-key create`",
            self.key, self.mount, self.mount, self.key
        ))
    }

    /// The error for a non-2xx answer to `what` (not a decrypt's 400, which the caller
    /// maps to [`CustodyError::Refused`]).
    fn status_error(&self, reply: &Reply, what: &str, path: &str) -> CustodyError {
        let errors = reply.errors();
        match reply.status.as_u16() {
            401 | 403 => self.client.denied(format!(
                "{what}: permission denied; check that {} is valid (not revoked or expired) and that its policy allows {what} on {}",
                self.client.credential_hint(),
                path
            )),
            404 => self.missing_key(),
            400 if errors.contains("not found") => self.missing_key(),
            429 | 500.. => self.client.unavailable(format!("{what} answered {}: {errors}", reply.status)),
            _ => CustodyError::Config(format!("{what} at {} was refused ({}): {errors}", self.location, reply.status)),
        }
    }

    fn body(request: &Request<'_>) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
        serde_json::to_vec(request)
            .map(Zeroizing::new)
            .map_err(|_| CustodyError::Config("a Transit request cannot be encoded".into()))
    }

    fn context(&self, master_key_id: &str) -> String {
        STANDARD.encode(binding(master_key_id, &self.kek))
    }

    /// `data` of a 2xx answer.
    fn data(&self, reply: &Reply, what: &str) -> Result<Data, CustodyError> {
        serde_json::from_slice::<Envelope<Data>>(&reply.body)
            .map(|e| e.data)
            .map_err(|_| {
                self.client
                    .unavailable(format!("{what} answered with an unexpected body"))
            })
    }

    /// A ciphertext from the server, as a [`WrappedKey`] naming its key version.
    fn wrapped(&self, data: &Data, what: &str) -> Result<WrappedKey, CustodyError> {
        let version = ciphertext_version(&data.ciphertext).ok_or_else(|| {
            self.client
                .unavailable(format!("{what} answered without a vault:vN: ciphertext"))
        })?;
        Ok(WrappedKey {
            kek: format!("{}#v{version}", self.kek),
            blob: data.ciphertext.as_bytes().to_vec(),
        })
    }

    /// The ciphertext of a row, refused when the row names another key or another
    /// version than its ciphertext.
    fn ciphertext<'w>(&self, master_key_id: &str, wrapped: &'w WrappedKey) -> Result<&'w str, CustodyError> {
        let refused = || CustodyError::Refused {
            id: master_key_id.to_owned(),
            kek: wrapped.kek.clone(),
        };
        let ct = std::str::from_utf8(&wrapped.blob).map_err(|_| refused())?;
        let version = ciphertext_version(ct).ok_or_else(refused)?;
        if wrapped.kek != format!("{}#v{version}", self.kek) {
            return Err(refused());
        }
        Ok(ct)
    }

    fn plaintext(&self, data: &Data, what: &str) -> Result<SecretBytes, CustodyError> {
        STANDARD
            .decode(data.plaintext.as_bytes())
            .map(SecretBytes::new)
            .map_err(|_| {
                self.client
                    .unavailable(format!("{what} answered with a plaintext that is not base64"))
            })
    }

    /// Reads the key; `None` when it does not exist.
    async fn key_info(&self) -> Result<Option<KeyInfo>, CustodyError> {
        let reply = self.client.call(Method::GET, &self.path("keys"), None).await?;
        match reply.status.as_u16() {
            200 => serde_json::from_slice::<Envelope<KeyInfo>>(&reply.body)
                .map(|e| Some(e.data))
                .map_err(|_| {
                    self.client
                        .unavailable("reading the key answered with an unexpected body")
                }),
            404 => Ok(None),
            _ => Err(self.status_error(&reply, "read", &self.path("keys"))),
        }
    }

    fn judge(&self, info: &KeyInfo) -> Result<(), CustodyError> {
        let unfit = |why: &str| {
            CustodyError::Config(format!(
                "the Transit key {} at {} cannot wrap keyrot's master keys: {why}",
                self.key, self.location
            ))
        };
        if !matches!(info.kind.as_str(), "aes256-gcm96" | "chacha20-poly1305") {
            return Err(unfit(&format!(
                "its type is {}, not aes256-gcm96 or chacha20-poly1305",
                info.kind
            )));
        }
        if !info.supports_encryption || !info.supports_decryption {
            return Err(unfit("it does not support encryption and decryption"));
        }
        if !info.derived {
            return Err(unfit(
                "it is not derived (create it with derived=true): the binding to the master key's id needs a derived key",
            ));
        }
        if info.exportable || info.allow_plaintext_backup {
            return Err(unfit(
                "it is exportable or allows a plaintext backup, so it can leave the server",
            ));
        }
        Ok(())
    }

    /// Checks once per instance that the key exists and is fit (derived above all:
    /// a non-derived key would ignore the binding).
    async fn ensure_fit(&self) -> Result<(), CustodyError> {
        self.fit
            .get_or_try_init(|| async {
                let info = self.key_info().await?.ok_or_else(|| self.missing_key())?;
                self.judge(&info)
            })
            .await
            .map(|_| ())
    }

    /// Posts the wrapped `master_key_id` to `op` (`decrypt`, `rewrap`) with its context; a
    /// 400 (a blob moved to another id or KEK, or altered) is [`CustodyError::Refused`].
    async fn on_wrapped(&self, op: &str, master_key_id: &str, wrapped: &WrappedKey) -> Result<Data, CustodyError> {
        let ciphertext = self.ciphertext(master_key_id, wrapped)?;
        let context = self.context(master_key_id);
        let request = Request {
            context: &context,
            plaintext: None,
            ciphertext: Some(ciphertext),
            bits: None,
        };
        self.transit(op, &request, Some((master_key_id, &wrapped.kek))).await
    }

    /// Posts `request` to `op`; a 400 is [`CustodyError::Refused`] when `refused_on_400`.
    async fn transit(
        &self,
        op: &str,
        request: &Request<'_>,
        refused_on_400: Option<(&str, &str)>,
    ) -> Result<Data, CustodyError> {
        self.ensure_fit().await?;
        let reply = self
            .client
            .call(Method::POST, &self.path(op), Some(Self::body(request)?))
            .await?;
        if reply.status.is_success() {
            return self.data(&reply, op);
        }
        match refused_on_400 {
            Some((id, kek)) if reply.status.as_u16() == 400 && !reply.errors().contains("not found") => {
                Err(CustodyError::Refused {
                    id: id.to_owned(),
                    kek: kek.to_owned(),
                })
            }
            _ => Err(self.status_error(&reply, op, &self.path(op))),
        }
    }
}

fn is_loopback(addr: &str) -> bool {
    reqwest::Url::parse(addr)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

#[async_trait::async_trait]
impl KeyCustody for TransitCustody {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn wrap(&self, master_key_id: &str, key: &SecretBytes) -> Result<WrappedKey, CustodyError> {
        let context = self.context(master_key_id);
        let plaintext = Zeroizing::new(STANDARD.encode(key.expose()));
        let request = Request {
            context: &context,
            plaintext: Some(&plaintext),
            ciphertext: None,
            bits: None,
        };
        let data = self.transit("encrypt", &request, None).await?;
        self.wrapped(&data, "encrypt")
    }

    async fn unwrap(&self, master_key_id: &str, wrapped: &WrappedKey) -> Result<SecretBytes, CustodyError> {
        let data = self.on_wrapped("decrypt", master_key_id, wrapped).await?;
        self.plaintext(&data, "decrypt")
    }

    async fn generate(&self, master_key_id: &str) -> Result<(SecretBytes, WrappedKey), CustodyError> {
        let context = self.context(master_key_id);
        let request = Request {
            context: &context,
            plaintext: None,
            ciphertext: None,
            bits: Some(256),
        };
        let data = self.transit("datakey/plaintext", &request, None).await?;
        let key = self.plaintext(&data, "datakey")?;
        if key.len() != 32 {
            return Err(self
                .client
                .unavailable("datakey answered with a key that is not 256 bits"));
        }
        Ok((key, self.wrapped(&data, "datakey")?))
    }

    async fn rewrap(&self, master_key_id: &str, wrapped: &WrappedKey) -> Result<WrappedKey, CustodyError> {
        let data = self.on_wrapped("rewrap", master_key_id, wrapped).await?;
        self.wrapped(&data, "rewrap")
    }

    async fn check(&self) -> Result<(), CustodyError> {
        let info = self.key_info().await?.ok_or_else(|| self.missing_key())?;
        self.judge(&info)?;
        let _ = self.fit.set(());
        Ok(())
    }

    async fn ensure_kek(&self) -> Result<bool, CustodyError> {
        if let Some(info) = self.key_info().await? {
            self.judge(&info)?;
            return Ok(false);
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "type": "aes256-gcm96",
            "derived": true,
            "exportable": false,
            "allow_plaintext_backup": false,
        }))
        .map_err(|_| CustodyError::Config("a Transit request cannot be encoded".into()))?;
        let reply = self
            .client
            .call(Method::POST, &self.path("keys"), Some(Zeroizing::new(body)))
            .await?;
        if !reply.status.is_success() {
            return Err(self.status_error(&reply, "create", &self.path("keys")));
        }
        tracing::info!(location = %self.location, "vault-transit: created the Transit key (aes256-gcm96, derived, not exportable)");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_ciphertext_prefix() {
        assert_eq!(ciphertext_version("vault:v1:abc"), Some(1));
        assert_eq!(ciphertext_version("vault:v12:abc"), Some(12));
        for bad in [
            "vault:v:abc",
            "vault:v1:",
            "vault:1:abc",
            "vault:v-1:abc",
            "v1:abc",
            "vault:v1x:abc",
        ] {
            assert_eq!(ciphertext_version(bad), None, "{bad}");
        }
    }
}
