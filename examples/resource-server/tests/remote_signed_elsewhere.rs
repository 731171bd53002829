//! Tokens whose signing keys an HSM or a KMS holds verify in other stacks: for OpenBao
//! Transit, for a SoftHSM2 token (PKCS#11) and for AWS KMS (on moto), a ring per algorithm
//! (EdDSA, RS256, PS256, ES256, ES384; on AWS KMS RS256, ES256 and ES384, see
//! [`AWS_ALGORITHMS`]) has the backend create its key at `init`, signs a token through
//! `sign_async`, and PyJWT, jwcrypto, node's `jose` and the `jsonwebtoken` crate verify it
//! through the ring's JWKS, and refuse it with one signature byte changed (so a signature
//! in the wrong encoding, DER instead of R‖S or the wrong PSS salt, cannot pass unseen).
//!
//! OpenBao: `KEYROT_TEST_BAO` or `bao` on PATH, a dev server per run on a free port.
//! moto: `KEYROT_TEST_MOTO_SERVER` or `moto_server` on PATH, likewise.
//! SoftHSM2: `KEYROT_TEST_SOFTHSM2_MODULE` (default `/usr/lib/softhsm/libsofthsm2.so`) and
//! `softhsm2-util`; the module reads `SOFTHSM2_CONF` once per process, so the test runs
//! itself again as a child process with its own token directory. A missing component
//! prints one `skipped …` line, or fails under `CI=true` (`.ci/custody/*.sh` install them).
#![allow(clippy::unwrap_used)] // a failed setup step is a failed test

mod support;

#[path = "../../../keyrot-kms/tests/vault/bao.rs"]
mod bao;
#[allow(dead_code)] // shared with keyrot-kms's AWS tests, which use all of it
#[path = "../../../keyrot-kms/tests/aws/moto.rs"]
mod moto;

use keyrot_core::custody::SigningCustody;
use keyrot_core::{
    Algorithm, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy, RequestContext, RingName,
    Rotator, SignError, Storage as _, TokenError, Validation,
};
use keyrot_kms::aws::KmsSigning;
use keyrot_kms::pkcs11::Pkcs11Signing;
use keyrot_kms::vault::TransitSigning;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const ISSUER: &str = "https://keyrot.remote-issuer.test";
const AUDIENCE: &str = "other-stacks";
const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::EdDsa,
    Algorithm::Rs256,
    Algorithm::Ps256,
    Algorithm::Es256,
    Algorithm::Es384,
];
/// AWS KMS has no Ed25519 key spec keyrot uses (and moto none at all), and moto signs
/// RSASSA-PSS with the longest salt the modulus allows where KMS, and RFC 7518 §3.5, use
/// the hash's 32 bytes: every stack (keyrot included) rightly refuses moto's PS256
/// signatures, which `keyrot-kms/tests/aws_signing.rs` asserts.
const AWS_ALGORITHMS: [Algorithm; 3] = [Algorithm::Rs256, Algorithm::Es256, Algorithm::Es384];

/// A ring of `alg` whose signing key `custody` holds, and a token it signed through the
/// backend: the case the verifiers get.
async fn remote_case(backend: &str, custody: &Arc<dyn SigningCustody>, alg: Algorithm) -> support::Case {
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").unwrap(), []).unwrap());
    let ring = RingName::new(format!("{backend}-{}", alg.as_str().to_lowercase())).unwrap();
    let policy = Policy::builder().with_algorithm(alg).build().unwrap();
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_policy(policy.clone())
        .with_signing_custody(Arc::clone(custody))
        .build()
        .await
        .unwrap();
    Rotator::builder(ring.clone(), storage.clone(), Arc::new(MemoryLock::default()), sealer)
        .with_policy(policy)
        .with_keyring(keyring.clone())
        .build()
        .init(RequestContext::actor("interop"))
        .await
        .unwrap();
    let rows = storage.load(&ring).await.unwrap();
    assert!(
        rows.keys.len() == 1 && rows.keys[0].remote.is_some() && rows.keys[0].sealed.is_none(),
        "{backend} {alg}: the backend holds the only key"
    );

    let now = chrono::Utc::now().timestamp();
    let sub = format!("{backend}-{}", alg.as_str());
    let claims = serde_json::json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600 });
    assert!(matches!(keyring.sign(&claims), Err(SignError::RemoteKey)));
    let token = keyring.sign_async(&claims).await.unwrap();
    // JWS encodings: R‖S for ECDSA (not DER), 64 bytes for Ed25519, the modulus for RSA.
    let signature = keyrot_core::testing::b64::decode(token.rsplit('.').next().unwrap()).unwrap();
    let expected = match alg {
        Algorithm::Es384 => 96,
        Algorithm::Rs256 | Algorithm::Ps256 => 256,
        _ => 64,
    };
    assert_eq!(signature.len(), expected, "{backend} {alg}: signature length");
    let tampered = support::tamper(&token);
    let validation = Validation::new().with_issuer(ISSUER).with_audience(AUDIENCE);
    let verified = keyring.verify_with(&token, &validation, chrono::Utc::now()).unwrap();
    assert_eq!(verified.claims["sub"], sub.as_str());
    assert_eq!(
        keyring.verify_with(&tampered, &validation, chrono::Utc::now()).err(),
        Some(TokenError::BadSignature),
        "{backend} {alg}: keyrot on a changed signature byte"
    );
    support::Case {
        name: alg.as_str().to_owned(),
        alg: alg.as_str(),
        jwks: serde_json::from_slice(keyring.snapshot().jwks().body()).unwrap(),
        token,
        sub,
        tampered: Some(tampered),
    }
}

/// Every algorithm of `algorithms` through `custody`, verified in every stack.
async fn signed_through(backend: &str, custody: Arc<dyn SigningCustody>, algorithms: &[Algorithm]) {
    let started = Instant::now();
    let mut cases = Vec::new();
    for &alg in algorithms {
        cases.push(remote_case(backend, &custody, alg).await);
    }
    let signed = started.elapsed();
    let stacks = support::verify_elsewhere(&format!("remote-{backend}"), ISSUER, AUDIENCE, &cases);
    println!(
        "{backend}: {} tokens (rings initialised and signed in {signed:.1?}) verified by {stacks:?} in {:.1?}",
        cases.len(),
        started.elapsed() - signed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_signed_tokens_verify_elsewhere() {
    let Some(bao) = bao::start("transit_signed_tokens_verify_elsewhere").await else {
        return;
    };
    let env = bao.env(&[("VAULT_TOKEN", &bao.root)]);
    let custody = TransitSigning::open_with_env("vault-transit:transit", move |k| env.get(k).cloned())
        .await
        .unwrap();
    signed_through("transit", Arc::new(custody), &ALGORITHMS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_signed_tokens_verify_elsewhere() {
    let Some(bin) = moto::moto_binary("aws_kms_signed_tokens_verify_elsewhere") else {
        return;
    };
    let server = moto::start_moto(&bin, &[]);
    let custody = KmsSigning::with_config("aws-kms:", &moto::sdk_config(&server.url))
        .await
        .unwrap();
    signed_through("aws", Arc::new(custody), &AWS_ALGORITHMS).await;
}

const PKCS11_TEST: &str = "pkcs11_signed_tokens_verify_elsewhere";
/// Set in the child process: the token directory its `SOFTHSM2_CONF` names.
const PKCS11_DIR: &str = "KEYROT_TEST_REMOTE_SIGNED_SOFTHSM_DIR";
const TOKEN: &str = "remote-signed";

#[test]
fn pkcs11_signed_tokens_verify_elsewhere() {
    let module = match softhsm2() {
        Ok(module) => module,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{PKCS11_TEST}: {why} and CI=true"),
        Err(why) => return println!("skipped {PKCS11_TEST}: {why}"),
    };
    if let Some(dir) = std::env::var_os(PKCS11_DIR) {
        let uri = format!(
            "pkcs11:token={TOKEN}?module-path={}&pin-source=file:{}",
            module.display(),
            Path::new(&dir).join("pin").display()
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        return rt.block_on(async {
            let custody = Pkcs11Signing::open(&uri).await.unwrap();
            signed_through("pkcs11", Arc::new(custody), &ALGORITHMS).await;
        });
    }
    let dir = TokenDir(std::env::temp_dir().join(format!("keyrot-remote-signed-{}", std::process::id())));
    let conf = dir.0.join("softhsm2.conf");
    std::fs::create_dir_all(dir.0.join("tokens")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.0.join("tokens").display()
        ),
    )
    .unwrap();
    let pin = "remote-signed-pin";
    std::fs::write(dir.0.join("pin"), pin).unwrap();
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--pin",
            pin,
            "--so-pin",
            "remote-signed-so",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "softhsm2-util: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let child = Command::new(std::env::current_exe().unwrap())
        .args([PKCS11_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(PKCS11_DIR, &dir.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&child.stderr));
    assert!(child.status.success(), "{PKCS11_TEST} failed in its SoftHSM2 process");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{PKCS11_TEST} did not run in its SoftHSM2 process"
    );
}

/// The SoftHSM2 module, or why there is none.
fn softhsm2() -> Result<PathBuf, String> {
    let module = std::env::var_os("KEYROT_TEST_SOFTHSM2_MODULE")
        .map_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"), PathBuf::from);
    if !module.is_file() {
        return Err(format!(
            "no SoftHSM2 module at {} (set KEYROT_TEST_SOFTHSM2_MODULE)",
            module.display()
        ));
    }
    match Command::new("softhsm2-util").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(module),
        _ => Err("softhsm2-util is not on PATH (apt-get install softhsm2)".into()),
    }
}

/// A token directory, removed when the test ends (a failure included).
struct TokenDir(PathBuf);

impl Drop for TokenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
