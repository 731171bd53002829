//! AWS KMS custody: `aws-kms:KEY_ID_OR_ARN_OR_ALIAS`.
//!
//! The KEK is a symmetric KMS key (`SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`). A master key is
//! made by `GenerateDataKey` (`AES_256`) and stored as the ciphertext KMS returns, bound by the
//! encryption context [`encryption_context`] to its master-key id; the row names the key ARN
//! KMS reports. `Decrypt` names that ARN as `KeyId`, so a ciphertext of another key is
//! refused, and a row naming a key outside the configured key's account is refused before
//! any call. `rewrap` is `ReEncrypt` to the key the URI names now (after its alias was moved
//! to a new key, or after a rotation), so the plaintext never leaves KMS.
//!
//! Region, credentials and endpoint come from the standard AWS configuration chain
//! (`AWS_REGION`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`…, web identity, ECS and EC2 roles,
//! `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_KMS`). Each call times out after 10 s and is
//! tried at most twice. The credential needs `kms:DescribeKey`, `kms:GenerateDataKey`,
//! `kms:Encrypt`, `kms:Decrypt`, `kms:ReEncrypt*`, and for [`KeyCustody::ensure_kek`]
//! `kms:CreateKey` and `kms:CreateAlias`.
//!
//! A ring's signing keys can be held by KMS too: [`KmsSigning`] (`aws-kms:`), asymmetric
//! `SIGN_VERIFY` keys KMS generates, with the same configuration chain and error mapping.

mod error;
mod signing;

pub use signing::KmsSigning;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kms::Client;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, EncryptionAlgorithmSpec, KeyMetadata, KeySpec, KeyState, KeyUsageType};
use error::{Class, classify};
use keyrot_core::SecretBytes;
use keyrot_core::custody::{CustodyError, KeyCustody, WrappedKey, encryption_context};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;
use tokio::sync::OnceCell;

const BACKEND: &str = "aws-kms";
const SCHEME: &str = "aws-kms:";

/// A KMS client bounded by this crate's timeouts and retries (two attempts, 10 s), and
/// where it points, for messages. Shared by [`KmsCustody`] and [`KmsSigning`].
struct Kms {
    client: Client,
    region: String,
    /// The endpoint, when not the region's default, without any user info.
    endpoint: Option<String>,
}

impl Kms {
    /// A client for `config`; `named` is what the URI names, for the error saying that no
    /// region or no credential provider is configured.
    fn new(config: &SdkConfig, endpoint: Option<String>, named: &str) -> Result<Self, CustodyError> {
        let region = config.region().map(ToString::to_string).ok_or_else(|| {
            CustodyError::Config(format!("{named}: no AWS region: set AWS_REGION or a profile's region"))
        })?;
        if config.credentials_provider().is_none() {
            return Err(CustodyError::Denied {
                backend: BACKEND,
                location: format!("{named} in {region}"),
                detail: "no AWS credential provider is configured".into(),
            });
        }
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(5))
            .operation_timeout(Duration::from_secs(10))
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(2)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(1));
        let kms = aws_sdk_kms::config::Builder::from(config)
            .timeout_config(timeouts)
            .retry_config(retries)
            .build();
        Ok(Self {
            client: Client::from_conf(kms),
            region,
            endpoint: endpoint.as_deref().or(config.endpoint_url()).map(strip_userinfo),
        })
    }

    /// `named`, the region and the endpoint: a location for messages.
    fn location(&self, named: &str) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("{named} in {} via {endpoint}", self.region),
            None => format!("{named} in {}", self.region),
        }
    }
}

/// The standard AWS configuration chain (environment, shared config and credentials
/// files, web identity, container and instance roles), and `AWS_ENDPOINT_URL_KMS` if set.
async fn environment() -> (SdkConfig, Option<String>) {
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    // Shown in locations only; the SDK itself prefers the service's own variable too.
    let kms_endpoint = std::env::var("AWS_ENDPOINT_URL_KMS").ok().filter(|u| !u.is_empty());
    (config, kms_endpoint)
}

/// A symmetric AWS KMS key that wraps keyrot's master keys.
pub struct KmsCustody {
    kms: Kms,
    /// The key as the URI names it: a key id, a key ARN, `alias/NAME` or an alias ARN.
    key: String,
    /// `(partition, account)` of the configured key, learnt from its ARN.
    account: OnceCell<(String, String)>,
}

impl fmt::Debug for KmsCustody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsCustody")
            .field("key", &self.key)
            .field("region", &self.kms.region)
            .field("endpoint", &self.kms.endpoint)
            .finish_non_exhaustive()
    }
}

impl KmsCustody {
    /// Opens `aws-kms:KEY` with the standard AWS configuration chain (environment, shared
    /// config and credentials files, web identity, container and instance roles), and
    /// checks that KMS answers and accepts the credential. A key that does not exist yet is
    /// not an error here ([`KeyCustody::ensure_kek`] creates it; [`KeyCustody::check`]
    /// reports it).
    pub async fn open(uri: &str) -> Result<Self, CustodyError> {
        let key = parse_uri(uri)?;
        let (config, kms_endpoint) = environment().await;
        Self::connect(key, &config, kms_endpoint).await
    }

    /// [`KmsCustody::open`] with an explicit SDK configuration instead of the environment's
    /// (tests, or an application that already built one). Its retry and timeout settings
    /// are replaced by this crate's bounds (two attempts, 10 s).
    pub async fn with_config(uri: &str, config: &SdkConfig) -> Result<Self, CustodyError> {
        Self::connect(parse_uri(uri)?, config, None).await
    }

    async fn connect(key: String, config: &SdkConfig, endpoint: Option<String>) -> Result<Self, CustodyError> {
        let kms = Kms::new(config, endpoint, &format!("{SCHEME}{key}"))?;
        let custody = Self {
            kms,
            key,
            account: OnceCell::new(),
        };
        match custody.describe().await {
            Ok(_) | Err(Class::NotFound(_)) => Ok(custody),
            Err(class) => Err(custody.error(class, None)),
        }
    }

    /// The key's metadata, and the configured key's account remembered on the way.
    async fn describe(&self) -> Result<KeyMetadata, Class> {
        let out = self.kms.client.describe_key().key_id(&self.key).send().await;
        let meta = out
            .map_err(|e| classify(&e, false))?
            .key_metadata
            .ok_or_else(|| missing("KeyMetadata"))?;
        if let Some(parts) = meta.arn().and_then(arn_account) {
            let _ = self.account.set(parts);
        }
        Ok(meta)
    }

    /// `(partition, account)` of the configured key.
    async fn account(&self) -> Result<&(String, String), CustodyError> {
        self.account
            .get_or_try_init(|| async {
                if let Some(parts) = arn_account(&self.key) {
                    return Ok(parts);
                }
                let meta = self.describe().await.map_err(|c| self.error(c, None))?;
                meta.arn()
                    .and_then(arn_account)
                    .ok_or_else(|| self.error(missing("a key ARN in KeyMetadata"), None))
            })
            .await
    }

    /// Refuses a row whose KEK is not a key ARN in the configured key's partition and
    /// account: a database writer cannot point a row at a key it controls.
    async fn admit(&self, id: &str, wrapped: &WrappedKey) -> Result<(), CustodyError> {
        let row = arn_account(&wrapped.kek).filter(|_| wrapped.kek.contains(":key/"));
        let ours = self.account().await?;
        if row.as_ref() == Some(ours) {
            Ok(())
        } else {
            Err(refused(id, wrapped))
        }
    }

    fn error(&self, class: Class, refused_as: Option<(&str, &str)>) -> CustodyError {
        match class {
            Class::Refused => {
                let (id, kek) = refused_as.unwrap_or(("", ""));
                CustodyError::Refused {
                    id: id.to_owned(),
                    kek: kek.to_owned(),
                }
            }
            class => error::custody_error(
                class,
                self.location(),
                "create the key (`aws kms create-key` and `aws kms create-alias`, or `keyrotctl master-key create`)",
            ),
        }
    }

    /// Maps a failed call, `Refused` naming the row when the call was about one.
    fn failed<E>(&self, err: &SdkError<E>, row: Option<(&str, &WrappedKey)>) -> CustodyError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let class = classify(err, row.is_some());
        self.error(class, row.map(|(id, w)| (id, w.kek.as_str())))
    }

    async fn create_kek(&self, alias: &str) -> Result<(), CustodyError> {
        let created = self
            .kms
            .client
            .create_key()
            .key_spec(KeySpec::SymmetricDefault)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .description(format!("keyrot key-encryption key ({alias})"))
            .send()
            .await
            .map_err(|e| self.failed(&e, None))?;
        let key_id = created
            .key_metadata
            .map(|m| m.key_id)
            .ok_or_else(|| self.error(missing("KeyMetadata"), None))?;
        let aliased = self
            .kms
            .client
            .create_alias()
            .alias_name(alias)
            .target_key_id(&key_id)
            .send()
            .await;
        match aliased {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("AlreadyExistsException") => {
                // Another instance created it meanwhile: its key wins, ours goes.
                let _ = self
                    .kms
                    .client
                    .schedule_key_deletion()
                    .key_id(&key_id)
                    .pending_window_in_days(7)
                    .send()
                    .await;
                Ok(())
            }
            Err(e) => Err(self.failed(&e, None)),
        }
    }
}

#[async_trait]
impl KeyCustody for KmsCustody {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn location(&self) -> String {
        self.kms.location(&format!("{SCHEME}{}", self.key))
    }

    async fn wrap(&self, master_key_id: &str, key: &SecretBytes) -> Result<WrappedKey, CustodyError> {
        let out = self
            .kms
            .client
            .encrypt()
            .key_id(&self.key)
            .plaintext(Blob::new(key.expose().to_vec()))
            .set_encryption_context(Some(context(master_key_id)))
            .encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
            .send()
            .await
            .map_err(|e| self.failed(&e, None))?;
        self.wrapped(out.key_id, out.ciphertext_blob)
    }

    async fn unwrap(&self, master_key_id: &str, wrapped: &WrappedKey) -> Result<SecretBytes, CustodyError> {
        self.admit(master_key_id, wrapped).await?;
        let out = self
            .kms
            .client
            .decrypt()
            .key_id(&wrapped.kek)
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .set_encryption_context(Some(context(master_key_id)))
            .encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
            .send()
            .await
            .map_err(|e| self.failed(&e, Some((master_key_id, wrapped))))?;
        let plaintext = SecretBytes::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        if out.key_id.as_deref() != Some(wrapped.kek.as_str()) || plaintext.len() != 32 {
            return Err(refused(master_key_id, wrapped));
        }
        Ok(plaintext)
    }

    async fn generate(&self, master_key_id: &str) -> Result<(SecretBytes, WrappedKey), CustodyError> {
        let out = self
            .kms
            .client
            .generate_data_key()
            .key_id(&self.key)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context(master_key_id)))
            .send()
            .await
            .map_err(|e| self.failed(&e, None))?;
        let key = SecretBytes::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        if key.len() != 32 {
            return Err(self.error(missing("a 32-byte Plaintext"), None));
        }
        Ok((key, self.wrapped(out.key_id, out.ciphertext_blob)?))
    }

    async fn rewrap(&self, master_key_id: &str, wrapped: &WrappedKey) -> Result<WrappedKey, CustodyError> {
        self.admit(master_key_id, wrapped).await?;
        let out = self
            .kms
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .source_key_id(&wrapped.kek)
            .set_source_encryption_context(Some(context(master_key_id)))
            .source_encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
            .destination_key_id(&self.key)
            .set_destination_encryption_context(Some(context(master_key_id)))
            .destination_encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
            .send()
            .await
            .map_err(|e| self.failed(&e, Some((master_key_id, wrapped))))?;
        if out.source_key_id.as_deref() != Some(wrapped.kek.as_str()) {
            return Err(refused(master_key_id, wrapped));
        }
        self.wrapped(out.key_id, out.ciphertext_blob)
    }

    async fn check(&self) -> Result<(), CustodyError> {
        let meta = self.describe().await.map_err(|c| self.error(c, None))?;
        fit(&meta).map_err(|detail| self.error(Class::Config(detail), None))?;
        if meta.enabled && meta.key_state == Some(KeyState::Enabled) {
            return Ok(());
        }
        let state = meta.key_state.as_ref().map_or("unknown", |s| s.as_str());
        let detail = format!(
            "the key {} is {state}: enable it (`aws kms enable-key`)",
            meta.arn().unwrap_or("?")
        );
        Err(self.error(Class::Denied(detail), None))
    }

    async fn ensure_kek(&self) -> Result<bool, CustodyError> {
        match self.describe().await {
            Ok(meta) => fit(&meta)
                .map(|()| false)
                .map_err(|d| self.error(Class::Config(d), None)),
            Err(Class::NotFound(_)) => {
                let Some(alias) = self.key.strip_prefix("alias/") else {
                    return Err(CustodyError::Config(format!(
                        "{BACKEND}: the key {} does not exist, and only an alias (aws-kms:alias/NAME) can be created",
                        self.key
                    )));
                };
                self.create_kek(&format!("alias/{alias}")).await?;
                Ok(true)
            }
            Err(class) => Err(self.error(class, None)),
        }
    }
}

impl KmsCustody {
    fn wrapped(&self, key_id: Option<String>, blob: Option<Blob>) -> Result<WrappedKey, CustodyError> {
        match (key_id, blob) {
            (Some(kek), Some(blob)) if arn_account(&kek).is_some() => Ok(WrappedKey {
                kek,
                blob: blob.into_inner(),
            }),
            _ => Err(self.error(missing("a key ARN and a CiphertextBlob"), None)),
        }
    }
}

/// The key reference of `aws-kms:KEY`.
fn parse_uri(uri: &str) -> Result<String, CustodyError> {
    let key = uri
        .strip_prefix(SCHEME)
        .ok_or_else(|| CustodyError::Config(format!("{} is not an aws-kms: URI", crate::redact_uri(uri))))?;
    let plausible = !key.is_empty()
        && key.len() <= 2048
        && !key.chars().any(|c| c.is_whitespace() || c.is_control())
        && (!key.starts_with("alias/") || key.len() > "alias/".len());
    if plausible {
        Ok(key.to_owned())
    } else {
        Err(CustodyError::Config(format!(
            "{} does not name a KMS key: use aws-kms:KEY_ID, aws-kms:arn:aws:kms:…, or aws-kms:alias/NAME",
            crate::redact_uri(uri)
        )))
    }
}

/// `(partition, account)` of a KMS ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/…` or
/// `…:alias/…`); `None` for anything else.
fn arn_account(arn: &str) -> Option<(String, String)> {
    let mut parts = arn.splitn(6, ':');
    let (arn_, partition, service, _region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let resource_ok = resource.starts_with("key/") || resource.starts_with("alias/");
    (arn_ == "arn" && !partition.is_empty() && service == "kms" && account_ok && resource_ok)
        .then(|| (partition.to_owned(), account.to_owned()))
}

/// Whether an existing key can wrap: symmetric and for encryption.
fn fit(meta: &KeyMetadata) -> Result<(), String> {
    let spec_ok = meta.key_spec == Some(KeySpec::SymmetricDefault);
    let usage_ok = meta.key_usage == Some(KeyUsageType::EncryptDecrypt);
    if spec_ok && usage_ok {
        Ok(())
    } else {
        Err(format!(
            "the key {} is not a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key and cannot wrap master keys",
            meta.arn().unwrap_or("?")
        ))
    }
}

fn context(master_key_id: &str) -> HashMap<String, String> {
    encryption_context(master_key_id)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn refused(id: &str, wrapped: &WrappedKey) -> CustodyError {
    CustodyError::Refused {
        id: id.to_owned(),
        kek: wrapped.kek.clone(),
    }
}

fn missing(what: &str) -> Class {
    Class::Unavailable(format!("KMS answered without {what}"))
}

/// An endpoint URL without `user:password@`.
fn strip_userinfo(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme && !url[scheme + 3..at].contains('/') => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_a_key_an_arn_or_an_alias() {
        assert_eq!(
            parse_uri("aws-kms:alias/keyrot-master").ok().as_deref(),
            Some("alias/keyrot-master")
        );
        let arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(parse_uri(&format!("aws-kms:{arn}")).ok().as_deref(), Some(arn));
        for bad in ["aws-kms:", "aws-kms:alias/", "aws-kms:a b", "vault-transit:x/y"] {
            assert!(matches!(parse_uri(bad), Err(CustodyError::Config(_))), "{bad}");
        }
    }

    #[test]
    fn arns_give_their_partition_and_account() {
        let arn = "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/abc";
        assert_eq!(arn_account(arn), Some(("aws-us-gov".into(), "111122223333".into())));
        assert_eq!(
            arn_account("arn:aws:kms:us-east-1:111122223333:alias/x").map(|p| p.1),
            Some("111122223333".into())
        );
        for bad in [
            "alias/x",
            "arn:aws:s3:us-east-1:111122223333:key/x",
            "arn:aws:kms:us-east-1:1111:key/x",
            "arn:aws:kms:r:111122223333:grant/x",
        ] {
            assert_eq!(arn_account(bad), None, "{bad}");
        }
    }

    #[test]
    fn endpoint_user_info_is_dropped() {
        assert_eq!(
            strip_userinfo("https://user:pw@kms.example:443/x"),
            "https://kms.example:443/x"
        );
        assert_eq!(strip_userinfo("http://127.0.0.1:5000"), "http://127.0.0.1:5000");
    }
}
