//! The one rotation-lock guard of every database. What a held lock keeps differs (a
//! session that holds an advisory lock or a `GET_LOCK`, a lease row), and so does how it
//! lets go ([`Hold`]); what a guard does when it is released or dropped does not.

use crate::common;
use crate::dialect::Dialect;
use async_trait::async_trait;
use keyrot_core::{LockGuard, RingName, StorageError};
use std::fmt::Debug;
use std::future::Future;

/// A held rotation lock, as one database keeps it.
pub(crate) trait Hold: Debug + Send + 'static {
    /// The database (its label starts log lines and errors).
    type Db: Dialect;

    /// How the lock ends if it is never released, for the release error.
    const ENDS: &'static str;

    /// What dropping a guard without release does, for its warning.
    const ON_DROP: &'static str;

    /// Why a lock can be found no longer held at release, for its warning.
    const LOST: &'static str;

    /// Frees the lock of `ring`: whether it was still held. A session that could not be
    /// reset is closed, never reused.
    fn release(&mut self, ring: &RingName) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// The guard was dropped without release: frees the lock without waiting (closing
    /// the session, deleting the lease in the background).
    fn abandon(self, ring: &RingName);
}

/// A held rotation lock of any database: released explicitly, or freed by its [`Hold`]
/// when dropped without release.
pub(crate) struct SqlLockGuard<H: Hold> {
    hold: Option<H>,
    ring: RingName,
    holder: String,
}

impl<H: Hold> SqlLockGuard<H> {
    /// The guard of `hold`, the lock of `ring` taken by `holder`.
    pub fn boxed(hold: H, ring: &RingName, holder: &str) -> Box<dyn LockGuard> {
        Box::new(Self {
            hold: Some(hold),
            ring: ring.clone(),
            holder: holder.to_owned(),
        })
    }
}

impl<H: Hold> Debug for SqlLockGuard<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlLockGuard")
            .field("database", &<H::Db as Dialect>::LABEL)
            .field("ring", &self.ring)
            .field("holder", &self.holder)
            .field("lock", &self.hold)
            .finish()
    }
}

impl<H: Hold> Drop for SqlLockGuard<H> {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            tracing::warn!(ring = %self.ring, holder = %self.holder, lock = ?hold,
                "{} rotation lock guard dropped without release: {}", <H::Db as Dialect>::LABEL, H::ON_DROP);
            hold.abandon(&self.ring);
        }
    }
}

#[async_trait]
impl<H: Hold> LockGuard for SqlLockGuard<H> {
    async fn release(mut self: Box<Self>) -> Result<(), StorageError> {
        let Some(mut hold) = self.hold.take() else {
            return Ok(());
        };
        let label = <H::Db as Dialect>::LABEL;
        match hold.release(&self.ring).await {
            Ok(true) => {
                tracing::debug!(ring = %self.ring, holder = %self.holder, lock = ?hold, "{label} rotation lock released");
                Ok(())
            }
            Ok(false) => {
                tracing::warn!(ring = %self.ring, holder = %self.holder, lock = ?hold,
                    "{label} rotation lock was no longer held at release: {}", H::LOST);
                Ok(())
            }
            Err(e) => Err(common::db_err_at(
                label,
                &format!("release rotation lock ({})", H::ENDS),
                e,
            )),
        }
    }
}
