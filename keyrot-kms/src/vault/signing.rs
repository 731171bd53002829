//! A ring's signing keys as Vault/OpenBao Transit keys (`KEYROT_SIGNING_KEYS_URI=vault-transit:MOUNT`).
//!
//! Each keyrot key is one Transit key named `keyrot-LEN-RING-…` under the mount, created not
//! exportable and without plaintext backup: `ed25519` (EdDSA), `ecdsa-p256` (ES256),
//! `ecdsa-p384` (ES384), `rsa-2048`/`rsa-3072`/`rsa-4096` (RS256, PS256). Tokens are signed
//! by `MOUNT/sign/NAME` with `marshaling_algorithm=jws` (ECDSA as `R‖S`), PSS with
//! `salt_length=hash` (32 bytes, as RFC 7518 §3.5 asks). Transit cannot disable a key
//! ([`SigningCustody::disable`] answers `false`: a revoked key is refused by keyrot and
//! destroyed at purge, `deletion_allowed` then `DELETE MOUNT/keys/NAME`).
//!
//! A policy for keyrot's instances:
//!
//! ```text
//! path "transit/keys"            { capabilities = ["list"] }
//! path "transit/keys/keyrot-*"   { capabilities = ["create", "read", "update", "delete"] }
//! path "transit/keys/keyrot-*/config" { capabilities = ["update"] }
//! path "transit/sign/keyrot-*"   { capabilities = ["update"] }
//! path "transit/sign/keyrot-*/*" { capabilities = ["update"] }
//! ```

use super::client::{Client, Reply};
use super::config;
use crate::spki;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keyrot_core::custody::{CustodyError, RemoteKey, SigningCustody};
use keyrot_core::{Algorithm, RsaBits};
use reqwest::Method;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use zeroize::Zeroizing;

/// Transit keys under one mount, holding a ring's signing keys.
pub struct TransitSigning {
    client: Client,
    mount: String,
    location: String,
}

impl fmt::Debug for TransitSigning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitSigning")
            .field("location", &self.location)
            .field("credential", &self.client.credential_kind())
            .finish()
    }
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct KeyData {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    exportable: bool,
    #[serde(default)]
    latest_version: u32,
    #[serde(default)]
    keys: HashMap<String, KeyVersion>,
}

#[derive(Deserialize)]
struct KeyVersion {
    #[serde(default)]
    public_key: String,
}

#[derive(Deserialize)]
struct Signed {
    signature: String,
}

#[derive(Deserialize)]
struct Listed {
    #[serde(default)]
    keys: Vec<String>,
}

/// The Transit key type of `alg`.
fn key_type(alg: Algorithm, bits: RsaBits) -> &'static str {
    match (alg, bits) {
        (Algorithm::EdDsa, _) => "ed25519",
        (Algorithm::Es256, _) => "ecdsa-p256",
        (Algorithm::Es384, _) => "ecdsa-p384",
        (_, RsaBits::B2048) => "rsa-2048",
        (_, RsaBits::B3072) => "rsa-3072",
        (_, RsaBits::B4096) => "rsa-4096",
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

impl TransitSigning {
    /// Opens `vault-transit:MOUNT` with the address and credential from the process
    /// environment (as [`super::TransitCustody::open`]), and authenticates.
    pub async fn open(uri: &str) -> Result<Self, CustodyError> {
        Self::open_with_env(uri, |name| std::env::var(name).ok()).await
    }

    /// [`TransitSigning::open`] with the environment read from `env`.
    pub async fn open_with_env(uri: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, CustodyError> {
        let settings = config::signing_settings(uri, &env)?;
        let mut location = format!("vault-transit:{} at {}", settings.mount, settings.addr);
        if let Some(ns) = &settings.namespace {
            location.push_str(&format!(" (namespace {ns})"));
        }
        let client = Client::new(&settings, location.clone())?;
        let signing = Self {
            client,
            mount: settings.mount,
            location,
        };
        signing.check().await?;
        Ok(signing)
    }

    /// The Transit key name a reference `vault-transit:MOUNT/NAME` names on this mount.
    fn name_of<'r>(&self, reference: &'r str) -> Result<&'r str, CustodyError> {
        reference
            .strip_prefix("vault-transit:")
            .and_then(|r| r.strip_prefix(self.mount.as_str()))
            .and_then(|r| r.strip_prefix('/'))
            .filter(|n| name_ok(n))
            .ok_or_else(|| {
                CustodyError::Config(format!(
                    "{reference:?} is not a key of vault-transit:{}: references look like vault-transit:{}/NAME",
                    self.mount, self.mount
                ))
            })
    }

    fn reference(&self, name: &str) -> String {
        format!("vault-transit:{}/{name}", self.mount)
    }

    fn error(&self, reply: &Reply, what: &str, path: &str) -> CustodyError {
        let errors = reply.errors();
        match reply.status.as_u16() {
            401 | 403 => self.client.denied(format!(
                "{what}: permission denied; check that {} is valid and that its policy allows {what} on {path}",
                self.client.credential_hint()
            )),
            404 => self.client.denied(format!("{what}: {path} does not exist")),
            429 | 500.. => self
                .client
                .unavailable(format!("{what} answered {}: {errors}", reply.status)),
            _ => CustodyError::Config(format!(
                "{what} at {} was refused ({}): {errors}",
                self.location, reply.status
            )),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> Result<Reply, CustodyError> {
        let body = body
            .map(|b| serde_json::to_vec(&b).map(Zeroizing::new))
            .transpose()
            .map_err(|_| CustodyError::Config("a Transit request cannot be encoded".into()))?;
        self.client.call(method, path, body).await
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, reply: &Reply, what: &str) -> Result<T, CustodyError> {
        serde_json::from_slice::<Envelope<T>>(&reply.body)
            .map(|e| e.data)
            .map_err(|_| {
                self.client
                    .unavailable(format!("{what}: the server's answer is not what Transit answers"))
            })
    }

    /// Reads the key `name`: it must be of `alg`'s type and not exportable.
    async fn read(&self, name: &str, alg: Algorithm) -> Result<RemoteKey, CustodyError> {
        let path = format!("{}/keys/{name}", self.mount);
        let reply = self.call(Method::GET, &path, None).await?;
        if !reply.status.is_success() {
            return Err(self.error(&reply, "reading the key", &path));
        }
        let data: KeyData = self.parse(&reply, "reading the key")?;
        let fits = match alg {
            Algorithm::EdDsa => data.kind == "ed25519",
            Algorithm::Es256 => data.kind == "ecdsa-p256",
            Algorithm::Es384 => data.kind == "ecdsa-p384",
            Algorithm::Rs256 | Algorithm::Ps256 => data.kind.starts_with("rsa-"),
            _ => false,
        };
        if !fits {
            return Err(CustodyError::Config(format!(
                "{path} is a {} key, not one for {alg}",
                data.kind
            )));
        }
        if data.exportable {
            return Err(CustodyError::Config(format!(
                "{path} is exportable: keyrot uses only keys that never leave the server"
            )));
        }
        let version = data.keys.get(&data.latest_version.to_string()).ok_or_else(|| {
            self.client
                .unavailable(format!("{path} has no version {}", data.latest_version))
        })?;
        let der = if alg == Algorithm::EdDsa {
            // Transit gives an Ed25519 public key as its 32 bytes, base64.
            let raw = STANDARD
                .decode(version.public_key.trim())
                .map_err(|_| self.client.unavailable(format!("{path}: the public key is not base64")))?;
            ed25519_spki(&raw)
        } else {
            spki::pem_to_der(&version.public_key).map_err(|e| self.client.unavailable(format!("{path}: {e}")))?
        };
        let public = spki::public_key(&der, alg).map_err(|e| self.client.unavailable(format!("{path}: {e}")))?;
        Ok(RemoteKey {
            reference: self.reference(name),
            public,
        })
    }
}

/// The SubjectPublicKeyInfo DER of a raw Ed25519 public key (RFC 8410).
fn ed25519_spki(raw: &[u8]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(raw);
    der
}

#[async_trait::async_trait]
impl SigningCustody for TransitSigning {
    fn backend(&self) -> &'static str {
        super::client::BACKEND
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn supports(&self, _alg: Algorithm, _bits: RsaBits) -> Result<(), CustodyError> {
        // Transit makes every algorithm and size keyrot signs with.
        Ok(())
    }

    async fn create(&self, name: &str, alg: Algorithm, bits: RsaBits) -> Result<RemoteKey, CustodyError> {
        if !name_ok(name) {
            return Err(CustodyError::Config(format!("{name:?} is not a Transit key name")));
        }
        let path = format!("{}/keys/{name}", self.mount);
        let body = serde_json::json!({
            "type": key_type(alg, bits),
            "exportable": false,
            "allow_plaintext_backup": false,
        });
        let reply = self.call(Method::POST, &path, Some(body)).await?;
        if !reply.status.is_success() {
            return Err(self.error(&reply, "creating a key", &path));
        }
        self.read(name, alg).await
    }

    async fn find(&self, reference: &str, alg: Algorithm) -> Result<RemoteKey, CustodyError> {
        let name = match reference.strip_prefix("vault-transit:") {
            Some(_) => self.name_of(reference)?,
            None if name_ok(reference) => reference,
            None => return Err(CustodyError::Config(format!("{reference:?} is not a Transit key name"))),
        };
        self.read(name, alg).await
    }

    async fn sign(&self, reference: &str, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        let name = self.name_of(reference)?;
        let input = STANDARD.encode(message);
        let (path, body) = match alg {
            Algorithm::EdDsa => (
                format!("{}/sign/{name}", self.mount),
                serde_json::json!({"input": input}),
            ),
            Algorithm::Es256 | Algorithm::Es384 => {
                let hash = if alg == Algorithm::Es256 {
                    "sha2-256"
                } else {
                    "sha2-384"
                };
                (
                    format!("{}/sign/{name}/{hash}", self.mount),
                    serde_json::json!({"input": input, "marshaling_algorithm": "jws"}),
                )
            }
            Algorithm::Rs256 => (
                format!("{}/sign/{name}/sha2-256", self.mount),
                serde_json::json!({"input": input, "signature_algorithm": "pkcs1v15"}),
            ),
            Algorithm::Ps256 => (
                format!("{}/sign/{name}/sha2-256", self.mount),
                serde_json::json!({"input": input, "signature_algorithm": "pss", "salt_length": "hash"}),
            ),
            _ => return Err(CustodyError::Config(format!("Transit signing does not know {alg}"))),
        };
        let reply = self.call(Method::POST, &path, Some(body)).await?;
        if !reply.status.is_success() {
            return Err(self.error(&reply, "signing", &path));
        }
        let signed: Signed = self.parse(&reply, "signing")?;
        let encoded = signed
            .signature
            .strip_prefix("vault:v")
            .and_then(|r| r.split_once(':'))
            .map(|(_, sig)| sig)
            .ok_or_else(|| self.client.unavailable("signing: the signature is not vault:vN:…"))?;
        // `jws` marshaling answers base64url; the others standard base64.
        URL_SAFE_NO_PAD
            .decode(encoded)
            .or_else(|_| STANDARD.decode(encoded))
            .map_err(|_| self.client.unavailable("signing: the signature is not base64"))
    }

    async fn disable(&self, _reference: &str) -> Result<bool, CustodyError> {
        Ok(false)
    }

    async fn destroy(&self, reference: &str) -> Result<(), CustodyError> {
        let name = self.name_of(reference)?;
        let config = format!("{}/keys/{name}/config", self.mount);
        let reply = self
            .call(
                Method::POST,
                &config,
                Some(serde_json::json!({"deletion_allowed": true})),
            )
            .await?;
        match reply.status.as_u16() {
            200..=299 => {}
            404 => return Ok(()),
            // OpenBao answers a missing key's config with 400 "no existing key named …".
            400 if reply.errors().contains("no existing key") => return Ok(()),
            _ => return Err(self.error(&reply, "allowing the key's deletion", &config)),
        }
        let path = format!("{}/keys/{name}", self.mount);
        let reply = self.call(Method::DELETE, &path, None).await?;
        match reply.status.as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(self.error(&reply, "deleting the key", &path)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, CustodyError> {
        let path = format!("{}/keys?list=true", self.mount);
        let reply = self.call(Method::GET, &path, None).await?;
        if reply.status.as_u16() == 404 {
            return Ok(Vec::new());
        }
        if !reply.status.is_success() {
            return Err(self.error(&reply, "listing keys", &path));
        }
        let listed: Listed = self.parse(&reply, "listing keys")?;
        Ok(listed
            .keys
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .map(|k| self.reference(&k))
            .collect())
    }

    async fn check(&self) -> Result<(), CustodyError> {
        let reply = self.call(Method::GET, "auth/token/lookup-self", None).await?;
        match reply.status.as_u16() {
            200 => Ok(()),
            401 | 403 => Err(self.client.denied(format!(
                "the credential is not valid: check {}",
                self.client.credential_hint()
            ))),
            _ => Err(self.error(&reply, "token lookup", "auth/token/lookup-self")),
        }
    }
}
