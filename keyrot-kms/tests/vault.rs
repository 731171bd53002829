//! The Transit backend against a real OpenBao dev server, started per test on a free
//! 127.0.0.1 port (`KEYROT_TEST_BAO`, or `bao` on PATH; `.ci/custody/vault.sh` installs it).
#![cfg(feature = "vault")]
#![allow(clippy::unwrap_used)]

use keyrot_core::SecretBytes;
use keyrot_core::custody::{CustodyError, KeyCustody, WrappedKey};
use keyrot_kms::vault::TransitCustody;
#[path = "vault/bao.rs"]
mod bao;

use bao::{Bao, free_port, start, start_with};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const URI: &str = "vault-transit:transit/keyrot";

impl Bao {
    async fn open(&self, uri: &str, env: HashMap<String, String>) -> Result<TransitCustody, CustodyError> {
        TransitCustody::open_with_env(uri, move |k| env.get(k).cloned()).await
    }

    /// A custody on `transit/keyrot` with the root token.
    async fn root_custody(&self) -> TransitCustody {
        self.open(URI, self.env(&[("VAULT_TOKEN", &self.root)])).await.unwrap()
    }

    /// A token with the documented least-privilege policy for `transit/keyrot`.
    async fn policy_token(&self) -> String {
        self.admin("PUT", "sys/policies/acl/keyrot", json!({"policy": POLICY}))
            .await;
        let created = self
            .admin("POST", "auth/token/create", json!({"policies": ["keyrot"]}))
            .await;
        created["auth"]["client_token"].as_str().unwrap().to_owned()
    }
}

/// The policy the module docs give.
const POLICY: &str = r#"
path "transit/keys/keyrot"              { capabilities = ["read"] }
path "transit/encrypt/keyrot"           { capabilities = ["update"] }
path "transit/decrypt/keyrot"           { capabilities = ["update"] }
path "transit/rewrap/keyrot"            { capabilities = ["update"] }
path "transit/datakey/plaintext/keyrot" { capabilities = ["update"] }
"#;

fn refused(r: Result<SecretBytes, CustodyError>) -> bool {
    matches!(r, Err(CustodyError::Refused { .. }))
}

/// A master key made here rather than by the server (as `master-key import` does).
fn random_key() -> SecretBytes {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    SecretBytes::new(nanos.to_le_bytes().repeat(2))
}

#[tokio::test]
async fn wraps_generates_and_refuses_moved_altered_and_foreign_blobs() {
    let Some(bao) = start("wraps_generates_and_refuses_moved_altered_and_foreign_blobs").await else {
        return;
    };
    let custody = bao.root_custody().await;
    assert!(custody.ensure_kek().await.unwrap(), "the missing key is created");
    assert!(!custody.ensure_kek().await.unwrap(), "an existing key is kept");
    custody.check().await.unwrap();

    let (key, wrapped) = custody.generate("mk-1").await.unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(wrapped.kek, "vault-transit:transit/keyrot#v1");
    assert!(wrapped.blob.starts_with(b"vault:v1:"));
    assert_eq!(custody.unwrap("mk-1", &wrapped).await.unwrap(), key);

    let mine = random_key();
    let w2 = custody.wrap("mk-2", &mine).await.unwrap();
    assert_eq!(custody.unwrap("mk-2", &w2).await.unwrap(), mine);
    assert_ne!(custody.unwrap("mk-2", &w2).await.unwrap(), key);

    // Moved to another master-key id.
    assert!(refused(custody.unwrap("mk-2", &wrapped).await));
    assert!(refused(custody.unwrap("mk-1", &w2).await));
    // Altered: one base64 character of the ciphertext changed.
    let mut altered = wrapped.clone();
    let i = altered.blob.len() - 5;
    altered.blob[i] = if altered.blob[i] == b'A' { b'B' } else { b'A' };
    assert!(refused(custody.unwrap("mk-1", &altered).await));
    // A row naming another KEK, or another version than its ciphertext.
    for kek in [
        "vault-transit:transit/other#v1",
        "vault-transit:transit/keyrot#v2",
        "vault-transit:transit/keyrot",
    ] {
        let row = WrappedKey {
            kek: kek.to_owned(),
            blob: wrapped.blob.clone(),
        };
        assert!(refused(custody.unwrap("mk-1", &row).await), "{kek}");
    }
    // A blob wrapped under another Transit key, presented as this key's.
    let other = bao
        .open("vault-transit:transit/other", bao.env(&[("VAULT_TOKEN", &bao.root)]))
        .await
        .unwrap();
    other.ensure_kek().await.unwrap();
    let foreign = other.wrap("mk-1", &mine).await.unwrap();
    let row = WrappedKey {
        kek: wrapped.kek.clone(),
        blob: foreign.blob.clone(),
    };
    assert!(refused(custody.unwrap("mk-1", &row).await));
    assert!(matches!(
        custody.rewrap("mk-9", &wrapped).await,
        Err(CustodyError::Refused { .. })
    ));
}

#[tokio::test]
async fn rotation_then_rewrap_moves_to_the_new_version_inside_the_server() {
    let Some(bao) = start("rotation_then_rewrap_moves_to_the_new_version_inside_the_server").await else {
        return;
    };
    let custody = bao.root_custody().await;
    custody.ensure_kek().await.unwrap();
    let (key, v1) = custody.generate("mk-1").await.unwrap();
    bao.admin("POST", "transit/keys/keyrot/rotate", json!({})).await;

    let v2 = custody.rewrap("mk-1", &v1).await.unwrap();
    assert_eq!(v2.kek, "vault-transit:transit/keyrot#v2");
    assert!(v2.blob.starts_with(b"vault:v2:"));
    assert_eq!(custody.unwrap("mk-1", &v2).await.unwrap(), key);
    assert_eq!(
        custody.unwrap("mk-1", &v1).await.unwrap(),
        key,
        "the old version still opens"
    );
    let fresh = custody.wrap("mk-3", &key).await.unwrap();
    assert_eq!(
        fresh.kek, "vault-transit:transit/keyrot#v2",
        "new wraps use the newest version"
    );

    // Once the old version may no longer decrypt, the old blob is refused, the new one opens.
    bao.admin(
        "POST",
        "transit/keys/keyrot/config",
        json!({"min_decryption_version": 2}),
    )
    .await;
    assert!(refused(custody.unwrap("mk-1", &v1).await));
    assert_eq!(custody.unwrap("mk-1", &v2).await.unwrap(), key);

    // Unwrap at start: the median of 20 against the local dev server.
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        custody.unwrap("mk-1", &v2).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "vault-transit unwrap median of 20: {:?} (min {:?}, max {:?})",
        times[10], times[0], times[19]
    );
}

#[tokio::test]
async fn a_missing_or_unfit_key_is_named_with_what_to_do() {
    let Some(bao) = start("a_missing_or_unfit_key_is_named_with_what_to_do").await else {
        return;
    };
    let custody = bao.root_custody().await;
    let e = custody.check().await.unwrap_err();
    assert!(matches!(e, CustodyError::Denied { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("bao write transit/keys/keyrot type=aes256-gcm96 derived=true"),
        "{e}"
    );
    assert!(matches!(
        custody.wrap("mk", &random_key()).await,
        Err(CustodyError::Denied { .. })
    ));

    // Made by hand without derivation: it would ignore the binding, so it is refused.
    bao.admin("POST", "transit/keys/plain", json!({"type": "aes256-gcm96"}))
        .await;
    let plain = bao
        .open("vault-transit:transit/plain", bao.env(&[("VAULT_TOKEN", &bao.root)]))
        .await
        .unwrap();
    let e = plain.check().await.unwrap_err();
    assert!(
        matches!(&e, CustodyError::Config(m) if m.contains("not derived")),
        "{e:?}"
    );
    assert!(matches!(plain.ensure_kek().await, Err(CustodyError::Config(_))));
    assert!(matches!(
        plain.wrap("mk", &random_key()).await,
        Err(CustodyError::Config(_))
    ));
    assert!(matches!(plain.generate("mk").await, Err(CustodyError::Config(_))));

    bao.admin(
        "POST",
        "transit/keys/export",
        json!({"type": "aes256-gcm96", "derived": true, "exportable": true}),
    )
    .await;
    let export = bao
        .open("vault-transit:transit/export", bao.env(&[("VAULT_TOKEN", &bao.root)]))
        .await
        .unwrap();
    assert!(matches!(export.check().await, Err(CustodyError::Config(m)) if m.contains("exportable")));
}

#[tokio::test]
async fn a_revoked_or_bad_token_is_denied_and_never_shown() {
    let Some(bao) = start("a_revoked_or_bad_token_is_denied_and_never_shown").await else {
        return;
    };
    bao.root_custody().await.ensure_kek().await.unwrap();
    let token = bao.policy_token().await;
    let custody = bao.open(URI, bao.env(&[("VAULT_TOKEN", &token)])).await.unwrap();
    custody.check().await.unwrap();
    let (key, wrapped) = custody.generate("mk-1").await.unwrap();
    let rewrapped = custody.rewrap("mk-1", &wrapped).await.unwrap();
    assert_eq!(custody.unwrap("mk-1", &rewrapped).await.unwrap(), key);
    // The policy does not reach another key.
    let other = bao
        .open("vault-transit:transit/other", bao.env(&[("BAO_TOKEN", &token)]))
        .await
        .unwrap();
    let denied_other = other.ensure_kek().await.unwrap_err();
    assert!(matches!(denied_other, CustodyError::Denied { .. }), "{denied_other:?}");

    bao.admin("POST", "auth/token/revoke", json!({"token": token})).await;
    let revoked = custody.unwrap("mk-1", &wrapped).await.unwrap_err();
    assert!(matches!(revoked, CustodyError::Denied { .. }), "{revoked:?}");
    let at_open = bao.open(URI, bao.env(&[("VAULT_TOKEN", &token)])).await.unwrap_err();
    assert!(matches!(at_open, CustodyError::Denied { .. }), "{at_open:?}");
    let bad = bao
        .open(URI, bao.env(&[("VAULT_TOKEN", "s.not-a-token-at-all")]))
        .await
        .unwrap_err();
    assert!(matches!(bad, CustodyError::Denied { .. }), "{bad:?}");

    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(key.expose())
    };
    let shown =
        format!("{revoked} {revoked:?} {at_open} {at_open:?} {bad} {bad:?} {denied_other} {custody:?} {wrapped:?}");
    for secret in [token.as_str(), "s.not-a-token-at-all", bao.root.as_str(), b64.as_str()] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(
        shown.contains("vault-transit:transit/keyrot at http://127.0.0.1:"),
        "{shown}"
    );
}

#[tokio::test]
async fn approle_logs_in_logs_in_again_after_revocation_and_a_bad_secret_is_denied() {
    let test = "approle_logs_in_logs_in_again_after_revocation_and_a_bad_secret_is_denied";
    let Some(bao) = start(test).await else { return };
    bao.root_custody().await.ensure_kek().await.unwrap();
    bao.admin("PUT", "sys/policies/acl/keyrot", json!({"policy": POLICY}))
        .await;
    bao.admin("POST", "sys/auth/approle", json!({"type": "approle"})).await;
    bao.admin(
        "POST",
        "auth/approle/role/keyrot",
        json!({"token_policies": ["keyrot"], "token_ttl": "1h"}),
    )
    .await;
    let role = bao.admin("GET", "auth/approle/role/keyrot/role-id", Value::Null).await;
    let role_id = role["data"]["role_id"].as_str().unwrap().to_owned();
    let made = bao.admin("POST", "auth/approle/role/keyrot/secret-id", json!({})).await;
    let secret_id = made["data"]["secret_id"].as_str().unwrap().to_owned();
    let file = bao.dir.join("secret-id");
    std::fs::write(&file, format!("{secret_id}\n")).unwrap();
    let file_s = file.to_str().unwrap();
    let env = bao.env(&[("BAO_ROLE_ID", &role_id), ("VAULT_SECRET_ID_FILE", file_s)]);

    let custody = bao.open(URI, env.clone()).await.unwrap();
    let (key, wrapped) = custody.generate("mk-1").await.unwrap();
    assert_eq!(custody.unwrap("mk-1", &wrapped).await.unwrap(), key);

    // Every AppRole token revoked: the next call logs in again and succeeds.
    bao.admin("PUT", "sys/leases/revoke-prefix/auth/approle/login", json!({}))
        .await;
    assert_eq!(custody.unwrap("mk-1", &wrapped).await.unwrap(), key);

    // The secret id destroyed and the tokens revoked: the login is refused.
    bao.admin(
        "POST",
        "auth/approle/role/keyrot/secret-id/destroy",
        json!({"secret_id": secret_id}),
    )
    .await;
    bao.admin("PUT", "sys/leases/revoke-prefix/auth/approle/login", json!({}))
        .await;
    let gone = custody.unwrap("mk-1", &wrapped).await.unwrap_err();
    assert!(matches!(gone, CustodyError::Denied { .. }), "{gone:?}");
    let at_open = bao.open(URI, env).await.unwrap_err();
    assert!(matches!(at_open, CustodyError::Denied { .. }), "{at_open:?}");

    let shown = format!("{gone} {gone:?} {at_open} {at_open:?} {custody:?}");
    for secret in [role_id.as_str(), secret_id.as_str(), bao.root.as_str()] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(format!("{custody:?}").contains("approle"));
}

#[tokio::test]
async fn a_server_down_at_open_or_mid_run_is_unavailable() {
    let Some(mut bao) = start("a_server_down_at_open_or_mid_run_is_unavailable").await else {
        return;
    };
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let env = HashMap::from([
        ("VAULT_ADDR".to_owned(), nobody.clone()),
        ("VAULT_TOKEN".to_owned(), bao.root.clone()),
    ]);
    let t = Instant::now();
    let down = bao.open(URI, env).await.unwrap_err();
    assert!(matches!(down, CustodyError::Unavailable { .. }), "{down:?}");
    let msg = down.to_string();
    assert!(
        msg.contains(&format!("vault-transit:transit/keyrot at {nobody}")) && msg.contains("cannot connect"),
        "{msg}"
    );
    assert!(!msg.contains(&bao.root), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(11));

    let custody = bao.root_custody().await;
    custody.ensure_kek().await.unwrap();
    let (_, wrapped) = custody.generate("mk-1").await.unwrap();
    bao.child.kill().unwrap();
    bao.child.wait().unwrap();
    let mid = custody.unwrap("mk-1", &wrapped).await.unwrap_err();
    assert!(matches!(mid, CustodyError::Unavailable { .. }), "{mid:?}");
    assert!(matches!(custody.check().await, Err(CustodyError::Unavailable { .. })));
    assert!(matches!(
        custody.wrap("mk-2", &random_key()).await,
        Err(CustodyError::Unavailable { .. })
    ));
}

#[tokio::test]
async fn tls_trusts_vault_cacert_and_nothing_else() {
    let Some(bao) = start_with("tls_trusts_vault_cacert_and_nothing_else", true).await else {
        return;
    };
    let ca = bao.dir.join("vault-ca.pem");
    let env = bao.env(&[("VAULT_TOKEN", &bao.root), ("BAO_CACERT", ca.to_str().unwrap())]);
    let custody = bao.open(URI, env).await.unwrap();
    custody.ensure_kek().await.unwrap();
    let (key, wrapped) = custody.generate("mk-1").await.unwrap();
    assert_eq!(custody.unwrap("mk-1", &wrapped).await.unwrap(), key);
    assert!(
        custody
            .location()
            .starts_with("vault-transit:transit/keyrot at https://127.0.0.1:")
    );

    // Without the CA, the dev server's certificate is not trusted.
    let untrusted = bao.open(URI, bao.env(&[("VAULT_TOKEN", &bao.root)])).await.unwrap_err();
    assert!(matches!(untrusted, CustodyError::Unavailable { .. }), "{untrusted:?}");
    // And the CLI's escape hatch is refused.
    let env = bao.env(&[("VAULT_TOKEN", &bao.root), ("VAULT_SKIP_VERIFY", "1")]);
    assert!(matches!(bao.open(URI, env).await, Err(CustodyError::Config(_))));
}
