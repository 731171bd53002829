//! Cases on the storage of wrapped master keys ([`MasterKeyStorage`]): what every store
//! that keeps them beside its rings runs, through
//! [`master_key_storage_conformance_tests!`](crate::master_key_storage_conformance_tests).

use super::*;
use crate::custody::{MasterKeyStorage, StoredMasterKey, WrappedKey};

/// A store of wrapped master keys under test: fresh (empty) for each case.
pub struct MasterKeyBackend {
    /// The storage.
    pub storage: Arc<dyn MasterKeyStorage>,
    teardown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl MasterKeyBackend {
    /// A backend without teardown.
    pub fn new(storage: Arc<dyn MasterKeyStorage>) -> Self {
        Self {
            storage,
            teardown: None,
        }
    }

    /// Runs `teardown` after the case (drop a schema or database).
    pub fn with_teardown(mut self, teardown: impl Future<Output = ()> + Send + 'static) -> Self {
        self.teardown = Some(Box::pin(teardown));
        self
    }

    /// Runs the teardown.
    pub async fn finish(mut self) {
        if let Some(t) = self.teardown.take() {
            t.await;
        }
    }
}

/// A stored master key: `id`, wrapped under `kek`, created `ms_after` milliseconds after
/// [`t0`]. The blob holds every byte value, so a store that re-encodes it is caught.
fn stored(id: &str, kek: &str, ms_after: i64) -> StoredMasterKey {
    StoredMasterKey {
        id: id.to_owned(),
        backend: "vault-transit".to_owned(),
        wrapped: WrappedKey {
            kek: kek.to_owned(),
            blob: blob(id.len() + kek.len(), 64),
        },
        created_at: t0() + TimeDelta::milliseconds(ms_after),
    }
}

/// `len` bytes cycling through every byte value from `seed`.
fn blob(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((seed + i * 7) % 256) as u8).collect()
}

async fn list(b: &MasterKeyBackend) -> Vec<StoredMasterKey> {
    b.storage.master_keys().await.expect("list master keys")
}

pub async fn master_keys_start_empty(b: &MasterKeyBackend) {
    assert!(list(b).await.is_empty(), "a fresh store holds no master key");
}

pub async fn master_key_insert_round_trips_every_field(b: &MasterKeyBackend) {
    let k = stored("kms-0", "transit/keyrot:v1", 0);
    assert!(
        b.storage.insert_master_key(&k).await.expect("insert"),
        "a new id is stored"
    );
    assert_eq!(
        list(b).await,
        vec![k],
        "every field round-trips, the time to the millisecond"
    );
}

pub async fn master_key_duplicate_id_changes_nothing(b: &MasterKeyBackend) {
    let first = stored("kms-0", "transit/keyrot:v1", 0);
    assert!(b.storage.insert_master_key(&first).await.expect("insert"));
    let mut second = stored("kms-0", "transit/other:v9", 5);
    second.backend = "aws-kms".into();
    second.wrapped.blob = blob(99, 80);
    assert!(
        !b.storage
            .insert_master_key(&second)
            .await
            .expect("a duplicate id is no error"),
        "a taken id is refused with Ok(false)"
    );
    assert_eq!(list(b).await, vec![first], "the first row is unchanged");
}

pub async fn master_keys_list_oldest_first_then_by_id(b: &MasterKeyBackend) {
    // Inserted out of order; two share a creation time and are ordered by id.
    let (late, b_mk, a_mk, early) = (
        stored("kms-3", "k", 30),
        stored("kms-b", "k", 10),
        stored("kms-a", "k", 10),
        stored("kms-z", "k", 1),
    );
    for k in [&late, &b_mk, &a_mk, &early] {
        assert!(b.storage.insert_master_key(k).await.expect("insert"));
    }
    let ids: Vec<String> = list(b).await.into_iter().map(|k| k.id).collect();
    assert_eq!(ids, ["kms-z", "kms-a", "kms-b", "kms-3"], "by created_at, then id");
}

pub async fn master_key_rewrap_is_a_compare_and_swap(b: &MasterKeyBackend) {
    let k = stored("kms-0", "transit/keyrot:v1", 0);
    let other = stored("kms-1", "transit/keyrot:v1", 1);
    for k in [&k, &other] {
        assert!(b.storage.insert_master_key(k).await.expect("insert"));
    }
    let new = WrappedKey {
        kek: "transit/keyrot:v2".into(),
        blob: blob(7, 72),
    };
    let swap = |expected: WrappedKey, new: WrappedKey| async move {
        b.storage
            .replace_wrapped_master_key("kms-0", &expected, &new)
            .await
            .expect("replace")
    };
    // The right KEK with another blob, or the right blob under another KEK: no swap.
    let wrong_blob = WrappedKey {
        blob: blob(1, 64),
        ..k.wrapped.clone()
    };
    let wrong_kek = WrappedKey {
        kek: "transit/keyrot:v0".into(),
        ..k.wrapped.clone()
    };
    assert!(!swap(wrong_blob, new.clone()).await, "the blob must match");
    assert!(!swap(wrong_kek, new.clone()).await, "the KEK must match");
    assert_eq!(
        list(b).await,
        vec![k.clone(), other.clone()],
        "a failed swap changes nothing"
    );
    assert!(swap(k.wrapped.clone(), new.clone()).await, "the first swap succeeds");
    assert!(
        !swap(k.wrapped.clone(), blob_under("transit/keyrot:v3")).await,
        "a second swap from the old value fails"
    );
    let rewrapped = StoredMasterKey {
        wrapped: new.clone(),
        ..k.clone()
    };
    assert_eq!(
        list(b).await,
        vec![rewrapped.clone(), other],
        "only kek and blob of that one row change"
    );
    // A swap to the value it holds matches its row: it reports success (rows matched,
    // not rows changed), so a retried rewrap is not mistaken for a lost race.
    assert!(swap(new.clone(), new).await, "a swap to the same value succeeds");
    assert_eq!(list(b).await[0], rewrapped);
}

fn blob_under(kek: &str) -> WrappedKey {
    WrappedKey {
        kek: kek.into(),
        blob: blob(3, 64),
    }
}

pub async fn master_key_rewrap_of_an_unknown_id_is_refused(b: &MasterKeyBackend) {
    let k = stored("kms-0", "transit/keyrot:v1", 0);
    assert!(b.storage.insert_master_key(&k).await.expect("insert"));
    let got = b
        .storage
        .replace_wrapped_master_key("kms-9", &k.wrapped, &blob_under("transit/keyrot:v2"))
        .await
        .expect("replace");
    assert!(!got, "no row, no swap");
    assert_eq!(list(b).await, vec![k], "nothing changed");
}

pub async fn master_key_large_blob_round_trips_byte_exactly(b: &MasterKeyBackend) {
    let mut k = stored("kms-large", "arn:aws:kms:eu-west-1:111122223333:key/ABCD-ef01", 0);
    // 4 KiB of every byte value, NULs and invalid UTF-8 included.
    k.wrapped.blob = blob(0, 4096);
    assert!(b.storage.insert_master_key(&k).await.expect("insert"));
    let got = list(b).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].wrapped.blob.len(), 4096);
    assert_eq!(got[0], k, "the blob round-trips byte for byte");
    let mut bigger = k.wrapped.clone();
    bigger.blob = blob(5, 4096 + 17);
    assert!(
        b.storage
            .replace_wrapped_master_key("kms-large", &k.wrapped, &bigger)
            .await
            .expect("replace"),
        "a large blob compares equal to itself"
    );
    assert_eq!(list(b).await[0].wrapped, bigger);
}

pub async fn master_key_ids_and_keks_are_compared_byte_exactly(b: &MasterKeyBackend) {
    // Case is significant in an id; case and trailing spaces in a KEK's name.
    let k = stored("kms-A", "Transit/KeyRot:v1", 0);
    assert!(b.storage.insert_master_key(&k).await.expect("insert"));
    for id in ["kms-a", "KMS-A"] {
        assert!(
            b.storage.insert_master_key(&stored(id, "k", 2)).await.expect("insert"),
            "{id:?} is another id than \"kms-A\""
        );
    }
    for kek in ["transit/keyrot:v1", "Transit/KeyRot:v1 "] {
        let other = WrappedKey {
            kek: kek.into(),
            ..k.wrapped.clone()
        };
        let swapped = b
            .storage
            .replace_wrapped_master_key("kms-A", &other, &blob_under("x"))
            .await
            .expect("replace");
        assert!(!swapped, "the KEK {kek:?} is not {:?}", k.wrapped.kek);
    }
    assert_eq!(list(b).await[0], k);
}
