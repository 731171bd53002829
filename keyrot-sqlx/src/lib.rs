//! # keyrot-sqlx
//!
//! keyrot's [`Storage`](keyrot_core::Storage), [`Lock`](keyrot_core::Lock) and change feed
//! on real databases, with [`sqlx`] (re-exported): one cargo feature and one file per
//! database.
//!
//! | feature    | store           | rotation lock                                   | change feed                  |
//! |------------|-----------------|-------------------------------------------------|------------------------------|
//! | `postgres` | `PostgresStore` | session advisory lock on a held connection      | `LISTEN`/`NOTIFY` + polling  |
//! | `mysql`    | `MySqlStore`    | `GET_LOCK` on a held connection                 | polling ([`PollingFeed`](keyrot_core::PollingFeed)) |
//! | `sqlite`   | `SqliteStore`   | lease row with expiry                           | polling ([`PollingFeed`](keyrot_core::PollingFeed)) |
//!
//! Every store keeps the same four tables (names start with a configurable prefix,
//! `keyrot_` by default): `rings` (name, generation), `keys` (every field of a
//! [`KeyRecord`](keyrot_core::KeyRecord); the private key only sealed: master key id +
//! ciphertext), `audit` (append-only: updates and deletes are refused by a trigger) and
//! `idempotency`. Timestamps are stored as `BIGINT` Unix milliseconds (UTC, whatever the
//! server's time zone). The schema is created and upgraded by `migrate()`, which you call at
//! start-up; applied versions are recorded in keyrot's own `<prefix>migrations` table, never
//! in the application's `_sqlx_migrations`.
//!
//! Each store runs the keyrot-core conformance kit in this crate's tests, against real
//! servers.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrot_core::{KeyRing, MasterKeySealer, RequestContext, RingName, Rotator};
//! use keyrot_sqlx::SqliteStore;
//! use std::sync::Arc;
//!
//! let store = SqliteStore::connect_file("keys.db").await?;
//! store.migrate().await?;
//! let store = Arc::new(store);
//! let sealer = Arc::new(MasterKeySealer::from_spec(&std::env::var("KEYROT_MASTER_KEY")?)?);
//! let ring = RingName::new("default")?;
//! let keyring = KeyRing::builder(ring.clone(), store.clone(), sealer.clone()).build().await?;
//! let rotator = Rotator::builder(ring, store.clone(), store.clone(), sealer)
//!     .with_keyring(keyring.clone())
//!     .build();
//! rotator.init(RequestContext::actor("startup")).await?;
//! // Other processes on this host learn of changes by polling:
//! let _refresher = keyring.spawn_refresher(
//!     Some(Arc::new(store.polling_feed(std::time::Duration::from_secs(5)))),
//!     std::time::Duration::from_secs(30),
//! );
//! # Ok(()) }
//! ```

pub use sqlx;

// With only some databases enabled, some shared helpers go unused.
#[cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_macros)
)]
mod common;

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use common::{ConfigError, DEFAULT_TABLE_PREFIX};
#[cfg(feature = "mysql")]
pub use mysql::{MySqlStore, MySqlStoreBuilder};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder};
