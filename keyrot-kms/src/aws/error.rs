//! How an AWS SDK error maps onto [`CustodyError`]: what the operator must fix (`Denied`),
//! what may pass (`Unavailable`), and a ciphertext that does not open (`Refused`).

use super::BACKEND;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use keyrot_core::custody::CustodyError;
use std::error::Error as StdError;

/// What an SDK error means for keyrot, before it is given a location.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Not reachable, no answer in time, a 5xx or a throttle: retrying may help.
    Unavailable(String),
    /// A credential, a permission or the key's state: the operator must act.
    Denied(String),
    /// The key does not exist (yet): `ensure_kek` may create it.
    NotFound(String),
    /// The ciphertext does not open under the key and encryption context asked for.
    Refused,
    /// The request itself is unusable (a malformed key id, a key of the wrong type).
    Config(String),
}

/// `class` as the error keyrot reports about the call at `location` (secrets redacted);
/// `not_found` tells the operator what to do about a key that does not exist. `Refused`
/// is about a row, which only the master-key custody knows: here it is `Denied`.
pub(crate) fn custody_error(class: Class, location: String, not_found: &str) -> CustodyError {
    match class {
        Class::Unavailable(detail) => CustodyError::Unavailable {
            backend: BACKEND,
            location,
            detail: format!("{detail}; check the network path to KMS and AWS_ENDPOINT_URL"),
        },
        Class::Denied(detail) => CustodyError::Denied {
            backend: BACKEND,
            location,
            detail: format!("{detail}; check the AWS credential, its kms:* permissions and that the key is enabled"),
        },
        Class::NotFound(detail) => CustodyError::Denied {
            backend: BACKEND,
            location,
            detail: format!("{detail}; {not_found}"),
        },
        Class::Refused => CustodyError::Denied {
            backend: BACKEND,
            location,
            detail: "KMS refused the key the request names".into(),
        },
        Class::Config(detail) => CustodyError::Config(format!("{BACKEND} at {location}: {detail}")),
    }
}

/// Error codes KMS answers when the ciphertext, not the caller, is wrong.
const REFUSED: &[&str] = &["InvalidCiphertextException", "IncorrectKeyException"];

/// Codes about the credential, a permission or the key's state.
const DENIED: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "ExpiredTokenException",
    "ExpiredToken",
    "MissingAuthenticationToken",
    "DisabledException",
    "KMSInvalidStateException",
    "KeyUnavailableException",
    "InvalidGrantTokenException",
];

/// Codes about the request or the key's type, which retrying does not change.
const CONFIG: &[&str] = &[
    "InvalidKeyUsageException",
    "UnsupportedOperationException",
    "ValidationException",
    "InvalidArnException",
    "InvalidAliasNameException",
];

/// What KMS answers when the key a ciphertext names is not one the caller may use: the
/// blob was wrapped under another key than its row names. (moto answers an
/// AccessDeniedException without any message for a ciphertext naming an unknown key or
/// another key than `KeyId`; KMS explains every permission denial, so a bare one on
/// `Decrypt` or `ReEncrypt` is taken as the same refusal.)
const OTHER_KEY: &str = "The ciphertext refers to a customer master key that does not exist";

/// Classifies `err`. `decrypting` is true for `Decrypt` and `ReEncrypt`, where an access
/// denial about the ciphertext's own key means the blob is not the row's.
pub(crate) fn classify<E>(err: &SdkError<E>, decrypting: bool) -> Class
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            classify_service(service.err(), status, decrypting)
        }
        SdkError::TimeoutError(_) => Class::Unavailable("no answer within the 10 s timeout".into()),
        SdkError::DispatchFailure(d) if credentials_failed(err) => Class::Denied(format!(
            "no usable AWS credentials: {}",
            chain(d.as_connector_error().map(|c| c as &(dyn StdError + 'static)))
        )),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            Class::Unavailable("no answer within the 10 s timeout".into())
        }
        SdkError::DispatchFailure(d) => Class::Unavailable(format!(
            "request not sent: {}",
            chain(d.as_connector_error().map(|c| c as &(dyn StdError + 'static)))
        )),
        SdkError::ResponseError(r) => {
            Class::Unavailable(format!("unreadable answer (HTTP {})", r.raw().status().as_u16()))
        }
        _ if credentials_failed(err) => Class::Denied(format!("no usable AWS credentials: {}", chain(Some(err)))),
        _ => Class::Config(format!("request not built: {}", chain(Some(err)))),
    }
}

fn classify_service<E: ProvideErrorMetadata>(err: &E, status: u16, decrypting: bool) -> Class {
    let code = err.code().unwrap_or("");
    let message = err.message().unwrap_or("");
    let detail = if code.is_empty() {
        format!("HTTP {status}")
    } else if message.is_empty() {
        format!("{code} (HTTP {status})")
    } else {
        format!("{code}: {}", printable(message))
    };
    if REFUSED.contains(&code)
        || decrypting && code.starts_with("AccessDenied") && (message.is_empty() || message.starts_with(OTHER_KEY))
    {
        Class::Refused
    } else if code == "NotFoundException" {
        Class::NotFound(detail)
    } else if DENIED.contains(&code) || status == 401 || status == 403 {
        Class::Denied(detail)
    } else if CONFIG.contains(&code) {
        Class::Config(detail)
    } else {
        // KMSInternalException, DependencyTimeoutException, throttling, any 5xx, and codes
        // this crate does not know: the service, not the configuration, is at fault.
        Class::Unavailable(detail)
    }
}

/// Whether the SDK failed before sending because no credential could be loaded.
fn credentials_failed<E: StdError + 'static>(err: &SdkError<E>) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// An error and its sources, one line, bounded. The SDK's messages carry no credential: a
/// secret key signs requests and is never echoed.
fn chain(err: Option<&(dyn StdError + 'static)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err;
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    if parts.is_empty() {
        return "unknown".to_owned();
    }
    printable(&parts.join(": "))
}

/// `text` on one line and at most 300 characters, so that a hostile endpoint cannot fill
/// the logs.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_multi_line_messages_are_bounded() {
        let long = "x\n".repeat(400);
        let p = printable(&long);
        assert!(!p.contains('\n'));
        assert_eq!(p.chars().count(), 301);
    }
}
