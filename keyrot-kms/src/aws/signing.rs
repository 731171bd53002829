//! A ring's signing keys as AWS KMS asymmetric keys (`KEYROT_SIGNING_KEYS_URI=aws-kms:`).

mod algs;
mod ecdsa;

use super::error::{Class, classify, custody_error};
use super::{BACKEND, Kms, SCHEME, arn_account, missing};
use crate::spki;
use algs::{digest, key_spec, signing_algorithm, spec_fits, specs_for, unsupported};
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyMetadata, KeySpec, KeyState, KeyUsageType, MessageType, OriginType, Tag};
use keyrot_core::custody::{CustodyError, RemoteKey, SigningCustody};
use keyrot_core::{Algorithm, PublicKey, RsaBits};
use std::collections::BTreeSet;
use std::fmt;

/// The longest message KMS signs as it is (`MessageType=RAW`); a longer one is hashed here.
const MAX_RAW: usize = 4096;
/// What the name of every key keyrot creates starts with ([`keyrot_core::custody::key_name_prefix`]).
const NAME_PREFIX: &str = "keyrot-";
/// The aliases keyrot gives its keys, and deletes when it destroys them.
const ALIAS_PREFIX: &str = "alias/keyrot-";
/// The tag naming the keyrot key on the KMS key.
const NAME_TAG: &str = "keyrot:name";
/// `ScheduleKeyDeletion`'s shortest waiting period.
const DELETION_WINDOW_DAYS: i32 = 7;
/// KMS's answer to an operation the key's state does not allow (pending deletion).
const INVALID_STATE: &str = "KMSInvalidStateException";

/// A ring's signing keys held by AWS KMS: asymmetric `SIGN_VERIFY` keys that KMS
/// generates and never lets out; keyrot keeps each key's ARN and public key.
///
/// # Configuration
///
/// `aws-kms:` and nothing after the colon. The region, the credential and the endpoint
/// come from the standard AWS configuration chain, as for [`super::KmsCustody`]
/// (`AWS_REGION`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`…, web identity, container and instance
/// roles, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_KMS`); each call times out after 10 s and
/// is tried at most twice.
///
/// # Keys
///
/// | alg | `KeySpec` | `SigningAlgorithm` |
/// |---|---|---|
/// | ES256 | `ECC_NIST_P256` | `ECDSA_SHA_256`, DER converted to `R‖S` |
/// | ES384 | `ECC_NIST_P384` | `ECDSA_SHA_384`, DER converted to `R‖S` |
/// | RS256 | `RSA_2048`, `RSA_3072`, `RSA_4096` | `RSASSA_PKCS1_V1_5_SHA_256` |
/// | PS256 | `RSA_2048`, `RSA_3072`, `RSA_4096` | `RSASSA_PSS_SHA_256`: MGF1-SHA-256 and a 32-byte salt, the hash's length, as RFC 7518 §3.5 requires |
///
/// EdDSA is refused: KMS has offered `ECC_NIST_EDWARDS25519` keys since 2025, and the SDK
/// this crate builds with knows them, but the emulator the backend is tested against
/// (moto) does not, so this version does not use them.
///
/// [`SigningCustody::create`] runs `CreateKey` (`SIGN_VERIFY`, origin `AWS_KMS`, a
/// description and the tag `keyrot:name=NAME`), then `CreateAlias` `alias/NAME` (a `.` of
/// the ring's name becomes `/`, which alias names allow and ring names do not contain: the
/// mapping is one to one), then `GetPublicKey`. The reference keyrot stores is
/// `aws-kms:` and the key's ARN. A key whose alias cannot be created is scheduled for
/// deletion at once. [`SigningCustody::list`] finds keys by their aliases.
///
/// [`SigningCustody::find`] takes a reference, a key ARN, a key id or `alias/NAME` (with or
/// without `aws-kms:`). The key must be a `SIGN_VERIFY` key of the algorithm's spec, enabled,
/// and of origin `AWS_KMS`: a key of origin `EXTERNAL` is refused, because its private key
/// was made outside KMS and a copy may exist there, which is what keyrot's signing custody
/// promises not to have.
///
/// Messages up to 4096 bytes are signed as they are (`MessageType=RAW`); a longer JWS
/// signing input is hashed here (SHA-256, SHA-384 for ES384) and sent as the digest
/// (`MessageType=DIGEST`): the same signature.
///
/// [`SigningCustody::disable`] is `DisableKey`. [`SigningCustody::destroy`] is
/// `ScheduleKeyDeletion` with the shortest waiting period (7 days), then `DeleteAlias` of
/// the key's `alias/keyrot-…` aliases; a key already pending deletion, or gone, is `Ok`.
///
/// # Permissions
///
/// `kms:CreateKey` and `kms:TagResource` (the tag is set by `CreateKey`), `kms:CreateAlias`,
/// `kms:DeleteAlias` and `kms:ListAliases` (on the key and on `alias/keyrot-*`),
/// `kms:DescribeKey`, `kms:GetPublicKey`, `kms:Sign`, `kms:DisableKey`,
/// `kms:ScheduleKeyDeletion`. [`SigningCustody::check`] is `ListAliases` with `Limit=1`.
///
/// # Errors
///
/// KMS unreachable, a timeout, a throttle or a 5xx is [`CustodyError::Unavailable`]; a
/// refused credential or permission, a disabled or missing key [`CustodyError::Denied`]; a
/// key of another type or origin, a reference that is not a key ARN of this region, an
/// algorithm KMS does not offer [`CustodyError::Config`]. Messages name the region and the
/// endpoint, never a credential.
pub struct KmsSigning {
    kms: Kms,
    location: String,
}

impl fmt::Debug for KmsSigning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsSigning")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// A reference `aws-kms:arn:PARTITION:kms:REGION:ACCOUNT:key/ID`: the ARN, and the key id.
struct KeyRef<'r> {
    arn: &'r str,
    id: &'r str,
}

impl KmsSigning {
    /// Opens `aws-kms:` with the standard AWS configuration chain and checks that KMS
    /// answers and accepts the credential ([`SigningCustody::check`]).
    pub async fn open(uri: &str) -> Result<Self, CustodyError> {
        parse_uri(uri)?;
        let (config, endpoint) = super::environment().await;
        Self::connect(&config, endpoint).await
    }

    /// [`KmsSigning::open`] with an explicit SDK configuration instead of the environment's
    /// (tests, or an application that already built one). Its retry and timeout settings
    /// are replaced by this crate's bounds (two attempts, 10 s).
    pub async fn with_config(uri: &str, config: &SdkConfig) -> Result<Self, CustodyError> {
        parse_uri(uri)?;
        Self::connect(config, None).await
    }

    async fn connect(config: &SdkConfig, endpoint: Option<String>) -> Result<Self, CustodyError> {
        let kms = Kms::new(config, endpoint, SCHEME)?;
        let signing = Self {
            location: kms.location(SCHEME),
            kms,
        };
        signing.check().await?;
        Ok(signing)
    }

    fn error(&self, class: Class) -> CustodyError {
        custody_error(
            class,
            self.location.clone(),
            "the key was deleted, or is in another account or region",
        )
    }

    fn failed<E>(&self, err: &SdkError<E>) -> CustodyError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.error(classify(err, false))
    }

    fn config(&self, detail: String) -> CustodyError {
        self.error(Class::Config(detail))
    }

    /// The key a stored reference names; a key in another region is a configuration error
    /// (the client is for one region).
    fn key_ref<'r>(&self, reference: &'r str) -> Result<KeyRef<'r>, CustodyError> {
        let arn = reference.strip_prefix(SCHEME).unwrap_or("");
        let region = arn.split(':').nth(3).unwrap_or("");
        let id = arn.split_once(":key/").map_or("", |(_, id)| id);
        let id_ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if arn_account(arn).is_none() || !id_ok {
            return Err(self.config(format!(
                "{reference:?} is not an AWS KMS key reference: references look like aws-kms:arn:aws:kms:REGION:ACCOUNT:key/KEY_ID"
            )));
        }
        if region != self.kms.region {
            return Err(self.config(format!(
                "the key {arn} is in {region}, and this client is for {}: set AWS_REGION to {region}",
                self.kms.region
            )));
        }
        Ok(KeyRef { arn, id })
    }

    /// The key's metadata, `None` when KMS does not know the key.
    async fn describe(&self, key: &str) -> Result<Option<KeyMetadata>, CustodyError> {
        match self.kms.client.describe_key().key_id(key).send().await {
            Ok(out) => out
                .key_metadata
                .map(Some)
                .ok_or_else(|| self.error(missing("KeyMetadata"))),
            Err(e) => match classify(&e, false) {
                Class::NotFound(_) => Ok(None),
                class => Err(self.error(class)),
            },
        }
    }

    /// Whether the key is gone or pending deletion (after KMS refused an operation for the
    /// key's state).
    async fn gone_or_pending(&self, id: &str) -> Result<bool, CustodyError> {
        Ok(self
            .describe(id)
            .await?
            .is_none_or(|meta| pending(meta.key_state.as_ref())))
    }

    /// `Config` unless `usage` and `spec` are those of a signing key for `alg`.
    fn fit(
        &self,
        key: &str,
        usage: Option<&KeyUsageType>,
        spec: Option<&KeySpec>,
        alg: Algorithm,
    ) -> Result<(), CustodyError> {
        let shown = |v: Option<&str>| v.unwrap_or("unknown").to_owned();
        if usage != Some(&KeyUsageType::SignVerify) {
            return Err(self.config(format!(
                "the key {key} is for {}, not SIGN_VERIFY",
                shown(usage.map(KeyUsageType::as_str))
            )));
        }
        if !spec.is_some_and(|s| spec_fits(s, alg)) {
            return Err(self.config(format!(
                "the key {key} is {}, not a key for {alg} ({})",
                shown(spec.map(KeySpec::as_str)),
                specs_for(alg)
            )));
        }
        Ok(())
    }

    /// The public key of `key`, a signing key for `alg` (its `KeyMetadata` was checked:
    /// moto's `GetPublicKey` answers the key spec only in the deprecated field).
    async fn public_key(&self, key: &str, alg: Algorithm) -> Result<PublicKey, CustodyError> {
        let out = self
            .kms
            .client
            .get_public_key()
            .key_id(key)
            .send()
            .await
            .map_err(|e| self.failed(&e))?;
        let der = out.public_key.ok_or_else(|| self.error(missing("PublicKey")))?;
        spki::public_key(der.as_ref(), alg)
            .map_err(|e| self.error(Class::Unavailable(format!("the public key of {key}: {e}"))))
    }

    /// Schedules the deletion of a key just created that keyrot cannot use. Best effort:
    /// a failure is logged, for the operator to delete the key.
    async fn abandon(&self, id: &str) {
        let scheduled = self
            .kms
            .client
            .schedule_key_deletion()
            .key_id(id)
            .pending_window_in_days(DELETION_WINDOW_DAYS)
            .send()
            .await;
        if let Err(e) = scheduled {
            tracing::warn!(location = %self.location, key = id, error = %self.failed(&e), "could not schedule the deletion of a key keyrot created and cannot use; delete it in KMS");
        }
    }

    /// Deletes the `alias/keyrot-…` aliases of the key `id`.
    async fn delete_aliases(&self, id: &str) -> Result<(), CustodyError> {
        let mut pages = self
            .kms
            .client
            .list_aliases()
            .key_id(id)
            .limit(100)
            .into_paginator()
            .send();
        let mut ours = Vec::new();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => match classify(&e, false) {
                    Class::NotFound(_) => return Ok(()),
                    class => return Err(self.error(class)),
                },
            };
            let names = page.aliases().iter().filter_map(|a| a.alias_name());
            ours.extend(names.filter(|n| n.starts_with(ALIAS_PREFIX)).map(str::to_owned));
        }
        for alias in ours {
            if let Err(e) = self.kms.client.delete_alias().alias_name(&alias).send().await {
                match classify(&e, false) {
                    Class::NotFound(_) => {}
                    class => return Err(self.error(class)),
                }
            }
        }
        Ok(())
    }
}

/// `aws-kms:` and nothing else (a region or a key-policy hint may follow in a later version).
fn parse_uri(uri: &str) -> Result<(), CustodyError> {
    if uri == SCHEME {
        return Ok(());
    }
    Err(CustodyError::Config(format!(
        "{} is not a signing-keys URI for AWS KMS: use aws-kms: with nothing after the colon \
         (the region, the credential and the endpoint come from the AWS configuration chain)",
        crate::redact_uri(uri)
    )))
}

/// The alias of the key named `name`: `.`, which ring names may contain and alias names may
/// not, becomes `/`, which ring names do not contain.
fn alias_of(name: &str) -> String {
    format!("alias/{}", name.replace('.', "/"))
}

fn name_ok(name: &str) -> bool {
    name.starts_with(NAME_PREFIX)
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn pending(state: Option<&KeyState>) -> bool {
    matches!(
        state,
        Some(KeyState::PendingDeletion | KeyState::PendingReplicaDeletion)
    )
}

#[async_trait]
impl SigningCustody for KmsSigning {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn supports(&self, alg: Algorithm, rsa_bits: RsaBits) -> Result<(), CustodyError> {
        key_spec(alg, rsa_bits).map(drop).ok_or_else(|| unsupported(alg))
    }

    async fn create(&self, name: &str, alg: Algorithm, rsa_bits: RsaBits) -> Result<RemoteKey, CustodyError> {
        let spec = key_spec(alg, rsa_bits).ok_or_else(|| unsupported(alg))?;
        if !name_ok(name) {
            return Err(self.config(format!("{name:?} is not a name keyrot gives its keys")));
        }
        let tag = Tag::builder()
            .tag_key(NAME_TAG)
            .tag_value(name)
            .build()
            .map_err(|e| self.config(format!("the tag {NAME_TAG} cannot be built: {e}")))?;
        let created = self
            .kms
            .client
            .create_key()
            .key_usage(KeyUsageType::SignVerify)
            .key_spec(spec)
            .origin(OriginType::AwsKms)
            .description(format!("keyrot signing key {name}"))
            .tags(tag)
            .send()
            .await
            .map_err(|e| self.failed(&e))?;
        let meta = created.key_metadata.ok_or_else(|| self.error(missing("KeyMetadata")))?;
        let reference = meta.arn.as_ref().map(|arn| format!("{SCHEME}{arn}"));
        let Some(reference) = reference.filter(|r| self.key_ref(r).is_ok()) else {
            self.abandon(&meta.key_id).await;
            return Err(self.error(missing("the new key's ARN in this region")));
        };
        if let Err(e) = self.fit(&meta.key_id, meta.key_usage.as_ref(), meta.key_spec.as_ref(), alg) {
            self.abandon(&meta.key_id).await;
            return Err(e);
        }
        let aliased = self
            .kms
            .client
            .create_alias()
            .alias_name(alias_of(name))
            .target_key_id(&meta.key_id)
            .send()
            .await;
        if let Err(e) = aliased {
            let error = self.failed(&e);
            self.abandon(&meta.key_id).await;
            return Err(error);
        }
        match self.public_key(&meta.key_id, alg).await {
            Ok(public) => {
                tracing::info!(location = %self.location, key = %reference, %alg, "created an AWS KMS signing key");
                Ok(RemoteKey { reference, public })
            }
            Err(e) => {
                if let Err(d) = self.destroy(&reference).await {
                    tracing::warn!(key = %reference, error = %d, "could not destroy a key whose public key is unusable; the next rotation does");
                }
                Err(e)
            }
        }
    }

    async fn find(&self, reference: &str, alg: Algorithm) -> Result<RemoteKey, CustodyError> {
        signing_algorithm(alg).ok_or_else(|| unsupported(alg))?;
        let key = reference.strip_prefix(SCHEME).unwrap_or(reference);
        let plausible = !key.is_empty()
            && key.len() <= 2048
            && !key.chars().any(|c| c.is_whitespace() || c.is_control())
            && key != "alias/";
        if !plausible {
            return Err(self.config(format!(
                "{reference:?} does not name a KMS key: use a key ARN, a key id or alias/NAME"
            )));
        }
        let Some(meta) = self.describe(key).await? else {
            return Err(self.error(Class::NotFound(format!("KMS holds no key {key}"))));
        };
        let arn = meta.arn.clone().unwrap_or_default();
        let reference = format!("{SCHEME}{arn}");
        self.key_ref(&reference)?;
        self.fit(&arn, meta.key_usage.as_ref(), meta.key_spec.as_ref(), alg)?;
        if meta.origin != Some(OriginType::AwsKms) {
            let origin = meta.origin.as_ref().map_or("unknown", OriginType::as_str);
            return Err(self.config(format!(
                "the key {arn} is of origin {origin}: keyrot holds only keys KMS generated (AWS_KMS), \
                 of which no copy exists outside KMS"
            )));
        }
        if !meta.enabled || meta.key_state != Some(KeyState::Enabled) {
            let state = meta.key_state.as_ref().map_or("unknown", KeyState::as_str);
            return Err(self.error(Class::Denied(format!(
                "the key {arn} is {state}: enable it (`aws kms enable-key`)"
            ))));
        }
        let public = self.public_key(&arn, alg).await?;
        Ok(RemoteKey { reference, public })
    }

    async fn sign(&self, reference: &str, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        let key = self.key_ref(reference)?;
        let algorithm = signing_algorithm(alg).ok_or_else(|| unsupported(alg))?;
        let request = self
            .kms
            .client
            .sign()
            .key_id(key.arn)
            .signing_algorithm(algorithm.clone());
        let request = if message.len() <= MAX_RAW {
            request.message_type(MessageType::Raw).message(Blob::new(message))
        } else {
            request
                .message_type(MessageType::Digest)
                .message(Blob::new(digest(alg, message)))
        };
        let out = request.send().await.map_err(|e| self.failed(&e))?;
        if out.key_id.as_deref() != Some(key.arn) || out.signing_algorithm.as_ref() != Some(&algorithm) {
            return Err(self.error(Class::Unavailable(format!(
                "KMS answered for another key or algorithm than {} with {algorithm}",
                key.arn
            ))));
        }
        let raw = out
            .signature
            .map(Blob::into_inner)
            .ok_or_else(|| self.error(missing("a Signature")))?;
        let signature = match alg {
            Algorithm::Es256 => ecdsa::der_to_jws(&raw, 32),
            Algorithm::Es384 => ecdsa::der_to_jws(&raw, 48),
            _ if matches!(raw.len(), 256 | 384 | 512) => Ok(raw),
            _ => Err("not as long as an RSA modulus KMS offers"),
        };
        signature.map_err(|e| {
            self.error(Class::Unavailable(format!(
                "the {algorithm} signature KMS answered with {}: {e}",
                key.arn
            )))
        })
    }

    async fn disable(&self, reference: &str) -> Result<bool, CustodyError> {
        let key = self.key_ref(reference)?;
        // DisableKey, ScheduleKeyDeletion and DeleteAlias act only on the caller's own
        // keys, so the key id names the same key as the ARN (and moto takes only the id).
        let Err(e) = self.kms.client.disable_key().key_id(key.id).send().await else {
            tracing::info!(location = %self.location, key = key.arn, "disabled an AWS KMS signing key");
            return Ok(true);
        };
        let class = classify(&e, false);
        let gone = matches!(class, Class::NotFound(_))
            || e.code() == Some(INVALID_STATE) && self.gone_or_pending(key.id).await?;
        if gone {
            tracing::warn!(location = %self.location, key = key.arn, "disabling a key that is deleted or pending deletion");
            return Ok(true);
        }
        Err(self.error(class))
    }

    async fn destroy(&self, reference: &str) -> Result<(), CustodyError> {
        let key = self.key_ref(reference)?;
        // Scheduled first: a key whose alias is gone but whose deletion failed would be
        // lost to `list`, while a key pending deletion with its alias is skipped by `list`
        // and its alias deleted by the next `destroy`.
        let scheduled = self
            .kms
            .client
            .schedule_key_deletion()
            .key_id(key.id)
            .pending_window_in_days(DELETION_WINDOW_DAYS)
            .send()
            .await;
        if let Err(e) = scheduled {
            let class = classify(&e, false);
            if matches!(class, Class::NotFound(_)) {
                return Ok(());
            }
            let already = e.code() == Some(INVALID_STATE) && self.gone_or_pending(key.id).await?;
            if !already {
                return Err(self.error(class));
            }
        }
        self.delete_aliases(key.id).await?;
        tracing::info!(location = %self.location, key = key.arn, days = DELETION_WINDOW_DAYS, "scheduled the deletion of an AWS KMS signing key");
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, CustodyError> {
        if !prefix.starts_with(NAME_PREFIX) {
            return Err(self.config(format!("{prefix:?} is not a prefix of the names keyrot gives its keys")));
        }
        let wanted = alias_of(prefix);
        let mut pages = self.kms.client.list_aliases().limit(100).into_paginator().send();
        let mut targets = BTreeSet::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failed(&e))?;
            for alias in page.aliases() {
                if let (Some(name), Some(target)) = (alias.alias_name(), alias.target_key_id())
                    && name.starts_with(&wanted)
                {
                    targets.insert(target.to_owned());
                }
            }
        }
        let mut out = Vec::new();
        for id in targets {
            // `destroy` deletes the aliases; a key scheduled for deletion elsewhere keeps
            // its alias until KMS deletes it, and is not listed.
            let Some(meta) = self.describe(&id).await? else {
                continue;
            };
            if let Some(arn) = meta.arn.as_ref().filter(|_| !pending(meta.key_state.as_ref())) {
                out.push(format!("{SCHEME}{arn}"));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn check(&self) -> Result<(), CustodyError> {
        self.kms
            .client
            .list_aliases()
            .limit(1)
            .send()
            .await
            .map(drop)
            .map_err(|e| self.failed(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_is_the_scheme_alone() {
        assert!(parse_uri("aws-kms:").is_ok());
        for bad in [
            "aws-kms:us-east-1",
            "aws-kms:alias/x",
            "aws-kms",
            "vault-transit:transit",
        ] {
            let e = parse_uri(bad).unwrap_err().to_string();
            assert!(e.contains("use aws-kms: with nothing after the colon"), "{bad}: {e}");
        }
    }

    #[test]
    fn aliases_map_dots_one_to_one() {
        assert_eq!(alias_of("keyrot-api.v2-0a1b"), "alias/keyrot-api/v2-0a1b");
        assert_eq!(alias_of("keyrot-api-v2-"), "alias/keyrot-api-v2-");
        assert!(name_ok("keyrot-api.v2_x-0a1b"));
        assert!(!name_ok("other-key") && !name_ok("keyrot-a/b") && !name_ok("keyrot-a b"));
    }
}
