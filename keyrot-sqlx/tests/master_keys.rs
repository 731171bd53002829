//! The table of wrapped master keys in the database itself: rows are never deleted and
//! only their wrapped form (kek, wrapped) is ever updated, whatever SQL a writer issues
//! directly (PostgreSQL `TRUNCATE` and upserts, MySQL `REPLACE` and upserts, SQLite
//! `INSERT OR REPLACE`); a rewrap's own `UPDATE` of (kek, wrapped) goes through. An id
//! longer than 64 characters is an error, not a silent `Ok(false)` or a truncation. And
//! [`keyrot_sqlx::connect`]'s store hands out the same table.

mod common;

use chrono::{TimeZone, Utc};
use common::TestDb;
use keyrot_core::custody::{StoredMasterKey, WrappedKey};

fn stored(id: &str) -> StoredMasterKey {
    StoredMasterKey {
        id: id.to_owned(),
        backend: "pkcs11".to_owned(),
        wrapped: WrappedKey {
            kek: "token=keyrot;object=kek-1".to_owned(),
            blob: vec![0, 1, 2, 0xfe, 0xff, 0],
        },
        created_at: Utc.timestamp_millis_opt(1_767_225_600_123).single().expect("time"),
    }
}

/// `statement` fails with an error containing `expect`, and the table is unchanged.
async fn refused(db: &TestDb, statement: &str, expect: &str) {
    let before = db.master_keys().master_keys().await.expect("list");
    let msg = db.raw.exec(statement).await.err().unwrap_or_default();
    assert!(
        msg.contains(expect),
        "{}: {statement} must be refused ({expect:?}), got {msg:?}",
        db.name
    );
    let after = db.master_keys().master_keys().await.expect("list");
    assert_eq!(after, before, "{}: unchanged after {statement}", db.name);
}

/// A row the way the store stores it, then every cheap way to delete or rewrite it.
async fn rows_are_never_deleted_and_only_rewrapped(db: &TestDb) {
    let store = db.master_keys();
    let k = stored("kms-0");
    assert!(store.insert_master_key(&k).await.expect("insert"));
    for (statement, expect) in [
        ("DELETE FROM {master_keys}", "never deleted"),
        ("UPDATE {master_keys} SET id = 'kms-9'", "only their wrapped form"),
        (
            "UPDATE {master_keys} SET backend = 'aws-kms'",
            "only their wrapped form",
        ),
        ("UPDATE {master_keys} SET created_at_ms = 1", "only their wrapped form"),
    ] {
        refused(db, statement, expect).await;
    }
    let by_db: &[(&str, &str)] = match db.name {
        "postgres" => &[
            ("TRUNCATE {master_keys}", "never deleted"),
            (
                "INSERT INTO {master_keys} (id, backend, kek, wrapped, created_at_ms) \
                 VALUES ('kms-0', 'x', 'x', '\\x00', 0) \
                 ON CONFLICT (id) DO UPDATE SET backend = 'x', created_at_ms = 0",
                "only their wrapped form",
            ),
        ],
        "mysql" => &[
            (
                "REPLACE INTO {master_keys} (id, backend, kek, wrapped, created_at_ms) \
                 VALUES ('kms-0', 'x', 'x', 'x', 0)",
                "never deleted",
            ),
            (
                "INSERT INTO {master_keys} (id, backend, kek, wrapped, created_at_ms) \
                 VALUES ('kms-0', 'x', 'x', 'x', 0) \
                 ON DUPLICATE KEY UPDATE backend = 'x', created_at_ms = 0",
                "only their wrapped form",
            ),
        ],
        _ => &[
            (
                "INSERT OR REPLACE INTO {master_keys} (id, backend, kek, wrapped, created_at_ms) \
                 VALUES ('kms-0', 'x', 'x', x'00', 0)",
                "never replaced",
            ),
            (
                "REPLACE INTO {master_keys} (id, backend, kek, wrapped, created_at_ms) \
                 VALUES ('kms-0', 'x', 'x', x'00', 0)",
                "never replaced",
            ),
        ],
    };
    for (statement, expect) in by_db {
        refused(db, statement, expect).await;
    }
    // A rewrap's UPDATE of (kek, wrapped) goes through, by hand as through the store.
    let changed = db
        .raw
        .exec("UPDATE {master_keys} SET kek = 'token=keyrot;object=kek-2' WHERE id = 'kms-0'")
        .await;
    assert_eq!(changed, Ok(1), "{}: a rewrap of kek is allowed", db.name);
    let got = store.master_keys().await.expect("list");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].wrapped.kek, "token=keyrot;object=kek-2", "{}", db.name);
    let rewrapped = WrappedKey {
        kek: "token=keyrot;object=kek-3".into(),
        blob: vec![9; 40],
    };
    assert!(
        store
            .replace_wrapped_master_key("kms-0", &got[0].wrapped, &rewrapped)
            .await
            .expect("rewrap"),
        "{}",
        db.name
    );
    let got = store.master_keys().await.expect("list");
    assert_eq!(
        got,
        vec![StoredMasterKey {
            wrapped: rewrapped,
            ..k
        }],
        "{}",
        db.name
    );
}

/// Ids are 1 to 64 characters: a longer one fails as an error (never truncated, never
/// reported as a taken id).
async fn an_id_longer_than_64_characters_is_an_error(db: &TestDb) {
    let store = db.master_keys();
    assert!(
        store
            .insert_master_key(&stored(&"k".repeat(64)))
            .await
            .expect("64 characters")
    );
    let err = store.insert_master_key(&stored(&"k".repeat(65))).await;
    assert!(err.is_err(), "{}: a 65-character id is refused, got {err:?}", db.name);
    let ids: Vec<usize> = store
        .master_keys()
        .await
        .expect("list")
        .iter()
        .map(|k| k.id.len())
        .collect();
    assert_eq!(ids, [64], "{}: only the 64-character id is stored", db.name);
}

on_every_database!(
    rows_are_never_deleted_and_only_rewrapped,
    an_id_longer_than_64_characters_is_an_error,
);

/// `connect(url)`'s store (here SQLite: the others need a database of their own) hands
/// out its table of wrapped master keys.
#[tokio::test]
async fn connected_stores_hand_out_their_master_keys() {
    let dir = std::env::temp_dir().join(common::unique("keyrot-mk-connect"));
    let url = format!("sqlite:{}", dir.join("keys.db").display());
    let store = keyrot_sqlx::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let k = stored("kms-0");
    assert!(store.master_keys().insert_master_key(&k).await.expect("insert"));
    assert_eq!(store.master_keys().master_keys().await.expect("list"), vec![k]);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}
