//! AWS KMS custody against a real `moto_server` (PyPI `moto[server]`, an emulator of the
//! KMS API) that each test starts on a free 127.0.0.1 port and stops at the end.
//!
//! What moto enforces, and so what these tests can show: the encryption context (moto
//! authenticates it as AES-GCM associated data), the ciphertext's integrity, `Decrypt`'s
//! `KeyId` (moto answers AccessDenied where KMS answers IncorrectKeyException; both are
//! `Refused`), credentials when started with `INITIAL_NO_AUTH_ACTION_COUNT=0`. What it does
//! not: a disabled key still encrypts and decrypts in moto (real KMS answers
//! DisabledException → `Denied`), so only `check` is asserted for it here; `ReEncrypt`'s
//! `SourceKeyId` is ignored by moto (the backend compares the reported source key itself).
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used)] // a failed step is a failed test

#[path = "aws/moto.rs"]
mod moto;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use keyrot_core::SecretBytes;
use keyrot_core::custody::{CustodyError, KeyCustody, SigningCustody, WrappedKey};
use keyrot_kms::aws::{KmsCustody, KmsSigning};
use moto::{ACCESS_KEY, SECRET_KEY, assert_no_secret, free_port, moto_binary, sdk_config, start_moto};
use std::process::Command;
use std::time::{Duration, Instant};

/// A new symmetric key in moto, by ARN (what an operator's `aws kms create-key` does).
async fn create_key(config: &SdkConfig) -> String {
    let out = aws_sdk_kms::Client::new(config)
        .create_key()
        .key_spec(KeySpec::SymmetricDefault)
        .key_usage(KeyUsageType::EncryptDecrypt)
        .send()
        .await
        .expect("moto creates a key");
    out.key_metadata.and_then(|m| m.arn).expect("the key's ARN")
}

fn shown(e: &CustodyError) -> String {
    let text = format!("{e} {e:?}");
    assert_no_secret(&text);
    text
}

fn refused(r: Result<impl std::fmt::Debug, CustodyError>, why: &str) {
    match r {
        Err(CustodyError::Refused { .. }) => {}
        other => panic!("{why}: expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn generate_wrap_unwrap_and_ensure_kek() {
    let Some(bin) = moto_binary("generate_wrap_unwrap_and_ensure_kek") else {
        return;
    };
    let moto = start_moto(&bin, &[]);
    let config = sdk_config(&moto.url);
    let custody = KmsCustody::with_config("aws-kms:alias/keyrot-master", &config)
        .await
        .unwrap();
    assert_eq!(custody.backend(), "aws-kms");
    let missing = shown(&custody.check().await.unwrap_err());
    assert!(
        missing.contains("create-key") && missing.contains("alias/keyrot-master"),
        "{missing}"
    );
    assert!(
        custody.ensure_kek().await.unwrap(),
        "the missing alias and its key are created"
    );
    assert!(!custody.ensure_kek().await.unwrap(), "then it exists");
    custody.check().await.unwrap();

    let (key, wrapped) = custody.generate("mk-1").await.unwrap();
    assert_eq!(key.len(), 32);
    assert!(
        wrapped.kek.starts_with("arn:aws:kms:us-east-1:") && wrapped.kek.contains(":key/"),
        "{}",
        wrapped.kek
    );
    assert!(
        !wrapped.blob.windows(32).any(|w| w == key.expose()),
        "the blob is not the key"
    );
    assert_eq!(custody.unwrap("mk-1", &wrapped).await.unwrap(), key);

    let mine = SecretBytes::new((0u8..32).collect());
    let wrapped = custody.wrap("mk-2", &mine).await.unwrap();
    assert_eq!(custody.unwrap("mk-2", &wrapped).await.unwrap(), mine);
    let debug = format!("{custody:?} {wrapped:?}");
    assert!(
        debug.contains("alias/keyrot-master") && !debug.contains("blob:"),
        "{debug}"
    );
    assert_no_secret(&debug);

    // A key id (not an alias) that does not exist cannot be created.
    let by_id = KmsCustody::with_config("aws-kms:1234abcd-12ab-34cd-56ef-1234567890ab", &config)
        .await
        .unwrap();
    assert!(matches!(by_id.ensure_kek().await, Err(CustodyError::Config(_))));
}

#[tokio::test]
async fn substituted_altered_and_foreign_blobs_are_refused() {
    let Some(bin) = moto_binary("substituted_altered_and_foreign_blobs_are_refused") else {
        return;
    };
    let mut moto = start_moto(&bin, &[]);
    let config = sdk_config(&moto.url);
    let custody = KmsCustody::with_config("aws-kms:alias/keyrot-master", &config)
        .await
        .unwrap();
    custody.ensure_kek().await.unwrap();
    let (_, wrapped) = custody.generate("mk-1").await.unwrap();

    // Moved to another master-key id: the encryption context differs (moto enforces it).
    refused(custody.unwrap("mk-2", &wrapped).await, "blob moved to another id");
    refused(
        custody.rewrap("mk-2", &wrapped).await,
        "blob moved to another id, rewrap",
    );

    // Altered: the last byte (moto's ciphertext), a header byte (the key it names), cut.
    let mut altered = wrapped.clone();
    *altered.blob.last_mut().unwrap() ^= 1;
    refused(custody.unwrap("mk-1", &altered).await, "altered ciphertext");
    let mut altered = wrapped.clone();
    altered.blob[3] ^= 1;
    refused(custody.unwrap("mk-1", &altered).await, "altered header");
    let cut = WrappedKey {
        kek: wrapped.kek.clone(),
        blob: wrapped.blob[..10].to_vec(),
    };
    refused(custody.unwrap("mk-1", &cut).await, "truncated blob");

    // Another key's ciphertext under this row's KEK, and this blob under another KEK.
    let other_arn = create_key(&config).await;
    let other = KmsCustody::with_config(&format!("aws-kms:{other_arn}"), &config)
        .await
        .unwrap();
    let (_, foreign) = other.generate("mk-1").await.unwrap();
    assert_eq!(foreign.kek, other_arn);
    let swapped = WrappedKey {
        kek: wrapped.kek.clone(),
        blob: foreign.blob.clone(),
    };
    refused(custody.unwrap("mk-1", &swapped).await, "another key's ciphertext");
    refused(
        custody.rewrap("mk-1", &swapped).await,
        "another key's ciphertext, rewrap",
    );
    let renamed = WrappedKey {
        kek: other_arn.clone(),
        blob: wrapped.blob.clone(),
    };
    refused(custody.unwrap("mk-1", &renamed).await, "row naming another KEK");

    // The intact row still opens: the refusals above were about the substitutions.
    custody.unwrap("mk-1", &wrapped).await.unwrap();

    // A row naming a key outside the configured key's account, or an alias, is refused
    // before KMS is asked: with moto stopped the answer is still Refused, not Unavailable.
    // (moto would resolve such a KeyId to its own key, and the reported-ARN check would
    // refuse it too; real KMS would use another account's key if its policy allowed.)
    let elsewhere = WrappedKey {
        kek: wrapped.kek.replace(":123456789012:", ":999999999999:"),
        blob: wrapped.blob.clone(),
    };
    assert_ne!(elsewhere.kek, wrapped.kek, "moto's default account");
    let alias_row = WrappedKey {
        kek: "alias/keyrot-master".into(),
        blob: wrapped.blob.clone(),
    };
    moto.stop();
    refused(custody.unwrap("mk-1", &elsewhere).await, "a key in another account");
    refused(
        custody.rewrap("mk-1", &elsewhere).await,
        "a key in another account, rewrap",
    );
    refused(
        custody.unwrap("mk-1", &alias_row).await,
        "a row naming an alias, not a key ARN",
    );
}

#[tokio::test]
async fn moving_the_alias_to_a_new_key_then_rewrap() {
    let Some(bin) = moto_binary("moving_the_alias_to_a_new_key_then_rewrap") else {
        return;
    };
    let moto = start_moto(&bin, &[]);
    let config = sdk_config(&moto.url);
    let custody = KmsCustody::with_config("aws-kms:alias/keyrot-master", &config)
        .await
        .unwrap();
    custody.ensure_kek().await.unwrap();
    let (key, old) = custody.generate("mk-1").await.unwrap();

    // The operator's rotation to a new key: re-point the alias.
    let admin = aws_sdk_kms::Client::new(&config);
    let new_arn = create_key(&config).await;
    admin
        .update_alias()
        .alias_name("alias/keyrot-master")
        .target_key_id(&new_arn)
        .send()
        .await
        .unwrap();
    let new = custody.rewrap("mk-1", &old).await.unwrap();
    assert_eq!(new.kek, new_arn, "now under the new key");
    assert_ne!(new.kek, old.kek);
    assert_eq!(custody.unwrap("mk-1", &new).await.unwrap(), key);
    assert_eq!(
        custody.unwrap("mk-1", &old).await.unwrap(),
        key,
        "the old row opens while its key exists"
    );
    assert!(
        custody.wrap("mk-2", &key).await.unwrap().kek == new_arn,
        "new wraps use the new key"
    );

    // KMS's own rotation keeps the key id: rewrap stays under the same ARN and still opens.
    admin.rotate_key_on_demand().key_id(&new_arn).send().await.unwrap();
    let again = custody.rewrap("mk-1", &new).await.unwrap();
    assert_eq!(again.kek, new_arn);
    assert_eq!(custody.unwrap("mk-1", &again).await.unwrap(), key);
}

#[tokio::test]
async fn a_disabled_key_is_denied() {
    let Some(bin) = moto_binary("a_disabled_key_is_denied") else {
        return;
    };
    let moto = start_moto(&bin, &[]);
    let config = sdk_config(&moto.url);
    let arn = create_key(&config).await;
    let custody = KmsCustody::with_config(&format!("aws-kms:{arn}"), &config)
        .await
        .unwrap();
    custody.check().await.unwrap();
    // moto's DisableKey takes the key id, not the ARN.
    let key_id = arn.rsplit('/').next().unwrap();
    aws_sdk_kms::Client::new(&config)
        .disable_key()
        .key_id(key_id)
        .send()
        .await
        .unwrap();
    match custody.check().await {
        Err(e @ CustodyError::Denied { .. }) => assert!(shown(&e).contains("Disabled"), "{e}"),
        other => panic!("a disabled key: expected Denied, got {other:?}"),
    }
    // moto still decrypts under a disabled key; real KMS answers DisabledException (Denied).
}

#[tokio::test]
async fn unknown_credentials_are_denied() {
    let Some(bin) = moto_binary("unknown_credentials_are_denied") else {
        return;
    };
    // Moto checks signatures and access keys only when told to.
    let moto = start_moto(&bin, &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let e = KmsCustody::with_config("aws-kms:alias/keyrot-master", &sdk_config(&moto.url))
        .await
        .unwrap_err();
    let text = shown(&e);
    assert!(matches!(e, CustodyError::Denied { .. }), "{text}");
    assert!(
        text.contains("aws-kms:alias/keyrot-master") && text.contains("credential"),
        "{text}"
    );
    println!("unknown credential: {text}");

    // No credential at all: the SDK fails before sending.
    let bare = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .build();
    let e = KmsCustody::with_config("aws-kms:alias/keyrot-master", &bare)
        .await
        .unwrap_err();
    let text = shown(&e);
    println!("no credential: {text}");
    assert!(matches!(e, CustodyError::Denied { .. }), "{text}");
}

#[tokio::test]
async fn kms_down_at_open_and_mid_run_is_unavailable_fast() {
    let Some(bin) = moto_binary("kms_down_at_open_and_mid_run_is_unavailable_fast") else {
        return;
    };
    let dead = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let e = KmsCustody::with_config("aws-kms:alias/keyrot-master", &sdk_config(&dead))
        .await
        .unwrap_err();
    let text = shown(&e);
    assert!(matches!(e, CustodyError::Unavailable { .. }), "{text}");
    assert!(
        text.contains("aws-kms:alias/keyrot-master") && text.contains(&dead),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "down at open took {:?}",
        started.elapsed()
    );
    println!("down at open ({:?}): {text}", started.elapsed());

    let mut moto = start_moto(&bin, &[]);
    let config = sdk_config(&moto.url);
    let custody = KmsCustody::with_config("aws-kms:alias/keyrot-master", &config)
        .await
        .unwrap();
    custody.ensure_kek().await.unwrap();
    let (_, wrapped) = custody.generate("mk-1").await.unwrap();
    moto.stop();
    let started = Instant::now();
    for r in [
        custody.unwrap("mk-1", &wrapped).await.map(drop),
        custody.check().await,
        custody.generate("mk-2").await.map(drop),
    ] {
        let e = r.unwrap_err();
        let text = shown(&e);
        assert!(matches!(e, CustodyError::Unavailable { .. }), "{text}");
        println!("stopped mid-run: {text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped mid-run took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unwrap_latency_against_moto() {
    let Some(bin) = moto_binary("unwrap_latency_against_moto") else {
        return;
    };
    let moto = start_moto(&bin, &[]);
    let custody = KmsCustody::with_config("aws-kms:alias/keyrot-master", &sdk_config(&moto.url))
        .await
        .unwrap();
    custody.ensure_kek().await.unwrap();
    let (key, wrapped) = custody.generate("mk-1").await.unwrap();
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(custody.unwrap("mk-1", &wrapped).await.unwrap(), key);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "aws-kms unwrap against moto_server: median {:?} of 20 (min {:?}, max {:?})",
        times[10], times[0], times[19]
    );
}

/// `open` reads the standard chain from the environment. The environment is the process's,
/// so the test runs this binary again as a child with the variables set.
#[test]
fn open_reads_the_environment() {
    let Some(bin) = moto_binary("open_reads_the_environment") else {
        return;
    };
    let moto = start_moto(&bin, &[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    // AWS_ENDPOINT_URL alone, then a dead AWS_ENDPOINT_URL overridden by AWS_ENDPOINT_URL_KMS,
    // then no credential anywhere in the chain.
    let runs = [
        ("ok", moto.url.as_str(), None),
        ("ok", dead.as_str(), Some(moto.url.as_str())),
        ("no-credential", moto.url.as_str(), None),
    ];
    for (mode, generic, kms) in runs {
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "open_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env("KEYROT_TEST_AWS_OPEN_CHILD", mode)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", generic)
            .env("AWS_CONFIG_FILE", "/nonexistent/keyrot-aws-config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/keyrot-aws-credentials")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL_KMS");
        if let Some(kms) = kms {
            child.env("AWS_ENDPOINT_URL_KMS", kms);
        }
        if mode == "ok" {
            child
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        } else {
            child
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY");
        }
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let done = format!("open_child: {mode} done");
        stdout
            .lines()
            .filter_map(|l| l.find("no credential").map(|at| &l[at..]))
            .for_each(|l| println!("{l}"));
        assert!(
            out.status.success() && stdout.contains(&done),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
#[ignore = "run by open_reads_the_environment with its environment"]
async fn open_child() {
    let Ok(mode) = std::env::var("KEYROT_TEST_AWS_OPEN_CHILD") else {
        return;
    };
    if mode == "no-credential" {
        let started = Instant::now();
        let e = KmsCustody::open("aws-kms:alias/keyrot-env").await.unwrap_err();
        let text = shown(&e);
        println!("no credential in the chain ({:?}): {text}", started.elapsed());
        assert!(
            matches!(e, CustodyError::Denied { .. }) && text.contains("credential"),
            "{text}"
        );
        let e = KmsSigning::open("aws-kms:").await.unwrap_err();
        let text = shown(&e);
        assert!(
            matches!(e, CustodyError::Denied { .. }) && text.contains("credential"),
            "signing keys: {text}"
        );
        println!("open_child: {mode} done");
        return;
    }
    let custody = KmsCustody::open("aws-kms:alias/keyrot-env").await.unwrap();
    custody.ensure_kek().await.unwrap();
    let (key, wrapped) = custody.generate("mk-env").await.unwrap();
    assert_eq!(custody.unwrap("mk-env", &wrapped).await.unwrap(), key);
    assert_no_secret(&format!("{custody:?}"));
    let endpoint = std::env::var("AWS_ENDPOINT_URL_KMS")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap();
    assert!(
        custody.location().ends_with(&format!("via {endpoint}")),
        "{}",
        custody.location()
    );
    // The signing keys' backend reads the same chain, and checks with a real call.
    let signing = KmsSigning::open("aws-kms:").await.unwrap();
    assert_eq!(signing.location(), format!("aws-kms: in us-east-1 via {endpoint}"));
    signing.check().await.unwrap();
    assert_no_secret(&format!("{signing:?}"));
    println!("open_child: {mode} done");
}
