//! At rest: the raw key row of an imported key holds no plaintext private key bytes, in
//! any encoding — only the sealed ciphertext, which opens to exactly those bytes. And the
//! audit ledger is append-only in the database itself.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chrono::Utc;
use common::{MySqlTest, PgTest, SqliteFile, ring, sealer};
use keyrot_core::SealContext;
use keyrot_core::to_millis;
use keyrot_core::{
    Algorithm, AuditQuery, ImportState, ImportedKey, Lock, ManualClock, Outcome, PrivateKey, RequestContext, Rotator,
    RsaBits, SealedKey, Sealer as _, SecretBytes, Storage,
};
use keyrot_sqlx::sqlx::{self, AssertSqlSafe, Row as _};
use std::sync::Arc;

/// Every text and byte column of the key row, as the database returns them.
struct RawRow {
    texts: Vec<String>,
    master_key_id: String,
    sealed: Vec<u8>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn check(
    name: &str,
    storage: Arc<dyn Storage>,
    lock: Arc<dyn Lock>,
    raw: impl AsyncFn(&str) -> RawRow,
) -> Vec<SecretBytes> {
    let mut secrets = Vec::new();
    for alg in [Algorithm::EdDsa, Algorithm::Rs256] {
        let r = ring(&format!("at-rest-{}", alg.as_str().to_lowercase()));
        let key = PrivateKey::generate(alg, RsaBits::B2048).expect("keygen");
        let secret = key.to_secret_bytes().expect("secret bytes");
        let kid = format!("imported-{}", alg.as_str());
        let sealer = sealer();
        let rot = Rotator::builder(r.clone(), storage.clone(), lock.clone(), sealer.clone())
            .with_clock(Arc::new(ManualClock::new(to_millis(Utc::now()))))
            .build();
        let rep = rot
            .import(
                RequestContext::actor("test"),
                ImportedKey {
                    key,
                    kid: Some(kid.clone()),
                },
                ImportState::Active,
            )
            .await
            .expect("import");
        assert_eq!(rep.outcome, Outcome::Imported);

        let row = raw(&kid).await;
        let s = secret.expose();
        let encodings: Vec<Vec<u8>> = vec![
            s.to_vec(),
            s.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes(),
            s.iter().map(|b| format!("{b:02X}")).collect::<String>().into_bytes(),
            STANDARD.encode(s).into_bytes(),
            STANDARD_NO_PAD.encode(s).into_bytes(),
            URL_SAFE.encode(s).into_bytes(),
            URL_SAFE_NO_PAD.encode(s).into_bytes(),
        ];
        let mut everything = row.sealed.clone();
        for t in &row.texts {
            everything.extend_from_slice(t.as_bytes());
        }
        let audit = storage.audit_log(&r, AuditQuery::default()).await.expect("audit");
        everything.extend_from_slice(format!("{audit:?}").as_bytes());
        for (i, enc) in encodings.iter().enumerate() {
            assert!(
                !contains(&everything, enc),
                "{name} {alg}: plaintext private key (encoding {i}) found at rest"
            );
        }
        // A 32-byte Ed25519 seed or a PKCS#8 RSA key: any 16-byte window would do as a leak.
        for w in s.windows(16).step_by(16) {
            assert!(
                !contains(&everything, w),
                "{name} {alg}: part of the private key found at rest"
            );
        }
        // What is stored is the sealed key, and it opens to exactly the imported key.
        let sealed = SealedKey {
            master_key_id: row.master_key_id,
            ciphertext: row.sealed,
        };
        let opened = sealer
            .open(
                &sealed,
                &SealContext {
                    ring: r.as_str(),
                    kid: &kid,
                    alg,
                },
            )
            .expect("opens");
        assert_eq!(
            opened.expose(),
            s,
            "{name} {alg}: the row holds the sealed form of the imported key"
        );
        println!(
            "{name} {alg}: {} sealed bytes, no plaintext in {} columns",
            sealed.ciphertext.len(),
            row.texts.len()
        );
        secrets.push(secret);
    }
    secrets
}

/// `UPDATE` and `DELETE` on the ledger fail, whoever runs them.
async fn ledger_is_append_only<'e, E>(name: &str, db: E, audit_table: &str)
where
    E: sqlx::Executor<'e> + Copy,
{
    for statement in [
        format!("UPDATE {audit_table} SET actor = 'forged'"),
        format!("DELETE FROM {audit_table}"),
    ] {
        let err = sqlx::raw_sql(AssertSqlSafe(statement.clone())).execute(db).await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("append-only"),
            "{name}: {statement} must be refused, got {msg:?}"
        );
    }
}

const TEXT_COLUMNS: &str = "kid, alg, state, origin, fingerprint, public_jwk, revoke_reason";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_key_rows_hold_no_plaintext() {
    let Some(t) = PgTest::new("postgres at rest", false).await else {
        return;
    };
    let store = t.instance(3, "keyrot-at-rest").await;
    let (admin, schema) = (t.admin().clone(), t.schema.clone());
    check(
        "postgres",
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        async |kid: &str| {
            // The whole row as PostgreSQL renders it (bytea as hex), and the raw bytes.
            let row = sqlx::query(AssertSqlSafe(format!(
            r#"SELECT k::text AS whole, master_key_id, sealed_private_key FROM "{schema}".keyrot_keys k WHERE kid = $1"#
        )))
        .bind(kid)
        .fetch_one(&admin)
        .await
        .expect("raw row");
            RawRow {
                texts: vec![row.try_get("whole").expect("whole row")],
                master_key_id: row.try_get("master_key_id").expect("master key id"),
                sealed: row.try_get("sealed_private_key").expect("sealed"),
            }
        },
    )
    .await;
    ledger_is_append_only("postgres", t.admin(), &format!(r#""{}".keyrot_audit"#, t.schema)).await;
    store.pool().close().await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_key_rows_hold_no_plaintext() {
    let Some(t) = MySqlTest::new("mysql at rest", false).await else {
        return;
    };
    let store = t.instance(3).await;
    let pool = store.pool().clone();
    check(
        "mysql",
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        async |kid: &str| {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT CONCAT_WS('|', {TEXT_COLUMNS}, master_key_id, HEX(sealed_private_key)) AS whole, \
             master_key_id, sealed_private_key FROM keyrot_keys WHERE kid = ?"
            )))
            .bind(kid)
            .fetch_one(&pool)
            .await
            .expect("raw row");
            let whole: Vec<u8> = row.try_get("whole").expect("whole row");
            RawRow {
                texts: vec![String::from_utf8_lossy(&whole).into_owned()],
                master_key_id: row.try_get("master_key_id").expect("master key id"),
                sealed: row.try_get("sealed_private_key").expect("sealed"),
            }
        },
    )
    .await;
    ledger_is_append_only("mysql", t.admin(), &format!("`{}`.keyrot_audit", t.database)).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_key_rows_hold_no_plaintext() {
    let file = SqliteFile::new();
    let store = file.instance(2).await;
    let pool = store.pool().clone();
    let secrets = check(
        "sqlite",
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        async |kid: &str| {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {TEXT_COLUMNS}, master_key_id, sealed_private_key, hex(sealed_private_key) AS sealed_hex \
             FROM keyrot_keys WHERE kid = ?"
            )))
            .bind(kid)
            .fetch_one(&pool)
            .await
            .expect("raw row");
            let texts = TEXT_COLUMNS
                .split(", ")
                .chain(["master_key_id", "sealed_hex"])
                .map(|c| {
                    row.try_get::<Option<String>, _>(c)
                        .expect("text column")
                        .unwrap_or_default()
                })
                .collect();
            RawRow {
                texts,
                master_key_id: row.try_get("master_key_id").expect("master key id"),
                sealed: row.try_get("sealed_private_key").expect("sealed"),
            }
        },
    )
    .await;
    ledger_is_append_only("sqlite", store.pool(), "keyrot_audit").await;
    // The file itself, byte for byte (WAL included), holds no plaintext either.
    store.pool().close().await;
    let mut bytes = Vec::new();
    for suffix in ["", "-wal"] {
        let mut p = file.path.clone().into_os_string();
        p.push(suffix);
        bytes.extend(std::fs::read(&p).unwrap_or_default());
    }
    assert!(bytes.len() > 4096, "the database file was read");
    for s in &secrets {
        assert!(
            !contains(&bytes, s.expose()),
            "plaintext private key in the SQLite file"
        );
    }
}
