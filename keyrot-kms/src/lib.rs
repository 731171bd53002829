//! # keyrot-kms
//!
//! keyrot's master keys, and signing keys that never leave it, in an HSM or a KMS. Each
//! backend implements
//! [`keyrot_core::custody::KeyCustody`] behind its own cargo feature:
//!
//! | URI (`KEYROT_MASTER_KEY_URI`) | feature | backend |
//! |---|---|---|
//! | `pkcs11:token=LABEL;object=LABEL?module-path=…&pin-source=file:…` | `pkcs11` | any PKCS#11 HSM (RFC 7512 URI) |
//! | `vault-transit:MOUNT/KEYNAME` | `vault` | HashiCorp Vault or OpenBao Transit |
//! | `aws-kms:KEY_ID_OR_ARN_OR_ALIAS` | `aws` | AWS KMS |
//!
//! [`from_uri`] opens the backend a URI names. Errors and logs name the URI with its
//! secrets redacted ([`redact_uri`]).
//!
//! A ring's signing keys can be held by a backend too
//! ([`keyrot_core::custody::SigningCustody`]), non-extractable, one backend key per keyrot
//! key; [`signing_from_uri`] opens it (`KEYROT_SIGNING_KEYS_URI` in the examples):
//!
//! | URI (`KEYROT_SIGNING_KEYS_URI`) | feature | backend |
//! |---|---|---|
//! | `pkcs11:token=LABEL?module-path=…&pin-source=file:…` | `pkcs11` | key pairs on the token, non-extractable and sensitive (`pkcs11::Pkcs11Signing`) |
//! | `vault-transit:MOUNT` | `vault` | Transit keys `MOUNT/keys/keyrot-LEN-RING-…` (`vault::TransitSigning`) |
//! | `aws-kms:` | `aws` | KMS asymmetric keys (ES256, ES384, RS256, PS256), aliases `alias/keyrot-LEN-RING-…`, the AWS configuration chain (`aws::KmsSigning`) |

use keyrot_core::custody::{CustodyError, KeyCustody, SigningCustody};
use std::sync::Arc;

#[cfg(any(feature = "vault", feature = "aws"))]
mod spki;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "vault")]
pub mod vault;

/// The backend a custody URI names, opened and checked (reachable, credential valid, KEK
/// usable). A scheme whose feature is not compiled in is a configuration error naming the
/// feature.
pub async fn from_uri(uri: &str) -> Result<Arc<dyn KeyCustody>, CustodyError> {
    let scheme = uri.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
        "pkcs11" => open_pkcs11(uri).await,
        "vault-transit" => open_vault(uri).await,
        "aws-kms" => open_aws(uri).await,
        _ => Err(CustodyError::Config(format!(
            "{} is not a custody URI: use pkcs11:…, vault-transit:MOUNT/KEY or aws-kms:KEY",
            redact_uri(uri)
        ))),
    }
}

#[cfg(feature = "pkcs11")]
async fn open_pkcs11(uri: &str) -> Result<Arc<dyn KeyCustody>, CustodyError> {
    Ok(Arc::new(pkcs11::Pkcs11Custody::open(uri).await?))
}
#[cfg(not(feature = "pkcs11"))]
async fn open_pkcs11(_: &str) -> Result<Arc<dyn KeyCustody>, CustodyError> {
    Err(not_built("pkcs11"))
}

#[cfg(feature = "vault")]
async fn open_vault(uri: &str) -> Result<Arc<dyn KeyCustody>, CustodyError> {
    Ok(Arc::new(vault::TransitCustody::open(uri).await?))
}
#[cfg(not(feature = "vault"))]
async fn open_vault(_: &str) -> Result<Arc<dyn KeyCustody>, CustodyError> {
    Err(not_built("vault"))
}

/// The backend a signing-keys URI names, opened and checked (reachable, credential valid).
/// A scheme whose feature is not compiled in is a configuration error naming the feature.
pub async fn signing_from_uri(uri: &str) -> Result<Arc<dyn SigningCustody>, CustodyError> {
    let scheme = uri.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
        "vault-transit" => open_vault_signing(uri).await,
        "pkcs11" => open_pkcs11_signing(uri).await,
        "aws-kms" => open_aws_signing(uri).await,
        _ => Err(CustodyError::Config(format!(
            "{} is not a signing-keys URI: use pkcs11:token=LABEL?module-path=…&pin-source=file:…, vault-transit:MOUNT \
             or aws-kms:",
            redact_uri(uri)
        ))),
    }
}

#[cfg(feature = "pkcs11")]
async fn open_pkcs11_signing(uri: &str) -> Result<Arc<dyn SigningCustody>, CustodyError> {
    Ok(Arc::new(pkcs11::Pkcs11Signing::open(uri).await?))
}
#[cfg(not(feature = "pkcs11"))]
async fn open_pkcs11_signing(_: &str) -> Result<Arc<dyn SigningCustody>, CustodyError> {
    Err(not_built("pkcs11"))
}

#[cfg(feature = "aws")]
async fn open_aws_signing(uri: &str) -> Result<Arc<dyn SigningCustody>, CustodyError> {
    Ok(Arc::new(aws::KmsSigning::open(uri).await?))
}
#[cfg(not(feature = "aws"))]
async fn open_aws_signing(_: &str) -> Result<Arc<dyn SigningCustody>, CustodyError> {
    Err(not_built("aws"))
}

#[cfg(feature = "vault")]
async fn open_vault_signing(uri: &str) -> Result<Arc<dyn SigningCustody>, CustodyError> {
    Ok(Arc::new(vault::TransitSigning::open(uri).await?))
}
#[cfg(not(feature = "vault"))]
async fn open_vault_signing(_: &str) -> Result<Arc<dyn SigningCustody>, CustodyError> {
    Err(not_built("vault"))
}

#[cfg(feature = "aws")]
async fn open_aws(uri: &str) -> Result<Arc<dyn KeyCustody>, CustodyError> {
    Ok(Arc::new(aws::KmsCustody::open(uri).await?))
}
#[cfg(not(feature = "aws"))]
async fn open_aws(_: &str) -> Result<Arc<dyn KeyCustody>, CustodyError> {
    Err(not_built("aws"))
}

#[cfg(any(not(feature = "pkcs11"), not(feature = "vault"), not(feature = "aws")))]
fn not_built(feature: &str) -> CustodyError {
    CustodyError::Config(format!("keyrot-kms was built without its `{feature}` feature"))
}

/// `uri` safe to log: the value of every query attribute that can carry a secret
/// (`pin-value`, and any `*token*`, `*secret*`, `*password*` attribute) replaced by
/// `[redacted]`. `pin-source` is a file path, not a secret, and is kept.
pub fn redact_uri(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    // Attributes are separated by ';' (path) and '&' / '?' (query) in RFC 7512.
    while !rest.is_empty() {
        let cut = rest.find([';', '&', '?']).map_or(rest.len(), |i| i + 1);
        let (part, tail) = rest.split_at(cut);
        let (body, sep) = match part.char_indices().last() {
            Some((i, ';' | '&' | '?')) => (&part[..i], &part[i..]),
            _ => (part, ""),
        };
        match body.split_once('=') {
            // The first attribute follows the scheme (`pkcs11:token=…`): its name is after the ':'.
            Some((name, _)) if secret_attribute(name.rsplit(':').next().unwrap_or(name)) => {
                out.push_str(name);
                out.push_str("=[redacted]");
            }
            _ => out.push_str(body),
        }
        out.push_str(sep);
        rest = tail;
    }
    out
}

fn secret_attribute(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "pin-value" || n.contains("token") && n != "token" || n.contains("secret") || n.contains("password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_value_is_redacted_and_the_rest_kept() {
        let uri = "pkcs11:token=keyrot;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234";
        assert_eq!(
            redact_uri(uri),
            "pkcs11:token=keyrot;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=[redacted]"
        );
        let uri = "pkcs11:token=keyrot;object=kek?pin-source=file:/run/secrets/pin";
        assert_eq!(redact_uri(uri), uri);
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_a_configuration_error() {
        let e = from_uri("file:/etc/master.key")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("is not a custody URI"), "{e}");
    }
}
