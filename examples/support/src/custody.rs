//! Master keys under custody: `KEYROT_MASTER_KEY_URI` names a key-encryption key in an HSM
//! or a KMS ([`keyrot_kms::from_uri`]: `pkcs11:…`, `vault-transit:MOUNT/KEY`, and
//! `aws-kms:KEY` when built with the `aws` feature), and the master keys are stored wrapped
//! under it in the key store's own database. Nothing secret is configured but the backend's
//! credential.

use crate::master_key::{MasterKeySource, load_master_key};
use crate::{Backend, SetupError};
use keyrot_core::Sealer;
use keyrot_core::custody::{CustodyKeys, CustodyMonitor, CustodySealer, KeyCustody, MasterKeyStorage};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The variable naming the custody backend's key-encryption key.
pub const MASTER_KEY_URI_VAR: &str = "KEYROT_MASTER_KEY_URI";
/// How often a long-running service asks the backend whether it answers, in seconds
/// (default 30).
pub const PROBE_SECONDS_VAR: &str = "KEYROT_CUSTODY_PROBE_SECONDS";
/// The variable naming the HSM or KMS that holds the ring's signing keys
/// ([`keyrot_kms::signing_from_uri`]: `vault-transit:MOUNT`). Unset: keys stay in-process.
pub const SIGNING_KEYS_URI_VAR: &str = "KEYROT_SIGNING_KEYS_URI";
/// The default probe interval.
pub const DEFAULT_PROBE: Duration = Duration::from_secs(30);

/// `KEYROT_MASTER_KEY_URI` when set and not empty. Refused
/// ([`SetupError::CustodyConflict`]) when a master key is configured as well
/// (`KEYROT_MASTER_KEY`, `KEYROT_MASTER_KEY_FILE`, or `explicit_file`, keyrotctl's
/// `--master-key-file`): the master keys come from one place.
pub fn master_key_uri(explicit_file: Option<&Path>) -> Result<Option<String>, SetupError> {
    let Some(uri) = std::env::var(MASTER_KEY_URI_VAR).ok().filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let other = if std::env::var_os("KEYROT_MASTER_KEY").is_some() {
        Some("KEYROT_MASTER_KEY")
    } else if std::env::var_os("KEYROT_MASTER_KEY_FILE").is_some() {
        Some("KEYROT_MASTER_KEY_FILE")
    } else if explicit_file.is_some() {
        Some("--master-key-file")
    } else {
        None
    };
    match other {
        Some(other) => Err(SetupError::CustodyConflict { other }),
        None => Ok(Some(uri.trim().to_owned())),
    }
}

/// The custody probe interval: `KEYROT_CUSTODY_PROBE_SECONDS` (whole seconds, at least 1),
/// else [`DEFAULT_PROBE`].
pub fn probe_interval() -> Result<Duration, SetupError> {
    match std::env::var(PROBE_SECONDS_VAR) {
        Err(_) => Ok(DEFAULT_PROBE),
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
            _ => Err(SetupError::ProbeSeconds { value }),
        },
    }
}

/// Opens the backend `uri` names, without checking its KEK (keyrotctl's `master-key create`
/// creates a missing one). Errors name the URI with its secrets redacted.
pub async fn open_custody(uri: &str) -> Result<Arc<dyn KeyCustody>, SetupError> {
    keyrot_kms::from_uri(uri).await.map_err(|source| SetupError::Custody {
        uri: keyrot_kms::redact_uri(uri),
        source,
    })
}

/// [`open_custody`], then checks that the backend answers and the KEK is usable (a missing
/// KEK is an error saying how to create it).
pub async fn checked_custody(uri: &str) -> Result<Arc<dyn KeyCustody>, SetupError> {
    let custody = open_custody(uri).await?;
    custody.check().await.map_err(|source| SetupError::Custody {
        uri: keyrot_kms::redact_uri(uri),
        source,
    })?;
    Ok(custody)
}

/// The master keys held by the backend `uri` names and stored in `store`, the backend
/// checked first.
pub async fn custody_keys(uri: &str, store: Arc<dyn MasterKeyStorage>) -> Result<CustodyKeys, SetupError> {
    Ok(CustodyKeys::new(checked_custody(uri).await?, store))
}

/// A sealer over every master key stored under the backend `uri` names, unwrapped. With
/// `create_if_empty` (the quickstarts), the first master key is created when none is
/// stored; otherwise an empty store is an error saying to run `keyrotctl master-key create`
/// or `import`.
pub async fn custody_sealer(
    uri: &str,
    store: Arc<dyn MasterKeyStorage>,
    create_if_empty: bool,
) -> Result<(Arc<CustodySealer>, MasterKeySource), SetupError> {
    let keys = custody_keys(uri, store).await?;
    let location = keyrot_kms::redact_uri(uri);
    let before = keys.list().await.map_err(|source| SetupError::CustodyKeys {
        uri: location.clone(),
        source,
    })?;
    let sealer = CustodySealer::open(keys, create_if_empty)
        .await
        .map_err(|source| SetupError::CustodyKeys {
            uri: location.clone(),
            source,
        })?;
    let source = MasterKeySource::Custody {
        primary: sealer.primary_key_id(),
        location,
        created: create_if_empty && before.is_empty(),
    };
    Ok((sealer, source))
}

/// The master keys a program uses, wherever they come from.
#[derive(Debug, Clone)]
pub struct MasterKeys {
    /// The sealer over them.
    pub sealer: Arc<dyn Sealer>,
    /// Where they come from (the banner says it).
    pub source: MasterKeySource,
    /// Under custody: the sealer whose backend a long-running service probes
    /// ([`MasterKeys::spawn_monitor`]).
    pub custody: Option<Arc<CustodySealer>>,
}

impl MasterKeys {
    /// Under custody, probes the backend every `KEYROT_CUSTODY_PROBE_SECONDS` (default
    /// 30 s) until the handle is dropped; `None` otherwise.
    pub fn spawn_monitor(&self) -> Result<Option<CustodyMonitor>, SetupError> {
        let Some(custody) = &self.custody else {
            return Ok(None);
        };
        Ok(Some(custody.spawn_monitor(probe_interval()?)))
    }
}

/// The master keys: under custody when `KEYROT_MASTER_KEY_URI` is set (from the store of
/// `backend`; with `create`, the first one is created when none is stored), else
/// [`load_master_key`] (with `create`, generated into the default file when none is
/// configured).
pub async fn master_keys(
    backend: &Backend,
    explicit_file: Option<&Path>,
    create: bool,
) -> Result<MasterKeys, SetupError> {
    if let Some(uri) = master_key_uri(explicit_file)? {
        let (sealer, source) = custody_sealer(&uri, backend.master_keys.clone(), create).await?;
        return Ok(MasterKeys {
            sealer: sealer.clone(),
            source,
            custody: Some(sealer),
        });
    }
    let (sealer, source) = load_master_key(explicit_file, create)?;
    Ok(MasterKeys {
        sealer: Arc::new(sealer),
        source,
        custody: None,
    })
}

/// The HSM or KMS `KEYROT_SIGNING_KEYS_URI` names, opened and checked, and able to make
/// keys of `policy`'s algorithm; `None` when the variable is unset (keys stay in-process).
pub async fn signing_custody(
    policy: &keyrot_core::Policy,
) -> Result<Option<Arc<dyn keyrot_core::custody::SigningCustody>>, SetupError> {
    let Some(uri) = std::env::var(SIGNING_KEYS_URI_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        return Ok(None);
    };
    let fail = |source| SetupError::SigningCustody {
        uri: keyrot_kms::redact_uri(uri.trim()),
        source,
    };
    let custody = keyrot_kms::signing_from_uri(uri.trim()).await.map_err(fail)?;
    custody.supports(policy.algorithm(), policy.rsa_bits()).map_err(fail)?;
    custody.check().await.map_err(fail)?;
    Ok(Some(custody))
}
