//! The family of the symmetric algorithms as far as signing goes: none. A MAC or AEAD
//! key is not generated, imported or parsed here (`crate::symmetric` holds them), so every
//! method refuses with [`KeyError::AlgorithmMismatch`]: no signing or verifying path can
//! ever be reached with a symmetric algorithm.

use super::{Family, KeyError, PrivateParams, PublicParams};
use crate::alg::Algorithm;
use crate::secret::SecretBytes;
use serde_json::{Map, Value};
use std::sync::Arc;

pub(super) struct NotSigning;

impl Family for NotSigning {
    fn name(&self) -> &'static str {
        "symmetric"
    }
    fn kty(&self) -> &'static str {
        // Never matched: `families()` lists only the signing algorithms' families.
        "oct"
    }
    fn slow_generation(&self) -> bool {
        false
    }
    fn generate(&self, alg: Algorithm, _: &super::GenerateOptions) -> Result<Arc<dyn PrivateParams>, KeyError> {
        Err(KeyError::AlgorithmMismatch { alg })
    }
    fn import_secret_bytes(&self, alg: Algorithm, _: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError> {
        Err(KeyError::AlgorithmMismatch { alg })
    }
    fn import_pkcs8_pem(&self, _: &str, alg: Option<Algorithm>) -> Result<Option<Arc<dyn PrivateParams>>, KeyError> {
        match alg {
            Some(alg) => Err(KeyError::AlgorithmMismatch { alg }),
            None => Ok(None),
        }
    }
    fn public_from_jwk(
        &self,
        _: &Map<String, Value>,
        alg: Option<Algorithm>,
    ) -> Result<Arc<dyn PublicParams>, KeyError> {
        Err(KeyError::AlgorithmMismatch {
            alg: alg.unwrap_or(Algorithm::HmacSha256),
        })
    }
}
